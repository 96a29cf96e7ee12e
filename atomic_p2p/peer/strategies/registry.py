"""Strategies by name: what ``strategy = "..."`` in a peer config may say.

A factory takes the model's ``[models.strategy_options]`` table, validates it (raising
:class:`~atomic_p2p.errors.ConfigError` that says what to write) and returns a fresh strategy.
``resource-aware`` and ``learning`` adjust another strategy's terms: ``base`` names it
(default ``"confidence"``) and ``base_options`` is its options table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.strategies.bidding import Strategy
from atomic_p2p.peer.strategies.confidence import ConfidenceStrategy, FixedStrategy
from atomic_p2p.peer.strategies.learning import LearningSettings, LearningStrategy
from atomic_p2p.peer.strategies.options import BASE_OPTIONS, Options
from atomic_p2p.peer.strategies.resource import ResourceAwareStrategy, ResourceSettings
from atomic_p2p.peer.strategies.specialization import SpecializationSettings, SpecializationStrategy

StrategyFactory = Callable[[Mapping[str, Any]], Strategy]


def _confidence(options: Mapping[str, Any]) -> Strategy:
    Options("confidence", options, ())
    return ConfidenceStrategy()


def _fixed(options: Mapping[str, Any]) -> Strategy:
    Options("fixed", options, {"confidence"})
    value = options.get("confidence")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(
            "strategy 'fixed' needs strategy_options.confidence, a number in [0, 1] "
            f"(the confidence it declares), got {value!r}"
        )
    return FixedStrategy(float(value))


def _specialization(options: Mapping[str, Any]) -> Strategy:
    return SpecializationStrategy(SpecializationSettings.parse(options))


def _resource_aware(options: Mapping[str, Any]) -> Strategy:
    settings = ResourceSettings.parse(options)
    return ResourceAwareStrategy(settings, _base("resource-aware", options))


def _learning(options: Mapping[str, Any]) -> Strategy:
    settings = LearningSettings.parse(options)
    return LearningStrategy(settings, _base("learning", options))


def _base(name: str, options: Mapping[str, Any]) -> Strategy:
    """The strategy that ``name`` wraps, built from ``base`` and ``base_options``."""
    read = Options(name, {key: options[key] for key in BASE_OPTIONS if key in options}, BASE_OPTIONS)
    base_name = read.text("base", "confidence", '"confidence"')
    if base_name == name:
        raise ConfigError(f"strategy {name!r}: strategy_options.base must name another strategy, not itself")
    base_options = read.table("base_options", "{ classes = [0, 1, 2, 3, 4] }")
    try:
        base = make_strategy(base_name, base_options)
    except ConfigError as exc:
        raise ConfigError(f"strategy {name!r}: base: {exc}") from None
    return base


STRATEGIES: dict[str, StrategyFactory] = {
    "confidence": _confidence,
    "fixed": _fixed,
    "learning": _learning,
    "resource-aware": _resource_aware,
    "specialization": _specialization,
}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Make ``strategy = "<name>"`` usable in configs. The factory validates its options."""
    STRATEGIES[name] = factory


def make_strategy(name: str, options: Mapping[str, Any]) -> Strategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"strategy {name!r} is unknown; use one of {sorted(STRATEGIES)}") from None
    return factory(options)
