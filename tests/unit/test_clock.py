"""The clock seam: the system clock, the fake clock (by hand and autojump), and waits on a clock."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from atomic_p2p.clock import (
    DEFAULT_WALL_MS,
    SYSTEM_CLOCK,
    FakeClock,
    SystemClock,
    wait_all,
    wait_first,
    wait_for,
)
from atomic_p2p.errors import DeadlineError
from atomic_p2p.identity import Identity
from atomic_p2p.protocol.messages import ExecuteCall
from atomic_p2p.requester.admission import Priority, RequestQueue
from atomic_p2p.requester.broker import Terms
from atomic_p2p.requester.execution import ExecutionPolicy, Executor, Payload
from atomic_p2p.requester.types import BidInfo


def _add(a: int, *, b: int) -> int:
    return a + b


async def _sleep_and_note(clock: FakeClock, seconds: float, name: str, woke: list[tuple[str, float]]) -> None:
    await clock.sleep(seconds)
    woke.append((name, clock.monotonic()))


# --- the system clock ----------------------------------------------------------------------------


async def test_the_system_clock_reads_real_time_and_works_off_the_loop() -> None:
    assert isinstance(SYSTEM_CLOCK, SystemClock)
    first = SYSTEM_CLOCK.monotonic()
    assert SYSTEM_CLOCK.monotonic() >= first
    assert abs(SYSTEM_CLOCK.wall_ms() - time.time() * 1000) < 1000
    loop_thread = threading.get_ident()
    worker = await SYSTEM_CLOCK.run_blocking(threading.get_ident)
    assert worker != loop_thread
    assert await SYSTEM_CLOCK.run_blocking(_add, 1, b=2) == 3
    await SYSTEM_CLOCK.sleep(0)


async def test_waits_on_the_system_clock_are_asyncios() -> None:
    finished = asyncio.ensure_future(asyncio.sleep(0))
    await finished
    never = asyncio.get_running_loop().create_future()
    done, pending = await wait_first(SYSTEM_CLOCK, [finished, never], 0)
    assert done == {finished} and pending == {never}
    done, pending = await wait_all(SYSTEM_CLOCK, [finished, never], 0)
    assert done == {finished} and pending == {never}
    with pytest.raises(TimeoutError):
        await wait_for(SYSTEM_CLOCK, never, 0)
    assert never.cancelled()
    assert await wait_for(SYSTEM_CLOCK, asyncio.sleep(0, "x"), 1.0) == "x"


# --- the fake clock by hand ----------------------------------------------------------------------


def test_a_fake_clock_starts_where_told_and_never_drifts() -> None:
    clock = FakeClock()
    assert clock.monotonic() == 0.0 and clock.wall_ms() == DEFAULT_WALL_MS
    for _ in range(1000):
        clock.jump(0.001)
    assert clock.wall_ms() == DEFAULT_WALL_MS + 1000 and clock.monotonic() == 1.0
    assert FakeClock(wall_ms=5).wall_ms() == 5
    with pytest.raises(ValueError):
        clock.jump(-1)
    with pytest.raises(ValueError):
        clock.jump(float("inf"))


async def test_advance_wakes_sleepers_in_order_each_at_its_own_time() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []
    tasks = [
        asyncio.create_task(_sleep_and_note(clock, seconds, name, woke))
        for name, seconds in [("c", 3.0), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("late", 10.0)]
    ]
    await clock.advance(5.0)  # the tasks were created but had not run yet: advance lets them
    assert woke == [("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("c", 3.0)]
    assert clock.monotonic() == 5.0 and clock.sleepers == 1 and clock.next_wakeup() == 10.0
    await clock.advance(5.0)
    assert woke[-1] == ("late", 10.0)
    await asyncio.gather(*tasks)
    assert clock.sleepers == 0 and clock.next_wakeup() is None


async def test_advance_follows_a_sleeper_that_sleeps_again() -> None:
    clock = FakeClock()
    readings: list[float] = []

    async def ticker() -> None:
        for _ in range(4):
            await clock.sleep(0.5)
            readings.append(clock.monotonic())

    task = asyncio.create_task(ticker())
    await clock.advance(1.75)
    assert readings == [0.5, 1.0, 1.5] and clock.monotonic() == 1.75
    await clock.advance(0.25)
    assert readings == [0.5, 1.0, 1.5, 2.0]
    await task


async def test_jump_wakes_every_due_sleeper_at_the_new_time() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []
    tasks = [asyncio.create_task(_sleep_and_note(clock, s, n, woke)) for n, s in [("b", 2.0), ("a", 1.0)]]
    await asyncio.sleep(0)
    clock.jump(3.0)
    await asyncio.gather(*tasks)
    assert woke == [("a", 3.0), ("b", 3.0)]


async def test_a_cancelled_sleeper_leaves_and_wakes_nobody() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []
    doomed = asyncio.create_task(_sleep_and_note(clock, 1.0, "doomed", woke))
    kept = asyncio.create_task(_sleep_and_note(clock, 2.0, "kept", woke))
    await asyncio.sleep(0)
    assert clock.sleepers == 2 and clock.next_wakeup() == 1.0
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert clock.sleepers == 1 and clock.next_wakeup() == 2.0
    await clock.advance(2.0)
    await kept
    assert woke == [("kept", 2.0)]


async def test_many_cancelled_sleepers_are_compacted_away() -> None:
    clock = FakeClock()
    for _ in range(100):
        task = asyncio.create_task(clock.sleep(1000.0))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert clock.sleepers == 0 and len(clock._sleepers) < 10


async def test_zero_and_negative_sleeps_only_yield() -> None:
    clock = FakeClock()
    await clock.sleep(0)
    await clock.sleep(-1)
    assert clock.sleepers == 0 and clock.monotonic() == 0.0


async def test_run_blocking_runs_inline_on_a_fake_clock() -> None:
    clock = FakeClock()
    assert await clock.run_blocking(threading.get_ident) == threading.get_ident()
    assert await clock.run_blocking(_add, 3, b=4) == 7


# --- autojump ------------------------------------------------------------------------------------


async def test_autojump_skips_to_the_next_sleeper_when_everyone_waits() -> None:
    clock = FakeClock(autojump=True)
    started = time.perf_counter()
    await clock.sleep(3600)
    assert clock.monotonic() == 3600.0 and clock.wall_ms() == DEFAULT_WALL_MS + 3_600_000
    woke: list[tuple[str, float]] = []
    await asyncio.gather(
        *(_sleep_and_note(clock, s, n, woke) for n, s in [("x", 30.0), ("y", 10.0), ("z", 20.0)])
    )
    assert woke == [("y", 3610.0), ("z", 3620.0), ("x", 3630.0)]
    assert time.perf_counter() - started < 5  # an hour of fake time, not of real time


async def test_autojump_waits_for_tasks_that_can_still_run() -> None:
    clock = FakeClock(autojump=True)
    seen: list[tuple[str, float]] = []

    async def busy() -> None:  # runs for many loop iterations without touching the clock
        for _ in range(200):
            await asyncio.sleep(0)
        seen.append(("busy", clock.monotonic()))

    async def relay(hops: int) -> None:  # a message passed along a chain of queues
        queues = [asyncio.Queue[int]() for _ in range(hops + 1)]

        async def hop(index: int) -> None:
            await queues[index + 1].put(await queues[index].get() + 1)

        workers = [asyncio.create_task(hop(i)) for i in range(hops)]
        await queues[0].put(0)
        assert await queues[hops].get() == hops
        await asyncio.gather(*workers)
        seen.append(("relay", clock.monotonic()))

    await asyncio.gather(busy(), relay(100), _sleep_and_note(clock, 1.0, "sleeper", seen))
    assert sorted(seen[:2]) == [("busy", 0.0), ("relay", 0.0)] and seen[2] == ("sleeper", 1.0)


async def _race(clock: FakeClock) -> list[tuple[str, float]]:
    """A deadline race: two slow workers, a watchdog, a timeout, a retry."""
    trace: list[tuple[str, float]] = []

    async def worker(name: str, seconds: float) -> str:
        await clock.sleep(seconds)
        trace.append((name, clock.monotonic()))
        return name

    slow = asyncio.create_task(worker("slow", 5.0))
    fast = asyncio.create_task(worker("fast", 0.3))
    done, _ = await wait_first(clock, [slow, fast], 1.0)
    trace.append((f"first {sorted(t.result() for t in done)}", clock.monotonic()))
    try:
        await wait_for(clock, slow, 1.0)
    except TimeoutError:
        trace.append(("timed out", clock.monotonic()))
    retry = await wait_for(clock, worker("retry", 0.25), 1.0)
    trace.append((retry, clock.monotonic()))
    return trace


async def test_autojump_is_deterministic() -> None:
    first = await _race(FakeClock(autojump=True))
    assert first == [
        ("fast", 0.3),
        ("first ['fast']", 0.3),
        ("timed out", 1.3),
        ("retry", 1.55),
        ("retry", 1.55),
    ]
    assert await _race(FakeClock(autojump=True)) == first


async def test_advance_pauses_autojump() -> None:
    clock = FakeClock(autojump=True)
    woke: list[tuple[str, float]] = []
    task = asyncio.create_task(_sleep_and_note(clock, 10.0, "far", woke))
    await clock.advance(1.0)
    assert woke == [] and clock.monotonic() == 1.0
    await task  # with nothing else running, autojump takes it from here
    assert woke == [("far", 10.0)]


async def test_the_autojump_task_ends_when_nobody_sleeps() -> None:
    clock = FakeClock(autojump=True)
    await clock.sleep(1.0)
    for _ in range(3 * clock.idle_yields):
        await asyncio.sleep(0)
    assert clock._jumper is not None and clock._jumper.done()
    await clock.sleep(1.0)  # and comes back with the next sleeper
    assert clock.monotonic() == 2.0


# --- waiting on a fake clock ---------------------------------------------------------------------


async def test_wait_first_times_out_on_the_clock_and_cancels_nothing() -> None:
    clock = FakeClock(autojump=True)
    never = asyncio.get_running_loop().create_future()
    done, pending = await wait_first(clock, [never], 2.5)
    assert (done, pending) == (set(), {never}) and clock.monotonic() == 2.5
    assert not never.cancelled() and clock.sleepers == 0
    soon = asyncio.ensure_future(clock.sleep(1.0))
    done, pending = await wait_first(clock, [never, soon], 2.5)
    assert (done, pending) == ({soon}, {never}) and clock.monotonic() == 3.5
    assert clock.sleepers == 0  # the timeout's own sleeper left with it
    never.cancel()
    with pytest.raises(ValueError):
        await wait_first(clock, [], 1.0)


async def test_wait_first_by_hand() -> None:
    clock = FakeClock()
    never = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(wait_first(clock, [never], 2.0))
    await clock.advance(1.999)
    assert not waiting.done()
    await clock.advance(0.001)
    assert await waiting == (set(), {never})
    never.cancel()


async def test_wait_all_returns_when_every_task_is_done_or_time_is_up() -> None:
    clock = FakeClock(autojump=True)
    tasks = [asyncio.ensure_future(clock.sleep(s)) for s in (1.0, 2.0)]
    done, pending = await wait_all(clock, tasks, 5.0)
    assert done == set(tasks) and not pending and clock.monotonic() == 2.0
    slow = asyncio.ensure_future(clock.sleep(10.0))
    done, pending = await wait_all(clock, [slow], 3.0)
    assert pending == {slow} and clock.monotonic() == 5.0
    slow.cancel()


async def test_wait_for_returns_times_out_and_passes_cancellation_on() -> None:
    clock = FakeClock(autojump=True)

    async def answer(seconds: float) -> int:
        await clock.sleep(seconds)
        return 42

    assert await wait_for(clock, answer(1.0), 2.0) == 42
    assert await wait_for(clock, answer(1.0), None) == 42
    slow = asyncio.ensure_future(answer(10.0))
    with pytest.raises(TimeoutError):
        await wait_for(clock, slow, 2.0)
    assert slow.cancelled() and clock.monotonic() == 4.0 and clock.sleepers == 0

    inner = asyncio.ensure_future(answer(10.0))
    outer = asyncio.create_task(wait_for(clock, inner, 5.0))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.gather(inner, return_exceptions=True)
    assert inner.cancelled() and clock.monotonic() == 4.0


# --- orchestration on a fake clock ---------------------------------------------------------------


async def test_a_queued_request_times_out_on_the_fake_clock() -> None:
    clock = FakeClock(autojump=True)
    queue = RequestQueue(limit=1, clock=clock)
    async with queue.slot():
        with pytest.raises(DeadlineError, match="queue"):
            async with queue.slot(Priority.HIGH, clock.monotonic() + 30.0):
                pass
        assert clock.monotonic() == 30.0
    assert queue.waiting == 0 and queue.running == 0


async def test_a_queued_request_is_admitted_before_its_deadline() -> None:
    clock = FakeClock(autojump=True)
    queue = RequestQueue(limit=1, clock=clock)

    async def holder() -> None:
        async with queue.slot():
            await clock.sleep(10.0)

    async def waiter() -> float:
        async with queue.slot(Priority.NORMAL, clock.monotonic() + 30.0):
            return clock.monotonic()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    assert await waiter() == 10.0
    await held


class _HangingTransport:
    """Every Execute hangs until its own timeout passes on the clock, as a stuck peer would."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, float, float]] = []  # address, timeout, when

    async def execute(self, address: str, call: ExecuteCall, timeout_s: float) -> object:
        self.calls.append((address, timeout_s, self.clock.monotonic()))
        await self.clock.sleep(timeout_s)
        raise DeadlineError(f"{address} did not answer within {timeout_s} s")


