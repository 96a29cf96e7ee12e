#!/usr/bin/env python3
"""Gradient bidding learns routing: heterogeneous digit peers, each bidding with a small network
of the input, come to win the inputs their models handle well (docs/gradient.md, seller-side).

    python scripts/experiments/gradient_routing.py              # 3 seeds x 1000 rounds
    python scripts/experiments/gradient_routing.py --seed 1 --steps 600
    python scripts/experiments/gradient_routing.py --quick
    python scripts/experiments/gradient_routing.py --sweep --seeds 1   # lr x mixing x anchor, in process

How this works
--------------
Four real ``atomic-peer`` processes (:func:`atomic_p2p.testing.peer_processes`) host digit
classifiers that differ the way the routing benchmark's do (``peers/digits.py``,
``peers/bench_models.py``; weights trained once on the shared training split and cached):

    spec-0-4   MLP trained on digits 0-4 only: near perfect there, confidently wrong on 5-9
    spec-5-9   the same on 5-9
    small      MLP 64-16-10 on every digit (about 0.95 held out)
    weak       MLP trained on 3% of the training set (about 0.7)

Every model's ``[models.gradient]`` is a cooperative ``ffnn`` bid function: b(x) =
softplus(MLP(x)), 64 -> 16 -> 1, its own seed per peer and run. The requester is
:class:`~atomic_p2p.requester.gradient.GradientMarket` with a constant shift of 0, so every bidder
runs and the gates are g_i(x) = b_i(x) / sum_j b_j(x); the market's answer is the gate-weighted
mixture of the peers' logits, its loss the cross-entropy, and each peer receives dL/db_i for the
examples it bid on in a signed BidGradient, which its bid function descends. The peers' models
never change (no remote training): only the bids learn, so whatever routing appears was learnt
by the bidders from the requester's gradients alone.

Training draws batches of the training split (the split the peers' models were trained on) in a
seeded order. Every ``--eval-every`` rounds the held-out 20% is put to two markets without
learning (``step(..., learn=False)``, so no gradient is sent): the mixture as trained, and top-1
routing (``k=1``: each example goes to its highest bidder alone, whose answer is the market's).
Each peer alone on the held-out split is the baseline: the market must beat the best of them.
Specialisation is measured as win shares: for each true class, the share of held-out examples on
which each peer's bid is the highest, beside that peer's own accuracy on the class.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: peers.examples
import common

from atomic_p2p import market
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import GradientConfig
from atomic_p2p.peer.models import load_factory
from atomic_p2p.requester.gradient import GradientMarket
from atomic_p2p.testing import peer_processes
from peers.examples import PEERS_DIR, weights_cache_dir

CAPABILITY = "classify/digits"
BATCH_STREAM = 100
PRICE = 0.001  # per example: a peer holding the whole gate of every example is paid its quote
CLASSES = 10


@dataclass(frozen=True)
class PeerSpec:
    name: str
    factory: str  # relative to peers/
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)


ROSTER: tuple[PeerSpec, ...] = (
    PeerSpec("spec-0-4", "digits.py:specialist", "MLP trained on 0-4 only", {"classes": [0, 1, 2, 3, 4]}),
    PeerSpec("spec-5-9", "digits.py:specialist", "MLP trained on 5-9 only", {"classes": [5, 6, 7, 8, 9]}),
    PeerSpec("small", "digits.py:small", "MLP 64-16-10, every digit"),
    PeerSpec("weak", "bench_models.py:weak", "MLP on 3% of the training set"),
)


@dataclass(frozen=True)
class Config:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.003  # the bid functions' Adam
    hidden: int = 16  # the bid functions' width
    eval_every: int = 50
    # What the market mixes: the peers' "logits" (loss: cross-entropy of the mixture) or their
    # "probabilities" (softmax; loss: -log of the mixture's probability of the label). The
    # networked run mixes logits only (the peers answer logits); --in-process runs both.
    mixing: str = "logits"
    anchor: float = 0.0  # > 0: the bid learners' scale anchor (docs/gradient.md); 0: off
    anchor_weight: float = 1.0


def peer_table(spec: PeerSpec, index: int, seed: int, config: Config) -> dict[str, Any]:
    """A peer config (what a TOML file holds) for one roster entry."""
    return {
        "peer": {"name": spec.name, "cache_dir": str(weights_cache_dir()), "bid_validity_s": 60.0},
        "models": [
            {
                "model_id": spec.name,
                "capabilities": [CAPABILITY],
                "factory": str(PEERS_DIR / spec.factory),
                "options": dict(spec.options),
                "price_per_example": PRICE,
                "strategy": "fixed",
                "strategy_options": {"confidence": 1.0},
                "gradient": {
                    "enabled": True,
                    "role": "cooperative",
                    "bid_function": "ffnn",
                    "hidden": config.hidden,
                    "lr": config.lr,
                    "seed": seed * 100 + index,
                    "anchor": config.anchor,
                    "anchor_weight": config.anchor_weight,
                },
            }
        ],
    }


def held_out_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split the peers' models were trained on (peers/digits.py's ``dataset``)."""
    dataset = load_factory(f"{PEERS_DIR / 'digits.py'}:dataset")
    x_train, y_train, x_test, y_test = dataset()
    return x_train, y_train, x_test, y_test


