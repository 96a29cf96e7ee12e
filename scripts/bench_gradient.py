#!/usr/bin/env python3
"""Benchmark: the cost of a gradient round trip beside the forward market alone, same run, same peers.

    python scripts/bench_gradient.py                          # 3 peers, 60 + 60 rounds, batch 32
    python scripts/bench_gradient.py --rounds 200 --batch 64 --json out/bench_gradient.json

Real :class:`~atomic_p2p.peer.node.PeerNode` s (example peers with ``[models.gradient]`` enabled,
cooperative scalar bids) serve on 127.0.0.1, in this process's event loop beside the requester
(one machine, two cores: the numbers include the peers' work). A
:class:`~atomic_p2p.requester.gradient.GradientMarket` (constant shift 0: every bidder runs)
alternates the two kinds of round on the same digit batches, so both see the same load:

- **forward**: gradient-mode bids, execution on every selected peer, mixture, loss, payments;
- **gradient**: the same, plus market_gradients (autograd through the market) and one signed
  BidGradient per peer, which each peer verifies, checks, applies and checkpoints.

Reported, p50 and p99 in milliseconds: each kind's whole round, and the gradient round's phases
(bids, execute, market, send). The extra cost of learning is the market + send phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the example peers: peers.examples

from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import GradientConfig
from atomic_p2p.requester.gradient import GradientMarket
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def bench(peers: list[str], rounds: int, batch: int, warmup: int) -> dict[str, Any]:
    gradient = GradientConfig(enabled=True, lr=0.05)
    timings: dict[str, list[float]] = {
        k: [] for k in ("forward", "gradient", "bids", "execute", "market", "send")
    }
    losses: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with running_peers(peers, Path(tmp), model_overrides={"gradient": gradient}) as nodes:
            market = GradientMarket(
                Identity.generate(),
                [node.dial_address for node in nodes],
                capability="classify/digits",
                shift_mode=0.0,
            )
            async with market:
                load_before = os.getloadavg()
                for step in range(warmup + rounds):
                    x, y = digits_batch(batch, offset=(step * batch) % (1797 - batch))
                    for learn in (False, True) if step % 2 else (True, False):
                        started = time.perf_counter()
                        result = await market.step(x, y, learn=learn)
                        elapsed = (time.perf_counter() - started) * 1000
                        if step < warmup:
                            continue
                        if learn:
                            timings["gradient"].append(elapsed)
                            losses.append(result.loss)
                            for phase, ms in result.phases_ms.items():
                                timings[phase].append(ms)
                            assert all(p.applied for p in result.peers), result.peers
                        else:
                            timings["forward"].append(elapsed)
                load_after = os.getloadavg()
    summary = {
        name: {"p50_ms": statistics.median(v), "p99_ms": percentile(v, 99), "n": len(v)}
        for name, v in timings.items()
    }
    return {
        "peers": peers,
        "batch": batch,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "timings": summary,
        "extra_p50_ms": summary["gradient"]["p50_ms"] - summary["forward"]["p50_ms"],
        "loss_first_10": statistics.mean(losses[:10]),
        "loss_last_10": statistics.mean(losses[-10:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", default="small,specialist,large")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("out/bench_gradient.json"))
    args = parser.parse_args()
    report = asyncio.run(bench(args.peers.split(","), args.rounds, args.batch, args.warmup))
    timings = report["timings"]
    print(
        f"{len(report['peers'])} peers ({args.peers}), batch {args.batch}, {args.rounds} rounds of each kind"
    )
    print(f"{'round / phase':<22}{'p50 ms':>10}{'p99 ms':>10}")
    labels = {
        "forward": "forward market",
        "gradient": "gradient round trip",
        "bids": "  bids",
        "execute": "  execute",
        "market": "  market + autograd",
        "send": "  send BidGradients",
    }
    for name, label in labels.items():
        row = timings[name]
        print(f"{label:<22}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}")
    print(f"extra cost of learning (p50): {report['extra_p50_ms']:.2f} ms")
    print(
        f"loss: first 10 gradient rounds {report['loss_first_10']:.3f}, last 10 {report['loss_last_10']:.3f}"
    )
    print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
