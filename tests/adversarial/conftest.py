"""What the adversarial suite shares: a real peer, callers that pose as any source address, a
requester that buys through them, and gauges for event-loop stalls and memory.

A test here runs one class of attack, bounded in count and time, and asserts that the honest path
works during and after it. Attackers and honest requesters must come from different addresses, and
every test runs on 127.0.0.1, so they call the peer's servicer (:class:`PeerService`, the code
behind the gRPC handlers) with the connection name gRPC would have given them
(``ipv4:10.66.0.7:40000``); status codes and limits on the real socket are checked over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, Iterator

from atomic_p2p.peer.server import PeerService
from atomic_p2p.requester.transport import BytesTransport
from tests.integration.conftest import buyer, node, node_config  # noqa: F401  (the same fixtures here)

HONEST = "ipv4:10.1.0.1:50000"
"""Where the honest requesters of these tests call from (another /24 than every attacker)."""


def attacker(prefix: int, host: int = 7) -> str:
    """A connection name in the attacker's ``prefix``-th /24 (10.66.<prefix>.<host>)."""
    return f"ipv4:10.66.{prefix}.{host}:40000"


class PosingTransport(BytesTransport):
    """A requester transport that hands the codec bytes to peers' servicers, posing as ``caller``."""

    def __init__(self, services: dict[str, PeerService], caller: str) -> None:
        self._services = services
        self.caller = caller

    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        return await asyncio.wait_for(self._services[address].call(method, request, self.caller), timeout_s)

    async def send_stream(
        self, address: str, method: str, request: bytes, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(self._services[address].stream(method, request, self.caller)) as out:
            async for message in out:
                yield message


class LoopLag:
    """A ticker task that measures how late the event loop wakes it: the worst stall while it ran."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.worst_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.period_s)
            self.worst_s = max(self.worst_s, time.perf_counter() - started - self.period_s)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_growth() -> Iterator[list[int]]:
    """Yields a list that holds, on exit, how much resident memory grew inside the block."""
    grown: list[int] = []
    before = rss_bytes()
    yield grown
    grown.append(rss_bytes() - before)
