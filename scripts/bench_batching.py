#!/usr/bin/env python3
"""Benchmark: microtask auctions per second, one requester, 10 peers, request batching on vs off.

    python scripts/bench_batching.py                  # 10 peers, 400 auctions, 3 runs per mode
    python scripts/bench_batching.py --auctions 1000 --concurrency 256 --no-preview

What is measured (docs/architecture.md section 11: batching on >= 10x the unbatched rate), all in one run so
the noisy machine cancels out. One auction is the requester's real path minus Execute: encode
and describe the task, get bids through the bid manager (every bid envelope verified and bound
to its call), and clear it with the evaluator. ``--auctions`` of them are started together,
at most ``--concurrency`` at a time, and the wall time from first to last is what counts. The
modes take turns ``--repeats`` times and each reports its median run.

- **unbatched**: every task gets a RequestBids round of its own (one call per peer per task).
- **batched**: tasks waiting together share one RequestBids per peer (up to 64 tasks a call).
- **batched + cache**: as batched, with peers that declare bids reusable, after one warm-up
  round: most auctions then need no call for bids at all (not batching, shown for scale).

Everything else is equal: every candidate is asked (no pre-filtering), each round waits for
every answer (no k_min cut, fixed window), and previews travel with the tasks unless
``--no-preview``. The peers run in a separate process so the requester's event loop measures
only the requester's work; on a 2-core box both processes share the CPU. Each mode also
reports the CPU each side spends per bid (the requester process, the peers' process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example peers: peers.examples

from scripts.bench_auction import cpu_seconds  # noqa: E402

CAPABILITY = "classify/digits"


# --------------------------------------------------------------------------- peer farm (child)
async def serve_peers(count: int, data_dir: Path, reuse_s: float) -> None:
    """Child process: start ``count`` small digit peers, print their addresses, wait for EOF."""
    from atomic_p2p.peer.node import freeze_heap
    from peers.examples import start_example_peers

    nodes = []
    for index in range(count):
        nodes += await start_example_peers(["small"], data_dir / f"p{index}", bid_reuse_ttl_s=reuse_s)
    freeze_heap()  # as atomic-peer does once its node listens
    print(json.dumps([node.dial_address for node in nodes]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for node in nodes:
        await node.stop(grace=0.5)


class Farm:
    def __init__(self, peers: int, data_dir: Path, reuse_s: float) -> None:
        command = [sys.executable, __file__, "--serve-peers", str(peers), "--data-dir", str(data_dir)]
        command += ["--reuse-s", str(reuse_s)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("the peer process failed to start; run with --serve-peers 1 to see why")
        self.addresses: list[str] = json.loads(line)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


# --------------------------------------------------------------------------- measurement
async def measure(
    addresses: list[str], mode: str, args: argparse.Namespace, farm_pid: int | None = None
) -> dict[str, float]:
    from atomic_p2p.requester import BidPolicy, Requester
    from atomic_p2p.requester.evaluator import Ask
    from atomic_p2p.testing import digits_batch

    policy = BidPolicy(
        batching=mode != "unbatched", cache=mode == "batched + cache", top_m=0, k_min=0, adaptive_tmax=False
    )
    x, _ = digits_batch(args.batch)
    async with Requester(addresses, bids=policy, bid_timeout_s=args.window_s, seed=0) as requester:
        broker = requester._broker  # the benchmark drives the requester's own parts, minus Execute
        gate = asyncio.Semaphore(args.concurrency)

        async def auction(number: int) -> int:
            async with gate:
                terms = requester._terms(30.0, None, None, "normal", not args.no_preview)
                prepared = await broker.prepare(f"a{number}", CAPABILITY, {"x": x}, terms)
                (offers,) = await broker.offers([prepared], terms, 30.0)
                ask = Ask(
                    task_id=prepared.task.task_id,
                    capability=CAPABILITY,
                    time_left_ms=terms.left_s() * 1000,
                    bucket=prepared.bucket,
                    batch_size=prepared.batch,
                )
                decision = requester.memory.decide(offers.bids, ask, {})
                if len(offers.bids) != len(addresses) and not offers.cached:
                    raise SystemExit(f"an auction got {len(offers.bids)} bids: {offers.no_bids[:3]}")
                assert decision.ranked
                return len(offers.bids)

        await asyncio.gather(*(auction(-1 - i) for i in range(args.warmup)))  # channels, caches
        rounds, calls = requester.bids.rounds, requester.bids.calls
        hits = requester.bids.cache.hits
        peers_cpu = cpu_seconds([farm_pid]) if farm_pid else 0.0
        requester_cpu = time.process_time()
        started = time.perf_counter()
        bids = await asyncio.gather(*(auction(i) for i in range(args.auctions)))
        elapsed = time.perf_counter() - started
        requester_cpu = time.process_time() - requester_cpu
        peers_cpu = cpu_seconds([farm_pid]) - peers_cpu if farm_pid else float("nan")
        return {
            # CPU per bid received (a cache hit counts its reused bids): each side's work per bid
            "requester_cpu_us_per_bid": requester_cpu / max(1, sum(bids)) * 1e6,
            "peers_cpu_us_per_bid": peers_cpu / max(1, sum(bids)) * 1e6,
            "auctions": args.auctions,
            "seconds": elapsed,
            "auctions_per_s": args.auctions / elapsed,
            "bids_verified": float(sum(bids)),
            "rounds": requester.bids.rounds - rounds,
            "request_bids_calls": requester.bids.calls - calls,
            "cache_hits": requester.bids.cache.hits - hits,
        }


# --------------------------------------------------------------------------- report
MODES = ("unbatched", "batched", "batched + cache")


def median_run(rows: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median rate (the rows of one run stay together)."""
    return sorted(rows, key=lambda row: row["auctions_per_s"])[len(rows) // 2]


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, object]:
    print(
        f"\nbatching benchmark: {args.peers} peers in one process, {args.auctions} auctions per run, "
        f"{args.concurrency} at a time, batch {args.batch}, previews {'off' if args.no_preview else 'on'}, "
        f"median of {args.repeats} interleaved runs per mode"
    )
    print(
        f"  {'mode':<18}{'auctions/s':>12}{'seconds':>9}{'rounds':>8}{'calls':>8}{'calls/auction':>15}{'hits':>7}"
        f"{'CPU us/bid: requester':>23}{'peers':>7}"
    )
    for mode, row in results.items():
        per = row["request_bids_calls"] / row["auctions"]
        print(
            f"  {mode:<18}{row['auctions_per_s']:>12.1f}{row['seconds']:>9.2f}{row['rounds']:>8.0f}"
            f"{row['request_bids_calls']:>8.0f}{per:>15.2f}{row['cache_hits']:>7.0f}"
            f"{row['requester_cpu_us_per_bid']:>23.0f}{row['peers_cpu_us_per_bid']:>7.0f}"
        )
    speedup = results["batched"]["auctions_per_s"] / results["unbatched"]["auctions_per_s"]
    cached = results["batched + cache"]["auctions_per_s"] / results["unbatched"]["auctions_per_s"]
    print(f"\n  batched / unbatched            {speedup:>6.2f}x   target >= 10x")
    print(f"  batched + cache / unbatched    {cached:>6.2f}x")
    return {
        "peers": args.peers,
        "auctions": args.auctions,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "preview": not args.no_preview,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "modes": results,
        "speedup_batched": speedup,
        "speedup_batched_cache": cached,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--auctions", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the median is reported")
    parser.add_argument("--concurrency", type=int, default=256, help="auctions in flight at once")
    parser.add_argument("--batch", type=int, default=8, help="examples per microtask")
    parser.add_argument("--window-s", type=float, default=10.0, help="the bid window (no early close)")
    parser.add_argument("--no-preview", action="store_true", help="send only input specs with the tasks")
    parser.add_argument(
        "--mode", action="append", choices=MODES, help="run only this mode (repeatable; for profiling)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench_batching.json")
    parser.add_argument("--serve-peers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_peers is not None:
        asyncio.run(serve_peers(args.serve_peers, args.data_dir, args.reuse_s))
        return 0
    modes = args.mode or MODES
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="atomic-bench-") as tmp:
        farm = Farm(args.peers, Path(tmp), reuse_s=60.0)  # reuse is declared; only the cache mode uses it
        try:
            for repeat in range(args.repeats):  # modes interleaved, so a noisy spell hits them all
                for mode in modes:
                    run = asyncio.run(measure(farm.addresses, mode, args, farm.process.pid))
                    runs[mode].append(run)
                    print(f"[{repeat + 1}] {mode}: {run['auctions_per_s']:.1f} auctions/s", file=sys.stderr)
        finally:
            farm.stop()
    results = {mode: median_run(rows) for mode, rows in runs.items()}
    if set(modes) != set(MODES):
        print(json.dumps(results, indent=2))
        return 0  # a partial run (profiling) has no ratios to report
    document = report(results, args)
    document["runs"] = runs
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
