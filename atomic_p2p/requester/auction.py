"""Solicit bids from every candidate at once and keep only the ones that verify (DESIGN section 6).

How this works
--------------
1. One ``RequestBids`` per peer, all concurrently, each carrying every task of the call for
   bids (request batching) and a gRPC deadline of the bid window. Collection stops when every
   peer has answered or the window closes; a peer still silent then counts as unreachable.
2. Each peer's bid envelopes are verified in a worker thread as soon as its answer arrives
   (:func:`atomic_p2p.identity.verify_many`; libsodium releases the GIL), so verification of
   early answers overlaps the wait for later ones and never stalls the event loop.
3. A verified bid must then bind to this call (:func:`~atomic_p2p.requester.messages.parse_bid`):
   our request id, our task digest, its signer's peer id, not expired. A peer gets one bid per
   task; a second one is dropped.

Nothing is ever silently lost: each peer ends up with a :class:`BidInfo` or a
:class:`NoBidInfo` per task (declined, unreachable, or invalid with the reason, which is also
logged), and those no-bids are what :class:`~atomic_p2p.errors.NoBidsError` reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from atomic_p2p.errors import AtomicError, ProtocolError, SignatureError
from atomic_p2p.identity import Envelope, PeerId, verify_many
from atomic_p2p.requester.messages import BID_TYPE, TaskRef, parse_bid
from atomic_p2p.requester.transport import BidReply, NoBidReply, PeerTransport, status_name
from atomic_p2p.requester.types import BidInfo, NoBidInfo, NoBidKind

logger = logging.getLogger(__name__)

# gRPC enforces the deadline on each call; this margin only catches a call that somehow
# outlives its own deadline, so one stuck peer can never hold the whole auction.
_STRAGGLER_MARGIN_S = 0.25


@dataclass(frozen=True, slots=True)
class CallForBids:
    """A signed BidRequest and the tasks it carries, in order."""

    request_id: bytes
    tasks: tuple[TaskRef, ...]
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Collected:
    """Every verified bid and every no-bid of one call for bids, with how long each phase took."""

    bids: tuple[BidInfo, ...]
    no_bids: tuple[NoBidInfo, ...]
    bids_ms: float  # from the first call until every answer was in and verified
    verify_ms: float  # verification time summed over peers (it overlaps the waiting)

    def bids_for(self, task_id: str) -> tuple[BidInfo, ...]:
        return tuple(bid for bid in self.bids if bid.task_id == task_id)


@dataclass(frozen=True, slots=True)
class _Unverified:
    address: str
    task: TaskRef
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class _PeerAnswer:
    """One peer's answer, sorted into bids (with their signature checks) and no-bids."""

    unverified: list[_Unverified]
    checks: list[PeerId | SignatureError]
    no_bids: list[NoBidInfo]
    verify_ms: float


