#!/usr/bin/env python3
"""Price of anarchy: competitive against coordinated bidding (docs/architecture.md section 9, item 1).

    python scripts/experiments/price_of_anarchy.py                 # 20 seeds x 1000 steps
    python scripts/experiments/price_of_anarchy.py --seeds 10 --clock own
    python scripts/experiments/price_of_anarchy.py --quick

How this works
--------------
n = 10 nodes. Node i owns one row of raw bids theta_i (the optimised variable, as in the original:
W is derived from it, never optimised directly):

    C = contributions: standard normal, min-max scaled over the matrix, rows summing to 1
    W = rownorm(sigmoid(theta)),        theta ~ U[0, 1)
    Q = rownorm((I - W + diag W)^-1)    the absorbing-chain ranking, rows summing to 1
    D_i = 0.5 * (-sum_j mean_col(Q)_j * log Q_ij)     divergence from the mean ranking
    E_i = Q_ii * W_ii                   emission
    M = C * relu(W - rowmean W)         the market mask (atomic_p2p.market.masks, mean shift per row)
    U_i = sum_j M_ij,   P = U + E - D

Competitive: each step one random node takes an Adam step on -P_i over its own row. Coordinated:
every node takes an Adam step on -mean(P) over its row (the same as one Adam over all rows: Adam
is elementwise). lr 0.05, 1000 steps; PoA = sum P_competitive / sum P_coordinated at the end.

The split between coordinator and node is the networked shape (docs/architecture.md section 9: "a coordinator
computes every node's payoff gradient and sends each node the gradient for its row"):
:func:`competitive_gradient` / :func:`coordinated_gradient` run where the payoffs are computed,
:func:`node_update` runs on the node that owns the row. :func:`make_game` draws every random
number a run needs, so a networked run with the same seed replays the same game.

Choices the game above leaves open, each taken to follow the original (unconst/GradientBidding,
PriceOfAnarchy.ipynb / POA.py, TensorFlow 1):

1. Adam's bias-correction clock. TF1's AdamOptimizer keeps one beta1_power/beta2_power pair per
   optimiser and graph, advanced by every apply_gradients; the original built the ten per-node
   train ops from one optimiser, so a node stepping for the first time at global step t gets the
   correction of step t, not of step 1. ``--clock global`` (default) does that: the coordinator
   sends the global step with each gradient. ``--clock own`` counts each node's own steps, as a
   torch.optim.Adam per node would. The update is TF1's: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t),
   theta -= lr_t * m / (sqrt(v) + 1e-8).
2. Fresh initial bids per mode: the original built a new graph, with new random variables, for
   each mode, so the coordinated and competitive runs start from independent U[0, 1) draws.
3. gamma = 0.5 on D (POA.py's default), and Q is row-normalised before E and D.
4. float64 throughout (the original ran float32), so runs replay exactly across processes.
The random streams differ from the original's (numpy, TensorFlow and Python ``random``), so no
single seed can reproduce its 4.53; the distribution over seeds is what compares.

What decides the two clusters (measured with this script): the competitive total ends near -10.1
on every seed, while the coordinated total climbs in steps, with a long plateau near -4.4 before a
last jump to about -2.2. A seed whose coordinated run has made that jump by step 1000 lands near
4.5, one still on the plateau near 2.3. With ``--steps 2000`` the five low seeds of the default
run (1, 4, 7, 13, 18) all move to 4.2-4.65: the bimodality is the 1000-step horizon, not two
equilibria of the game.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from atomic_p2p import market

Mode = Literal["competitive", "coordinated"]
Clock = Literal["global", "own"]
BETA1, BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
ORIGINAL_RUN = 4.53
ORIGINAL_CLUSTERS = ((2.2, 2.5), (4.3, 4.9))
CLUSTER_SPLIT = 3.4  # between the original's two clusters


@dataclass(frozen=True)
class Game:
    """Every random draw of one seed: contributions, both initial bid matrices, the node order."""

    contributions: torch.Tensor  # C [n, n]
    coordinated_init: torch.Tensor  # theta at step 0, coordinated run
    competitive_init: torch.Tensor  # theta at step 0, competitive run
    schedule: torch.Tensor  # [steps] which node moves at each competitive step


def make_game(seed: int, n: int = 10, steps: int = 1000) -> Game:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, n, generator=generator, dtype=torch.float64)
    scaled = (raw - raw.min()) / (raw.max() - raw.min())
    contributions = scaled / scaled.sum(dim=1, keepdim=True)
    coordinated = torch.rand(n, n, generator=generator, dtype=torch.float64)
    competitive = torch.rand(n, n, generator=generator, dtype=torch.float64)
    schedule = torch.randint(n, (steps,), generator=generator)
    return Game(contributions, coordinated, competitive, schedule)


@dataclass(frozen=True)
class Terms:
    weights: torch.Tensor  # W
    ranking: torch.Tensor  # Q
    divergence: torch.Tensor  # D
    emission: torch.Tensor  # E
    utility: torch.Tensor  # U
    payoff: torch.Tensor  # P


def payoff_terms(raw: torch.Tensor, contributions: torch.Tensor, gamma: float = 0.5) -> Terms:
    """Every node's payoff P = U + E - D from the raw bids (differentiable in ``raw``)."""
    sig = torch.sigmoid(raw)
    weights = sig / sig.sum(dim=1, keepdim=True)
    self_weights = torch.diag_embed(torch.diagonal(weights))
    eye = torch.eye(raw.shape[0], dtype=raw.dtype)
    chain = torch.linalg.inv(eye - weights + self_weights)  # strictly diagonally dominant: invertible
    ranking = chain / chain.sum(dim=1, keepdim=True)  # entries > 0: the inverse of an M-matrix
    divergence = gamma * -(ranking.mean(dim=0) * torch.log(ranking)).sum(dim=1)
    emission = torch.diagonal(ranking) * torch.diagonal(weights)
    mask = contributions * market.masks(weights, market.shift(weights, "mean", dim=1))
    utility = mask.sum(dim=1)
    return Terms(weights, ranking, divergence, emission, utility, utility + emission - divergence)


