"""The evaluator (docs/architecture.md section 7): screen bids, score them from what the requester learned,
pick a winner, keep runner-ups, set the price and say why. Pure: values in, values out; the
time and the random source are arguments.

Where a peer is chosen
----------------------
Three places, in this order, each with one job:

1. **Who is asked.** :meth:`.discovery.Discovery.candidates` lists the peers that could take the
   task (fixed peers, then live gossip adverts that accept the batch); :func:`.bidpolicy.prefilter`
   alone decides which of them get a call for bids.
2. **Who wins.** :func:`evaluate` screens, scores and ranks the bids that came in;
   :mod:`.clearing` is its last step (the floor, the price) and also says what the bid that
   finally delivers is paid (:func:`.clearing.payment`).
3. **Fallback.** :meth:`.execution.Executor.run` walks the ranking, best first, until a result
   verifies.

Exploration is layered the same way; each layer reaches peers the one after it cannot, and each
turns off on its own (one ``random.Random``, ``MarketMemory.rng``, draws for the first two):

- **Asking** (``BidPolicy.top_m``, ``BidPolicy.exploration_share``): with more than ``top_m``
  candidates, ``ceil(exploration_share * top_m)`` drawn at random from outside the top by prior
  are asked too, so a peer the profile wrote off, or one that just joined, can bid at all. Off:
  ``exploration_share=0`` asks the top ``top_m`` only; ``top_m=0`` asks everyone
  (:meth:`.bidpolicy.BidPolicy.plain`).
- **Scoring** (``EvaluatorConfig.exploration``, ``ucb_c``): among the bids in hand, a peer with
  little evidence gets the benefit of its uncertain accuracy (Thompson draw or UCB bonus, step 3
  below). Off: ``Exploration.NONE``.
- **Clearing** (``EvaluatorConfig.floor``, a :class:`~.clearing.FloorRule`: ``min_share``,
  ``warmup``, ``max_gap``): an eligible peer whose recent win share stays under ``min_share`` is
  promoted to winner if it scores within ``max_gap`` of the top. Off: ``min_share=0`` (the default).

:meth:`EvaluatorConfig.greedy` turns the last two off (and the utilization penalty, and
second-score pricing); ``atomic run --explore`` chooses ``EvaluatorConfig()`` over it.

How this works
--------------
1. **Screen.** A bid is excluded, with an :class:`Exclusion` kind and a reason (and a log
   line), when a field is missing or out of range (confidence outside [0, 1], NaN or inf,
   negative latency or cost), when it does not offer the capability, when its constraints rule
   the task out (batch above ``max_batch``, too many input tokens, an unsupported language),
   when it needs more resources than the ask allows, when its cost exceeds the budget, or when
   its *expected* latency (step 2) does not fit in the time left. Nothing a peer sends can raise.
2. **Expect.** With the peer's profile for (peer, model, capability) (:mod:`.profiler`):

   - the claim is corrected by the peer's measured bias: ``calibrated = claim - bias``;
   - the corrected claim counts as ``k = trust * (claim_strength + claim_follow * evidence)``
     pseudo-outcomes, where ``trust = 1 - |bias| / bias_tolerance`` (clipped to [0, 1]) and
     evidence is the profile's (decayed) outcome count, and is pooled with the observed
     outcomes: ``accuracy = (k * calibrated + successes) / (k + successes + failures)``. A peer
     whose promises overstate what it delivers soon has trust 0, and only what it delivered
     counts; one whose claims proved calibrated keeps its per-task claim (its confidence on this
     input: a specialist in or out of its domain) ahead of its average record;
   - latency likewise: the claim times the measured delivered/promised ratio, worth
     ``claim_strength`` samples, pooled with the observed quantile over the recent window.

   Without a profile the claim is taken as it stands (this is what :func:`score` does). A bid
   with ``confidence_unknown`` (its model cannot estimate a confidence) claims nothing: it counts
   0 pseudo-outcomes, so only its profile speaks (the prior's mean while there is none).
3. **Score.** Components in [0, 1], higher is better: ``accuracy`` (step 2), ``latency``
   (``1 - expected / time_left``), ``cost`` (``1 - cost / ceiling``, the ceiling being the
   budget or else the dearest eligible offer), ``availability`` (``1 - utilization`` the peer
   advertises), ``confidence`` (the calibrated claim). ``score = sum_k w_k * s_k`` with the
   weights normalised to sum to 1, plus an exploration bonus, minus a utilization penalty:

   - exploration, :class:`Exploration`: THOMPSON draws the accuracy component from the Beta
     that step 2's pooling defines (both parameters floored at 1/2 so the draw is defined);
     UCB adds ``ucb_c * sqrt(ln(1 + N) / (1 + n))`` with N the total evidence of the bids and n
     this bid's: its (decayed) outcome count plus the pseudo-outcomes step 2 gives its claim
     before any record (``claim_strength``, times trust). A peer never bought from is only as
     uncertain as its claim is weak, so a claim that already trails the incumbent's is not bought
     just to learn it; a purchase adds its outcome to that and never makes a peer look *less*
     known than before it (with n the outcome count alone, a first purchase took a trusted
     claim's n from ``claim_strength`` to 1, and bought the trailing peer again to learn what its
     claim had told); ``claim_follow``'s growth of the claim's weight is left out, because the
     corrected claim is only as sure as the bias those same outcomes measured. A peer whose claims
     overstate (trust 0) counts its outcomes alone;
   - utilization: ``utilization_weight * f / (f + utilization_half)`` with f the requester's
     own tasks in flight at that peer.
4. **Clear** (:mod:`.clearing`). Best score first; ties go to the lower expected latency, then
   the lower cost, then the earlier bid. With the ``accuracy`` priority the most accurate bid
   wins outright (every bid left fits the budget and the deadline, so it is affordable): the
   bids whose accuracy component is within ``ACCURACY_TOLERANCE`` of the best keep their score
   order at the head, the others follow. A weighted sum alone could not promise that: a
   cheaper model a few points less accurate outscores it on cost. The anti-starvation floor
   may promote a starved peer.
   The winner is paid its bid, or with ``Pricing.SECOND_SCORE`` the highest cost at which it
   would still have won. A :class:`~.rationale.Rationale` records all of it.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Generic

from atomic_p2p.errors import ConfigError
from atomic_p2p.frozen import quick_init
from atomic_p2p.requester.clearing import (
    MIN_PRICE,
    FloorRule,
    PriceTerms,
    WinShares,
    second_score_price,
    starved_pick,
)
from atomic_p2p.requester.profiler import Estimate, Profile, ProfileKey, ProfilerConfig, estimate
from atomic_p2p.requester.ranking import (
    Decision,
    Excluded,
    Exclusion,
    Explainer,
    Ranking,
    Scorable,
    Scored,
    T,
    explain,
    label,
    peer_key,
)
from atomic_p2p.requester.rationale import Rationale
from atomic_p2p.requester.selection import ANY, Selection
from atomic_p2p.requester.weights import (
    COMPONENTS,
    CORE_COMPONENTS,
    PROFILES,
    Weights,
    WeightsSpec,
    resolve_weights,
)
from atomic_p2p.terms import ModelConstraints, Resources

logger = logging.getLogger(__name__)


class Exploration(Enum):
    NONE = "none"
    THOMPSON = "thompson"
    UCB = "ucb"


class Pricing(Enum):
    FIRST = "first"  # the winner is paid its bid
    SECOND_SCORE = "second_score"  # the highest cost at which it would still have won


@quick_init
@dataclass(frozen=True, slots=True)
class Ask:
    """What the requester wants of one microtask. Zero or empty means "not constrained"."""

    task_id: str
    capability: str
    time_left_ms: float
    budget: float | None = None
    weights: WeightsSpec = None
    bucket: str = ""  # profiler.shape_bucket of the inputs: selects the per-bucket posterior
    batch_size: int = 0
    input_tokens: int = 0
    language: str = ""
    max_resources: Resources | None = None  # the most a bid may need; a 0 amount has no limit
    selection: Selection = ANY  # the caller's model, excluded and preferred peers (selection.py)


@quick_init
@dataclass(frozen=True, slots=True)
class MarketView:
    """What the requester knows besides the bids: profiles, its own in-flight tasks per peer,
    the utilization each peer advertises (gossip LoadSummary), and recent win shares."""

    profiles: Mapping[ProfileKey, Profile] = field(default_factory=lambda: MappingProxyType({}))
    in_flight: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    utilization: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    shares: WinShares = field(default_factory=WinShares)


# The defaults below (UCB with ucb_c 0.05, claim_follow 10, shrink 0.5, a profile memory of about
# ten outcomes, and the profiler's longer claim-bias memory, ProfilerConfig.calibration_decay) are
# among the best exploring points of ``scripts/bench_routing.py --tune``, which replays a grid on a
# market of its own (the ``tuning`` scenario) and never on the markets it reports.
DEFAULT_DECAY = 0.9


@dataclass(frozen=True, slots=True)
class EvaluatorConfig:
    """Every knob of the evaluator. :meth:`greedy` turns exploration, floor and penalty off.

    ``claim_strength`` is how many outcomes a bid's calibrated claim is worth before the peer has
    any record; ``claim_follow`` adds that many per outcome of evidence: a peer whose claims have
    proved calibrated keeps its *per-task* claim in the expectation (its confidence on this very
    input) instead of having it averaged away by its record (docs/architecture.md section 7).
    """

    exploration: Exploration = Exploration.UCB
    ucb_c: float = 0.05
    claim_strength: float = 4.0
    claim_follow: float = 10.0
    bias_tolerance: float = 0.25
    latency_quantile: float = 0.5
    shrink: float = 0.5
    floor: FloorRule = field(default_factory=FloorRule)
    utilization_weight: float = 0.1
    utilization_half: float = 2.0
    pricing: Pricing = Pricing.FIRST
    profiler: ProfilerConfig = field(default_factory=lambda: ProfilerConfig(decay=DEFAULT_DECAY))

    def __post_init__(self) -> None:
        numbers = {
            "ucb_c": self.ucb_c,
            "claim_strength": self.claim_strength,
            "claim_follow": self.claim_follow,
            "utilization_weight": self.utilization_weight,
            "shrink": self.shrink,
        }
        for name, value in numbers.items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}")
        if not (self.bias_tolerance > 0 and self.utilization_half > 0):
            raise ConfigError("bias_tolerance and utilization_half must be positive")
        if not 0 <= self.latency_quantile <= 1:
            raise ConfigError("latency_quantile must lie in [0, 1]")

    @classmethod
    def greedy(cls, **overrides: Any) -> EvaluatorConfig:
        """No exploration, no floor, no utilization penalty, first price: for benchmarks."""
        settings: dict[str, Any] = {
            "exploration": Exploration.NONE,
            "floor": FloorRule(min_share=0.0),
            "utilization_weight": 0.0,
            "pricing": Pricing.FIRST,
        }
        return cls(**{**settings, **overrides})


@quick_init
@dataclass(frozen=True, slots=True)
class _Assessed(Generic[T]):
    """An eligible bid and what the evaluator expects of it (steps 1-2)."""

    index: int
    item: T
    peer: str
    estimate: Estimate | None
    calibrated: float  # the claim corrected by the measured bias
    claim_weight: float  # pseudo-outcomes the calibrated claim is worth
    expected_accuracy: float
    expected_latency_ms: float
    claim_base: float  # what the claim is worth before any record: trust x claim_strength

    @property
    def evidence(self) -> float:
        return 0.0 if self.estimate is None else self.estimate.evidence

    @property
    def explored(self) -> float:
        """The n of the UCB bonus (step 3): the outcome evidence plus what the claim is worth
        before any record (all the claim counts for while there is none)."""
        return self.evidence + self.claim_base


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number (numpy scalars included, bools not)."""
    if type(value) is float:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _field_problem(bid: object) -> str | None:
    confidence = getattr(bid, "confidence", None)
    latency = getattr(bid, "expected_latency_ms", None)
    cost = getattr(bid, "cost", None)
    if (  # the common case, plain floats in range, in one test (NaN fails every comparison)
        type(confidence) is float
        and type(latency) is float
        and type(cost) is float
        and 0.0 <= confidence <= 1.0
        and 0.0 <= latency < math.inf
        and 0.0 <= cost < math.inf
    ):
        return None
    confidence = _number(confidence)
    latency = _number(latency)
    cost = _number(cost)
    if confidence is None or not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        return f"confidence {getattr(bid, 'confidence', None)!r} is not a number in [0, 1]"
    if latency is None or not (math.isfinite(latency) and latency >= 0.0):
        return f"expected latency {getattr(bid, 'expected_latency_ms', None)!r} ms is not a finite non-negative number"
    if cost is None or not (math.isfinite(cost) and cost >= 0.0):
        return f"cost {getattr(bid, 'cost', None)!r} is not a finite non-negative number"
    return None


