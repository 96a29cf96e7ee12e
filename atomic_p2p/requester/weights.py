"""Component weights and the priority profiles of docs/architecture.md section 7.

Five components can carry weight: ``accuracy``, ``latency`` and ``cost`` (the *core*, which the
profiles weigh) and ``availability`` and ``confidence`` (weighted only when a caller asks). A
component is *in play* when it is core or has a positive weight; :meth:`Weights.as_dict` and
the evaluator's per-bid components list exactly the components in play, so
``score == sum(weights[k] * components[k])`` holds key by key.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from atomic_p2p.errors import ConfigError

CORE_COMPONENTS = ("accuracy", "latency", "cost")
COMPONENTS = (*CORE_COMPONENTS, "availability", "confidence")


@dataclass(frozen=True, slots=True)
class Weights:
    """Non-negative component weights; :meth:`normalised` scales them to sum to 1."""

    accuracy: float
    latency: float
    cost: float
    availability: float = 0.0
    confidence: float = 0.0

    def __post_init__(self) -> None:
        for name in COMPONENTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"weight {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(f"weight {name} must not be negative, got {value}")
        if self.total() <= 0:
            raise ConfigError("at least one weight must be positive")

    def total(self) -> float:
        return sum(getattr(self, name) for name in COMPONENTS)

    def normalised(self) -> Weights:
        return _normalised(self)

    def in_play(self) -> tuple[str, ...]:
        """The core components, then any other with a positive weight."""
        return tuple(name for name in COMPONENTS if name in CORE_COMPONENTS or getattr(self, name) > 0)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.in_play()}


@functools.lru_cache(maxsize=64)
def _normalised(weights: Weights) -> Weights:
    # Cached: every evaluation normalises the same few profiles.
    total = weights.total()
    return Weights(*(getattr(weights, name) / total for name in COMPONENTS))


# The priority profiles of docs/architecture.md section 7.
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
