"""Sellers in one process, reached by address with no sockets: the requester's other transport.

How this works
--------------
:class:`InMemoryNetwork` hosts peers: each is the same seller core (:class:`~atomic_p2p.peer.seller.Seller`)
and servicer (:class:`~atomic_p2p.peer.server.PeerService`) a running ``atomic-peer`` uses, minus
the gRPC server. :meth:`InMemoryNetwork.transport` gives a
:class:`~atomic_p2p.requester.transport.Transport` that encodes each call with the market codec,
hands the bytes to the addressed peer's :meth:`PeerService.call` (a streaming call to
:meth:`PeerService.stream`, whose generator it closes when the caller does, as a gRPC cancel
does), and decodes the answer: every
byte a real peer would check is checked, and a refusal comes back as the same
:class:`~atomic_p2p.errors.AtomicError` class (and status code) the gRPC transport would raise.

Everything waits on one :class:`~atomic_p2p.clock.Clock`. On a
:class:`~atomic_p2p.clock.FakeClock` the peers run their models inline (no worker threads), so a
whole auction, with its deadlines, late bidders and fallbacks, runs in microseconds and the same
way every time. Faults are set per address: :meth:`InMemoryNetwork.delay` (every call waits that
long on the clock before the peer sees it), :meth:`InMemoryNetwork.fail` (every call fails with
that error) and :meth:`InMemoryNetwork.remove`. :attr:`InMemoryNetwork.calls` counts calls per
(address, method).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field

from atomic_p2p.clock import SYSTEM_CLOCK, Clock, wait_for
from atomic_p2p.errors import AtomicError, DeadlineError, ExecutionError, UnavailableError, from_status
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.node import load_models
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.server import PeerService
from atomic_p2p.peer.workers import WorkerPool
from atomic_p2p.requester.transport import BytesTransport


@dataclass(slots=True)
class _Draining:
    value: bool = False

    def get(self) -> bool:
        return self.value


@dataclass(slots=True)
class InMemoryPeer:
    """One hosted peer: its address, key, seller, servicer and worker pool."""

    address: str
    identity: Identity
    seller: Seller
    service: PeerService
    workers: WorkerPool[bytes]
    _draining: _Draining
    models: Mapping[str, HostedModel] = field(default_factory=dict)
    # Faults, per method ("" for every method): how long a call waits first, what it fails with.
    delays: dict[str, float] = field(default_factory=dict)
    failures: dict[str, AtomicError] = field(default_factory=dict)

    @property
    def draining(self) -> bool:
        return self._draining.value

    def drain(self) -> None:
        """Refuse new work from now on (UNAVAILABLE), as a draining node does."""
        self._draining.value = True


class InMemoryNetwork:
    """Peers in this process, by address (see the module docstring). Use inside one event loop."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.calls: Counter[tuple[str, str]] = Counter()
        self._peers: dict[str, InMemoryPeer] = {}
        self._numbers = itertools.count(1)

    def add_peer(
        self,
        config: PeerConfig,
        *,
        models: Mapping[str, HostedModel] | None = None,
        identity: Identity | None = None,
        address: str | None = None,
    ) -> InMemoryPeer:
        """Host a peer for ``config``: its models are loaded from the config (factories may train)
        unless given. The address defaults to ``mem-<n>:<config.name>``."""
        hosted = dict(models) if models is not None else load_models(config)
        identity = identity or Identity.generate()
        address = address or f"mem-{next(self._numbers)}:{config.name}"
        if address in self._peers:
            raise ValueError(f"{address} is already on this network")
        workers: WorkerPool[bytes] = WorkerPool(
            max_concurrency=config.max_concurrency,
            queue_limit=config.queue_limit,
            result_ttl_s=config.bid_validity_s + config.replay_window_s,
            max_results=config.max_remembered,
            clock=self.clock.monotonic,
            offload=self.clock.run_blocking,
        )
        seller = Seller(
            identity=identity,
            models=hosted,
            config=config,
            started_at_ms=self.clock.wall_ms(),
            clock=self.clock.wall_ms,
        )
        state = _Draining()
        service = PeerService(
            seller,
            workers,
            draining=state.get,
            clock=self.clock.wall_ms,
            offload=self.clock.run_blocking,
        )
        peer = InMemoryPeer(address, identity, seller, service, workers, state, models=hosted)
        self._peers[address] = peer
        return peer

    def peer(self, address: str) -> InMemoryPeer:
        found = self._peers.get(address)
        if found is None:
            raise UnavailableError(f"no peer at {address} on this network")
        return found

    @property
    def addresses(self) -> list[str]:
        return list(self._peers)

    def delay(self, address: str, seconds: float, *, method: str = "") -> None:
        """Later calls to ``address`` (of ``method`` only, if given: "Execute", "RequestBids",
        ...) wait ``seconds`` on the clock before the peer sees them; 0 removes the delay."""
        self.peer(address).delays[method] = seconds

    def fail(self, address: str, error: AtomicError | None, *, method: str = "") -> None:
        """Later calls to ``address`` (of ``method`` only, if given) fail with ``error``, as if
        the peer had answered with its status code; None lets them through again."""
        failures = self.peer(address).failures
        if error is None:
            failures.pop(method, None)
        else:
            failures[method] = error

    def remove(self, address: str) -> None:
        """Take a peer off the network: calls to it are UNAVAILABLE, as for a dead host."""
        peer = self._peers.pop(address)
        peer.workers.close()

    def transport(self) -> InMemoryTransport:
        return InMemoryTransport(self)

    def close(self) -> None:
        for address in list(self._peers):
            self.remove(address)

    async def _reach(self, address: str, method: str) -> InMemoryPeer:
        """What happens before a call reaches the peer: counted, delayed, failed or gone."""
        self.calls[(address, method)] += 1
        peer = self.peer(address)
        delay = peer.delays.get(method, 0.0) + peer.delays.get("", 0.0)
        if delay > 0:
            await self.clock.sleep(delay)
        failure = peer.failures.get(method) or peer.failures.get("")
        if failure is not None:
            raise failure
        if address not in self._peers:
            raise UnavailableError(f"{address} left the network")
        return peer

    async def deliver(self, address: str, method: str, raw: bytes) -> bytes:
        """What the wire would do with request bytes: the peer's answer bytes, or its refusal."""
        peer = await self._reach(address, method)
        return await peer.service.call(method, raw, caller=f"memory:{address}")

    async def deliver_stream(self, address: str, method: str, raw: bytes) -> AsyncGenerator[bytes, None]:
        """A streaming call as the wire would carry it: the peer's messages, or its refusal.
        Closing this generator closes the peer's stream, as a client's cancel does."""
        peer = await self._reach(address, method)
        async with aclosing(peer.service.stream(method, raw)) as messages:
            async for message in messages:
                yield message

    async def deliver_upload(
        self, address: str, method: str, requests: Iterator[bytes]
    ) -> AsyncGenerator[bytes, None]:
        """A bidirectional call as the wire would carry it (:meth:`deliver_stream`'s rules)."""
        peer = await self._reach(address, method)

        async def sent() -> AsyncIterator[bytes]:
            for request in requests:
                yield request

        async with aclosing(peer.service.upload(method, sent())) as messages:
            async for message in messages:
                yield message


