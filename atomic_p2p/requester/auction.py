"""Solicit bids from candidates at once and keep only the ones that verify (docs/architecture.md section 6).

How this works
--------------
1. One ``RequestBids`` per peer, all concurrently, each carrying every task of that peer's call
   for bids (request batching: a round may pair different peers with different calls, since a
   peer is only asked about the tasks it is a candidate for), with the round's hard window as
   its gRPC deadline.
2. Collection stops at the first of: every peer answered; the hard window closed (a peer still
   silent counts as unreachable); ``tmax`` passed once every task has at least one valid bid
   (``tmax`` adapts to observed bid latency, so it is allowed to cut stragglers, never to leave
   a task without an offer); or, with ``k_min`` > 0, ``grace_s`` passed after every task has
   ``k_min`` valid bids. A peer still silent at such an early close is LATE, so one slow
   bidder never holds an auction that already has enough offers.
3. Each peer's bid envelopes are verified as soon as its answer arrives
   (:func:`atomic_p2p.identity.verify_many`, which checks a batch signature once for all the
   bids under it). An answer that needs more than ``INLINE_SIGNATURES`` Ed25519 checks goes to
   a worker thread through the clock's ``run_blocking`` (libsodium releases the GIL), so
   verification of early answers overlaps the wait for later ones and never stalls the event
   loop; fewer run inline, since a hop to a thread and back costs more than one check (about
   60 us). Every time and every wait is on the :mod:`atomic_p2p.clock` passed in.
4. A verified bid must then bind to its call (:func:`~atomic_p2p.requester.messages.parse_bid`):
   that call's request id, our task digest, its signer's peer id, not expired. A peer gets one
   bid per task; a second one is dropped.

Nothing is ever silently lost: each peer ends up with a :class:`BidInfo` or a
:class:`NoBidInfo` per task (declined, unreachable, late, or invalid with the reason, which is
also logged), and those no-bids are what :class:`~atomic_p2p.errors.NoBidsError` reports. How
long each peer took to answer (or how long it was waited for) comes back too, for ``tmax``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from atomic_p2p import metrics
from atomic_p2p.clock import Clock, wait_first
from atomic_p2p.errors import AtomicError, SignatureError
from atomic_p2p.identity import Envelope, Identity, PeerId, verify_many
from atomic_p2p.protocol.codec import BID_TYPE, no_bid_reason_name
from atomic_p2p.protocol.messages import NoBid, RequestBidsCall
from atomic_p2p.requester.messages import TaskRef, parse_bid, sign_bid_request
from atomic_p2p.requester.transport import Transport, status_name
from atomic_p2p.requester.types import BidInfo, NoBidInfo, NoBidKind

logger = logging.getLogger(__name__)

# A peer's answer with at most this many distinct signatures (one, when it signs its bids in a
# batch) is verified on the event loop: the thread hop would cost more than the checks.
INLINE_SIGNATURES = 2

# gRPC enforces the deadline on each call; this margin only catches a call that somehow
# outlives its own deadline, so one stuck peer can never hold the whole auction.
_STRAGGLER_MARGIN_S = 0.25


@dataclass(frozen=True, slots=True)
class CallForBids:
    """A signed BidRequest and the tasks it is for, in order. ``frame`` is the one RequestBids
    call every peer asked with it gets: one value, so a transport encodes it once
    (:class:`~atomic_p2p.requester.transport.BytesTransport`). ``detached``: the BidRequest signs
    the tasks' digests and the frame carries their bytes beside it (docs/protocol.md section 3.2)."""

    request_id: bytes
    tasks: tuple[TaskRef, ...]
    envelope: Envelope
    detached: bool = False
    frame: RequestBidsCall = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        beside = tuple(task.spec for task in self.tasks) if self.detached else ()
        object.__setattr__(self, "frame", RequestBidsCall(self.envelope, beside))


def call_for_bids(
    identity: Identity,
    tasks: Sequence[TaskRef],
    issued_at_ms: int,
    deadline_ms: int,
    *,
    gradient_mode: bool = False,
) -> CallForBids:
    """A fresh 16-byte request id and ``identity``'s signed BidRequest for ``tasks``, with the
    tasks detached: it signs their digests, 32 bytes a task, so a peer verifies a signature over
    a few hundred bytes instead of every task's bytes (docs/protocol.md section 3.2)."""
    request_id = os.urandom(16)
    envelope = sign_bid_request(
        identity, request_id, tasks, issued_at_ms, deadline_ms, gradient_mode=gradient_mode, detached=True
    )
    return CallForBids(request_id, tuple(tasks), envelope, detached=True)


