#!/usr/bin/env python3
"""Multiple bidders: 3 requesters compete for 3 shared expert peers (docs/architecture.md section 9, item 4).

    python scripts/experiments/multiple_bidders.py                 # 3 seeds x 10k steps
    python scripts/experiments/multiple_bidders.py --bidders 4 --seed 1
    python scripts/experiments/multiple_bidders.py --quick

How this works
--------------
unconst/GradientBidding Multibidder.ipynb sketched this and never ran (building its graph raises a
shape error). This is the market it describes, made to run. Every bidder j is a single bidder
(scripts/experiments/single_bidder.py: noisy top-k gating, a self-weight it keeps as revenue, its
own readout) and sends expert i its bid w_ji. The experts are shared, so the market shift is now
the mean of the bids an expert receives:

    peer i:   s_i = mean_j w_ji,   answer_ji = relu(w_ji - s_i) * f_i(x)     (atomic_p2p.market)
    bidder j: y_j = sum_i gates_ji * answer_ji,  objective_j = cross-entropy_j - revenue_j

so on each expert the bidders who bid above the average get its signal and the others get none:
a bidder must outbid its rivals, and every unit it bids is revenue it gives up.

Who descends what: bidder j descends only its own objective, over only its own parameters. Its bid
moves its own mask directly and through the shift (by 1 - 1/n_bidders); its effect on the other
bidders' masks is theirs to answer, so the peer keeps the other bids constant when it computes
bidder j's answer. The experts are cooperative peers: each descends the sum of the bidders'
losses it served. All bidders see the same batch, as in the notebook. The round is split the way
the network splits it, as in single_bidder.py; :func:`experts_forward` and
:func:`experts_backward` are the peer's half.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import single_bidder
from single_bidder import Bidder, allocate, make_expert, node_update

from atomic_p2p import market

BATCH_STREAM = 100
# bidder j: init stream 10 + j, noise stream 200 + j; expert i: init stream 1 + i


@dataclass(frozen=True)
class Config:
    steps: int = 10_000
    n_bidders: int = 3
    expert: single_bidder.Config = field(default_factory=single_bidder.Config)


@dataclass
class PeerRound:
    """What a peer keeps between answering every bidder and receiving their gradients."""

    answers: list[torch.Tensor]  # one per bidder, with the peer's graph
    bids: torch.Tensor  # the received bids as one leaf [n_bidders]


def expert_forward(expert: nn.Module, x: torch.Tensor, bids: torch.Tensor) -> PeerRound:
    """Peer: mask its output for each bidder against the mean bid it received."""
    leaf = bids.detach().clone().requires_grad_(True)
    features = expert(x)
    answers = []
    for bidder in range(len(leaf)):
        own_live = torch.where(torch.arange(len(leaf)) == bidder, leaf, leaf.detach())
        answers.append(market.masked_output(leaf[bidder], market.shift(own_live, "mean"), features))
    return PeerRound(answers, leaf)


def expert_backward(round_: PeerRound, answer_gradients: list[torch.Tensor]) -> torch.Tensor:
    """Peer: apply each bidder's dL_j/dy to the model; return dL_j/dw_ji for each bidder j."""
    torch.autograd.backward(round_.answers, answer_gradients)
    return round_.bids.grad if round_.bids.grad is not None else torch.zeros_like(round_.bids)


@dataclass
class Step:
    loss: list[float]
    accuracy: list[float]
    revenue: list[float]
    bids: list[list[float]]  # [bidder][expert]
    masks: list[list[float]]  # [bidder][expert]


