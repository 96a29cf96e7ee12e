"""The specialization, resource-aware and learning strategies, driven with a fake model (pure, fast)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from atomic_p2p.contract import TaskKind
from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.strategies import (
    HISTORY_LENGTH,
    BidTerms,
    FeedbackKind,
    InputSpec,
    LearningStrategy,
    Load,
    NoBid,
    NoBidReason,
    Notice,
    Strategy,
    Task,
    decide,
    make_strategy,
)

IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=8)
# Held-out accuracy per class of a specialist on 0-4: near perfect there, useless elsewhere.
SPECIALIST = (0.99, 0.98, 0.97, 0.96, 0.95, 0.0, 0.0, 0.1, 0.0, 0.0)


@dataclass
class FakeModel:
    """A ModelView with every number chosen by the test; no torch module behind it."""

    model_id: str = "m"
    capabilities: tuple[str, ...] = ("classify/digits", "classify/digits/0-4")
    max_batch: int = 64
    max_input_tokens: int = 0
    supported_languages: tuple[str, ...] = ()
    price_per_example: float = 0.01
    validation_accuracy: float = 0.5
    class_accuracy: tuple[float, ...] = SPECIALIST
    expected_latency_ms: float = 10.0
    softmax: float = 0.93  # what preview_confidence answers
    accuracy_known: bool = True
    kind: TaskKind = TaskKind.CLASSIFICATION
    forward_passes: int = 0

    def inputs_problem(self, specs: Sequence[InputSpec]) -> str | None:
        return None

    def preview_confidence(self, preview: Sequence[torch.Tensor]) -> float:
        self.forward_passes += 1
        return self.softmax


@dataclass
class FakeClassifier(FakeModel):
    """A FakeModel that also says which class it predicts for each preview row."""

    predictions: list[int] = field(default_factory=list)

    def preview_classes(self, preview: Sequence[torch.Tensor]) -> Sequence[int]:
        self.forward_passes += 1
        return self.predictions


def task(batch: int = 4, capability: str = "classify/digits", preview_rows: int = 0) -> Task:
    preview = (torch.zeros(preview_rows, 64),) if preview_rows else ()
    return Task("t", capability, (InputSpec("x", "float32", (batch, 64)),), preview=preview)


def terms_of(answer: BidTerms | NoBid) -> BidTerms:
    assert isinstance(answer, BidTerms), answer
    return answer


def refusal_of(answer: BidTerms | NoBid) -> NoBid:
    assert isinstance(answer, NoBid), answer
    return answer


def notice(kind: FeedbackKind, **fields: Any) -> Notice:
    return Notice(kind=kind, model_id="m", request_id=b"r" * 16, task_id="t", **fields)


WIN, LOSS, OUTCOME = FeedbackKind.WIN, FeedbackKind.LOSS, FeedbackKind.OUTCOME


# --- specialization -------------------------------------------------------------------------


def specialist(**options: Any) -> Strategy:
    return make_strategy("specialization", {"classes": [0, 1, 2, 3, 4], **options})


def test_a_declared_capability_bucket_is_inside_and_bids_the_domain_accuracy_at_list_price() -> None:
    strategy = specialist(capabilities=["classify/digits/0-4"])
    terms = terms_of(strategy.bid(task(capability="classify/digits/0-4"), FakeModel(), IDLE))
    assert terms.confidence == pytest.approx(sum(SPECIALIST[:5]) / 5)
    assert terms.cost == pytest.approx(0.04) and terms.expected_latency_ms == 10.0
    assert terms.strategy == "specialization"


def test_a_preview_predicted_inside_bids_the_expected_accuracy_of_the_predicted_classes() -> None:
    model = FakeClassifier(predictions=[0, 1, 1, 4])
    terms = terms_of(specialist().bid(task(preview_rows=4), model, IDLE))
    assert terms.confidence == pytest.approx((0.99 + 0.98 + 0.98 + 0.95) / 4)
    assert terms.cost == pytest.approx(0.04)


def test_a_preview_predicted_outside_is_declined_with_the_share_it_found() -> None:
    model = FakeClassifier(predictions=[0, 7, 8, 9])
    refusal = refusal_of(specialist().bid(task(preview_rows=4), model, IDLE))
    assert refusal.reason is NoBidReason.CONSTRAINT_VIOLATED
    assert "25% of the preview rows" in refusal.detail and "min_share 1" in refusal.detail


def test_min_share_admits_a_mostly_inside_preview() -> None:
    model = FakeClassifier(predictions=[0, 1, 2, 7])
    assert terms_of(specialist(min_share=0.75).bid(task(preview_rows=4), model, IDLE))
    assert isinstance(specialist(min_share=0.8).bid(task(preview_rows=4), model, IDLE), NoBid)


def test_a_general_task_without_evidence_is_outside() -> None:
    for model in (FakeModel(), FakeClassifier(predictions=[0])):
        refusal = refusal_of(specialist().bid(task(), model, IDLE))
        assert "no preview it can classify" in refusal.detail
    # A preview the model cannot classify is no evidence either.
    assert isinstance(specialist().bid(task(preview_rows=2), FakeModel(), IDLE), NoBid)


def test_outside_discount_bids_the_measured_outside_accuracy_at_a_discount() -> None:
    strategy = specialist(outside="discount", outside_confidence_scale=0.5, outside_price_scale=0.25)
    terms = terms_of(strategy.bid(task(), FakeModel(), IDLE))
    assert terms.confidence == pytest.approx(0.5 * sum(SPECIALIST[5:]) / 5)
    assert terms.cost == pytest.approx(0.01)
    assert strategy.snapshot()["price_multiplier"] == 0.25
    predicted = terms_of(strategy.bid(task(preview_rows=2), FakeClassifier(predictions=[7, 7]), IDLE))
    assert predicted.confidence == pytest.approx(0.05)
    assert terms_of(strategy.bid(task(preview_rows=1), FakeClassifier(predictions=[3]), IDLE)).cost == 0.04
    assert strategy.snapshot()["price_multiplier"] == 1.0


def test_without_class_accuracy_the_model_own_confidence_is_used() -> None:
    model = FakeModel(class_accuracy=())
    strategy = specialist(capabilities=["classify/digits/0-4"], outside="discount")
    inside = terms_of(strategy.bid(task(capability="classify/digits/0-4", preview_rows=2), model, IDLE))
    assert inside.confidence == 0.93  # the preview's softmax
    outside = terms_of(strategy.bid(task(), model, IDLE))
    assert outside.confidence == 0.5  # the overall held-out accuracy


def test_predictions_are_only_computed_when_they_matter() -> None:
    model = FakeClassifier(predictions=[0], class_accuracy=())
    strategy = specialist(capabilities=["classify/digits/0-4"])
    strategy.bid(task(capability="classify/digits/0-4", preview_rows=1), model, IDLE)
    assert model.forward_passes == 1  # the softmax only: without class accuracy, classes say nothing


def test_decide_passes_the_specialist_refusal_on() -> None:
    model = FakeClassifier(predictions=[5, 6])
    strategy = specialist()
    assert decide(task(preview_rows=2), [(model, strategy)], IDLE) == NoBid(
        NoBidReason.CONSTRAINT_VIOLATED, refusal_of(strategy.bid(task(preview_rows=2), model, IDLE)).detail
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"needs its domain in strategy_options: classes = \[0, 1, 2\]"),
        ({"classes": []}, r"strategy_options.classes must be a non-empty list of distinct integers >= 0"),
        ({"classes": [0, -1]}, "strategy_options.classes must be"),
        ({"classes": [1, 1]}, "strategy_options.classes must be"),
        ({"classes": [True]}, "strategy_options.classes must be"),
        ({"classes": "0-4"}, r"e.g. classes = \[0, 1, 2, 3, 4\]; got '0-4'"),
        ({"capabilities": ["ok", ""]}, "strategy_options.capabilities must be a non-empty list"),
        ({"classes": [0], "outside": "ignore"}, "outside must be one of 'decline', 'discount'"),
        ({"classes": [0], "min_share": 0}, r"min_share must be a number in \(0, 1\]"),
        ({"classes": [0], "outside_price_scale": -1}, "outside_price_scale must be a number >= 0"),
        (
            {"classes": [0], "outside_confidence_scale": 2},
            r"outside_confidence_scale must be a number in \[0, 1\]",
        ),
        ({"classes": [0], "domain": "digits"}, "takes no option.s. domain; it takes capabilities, classes"),
    ],
)
def test_specialization_options_are_validated(options: Mapping[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_strategy("specialization", options)


# --- resource-aware -------------------------------------------------------------------------


def load(in_flight: int, queued: int = 0, capacity: int = 2, queue_limit: int = 8) -> Load:
    return Load(in_flight=in_flight, queued=queued, capacity=capacity, queue_limit=queue_limit)


def test_an_idle_node_asks_list_price_and_promises_the_measured_latency() -> None:
    terms = terms_of(make_strategy("resource-aware", {}).bid(task(), FakeModel(), IDLE))
    assert (terms.cost, terms.expected_latency_ms, terms.strategy) == (
        pytest.approx(0.04),
        10.0,
        "resource-aware",
    )
    assert terms.confidence == 0.5  # the base strategy's: held-out accuracy without a preview


def test_price_follows_alpha_times_utilization_to_the_power() -> None:
    strategy = make_strategy("resource-aware", {"alpha": 2.0, "power": 1})
    terms = terms_of(strategy.bid(task(), FakeModel(), load(2, 3)))  # 5 of 10 slots: u = 0.5
    assert terms.cost == pytest.approx(0.04 * (1 + 2.0 * 0.5))
    assert strategy.snapshot()["parameters"]["last_utilization"] == 0.5
    assert strategy.snapshot()["price_multiplier"] == pytest.approx(2.0)


def test_promised_latency_counts_the_calls_ahead_per_worker() -> None:
    strategy = make_strategy("resource-aware", {"decline_above": 1.0})
    loads = [load(1, 0), load(2, 0), load(2, 1), load(2, 3)]
    latency = [terms_of(strategy.bid(task(), FakeModel(), at)).expected_latency_ms for at in loads]
    assert latency == pytest.approx([10.0, 15.0, 20.0, 30.0])


def test_price_and_latency_rise_with_load_until_it_declines() -> None:
    strategy = make_strategy("resource-aware", {"decline_above": 0.8})
    quotes = [terms_of(strategy.bid(task(), FakeModel(), load(min(n, 2), max(0, n - 2)))) for n in range(8)]
    assert all(a.cost < b.cost for a, b in itertools.pairwise(quotes))
    assert all(a.expected_latency_ms <= b.expected_latency_ms for a, b in itertools.pairwise(quotes))
    refusal = refusal_of(strategy.bid(task(), FakeModel(), load(2, 6)))
    assert refusal.reason is NoBidReason.OVERLOADED and "decline_above 0.8" in refusal.detail


def test_resource_aware_wraps_any_base_strategy() -> None:
    strategy = make_strategy(
        "resource-aware", {"base": "specialization", "base_options": {"classes": [0, 1, 2, 3, 4]}}
    )
    assert refusal_of(strategy.bid(task(), FakeModel(), load(2, 3))).reason is NoBidReason.CONSTRAINT_VIOLATED
    terms = terms_of(strategy.bid(task(preview_rows=1), FakeClassifier(predictions=[2]), load(2, 3)))
    assert terms.confidence == 0.97 and terms.cost == pytest.approx(0.04 * 1.25)
    assert strategy.snapshot()["base"]["strategy"] == "specialization"


@given(
    in_flight=st.integers(0, 8),
    queued=st.integers(0, 30),
    capacity=st.integers(1, 8),
    queue_limit=st.integers(0, 32),
    alpha=st.floats(0, 10),
    power=st.floats(0.1, 4),
)
@settings(max_examples=200, deadline=None)
def test_load_never_lowers_price_or_latency(
    in_flight: int, queued: int, capacity: int, queue_limit: int, alpha: float, power: float
) -> None:
    strategy = make_strategy("resource-aware", {"alpha": alpha, "power": power, "decline_above": 1.0})
    busy = Load(in_flight, queued, capacity, queue_limit)
    busier = dataclasses.replace(busy, queued=queued + 1)
    if busier.utilization >= 1.0:
        return
    now, later = (terms_of(strategy.bid(task(), FakeModel(), at)) for at in (busy, busier))
    assert (
        0.04 - 1e-12 <= now.cost <= later.cost
        and 10.0 <= now.expected_latency_ms <= later.expected_latency_ms
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -1}, "alpha must be a number >= 0, e.g. alpha = 1.0"),
        ({"power": 0}, "power must be a number > 0"),
        ({"decline_above": 0}, r"decline_above must be a number in \(0, 1\]"),
        ({"decline_above": 1.5}, "decline_above must be"),
        ({"alpha": "high"}, "alpha must be a number"),
        ({"alpha": math.nan}, "alpha must be a number"),
        ({"base": "psychic"}, "strategy 'resource-aware': base: strategy 'psychic' is unknown"),
        ({"base": "resource-aware"}, "base must name another strategy"),
        ({"base": "fixed"}, "base: strategy 'fixed' needs strategy_options.confidence"),
        ({"base_options": 3}, "base_options must be a table"),
        ({"beta": 1}, "takes no option.s. beta; it takes alpha, base, base_options, decline_above, power"),
    ],
)
def test_resource_aware_options_are_validated(options: Mapping[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_strategy("resource-aware", options)


# --- learning -------------------------------------------------------------------------------


def learner(**options: Any) -> LearningStrategy:
    strategy = make_strategy("learning", options)
    assert isinstance(strategy, LearningStrategy)
    return strategy


def test_losses_lower_the_price_and_wins_raise_it_within_bounds() -> None:
    strategy = learner(price_step=0.1)
    for _ in range(3):
        strategy.learn(notice(LOSS))
    assert strategy.multiplier == pytest.approx(math.exp(-0.15))
    assert terms_of(strategy.bid(task(), FakeModel(), IDLE)).cost == pytest.approx(0.04 * math.exp(-0.15))
    for _ in range(100):
        strategy.learn(notice(LOSS))
    assert strategy.multiplier == 0.5
    for _ in range(100):
        strategy.learn(notice(WIN))
    assert strategy.multiplier == 2.0


def test_a_loss_to_a_cheaper_winner_lowers_the_price_more() -> None:
    plain, informed = learner(), learner()
    plain.learn(notice(LOSS, clearing_price=0.02))
    informed.learn(notice(LOSS, clearing_price=0.02, bid_cost=0.04))
    assert informed.multiplier < plain.multiplier < 1.0
    cheaper = learner()
    cheaper.learn(notice(LOSS, clearing_price=0.08, bid_cost=0.04))  # lost on quality, not price
    assert cheaper.multiplier == pytest.approx(plain.multiplier)


def test_the_price_settles_where_it_wins_the_target_share() -> None:
    # The requester takes this peer when it is cheaper than a rival at 1.2x list price.
    strategy = learner(price_step=0.05)
    wins = []
    for _ in range(400):
        won = strategy.multiplier < 1.2
        wins.append(won)
        strategy.learn(notice(WIN if won else LOSS))
    assert abs(strategy.multiplier - 1.2) < 0.05
    assert sum(wins[-100:]) == pytest.approx(50, abs=2)


def test_the_confidence_offset_tracks_the_outcomes() -> None:
    # The model claims 0.9 (held-out accuracy) but delivers 0.6 on this traffic.
    strategy, model = learner(max_offset=0.5, offset_rate=0.1), FakeModel(validation_accuracy=0.9)
    for _ in range(150):
        claim = terms_of(strategy.bid(task(), model, IDLE)).confidence
        strategy.learn(notice(OUTCOME, outcome_score=0.6, bid_confidence=claim))
    assert strategy.offset == pytest.approx(-0.3, abs=1e-3)
    assert terms_of(strategy.bid(task(), model, IDLE)).confidence == pytest.approx(0.6, abs=1e-3)
    assert strategy.snapshot()["confidence_offset"] == strategy.offset


def test_the_offset_is_bounded_and_falls_back_on_the_mean_claim() -> None:
    strategy, model = learner(max_offset=0.2), FakeModel(validation_accuracy=0.9)
    strategy.learn(notice(OUTCOME, outcome_score=0.0))
    assert strategy.offset == 0.0  # no claim to compare with yet
    for _ in range(100):
        strategy.bid(task(), model, IDLE)
        strategy.learn(notice(OUTCOME, outcome_score=0.0))  # the node did not say what it claimed
    assert strategy.offset == -0.2


def test_learning_is_deterministic_given_the_notices() -> None:
    kinds = [WIN, LOSS, OUTCOME, LOSS, LOSS, WIN, OUTCOME] * 5
    terms = {"outcome_score": 0.5, "bid_confidence": 0.8, "clearing_price": 0.03, "bid_cost": 0.05}
    sequence = [notice(kind, at_ms=i, **terms) for i, kind in enumerate(kinds)]
    first, second = learner(), learner()
    for item in sequence:
        first.learn(item)
        second.learn(item)
    assert first.snapshot() == second.snapshot() and list(first.history) == list(second.history)
    assert [p.at_ms for p in first.history] == list(range(len(sequence)))


def test_learning_wraps_a_base_strategy_and_composes_its_parameters() -> None:
    strategy = learner(base="resource-aware", base_options={"alpha": 1.0, "power": 1})
    strategy.learn(notice(LOSS))
    terms = terms_of(strategy.bid(task(), FakeModel(), load(2, 3)))
    assert terms.strategy == "learning"
    assert terms.cost == pytest.approx(0.04 * 1.5 * strategy.multiplier)
    snapshot = strategy.snapshot()
    assert snapshot["price_multiplier"] == pytest.approx(1.5 * strategy.multiplier)
    assert snapshot["base"]["strategy"] == "resource-aware" and snapshot["base"]["losses"] == 1


def test_snapshot_is_json_and_history_is_bounded() -> None:
    strategy = learner()
    for i in range(HISTORY_LENGTH + 10):
        strategy.learn(notice(WIN if i % 3 else LOSS, at_ms=i))
    assert len(strategy.history) == HISTORY_LENGTH and strategy.history[0].at_ms == 10
    last = strategy.history[-1]
    assert (last.wins, last.losses) == (strategy.record.wins, strategy.record.losses)
    assert last.price_multiplier == strategy.multiplier
    snapshot = json.loads(json.dumps(strategy.snapshot()))
    assert snapshot["parameters"]["price_step"] == 0.05 and snapshot["parameters"]["max_offset"] == 0.3


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
notices = st.builds(
    notice,
    st.sampled_from(list(FeedbackKind)),
    clearing_price=finite_or_not,
    score_to_win=finite_or_not,
    outcome_score=finite_or_not,
    bid_cost=st.none() | finite_or_not,
    bid_confidence=st.none() | finite_or_not,
)


@given(
    events=st.lists(st.one_of(notices, st.just("bid")), max_size=60),
    step=st.floats(0.01, 1),
    target=st.floats(0.05, 0.95),
    max_offset=st.floats(0.0, 1.0),
)
# Found by this test: a bid cost so small that cost / price underflows to 0.
@example(events=[notice(LOSS, clearing_price=2.0**52, bid_cost=1e-308)], step=1.0, target=0.5, max_offset=0.0)
@settings(max_examples=150, deadline=None)
def test_no_notice_sequence_breaks_the_bounds(
    events: list[Notice | str], step: float, target: float, max_offset: float
) -> None:
    strategy = learner(
        price_step=step, target_win_rate=target, max_offset=max_offset, min_multiplier=0.5, max_multiplier=3.0
    )
    model = FakeModel(validation_accuracy=0.7)
    for event in events:
        if isinstance(event, Notice):
            strategy.learn(event)
        else:
            terms = terms_of(strategy.bid(task(), model, IDLE))
            assert 0.0 <= terms.confidence <= 1.0 and 0.02 - 1e-12 <= terms.cost <= 0.12 + 1e-12
        assert 0.5 <= strategy.multiplier <= 3.0
        assert -max_offset <= strategy.offset <= max_offset
        assert all(math.isfinite(v) for v in (strategy.record.revenue, strategy.record.outcome_total))
    assert len(strategy.history) == sum(isinstance(e, Notice) for e in events)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"price_step": 0}, r"price_step must be a number in \(0, 1\], e.g. price_step = 0.05"),
        ({"target_win_rate": 1}, r"target_win_rate must be a number in \(0, 1\)"),
        ({"min_multiplier": 0}, "min_multiplier must be a number > 0"),
        (
            {"multiplier": 3},
            "min_multiplier <= multiplier <= max_multiplier, e.g. 0.5 <= 1.0 <= 2.0; got 0.5, 3, 2",
        ),
        ({"min_multiplier": 2, "max_multiplier": 1, "multiplier": 1.5}, "min_multiplier <= multiplier"),
        ({"offset_rate": 1.5}, r"offset_rate must be a number in \(0, 1\]"),
        ({"max_offset": -0.1}, r"max_offset must be a number in \[0, 1\]"),
        ({"max_offset": True}, "max_offset must be a number"),
        (
            {"learning_rate": 0.1},
            "takes no option.s. learning_rate; it takes base, base_options, max_multiplier",
        ),
        ({"base": "specialization"}, "base: strategy 'specialization' needs its domain"),
    ],
)
def test_learning_options_are_validated(options: Mapping[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_strategy("learning", options)


def test_a_model_that_cannot_estimate_its_confidence_says_so() -> None:
    strategy = make_strategy("confidence", {})
    regressor = FakeModel(kind=TaskKind.REGRESSION)
    for answer in (
        strategy.bid(task(), regressor, IDLE),
        strategy.bid(task(preview_rows=2), regressor, IDLE),
    ):
        assert terms_of(answer).confidence_unknown and terms_of(answer).confidence == 0.0
    assert regressor.forward_passes == 0  # a softmax of a regression output means nothing
    unmeasured = FakeModel(accuracy_known=False)
    assert terms_of(strategy.bid(task(), unmeasured, IDLE)).confidence_unknown
    previewed = terms_of(strategy.bid(task(preview_rows=2), unmeasured, IDLE))
    assert not previewed.confidence_unknown and previewed.confidence == pytest.approx(0.93)
    assert not terms_of(strategy.bid(task(), FakeModel(), IDLE)).confidence_unknown
