#!/usr/bin/env python3
"""Benchmark: one auction round over 10 peers on loopback, against a bare gRPC fan-out.

    python scripts/bench_auction.py                 # 10 peers, 300 rounds, JSON to out/bench_auction.json
    python scripts/bench_auction.py --rounds 1000 --peers 10

What is measured, all in one run so the noisy machine cancels out (docs/architecture.md section 11):

- **auction round**: sign a BidRequest, one RequestBids per peer concurrently, every bid envelope
  verified (in a worker thread) and bound to the request, bids scored. This is the requester's
  real code path (``collect_bids`` + ``score``), minus Execute.
- **bare fan-out**: the same number of concurrent unary calls to the same servers over the same
  channels, to the cheapest handler they serve (grpc.health.v1 Check): the floor any protocol
  on this gRPC stack pays.
- **full request**: ``Requester.run`` (auction + Execute on the winner + result verification),
  and **direct execute**: calling the same winner without an auction (a bid is still needed to
  execute, so this is RequestBids to that one peer + Execute).
- **Ed25519 verifications per second**, on one thread and on two.
- **TLS cost**: every measurement above runs twice in the same run, against peers serving TLS
  bound to their peer ids (the default; addresses ``PEERID@host:port``) and against the same peers
  started ``insecure`` (plaintext), round by round in turn so the machine's load falls on both
  alike, and the table gives TLS / plaintext per row; **connect** is the
  first contact with every peer from a fresh pool (certificate fetched and checked, channel
  pinned, TLS handshake, one health check), against the same with plaintext.

The peers run in a separate process (``--peer-procs`` of them, the peers split among them) so the
requester's event loop measures only the requester's work; each process hosts both the TLS and the
plaintext peers (only one set is asked at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example peers: peers.examples
CAPABILITY = "classify/digits"


# --------------------------------------------------------------------------- peer farm (child)
async def serve_peers(count: int, data_dir: Path) -> None:
    """Child process: start ``count`` small digit peers with TLS and ``count`` plaintext ones,
    print their addresses, wait for EOF."""
    from peers.examples import start_example_peers

    nodes, plain = [], []
    for index in range(count):
        nodes += await start_example_peers(["small"], data_dir / f"p{index}")
        plain += await start_example_peers(["small"], data_dir / f"plain{index}", insecure=True)
    addresses = {"tls": [node.dial_address for node in nodes], "plaintext": [node.address for node in plain]}
    print(json.dumps(addresses), flush=True)
    nodes += plain
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for node in nodes:
        await node.stop(grace=0.5)


def start_farms(
    peers: int, procs: int, data_dir: Path
) -> tuple[list[subprocess.Popen[str]], dict[str, list[str]]]:
    farms: list[subprocess.Popen[str]] = []
    addresses: dict[str, list[str]] = {"tls": [], "plaintext": []}
    share = [peers // procs + (1 if i < peers % procs else 0) for i in range(procs)]
    for index, count in enumerate(share):
        command = [
            sys.executable,
            __file__,
            "--serve-peers",
            str(count),
            "--data-dir",
            str(data_dir / str(index)),
        ]
        farm = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        farms.append(farm)
    for farm in farms:
        assert farm.stdout is not None
        line = farm.stdout.readline()
        if not line:
            raise SystemExit("a peer process failed to start; run with --serve-peers 1 to see why")
        for mode, listed in json.loads(line).items():
            addresses[mode] += listed
    return farms, addresses


# --------------------------------------------------------------------------- measurements
def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "mean_ms": statistics.fmean(ordered),
        "n": len(ordered),
    }


Calls = dict[str, Callable[[], Awaitable[object]]]


async def timed_pair(
    label: str, rounds: int, tls: Callable[[], Awaitable[object]], plain: Callable[[], Awaitable[object]]
) -> tuple[list[float], list[float]]:
    """Milliseconds per call of the TLS and the plaintext form of one call after a warm-up,
    alternating round by round so that the machine's load falls on both alike."""
    for _ in range(min(20, rounds)):
        await tls()
        await plain()
    samples: tuple[list[float], list[float]] = ([], [])
    for index in tqdm(range(2 * rounds), desc=label, unit="round", file=sys.stderr, leave=False):
        call = tls if index % 2 == 0 else plain
        started = time.perf_counter()
        await call()
        samples[index % 2].append((time.perf_counter() - started) * 1000)
    return samples


