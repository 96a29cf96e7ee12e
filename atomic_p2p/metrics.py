"""Prometheus metrics of a peer, a requester or a gateway: one registry per process.

How this works
--------------
Every metric object lives here, in :data:`REGISTRY` (a registry of our own, so an application
that embeds the SDK keeps its default registry to itself). Code elsewhere makes one-line calls
(:func:`bids_issued`, :func:`auction_round`, ...) at the spot where a thing happens; occupancy
(bid book, worker queue, request queue, gossip members by state and the records gossip refused)
is read when Prometheus scrapes, from the nodes and requesters that :func:`watch` registered, so
nothing is counted twice and nothing polls. :func:`serve` starts the HTTP endpoint
(``GET /metrics``) that ``--metrics-port`` turns on: ``atomic-peer``, ``atomic run``,
``scripts/testnet.py``'s requester, and any long-running process (a gateway) call it once.

Conventions (https://prometheus.io/docs/practices/naming/): an ``atomic_`` prefix, base units in
the name (``_seconds``), ``_total`` on counters, and label sets bounded by this code, never by a
caller: gRPC methods and codes, no-bid reasons and gossip reject reasons are enums (anything
else becomes ``other``), and ``model`` is a model id from the peer's own config. Peer ids,
addresses and capabilities, which come from others, are never labels. A process hosting several
nodes (tests, :mod:`atomic_p2p.testing`) reports their sum. docs/observability.md lists every
metric.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from atomic_p2p.gossip.membership import Membership
    from atomic_p2p.requester.auction import Collected

REGISTRY = CollectorRegistry()
# The standard process_* (CPU, memory, open files) and python_info metrics, as any exporter has.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Latency buckets from 1 ms to 30 s: model calls on this market run from ~0.1 ms to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Prices are in the market's cost units; example peers quote 0.001 to 1 per call.
PRICE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

_CODES = frozenset(code.name for code in grpc.StatusCode)
# Why a requester got no bid: a peer's NoBidReason (lower case), a gRPC code, or an early close.
_NO_BID_REASONS = frozenset(
    {
        "unspecified",
        "unknown_capability",
        "unknown_model",
        "overloaded",
        "constraint_violated",
        "bad_input_spec",
        "deadline_too_short",
        "below_cost",
        "draining",
        "model_error",
        "TMAX",
        "GRACE",
    }
    | _CODES
)
_FEEDBACK_KINDS = frozenset({"win", "loss", "outcome"})
OTHER = "other"

# --- the peer -----------------------------------------------------------------------------------

RPC_SERVED = CounterMetric(
    "atomic_rpc_server_handled",
    "gRPC calls a peer finished serving, by method and status code",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_SERVED_SECONDS = Histogram(
    "atomic_rpc_server_handling_seconds",
    "How long a peer took to serve a gRPC call, by method",
    ["method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
PEER_BIDS = CounterMetric(
    "atomic_peer_bids", "Bids a peer signed, by hosted model", ["model"], registry=REGISTRY
)
PEER_NO_BIDS = CounterMetric(
    "atomic_peer_no_bids", "Tasks a peer declined, by reason", ["reason"], registry=REGISTRY
)
PEER_QUOTED_PRICE = Histogram(
    "atomic_peer_quoted_price",
    "The cost a peer quoted in its bids (market cost units), by hosted model",
    ["model"],
    buckets=PRICE_BUCKETS,
    registry=REGISTRY,
)
PEER_AUCTION_RESULTS = CounterMetric(
    "atomic_peer_auction_results",
    "Feedback notices a peer accepted: result win, loss or outcome, by hosted model",
    ["model", "result"],
    registry=REGISTRY,
)
PEER_EXECUTION_SECONDS = Histogram(
    "atomic_peer_execution_seconds",
    "Paid executions a peer signed a result for (unary, streamed or generated) and their compute "
    "time, by hosted model",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
PEER_GRADIENT_UPDATES = CounterMetric(
    "atomic_peer_gradient_updates",
    "BidGradient updates a peer applied or refused (code: the refusal's gRPC status)",
    ["result", "code"],
    registry=REGISTRY,
)

# --- the requester ------------------------------------------------------------------------------

RPC_CALLED = CounterMetric(
    "atomic_rpc_client_handled",
    "gRPC calls a requester made to peers, by method and status code",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_CALLED_SECONDS = Histogram(
    "atomic_rpc_client_handling_seconds",
    "How long a requester's gRPC call to a peer took, by method",
    ["method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
AUCTION_ROUND_SECONDS = Histogram(
    "atomic_requester_auction_round_seconds",
    "One bid-collection round, from the first RequestBids until every answer was in and verified",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REQUESTER_BIDS = CounterMetric(
    "atomic_requester_bids_received", "Bids that verified and bound to their call", registry=REGISTRY
)
REQUESTER_NO_BIDS = CounterMetric(
    "atomic_requester_no_bids",
    "Peers that gave no usable bid for a task: kind declined, unreachable, invalid or late; reason "
    "a no-bid reason, a gRPC code, TMAX or GRACE",
    ["kind", "reason"],
    registry=REGISTRY,
)
REQUESTER_QUOTED_PRICE = Histogram(
    "atomic_requester_quoted_price",
    "The cost of each verified bid a requester received (market cost units)",
    buckets=PRICE_BUCKETS,
    registry=REGISTRY,
)
REQUESTER_TASKS = CounterMetric(
    "atomic_requester_tasks",
    "Microtasks a requester settled: outcome delivered, no_bids or failed (every bid failed)",
    ["outcome"],
    registry=REGISTRY,
)
REQUESTER_PAID = Histogram(
    "atomic_requester_price_paid",
    "The price a requester paid for a delivered microtask (market cost units)",
    buckets=PRICE_BUCKETS,
    registry=REGISTRY,
)
REQUESTER_EXECUTIONS = CounterMetric(
    "atomic_requester_executions",
    "Execute attempts on a bid, by status code (OK: a verified result)",
    ["code"],
    registry=REGISTRY,
)
REQUESTER_EXECUTION_SECONDS = Histogram(
    "atomic_requester_execution_seconds",
    "One Execute attempt, order signed to result verified (or failure)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REQUESTER_FALLBACKS = CounterMetric(
    "atomic_requester_fallbacks",
    "Times a requester moved to a runner-up bid after an attempt failed, by kind execute or generate",
    ["kind"],
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "atomic_requester_time_to_first_token_seconds",
    "From a generation's first ExecuteStream call to its first token",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def bounded(value: str, allowed: frozenset[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: labels never take a caller's text."""
    return value if value in allowed else OTHER


