#!/usr/bin/env python3
"""Price of anarchy over the network: the nodes are real atomic-peer nodes, exchanging rows and
gradients with a coordinator over gRPC (DESIGN section 9, item 1, networked).

    python scripts/experiments/price_of_anarchy_networked.py --seeds 3 --steps 200
    python scripts/experiments/price_of_anarchy_networked.py --quick

How this works
--------------
The game, the payoffs and the gradients are :mod:`price_of_anarchy`'s (``make_game``,
``competitive_gradient``, ``coordinated_gradient``, ``node_update``); only where each runs changes.
Node i is a :class:`~atomic_p2p.peer.node.PeerNode` hosting one model, :class:`RowNode`, whose
output is its row of raw bids theta_i (float64) and which opts into remote training
(``[models.gradient] remote_training``) with its own optimiser: TF1's Adam, one step of
:func:`price_of_anarchy.node_update` per gradient, counted on the node's own clock.

Each step the coordinator, for every node that moves this step or moved last step, asks for a
gradient-mode bid (RequestBids) and buys the row (Execute: the row comes back as a float64 tensor,
in a signed result). It then computes the payoff gradients on the whole matrix and sends each
moving node d(-P)/d theta_i for its row as the ``output_grad`` of a signed BidGradient, which the
node checks (signature, binding to the bid, shape, finiteness, norm) and applies to its row.

Comparison: the same seeds run in-process (``price_of_anarchy.converge`` with ``clock="own"``:
the networked node counts its own Adam steps; it has no global step on the wire). Every number
crosses the wire in float64 and the arithmetic is the same, so the stated tolerance is 1e-9 on the
final raw bids and on sum P; runs so far agree exactly (difference 0.0).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import price_of_anarchy as poa

from atomic_p2p._proto.atomic.v1 import envelope_pb2, market_pb2
from atomic_p2p._wire import tensor_to_proto, tensors_from_proto
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import config_from_dict
from atomic_p2p.peer.models import BuiltModel
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.tensors import decode, encode
from atomic_p2p.testing import HandBuyer

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


def node_config(index: int, row: torch.Tensor, lr: float, data_dir: Path) -> Any:
    table = {
        "peer": {"name": f"poa-{index}", "data_dir": str(data_dir), "port": 0, "bid_validity_s": 60.0},
        "models": [
            {
                "model_id": f"poa-node-{index}",
                "capabilities": [CAPABILITY],
                "factory": f"{Path(__file__).resolve()}:row_node",
                "price_per_example": 0.0,
                "strategy": "fixed",
                "strategy_options": {"confidence": 1.0},
                "options": {"row": row.tolist(), "lr": lr},
                # Clipping would change the game: the limits are set out of its way.
                "gradient": {"enabled": True, "remote_training": True, "max_norm": 1e12, "reject_norm": 1e12},
            }
        ],
    }
    return config_from_dict(table, data_dir)


class Coordinator:
    """Buys rows and sends gradients, one HandBuyer (same key) per node."""

    def __init__(self, buyers: list[HandBuyer]) -> None:
        self.buyers = buyers
        self.preview = encode(torch.zeros(1, 1, dtype=torch.float64), "x")
        self.rpcs = 0

    async def fetch(self, node: int) -> tuple[envelope_pb2.SignedEnvelope, torch.Tensor]:
        """A gradient-mode bid from ``node`` and its current row, bought with Execute."""
        buyer = self.buyers[node]
        task = buyer.task(
            "row", 1, capability=CAPABILITY, dtype="float64", shape=(1, 1), preview=[self.preview]
        )
        response = await buyer.request_bids([task], gradient_mode=True)
        bid = response.outcomes[0].bid
        result = await buyer.execute(bid, [self.preview])
        self.rpcs += 2
        return bid, decode(tensors_from_proto(result.outputs)[0])[0]

    async def send(self, node: int, bid: envelope_pb2.SignedEnvelope, gradient: torch.Tensor) -> None:
        buyer = self.buyers[node]
        grad = tensor_to_proto(encode(gradient.unsqueeze(0).contiguous(), "row"))
        request = buyer.gradient(bid, [0.0], output_grad=grad)
        response: market_pb2.BidGradientResponse = await buyer.stub.BidGradient(request, timeout=30)
        self.rpcs += 1
        if not response.applied:
            raise RuntimeError(f"node {node} did not apply its gradient")


@dataclass(frozen=True)
class NetworkedRun:
    final: torch.Tensor  # raw bids after the last step
    total_payoff: float
    rpcs: int
    seconds: float


async def converge_networked(game: poa.Game, mode: poa.Mode, lr: float, gamma: float) -> NetworkedRun:
    init = game.coordinated_init if mode == "coordinated" else game.competitive_init
    n = init.shape[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [await PeerNode.start(node_config(i, init[i], lr, Path(tmp) / str(i))) for i in range(n)]
        identity = Identity.generate()
        buyers = [HandBuyer(node.address, identity) for node in nodes]
        try:
            coordinator = Coordinator(buyers)
            raw = torch.stack(
                [row for _, row in await asyncio.gather(*(coordinator.fetch(i) for i in range(n)))]
            )
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
            for i, (_, row) in zip(
                sorted(stale),
                await asyncio.gather(*(coordinator.fetch(i) for i in sorted(stale))),
                strict=True,
            ):
                raw[i] = row
        finally:
            for buyer in buyers:
                await buyer.channel.close()
            for peer in nodes:
                await peer.stop(grace=1.0)
    total = float(poa.payoff_terms(raw, game.contributions, gamma).payoff.sum())
    return NetworkedRun(raw, total, coordinator.rpcs, time.perf_counter() - started)


@dataclass(frozen=True)
class Comparison:
    seed: int
    poa_networked: float
    poa_in_process: float
    max_row_difference: float  # over both modes, |theta_networked - theta_in_process|
    rpcs: int
    seconds: float


async def compare(seed: int, steps: int, n: int, lr: float, gamma: float) -> Comparison:
    game = poa.make_game(seed, n, steps)
    totals, in_process, difference, rpcs, seconds = {}, {}, 0.0, 0, 0.0
    for mode in ("coordinated", "competitive"):
        networked = await converge_networked(game, mode, lr, gamma)
        local = poa.converge(game, mode, lr, gamma, "own")
        local_raw = _raw_from(local, game, mode, lr, gamma)
        difference = max(difference, float((networked.final - local_raw).abs().max()))
        totals[mode], in_process[mode] = networked.total_payoff, float(local.final.payoff.sum())
        rpcs, seconds = rpcs + networked.rpcs, seconds + networked.seconds
    return Comparison(
        seed,
        totals["competitive"] / totals["coordinated"],
        in_process["competitive"] / in_process["coordinated"],
        difference,
        rpcs,
        seconds,
    )


def _raw_from(
    trajectory: poa.Trajectory, game: poa.Game, mode: poa.Mode, lr: float, gamma: float
) -> torch.Tensor:
    """The in-process run's final raw bids (Trajectory keeps W; theta is recovered by replaying)."""
    del trajectory
    raw = (game.coordinated_init if mode == "coordinated" else game.competitive_init).clone()
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


