"""Time for the requester's orchestration, behind one seam, so tests can run it on a fake clock.

How this works
--------------
Everything in the requester that reads the time or waits for it goes through a :class:`Clock`:

- ``monotonic()``: seconds on a clock that never steps back. Deadlines (``Terms.deadline``, the
  request queue's) are instants on it; durations (``Timings``, answer times for ``tmax``) are
  differences of it. Its origin means nothing.
- ``wall_ms()``: Unix time in milliseconds: what ``issued_at``, ``deadline_ms`` and
  ``valid_until`` mean on the wire, and what the store's ``at_ms`` columns hold.
- ``sleep(seconds)``: wait on this clock.
- ``run_blocking(fn, *args)``: CPU-bound work (signature checks, tensor encoding, the store's
  last flush) off the event loop.

:func:`wait_first`, :func:`wait_all` and :func:`wait_for` are :func:`asyncio.wait` (with
``FIRST_COMPLETED`` or ``ALL_COMPLETED``) and :func:`asyncio.wait_for` with the timeout kept on
a clock: a sleep on the clock races the awaited tasks. On the :class:`SystemClock` they are
asyncio's own calls, since its sleep is the event loop's timer.

:class:`SystemClock` (:data:`SYSTEM_CLOCK`, the default wherever a clock can be passed) is the
real one. :class:`FakeClock` keeps time by hand (:meth:`FakeClock.advance`), or with
``autojump`` jumps to the earliest sleeper whenever every task waits on it (after trio's
``MockClock(autojump_threshold=0)``), so deadline and fallback races run in microseconds and
the same way every time.

The fake clock's one rule: it can only keep time while nothing runs outside the event loop. A
worker thread, a subprocess or a real socket makes progress the loop cannot see, and the fake
clock would jump past it. That is why its :meth:`~FakeClock.run_blocking` runs the function
inline, and why tests on a fake clock use an in-memory network rather than sockets.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "FakeClock",
    "SystemClock",
    "wait_all",
    "wait_first",
    "wait_for",
]

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound="asyncio.Future[Any]")


class Clock(Protocol):
    """Where the requester reads the time and waits for it (see the module docstring)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps back (deadlines and durations)."""
        ...

    def wall_ms(self) -> int:
        """Unix time in milliseconds (issued_at, deadline_ms, valid_until on the wire)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...

    async def run_blocking(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` without stalling the event loop."""
        ...


class SystemClock:
    """The real time.

    ``monotonic`` is :func:`time.perf_counter`, the clock the requester has always timed with:
    timings of sub-millisecond models need its resolution. On Linux and macOS it is the very
    clock :func:`time.monotonic` reads (``CLOCK_MONOTONIC``, mach time); on Windows before
    Python 3.13 ``time.monotonic`` ticks only every ~16 ms. Deadlines are only ever compared
    with this clock's own readings, so its origin does not matter.
    """

    def monotonic(self) -> float:
        return time.perf_counter()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def run_blocking(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """In a worker thread (:func:`asyncio.to_thread`); libsodium and torch release the GIL."""
        return await asyncio.to_thread(fn, *args, **kwargs)


SYSTEM_CLOCK = SystemClock()
"""The clock every part of the requester uses unless it is given another."""


# --- waiting on a clock --------------------------------------------------------------------------


async def wait_first(clock: Clock, tasks: Iterable[F], timeout: float | None) -> tuple[set[F], set[F]]:
    """``asyncio.wait(tasks, timeout=timeout, return_when=FIRST_COMPLETED)`` on ``clock``:
    returns (done, pending) once one task is done or ``timeout`` passed on the clock. Like
    asyncio, it never cancels the tasks."""
    futures = set(tasks)
    if timeout is None or type(clock) is SystemClock:
        return await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return await _wait_on(clock, futures, timeout, first=True)


async def wait_all(clock: Clock, tasks: Iterable[F], timeout: float | None) -> tuple[set[F], set[F]]:
    """``asyncio.wait(tasks, timeout=timeout)`` on ``clock``: returns (done, pending) once every
    task is done or ``timeout`` passed on the clock. It never cancels the tasks."""
    futures = set(tasks)
    if timeout is None or type(clock) is SystemClock:
        return await asyncio.wait(futures, timeout=timeout)
    return await _wait_on(clock, futures, timeout, first=False)


async def wait_for(clock: Clock, awaitable: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for(awaitable, timeout)`` on ``clock``: its result, or :class:`TimeoutError`
    once ``timeout`` passed on the clock, after cancelling it (a result that arrives while it is
    being cancelled is still returned, as asyncio does)."""
    if timeout is None or type(clock) is SystemClock:
        return await asyncio.wait_for(awaitable, timeout)
    task = asyncio.ensure_future(awaitable)
    try:
        await _wait_on(clock, {task}, timeout, first=True)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
        if task.cancelled():
            raise TimeoutError
    return task.result()


async def _wait_on(clock: Clock, futures: set[F], timeout: float, *, first: bool) -> tuple[set[F], set[F]]:
    if not futures:
        raise ValueError("there is nothing to wait for")  # as asyncio.wait says of an empty set
    alarm = asyncio.ensure_future(clock.sleep(timeout))
    try:
        while not alarm.done():
            waiting = {future for future in futures if not future.done()}
            if not waiting or (first and len(waiting) < len(futures)):
                break
            racing: set[asyncio.Future[Any]] = {*waiting, alarm}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    finally:
        alarm.cancel()
    done = {future for future in futures if future.done()}
    return done, futures - done


# --- the fake clock ------------------------------------------------------------------------------

DEFAULT_WALL_MS = 1_700_000_000_000
"""Where a :class:`FakeClock`'s wall clock starts unless told: 2023-11-14 22:13:20 UTC."""


@dataclass(order=True, slots=True)
class _Sleeper:
    wake_ns: int
    order: int  # sleepers due at the same instant wake in the order they fell asleep
    future: asyncio.Future[None] = field(compare=False)


class FakeClock:
    """A clock that moves only when told to, for tests (see the module docstring).

    Time is kept in integer nanoseconds, so repeated small steps never drift. ``monotonic()``
    starts at 0.0 and ``wall_ms()`` at ``wall_ms``. A sleeper wakes when time reaches its wake
    time; sleepers due at the same instant wake in the order they fell asleep, and a cancelled
    sleeper simply leaves.

    Moving time:

    - :meth:`advance` (async) moves forward step by step: it lets every task run until all of
      them wait again, wakes the earliest sleeper due by the target at its own wake time, and
      repeats; so a task woken at 1 s reads 1 s, and one that then sleeps 0.5 s more wakes at
      1.5 s within the same ``advance(2)``.
    - :meth:`jump` (plain) moves at once and wakes every sleeper due, each reading the new time.
    - ``autojump=True`` moves by itself: whenever every task waits on this clock, it jumps to
      the earliest sleeper. Code that waits on this clock only, and does no real I/O and starts
      no threads, then runs deterministically, however long its timeouts.

    How it sees that every task waits: asyncio has no idle hook, so a background task (started
    by the first sleep, gone when nobody sleeps) yields to the loop with ``asyncio.sleep(0)``
    and jumps only after ``idle_yields`` yields in a row in which no sleeper came, went or woke
    and no other callback was ready to run (``loop._ready``, asyncio's run queue, read when the
    loop has one; uvloop has none, and then only the sleepers are watched). The settling tasks
    of other fake clocks in the same loop do not count as work.

    Limits: a task that waits on something the loop cannot see (a worker thread, a socket, a
    subprocess, the loop's own timer through ``asyncio.sleep``) looks idle, so time jumps past
    it; a task that spins on ``asyncio.sleep(0)`` never looks idle, so time stands still.
    :meth:`advance` pauses autojump while it runs.
    """

    def __init__(
        self, wall_ms: int = DEFAULT_WALL_MS, *, autojump: bool = False, idle_yields: int = 8
    ) -> None:
        if idle_yields < 1:
            raise ValueError("idle_yields must be at least 1")
        self.autojump = autojump
        self.idle_yields = idle_yields
        self._wall_start_ms = wall_ms
        self._now_ns = 0
        self._sleepers: list[_Sleeper] = []  # a heap; cancelled ones are dropped lazily
        self._order = itertools.count()
        self._activity = 0  # counts sleepers coming, going and waking: a settling task watches it
        self._cancelled = 0
        self._advancing: asyncio.Event | None = None
        self._jumper: asyncio.Task[None] | None = None

    # --- the Clock protocol ---

    def monotonic(self) -> float:
        return self._now_ns / 1e9

    def wall_ms(self) -> int:
        return self._wall_start_ms + self._now_ns // 1_000_000

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed on this clock; zero or less only yields, as
        :func:`asyncio.sleep` does."""
        if not seconds > 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not math.isfinite(seconds):  # forever: only cancellation ends it
            await future
            return
        wake_ns = self._now_ns + _nanoseconds(seconds)
        heapq.heappush(self._sleepers, _Sleeper(wake_ns, next(self._order), future))
        self._activity += 1
        self._start_jumper()
        try:
            await future
        finally:
            if future.cancelled():
                self._dropped()

    async def run_blocking(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Inline, on the event loop: time on this clock cannot pass while another thread works."""
        return fn(*args, **kwargs)

    # --- moving time ---

    @property
    def sleepers(self) -> int:
        """How many tasks sleep on this clock now."""
        return sum(1 for sleeper in self._sleepers if not sleeper.future.done())

    def next_wakeup(self) -> float | None:
        """The ``monotonic()`` time the earliest sleeper wakes at; None when nobody sleeps."""
        head = self._head()
        return None if head is None else head.wake_ns / 1e9

    def jump(self, seconds: float) -> None:
        """Move time forward by ``seconds`` at once and wake every sleeper now due, in order."""
        self._now_ns += _nanoseconds(_forward(seconds))
        self._wake_due()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its own wake time, in order,
        and letting every task run until all wait again before each step (see the class
        docstring). Autojump pauses meanwhile."""
        target = self._now_ns + _nanoseconds(_forward(seconds))
        advancing = self._advancing = asyncio.Event()
        try:
            while True:
                await self._settle()
                head = self._head()
                if head is None or head.wake_ns > target:
                    break
                self._now_ns = max(self._now_ns, head.wake_ns)
                self._wake_due()
            self._now_ns = target
        finally:
            self._advancing = None
            advancing.set()

    # --- internals ---

    def _head(self) -> _Sleeper | None:
        while self._sleepers and self._sleepers[0].future.done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0] if self._sleepers else None

    def _wake_due(self) -> None:
        while (head := self._head()) is not None and head.wake_ns <= self._now_ns:
            heapq.heappop(self._sleepers).future.set_result(None)
            self._activity += 1

    def _dropped(self) -> None:
        self._activity += 1
        self._cancelled += 1
        if self._cancelled > len(self._sleepers) // 2:  # many timeouts that never fired: compact
            self._sleepers = [sleeper for sleeper in self._sleepers if not sleeper.future.done()]
            heapq.heapify(self._sleepers)
            self._cancelled = 0

    async def _settle(self) -> None:
        """Yield to the loop until ``idle_yields`` yields in a row saw no clock activity and no
        other ready callback."""
        quiet = 0
        while quiet < self.idle_yields:
            seen = self._activity
            idle = await _yield_to_loop()
            quiet = quiet + 1 if idle and self._activity == seen else 0

    def _start_jumper(self) -> None:
        if not self.autojump:
            return
        loop = asyncio.get_running_loop()
        jumper = self._jumper
        if jumper is None or jumper.done() or jumper.get_loop() is not loop:
            self._jumper = loop.create_task(self._autojump(), name="fake-clock-autojump")

    async def _autojump(self) -> None:
        while self.autojump and self._head() is not None:
            if self._advancing is not None:
                await self._advancing.wait()
                continue
            await self._settle()
            head = self._head()
            if head is not None and self.autojump and self._advancing is None:
                self._now_ns = max(self._now_ns, head.wake_ns)
                self._wake_due()


def _nanoseconds(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


def _forward(seconds: float) -> float:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"time only moves forward by a finite amount, not {seconds!r}")
    return seconds


# Per loop, how many settling tasks (of any fake clock) sit in its run queue right now: each is
# one ready callback that is not progress, or two fake clocks in one loop would each keep the
# other from ever seeing the loop idle.
_parked: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


async def _yield_to_loop() -> bool:
    """Yield once; True when, back, no callback but other settling tasks is ready to run. That
    reads asyncio's private run queue (``loop._ready``); a loop without one, such as uvloop's,
    always looks idle, and only the sleepers are watched."""
    loop = asyncio.get_running_loop()
    _parked[loop] = _parked.get(loop, 0) + 1
    try:
        await asyncio.sleep(0)  # exactly one callback in the run queue while parked
    finally:
        _parked[loop] -= 1
    ready = getattr(loop, "_ready", None)
    return ready is None or len(ready) <= _parked[loop]
