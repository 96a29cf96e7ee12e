"""The thin gRPC transport that drives a :class:`~atomic_p2p.gossip.membership.Membership`.

How this works
--------------
The protocol lives in the sans-I/O core; this module only moves its messages. A background task
calls :meth:`Membership.tick` at ``next_tick_at`` and runs each exchange it returns as a
``Gossip`` RPC over the shared :class:`~atomic_p2p.channels.ChannelPool`; the answer (or the
failure) goes back into the core, which may return the round's next exchange. Incoming ``Gossip``
RPCs are served by :meth:`GossipAgent.handle`. After every step the core's events update the
:class:`~atomic_p2p.gossip.directory.Directory` and wake anyone waiting in :meth:`wait_until`.

Failures: ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` mean the member may be gone (the core makes
it SUSPECT at once, Lifeguard style); any other status means it answered, so it is alive.
A node that stops gossips a signed Leave to ``fanout`` members first (:meth:`stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable

import grpc
from grpc import aio

from atomic_p2p import tls
from atomic_p2p._proto.atomic.v1 import gossip_pb2
from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import (
    LimitExceededError,
    PeerIdentityError,
    PlaintextPeerError,
    ProtocolError,
    UnavailableError,
)
from atomic_p2p.gossip.codec import (
    Opener,
    open_envelope,
    request_from_proto,
    request_to_proto,
    response_from_proto,
    response_to_proto,
)
from atomic_p2p.gossip.config import GossipConfig
from atomic_p2p.gossip.directory import Directory
from atomic_p2p.gossip.membership import Membership
from atomic_p2p.gossip.messages import WHO_ARE_YOU, MemberForgotten, MemberJoined, Outgoing, RecordUpdated
from atomic_p2p.gossip.records import (
    LoadSummary,
    ModelAdvert,
    PeerRecord,
    RecordLimits,
    Rejection,
    RejectReason,
)
from atomic_p2p.identity import Identity, PeerId
from atomic_p2p.protocol.wire import check_counts, parse
from atomic_p2p.sources import UNKNOWN, source_of, source_of_address

log = logging.getLogger(__name__)

_SUSPICIOUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
LEAVE_TIMEOUT_S = 1.0


async def fetch_record(pool: ChannelPool, address: str, timeout: float = 5.0) -> PeerRecord:
    """The signed record of the node at ``address``: its peer id, addresses and models.

    One ``Gossip`` call with :data:`~atomic_p2p.gossip.messages.WHO_ARE_YOU`; the answer's record
    is verified like any gossiped one. The record alone proves who signed it, not that this address
    is theirs (a node could relay another's record); over TLS the channel is opened first
    (:meth:`ChannelPool.open`), pinned to the certificate the server proves it holds, so only a
    record whose peer id matches that certificate's is taken. Raises :class:`ProtocolError` when no
    valid record comes back (a node older than digest summaries answers with none), or the call's
    gRPC error."""
    await pool.open(address, timeout_s=timeout)
    answer = await pool.stub(address).Gossip(request_to_proto(WHO_ARE_YOU), timeout=timeout)
    pin = pool.pin(tls.parse_address(address)[0])
    proven = None if pin is None or pin.certificate is None else pin.peer
    for envelope in response_from_proto(answer).updates:
        opened = open_envelope(envelope, RecordLimits())
        if not isinstance(opened, Rejection) and isinstance(opened.value, PeerRecord):
            if proven is not None and opened.value.peer_id != proven:
                continue  # a relayed record: not the one the handshake proved
            return opened.value
    raise ProtocolError(f"{address} answered without a valid signed record")


class GossipAgent:
    """One node's gossip: membership, directory, and the task that keeps them moving.

    Contract: create it inside a running event loop, ``await start()``, serve
    :meth:`handle` from the node's Gossip RPC, ``await stop()`` (which gossips a leave).
    """

    def __init__(
        self,
        identity: Identity,
        config: GossipConfig,
        *,
        addresses: Iterable[str] = (),
        models: Iterable[ModelAdvert] = (),
        seeds: Iterable[str] = (),
        pool: ChannelPool | None = None,
        load: Callable[[], LoadSummary] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        opener: Opener | None = None,
        tls_certificate: bytes = b"",
    ) -> None:
        """``opener`` verifies envelopes and caches the results; agents in one process may share
        one, as the simulator's nodes do (it changes the CPU spent, never an outcome).
        ``tls_certificate`` (DER, bound to ``identity``) goes into the signed record; empty for a
        node without TLS. Every record learned is handed to the pool, which pins its certificate."""
        self.config = config
        self._clock = clock
        self._load = load
        self.membership = Membership(
            identity,
            config,
            rng or random.Random(),
            now=clock(),
            addresses=addresses,
            models=models,
            seeds=seeds,
            load=load() if load else None,
            opener=opener,
            tls_certificate=tls_certificate,
        )
        self.directory = Directory()
        self._own_pool = pool is None
        self._pool = pool if pool is not None else ChannelPool()  # an empty pool is falsy
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self.exchanges_completed = 0
        self.failures: Counter[str] = Counter()  # failed exchanges by address (a seed's tries)
        self.last_failure: dict[str, str] = {}  # by address: the status of its latest failure
        self._absorb_events()

    @property
    def rpc_timeout_s(self) -> float:
        return max(0.5, 2 * self.config.interval)

    async def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="gossip")

    async def stop(self, *, leave: bool = True) -> None:
        """Gossip a signed leave (best effort, bounded), then stop every gossip task."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if leave and not self.membership.has_left:
            sends = [self._send(out, LEAVE_TIMEOUT_S) for out in self.membership.leave(self._clock())]
            await asyncio.gather(*sends, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_pool:
            await self._pool.close()

    # --- serving --------------------------------------------------------------------------------

    def handle(self, raw: bytes, connection: str) -> bytes:
        """Serve one Gossip RPC (raw request bytes in, raw response bytes out).

        Sizes and counts are checked on the wire before anything is converted: the message's
        bytes, then its digest entries and updates (:func:`check_counts`). The rate limit is keyed
        by the sender's peer id when it is a member with history here (or calls from this machine,
        where every peer shares the loopback address) and its signed record verifies, so one host
        can run many honest peers; else by the connection's address: fresh identities from one
        address share one bucket."""
        limits = self.config.limits
        rejected = self.membership.stats.rejected
        if len(raw) > limits.max_wire_bytes:
            rejected[RejectReason.TOO_LARGE] += 1
            raise LimitExceededError(
                f"a Gossip request of {len(raw)} bytes; the limit is {limits.max_wire_bytes}"
            )
        try:
            check_counts(
                raw, {2: limits.max_members, 3: limits.max_updates_per_message, 1: 1}, "GossipRequest"
            )
        except LimitExceededError:
            rejected[RejectReason.TOO_MANY_UPDATES] += 1  # the whole message, unread
            raise
        request = request_from_proto(parse(gossip_pb2.GossipRequest, raw, "GossipRequest"))
        source = source_of(connection)
        key = source.address or connection
        sender = request.sender
        if (
            sender is not None
            and (source.local or self.membership.has_history(sender.signer))
            and not isinstance(self.membership.opener(sender), Rejection)
        ):
            key = sender.signer.hex
        try:
            response = self.membership.handle_request(
                self._clock(), request, key, source.prefix if source is not UNKNOWN else None
            )
        finally:
            self._absorb_events()
        return response_to_proto(response).SerializeToString()

    def suspect(self, peer: PeerId) -> None:
        """This node's own call to ``peer`` found it unreachable: SUSPECT now (Lifeguard), which
        hides it from the directory until a newer heartbeat or record refutes it."""
        self.membership.suspect(self._clock(), peer)
        self._absorb_events()

    # --- waiting --------------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked after every membership change)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, self.config.interval))
        return True

    # --- driving the core -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            delay = self.membership.next_tick_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._load is not None:
                self.membership.set_load(self._load())
            outgoing = self.membership.tick(self._clock())
            self._absorb_events()
            for out in outgoing:
                self._spawn(out)

    def _spawn(self, outgoing: Outgoing) -> None:
        task = asyncio.create_task(self._exchange(outgoing))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _exchange(self, outgoing: Outgoing) -> None:
        try:
            follow_ups = await self._send(outgoing, self.rpc_timeout_s)
        except Exception:  # a bug here must not kill gossip; say so loudly
            log.exception("gossip exchange with %s failed unexpectedly", outgoing.address)
            return
        for follow_up in follow_ups:
            self._spawn(follow_up)

    def now(self) -> float:
        """The clock the membership runs on (seconds)."""
        return self._clock()

    async def _send(self, outgoing: Outgoing, timeout: float) -> list[Outgoing]:
        try:
            await self._pool.open(outgoing.address, outgoing.peer_id, timeout)
            stub = self._pool.stub(outgoing.address)
            answer = await stub.Gossip(request_to_proto(outgoing.request), timeout=timeout)
            response = response_from_proto(answer)
        except (PeerIdentityError, UnavailableError, PlaintextPeerError) as error:
            # not who it should be, or not there: suspect it; plaintext refused: it is up
            log.info("gossip to %s refused: %s", outgoing.address, error)
            follow_ups = self._failed(outgoing, error.code, not isinstance(error, PlaintextPeerError))
        except aio.AioRpcError as error:
            log.debug("gossip to %s failed: %s", outgoing.address, error.code().name)
            follow_ups = self._failed(outgoing, error.code(), error.code() in _SUSPICIOUS)
        except Exception as error:  # a malformed answer: the member is up but misbehaving
            log.warning("bad gossip answer from %s: %s", outgoing.address, error)
            follow_ups = self.membership.failed(self._clock(), outgoing, suspect=False)
        else:
            source = source_of_address(outgoing.address)
            follow_ups = self.membership.handle_response(
                self._clock(), outgoing, response, source.prefix if source is not UNKNOWN else None
            )
            self.exchanges_completed += 1
        self._absorb_events()
        return follow_ups

    def _failed(self, outgoing: Outgoing, code: grpc.StatusCode, suspect: bool) -> list[Outgoing]:
        """An exchange that got no answer: counted per address (the bootstrap warning reads it)."""
        self.failures[outgoing.address] += 1
        self.last_failure[outgoing.address] = code.name
        return self.membership.failed(self._clock(), outgoing, suspect=suspect)

    def _absorb_events(self) -> None:
        events = self.membership.pop_events()
        if events:
            self.directory.apply(events)
            for event in events:
                if isinstance(event, MemberJoined | RecordUpdated):
                    record = event.record
                    self._pool.learn(record.peer_id, record.addresses, record.tls_certificate or None)
                elif isinstance(event, MemberForgotten):
                    self._pool.forget(event.peer_id)
        self._changed.set()
