"""``resource-aware``: price and promised latency rise with the node's load; decline past a threshold.

How this works
--------------
Utilization ``u`` is the share of the executor's admission slots in use,
``(in_flight + queued) / (capacity + queue_limit)``. The strategy takes its base strategy's terms
(``base = "confidence"`` by default) and

- declines with OVERLOADED when ``u >= decline_above``, before the node is saturated, so work
  goes elsewhere while there is still room for the orders it already bid on;
- multiplies the price by ``1 + alpha * u ** power``: flat when idle, steep near full (scarce
  capacity costs more, and the requester's cost weight steers work to idle peers);
- multiplies the promised latency by ``1 + ahead / capacity``, where
  ``ahead = max(0, in_flight + queued + 1 - capacity)`` calls must finish before this one gets a
  worker: with every worker busy, each ``capacity`` calls ahead cost one more service time.

The confidence is the base strategy's: load changes when, not how well, the model answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atomic_p2p.peer.strategies.base import WrappingStrategy
from atomic_p2p.peer.strategies.bidding import BidTerms, Load, ModelView, NoBid, NoBidReason, Strategy, Task
from atomic_p2p.peer.strategies.options import BASE_OPTIONS, Options


@dataclass(frozen=True, slots=True)
class ResourceSettings:
    alpha: float = 1.0
    power: float = 2.0
    decline_above: float = 0.9

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> ResourceSettings:
        read = Options("resource-aware", options, {"alpha", "power", "decline_above", *BASE_OPTIONS})
        return cls(
            alpha=read.number("alpha", 1.0, low=0.0),
            power=read.number("power", 2.0, low=0.0, low_open=True),
            decline_above=read.number("decline_above", 0.9, low=0.0, high=1.0, low_open=True),
        )

    def price_factor(self, load: Load) -> float:
        return 1.0 + self.alpha * load.utilization**self.power


def latency_factor(load: Load) -> float:
    """How many service times a new call takes, counting the wait for a worker."""
    capacity = max(1, load.capacity)
    ahead = max(0, load.in_flight + load.queued + 1 - capacity)
    return 1.0 + ahead / capacity


class ResourceAwareStrategy(WrappingStrategy):
    name = "resource-aware"

    def __init__(self, settings: ResourceSettings, base: Strategy) -> None:
        super().__init__(base)
        self.settings = settings
        # Written by bid only: the load and price factor of the last quote.
        self._last_utilization = 0.0
        self._last_factor = 1.0

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
        utilization = load.utilization
        if utilization >= self.settings.decline_above:
            return NoBid(
                NoBidReason.OVERLOADED,
                f"{load.in_flight} running and {load.queued} queued: utilization {utilization:.0%} "
                f"is at or above decline_above {self.settings.decline_above:g}",
            )
        terms = self.base.bid(task, model, load)
        if isinstance(terms, NoBid):
            return terms
        factor = self.settings.price_factor(load)
        self._last_utilization, self._last_factor = utilization, factor
        return dataclasses.replace(
            terms,
            cost=terms.cost * factor,
            expected_latency_ms=terms.expected_latency_ms * latency_factor(load),
            strategy=self.name,
        )

    @property
    def price_multiplier(self) -> float:
        return self._last_factor * self.base_price_multiplier

    @property
    def confidence_offset(self) -> float:
        return self.base_confidence_offset

    def parameters(self) -> dict[str, Any]:
        return {
            "alpha": self.settings.alpha,
            "power": self.settings.power,
            "decline_above": self.settings.decline_above,
            "last_utilization": self._last_utilization,
            "last_price_factor": self._last_factor,
        }