def code_name(code: object) -> str:
    """A gRPC status code's name (OK for None: a call that ended without one failed no check)."""
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else OTHER


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: label sets are bounded, and the lookup under
    prometheus_client's lock costs as much as the increment."""
    return _children(metric, labels)


@functools.lru_cache(maxsize=4096)
def _children(metric: Any, labels: tuple[str, ...]) -> Any:
    return metric.labels(*labels)


# --- one-line calls at the instrumented spots ---------------------------------------------------


def bids_issued(model: str, costs: Sequence[float]) -> None:
    """A peer signed bids for ``model`` at these costs (one call for bids' worth at once)."""
    if costs:
        _child(PEER_BIDS, model).inc(len(costs))
        observe_all(_child(PEER_QUOTED_PRICE, model), costs)


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(value)`` for every value, taking each bucket's lock once, not two
    locks per value (a peer's batch of bids took ~5 us per bid in prometheus_client's locks).
    A client without the internals this reads (``_upper_bounds``, ``_buckets``, ``_sum``)
    observes one by one; tests check that both give the same exposition."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(values) < 2:
        for value in values:
            histogram.observe(value)
        return
    histogram._raise_if_not_observable()
    # observe() counts a value in the first bucket whose bound is >= it (the last is +Inf).
    # A NaN reaches no bucket there (every comparison is false), only the sum.
    counts = Counter(bisect.bisect_left(bounds, value) for value in values if value == value)
    total.inc(sum(values))
    for index, count in counts.items():
        buckets[index].inc(count)


def no_bid(reason: Any) -> None:
    """A peer declined a task; ``reason`` is a NoBidReason."""
    _child(PEER_NO_BIDS, bounded(str(getattr(reason, "value", reason)), _NO_BID_REASONS)).inc()


def auction_result(model: str, kind: Any) -> None:
    """A peer accepted a feedback notice; ``kind`` is a FeedbackKind (win, loss, outcome)."""
    _child(PEER_AUCTION_RESULTS, model, bounded(str(kind.value), _FEEDBACK_KINDS)).inc()


