"""Waiting on what a test observes, instead of sleeping for a guessed duration.

- :func:`eventually` polls a condition until it holds, and fails with what was awaited once a
  bound passes: the bound is only a limit, a fast machine never waits for it.
- :func:`settle` runs every callback the event loop has ready, so a test can check that
  something did *not* happen (a third job did not start) without guessing how long to look.
- :func:`until_past` waits for the wall clock (what peers check bids against) to pass a time the
  test read from the protocol itself, such as a bid's signed ``valid_until_ms``.
- :func:`draining` asks a peer's standard health service whether it has stopped taking work.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

POLL_S = 0.02


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str = ""
) -> float:
    """Poll ``condition`` (sync or async) until it is true; return the seconds that took."""
    started = time.monotonic()
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g} s: {what or condition}")
        await asyncio.sleep(POLL_S)


async def settle(rounds: int = 20) -> None:
    """Let the event loop run every callback that is ready (and those they make ready)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until_past(deadline_ms: int) -> None:
    """Return once the wall clock reads later than ``deadline_ms`` (ms since the epoch)."""
    while (now := time.time_ns() // 1_000_000) <= deadline_ms:
        await asyncio.sleep((deadline_ms - now + 1) / 1000)


async def draining(channel: grpc.aio.Channel, service: str = "atomic.v1.Peer") -> bool:
    """Whether the peer behind ``channel`` has its health service report ``service`` NOT_SERVING,
    as a draining peer does."""
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return bool(answer.status == health_pb2.HealthCheckResponse.NOT_SERVING)
