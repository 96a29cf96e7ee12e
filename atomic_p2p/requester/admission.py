"""The request queue: at most ``limit`` requests run at once; the rest wait their turn in order
of priority class, then deadline, then arrival (docs/architecture.md section 6).

How this works
--------------
:meth:`RequestQueue.slot` is an async context manager. With a slot free and nobody waiting it
enters at once; otherwise the caller waits in a heap keyed by ``(priority, deadline, arrival)``.
Leaving a slot hands it straight to the best waiter (so a newcomer can never overtake one that
is queued). A waiter whose deadline passes first leaves with
:class:`~atomic_p2p.errors.DeadlineError`; one that is cancelled leaves no trace. Deadlines are
``clock.monotonic()`` instants (:mod:`atomic_p2p.clock`), compared but never read from the clock
here except for the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import IntEnum

from atomic_p2p.clock import SYSTEM_CLOCK, Clock, wait_for
from atomic_p2p.errors import ConfigError, DeadlineError


class Priority(IntEnum):
    """A request's class: lower values are served first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


def parse_priority(value: Priority | str | int) -> Priority:
    """``Priority.HIGH``, ``"high"`` or ``0`` alike."""
    try:
        if isinstance(value, str):
            return Priority[value.upper()]
        return Priority(value)
    except (KeyError, ValueError):
        names = ", ".join(p.name.lower() for p in Priority)
        raise ConfigError(f"priority must be one of {names} (or 0-2), got {value!r}") from None


@dataclass(order=True, slots=True)
class _Waiter:
    priority: int
    deadline: float
    arrival: int
    admitted: asyncio.Future[None] = field(compare=False)


class RequestQueue:
    """Bounds concurrent requests; see the module docstring."""

    def __init__(self, limit: int, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if limit < 1:
            raise ConfigError("a request queue needs room for at least one request")
        self.limit = limit
        self._clock = clock
        self.running = 0
        self._waiting: list[_Waiter] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiting if not w.admitted.done())

    @contextlib.asynccontextmanager
    async def slot(
        self, priority: Priority = Priority.NORMAL, deadline: float = math.inf
    ) -> AsyncIterator[None]:
        await self._enter(priority, deadline)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, priority: Priority, deadline: float) -> None:
        if self.running < self.limit and not self.waiting:
            self.running += 1
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(int(priority), deadline, next(self._arrivals), admitted)
        heapq.heappush(self._waiting, waiter)
        try:
            left = None if math.isinf(deadline) else max(0.0, deadline - self._clock.monotonic())
            await wait_for(self._clock, asyncio.shield(admitted), left)
        except BaseException as error:
            if admitted.done() and not admitted.cancelled():
                self._leave()  # handed a slot at the very moment it gave up: pass it on
            else:
                admitted.cancel()
            if isinstance(error, TimeoutError):
                raise DeadlineError("the request's deadline passed while it waited in the queue") from None
            raise

    def _leave(self) -> None:
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.admitted.done():
                waiter.admitted.set_result(None)  # the slot passes over, `running` unchanged
                return
        self.running -= 1
