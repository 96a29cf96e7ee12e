"""``specialization``: bid with confidence inside a declared domain, decline or discount outside it.

How this works
--------------
A domain is declared in ``strategy_options`` as class labels (``classes = [0, 1, 2, 3, 4]``),
as capability buckets (``capabilities = ["classify/digits/0-4"]``), or both. A task is inside
the domain when

1. its capability is one of the declared buckets (the requester vouches for the data), or
2. classes are declared, the task carries a preview, the model can say which class it predicts
   for each preview row (:class:`~atomic_p2p.peer.strategies.bidding.ClassPredictor`), and at
   least ``min_share`` of the rows are predicted inside the declared classes.

Anything else is outside, including a general task with no preview: the strategy only claims
what it can show. Inside, it bids at list price with the expected accuracy of the model on this
input: the mean held-out accuracy of the predicted classes (``class_accuracy``), else the mean
over the declared classes, else the model's own confidence. Outside, ``outside = "decline"``
(the default) answers CONSTRAINT_VIOLATED; ``outside = "discount"`` bids what the model measured
there (the predicted classes' accuracy, else the accuracy on classes outside the domain, else
the overall held-out accuracy) times ``outside_confidence_scale``, at list price times
``outside_price_scale``.

Predicted classes are only as honest as the model: a specialist that never learned classes 5-9
predicts some class in 0-4 for a 7, so rule 2 cannot catch it. Per-class accuracy measured as
precision (accuracy among rows predicted as the class) makes the expected accuracy honest even
then; declared capability buckets are the robust signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from atomic_p2p.errors import ConfigError, shown
from atomic_p2p.peer.strategies.base import BaseStrategy, clamp, list_price, own_confidence
from atomic_p2p.peer.strategies.bidding import (
    BidTerms,
    ClassPredictor,
    Load,
    ModelView,
    NoBid,
    NoBidReason,
    Task,
)
from atomic_p2p.peer.strategies.options import Options


class Outside(Enum):
    DECLINE = "decline"
    DISCOUNT = "discount"


@dataclass(frozen=True, slots=True)
class SpecializationSettings:
    classes: frozenset[int] = frozenset()
    capabilities: frozenset[str] = frozenset()
    min_share: float = 1.0
    outside: Outside = Outside.DECLINE
    outside_confidence_scale: float = 1.0
    outside_price_scale: float = 0.5

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> SpecializationSettings:
        read = Options(
            "specialization",
            options,
            {
                "classes",
                "capabilities",
                "min_share",
                "outside",
                "outside_confidence_scale",
                "outside_price_scale",
            },
        )
        settings = cls(
            classes=read.integers("classes", "[0, 1, 2, 3, 4]"),
            capabilities=read.strings("capabilities", '["classify/digits/0-4"]'),
            min_share=read.number("min_share", 1.0, low=0.0, high=1.0, low_open=True),
            outside=Outside(read.choice("outside", "decline", [o.value for o in Outside])),
            outside_confidence_scale=read.number("outside_confidence_scale", 1.0, low=0.0, high=1.0),
            outside_price_scale=read.number("outside_price_scale", 0.5, low=0.0),
        )
        if not settings.classes and not settings.capabilities:
            raise ConfigError(
                "strategy 'specialization' needs its domain in strategy_options: classes = [0, 1, 2] "
                '(class labels), capabilities = ["classify/digits/0-4"] (capability buckets), or both'
            )
        return settings


@dataclass(frozen=True, slots=True)
class Verdict:
    inside: bool
    confidence: float
    why: str = ""


class SpecializationStrategy(BaseStrategy):
    name = "specialization"

    def __init__(self, settings: SpecializationSettings) -> None:
        super().__init__()
        self.settings = settings
        self._last_multiplier = 1.0  # written by bid only

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
        verdict = self.judge(task, model)
        if verdict.inside:
            confidence, multiplier = verdict.confidence, 1.0
        elif self.settings.outside is Outside.DECLINE:
            return NoBid(NoBidReason.CONSTRAINT_VIOLATED, f"outside {model.model_id}'s domain: {verdict.why}")
        else:
            confidence = verdict.confidence * self.settings.outside_confidence_scale
            multiplier = self.settings.outside_price_scale
        self._last_multiplier = multiplier
        return BidTerms(
            model_id=model.model_id,
            confidence=clamp(confidence, 0.0, 1.0),
            expected_latency_ms=model.expected_latency_ms,
            cost=list_price(task, model) * multiplier,
            strategy=self.name,
        )

    def judge(self, task: Task, model: ModelView) -> Verdict:
        """Is the task inside the domain, and the model's expected accuracy on it."""
        settings = self.settings
        if task.capability in settings.capabilities:
            wants_rows = bool(model.class_accuracy)
            predicted = _predicted_classes(task, model) if wants_rows else ()
            return Verdict(True, self._expected_accuracy(task, model, predicted))
        predicted = _predicted_classes(task, model) if settings.classes else ()
        if predicted:
            share = sum(c in settings.classes for c in predicted) / len(predicted)
            confidence = self._expected_accuracy(task, model, predicted)
            if share >= settings.min_share:
                return Verdict(True, confidence)
            return Verdict(
                False,
                confidence,
                f"{share:.0%} of the preview rows are predicted in classes {sorted(settings.classes)}, "
                f"below min_share {settings.min_share:g}",
            )
        evidence = "and the task has no preview it can classify" if settings.classes else ""
        return Verdict(
            False,
            self._outside_accuracy(model),
            f"capability {shown(task.capability)} is not one of {sorted(settings.capabilities)} {evidence}".strip(),
        )

    def _expected_accuracy(self, task: Task, model: ModelView, predicted: Sequence[int]) -> float:
        accuracy = model.class_accuracy
        rows = [accuracy[c] for c in predicted if 0 <= c < len(accuracy)]
        if rows:
            return sum(rows) / len(rows)
        domain = [accuracy[c] for c in self.settings.classes if c < len(accuracy)]
        if domain:
            return sum(domain) / len(domain)
        return own_confidence(task, model)

    def _outside_accuracy(self, model: ModelView) -> float:
        accuracy = model.class_accuracy
        outside = [a for c, a in enumerate(accuracy) if c not in self.settings.classes]
        if self.settings.classes and outside:
            return sum(outside) / len(outside)
        return model.validation_accuracy

    @property
    def price_multiplier(self) -> float:
        return self._last_multiplier

    def parameters(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "classes": sorted(settings.classes),
            "capabilities": sorted(settings.capabilities),
            "min_share": settings.min_share,
            "outside": settings.outside.value,
            "outside_confidence_scale": settings.outside_confidence_scale,
            "outside_price_scale": settings.outside_price_scale,
        }


def _predicted_classes(task: Task, model: ModelView) -> Sequence[int]:
    """The predicted class of every preview row; empty without a preview or a model that can say."""
    if not task.preview or not isinstance(model, ClassPredictor):
        return ()
    return model.preview_classes(task.preview)
