"""Strategies by name: what ``strategy = "..."`` in a peer config may say.

A factory takes the model's ``[models.strategy_options]`` table, validates it (raising
:class:`~atomic_p2p.errors.ConfigError` that says what to write) and returns a fresh strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.strategies.bidding import Strategy
from atomic_p2p.peer.strategies.confidence import ConfidenceStrategy, FixedStrategy
from atomic_p2p.peer.strategies.options import Options
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


STRATEGIES: dict[str, StrategyFactory] = {
    "confidence": _confidence,
    "fixed": _fixed,
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
