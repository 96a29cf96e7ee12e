"""The weighted score (atomic_p2p.requester.evaluator.score, the evaluator with no learning and no
exploration) and the weight profiles: pure, so every case runs without sockets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester.evaluator import score
from atomic_p2p.requester.ranking import Ranking
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.requester.weights import PROFILES, Weights, resolve_weights
from atomic_p2p.testing import make_bid


def offer(name: str, confidence: float, expected_latency_ms: float, cost: float) -> BidInfo:
    """A signed bid for model ``name``: the tests tell offers apart by their model."""
    return make_bid(model_id=name, confidence=confidence, expected_latency_ms=expected_latency_ms, cost=cost)


FAST_CHEAP = offer("fast", confidence=0.80, expected_latency_ms=10.0, cost=1.0)
SLOW_SHARP = offer("sharp", confidence=0.99, expected_latency_ms=400.0, cost=2.0)


def names(ranking: Ranking[BidInfo]) -> list[str]:
    return [scored.item.model_id for scored in ranking.ranked]


def test_the_sdk_exports_the_scoring_names_from_their_own_modules() -> None:
    import atomic_p2p.requester as sdk
    from atomic_p2p.requester import evaluator, ranking, weights

    assert sdk.score is evaluator.score and sdk.Ranking is ranking.Ranking
    assert sdk.Scored is ranking.Scored and sdk.Excluded is ranking.Excluded
    assert sdk.PROFILES is weights.PROFILES and sdk.Weights is weights.Weights
    assert sdk.resolve_weights is weights.resolve_weights


def test_profiles_match_the_design() -> None:
    assert PROFILES["speed"].as_dict() == {"accuracy": 0.3, "latency": 0.6, "cost": 0.1}
    assert PROFILES["accuracy"].as_dict() == {"accuracy": 0.7, "latency": 0.2, "cost": 0.1}
    assert PROFILES["balanced"].as_dict() == {"accuracy": 0.4, "latency": 0.3, "cost": 0.3}
    assert resolve_weights(None) == PROFILES["balanced"]


def test_speed_and_accuracy_profiles_pick_different_winners() -> None:
    bids = [SLOW_SHARP, FAST_CHEAP]
    assert names(score(bids, "speed", time_left_ms=1000))[0] == "fast"
    assert names(score(bids, "accuracy", time_left_ms=1000))[0] == "sharp"


def test_components_are_normalised_and_explain_the_total() -> None:
    ranking = score([FAST_CHEAP, SLOW_SHARP], "balanced", time_left_ms=1000)
    fast = next(s for s in ranking.ranked if s.item is FAST_CHEAP)
    assert fast.components["accuracy"] == pytest.approx(0.80)
    assert fast.components["latency"] == pytest.approx(1 - 10 / 1000)
    # No budget: cost is measured against the dearest offer (2.0).
    assert fast.components["cost"] == pytest.approx(0.5)
    weights = ranking.weights.as_dict()
    assert fast.score == pytest.approx(sum(weights[k] * v for k, v in fast.components.items()))
    for scored in ranking.ranked:
        assert all(0.0 <= value <= 1.0 for value in scored.components.values())
        assert 0.0 <= scored.score <= 1.0
    assert [s.rank for s in ranking.ranked] == [1, 2]


def test_cost_against_budget_and_over_budget_excluded() -> None:
    cheap = offer("cheap", 0.9, 10, 1.0)
    dear = offer("dear", 0.9, 10, 5.0)
    ranking = score([cheap, dear], "balanced", time_left_ms=1000, budget=4.0)
    assert names(ranking) == ["cheap"]
    assert ranking.ranked[0].components["cost"] == pytest.approx(1 - 1 / 4)
    assert [e.item.model_id for e in ranking.excluded] == ["dear"]
    assert "budget" in ranking.excluded[0].reason


def test_all_free_offers_score_full_on_cost() -> None:
    ranking = score([offer("a", 0.5, 1, 0.0), offer("b", 0.5, 1, 0.0)], "balanced", time_left_ms=100)
    assert all(s.components["cost"] == 1.0 for s in ranking.ranked)


def test_too_slow_for_the_time_left_is_excluded() -> None:
    ranking = score([SLOW_SHARP, FAST_CHEAP], "accuracy", time_left_ms=200)
    assert names(ranking) == ["fast"]
    assert "exceeds" in ranking.excluded[0].reason
    assert score([FAST_CHEAP], "speed", time_left_ms=0).ranked == ()


def test_ties_break_on_latency_then_cost_then_order() -> None:
    # Identical scores by construction (confidence-only weights): latency decides, then cost.
    slow = offer("slow", 0.9, 50, 1.0)
    quick = offer("quick", 0.9, 20, 1.0)
    quick_dear = offer("quick_dear", 0.9, 20, 3.0)
    weights = {"accuracy": 1.0}
    assert names(score([slow, quick_dear, quick], weights, 1000)) == ["quick", "quick_dear", "slow"]
    twins = [offer("first", 0.7, 5, 1.0), offer("second", 0.7, 5, 1.0)]
    assert names(score(twins, "balanced", 1000)) == ["first", "second"]
    assert names(score(twins[::-1], "balanced", 1000)) == ["second", "first"]


def test_float_noise_does_not_break_a_tie() -> None:
    # 0.1 + 0.2 != 0.3 in binary; the two must still count as a tie and fall to latency.
    a = offer("a", 0.1 + 0.2, 30, 0.0)
    b = offer("b", 0.3, 10, 0.0)
    assert names(score([a, b], {"accuracy": 1.0}, 1000)) == ["b", "a"]


def test_custom_weights_are_normalised() -> None:
    ranking = score([FAST_CHEAP], {"accuracy": 2, "latency": 6, "cost": 2}, 1000)
    assert ranking.weights.as_dict() == pytest.approx({"accuracy": 0.2, "latency": 0.6, "cost": 0.2})
    assert resolve_weights({"latency": 1.0}) == Weights(0.0, 1.0, 0.0)


@pytest.mark.parametrize(
    "spec",
    [
        "fastest",
        {"accuracy": -0.1, "latency": 1.0},
        {"accuracy": math.nan},
        {"latency": math.inf},
        {"accuracy": 0.0, "latency": 0.0, "cost": 0.0},
        {"speed": 1.0},
        {"accuracy": "high"},
        {"accuracy": True},
        42,
    ],
)
def test_bad_weights_are_rejected(spec: object) -> None:
    with pytest.raises(ConfigError):
        score([FAST_CHEAP], spec, 1000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bid", "field"),
    [
        (offer("nan_conf", math.nan, 10, 1), "confidence"),
        (offer("big_conf", 1.5, 10, 1), "confidence"),
        (offer("neg_conf", -0.1, 10, 1), "confidence"),
        (offer("neg_lat", 0.5, -1, 1), "latency"),
        (offer("nan_lat", 0.5, math.nan, 1), "latency"),
        (offer("neg_cost", 0.5, 10, -1), "cost"),
        (offer("inf_cost", 0.5, 10, math.inf), "cost"),
    ],
)
def test_malformed_bids_are_excluded_not_ranked(bid: BidInfo, field: str) -> None:
    ranking = score([bid, FAST_CHEAP], "balanced", 1000)
    assert names(ranking) == ["fast"]
    assert field in ranking.excluded[0].reason


def test_bad_budget_or_time_is_rejected() -> None:
    with pytest.raises(ConfigError):
        score([FAST_CHEAP], "speed", 1000, budget=-1)
    with pytest.raises(ConfigError):
        score([FAST_CHEAP], "speed", math.nan)


def test_no_bids_is_an_empty_ranking() -> None:
    ranking = score([], "speed", 1000)
    assert ranking.ranked == () and ranking.excluded == ()


finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
offers = st.builds(
    offer,
    name=st.text(st.characters(codec="utf-8"), max_size=3),  # any model id a wire string carries
    confidence=st.floats(min_value=0, max_value=1),
    expected_latency_ms=finite,
    cost=finite,
)
weights = st.fixed_dictionaries(
    {"accuracy": st.floats(0, 10), "latency": st.floats(0, 10), "cost": st.floats(0.01, 10)}
)


@given(st.lists(offers, max_size=8), weights, st.floats(min_value=1, max_value=1e6))
def test_every_bid_is_ranked_or_excluded_and_scores_stay_in_range(bids, spec, time_left) -> None:
    ranking = score(bids, spec, time_left)
    assert len(ranking.ranked) + len(ranking.excluded) == len(bids)
    totals = [s.score for s in ranking.ranked]
    assert totals == sorted(totals, key=lambda t: -round(t, 12))
    assert all(-1e-12 <= t <= 1 + 1e-12 for t in totals)
