"""The executor: at most once per order, bounded concurrency, a bounded queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import pytest

from atomic_p2p.errors import (
    DeadlineError,
    ExecutionError,
    LimitExceededError,
    ReplayError,
    UnavailableError,
)
from atomic_p2p.peer.workers import WorkerPool
from tests.support.waiting import settle

WAIT_S = 10.0


class Gate:
    """Jobs that block in their worker thread until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.entered = threading.Semaphore(0)

    def job(self, value: str) -> Callable[[], str]:
        def run() -> str:
            with self.lock:
                self.calls += 1
                self.running += 1
                self.peak = max(self.peak, self.running)
            self.entered.release()
            try:
                assert self.release.wait(WAIT_S), "the test never released the gate"
                return value
            finally:
                with self.lock:
                    self.running -= 1

        return run

    async def until_running(self, count: int) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.entered.acquire, True, WAIT_S)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def executor() -> AsyncIterator[WorkerPool[str]]:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=2, queue_limit=1, result_ttl_s=60)
    yield pool
    await pool.drain(WAIT_S)
    pool.close()


async def test_concurrent_duplicates_share_one_execution(executor: WorkerPool[str]) -> None:
    gate = Gate()
    first = asyncio.ensure_future(executor.run("k", b"order", gate.job("result")))
    await gate.until_running(1)
    second = asyncio.ensure_future(executor.run("k", b"order", gate.job("other")))
    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), WAIT_S) == ["result", "result"]
    assert gate.calls == 1


async def test_a_retry_after_completion_gets_the_first_result(executor: WorkerPool[str]) -> None:
    gate = Gate()
    gate.release.set()
    assert await executor.run("k", b"order", gate.job("first")) == "first"
    assert await executor.run("k", b"order", gate.job("second")) == "first"
    assert gate.calls == 1


async def test_a_different_order_for_a_known_task_is_a_replay(executor: WorkerPool[str]) -> None:
    gate = Gate()
    running = asyncio.ensure_future(executor.run("k", b"order", gate.job("a")))
    await gate.until_running(1)
    with pytest.raises(ReplayError):
        await executor.run("k", b"another order", gate.job("b"))
    gate.release.set()
    assert await asyncio.wait_for(running, WAIT_S) == "a"
    with pytest.raises(ReplayError):
        await executor.run("k", b"another order", gate.job("b"))
    assert gate.calls == 1


async def test_concurrency_is_bounded_and_the_queue_refuses_when_full(executor: WorkerPool[str]) -> None:
    gate = Gate()
    admitted = [asyncio.ensure_future(executor.run(i, b"o", gate.job(str(i)))) for i in range(3)]
    await gate.until_running(2)
    await settle()  # a third would take its slot in the event loop, before any thread starts it
    load = executor.load()
    assert (load.in_flight, load.queued, load.saturated) == (2, 1, True)
    with pytest.raises(LimitExceededError, match="retry later"):
        await executor.run("one too many", b"o", gate.job("x"))
    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(*admitted), WAIT_S) == ["0", "1", "2"]
    assert gate.peak == 2 and gate.calls == 3
    # The refused order left no trace: it runs once there is room.
    assert await executor.run("one too many", b"o", gate.job("x")) == "x"


async def test_an_order_whose_deadline_passes_in_the_queue_leaves_no_trace() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=1, result_ttl_s=60)
    gate = Gate()
    busy = asyncio.ensure_future(pool.run("busy", b"o", gate.job("busy")))
    await gate.until_running(1)
    with pytest.raises(DeadlineError):
        await pool.run("late", b"o", gate.job("late"), timeout=0.05)
    gate.release.set()
    assert await asyncio.wait_for(busy, WAIT_S) == "busy"
    assert await pool.run("late", b"o", gate.job("late again")) == "late again"
    await pool.drain(WAIT_S)
    pool.close()


async def test_a_failure_is_remembered_like_a_result(executor: WorkerPool[str]) -> None:
    calls = 0

    def broken() -> str:
        nonlocal calls
        calls += 1
        raise ExecutionError("model failed")

    for _ in range(2):
        with pytest.raises(ExecutionError, match="model failed"):
            await executor.run("k", b"o", broken)
    assert calls == 1


async def test_results_expire_after_their_ttl() -> None:
    clock = Clock()
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=5, clock=clock)
    gate = Gate()
    gate.release.set()
    assert await pool.run("k", b"o", gate.job("first")) == "first"
    clock.now += 4.9
    assert await pool.run("k", b"o", gate.job("second")) == "first"
    clock.now += 0.2
    assert await pool.run("k", b"another order", gate.job("second")) == "second"
    pool.close()


async def test_remembered_results_are_capped() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=60, max_results=2)
    for key in ("a", "b"):
        await pool.run(key, b"o", lambda: "done")
    with pytest.raises(LimitExceededError, match="results held"):
        await pool.run("c", b"o", lambda: "done")
    assert await pool.run("a", b"o", lambda: "again") == "done"  # known orders are still answered
    pool.close()


