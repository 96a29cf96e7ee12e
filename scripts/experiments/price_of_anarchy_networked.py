#!/usr/bin/env python3
"""Price of anarchy over the network: the nodes are real atomic-peer processes, exchanging rows and
gradients with a coordinator over gRPC (docs/architecture.md section 9, item 1, networked).

    python scripts/experiments/price_of_anarchy_networked.py --seeds 3 --steps 200
    python scripts/experiments/price_of_anarchy_networked.py --seed 0 --steps 1000
    python scripts/experiments/price_of_anarchy_networked.py --quick --in-process

How this works
--------------
The game, the payoffs and the gradients are :mod:`price_of_anarchy`'s (``make_game``,
``competitive_gradient``, ``coordinated_gradient``, ``node_update``); only where each runs changes.
Node i is one peer hosting a :class:`RowNode` model per seed and mode
(``poa-node-<i>-seed-<s>-<mode>``): its output is node i's row of raw bids theta_i (float64) in that
game, and it opts into remote training (``[models.gradient] remote_training``) with its own
optimiser: TF1's Adam, one step of :func:`price_of_anarchy.node_update` per gradient, counted on the
model's own clock. The models share a peer but no state, so one set of peers serves the whole run.

By default every node is its own ``atomic-peer`` process (:func:`atomic_p2p.testing.peer_processes`):
its config table is written as TOML, with each initial row as a list of floats in the model's
``options`` (TOML floats keep every float64 exactly) and this file as the model factory, and the
process listens on 127.0.0.1. A process takes a few seconds of CPU to start (importing torch), which
is why the peers start once per run, not once per seed or mode; the report gives start and stop
time apart from each seed's playing time. ``--in-process`` builds the same tables into
:class:`~atomic_p2p.peer.node.PeerNode` objects inside this process instead: real gRPC servers on
127.0.0.1, but one interpreter (starts in a second or two; what the integration test uses).

Each step the coordinator, for every node that moves this step or moved last step, asks for a
gradient-mode bid (RequestBids, naming the model for this seed and mode) and buys the row (Execute:
the row comes back as a float64 tensor, in a signed result). It then computes the payoff gradients
on the whole matrix and sends each moving node d(-P)/d theta_i for its row as the ``output_grad``
of a signed BidGradient, which the node checks (signature, binding to the bid, shape, finiteness,
norm) and applies to its row.

Comparison: the same seeds run in-process (``price_of_anarchy.converge`` with ``clock="own"``:
the networked node counts its own Adam steps; it has no global step on the wire). Every number
crosses the wire in float64 and the arithmetic is the same, so the stated tolerance is 1e-9 on the
final raw bids and on sum P, and the script exits 1 if any seed's raw bids miss it; runs so far
agree exactly (difference 0.0), with processes and in-process alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import price_of_anarchy as poa

from atomic_p2p.channels import ChannelPool
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import config_from_dict
from atomic_p2p.peer.models import BuiltModel
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester.direct import DirectBuyer
from atomic_p2p.requester.transport import GrpcTransport
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.tensors import encode
from atomic_p2p.testing import peer_processes

TOLERANCE = 1e-9
CAPABILITY = "poa/row"


class TF1Adam(torch.optim.Optimizer):
    """:func:`price_of_anarchy.node_update` as an optimiser, on each parameter's own step count."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                adam = state.get("adam") or poa.adam_init(param.shape[-1])
                state["count"] = state.get("count", 0) + 1
                row, state["adam"] = poa.node_update(param, param.grad, adam, state["count"], group["lr"])
                param.copy_(row)


class RowNode(nn.Module):
    """A node's row of raw bids: input [B, 1] (ignored), output [B, n] (the row, float64)."""

    def __init__(self, row: list[float], lr: float) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.tensor(row, dtype=torch.float64))
        self.lr = lr

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.row.unsqueeze(0).repeat(inputs.shape[0], 1)

    def remote_optimizer(self) -> torch.optim.Optimizer:
        return TF1Adam([self.row], self.lr)


