"""The two simplest strategies: the model's own confidence, and a declared one.

Both ask list price (``price_per_example * batch``) and quote the measured latency (the EWMA of
forward passes plus the configured ``extra_latency_ms``).
"""

from __future__ import annotations

from typing import Any

from atomic_p2p.peer.strategies.base import CountingStrategy, model_confidence
from atomic_p2p.peer.strategies.bidding import ModelView, Task


class ConfidenceStrategy(CountingStrategy):
    """``confidence``: mean max-softmax on the task's preview, else the held-out accuracy; for a
    model that cannot estimate it (a kind without a confidence, no accuracy measured), no claim."""

    name = "confidence"

    def confidence(self, task: Task, model: ModelView) -> float | None:
        return model_confidence(task, model)


class FixedStrategy(CountingStrategy):
    """``fixed``: the same declared confidence for every task, whatever the input."""

    name = "fixed"
    reads_previews = False

    def __init__(self, confidence: float) -> None:
        super().__init__()
        self.declared = confidence

    def confidence(self, task: Task, model: ModelView) -> float:
        return self.declared

    def parameters(self) -> dict[str, Any]:
        return {"confidence": self.declared}