@dataclass
class Evaluation:
    step: int
    mixture_accuracy: float
    top1_accuracy: float
    wins: list[list[float]]  # [peer][class]: share of the class's held-out examples it outbids all on
    mean_gate: list[float]  # per peer, over the held-out split


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


@dataclass(frozen=True)
class Pass:
    """One market's answers over a whole split, sent in chunks a peer accepts (max_batch 256)."""

    output: torch.Tensor  # [n, 10]
    bids: dict[str, torch.Tensor]  # model id -> [n]
    gates: dict[str, torch.Tensor]  # model id -> [n]


async def forward_pass(market: GradientMarket, x: torch.Tensor, y: torch.Tensor, chunk: int = 180) -> Pass:
    """The market on every example of ``x`` without learning (no gradient is computed or sent)."""
    outputs: list[torch.Tensor] = []
    bids: dict[str, list[torch.Tensor]] = {}
    gates: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(y), chunk):
        result = await market.step(x[start : start + chunk], y[start : start + chunk], learn=False)
        outputs.append(result.output)
        for peer in result.peers:
            bids.setdefault(peer.model_id, []).append(peer.bids)
            gates.setdefault(peer.model_id, []).append(peer.gates)
    return Pass(
        torch.cat(outputs),
        {name: torch.cat(parts) for name, parts in bids.items()},
        {name: torch.cat(parts) for name, parts in gates.items()},
    )


def win_shares(
    bids: Mapping[str, torch.Tensor], names: Sequence[str], labels: torch.Tensor
) -> list[list[float]]:
    """[peer][class] share of each class's examples on which that peer bid the highest."""
    winner = torch.stack([bids[name] for name in names]).argmax(dim=0)
    return [
        [float((winner[labels == c] == i).float().mean()) for c in range(CLASSES)] for i in range(len(names))
    ]


async def evaluate(
    step: int,
    mixture: GradientMarket,
    routed: GradientMarket,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
) -> Evaluation:
    """Both markets on the held-out split, sending no gradients."""
    mixed = await forward_pass(mixture, x, y)
    top1 = await forward_pass(routed, x, y)
    return Evaluation(
        step=step,
        mixture_accuracy=accuracy(mixed.output, y),
        top1_accuracy=accuracy(top1.output, y),
        wins=win_shares(mixed.bids, names, y),
        mean_gate=[float(mixed.gates[name].mean()) for name in names],
    )


