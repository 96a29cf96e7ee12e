"""The market protocol's messages as frozen domain values: what RequestBids, Execute, Feedback and
BidGradient carry, with no protobuf in sight.

Each class mirrors one message of ``protos/atomic/v1/market.proto`` field for field (the wire
names are kept where a field is signed, so docs/protocol.md reads the same), and
:mod:`atomic_p2p.protocol.codec` maps it to and from bytes. Two kinds:

- **Signed payloads** (:class:`BidRequest`, :class:`Bid`, :class:`ExecuteOrder`,
  :class:`ExecuteResult`, :class:`FeedbackNotice`, :class:`BidGradientUpdate`) travel as the
  ``payload`` of an :class:`~atomic_p2p.identity.Envelope`; their bytes are what is signed, so a
  receiver verifies the bytes first and decodes them after (:func:`.codec.open_signed`).
  :class:`TaskSpec` travels as bytes inside a BidRequest; a bid names it by sha256 of those bytes.
- **RPC frames** (``*Call`` and ``*Reply``) are the requests and responses of the service
  ``atomic.v1.Peer``: envelopes, tensors and a few plain fields.

Zero and empty mean "not set" wherever proto3 cannot tell them apart (a ``deadline_ms`` of 0 is
no deadline, a ``model_id`` of "" any model). Floats declared ``float`` on the wire are float32:
a value read back is the float32 nearest to the one sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from atomic_p2p.frozen import quick_init
from atomic_p2p.identity import Envelope

if TYPE_CHECKING:  # named in annotations only, so this module loads without torch or gossip
    from atomic_p2p.tensors import WireTensor
    from atomic_p2p.terms import ModelConstraints, Resources


class NoBidReason(Enum):
    """Why a peer declines a task (wire enum ``NoBidReason``, without its prefix)."""

    UNSPECIFIED = "unspecified"
    UNKNOWN_CAPABILITY = "unknown_capability"
    UNKNOWN_MODEL = "unknown_model"
    OVERLOADED = "overloaded"
    CONSTRAINT_VIOLATED = "constraint_violated"
    BAD_INPUT_SPEC = "bad_input_spec"
    DEADLINE_TOO_SHORT = "deadline_too_short"
    BELOW_COST = "below_cost"
    DRAINING = "draining"
    MODEL_ERROR = "model_error"


class FeedbackKind(Enum):
    """What a FeedbackNotice tells a peer about one of its bids (wire enum ``FeedbackKind``)."""

    WIN = "win"
    LOSS = "loss"
    OUTCOME = "outcome"


@quick_init
@dataclass(frozen=True, slots=True)
class TensorSpec:
    """dtype and full shape (batch first) of one tensor, without its data (wire ``TensorSpec``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TextSpec:
    """How many texts a task carries (one per example) and their UTF-8 bytes in all (wire ``TextSpec``)."""

    count: int
    total_bytes: int

    @classmethod
    def of(cls, texts: tuple[bytes, ...]) -> TextSpec:
        return cls(len(texts), sum(len(text) for text in texts))


# --- signed payloads --------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One microtask offered for bidding; ``preview`` optionally carries the inputs themselves."""

    task_id: str
    capability: str
    model_id: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    preview: tuple[WireTensor, ...] = ()
    max_cost: float = 0.0  # 0: no cap
    input_tokens: int = 0
    language: str = ""
    text: TextSpec | None = None  # set when the task carries texts
    text_preview: tuple[bytes, ...] = ()  # the texts themselves (UTF-8), optionally

    @property
    def text_count(self) -> int:
        return self.text.count if self.text is not None else 0


@quick_init
@dataclass(frozen=True, slots=True)
class BidRequest:
    """A requester's signed call for bids; ``tasks`` are serialized :class:`TaskSpec` bytes, or,
    with detached tasks, ``tasks`` is empty and ``task_digests`` holds the sha256 of each, the
    TaskSpec bytes travelling beside the envelope (:class:`RequestBidsCall`)."""

    request_id: bytes
    requester_id: bytes
    issued_at_ms: int
    deadline_ms: int
    tasks: tuple[bytes, ...]
    gradient_mode: bool = False
    batch_signatures: bool = False  # the requester accepts bids signed in a batch (one Merkle root)
    task_digests: tuple[bytes, ...] = ()  # detached tasks: their digests, in order (docs/protocol.md 3.2)


@quick_init
@dataclass(frozen=True, slots=True)
class Bid:
    """A peer's signed offer for one task of one BidRequest."""

    request_id: bytes
    task_id: str
    task_digest: bytes
    peer_id: bytes
    model_id: str
    confidence_score: float
    expected_latency_ms: float
    resource_requirements: Resources
    cost_estimate: float
    capabilities: tuple[str, ...]
    constraints: ModelConstraints
    issued_at_ms: int
    valid_until_ms: int
    strategy: str
    bid_values: tuple[float, ...] = ()
    reusable_ttl_ms: int = 0
    record_seq: int = 0
    confidence_unknown: bool = False  # the model cannot estimate it: confidence_score is no claim


@quick_init
@dataclass(frozen=True, slots=True)
class NoBid:
    """A peer's answer for a task it does not bid on (not signed: declining proves nothing)."""

    task_id: str
    reason: NoBidReason | int  # an int: a value this release does not know (a newer peer's)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ExecuteOrder:
    """A requester's signed order to run the bid whose payload hashes to ``bid_digest``."""

    request_id: bytes
    task_id: str
    bid_digest: bytes
    issued_at_ms: int
    inputs_digest: bytes
    deadline_ms: int = 0
    buyer_bids: tuple[float, ...] = ()
    max_tokens: int = 0  # ExecuteStream of a generation model: at most this many tokens (0: none)
    prefix_tokens: tuple[int, ...] = ()  # a continuation: tokens other peers already produced
    prefix_text: bytes = b""  # a text continuation: UTF-8 text other peers already produced


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """A peer's signed receipt for the outputs it returned."""

    request_id: bytes
    task_id: str
    peer_id: bytes
    model_id: str
    bid_digest: bytes
    outputs_digest: bytes
    latency_ms: float
    finished_at_ms: int
    cost_charged: float
    input_tokens: int = 0  # the text inputs' tokens by the peer's tokenizer (a generation: its prompt's)


@dataclass(frozen=True, slots=True)
class FeedbackNotice:
    """A requester's signed word on a bid: won, lost, or how good the result was.

    ``kind`` is None when the sender left it unset (or sent a value this release does not know).
    """

    request_id: bytes
    task_id: str
    requester_id: bytes
    kind: FeedbackKind | None
    clearing_price: float = 0.0
    score_to_win: float = 0.0
    outcome_score: float = 0.0
    issued_at_ms: int = 0
    model_id: str = ""


@dataclass(frozen=True, slots=True)
class BidGradientUpdate:
    """A requester's signed gradient for one gradient-mode bid (docs/protocol.md BidGradient)."""

    request_id: bytes
    task_id: str
    requester_id: bytes
    loss_grad: tuple[float, ...] = ()
    share_grad: tuple[float, ...] = ()
    output_grad: WireTensor | None = None
    price: float = 0.0
    issued_at_ms: int = 0


Signed = BidRequest | Bid | ExecuteOrder | ExecuteResult | FeedbackNotice | BidGradientUpdate


# --- RPC frames -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestBidsCall:
    request: Envelope  # a signed BidRequest
    tasks: tuple[bytes, ...] = ()  # the TaskSpec bytes of a BidRequest that signs their digests


@dataclass(frozen=True, slots=True)
class RequestBidsReply:
    outcomes: tuple[Envelope | NoBid, ...]  # per task, in the request's order: a signed Bid or a NoBid


@dataclass(frozen=True, slots=True)
class ExecuteCall:
    order: Envelope  # a signed ExecuteOrder
    bid: Envelope  # the signed Bid it names, exactly as the peer sent it
    inputs: tuple[WireTensor, ...]
    texts: tuple[bytes, ...] = ()  # UTF-8 as sent (checked by the peer); the order's digest covers them


@dataclass(frozen=True, slots=True)
class ExecuteReply:
    result: Envelope  # a signed ExecuteResult
    outputs: tuple[WireTensor, ...]


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """Token ids a generation produced, in order (one ExecuteStream message)."""

    tokens: tuple[int, ...]
    text: str = ""  # a text prompt's generation: the tokens decoded by the peer's own tokenizer


@dataclass(frozen=True, slots=True)
class TensorSlice:
    """Bytes ``[offset, offset + len(data))`` of one output tensor's data (one ExecuteStream message)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    data: bytes | memoryview  # memoryview: a view of the received message (codec.decode_chunk)


# One message of ExecuteStream: output as produced, and last the signed ExecuteResult (an Envelope).
ExecuteChunk = TokenChunk | TensorSlice | Envelope


@dataclass(frozen=True, slots=True)
class FeedbackCall:
    notice: Envelope  # a signed FeedbackNotice


@dataclass(frozen=True, slots=True)
class FeedbackReply:
    accepted: bool
    strategy_parameters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BidGradientCall:
    update: Envelope  # a signed BidGradientUpdate


@dataclass(frozen=True, slots=True)
class BidGradientReply:
    applied: bool
    applied_norm: float = 0.0


Call = RequestBidsCall | ExecuteCall | FeedbackCall | BidGradientCall
Reply = RequestBidsReply | ExecuteReply | FeedbackReply | BidGradientReply
