#!/usr/bin/env python3
"""Single bidder: one requester buys from 3 expert peers (docs/architecture.md section 9, item 2).

    python scripts/experiments/single_bidder.py                      # 5 seeds x 10k steps
    python scripts/experiments/single_bidder.py --steps 2000 --seed 3
    python scripts/experiments/single_bidder.py --masking original   # the original's off-by-one
    python scripts/experiments/single_bidder.py --quick

How this works
--------------
After unconst/GradientBidding Singlebidder.ipynb, buyer-side (docs/architecture.md section 9 (b)):

    gates   = noisy top-k gating of x over the 3 experts (k = 3)           [batch, 3]
    importance = l2normalise(sum over the batch of gates)                  [3]
    weights = l2normalise([self_weight, importance])  = [revenue, w_1, w_2, w_3]
    peer i answers  relu(w_i - 0.2) * f_i(x)          (atomic_p2p.market.masked_output)
    y = sum_i gates_i * answer_i;  logits = readout(y);  objective = cross-entropy - revenue

The bidder keeps ``revenue`` (its self-weight) and pays the rest out as bids; raising the
self-weight shrinks every w_i, so paying less buys less signal. Adam 1e-3 on every parameter,
batch 256. Experts are affine stacks 64 -> 64 -> 64 -> 64 with no nonlinearity, initialised like
the original (truncated normal 0.1, bias 0.1); the original used 784 -> 256 -> 256 -> 256 for
MNIST; the widths here are scaled to the 64-pixel digits (``--hidden``, ``--embedding``).

Intended masking against the original's. The original built ``weights`` = [revenue, w_1, w_2,
w_3] and masked expert i with ``weights[i]``, i = 0..2: expert 0 was masked by the bidder's own
revenue weight (so raising revenue *opened* it), expert 1 by w_1 (expert 0's bid), expert 2 by
w_2, and w_3 was never used. This script masks expert i by its own bid w_i (``--masking
intended``, the default); ``--masking original`` reproduces the slicing for comparison. With the
intended masks the bidder's revenue and its signal pull against each other, which is the market
the experiment meant to build; with the original's, raising revenue also kept expert 0 open.

The step is split the way the network splits it (docs/architecture.md section 9: a gradient
travels to the owner of the parameter): the requester computes gates and bids (:func:`allocate`),
each peer masks its own output (:func:`expert_forward`), the requester mixes and takes the loss,
sends each peer dL/dy_i, the peer returns dL/dw_i (:func:`expert_backward`), and every node steps
its own Adam (:func:`node_update`). In-process this equals one autograd graph over everything (tested).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from atomic_p2p import market

Masking = Literal["intended", "original"]
ORIGINAL = {"train_batch_accuracy": 0.98, "revenue_start": 0.71, "revenue_end": 0.94}
BIDDER_STREAM, BATCH_STREAM, NOISE_STREAM = 0, 100, 101  # expert i uses stream 1 + i


@dataclass(frozen=True)
class Config:
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    n_experts: int = 3
    k: int = 3
    hidden: int = 64
    layers: int = 2
    embedding: int = 64
    market_shift: float = 0.2
    activation: str = "none"
    masking: Masking = "intended"
    eval_every: int = 250


class Bidder(nn.Module):
    """The requester: gating network, self-weight (its revenue) and the readout it trains."""

    def __init__(self, config: Config, generator: torch.Generator, in_features: int = 64) -> None:
        super().__init__()
        self.gate = common.NoisyTopKGate(in_features, config.n_experts, config.k)
        self.self_weight = nn.Parameter(torch.ones(1))
        self.readout = common.tf_linear(config.embedding, common.N_CLASSES, generator)


def make_expert(config: Config, generator: torch.Generator, in_features: int = 64) -> nn.Module:
    sizes = [in_features] + [config.hidden] * config.layers + [config.embedding]
    return common.affine_stack(sizes, generator, config.activation)


def allocate(
    bidder: Bidder, x: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Requester: gates [batch, n] and weights [1 + n] = [revenue, w_1..w_n]."""
    gates = bidder.gate(x, generator)
    importance = functional.normalize(gates.sum(dim=0), dim=0)
    weights = functional.normalize(torch.cat([bidder.self_weight, importance]), dim=0)
    return gates, weights


def expert_bids(weights: torch.Tensor, masking: Masking) -> torch.Tensor:
    """The bid each expert's mask reads: its own w_i, or the original's weights[i] (off by one)."""
    return weights[1:] if masking == "intended" else weights[:-1]


@dataclass
class PeerForward:
    """What a peer keeps between answering and receiving its gradient."""

    output: torch.Tensor  # relu(w - shift) * f(x), with the peer's graph
    bid: torch.Tensor  # the received w as a leaf, to return dL/dw


def expert_forward(expert: nn.Module, x: torch.Tensor, bid: torch.Tensor, market_shift: float) -> PeerForward:
    """Peer: mask its own output by the bid it was sent."""
    leaf = bid.detach().clone().requires_grad_(True)
    return PeerForward(market.masked_output(leaf, market_shift, expert(x)), leaf)