@dataclass
class Result:
    seed: int
    config: Config
    names: list[str]
    solo_accuracy: list[float]  # each peer alone, held out
    solo_class_accuracy: list[list[float]]  # [peer][class]
    oracle_accuracy: float  # some peer is right
    evaluations: list[Evaluation]
    train_loss: list[float]
    payments: list[float]  # per peer, summed over training rounds

    @property
    def start(self) -> Evaluation:
        return self.evaluations[0]

    @property
    def end(self) -> Evaluation:
        return self.evaluations[-1]


async def run(seed: int, config: Config, workdir: Path, show: bool = True) -> Result:
    x_train, y_train, x_test, y_test = held_out_data()
    tables = [peer_table(spec, i, seed, config) for i, spec in enumerate(ROSTER)]
    names = [spec.name for spec in ROSTER]
    identity = Identity.generate()
    async with peer_processes(tables, workdir / f"seed-{seed}") as peers:
        addresses = [peer.address for peer in peers]
        solo_logits = []
        for address in addresses:
            async with GradientMarket(identity, [address], capability=CAPABILITY, shift_mode=0.0) as alone:
                solo_logits.append((await forward_pass(alone, x_test, y_test)).output)
        correct = torch.stack([logits.argmax(dim=1) == y_test for logits in solo_logits])  # [peer, n]
        options: dict[str, Any] = {"capability": CAPABILITY, "shift_mode": 0.0}
        async with (
            GradientMarket(identity, addresses, **options) as market,
            GradientMarket(identity, addresses, k=1, **options) as routed,
        ):
            evaluations = [await evaluate(0, market, routed, names, x_test, y_test)]
            order = common.batches(
                len(y_train), config.batch_size, common.derived_generator(seed, BATCH_STREAM)
            )
            losses: list[float] = []
            payments = dict.fromkeys(names, 0.0)
            with common.progress(config.steps, f"gradient routing seed {seed}", show) as bar:
                for step in range(1, config.steps + 1):
                    index = next(order)
                    result = await market.step(x_train[index], y_train[index])
                    refused = [p.model_id for p in result.peers if not p.applied]
                    if refused or len(result.peers) != len(names):
                        raise RuntimeError(
                            f"round {step}: {refused or 'a peer'} did not take part or refused"
                        )
                    losses.append(result.loss)
                    for peer in result.peers:
                        payments[peer.model_id] += peer.payment
                    if step % config.eval_every == 0 or step == config.steps:
                        evaluations.append(await evaluate(step, market, routed, names, x_test, y_test))
                        bar.set_postfix(mixture=f"{evaluations[-1].mixture_accuracy:.3f}")
                    bar.update(1)
    return _result(seed, config, names, correct, y_test, evaluations, losses, [payments[n] for n in names])


# --- the same market in one process: the reference the networked run is checked against -------


class LocalBidder:
    """A peer's model and its bid learner, built exactly as the atomic-peer process builds them
    (same factory and cached weights, same seeded bid function, same learner settings)."""

    def __init__(self, spec: PeerSpec, index: int, seed: int, config: Config) -> None:
        factory = load_factory(str(PEERS_DIR / spec.factory))
        self.model = factory(cache_dir=weights_cache_dir(), **spec.options).module.eval()
        gradient = GradientConfig(**peer_table(spec, index, seed, config)["models"][0]["gradient"])
        state = torch.random.get_rng_state()
        torch.manual_seed(gradient.seed)  # as atomic_p2p.peer.gradients.BidLearner does
        bid_function = market.FeedForwardBid(64, gradient.hidden)
        torch.random.set_rng_state(state)
        self.learner = market.CooperativeLearner(
            bid_function,
            lr=gradient.lr,
            max_norm=gradient.max_norm,
            reject_norm=gradient.reject_norm,
            anchor=gradient.anchor or None,
            anchor_weight=gradient.anchor_weight,
        )
        self.mixing = config.mixing

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the market mixes: logits, or probabilities (``Config.mixing``)."""
        logits = self.logits(x)
        return logits.softmax(dim=1) if self.mixing == PROBABILITIES else logits


PROBABILITIES = "probabilities"
MIXING_MODES = ("logits", PROBABILITIES)


def probability_loss(mixed: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log of the mixture's probability of each label, averaged (gates sum to just under 1)."""
    return functional.nll_loss(torch.log(mixed.clamp_min(1e-12)), labels)