def _constraint_problem(bid: Scorable, ask: Ask) -> tuple[Exclusion, str] | None:
    """The first hard constraint ``bid`` (whose claims are well formed) breaks, if any.

    Only the terms the ask constrains are read: a bid's other fields cost nothing.
    """
    if ask.capability and bid.capabilities and ask.capability not in bid.capabilities:
        return Exclusion.CAPABILITY, f"offers {sorted(bid.capabilities)}, not {ask.capability!r}"
    ruled_out = ask.selection.problem(bid) if ask.selection.narrows else None
    if ruled_out is not None:
        return Exclusion.SELECTION, ruled_out
    if ask.batch_size or ask.input_tokens or ask.language:
        found = _input_problem(bid.constraints, ask)
        if found is not None:
            return found
    if ask.max_resources is not None:
        found = _resource_problem(bid.resources, ask.max_resources)
        if found is not None:
            return found
    if ask.budget is not None and bid.cost > ask.budget:
        return Exclusion.BUDGET, f"cost {bid.cost:g} exceeds the budget {ask.budget:g}"
    return None


def _input_problem(constraints: ModelConstraints, ask: Ask) -> tuple[Exclusion, str] | None:
    """The input limit the task breaks; a limit of 0 (or no languages) was not declared."""
    max_batch, max_tokens = constraints.max_batch, constraints.max_input_tokens
    if ask.batch_size and max_batch and ask.batch_size > max_batch:
        return Exclusion.CONSTRAINTS, f"batch {ask.batch_size} exceeds its max_batch {max_batch:g}"
    if ask.input_tokens and max_tokens and ask.input_tokens > max_tokens:
        return Exclusion.CONSTRAINTS, f"{ask.input_tokens} input tokens exceed its max {max_tokens:g}"
    languages = constraints.supported_languages
    if ask.language and languages and ask.language not in languages:
        return Exclusion.CONSTRAINTS, f"language {ask.language!r} not in {sorted(languages)}"
    return None


