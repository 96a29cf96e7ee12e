#!/usr/bin/env python3
"""A local atomic-p2p testnet with a demo workload (what ``make demo`` runs).

    python scripts/testnet.py                     # small, large, specialist; 12 demo requests
    python scripts/testnet.py --requests 30 --quiet

Starts one ``atomic-peer`` process per example peer on 127.0.0.1 (ephemeral ports), waits until
each prints its listening line, then runs a demo requester over held-out digits with the three
priority profiles in turn, printing every auction (bids, winner, price, result). Ends with a
summary per peer (bids, wins, mean latency, revenue). Every process it started is stopped on exit,
on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "peers"))

from atomic_p2p.cli.report import render_text  # noqa: E402
from atomic_p2p.errors import AtomicError  # noqa: E402
from atomic_p2p.requester import Requester  # noqa: E402

DEFAULT_PEERS = ("small", "large", "specialist")
PRIORITIES = ("balanced", "accuracy", "speed")
START_TIMEOUT_S = 120.0


@dataclass
class PeerProcess:
    name: str
    process: subprocess.Popen[str]
    address: str = ""
    peer_id: str = ""
    models: list[str] = field(default_factory=list)


def start_peer(name: str, data_root: Path) -> PeerProcess:
    command = [
        sys.executable,
        "-m",
        "atomic_p2p.cli.peer",
        str(ROOT / "peers" / f"{name}.toml"),
        "--port",
        "0",
        "--data-dir",
        str(data_root / name),
        "--log-level",
        "WARNING",
    ]
    # Own process group: Ctrl-C in the terminal reaches us, and we drain the peers ourselves.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    return PeerProcess(name, process)


def wait_listening(peer: PeerProcess, deadline: float) -> None:
    """Read the peer's stdout until its 'listening on' line (it trains its model first)."""
    assert peer.process.stdout is not None
    while time.monotonic() < deadline:
        line = peer.process.stdout.readline()
        if not line:
            raise RuntimeError(f"peer {peer.name} exited with {peer.process.wait()} before serving")
        words = line.split()
        if "listening" in words:
            peer.peer_id, peer.address = words[1], words[words.index("on") + 1]
            peer.models = [m.strip(",") for m in words[words.index("hosting") + 1 :]]
            return
    raise RuntimeError(f"peer {peer.name} did not start within {START_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def testnet(names: list[str], data_root: Path) -> Iterator[list[PeerProcess]]:
    peers: list[PeerProcess] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        for name in tqdm(names, desc="starting peers", unit="peer", file=sys.stderr):
            peer = start_peer(name, data_root)
            peers.append(peer)
            wait_listening(peer, deadline)
        yield peers
    finally:
        stop_all(peers)


def stop_all(peers: list[PeerProcess], timeout: float = 10.0) -> None:
    """SIGTERM (the peers drain and exit 0), then SIGKILL whatever is left."""
    for peer in peers:
        if peer.process.poll() is None:
            peer.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for peer in peers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.process.wait(max(0.1, deadline - time.monotonic()))
        if peer.process.poll() is None:
            os.killpg(peer.process.pid, signal.SIGKILL)
            peer.process.wait()


def held_out_digits() -> tuple[torch.Tensor, torch.Tensor]:
    import digits  # peers/digits.py: the split every example model was evaluated on

    _, _, x, y = digits.dataset()
    return x, y


@dataclass
class Tally:
    bids: int = 0
    wins: int = 0
    latency_ms: list[float] = field(default_factory=list)
    revenue: float = 0.0
    correct: int = 0
    examples: int = 0


async def workload(peers: list[PeerProcess], requests: int, batch: int, quiet: bool) -> dict[str, Tally]:
    x, y = held_out_digits()
    tallies: dict[str, Tally] = defaultdict(Tally)
    names = {peer.peer_id: peer.name for peer in peers}
    failures = 0
    async with Requester([peer.address for peer in peers]) as requester:
        for index in tqdm(
            range(requests), desc="demo requests", unit="req", file=sys.stderr, disable=not quiet
        ):
            start = (index * batch) % (len(x) - batch)
            priority = PRIORITIES[index % len(PRIORITIES)]
            try:
                result = await requester.run(
                    "classify/digits", {"x": x[start : start + batch]}, deadline_s=3.0, weights=priority
                )
            except AtomicError as exc:
                failures += 1
                print(f"request {index}: {exc}", file=sys.stderr)
                continue
            for scored in result.bids:
                tallies[names.get(scored.item.peer_id.short, scored.item.peer_id.short)].bids += 1
            winner = tallies[names.get(result.winner.peer_id.short, result.winner.peer_id.short)]
            winner.wins += 1
            winner.latency_ms.append(result.attempts[-1].elapsed_ms)
            winner.revenue += result.price
            predicted = result.outputs["logits"].argmax(dim=1)
            winner.correct += int((predicted == y[start : start + batch]).sum())
            winner.examples += batch
            if not quiet:
                print(f"\n=== request {index + 1}/{requests} ({priority}) ===")
                print(render_text(result, priority))
    if failures:
        print(f"{failures} of {requests} requests failed", file=sys.stderr)
    return tallies


def print_summary(peers: list[PeerProcess], tallies: dict[str, Tally]) -> None:
    print("\nSummary")
    header = f"  {'peer':<12}{'id':<10}{'models':<22}{'bids':>6}{'wins':>6}{'mean ms':>9}{'revenue':>10}{'accuracy':>10}"
    print(header)
    for peer in peers:
        tally = tallies.get(peer.name, Tally())
        mean = sum(tally.latency_ms) / len(tally.latency_ms) if tally.latency_ms else float("nan")
        accuracy = tally.correct / tally.examples if tally.examples else float("nan")
        print(
            f"  {peer.name:<12}{peer.peer_id:<10}{','.join(peer.models):<22}{tally.bids:>6}{tally.wins:>6}"
            f"{mean:>9.1f}{tally.revenue:>10.4f}{accuracy:>10.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers", nargs="+", default=list(DEFAULT_PEERS), help="example peer names (peers/*.toml)"
    )
    parser.add_argument("--requests", type=int, default=12, help="demo requests to run (default 12)")
    parser.add_argument("--batch", type=int, default=8, help="digits per request (default 8)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data" / "testnet",
        help="per-peer keys and cached weights, kept so reruns skip training (default .data/testnet)",
    )
    parser.add_argument("--quiet", action="store_true", help="summary only, with a progress bar")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    try:
        with testnet(args.peers, args.data_dir) as peers:
            for peer in peers:
                print(
                    f"peer {peer.name:<11} {peer.peer_id} at {peer.address} hosting {', '.join(peer.models)}"
                )
            tallies = asyncio.run(workload(peers, args.requests, args.batch, args.quiet))
            print_summary(peers, tallies)
    except KeyboardInterrupt:
        print("\ninterrupted: peers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"testnet: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({name: vars(t) for name, t in tallies.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