def train_step(
    bidders: list[Bidder],
    experts: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    batch: tuple[torch.Tensor, torch.Tensor],
    noises: list[torch.Generator],
) -> Step:
    """One market round for every bidder; ``optimizers`` = bidders' then experts'."""
    x, y = batch
    allocations = [allocate(b, x, noise) for b, noise in zip(bidders, noises, strict=True)]
    bids = torch.stack([weights[1:] for _, weights in allocations])  # [bidder, expert]
    rounds = [expert_forward(e, x, bids[:, i]) for i, e in enumerate(experts)]
    received = torch.stack([torch.stack([a.detach() for a in r.answers]) for r in rounds], dim=1)
    received.requires_grad_(True)  # [bidder, expert, batch, embedding]
    losses, accuracies = [], []
    for j, (bidder, (gates, weights)) in enumerate(zip(bidders, allocations, strict=True)):
        logits = bidder.readout(market.mixture(gates.T, received[j]))
        loss = functional.cross_entropy(logits, y)
        (loss - weights[0]).backward(retain_graph=True)
        losses.append(float(loss.detach()))
        accuracies.append(common.accuracy(logits.detach(), y))
    assert received.grad is not None
    bid_gradients = torch.stack(
        [expert_backward(r, list(received.grad[:, i])) for i, r in enumerate(rounds)], dim=1
    )
    bids.backward(bid_gradients)
    for optimizer in optimizers:
        node_update(optimizer)
    bids = bids.detach()
    masks = market.masks(bids, market.shift(bids, "mean"))
    revenue = [float(weights[0].detach()) for _, weights in allocations]
    return Step(losses, accuracies, revenue, bids.tolist(), masks.tolist())


@torch.no_grad()
def evaluate(
    bidders: list[Bidder], experts: list[nn.Module], x: torch.Tensor, y: torch.Tensor
) -> list[float]:
    """Each bidder's accuracy with noiseless gating and the bids that gating implies."""
    for bidder in bidders:
        bidder.eval()
    allocations = [allocate(b, x, None) for b in bidders]
    bids = torch.stack([weights[1:] for _, weights in allocations])
    masks = market.masks(bids, market.shift(bids, "mean"))  # [bidder, expert]
    features = torch.stack([e(x) for e in experts])  # [expert, batch, embedding]
    scores = []
    for j, (bidder, (gates, _)) in enumerate(zip(bidders, allocations, strict=True)):
        answers = masks[j][:, None, None] * features
        scores.append(common.accuracy(bidder.readout(market.mixture(gates.T, answers)), y))
        bidder.train()
    return scores


def build(seed: int, config: Config) -> tuple[list[Bidder], list[nn.Module], list[torch.optim.Optimizer]]:
    expert_config = config.expert
    bidders = [Bidder(expert_config, common.derived_generator(seed, 10 + j)) for j in range(config.n_bidders)]
    experts = [
        make_expert(expert_config, common.derived_generator(seed, 1 + i))
        for i in range(expert_config.n_experts)
    ]
    optimizers = [torch.optim.Adam(node.parameters(), lr=expert_config.lr) for node in [*bidders, *experts]]
    return bidders, experts, optimizers


@dataclass
class Result:
    seed: int
    config: Config
    train_batch_accuracy: list[float]  # per bidder, mean of the last 100 batches
    train_accuracy: list[float]
    test_accuracy: list[float]
    revenue_start: list[float]
    revenue_end: list[float]
    bids_end: list[list[float]]
    masks_end: list[list[float]]
    history: dict[str, list] = field(default_factory=dict)


def run(
    seed: int, config: Config | None = None, data: common.Digits | None = None, show: bool = False
) -> Result:
    config = config or Config()
    data = data or common.load_digits_split()
    bidders, experts, optimizers = build(seed, config)
    batch_size = config.expert.batch_size
    order = common.batches(len(data.y_train), batch_size, common.derived_generator(seed, BATCH_STREAM))
    noises = [common.derived_generator(seed, 200 + j) for j in range(config.n_bidders)]
    history: dict[str, list] = {key: [] for key in ("step", "loss", "accuracy", "revenue", "bids", "masks")}
    history |= {"eval_step": [], "test_accuracy": []}
    eval_every = config.expert.eval_every
    with common.progress(config.steps, f"multiple bidders seed {seed}", show) as bar:
        for step in range(config.steps):
            index = next(order)
            record = train_step(
                bidders, experts, optimizers, (data.x_train[index], data.y_train[index]), noises
            )
            history["step"].append(step)
            for key, value in asdict(record).items():
                history[key].append(value)
            if (step + 1) % eval_every == 0 or step + 1 == config.steps:
                history["eval_step"].append(step + 1)
                history["test_accuracy"].append(evaluate(bidders, experts, data.x_test, data.y_test))
            bar.update(1)
    return _result(seed, config, bidders, experts, data, history)


