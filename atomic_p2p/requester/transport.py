"""The requester's gRPC edge: one method per RPC, domain types in and out, errors mapped back.

Every call carries a gRPC deadline (the caller passes the smaller of the request's remaining
budget and the call's own timeout), and every failure surfaces as an :class:`AtomicError`
subclass through :func:`atomic_p2p.errors.from_status`, so nothing above this module sees grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc import aio

from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p._wire import envelope_from_proto, envelope_to_proto, tensors_from_proto, tensors_to_proto
from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import AtomicError, DeadlineError, ProtocolError, from_status
from atomic_p2p.identity import Envelope
from atomic_p2p.tensors import WireTensor

_REASON_PREFIX = "NO_BID_REASON_"


@dataclass(frozen=True, slots=True)
class NoBidReply:
    """A peer's NoBid for one task; ``reason`` is the enum name without its prefix, lower case."""

    task_id: str
    reason: str
    detail: str


BidReply = Envelope | NoBidReply


def _reason_name(value: int) -> str:
    try:
        name = market_pb2.NoBidReason.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return f"reason_{value}"  # a newer peer may know reasons we do not
    return name.removeprefix(_REASON_PREFIX).lower()


def _outcome(outcome: market_pb2.BidOutcome) -> BidReply:
    which = outcome.WhichOneof("outcome")
    if which == "bid":
        return envelope_from_proto(outcome.bid)
    if which == "no_bid":
        no_bid = outcome.no_bid
        return NoBidReply(no_bid.task_id, _reason_name(no_bid.reason), no_bid.detail)
    raise ProtocolError("a bid outcome holds neither a bid nor a no-bid")


def _mapped(error: aio.AioRpcError) -> AtomicError:
    return from_status(error.code(), error.details())


def _check_budget(timeout_s: float, what: str) -> None:
    if timeout_s <= 0:
        raise DeadlineError(f"no time left for {what}")


class PeerTransport:
    """Calls the ``atomic.v1.Peer`` service on any address, over a shared :class:`ChannelPool`."""

    def __init__(self, pool: ChannelPool) -> None:
        self._pool = pool

    async def request_bids(self, address: str, request: Envelope, timeout_s: float) -> list[BidReply]:
        _check_budget(timeout_s, "bids")
        message = market_pb2.RequestBidsRequest(request=envelope_to_proto(request))
        try:
            response = await self._pool.stub(address).RequestBids(message, timeout=timeout_s)
        except aio.AioRpcError as error:
            raise _mapped(error) from None
        return [_outcome(outcome) for outcome in response.outcomes]

    async def execute(
        self, address: str, order: Envelope, bid: Envelope, inputs: Sequence[WireTensor], timeout_s: float
    ) -> tuple[Envelope, list[WireTensor]]:
        _check_budget(timeout_s, "execution")
        message = market_pb2.ExecuteRequest(
            order=envelope_to_proto(order), bid=envelope_to_proto(bid), inputs=tensors_to_proto(inputs)
        )
        try:
            response = await self._pool.stub(address).Execute(message, timeout=timeout_s)
        except aio.AioRpcError as error:
            raise _mapped(error) from None
        if not response.HasField("result"):
            raise ProtocolError("execute response carries no signed result")
        return envelope_from_proto(response.result), tensors_from_proto(response.outputs)

    async def feedback(self, address: str, notice: Envelope, timeout_s: float) -> dict[str, float]:
        """Deliver a notice; returns the peer's strategy parameters after it learned (may be empty)."""
        _check_budget(timeout_s, "feedback")
        message = market_pb2.FeedbackRequest(notice=envelope_to_proto(notice))
        try:
            response = await self._pool.stub(address).Feedback(message, timeout=timeout_s)
        except aio.AioRpcError as error:
            raise _mapped(error) from None
        return dict(response.strategy_parameters) if response.accepted else {}


def status_name(error: BaseException) -> str:
    """A short code for tables: the gRPC status name an error maps to."""
    code = getattr(error, "code", grpc.StatusCode.UNKNOWN)
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
