"""Turn a :class:`Request` into a DAG of microtasks (docs/architecture.md section 8). Pure: no I/O, no clock.

How this works
--------------
A request is one microtask (:meth:`Request.single`), or an explicit graph
(:meth:`Request.graph`): :class:`Node` values that each name a capability and bind their
arguments to a request input (``"inputs.x"`` or :class:`FromInput`) or to another node's output
(``"encode.features"`` or :class:`FromNode`). :func:`decompose` validates the graph (duplicate or
reserved names, unknown references, cycles: each a :class:`~atomic_p2p.errors.ConfigError`
that names the culprit) and orders it topologically, declaration order breaking ties.

**Sharding.** When the request's batch (the shared leading dimension of its inputs) exceeds the
rows a shard may hold, the whole graph is replicated over contiguous, balanced row ranges:
shard ``i`` of node ``n`` is the microtask ``"n#i"``; it reads rows ``start:stop`` of every
request input and the outputs of shard ``i`` of the nodes it depends on. The rows a shard may
hold are the smallest of ``ShardPolicy.max_rows``, ``ShardPolicy.max_bytes`` divided by the
bytes of one row, and the ``max_batch`` passed in (a candidate's constraint;
:func:`batch_limit` picks one that enough candidates accept). This is only right for
capabilities that treat examples independently, the usual case for inference; a request that
is not (``shardable=False``) is never split.

**Running.** :meth:`TaskGraph.ready` lists the microtasks whose dependencies are done, so the
caller runs them concurrently; :meth:`TaskGraph.inputs_for` gives a ready microtask its tensors
(request-input slices are views, not copies); :meth:`TaskGraph.combine` builds the response:
each graph output by name, shards concatenated in row order, each shard checked to return as
many rows as it was given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from atomic_p2p.errors import ConfigError, TensorError

INPUTS = "inputs"  # the reserved prefix of a request-input reference: "inputs.x"
SINGLE_NODE = "task"  # the node name Request.single uses
_RESERVED = (INPUTS,)
_FORBIDDEN = ("#", ".")


@dataclass(frozen=True, slots=True)
class FromInput:
    """A request input, by name."""

    name: str

    def __str__(self) -> str:
        return f"{INPUTS}.{self.name}"


@dataclass(frozen=True, slots=True)
class FromNode:
    """An output of another node, by node name and output name."""

    node: str
    output: str

    def __str__(self) -> str:
        return f"{self.node}.{self.output}"


Ref = FromInput | FromNode


def parse_ref(text: str | Ref) -> Ref:
    """``"inputs.x"`` -> FromInput("x"); ``"node.out"`` -> FromNode("node", "out")."""
    if isinstance(text, FromInput | FromNode):
        return text
    if not isinstance(text, str) or text.count(".") < 1:
        raise ConfigError(f"a reference is 'inputs.NAME' or 'NODE.OUTPUT', got {text!r}")
    head, tail = text.split(".", 1)
    if not head or not tail:
        raise ConfigError(f"a reference is 'inputs.NAME' or 'NODE.OUTPUT', got {text!r}")
    return FromInput(tail) if head == INPUTS else FromNode(head, tail)


@dataclass(frozen=True, slots=True)
class Node:
    """One step of a graph: a capability and where each of its arguments comes from."""

    name: str
    capability: str
    inputs: Mapping[str, Ref | str]


@dataclass(frozen=True, slots=True)
class Request:
    """What a caller wants computed. Build with :meth:`single` or :meth:`graph`.

    ``outputs`` maps response names to node outputs; None means every output of every sink
    (a node nobody consumes), named as the peer named it when there is one sink, and
    ``"node.output"`` when there are several.
    """

    inputs: Mapping[str, torch.Tensor]
    nodes: tuple[Node, ...]
    outputs: Mapping[str, Ref | str] | None = None
    shardable: bool = True

    @classmethod
    def single(
        cls, capability: str, inputs: Mapping[str, torch.Tensor], *, shardable: bool = True
    ) -> Request:
        """One microtask that takes every input under its own name."""
        bindings = {name: FromInput(name) for name in inputs}
        return cls(
            MappingProxyType(dict(inputs)), (Node(SINGLE_NODE, capability, bindings),), None, shardable
        )

    @classmethod
    def graph(
        cls,
        nodes: Sequence[Node],
        inputs: Mapping[str, torch.Tensor],
        outputs: Mapping[str, Ref | str] | None = None,
        *,
        shardable: bool = True,
    ) -> Request:
        return cls(MappingProxyType(dict(inputs)), tuple(nodes), outputs, shardable)


@dataclass(frozen=True, slots=True)
class ShardPolicy:
    """When to split a batch: more than ``max_rows`` rows or ``max_bytes`` input bytes (0 = no
    limit), or more than the largest batch ``min_candidates`` candidates accept (their
    ``max_batch``, see :func:`batch_limit`)."""

    max_rows: int = 0
    max_bytes: int = 0
    min_candidates: int = 1

    def __post_init__(self) -> None:
        if self.max_rows < 0 or self.max_bytes < 0:
            raise ConfigError("shard limits must be >= 0 (0 means no limit)")
        if self.min_candidates < 1:
            raise ConfigError("min_candidates must be >= 1")


@dataclass(frozen=True, slots=True)
class Shard:
    """Rows ``start:stop`` of the request's batch; shard ``index`` of ``count``."""

    index: int
    count: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Microtask:
    """One auctionable unit: ``name`` is unique in its graph and serves as the wire task id."""

    name: str
    node: str
    capability: str
    bindings: Mapping[str, Ref]
    depends_on: frozenset[str]
    shard: Shard | None = None