def _result(
    seed: int,
    config: Config,
    bidders: list[Bidder],
    experts: list[nn.Module],
    data: common.Digits,
    history: dict,
) -> Result:
    with torch.no_grad():
        weights = torch.stack([allocate(b.eval(), data.x_train, None)[1] for b in bidders])
    for bidder in bidders:
        bidder.train()
    recent = history["accuracy"][-100:]
    bids = weights[:, 1:]
    return Result(
        seed=seed,
        config=config,
        train_batch_accuracy=[sum(a[j] for a in recent) / len(recent) for j in range(config.n_bidders)],
        train_accuracy=evaluate(bidders, experts, data.x_train, data.y_train),
        test_accuracy=history["test_accuracy"][-1],
        revenue_start=history["revenue"][0],
        revenue_end=weights[:, 0].tolist(),
        bids_end=bids.tolist(),
        masks_end=market.masks(bids, market.shift(bids, "mean")).tolist(),
        history=history,
    )


def report(results: list[Result]) -> str:
    headers = [
        "seed",
        "bidder",
        "batch acc",
        "train acc",
        "held-out acc",
        "revenue",
        "bids w_j1..w_jn",
        "masks",
    ]
    rows: list[list[object]] = []
    for r in results:
        for j in range(r.config.n_bidders):
            rows.append(
                [
                    r.seed,
                    j,
                    r.train_batch_accuracy[j],
                    r.train_accuracy[j],
                    r.test_accuracy[j],
                    f"{r.revenue_start[j]:.3f} -> {r.revenue_end[j]:.3f}",
                    " ".join(f"{b:.3f}" for b in r.bids_end[j]),
                    " ".join(f"{m:.3f}" for m in r.masks_end[j]),
                ]
            )
    everyone = [value for r in results for value in r.test_accuracy]
    held_out = common.summary(everyone)
    config = results[0].config
    return "\n".join(
        [
            f"Multiple bidders ({config.n_bidders} bidders, {config.expert.n_experts} shared experts, {config.steps} steps)",
            common.format_table(headers, rows),
            "",
            f"held-out accuracy over all bidders and seeds: median {held_out['median']:.3f},"
            f" min {held_out['min']:.3f}, max {held_out['max']:.3f}",
            "original: never ran (Multibidder.ipynb fails while building its graph); no numbers to compare.",
            "masks: relu(w_ji - mean_j w_ji) with noiseless gating on the training split; a 0 means that bidder",
            "was outbid on that expert and gets none of its signal.",
        ]
    )


def plots(results: list[Result], out: Path) -> Path:
    first = results[0]
    steps = first.history["step"]
    accuracy: common.Series = {}
    revenue: common.Series = {}
    bids: common.Series = {}
    for j in range(first.config.n_bidders):
        acc = [a[j] for a in first.history["accuracy"]]
        smooth = [
            sum(acc[max(0, i - 99) : i + 1]) / len(acc[max(0, i - 99) : i + 1]) for i in range(len(acc))
        ]
        accuracy[f"bidder {j} batch"] = (steps, smooth)
        accuracy[f"bidder {j} held-out"] = (
            first.history["eval_step"],
            [a[j] for a in first.history["test_accuracy"]],
        )
        revenue[f"bidder {j}"] = (steps, [r[j] for r in first.history["revenue"]])
        for i in range(first.config.expert.n_experts):
            bids[f"w_{j}{i + 1}"] = (steps, [b[j][i] for b in first.history["bids"]])
    return common.plot_panels(
        out / "multiple_bidders.png",
        [
            common.Panel("accuracy", "accuracy", accuracy),
            common.Panel("revenue (self-weight)", "revenue", revenue),
            common.Panel("bids (bidder j, expert i)", "w_ji", bids),
        ],
        suptitle=f"seed {first.seed}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[1], seeds=3, steps=10_000)
    parser.add_argument("--bidders", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    expert = single_bidder.Config(eval_every=20 if args.quick else single_bidder.Config.eval_every)
    config = Config(steps=40 if args.quick else args.steps, n_bidders=args.bidders, expert=expert)
    data = common.load_digits_split()
    results = [run(seed, config, data, show=not args.no_progress) for seed in common.seeds_from(args)]
    text = report(results)
    print(text)
    thin = {"step", "loss", "accuracy", "revenue", "bids", "masks"}
    payload = {
        "settings": asdict(config),
        "report": text,
        "seeds": [
            {**asdict(r), "history": {k: v[::10] if k in thin else v for k, v in r.history.items()}}
            for r in results
        ],
    }
    print(
        f"wrote {common.write_json(args.out / 'multiple_bidders.json', payload)} and {plots(results, args.out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
