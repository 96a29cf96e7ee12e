"""The gRPC face of a peer: service ``atomic.v1.Peer``, plus health and reflection.

How this works
--------------
:class:`PeerService` only translates. Each method decodes the request bytes with the market
codec (:mod:`atomic_p2p.protocol.codec`), hands the frame and the time to the sans-I/O
:class:`~atomic_p2p.peer.seller.Seller`, runs what must not block the event loop where it belongs
(strategy previews of slow models in a thread, forward passes in the worker pool, at most once per
order), and encodes the answer. :meth:`PeerService.call` is that whole path for one method and is
transport-free: the gRPC handlers below wrap it, and the in-memory network of
:mod:`atomic_p2p.testing` calls it directly.

Handlers are registered with raw-bytes request deserializers, so a malformed request is our
INVALID_ARGUMENT rather than gRPC's generic UNKNOWN. Any :class:`~atomic_p2p.errors.AtomicError`
raised below becomes a status in :func:`_rpc`, the one place that aborts; anything else is logged
and answered INTERNAL, and the node serves on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import NoReturn, cast

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from atomic_p2p import metrics
from atomic_p2p.errors import (
    AtomicError,
    DeadlineError,
    ProtocolError,
    UnavailableError,
    UnimplementedError,
    bounded,
    shown,
)
from atomic_p2p.gossip.ratelimit import TokenBuckets
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.guard import SourceLimits
from atomic_p2p.identity import Envelope
from atomic_p2p.peer.seller import Decision, Seller
from atomic_p2p.peer.textgen import TextPieces
from atomic_p2p.peer.workers import WorkerPool
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    BidGradientCall,
    ExecuteCall,
    FeedbackCall,
    RequestBidsCall,
    TensorSlice,
    TokenChunk,
)
from atomic_p2p.protocol.streaming import OFFLOAD_BYTES, Reassembly, encoded_slices
from atomic_p2p.sources import source_of

log = logging.getLogger(__name__)
_TRACEBACKS = TokenBuckets(rate=0.1, burst=10, max_keys=16)  # per method: 10 at once, then 6 a minute

SERVICE_NAME = "atomic.v1.Peer"
METHODS = ("Gossip", "RequestBids", "Execute", "Feedback", "BidGradient")
STREAM_METHODS = ("ExecuteStream",)
UPLOAD_METHODS = ("ExecuteUpload",)


def wall_ms() -> int:
    """Unix time in milliseconds: the peer's clock for issued_at, valid_until and deadlines."""
    return time.time_ns() // 1_000_000