def mixture_loss(mixing: str) -> market.LossFunction:
    if mixing not in MIXING_MODES:
        raise ValueError(f"mixing must be one of {', '.join(MIXING_MODES)}, got {mixing!r}")
    return probability_loss if mixing == PROBABILITIES else functional.cross_entropy


def local_pass(
    bidders: Sequence[LocalBidder], x: torch.Tensor, k: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, bids [peer, n], gates [peer, n]) of the market with shift 0, mixture or top-k."""
    bids = torch.stack([b.learner.bid(x) for b in bidders])
    kept = market.top_k(market.masks(bids, market.shift(bids, 0.0)), k or len(bidders))
    gate = market.gates(kept.masks)
    return market.mixture(gate, torch.stack([b.outputs(x) for b in bidders])), bids, gate


def local_evaluation(
    step: int, bidders: Sequence[LocalBidder], names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> Evaluation:
    output, bids, gate = local_pass(bidders, x, None)
    top1, _, _ = local_pass(bidders, x, 1)
    return Evaluation(
        step=step,
        mixture_accuracy=accuracy(output, y),
        top1_accuracy=accuracy(top1, y),
        wins=win_shares(dict(zip(names, bids, strict=True)), names, y),
        mean_gate=gate.mean(dim=1).tolist(),
    )


def simulate(seed: int, config: Config, show: bool = True) -> Result:
    """The experiment with every peer's model and bid learner in this process (no network)."""
    x_train, y_train, x_test, y_test = held_out_data()
    names = [spec.name for spec in ROSTER]
    bidders = [LocalBidder(spec, i, seed, config) for i, spec in enumerate(ROSTER)]
    loss_fn = mixture_loss(config.mixing)
    correct = torch.stack([b.logits(x_test).argmax(dim=1) == y_test for b in bidders])
    evaluations = [local_evaluation(0, bidders, names, x_test, y_test)]
    order = common.batches(len(y_train), config.batch_size, common.derived_generator(seed, BATCH_STREAM))
    losses: list[float] = []
    payments = [0.0] * len(names)
    with common.progress(config.steps, f"gradient routing in-process seed {seed}", show) as bar:
        for step in range(1, config.steps + 1):
            index = next(order)
            x, y = x_train[index], y_train[index]
            bids = torch.stack([b.learner.bid(x) for b in bidders])
            outputs = torch.stack([b.outputs(x) for b in bidders])
            round_ = market.market_gradients(bids, outputs, y, loss_fn, shift_mode=0.0)
            for i, bidder in enumerate(bidders):
                bidder.learner.learn(x, round_.loss_by_bid[i])
                payments[i] += PRICE * float(round_.gates[i].sum())
            losses.append(float(round_.loss))
            if step % config.eval_every == 0 or step == config.steps:
                evaluations.append(local_evaluation(step, bidders, names, x_test, y_test))
            bar.update(1)
    return _result(seed, config, names, correct, y_test, evaluations, losses, payments)


def _result(
    seed: int,
    config: Config,
    names: list[str],
    correct: torch.Tensor,
    labels: torch.Tensor,
    evaluations: list[Evaluation],
    losses: list[float],
    payments: list[float],
) -> Result:
    return Result(
        seed=seed,
        config=config,
        names=names,
        solo_accuracy=[float(row.float().mean()) for row in correct],
        solo_class_accuracy=[
            [float(row[labels == c].float().mean()) for c in range(CLASSES)] for row in correct
        ],
        oracle_accuracy=float(correct.any(dim=0).float().mean()),
        evaluations=evaluations,
        train_loss=losses,
        payments=payments,
    )


