"""The decomposer (atomic_p2p.requester.decomposer): graphs, sharding, ready sets, combining."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p.errors import ConfigError, TensorError
from atomic_p2p.requester.decomposer import (
    FromInput,
    FromNode,
    Node,
    Request,
    ShardPolicy,
    TaskGraph,
    batch_limit,
    decompose,
    parse_ref,
)

Results = dict[str, Mapping[str, torch.Tensor]]


def run_all(graph: TaskGraph, model) -> tuple[Results, list[tuple[str, ...]]]:  # type: ignore[no-untyped-def]
    """Drive the graph the way the requester will: each wave = every ready task, 'concurrently'."""
    results: Results = {}
    waves: list[tuple[str, ...]] = []
    while not graph.complete(set(results)):
        wave = graph.ready(set(results))
        assert wave, "stuck: nothing ready but not complete"
        waves.append(wave)
        for name in wave:
            results[name] = model(graph.tasks[name], graph.inputs_for(name, results))
    return results, waves


def double(task, inputs):  # type: ignore[no-untyped-def]
    return {"y": inputs["x"] * 2}


def test_a_single_task_is_one_microtask() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    graph = decompose(Request.single("classify/digits", {"x": x}))
    assert list(graph.tasks) == ["task"]
    task = graph.tasks["task"]
    assert task.capability == "classify/digits" and task.shard is None and task.depends_on == frozenset()
    assert graph.ready(set()) == ("task",)
    results, _ = run_all(graph, double)
    assert torch.equal(graph.combine(results)["y"], x * 2)
    assert graph.inputs_for("task", {})["x"] is x  # no copy


def pipeline_request(**kwargs) -> Request:  # type: ignore[no-untyped-def]
    nodes = [
        Node("left", "encode/a", {"x": "inputs.x"}),
        Node("right", "encode/b", {"x": FromInput("x")}),
        Node("join", "merge", {"a": "left.y", "b": FromNode("right", "y")}),
        Node("head", "classify", {"h": "join.y", "bias": "inputs.bias"}),
    ]
    inputs = {"x": torch.ones(8, 3), "bias": torch.full((8, 3), 0.5)}
    return Request.graph(nodes, inputs, **kwargs)


def pipeline_model(task, inputs):  # type: ignore[no-untyped-def]
    if task.node in ("left", "right"):
        return {"y": inputs["x"] * (2 if task.node == "left" else 3)}
    if task.node == "join":
        return {"y": inputs["a"] + inputs["b"]}
    return {"logits": inputs["h"] + inputs["bias"], "aux": inputs["h"][:, :1]}


def test_graph_ready_sets_run_independent_nodes_together() -> None:
    graph = decompose(pipeline_request(outputs={"logits": "head.logits"}))
    assert list(graph.tasks) == ["left", "right", "join", "head"]
    assert graph.ready(set()) == ("left", "right")
    assert graph.ready({"left"}) == ("right",)
    assert graph.ready({"left"}, running={"right"}) == ()
    assert graph.ready({"left", "right"}) == ("join",)
    results, waves = run_all(graph, pipeline_model)
    assert waves == [("left", "right"), ("join",), ("head",)]
    combined = graph.combine(results)
    assert list(combined) == ["logits"]
    assert torch.equal(combined["logits"], torch.full((8, 3), 5.5))
    with pytest.raises(ConfigError, match="unknown"):
        graph.ready({"nope"})


def test_default_outputs_are_every_output_of_the_sinks() -> None:
    graph = decompose(pipeline_request())
    assert graph.sinks == ("head",)
    results, _ = run_all(graph, pipeline_model)
    assert set(graph.combine(results)) == {"logits", "aux"}
    two_sinks = decompose(
        Request.graph(
            [Node("a", "c", {"x": "inputs.x"}), Node("b", "c", {"x": "inputs.x"})], {"x": torch.ones(2)}
        )
    )
    results, waves = run_all(two_sinks, double)
    assert waves == [("a", "b")]
    assert set(two_sinks.combine(results)) == {"a.y", "b.y"}


@pytest.mark.parametrize(
    ("nodes", "outputs", "words"),
    [
        ([Node("a", "c", {"x": "inputs.missing"})], None, "no request input 'missing'"),
        ([Node("a", "c", {"x": "ghost.y"})], None, "no node 'ghost'"),
        ([Node("a", "c", {"x": "inputs.x"}), Node("a", "c", {"x": "inputs.x"})], None, "duplicate"),
        ([Node("a", "c", {"x": "b.y"}), Node("b", "c", {"x": "a.y"})], None, "cycle: a -> b -> a"),
        ([Node("a", "c", {"x": "a.y"})], None, "cycle: a -> a"),
        (
            [Node("a", "c", {"x": "inputs.x"}), Node("b", "c", {"x": "c.y"}), Node("c", "c", {"x": "b.y"})],
            None,
            "cycle: b -> c -> b",
        ),
        ([Node("inputs", "c", {"x": "inputs.x"})], None, "reserved"),
        ([Node("a#1", "c", {"x": "inputs.x"})], None, "reserved"),
        ([Node("a", "", {"x": "inputs.x"})], None, "capability"),
        ([Node("a", "c", {"x": "no-dot"})], None, "reference"),
        ([Node("a", "c", {"x": "inputs.x"})], {"out": "ghost.y"}, "graph output"),
        ([Node("a", "c", {"x": "inputs.x"})], {"out": "inputs.x"}, "graph output"),
        ([], None, "at least one node"),
    ],
)
def test_invalid_graphs_are_rejected_by_name(
    nodes: list[Node], outputs: dict[str, str] | None, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        decompose(Request.graph(nodes, {"x": torch.ones(2)}, outputs))


def test_refs_parse_both_ways() -> None:
    assert parse_ref("inputs.x") == FromInput("x")
    assert parse_ref("enc.features.v2") == FromNode("enc", "features.v2")
    assert str(FromNode("a", "y")) == "a.y" and str(FromInput("x")) == "inputs.x"


def test_sharding_by_row_threshold_is_balanced_and_combines_in_order() -> None:
    x = torch.arange(10.0).unsqueeze(1)
    graph = decompose(Request.single("c", {"x": x}), ShardPolicy(max_rows=4))
    assert list(graph.tasks) == ["task#0", "task#1", "task#2"]
    assert [(s.start, s.stop) for s in graph.shards] == [(0, 4), (4, 7), (7, 10)]
    assert graph.ready(set()) == ("task#0", "task#1", "task#2")  # all at once
    results = {name: double(None, graph.inputs_for(name, {})) for name in reversed(list(graph.tasks))}
    assert torch.equal(graph.combine(results)["y"], x * 2)


def test_sharding_by_bytes_and_by_max_batch() -> None:
    x = torch.zeros(16, 8)  # 32 bytes a row
    assert len(decompose(Request.single("c", {"x": x}), ShardPolicy(max_bytes=128)).shards) == 4
    assert len(decompose(Request.single("c", {"x": x}), max_batch=5).shards) == 4
    assert decompose(Request.single("c", {"x": x}), ShardPolicy(max_rows=16)).shards == ()
    assert decompose(Request.single("c", {"x": x}, shardable=False), max_batch=5).shards == ()
    # The tightest limit wins.
    assert len(decompose(Request.single("c", {"x": x}), ShardPolicy(max_rows=8), max_batch=2).shards) == 8


def test_a_sharded_graph_keeps_each_shard_in_its_own_lane() -> None:
    graph = decompose(pipeline_request(outputs={"logits": "head.logits"}), ShardPolicy(max_rows=3))
    assert len(graph.shards) == 3 and len(graph.tasks) == 12
    assert graph.tasks["join#1"].depends_on == {"left#1", "right#1"}
    results, waves = run_all(graph, pipeline_model)
    assert len(waves) == 3 and len(waves[0]) == 6  # every encoder of every shard at once
    assert torch.equal(graph.combine(results)["logits"], torch.full((8, 3), 5.5))


def test_shards_must_return_their_rows_and_compatible_shapes() -> None:
    graph = decompose(Request.single("c", {"x": torch.ones(4, 2)}), ShardPolicy(max_rows=2))
    good = {"task#0": {"y": torch.ones(2, 2)}, "task#1": {"y": torch.ones(2, 2)}}
    assert graph.combine(good)["y"].shape == (4, 2)
    with pytest.raises(TensorError, match="rows"):
        graph.combine({**good, "task#1": {"y": torch.ones(3, 2)}})
    with pytest.raises(TensorError, match="concatenate"):
        graph.combine({**good, "task#1": {"y": torch.ones(2, 5)}})
    with pytest.raises(TensorError, match="no output"):
        graph.combine({**good, "task#1": {"z": torch.ones(2, 2)}})
    with pytest.raises(ConfigError, match="no result"):
        graph.combine({"task#0": good["task#0"]})


def test_inputs_without_a_shared_batch_cannot_be_sharded() -> None:
    request = Request.single("c", {"x": torch.ones(8, 2), "y": torch.ones(3)})
    with pytest.raises(ConfigError, match="batch dimension"):
        decompose(request, ShardPolicy(max_rows=4))
    # ... but they need not be when they fit.
    assert decompose(request, ShardPolicy(max_rows=8)).shards == ()


def test_batch_limit_picks_what_enough_candidates_accept() -> None:
    assert batch_limit([8, 32, 0, 16], min_candidates=1) == 0  # one candidate has no limit
    assert batch_limit([8, 32, 0, 16], min_candidates=2) == 32
    assert batch_limit([8, 32, 16], min_candidates=3) == 8
    assert batch_limit([8, 32], min_candidates=5) == 8
    assert batch_limit([]) == 0 and batch_limit([None, 0]) == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 12), st.integers(0, 12))
def test_any_sharding_covers_every_row_once_in_order(rows: int, max_rows: int, max_batch: int) -> None:
    x = torch.arange(float(rows)).unsqueeze(1)
    graph = decompose(Request.single("c", {"x": x}), ShardPolicy(max_rows=max_rows), max_batch=max_batch)
    limit = min([v for v in (max_rows, max_batch) if v] or [rows])
    assert all(shard.rows <= limit for shard in graph.shards)
    if graph.shards:
        sizes = [shard.rows for shard in graph.shards]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == rows
    results, _ = run_all(graph, double)
    assert torch.equal(graph.combine(results)["y"], x * 2)