@dataclass(frozen=True, slots=True)
class Collected:
    """Every verified bid and every no-bid of one round, with how long each phase took.

    ``answer_ms`` holds, per address that answered, how long its answer took; ``waited_ms``,
    per address still silent when collection stopped, how long it had been waited for.
    """

    bids: tuple[BidInfo, ...]
    no_bids: tuple[NoBidInfo, ...]
    bids_ms: float  # from the first call until every answer was in and verified
    verify_ms: float  # verification time summed over peers (it overlaps the waiting)
    answer_ms: Mapping[str, float] = field(default_factory=dict)
    waited_ms: Mapping[str, float] = field(default_factory=dict)
    # Indexed by task once: a round carries tens of tasks, each asking for its own.
    _bids_of: dict[str, tuple[BidInfo, ...]] = field(init=False, repr=False, compare=False)
    _no_bids_of: dict[str, tuple[NoBidInfo, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bids_of", _by_task(self.bids))
        object.__setattr__(self, "_no_bids_of", _by_task(self.no_bids))

    def bids_for(self, task_id: str) -> tuple[BidInfo, ...]:
        return self._bids_of.get(task_id, ())

    def no_bids_for(self, task_id: str) -> tuple[NoBidInfo, ...]:
        return self._no_bids_of.get(task_id, ())


_Of = TypeVar("_Of", BidInfo, NoBidInfo)


def _by_task(items: Sequence[_Of]) -> dict[str, tuple[_Of, ...]]:
    """``items`` grouped by task id, each group in the order given."""
    groups: dict[str, list[_Of]] = {}
    for item in items:
        group = groups.get(item.task_id)
        if group is None:
            groups[item.task_id] = [item]
        else:
            group.append(item)
    return {task_id: tuple(group) for task_id, group in groups.items()}


@dataclass(frozen=True, slots=True)
class _Window:
    """How long a round may collect: ``hard_s`` at most; ``soft_s`` (tmax) once every task has
    an offer; ``grace_s`` after every task has ``k_min`` (0: off)."""

    hard_s: float
    soft_s: float
    k_min: int
    grace_s: float


@dataclass(frozen=True, slots=True)
class _PeerAnswer:
    """One peer's answer: its bids (verified and bound to the call) and its no-bids."""

    bids: list[BidInfo]
    no_bids: list[NoBidInfo]
    verify_ms: float
    answer_ms: float = 0.0


async def _ask(
    transport: Transport, address: str, call: CallForBids, timeout_s: float, clock: Clock
) -> _PeerAnswer:
    """Ask one peer, then verify its bids at once in a worker thread and bind them: verification
    of early answers overlaps the wait for later ones, so the auction pays only for the last."""
    asked = clock.monotonic()
    answer: Sequence[Envelope | NoBid] | BaseException
    try:
        answer = (await transport.request_bids(address, call.frame, timeout_s)).outcomes
    except asyncio.CancelledError:
        raise
    except Exception as error:
        answer = error
    started = clock.monotonic()
    unverified, no_bids = _sort_answer(address, answer, call)
    bids: list[BidInfo] = []
    if unverified:
        items = [(envelope, BID_TYPE) for _, envelope in unverified]
        if len({envelope.signature for envelope, _ in items}) <= INLINE_SIGNATURES:
            checks = verify_many(items)
        else:
            checks = await clock.run_blocking(verify_many, items)
        bids, invalid = _bind(address, call.request_id, unverified, checks, clock.wall_ms())
        no_bids += invalid
    verify_ms = (clock.monotonic() - started) * 1000
    return _PeerAnswer(bids, no_bids, verify_ms, (started - asked) * 1000)


class _Quorum:
    """Counts valid bids per task: says when every task has one, and when it has ``k_min``."""

    def __init__(self, asks: Sequence[tuple[str, CallForBids]], k_min: int) -> None:
        askers: dict[str, int] = {}
        for _, call in asks:
            for task in call.tasks:
                askers[task.task_id] = askers.get(task.task_id, 0) + 1
        # A task asked of fewer peers than k_min is satisfied by all of them answering.
        self._needed = {task: min(k_min, count) for task, count in askers.items()} if k_min > 0 else {}
        self._valid: dict[str, set[str]] = {task: set() for task in askers}

    def add(self, address: str, answer: _PeerAnswer) -> None:
        for bid in answer.bids:
            if bid.task_id in self._valid:
                self._valid[bid.task_id].add(address)

    def covered(self) -> bool:
        return all(self._valid.values())

    def reached(self) -> bool:
        return bool(self._needed) and all(len(self._valid[t]) >= n for t, n in self._needed.items())


@dataclass(slots=True)
class _Closing:
    """When collection stops, and which rule set that time (None: the hard window)."""

    at: float
    rule: str | None = None

    def sooner(self, at: float, rule: str) -> None:
        if at < self.at:
            self.at, self.rule = at, rule


async def _solicit(
    transport: Transport,
    asks: Sequence[tuple[str, CallForBids]],
    window: _Window,
    clock: Clock,
) -> tuple[list[_PeerAnswer], dict[str, float], dict[str, float]]:
    started = clock.monotonic()
    calls = {
        asyncio.create_task(_ask(transport, address, call, window.hard_s, clock)): (address, call)
        for address, call in asks
    }
    quorum = _Quorum(asks, window.k_min)
    closing = _Closing(started + window.hard_s + _STRAGGLER_MARGIN_S)
    pending = set(calls)
    answers: list[_PeerAnswer] = []
    answered: dict[str, float] = {}
    covered = graced = False
    while pending:
        left = closing.at - clock.monotonic()
        if left <= 0:
            break
        done, pending = await wait_first(clock, pending, left)
        for finished in done:
            answer = finished.result()
            answers.append(answer)
            answered[calls[finished][0]] = answer.answer_ms
            quorum.add(calls[finished][0], answer)
        now = clock.monotonic()
        if not covered and quorum.covered():  # tmax binds only once every task has an offer
            covered = True
            closing.sooner(max(started + window.soft_s, now + window.grace_s), "TMAX")
        if not graced and quorum.reached():
            graced = True
            closing.sooner(now + window.grace_s, "GRACE")
    waited: dict[str, float] = {}
    for unfinished in pending:
        unfinished.cancel()
        address, call = calls[unfinished]
        waited_ms = (clock.monotonic() - started) * 1000
        waited[address] = waited_ms
        answers.append(_PeerAnswer([], _silent(address, call, window.hard_s, closing.rule, waited_ms), 0.0))
    return answers, answered, waited


_CUT = {
    "TMAX": "every task had an offer and tmax passed",
    "GRACE": "k_min bids were in and the grace period passed",
}


def _silent(
    address: str, call: CallForBids, timeout_s: float, rule: str | None, waited_ms: float
) -> list[NoBidInfo]:
    if rule is not None:
        detail = f"no answer after {waited_ms:.0f} ms; {_CUT[rule]}"
        return [NoBidInfo(address, NoBidKind.LATE, rule, detail, task_id=t.task_id) for t in call.tasks]
    return _sort_answer(address, TimeoutError(f"no answer within {timeout_s:.2f} s"), call)[1]


def _detail(error: BaseException, reason: str) -> str:
    # Errors mapped from a status read "CODE: details"; the code is already the reason.
    return str(error).removeprefix(f"{reason}: ")


def _sort_answer(
    address: str, answer: Sequence[Envelope | NoBid] | BaseException, call: CallForBids
) -> tuple[list[tuple[TaskRef, Envelope]], list[NoBidInfo]]:
    """A peer's answer as the bids still to verify, each with the task it is for, and the
    no-bids (declined; or every task, for a failed call or an answer of the wrong length)."""
    tasks = call.tasks
    if isinstance(answer, BaseException):
        if isinstance(answer, AtomicError):
            reason = status_name(answer)
        elif isinstance(answer, TimeoutError):
            reason = "DEADLINE_EXCEEDED"
        else:  # a bug on our side, not the peer's fault: say so loudly
            logger.error("asking %s for bids failed", address, exc_info=answer)
            reason = "UNKNOWN"
        detail = _detail(answer, reason)
        return [], [
            NoBidInfo(address, NoBidKind.UNREACHABLE, reason, detail, task_id=t.task_id) for t in tasks
        ]
    if len(answer) != len(tasks):
        detail = f"{len(answer)} outcomes for {len(tasks)} tasks"
        logger.warning("dropped every answer from %s: %s", address, detail)
        return [], [
            NoBidInfo(address, NoBidKind.INVALID, "INVALID_ARGUMENT", detail, task_id=t.task_id)
            for t in tasks
        ]
    unverified: list[tuple[TaskRef, Envelope]] = []
    no_bids: list[NoBidInfo] = []
    for task, reply in zip(tasks, answer, strict=True):
        if isinstance(reply, NoBid):
            reason = no_bid_reason_name(reply.reason)
            no_bids.append(NoBidInfo(address, NoBidKind.DECLINED, reason, reply.detail, task_id=task.task_id))
        else:
            unverified.append((task, reply))
    return unverified, no_bids


def _invalid(address: str, task: TaskRef, error: AtomicError, signer: PeerId | None) -> NoBidInfo:
    logger.warning("dropped a bid from %s for task %s: %s", address, task.task_id, error)
    reason = status_name(error)
    return NoBidInfo(address, NoBidKind.INVALID, reason, _detail(error, reason), signer, task.task_id)


def _bind(
    address: str,
    request_id: bytes,
    items: Sequence[tuple[TaskRef, Envelope]],
    checks: Sequence[PeerId | SignatureError],
    now_ms: int,
) -> tuple[list[BidInfo], list[NoBidInfo]]:
    """Bind each verified bid of one peer's answer to the call it answers (``request_id``)."""
    bids: list[BidInfo] = []
    invalid: list[NoBidInfo] = []
    for (task, envelope), check in zip(items, checks, strict=True):
        if isinstance(check, SignatureError):
            invalid.append(_invalid(address, task, check, None))
            continue
        try:
            bids.append(parse_bid(envelope, check, address, request_id, task, now_ms))
        except AtomicError as error:
            invalid.append(_invalid(address, task, error, check))
    return bids, invalid


def _one_per_peer(bids: Sequence[BidInfo]) -> tuple[list[BidInfo], list[NoBidInfo]]:
    """A peer gets one bid per task (it may sit behind two addresses); later ones are dropped."""
    kept: list[BidInfo] = []
    dropped: list[NoBidInfo] = []
    seen: set[tuple[bytes, str]] = set()  # the peer id's bytes: their hash is cached, a PeerId's is not
    for bid in bids:
        key = (bid.peer_id.raw, bid.task_id)
        if key in seen:
            detail = "a second bid from the same peer for the same task"
            logger.warning("dropped a bid from %s for task %s: %s", bid.address, bid.task_id, detail)
            dropped.append(
                NoBidInfo(
                    bid.address, NoBidKind.INVALID, "INVALID_ARGUMENT", detail, bid.peer_id, bid.task_id
                )
            )
            continue
        seen.add(key)
        kept.append(bid)
    return kept, dropped


async def collect_round(
    transport: Transport,
    asks: Sequence[tuple[str, CallForBids]],
    timeout_s: float,
    clock: Clock,
    *,
    tmax_s: float | None = None,
    k_min: int = 0,
    grace_s: float = 0.0,
) -> Collected:
    """Send each (address, call) pair its call for bids, all at once; return what verified.

    ``timeout_s`` is the hard window (each call's gRPC deadline); ``tmax_s``, once every task
    has a bid, and ``k_min`` with ``grace_s`` may close it sooner (see the module docstring).
    ``clock`` times the round and verifies off the loop (:mod:`atomic_p2p.clock`)."""
    started = clock.monotonic()
    soft = timeout_s if tmax_s is None else min(tmax_s, timeout_s)
    window = _Window(timeout_s, soft, k_min, grace_s)
    answers, answered, waited = await _solicit(transport, asks, window, clock)
    bids, duplicates = _one_per_peer([bid for answer in answers for bid in answer.bids])
    no_bids = [no_bid for answer in answers for no_bid in answer.no_bids]
    collected = Collected(
        bids=tuple(bids),
        no_bids=tuple(no_bids + duplicates),
        bids_ms=(clock.monotonic() - started) * 1000,
        verify_ms=sum(answer.verify_ms for answer in answers),
        answer_ms=answered,
        waited_ms=waited,
    )
    metrics.auction_round(collected)
    return collected


async def collect_bids(
    transport: Transport,
    addresses: Sequence[str],
    call: CallForBids,
    timeout_s: float,
    clock: Clock,
) -> Collected:
    """Ask every address for bids on ``call`` and return the verified bids and the no-bids."""
    return await collect_round(transport, [(address, call) for address in addresses], timeout_s, clock)
