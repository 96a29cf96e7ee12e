"""Reading one strategy's ``[models.strategy_options]``: every mistake says what to write instead."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from atomic_p2p.errors import ConfigError

# Options of a strategy that adjusts another one's terms: which strategy, and its options.
BASE_OPTIONS = ("base", "base_options")


class Options:
    """Typed access to a strategy's options; unknown keys are refused up front."""

    def __init__(self, strategy: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
        self.strategy = strategy
        self.options = options
        allowed = sorted(allowed)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
            raise ConfigError(f"strategy {strategy!r} takes no option(s) {', '.join(unknown)}; {takes}")

    def error(self, key: str, wanted: str, example: str) -> ConfigError:
        got = self.options.get(key)
        return ConfigError(
            f"strategy {self.strategy!r}: strategy_options.{key} must be {wanted}, "
            f"e.g. {key} = {example}; got {got!r}"
        )

    def number(
        self,
        key: str,
        default: float,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        """A finite number in [low, high] (an end is open when ``*_open``); ``default`` when absent."""
        if key not in self.options:
            return default
        value = self.options[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (
                value < high if high_open else value <= high
            )
        if not ok:
            raise self.error(key, _range(low, high, low_open, high_open), repr(default))
        return float(value)

    def integers(self, key: str, example: str) -> frozenset[int]:
        """A non-empty list of distinct integers >= 0; empty when absent."""
        if key not in self.options:
            return frozenset()
        value = self.options[key]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
            or len(set(value)) != len(value)
        ):
            raise self.error(key, "a non-empty list of distinct integers >= 0", example)
        return frozenset(value)

    def strings(self, key: str, example: str) -> frozenset[str]:
        """A non-empty list of distinct, non-empty strings; empty when absent."""
        if key not in self.options:
            return frozenset()
        value = self.options[key]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
            or len(set(value)) != len(value)
        ):
            raise self.error(key, "a non-empty list of distinct, non-empty strings", example)
        return frozenset(value)

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        choices = list(choices)
        value = self.options.get(key, default)
        if value not in choices:
            raise self.error(key, "one of " + ", ".join(repr(c) for c in choices), repr(default))
        return str(value)

    def text(self, key: str, default: str, example: str) -> str:
        value = self.options.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(key, "a non-empty string", example)
        return value

    def table(self, key: str, example: str) -> Mapping[str, Any]:
        value = self.options.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, "a table", example)
        return value


def _range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(high):
        return f"a number {'>' if low_open else '>='} {low:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
