"""The evaluator (atomic_p2p.requester.evaluator): pure, so every rule is driven directly."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, replace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester import evaluator as evaluator_module
from atomic_p2p.requester.clearing import FloorRule, WinShares, payment
from atomic_p2p.requester.evaluator import (
    Ask,
    Decision,
    EvaluatorConfig,
    Exclusion,
    Exploration,
    MarketView,
    Pricing,
    evaluate,
)
from atomic_p2p.requester.profiler import Observation, Profile, ProfileKey, ProfilerConfig, record
from atomic_p2p.requester.rationale import Rationale
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.requester.weights import PROFILES, Weights
from atomic_p2p.terms import ModelConstraints, Resources
from atomic_p2p.testing import make_bid, peer_identity

CAPABILITY = "classify/digits"
GREEDY = EvaluatorConfig.greedy()


def offer(peer: str, confidence: float, expected_latency_ms: float, cost: float, **fields: Any) -> BidInfo:
    """A signed bid from test peer ``peer`` with these claims (other fields as for make_bid)."""
    return make_bid(peer, confidence=confidence, expected_latency_ms=expected_latency_ms, cost=cost, **fields)


def peer(name: str) -> str:
    """The key the evaluator files test peer ``name`` under (profiles, shares, load): its peer id."""
    return str(peer_identity(name).peer_id)


def ask(**overrides: Any) -> Ask:
    return Ask(**{"task_id": "t", "capability": CAPABILITY, "time_left_ms": 1000.0, **overrides})


def winner(decision: Decision[BidInfo]) -> str:
    assert decision.winner is not None
    return str(decision.winner.item.peer_id)


def key(name: str) -> ProfileKey:
    return ProfileKey(peer(name), "m", CAPABILITY)


def history(
    name: str, n: int, *, claim: float, outcome_rate: float, promised_ms: float, took_ms: float
) -> Profile:
    """A profile after n tasks: outcomes alternate so the success rate is outcome_rate."""
    config = ProfilerConfig()
    profile = None
    successes = 0
    for i in range(n):
        good = successes < outcome_rate * (i + 1)
        successes += good
        observation = Observation(
            at_ms=i,
            outcome=1.0 if good else 0.0,
            latency_ms=took_ms,
            cost=1.0,
            promised_confidence=claim,
            promised_latency_ms=promised_ms,
            promised_cost=1.0,
        )
        profile = record(profile, key(name), observation, config)
    assert profile is not None
    return profile


FAST = offer("fast", 0.80, 10.0, 1.0)
SHARP = offer("sharp", 0.99, 400.0, 2.0)


# --- hard constraints -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bid", "overrides", "kind", "words"),
    [
        (offer("p", 0.9, 1200, 1), {}, Exclusion.DEADLINE, "exceeds"),
        (offer("p", 0.9, 10, 5), {"budget": 4.0}, Exclusion.BUDGET, "budget"),
        (offer("p", 0.9, 10, 1, capabilities=("translate",)), {}, Exclusion.CAPABILITY, "translate"),
        (
            offer("p", 0.9, 10, 1, constraints=ModelConstraints(max_batch=8)),
            {"batch_size": 9},
            Exclusion.CONSTRAINTS,
            "max_batch",
        ),
        (
            offer("p", 0.9, 10, 1, constraints=ModelConstraints(max_input_tokens=5)),
            {"input_tokens": 6},
            Exclusion.CONSTRAINTS,
            "tokens",
        ),
        (
            offer("p", 0.9, 10, 1, constraints=ModelConstraints(supported_languages=("en",))),
            {"language": "fr"},
            Exclusion.CONSTRAINTS,
            "language",
        ),
        (
            offer("p", 0.9, 10, 1, resources=Resources(gpu_memory_mb=4096)),
            {"max_resources": Resources(gpu_memory_mb=2048)},
            Exclusion.RESOURCES,
            "gpu_memory_mb",
        ),
    ],
)
def test_hard_constraints_exclude_with_a_kind_and_reason(
    bid: BidInfo, overrides: dict[str, Any], kind: Exclusion, words: str
) -> None:
    decision = evaluate([bid, FAST], ask(**overrides), config=GREEDY)
    assert [s.item for s in decision.ranked] == [FAST]
    (excluded,) = decision.excluded
    assert excluded.kind is kind and words in excluded.reason


def test_constraints_that_fit_do_not_exclude() -> None:
    bid = offer(
        "p", 0.9, 10, 1,
        capabilities=(CAPABILITY,),
        constraints=ModelConstraints(max_batch=8, max_input_tokens=5, supported_languages=("en",)),
        resources=Resources(1, 100, 0),
    )  # fmt: skip
    limits = Resources(cpu_cores=2, memory_mb=100)
    decision = evaluate(
        [bid], ask(batch_size=8, input_tokens=5, language="en", max_resources=limits), config=GREEDY
    )
    assert decision.excluded == () and winner(decision) == peer("p")


def test_zero_terms_declare_no_limit() -> None:
    # A bid that declares nothing (0 / empty, as proto3 sends it) fits any task, and an all-zero
    # resource limit allows any amount.
    bid = offer("p", 0.9, 10, 1, resources=Resources(cpu_cores=64, memory_mb=1e6, gpu_memory_mb=1e6))
    the_ask = ask(batch_size=10_000, input_tokens=10**6, language="xx", max_resources=Resources())
    decision = evaluate([bid], the_ask, config=GREEDY)
    assert decision.excluded == () and winner(decision) == peer("p")


@pytest.mark.parametrize(
    ("needs", "name"),
    [
        (Resources(cpu_cores=-1.0), "cpu_cores"),
        (Resources(memory_mb=math.nan), "memory_mb"),
        (Resources(gpu_memory_mb=math.inf), "gpu_memory_mb"),
    ],
)
def test_a_malformed_resource_need_is_excluded_when_resources_are_limited(
    needs: Resources, name: str
) -> None:
    bid = offer("p", 0.9, 10, 1, resources=needs)
    limited = evaluate([bid, FAST], ask(max_resources=Resources(cpu_cores=4)), config=GREEDY)
    (excluded,) = limited.excluded
    assert excluded.kind is Exclusion.MALFORMED and name in excluded.reason
    # Without a resource limit the needs are never read, as before.
    assert evaluate([bid], ask(), config=GREEDY).excluded == ()


def test_the_deadline_is_checked_against_expected_not_claimed_latency() -> None:
    # Claims 5 ms, has delivered 600 ms every time: with 500 ms left it cannot make it.
    late = history("late", 30, claim=0.9, outcome_rate=0.9, promised_ms=5, took_ms=600)
    view = MarketView(profiles={key("late"): late})
    decision = evaluate([offer("late", 0.9, 5.0, 1.0)], ask(time_left_ms=500), view, GREEDY)
    assert decision.ranked == ()
    assert decision.excluded[0].kind is Exclusion.DEADLINE
    assert "claimed 5.0" in decision.excluded[0].reason


# --- weights, profiles, normalisation ------------------------------------------------------------


def test_priority_profiles_and_their_winners() -> None:
    assert PROFILES["speed"].as_dict() == {"accuracy": 0.3, "latency": 0.6, "cost": 0.1}
    assert PROFILES["accuracy"].as_dict() == {"accuracy": 0.7, "latency": 0.2, "cost": 0.1}
    assert PROFILES["balanced"].as_dict() == {"accuracy": 0.4, "latency": 0.3, "cost": 0.3}
    assert winner(evaluate([SHARP, FAST], ask(weights="speed"), config=GREEDY)) == peer("fast")
    assert winner(evaluate([SHARP, FAST], ask(weights="accuracy"), config=GREEDY)) == peer("sharp")
    cheap = offer("cheap", 0.7, 300.0, 0.1)
    assert winner(evaluate([SHARP, cheap], ask(weights="balanced"), config=GREEDY)) == peer("cheap")


def test_components_are_normalised_and_explain_the_score() -> None:
    weights = {"accuracy": 2, "latency": 1, "cost": 1, "availability": 1, "confidence": 1}
    view = MarketView(utilization={peer("fast"): 0.25})
    decision = evaluate([FAST, SHARP], ask(weights=weights, budget=4.0), view, GREEDY)
    assert decision.weights == Weights(2 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6)
    fast = next(s for s in decision.ranked if s.item is FAST)
    assert dict(fast.components) == pytest.approx(
        {"accuracy": 0.8, "latency": 0.99, "cost": 0.75, "availability": 0.75, "confidence": 0.8}
    )
    as_dict = decision.weights.as_dict()
    for scored in decision.ranked:
        assert set(scored.components) == set(as_dict)
        assert all(0.0 <= v <= 1.0 for v in scored.components.values())
        assert scored.score == pytest.approx(sum(as_dict[k] * v for k, v in scored.components.items()))


def test_unweighted_extra_components_stay_out_of_the_breakdown() -> None:
    decision = evaluate([FAST], ask(weights="speed"), config=GREEDY)
    assert set(decision.ranked[0].components) == {"accuracy", "latency", "cost"}


# --- calibration: a lying peer loses weight by itself -------------------------------------------


def test_calibration_discounts_a_lying_peer() -> None:
    liar_bid = offer("liar", 0.99, 5.0, 1.0)
    honest_bid = offer("honest", 0.85, 40.0, 1.0)
    fresh = evaluate([liar_bid, honest_bid], ask(weights="balanced"), config=GREEDY)
    assert winner(fresh) == peer("liar")  # with no history a claim is all there is

    liar = history("liar", 40, claim=0.99, outcome_rate=0.5, promised_ms=5, took_ms=120)
    honest = history("honest", 40, claim=0.85, outcome_rate=0.85, promised_ms=40, took_ms=40)
    view = MarketView(profiles={key("liar"): liar, key("honest"): honest})
    learned = evaluate([liar_bid, honest_bid], ask(weights="balanced"), view, GREEDY)
    assert winner(learned) == peer("honest")
    details = {str(s.item.peer_id): s.details for s in learned.ranked}
    # Bias ~0.49 > tolerance: the claim counts for nothing, only delivered outcomes do.
    assert details[peer("liar")]["expected_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert details[peer("liar")]["calibrated_confidence"] < 0.6
    assert details[peer("liar")]["expected_latency_ms"] == pytest.approx(120, rel=0.1)
    assert details[peer("honest")]["expected_accuracy"] == pytest.approx(0.85, abs=0.05)
    assert details[peer("honest")]["expected_latency_ms"] == pytest.approx(40, rel=0.05)


def test_an_honest_claim_keeps_its_weight() -> None:
    honest = history("honest", 40, claim=0.85, outcome_rate=0.85, promised_ms=40, took_ms=40)
    view = MarketView(profiles={key("honest"): honest})
    # A per-input claim above the peer's average counts: a confident input scores higher.
    sure = evaluate([offer("honest", 0.99, 40.0, 1.0)], ask(), view, GREEDY).ranked[0]
    unsure = evaluate([offer("honest", 0.50, 40.0, 1.0)], ask(), view, GREEDY).ranked[0]
    assert sure.details["expected_accuracy"] > unsure.details["expected_accuracy"]


def test_claim_follow_keeps_a_calibrated_peers_per_task_claim_as_its_record_grows() -> None:
    # A specialist: calibrated on average, sure inside its domain and unsure outside. Without
    # claim_follow its 40-outcome record outweighs the claim (strength 4); with it, the claim of
    # this input still decides most of the expectation.
    honest = history("spec", 40, claim=0.6, outcome_rate=0.6, promised_ms=40, took_ms=40)
    view = MarketView(profiles={key("spec"): honest})
    spreads = {}
    for follow in (0.0, 10.0):
        config = EvaluatorConfig.greedy(claim_follow=follow)
        inside = evaluate([offer("spec", 0.95, 40.0, 1.0)], ask(), view, config).ranked[0]
        outside = evaluate([offer("spec", 0.2, 40.0, 1.0)], ask(), view, config).ranked[0]
        spreads[follow] = inside.details["expected_accuracy"] - outside.details["expected_accuracy"]
    assert spreads[0.0] < 0.1 < 0.5 < spreads[10.0]
    # A liar gains nothing from it: trust 0 makes its claim worth no outcomes at all.
    liar = history("liar", 40, claim=0.99, outcome_rate=0.5, promised_ms=5, took_ms=5)
    liar_view = MarketView(profiles={key("liar"): liar})
    config = EvaluatorConfig.greedy(claim_follow=10.0)
    scored = evaluate([offer("liar", 0.99, 5.0, 1.0)], ask(), liar_view, config).ranked[0]
    assert scored.details["expected_accuracy"] == pytest.approx(0.5, abs=0.05)


def _scored_history(name: str, pairs: list[tuple[float, float]], config: ProfilerConfig) -> Profile:
    """A profile after outcomes ``(claimed confidence, delivered score)``, each delivered in 10 ms."""
    profile = None
    for i, (claim, score) in enumerate(pairs):
        observation = Observation(
            at_ms=i,
            outcome=score,
            latency_ms=10.0,
            cost=1.0,
            promised_confidence=claim,
            promised_latency_ms=10.0,
            promised_cost=1.0,
        )
        profile = record(profile, key(name), observation, config)
    assert profile is not None
    return profile


def test_an_unlucky_run_does_not_hand_a_steady_peer_s_task_to_a_worse_rival() -> None:
    # Both peers are calibrated (claim = mean delivered) and deliver 1.0 and 0.8 in turn; the
    # steady one claims 0.9 and the rival 0.88. The steady peer's last three batches came out at
    # 0.8: the short memory reads a bias of about +0.03 into that and ranks the rival first; the
    # long memory (the default) keeps its long-run bias, about 0, and ranks it first.
    wins = {}
    for label, profiler in {
        "default": ProfilerConfig(decay=0.9),
        "short only": ProfilerConfig(decay=0.9, calibration_decay=0.9),
    }.items():
        steady = _scored_history("steady", [(0.9, 1.0), (0.9, 0.8)] * 40 + [(0.9, 0.8)] * 3, profiler)
        rival = _scored_history("rival", [(0.88, 0.98), (0.88, 0.78)] * 40, profiler)
        view = MarketView(profiles={key("steady"): steady, key("rival"): rival})
        bids = [offer("steady", 0.9, 10.0, 1.0, model_id="m"), offer("rival", 0.88, 10.0, 1.0, model_id="m")]
        wins[label] = winner(evaluate(bids, ask(), view, EvaluatorConfig.greedy(profiler=profiler)))
    assert wins == {"default": peer("steady"), "short only": peer("rival")}
    assert EvaluatorConfig().profiler.calibration_decay > EvaluatorConfig().profiler.decay


# --- exploration -------------------------------------------------------------------------------


def _known_and_new() -> tuple[list[BidInfo], MarketView]:
    known = history("known", 60, claim=0.8, outcome_rate=0.8, promised_ms=10, took_ms=10)
    bids = [offer("known", 0.8, 10.0, 1.0), offer("new", 0.75, 10.0, 1.0)]
    return bids, MarketView(profiles={key("known"): known})


def test_thompson_sampling_explores_and_is_reproducible_with_a_seed() -> None:
    bids, view = _known_and_new()
    assert winner(evaluate(bids, ask(), view, GREEDY)) == peer("known")
    config = EvaluatorConfig.greedy(exploration=Exploration.THOMPSON)

    def run(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [winner(evaluate(bids, ask(), view, config, rng=rng)) for _ in range(200)]

    first = run(7)
    assert first == run(7)
    assert 0.05 < first.count(peer("new")) / 200 < 0.6
    with pytest.raises(ConfigError, match="rng"):
        evaluate(bids, ask(), view, config)


def test_ucb_bonus_favours_the_less_known() -> None:
    bids, view = _known_and_new()
    config = EvaluatorConfig.greedy(exploration=Exploration.UCB, ucb_c=0.2)
    decision = evaluate(bids, ask(), view, config)
    bonus = {str(s.item.peer_id): s.details["exploration_bonus"] for s in decision.ranked}
    known = next(s for s in decision.ranked if str(s.item.peer_id) == peer("known"))
    evidence = known.details["evidence"]
    # Never bought: its claim counts claim_strength outcomes (step 2), and the bonus counts them too;
    # bought: its outcomes, plus the same claim_strength times the trust its bias leaves.
    strength = config.claim_strength
    known_n = evidence + _trust(known, 0.8, config) * strength
    assert bonus[peer("new")] == pytest.approx(0.2 * math.sqrt(math.log1p(evidence) / (1 + strength)))
    assert bonus[peer("known")] == pytest.approx(0.2 * math.sqrt(math.log1p(evidence) / (1 + known_n)))
    assert winner(decision) == peer("new")
    off = evaluate(bids, ask(), view, GREEDY)
    assert all(s.details["exploration_bonus"] == 0 for s in off.ranked)


def test_ucb_does_not_buy_a_new_claim_that_trails_by_more_than_its_weight_can_explain() -> None:
    """A never-bought peer's bonus counts the pseudo-outcomes its claim is worth (claim_strength):
    one claiming 0.10 less than a well-known, calibrated incumbent at the same price and latency is
    not bought just to learn it (with n = 0 its bonus, 0.05 * sqrt(ln(1 + N)), would win it the
    task); a bid that claims nothing (confidence_unknown) still gets the whole bonus; a bought
    peer's n is its outcome evidence plus claim_strength times its trust, not the weight its
    claims earned since (claim_follow)."""
    known = history("known", 60, claim=0.9, outcome_rate=0.9, promised_ms=10, took_ms=10)
    view = MarketView(profiles={key("known"): known})
    config = EvaluatorConfig.greedy(exploration=Exploration.UCB, ucb_c=0.05)
    bids = [offer("known", 0.9, 10.0, 1.0), offer("new", 0.8, 10.0, 1.0)]
    decision = evaluate(bids, ask(), view, config)
    rows = {str(s.item.peer_id): s for s in decision.ranked}
    evidence = rows[peer("known")].details["evidence"]
    total = math.log1p(evidence)
    known_n = evidence + _trust(rows[peer("known")], 0.9, config) * config.claim_strength
    assert known_n < evidence + config.claim_strength + config.claim_follow  # not claim_follow's growth
    assert rows[peer("known")].details["exploration_bonus"] == pytest.approx(
        0.05 * math.sqrt(total / (1 + known_n))
    )
    assert rows[peer("new")].details["exploration_bonus"] == pytest.approx(
        0.05 * math.sqrt(total / (1 + config.claim_strength))
    )
    assert winner(decision) == peer("known")
    # Had the claim counted nothing, the bonus would outweigh the 0.1 it trails by.
    gap = rows[peer("known")].score - rows[peer("new")].score
    assert 0.05 * math.sqrt(total) - rows[peer("known")].details["exploration_bonus"] > gap
    silent = replace(offer("silent", 0.0, 10.0, 1.0), confidence_unknown=True)
    unclaimed = evaluate([*bids, silent], ask(), view, config)
    bonus = next(
        s.details["exploration_bonus"] for s in unclaimed.ranked if str(s.item.peer_id) == peer("silent")
    )
    assert bonus == pytest.approx(0.05 * math.sqrt(total))


def _trust(row: Any, claim: float, config: EvaluatorConfig) -> float:
    """Step 2's trust of a scored bid that claimed ``claim``: from the bias its calibrated claim
    was corrected by."""
    bias = claim - row.details["calibrated_confidence"]
    return min(1.0, max(0.0, 1.0 - abs(bias) / config.bias_tolerance))


def test_a_first_purchase_does_not_make_a_trusted_trailing_peer_look_less_known() -> None:
    """A peer claiming 0.10 under a well-known incumbent is not bought to learn it (its claim is
    worth claim_strength outcomes to the UCB bonus); one purchase that delivers exactly what it
    claimed adds an outcome to that, so it is still not bought. Counting its one outcome alone
    (n from claim_strength down to 1) raised its bonus by half and bought it again."""
    known = history("known", 60, claim=0.9, outcome_rate=0.9, promised_ms=10, took_ms=10)
    config = EvaluatorConfig.greedy(exploration=Exploration.UCB, ucb_c=0.05)
    delivered = Observation(
        at_ms=0,
        outcome=0.8,
        latency_ms=10,
        cost=1.0,
        promised_confidence=0.8,
        promised_latency_ms=10,
        promised_cost=1.0,
    )
    once = record(None, key("new"), delivered, config.profiler)
    bids = [offer("known", 0.9, 10.0, 1.0), offer("new", 0.8, 10.0, 1.0)]
    bonus = {}
    for label, profiles in {
        "never bought": {key("known"): known},
        "bought once": {key("known"): known, key("new"): once},
    }.items():
        decision = evaluate(bids, ask(), MarketView(profiles=profiles), config)
        assert winner(decision) == peer("known"), label
        row = next(s for s in decision.ranked if str(s.item.peer_id) == peer("new"))
        bonus[label] = row.details["exploration_bonus"]
    # One more outcome (N grows by one too): the bonus falls a little, never jumps.
    assert bonus["bought once"] < bonus["never bought"]


# --- floor and utilization ---------------------------------------------------------------------


def _starved_shares() -> WinShares:
    shares = WinShares()
    for _ in range(30):
        shares = shares.after([peer("a"), peer("b")], peer("a"))
    return shares


def test_the_floor_promotes_a_starved_peer() -> None:
    bids = [offer("a", 0.9, 10.0, 1.0), offer("b", 0.8, 10.0, 1.0)]
    view = MarketView(shares=_starved_shares())
    assert view.shares.share(peer("b")) == 0.0 and view.shares.share(peer("a")) == pytest.approx(1.0)
    on = EvaluatorConfig.greedy(floor=FloorRule(min_share=0.1, warmup=20), pricing=Pricing.SECOND_SCORE)
    decision = evaluate(bids, ask(), view, on)
    assert winner(decision) == peer("b") and [s.rank for s in decision.ranked] == [1, 2]
    assert decision.rationale is not None and "floor" in decision.rationale.floor_note
    assert decision.price == 1.0  # a promoted winner is paid its own bid
    assert winner(evaluate(bids, ask(), view, GREEDY)) == peer("a")
    tight = EvaluatorConfig.greedy(floor=FloorRule(min_share=0.1, warmup=20, max_gap=0.01))
    assert winner(evaluate(bids, ask(), view, tight)) == peer("a")
    cold = EvaluatorConfig.greedy(floor=FloorRule(min_share=0.1, warmup=100))
    assert winner(evaluate(bids, ask(), view, cold)) == peer("a")


def test_win_shares_follow_decisions() -> None:
    decision = evaluate([offer("a", 0.9, 10.0, 1.0), offer("b", 0.8, 10.0, 1.0)], ask(), config=GREEDY)
    shares = WinShares().after(decision.eligible_peers(), decision.winner_peer())
    assert shares.share(peer("a")) == 1.0 and shares.share(peer("b")) == 0.0
    assert shares.share(peer("c")) is None


def test_utilization_penalty_spreads_load() -> None:
    bids = [offer("a", 0.9, 10.0, 1.0), offer("b", 0.9, 10.0, 1.0)]
    config = EvaluatorConfig.greedy(utilization_weight=0.1, utilization_half=2.0)
    decision = evaluate(bids, ask(), MarketView(in_flight={peer("a"): 4}), config)
    assert winner(decision) == peer("b")
    penalty = {str(s.item.peer_id): s.details["utilization_penalty"] for s in decision.ranked}
    assert penalty == {peer("a"): pytest.approx(0.1 * 4 / 6), peer("b"): 0.0}
    assert winner(evaluate(bids, ask(), MarketView(in_flight={peer("a"): 4}), GREEDY)) == peer("a")


# --- second-score pricing ----------------------------------------------------------------------

SECOND = EvaluatorConfig.greedy(pricing=Pricing.SECOND_SCORE)


def _margin_at(bids: list[BidInfo], index: int, cost: float, the_ask: Ask) -> float:
    """Winner's score minus the best rival's, with bid ``index`` re-priced at ``cost``."""
    repriced = list(bids)
    repriced[index] = replace(bids[index], cost=cost)
    decision = evaluate(repriced, the_ask, config=SECOND)
    scores = {id(s.item): s.score for s in decision.ranked}
    if id(repriced[index]) not in scores:
        return -math.inf  # excluded (over budget): it does not win
    rivals = [score for item, score in scores.items() if item != id(repriced[index])]
    return scores[id(repriced[index])] - max(rivals, default=-math.inf)


@pytest.mark.parametrize(
    ("bids", "budget"),
    [
        ([offer("a", 0.95, 20, 1.0), offer("b", 0.80, 30, 1.5), offer("c", 0.7, 50, 0.5)], 4.0),
        ([offer("a", 0.95, 20, 1.0), offer("b", 0.80, 30, 1.5), offer("c", 0.7, 50, 0.5)], None),
        # The winner would win even as the dearest: the price is where a rival's cost score overtakes.
        ([offer("a", 0.99, 10, 1.0), offer("b", 0.5, 300, 2.0)], None),
        ([offer("a", 0.9, 10, 0.0), offer("b", 0.85, 15, 0.0)], None),
    ],
)
def test_second_score_price_is_exact(bids: list[BidInfo], budget: float | None) -> None:
    the_ask = ask(budget=budget)
    decision = evaluate(bids, the_ask, config=SECOND)
    assert decision.winner is not None and decision.price is not None
    index = bids.index(decision.winner.item)
    price = decision.price
    assert price >= decision.winner.item.cost
    assert _margin_at(bids, index, price, the_ask) >= -1e-9
    assert _margin_at(bids, index, price + 1e-6 * max(1.0, price), the_ask) < 0
    assert decision.rationale is not None and decision.rationale.price == price


def test_second_score_without_rivals_pays_the_budget_or_the_bid() -> None:
    assert evaluate([FAST], ask(budget=3.0), config=SECOND).price == 3.0
    only = evaluate([FAST], ask(), config=SECOND)
    assert only.price == FAST.cost and only.rationale is not None and "own bid" in only.rationale.price_note
    assert evaluate([FAST, SHARP], ask(), config=GREEDY).price == FAST.cost  # first price


# --- rationale ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "fallback", "paid"),
    [(2.5, False, 2.5), (2.5, True, 1.0), (None, False, 1.0), (None, True, 1.0)],
)
def test_the_winner_is_paid_the_clearing_price_and_a_fallback_its_own_charge(
    price: float | None, fallback: bool, paid: float
) -> None:
    assert payment(price, 1.0, fallback=fallback) == paid


def test_a_fallback_that_delivers_is_not_paid_the_winners_second_score_price() -> None:
    decision = evaluate([FAST, SHARP], ask(budget=5.0), config=SECOND)
    assert decision.winner is not None and decision.price is not None
    runner_up = decision.runner_ups[0].item
    assert decision.price > decision.winner.item.cost  # second-score lifted the winner's price
    assert payment(decision.price, runner_up.cost, fallback=True) == runner_up.cost


def test_the_rationale_is_built_on_first_read_once_and_as_it_would_have_been_at_once() -> None:
    from atomic_p2p.requester import ranking

    bids, settings = [FAST, SHARP, offer("dear", 0.99, 10.0, 9.0)], ask(budget=5.0)
    with mock.patch.object(evaluator_module, "_rationale", wraps=evaluator_module._rationale) as built:
        decision = evaluate(bids, settings, config=SECOND, now_ms=77)
        assert built.call_count == 0 and isinstance(decision.explanation, ranking.Explainer)
        first = decision.rationale
        assert decision.rationale is first and built.call_count == 1
    again = evaluate(bids, settings, config=SECOND, now_ms=77).rationale
    assert first is not None and again is not None and first.to_dict() == again.to_dict()
    assert evaluate(bids, settings, config=SECOND, explain=False).rationale is None


def test_rationale_records_the_whole_decision_and_round_trips_json() -> None:
    bad = offer("bad", math.nan, 10.0, 1.0)
    dear = offer("dear", 0.99, 10.0, 9.0, address="10.0.0.9:5000")
    decision = evaluate(
        [FAST, SHARP, bad, dear], ask(budget=5.0, weights="speed"), config=SECOND, now_ms=1234
    )
    rationale = decision.rationale
    assert rationale is not None
    assert rationale.task_id == "t" and rationale.capability == CAPABILITY and rationale.at_ms == 1234
    assert dict(rationale.weights) == pytest.approx({"accuracy": 0.3, "latency": 0.6, "cost": 0.1})
    assert rationale.winner is not None and rationale.winner.peer == peer("fast")
    assert [label.peer for label in rationale.runner_ups] == [peer("sharp")]
    assert [(n.bid.peer, n.rank) for n in rationale.candidates] == [(peer("fast"), 1), (peer("sharp"), 2)]
    top = rationale.candidates[0]
    assert top.score == decision.ranked[0].score and dict(top.components) == dict(
        decision.ranked[0].components
    )
    assert dict(top.claimed) == {"confidence": 0.8, "latency_ms": 10.0, "cost": 1.0}
    assert set(top.expected) == {
        "expected_accuracy",
        "expected_latency_ms",
        "calibrated_confidence",
        "evidence",
    }
    assert {(n.bid.peer, n.kind) for n in rationale.excluded} == {
        (peer("bad"), "malformed"),
        (peer("dear"), "budget"),
    }
    assert rationale.settings["pricing"] == "second_score" and rationale.settings["budget"] == 5.0
    assert rationale.price == decision.price and rationale.price_note.startswith("second-score")
    text = rationale.to_json()
    assert json.loads(text)["winner"]["peer"] == peer("fast")
    assert Rationale.from_json(text) == rationale
    with pytest.raises(ConfigError):
        Rationale.from_json('{"v": 1}')


def test_an_empty_auction_has_no_winner_or_price() -> None:
    decision = evaluate([], ask(), config=GREEDY)
    assert decision.winner is None and decision.price is None and decision.runner_ups == ()
    assert decision.rationale is not None and decision.rationale.winner is None
    assert evaluate([FAST], ask(), config=GREEDY, explain=False).rationale is None


# --- bad input ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoCost:
    """Not a BidInfo (no factory makes one without a cost): what a duck-typed caller might pass."""

    peer_id: str
    confidence: float
    expected_latency_ms: float


@pytest.mark.parametrize(
    ("bid", "words"),
    [
        (offer("x", 0.5, math.nan, 1.0), "latency"),
        (offer("x", 0.5, 10.0, -1.0), "cost"),
        (offer("x", 1.5, 10.0, 1.0), "confidence"),
        (offer("x", -0.1, 10.0, 1.0), "confidence"),
        (offer("x", 0.5, math.inf, 1.0), "latency"),
        (offer("x", 0.5, 10.0, math.inf), "cost"),
        (replace(offer("x", 0.5, 10.0, 1.0), confidence="high"), "confidence"),
        (replace(offer("x", 0.5, 10.0, 1.0), confidence=True), "confidence"),
        (replace(offer("x", 0.5, 10.0, 1.0), expected_latency_ms=None), "latency"),
        (NoCost("x", 0.5, 10.0), "cost"),
        (offer("x", 0.5, 10.0, 1.0, resources=Resources(memory_mb=math.nan)), "memory_mb"),
        (replace(offer("x", 0.5, 10.0, 1.0), capabilities=(1, "a")), "unreadable"),
    ],
)
def test_bad_bids_are_excluded_with_a_logged_reason(
    bid: Any, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="atomic_p2p.requester.evaluator")
    the_ask = ask(max_resources=Resources(memory_mb=10))
    decision = evaluate([bid, FAST], the_ask, config=EvaluatorConfig(), rng=random.Random(1))
    assert [s.item for s in decision.ranked] == [FAST]
    (excluded,) = decision.excluded
    assert excluded.kind is Exclusion.MALFORMED and words in excluded.reason
    assert any("excluded" in r.getMessage() and words in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "overrides", [{"time_left_ms": math.nan}, {"budget": -1.0}, {"budget": math.inf}, {"weights": "fastest"}]
)
def test_bad_asks_are_config_errors(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        evaluate([FAST], ask(**overrides), config=GREEDY)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        EvaluatorConfig(ucb_c=-1)
    with pytest.raises(ConfigError):
        EvaluatorConfig(latency_quantile=2)
    with pytest.raises(ConfigError):
        FloorRule(min_share=1.5)


# --- properties --------------------------------------------------------------------------------

junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5),
    st.none(),
    st.text(max_size=2),
    st.booleans(),
)


def junk_bid(confidence: Any, expected_latency_ms: Any, cost: Any) -> BidInfo:
    """A bid whose claims may be anything at all, as a buggy or hostile peer's could be."""
    return replace(
        offer("j", 0.5, 10.0, 1.0), confidence=confidence, expected_latency_ms=expected_latency_ms, cost=cost
    )