async def measure(
    addresses: dict[str, list[str]], rounds: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Every row against the TLS peers and against the plaintext ones, interleaved."""
    async with contextlib.AsyncExitStack() as stack:
        calls = {
            mode: await stack.enter_async_context(_calls(addresses[mode], insecure=mode == "plaintext"))
            for mode in ("tls", "plaintext")
        }
        results: tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]] = ({}, {})
        for label in calls["tls"]:
            tls, plain = await timed_pair(label, rounds, calls["tls"][label], calls["plaintext"][label])
            results[0][label], results[1][label] = percentiles(tls), percentiles(plain)
    label = f"connect ({len(addresses['tls'])} peers)"
    tls, plain = await timed_pair(
        "connect",
        max(10, rounds // 10),
        lambda: first_contact(addresses["tls"], False),
        lambda: first_contact(addresses["plaintext"], True),
    )
    results[0][label], results[1][label] = percentiles(tls), percentiles(plain)
    return results


@contextlib.asynccontextmanager
async def _calls(addresses: list[str], insecure: bool) -> AsyncIterator[Calls]:
    import torch

    from atomic_p2p.requester import Requester, score
    from atomic_p2p.requester.auction import collect_bids
    from atomic_p2p.requester.client import TASK_ID
    from atomic_p2p.requester.messages import build_task
    from atomic_p2p.tensors import encode

    x = torch.rand(8, 64)
    wire = [encode(x, "x")]
    async with (
        Requester(addresses, insecure=insecure) as requester,
        Requester(addresses[:1], insecure=insecure) as direct,
    ):
        transport = requester._transport  # the bench drives the requester's own transport
        pool = requester._pool
        for address in addresses:
            await pool.open(address)
        health = [health_pb2_grpc.HealthStub(pool.channel(a)) for a in addresses]  # the auction's channels

        async def auction_round() -> None:
            task = build_task(TASK_ID, CAPABILITY, wire, preview=True, max_cost=None)
            call = requester._call_for_bids(task, 2.0)
            collected = await collect_bids(transport, addresses, call, 2.0, requester.clock)
            ranking = score(collected.bids_for(TASK_ID), None, 2000.0, None)
            assert len(ranking.ranked) == len(addresses), collected.no_bids

        async def bare_fanout() -> None:
            request = health_pb2.HealthCheckRequest(service="")
            await asyncio.gather(*(stub.Check(request, timeout=2.0) for stub in health))

        async def full_request() -> None:
            await requester.run(CAPABILITY, {"x": x}, deadline_s=2.0)

        async def direct_execute() -> None:
            await direct.run(CAPABILITY, {"x": x}, deadline_s=2.0)

        yield {
            "bare gRPC fan-out": bare_fanout,
            "auction round": auction_round,
            "full request (10 peers)": full_request,
            "direct (1 peer)": direct_execute,
        }


async def first_contact(addresses: list[str], insecure: bool) -> None:
    """A fresh pool opens every peer's channel and makes one call on each (so the handshake runs)."""
    from atomic_p2p.channels import ChannelPool

    pool = ChannelPool(allow_plaintext=insecure)
    try:
        await asyncio.gather(*(pool.open(address) for address in addresses))
        request = health_pb2.HealthCheckRequest(service="")
        stubs = [health_pb2_grpc.HealthStub(pool.channel(address)) for address in addresses]
        await asyncio.gather(*(stub.Check(request, timeout=5.0) for stub in stubs))
    finally:
        await pool.close()


def verify_rate(count: int = 4000, threads: int = 1) -> float:
    from atomic_p2p.identity import Identity, verify_many

    signer = Identity.generate()
    envelopes = [(signer.sign("atomic.v1.Bid", os.urandom(160)), "atomic.v1.Bid") for _ in range(count)]
    chunks = [envelopes[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = [r for chunk in pool.map(verify_many, chunks) for r in chunk]
    elapsed = time.perf_counter() - started
    assert all(not isinstance(r, Exception) for r in results)
    return count / elapsed


# --------------------------------------------------------------------------- report
def report(
    results: dict[str, dict[str, float]],
    plaintext: dict[str, dict[str, float]],
    rates: dict[str, float],
    args: argparse.Namespace,
) -> dict:
    bare = results["bare gRPC fan-out"]
    auction = results["auction round"]
    full, direct = results["full request (10 peers)"], results["direct (1 peer)"]
    ratios = {
        "auction_vs_bare_p50": auction["p50_ms"] / bare["p50_ms"],
        "auction_vs_bare_p99": auction["p99_ms"] / bare["p99_ms"],
        "full_vs_direct_p50": full["p50_ms"] / direct["p50_ms"],
    }
    print(
        f"\nauction benchmark: {args.peers} peers in {args.peer_procs} process(es), {args.rounds} rounds each"
    )
    tls_cost = {label: row["p50_ms"] / plaintext[label]["p50_ms"] for label, row in results.items()}
    print(
        f"  {'what (TLS, the default)':<26}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
        f"{'plain p50':>11}{'TLS/plain':>11}"
    )
    for label, row in results.items():
        print(
            f"  {label:<26}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['mean_ms']:>9.2f}"
            f"{plaintext[label]['p50_ms']:>11.2f}{tls_cost[label]:>10.2f}x"
        )
    print("\n  ratio                              measured   target")
    print(f"  auction / bare fan-out, p50        {ratios['auction_vs_bare_p50']:>8.2f}x   <= 1.3x")
    print(f"  auction / bare fan-out, p99        {ratios['auction_vs_bare_p99']:>8.2f}x")
    print(f"  full request / direct, p50         {ratios['full_vs_direct_p50']:>8.2f}x   (see note)")
    print(
        f"  auction round p50 / p99 (ms)       {auction['p50_ms']:>5.2f} / {auction['p99_ms']:.2f}   <= 7 / 20"
    )
    print(
        f"\n  Ed25519 verifications/s, 1 thread  {rates['verify_per_s_1_thread']:>10,.0f}   >= 7,000 per core"
    )
    print(f"  Ed25519 verifications/s, 2 threads {rates['verify_per_s_2_threads']:>10,.0f}")
    return {
        "peers": args.peers,
        "peer_procs": args.peer_procs,
        "rounds": args.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "latency": results,
        "latency_plaintext": plaintext,
        "tls_vs_plaintext_p50": tls_cost,
        "ratios": ratios,
        "ed25519": rates,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--peer-procs", type=int, default=1, help="processes the peers are split across")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench_auction.json")
    parser.add_argument("--serve-peers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_peers is not None:
        asyncio.run(serve_peers(args.serve_peers, args.data_dir))
        return 0
    with tempfile.TemporaryDirectory(prefix="atomic-bench-") as tmp:
        farms, addresses = start_farms(args.peers, args.peer_procs, Path(tmp))
        try:
            results, plaintext = asyncio.run(measure(addresses, args.rounds))
        finally:
            for farm in farms:
                assert farm.stdin is not None
                farm.stdin.close()
            for farm in farms:
                farm.wait(timeout=30)
    rates = {
        "verify_per_s_1_thread": verify_rate(threads=1),
        "verify_per_s_2_threads": verify_rate(threads=2),
    }
    document = report(results, plaintext, rates, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