def competitive_gradient(
    raw: torch.Tensor, contributions: torch.Tensor, node: int, gamma: float = 0.5
) -> tuple[torch.Tensor, Terms]:
    """Coordinator: d(-P_node)/d theta_node, the gradient for that node's row; and the terms."""
    leaf = raw.detach().requires_grad_(True)
    terms = payoff_terms(leaf, contributions, gamma)
    (gradient,) = torch.autograd.grad(-terms.payoff[node], leaf)
    return gradient[node], _detached(terms)


def coordinated_gradient(
    raw: torch.Tensor, contributions: torch.Tensor, gamma: float = 0.5
) -> tuple[torch.Tensor, Terms]:
    """Coordinator: d(-mean P)/d theta, one row per node; and the terms."""
    leaf = raw.detach().requires_grad_(True)
    terms = payoff_terms(leaf, contributions, gamma)
    (gradient,) = torch.autograd.grad(-terms.payoff.mean(), leaf)
    return gradient, _detached(terms)


def _detached(terms: Terms) -> Terms:
    return Terms(*(getattr(terms, name).detach() for name in Terms.__dataclass_fields__))


@dataclass(frozen=True)
class AdamState:
    first: torch.Tensor  # m
    second: torch.Tensor  # v


def adam_init(n: int) -> AdamState:
    return AdamState(torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))


def node_update(
    row: torch.Tensor, gradient: torch.Tensor, state: AdamState, step: int, lr: float = 0.05
) -> tuple[torch.Tensor, AdamState]:
    """Node: one TF1-style Adam step on its own row. ``step`` counts from 1 (see the clock)."""
    first = BETA1 * state.first + (1 - BETA1) * gradient
    second = BETA2 * state.second + (1 - BETA2) * gradient * gradient
    rate = lr * (1 - BETA2**step) ** 0.5 / (1 - BETA1**step)
    return row - rate * first / (second.sqrt() + ADAM_EPSILON), AdamState(first, second)


@dataclass
class Trajectory:
    final: Terms
    total_payoff: list[float] = field(default_factory=list)  # sum P before each step, then final
    mean_self_weight: list[float] = field(default_factory=list)  # mean W_ii, same steps


def converge(game: Game, mode: Mode, lr: float, gamma: float, clock: Clock) -> Trajectory:
    """Run one mode to the end of the game's schedule; in-process stand-in for the network."""
    raw = (game.coordinated_init if mode == "coordinated" else game.competitive_init).clone()
    n = raw.shape[0]
    states = [adam_init(n) for _ in range(n)]
    own_steps = [0] * n
    totals, self_weights = [], []
    for step, node in enumerate(game.schedule.tolist(), start=1):
        if mode == "coordinated":
            gradient, terms = coordinated_gradient(raw, game.contributions, gamma)
            movers = list(range(n))
        else:
            row_gradient, terms = competitive_gradient(raw, game.contributions, node, gamma)
            gradient, movers = torch.zeros_like(raw), [node]
            gradient[node] = row_gradient
        totals.append(float(terms.payoff.sum()))
        self_weights.append(float(torch.diagonal(terms.weights).mean()))
        for mover in movers:
            own_steps[mover] += 1
            clock_step = step if clock == "global" else own_steps[mover]
            raw[mover], states[mover] = node_update(
                raw[mover], gradient[mover], states[mover], clock_step, lr
            )
    final = payoff_terms(raw, game.contributions, gamma)
    totals.append(float(final.payoff.sum()))
    self_weights.append(float(torch.diagonal(final.weights).mean()))
    return Trajectory(final, totals, self_weights)


@dataclass(frozen=True)
class Result:
    seed: int
    poa: float
    total_competitive: float
    total_coordinated: float
    competitive: Trajectory
    coordinated: Trajectory


