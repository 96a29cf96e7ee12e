"""How a peer decides whether, and what, to bid for one microtask.

How this works
--------------
Bidding has two stages, both pure (values in, values out; no sockets, no clock):

1. :func:`decide` screens every hosted model against the task's hard requirements: capability,
   requested model id, input spec (dtype, feature shape, batch <= max_batch), token and language
   constraints, and the node's load. These checks are the same for every strategy, so a strategy
   cannot bid for work its model cannot do.
2. Each model that passes asks its :class:`Strategy` for :class:`BidTerms` (confidence, expected
   latency, cost) or a :class:`NoBid`. The node answers with the best offer among its models: the
   highest confidence, then the lowest cost. A cost above the task's ``max_cost`` is dropped.

A strategy is any object with ``name``, ``bid(task, model, load)`` and ``learn(notice)``. It
sees the model through :class:`ModelView` (price, measured accuracy and latency, and a way to
score preview inputs), the node's :class:`Load`, and the requester's :class:`Notice` feedback
(win, loss, outcome). Register new ones with :func:`register_strategy`; a config names them by
``strategy = "..."`` and passes ``[models.strategy_options]`` to the factory.

Built in (DESIGN section 6):

- ``confidence``: the model's own mean max-softmax on the task's preview tensors when the task
  carries any, otherwise its measured held-out accuracy.
- ``fixed``: a declared confidence (``strategy_options.confidence``), whatever the input.

Both price at ``price_per_example * batch`` and quote latency as the measured EWMA plus the
configured ``extra_latency_ms`` (both come from the model view).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

import torch

from atomic_p2p.errors import ConfigError


class NoBidReason(Enum):
    """Why a peer declines a task (mirrors the wire enum ``NoBidReason``)."""

    UNSPECIFIED = "unspecified"
    UNKNOWN_CAPABILITY = "unknown_capability"
    UNKNOWN_MODEL = "unknown_model"
    OVERLOADED = "overloaded"
    CONSTRAINT_VIOLATED = "constraint_violated"
    BAD_INPUT_SPEC = "bad_input_spec"
    DEADLINE_TOO_SHORT = "deadline_too_short"
    BELOW_COST = "below_cost"
    DRAINING = "draining"


class FeedbackKind(Enum):
    WIN = "win"
    LOSS = "loss"
    OUTCOME = "outcome"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """dtype and full shape (batch first) of one input a task will carry."""

    name: str
    dtype: str
    shape: tuple[int, ...]


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

    @property
    def batch_size(self) -> int:
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


@dataclass(frozen=True, slots=True)
class BidTerms:
    model_id: str
    confidence: float
    expected_latency_ms: float
    cost: float
    strategy: str


@dataclass(frozen=True, slots=True)
class NoBid:
    reason: NoBidReason
    detail: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A verified feedback notice, bound to a bid this node issued."""

    kind: FeedbackKind
    model_id: str
    request_id: bytes
    task_id: str
    clearing_price: float = 0.0
    score_to_win: float = 0.0
    outcome_score: float = 0.0


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
    def expected_latency_ms(self) -> float: ...

    def spec_problem(self, name: str, dtype: str, shape: tuple[int, ...]) -> str | None:
        """Why a tensor of this name, dtype and full shape cannot be an input; None if it can."""
        ...

    def preview_confidence(self, preview: Sequence[torch.Tensor]) -> float:
        """Mean max-softmax of the model on the preview rows."""
        ...


M = TypeVar("M", bound=ModelView)


class Strategy(Protocol):
    """Decides one model's bids. ``bid`` may run in a worker thread (when it scores previews)
    while ``learn`` runs on the event loop: keep state they share consistent under that."""

    name: str

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid: ...

    def learn(self, notice: Notice) -> None: ...


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
            self.revenue += notice.clearing_price
        elif notice.kind is FeedbackKind.LOSS:
            self.losses += 1
        else:
            self.outcomes += 1
            self.outcome_total += notice.outcome_score


class CountingStrategy(ABC):
    """Base for strategies: standard pricing and latency, feedback kept in :attr:`record`.

    Subclasses implement :meth:`confidence`; richer ones may override :meth:`bid` and
    :meth:`learn` (call ``super().learn`` to keep the counters).
    """

    name = "base"

    def __init__(self) -> None:
        self.record = Record()

    @abstractmethod
    def confidence(self, task: Task, model: ModelView) -> float:
        """The confidence to declare for this task, in [0, 1]."""

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
        confidence = self.confidence(task, model)
        return BidTerms(
            model_id=model.model_id,
            confidence=min(1.0, max(0.0, confidence)),
            expected_latency_ms=model.expected_latency_ms,
            cost=model.price_per_example * task.batch_size,
            strategy=self.name,
        )

    def learn(self, notice: Notice) -> None:
        self.record.add(notice)


class ConfidenceStrategy(CountingStrategy):
    name = "confidence"

    def confidence(self, task: Task, model: ModelView) -> float:
        if task.preview:
            return model.preview_confidence(task.preview)
        return model.validation_accuracy