async def test_drain_finishes_admitted_work_and_refuses_new(executor: WorkerPool[str]) -> None:
    gate = Gate()
    running = asyncio.ensure_future(executor.run("k", b"o", gate.job("done")))
    await gate.until_running(1)
    drained = asyncio.ensure_future(executor.drain(WAIT_S))
    await settle()
    assert not drained.done()
    with pytest.raises(UnavailableError):
        await executor.run("new", b"o", gate.job("new"))
    gate.release.set()
    assert await asyncio.wait_for(drained, WAIT_S) is True
    assert running.result() == "done"


async def test_drain_reports_work_that_did_not_finish_in_time(executor: WorkerPool[str]) -> None:
    gate = Gate()
    running = asyncio.ensure_future(executor.run("k", b"o", gate.job("done")))
    await gate.until_running(1)
    assert await executor.drain(0.05) is False
    gate.release.set()
    assert await asyncio.wait_for(running, WAIT_S) == "done"


async def test_a_caller_that_goes_away_does_not_cancel_the_work(executor: WorkerPool[str]) -> None:
    gate = Gate()
    impatient = asyncio.ensure_future(executor.run("k", b"o", gate.job("done")))
    await gate.until_running(1)
    impatient.cancel()
    gate.release.set()
    assert await asyncio.wait_for(executor.run("k", b"o", gate.job("again")), WAIT_S) == "done"
    assert gate.calls == 1


async def test_a_stream_holds_one_slot_runs_once_per_key_and_frees_the_slot_when_closed() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=60.0)
    try:
        async with pool.hold(("r", "t")):
            assert pool.load().in_flight == 1
            assert await pool.step(lambda: 41 + 1) == 42
            with pytest.raises(LimitExceededError):  # its one slot is held for the whole stream
                await pool.run(("r", "u"), b"f", lambda: "x")
        assert pool.load().in_flight == 0
        with pytest.raises(ReplayError):
            async with pool.hold(("r", "t")):
                pass
        assert await pool.run(("r", "u"), b"f", lambda: "served") == "served"
    finally:
        pool.close()


async def test_drain_waits_for_a_running_stream() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=60.0)
    release = asyncio.Event()

    async def stream() -> None:
        async with pool.hold("key"):
            await release.wait()

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    assert not await pool.drain(timeout=0.01)
    release.set()
    assert await pool.drain(timeout=WAIT_S)
    await task
    pool.close()


class Counter:
    """A stream's step in a worker thread: 1, 2, ... up to ``last``; call ``hold_at`` blocks until
    released (and says so), ``fail_at`` raises."""

    def __init__(self, last: int, hold_at: int = 0, fail_at: int = 0) -> None:
        self.last, self.hold_at, self.fail_at = last, hold_at, fail_at
        self.calls = 0
        self.held = threading.Event()
        self.release = threading.Event()

    def step(self) -> int | None:
        self.calls += 1
        if self.calls == self.hold_at:
            self.held.set()
            assert self.release.wait(WAIT_S), "the test never released the step"
        if self.calls == self.fail_at:
            raise ExecutionError("the model failed")
        return self.calls if self.calls <= self.last else None


async def test_stream_steps_run_back_to_back_and_what_is_ready_arrives_in_one_batch() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=60.0)
    counter = Counter(last=8, hold_at=6)
    try:
        async with pool.hold("key"), aclosing(pool.steps(counter.step)) as batches:
            assert await anext(batches) == [1]  # the first, alone, as soon as it exists
            # The caller is busy elsewhere: the thread does not wait for it.
            assert await asyncio.to_thread(counter.held.wait, WAIT_S)
            assert await anext(batches) == [2, 3, 4, 5]
            counter.release.set()
            rest = [item async for batch in batches for item in batch]
        assert rest == [6, 7, 8] and counter.calls == 9
    finally:
        pool.close()


async def test_a_step_that_raises_ends_the_steps_after_what_came_before() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=60.0)
    counter = Counter(last=10, fail_at=4)
    received: list[int] = []
    try:
        with pytest.raises(ExecutionError, match="the model failed"):
            async for batch in pool.steps(counter.step):
                received.extend(batch)
        assert received == [1, 2, 3]
    finally:
        pool.close()


async def test_closing_the_steps_stops_the_thread_after_the_step_in_progress() -> None:
    pool: WorkerPool[str] = WorkerPool(max_concurrency=1, queue_limit=0, result_ttl_s=60.0)
    counter = Counter(last=1000, hold_at=3)
    try:
        batches = pool.steps(counter.step)
        assert await anext(batches) == [1]
        assert await asyncio.to_thread(counter.held.wait, WAIT_S)
        closing = asyncio.ensure_future(batches.aclose())
        await asyncio.sleep(0.01)
        assert not closing.done()  # it waits for the step in progress
        counter.release.set()
        await asyncio.wait_for(closing, WAIT_S)
        calls = counter.calls
        await asyncio.sleep(0.05)
        assert counter.calls == calls == 3
    finally:
        pool.close()
