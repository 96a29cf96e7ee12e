"""One gRPC channel per peer address, reused for every call (docs/architecture.md section 6).

A channel is an HTTP/2 connection with its own reconnect backoff; opening one per call costs a
TCP (and later TLS) handshake each time and throws away that backoff state. The pool opens a
channel the first time an address is used and closes them all at once. The requester and the
gossip transport share this pool; a :class:`~atomic_p2p.faults.FaultPlan` (from the environment by
default) adds delay and loss to every outgoing call for fault-injection runs.
"""

from __future__ import annotations

import grpc
from grpc import aio

from atomic_p2p._proto.atomic.v1 import market_pb2_grpc
from atomic_p2p.faults import FaultInjector, FaultPlan
from atomic_p2p.tensors import DEFAULT_LIMITS

# Room for one maximal tensor plus the envelopes and framing around it.
MAX_MESSAGE_BYTES = DEFAULT_LIMITS.max_bytes + 4 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Fail fast on a dead peer and try again soon: the auction has its own fallback.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 30_000),
)


class ChannelPool:
    """Channels and stubs keyed by address. Create and use it inside one event loop."""

    def __init__(
        self, options: tuple[tuple[str, int], ...] = CHANNEL_OPTIONS, faults: FaultPlan | None = None
    ) -> None:
        self._options = options
        plan = FaultPlan.from_env() if faults is None else faults
        self.faults = FaultInjector(plan) if plan.active else None
        self._channels: dict[str, aio.Channel] = {}
        self._stubs: dict[str, market_pb2_grpc.PeerStub] = {}
        self._methods: dict[tuple[str, str], aio.UnaryUnaryMultiCallable] = {}
        self._stream_methods: dict[tuple[str, str], aio.UnaryStreamMultiCallable] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._channels)

    def stub(self, address: str) -> market_pb2_grpc.PeerStub:
        """The Peer stub for ``address``, opening its channel on first use."""
        if self._closed:
            raise RuntimeError("the channel pool is closed")
        stub = self._stubs.get(address)
        if stub is None:
            interceptors = [self.faults] if self.faults is not None else None
            channel = aio.insecure_channel(address, options=list(self._options), interceptors=interceptors)
            self._channels[address] = channel
            stub = self._stubs[address] = market_pb2_grpc.PeerStub(channel)
        return stub

    def method(self, address: str, name: str) -> aio.UnaryUnaryMultiCallable:
        """``/atomic.v1.Peer/<name>`` on ``address``, taking and returning raw bytes (the market
        codec does the encoding)."""
        callable_ = self._methods.get((address, name))
        if callable_ is None:
            # Registered, as the generated stubs register theirs: gRPC then skips resolving the
            # method path on every call (measured: the auction round was ~15% slower without).
            callable_ = self.channel(address).unary_unary(f"/atomic.v1.Peer/{name}", _registered_method=True)
            self._methods[(address, name)] = callable_
        return callable_

    def stream_method(self, address: str, name: str) -> aio.UnaryStreamMultiCallable:
        """The server-streaming ``/atomic.v1.Peer/<name>`` on ``address``, raw bytes in and out,
        registered as :meth:`method` registers its calls."""
        callable_ = self._stream_methods.get((address, name))
        if callable_ is None:
            callable_ = self.channel(address).unary_stream(f"/atomic.v1.Peer/{name}", _registered_method=True)
            self._stream_methods[(address, name)] = callable_
        return callable_

    def channel(self, address: str) -> aio.Channel:
        """The channel for ``address`` (for other services on the same peer, e.g. health)."""
        self.stub(address)
        return self._channels[address]

    def channel_state(self, address: str) -> grpc.ChannelConnectivity | None:
        channel = self._channels.get(address)
        return None if channel is None else channel.get_state(try_to_connect=False)

    async def close(self, grace_s: float | None = None) -> None:
        """Close every channel; in-flight calls are cancelled after ``grace_s``."""
        self._closed = True
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        self._methods = {}
        self._stream_methods = {}
        for channel in channels:
            await channel.close(grace=grace_s)
