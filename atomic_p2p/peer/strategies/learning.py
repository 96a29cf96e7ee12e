"""``learning``: a price multiplier learned from wins and losses, a confidence offset from outcomes.

How this works
--------------
The strategy takes its base strategy's terms (``base = "confidence"`` by default), multiplies
the price by ``m`` and adds ``delta`` to the confidence (clamped to [0, 1]). Both are learned
from the notices about its own bids, deterministically (the same notices give the same state):

- Price, a target-win-rate controller on ``log m`` (multiplicative weights). A win raises it by
  ``price_step * (1 - target_win_rate)``; a loss lowers it by
  ``price_step * target_win_rate * (1 + gap)``, where ``gap`` in [0, 1] is how much dearer the
  bid was than the winner's price, ``log(bid_cost / clearing_price)``, when both are known. The
  price settles where about ``target_win_rate`` of the bids win; ``m`` stays within
  [``min_multiplier``, ``max_multiplier``]. (The requester's ``score_to_win`` is not used: without
  the peer's own score, which the requester does not send, it is not a margin.)
- Confidence, least-mean-squares calibration: an outcome ``y`` for a bid that claimed ``c``
  moves ``delta`` by ``offset_rate * (y - c)``, so ``delta`` tracks the mean of
  ``y - base confidence`` (an EWMA with weight ``offset_rate``); ``|delta| <= max_offset``. The
  claim is the one the node remembers for that bid (``Notice.bid_confidence``); when it does not
  say, the EWMA of this strategy's recent claims stands in (calibration in the large).

Requester-supplied numbers are not trusted: a non-finite or non-positive clearing price is
ignored, an outcome is clamped to [0, 1], and no notice can push a parameter out of its bounds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.strategies.base import WrappingStrategy, clamp
from atomic_p2p.peer.strategies.bidding import (
    BidTerms,
    FeedbackKind,
    Load,
    ModelView,
    NoBid,
    Notice,
    Strategy,
    Task,
)
from atomic_p2p.peer.strategies.options import BASE_OPTIONS, Options

# Weight of the newest claim in the EWMA of claims (used when a notice lacks the bid's claim).
CLAIM_SMOOTHING = 0.1


@dataclass(frozen=True, slots=True)
class LearningSettings:
    price_step: float = 0.05
    target_win_rate: float = 0.5
    min_multiplier: float = 0.5
    max_multiplier: float = 2.0
    multiplier: float = 1.0  # where the price starts
    offset_rate: float = 0.1
    max_offset: float = 0.3

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> LearningSettings:
        read = Options("learning", options, {*(f.name for f in dataclasses.fields(cls)), *BASE_OPTIONS})
        settings = cls(
            price_step=read.number("price_step", 0.05, low=0.0, high=1.0, low_open=True),
            target_win_rate=read.number(
                "target_win_rate", 0.5, low=0.0, high=1.0, low_open=True, high_open=True
            ),
            min_multiplier=read.number("min_multiplier", 0.5, low=0.0, low_open=True),
            max_multiplier=read.number("max_multiplier", 2.0, low=0.0, low_open=True),
            multiplier=read.number("multiplier", 1.0, low=0.0, low_open=True),
            offset_rate=read.number("offset_rate", 0.1, low=0.0, high=1.0, low_open=True),
            max_offset=read.number("max_offset", 0.3, low=0.0, high=1.0),
        )
        if not settings.min_multiplier <= settings.multiplier <= settings.max_multiplier:
            raise ConfigError(
                "strategy 'learning': strategy_options must satisfy "
                "min_multiplier <= multiplier <= max_multiplier, e.g. 0.5 <= 1.0 <= 2.0; got "
                f"{settings.min_multiplier:g}, {settings.multiplier:g}, {settings.max_multiplier:g}"
            )
        return settings


class LearningStrategy(WrappingStrategy):
    name = "learning"

    def __init__(self, settings: LearningSettings, base: Strategy) -> None:
        super().__init__(base)
        self.settings = settings
        # Written by learn only.
        self._log_multiplier = math.log(settings.multiplier)
        self._offset = 0.0
        # Written by bid only.
        self._mean_claim: float | None = None

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
        terms = self.base.bid(task, model, load)
        if isinstance(terms, NoBid):
            return terms
        confidence = clamp(terms.confidence + self._offset, 0.0, 1.0)
        mean = self._mean_claim
        self._mean_claim = confidence if mean is None else mean + CLAIM_SMOOTHING * (confidence - mean)
        return dataclasses.replace(
            terms, confidence=confidence, cost=terms.cost * self.multiplier, strategy=self.name
        )

    def adapt(self, notice: Notice) -> None:
        settings = self.settings
        if notice.kind is FeedbackKind.WIN:
            self._move_price(settings.price_step * (1.0 - settings.target_win_rate))
        elif notice.kind is FeedbackKind.LOSS:
            self._move_price(-settings.price_step * settings.target_win_rate * (1.0 + _price_gap(notice)))
        else:
            self._calibrate(notice)

    def _move_price(self, step: float) -> None:
        low, high = math.log(self.settings.min_multiplier), math.log(self.settings.max_multiplier)
        self._log_multiplier = clamp(self._log_multiplier + step, low, high)

    def _calibrate(self, notice: Notice) -> None:
        claim = notice.bid_confidence
        if claim is None or not math.isfinite(claim):
            claim = self._mean_claim
        if claim is None or not math.isfinite(notice.outcome_score):
            return  # nothing to compare the outcome with
        error = clamp(notice.outcome_score, 0.0, 1.0) - clamp(claim, 0.0, 1.0)
        bound = self.settings.max_offset
        self._offset = clamp(self._offset + self.settings.offset_rate * error, -bound, bound)

    @property
    def multiplier(self) -> float:
        """The learned price multiplier (this strategy's own, without its base's)."""
        # Clamped again: exp(log(x)) may land an ulp outside the bounds.
        return clamp(
            math.exp(self._log_multiplier), self.settings.min_multiplier, self.settings.max_multiplier
        )

    @property
    def offset(self) -> float:
        """The learned confidence offset (this strategy's own, without its base's)."""
        return self._offset

    @property
    def price_multiplier(self) -> float:
        return self.multiplier * self.base_price_multiplier

    @property
    def confidence_offset(self) -> float:
        return self._offset + self.base_confidence_offset

    def parameters(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.settings),
            "learned_multiplier": self.multiplier,
            "learned_offset": self._offset,
            "mean_claim": self._mean_claim,
        }


def _price_gap(notice: Notice) -> float:
    """How much dearer the lost bid was than the winner, in [0, 1]; 0 when unknown."""
    cost, price = notice.bid_cost, notice.clearing_price
    if cost is None or not (math.isfinite(cost) and math.isfinite(price)) or cost <= 0 or price <= 0:
        return 0.0
    ratio = cost / price  # may overflow to inf or underflow to 0
    return min(1.0, math.log(ratio)) if ratio > 1.0 else 0.0
