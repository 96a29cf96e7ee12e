"""Why one auction went the way it did: a frozen record that round-trips through JSON.

The evaluator builds one :class:`Rationale` per decision; the requester writes
``rationale.to_json()`` to the bid log, and ``atomic bids`` reads it back with
:meth:`Rationale.from_dict`. Every number in it is finite, so the JSON is strict (no NaN).
Bids are named by :class:`BidLabel` (peer id hex, model id, address), not by object, so a
rationale outlives the bids it describes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from atomic_p2p.errors import ConfigError

RATIONALE_VERSION = 1


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class BidLabel:
    """Which bid: the peer (id hex; "" when the bid carries none), its model, its address."""

    peer: str
    model_id: str
    address: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"peer": self.peer, "model_id": self.model_id, "address": self.address}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BidLabel:
        return cls(str(data["peer"]), str(data["model_id"]), str(data.get("address", "")))


@dataclass(frozen=True, slots=True)
class CandidateNote:
    """One eligible bid: its final rank and score and everything that went into the score.

    ``claimed`` is what the bid said (confidence, latency_ms, cost); ``expected`` what the
    evaluator believed after the profile (accuracy, latency_ms, calibrated_confidence, evidence);
    ``adjustments`` the terms added outside the weighted sum (exploration_bonus,
    utilization_penalty). ``score = sum(weights[k] * components[k]) + bonus - penalty``.
    """

    bid: BidLabel
    rank: int
    score: float
    components: Mapping[str, float]
    claimed: Mapping[str, float]
    expected: Mapping[str, float]
    adjustments: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bid": self.bid.to_dict(),
            "rank": self.rank,
            "score": self.score,
            "components": dict(self.components),
            "claimed": dict(self.claimed),
            "expected": dict(self.expected),
            "adjustments": dict(self.adjustments),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateNote:
        return cls(
            bid=BidLabel.from_dict(data["bid"]),
            rank=int(data["rank"]),
            score=float(data["score"]),
            components=_frozen(data["components"]),
            claimed=_frozen(data["claimed"]),
            expected=_frozen(data["expected"]),
            adjustments=_frozen(data["adjustments"]),
        )


@dataclass(frozen=True, slots=True)
class ExclusionNote:
    """A bid that never got a score: the rule it broke (an Exclusion value) and the details."""

    bid: BidLabel
    kind: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"bid": self.bid.to_dict(), "kind": self.kind, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExclusionNote:
        return cls(BidLabel.from_dict(data["bid"]), str(data["kind"]), str(data["reason"]))


@dataclass(frozen=True, slots=True)
class Rationale:
    """Components, weights, scores, winner, runner-ups and exclusions of one decision.

    ``settings`` holds the knobs in force (exploration mode, floor, penalty, pricing rule,
    time left, budget); ``price_note`` says how ``price`` was set; ``floor_note`` is non-empty
    when the anti-starvation floor promoted the winner over a higher score.
    """

    task_id: str
    capability: str
    at_ms: int
    weights: Mapping[str, float]
    settings: Mapping[str, Any]
    candidates: tuple[CandidateNote, ...]
    excluded: tuple[ExclusionNote, ...]
    winner: BidLabel | None
    runner_ups: tuple[BidLabel, ...]
    price: float | None
    price_note: str = ""
    floor_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RATIONALE_VERSION,
            "task_id": self.task_id,
            "capability": self.capability,
            "at_ms": self.at_ms,
            "weights": dict(self.weights),
            "settings": dict(self.settings),
            "candidates": [note.to_dict() for note in self.candidates],
            "excluded": [note.to_dict() for note in self.excluded],
            "winner": self.winner.to_dict() if self.winner else None,
            "runner_ups": [label.to_dict() for label in self.runner_ups],
            "price": self.price,
            "price_note": self.price_note,
            "floor_note": self.floor_note,
        }

    def to_json(self) -> str:
        """Strict, compact JSON (raises ValueError rather than write NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rationale:
        """Rebuild from :meth:`to_dict` output (or parsed JSON); malformed input raises ConfigError."""
        try:
            if data["v"] != RATIONALE_VERSION:
                raise ConfigError(f"rationale version {data['v']!r} is not {RATIONALE_VERSION}")
            winner = data["winner"]
            return cls(
                task_id=str(data["task_id"]),
                capability=str(data["capability"]),
                at_ms=int(data["at_ms"]),
                weights=_frozen(data["weights"]),
                settings=_frozen(data["settings"]),
                candidates=tuple(CandidateNote.from_dict(note) for note in data["candidates"]),
                excluded=tuple(ExclusionNote.from_dict(note) for note in data["excluded"]),
                winner=BidLabel.from_dict(winner) if winner is not None else None,
                runner_ups=tuple(BidLabel.from_dict(label) for label in data["runner_ups"]),
                price=None if data["price"] is None else float(data["price"]),
                price_note=str(data.get("price_note", "")),
                floor_note=str(data.get("floor_note", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"malformed rationale: {error!r}") from error

    @classmethod
    def from_json(cls, text: str) -> Rationale:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise ConfigError(f"rationale is not JSON: {error}") from error