def _bid(identity: Identity, address: str, valid_until_ms: int) -> BidInfo:
    envelope = identity.sign("test/bid", address.encode())
    return BidInfo(identity.peer_id, address, "t", "m", 0.9, 10.0, 1.0, valid_until_ms, "fixed", envelope)


async def test_fallback_walks_the_ranking_within_the_deadline_on_a_fake_clock() -> None:
    clock = FakeClock(autojump=True)
    transport = _HangingTransport(clock)
    policy = ExecutionPolicy(min_call_s=1.0)
    executor = Executor(transport, Identity.generate(), policy, clock)  # type: ignore[arg-type]
    identity = Identity.generate()
    valid = clock.wall_ms() + 60_000
    ranked = [_bid(identity, f"peer-{i}", valid) for i in range(4)]
    terms = Terms(deadline=clock.monotonic() + 2.5, deadline_ms=clock.wall_ms() + 2500, clock=clock)
    executed = await executor.run(b"r" * 16, ranked, Payload((), b"d" * 32), terms.deadline)
    # Each stuck winner costs its own call timeout (1 s); the third gets what is left (0.5 s).
    assert [(a, t, at) for a, t, at in transport.calls] == [
        ("peer-0", 1.0, 0.0),
        ("peer-1", 1.0, 1.0),
        ("peer-2", 0.5, 2.0),
    ]
    assert [attempt.elapsed_ms for attempt in executed.attempts] == [1000.0, 1000.0, 500.0]
    assert executed.success is None and terms.left_s() == 0.0


async def test_a_bid_that_expires_while_others_run_is_skipped_on_a_fake_clock() -> None:
    clock = FakeClock(autojump=True)
    transport = _HangingTransport(clock)
    executor = Executor(transport, Identity.generate(), ExecutionPolicy(min_call_s=1.0), clock)  # type: ignore[arg-type]
    identity = Identity.generate()
    first = _bid(identity, "first", clock.wall_ms() + 60_000)
    expiring = _bid(identity, "expiring", clock.wall_ms() + 500)  # expires during the first call
    executed = await executor.run(b"r" * 16, [first, expiring], Payload((), b"d" * 32), 10.0)
    assert [address for address, _, _ in transport.calls] == ["first"]
    assert "expired" in str(executed.attempts[1].error) and executed.attempts[1].elapsed_ms == 0.0
