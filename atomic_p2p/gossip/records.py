"""What a peer says about itself over gossip: records, heartbeats, leaves, and why one is refused.

These are plain domain values. They are signed and carried as :class:`~atomic_p2p.identity.Envelope`
payloads; :mod:`atomic_p2p.gossip.codec` maps them to and from the protobuf messages of
``protos/atomic/v1/gossip.proto`` field for field. Nothing here imports protobuf.

A :class:`ModelAdvert` states its model's terms with the types of :mod:`atomic_p2p.terms`
(:class:`~atomic_p2p.terms.ModelConstraints`, :class:`~atomic_p2p.terms.Resources`), where zero
means "not declared".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from atomic_p2p.contract import ModelContract, TaskKind, TensorContract
from atomic_p2p.identity import Envelope, PeerId
from atomic_p2p.terms import ModelConstraints, Resources


@dataclass(frozen=True, slots=True)
class ModelAdvert:
    """One hosted model as advertised in a :class:`PeerRecord`."""

    model_id: str
    capabilities: tuple[str, ...]
    constraints: ModelConstraints = field(default_factory=ModelConstraints)
    price_hint: float = 0.0
    resources: Resources = field(default_factory=Resources)
    typical_latency_ms: float = 0.0
    strategy: str = ""
    kind: TaskKind | None = None  # None: not declared
    inputs: tuple[TensorContract, ...] = ()  # empty: no contract declared
    outputs: tuple[TensorContract, ...] = ()
    takes_text: bool = False  # it has a tokenizer (False too from a peer older than the field)

    @property
    def declares_contract(self) -> bool:
        """Whether the advert says what the model takes (a kind or inputs)."""
        return self.kind is not None or bool(self.inputs)

    @property
    def contract(self) -> ModelContract | None:
        """The advertised contract (a classifier's when the kind is unknown); None if not declared."""
        if not self.inputs:
            return None
        return ModelContract(self.kind or TaskKind.CLASSIFICATION, self.inputs, self.outputs)

    @classmethod
    def with_contract(cls, contract: ModelContract, **fields: Any) -> ModelAdvert:
        return cls(kind=contract.kind, inputs=contract.inputs, outputs=contract.outputs, **fields)


@dataclass(frozen=True, slots=True)
class LoadSummary:
    in_flight: int = 0
    capacity: int = 0
    utilization: float = 0.0


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's signed self-description. ``seq`` only grows; a larger one replaces a smaller one.

    A requester is a member whose record hosts no models (and may list no address, in which case
    nobody gossips *to* it; it pulls).
    """

    peer_id: PeerId
    addresses: tuple[str, ...]
    models: tuple[ModelAdvert, ...]
    seq: int
    issued_at_ms: int
    load: LoadSummary = field(default_factory=LoadSummary)
    # DER, bound to peer_id (atomic_p2p.tls); empty: the peer serves plaintext
    tls_certificate: bytes = b""

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(c for model in self.models for c in model.capabilities)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A small signed liveness beat for record ``record_seq``; ``heartbeat`` grows every interval."""

    peer_id: PeerId
    record_seq: int
    heartbeat: int
    load: LoadSummary = field(default_factory=LoadSummary)


@dataclass(frozen=True, slots=True)
class Leave:
    """A signed graceful leave: the peer stops serving record ``record_seq``."""

    peer_id: PeerId
    record_seq: int
    issued_at_ms: int


Payload = PeerRecord | Heartbeat | Leave
T = TypeVar("T", PeerRecord, Heartbeat, Leave)


@dataclass(frozen=True, slots=True)
class Signed(Generic[T]):
    """A decoded payload together with the envelope it arrived in (forwarded as received)."""

    envelope: Envelope
    value: T


class RejectReason(Enum):
    """Why a received record, heartbeat, leave or message was refused (each is counted)."""

    BAD_SIGNATURE = "bad_signature"
    WRONG_TYPE = "wrong_type"
    MALFORMED = "malformed"
    PEER_ID_MISMATCH = "peer_id_mismatch"
    TOO_LARGE = "too_large"
    TOO_MANY_MODELS = "too_many_models"
    TOO_MANY_ADDRESSES = "too_many_addresses"
    FIELD_TOO_LONG = "field_too_long"
    INVALID_FIELD = "invalid_field"
    FROM_THE_FUTURE = "from_the_future"
    STALE = "stale"
    TOMBSTONED = "tombstoned"
    BAD_TLS_BINDING = "bad_tls_binding"
    TABLE_FULL = "table_full"
    TOO_MANY_UPDATES = "too_many_updates"
    RATE_LIMITED = "rate_limited"
    NO_WORK = "no_work"
    """A new member's peer id lacks the leading zero bits the node asks for (identity_work_bits)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """Bounds on one signed record (documented for implementers in docs/protocol.md)."""

    max_record_bytes: int = 16 * 1024
    max_models: int = 64
    max_addresses: int = 8
    max_capabilities: int = 32
    max_languages: int = 64
    max_string_length: int = 128
    max_tensors: int = 16  # inputs and outputs of one model's contract, together
    max_dims: int = 8  # dimensions per example of one tensor


def check_record(record: PeerRecord, limits: RecordLimits) -> Rejection | None:
    """Bounds a record must meet besides its byte size; ``None`` when it is acceptable."""
    if len(record.addresses) > limits.max_addresses:
        return Rejection(RejectReason.TOO_MANY_ADDRESSES, f"{len(record.addresses)} addresses")
    if len(record.models) > limits.max_models:
        return Rejection(RejectReason.TOO_MANY_MODELS, f"{len(record.models)} models")
    longest = limits.max_string_length
    if any(len(a) > longest or not a for a in record.addresses):
        return Rejection(RejectReason.FIELD_TOO_LONG, "address empty or too long")
    for model in record.models:
        rejection = _check_model(model, limits)
        if rejection is not None:
            return rejection
    return None


def _check_model(model: ModelAdvert, limits: RecordLimits) -> Rejection | None:
    longest = limits.max_string_length
    languages = model.constraints.supported_languages
    if len(model.capabilities) > limits.max_capabilities or len(languages) > limits.max_languages:
        return Rejection(RejectReason.INVALID_FIELD, f"model {model.model_id[:longest]} lists too many")
    strings = (model.model_id, model.strategy, *model.capabilities, *languages)
    if any(len(text) > longest for text in strings):
        return Rejection(RejectReason.FIELD_TOO_LONG, f"a string in model {model.model_id[:longest]}")
    if not model.model_id or not all(model.capabilities):
        return Rejection(RejectReason.INVALID_FIELD, "empty model id or capability")
    numbers = (
        model.price_hint,
        model.typical_latency_ms,
        model.resources.cpu_cores,
        model.resources.memory_mb,
        model.resources.gpu_memory_mb,
    )
    if not all(math.isfinite(x) and x >= 0 for x in numbers):
        return Rejection(RejectReason.INVALID_FIELD, f"negative or non-finite number in {model.model_id}")
    return _check_contract(model, limits)


def _check_contract(model: ModelAdvert, limits: RecordLimits) -> Rejection | None:
    name = model.model_id[: limits.max_string_length]
    tensors = (*model.inputs, *model.outputs)
    if len(tensors) > limits.max_tensors or any(len(t.dims) > limits.max_dims for t in tensors):
        return Rejection(RejectReason.INVALID_FIELD, f"model {name} lists too many tensors or dimensions")
    if any(len(t.name) > limits.max_string_length for t in tensors):
        return Rejection(RejectReason.FIELD_TOO_LONG, f"a tensor name in model {name}")
    try:
        model.contract  # noqa: B018 -- built only to check it (names unique, inputs present)
    except ValueError as exc:
        return Rejection(RejectReason.INVALID_FIELD, f"contract of model {name}: {exc}")
    if model.outputs and not model.inputs:
        return Rejection(RejectReason.INVALID_FIELD, f"model {name} lists outputs but no inputs")
    return None
