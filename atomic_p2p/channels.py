"""One gRPC channel per peer address, reused for every call (docs/architecture.md section 6).

A channel is an HTTP/2 connection with its own reconnect backoff; opening one per call costs a
TCP and TLS handshake each time and throws away that backoff state. The pool opens a channel the
first time an address is used and closes them all at once. The requester and the gossip transport
share this pool; a :class:`~atomic_p2p.faults.FaultPlan` (from the environment by default) adds
delay and loss to every outgoing call for fault-injection runs.

Every channel is TLS, pinned to one certificate bound to a peer id (:mod:`atomic_p2p.tls`):
``await pool.open(address)`` decides the pin before any call (``stub``, ``method`` and
``stream_method`` refuse an address that was not opened). The pin comes from the gossip record
of the only peer that claims the address (:meth:`ChannelPool.learn`), or, on first contact, from
the certificate the server presents, checked against the expected peer id (``PEERID@host:port``,
or the member the caller means to reach) or trusted on first use. A peer without TLS gets a
plaintext channel only when the pool allows plaintext (``--insecure``), else PlaintextPeerError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from grpc import aio

from atomic_p2p import tls
from atomic_p2p._proto.atomic.v1 import market_pb2_grpc
from atomic_p2p.errors import PeerIdentityError, PlaintextPeerError, UnavailableError
from atomic_p2p.faults import FaultInjector, FaultPlan
from atomic_p2p.identity import PeerId
from atomic_p2p.tensors import DEFAULT_LIMITS

log = logging.getLogger(__name__)

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
# How long a first-contact certificate fetch may take when the caller gives no timeout.
PROBE_TIMEOUT_S = 5.0
# How long a replaced channel (its peer's certificate changed) keeps serving calls already made.
RETIRE_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Pin:
    """What a channel trusts: the peer id and its certificate (DER), or ``certificate=None`` for
    a plaintext channel (``peer`` then known only from a record, if at all)."""

    peer: PeerId | None
    certificate: bytes | None


class ChannelPool:
    """Channels and stubs keyed by address. Create and use it inside one event loop."""

    def __init__(
        self,
        options: tuple[tuple[str, int], ...] = CHANNEL_OPTIONS,
        faults: FaultPlan | None = None,
        *,
        allow_plaintext: bool = False,
    ) -> None:
        """``allow_plaintext``: talk to peers that serve without TLS (``--insecure``; debugging)."""
        self._options = options
        self.allow_plaintext = allow_plaintext
        plan = FaultPlan.from_env() if faults is None else faults
        self.faults = FaultInjector(plan) if plan.active else None
        # from gossip records: each peer's certificate (None: it serves plaintext), and who
        # claims each address
        self._certificates: dict[PeerId, bytes | None] = {}
        self._claims: dict[str, dict[PeerId, None]] = {}
        self._pins: dict[str, Pin] = {}  # by plain host:port
        self._ready: set[tuple[str, PeerId | None]] = set()  # (address as given, expected peer)
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._channels: dict[str, aio.Channel] = {}
        self._stubs: dict[str, market_pb2_grpc.PeerStub] = {}
        self._methods: dict[tuple[str, str], aio.UnaryUnaryMultiCallable] = {}
        self._stream_methods: dict[tuple[str, str], aio.UnaryStreamMultiCallable] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._channels)

    # --- trust -------------------------------------------------------------------------------

    def learn(self, peer: PeerId, addresses: Iterable[str], certificate: bytes | None) -> None:
        """A verified gossip record: ``peer`` serves at ``addresses`` with ``certificate`` (whose
        binding the gossip codec checked; None: plaintext). A changed certificate re-pins the
        peer's channels on their next :meth:`open`."""
        if peer in self._certificates and self._certificates[peer] != certificate:
            self._unready(address for address, pin in self._pins.items() if pin.peer == peer)
        self._certificates[peer] = certificate
        for address in addresses:
            claims = self._claims.setdefault(address, {})
            if peer not in claims:
                claims[peer] = None
                self._unready((address,))  # a second claimant: the next open checks who is there

    def forget(self, peer: PeerId) -> None:
        """The member was dropped from the table: its claims go (pinned channels stay)."""
        self._certificates.pop(peer, None)
        for address in [a for a, claims in self._claims.items() if peer in claims]:
            del self._claims[address][peer]
            if not self._claims[address]:
                del self._claims[address]

    def pin(self, address: str) -> Pin | None:
        """What the channel for ``address`` (``host:port``) trusts, once it was opened."""
        return self._pins.get(address)

    def is_open(self, address: str, expected: PeerId | None = None) -> bool:
        """Whether :meth:`open` would return at once (the channel is pinned and still trusted)."""
        return (address, expected) in self._ready

    async def open(
        self, address: str, expected: PeerId | None = None, timeout_s: float | None = None
    ) -> None:
        """Decide what the channel for ``address`` (``host:port`` or ``PEERID@host:port``) trusts,
        fetching and checking the server's certificate on first contact (see the module
        docstring); ``expected`` is the peer the caller means to reach. Raises PeerIdentityError,
        PlaintextPeerError, or UnavailableError when the server cannot be reached."""
        if (address, expected) in self._ready:
            return
        plain, named = tls.parse_address(address)
        wanted = frozenset(p for p in (expected, named) if p is not None)
        if len(wanted) > 1:
            raise PeerIdentityError(f"{address[:200]} names another peer than {expected}")
        lock = self._locks.setdefault(plain, asyncio.Lock())
        async with lock:
            pin = await self._resolve(plain, wanted, PROBE_TIMEOUT_S if timeout_s is None else timeout_s)
            self._install(plain, pin)
        self._ready.add((address, expected))

    async def _resolve(self, address: str, wanted: frozenset[PeerId], timeout_s: float) -> Pin:
        claims = wanted or frozenset(self._claims.get(address, ()))
        current = self._pins.get(address)
        if current is not None and self._still_trusted(current, claims):
            return current
        if len(claims) == 1:
            (peer,) = claims
            if peer in self._certificates:  # its record says how it serves: no need to ask
                certificate = self._certificates[peer]
                if certificate is None:
                    _check_plaintext(address, f"peer {peer.short}'s record", self.allow_plaintext)
                return Pin(peer, certificate)
        return await _first_contact(address, claims, timeout_s, self.allow_plaintext)

    async def explain(self, address: str, details: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """After a call to ``address`` failed with ``details``: when the TLS handshake failed
        against a pinned certificate, ask the server who it is and raise PeerIdentityError naming
        both peers if it is someone else (the channel is re-pinned on the next open)."""
        pin = self._pins.get(_plain(address))
        lowered = details.lower()
        if pin is None or pin.peer is None or not ("handshake" in lowered or "verif" in lowered):
            return
        try:
            presented = await tls.fetch_certificate(_plain(address), timeout_s)
        except (UnavailableError, PlaintextPeerError):
            return
        if presented != pin.certificate:
            self._unready((_plain(address),))
            tls.check_peer(presented, _plain(address), frozenset({pin.peer}))
            # the same peer with a new certificate (its new record is on its way): its binding
            # proves it as well as the record would, so the next open pins it
            self._certificates[pin.peer] = presented

    def _still_trusted(self, pin: Pin, claims: frozenset[PeerId]) -> bool:
        """Whether an installed pin still serves: it is for a peer the caller accepts, and that
        peer's record has not since named another certificate."""
        if pin.peer is None:
            return not claims
        fits = pin.peer in claims or not claims
        return fits and self._certificates.get(pin.peer, pin.certificate) == pin.certificate

    def _install(self, address: str, pin: Pin) -> None:
        if self._closed:
            raise RuntimeError("the channel pool is closed")
        if self._pins.get(address) == pin and address in self._channels:
            return
        old = self._channels.pop(address, None)
        if old is not None:
            self._unready((address,))
            self._stubs.pop(address, None)
            self._methods = {key: m for key, m in self._methods.items() if _plain(key[0]) != address}
            self._stream_methods = {
                key: m for key, m in self._stream_methods.items() if _plain(key[0]) != address
            }
            task = asyncio.create_task(old.close(grace=RETIRE_GRACE_S))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        interceptors = [self.faults] if self.faults is not None else None
        channel = _new_channel(address, pin, self._options, interceptors)
        self._pins[address] = pin
        self._channels[address] = channel
        self._stubs[address] = market_pb2_grpc.PeerStub(channel)

    def _unready(self, addresses: Iterable[str]) -> None:
        gone = set(addresses)
        if gone:
            self._ready = {key for key in self._ready if _plain(key[0]) not in gone}

    # --- calls --------------------------------------------------------------------------------

    def stub(self, address: str) -> market_pb2_grpc.PeerStub:
        """The Peer stub for ``address``; ``await open(address)`` first."""
        if self._closed:
            raise RuntimeError("the channel pool is closed")
        stub = self._stubs.get(_plain(address))
        if stub is None:
            raise RuntimeError(f"{address[:200]} was not opened: await ChannelPool.open(address) first")
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
        return self._channels[_plain(address)]

    def channel_state(self, address: str) -> grpc.ChannelConnectivity | None:
        channel = self._channels.get(_plain(address))
        return None if channel is None else channel.get_state(try_to_connect=False)

    async def close(self, grace_s: float | None = None) -> None:
        """Close every channel; in-flight calls are cancelled after ``grace_s``."""
        self._closed = True
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        self._methods = {}
        self._stream_methods = {}
        self._ready = set()
        for channel in channels:
            await channel.close(grace=grace_s)
        await asyncio.gather(*self._retiring, return_exceptions=True)


async def connect(
    address: str,
    *,
    allow_plaintext: bool = False,
    options: tuple[tuple[str, int], ...] = CHANNEL_OPTIONS,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> tuple[aio.Channel, Pin]:
    """One channel outside a pool (tools, tests, raw stubs), trusted as :meth:`ChannelPool.open`
    trusts a first contact: pinned to the certificate the server at ``address`` presents, which
    must be bound to the peer id named in ``PEERID@host:port`` (any, logged, without one)."""
    plain, named = tls.parse_address(address)
    pin = await _first_contact(plain, frozenset({named} if named else ()), timeout_s, allow_plaintext)
    return _new_channel(plain, pin, options, None), pin


async def _first_contact(
    address: str, claims: frozenset[PeerId], timeout_s: float, allow_plaintext: bool
) -> Pin:
    """Fetch the certificate the server presents and check it is bound to one of ``claims``
    (trust on first use, logged, when there are none)."""
    try:
        certificate = await tls.fetch_certificate(address, timeout_s)
    except PlaintextPeerError:
        _check_plaintext(address, "the server", allow_plaintext)
        return Pin(None, None)
    peer = tls.check_peer(certificate, address, claims)
    if not claims:
        log.warning("trust on first use: %s presented a certificate bound to peer %s", address, peer)
    return Pin(peer, certificate)


def _check_plaintext(address: str, who: str, allowed: bool) -> None:
    if not allowed:
        raise PlaintextPeerError(
            f"{address}: {who} offers no TLS; plaintext peers are refused (allow them with --insecure)"
        )
    log.warning("talking plaintext to %s (--insecure)", address)


def _new_channel(
    address: str, pin: Pin, options: tuple[tuple[str, int], ...], interceptors: list[FaultInjector] | None
) -> aio.Channel:
    if pin.certificate is None:
        return aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    assert pin.peer is not None  # a certificate always names its peer
    named: list[tuple[str, int | str]] = [
        *options,
        ("grpc.ssl_target_name_override", tls.server_name(pin.peer)),
    ]
    credentials = tls.channel_credentials(pin.certificate)
    return aio.secure_channel(address, credentials, options=named, interceptors=interceptors)


def _plain(address: str) -> str:
    """``host:port`` of ``PEERID@host:port`` (and of ``host:port``)."""
    return address.rpartition("@")[2]
