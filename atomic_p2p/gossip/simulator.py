"""Many gossip nodes in one process on a virtual clock: loss, delay, crashes, partitions, joins.

How this works
--------------
A discrete-event simulation: one heap of ``(time, order, event)``; no asyncio, no sockets, no
wall clock. Every node is a real :class:`~atomic_p2p.gossip.membership.Membership` with a real
Ed25519 key (``Identity.from_seed``) that signs real records and heartbeats. The simulator plays
the transport: it calls ``tick`` at each node's ``next_tick_at`` (phases are random, as on a
real network), carries each :class:`Outgoing` as an RPC whose request and response are each lost
with probability ``loss`` and delayed by ``delay_min..delay_max`` (uniform), and reports a lost
or unanswered call to the initiator with ``failed`` after ``rpc_timeout``, as a gRPC deadline
would. A crashed node neither ticks nor answers; nodes in different partition groups cannot reach
each other until :meth:`Simulator.heal`.

Signature checks are shared. All nodes use one :class:`~atomic_p2p.gossip.codec.Opener`, so each
envelope is verified once for the whole simulation instead of once per node: opening depends only
on the envelope and the limits, so this changes how much CPU the simulation burns and nothing
else (in production each node has its own cache and verifies each new envelope once). Without it
1000 nodes would spend most of their time re-verifying the same heartbeats.

Bytes are the exact protobuf sizes (:func:`~atomic_p2p.gossip.codec.request_wire_size`), counted
at the sender, when ``measure_bytes`` is on.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from atomic_p2p.errors import LimitExceededError
from atomic_p2p.gossip.codec import Opener, digest_size, request_wire_size, response_wire_size
from atomic_p2p.gossip.config import GossipConfig
from atomic_p2p.gossip.membership import Membership
from atomic_p2p.gossip.messages import GossipResponse, MembershipEvent, Outgoing
from atomic_p2p.gossip.records import ModelAdvert
from atomic_p2p.identity import Identity
from atomic_p2p.terms import ModelConstraints

START = 1_700_000_000.0
"""Virtual wall clock at the start of every simulation (seconds since the Unix epoch)."""

_TICK, _REQUEST, _RESPONSE, _FAIL = range(4)
CAPABILITIES = ("classify", "embed", "translate", "summarize", "detect")

Observer = Callable[[int, float, MembershipEvent], None]


@dataclass(frozen=True, slots=True)
class Network:
    loss: float = 0.0
    """Probability that one message (a request or a response) is lost."""
    delay_min: float = 0.002
    delay_max: float = 0.050
    rpc_timeout: float = 0.5
    """When the initiator of a lost or unanswered exchange learns that it failed."""


def default_models(index: int) -> tuple[ModelAdvert, ...]:
    """One model per node, capabilities rotating through :data:`CAPABILITIES`."""
    capability = CAPABILITIES[index % len(CAPABILITIES)]
    constraints = ModelConstraints(max_input_tokens=512, supported_languages=("en", "de"), max_batch=32)
    return (ModelAdvert(f"model-{index}", (capability,), constraints, price_hint=1.0 + index % 7),)


@dataclass(slots=True)
class SimNode:
    index: int
    address: str
    identity: Identity
    membership: Membership
    up: bool = True
    group: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0


@dataclass(slots=True)
class _Totals:
    messages: int = 0
    lost: int = 0
    failed: int = 0
    rate_limited: int = 0


class Simulator:
    """``size`` nodes, started with full knowledge of each other (``bootstrap="full"``, as if
    already converged) or knowing only the first ``seed_count`` nodes (``bootstrap="seeds"``)."""

    def __init__(
        self,
        size: int,
        *,
        config: GossipConfig | None = None,
        network: Network | None = None,
        seed: int = 0,
        bootstrap: str = "full",
        seed_count: int = 3,
        models: Callable[[int], tuple[ModelAdvert, ...]] = default_models,
        measure_bytes: bool = False,
        observer: Observer | None = None,
    ) -> None:
        self.config = config or GossipConfig()
        self.network = network or Network()
        self.seed = seed
        self.now = START
        self.measure_bytes = measure_bytes
        self.observer = observer
        self.totals = _Totals()
        self.nodes: list[SimNode] = []
        self._models = models
        self._rng = random.Random(f"network/{seed}")
        self._queue: list[tuple[float, int, int, object]] = []
        self._order = 0
        self._by_address: dict[str, SimNode] = {}
        self._opener = Opener(self.config.limits.record, max_entries=max(50_000, 60 * size))
        self._last_digest: tuple[object, int] | None = None
        seeds = [self._address(i) for i in range(min(seed_count, size))]
        for _ in range(size):
            self.add_node(seeds=seeds if bootstrap == "seeds" else ())
        if bootstrap == "full":
            # records only: every node's first heartbeat is beat 0, which adds nothing to them
            records = [node.membership.snapshot()[0] for node in self.nodes]
            for node in self.nodes:
                node.membership.absorb(self.now, records)
                node.membership.pop_events()
        elif bootstrap != "seeds":
            raise ValueError(f"bootstrap is 'full' or 'seeds', not {bootstrap!r}")

    # --- building and breaking ----------------------------------------------------------------

    @staticmethod
    def _address(index: int) -> str:
        return f"sim-{index}:7000"

    def add_node(self, seeds: Iterable[str] = (), models: tuple[ModelAdvert, ...] | None = None) -> SimNode:
        """Start a node now; it first ticks at a random phase within one interval."""
        index = len(self.nodes)
        identity = Identity.from_seed(f"sim/{self.seed}/{index}".encode())
        membership = Membership(
            identity,
            self.config,
            random.Random(f"node/{self.seed}/{index}"),
            now=self.now,
            addresses=(self._address(index),),
            models=self._models(index) if models is None else models,
            seeds=seeds,
            opener=self._opener,
        )
        node = SimNode(index, self._address(index), identity, membership)
        self.nodes.append(node)
        self._by_address[node.address] = node
        self._schedule(self.now + self._rng.uniform(0, self.config.interval), _TICK, node)
        return node

    def crash(self, index: int) -> None:
        """The node stops ticking and answering (its state is kept, but it never runs again)."""
        self.nodes[index].up = False

    def leave(self, index: int) -> None:
        """Graceful shutdown: gossip a signed leave, then stop ticking (it still answers)."""
        node = self.nodes[index]
        for outgoing in node.membership.leave(self.now):
            self._send(node, outgoing)
        self._drain(node)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Nodes in different groups cannot reach each other; unlisted nodes form one more group."""
        for node in self.nodes:
            node.group = 0
        for number, group in enumerate(groups, start=1):
            for index in group:
                self.nodes[index].group = number

    def heal(self) -> None:
        self.partition(())

    # --- running ------------------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= until:
            when, _, kind, item = heapq.heappop(queue)
            self.now = when
            if kind == _TICK:
                self._on_tick(item)  # type: ignore[arg-type]
            elif kind == _REQUEST:
                self._on_request(*item)  # type: ignore[misc]
            elif kind == _RESPONSE:
                self._on_response(*item)  # type: ignore[misc]
            else:
                self._on_fail(*item)  # type: ignore[misc]
        self.now = max(self.now, until)

    def run_rounds(self, rounds: float) -> None:
        self.run_until(self.now + rounds * self.config.interval)

    def live_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes if node.up and not node.membership.has_left]

    # --- the transport ------------------------------------------------------------------------

    def _schedule(self, when: float, kind: int, item: object) -> None:
        self._order += 1
        heapq.heappush(self._queue, (when, self._order, kind, item))

    def _delay(self) -> float:
        return self._rng.uniform(self.network.delay_min, self.network.delay_max)

    def _drain(self, node: SimNode) -> None:
        events = node.membership.pop_events()
        if self.observer is not None:
            for event in events:
                self.observer(node.index, self.now, event)

    def _on_tick(self, node: SimNode) -> None:
        if not node.up:
            return
        outgoing = node.membership.tick(self.now)
        self._drain(node)
        for item in outgoing:
            self._send(node, item)
        if not node.membership.has_left:
            self._schedule(node.membership.next_tick_at, _TICK, node)

    def _send(self, node: SimNode, outgoing: Outgoing) -> None:
        self.totals.messages += 1
        node.messages_sent += 1
        if self.measure_bytes:
            node.bytes_sent += self._request_size(outgoing)
        target = self._by_address.get(outgoing.address)
        deadline = self.now + self.network.rpc_timeout
        if target is None or target.group != node.group or self._rng.random() < self.network.loss:
            self.totals.lost += 1
            self._schedule(deadline, _FAIL, (node, outgoing))
            return
        self._schedule(self.now + self._delay(), _REQUEST, (node, target, outgoing, deadline))

    def _request_size(self, outgoing: Outgoing) -> int:
        digest = outgoing.request.digest
        if self._last_digest is None or self._last_digest[0] is not digest:
            self._last_digest = (digest, digest_size(digest))
        return request_wire_size(outgoing.request, digest_bytes=self._last_digest[1])

    def _on_request(self, node: SimNode, target: SimNode, outgoing: Outgoing, deadline: float) -> None:
        if not target.up:
            self._schedule(deadline, _FAIL, (node, outgoing))
            return
        try:
            response = target.membership.handle_request(self.now, outgoing.request, node.address)
        except LimitExceededError:
            self.totals.rate_limited += 1
            return
        finally:
            self._drain(target)
        if outgoing.request.is_push:
            return
        self.totals.messages += 1
        if self.measure_bytes:
            target.bytes_sent += response_wire_size(response)
        arrives = self.now + self._delay()
        if target.group != node.group or self._rng.random() < self.network.loss or arrives > deadline:
            self.totals.lost += 1
            self._schedule(deadline, _FAIL, (node, outgoing))
            return
        self._schedule(arrives, _RESPONSE, (node, outgoing, response))

    def _on_response(self, node: SimNode, outgoing: Outgoing, response: GossipResponse) -> None:
        if not node.up:
            return
        follow_ups = node.membership.handle_response(self.now, outgoing, response)
        self._drain(node)
        for item in follow_ups:
            self._send(node, item)

    def _on_fail(self, node: SimNode, outgoing: Outgoing) -> None:
        if not node.up:
            return
        self.totals.failed += 1
        next_exchanges = node.membership.failed(self.now, outgoing)
        self._drain(node)
        for item in next_exchanges:
            self._send(node, item)