def _resource_problem(needs: Resources, limits: Resources) -> tuple[Exclusion, str] | None:
    """The resource the bid needs more of than ``limits`` allow (a 0 limit allows any amount).
    The needs are doubles from the network: NaN, inf or a negative amount is malformed."""
    amounts = (
        ("cpu_cores", needs.cpu_cores, limits.cpu_cores),
        ("memory_mb", needs.memory_mb, limits.memory_mb),
        ("gpu_memory_mb", needs.gpu_memory_mb, limits.gpu_memory_mb),
    )
    for name, amount, limit in amounts:
        need = _number(amount)
        if need is None or not math.isfinite(need) or need < 0:
            return Exclusion.MALFORMED, f"resource {name} {amount!r} is not a number >= 0"
        if limit and need > limit:
            return Exclusion.RESOURCES, f"needs {name} {need:g}, more than the {limit:g} allowed"
    return None


def _expect(
    index: int, bid: T, ask: Ask, estimate_: Estimate | None, config: EvaluatorConfig
) -> _Assessed[T]:
    """Step 2 of the module docstring."""
    claim, claimed_latency = float(bid.confidence), float(bid.expected_latency_ms)
    peer = peer_key(bid)
    if getattr(bid, "confidence_unknown", False):
        return _unclaimed(index, bid, peer, estimate_, claimed_latency, config)
    if estimate_ is None:
        strength = config.claim_strength
        return _Assessed(index, bid, peer, None, claim, strength, claim, claimed_latency, strength)
    bias = estimate_.confidence_bias
    calibrated = _clamp01(claim - bias)
    trust = _clamp01(1.0 - abs(bias) / config.bias_tolerance)
    claim_weight = trust * (config.claim_strength + config.claim_follow * estimate_.evidence)
    claim_base = trust * config.claim_strength
    return _weighed(
        index, bid, peer, estimate_, calibrated, claim_weight, claimed_latency, config, claim_base
    )


