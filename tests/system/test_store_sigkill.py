"""A requester process SIGKILLed mid-stream loses nothing its store acknowledged.

The requester runs in a subprocess against real peers (in this process) with ``store=DB``. After
each result it awaits ``store.commit()`` (everything written before it is committed: the bids and
decision with its rationale, the payment, the profile updates) and only then prints the request
id. The test kills it with SIGKILL in the middle of its next auctions, reopens the store, and
finds every acknowledged decision, payment and outcome; a new requester restores the profiles.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from atomic_p2p.requester import Requester
from atomic_p2p.store import Store
from peers.examples import running_peers

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
ACKNOWLEDGED_BEFORE_KILL = 12

REQUESTER = textwrap.dedent(
    """
    import asyncio, sys
    from atomic_p2p.requester import Requester
    from atomic_p2p.testing import digits_batch

    async def main(store, addresses):
        async with Requester(addresses, store=store, seed=0) as requester:
            for i in range(10_000):
                x, y = digits_batch(8, (8 * i) % 1600)
                result = await requester.run("classify/digits", {"x": x}, deadline_s=10)
                right = (result.outputs["logits"].argmax(dim=1) == y).float().mean()
                await requester.report_outcome(result, float(right))
                await requester.memory.store.commit()  # acknowledged from here on
                print(result.request_id.hex(), result.winner.peer_id.hex, result.price, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2:]))
    """
)


async def run_until_killed(store: Path, addresses: list[str]) -> list[tuple[str, str, float]]:
    """Start the requester, SIGKILL it after some acknowledged results; every acknowledged line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REQUESTER, str(store), *addresses,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    lines: list[bytes] = []
    try:
        while len(lines) < ACKNOWLEDGED_BEFORE_KILL:
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line, f"the requester died: {(await child.stderr.read()).decode()[-2000:]}"
            lines.append(line)
        child.send_signal(signal.SIGKILL)  # it is in the middle of its next auction
        rest, _ = await asyncio.wait_for(child.communicate(), 30)
        lines += rest.splitlines()  # printed before the kill landed: acknowledged too
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    fields = [line.decode().split() for line in lines if line.strip()]
    return [(request, peer, float(price)) for request, peer, price in fields]


async def test_nothing_acknowledged_is_lost_when_the_requester_is_sigkilled(tmp_path: Path) -> None:
    store_path = tmp_path / "requester.db"
    async with running_peers(["small", "specialist"], tmp_path) as peers:
        acknowledged = await run_until_killed(store_path, [peer.address for peer in peers])
    assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL

    with Store.open(store_path) as store:  # read-write: recovers the WAL the kill left behind
        decisions = {d.request_id: d for d in store.recent_decisions(100_000)}
        for request, peer, price in acknowledged:
            assert request in decisions, f"acknowledged decision {request} lost"
            assert decisions[request].winner_peer == peer and decisions[request].price == pytest.approx(price)
            assert decisions[request].rationale["candidates"], "its rationale was lost"
            assert {bid.peer for bid in store.bids_for(request)} >= {peer}
        paid: dict[str, float] = {}
        for _, peer, price in acknowledged:
            paid[peer] = paid.get(peer, 0.0) + price
        totals = store.ledger_totals()
        for peer, amount in paid.items():
            assert totals[peer]["charge"] >= amount - 1e-9  # unacknowledged payments may add more
        outcomes = sum(int(p.snapshot["outcomes"]) for p in store.latest_profiles())
        assert outcomes >= len(acknowledged)

    # A restarted requester starts from what the killed one learned.
    restarted = Requester(["127.0.0.1:1"], store=store_path)
    try:
        assert sum(profile.outcomes for profile in restarted.memory.profiles.values()) == outcomes
    finally:
        await restarted.close()
