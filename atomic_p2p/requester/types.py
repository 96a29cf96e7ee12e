"""What a requester sees of one auction: bids, no-bids, attempts and the result.

Every type here is a frozen value. They hold domain types only (peer ids, envelopes, torch
tensors), never protobuf messages, so callers and the pure scoring code never touch the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from atomic_p2p.errors import AtomicError
from atomic_p2p.frozen import quick_init
from atomic_p2p.identity import Envelope, PeerId
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import ExecuteResult
from atomic_p2p.requester.ranking import Excluded, Scored
from atomic_p2p.requester.rationale import Rationale
from atomic_p2p.requester.weights import Weights
from atomic_p2p.terms import ModelConstraints, Resources


@quick_init
@dataclass(frozen=True, slots=True)
class BidInfo:
    """One verified bid: the terms a peer signed, and the envelope exactly as received."""

    peer_id: PeerId
    address: str
    task_id: str
    model_id: str
    confidence: float
    expected_latency_ms: float
    cost: float
    valid_until_ms: int
    strategy: str
    envelope: Envelope = field(repr=False)
    capabilities: tuple[str, ...] = ()
    constraints: ModelConstraints = field(default_factory=ModelConstraints, repr=False)
    resources: Resources = field(default_factory=Resources, repr=False)
    # The request id an ExecuteOrder for this bid names: the id the bid was made for, or, for a
    # bid reused from the cache, the fresh id of the request that reuses it.
    request_id: bytes = field(default=b"", repr=False)
    reusable_ttl_ms: int = field(default=0, repr=False)  # > 0: the peer lets the bid be reused
    record_seq: int = field(default=0, repr=False)  # the peer's gossip record seq when it bid
    reused: bool = False  # taken from the bid cache rather than from a call for bids
    bid_values: tuple[float, ...] = field(default=(), repr=False)  # gradient mode: b per example
    confidence_unknown: bool = False  # the model cannot estimate it: ``confidence`` is no claim

    @property
    def digest(self) -> bytes:
        """sha256 of the bid payload: how an ExecuteOrder and an ExecuteResult name this bid."""
        return self.envelope.digest


class NoBidKind(Enum):
    """Why a peer produced no usable bid."""

    DECLINED = "declined"  # the peer answered with a NoBid
    UNREACHABLE = "unreachable"  # the RPC failed or timed out
    INVALID = "invalid"  # a bid arrived but failed verification; it was dropped
    LATE = "late"  # still silent when k_min bids were in and the grace period had passed


@dataclass(frozen=True, slots=True)
class NoBidInfo:
    """What one peer said instead of a usable bid."""

    address: str
    kind: NoBidKind
    reason: str  # a NoBidReason name without its prefix ("unknown_capability"), or a status code name
    detail: str = ""
    peer_id: PeerId | None = None
    task_id: str = ""  # the task it concerns

    def __str__(self) -> str:
        who = self.address if self.peer_id is None else f"{self.address} ({self.peer_id.short})"
        detail = f": {self.detail}" if self.detail else ""
        return f"{who} {self.kind.value} [{self.reason}]{detail}"


# A ranked bid with its score breakdown, and a bid that failed a hard constraint.
ScoredBid = Scored[BidInfo]
ExcludedBid = Excluded[BidInfo]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One Execute call on one bid: it either produced the result or failed with ``error``."""

    bid: BidInfo
    elapsed_ms: float
    error: AtomicError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock milliseconds spent in each phase of one request."""

    bids_ms: float
    verify_ms: float
    execute_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True, eq=False)
class Result:
    """The outcome of :meth:`Requester.run`: outputs plus the whole story of the auction.

    ``bids`` is the ranking (best first); ``attempts`` lists every Execute call in order, so
    ``attempts[:-1]`` are the fallbacks that failed and ``attempts[-1]`` produced ``outputs``.
    """

    request_id: bytes
    task_id: str
    capability: str
    outputs: dict[str, torch.Tensor]
    winner: BidInfo
    price: float
    bids: tuple[ScoredBid, ...]
    weights: Weights  # normalised, as used to score ``bids``
    excluded: tuple[ExcludedBid, ...]
    no_bids: tuple[NoBidInfo, ...]
    attempts: tuple[Attempt, ...]
    timings: Timings
    receipt: Envelope = field(repr=False)
    task_ref: str = ""  # pass to Requester.report_outcome when the result's quality is known
    rationale: Rationale | None = field(default=None, repr=False)
    cached: bool = False  # the bids came from the bid cache: no call for bids was made

    @property
    def input_tokens(self) -> int:
        """The text inputs' tokens by the winner's own tokenizer, as its signed receipt says (0 for
        a tensor task); what an OpenAI client reads as ``usage.prompt_tokens``."""
        return receipt_input_tokens(self.receipt)

    @property
    def fallbacks(self) -> tuple[Attempt, ...]:
        """The attempts that failed before the one that succeeded."""
        return tuple(attempt for attempt in self.attempts if not attempt.ok)

    @property
    def winner_score(self) -> ScoredBid:
        return next(scored for scored in self.bids if scored.item is self.winner)


def receipt_input_tokens(receipt: Envelope) -> int:
    """``input_tokens`` of a verified, signed ExecuteResult (docs/protocol.md section 6)."""
    return int(codec.decode(ExecuteResult, receipt.payload).input_tokens)