class PeerService:
    """The handlers of ``atomic.v1.Peer``; one per node.

    ``draining`` says whether the node has stopped taking new work (the node owns that state);
    ``gossip`` returns the node's gossip agent once it runs (None: no gossip).
    """

    def __init__(
        self,
        seller: Seller,
        workers: WorkerPool[bytes],
        *,
        draining: Callable[[], bool] = lambda: False,
        gossip: Callable[[], GossipAgent | None] = lambda: None,
        clock: Callable[[], int] = wall_ms,
        offload: Callable[..., Awaitable[object]] = asyncio.to_thread,
        limits: SourceLimits | None = None,
    ) -> None:
        self.seller = seller
        # Calls per source address and prefix, checked before a request is parsed (docs/security.md).
        self.limits = limits or SourceLimits()
        self.workers = workers
        self._draining = draining
        self._gossip = gossip
        self._now_ms = clock
        self._offload = offload  # where slow strategy previews run (a fake clock runs them inline)
        self._methods: dict[str, Callable[[bytes, str], Awaitable[bytes]]] = {
            "Gossip": self.gossip,
            "RequestBids": self.request_bids,
            "Execute": self.execute,
            "Feedback": self.feedback,
            "BidGradient": self.bid_gradient,
        }

    async def call(self, method: str, raw: bytes, caller: str = "") -> bytes:
        """Serve one call of ``method`` on request bytes; raises AtomicError for a refusal.
        ``caller`` names the connection as gRPC does (``ipv4:1.2.3.4:5678``): the limits per
        source address and prefix, and the fair shares further in, key on it."""
        handler = self._methods.get(method)
        if handler is None:
            raise UnimplementedError(f"atomic.v1.Peer has no method {shown(method)}")
        self.limits.admit(method, source_of(caller), time.monotonic())
        return await handler(raw, caller)

    def upload(
        self, method: str, requests: AsyncIterator[bytes], caller: str = ""
    ) -> AsyncGenerator[bytes, None]:
        """Serve one bidirectional call (ExecuteUpload) as :meth:`stream` serves one: its request
        messages in, its answer messages out."""
        if method != "ExecuteUpload":
            raise UnimplementedError(f"atomic.v1.Peer has no bidirectional method {shown(method)}")
        self.limits.admit(method, source_of(caller), time.monotonic())
        return self.execute_upload(requests)

    def stream(self, method: str, raw: bytes, caller: str = "") -> AsyncGenerator[bytes, None]:
        """Serve one server-streaming call: its answer messages as bytes; a refusal raises
        AtomicError from the iteration. Closing the iterator early (a client that cancels) stops
        the work after the step in progress and frees its worker slot."""
        if method != "ExecuteStream":
            raise UnimplementedError(f"atomic.v1.Peer has no streaming method {shown(method)}")
        self.limits.admit(method, source_of(caller), time.monotonic())
        return self.execute_stream(raw)

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(metrics.served(name, _rpc(name, self.call)))
            for name in METHODS
        }
        for name in STREAM_METHODS:
            handlers[name] = grpc.unary_stream_rpc_method_handler(
                metrics.served_stream(name, _stream_rpc(name, self.stream))
            )
        for name in UPLOAD_METHODS:
            handlers[name] = grpc.stream_stream_rpc_method_handler(
                metrics.served_stream(name, _upload_rpc(name, self.upload))
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    async def request_bids(self, raw: bytes, caller: str = "") -> bytes:
        self._refuse_new_work()
        opened = self.seller.open_request(
            codec.decode(RequestBidsCall, raw), self._now_ms(), source_of(caller)
        )
        load = self.workers.load(self._draining())
        if self.seller.previews_are_slow(opened):
            # Scoring previews runs the models: keep slow ones off the event loop.
            decisions = cast(list[Decision], await self._offload(self.seller.decide, opened, load))
        else:
            decisions = self.seller.decide(opened, load)
        return codec.encode(self.seller.answer(opened, decisions, self._now_ms()))

    async def execute(self, raw: bytes, caller: str = "") -> bytes:
        self._refuse_new_work()
        job = self.seller.open_order(codec.decode(ExecuteCall, raw), self._now_ms())
        return await self.workers.run(
            job.key, job.fingerprint, lambda: codec.encode(self.seller.perform(job)), job.timeout_s
        )

    async def execute_stream(self, raw: bytes) -> AsyncGenerator[bytes, None]:
        self._refuse_new_work()
        async with aclosing(self._serve_stream(codec.decode(ExecuteCall, raw))) as messages:
            async for message in messages:
                yield message

    async def execute_upload(self, requests: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """ExecuteUpload: the call, checked before any input is taken (signatures, the bid), then
        the input slices, each tensor one the bid was for (allocated only then), then ExecuteStream."""
        self._refuse_new_work()
        first = await anext(requests, None)
        call = codec.decode_upload(first) if first is not None else None
        if not isinstance(call, ExecuteCall):
            raise ProtocolError("an ExecuteUpload starts with its call")
        specs = self.seller.open_upload(call, self._now_ms())
        reassembly = Reassembly(self.seller.limits, expected=specs)
        async for raw in requests:
            piece = codec.decode_upload(raw)
            if not isinstance(piece, TensorSlice):
                raise ProtocolError("an ExecuteUpload carries one call, first")
            if len(piece.data) >= OFFLOAD_BYTES:  # its copy and hash off the event loop
                await self._offload(reassembly.add, piece)
            else:
                reassembly.add(piece)
        inputs = reassembly.tensors()
        async with aclosing(self._serve_stream(replace(call, inputs=inputs))) as messages:
            async for message in messages:
                yield message

    async def _serve_stream(self, call: ExecuteCall) -> AsyncGenerator[bytes, None]:
        job = self.seller.open_stream(call, self._now_ms())
        async with self.workers.hold(job.key, job.timeout_s):
            if job.model.generation is None:
                outputs, compute_ms = await self.workers.step(lambda: self.seller.forward(job, copy=False))
                # The digest (a pass over every byte) runs in a thread while the slices go out
                # (inline on a fake clock, whose time cannot pass while another thread works).
                signing = asyncio.ensure_future(
                    self._offload(self.seller.sign_outputs, job, outputs, compute_ms)
                )
                try:
                    for message in encoded_slices(outputs):
                        yield message
                    yield codec.encode_chunk(cast(Envelope, await signing))
                finally:
                    signing.cancel()
                return
            decoder = job.model.decoder(job.prompt, job.order.prefix_tokens, job.order.max_tokens)
            tokenizer = job.model.tokenizer
            pieces = TextPieces(tokenizer, job.prompt[0].tolist()) if job.texts and tokenizer else None

            def step() -> tuple[int, str] | None:  # in the worker thread, steps back to back
                token = decoder.step()
                if token is None:
                    return None
                return token, pieces.add(token) if pieces else ""

            produced: list[int] = []
            # Every token ready when the last frame went out travels in the next frame: the model
            # never waits for the network, and a slow network gets fewer, fuller frames.
            async with aclosing(self.workers.steps(step)) as batches:
                async for batch in batches:
                    tokens = tuple(token for token, _ in batch)
                    produced.extend(tokens)
                    yield codec.encode_chunk(TokenChunk(tokens, "".join(piece for _, piece in batch)))
                    if job.order.deadline_ms and self._now_ms() >= job.order.deadline_ms:
                        raise DeadlineError("the order's deadline passed during the generation")
            text = pieces.text if pieces else None
            yield codec.encode_chunk(self.seller.sign_tokens(job, produced, decoder.compute_ms, text))

    async def feedback(self, raw: bytes, caller: str = "") -> bytes:
        return codec.encode(self.seller.feedback(codec.decode(FeedbackCall, raw), self._now_ms()))

    async def bid_gradient(self, raw: bytes, caller: str = "") -> bytes:
        return codec.encode(self.seller.gradient(codec.decode(BidGradientCall, raw), self._now_ms()))

    async def gossip(self, raw: bytes, caller: str = "") -> bytes:
        # Still served while draining: the leave, and others' view of us, travel through it.
        agent = self._gossip()
        if agent is None:
            raise UnimplementedError("this node runs without gossip; reach it by address")
        return agent.handle(raw, caller)

    def _refuse_new_work(self) -> None:
        if self._draining():
            raise UnavailableError("this peer is draining and takes no new work; try another peer")


def _rpc(
    name: str, call: Callable[[str, bytes, str], Awaitable[bytes]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """Wrap a method: the one place where errors become gRPC statuses."""

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await call(name, raw, context.peer())  # limits key on who is calling
        except Exception as error:
            await _refuse(context, name, error)

    return handle


def _stream_rpc(
    name: str, stream: Callable[[str, bytes, str], AsyncGenerator[bytes, None]]
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncGenerator[bytes, None]]:
    """Wrap a streaming method: refusals become statuses as in :func:`_rpc`; a client that
    cancels closes the stream (gRPC cancels the handler), which stops the work."""

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(stream(name, raw, context.peer())) as messages:
                async for message in messages:
                    yield message
        except Exception as error:
            await _refuse(context, name, error)

    return handle


def _upload_rpc(
    name: str, upload: Callable[[str, AsyncIterator[bytes], str], AsyncGenerator[bytes, None]]
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncGenerator[bytes, None]]:
    """Wrap a bidirectional method as :func:`_stream_rpc` wraps a server-streaming one."""

    async def handle(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(upload(name, requests, context.peer())) as messages:
                async for message in messages:
                    yield message
        except Exception as error:
            await _refuse(context, name, error)

    return handle


async def _refuse(context: grpc.aio.ServicerContext, name: str, error: Exception) -> NoReturn:
    """The status a failed call ends with: an AtomicError's own code, anything else INTERNAL. The
    text is cut to ``MAX_STATUS_CHARS`` (a message may quote what the caller sent)."""
    if isinstance(error, AtomicError):
        details = bounded(str(error))
        log.debug("%s refused: %s %s", name, error.code.name, details)
        await _abort(context, error.code, details)
    # One line per failure, a traceback for a few per minute: a flood of one bug cannot fill the disk.
    trace = error if _TRACEBACKS.take(name, time.monotonic()) else None
    log.error(
        "%s failed unexpectedly (%s); the node keeps serving", name, bounded(repr(error)), exc_info=trace
    )
    await _abort(context, grpc.StatusCode.INTERNAL, f"{name} failed inside the peer; see its log")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it raises; this keeps type checkers honest


def build_server(
    *, max_message_bytes: int, max_pending_calls: int | None = None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with grpc.health.v1 and reflection; add :meth:`PeerService.handler` to it.
    Past ``max_pending_calls`` calls at once, gRPC answers RESOURCE_EXHAUSTED (docs/protocol.md)."""
    server = grpc.aio.server(
        maximum_concurrent_rpcs=max_pending_calls,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC sets SO_REUSEPORT by default, which lets a second node bind a busy port silently.
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    return server, health_servicer