def expert_backward(forward: PeerForward, output_gradient: torch.Tensor) -> torch.Tensor:
    """Peer: apply dL/dy to its model (accumulating .grad) and return dL/dw for the requester."""
    forward.output.backward(output_gradient)
    return forward.bid.grad if forward.bid.grad is not None else torch.zeros_like(forward.bid)


def node_update(optimizer: torch.optim.Optimizer) -> None:
    """Any node: one Adam step on what its backward accumulated."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class Step:
    loss: float
    accuracy: float
    revenue: float
    bids: list[float]  # w_1..w_n
    masks: list[float]  # relu(expert bid - shift) per expert


def train_step(
    bidder: Bidder,
    experts: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    batch: tuple[torch.Tensor, torch.Tensor],
    noise: torch.Generator,
    config: Config,
) -> Step:
    """One market round; ``optimizers`` = [bidder's, expert 1's, ...]."""
    x, y = batch
    gates, weights = allocate(bidder, x, noise)
    bids = expert_bids(weights, config.masking)
    forwards = [expert_forward(e, x, bids[i], config.market_shift) for i, e in enumerate(experts)]
    received = torch.stack([f.output.detach() for f in forwards]).requires_grad_(True)
    logits = bidder.readout(market.mixture(gates.T, received))
    loss = functional.cross_entropy(logits, y)
    (loss - weights[0]).backward(retain_graph=True)
    assert received.grad is not None
    bid_gradients = torch.stack([expert_backward(f, received.grad[i]) for i, f in enumerate(forwards)])
    bids.backward(bid_gradients)
    for optimizer in optimizers:
        node_update(optimizer)
    weights, masks = weights.detach(), market.masks(bids.detach(), config.market_shift)
    return Step(
        float(loss.detach()),
        common.accuracy(logits.detach(), y),
        float(weights[0]),
        weights[1:].tolist(),
        masks.tolist(),
    )


@torch.no_grad()
def evaluate(
    bidder: Bidder, experts: list[nn.Module], x: torch.Tensor, y: torch.Tensor, config: Config
) -> float:
    """Accuracy with noiseless gating (eval mode); the same mixture as training."""
    bidder.eval()
    gates, weights = allocate(bidder, x, None)
    bids = expert_bids(weights, config.masking)
    outputs = torch.stack(
        [market.masked_output(bids[i], config.market_shift, e(x)) for i, e in enumerate(experts)]
    )
    bidder.train()
    return common.accuracy(bidder.readout(market.mixture(gates.T, outputs)), y)


@dataclass
class Result:
    seed: int
    config: Config
    train_batch_accuracy: float  # mean over the last 100 training batches (what the original printed)
    train_accuracy: float  # whole training split, noiseless gating
    test_accuracy: float  # held-out split
    revenue_start: float
    revenue_end: float
    bids_end: list[float]
    masks_end: list[float]
    history: dict[str, list] = field(default_factory=dict)


def build(seed: int, config: Config) -> tuple[Bidder, list[nn.Module], list[torch.optim.Optimizer]]:
    """Every node, each initialised from its own stream (see common.derived_generator)."""
    bidder = Bidder(config, common.derived_generator(seed, BIDDER_STREAM))
    experts = [make_expert(config, common.derived_generator(seed, 1 + i)) for i in range(config.n_experts)]
    optimizers = [torch.optim.Adam(node.parameters(), lr=config.lr) for node in [bidder, *experts]]
    return bidder, experts, optimizers


def run(
    seed: int, config: Config | None = None, data: common.Digits | None = None, show: bool = False
) -> Result:
    config = config or Config()
    data = data or common.load_digits_split()
    bidder, experts, optimizers = build(seed, config)
    order = common.batches(len(data.y_train), config.batch_size, common.derived_generator(seed, BATCH_STREAM))
    noise = common.derived_generator(seed, NOISE_STREAM)
    history: dict[str, list] = {
        "step": [],
        "loss": [],
        "accuracy": [],
        "revenue": [],
        "bids": [],
        "masks": [],
    }
    history |= {"eval_step": [], "test_accuracy": []}
    with common.progress(config.steps, f"single bidder seed {seed}", show) as bar:
        for step in range(config.steps):
            index = next(order)
            record = train_step(
                bidder, experts, optimizers, (data.x_train[index], data.y_train[index]), noise, config
            )
            history["step"].append(step)
            for key, value in asdict(record).items():
                history[key].append(value)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                history["eval_step"].append(step + 1)
                history["test_accuracy"].append(evaluate(bidder, experts, data.x_test, data.y_test, config))
            bar.update(1)
    with torch.no_grad():
        _, weights = allocate(bidder.eval(), data.x_train, None)
    bidder.train()
    bids_end = weights[1:].tolist()
    return Result(
        seed=seed,
        config=config,
        train_batch_accuracy=sum(history["accuracy"][-100:]) / len(history["accuracy"][-100:]),
        train_accuracy=evaluate(bidder, experts, data.x_train, data.y_train, config),
        test_accuracy=history["test_accuracy"][-1],
        revenue_start=history["revenue"][0],
        revenue_end=float(weights[0]),
        bids_end=bids_end,
        masks_end=market.masks(expert_bids(weights, config.masking), config.market_shift).tolist(),
        history=history,
    )


MASKING_NOTE = (
    "masking: expert i is masked by relu(w_i - 0.2), its own bid. The original masked expert i by weights[i] of "
    "[revenue, w_1, w_2, w_3]: expert 0 by the bidder's revenue weight, expert 1 by w_1, expert 2 by w_2 "
    "(w_3 unused), so raising revenue opened expert 0's mask instead of closing every mask."
)


def report(results: list[Result]) -> str:
    headers = [
        "seed",
        "batch acc",
        "train acc",
        "held-out acc",
        "revenue start",
        "revenue end",
        "bids w_1..w_n",
    ]
    rows: list[list[object]] = [
        [
            r.seed,
            r.train_batch_accuracy,
            r.train_accuracy,
            r.test_accuracy,
            r.revenue_start,
            r.revenue_end,
            " ".join(f"{b:.3f}" for b in r.bids_end),
        ]
        for r in results
    ]
    medians = {
        key: common.summary([getattr(r, key) for r in results])
        for key in ("train_batch_accuracy", "train_accuracy", "test_accuracy", "revenue_start", "revenue_end")
    }
    rows.append(["median"] + [medians[key]["median"] for key in medians] + [""])
    rows.append(
        [
            "original",
            ORIGINAL["train_batch_accuracy"],
            "-",
            "-",
            ORIGINAL["revenue_start"],
            ORIGINAL["revenue_end"],
            "",
        ]
    )
    config = results[0].config
    lines = [
        f"Single bidder ({config.steps} steps, batch {config.batch_size}, lr {config.lr}, masking {config.masking})",
        common.format_table(headers, rows),
        "",
        "original: MNIST, accuracy on training batches only; here: digits, training batches (mean of the last 100),",
        "the whole training split and the held-out 20% (noiseless gating for the last two).",
    ]
    lines.append(observations(results))
    if config.masking == "intended":
        lines.append(MASKING_NOTE)
    return "\n".join(lines)


def observations(results: list[Result]) -> str:
    """What the bidder ended up buying, in numbers: how many experts it still pays above the shift."""
    open_counts = [sum(m > 0 for m in r.masks_end) for r in results]
    top_bids = [max(r.bids_end) for r in results]
    top_masks = [max(r.masks_end) for r in results]
    return (
        f"at the end: experts with an open mask per seed {open_counts}; highest bid {min(top_bids):.3f}..{max(top_bids):.3f}"
        f" (mask {min(top_masks):.4f}..{max(top_masks):.4f}) against the shift {results[0].config.market_shift}"
    )


def plots(results: list[Result], out: Path) -> Path:
    accuracy: common.Series = {}
    revenue: common.Series = {}
    bids: common.Series = {}
    for r in results:
        steps, acc = r.history["step"], r.history["accuracy"]
        smooth = [
            sum(acc[max(0, i - 99) : i + 1]) / len(acc[max(0, i - 99) : i + 1]) for i in range(len(acc))
        ]
        accuracy[f"seed {r.seed} batch"] = (steps, smooth)
        accuracy[f"seed {r.seed} held-out"] = (r.history["eval_step"], r.history["test_accuracy"])
        revenue[f"seed {r.seed}"] = (steps, r.history["revenue"])
    first = results[0]
    for i in range(first.config.n_experts):
        bids[f"w_{i + 1}"] = (first.history["step"], [b[i] for b in first.history["bids"]])
        bids[f"mask {i + 1}"] = (first.history["step"], [m[i] for m in first.history["masks"]])
    return common.plot_panels(
        out / f"single_bidder_{first.config.masking}.png",
        [
            common.Panel("accuracy", "accuracy", accuracy),
            common.Panel("revenue (self-weight)", "revenue", revenue),
            common.Panel(f"bids and masks, seed {first.seed}", "value", bids),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[1], seeds=5, steps=10_000)
    parser.add_argument("--masking", choices=["intended", "original"], default="intended")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--activation", choices=["none", "relu"], default="none")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = Config(
        steps=40 if args.quick else args.steps,
        masking=args.masking,
        hidden=args.hidden,
        embedding=args.embedding,
        activation=args.activation,
        eval_every=20 if args.quick else Config.eval_every,
    )
    data = common.load_digits_split()
    results = [run(seed, config, data, show=not args.no_progress) for seed in common.seeds_from(args)]
    text = report(results)
    print(text)
    payload = {
        "settings": asdict(config),
        "report": text,
        "seeds": [{**asdict(r), "history": _thin(r.history)} for r in results],
    }
    json_path = common.write_json(args.out / f"single_bidder_{config.masking}.json", payload)
    print(f"wrote {json_path} and {plots(results, args.out)}")
    return 0


def _thin(history: dict[str, list], every: int = 10) -> dict[str, list]:
    """Every 10th training step in the JSON (all of the evaluation points)."""
    return {
        key: values if key.startswith("eval") or key == "test_accuracy" else values[::every]
        for key, values in history.items()
    }


if __name__ == "__main__":
    raise SystemExit(main())
