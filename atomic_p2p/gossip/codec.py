"""Gossip values <-> protobuf, signing, and checking what arrives: the one gossip module that
imports ``atomic_p2p._proto``.

Signing serializes a record once and signs those bytes with :meth:`Identity.sign`. Opening an
envelope checks, in order: payload size, payload type, the signature over the bytes exactly as
received (:func:`atomic_p2p.identity.verify`), that the bytes parse, that ``sha256(public_key)``
equals the payload's ``peer_id``, the record's bounds, and that the record's TLS certificate is
bound to its own peer id (:func:`atomic_p2p.tls.bound_peer`). Every refusal is a
:class:`~atomic_p2p.gossip.records.Rejection` value with a reason, so the caller can count it;
nothing in here raises for a hostile envelope. Checks that need the receiver's state (is ``seq``
newer, is ``issued_at`` in the future) belong to :class:`~atomic_p2p.gossip.membership.Membership`.

Opening is a pure function of the envelope bytes and the limits, so :class:`Opener` caches its
results: a node sees the same record many times (every partner forwards it) and verifies it once.

``request_wire_size`` and ``response_wire_size`` give the exact protobuf-encoded size of a message
without building it (the simulator counts bytes for every message it carries); a test holds them
equal to ``len(SerializeToString())``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from google.protobuf.message import DecodeError

from atomic_p2p._proto.atomic.v1 import gossip_pb2
from atomic_p2p.contract import TaskKind
from atomic_p2p.errors import ProtocolError, SignatureError
from atomic_p2p.gossip.messages import Digest, DigestEntry, GossipRequest, GossipResponse
from atomic_p2p.gossip.ranges import valid_summary_length
from atomic_p2p.gossip.records import (
    Heartbeat,
    Leave,
    LoadSummary,
    ModelAdvert,
    PeerRecord,
    RecordLimits,
    Rejection,
    RejectReason,
    Signed,
    check_record,
)
from atomic_p2p.identity import PUBLIC_KEY_BYTES, Envelope, Identity, PeerId, verify
from atomic_p2p.protocol.wire import (
    constraints_from_proto,
    constraints_to_proto,
    envelope_from_proto,
    fill_envelope,
    resources_from_proto,
    resources_to_proto,
    tensor_contract_from_proto,
    tensor_contract_to_proto,
)
from atomic_p2p.tls import bound_peer

RECORD_TYPE = gossip_pb2.PeerRecord.DESCRIPTOR.full_name
HEARTBEAT_TYPE = gossip_pb2.Heartbeat.DESCRIPTOR.full_name
LEAVE_TYPE = gossip_pb2.Leave.DESCRIPTOR.full_name

Opened = Signed[PeerRecord] | Signed[Heartbeat] | Signed[Leave]

_KIND_TO_WIRE = {kind: gossip_pb2.TaskKind.Value(f"TASK_KIND_{kind.name}") for kind in TaskKind}
_WIRE_TO_KIND = {value: kind for kind, value in _KIND_TO_WIRE.items()}


# --- domain <-> proto -------------------------------------------------------------------------


def load_to_proto(load: LoadSummary) -> gossip_pb2.LoadSummary:
    return gossip_pb2.LoadSummary(
        in_flight=load.in_flight, capacity=load.capacity, utilization=load.utilization
    )


def load_from_proto(message: gossip_pb2.LoadSummary) -> LoadSummary:
    return LoadSummary(message.in_flight, message.capacity, message.utilization)


def advert_to_proto(model: ModelAdvert) -> gossip_pb2.ModelAdvert:
    return gossip_pb2.ModelAdvert(
        model_id=model.model_id,
        capabilities=model.capabilities,
        constraints=constraints_to_proto(model.constraints),
        price_hint=model.price_hint,
        resources=resources_to_proto(model.resources),
        typical_latency_ms=model.typical_latency_ms,
        strategy=model.strategy,
        kind=_KIND_TO_WIRE[model.kind] if model.kind else gossip_pb2.TASK_KIND_UNSPECIFIED,
        inputs=[tensor_contract_to_proto(tensor) for tensor in model.inputs],
        outputs=[tensor_contract_to_proto(tensor) for tensor in model.outputs],
        takes_text=model.takes_text,
    )


def advert_from_proto(message: gossip_pb2.ModelAdvert) -> ModelAdvert:
    return ModelAdvert(
        model_id=message.model_id,
        capabilities=tuple(message.capabilities),
        constraints=constraints_from_proto(message.constraints),
        price_hint=message.price_hint,
        resources=resources_from_proto(message.resources),
        typical_latency_ms=message.typical_latency_ms,
        strategy=message.strategy,
        kind=_WIRE_TO_KIND.get(message.kind),  # unspecified, or a newer peer's kind: not declared
        inputs=tuple(tensor_contract_from_proto(tensor) for tensor in message.inputs),
        outputs=tuple(tensor_contract_from_proto(tensor) for tensor in message.outputs),
        takes_text=message.takes_text,
    )


def record_to_proto(record: PeerRecord) -> gossip_pb2.PeerRecord:
    return gossip_pb2.PeerRecord(
        peer_id=record.peer_id.raw,
        addresses=record.addresses,
        models=[advert_to_proto(m) for m in record.models],
        seq=record.seq,
        issued_at_ms=record.issued_at_ms,
        load=load_to_proto(record.load),
        tls_certificate=record.tls_certificate,
    )


def record_from_proto(message: gossip_pb2.PeerRecord) -> PeerRecord:
    return PeerRecord(
        peer_id=_peer_id(message.peer_id),
        addresses=tuple(message.addresses),
        models=tuple(advert_from_proto(m) for m in message.models),
        seq=message.seq,
        issued_at_ms=message.issued_at_ms,
        load=load_from_proto(message.load),
        tls_certificate=message.tls_certificate,
    )


def heartbeat_to_proto(heartbeat: Heartbeat) -> gossip_pb2.Heartbeat:
    return gossip_pb2.Heartbeat(
        peer_id=heartbeat.peer_id.raw,
        record_seq=heartbeat.record_seq,
        heartbeat=heartbeat.heartbeat,
        load=load_to_proto(heartbeat.load),
    )


def heartbeat_from_proto(message: gossip_pb2.Heartbeat) -> Heartbeat:
    return Heartbeat(
        _peer_id(message.peer_id), message.record_seq, message.heartbeat, load_from_proto(message.load)
    )


def leave_to_proto(leave: Leave) -> gossip_pb2.Leave:
    return gossip_pb2.Leave(
        peer_id=leave.peer_id.raw, record_seq=leave.record_seq, issued_at_ms=leave.issued_at_ms
    )


def leave_from_proto(message: gossip_pb2.Leave) -> Leave:
    return Leave(_peer_id(message.peer_id), message.record_seq, message.issued_at_ms)


def _peer_id(raw: bytes) -> PeerId:
    try:
        return PeerId(raw)
    except SignatureError as exc:
        raise ProtocolError(str(exc)) from exc


# --- signing and opening ----------------------------------------------------------------------


def sign_record(identity: Identity, record: PeerRecord) -> Signed[PeerRecord]:
    payload = record_to_proto(record).SerializeToString()
    return Signed(identity.sign(RECORD_TYPE, payload), record)


def sign_heartbeat(identity: Identity, heartbeat: Heartbeat) -> Signed[Heartbeat]:
    payload = heartbeat_to_proto(heartbeat).SerializeToString()
    return Signed(identity.sign(HEARTBEAT_TYPE, payload), heartbeat)


def sign_leave(identity: Identity, leave: Leave) -> Signed[Leave]:
    payload = leave_to_proto(leave).SerializeToString()
    return Signed(identity.sign(LEAVE_TYPE, payload), leave)


def open_envelope(envelope: Envelope, limits: RecordLimits) -> Opened | Rejection:
    """Verify, parse and bound-check a gossiped envelope (see the module docstring)."""
    if len(envelope.payload) > limits.max_record_bytes:
        return Rejection(RejectReason.TOO_LARGE, f"{len(envelope.payload)} bytes")
    kind = envelope.payload_type
    if kind not in (RECORD_TYPE, HEARTBEAT_TYPE, LEAVE_TYPE):
        return Rejection(RejectReason.WRONG_TYPE, kind[:64])
    try:
        signer = verify(envelope, kind)
        opened = _parse(kind, envelope)
    except SignatureError as exc:
        return Rejection(RejectReason.BAD_SIGNATURE, str(exc))
    except (DecodeError, ProtocolError) as exc:
        return Rejection(RejectReason.MALFORMED, str(exc))
    if opened.value.peer_id != signer:
        return Rejection(RejectReason.PEER_ID_MISMATCH, f"signed by {signer.short}")
    if isinstance(opened.value, PeerRecord):
        return check_record(opened.value, limits) or _check_binding(opened.value) or opened
    return opened


def _check_binding(record: PeerRecord) -> Rejection | None:
    """A record's TLS certificate must be bound to the record's own peer id (atomic_p2p.tls)."""
    if not record.tls_certificate:
        return None
    try:
        bound = bound_peer(record.tls_certificate)
    except SignatureError as exc:
        return Rejection(RejectReason.BAD_TLS_BINDING, str(exc))
    if bound != record.peer_id:
        return Rejection(RejectReason.BAD_TLS_BINDING, f"certificate bound to {bound.short}")
    return None


def _parse(kind: str, envelope: Envelope) -> Opened:
    if kind == RECORD_TYPE:
        record = record_from_proto(gossip_pb2.PeerRecord.FromString(envelope.payload))
        return Signed(envelope, record)
    if kind == HEARTBEAT_TYPE:
        beat = heartbeat_from_proto(gossip_pb2.Heartbeat.FromString(envelope.payload))
        return Signed(envelope, beat)
    return Signed(envelope, leave_from_proto(gossip_pb2.Leave.FromString(envelope.payload)))


class Opener:
    """:func:`open_envelope` with a bounded cache of results (oldest evicted first).

    A node passes the same envelope to it many times; only the first call verifies. The
    simulator shares one Opener among all its nodes: that changes the CPU it burns, never an
    outcome, because opening depends on nothing but the envelope and the limits.
    """

    __slots__ = ("_cache", "limits", "max_entries", "verified")

    def __init__(self, limits: RecordLimits, max_entries: int = 8192) -> None:
        self.limits = limits
        self.max_entries = max_entries
        self.verified = 0
        # keyed by signature (hashed in C, once per bytes object), checked against the whole envelope
        self._cache: dict[bytes, tuple[Envelope, Opened | Rejection]] = {}

    def cached(self, envelope: Envelope) -> bool:
        """Whether opening ``envelope`` costs nothing (its result is cached)."""
        cached = self._cache.get(envelope.signature)
        return cached is not None and (cached[0] is envelope or cached[0] == envelope)

    def __call__(self, envelope: Envelope) -> Opened | Rejection:
        cached = self._cache.get(envelope.signature)
        if cached is not None and (cached[0] is envelope or cached[0] == envelope):
            return cached[1]
        result = open_envelope(envelope, self.limits)
        self.verified += 1
        if len(self._cache) >= self.max_entries:
            # drop the older half at once: deleting one at a time from the front of a dict makes
            # every later next(iter(...)) skip the holes, which turns quadratic
            self._cache = dict(islice(self._cache.items(), self.max_entries // 2, None))
        self._cache[envelope.signature] = (envelope, result)
        return result


# --- messages ---------------------------------------------------------------------------------


def digest_to_proto(digest: Digest) -> list[gossip_pb2.DigestEntry]:
    return [
        gossip_pb2.DigestEntry(peer_id=raw, seq=e.seq, heartbeat=e.heartbeat, dead=e.dead)
        for raw, e in digest.items()
    ]


def digest_from_proto(entries: Iterable[gossip_pb2.DigestEntry]) -> dict[bytes, DigestEntry]:
    digest: dict[bytes, DigestEntry] = {}
    for entry in entries:
        if len(entry.peer_id) != PUBLIC_KEY_BYTES:
            raise ProtocolError(f"digest peer id must be 32 bytes, got {len(entry.peer_id)}")
        if entry.peer_id in digest:
            raise ProtocolError("digest names a peer twice")
        digest[entry.peer_id] = DigestEntry(entry.seq, entry.heartbeat, entry.dead)
    return digest


def request_to_proto(request: GossipRequest) -> gossip_pb2.GossipRequest:
    message = gossip_pb2.GossipRequest(digest=digest_to_proto(request.digest))
    _fill_updates(message.updates, request.updates)
    if request.sender is not None:
        fill_envelope(message.sender, request.sender)
    if request.summary is not None:
        message.summary.fingerprints = request.summary
    return message


def request_from_proto(message: gossip_pb2.GossipRequest) -> GossipRequest:
    sender = envelope_from_proto(message.sender) if message.HasField("sender") else None
    summary = message.summary.fingerprints if message.HasField("summary") else None
    if summary and not valid_summary_length(len(summary)):
        raise ProtocolError(
            f"digest summary of {len(summary)} bytes: want 8 bytes per range, a power of two of ranges"
        )
    return GossipRequest(
        sender=sender,
        digest=digest_from_proto(message.digest),
        updates=tuple(envelope_from_proto(e) for e in message.updates),
        summary=summary,
    )


def response_to_proto(response: GossipResponse) -> gossip_pb2.GossipResponse:
    message = gossip_pb2.GossipResponse(
        wanted=digest_to_proto(response.wanted),
        differing=response.differing,
        ranges=digest_to_proto(response.ranges),
    )
    _fill_updates(message.updates, response.updates)
    return message


def _fill_updates(field: Any, updates: Iterable[Envelope]) -> None:
    """Signed records written in place into a repeated field (not built apart and copied in)."""
    add = field.add
    for envelope in updates:
        fill_envelope(add(), envelope)


def response_from_proto(message: gossip_pb2.GossipResponse) -> GossipResponse:
    return GossipResponse(
        updates=tuple(envelope_from_proto(e) for e in message.updates),
        wanted=digest_from_proto(message.wanted),
        differing=tuple(message.differing),
        ranges=digest_from_proto(message.ranges),
    )


# --- exact encoded sizes, without encoding ----------------------------------------------------


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_size(length: int) -> int:
    """A length-delimited field with a one-byte tag (field numbers below 16)."""
    return 1 + _varint_size(length) + length


def envelope_size(envelope: Envelope) -> int:
    """Encoded size of a SignedEnvelope, not counting the tag that embeds it."""
    size = 0
    for part in (envelope.public_key, envelope.payload_type.encode(), envelope.payload, envelope.signature):
        if part:
            size += _field_size(len(part))
    return size


def _entry_size(raw: bytes, entry: DigestEntry) -> int:
    size = _field_size(len(raw)) if raw else 0
    if entry.seq:
        size += 1 + _varint_size(entry.seq)
    if entry.heartbeat:
        size += 1 + _varint_size(entry.heartbeat)
    if entry.dead:
        size += 2
    return _field_size(size)


def digest_size(digest: Mapping[bytes, DigestEntry]) -> int:
    return sum(_entry_size(raw, entry) for raw, entry in digest.items())


def _updates_size(updates: Iterable[Envelope]) -> int:
    return sum(_field_size(envelope_size(e)) for e in updates)


def request_wire_size(request: GossipRequest, digest_bytes: int | None = None) -> int:
    """Encoded size of ``request``; pass ``digest_bytes`` when the digest's size is already known."""
    size = _field_size(envelope_size(request.sender)) if request.sender is not None else 0
    size += digest_size(request.digest) if digest_bytes is None else digest_bytes
    if request.summary is not None:
        size += _field_size(_field_size(len(request.summary)) if request.summary else 0)
    return size + _updates_size(request.updates)


def response_wire_size(response: GossipResponse) -> int:
    size = _updates_size(response.updates) + digest_size(response.wanted) + digest_size(response.ranges)
    if response.differing:  # packed varints
        size += _field_size(sum(_varint_size(i) for i in response.differing))
    return size