def domain_share(result: Result, evaluation: Evaluation, peer: int) -> float:
    """Share of the held-out examples of the classes this peer is best at (its accuracy there is
    within 0.02 of the best peer's) that it wins."""
    classes = [
        c
        for c in range(CLASSES)
        if result.solo_class_accuracy[peer][c] >= max(row[c] for row in result.solo_class_accuracy) - 0.02
    ]
    if not classes:
        return float("nan")
    return sum(evaluation.wins[peer][c] for c in classes) / len(classes)


@dataclass(frozen=True)
class Verdict:
    beats_every_peer: bool  # the mixture's held-out accuracy beats the best single peer's
    specialists_win_their_domain: bool  # each specialist wins most of its own classes


def verdict(result: Result) -> Verdict:
    end = result.end
    spec_low, spec_high = result.names.index("spec-0-4"), result.names.index("spec-5-9")
    low = sum(end.wins[spec_low][c] for c in range(5)) / 5
    high = sum(end.wins[spec_high][c] for c in range(5, 10)) / 5
    return Verdict(end.mixture_accuracy > max(result.solo_accuracy), low > 0.5 and high > 0.5)


def report(results: Sequence[Result], where: str) -> str:
    names = results[0].names
    config = results[0].config
    solo_headers = [f"{name} alone" for name in names]
    headers = [
        "seed",
        *solo_headers,
        "oracle",
        "mixture start",
        "mixture end",
        "top-1 start",
        "top-1 end",
        "beats all",
    ]
    rows: list[list[object]] = []
    for r in results:
        rows.append(
            [
                r.seed,
                *r.solo_accuracy,
                r.oracle_accuracy,
                r.start.mixture_accuracy,
                r.end.mixture_accuracy,
                r.start.top1_accuracy,
                r.end.top1_accuracy,
                "yes" if verdict(r).beats_every_peer else "NO",
            ]
        )
    lines = [
        f"Gradient routing: {len(names)} peers ({where}), cooperative ffnn bids, {config.steps} rounds"
        f" of {config.batch_size}, bid lr {config.lr}; held-out accuracy ({len(results)} seeds)",
        common.format_table(headers, rows),
        "",
        "Win share by class at the end (share of held-out examples of each digit on which the peer bid highest),"
        " beside the peer's own accuracy on the digit; seed " + str(results[0].seed) + ":",
    ]
    first = results[0]
    class_headers = ["peer", "", *[str(c) for c in range(CLASSES)]]
    class_rows: list[list[object]] = []
    for i, name in enumerate(names):
        class_rows.append([name, "wins start", *(f"{v:.2f}" for v in first.start.wins[i])])
        class_rows.append(["", "wins end", *(f"{v:.2f}" for v in first.end.wins[i])])
        class_rows.append(["", "own acc", *(f"{v:.2f}" for v in first.solo_class_accuracy[i])])
    lines.append(common.format_table(class_headers, class_rows))
    lines.append("")
    share_headers = ["seed", *[f"{name} on its best digits" for name in names], "specialists win their half"]
    share_rows = [
        [
            r.seed,
            *(
                f"{domain_share(r, r.start, i):.2f} -> {domain_share(r, r.end, i):.2f}"
                for i in range(len(names))
            ),
            "yes" if verdict(r).specialists_win_their_domain else "NO",
        ]
        for r in results
    ]
    lines += [
        "Wins on the digits each peer handles best (its accuracy within 0.02 of the best peer's), start -> end:",
        common.format_table(share_headers, share_rows),
    ]
    return "\n".join(lines)