class InMemoryTransport(BytesTransport):
    """:class:`~atomic_p2p.requester.transport.Transport` over an :class:`InMemoryNetwork`: the
    same codec bytes as gRPC, handed to the peer's servicer, with the call's timeout on the clock."""

    def __init__(self, network: InMemoryNetwork) -> None:
        self._network = network

    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        try:
            return await wait_for(
                self._network.clock, self._network.deliver(address, method, request), timeout_s
            )
        except TimeoutError:
            raise DeadlineError(f"DEADLINE_EXCEEDED: no answer within {timeout_s:.2f} s") from None
        except AtomicError as error:
            raise _as_received(error) from None
        except Exception as error:  # the peer's bug: what gRPC would answer, INTERNAL
            raise from_status(ExecutionError.code, f"{method} failed inside the peer: {error!r}") from None

    def send_stream(
        self, address: str, method: str, request: bytes, timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        return self._received(method, self._network.deliver_stream(address, method, request), timeout_s)

    def send_upload(
        self, address: str, method: str, requests: Iterator[bytes], timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        return self._received(method, self._network.deliver_upload(address, method, requests), timeout_s)

    async def _received(
        self, method: str, delivered: AsyncGenerator[bytes, None], timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        """A streaming call's answers as a gRPC client sees them: within the call's timeout on the
        clock, the peer's refusals as their status codes, its bugs as INTERNAL."""
        clock = self._network.clock
        ends = clock.monotonic() + timeout_s
        async with aclosing(delivered) as messages:
            while True:
                try:
                    yield await wait_for(clock, anext(messages), ends - clock.monotonic())
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise DeadlineError(
                        f"DEADLINE_EXCEEDED: the stream outlasted {timeout_s:.2f} s"
                    ) from None
                except AtomicError as error:
                    raise _as_received(error) from None
                except Exception as error:  # the peer's bug: what gRPC would answer, INTERNAL
                    raise from_status(
                        ExecutionError.code, f"{method} failed inside the peer: {error!r}"
                    ) from None


def _as_received(error: AtomicError) -> AtomicError:
    """The error as a gRPC client would see it: the class its status code maps to."""
    return from_status(error.code, str(error))
