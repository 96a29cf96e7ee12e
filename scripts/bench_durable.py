#!/usr/bin/env python3
"""Benchmark: what ``Requester(durable=True)`` costs a purchase, beside ``durable=False``, same run.

    python scripts/bench_durable.py                 # 200 + 200 purchases, alternating
    python scripts/bench_durable.py --rounds 50 --json out/bench_durable.json

One in-process example peer ("small") on 127.0.0.1 and two requesters, each with its own SQLite
store (WAL, ``synchronous=FULL``: the default durability). They take turns, so both see the same
load. ``durable=True`` returns from ``run()`` only once the result's decision, bids, payment and
profile update are committed (one group commit: the fsync of the WAL); ``durable=False`` returns
as soon as the result is verified and leaves the records to the store's writer thread.

Prints p50 and p99 of a purchase in milliseconds for each, and the ratio; writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the example peers: peers.examples

from atomic_p2p.requester import Requester
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def bench(rounds: int, warmup: int) -> dict[str, Any]:
    timings: dict[bool, list[float]] = {True: [], False: []}
    inputs, _ = digits_batch(4)
    with tempfile.TemporaryDirectory() as tmp:
        async with running_peers(["small"], Path(tmp)) as (peer,):
            requesters = {
                durable: Requester([peer.address], store=Path(tmp) / f"durable-{durable}.db", durable=durable)
                for durable in (True, False)
            }
            try:
                for number in range(warmup + rounds):
                    for durable, requester in requesters.items():
                        started = time.perf_counter()
                        await requester.run("classify/digits", {"x": inputs})
                        if number >= warmup:
                            timings[durable].append((time.perf_counter() - started) * 1000)
            finally:
                for requester in requesters.values():
                    await requester.close()
    row = {
        name: {
            "p50_ms": statistics.median(timings[durable]),
            "p99_ms": percentile(timings[durable], 99),
        }
        for name, durable in (("durable", True), ("not_durable", False))
    }
    return {
        "rounds": rounds,
        **row,
        "p50_ratio": row["durable"]["p50_ms"] / row["not_durable"]["p50_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("out/bench_durable.json"))
    args = parser.parse_args()
    result = asyncio.run(bench(args.rounds, args.warmup))
    print(f"{'':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("durable", "not_durable"):
        print(f"{name:>12} {result[name]['p50_ms']:8.2f} {result[name]['p99_ms']:8.2f}")
    print(f"durable / not durable, p50: {result['p50_ratio']:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