def row_node(cache_dir: Path, row: list[float], lr: float = 0.05) -> BuiltModel:
    """Model factory for the peers (``file.py:row_node``)."""
    del cache_dir  # nothing to train or cache
    return BuiltModel(module=RowNode(row, lr), input_shape=(1,), input_dtype="float64", output_name="row")


MODES: tuple[poa.Mode, ...] = ("coordinated", "competitive")


def model_id(index: int, seed: int, mode: poa.Mode) -> str:
    return f"poa-node-{index}-seed-{seed}-{mode}"


def node_table(index: int, games: Mapping[int, poa.Game], lr: float) -> dict[str, Any]:
    """Node ``index``'s peer config table (what a peer TOML file holds): one model per seed and
    mode, each starting from node ``index``'s row of that game."""
    models = []
    for seed, game in games.items():
        for mode in MODES:
            models.append(row_model(model_id(index, seed, mode), _init(game, mode)[index], lr))
    return {"peer": {"name": f"poa-{index}", "port": 0, "bid_validity_s": 60.0}, "models": models}


def row_model(model: str, row: torch.Tensor, lr: float) -> dict[str, Any]:
    return {
        "model_id": model,
        "capabilities": [CAPABILITY],
        "factory": f"{Path(__file__).resolve()}:row_node",
        "price_per_example": 0.0,
        "strategy": "fixed",
        "strategy_options": {"confidence": 1.0},
        "options": {"row": row.tolist(), "lr": lr},
        # Clipping would change the game: the limits are set out of its way.
        "gradient": {"enabled": True, "remote_training": True, "max_norm": 1e12, "reject_norm": 1e12},
    }


def _init(game: poa.Game, mode: poa.Mode) -> torch.Tensor:
    return game.coordinated_init if mode == "coordinated" else game.competitive_init


@contextlib.asynccontextmanager
async def serving(tables: list[dict[str, Any]], workdir: Path, in_process: bool) -> AsyncIterator[list[str]]:
    """One peer per table, as an ``atomic-peer`` process or a PeerNode in this process; yields
    their addresses and stops them on exit."""
    if not in_process:
        async with peer_processes(tables, workdir, threads=1) as processes:
            yield [process.address for process in processes]
        return
    nodes: list[PeerNode] = []
    try:
        for index, table in enumerate(tables):
            config = config_from_dict(table, workdir)
            nodes.append(await PeerNode.start(replace(config, data_dir=workdir / str(index))))
        yield [node.address for node in nodes]
    finally:
        for node in nodes:
            await node.stop(grace=1.0)


class Coordinator:
    """Buys rows and sends gradients through one DirectBuyer (one key), one model per node."""

    def __init__(self, buyer: DirectBuyer, addresses: list[str], models: list[str]) -> None:
        self.buyer = buyer
        self.addresses = addresses
        self.models = models
        self.preview = encode(torch.zeros(1, 1, dtype=torch.float64), "x")
        self.rpcs = 0

    async def fetch(self, node: int) -> tuple[BidInfo, torch.Tensor]:
        """A gradient-mode bid from ``node``'s model and its current row, bought with Execute."""
        bid = await self.buyer.bid(
            self.addresses[node],
            CAPABILITY,
            [self.preview],
            task_id="row",
            model_id=self.models[node],
            gradient_mode=True,
        )
        (row,) = (await self.buyer.execute(bid, [self.preview])).values()
        self.rpcs += 2
        return bid, row[0]

    async def send(self, node: int, bid: BidInfo, gradient: torch.Tensor) -> None:
        grad = encode(gradient.unsqueeze(0).contiguous(), "row")
        reply = await self.buyer.send_gradient(bid, [0.0], output_grad=grad)
        self.rpcs += 1
        if not reply.applied:
            raise RuntimeError(f"node {node} did not apply its gradient")


@dataclass(frozen=True)
class NetworkedRun:
    final: torch.Tensor  # raw bids after the last step
    total_payoff: float
    rpcs: int


