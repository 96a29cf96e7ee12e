"""Solicit bids from every candidate at once and keep only the ones that verify (DESIGN section 6).

How this works
--------------
1. One ``RequestBids`` per peer, all concurrently, each carrying every task of the call for
   bids (request batching) and a gRPC deadline of the bid window. Collection stops when every
   peer has answered or the window closes; a peer still silent then counts as unreachable.
2. Every bid envelope from every peer is verified in one batch in a worker thread
   (:func:`atomic_p2p.identity.verify_many`; Ed25519 releases the GIL), so a hundred bids do
   not stall the event loop that is still receiving answers for other requests.
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
    bids_ms: float
    verify_ms: float

    def bids_for(self, task_id: str) -> tuple[BidInfo, ...]:
        return tuple(bid for bid in self.bids if bid.task_id == task_id)


@dataclass(frozen=True, slots=True)
class _Unverified:
    address: str
    task: TaskRef
    envelope: Envelope


async def _solicit(
    transport: PeerTransport, addresses: Sequence[str], envelope: Envelope, timeout_s: float
) -> dict[str, list[BidReply] | BaseException]:
    calls = {
        address: asyncio.create_task(transport.request_bids(address, envelope, timeout_s))
        for address in addresses
    }
    if calls:
        await asyncio.wait(calls.values(), timeout=timeout_s + _STRAGGLER_MARGIN_S)
    answers: dict[str, list[BidReply] | BaseException] = {}
    for address, call in calls.items():
        if not call.done():
            call.cancel()
            answers[address] = TimeoutError(f"no answer within {timeout_s:.2f} s")
        elif call.cancelled():
            answers[address] = TimeoutError("the call was cancelled")
        else:
            answers[address] = call.exception() or call.result()
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
    answers = await _solicit(transport, addresses, call.envelope, timeout_s)
    solicited = time.perf_counter()

    unverified: list[_Unverified] = []
    no_bids: list[NoBidInfo] = []
    for address, answer in answers.items():
        found, declined = _sort_answer(address, answer, call.tasks)
        unverified.extend(found)
        no_bids.extend(declined)

    checks: list[PeerId | SignatureError] = []
    if unverified:
        checks = await asyncio.to_thread(verify_many, [(item.envelope, BID_TYPE) for item in unverified])
    bids, invalid = _bind(unverified, checks, call.request_id, now_ms())
    return Collected(
        bids=tuple(bids),
        no_bids=tuple(no_bids + invalid),
        bids_ms=(solicited - started) * 1000,
        verify_ms=(time.perf_counter() - solicited) * 1000,
    )