@dataclass(frozen=True, slots=True)
class TaskGraph:
    """Microtasks in topological order, the request's inputs, and how to build the response."""

    tasks: Mapping[str, Microtask]
    inputs: Mapping[str, torch.Tensor]
    outputs: Mapping[str, FromNode] | None
    sinks: tuple[str, ...]
    shards: tuple[Shard, ...] = field(default=())

    def ready(self, done: Set[str], running: Set[str] = frozenset()) -> tuple[str, ...]:
        """Microtasks not done nor running whose dependencies are all done, in order."""
        unknown = (set(done) | set(running)) - set(self.tasks)
        if unknown:
            raise ConfigError(f"unknown microtasks {sorted(unknown)}")
        return tuple(
            name
            for name, task in self.tasks.items()
            if name not in done and name not in running and task.depends_on <= done
        )

    def complete(self, done: Set[str]) -> bool:
        return set(self.tasks) <= set(done)

    def inputs_for(
        self, name: str, results: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The tensors microtask ``name`` takes, given the results of the ones it depends on."""
        task = self._task(name)
        tensors: dict[str, torch.Tensor] = {}
        for argument, source in task.bindings.items():
            if isinstance(source, FromInput):
                tensor = self.inputs[source.name]
                tensors[argument] = (
                    tensor if task.shard is None else tensor[task.shard.start : task.shard.stop]
                )
            else:
                producer = _task_name(source.node, task.shard)
                tensors[argument] = _output(results, producer, source.output)
        return tensors

    def combine(self, results: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The response: each graph output by name, shards concatenated in row order."""
        wanted = self.outputs if self.outputs is not None else self._sink_outputs(results)
        return {name: self._gather(source, results) for name, source in wanted.items()}

    def _task(self, name: str) -> Microtask:
        if name not in self.tasks:
            raise ConfigError(f"unknown microtask {name!r}")
        return self.tasks[name]

    def _sink_outputs(self, results: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, FromNode]:
        wanted: dict[str, FromNode] = {}
        for node in self.sinks:
            first = _task_name(node, self.shards[0] if self.shards else None)
            for output in _result(results, first):
                name = output if len(self.sinks) == 1 else f"{node}.{output}"
                wanted[name] = FromNode(node, output)
        return wanted

    def _gather(self, source: FromNode, results: Mapping[str, Mapping[str, torch.Tensor]]) -> torch.Tensor:
        if not self.shards:
            return _output(results, source.node, source.output)
        parts = []
        for shard in self.shards:
            part = _output(results, _task_name(source.node, shard), source.output)
            if part.dim() == 0 or part.shape[0] != shard.rows:
                raise TensorError(
                    f"shard {shard.index} of {source} returned {tuple(part.shape)} for {shard.rows} rows"
                )
            parts.append(part)
        try:
            return torch.cat(parts, dim=0)
        except RuntimeError as error:
            raise TensorError(f"shards of {source} do not concatenate: {error}") from error


def _task_name(node: str, shard: Shard | None) -> str:
    return node if shard is None else f"{node}#{shard.index}"


def _result(results: Mapping[str, Mapping[str, torch.Tensor]], task: str) -> Mapping[str, torch.Tensor]:
    if task not in results:
        raise ConfigError(f"microtask {task!r} has no result yet")
    return results[task]


def _output(results: Mapping[str, Mapping[str, torch.Tensor]], task: str, output: str) -> torch.Tensor:
    produced = _result(results, task)
    if output not in produced:
        raise TensorError(
            f"microtask {task!r} returned no output {output!r} (it returned {sorted(produced)})"
        )
    return produced[output]


def _check_names(request: Request) -> None:
    if not request.nodes:
        raise ConfigError("a request needs at least one node")
    seen: set[str] = set()
    for node in request.nodes:
        if not isinstance(node.name, str) or not node.name:
            raise ConfigError(f"node names must be non-empty strings, got {node.name!r}")
        if node.name in _RESERVED or any(char in node.name for char in _FORBIDDEN):
            raise ConfigError(f"node name {node.name!r} is reserved or contains '#' or '.'")
        if node.name in seen:
            raise ConfigError(f"duplicate node name {node.name!r}")
        if not isinstance(node.capability, str) or not node.capability:
            raise ConfigError(f"node {node.name!r} needs a capability")
        seen.add(node.name)
    for name, tensor in request.inputs.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"input {name!r} is a {type(tensor).__name__}, not a torch.Tensor")


