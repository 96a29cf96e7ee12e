"""Bidding: the shared screening in decide() and the built-in strategies (pure, no sockets)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.config import ModelConfig
from atomic_p2p.peer.models import BuiltModel, HostedModel
from atomic_p2p.peer.strategies import (
    HISTORY_LENGTH,
    STRATEGIES,
    BidTerms,
    ConfidenceStrategy,
    FeedbackKind,
    HistoryPoint,
    InputSpec,
    JournalEntry,
    Load,
    ModelView,
    NoBid,
    NoBidReason,
    Notice,
    Strategy,
    StrategyJournal,
    Task,
    decide,
    make_strategy,
    read_journal,
    register_strategy,
)
from atomic_p2p.peer.strategies.screening import Screened
from atomic_p2p.terms import ModelConstraints

IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=4)


def constant_logits(logits: list[float]) -> nn.Module:
    """A model whose output is the same logits for every row, so its softmax is known."""
    layer = nn.Linear(64, len(logits))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(logits))
    return layer


def hosted(
    model_id: str = "m",
    *,
    logits: list[float] | None = None,
    accuracy: float = 0.9,
    price: float = 0.01,
    strategy: str = "confidence",
    strategy_options: Mapping[str, Any] | None = None,
    capabilities: tuple[str, ...] = ("classify/digits",),
    extra_latency_ms: float = 0.0,
    class_accuracy: tuple[float, ...] = (),
    kind: type[HostedModel] = HostedModel,
    **constraints: Any,
) -> HostedModel:
    config = ModelConfig(
        model_id=model_id,
        capabilities=capabilities,
        factory="unused:unused",
        price_per_example=price,
        strategy=strategy,
        strategy_options=strategy_options or {},
        constraints=ModelConstraints(**{"max_batch": 16, **constraints}),
        extra_latency_ms=extra_latency_ms,
    )
    module = constant_logits(logits or [0.0] * 10)
    built = BuiltModel(
        module=module, input_shape=(64,), validation_accuracy=accuracy, class_accuracy=class_accuracy
    )
    return kind(config, built, torch.device("cpu"))


def task(batch: int = 4, **fields: Any) -> Task:
    defaults: dict[str, Any] = {
        "task_id": "t",
        "capability": "classify/digits",
        "inputs": (InputSpec("x", "float32", (batch, 64)),),
    }
    return Task(**{**defaults, **fields})


def offer(*models: HostedModel) -> list[tuple[HostedModel, Strategy]]:
    return [(model, model.strategy) for model in models]


def bid_of(answer: tuple[HostedModel, BidTerms] | NoBid) -> BidTerms:
    assert not isinstance(answer, NoBid), answer
    return answer[1]


def reason_of(answer: tuple[HostedModel, BidTerms] | NoBid) -> NoBidReason:
    assert isinstance(answer, NoBid), answer
    return answer.reason


def test_hosted_model_satisfies_the_model_view_protocol() -> None:
    view: ModelView = hosted()  # mypy checks the structure; this checks it at run time too
    assert view.model_id == "m"


def test_confidence_without_preview_is_the_held_out_accuracy() -> None:
    terms = bid_of(decide(task(), offer(hosted(accuracy=0.83)), IDLE))
    assert terms.confidence == pytest.approx(0.83)
    assert terms.strategy == "confidence"


def test_confidence_with_preview_is_the_mean_max_softmax_on_it() -> None:
    model = hosted(logits=[2.0, 0.0] + [-math.inf] * 8, accuracy=0.1)
    preview = (torch.rand(3, 64),)
    terms = bid_of(decide(task(preview=preview), offer(model), IDLE))
    assert terms.confidence == pytest.approx(math.exp(2) / (math.exp(2) + 1), rel=1e-5)


def test_fixed_strategy_declares_its_confidence_whatever_the_input() -> None:
    model = hosted(strategy="fixed", strategy_options={"confidence": 0.42}, logits=[9.0] + [0.0] * 9)
    assert bid_of(decide(task(preview=(torch.rand(2, 64),)), offer(model), IDLE)).confidence == pytest.approx(
        0.42
    )


def test_cost_is_price_times_batch_and_latency_adds_the_simulated_slowdown() -> None:
    model = hosted(price=0.25, extra_latency_ms=500.0)
    terms = bid_of(decide(task(batch=8), offer(model), IDLE))
    assert terms.cost == pytest.approx(2.0)
    assert terms.expected_latency_ms == pytest.approx(model.latency.value + 500.0)
    assert 500.0 < terms.expected_latency_ms < 600.0


REFUSALS = [
    ({"capability": "translate/en-de"}, NoBidReason.UNKNOWN_CAPABILITY),
    ({"model_id": "nope"}, NoBidReason.UNKNOWN_MODEL),
    ({"inputs": (InputSpec("x", "float64", (4, 64)),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"inputs": (InputSpec("x", "float32", (4, 63)),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"inputs": (InputSpec("x", "float32", (4, 8, 8)),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"inputs": (InputSpec("image", "float32", (4, 64)),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"inputs": (InputSpec("x", "float32", (0, 64)),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"inputs": ()}, NoBidReason.BAD_INPUT_SPEC),
    ({"inputs": (InputSpec("x", "float32", (17, 64)),)}, NoBidReason.CONSTRAINT_VIOLATED),
    ({"preview": (torch.rand(2, 32),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"preview": (torch.rand(2, 64, dtype=torch.float64),)}, NoBidReason.BAD_INPUT_SPEC),
    ({"preview": (torch.rand(17, 64),)}, NoBidReason.CONSTRAINT_VIOLATED),
    ({"preview": (torch.rand(9, 64), torch.rand(9, 64))}, NoBidReason.CONSTRAINT_VIOLATED),  # 18 rows
    ({"preview": (torch.rand(2, 64), torch.rand(2, 63))}, NoBidReason.BAD_INPUT_SPEC),
    ({"preview": (torch.rand(2, 64), torch.ones(2, 64, dtype=torch.int64))}, NoBidReason.BAD_INPUT_SPEC),
    ({"max_cost": 0.01}, NoBidReason.BELOW_COST),
]


@pytest.mark.parametrize(("changes", "reason"), REFUSALS)
def test_tasks_a_model_cannot_do_get_a_reasoned_no_bid(changes: dict[str, Any], reason: NoBidReason) -> None:
    answer = decide(dataclasses.replace(task(), **changes), offer(hosted()), IDLE)
    assert reason_of(answer) is reason
    assert isinstance(answer, NoBid) and answer.detail


def test_one_calls_screening_memory_changes_no_answer() -> None:
    """The tasks of one call share ``screened`` (each task shape is screened once): every case
    above, its own id and preview values each, answered in one call, in two orders, gets what
    it gets alone, confidence and cost included."""
    changes = [dict(case[0]) for case in REFUSALS] + [{}, {"batch": 2}, {"preview": (torch.rand(2, 64),)}]
    tasks = []
    for index, change in enumerate(changes * 2):
        batch = change.pop("batch", 4)
        change = {**change, "preview": tuple(t.clone().random_(0, 5) for t in change.get("preview", ()))}
        tasks.append(dataclasses.replace(task(batch), task_id=f"t{index}", **change))
    models = offer(hosted("a", logits=[2.0] + [0.0] * 9), hosted("b", accuracy=0.7, max_batch=2))
    for ordered in (tasks, tasks[::-1]):
        screened: Screened = {}
        together = [decide(one, models, IDLE, screened) for one in ordered]
        assert together == [decide(one, models, IDLE) for one in ordered]
        assert len(screened) < len(ordered)  # shapes repeat: the memory was used


def test_an_unknown_capability_decline_names_what_the_peer_offers_within_bounds() -> None:
    digits = hosted("digits", capabilities=("classify/digits", "classify/digits/0-4"))
    text = hosted("text", capabilities=("classify/sentiment",))
    answer = decide(task(capability="translate/en-de"), offer(digits, text), IDLE)
    assert isinstance(answer, NoBid) and answer.reason is NoBidReason.UNKNOWN_CAPABILITY
    assert answer.detail == (
        "no model here offers 'translate/en-de'; "
        "offered: classify/digits, classify/digits/0-4, classify/sentiment"
    )
    many = hosted("many", capabilities=tuple(f"task/{index:02d}" for index in range(20)))
    hostile = decide(task(capability="x" * 100_000), offer(many), IDLE)
    assert isinstance(hostile, NoBid) and len(hostile.detail) < 400
    assert "(100000 chars)" in hostile.detail and hostile.detail.endswith("task/07 and 12 more")


def test_token_and_language_constraints_are_enforced() -> None:
    model = hosted(max_input_tokens=100, supported_languages=("en",))
    assert reason_of(decide(task(input_tokens=101), offer(model), IDLE)) is NoBidReason.CONSTRAINT_VIOLATED
    assert reason_of(decide(task(language="de"), offer(model), IDLE)) is NoBidReason.CONSTRAINT_VIOLATED
    assert bid_of(decide(task(input_tokens=100, language="en"), offer(model), IDLE))


def test_load_decides_before_any_strategy() -> None:
    busy = Load(in_flight=2, queued=4, capacity=2, queue_limit=4)
    assert busy.saturated and busy.utilization == 1.0
    assert reason_of(decide(task(), offer(hosted()), busy)) is NoBidReason.OVERLOADED
    draining = dataclasses.replace(IDLE, draining=True)
    assert reason_of(decide(task(), offer(hosted()), draining)) is NoBidReason.DRAINING


def test_the_best_offer_wins_by_confidence_then_cost() -> None:
    cheap = hosted("cheap", accuracy=0.8, price=0.001)
    good = hosted("good", accuracy=0.95, price=0.1)
    good_cheaper = hosted("good-cheaper", accuracy=0.95, price=0.05)
    model, terms = decide(task(), offer(cheap, good, good_cheaper), IDLE)  # type: ignore[misc]
    assert model is good_cheaper and terms.model_id == "good-cheaper"


def test_a_requested_model_id_restricts_the_choice() -> None:
    cheap, good = hosted("cheap", accuracy=0.8), hosted("good", accuracy=0.95)
    model, _ = decide(task(model_id="cheap"), offer(cheap, good), IDLE)  # type: ignore[misc]
    assert model is cheap


def test_a_model_that_cannot_take_the_task_does_not_block_one_that_can() -> None:
    narrow = hosted("narrow", accuracy=0.99, max_batch=2)
    wide = hosted("wide", accuracy=0.7, max_batch=64)
    model, _ = decide(task(batch=8), offer(narrow, wide), IDLE)  # type: ignore[misc]
    assert model is wide


def test_feedback_is_counted() -> None:
    strategy = ConfidenceStrategy()
    feedback: list[tuple[FeedbackKind, dict[str, Any]]] = [
        (FeedbackKind.WIN, {"clearing_price": 0.5}),
        (FeedbackKind.WIN, {"clearing_price": 0.25}),
        (FeedbackKind.LOSS, {"score_to_win": 0.9}),
        (FeedbackKind.OUTCOME, {"outcome_score": 1.0}),
        (FeedbackKind.OUTCOME, {"outcome_score": 0.5}),
        (FeedbackKind.WIN, {"clearing_price": math.nan}),  # a requester's NaN is not revenue
    ]
    for kind, extra in feedback:
        strategy.learn(Notice(kind=kind, model_id="m", request_id=b"r" * 16, task_id="t", **extra))
    record = strategy.record
    assert (record.wins, record.losses, record.outcomes) == (3, 1, 2)
    assert record.revenue == pytest.approx(0.75)
    assert record.mean_outcome == pytest.approx(0.75)


def test_strategy_factories_validate_their_options() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        make_strategy("psychic", {})
    with pytest.raises(ConfigError, match=r"confidence, a number in \[0, 1\]"):
        make_strategy("fixed", {})
    with pytest.raises(ConfigError, match=r"a number in \[0, 1\]"):
        make_strategy("fixed", {"confidence": 1.5})
    with pytest.raises(ConfigError, match="takes no option"):
        make_strategy("confidence", {"greed": 2})


class _Greedy:
    """A strategy from outside the package: bids only above a floor price, NaN on request."""

    name = "greedy"

    def __init__(self, floor: float, broken: bool = False) -> None:
        self.floor, self.broken, self.heard = floor, broken, 0
        self.history: list[HistoryPoint] = []

    def snapshot(self) -> dict[str, Any]:
        return {"strategy": self.name, "floor": self.floor}

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
        cost = max(self.floor, model.price_per_example * task.batch_size)
        confidence = math.nan if self.broken else 0.5
        return BidTerms(model.model_id, confidence, model.expected_latency_ms, cost, self.name)

    def learn(self, notice: Notice) -> None:
        self.heard += 1


def test_new_strategies_plug_in_by_name() -> None:
    register_strategy("greedy", lambda options: _Greedy(float(options.get("floor", 1.0))))
    try:
        model = hosted(strategy="greedy", strategy_options={"floor": 3.0})
        terms = bid_of(decide(task(), offer(model), IDLE))
        assert (terms.cost, terms.strategy) == (3.0, "greedy")
        assert reason_of(decide(task(max_cost=2.0), offer(model), IDLE)) is NoBidReason.BELOW_COST
    finally:
        del STRATEGIES["greedy"]


def test_a_strategy_that_produces_nan_does_not_get_it_signed() -> None:
    model = hosted()
    answer = decide(task(), [(model, _Greedy(0.0, broken=True))], IDLE)
    assert reason_of(answer) is NoBidReason.UNSPECIFIED


def test_the_strategies_package_exports_every_name_it_lists_once() -> None:
    import atomic_p2p.peer.strategies as package

    assert len(package.__all__) == len(set(package.__all__))
    assert [name for name in package.__all__ if not hasattr(package, name)] == []
    assert importlib.util.find_spec("atomic_p2p.peer.strategy") is None  # the old re-export is gone


BUILT_IN_OPTIONS: dict[str, dict[str, Any]] = {
    "confidence": {},
    "fixed": {"confidence": 0.7},
    "specialization": {"classes": [0, 1], "outside": "discount"},
    "resource-aware": {},
    "learning": {},
}


def test_every_built_in_strategy_is_registered_and_documented_here() -> None:
    assert sorted(STRATEGIES) == sorted(BUILT_IN_OPTIONS)


@pytest.mark.parametrize("name", sorted(BUILT_IN_OPTIONS))
def test_every_built_in_strategy_snapshots_to_json_and_keeps_a_bounded_history(name: str) -> None:
    model = hosted(strategy=name, strategy_options=BUILT_IN_OPTIONS[name])
    strategy = model.strategy
    assert bid_of(decide(task(), offer(model), IDLE)).strategy == name
    for at_ms in range(HISTORY_LENGTH + 3):
        strategy.learn(Notice(FeedbackKind.LOSS, "m", b"r" * 16, "t", at_ms=at_ms))
    snapshot = json.loads(json.dumps(strategy.snapshot()))
    assert snapshot["strategy"] == name and snapshot["losses"] == HISTORY_LENGTH + 3
    assert {"price_multiplier", "confidence_offset", "wins", "parameters"} <= set(snapshot)
    assert len(strategy.history) == HISTORY_LENGTH
    assert strategy.history[-1] == HistoryPoint(
        HISTORY_LENGTH + 2, snapshot["price_multiplier"], snapshot["confidence_offset"], 0, HISTORY_LENGTH + 3
    )


class ClassifyingModel(HostedModel):
    """A hosted model that also names the class it predicts per preview row (ClassPredictor)."""

    def preview_classes(self, preview: Sequence[torch.Tensor]) -> list[int]:
        with torch.inference_mode():
            return self.module(torch.cat(list(preview)).to(self.device)).argmax(dim=-1).tolist()


def test_a_hosted_specialist_bids_inside_its_classes_and_declines_outside() -> None:
    per_class = (0.99, 0.98, 0.97, 0.96, 0.95, 0.0, 0.0, 0.0, 0.0, 0.0)
    options = {"classes": [0, 1, 2, 3, 4]}

    def specialist(predicted: int) -> HostedModel:
        logits = [0.0] * 10
        logits[predicted] = 5.0
        return hosted(
            strategy="specialization",
            strategy_options=options,
            logits=logits,
            class_accuracy=per_class,
            kind=ClassifyingModel,
        )

    preview = (torch.rand(2, 64),)
    inside = bid_of(decide(task(preview=preview), offer(specialist(3)), IDLE))
    assert inside.confidence == pytest.approx(0.96) and inside.cost == pytest.approx(0.04)
    outside = decide(task(preview=preview), offer(specialist(7)), IDLE)
    assert reason_of(outside) is NoBidReason.CONSTRAINT_VIOLATED


def test_the_journal_appends_rotates_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / "strategy-history.jsonl"
    strategy = make_strategy("learning", {})
    with StrategyJournal(path, max_bytes=1000) as journal:
        journal.append("m", strategy)  # no history yet: nothing written
        assert not path.exists()
        for at_ms in range(40):
            strategy.learn(Notice(FeedbackKind.WIN, "m", b"r" * 16, "t", at_ms=at_ms))
            journal.append("m", strategy)
    rotated = path.with_name(path.name + ".1")
    assert rotated.stat().st_size >= 1000 and (not path.exists() or path.stat().st_size < 1000)
    entries = read_journal(path)
    assert entries[-1] == JournalEntry("m", "learning", strategy.history[-1])
    times = [entry.point.at_ms for entry in entries]
    assert times == list(range(40 - len(times), 40)) and len(times) >= 5


def test_reading_the_journal_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "strategy-history.jsonl"
    strategy = make_strategy("confidence", {})
    strategy.learn(Notice(FeedbackKind.LOSS, "m", b"r" * 16, "t", at_ms=5))
    with StrategyJournal(path) as journal:
        journal.append("m", strategy)
    with path.open("a") as file:
        file.write('{"model_id": "m", "strategy": "conf')
    assert [entry.point.at_ms for entry in read_journal(path)] == [5]
    assert read_journal(tmp_path / "missing.jsonl") == []


def test_the_strategy_examples_in_peers_readme_load() -> None:
    readme = Path(__file__).parents[2] / "peers" / "README.md"
    blocks = [b.split("```")[0] for b in readme.read_text().split("```toml\n")[1:]]
    examples = [tomllib.loads(block) for block in blocks if block.startswith("strategy = ")]
    assert [e["strategy"] for e in examples] == ["specialization", "resource-aware", "learning"]
    for example in examples:
        make_strategy(example["strategy"], example["models"]["strategy_options"])