def plots(results: Sequence[Result], out: Path, stem: str) -> tuple[Path, Path]:
    accuracy_series: common.Series = {}
    domain_series: common.Series = {}
    for r in results:
        steps = [e.step for e in r.evaluations]
        accuracy_series[f"seed {r.seed} mixture"] = (steps, [e.mixture_accuracy for e in r.evaluations])
        accuracy_series[f"seed {r.seed} top-1"] = (steps, [e.top1_accuracy for e in r.evaluations])
        accuracy_series[f"seed {r.seed} best peer alone"] = (
            [steps[0], steps[-1]],
            [max(r.solo_accuracy)] * 2,
        )
    first = results[0]
    steps = [e.step for e in first.evaluations]
    for i, name in enumerate(first.names):
        domain_series[name] = (steps, [domain_share(first, e, i) for e in first.evaluations])
    losses = {f"seed {r.seed}": (list(range(1, len(r.train_loss) + 1)), r.train_loss) for r in results}
    curves = common.plot_panels(
        out / f"{stem}.png",
        [
            common.Panel("held-out accuracy", "accuracy", accuracy_series),
            common.Panel(f"wins on its best digits, seed {first.seed}", "win share", domain_series),
            common.Panel("training loss (market)", "cross-entropy", losses),
        ],
    )
    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 3, figsize=(16, 3.8), layout="constrained")
    matrices = [
        ("win share, start", first.start.wins),
        (f"win share, after {first.end.step} rounds", first.end.wins),
        ("each peer's own accuracy", first.solo_class_accuracy),
    ]
    for axis, (title, matrix) in zip(axes, matrices, strict=True):
        image = axis.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        axis.set_title(title)
        axis.set_xticks(range(CLASSES))
        axis.set_xlabel("true digit")
        axis.set_yticks(range(len(first.names)), first.names)
        for (row, col), value in ((rc, matrix[rc[0]][rc[1]]) for rc in _cells(matrix)):
            axis.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if value < 0.6 else "k",
            )
    figure.colorbar(image, ax=axes.tolist(), shrink=0.8)
    heatmap = out / f"{stem}_wins.png"
    figure.savefig(heatmap, dpi=110)
    plt.close(figure)
    return curves, heatmap