def _unclaimed(
    index: int, bid: T, peer: str, estimate_: Estimate | None, claimed_latency: float, config: EvaluatorConfig
) -> _Assessed[T]:
    """A bid whose model cannot estimate its confidence claims nothing: the expected accuracy is
    the profile's (the prior's mean while there is none)."""
    if estimate_ is None:
        prior = config.profiler.prior_alpha / (config.profiler.prior_alpha + config.profiler.prior_beta)
        return _Assessed(index, bid, peer, None, prior, 0.0, prior, claimed_latency, 0.0)
    mean = estimate_.posterior.mean
    return _weighed(index, bid, peer, estimate_, mean, 0.0, claimed_latency, config)


def _weighed(
    index: int,
    bid: T,
    peer: str,
    estimate_: Estimate,
    calibrated: float,
    claim_weight: float,
    claimed_latency: float,
    config: EvaluatorConfig,
    claim_base: float = 0.0,
) -> _Assessed[T]:
    total = claim_weight + estimate_.evidence
    if total > 0:
        accuracy = (claim_weight * calibrated + estimate_.successes) / total
    else:
        accuracy = estimate_.posterior.mean
    latency = claimed_latency * estimate_.latency_ratio
    if estimate_.latency_ms is not None:
        samples = estimate_.latency_samples
        latency = (config.claim_strength * latency + samples * estimate_.latency_ms) / (
            config.claim_strength + samples
        )
    return _Assessed(index, bid, peer, estimate_, calibrated, claim_weight, accuracy, latency, claim_base)


