"""The benchmark's market: real peers on loopback, a seeded task stream, and the full-information log.

How this works
--------------
Every peer in :data:`ROSTER` is a real :class:`~atomic_p2p.peer.node.PeerNode` on 127.0.0.1
(in this process), with its own key, hosting one digit classifier (``peers/digits.py`` and
``peers/bench_models.py``). For each task of the stream the requester's own pieces run as in
:meth:`Requester.run`: the inputs are encoded and sent as a preview in a signed call for bids
(:func:`~atomic_p2p.requester.messages.build_task`, :func:`~atomic_p2p.requester.auction.call_for_bids`); every live peer is
asked at once and every bid envelope is verified and bound
(:func:`~atomic_p2p.requester.auction.collect_bids`). Then, unlike a real request, *every* bid
is executed through the requester's :class:`~atomic_p2p.requester.execution.Executor`
(signed order, verified signed result), one after another, and each outcome is logged: accuracy on the batch's
labels, the Execute latency the requester measured, the cost charged. No win/loss notices are
sent: the peers' strategies do not learn from them, and the log must not depend on who "won".

The stream: each task is ``batch`` held-out digits (the split every digits model shares) drawn
from one source: only 0-4 (40%), only 5-9 (40%), or any digit (20%), as if requesters had
sources of different kinds. Two events are scheduled in task time: the ``latecomer`` starts after
``join_at * tasks`` tasks, and the ``degrader`` starts adding noise to its logits from task
``degrade_at * tasks`` on (its module counts calls: one preview pass per bid, one per execution).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atomic_p2p import tensors
from atomic_p2p.channels import ChannelPool
from atomic_p2p.clock import SYSTEM_CLOCK
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import ModelConfig, PeerConfig
from atomic_p2p.peer.models import WARM_UP_CALLS, load_factory
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.progress import progress as progress_bar
from atomic_p2p.requester.auction import call_for_bids, collect_bids
from atomic_p2p.requester.evaluator import Ask
from atomic_p2p.requester.execution import ExecutionPolicy, Executor, Payload
from atomic_p2p.requester.messages import build_task
from atomic_p2p.requester.profiler import shape_bucket
from atomic_p2p.requester.transport import GrpcTransport
from peers.examples import PEERS_DIR, weights_cache_dir

from .policies import LoggedTask, Outcome

DIGITS = PEERS_DIR / "digits.py"
BENCH_MODELS = PEERS_DIR / "bench_models.py"
CAPABILITY = "classify/digits"
SOURCES = (("0-4", 0.4), ("5-9", 0.4), ("mixed", 0.2))


@dataclass(frozen=True)
class PeerSpec:
    """One benchmark peer: what it hosts, what it asks, how slow it is, how it bids."""

    name: str
    role: str
    factory: str  # "digits.py:small" or "bench_models.py:specialist", relative to peers/
    price_per_example: float
    extra_latency_ms: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "confidence"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)


# Prices per example and simulated latencies make the trade-offs: under "balanced" weights the
# specialists are the best buy inside their domain, the degrader is the best general buy until
# it degrades, the latecomer the best one after; the liar's claims beat everyone's.
ROSTER: tuple[PeerSpec, ...] = (
    PeerSpec("small", "small-fast-cheap MLP 64-16-10 (~0.95)", "digits.py:small", 0.001),
    PeerSpec("large", "large-slow-accurate CNN (~0.98)", "digits.py:large", 0.008, 40.0),
    PeerSpec("generalist", "generalist MLP 64-64-10 (~0.98)", "bench_models.py:generalist", 0.002, 10.0),
    PeerSpec(
        "spec-0-4",
        "specialist 0-4 (open-set)",
        "bench_models.py:specialist",
        0.0007,
        3.0,
        {"classes": [0, 1, 2, 3, 4]},
    ),
    PeerSpec(
        "spec-5-9",
        "specialist 5-9 (open-set)",
        "bench_models.py:specialist",
        0.0007,
        3.0,
        {"classes": [5, 6, 7, 8, 9]},
    ),
    PeerSpec(
        "liar",
        "ADVERSARY: weak MLP (~0.66), claims 0.99 and 5 ms, takes 60 ms more",
        "bench_models.py:weak",
        0.0006,
        60.0,
        strategy="bench-liar",
        strategy_options={"confidence": 0.99, "claimed_latency_ms": 5.0},
    ),
    PeerSpec(
        "degrader",
        "MLP 64-32-10 (~0.97), noisy logits (~0.45) from mid-run",
        "bench_models.py:degrading",
        0.0008,
    ),
    PeerSpec(
        "latecomer",
        "MLP 64-128-10 (~0.98), joins late",
        "bench_models.py:generalist",
        0.001,
        1.0,
        {"hidden": 128},
    ),
)
LIAR, DEGRADER, LATECOMER = "liar", "degrader", "latecomer"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    tasks: int
    batch: int
    seed: int
    join_at: float = 0.25
    degrade_at: float = 0.5
    time_left_ms: float = 250.0
    price_cap_per_example: float = 0.01  # the budget: batch * this

    @property
    def join_task(self) -> int:
        return int(self.join_at * self.tasks)

    @property
    def degrade_task(self) -> int:
        return int(self.degrade_at * self.tasks)


@dataclass(frozen=True, slots=True)
class Batch:
    source: str
    x: torch.Tensor
    y: torch.Tensor


def task_stream(spec: StreamSpec) -> list[Batch]:
    """``spec.tasks`` batches of held-out digits, each from one source (module docstring)."""
    _, _, x, y = _from_peers(DIGITS, "dataset")()
    generator = torch.Generator().manual_seed(spec.seed)
    pools = {"0-4": torch.nonzero(y < 5).flatten(), "5-9": torch.nonzero(y >= 5).flatten()}
    pools["mixed"] = torch.arange(len(y))
    weights = torch.tensor([share for _, share in SOURCES])
    picks = torch.multinomial(weights, spec.tasks, replacement=True, generator=generator)
    batches = []
    for pick in picks.tolist():
        source = SOURCES[pick][0]
        pool = pools[source]
        rows = pool[torch.randperm(len(pool), generator=generator)[: spec.batch]]
        batches.append(Batch(source, x[rows].clone(), y[rows].clone()))
    return batches


def model_config(peer: PeerSpec, stream: StreamSpec) -> ModelConfig:
    options = dict(peer.options)
    if peer.name == DEGRADER:
        # Two forward passes per task (the preview behind its bid, then the execution).
        options["degrade_after"] = WARM_UP_CALLS + 2 * stream.degrade_task
    file, function = peer.factory.split(":")
    return ModelConfig(
        model_id=f"bench-{peer.name}",
        capabilities=(CAPABILITY,),
        factory=f"{PEERS_DIR / file}:{function}",
        price_per_example=peer.price_per_example,
        strategy=peer.strategy,
        strategy_options=dict(peer.strategy_options),
        options=options,
        extra_latency_ms=peer.extra_latency_ms,
    )


def peer_config(peer: PeerSpec, stream: StreamSpec, data_dir: Path) -> PeerConfig:
    return PeerConfig(
        name=peer.name,
        models=(model_config(peer, stream),),
        data_dir=data_dir / peer.name,
        cache_dir=weights_cache_dir(),
        queue_limit=64,
        bid_validity_s=60.0,  # every bid of a task is executed, one after another on a busy box
        latency_probe_s=0.0,  # the degrader counts its calls: no probe may add any
    )


def _from_peers(file: Path, name: str) -> Callable[..., Any]:
    """A function of a file in peers/ (not a package), loaded the way the peers load their
    factories, so this process holds one module object per file."""
    function: Callable[..., Any] = load_factory(f"{file}:{name}")
    return function


@contextlib.contextmanager
def _liar_registered() -> Iterator[None]:
    with _from_peers(BENCH_MODELS, "liar_strategy_registered")():
        yield


def prebuild(roster: Sequence[PeerSpec], stream: StreamSpec) -> None:
    """Train (or load) every model once, so a late join costs a load, not a training run."""
    for peer in roster:
        config = model_config(peer, stream)
        load_factory(config.factory)(cache_dir=weights_cache_dir(), **config.options)


@contextlib.asynccontextmanager
async def market(roster: Sequence[PeerSpec], stream: StreamSpec) -> AsyncIterator[_Market]:
    with _liar_registered(), tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        state = _Market(roster, stream, Path(tmp))
        try:
            for peer in roster:
                if peer.name != LATECOMER:
                    await state.start(peer)
            yield state
        finally:
            await state.close()


class _Market:
    """The live peers, and the requester's transport, identity and executor."""

    def __init__(self, roster: Sequence[PeerSpec], stream: StreamSpec, data_dir: Path) -> None:
        self.roster = {peer.name: peer for peer in roster}
        self.stream = stream
        self.data_dir = data_dir
        self.nodes: dict[str, PeerNode] = {}
        self.identity = Identity.generate()
        self.pool = ChannelPool()
        self.transport = GrpcTransport(self.pool)
        self.executor = Executor(self.transport, self.identity, ExecutionPolicy(), SYSTEM_CLOCK)

    async def start(self, peer: PeerSpec) -> None:
        config = peer_config(peer, self.stream, self.data_dir)
        self.nodes[peer.name] = await PeerNode.start(config, identity=Identity.generate())

    async def close(self) -> None:
        await self.pool.close()
        for node in self.nodes.values():
            await node.stop(grace=0.5)

    @property
    def names(self) -> dict[str, str]:
        return {node.peer_id.hex: name for name, node in self.nodes.items()}

    def degraded(self) -> bool:
        node = self.nodes.get(DEGRADER)
        if node is None:
            return False
        return bool(getattr(node.models[f"bench-{DEGRADER}"].module, "degraded", False))

    async def task(self, index: int, batch: Batch) -> LoggedTask:
        wire = tensors.encode(batch.x, "x")
        payload = Payload((wire,), tensors.digest((wire,)))
        task = build_task(f"t{index}", CAPABILITY, [wire], preview=True, max_cost=None)
        now = _now_ms()
        call = call_for_bids(self.identity, [task], now, now + 30_000)
        request_id = call.request_id
        addresses = [node.dial_address for node in self.nodes.values()]  # PEERID@host:port: pinned, no TOFU
        collected = await collect_bids(self.transport, addresses, call, 5.0, SYSTEM_CLOCK)
        names = self.names
        # One at a time: a logged latency is what that peer delivers when it alone is bought,
        # as in a real request, not what it delivers while seven others run in this process.
        executed = [await self._execute(request_id, bid, payload) for bid in collected.bids]
        degraded = self.degraded()
        outcomes = {}
        for bid, (ok, latency_ms, cost, logits) in zip(collected.bids, executed, strict=True):
            name = names[bid.peer_id.hex]
            accuracy = float((logits.argmax(dim=-1) == batch.y).float().mean()) if ok else 0.0
            outcomes[name] = Outcome(name, accuracy, latency_ms, cost, ok, degraded and name == DEGRADER)
        ask = Ask(
            task_id=task.task_id,
            capability=CAPABILITY,
            time_left_ms=self.stream.time_left_ms,
            budget=self.stream.price_cap_per_example * len(batch.y),
            weights="balanced",
            bucket=shape_bucket({"x": tuple(batch.x.shape)}),
            batch_size=len(batch.y),
        )
        return LoggedTask(index, batch.source, ask, request_id, collected.bids, names, outcomes)

    async def _execute(
        self, request_id: bytes, bid: Any, payload: Payload
    ) -> tuple[bool, float, float, torch.Tensor]:
        executed = await self.executor.run(request_id, [bid], payload, SYSTEM_CLOCK.monotonic() + 10.0)
        attempt = executed.attempts[-1]
        if executed.success is None:
            return False, attempt.elapsed_ms, 0.0, torch.empty(0)
        receipt = executed.success.receipt
        return True, attempt.elapsed_ms, receipt.cost_charged, receipt.outputs["logits"]