async def converge_networked(
    game: poa.Game,
    mode: poa.Mode,
    gamma: float,
    addresses: list[str],
    models: list[str],
    bar: tqdm | None = None,
) -> NetworkedRun:
    """Play one mode against ``models`` (one per node, fresh) on the peers at ``addresses``."""
    n = len(addresses)
    pool = ChannelPool()
    try:
        coordinator = Coordinator(DirectBuyer(Identity.generate(), GrpcTransport(pool)), addresses, models)
        raw = torch.stack([row for _, row in await asyncio.gather(*(coordinator.fetch(i) for i in range(n)))])
        stale: set[int] = set()
        for node in game.schedule.tolist():
            movers = list(range(n)) if mode == "coordinated" else [node]
            wanted = sorted(stale | set(movers))
            fetched = await asyncio.gather(*(coordinator.fetch(i) for i in wanted))
            bids = {}
            for i, (bid, row) in zip(wanted, fetched, strict=True):
                raw[i], bids[i] = row, bid
            if mode == "coordinated":
                gradient, _ = poa.coordinated_gradient(raw, game.contributions, gamma)
            else:
                row_gradient, _ = poa.competitive_gradient(raw, game.contributions, node, gamma)
                gradient = torch.zeros_like(raw)
                gradient[node] = row_gradient
            await asyncio.gather(*(coordinator.send(i, bids[i], gradient[i]) for i in movers))
            stale = set(movers)
            if bar is not None:
                bar.update()
        final = await asyncio.gather(*(coordinator.fetch(i) for i in sorted(stale)))
        for i, (_, row) in zip(sorted(stale), final, strict=True):
            raw[i] = row
    finally:
        await pool.close()
    total = float(poa.payoff_terms(raw, game.contributions, gamma).payoff.sum())
    return NetworkedRun(raw, total, coordinator.rpcs)


@dataclass(frozen=True)
class Comparison:
    seed: int
    poa_networked: float
    poa_in_process: float
    max_row_difference: float  # over both modes, |theta_networked - theta_in_process|
    rpcs: int
    seconds: float  # playing both modes over the network


@dataclass(frozen=True)
class Experiment:
    comparisons: list[Comparison]
    start_seconds: float  # until every peer listened
    stop_seconds: float


async def compare_seeds(
    seeds: list[int],
    steps: int,
    n: int,
    lr: float,
    gamma: float,
    *,
    in_process: bool = False,
    progress: bool = False,
) -> Experiment:
    """Every seed, both modes, over the network (``atomic-peer`` processes, or PeerNodes with
    ``in_process``), then in this process; and how far apart they ended. One set of peers serves
    every seed: each hosts a fresh model per seed and mode."""
    games = {seed: poa.make_game(seed, n, steps) for seed in seeds}
    tables = [node_table(i, games, lr) for i in range(n)]
    networked: dict[tuple[int, poa.Mode], NetworkedRun] = {}
    seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        async with serving(tables, Path(tmp), in_process) as addresses:
            started = time.perf_counter()
            with common.progress(len(seeds) * len(MODES) * steps, "steps", progress) as bar:
                for seed, game in games.items():
                    seed_began = time.perf_counter()
                    for mode in MODES:
                        bar.set_description(f"seed {seed} {mode}")
                        models = [model_id(i, seed, mode) for i in range(n)]
                        networked[seed, mode] = await converge_networked(
                            game, mode, gamma, addresses, models, bar
                        )
                    seconds[seed] = time.perf_counter() - seed_began
            played = time.perf_counter()
        stopped = time.perf_counter()
    comparisons = [_compare(seed, game, networked, seconds[seed], lr, gamma) for seed, game in games.items()]
    return Experiment(comparisons, started - began, stopped - played)


async def compare(
    seed: int, steps: int, n: int, lr: float, gamma: float, *, in_process: bool = False
) -> Comparison:
    """One seed (see :func:`compare_seeds`)."""
    experiment = await compare_seeds([seed], steps, n, lr, gamma, in_process=in_process)
    return experiment.comparisons[0]


