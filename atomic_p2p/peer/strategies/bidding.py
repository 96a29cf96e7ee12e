"""The values bidding works on: tasks, load, terms, refusals, feedback, and what a strategy is.

Everything here is a frozen value or a protocol; nothing does I/O, and torch is only named in
annotations (a preview is a tuple of tensors), so this module loads without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from atomic_p2p.contract import TaskKind
from atomic_p2p.frozen import quick_init
from atomic_p2p.protocol.messages import FeedbackKind, NoBidReason, TensorSpec

if TYPE_CHECKING:
    import torch


# The wire's enums and tensor spec are the strategies' own: one type per concept.
InputSpec = TensorSpec  # dtype and full shape (batch first) of one input a task will carry


@quick_init
@dataclass(frozen=True, slots=True)
class Task:
    """One microtask offered for bidding (wire: ``TaskSpec``), already parsed and validated."""

    task_id: str
    capability: str
    inputs: tuple[InputSpec, ...]
    model_id: str = ""  # empty: any model with the capability
    # Decoded preview tensors, so a strategy can look at the data before it bids.
    preview: tuple[torch.Tensor, ...] = ()
    max_cost: float = 0.0  # 0: no cap
    input_tokens: int = 0
    language: str = ""
    # A text task: how many texts (one per example) and, when previewed, the texts themselves.
    text_count: int = 0
    texts: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        if self.text_count:
            return self.text_count
        if not self.inputs or not self.inputs[0].shape:
            return 0
        return self.inputs[0].shape[0]


@dataclass(frozen=True, slots=True)
class Load:
    """A snapshot of the node's executor."""

    in_flight: int
    queued: int
    capacity: int
    queue_limit: int
    draining: bool = False

    @property
    def saturated(self) -> bool:
        """True when one more order would be refused."""
        return self.in_flight + self.queued >= self.capacity + self.queue_limit

    @property
    def utilization(self) -> float:
        return (self.in_flight + self.queued) / max(1, self.capacity + self.queue_limit)


@quick_init
@dataclass(frozen=True, slots=True)
class BidTerms:
    model_id: str
    confidence: float
    expected_latency_ms: float
    cost: float
    strategy: str
    confidence_unknown: bool = False  # the model cannot estimate it; ``confidence`` is no claim


@quick_init
@dataclass(frozen=True, slots=True)
class NoBid:
    reason: NoBidReason
    detail: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A verified feedback notice, bound to a bid this node issued.

    The requester's fields (``clearing_price``, ``score_to_win``, ``outcome_score``) are as
    received: a strategy must not trust them to be finite. The node adds what it remembers of
    its own bid (``bid_cost``, ``bid_confidence``; None when it does not say) and when the
    notice arrived (``at_ms``, ms since the epoch; 0 when unknown), which stamps history points.
    """

    kind: FeedbackKind
    model_id: str
    request_id: bytes
    task_id: str
    clearing_price: float = 0.0
    score_to_win: float = 0.0
    outcome_score: float = 0.0
    bid_cost: float | None = None
    bid_confidence: float | None = None
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """A strategy's state after one notice: what ``atomic profile`` plots over time."""

    at_ms: int
    # The price it asks relative to ``price_per_example * batch`` (1.0: list price).
    price_multiplier: float
    # What it adds to the model's own confidence (0.0: none).
    confidence_offset: float
    wins: int
    losses: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "price_multiplier": self.price_multiplier,
            "confidence_offset": self.confidence_offset,
            "wins": self.wins,
            "losses": self.losses,
        }


class ModelView(Protocol):
    """What a strategy may know about a hosted model."""

    @property
    def model_id(self) -> str: ...
    @property
    def capabilities(self) -> tuple[str, ...]: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def max_input_tokens(self) -> int: ...
    @property
    def supported_languages(self) -> tuple[str, ...]: ...
    @property
    def price_per_example(self) -> float: ...
    @property
    def validation_accuracy(self) -> float: ...
    @property
    def accuracy_known(self) -> bool:
        """False when the factory measured no held-out accuracy (``validation_accuracy`` is 0)."""
        ...

    @property
    def kind(self) -> TaskKind:
        """What the model does; only a classifier has a confidence of its own."""
        ...

    @property
    def class_accuracy(self) -> Sequence[float]:
        """Held-out accuracy per class (empty when not measured)."""
        ...

    @property
    def expected_latency_ms(self) -> float: ...

    def inputs_problem(self, specs: Sequence[InputSpec]) -> str | None:
        """Why tensors of these names, dtypes and full shapes cannot be the model's inputs (a
        missing, extra or misnamed input, a dtype, a dimension outside its bounds); None if they can."""
        ...

    def preview_confidence(self, preview: Sequence[torch.Tensor]) -> float:
        """Mean max-softmax of the model on the preview rows."""
        ...


@runtime_checkable
class ClassPredictor(Protocol):
    """A classifier that can say which class it predicts for each preview row (optional)."""

    def preview_classes(self, preview: Sequence[torch.Tensor]) -> Sequence[int]: ...


@runtime_checkable
class TextReader(Protocol):
    """A model that may take text (optional): it counts tokens with its own tokenizer."""

    def count_tokens(self, texts: Sequence[str]) -> int | None:
        """The most tokens in any one of ``texts``; None when the model takes no text."""
        ...

    def text_confidence(self, texts: Sequence[str]) -> float:
        """Mean max-softmax of the model on the texts, tokenised by its own tokenizer."""
        ...


M = TypeVar("M", bound=ModelView)


class Strategy(Protocol):
    """Decides one model's bids. ``bid`` may run in a worker thread (when it scores previews)
    while ``learn`` runs on the event loop: keep state they share consistent under that.

    ``snapshot`` returns the strategy's parameters and counters as plain JSON values;
    ``history`` is a bounded, oldest-first list of its state after each notice.
    """

    name: str

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid: ...

    def learn(self, notice: Notice) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    @property
    def history(self) -> Sequence[HistoryPoint]: ...
