"""The requester's seam to the network: the :class:`Transport` protocol and its gRPC implementation.

A transport carries the four market RPCs between a requester and a peer address: domain frames
(:mod:`atomic_p2p.protocol.messages`) in, domain frames out, and every failure as an
:class:`~atomic_p2p.errors.AtomicError` subclass, so nothing above this module sees grpc.
:class:`GrpcTransport` sends codec bytes (both are :class:`BytesTransport`s: one encoder and decoder for every transport) over a
shared :class:`~atomic_p2p.channels.ChannelPool`; :class:`atomic_p2p.testing.InMemoryNetwork`
hands the same bytes to peers in the same process, with no sockets.

Every call carries a deadline (the caller passes the smaller of the request's remaining budget and
the call's own timeout); a call with no time left fails at once with DeadlineError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Protocol, TypeVar

import grpc
from grpc import aio

from atomic_p2p import metrics
from atomic_p2p.channels import ChannelPool
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import DeadlineError, UnavailableError, UnimplementedError, from_status
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    BidGradientCall,
    BidGradientReply,
    Call,
    ExecuteCall,
    ExecuteChunk,
    ExecuteReply,
    FeedbackCall,
    FeedbackReply,
    RequestBidsCall,
    RequestBidsReply,
)
from atomic_p2p.protocol.streaming import encoded_slices

R = TypeVar("R")


class Transport(Protocol):
    """Carries market calls to a peer address. Implementations raise AtomicError subclasses only."""

    async def request_bids(
        self, address: str, call: RequestBidsCall, timeout_s: float
    ) -> RequestBidsReply: ...

    async def execute(self, address: str, call: ExecuteCall, timeout_s: float) -> ExecuteReply: ...

    def execute_stream(
        self, address: str, call: ExecuteCall, timeout_s: float
    ) -> AsyncGenerator[ExecuteChunk, None]:
        """ExecuteStream: the peer's messages as they arrive, the signed result last;
        ``timeout_s`` bounds the whole stream. Closing the generator cancels the call."""
        ...

    def execute_upload(
        self, address: str, call: ExecuteCall, timeout_s: float
    ) -> AsyncGenerator[ExecuteChunk, None]:
        """ExecuteUpload: :meth:`execute_stream` with the call's inputs sent in slices after it,
        so no input is capped by one message."""
        ...

    async def feedback(self, address: str, call: FeedbackCall, timeout_s: float) -> FeedbackReply: ...

    async def bid_gradient(
        self, address: str, call: BidGradientCall, timeout_s: float
    ) -> BidGradientReply: ...


class BytesTransport(ABC):
    """A :class:`Transport` that moves codec bytes: subclasses say how one call's request bytes
    reach the peer and its answer bytes come back (:meth:`send`); encoding, decoding and the
    time budget are done here, once for every transport.

    A round asks many peers with one RequestBids value (its tasks' specs and previews, tens of
    kilobytes): the last one's bytes are kept, so sending the same value again encodes nothing.
    """

    _bids_call: RequestBidsCall | None = None
    _bids_bytes: bytes = b""

    async def request_bids(self, address: str, call: RequestBidsCall, timeout_s: float) -> RequestBidsReply:
        if timeout_s <= 0:
            raise DeadlineError("no time left for bids")
        if call is not self._bids_call:  # the same frozen value: the same bytes
            self._bids_bytes, self._bids_call = codec.encode(call), call
        raw = await self.send(address, "RequestBids", self._bids_bytes, timeout_s)
        return codec.decode(RequestBidsReply, raw)

    async def execute(self, address: str, call: ExecuteCall, timeout_s: float) -> ExecuteReply:
        return await self._call(address, "Execute", call, ExecuteReply, timeout_s, "execution")

    async def feedback(self, address: str, call: FeedbackCall, timeout_s: float) -> FeedbackReply:
        return await self._call(address, "Feedback", call, FeedbackReply, timeout_s, "feedback")

    async def bid_gradient(self, address: str, call: BidGradientCall, timeout_s: float) -> BidGradientReply:
        return await self._call(address, "BidGradient", call, BidGradientReply, timeout_s, "a gradient")

    async def execute_stream(
        self, address: str, call: ExecuteCall, timeout_s: float
    ) -> AsyncGenerator[ExecuteChunk, None]:
        if timeout_s <= 0:
            raise DeadlineError("no time left for execution")
        async with aclosing(self.send_stream(address, "ExecuteStream", codec.encode(call), timeout_s)) as raw:
            async for data in raw:
                yield codec.decode_chunk(data)

    async def execute_upload(
        self, address: str, call: ExecuteCall, timeout_s: float
    ) -> AsyncGenerator[ExecuteChunk, None]:
        if timeout_s <= 0:
            raise DeadlineError("no time left for execution")
        requests = upload_messages(call)
        async with aclosing(self.send_upload(address, "ExecuteUpload", requests, timeout_s)) as raw:
            async for data in raw:
                yield codec.decode_chunk(data)

    def send_upload(
        self, address: str, method: str, requests: Iterator[bytes], timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        """A bidirectional call: ``requests`` sent in order (then the client half-closes), the
        answer messages as they arrive; failures as AtomicError. A transport that carries only
        unary and server-streaming calls leaves it: ExecuteUpload is then UNIMPLEMENTED."""
        raise UnimplementedError(f"{type(self).__name__} carries no bidirectional calls ({method})")

    @abstractmethod
    def send_stream(
        self, address: str, method: str, request: bytes, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        """The answer messages of a server-streaming call as they arrive; failures as AtomicError."""

    @abstractmethod
    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        """The answer bytes to ``request`` from the peer at ``address``; failures as AtomicError."""

    async def _call(
        self, address: str, method: str, call: Call, reply: type[R], timeout_s: float, what: str
    ) -> R:
        if timeout_s <= 0:
            raise DeadlineError(f"no time left for {what}")
        return codec.decode(reply, await self.send(address, method, codec.encode(call), timeout_s))


class GrpcTransport(BytesTransport):
    """:class:`Transport` over gRPC: one call per RPC on the pool's channel for the address
    (``host:port`` or ``PEERID@host:port``), which the pool opens pinned to the peer's certificate
    (:meth:`ChannelPool.open`: PeerIdentityError, PlaintextPeerError or UnavailableError when it
    cannot)."""

    def __init__(self, pool: ChannelPool, clock: Clock = SYSTEM_CLOCK) -> None:
        """``clock`` times first contacts (their time comes off the call's budget)."""
        self._pool = pool
        self._clock = clock

    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        timeout_s = await self._open(address, timeout_s)
        started = metrics.started()
        try:
            answer: bytes = await self._pool.method(address, method)(request, timeout=timeout_s)
        except aio.AioRpcError as error:
            metrics.rpc_called(method, error.code(), started)
            await self._explain(address, error, timeout_s)
            raise from_status(error.code(), error.details()) from None
        metrics.rpc_called(method, grpc.StatusCode.OK, started)
        return answer

    async def _open(self, address: str, timeout_s: float) -> float:
        """Pin the channel (first contact fetches and checks the certificate); the time it took
        comes off the call's budget."""
        if self._pool.is_open(address):
            return timeout_s
        started = self._clock.monotonic()
        await self._pool.open(address, timeout_s=timeout_s)
        left = timeout_s - (self._clock.monotonic() - started)
        if left <= 0:
            raise DeadlineError(f"no time left after first contact with {address[:200]}")
        return left

    async def _explain(self, address: str, error: aio.AioRpcError, timeout_s: float) -> None:
        """A failed TLS handshake may mean someone else answers at the address: say who."""
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            await self._pool.explain(address, error.details() or "", timeout_s)

    async def send_stream(
        self, address: str, method: str, request: bytes, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        timeout_s = await self._open(address, timeout_s)
        call = self._pool.stream_method(address, method)(request, timeout=timeout_s)
        started, code = metrics.started(), grpc.StatusCode.CANCELLED  # until it ends otherwise
        try:
            async for message in call:
                yield message
            code = grpc.StatusCode.OK
        except aio.AioRpcError as error:
            code = error.code()
            raise from_status(error.code(), error.details()) from None
        finally:
            call.cancel()  # a no-op once the stream ended; otherwise the peer stops its work
            metrics.rpc_called(method, code, started)

    async def send_upload(
        self, address: str, method: str, requests: Iterator[bytes], timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        timeout_s = await self._open(address, timeout_s)
        multicallable = self._pool.channel(address).stream_stream(
            f"/atomic.v1.Peer/{method}", _registered_method=True
        )
        call = multicallable(_aiter(requests), timeout=timeout_s)
        try:
            async for message in call:
                yield message
        except aio.AioRpcError as error:
            await self._explain(address, error, timeout_s)
            raise from_status(error.code(), error.details()) from None
        finally:
            call.cancel()


async def _aiter(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def upload_messages(call: ExecuteCall) -> Iterator[bytes]:
    """ExecuteUpload's request messages: the call without its inputs, then each input's slices
    (made as they are sent: one copy of each slice, none of the whole input)."""
    yield codec.encode_upload_call(call)
    yield from encoded_slices(call.inputs)


def status_name(error: BaseException) -> str:
    """A short code for tables: the gRPC status name an error maps to."""
    code = getattr(error, "code", grpc.StatusCode.UNKNOWN)
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class WatchedTransport:
    """A :class:`Transport` that tells ``unreachable(address)`` of every call that found the peer
    unreachable (UNAVAILABLE: refused, reset, draining), the moment it fails: a requester's own
    failed calls are evidence against the peer (:meth:`.discovery.Discovery.suspect`)."""

    def __init__(self, inner: Transport, unreachable: Callable[[str], None]) -> None:
        self.inner = inner
        self._unreachable = unreachable

    async def request_bids(self, address: str, call: RequestBidsCall, timeout_s: float) -> RequestBidsReply:
        return await self._watch(address, self.inner.request_bids(address, call, timeout_s))

    async def execute(self, address: str, call: ExecuteCall, timeout_s: float) -> ExecuteReply:
        return await self._watch(address, self.inner.execute(address, call, timeout_s))

    async def feedback(self, address: str, call: FeedbackCall, timeout_s: float) -> FeedbackReply:
        return await self._watch(address, self.inner.feedback(address, call, timeout_s))

    async def bid_gradient(self, address: str, call: BidGradientCall, timeout_s: float) -> BidGradientReply:
        return await self._watch(address, self.inner.bid_gradient(address, call, timeout_s))

    def execute_stream(
        self, address: str, call: ExecuteCall, timeout_s: float
    ) -> AsyncGenerator[ExecuteChunk, None]:
        return self._watch_stream(address, self.inner.execute_stream(address, call, timeout_s))

    def execute_upload(
        self, address: str, call: ExecuteCall, timeout_s: float
    ) -> AsyncGenerator[ExecuteChunk, None]:
        return self._watch_stream(address, self.inner.execute_upload(address, call, timeout_s))

    async def _watch_stream(
        self, address: str, stream: AsyncGenerator[ExecuteChunk, None]
    ) -> AsyncGenerator[ExecuteChunk, None]:
        try:
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    yield chunk
        except UnavailableError:
            self._unreachable(address)
            raise

    async def _watch(self, address: str, call: Awaitable[R]) -> R:
        try:
            return await call
        except UnavailableError:
            self._unreachable(address)
            raise