sane_bids = st.builds(
    offer,
    peer=st.sampled_from(["a", "b", "c", "d"]),
    confidence=st.floats(0, 1),
    expected_latency_ms=st.floats(0, 2000),
    cost=st.floats(0, 100),
)
any_bids = st.one_of(sane_bids, st.builds(junk_bid, confidence=junk, expected_latency_ms=junk, cost=junk))
configs = st.sampled_from(
    [
        GREEDY,
        SECOND,
        EvaluatorConfig(pricing=Pricing.SECOND_SCORE),
        EvaluatorConfig(exploration=Exploration.UCB, floor=FloorRule(min_share=0.2, warmup=0)),
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(any_bids, max_size=6), configs, st.one_of(st.none(), st.floats(0, 200)), st.integers(0, 2**32)
)
def test_any_bids_are_ranked_or_excluded_never_raise(
    bids: list[BidInfo], config: EvaluatorConfig, budget: float | None, seed: int
) -> None:
    view = MarketView(shares=WinShares().after([peer("a")], peer("a")), in_flight={peer("b"): 3})
    decision = evaluate(bids, ask(budget=budget), view, config, rng=random.Random(seed))
    assert len(decision.ranked) + len(decision.excluded) == len(bids)
    assert all(math.isfinite(s.score) for s in decision.ranked)
    assert [s.rank for s in decision.ranked] == list(range(1, len(decision.ranked) + 1))
    if decision.winner is not None:
        assert decision.price is not None and decision.price >= decision.winner.item.cost
        if budget is not None:
            assert decision.price <= budget
    assert decision.rationale is not None
    json.loads(decision.rationale.to_json())


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.builds(
            offer,
            peer=st.sampled_from(["a", "b", "c", "d"]),
            confidence=st.floats(0, 1),
            expected_latency_ms=st.floats(0, 900),
            cost=st.floats(0, 50),
        ),
        min_size=2,
        max_size=5,
    ),
    st.one_of(st.none(), st.floats(50, 100)),
    st.floats(0.05, 1.0),
)
def test_second_score_price_is_the_highest_winning_cost(
    bids: list[BidInfo], budget: float | None, cost_weight: float
) -> None:
    the_ask = ask(budget=budget, weights={"accuracy": 0.5, "latency": 0.3, "cost": cost_weight})
    decision = evaluate(bids, the_ask, config=SECOND)
    assert decision.winner is not None and decision.price is not None and decision.rationale is not None
    index = next(i for i, bid in enumerate(bids) if bid is decision.winner.item)
    price = decision.price
    assert _margin_at(bids, index, price, the_ask) >= -1e-9
    if "own bid" not in decision.rationale.price_note:  # unbounded: nothing to cross
        assert _margin_at(bids, index, price + 1e-6 * max(1.0, price), the_ask) < 0


