"""Crash faults, in one process: what ``run()`` returned is already durable, and a peer that died
stops being solicited after the requester's first failed call to it (docs/security.md, "Crash
faults")."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import AtomicError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.gossip.messages import MemberState
from atomic_p2p.requester import Requester
from atomic_p2p.requester.discovery import SUSPECT_S
from atomic_p2p.requester.transport import GrpcTransport
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers

pytestmark = pytest.mark.integration


class CountingTransport(GrpcTransport):
    """gRPC, counting each call's outcome per (address, method)."""

    def __init__(self, pool: ChannelPool) -> None:
        super().__init__(pool)
        self.failed: Counter[tuple[str, str]] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()

    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        self.calls[(address, method)] += 1
        try:
            return await super().send(address, method, request, timeout_s)
        except AtomicError:
            self.failed[(address, method)] += 1
            raise


async def test_what_run_returned_is_committed_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "requester.db"
    async with (
        running_peers(["small"], tmp_path) as (peer,),
        Requester([peer.address], store=path) as requester,
    ):
        store = requester.memory.store
        assert store is not None
        store._linger_s = 0.3  # a slow writer: without durable=True the records would lag behind
        inputs, _ = digits_batch(4)
        for _ in range(3):
            result = await requester.run("classify/digits", {"x": inputs})
            with contextlib.closing(sqlite3.connect(path)) as reader:  # another connection, now
                request = result.request_id.hex()
                paid = reader.execute("SELECT count(*) FROM ledger WHERE request_id = ?", (request,))
                decided = reader.execute("SELECT count(*) FROM decisions WHERE request_id = ?", (request,))
                bids = reader.execute("SELECT count(*) FROM bids WHERE request_id = ?", (request,))
                assert (paid.fetchone()[0], decided.fetchone()[0]) == (1, 1)
                assert bids.fetchone()[0] >= 1


async def test_a_dead_peer_stops_being_solicited_after_the_first_failed_call(tmp_path: Path) -> None:
    gossip = GossipConfig(interval=0.2)
    fast = {"gossip_interval_s": 0.2}
    async with (
        running_peers(["small"], tmp_path, **fast) as (seed,),
        running_peers(["small-fixed"], tmp_path, bootstrap=(seed.address,), **fast) as (doomed,),
    ):
        pool = ChannelPool()
        transport = CountingTransport(pool)
        requester = Requester(bootstrap=[seed.address], gossip=gossip, transport=transport)
        async with requester:
            assert await requester.wait_for_peers("classify/digits", count=2, timeout=20)
            inputs, _ = digits_batch(4)
            await requester.run("classify/digits", {"x": inputs})
            # SIGKILL-like: its sockets close, it says goodbye to nobody
            assert doomed.gossip is not None
            await doomed.gossip.stop(leave=False)
            await doomed._server.stop(None)
            started = time.monotonic()
            done = 0
            while time.monotonic() - started < 1.5:  # purchases for 1.5 s after the death
                await requester.run("classify/digits", {"x": inputs})
                done += 1
            failed = sum(n for (address, _), n in transport.failed.items() if address == doomed.address)
            assert failed <= 2, f"{failed} failed calls to the dead peer"  # the first, maybe one in flight
            assert done >= 5
            agent = requester.discovery.agent
            assert agent is not None
            assert agent.membership.state_of(doomed.peer_id) in (MemberState.SUSPECT, MemberState.DEAD)
            assert doomed.address not in requester.discovery.candidates("classify/digits", 4)
        await pool.close()
    assert SUSPECT_S >= 1.0