def run(
    seed: int, steps: int = 1000, n: int = 10, lr: float = 0.05, gamma: float = 0.5, clock: Clock = "global"
) -> Result:
    """One seed: PoA = sum P_competitive / sum P_coordinated after ``steps`` steps each."""
    game = make_game(seed, n, steps)
    coordinated = converge(game, "coordinated", lr, gamma, clock)
    competitive = converge(game, "competitive", lr, gamma, clock)
    total_comp = float(competitive.final.payoff.sum())
    total_coord = float(coordinated.final.payoff.sum())
    return Result(seed, total_comp / total_coord, total_comp, total_coord, competitive, coordinated)


def verdict(results: list[Result]) -> list[str]:
    """Plain statements of how the measured distribution compares with the original's."""
    values = [r.poa for r in results]
    low = [r for r in results if r.poa < CLUSTER_SPLIT]
    high = [r for r in results if r.poa >= CLUSTER_SPLIT]
    lines = [f"clusters: {len(low)} seeds below {CLUSTER_SPLIT}, {len(high)} at or above"]
    for name, cluster, (lo, hi) in (("low", low, ORIGINAL_CLUSTERS[0]), ("high", high, ORIGINAL_CLUSTERS[1])):
        if cluster:
            poas = [r.poa for r in cluster]
            inside = sum(lo <= v <= hi for v in poas)
            lines.append(
                f"  {name}: PoA {_span(poas)} (median {common.summary(poas)['median']:.3f}), original ~{lo}-{hi},"
                f" {inside}/{len(cluster)} inside; sum P comp {_span([r.total_competitive for r in cluster])},"
                f" sum P coord {_span([r.total_coordinated for r in cluster])}"
            )
    lines.append(f"bimodal like the original: {'yes' if low and high else 'no'}")
    where = "inside" if min(values) <= ORIGINAL_RUN <= max(values) else "outside"
    lines.append(f"the original single run (4.53) falls {where} the measured range")
    lines.append(
        "why values differ from the original's at all: other random streams (no seed maps to its run), float64,"
        " and any coordinated run still on a plateau at the last step (see the total-payoff plot)"
    )
    return lines


def _span(values: list[float]) -> str:
    return f"{min(values):.3f}..{max(values):.3f}"


def report(results: list[Result], args_text: str) -> str:
    rows = [[r.seed, r.poa, r.total_competitive, r.total_coordinated] for r in results]
    table = common.format_table(["seed", "PoA", "sum P comp", "sum P coord"], rows)
    stats = common.summary([r.poa for r in results])
    comparison = common.format_table(
        ["", "median", "min", "max", "seeds"],
        [
            ["measured", stats["median"], stats["min"], stats["max"], len(results)],
            ["original", "4.53 (one run)", "~2.2-2.5", "~4.3-4.9", "bimodal"],
        ],
    )
    return "\n".join([f"Price of anarchy ({args_text})", table, "", comparison, "", *verdict(results)])


def plots(results: list[Result], out: Path) -> Path:
    seeds = [r.seed for r in results]
    first = results[0]
    steps = list(range(len(first.competitive.total_payoff)))
    return common.plot_panels(
        out / "price_of_anarchy.png",
        [
            common.Panel(
                "PoA per seed",
                "sum P comp / sum P coord",
                {"PoA": (seeds, [r.poa for r in results])},
                "seed",
                "o",
            ),
            common.Panel(
                f"total payoff, seed {first.seed}",
                "sum P",
                {
                    "competitive": (steps, first.competitive.total_payoff),
                    "coordinated": (steps, first.coordinated.total_payoff),
                },
            ),
            common.Panel(
                f"self-bid, seed {first.seed}",
                "mean W_ii",
                {
                    "competitive": (steps, first.competitive.mean_self_weight),
                    "coordinated": (steps, first.coordinated.mean_self_weight),
                },
            ),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[1], seeds=20, steps=1000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--gamma", type=float, default=0.5)
    parser.add_argument(
        "--clock", choices=["global", "own"], default="global", help="Adam clock (see docstring)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 40 if args.quick else args.steps
    seeds = common.seeds_from(args)
    results = []
    with common.progress(len(seeds), "price of anarchy", not args.no_progress) as bar:
        for seed in seeds:
            results.append(run(seed, steps, args.nodes, args.lr, args.gamma, args.clock))
            bar.update(1)
    text = report(
        results, f"n={args.nodes}, {steps} steps, lr {args.lr}, gamma {args.gamma}, clock {args.clock}"
    )
    print(text)
    payload = {
        "settings": {**vars(args), "out": str(args.out), "steps": steps},
        "summary": common.summary([r.poa for r in results]),
        "seeds": [
            {
                "seed": r.seed,
                "poa": r.poa,
                "total_competitive": r.total_competitive,
                "total_coordinated": r.total_coordinated,
                "payoff_competitive": r.competitive.final.payoff,
                "payoff_coordinated": r.coordinated.final.payoff,
                "weights_competitive": r.competitive.final.weights,
                "weights_coordinated": r.coordinated.final.weights,
            }
            for r in results
        ],
        "report": text,
    }
    print(
        f"wrote {common.write_json(args.out / 'price_of_anarchy.json', payload)} and {plots(results, args.out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