def test_subnormal_costs_still_get_the_highest_winning_price() -> None:
    # Found by hypothesis: dividing by a cost of 5e-324 lost every digit, and the "price" made the
    # winner lose. Subnormal costs are now scored alike and never divided by.
    bids = [offer("a", 0.0, 0.0, 0.0), offer("a", 0.0, 0.0, 5e-324)]
    the_ask = ask(weights={"accuracy": 0.5, "latency": 0.3, "cost": 1.0})
    decision = evaluate(bids, the_ask, config=SECOND)
    assert decision.winner is not None and decision.price is not None
    index = next(i for i, bid in enumerate(bids) if bid is decision.winner.item)
    assert _margin_at(bids, index, decision.price, the_ask) >= -1e-9
    assert _margin_at(bids, index, decision.price + 1e-6, the_ask) < 0


def test_a_bid_that_cannot_estimate_its_confidence_claims_nothing() -> None:
    unknown = replace(offer("regressor", 0.0, 10.0, 1.0), confidence_unknown=True)
    decision = evaluate([unknown, offer("claimer", 0.3, 10.0, 1.0)], ask(), config=GREEDY)
    expected = {str(s.item.peer_id): s.details["expected_accuracy"] for s in decision.ranked}
    assert expected[peer("regressor")] == pytest.approx(0.5)  # the prior's mean, not 0.0
    assert expected[peer("claimer")] == pytest.approx(0.3)  # a claim is read as before
    profile = history("regressor", 10, claim=0.0, outcome_rate=0.8, promised_ms=10.0, took_ms=10.0)
    profiled = evaluate(
        [replace(unknown, model_id="m")], ask(), MarketView(profiles={key("regressor"): profile}), GREEDY
    )
    assert profiled.ranked[0].details["expected_accuracy"] == pytest.approx(0.8, abs=0.01)


