"""What an evaluation returns: ranked bids, excluded bids and the decision, generic over the bid type.

The evaluator works on any bid object with ``confidence``, ``expected_latency_ms`` and ``cost``
(:class:`Scorable`); results hold the caller's objects as they came (``item``), so the requester
gets its own :class:`~.types.BidInfo` values back, best first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from atomic_p2p.frozen import quick_init
from atomic_p2p.requester.rationale import BidLabel, CandidateNote, ExclusionNote, Rationale
from atomic_p2p.requester.weights import Weights
from atomic_p2p.terms import ModelConstraints, Resources


class Scorable(Protocol):
    """The fields of a bid the evaluator reads. The claims (``confidence``,
    ``expected_latency_ms``, ``cost``) are always read; ``capabilities``, ``constraints`` and
    ``resources`` only when the ask sets a capability, an input limit or a resource limit. It
    also reads, when present, ``peer_id``, ``model_id`` and ``address``, which key the profiles
    and label the rationale."""

    @property
    def confidence(self) -> float: ...

    @property
    def expected_latency_ms(self) -> float: ...

    @property
    def cost(self) -> float: ...

    @property
    def capabilities(self) -> tuple[str, ...]: ...

    @property
    def constraints(self) -> ModelConstraints: ...

    @property
    def resources(self) -> Resources: ...


T = TypeVar("T", bound=Scorable)


class Exclusion(Enum):
    """Why a bid got no score."""

    MALFORMED = "malformed"
    CAPABILITY = "capability"
    CONSTRAINTS = "constraints"
    RESOURCES = "resources"
    BUDGET = "budget"
    DEADLINE = "deadline"
    SELECTION = "selection"  # the caller ruled the model or the peer out (Ask.selection)


@quick_init
@dataclass(frozen=True, slots=True)
class Scored(Generic[T]):
    """One ranked bid: its total score, the components behind it, its 1-based rank.

    ``details`` holds the rest of the story: expected_accuracy, expected_latency_ms,
    calibrated_confidence, evidence, exploration_bonus, utilization_penalty.
    """

    item: T
    score: float
    components: Mapping[str, float]
    rank: int
    details: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Excluded(Generic[T]):
    """A bid that failed a hard constraint, which rule (``kind``) and the details."""

    item: T
    reason: str
    kind: Exclusion = Exclusion.MALFORMED


@dataclass(frozen=True, slots=True)
class Ranking(Generic[T]):
    """Eligible bids best first, the excluded ones, and the normalised weights used."""

    ranked: tuple[Scored[T], ...]
    excluded: tuple[Excluded[T], ...]
    weights: Weights


class Explainer:
    """A rationale not built yet: ``build()``'s arguments are frozen values, so building it
    later gives what building it at once would have."""

    __slots__ = ("_build",)

    def __init__(self, build: Callable[[], Rationale]) -> None:
        self._build = build

    def __call__(self) -> Rationale:
        return self._build()


@dataclass(frozen=True, slots=True)
class Decision(Ranking[T]):
    """A ranking plus its clearing: ``ranked[0]`` won, the rest are fallbacks in order.

    ``price`` is what the winner is paid (None when nothing was eligible). ``rationale`` is
    built on first read (most auctions are never explained: without a bid log nothing reads it);
    ``explanation`` holds it, or how to build it.
    """

    price: float | None = None
    explanation: Rationale | Explainer | None = None

    @property
    def rationale(self) -> Rationale | None:
        explanation = self.explanation
        if isinstance(explanation, Explainer):
            explanation = explanation()
            object.__setattr__(self, "explanation", explanation)  # built once: it never changes
        return explanation

    @property
    def winner(self) -> Scored[T] | None:
        return self.ranked[0] if self.ranked else None

    @property
    def runner_ups(self) -> tuple[Scored[T], ...]:
        return self.ranked[1:]

    def eligible_peers(self) -> tuple[str, ...]:
        """Peer keys of every ranked bid (for :meth:`WinShares.after`)."""
        return tuple(peer_key(scored.item) for scored in self.ranked)

    def winner_peer(self) -> str | None:
        return peer_key(self.ranked[0].item) if self.ranked else None


def peer_key(bid: object) -> str:
    """The key a bid's peer goes by in profiles, shares and load maps: its id as hex ("" if none)."""
    peer = getattr(bid, "peer_id", None)
    return "" if peer is None else str(peer)


def label(bid: object) -> BidLabel:
    return BidLabel(peer_key(bid), str(getattr(bid, "model_id", "")), str(getattr(bid, "address", "")))


_EXPECTED = ("expected_accuracy", "expected_latency_ms", "calibrated_confidence", "evidence")
_ADJUSTMENTS = ("exploration_bonus", "utilization_penalty")


def _note(scored: Scored[Any]) -> CandidateNote:
    bid = scored.item
    claimed = {
        "confidence": float(bid.confidence),
        "latency_ms": float(bid.expected_latency_ms),
        "cost": float(bid.cost),
    }
    return CandidateNote(
        bid=label(bid),
        rank=scored.rank,
        score=scored.score,
        components=scored.components,
        claimed=MappingProxyType(claimed),
        expected=MappingProxyType(
            {name: scored.details[name] for name in _EXPECTED if name in scored.details}
        ),
        adjustments=MappingProxyType(
            {name: scored.details[name] for name in _ADJUSTMENTS if name in scored.details}
        ),
    )


def explain(
    ranked: Sequence[Scored[Any]],
    excluded: Sequence[Excluded[Any]],
    weights: Weights,
    *,
    task_id: str,
    capability: str,
    at_ms: int,
    settings: Mapping[str, Any],
    price: float | None,
    price_note: str = "",
    floor_note: str = "",
) -> Rationale:
    """The :class:`Rationale` of a ranking: ``ranked[0]`` is the winner, the rest runner-ups."""
    candidates = tuple(_note(scored) for scored in ranked)
    return Rationale(
        task_id=task_id,
        capability=capability,
        at_ms=at_ms,
        weights=MappingProxyType(weights.as_dict()),
        settings=MappingProxyType(dict(settings)),
        candidates=candidates,
        excluded=tuple(ExclusionNote(label(ex.item), ex.kind.value, ex.reason) for ex in excluded),
        winner=candidates[0].bid if candidates else None,
        runner_ups=tuple(note.bid for note in candidates[1:]),
        price=price,
        price_note=price_note,
        floor_note=floor_note,
    )