def _lookup(bid: object, ask: Ask, view: MarketView, config: EvaluatorConfig) -> Estimate | None:
    if not view.profiles:
        return None
    key = ProfileKey(peer_key(bid), str(getattr(bid, "model_id", "")), ask.capability)
    profile = view.profiles.get(key)
    if profile is None:
        return None
    return estimate(
        profile,
        config.profiler,
        bucket=ask.bucket,
        latency_quantile=config.latency_quantile,
        shrink=config.shrink,
    )


def _problem(
    index: int, bid: T, ask: Ask, view: MarketView, config: EvaluatorConfig, eligible: list[_Assessed[T]]
) -> tuple[Exclusion, str] | None:
    """Append ``bid`` to ``eligible`` and return None, or return why it is excluded."""
    problem = _field_problem(bid)
    found = (Exclusion.MALFORMED, problem) if problem else _constraint_problem(bid, ask)
    if found is not None:
        return found
    assessed = _expect(index, bid, ask, _lookup(bid, ask, view, config), config)
    if assessed.expected_latency_ms > ask.time_left_ms:
        return (
            Exclusion.DEADLINE,
            f"expected latency {assessed.expected_latency_ms:.1f} ms (claimed "
            f"{bid.expected_latency_ms:.1f}) exceeds the {ask.time_left_ms:.1f} ms left",
        )
    eligible.append(assessed)
    return None


