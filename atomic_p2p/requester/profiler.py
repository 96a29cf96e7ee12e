"""What a requester has learned about each (peer, model, capability): pure state, pure updates.

How this works
--------------
A :class:`Profile` is an immutable value; :func:`record` takes a profile (or None for a new
key) and one :class:`Observation` and returns the next profile. Nothing here reads a clock or
a random source: the time of an observation is a field of it, and a Thompson draw takes the
caller's ``random.Random``. Four things are tracked per key:

1. **Outcome quality**, a Beta(alpha, beta) posterior over the probability that a result is
   good. An outcome is a score in [0, 1] (1 = right, 0 = wrong or failed); a fractional score
   adds ``score`` to alpha and ``1 - score`` to beta. Evidence decays: before each update the
   evidence above the prior is multiplied by ``decay``, so the posterior remembers about
   ``1 / (1 - decay)`` recent outcomes and follows a peer that degrades mid-run.
2. **Latency quantiles** over a bounded window of the most recent delivered latencies (exact
   quantiles by linear interpolation; a window rather than a P² sketch because it forgets as
   fast as the posterior does, which is what drift needs, and 64 floats cost nothing).
3. **Calibration**, promised against delivered, as exponentially weighted means: the Brier
   score ``(confidence - outcome)^2`` and the signed bias ``confidence - outcome``; the MAPE
   of latency and of cost (``|promised - delivered| / delivered``); and the mean log ratio of
   delivered to promised latency, which the evaluator uses to correct a latency claim. The
   bias and the Brier score are also kept over a longer memory (``calibration_decay``): the
   bias a claim is corrected by is the long one while the recent misses agree with it, the
   short one from the moment they differ by more than ``change_z`` standard errors
   (:func:`claim_bias`: a two-timescale change test), so a steady peer's claims are corrected
   by a precise bias and a peer that changes is followed as fast as before.
4. **Specialization**: a Beta posterior per input-shape bucket (:func:`shape_bucket`), at most
   ``max_buckets`` of them (the least-evidenced is evicted). :func:`estimate` pools a bucket's
   posterior with the whole profile's (partial pooling), and :func:`specializations` lists the
   capabilities and buckets where a peer beats the population.

:meth:`Profile.to_dict` / :meth:`Profile.from_dict` give a compact JSON-able snapshot for the
store. Invalid observations (NaN, a score outside [0, 1], a negative latency) raise
:class:`~atomic_p2p.errors.ConfigError`: they are caller bugs or bad user reports, never network
input (bids are screened by the evaluator before anything reaches a profile).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from atomic_p2p.errors import ConfigError

SNAPSHOT_VERSION = 1
# Denominators below this many milliseconds (or cost units) are clamped, so a 0 ms promise or a
# free result cannot make an error ratio infinite.
_TINY = 1e-3
# One absolute percentage error counts for at most this much (a 1000x miss is not 1000x worse).
_MAX_APE = 10.0
# A confidence miss spreads at least this much (variance): a peer whose misses were all alike so
# far does not make every later change look infinitely significant to :func:`claim_bias`.
_MIN_MISS_VARIANCE = 1e-4


@dataclass(frozen=True, slots=True, order=True)
class ProfileKey:
    """Who did the work and what it was: peer id (hex), model id, capability."""

    peer: str
    model_id: str
    capability: str


@dataclass(frozen=True, slots=True)
class ProfilerConfig:
    """Priors and memory. ``decay`` = 1 never forgets; 0.98 remembers about 50 outcomes.

    ``calibration_decay`` is the longer memory of the confidence bias (0.99: about 100
    outcomes), used while the recent misses agree with it within ``change_z`` standard errors
    (:func:`claim_bias`); a value <= ``decay`` turns the long memory off."""

    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    decay: float = 0.98
    latency_window: int = 64
    max_buckets: int = 32
    calibration_decay: float = 0.99
    change_z: float = 3.0

    def __post_init__(self) -> None:
        if not (self.prior_alpha > 0 and self.prior_beta > 0):
            raise ConfigError("the Beta prior needs alpha > 0 and beta > 0")
        if not 0 < self.decay <= 1:
            raise ConfigError(f"decay must lie in (0, 1], got {self.decay!r}")
        if not 0 < self.calibration_decay <= 1:
            raise ConfigError(f"calibration_decay must lie in (0, 1], got {self.calibration_decay!r}")
        if not (math.isfinite(self.change_z) and self.change_z >= 0):
            raise ConfigError(f"change_z must be a finite non-negative number, got {self.change_z!r}")
        if self.latency_window < 1 or self.max_buckets < 0:
            raise ConfigError("latency_window must be >= 1 and max_buckets >= 0")


@dataclass(frozen=True, slots=True)
class BetaPosterior:
    """Beta(alpha, beta) over the probability that an outcome is good."""

    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def variance(self) -> float:
        total = self.alpha + self.beta
        return self.alpha * self.beta / (total * total * (total + 1))

    def evidence(self, config: ProfilerConfig) -> float:
        """Pseudo-observations above the prior (decayed)."""
        return max(0.0, self.alpha + self.beta - config.prior_alpha - config.prior_beta)

    def observe(self, score: float, config: ProfilerConfig) -> BetaPosterior:
        keep = config.decay
        alpha = config.prior_alpha + keep * (self.alpha - config.prior_alpha) + score
        beta = config.prior_beta + keep * (self.beta - config.prior_beta) + (1.0 - score)
        return BetaPosterior(alpha, beta)

    def sample(self, rng: random.Random) -> float:
        return rng.betavariate(self.alpha, self.beta)


@dataclass(frozen=True, slots=True)
class RunningMean:
    """An exponentially weighted mean: ``weight`` is the decayed count, ``count`` the raw one."""

    mean: float = 0.0
    weight: float = 0.0
    count: int = 0

    def add(self, value: float, decay: float) -> RunningMean:
        weight = decay * self.weight + 1.0
        return RunningMean(self.mean + (value - self.mean) / weight, weight, self.count + 1)

    def shrunk(self, strength: float) -> float:
        """The mean pulled toward 0 when evidence is thin: ``mean * weight / (weight + strength)``."""
        return self.mean * self.weight / (self.weight + strength) if self.weight > 0 else 0.0


@dataclass(frozen=True, slots=True)
class LatencyWindow:
    """The most recent delivered latencies (ms), oldest first."""

    samples: tuple[float, ...] = ()

    def add(self, latency_ms: float, size: int) -> LatencyWindow:
        return LatencyWindow((*self.samples, latency_ms)[-size:])

    def quantile(self, q: float) -> float | None:
        """The q-quantile by linear interpolation between order statistics; None when empty."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        position = min(max(q, 0.0), 1.0) * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Promised against delivered (see the module docstring)."""

    brier: RunningMean = RunningMean()
    confidence_bias: RunningMean = RunningMean()
    latency_ape: RunningMean = RunningMean()
    latency_log_ratio: RunningMean = RunningMean()
    cost_ape: RunningMean = RunningMean()
    # The same two, remembered over ``calibration_decay`` (longer): see :func:`claim_bias`.
    brier_long: RunningMean = RunningMean()
    confidence_bias_long: RunningMean = RunningMean()