# --- honest latency quotes and the accuracy priority ------------------------------------------


def test_the_profile_corrects_a_latency_quote_that_stays_wrong() -> None:
    # A twin that keeps quoting 76 ms but delivers in 1 ms: its profile brings the expectation
    # down to what it delivers, and with it the latency component.
    stale = history("stale", 30, claim=0.95, outcome_rate=0.95, promised_ms=76.0, took_ms=1.0)
    view = MarketView(profiles={key("stale"): stale})
    quoted = offer("stale", 0.95, 76.0, 1.0)
    alone = evaluate([quoted], ask(time_left_ms=100.0), config=GREEDY)
    corrected = evaluate([quoted], ask(time_left_ms=100.0), view, GREEDY)
    assert alone.ranked[0].details["expected_latency_ms"] == pytest.approx(76.0)
    assert corrected.ranked[0].details["expected_latency_ms"] < 5.0
    assert corrected.ranked[0].components["latency"] > 0.95 > alone.ranked[0].components["latency"]


def test_with_the_accuracy_priority_the_most_accurate_affordable_bid_wins() -> None:
    small = offer("small", 0.95, 1.0, 0.001)
    large = offer("large", 0.98, 3.0, 0.004)  # 3 points more accurate, 4x the price
    by_weights = evaluate([small, large], ask(weights="balanced"), config=GREEDY)
    assert winner(by_weights) == peer("small")
    accurate = evaluate([small, large], ask(weights="accuracy"), config=GREEDY)
    assert winner(accurate) == peer("large")
    assert accurate.ranked[0].score < accurate.ranked[1].score  # won on accuracy, not on score
    assert accurate.price == pytest.approx(0.004)  # a promoted winner pays its own bid
    # Not affordable: over the budget, it is excluded and the next most accurate wins.
    assert winner(evaluate([small, large], ask(weights="accuracy", budget=0.002), config=GREEDY)) == peer(
        "small"
    )
    # Within the tolerance the score decides.
    near = offer("near", 0.953, 1.0, 0.004)
    assert winner(evaluate([small, near], ask(weights="accuracy"), config=GREEDY)) == peer("small")