def _screen(
    bids: Sequence[T], ask: Ask, view: MarketView, config: EvaluatorConfig
) -> tuple[list[_Assessed[T]], list[Excluded[T]]]:
    eligible: list[_Assessed[T]] = []
    excluded: list[Excluded[T]] = []
    for index, bid in enumerate(bids):
        try:
            found = _problem(index, bid, ask, view, config, eligible)
        except (TypeError, ValueError, AttributeError, OverflowError) as error:
            # Odd types in optional fields (a capabilities list of mixed types, say) must not
            # take the auction down with them.
            found = Exclusion.MALFORMED, f"unreadable bid: {error!r}"
        if found is None:
            continue
        kind, reason = found
        level = logging.WARNING if kind is Exclusion.MALFORMED else logging.DEBUG
        logger.log(
            level, "task %s: bid from %s excluded (%s): %s", ask.task_id, label(bid), kind.value, reason
        )
        excluded.append(Excluded(bid, reason, kind))
    return eligible, excluded


def _accuracy_draw(assessed: _Assessed[Any], rng: random.Random) -> float:
    """Thompson: a draw from Beta(k * calibrated + successes, k * (1 - calibrated) + failures)."""
    successes = assessed.estimate.successes if assessed.estimate else 0.0
    failures = assessed.estimate.failures if assessed.estimate else 0.0
    alpha = assessed.claim_weight * assessed.calibrated + successes
    beta = assessed.claim_weight * (1.0 - assessed.calibrated) + failures
    return rng.betavariate(max(alpha, 0.5), max(beta, 0.5))


def _components(
    assessed: _Assessed[Any],
    ask: Ask,
    view: MarketView,
    ceiling: float,
    accuracy: float,
    in_play: tuple[str, ...],
) -> dict[str, float]:
    """The components in play (:meth:`Weights.in_play`: the core ones, then any weighted), in
    that order; the others are not computed."""
    time_left = ask.time_left_ms
    latency = 1.0 - assessed.expected_latency_ms / time_left if time_left > 0 else 0.0
    cost = 1.0 - float(assessed.item.cost) / ceiling if ceiling > 0 else 1.0
    components = {
        "accuracy": min(1.0, max(0.0, accuracy)),  # _clamp01, inline: five per bid
        "latency": min(1.0, max(0.0, latency)),
        "cost": min(1.0, max(0.0, cost)),
    }
    if len(in_play) > len(CORE_COMPONENTS):
        if "availability" in in_play:
            utilization = _number(view.utilization.get(assessed.peer, 0.0)) if view.utilization else 0.0
            finite = utilization is not None and math.isfinite(utilization)
            availability = 1.0 - utilization if utilization is not None and finite else 1.0
            components["availability"] = _clamp01(availability)
        if "confidence" in in_play:
            components["confidence"] = _clamp01(assessed.calibrated)
    return components


@quick_init
@dataclass(frozen=True, slots=True)
class _Row(Generic[T]):
    assessed: _Assessed[T]
    score: float
    components: Mapping[str, float]
    details: Mapping[str, float]


