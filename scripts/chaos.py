"""Crash faults under load: peer processes SIGKILLed and restarted while a requester process buys,
the requester SIGKILLed and reopened on its store; nothing it returned may then be missing.

Every peer is an ``atomic-peer`` process (the small example model) joined by gossip; the requester
is a process too, bootstrapped from the first peer, with ``store=`` a SQLite file and the default
``durable=True``. It prints each result's request id the moment ``run()`` returns it, without
flushing anything itself. This script kills it (SIGKILL) after ``--results`` results, kills a peer
(SIGKILL) and restarts it, and starts the requester again on the same store, ``--lives`` times.
At the end every printed request id must have its decision, its bids and its payment in the store.

    python scripts/chaos.py                 # full size: 6 peers, 10 requester lives of 40 results
    python scripts/chaos.py --quick         # CI size (tests/adversarial/test_chaos.py)

It prints a table and writes ``out/chaos.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atomic_p2p.store import Store  # noqa: E402
from atomic_p2p.testing import PeerProcess, peer_processes  # noqa: E402
from peers.examples import example_table  # noqa: E402

REQUESTER = textwrap.dedent(
    """
    import asyncio, sys
    from atomic_p2p.requester import Requester
    from atomic_p2p.testing import digits_batch

    async def main(store, seed):
        async with Requester(bootstrap=[seed], store=store) as requester:
            await requester.wait_for_peers("classify/digits", 1, timeout=30)
            for i in range(100_000):
                x, _ = digits_batch(4, (4 * i) % 1600)
                try:
                    result = await requester.run("classify/digits", {"x": x}, deadline_s=5)
                except Exception as error:  # a peer died mid-auction: counted, not fatal
                    print("FAILED", type(error).__name__, flush=True)
                    continue
                print("OK", result.request_id.hex(), flush=True)  # returned: must be durable now

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


RETURNED = re.compile(r"^OK ([0-9a-f]{32})\n$")
QUICK = (2, 2, 4)  # peers, requester lives, results per life


@dataclass
class Report:
    peers: int
    lives: int
    results_per_life: int
    returned: int = 0
    failed: int = 0
    missing_decisions: int = 0
    missing_payments: int = 0
    missing_bids: int = 0
    peer_kills: int = 0
    seconds: float = 0.0
    returned_ids: list[str] = field(default_factory=list, repr=False)


async def requester_life(
    store: Path, seed: str, results: int, report: Report, halfway: Callable[[], Awaitable[None]]
) -> None:
    """One requester process: read results until ``results`` came back (calling ``halfway`` after
    half of them: a peer dies under load), then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR", "OMP_NUM_THREADS": "1"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REQUESTER, str(store), seed,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    lines: list[bytes] = []
    try:
        got = 0
        while got < results:
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"the requester died: {(await child.stderr.read()).decode()[-2000:]}")
            lines.append(line)
            got += line.startswith(b"OK")
            if line.startswith(b"OK") and got == results // 2:
                await halfway()
        await asyncio.sleep(random.uniform(0, 0.05))  # land the kill anywhere in the next auction
        child.send_signal(signal.SIGKILL)
        rest, _ = await asyncio.wait_for(child.communicate(), 30)
        lines += rest.splitlines(keepends=True)  # printed before the kill landed: returned too
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    for line in lines:
        returned = RETURNED.match(line.decode())
        if returned is not None:  # a whole line: a line cut by the kill names no whole id
            report.returned_ids.append(returned.group(1))
        elif line.startswith(b"FAILED"):
            report.failed += 1


@contextlib.asynccontextmanager
async def restarted(name: str, seed: str, workdir: Path) -> AsyncIterator[list[PeerProcess]]:
    async with peer_processes([example_table("small", name=name, bootstrap=[seed])], workdir) as peers:
        yield peers


async def chaos(workdir: Path, *, peers: int, lives: int, results: int) -> Report:
    report = Report(peers, lives, results)
    started = time.perf_counter()
    store = workdir / "requester.db"
    async with peer_processes([example_table("small", name="seed")], workdir) as (seed,):
        others = [example_table("small", name=f"p{i}", bootstrap=[seed.address]) for i in range(1, peers)]
        async with peer_processes(others, workdir) as running, contextlib.AsyncExitStack() as stack:
            for life in range(lives):
                victim = running[life % len(running)]

                async def kill(victim: PeerProcess = victim) -> None:
                    os.killpg(victim.process.pid, signal.SIGKILL)  # under load
                    await victim.process.wait()
                    report.peer_kills += 1

                await requester_life(store, seed.address, results, report, kill)
                (replacement,) = await stack.enter_async_context(  # a new one takes its place
                    restarted(f"{victim.name}-r{life}", seed.address, workdir)
                )
                running[life % len(running)] = replacement
    report.returned = len(report.returned_ids)
    with Store.open(store) as opened:  # read-write: recovers the WAL the kills left behind
        decisions = {d.request_id for d in opened.recent_decisions(1_000_000)}
        for request in report.returned_ids:
            report.missing_decisions += request not in decisions
            report.missing_bids += not opened.bids_for(request)
        paid = {row[0] for row in opened._query("SELECT request_id FROM ledger")}
        report.missing_payments = sum(request not in paid for request in report.returned_ids)
    report.seconds = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 2 peers, 2 lives of 4 results")
    parser.add_argument("--peers", type=int, default=6)
    parser.add_argument("--lives", type=int, default=10, help="requester processes started (and killed)")
    parser.add_argument("--results", type=int, default=40, help="results each requester life returns")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "chaos.json")
    args = parser.parse_args()
    sizes = QUICK if args.quick else (args.peers, args.lives, args.results)
    with TemporaryDirectory() as tmp:
        report = asyncio.run(chaos(Path(tmp), peers=sizes[0], lives=sizes[1], results=sizes[2]))
    row = {k: v for k, v in asdict(report).items() if k != "returned_ids"}
    for key, value in row.items():
        print(f"{key:>20}  {value:.1f}" if isinstance(value, float) else f"{key:>20}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))
    if report.missing_decisions or report.missing_payments or report.missing_bids:
        sys.exit("returned results are missing from the store")


if __name__ == "__main__":
    main()
