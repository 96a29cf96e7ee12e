"""Rank bids by a weighted score: the simple evaluator of DESIGN section 7. Pure: values in, values out.

How this works
--------------
1. Hard constraints first. A bid is *excluded* (with a reason) when a field is not a finite
   number in range (confidence outside [0, 1], negative latency or cost, NaN or inf anywhere:
   these come from the network and must never poison a sort), when its expected latency does
   not fit in the time left, or when its cost exceeds the budget.
2. Each remaining bid gets components normalised to [0, 1], higher is better:

   - ``accuracy`` = the bid's confidence (the claim; the profiler will later replace it with a
     posterior blended through the peer's measured calibration),
   - ``latency``  = 1 - expected_latency / time_left,
   - ``cost``     = 1 - cost / ceiling, where the ceiling is the budget when one is given and
     otherwise the most expensive eligible offer (all free -> 1 for everyone).

3. ``score = sum_k w_k * s_k`` with the weights normalised to sum to 1, so scores lie in [0, 1].
4. Ties are broken deterministically: lower latency, then lower cost, then input order.

The seam for the full evaluator: :func:`score` takes anything with ``confidence``,
``expected_latency_ms`` and ``cost`` and returns a :class:`Ranking` whose entries carry the
per-component breakdown; a richer evaluator adds components (availability, calibration,
exploration bonus) and keeps the same output shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from atomic_p2p.errors import ConfigError

COMPONENTS = ("accuracy", "latency", "cost")


class Scorable(Protocol):
    """The fields of a bid that scoring reads."""

    @property
    def confidence(self) -> float: ...

    @property
    def expected_latency_ms(self) -> float: ...

    @property
    def cost(self) -> float: ...


T = TypeVar("T", bound=Scorable)


@dataclass(frozen=True, slots=True)
class Weights:
    """Non-negative component weights; :meth:`normalised` scales them to sum to 1."""

    accuracy: float
    latency: float
    cost: float

    def __post_init__(self) -> None:
        for name in COMPONENTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"weight {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(f"weight {name} must not be negative, got {value}")
        if self.accuracy + self.latency + self.cost <= 0:
            raise ConfigError("at least one weight must be positive")

    def normalised(self) -> Weights:
        total = self.accuracy + self.latency + self.cost
        return Weights(self.accuracy / total, self.latency / total, self.cost / total)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in COMPONENTS}


# DESIGN section 7 priority profiles.
PROFILES: Mapping[str, Weights] = MappingProxyType(
    {
        "speed": Weights(accuracy=0.3, latency=0.6, cost=0.1),
        "accuracy": Weights(accuracy=0.7, latency=0.2, cost=0.1),
        "balanced": Weights(accuracy=0.4, latency=0.3, cost=0.3),
    }
)
DEFAULT_PROFILE = "balanced"

WeightsSpec = Weights | str | Mapping[str, float] | None


def resolve_weights(spec: WeightsSpec) -> Weights:
    """A profile name, a mapping of component -> weight, a :class:`Weights` or None (balanced)."""
    if spec is None:
        return PROFILES[DEFAULT_PROFILE]
    if isinstance(spec, Weights):
        return spec
    if isinstance(spec, str):
        if spec not in PROFILES:
            raise ConfigError(
                f"unknown priority {spec!r}; use one of {sorted(PROFILES)} or a dict of weights"
            )
        return PROFILES[spec]
    if isinstance(spec, Mapping):
        unknown = set(spec) - set(COMPONENTS)
        if unknown:
            raise ConfigError(f"unknown weight components {sorted(unknown)}; use {list(COMPONENTS)}")
        return Weights(**{name: spec.get(name, 0.0) for name in COMPONENTS})
    raise ConfigError(f"weights must be a profile name, a mapping or Weights, got {type(spec).__name__}")


@dataclass(frozen=True, slots=True)
class Scored(Generic[T]):
    """One ranked bid: its total score, the components behind it, its 1-based rank."""

    item: T
    score: float
    components: Mapping[str, float]
    rank: int


@dataclass(frozen=True, slots=True)
class Excluded(Generic[T]):
    """A bid that failed a hard constraint, and which one."""

    item: T
    reason: str


@dataclass(frozen=True, slots=True)
class Ranking(Generic[T]):
    """Eligible bids best first, the excluded ones, and the normalised weights used."""

    ranked: tuple[Scored[T], ...]
    excluded: tuple[Excluded[T], ...]
    weights: Weights


def _field_problem(bid: Scorable) -> str | None:
    confidence, latency, cost = bid.confidence, bid.expected_latency_ms, bid.cost
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        return f"confidence {confidence!r} is not a number in [0, 1]"
    if not (math.isfinite(latency) and latency >= 0.0):
        return f"expected latency {latency!r} ms is not a finite non-negative number"
    if not (math.isfinite(cost) and cost >= 0.0):
        return f"cost {cost!r} is not a finite non-negative number"
    return None


def _constraint_problem(bid: Scorable, time_left_ms: float, budget: float | None) -> str | None:
    problem = _field_problem(bid)
    if problem is not None:
        return problem
    if bid.expected_latency_ms > time_left_ms:
        return f"expected latency {bid.expected_latency_ms:.1f} ms exceeds the {time_left_ms:.1f} ms left"
    if budget is not None and bid.cost > budget:
        return f"cost {bid.cost:g} exceeds the budget {budget:g}"
    return None


def _components(bid: Scorable, time_left_ms: float, cost_ceiling: float) -> dict[str, float]:
    latency = 1.0 - bid.expected_latency_ms / time_left_ms if time_left_ms > 0 else 0.0
    cost = 1.0 - bid.cost / cost_ceiling if cost_ceiling > 0 else 1.0
    return {
        "accuracy": float(bid.confidence),
        "latency": min(1.0, max(0.0, latency)),
        "cost": min(1.0, max(0.0, cost)),
    }


def score(
    bids: Sequence[T], weights: WeightsSpec, time_left_ms: float, budget: float | None = None
) -> Ranking[T]:
    """Rank ``bids`` (see the module docstring).

    ``time_left_ms`` is how long remains until the request's deadline; ``budget`` the most the
    caller will pay for this task (None: no cap).
    """
    resolved = resolve_weights(weights).normalised()
    if not math.isfinite(time_left_ms):
        raise ConfigError(f"time left must be finite, got {time_left_ms!r}")
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise ConfigError(f"budget must be a finite non-negative number, got {budget!r}")

    eligible: list[tuple[int, T]] = []
    excluded: list[Excluded[T]] = []
    for index, bid in enumerate(bids):
        problem = _constraint_problem(bid, time_left_ms, budget)
        if problem is None:
            eligible.append((index, bid))
        else:
            excluded.append(Excluded(bid, problem))

    ceiling = budget if budget is not None else max((bid.cost for _, bid in eligible), default=0.0)
    entries = []
    for index, bid in eligible:
        components = _components(bid, time_left_ms, ceiling)
        total = sum(getattr(resolved, name) * components[name] for name in COMPONENTS)
        entries.append((total, index, bid, components))
    # Sort key: best score, then the faster, then the cheaper, then the earlier bid. Rounding
    # keeps float noise (0.1 + 0.2 vs 0.3) from deciding between bids that score the same.
    entries.sort(
        key=lambda entry: (-round(entry[0], 12), entry[2].expected_latency_ms, entry[2].cost, entry[1])
    )
    ranked = tuple(
        Scored(bid, total, MappingProxyType(components), rank)
        for rank, (total, _, bid, components) in enumerate(entries, start=1)
    )
    return Ranking(ranked, tuple(excluded), resolved)