def _cells(matrix: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    return [(row, col) for row in range(len(matrix)) for col in range(len(matrix[row]))]


SWEEP_LRS = (0.005, 0.01, 0.02, 0.05)


@dataclass
class SweepRow:
    mixing: str
    lr: float
    anchor: float
    seed: int
    mixture_accuracy: float
    top1_accuracy: float
    best_peer_accuracy: float
    specialist_wins: tuple[float, float]  # spec-0-4 on 0-4, spec-5-9 on 5-9
    specialist_gates: tuple[float, float]  # their mean gates, held out
    specialised: bool  # each specialist wins most of its half
    beats_best_peer: bool


def sweep_row(result: Result) -> SweepRow:
    end, config = result.end, result.config
    low, high = result.names.index("spec-0-4"), result.names.index("spec-5-9")
    judged = verdict(result)
    return SweepRow(
        mixing=config.mixing,
        lr=config.lr,
        anchor=config.anchor,
        seed=result.seed,
        mixture_accuracy=end.mixture_accuracy,
        top1_accuracy=end.top1_accuracy,
        best_peer_accuracy=max(result.solo_accuracy),
        specialist_wins=(sum(end.wins[low][:5]) / 5, sum(end.wins[high][5:]) / 5),
        specialist_gates=(end.mean_gate[low], end.mean_gate[high]),
        specialised=judged.specialists_win_their_domain,
        beats_best_peer=judged.beats_every_peer,
    )


def sweep(base: Config, seeds: Sequence[int], anchors: Sequence[float], show: bool) -> list[SweepRow]:
    """Every learning rate in SWEEP_LRS x both mixing modes x ``anchors``, in this process."""
    rows = []
    for mixing in MIXING_MODES:
        for lr in SWEEP_LRS:
            for anchor in anchors:
                config = replace(base, lr=lr, mixing=mixing, anchor=anchor, eval_every=base.steps)
                rows += [sweep_row(simulate(seed, config, show)) for seed in seeds]
    return rows


def sweep_report(rows: Sequence[SweepRow], config: Config) -> str:
    headers = [
        "mixing",
        "lr",
        "anchor",
        "seed",
        "mixture",
        "top-1",
        "best peer",
        "spec wins (0-4, 5-9)",
        "spec gates",
        "specialised",
        "beats best",
    ]
    table = [
        [
            r.mixing,
            r.lr,
            f"{r.anchor:g} (w {config.anchor_weight:g})" if r.anchor else "off",
            r.seed,
            r.mixture_accuracy,
            r.top1_accuracy,
            r.best_peer_accuracy,
            f"{r.specialist_wins[0]:.2f}, {r.specialist_wins[1]:.2f}",
            f"{r.specialist_gates[0]:.3f}, {r.specialist_gates[1]:.3f}",
            "yes" if r.specialised else "NO",
            "yes" if r.beats_best_peer else "NO",
        ]
        for r in rows
    ]
    return "\n".join(
        [
            f"Gradient routing sweep (in this process): {config.steps} rounds of {config.batch_size},"
            " held-out accuracy at the end; specialised = each specialist wins over half of its digits",
            common.format_table(headers, table),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[0], seeds=3, steps=Config.steps)
    parser.add_argument("--batch-size", type=int, default=Config.batch_size)
    parser.add_argument("--lr", type=float, default=Config.lr, help="the bid functions' learning rate")
    parser.add_argument("--eval-every", type=int, default=Config.eval_every)
    parser.add_argument(
        "--mixing",
        choices=MIXING_MODES,
        default=Config.mixing,
        help="mix the peers' logits or their probabilities (probabilities: --in-process only)",
    )
    parser.add_argument(
        "--anchor", type=float, default=Config.anchor, help="the bid learners' scale anchor (0: off)"
    )
    parser.add_argument("--anchor-weight", type=float, default=Config.anchor_weight)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="in process: lr 0.005, 0.01, 0.02, 0.05 x both mixings x anchor off and --anchor (default 1)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the peers' models and bid learners in this process (the reference; no network)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = Config(
        steps=30 if args.quick else args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=10 if args.quick else args.eval_every,
        mixing=args.mixing,
        anchor=args.anchor,
        anchor_weight=args.anchor_weight,
    )
    show = not args.no_progress
    if args.sweep:
        anchor = args.anchor or 1.0
        rows = sweep(config, common.seeds_from(args), (0.0, anchor), show)
        text = sweep_report(rows, replace(config, anchor=anchor))
        print(text)
        payload = {"settings": asdict(config), "report": text, "rows": [asdict(row) for row in rows]}
        print(f"wrote {common.write_json(args.out / 'gradient_routing_sweep.json', payload)}")
        anchored = [row for row in rows if row.anchor]
        return 0 if all(row.specialised for row in anchored) else 1
    if config.mixing != "logits" and not args.in_process:
        parser.error("--mixing probabilities runs with --in-process only (the peers answer logits)")
    results = []
    with tempfile.TemporaryDirectory(prefix="gradient-routing-") as workdir:
        for seed in common.seeds_from(args):
            if args.in_process:
                results.append(simulate(seed, config, show))
            else:
                results.append(asyncio.run(run(seed, config, Path(workdir), show)))
    text = report(results, "in this process" if args.in_process else "atomic-peer processes")
    print(text)
    payload = {
        "settings": asdict(config),
        "report": text,
        "seeds": [{**asdict(r), "verdict": asdict(verdict(r))} for r in results],
    }
    stem = "gradient_routing_in_process" if args.in_process else "gradient_routing"
    json_path = common.write_json(args.out / f"{stem}.json", payload)
    curves, heatmap = plots(results, args.out, stem)
    print(f"wrote {json_path}, {curves} and {heatmap}")
    return 0 if all(verdict(r).beats_every_peer for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