def executed(model: str, compute_ms: float) -> None:
    _child(PEER_EXECUTION_SECONDS, model).observe(max(0.0, compute_ms) / 1000)


def rpc_served(method: str, code: object, seconds: float) -> None:
    name = code_name(code)
    _child(RPC_SERVED, method, name).inc()
    _child(RPC_SERVED_SECONDS, method).observe(seconds)
    if method == "BidGradient":
        _child(PEER_GRADIENT_UPDATES, "applied" if name == "OK" else "refused", name).inc()


def started() -> float:
    """The instant a real network call began, for :func:`rpc_called` (a call's own latency on
    this host's monotonic counter; the requester's logic keeps reading its Clock)."""
    return time.perf_counter()


def rpc_called(method: str, code: object, since: float) -> None:
    """A requester's call that began at ``since`` (:func:`started`) ended with ``code``."""
    _child(RPC_CALLED, method, code_name(code)).inc()
    _child(RPC_CALLED_SECONDS, method).observe(time.perf_counter() - since)


def auction_round(collected: Collected) -> None:
    """One bid-collection round's latency, bids, quoted prices and no-bids."""
    AUCTION_ROUND_SECONDS.observe(collected.bids_ms / 1000)
    REQUESTER_BIDS.inc(len(collected.bids))
    observe_all(REQUESTER_QUOTED_PRICE, [bid.cost for bid in collected.bids])
    for no_bid in collected.no_bids:
        _child(REQUESTER_NO_BIDS, no_bid.kind.value, bounded(no_bid.reason, _NO_BID_REASONS)).inc()


def task_settled(outcome: str, price: float | None = None) -> None:
    """A microtask ended: ``delivered`` (with the price paid), ``no_bids`` or ``failed``."""
    _child(REQUESTER_TASKS, outcome).inc()
    if price is not None:
        REQUESTER_PAID.observe(price)


def execution(error: BaseException | None, elapsed_ms: float) -> None:
    """One Execute attempt ended (``error`` None: a verified result)."""
    _child(REQUESTER_EXECUTIONS, code_name(getattr(error, "code", None) if error else None)).inc()
    REQUESTER_EXECUTION_SECONDS.observe(max(0.0, elapsed_ms) / 1000)


def fallback(kind: str) -> None:
    _child(REQUESTER_FALLBACKS, kind).inc()


def first_token(seconds: float) -> None:
    TIME_TO_FIRST_TOKEN.observe(max(0.0, seconds))


# --- gRPC handler wrappers (the peer's server) --------------------------------------------------

Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[bytes, None]]
"""A server-streaming handler (a request's bytes in) or a bidirectional one (an iterator of them)."""


def served(method: str, handle: Unary) -> Unary:
    """``handle`` counted and timed under ``method``; the status is what the context ends with."""

    async def counted(raw: Any, context: grpc.aio.ServicerContext) -> bytes:
        started, cancelled = time.perf_counter(), False
        try:
            return await handle(raw, context)
        except asyncio.CancelledError:  # the caller went away (or its deadline passed)
            cancelled = True
            raise
        finally:
            code = grpc.StatusCode.CANCELLED if cancelled else context.code()
            rpc_served(method, code, time.perf_counter() - started)

    return counted


