"""Run a :class:`~.decomposer.TaskGraph` over the market (docs/architecture.md sections 2 and 8).

How this works
--------------
The runner tracks finished and running microtasks. Whenever microtasks become ready (every
dependency finished), it prepares all of them and asks the broker for their bids in one go,
so they share one RequestBids per peer (or come from the bid cache); then it settles each on
its own asyncio task. Independent microtasks therefore execute at the same time, and a
dependant starts as soon as its own inputs are in, not when a whole "level" is done.

The first microtask that fails (no usable bid, every attempt failed, the deadline passed) fails
the request: the others are cancelled and the error names the microtask. Otherwise the
response is :meth:`~.decomposer.TaskGraph.combine`: graph outputs by name, shards concatenated
in row order; and each microtask's :class:`~.types.Result` (winner, price, rationale,
attempts) is kept under its name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from atomic_p2p.errors import AtomicError, DeadlineError
from atomic_p2p.requester.bidmanager import Offers
from atomic_p2p.requester.broker import Broker, Prepared, Terms
from atomic_p2p.requester.decomposer import TaskGraph
from atomic_p2p.requester.types import BidInfo, Result

_Stage = tuple[list[Prepared], list[Offers], float]


@dataclass(frozen=True, slots=True, eq=False)
class GraphResult:
    """What :meth:`Requester.submit` returns: the combined outputs, and per microtask (by its
    name in the graph: ``"node"``, or ``"node#3"`` for shard 3) its full :class:`Result`."""

    outputs: dict[str, torch.Tensor]
    results: Mapping[str, Result]
    graph: TaskGraph = field(repr=False)
    total_ms: float = 0.0

    @property
    def price(self) -> float:
        """What the whole request cost: the sum of the microtasks' prices."""
        return sum(result.price for result in self.results.values())

    @property
    def winners(self) -> dict[str, BidInfo]:
        return {name: result.winner for name, result in self.results.items()}

    @property
    def shards(self) -> int:
        return len(self.graph.shards)


class GraphRun:
    """One request's graph, run once (see the module docstring); timed on the clock its
    ``terms`` deadline is on."""

    def __init__(self, graph: TaskGraph, broker: Broker, terms: Terms, *, prefix: str) -> None:
        self.graph = graph
        self._broker = broker
        self._terms = terms
        self._clock = terms.clock
        self._prefix = prefix  # makes wire task ids unique across this requester's requests
        self._stages: list[asyncio.Task[_Stage]] = []

    async def run(self) -> GraphResult:
        started = self._clock.monotonic()
        outputs: dict[str, Mapping[str, torch.Tensor]] = {}
        results: dict[str, Result] = {}
        running: dict[asyncio.Task[Result], str] = {}
        try:
            while not self.graph.complete(results.keys()):
                ready = self.graph.ready(results.keys(), set(running.values()))
                for name, task in self._launch(ready, outputs, started).items():
                    running[task] = name
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = running.pop(task)
                    results[name] = _result_of(task, name, self.graph.tasks[name].capability)
                    outputs[name] = results[name].outputs
        finally:
            for leftover in [*running, *self._stages]:
                leftover.cancel()
            await asyncio.gather(*running, *self._stages, return_exceptions=True)
        combined = self.graph.combine(outputs)
        ordered = {name: results[name] for name in self.graph.tasks}
        return GraphResult(combined, ordered, self.graph, (self._clock.monotonic() - started) * 1000)

    def _launch(
        self, ready: tuple[str, ...], outputs: Mapping[str, Mapping[str, torch.Tensor]], started: float
    ) -> dict[str, asyncio.Task[Result]]:
        if not ready:
            return {}
        inputs = {name: self.graph.inputs_for(name, outputs) for name in ready}
        stage = asyncio.create_task(self._stage(ready, inputs))
        self._stages.append(stage)
        return {
            name: asyncio.create_task(self._settle(stage, index, started), name=f"microtask {name}")
            for index, name in enumerate(ready)
        }

    async def _stage(self, names: tuple[str, ...], inputs: Mapping[str, dict[str, torch.Tensor]]) -> _Stage:
        """Prepare every newly ready microtask and get bids for all of them at once."""
        began = self._clock.monotonic()
        terms = self._terms
        prepared = [
            await self._broker.prepare(
                f"{self._prefix}{name}", self.graph.tasks[name].capability, inputs[name], terms
            )
            for name in names
        ]
        left = terms.left_s()
        if left <= 0:
            raise DeadlineError(f"the request's deadline passed before {', '.join(names)} could start")
        offers = await self._broker.offers(prepared, terms, left)
        return prepared, offers, (self._clock.monotonic() - began) * 1000

    async def _settle(self, stage: asyncio.Task[_Stage], index: int, started: float) -> Result:
        prepared, offers, bids_ms = await asyncio.shield(stage)
        return await self._broker.settle(
            prepared[index], offers[index], self._terms, started=started, bids_ms=bids_ms
        )


def _result_of(task: asyncio.Task[Result], name: str, capability: str) -> Result:
    """The task's result; its failure, re-raised with the microtask named."""
    try:
        return task.result()
    except AtomicError as error:
        raise type(error)(f"microtask {name!r} ({capability}): {error}") from error