_CALIBRATION_FIELDS = (
    "brier",
    "confidence_bias",
    "latency_ape",
    "latency_log_ratio",
    "cost_ape",
    "brier_long",
    "confidence_bias_long",
)


@dataclass(frozen=True, slots=True)
class Observation:
    """One thing learned about a key. Every field but ``at_ms`` is optional.

    Typically two per task: one when the result lands (``latency_ms``, ``cost`` and the
    promised latency and cost), one when its quality is known (``outcome`` and the promised
    confidence), which may be much later (:meth:`Requester.report_outcome`). A failed execution
    is ``outcome=0``.
    """

    at_ms: int
    outcome: float | None = None
    latency_ms: float | None = None
    cost: float | None = None
    promised_confidence: float | None = None
    promised_latency_ms: float | None = None
    promised_cost: float | None = None
    bucket: str = ""

    def __post_init__(self) -> None:
        for name in ("outcome", "promised_confidence"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("latency_ms", "cost", "promised_latency_ms", "promised_cost"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{name} must be a finite non-negative number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything learned about one key; build with :func:`new_profile`, advance with :func:`record`."""

    key: ProfileKey
    quality: BetaPosterior
    latency: LatencyWindow = LatencyWindow()
    calibration: Calibration = Calibration()
    buckets: Mapping[str, BetaPosterior] = field(default_factory=lambda: MappingProxyType({}))
    outcomes: int = 0
    deliveries: int = 0
    updated_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-able snapshot; :meth:`from_dict` restores it exactly."""
        return {
            "v": SNAPSHOT_VERSION,
            "key": [self.key.peer, self.key.model_id, self.key.capability],
            "quality": [self.quality.alpha, self.quality.beta],
            "latency": list(self.latency.samples),
            "calibration": {
                name: [m.mean, m.weight, m.count]
                for name in _CALIBRATION_FIELDS
                if (m := getattr(self.calibration, name)).count
            },
            "buckets": {name: [b.alpha, b.beta] for name, b in self.buckets.items()},
            "outcomes": self.outcomes,
            "deliveries": self.deliveries,
            "updated_ms": self.updated_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Restore a snapshot; a malformed or newer one raises ConfigError."""
        try:
            if data["v"] != SNAPSHOT_VERSION:
                raise ConfigError(f"profile snapshot version {data['v']!r} is not {SNAPSHOT_VERSION}")
            peer, model_id, capability = (str(part) for part in data["key"])
            calibration = Calibration(
                **{
                    name: RunningMean(float(mean), float(weight), int(count))
                    for name, (mean, weight, count) in data["calibration"].items()
                    if name in _CALIBRATION_FIELDS
                }
            )
            buckets = {str(name): _beta(pair) for name, pair in data["buckets"].items()}
            return cls(
                key=ProfileKey(peer, model_id, capability),
                quality=_beta(data["quality"]),
                latency=LatencyWindow(tuple(float(x) for x in data["latency"])),
                calibration=calibration,
                buckets=MappingProxyType(buckets),
                outcomes=int(data["outcomes"]),
                deliveries=int(data["deliveries"]),
                updated_ms=int(data["updated_ms"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"malformed profile snapshot: {error!r}") from error


def _beta(pair: Sequence[Any]) -> BetaPosterior:
    alpha, beta = (float(x) for x in pair)
    if not (alpha > 0 and beta > 0 and math.isfinite(alpha + beta)):
        raise ValueError(f"Beta parameters must be positive and finite, got {alpha}, {beta}")
    return BetaPosterior(alpha, beta)


def new_profile(key: ProfileKey, config: ProfilerConfig) -> Profile:
    """The prior: nothing observed yet."""
    return Profile(key, BetaPosterior(config.prior_alpha, config.prior_beta))


def record(
    profile: Profile | None, key: ProfileKey, observation: Observation, config: ProfilerConfig
) -> Profile:
    """The profile after ``observation`` (``profile`` None: start from the prior)."""
    current = profile if profile is not None else new_profile(key, config)
    if current.key != key:
        raise ConfigError(f"observation for {key} recorded on the profile of {current.key}")
    updated = replace(current, updated_ms=max(current.updated_ms, observation.at_ms))
    if observation.outcome is not None:
        updated = _record_outcome(updated, observation, config)
    if observation.latency_ms is not None or observation.cost is not None:
        updated = _record_delivery(updated, observation, config)
    return updated


def _record_outcome(profile: Profile, observation: Observation, config: ProfilerConfig) -> Profile:
    score = observation.outcome
    assert score is not None
    calibration = profile.calibration
    if observation.promised_confidence is not None:
        miss = observation.promised_confidence - score
        calibration = replace(
            calibration,
            brier=calibration.brier.add(miss * miss, config.decay),
            confidence_bias=calibration.confidence_bias.add(miss, config.decay),
            brier_long=calibration.brier_long.add(miss * miss, config.calibration_decay),
            confidence_bias_long=calibration.confidence_bias_long.add(miss, config.calibration_decay),
        )
    buckets = dict(profile.buckets)
    if observation.bucket and config.max_buckets:
        prior = BetaPosterior(config.prior_alpha, config.prior_beta)
        buckets[observation.bucket] = buckets.get(observation.bucket, prior).observe(score, config)
        while len(buckets) > config.max_buckets:
            weakest = min(
                (name for name in buckets if name != observation.bucket),
                key=lambda name: (buckets[name].evidence(config), name),
            )
            del buckets[weakest]
    return replace(
        profile,
        quality=profile.quality.observe(score, config),
        calibration=calibration,
        buckets=MappingProxyType(buckets),
        outcomes=profile.outcomes + 1,
    )


def _ape(promised: float, delivered: float) -> float:
    return min(_MAX_APE, abs(promised - delivered) / max(delivered, _TINY))


def _record_delivery(profile: Profile, observation: Observation, config: ProfilerConfig) -> Profile:
    calibration = profile.calibration
    latency = profile.latency
    delivered, promised = observation.latency_ms, observation.promised_latency_ms
    if delivered is not None:
        latency = latency.add(delivered, config.latency_window)
        if promised is not None:
            ratio = math.log(max(delivered, _TINY) / max(promised, _TINY))
            calibration = replace(
                calibration,
                latency_ape=calibration.latency_ape.add(_ape(promised, delivered), config.decay),
                latency_log_ratio=calibration.latency_log_ratio.add(ratio, config.decay),
            )
    if observation.cost is not None and observation.promised_cost is not None:
        calibration = replace(
            calibration,
            cost_ape=calibration.cost_ape.add(
                _ape(observation.promised_cost, observation.cost), config.decay
            ),
        )
    return replace(profile, latency=latency, calibration=calibration, deliveries=profile.deliveries + 1)


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the evaluator needs from a profile, for one input bucket.

    ``successes`` and ``failures`` are the decayed outcome evidence above the prior (the bucket's
    pooled with the whole profile's when the bucket has any); ``prior`` is the Beta prior they
    sit on; ``outcomes`` the raw count. ``confidence_bias`` and ``latency_ratio`` are shrunk toward
    "no correction" while evidence is thin; ``latency_ms`` is the observed quantile, if any.
    """

    successes: float
    failures: float
    prior: BetaPosterior
    outcomes: int
    confidence_bias: float
    brier: float | None
    latency_ratio: float
    latency_ms: float | None
    latency_samples: int

    @property
    def evidence(self) -> float:
        return self.successes + self.failures

    @property
    def posterior(self) -> BetaPosterior:
        return BetaPosterior(self.prior.alpha + self.successes, self.prior.beta + self.failures)


def estimate(
    profile: Profile,
    config: ProfilerConfig,
    *,
    bucket: str = "",
    latency_quantile: float = 0.5,
    shrink: float = 2.0,
) -> Estimate:
    """Summarise ``profile`` for one decision (see :class:`Estimate`).

    ``shrink`` is how many pseudo-observations of "no correction" the calibration estimates
    start from, and how strongly a bucket is pooled toward the whole profile.
    """
    prior = BetaPosterior(config.prior_alpha, config.prior_beta)
    successes = profile.quality.alpha - prior.alpha
    failures = profile.quality.beta - prior.beta
    in_bucket = profile.buckets.get(bucket) if bucket else None
    if in_bucket is not None:
        # Partial pooling: the whole profile's mean counts as `shrink` pseudo-observations.
        mean = profile.quality.mean
        successes = in_bucket.alpha - prior.alpha + shrink * mean
        failures = in_bucket.beta - prior.beta + shrink * (1.0 - mean)
    calibration = profile.calibration
    return Estimate(
        successes=max(0.0, successes),
        failures=max(0.0, failures),
        prior=prior,
        outcomes=profile.outcomes,
        confidence_bias=claim_bias(calibration, config).shrunk(shrink),
        brier=calibration.brier.mean if calibration.brier.count else None,
        latency_ratio=math.exp(calibration.latency_log_ratio.shrunk(shrink)),
        latency_ms=profile.latency.quantile(latency_quantile),
        latency_samples=len(profile.latency.samples),
    )


def _geometric(ratio: float, count: int) -> float:
    """``sum(ratio**i for i in range(count))``."""
    return float(count) if ratio >= 1.0 else (1.0 - ratio**count) / (1.0 - ratio)


def _difference_spread(short: RunningMean, short_decay: float, long: RunningMean, long_decay: float) -> float:
    """``sum((a_i - b_i)^2)``: the variance of ``short.mean - long.mean`` per unit variance of a
    sample, the two being exponentially weighted means (weights ``a_i``, ``b_i`` by age ``i``,
    each summing to 1) over the same latest samples. The long mean shares the short one's
    samples, so this is less than the sum of their variances."""
    short_norm, long_norm = _geometric(short_decay, short.count), _geometric(long_decay, long.count)
    squares_short = _geometric(short_decay * short_decay, short.count) / short_norm**2
    squares_long = _geometric(long_decay * long_decay, long.count) / long_norm**2
    shared = min(short.count, long.count)
    cross = _geometric(short_decay * long_decay, shared) / (short_norm * long_norm)
    return max(0.0, squares_short - 2.0 * cross + squares_long)


def claim_bias(calibration: Calibration, config: ProfilerConfig) -> RunningMean:
    """The confidence bias to correct claims by: the long memory (``calibration_decay``) while
    the short one (``decay``) agrees with it, else the short one.

    A peer's bias is a property of how it claims, steady until the peer changes, and the
    evaluator ranks peers on claims corrected by it, so its noise decides rankings: the long
    memory averages it away. When a peer changes (it degrades, its strategy changes) the recent
    misses stop looking like the old ones: the two means then differ by more than ``change_z``
    standard errors of their difference (the spread of a miss is what the long Brier score
    leaves after the bias) and the short memory is used, until the long one has caught up."""
    short, long = calibration.confidence_bias, calibration.confidence_bias_long
    if long.count == 0 or config.calibration_decay <= config.decay:
        return short
    variance = max(calibration.brier_long.mean - long.mean * long.mean, _MIN_MISS_VARIANCE)
    spread = math.sqrt(variance * _difference_spread(short, config.decay, long, config.calibration_decay))
    return short if abs(short.mean - long.mean) > config.change_z * spread else long


@dataclass(frozen=True, slots=True)
class Specialty:
    """A (peer, model, capability, bucket) that beats the population's mean there by ``lift``."""

    key: ProfileKey
    bucket: str  # "" means every input of the capability
    mean: float
    population_mean: float
    evidence: float

    @property
    def lift(self) -> float:
        return self.mean - self.population_mean


def specializations(
    profiles: Iterable[Profile], config: ProfilerConfig, *, min_evidence: float = 5.0, margin: float = 0.05
) -> tuple[Specialty, ...]:
    """Where each peer does well: capabilities and buckets whose posterior mean beats the
    evidence-weighted mean of every profile for the same (capability, bucket) by ``margin``,
    with at least ``min_evidence``. Best lift first."""
    cells: dict[tuple[str, str], list[tuple[ProfileKey, BetaPosterior]]] = {}
    for profile in profiles:
        cells.setdefault((profile.key.capability, ""), []).append((profile.key, profile.quality))
        for bucket, posterior in profile.buckets.items():
            cells.setdefault((profile.key.capability, bucket), []).append((profile.key, posterior))
    found: list[Specialty] = []
    for (_, bucket), members in cells.items():
        total = sum(posterior.evidence(config) for _, posterior in members)
        if total <= 0:
            continue
        population = sum(posterior.mean * posterior.evidence(config) for _, posterior in members) / total
        for key, posterior in members:
            evidence = posterior.evidence(config)
            if evidence >= min_evidence and posterior.mean >= population + margin:
                found.append(Specialty(key, bucket, posterior.mean, population, evidence))
    found.sort(key=lambda s: (-s.lift, s.key, s.bucket))
    return tuple(found)


def shape_bucket(shapes: Mapping[str, Sequence[int]]) -> str:
    """A stable name for an input shape: per input, the batch (leading) dimension rounded up to a
    power of two, the other dimensions exact. ``{"x": (5, 1, 28, 28)}`` -> ``"x=8x1x28x28"``."""
    parts = []
    for name in sorted(shapes):
        dims = list(shapes[name])
        if dims:
            dims[0] = 1 << max(0, int(dims[0]) - 1).bit_length() if dims[0] > 0 else 0
        parts.append(f"{name}={'x'.join(str(int(d)) for d in dims)}")
    return ";".join(parts)