def served_stream(method: str, handle: Streaming) -> Streaming:
    """A streaming ``handle`` counted and timed (to its last message) under ``method``."""

    async def counted(raw: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[bytes, None]:
        started = time.perf_counter()
        try:
            async for message in handle(raw, context):
                yield message
        finally:
            code = grpc.StatusCode.CANCELLED if context.cancelled() else context.code()
            rpc_served(method, code, time.perf_counter() - started)

    return counted


# --- occupancy, read at scrape time -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gauge:
    name: str
    help: str


GAUGES = {
    gauge.name: gauge
    for gauge in (
        Gauge("atomic_peer_bid_book_bids", "Bids a peer remembers (live, or expired and not yet pruned)"),
        Gauge("atomic_peer_bid_book_capacity", "How many bids a peer may remember (max_remembered)"),
        Gauge("atomic_peer_workers_busy", "Paid calls running on a peer's workers"),
        Gauge("atomic_peer_workers", "A peer's worker slots (max_concurrency)"),
        Gauge("atomic_peer_queue_waiting", "Paid calls admitted and waiting for a worker"),
        Gauge("atomic_peer_queue_capacity", "How many paid calls may wait (queue_limit)"),
        Gauge("atomic_requester_requests_running", "Requests holding one of a requester's slots"),
        Gauge("atomic_requester_requests_waiting", "Requests waiting for a requester's slot"),
    )
}


# What a watched object offers a scrape: ``(gauge name, value)`` pairs (names from
# :data:`GAUGES`), and its gossip membership (None without gossip).
Reading = Callable[[Any], "tuple[Iterable[tuple[str, float]], Membership | None]"]


# Weak: a node or requester that is dropped without unwatch stops being reported.
_watched: weakref.WeakKeyDictionary[Any, Reading] = weakref.WeakKeyDictionary()


def watch(source: Any, reading: Reading) -> None:
    """Report ``reading(source)`` at every scrape until :func:`unwatch` (or until ``source`` is
    garbage); ``reading`` is :func:`peer_reading` or :func:`requester_reading`."""
    _watched[source] = reading


def unwatch(source: Any) -> None:
    _watched.pop(source, None)


def peer_reading(node: Any) -> tuple[Iterable[tuple[str, float]], Membership | None]:
    """A :class:`~atomic_p2p.peer.node.PeerNode`'s bid book, workers and gossip."""
    remembered, capacity = node.seller.bid_book.occupancy
    load = node.workers.load()
    values = [
        ("atomic_peer_bid_book_bids", remembered),
        ("atomic_peer_bid_book_capacity", capacity),
        ("atomic_peer_workers_busy", load.in_flight),
        ("atomic_peer_workers", load.capacity),
        ("atomic_peer_queue_waiting", load.queued),
        ("atomic_peer_queue_capacity", load.queue_limit),
    ]
    return values, node.gossip.membership if node.gossip is not None else None


def requester_reading(requester: Any) -> tuple[Iterable[tuple[str, float]], Membership | None]:
    """A :class:`~atomic_p2p.requester.Requester`'s request queue and gossip."""
    queue = requester.queue
    values = [
        ("atomic_requester_requests_running", queue.running),
        ("atomic_requester_requests_waiting", queue.waiting),
    ]
    agent = requester.discovery.agent
    return values, agent.membership if agent is not None else None


class _Occupancy(Collector):
    """Reads every watched source when Prometheus scrapes (from the endpoint's thread)."""

    def collect(self) -> Iterator[Metric]:
        totals: Counter[str] = Counter()
        states: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        for source, reading in list(_watched.items()):
            values, by_state, by_reason = _read(source, reading)
            totals.update(values)
            states.update(by_state)
            refused.update(by_reason)
        for name, gauge in GAUGES.items():
            family = GaugeMetricFamily(name, gauge.help)
            family.add_metric([], totals[name])
            yield family
        members = GaugeMetricFamily(
            "atomic_gossip_members", "Members in the gossip table, by state", labels=["state"]
        )
        for state in ("alive", "suspect", "dead", "left"):
            members.add_metric([state], states[state])
        yield members
        rejected = CounterMetricFamily(
            "atomic_gossip_records_refused",
            "Gossip records, heartbeats, leaves and requests refused, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(refused.items()):
            rejected.add_metric([reason], count)
        yield rejected


def _read(source: Any, reading: Reading) -> tuple[dict[str, float], Counter[str], Counter[str]]:
    """Gauge values, members by state and refusals by reason, read a few times over if the
    event loop changed a table mid-read (the scrape runs in the endpoint's thread, and takes no
    lock the loop would wait on)."""
    for _ in range(3):
        try:
            values, membership = reading(source)
            totals: dict[str, float] = {}
            for name, value in values:
                totals[name] = totals.get(name, 0.0) + value
            if membership is None:
                return totals, Counter(), Counter()
            states = Counter({state.value: count for state, count in membership.counts().items()})
            refused = Counter({reason.value: count for reason, count in membership.stats.rejected.items()})
            return totals, states, refused
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}, Counter(), Counter()


REGISTRY.register(_Occupancy())


# --- the endpoint -------------------------------------------------------------------------------


@dataclass(slots=True)
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve :data:`REGISTRY` at ``http://host:port/metrics`` from a daemon thread (port 0: any
    free port; see :attr:`MetricsServer.port`). The hook for any long-running process::

        server = metrics.serve(9100)  # then scrape http://127.0.0.1:9100/metrics
    """
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return MetricsServer(host, server.server_port, server)