class FixedStrategy(CountingStrategy):
    name = "fixed"

    def __init__(self, confidence: float) -> None:
        super().__init__()
        self.declared = confidence

    def confidence(self, task: Task, model: ModelView) -> float:
        return self.declared


def _confidence_strategy(options: Mapping[str, Any]) -> Strategy:
    _no_options("confidence", options, set())
    return ConfidenceStrategy()


def _fixed_strategy(options: Mapping[str, Any]) -> Strategy:
    _no_options("fixed", options, {"confidence"})
    value = options.get("confidence")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(
            "strategy 'fixed' needs strategy_options.confidence, a number in [0, 1] "
            f"(the confidence it declares), got {value!r}"
        )
    return FixedStrategy(float(value))


def _no_options(name: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"strategy {name!r} takes no option(s) {', '.join(unknown)}")


STRATEGIES: dict[str, Callable[[Mapping[str, Any]], Strategy]] = {
    "confidence": _confidence_strategy,
    "fixed": _fixed_strategy,
}


def register_strategy(name: str, factory: Callable[[Mapping[str, Any]], Strategy]) -> None:
    """Make ``strategy = "<name>"`` usable in configs. The factory validates its options."""
    STRATEGIES[name] = factory


def make_strategy(name: str, options: Mapping[str, Any]) -> Strategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"strategy {name!r} is unknown; use one of {sorted(STRATEGIES)}") from None
    return factory(options)


# --- stage 1: the checks every strategy shares --------------------------------------------------


def screen(task: Task, model: ModelView) -> NoBid | None:
    """The hard requirements a model must meet before its strategy is asked."""
    if len(task.inputs) != 1:
        return NoBid(
            NoBidReason.BAD_INPUT_SPEC, f"{model.model_id} takes exactly one input, got {len(task.inputs)}"
        )
    spec = task.inputs[0]
    problem = model.spec_problem(spec.name, spec.dtype, spec.shape)
    if problem is not None:
        return NoBid(NoBidReason.BAD_INPUT_SPEC, problem)
    if task.batch_size > model.max_batch:
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED, f"batch {task.batch_size} exceeds max_batch {model.max_batch}"
        )
    if model.max_input_tokens and task.input_tokens > model.max_input_tokens:
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED,
            f"{task.input_tokens} input tokens exceed max_input_tokens {model.max_input_tokens}",
        )
    if task.language and model.supported_languages and task.language not in model.supported_languages:
        return NoBid(NoBidReason.CONSTRAINT_VIOLATED, f"language {task.language!r} is not supported")
    return _screen_preview(task, model)


def _screen_preview(task: Task, model: ModelView) -> NoBid | None:
    rows = 0
    for tensor in task.preview:
        dtype = str(tensor.dtype).removeprefix("torch.")
        problem = model.spec_problem(task.inputs[0].name, dtype, tuple(tensor.shape))
        if problem is not None:
            return NoBid(NoBidReason.BAD_INPUT_SPEC, f"preview: {problem}")
        rows += tensor.shape[0]
    if rows > model.max_batch:
        # Scoring a preview costs a forward pass; it may not be larger than a paid batch.
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED, f"preview of {rows} rows exceeds max_batch {model.max_batch}"
        )
    return None


# --- stage 2: ask the strategies, keep the best offer ------------------------------------------


def decide(task: Task, candidates: Sequence[tuple[M, Strategy]], load: Load) -> tuple[M, BidTerms] | NoBid:
    """The node's answer to one task: the best (model, terms), or why it declines."""
    if load.draining:
        return NoBid(NoBidReason.DRAINING, "the node is shutting down")
    matching = [(m, s) for m, s in candidates if task.capability in m.capabilities]
    if task.model_id:
        if not any(m.model_id == task.model_id for m, _ in candidates):
            return NoBid(NoBidReason.UNKNOWN_MODEL, f"no model {task.model_id!r} here")
        matching = [(m, s) for m, s in matching if m.model_id == task.model_id]
    if not matching:
        return NoBid(NoBidReason.UNKNOWN_CAPABILITY, f"no model here offers {task.capability!r}")
    if load.saturated:
        return NoBid(NoBidReason.OVERLOADED, f"{load.in_flight} running and {load.queued} queued")
    offers: list[tuple[M, BidTerms]] = []
    declines: list[NoBid] = []
    for model, strategy in matching:
        answer = screen(task, model) or _ask(strategy, task, model, load)
        if isinstance(answer, NoBid):
            declines.append(answer)
        else:
            offers.append((model, answer))
    if not offers:
        return declines[0]
    return max(offers, key=lambda offer: (offer[1].confidence, -offer[1].cost))


def _ask(strategy: Strategy, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
    terms = strategy.bid(task, model, load)
    if isinstance(terms, NoBid):
        return terms
    if not all(math.isfinite(x) for x in (terms.confidence, terms.expected_latency_ms, terms.cost)):
        # A strategy bug must not put NaN into a signed bid.
        return NoBid(NoBidReason.UNSPECIFIED, f"strategy {strategy.name!r} produced non-finite terms")
    if task.max_cost and terms.cost > task.max_cost:
        return NoBid(NoBidReason.BELOW_COST, f"cost {terms.cost:g} exceeds max_cost {task.max_cost:g}")
    return terms
