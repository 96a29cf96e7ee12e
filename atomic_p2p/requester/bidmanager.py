"""The bid manager: turns tasks that need bids into as few RequestBids rounds as it can.

How this works (docs/architecture.md section 6)
-----------------------------------------------
:meth:`BidManager.offers` takes tasks that need bids and returns, per task, the bids and
no-bids it got. For each task, in order:

1. **Cache.** Bids that peers declared reusable (:class:`~.bidpolicy.BidCache`) for the same
   capability, input-shape bucket and input specs, from at least ``min(k_min, candidates)``
   (at least one) of the task's current candidates, answer it at once with no round at all.
   They are rebound to the task under a fresh request id; the peer checks the reuse at Execute.
2. **Queue.** Otherwise the task waits for a round, in order of priority class, then deadline.
   With ``batching`` a round starts whenever fewer than ``rounds_in_flight`` are running, and
   takes every waiting task (up to ``max_tasks_per_call``): tasks handed over together (the
   ready microtasks of a graph, the shards of a batch, or separate callers' tasks handed over
   in one event-loop turn: rounds are made up at the end of the turn) share a round, and under
   load tasks that arrive while rounds run ride together in the next one. Without it every
   task gets a round of its own at once.
3. **Round.** Each task's candidates are pre-filtered (top M by profile plus explorers). Each
   address gets ONE RequestBids carrying every task of the round it is a candidate for; peers
   asked about the same set of tasks share one signed BidRequest. The round may last as long
   as the most impatient of its tasks can spend on bids; once every task has an offer it
   stops at the adaptive ``tmax`` (:class:`~.bidpolicy.LatencyTracker`), and once every task
   has ``k_min`` bids, a grace period later.
4. **Learn.** Answer times feed ``tmax``; reusable bids go to the cache; each bid's
   ``max_batch`` is remembered per (address, capability) for sharding.

``rounds`` and ``calls`` count RequestBids rounds and RPCs, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from atomic_p2p.clock import Clock
from atomic_p2p.frozen import quick_init
from atomic_p2p.identity import Identity, PeerId
from atomic_p2p.requester.auction import CallForBids, Collected, call_for_bids, collect_round
from atomic_p2p.requester.bidpolicy import (
    BidCache,
    BidPolicy,
    InputSpecs,
    LatencyTracker,
    peer_prior,
    prefilter,
    rebind,
)
from atomic_p2p.requester.messages import TaskRef
from atomic_p2p.requester.profiler import Profile, ProfileKey
from atomic_p2p.requester.transport import Transport
from atomic_p2p.requester.types import BidInfo, NoBidInfo

logger = logging.getLogger(__name__)


@quick_init
@dataclass(frozen=True, slots=True)
class Wanted:
    """One task that needs bids. ``window_s`` is the most it may spend collecting them;
    ``deadline_ms`` (wall clock) goes into the BidRequest; ``deadline`` (monotonic) orders
    the queue."""

    task: TaskRef
    capability: str
    candidates: tuple[str, ...]
    bucket: str
    specs: InputSpecs
    window_s: float
    deadline_ms: int
    deadline: float
    priority: int = 1


@quick_init
@dataclass(frozen=True, slots=True)
class Offers:
    """What one task got: bids, no-bids, and how they were obtained.

    ``request_id`` names the call the task rode in (for a cache hit, the fresh id its reused
    bids are ordered under). ``asked`` were solicited; ``skipped`` were pre-filtered out."""

    bids: tuple[BidInfo, ...]
    no_bids: tuple[NoBidInfo, ...]
    request_id: bytes
    bids_ms: float = 0.0
    verify_ms: float = 0.0
    cached: bool = False
    asked: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    tmax_s: float = 0.0


@dataclass(order=True, slots=True)
class _Pending:
    priority: int
    deadline: float
    arrival: int
    wanted: Wanted = field(compare=False)
    future: asyncio.Future[Offers] = field(compare=False)


class BidManager:
    """See the module docstring. One per requester; use it inside one event loop."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        policy: BidPolicy,
        *,
        bid_timeout_s: float,
        profiles: Callable[[], Mapping[ProfileKey, Profile]],
        seq_of: Callable[[PeerId], int | None],
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.policy = policy
        self.cache = BidCache(policy.cache_entries)
        self.latency = LatencyTracker()
        self.rounds = 0
        self.calls = 0
        self._transport = transport
        self._identity = identity
        self._ceiling_s = bid_timeout_s
        self._profiles = profiles
        self._seq_of = seq_of
        self._clock = clock
        self._rng = rng
        self._pending: list[_Pending] = []
        self._arrivals = itertools.count()
        self._in_flight = 0
        self._dispatch_due = False  # a _dispatch is scheduled for this event-loop turn's end
        self._rounds: set[asyncio.Task[None]] = set()
        self._peer_at: dict[str, str] = {}  # address -> peer id (hex), learned from bids
        self._max_batch: dict[tuple[str, str], int] = {}  # (address, capability) -> max_batch

    async def offers(self, wanted: Sequence[Wanted]) -> list[Offers]:
        """Bids for every task in ``wanted``, in order (see the module docstring)."""
        answers: list[Offers | asyncio.Future[Offers]] = []
        loop = asyncio.get_running_loop()
        for item in wanted:
            hit = self._from_cache(item)
            if hit is not None:
                answers.append(hit)
                continue
            future: asyncio.Future[Offers] = loop.create_future()
            heapq.heappush(
                self._pending, _Pending(item.priority, item.deadline, next(self._arrivals), item, future)
            )
            answers.append(future)
        self._pump()
        return [answer if isinstance(answer, Offers) else await answer for answer in answers]

    def tmax_s(self, addresses: Sequence[str]) -> float:
        """The window a round asking ``addresses`` would get now."""
        if not self.policy.adaptive_tmax:
            return self._ceiling_s
        floor = min(self.policy.tmax_floor_s, self._ceiling_s)
        return self.latency.tmax_s(addresses, floor, self._ceiling_s, self.policy.tmax_quantile)

    def max_batch(self, address: str, capability: str) -> int | None:
        """The ``max_batch`` the peer at ``address`` last bid with for ``capability`` (0: none)."""
        return self._max_batch.get((address, capability))

    def forget(self, bid: BidInfo) -> None:
        """A reused bid failed: drop everything cached from its peer."""
        if self.cache.drop_peer(bid.peer_id):
            logger.info("dropped cached bids of %s after a failed reuse", bid.peer_id.short)

    async def close(self) -> None:
        for task in list(self._rounds):
            task.cancel()
        await asyncio.gather(*self._rounds, return_exceptions=True)
        for pending in self._pending:
            pending.future.cancel()
        self._pending.clear()

    # --- internals ----------------------------------------------------------------------------

    def _from_cache(self, wanted: Wanted) -> Offers | None:
        if not self.policy.cache:
            return None
        candidates = set(wanted.candidates)
        found = self.cache.get(
            wanted.capability, wanted.bucket, wanted.specs, self._clock.wall_ms(), self._seq_of
        )
        found = [bid for bid in found if bid.address in candidates]
        if len(found) < max(1, min(self.policy.k_min, len(candidates))):
            self.cache.misses += 1
            return None
        self.cache.hits += 1
        request_id = os.urandom(16)
        bids = tuple(rebind(bid, wanted.task.task_id, request_id) for bid in found)
        return Offers(bids, (), request_id, cached=True, asked=tuple(b.address for b in bids))

    def _pump(self) -> None:
        """Start rounds for waiting tasks while the policy allows: at once without batching;
        with it, once the callbacks ready now have run (:meth:`_dispatch`), so that tasks handed
        over in the same event-loop turn by separate callers (a burst of ``run`` calls gathered
        together) share rounds, rather than the first ``rounds_in_flight`` of them each going
        out alone. That costs no wait: a round's calls go out on the next turn either way."""
        if not self.policy.batching:
            self._dispatch()
        elif not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_due = False
        policy = self.policy
        while self._pending and (not policy.batching or self._in_flight < policy.rounds_in_flight):
            size = policy.max_tasks_per_call if policy.batching else 1
            batch = [heapq.heappop(self._pending) for _ in range(min(size, len(self._pending)))]
            batch = [pending for pending in batch if not pending.future.done()]  # cancelled callers
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.create_task(self._round(batch))
            self._rounds.add(task)
            task.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        self._in_flight -= 1
        self._pump()

    async def _round(self, batch: list[_Pending]) -> None:
        try:
            offers = await self._solicit([pending.wanted for pending in batch])
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as error:  # a bug of ours: every task of the round hears of it
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, offer in zip(batch, offers, strict=True):
            if not pending.future.done():
                pending.future.set_result(offer)

    def _choose(self, wanted: Wanted) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Who is asked about ``wanted``: :func:`~.bidpolicy.prefilter` decides."""

        def prior_of(address: str) -> float | None:
            peer = self._peer_at.get(address)
            return peer_prior(self._profiles(), peer, wanted.capability) if peer else None

        policy = self.policy
        picked = prefilter(wanted.candidates, prior_of, policy.top_m, policy.exploration_share, self._rng)
        return picked.chosen, picked.skipped

    async def _solicit(self, batch: Sequence[Wanted]) -> list[Offers]:
        chosen = [self._choose(wanted) for wanted in batch]
        asks, request_of = self._calls(batch, [addresses for addresses, _ in chosen])
        if not asks:
            return [Offers((), (), b"", asked=(), skipped=skipped) for _, skipped in chosen]
        window = min(wanted.window_s for wanted in batch)
        tmax = min(window, self.tmax_s([address for address, _ in asks]))
        self.rounds += 1
        self.calls += len(asks)
        collected = await collect_round(
            self._transport,
            asks,
            window,
            self._clock,
            tmax_s=tmax,
            k_min=self.policy.k_min,
            grace_s=self.policy.grace_s,
        )
        self._learn(batch, collected)
        return [
            Offers(
                bids=collected.bids_for(wanted.task.task_id),
                no_bids=collected.no_bids_for(wanted.task.task_id),
                request_id=request_of.get(wanted.task.task_id, b""),
                bids_ms=collected.bids_ms,
                verify_ms=collected.verify_ms,
                asked=addresses,
                skipped=skipped,
                tmax_s=tmax,
            )
            for wanted, (addresses, skipped) in zip(batch, chosen, strict=True)
        ]

    def _calls(
        self, batch: Sequence[Wanted], chosen: Sequence[tuple[str, ...]]
    ) -> tuple[list[tuple[str, CallForBids]], dict[str, bytes]]:
        """One call per address carrying its tasks; addresses with the same tasks share a call."""
        tasks_of: dict[str, list[Wanted]] = {}
        for wanted, addresses in zip(batch, chosen, strict=True):
            for address in addresses:
                tasks_of.setdefault(address, []).append(wanted)
        calls: dict[tuple[str, ...], CallForBids] = {}
        request_of: dict[str, bytes] = {}
        asks: list[tuple[str, CallForBids]] = []
        issued = self._clock.wall_ms()
        for address, items in tasks_of.items():
            key = tuple(item.task.task_id for item in items)
            call = calls.get(key)
            if call is None:
                deadline = max(item.deadline_ms for item in items)
                call = calls[key] = call_for_bids(
                    self._identity, [item.task for item in items], issued, deadline
                )
                for task_id in key:
                    request_of.setdefault(task_id, call.request_id)
            asks.append((address, call))
        return asks, request_of

    def _learn(self, batch: Sequence[Wanted], collected: Collected) -> None:
        for address, elapsed in collected.answer_ms.items():
            self.latency.observe(address, elapsed)
        for address, waited in collected.waited_ms.items():
            self.latency.silent(address, waited)
        wanted_by_task = {wanted.task.task_id: wanted for wanted in batch}
        received = self._clock.wall_ms()
        for bid in collected.bids:
            wanted = wanted_by_task[bid.task_id]
            self._peer_at[bid.address] = bid.peer_id.hex
            self._max_batch[(bid.address, wanted.capability)] = bid.constraints.max_batch
            if self.policy.cache:
                self.cache.put(bid, wanted.capability, wanted.bucket, wanted.specs, received)


def input_specs(inputs: Sequence[tuple[str, str, Sequence[int]]]) -> InputSpecs:
    """Input specs in the form the cache compares: (name, dtype, shape) per input."""
    return tuple((name, dtype, tuple(int(d) for d in shape)) for name, dtype, shape in inputs)
