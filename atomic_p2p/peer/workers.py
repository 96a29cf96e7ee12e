"""Runs paid model calls: bounded concurrency, a bounded queue, at most once per order.

How this works
--------------
Each call is keyed by ``(request_id, task_id)`` and carries a fingerprint of the order (the bid
digest and the inputs digest). The first call for a key starts one asyncio task that waits for a
worker slot (a semaphore of ``max_concurrency``) and then runs the job in a thread pool of the
same size; torch releases the GIL, so calls really overlap.

- Admission: at most ``max_concurrency`` jobs run and ``queue_limit`` wait; one more is refused
  at once with :class:`~atomic_p2p.errors.LimitExceededError` (RESOURCE_EXHAUSTED), never queued.
- At most once: while a key's task runs, a duplicate with the same fingerprint awaits the same
  task; after it finished, a retry gets the first result (or the first failure) back for
  ``result_ttl_s``. A different fingerprint for a known key is a :class:`ReplayError`.
- A job that never started (its deadline passed while queued, or it was cancelled) leaves no
  trace, so the requester may retry it.
- Remembered results are capped at ``max_results``; when full of unexpired results, new work is
  refused rather than forgetting a result whose order could still be replayed.
- A stream (ExecuteStream) holds one slot for its whole length (:meth:`WorkerPool.hold`) and
  runs its work in a worker (:meth:`WorkerPool.step` for one call, :meth:`WorkerPool.steps` for a
  generation's steps, back to back in one thread while the event loop sends what is ready); it too
  runs at most once per key, and a stream that ends, is cancelled or fails frees its slot at once
  (after the step in progress).
- Callers wait through ``asyncio.shield``: a caller that disconnects does not cancel work that a
  duplicate, or :meth:`WorkerPool.drain`, is waiting for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from atomic_p2p.errors import DeadlineError, LimitExceededError, ReplayError, UnavailableError
from atomic_p2p.peer.strategies import Load

T = TypeVar("T")
U = TypeVar("U")


@dataclass(slots=True)
class _Call(Generic[T]):
    fingerprint: bytes
    task: asyncio.Task[T] = field(init=False)
    started: bool = False
    expires_at: float = 0.0


class WorkerPool(Generic[T]):
    """The worker pool that runs paid model calls; see the module docstring."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        queue_limit: int,
        result_ttl_s: float,
        max_results: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        offload: Callable[[Callable[[], T]], Awaitable[T]] | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.queue_limit = queue_limit
        self.result_ttl_s = result_ttl_s
        self.max_results = max_results
        self._clock = clock
        # Where jobs run: this pool's own threads, or ``offload`` (a fake clock runs them inline).
        self._offload = offload
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="atomic-model")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._running_calls: dict[Hashable, _Call[T]] = {}
        self._finished: OrderedDict[Hashable, _Call[T]] = OrderedDict()  # in expiry order
        self._running = 0
        self._closed = False
        # Streams admitted and not yet ended, each with a future done when it ends (drain waits).
        self._streams: dict[Hashable, asyncio.Future[None]] = {}
        self._streamed: OrderedDict[Hashable, float] = OrderedDict()  # ended streams, until expiry

    def load(self, draining: bool = False) -> Load:
        pending = len(self._running_calls) + len(self._streams)
        return Load(
            in_flight=self._running,
            queued=pending - self._running,
            capacity=self.max_concurrency,
            queue_limit=self.queue_limit,
            draining=draining,
        )

    async def run(
        self, key: Hashable, fingerprint: bytes, job: Callable[[], T], timeout: float | None = None
    ) -> T:
        """Run ``job`` in a worker thread at most once for ``key``; see the module docstring.

        ``timeout`` bounds the wait for a worker slot (the order's remaining deadline).
        """
        self._expire()
        known = self._running_calls.get(key) or self._finished.get(key)
        if known is not None:
            if known.fingerprint != fingerprint:
                raise ReplayError("this task was already ordered with a different bid or inputs")
            return await asyncio.shield(known.task)
        if self._closed:
            raise UnavailableError("the node is shutting down and takes no new work")
        if len(self._running_calls) + len(self._streams) >= self.max_concurrency + self.queue_limit:
            raise LimitExceededError(
                f"{self.max_concurrency} calls running and {self.queue_limit} queued; retry later"
            )
        if len(self._finished) >= self.max_results:
            raise LimitExceededError(f"{self.max_results} results held for retries; retry later")
        call: _Call[T] = _Call(fingerprint)
        call.task = asyncio.get_running_loop().create_task(self._execute(call, job, timeout))
        call.task.add_done_callback(lambda _: self._settle(key, call))
        self._running_calls[key] = call
        return await asyncio.shield(call.task)

    @asynccontextmanager
    async def hold(self, key: Hashable, timeout: float | None = None) -> AsyncIterator[None]:
        """One worker slot for a whole stream keyed ``key`` (at most once per key); ``timeout``
        bounds the wait for the slot. The slot is freed when the block exits, however it exits."""
        self._expire()
        if (
            key in self._streams
            or key in self._streamed
            or key in self._running_calls
            or key in self._finished
        ):
            raise ReplayError("this task was already ordered")
        if self._closed:
            raise UnavailableError("the node is shutting down and takes no new work")
        if len(self._running_calls) + len(self._streams) >= self.max_concurrency + self.queue_limit:
            raise LimitExceededError(
                f"{self.max_concurrency} calls running and {self.queue_limit} queued; retry later"
            )
        if len(self._streamed) >= self.max_results:
            raise LimitExceededError(f"{self.max_results} streams remembered for replays; retry later")
        self._streams[key] = asyncio.get_running_loop().create_future()
        started = False
        try:
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout)
            except TimeoutError:
                raise DeadlineError("the order's deadline passed while it waited for a worker") from None
            started = True
            self._running += 1
            try:
                yield
            finally:
                self._running -= 1
                self._slots.release()
        finally:
            ended = self._streams.pop(key)
            if not ended.done():
                ended.set_result(None)
            if started:  # a stream that never started leaves no trace, so it may be retried
                self._streamed[key] = self._clock() + self.result_ttl_s

    async def step(self, job: Callable[[], U]) -> U:
        """Run one step of a held stream in a worker thread; a cancelled caller still waits for
        the step in progress to end, so the slot it frees is really free."""
        if self._offload is not None:  # typed for T; any result passes through unchanged
            return await self._offload(job)  # type: ignore[arg-type, return-value]
        future = asyncio.get_running_loop().run_in_executor(self._pool, job)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def steps(self, step: Callable[[], U | None]) -> AsyncGenerator[list[U], None]:
        """Call ``step`` over and over in one worker thread until it returns None, and yield what it
        produced, in order: every item ready when the caller asks, as one list (never empty).

        The first item is produced alone (:meth:`step`) and yielded as soon as it exists: nothing
        competes with sending it. From then on the thread never waits for the caller: while the
        caller sends one batch, the next items are being produced, so a generation's steps run
        back to back however slow the network is. A step that raises ends the iteration with its
        exception (after the items before it). Closing the generator (a client that cancels, a
        deadline) stops the thread after the step in progress and waits for that step, so the
        slot it frees is really free."""
        first = await self.step(step)
        if first is None:
            return
        if self._offload is not None:  # a fake clock: one step per offload, inline
            yield [first]
            while (item := await self._offload(step)) is not None:  # type: ignore[arg-type]
                yield [item]  # type: ignore[list-item]
            return
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        ready: deque[U] = deque()
        stop = threading.Event()
        waiter: list[asyncio.Future[None]] = []  # the caller's wake-up, while it waits (under lock)

        def wake() -> None:  # under lock
            if waiter:
                loop.call_soon_threadsafe(_resolve, waiter.pop())

        def produce() -> None:  # in the worker thread
            while not stop.is_set():
                item = step()
                if item is None:
                    return
                with lock:
                    ready.append(item)
                    wake()

        def ended(_: object) -> None:  # in the loop, once the thread's future is done
            with lock:
                if waiter:
                    _resolve(waiter.pop())

        producing = loop.run_in_executor(self._pool, produce)
        producing.add_done_callback(ended)
        try:
            yield [first]
            while True:
                with lock:
                    batch = list(ready)
                    ready.clear()
                    if not batch and not producing.done():
                        woken: asyncio.Future[None] = loop.create_future()
                        waiter.append(woken)
                if batch:
                    yield batch
                elif producing.done():
                    await producing  # the step's exception, if one raised
                    with lock:
                        if not ready:
                            return
                else:
                    await woken
        finally:
            stop.set()
            if not producing.done():
                await asyncio.wait([producing])
            if not producing.cancelled():
                producing.exception()  # retrieved: a failure after the caller left is not logged twice

    async def drain(self, timeout: float) -> bool:
        """Refuse new work and wait for everything admitted; True if it all finished in time."""
        self._closed = True
        tasks: list[asyncio.Future[Any]] = [call.task for call in self._running_calls.values()]
        tasks.extend(self._streams.values())
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    def close(self) -> None:
        """Cancel what has not started and release the worker threads (call after drain)."""
        self._closed = True
        for call in list(self._running_calls.values()):
            call.task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- internals ----------------------------------------------------------------------------

    async def _execute(self, call: _Call[T], job: Callable[[], T], timeout: float | None) -> T:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise DeadlineError("the order's deadline passed while it waited for a worker") from None
        call.started = True
        self._running += 1
        try:
            if self._offload is not None:
                return await self._offload(job)
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
        finally:
            self._running -= 1
            self._slots.release()

    def _settle(self, key: Hashable, call: _Call[T]) -> None:
        self._running_calls.pop(key, None)
        if not call.task.cancelled():
            call.task.exception()  # marks a failure as retrieved even if every caller went away
        if call.started and not call.task.cancelled():
            call.expires_at = self._clock() + self.result_ttl_s
            self._finished[key] = call

    def _expire(self) -> None:
        now = self._clock()
        while self._finished:
            key, call = next(iter(self._finished.items()))
            if call.expires_at > now:
                break
            del self._finished[key]
        while self._streamed and next(iter(self._streamed.values())) <= now:
            self._streamed.popitem(last=False)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
