"""What every built-in strategy shares: counters, a bounded history, a snapshot, list pricing.

:class:`BaseStrategy` keeps the feedback counters (:class:`Record`) and, after every notice, a
:class:`~atomic_p2p.peer.strategies.bidding.HistoryPoint` in a ring of ``history_length``
entries. A subclass implements ``bid`` and may override :meth:`BaseStrategy.adapt` (change its
parameters on a notice) and :meth:`BaseStrategy.parameters` (what :meth:`snapshot` shows).
:class:`CountingStrategy` is the base for strategies that only choose a confidence;
:class:`WrappingStrategy` for those that adjust another strategy's terms (``base = "..."``).

Threads: ``bid`` may run in a worker thread while ``learn`` runs on the event loop. The
subclasses here keep every field single-writer (``bid`` writes what describes the last quote,
``learn`` writes the learned parameters), so no update can be lost to a race.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

from atomic_p2p.peer.strategies.bidding import (
    BidTerms,
    FeedbackKind,
    HistoryPoint,
    Load,
    ModelView,
    NoBid,
    Notice,
    Strategy,
    Task,
    TextReader,
)

HISTORY_LENGTH = 256


def clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def own_confidence(task: Task, model: ModelView) -> float:
    """The model's own view: mean max-softmax on the preview if the task has one, else held-out accuracy."""
    if task.preview:
        return model.preview_confidence(task.preview)
    if task.texts and isinstance(model, TextReader):
        return model.text_confidence(task.texts)
    return model.validation_accuracy


def model_confidence(task: Task, model: ModelView) -> float | None:
    """The model's own view if it has one (see :func:`own_confidence`); None when it cannot
    estimate it: a kind without a confidence (regression, embedding, generation), or a classifier
    with no preview and no measured held-out accuracy."""
    if not model.kind.has_confidence:
        return None
    if task.preview or task.texts or model.accuracy_known:
        return own_confidence(task, model)
    return None


def list_price(task: Task, model: ModelView) -> float:
    return model.price_per_example * task.batch_size


@dataclass(slots=True)
class Record:
    """What a strategy has heard about its own bids (mutable counters)."""

    wins: int = 0
    losses: int = 0
    outcomes: int = 0
    outcome_total: float = 0.0
    revenue: float = 0.0

    @property
    def mean_outcome(self) -> float | None:
        return self.outcome_total / self.outcomes if self.outcomes else None

    def add(self, notice: Notice) -> None:
        if notice.kind is FeedbackKind.WIN:
            self.wins += 1
            # The price is the requester's word: a NaN, negative or absurd one is not revenue.
            revenue = self.revenue + notice.clearing_price
            if notice.clearing_price > 0 and math.isfinite(revenue):
                self.revenue = revenue
        elif notice.kind is FeedbackKind.LOSS:
            self.losses += 1
        elif math.isfinite(notice.outcome_score):
            self.outcomes += 1
            self.outcome_total += clamp(notice.outcome_score, 0.0, 1.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wins": self.wins,
            "losses": self.losses,
            "outcomes": self.outcomes,
            "mean_outcome": self.mean_outcome,
            "revenue": self.revenue,
        }


class BaseStrategy(ABC):
    """Counters, history and snapshot for a strategy; subclasses implement :meth:`bid`."""

    name = "base"
    reads_previews = True
    """Whether :meth:`bid` may run the model on a task's preview (the node then runs the previews
    of one call for bids together, once, before asking)."""

    def __init__(self, history_length: int = HISTORY_LENGTH) -> None:
        self.record = Record()
        self.history: deque[HistoryPoint] = deque(maxlen=history_length)

    @abstractmethod
    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid: ...

    def learn(self, notice: Notice) -> None:
        self.record.add(notice)
        self.adapt(notice)
        self.history.append(
            HistoryPoint(
                at_ms=notice.at_ms,
                price_multiplier=self.price_multiplier,
                confidence_offset=self.confidence_offset,
                wins=self.record.wins,
                losses=self.record.losses,
            )
        )

    def adapt(self, notice: Notice) -> None:
        """Change parameters on a notice (the counters are already updated). Default: none."""
        return None

    @property
    def price_multiplier(self) -> float:
        """The asked price relative to list price (``price_per_example * batch``)."""
        return 1.0

    @property
    def confidence_offset(self) -> float:
        """What the strategy adds to the model's own confidence."""
        return 0.0

    def parameters(self) -> dict[str, Any]:
        """The strategy's settings and learned state, as plain JSON values."""
        return {}

    def snapshot(self) -> dict[str, Any]:
        return {
            "strategy": self.name,
            "price_multiplier": self.price_multiplier,
            "confidence_offset": self.confidence_offset,
            **self.record.as_dict(),
            "parameters": self.parameters(),
        }


class CountingStrategy(BaseStrategy):
    """A strategy that chooses only the confidence; it asks list price and quotes measured latency."""

    @abstractmethod
    def confidence(self, task: Task, model: ModelView) -> float | None:
        """The confidence to declare for this task, in [0, 1]; None: the model cannot estimate it."""

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
        claimed = self.confidence(task, model)
        return BidTerms(
            model_id=model.model_id,
            confidence=0.0 if claimed is None else clamp(claimed, 0.0, 1.0),
            expected_latency_ms=model.expected_latency_ms,
            cost=list_price(task, model),
            strategy=self.name,
            confidence_unknown=claimed is None,
        )


class WrappingStrategy(BaseStrategy):
    """A strategy that adjusts the terms of another (its ``base``), and passes every notice on."""

    def __init__(self, base: Strategy, history_length: int = HISTORY_LENGTH) -> None:
        super().__init__(history_length)
        self.base = base
        self.reads_previews = getattr(base, "reads_previews", True)

    def learn(self, notice: Notice) -> None:
        self.base.learn(notice)
        super().learn(notice)

    @property
    def base_price_multiplier(self) -> float:
        return self.base.price_multiplier if isinstance(self.base, BaseStrategy) else 1.0

    @property
    def base_confidence_offset(self) -> float:
        return self.base.confidence_offset if isinstance(self.base, BaseStrategy) else 0.0

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "base": self.base.snapshot()}