async def _ask(transport: PeerTransport, address: str, call: CallForBids, timeout_s: float) -> _PeerAnswer:
    """Ask one peer, then verify its bids at once in a worker thread: verification of early
    answers overlaps the wait for later ones, so the auction pays only for the last answer's."""
    answer: list[BidReply] | BaseException
    try:
        answer = await transport.request_bids(address, call.envelope, timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        answer = error
    unverified, no_bids = _sort_answer(address, answer, call.tasks)
    started = time.perf_counter()
    checks: list[PeerId | SignatureError] = []
    if unverified:
        checks = await asyncio.to_thread(verify_many, [(item.envelope, BID_TYPE) for item in unverified])
    return _PeerAnswer(unverified, checks, no_bids, (time.perf_counter() - started) * 1000)


async def _solicit(
    transport: PeerTransport, addresses: Sequence[str], call: CallForBids, timeout_s: float
) -> list[_PeerAnswer]:
    calls = {address: asyncio.create_task(_ask(transport, address, call, timeout_s)) for address in addresses}
    if calls:
        await asyncio.wait(calls.values(), timeout=timeout_s + _STRAGGLER_MARGIN_S)
    answers: list[_PeerAnswer] = []
    for address, pending in calls.items():
        if pending.done() and not pending.cancelled():
            answers.append(pending.result())
            continue
        pending.cancel()
        error = TimeoutError(f"no answer within {timeout_s:.2f} s")
        answers.append(_PeerAnswer([], [], _sort_answer(address, error, call.tasks)[1], 0.0))
    return answers


def _detail(error: BaseException, reason: str) -> str:
    # Errors mapped from a status read "CODE: details"; the code is already the reason.
    return str(error).removeprefix(f"{reason}: ")


def _sort_answer(
    address: str, answer: list[BidReply] | BaseException, tasks: Sequence[TaskRef]
) -> tuple[list[_Unverified], list[NoBidInfo]]:
    if isinstance(answer, BaseException):
        if isinstance(answer, AtomicError):
            reason = status_name(answer)
        elif isinstance(answer, TimeoutError):
            reason = "DEADLINE_EXCEEDED"
        else:  # a bug on our side, not the peer's fault: say so loudly
            logger.error("asking %s for bids failed", address, exc_info=answer)
            reason = "UNKNOWN"
        return [], [NoBidInfo(address, NoBidKind.UNREACHABLE, reason, _detail(answer, reason))]
    if len(answer) != len(tasks):
        detail = f"{len(answer)} outcomes for {len(tasks)} tasks"
        logger.warning("dropped every answer from %s: %s", address, detail)
        return [], [NoBidInfo(address, NoBidKind.INVALID, "INVALID_ARGUMENT", detail)]
    unverified: list[_Unverified] = []
    no_bids: list[NoBidInfo] = []
    for task, reply in zip(tasks, answer, strict=True):
        if isinstance(reply, NoBidReply):
            no_bids.append(NoBidInfo(address, NoBidKind.DECLINED, reply.reason, reply.detail))
        else:
            unverified.append(_Unverified(address, task, reply))
    return unverified, no_bids


def _invalid(item: _Unverified, error: AtomicError, signer: PeerId | None) -> NoBidInfo:
    logger.warning("dropped a bid from %s for task %s: %s", item.address, item.task.task_id, error)
    reason = status_name(error)
    return NoBidInfo(item.address, NoBidKind.INVALID, reason, _detail(error, reason), signer)


def _bind(
    items: Sequence[_Unverified], checks: Sequence[PeerId | SignatureError], request_id: bytes, now_ms: int
) -> tuple[list[BidInfo], list[NoBidInfo]]:
    bids: list[BidInfo] = []
    invalid: list[NoBidInfo] = []
    seen: set[tuple[PeerId, str]] = set()
    for item, check in zip(items, checks, strict=True):
        if isinstance(check, SignatureError):
            invalid.append(_invalid(item, check, None))
            continue
        try:
            bid = parse_bid(item.envelope, check, item.address, request_id, item.task, now_ms)
            if (check, bid.task_id) in seen:
                raise ProtocolError("a second bid from the same peer for the same task")
        except AtomicError as error:
            invalid.append(_invalid(item, error, check))
            continue
        seen.add((check, bid.task_id))
        bids.append(bid)
    return bids, invalid


async def collect_bids(
    transport: PeerTransport,
    addresses: Sequence[str],
    call: CallForBids,
    timeout_s: float,
    now_ms: Callable[[], int],
) -> Collected:
    """Ask every address for bids on ``call`` and return the verified bids and the no-bids."""
    started = time.perf_counter()
    answers = await _solicit(transport, addresses, call, timeout_s)
    unverified = [item for answer in answers for item in answer.unverified]
    checks = [check for answer in answers for check in answer.checks]
    no_bids = [no_bid for answer in answers for no_bid in answer.no_bids]
    bids, invalid = _bind(unverified, checks, call.request_id, now_ms())
    return Collected(
        bids=tuple(bids),
        no_bids=tuple(no_bids + invalid),
        bids_ms=(time.perf_counter() - started) * 1000,
        verify_ms=sum(answer.verify_ms for answer in answers),
    )