async def collect(
    stream: StreamSpec, roster: Sequence[PeerSpec] = ROSTER, *, progress: bool = True, label: str = ""
) -> list[LoggedTask]:
    """Run the market over the stream and log every bid and every bid's outcome."""
    await asyncio.to_thread(prebuild, roster, stream)
    batches = task_stream(stream)
    log: list[LoggedTask] = []
    async with market(roster, stream) as live:
        for index, batch in enumerate(
            progress_bar(batches, desc=f"collect {label}".strip(), enabled=progress)
        ):
            if index == stream.join_task and LATECOMER in live.roster:
                await live.start(live.roster[LATECOMER])
            log.append(await live.task(index, batch))
    return log


EVENTS = ("latecomer joins", "degrader degrades")


def events(log: Sequence[LoggedTask]) -> dict[str, int | None]:
    """Where in the log the latecomer first bid and the degrader first delivered noisy output."""
    joined = next((task.index for task in log if LATECOMER in task.outcomes), None)
    degraded = next(
        (task.index for task in log if (seen := task.outcomes.get(DEGRADER)) is not None and seen.degraded),
        None,
    )
    return dict(zip(EVENTS, (joined, degraded), strict=True))


def failures(log: Sequence[LoggedTask]) -> dict[str, int]:
    """Executions that failed (timed out on a busy box, say), per peer: they count as utility 0."""
    counts: dict[str, int] = {}
    for task in log:
        for peer, outcome in task.outcomes.items():
            if not outcome.ok:
                counts[peer] = counts.get(peer, 0) + 1
    return dict(sorted(counts.items()))


def phases(log: Sequence[LoggedTask]) -> list[range]:
    """The stretches of the log between :func:`events`: reordering tasks within one keeps every
    event at its place in task time."""
    cuts = {0, len(log)} | {at for at in events(log).values() if at is not None}
    ordered = sorted(cuts)
    return [range(start, end) for start, end in itertools.pairwise(ordered) if end > start]


def permuted(log: Sequence[LoggedTask], seed: int) -> list[LoggedTask]:
    """The log in a seeded order that shuffles tasks only within their phase (:func:`phases`)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for phase in phases(log):
        order += [phase.start + int(i) for i in torch.randperm(len(phase), generator=generator)]
    return [log[i] for i in order]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def roster_table(roster: Sequence[PeerSpec]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(peer) | {"options": dict(peer.options)} for peer in roster]