def report(results: list[Comparison], settings: str) -> str:
    rows = [
        [r.seed, r.poa_networked, r.poa_in_process, f"{r.max_row_difference:.3g}", r.rpcs, f"{r.seconds:.1f}"]
        for r in results
    ]
    table = common.format_table(
        ["seed", "PoA networked", "PoA in-process", "max |dtheta|", "RPCs", "seconds"], rows
    )
    agree = all(r.max_row_difference <= TOLERANCE for r in results)
    verdict = f"networked == in-process within {TOLERANCE:g} on every seed: {'yes' if agree else 'NO'}"
    return "\n".join([f"Price of anarchy over gRPC ({settings})", table, "", verdict])


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[0], seeds=3, steps=200)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--gamma", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 20 if args.quick else args.steps
    results = []
    for seed in common.seeds_from(args):
        results.append(asyncio.run(compare(seed, steps, args.nodes, args.lr, args.gamma)))
        print(f"seed {seed}: done in {results[-1].seconds:.1f} s", file=sys.stderr)
    text = report(results, f"n={args.nodes}, {steps} steps, lr {args.lr}, gamma {args.gamma}, clock own")
    print(text)
    payload = {
        "settings": {**vars(args), "out": str(args.out), "steps": steps},
        "seeds": [vars(r) for r in results],
    }
    print(f"wrote {common.write_json(args.out / 'price_of_anarchy_networked.json', payload)}")
    return 0 if all(r.max_row_difference <= TOLERANCE for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