def _score_all(
    eligible: Sequence[_Assessed[T]],
    ask: Ask,
    view: MarketView,
    config: EvaluatorConfig,
    weights: Weights,
    rng: random.Random | None,
) -> list[_Row[T]]:
    ceiling = (
        ask.budget if ask.budget is not None else max((float(a.item.cost) for a in eligible), default=0.0)
    )
    if ceiling < MIN_PRICE:  # subnormal costs carry no usable differences: score them all alike
        ceiling = 0.0
    total_evidence = sum(assessed.evidence for assessed in eligible)
    in_play = weights.in_play()
    weighed = [getattr(weights, name) for name in in_play]  # per round, not per bid
    thompson = config.exploration is Exploration.THOMPSON
    ucb = config.exploration is Exploration.UCB
    log_evidence = math.log1p(total_evidence) if ucb and eligible else 0.0
    in_flight_of = view.in_flight
    rows = []
    for assessed in eligible:
        accuracy = assessed.expected_accuracy
        if thompson and rng is not None:
            accuracy = _accuracy_draw(assessed, rng)
        bonus = 0.0
        if ucb:
            bonus = config.ucb_c * math.sqrt(log_evidence / (1.0 + assessed.explored))
        in_flight = max(0, int(in_flight_of.get(assessed.peer, 0))) if in_flight_of else 0
        penalty = config.utilization_weight * in_flight / (in_flight + config.utilization_half)
        components = _components(assessed, ask, view, ceiling, accuracy, in_play)
        # map(mul): the products in the same order as a generator would give them, minus its frames
        total = sum(map(operator.mul, weighed, components.values())) + bonus - penalty
        details = {
            "expected_accuracy": assessed.expected_accuracy,
            "expected_latency_ms": assessed.expected_latency_ms,
            "calibrated_confidence": assessed.calibrated,
            "evidence": assessed.evidence,
            "exploration_bonus": bonus,
            "utilization_penalty": penalty,
        }
        rows.append(_Row(assessed, total, MappingProxyType(components), MappingProxyType(details)))
    # Rounding keeps float noise (0.1 + 0.2 vs 0.3) from deciding between bids that score the same.
    rows.sort(
        key=lambda row: (
            -round(row.score, 12),
            row.assessed.expected_latency_ms,
            float(row.assessed.item.cost),
            row.assessed.index,
        )
    )
    return rows


# With the accuracy priority, bids this close to the most accurate count as equally accurate.
ACCURACY_TOLERANCE = 0.005


def _most_accurate_first(rows: list[_Row[T]]) -> list[_Row[T]]:
    """The accuracy priority's order: the most accurate bids (within ACCURACY_TOLERANCE) first,
    each group in score order. Accuracy here is the scored component (a Thompson draw when
    exploring), so exploration still works."""
    if not rows:
        return rows
    best = max(row.components["accuracy"] for row in rows)
    top = [row for row in rows if row.components["accuracy"] >= best - ACCURACY_TOLERANCE]
    return top + [row for row in rows if row.components["accuracy"] < best - ACCURACY_TOLERANCE]


def _price(
    rows: Sequence[_Row[Any]], weights: Weights, ask: Ask, config: EvaluatorConfig, promoted: str
) -> tuple[float | None, str]:
    if not rows:
        return None, ""
    winner_cost = float(rows[0].assessed.item.cost)
    if config.pricing is Pricing.FIRST:
        return winner_cost, "first price: its own bid"
    if promoted:  # a winner that did not score best pays its own bid
        return winner_cost, f"{promoted}: its own bid"

    def terms(row: _Row[Any]) -> PriceTerms:
        cost_term = weights.cost * row.components.get("cost", 0.0)
        return PriceTerms(row.score - cost_term, float(row.assessed.item.cost))

    return second_score_price(terms(rows[0]), [terms(row) for row in rows[1:]], weights.cost, ask.budget)


def _check(ask: Ask, config: EvaluatorConfig, rng: random.Random | None) -> None:
    if not math.isfinite(ask.time_left_ms):
        raise ConfigError(f"time left must be finite, got {ask.time_left_ms!r}")
    if ask.budget is not None and not (math.isfinite(ask.budget) and ask.budget >= 0):
        raise ConfigError(f"budget must be a finite non-negative number, got {ask.budget!r}")
    if config.exploration is Exploration.THOMPSON and rng is None:
        raise ConfigError(
            "Thompson sampling needs an rng (random.Random); pass one or choose another exploration"
        )