def _bindings(request: Request) -> dict[str, dict[str, Ref]]:
    """Every node's parsed bindings, each reference checked to exist."""
    names = {node.name for node in request.nodes}
    parsed: dict[str, dict[str, Ref]] = {}
    for node in request.nodes:
        bindings = {argument: parse_ref(source) for argument, source in node.inputs.items()}
        for argument, source in bindings.items():
            if isinstance(source, FromInput) and source.name not in request.inputs:
                raise ConfigError(
                    f"node {node.name!r} argument {argument!r}: no request input {source.name!r}"
                )
            if isinstance(source, FromNode) and source.node not in names:
                raise ConfigError(f"node {node.name!r} argument {argument!r}: no node {source.node!r}")
        parsed[node.name] = bindings
    return parsed


def _topological(order: Sequence[str], depends: Mapping[str, set[str]]) -> list[str]:
    """Kahn's algorithm, declaration order among the ready; a cycle raises ConfigError naming it."""
    placed: list[str] = []
    remaining = list(order)
    while remaining:
        ready = [name for name in remaining if depends[name] <= set(placed)]
        if not ready:
            raise ConfigError(f"the graph has a cycle: {' -> '.join(_cycle(remaining, depends))}")
        placed += ready
        remaining = [name for name in remaining if name not in ready]
    return placed


def _cycle(remaining: Sequence[str], depends: Mapping[str, set[str]]) -> list[str]:
    # Every remaining node waits on another remaining one: walk until a node repeats.
    path = [remaining[0]]
    while True:
        following = next(d for d in sorted(depends[path[-1]]) if d in remaining)
        if following in path:
            return [*path[path.index(following) :], following]
        path.append(following)


def _shards(request: Request, policy: ShardPolicy, max_batch: int) -> tuple[Shard, ...]:
    limits = [limit for limit in (policy.max_rows, max_batch) if limit > 0]
    if not request.shardable or not request.inputs or (not limits and not policy.max_bytes):
        return ()
    inputs = request.inputs
    sizes = {name: int(tensor.shape[0]) if tensor.dim() else None for name, tensor in inputs.items()}
    row_bytes = sum(tensor[:1].numel() * tensor.element_size() for tensor in inputs.values() if tensor.dim())
    if policy.max_bytes and row_bytes:
        limits.append(max(1, policy.max_bytes // row_bytes))
    per_shard = min(limits, default=0)
    if not per_shard or max(size or 0 for size in sizes.values()) <= per_shard:
        return ()
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"cannot shard: the inputs do not share a batch dimension ({sizes})")
    rows = next(iter(sizes.values())) or 0
    count = math.ceil(rows / per_shard)
    base, extra = divmod(rows, count)  # balanced: the first `extra` shards get one more row
    shards, start = [], 0
    for index in range(count):
        stop = start + base + (1 if index < extra else 0)
        shards.append(Shard(index, count, start, stop))
        start = stop
    return tuple(shards)


def decompose(request: Request, policy: ShardPolicy | None = None, *, max_batch: int = 0) -> TaskGraph:
    """Validate ``request`` and build its :class:`TaskGraph` (see the module docstring)."""
    _check_names(request)
    bindings = _bindings(request)
    depends = {
        name: {source.node for source in refs.values() if isinstance(source, FromNode)}
        for name, refs in bindings.items()
    }
    order = _topological([node.name for node in request.nodes], depends)
    outputs = _graph_outputs(request, set(order))
    consumed = set().union(*depends.values())
    sinks = tuple(name for name in order if name not in consumed)
    shards = _shards(request, policy or ShardPolicy(), max_batch)
    capability = {node.name: node.capability for node in request.nodes}
    tasks: dict[str, Microtask] = {}
    for shard in shards or (None,):
        for name in order:
            task = Microtask(
                name=_task_name(name, shard),
                node=name,
                capability=capability[name],
                bindings=MappingProxyType(bindings[name]),
                depends_on=frozenset(_task_name(d, shard) for d in depends[name]),
                shard=shard,
            )
            tasks[task.name] = task
    return TaskGraph(MappingProxyType(tasks), request.inputs, outputs, sinks, shards)


def _graph_outputs(request: Request, nodes: Set[str]) -> Mapping[str, FromNode] | None:
    if request.outputs is None:
        return None
    outputs: dict[str, FromNode] = {}
    for name, source in request.outputs.items():
        ref = parse_ref(source)
        if not isinstance(ref, FromNode) or ref.node not in nodes:
            raise ConfigError(f"graph output {name!r} must name an output of a node, got {source!r}")
        outputs[name] = ref
    return MappingProxyType(outputs)


def batch_limit(limits: Iterable[int | None], min_candidates: int = 1) -> int:
    """The largest batch at least ``min_candidates`` candidates accept, from their ``max_batch``
    (0 or None = no limit); 0 when nothing limits it. Fewer candidates than asked: all of them."""
    values = sorted((limit or math.inf for limit in limits), reverse=True)
    if not values:
        return 0
    chosen = values[min(max(min_candidates, 1), len(values)) - 1]
    return 0 if chosen == math.inf else int(chosen)