def _compare(
    seed: int,
    game: poa.Game,
    networked: Mapping[tuple[int, poa.Mode], NetworkedRun],
    seconds: float,
    lr: float,
    gamma: float,
) -> Comparison:
    totals, in_process_totals, difference = {}, {}, 0.0
    for mode in MODES:
        run = networked[seed, mode]
        local = poa.converge(game, mode, lr, gamma, "own")
        local_raw = _raw_from(local, game, mode, lr, gamma)
        difference = max(difference, float((run.final - local_raw).abs().max()))
        totals[mode], in_process_totals[mode] = run.total_payoff, float(local.final.payoff.sum())
    return Comparison(
        seed,
        totals["competitive"] / totals["coordinated"],
        in_process_totals["competitive"] / in_process_totals["coordinated"],
        difference,
        sum(networked[seed, mode].rpcs for mode in MODES),
        seconds,
    )


def _raw_from(
    trajectory: poa.Trajectory, game: poa.Game, mode: poa.Mode, lr: float, gamma: float
) -> torch.Tensor:
    """The in-process run's final raw bids (Trajectory keeps W; theta is recovered by replaying)."""
    del trajectory
    raw = _init(game, mode).clone()
    n = raw.shape[0]
    states = [poa.adam_init(n) for _ in range(n)]
    own = [0] * n
    for node in game.schedule.tolist():
        if mode == "coordinated":
            gradient, _ = poa.coordinated_gradient(raw, game.contributions, gamma)
            movers = list(range(n))
        else:
            row_gradient, _ = poa.competitive_gradient(raw, game.contributions, node, gamma)
            gradient, movers = torch.zeros_like(raw), [node]
            gradient[node] = row_gradient
        for mover in movers:
            own[mover] += 1
            raw[mover], states[mover] = poa.node_update(
                raw[mover], gradient[mover], states[mover], own[mover], lr
            )
    return raw


def report(experiment: Experiment, settings: str) -> str:
    results = experiment.comparisons
    rows = [
        [r.seed, r.poa_networked, r.poa_in_process, f"{r.max_row_difference:.3g}", r.rpcs, f"{r.seconds:.1f}"]
        for r in results
    ]
    table = common.format_table(
        ["seed", "PoA networked", "PoA in-process", "max |dtheta|", "RPCs", "seconds"], rows
    )
    peers = (
        f"peers started in {experiment.start_seconds:.1f} s and stopped in "
        f"{experiment.stop_seconds:.1f} s (not in the seconds column)"
    )
    agree = all(r.max_row_difference <= TOLERANCE for r in results)
    verdict = f"networked == in-process within {TOLERANCE:g} on every seed: {'yes' if agree else 'NO'}"
    return "\n".join([f"Price of anarchy over gRPC ({settings})", table, "", peers, verdict])


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[0], seeds=3, steps=200)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--gamma", type=float, default=0.5)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the nodes as PeerNodes inside this process instead of atomic-peer processes",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 20 if args.quick else args.steps
    experiment = asyncio.run(
        compare_seeds(
            common.seeds_from(args),
            steps,
            args.nodes,
            args.lr,
            args.gamma,
            in_process=args.in_process,
            progress=not args.no_progress,
        )
    )
    nodes = "in-process PeerNodes" if args.in_process else "atomic-peer processes"
    settings = f"{nodes}, n={args.nodes}, {steps} steps, lr {args.lr}, gamma {args.gamma}, clock own"
    print(report(experiment, settings))
    payload = {
        "settings": {**vars(args), "out": str(args.out), "steps": steps},
        "peers": {"start_seconds": experiment.start_seconds, "stop_seconds": experiment.stop_seconds},
        "seeds": [vars(r) for r in experiment.comparisons],
    }
    print(f"wrote {common.write_json(args.out / 'price_of_anarchy_networked.json', payload)}")
    return 0 if all(r.max_row_difference <= TOLERANCE for r in experiment.comparisons) else 1


if __name__ == "__main__":
    raise SystemExit(main())