def evaluate(
    bids: Sequence[T],
    ask: Ask,
    view: MarketView | None = None,
    config: EvaluatorConfig | None = None,
    *,
    rng: random.Random | None = None,
    now_ms: int = 0,
    explain: bool = True,
) -> Decision[T]:
    """Screen, score and clear ``bids`` for ``ask`` (see the module docstring).

    ``explain=False`` skips building the rationale (``Decision.rationale`` is then None), for
    callers that only want the ranking. Bad arguments (the ask, the config, a missing rng for Thompson sampling) raise ConfigError;
    bad bids never raise: they land in ``excluded`` with the reason.
    """
    view = view if view is not None else MarketView()
    config = config if config is not None else EvaluatorConfig()
    weights = resolve_weights(ask.weights).normalised()
    _check(ask, config, rng)
    eligible, excluded = _screen(bids, ask, view, config)
    rows = _score_all(eligible, ask, view, config, weights, rng)
    accuracy_note = ""
    if resolve_weights(ask.weights) is PROFILES["accuracy"]:
        by_score = rows
        rows = _most_accurate_first(rows)
        if rows and rows[0] is not by_score[0]:
            accuracy_note = "accuracy priority: the most accurate affordable bid wins"
    pick = starved_pick([(row.assessed.peer, row.score) for row in rows], view.shares, config.floor)
    floor_note = ""
    if pick is not None:
        index, floor_note = pick
        rows = [rows[index], *rows[:index], *rows[index + 1 :]]
    if ask.selection.prefer:  # the caller's preferred peers first, the evaluator's order within
        rows.sort(key=lambda row: ask.selection.preference(row.assessed.item))
    price, price_note = _price(
        rows,
        weights,
        ask,
        config,
        promoted="promoted by the floor" if pick is not None else "most accurate" if accuracy_note else "",
    )
    ranked = tuple(
        Scored(row.assessed.item, row.score, row.components, rank, row.details)
        for rank, row in enumerate(rows, start=1)
    )
    frozen_excluded = tuple(excluded)
    note = floor_note or accuracy_note
    rationale = (
        Explainer(
            lambda: _rationale(
                ranked, frozen_excluded, weights, ask, config, now_ms, (price, price_note), note
            )
        )
        if explain
        else None
    )
    return Decision(ranked, frozen_excluded, weights, price, rationale)


_GREEDY = EvaluatorConfig.greedy()


def score(
    bids: Sequence[T], weights: WeightsSpec, time_left_ms: float, budget: float | None = None
) -> Ranking[T]:
    """Rank ``bids`` on their claims alone, best first; the ones that break a hard constraint
    are excluded with a reason.

    The evaluator with no profile, no exploration, no floor and no penalty
    (:meth:`EvaluatorConfig.greedy`): a deterministic ranking without learning. ``time_left_ms``
    is how long remains until the request's deadline; ``budget`` the most the caller will pay
    for this task (None: no cap).
    """
    ask = Ask(task_id="", capability="", time_left_ms=time_left_ms, budget=budget, weights=weights)
    decision = evaluate(bids, ask, config=_GREEDY, explain=False)
    return Ranking(decision.ranked, decision.excluded, decision.weights)


def _rationale(
    ranked: Sequence[Scored[Any]],
    excluded: Sequence[Excluded[Any]],
    weights: Weights,
    ask: Ask,
    config: EvaluatorConfig,
    now_ms: int,
    price: tuple[float | None, str],
    floor_note: str,
) -> Rationale:
    settings = {
        "exploration": config.exploration.value,
        "pricing": config.pricing.value,
        "min_share": config.floor.min_share,
        "utilization_weight": config.utilization_weight,
        "time_left_ms": ask.time_left_ms,
        "budget": ask.budget,
        "bucket": ask.bucket,
    }
    return explain(
        ranked,
        excluded,
        weights,
        task_id=ask.task_id,
        capability=ask.capability,
        at_ms=now_ms,
        settings=settings,
        price=price[0],
        price_note=price[1],
        floor_note=floor_note,
    )


__all__ = [
    "COMPONENTS",
    "Ask",
    "Decision",
    "EvaluatorConfig",
    "Excluded",
    "Exclusion",
    "Exploration",
    "MarketView",
    "Pricing",
    "Ranking",
    "Resources",
    "Scorable",
    "Scored",
    "evaluate",
    "label",
    "peer_key",
    "score",
]
