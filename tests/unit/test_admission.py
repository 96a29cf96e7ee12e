"""The request queue: bounded concurrency, served by priority class, then deadline, then arrival."""

from __future__ import annotations

import asyncio
import time

import pytest

from atomic_p2p.errors import ConfigError, DeadlineError
from atomic_p2p.requester.admission import Priority, RequestQueue, parse_priority


@pytest.mark.asyncio
async def test_waiters_are_served_by_priority_then_deadline_then_arrival() -> None:
    queue = RequestQueue(limit=1)
    order: list[str] = []
    release = asyncio.Event()
    now = time.monotonic()

    async def request(name: str, priority: Priority, deadline: float) -> None:
        async with queue.slot(priority, deadline):
            order.append(name)
            if name == "holder":
                await release.wait()

    holder = asyncio.create_task(request("holder", Priority.LOW, now + 60))
    await asyncio.sleep(0)
    waiters = [
        ("low", Priority.LOW, now + 1),
        ("normal-late", Priority.NORMAL, now + 50),
        ("high-late", Priority.HIGH, now + 40),
        ("normal-soon", Priority.NORMAL, now + 5),
        ("high-soon", Priority.HIGH, now + 30),
        ("high-soon-2", Priority.HIGH, now + 30),
    ]
    tasks = [asyncio.create_task(request(*w)) for w in waiters]
    await asyncio.sleep(0)
    assert queue.running == 1 and queue.waiting == len(waiters)
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, *tasks), timeout=5)
    assert order == ["holder", "high-soon", "high-soon-2", "high-late", "normal-soon", "normal-late", "low"]
    assert queue.running == 0 and queue.waiting == 0


@pytest.mark.asyncio
async def test_at_most_limit_run_at_once() -> None:
    queue = RequestQueue(limit=3)
    running = peak = 0

    async def request() -> None:
        nonlocal running, peak
        async with queue.slot():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(request() for _ in range(10))), timeout=5)
    assert peak == 3 and queue.running == 0


@pytest.mark.asyncio
async def test_a_waiter_whose_deadline_passes_leaves_with_an_error() -> None:
    queue = RequestQueue(limit=1)
    async with queue.slot():
        with pytest.raises(DeadlineError, match="queue"):
            async with queue.slot(Priority.HIGH, time.monotonic() + 0.05):
                pass
    assert queue.waiting == 0 and queue.running == 0
    async with queue.slot():  # the slot is free again
        pass


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    queue = RequestQueue(limit=1)
    async with queue.slot():
        waiter = asyncio.create_task(queue.slot().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert queue.running == 0
    async with queue.slot():
        pass


def test_priorities_parse_from_names_and_numbers() -> None:
    assert parse_priority("high") is Priority.HIGH and parse_priority(2) is Priority.LOW
    with pytest.raises(ConfigError):
        parse_priority("urgent")
    with pytest.raises(ConfigError):
        RequestQueue(0)
