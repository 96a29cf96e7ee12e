"""Market messages <-> bytes, signing and opening envelopes: with the transports, the only market
module that imports ``atomic_p2p._proto``.

How this works
--------------
:func:`encode` turns any value of :mod:`atomic_p2p.protocol.messages` into the exact bytes the
generated protobuf code would produce for it (field for field; a test holds the two equal), and
:func:`decode` turns bytes back into a value, raising :class:`~atomic_p2p.errors.ProtocolError`
(INVALID_ARGUMENT) for bytes that do not parse and :class:`~atomic_p2p.errors.TensorError` for a
tensor or tensor spec with a dtype outside the whitelist. Decoding converts shapes and bytes but
never allocates a tensor: :func:`atomic_p2p.tensors.decode` does that later, under limits.

Signed payloads: :func:`sign` serializes a payload once and signs those bytes (:func:`sign_batch`:
many payloads of one type under one signature over their Merkle root, docs/protocol.md section 3.1);
:func:`open_signed` verifies an envelope's signature over the bytes exactly as received, then
decodes them (never the other way round: re-serializing could change the bytes).

The envelope, tensor and tensor-spec converters live in :mod:`.wire`, shared with the gossip
codec, so one piece of code maps each wire type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar, cast

from google.protobuf.message import Message

from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p.errors import ProtocolError, TensorError
from atomic_p2p.identity import Envelope, Identity, PeerId, verify
from atomic_p2p.protocol.messages import (
    Bid,
    BidGradientCall,
    BidGradientReply,
    BidGradientUpdate,
    BidRequest,
    ExecuteCall,
    ExecuteChunk,
    ExecuteOrder,
    ExecuteReply,
    ExecuteResult,
    FeedbackCall,
    FeedbackKind,
    FeedbackNotice,
    FeedbackReply,
    NoBid,
    NoBidReason,
    RequestBidsCall,
    RequestBidsReply,
    Signed,
    TaskSpec,
    TensorSlice,
    TextSpec,
    TokenChunk,
)
from atomic_p2p.protocol.wire import (
    DTYPE_TO_WIRE,
    WIRE_TO_DTYPE,
    constraints_from_proto,
    constraints_to_proto,
    envelope_from_proto,
    envelope_to_proto,
    fill_envelope,
    fill_spec,
    fill_tensor,
    parse,
    resources_from_proto,
    resources_to_proto,
    spec_from_proto,
    tensor_from_proto,
    tensor_to_proto,
    tensors_from_proto,
)
from atomic_p2p.terms import ModelConstraints, Resources

T = TypeVar("T")
S = TypeVar("S", bound=Signed)

# The payload type each signed message travels under: its full protobuf name.
PAYLOAD_TYPES: dict[type[Any], str] = {
    BidRequest: market_pb2.BidRequest.DESCRIPTOR.full_name,
    Bid: market_pb2.Bid.DESCRIPTOR.full_name,
    ExecuteOrder: market_pb2.ExecuteOrder.DESCRIPTOR.full_name,
    ExecuteResult: market_pb2.ExecuteResult.DESCRIPTOR.full_name,
    FeedbackNotice: market_pb2.FeedbackNotice.DESCRIPTOR.full_name,
    BidGradientUpdate: market_pb2.BidGradientUpdate.DESCRIPTOR.full_name,
}
BID_REQUEST_TYPE = PAYLOAD_TYPES[BidRequest]
BID_TYPE = PAYLOAD_TYPES[Bid]
ORDER_TYPE = PAYLOAD_TYPES[ExecuteOrder]
RESULT_TYPE = PAYLOAD_TYPES[ExecuteResult]
FEEDBACK_TYPE = PAYLOAD_TYPES[FeedbackNotice]
GRADIENT_TYPE = PAYLOAD_TYPES[BidGradientUpdate]

_NO_BID_PREFIX = "NO_BID_REASON_"
_FEEDBACK_PREFIX = "FEEDBACK_KIND_"
_REASON_TO_WIRE = {
    reason: market_pb2.NoBidReason.Value(_NO_BID_PREFIX + reason.name) for reason in NoBidReason
}
_WIRE_TO_REASON = {value: reason for reason, value in _REASON_TO_WIRE.items()}
_KIND_TO_WIRE = {kind: market_pb2.FeedbackKind.Value(_FEEDBACK_PREFIX + kind.name) for kind in FeedbackKind}
_WIRE_TO_KIND = {value: kind for kind, value in _KIND_TO_WIRE.items()}


# --- the public face ----------------------------------------------------------------------------


def encode(message: Any) -> bytes:
    """The wire bytes of a value of :mod:`atomic_p2p.protocol.messages`."""
    to_proto = _TO_PROTO.get(type(message))
    if to_proto is None:
        raise TypeError(f"no wire form for {type(message).__name__}")
    return cast(bytes, to_proto(message).SerializeToString())


def decode(kind: type[T], data: bytes) -> T:
    """Parse wire bytes as ``kind``; malformed bytes raise ProtocolError, bad dtypes TensorError."""
    proto_class, from_proto = _FROM_PROTO[kind]
    return cast(T, from_proto(parse(proto_class, data, proto_class.DESCRIPTOR.name)))


def sign(identity: Identity, message: Signed) -> Envelope:
    """Serialize a payload once and sign exactly those bytes."""
    return identity.sign(PAYLOAD_TYPES[type(message)], encode(message))


def sign_batch(identity: Identity, messages: Sequence[Signed]) -> list[Envelope]:
    """Serialize payloads of one type once each (bids by :func:`encode_bids`) and sign them all
    with one signature over their Merkle root (:meth:`~atomic_p2p.identity.Identity.sign_batch`);
    one message is signed alone, as :func:`sign` does."""
    if not messages:
        return []
    types = {PAYLOAD_TYPES[type(message)] for message in messages}
    if len(types) != 1:
        raise TypeError("a signed batch holds payloads of exactly one type")
    (payload_type,) = types
    if len(messages) == 1:
        return [identity.sign(payload_type, encode(messages[0]))]
    if payload_type == BID_TYPE:
        payloads = encode_bids(cast(Sequence[Bid], messages))
    else:
        payloads = [encode(message) for message in messages]
    return identity.sign_batch(payload_type, payloads)


def encode_bids(bids: Sequence[Bid]) -> list[bytes]:
    """Each bid's payload bytes, as a batch of bids for one call is encoded: the fields its bids
    share (:func:`_bid_shared`) are serialized once per distinct set and put before each bid's
    own (:func:`_bid_own`). Protobuf reads fields in any order, so each payload parses to the same
    Bid as ``encode(bid)``'s (a test holds them to it); only the order of its fields differs, and
    a payload is verified as received, never re-serialized (docs/protocol.md section 3). About
    half the cost of encoding each bid whole."""
    shared: dict[tuple[object, ...], bytes] = {}
    payloads = []
    for bid in bids:
        # The bids of one model in one call hold the very same terms objects: compared by id.
        key = (
            bid.request_id,
            bid.peer_id,
            bid.model_id,
            bid.issued_at_ms,
            bid.valid_until_ms,
            bid.strategy,
            bid.reusable_ttl_ms,
            bid.record_seq,
            id(bid.resource_requirements),
            id(bid.capabilities),
            id(bid.constraints),
        )
        prefix = shared.get(key)
        if prefix is None:
            prefix = shared[key] = _bid_shared(bid).SerializeToString()
        payloads.append(prefix + _bid_own(bid).SerializeToString())
    return payloads


def open_signed(envelope: Envelope, kind: type[S], expected_signer: PeerId | None = None) -> tuple[PeerId, S]:
    """Verify ``envelope`` as a signed ``kind`` (its bytes as received), then decode it.

    Raises :class:`~atomic_p2p.errors.SignatureError` before looking at the payload, and
    ProtocolError when verified bytes do not parse."""
    signer = verify(envelope, PAYLOAD_TYPES[kind], expected_signer)
    return signer, decode(kind, envelope.payload)


def encode_chunk(chunk: ExecuteChunk) -> bytes:
    """The wire bytes of one ExecuteStream message (a token chunk, a tensor slice or the result)."""
    if isinstance(chunk, TokenChunk):
        message = market_pb2.ExecuteStreamResponse(
            tokens=market_pb2.TokenChunk(tokens=list(chunk.tokens), text=chunk.text)
        )
    elif isinstance(chunk, TensorSlice):
        return encode_slice(chunk.name, chunk.dtype, chunk.shape, chunk.offset, chunk.data)
    else:
        message = market_pb2.ExecuteStreamResponse(result=envelope_to_proto(chunk))
    return cast(bytes, message.SerializeToString())


def decode_chunk(data: bytes) -> ExecuteChunk:
    """Parse one ExecuteStream message; one holding no part is a ProtocolError.

    A tensor slice's data is a view of ``data`` (no copy: slices are most of a stream's bytes)."""
    if data[:1] == _SLICE_KEY:
        piece = _slice_view(data)
        if piece is not None:
            return piece
    message = parse(market_pb2.ExecuteStreamResponse, data, "ExecuteStreamResponse")
    which = message.WhichOneof("part")
    if which == "tokens":
        return TokenChunk(tuple(message.tokens.tokens), message.tokens.text)
    if which == "slice":
        return _slice_from_proto(message.slice)
    if which == "result":
        return envelope_from_proto(message.result)
    raise ProtocolError("an ExecuteStream message holds no tokens, slice or result")


def encode_upload_call(call: ExecuteCall) -> bytes:
    """The first message of ExecuteUpload: ``ExecuteUploadRequest{call}``, the call's inputs left
    out (they follow as slices: :func:`encode_slice`'s bytes are ``ExecuteUploadRequest{input}``,
    field 2 in both messages)."""
    inner = encode(ExecuteCall(call.order, call.bid, (), call.texts))
    return b"\x0a" + _varint(len(inner)) + inner


def decode_upload(data: bytes) -> ExecuteCall | TensorSlice:
    """Parse one ExecuteUpload message: the call, or an input slice (its data a view of ``data``)."""
    if data[:1] == _SLICE_KEY:
        piece = _slice_view(data)
        if piece is not None:
            return piece
    message = parse(market_pb2.ExecuteUploadRequest, data, "ExecuteUploadRequest")
    which = message.WhichOneof("part")
    if which == "input":
        return _slice_from_proto(message.input)
    if which == "call":
        return decode(ExecuteCall, message.call.SerializeToString())
    raise ProtocolError("an ExecuteUpload message holds no call or input slice")


def wire_size(message: Any) -> int:
    """How many bytes ``message`` takes on the wire."""
    return len(encode(message))


def no_bid_reason_name(reason: NoBidReason | int) -> str:
    """The reason as reports show it: the enum name in lower case, or ``reason_<n>`` for a value
    this release does not know (a newer peer may know more reasons)."""
    return reason.value if isinstance(reason, NoBidReason) else f"reason_{reason}"


# --- per message ----------------------------------------------------------------------------------


def _task_to_proto(task: TaskSpec) -> market_pb2.TaskSpec:
    # Inputs and previews are written into the message in place: passed to its constructor, each
    # would be built and then copied, preview data and all (2.6 us of 5.6 for a 2 KB preview).
    message = market_pb2.TaskSpec(
        task_id=task.task_id,
        capability=task.capability,
        model_id=task.model_id,
        max_cost=task.max_cost,
        input_tokens=task.input_tokens,
        language=task.language,
        text=None
        if task.text is None
        else market_pb2.TextSpec(count=task.text.count, total_bytes=task.text.total_bytes),
        text_preview=list(task.text_preview),
    )
    for spec in task.inputs:
        fill_spec(message.inputs.add(), spec)
    for wire in task.preview:
        fill_tensor(message.preview.add(), wire)
    return message


def _task_from_proto(message: market_pb2.TaskSpec) -> TaskSpec:
    # On every task of every call for bids: map() over the repeated fields, no tuple() of an
    # empty one, and the fields passed in order, not by name (each costs about 0.5 us a task
    # the other way). The order is TaskSpec's: task_id, capability, model_id, inputs, preview,
    # max_cost, input_tokens, language, text, text_preview.
    text_preview = message.text_preview
    return TaskSpec(
        message.task_id,
        message.capability,
        message.model_id,
        tuple(map(spec_from_proto, message.inputs)),
        tuple(map(tensor_from_proto, message.preview)),
        message.max_cost,
        message.input_tokens,
        message.language,
        TextSpec(message.text.count, message.text.total_bytes) if message.HasField("text") else None,
        tuple(text_preview) if text_preview else (),
    )


def _bid_request_to_proto(request: BidRequest) -> market_pb2.BidRequest:
    return market_pb2.BidRequest(
        request_id=request.request_id,
        requester_id=request.requester_id,
        issued_at_ms=request.issued_at_ms,
        deadline_ms=request.deadline_ms,
        tasks=list(request.tasks),
        gradient_mode=request.gradient_mode,
        batch_signatures=request.batch_signatures,
        task_digests=list(request.task_digests),
    )


def _bid_request_from_proto(message: market_pb2.BidRequest) -> BidRequest:
    return BidRequest(
        request_id=message.request_id,
        requester_id=message.requester_id,
        issued_at_ms=message.issued_at_ms,
        deadline_ms=message.deadline_ms,
        tasks=tuple(message.tasks),
        gradient_mode=message.gradient_mode,
        batch_signatures=message.batch_signatures,
        task_digests=tuple(message.task_digests),
    )


def _bid_to_proto(bid: Bid) -> market_pb2.Bid:
    message = _bid_shared(bid)
    message.MergeFrom(_bid_own(bid))  # disjoint halves; serialized in field number order
    return message


# A Bid's fields in two halves, each mapped once: what the bids of one model in one answer share,
# and what is each task's own (encode_bids puts the first before the second; a test holds that
# together they are every field of Bid).


def _bid_shared(bid: Bid) -> market_pb2.Bid:
    return market_pb2.Bid(
        request_id=bid.request_id,
        peer_id=bid.peer_id,
        model_id=bid.model_id,
        resource_requirements=resources_to_proto(bid.resource_requirements),
        capabilities=list(bid.capabilities),
        constraints=constraints_to_proto(bid.constraints),
        issued_at_ms=bid.issued_at_ms,
        valid_until_ms=bid.valid_until_ms,
        strategy=bid.strategy,
        reusable_ttl_ms=bid.reusable_ttl_ms,
        record_seq=bid.record_seq,
    )


def _bid_own(bid: Bid) -> market_pb2.Bid:
    return market_pb2.Bid(
        task_id=bid.task_id,
        task_digest=bid.task_digest,
        confidence_score=bid.confidence_score,
        expected_latency_ms=bid.expected_latency_ms,
        cost_estimate=bid.cost_estimate,
        bid_values=list(bid.bid_values),
        confidence_unknown=bid.confidence_unknown,
    )


class BidFields(NamedTuple):
    """A Bid payload's fields, decoded exactly as :class:`Bid` holds them, in a plain tuple.

    The requester binds every bid it receives and keeps only its own view of it (a BidInfo):
    a frozen Bid value, built and dropped per bid, would cost more than decoding the bytes
    (:func:`decode_bid_fields`). The fields are Bid's, in the same order (a test holds them so).
    """

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
    bid_values: tuple[float, ...]
    reusable_ttl_ms: int
    record_seq: int
    confidence_unknown: bool


def decode_bid_fields(data: bytes) -> BidFields:
    """:func:`decode` of a Bid payload, as :class:`BidFields` (the same checks and errors)."""
    return _bid_fields(parse(market_pb2.Bid, data, market_pb2.Bid.DESCRIPTOR.name))


def _bid_fields(message: market_pb2.Bid) -> BidFields:
    return BidFields(
        message.request_id,
        message.task_id,
        message.task_digest,
        message.peer_id,
        message.model_id,
        message.confidence_score,
        message.expected_latency_ms,
        resources_from_proto(message.resource_requirements),
        message.cost_estimate,
        tuple(message.capabilities),
        constraints_from_proto(message.constraints),
        message.issued_at_ms,
        message.valid_until_ms,
        message.strategy,
        tuple(message.bid_values),
        message.reusable_ttl_ms,
        message.record_seq,
        message.confidence_unknown,
    )


def _bid_from_proto(message: market_pb2.Bid) -> Bid:
    return Bid(**_bid_fields(message)._asdict())


def _order_to_proto(order: ExecuteOrder) -> market_pb2.ExecuteOrder:
    return market_pb2.ExecuteOrder(
        request_id=order.request_id,
        task_id=order.task_id,
        bid_digest=order.bid_digest,
        issued_at_ms=order.issued_at_ms,
        inputs_digest=order.inputs_digest,
        deadline_ms=order.deadline_ms,
        buyer_bids=list(order.buyer_bids),
        max_tokens=order.max_tokens,
        prefix_tokens=list(order.prefix_tokens),
        prefix_text=order.prefix_text,
    )


def _order_from_proto(message: market_pb2.ExecuteOrder) -> ExecuteOrder:
    return ExecuteOrder(
        request_id=message.request_id,
        task_id=message.task_id,
        bid_digest=message.bid_digest,
        issued_at_ms=message.issued_at_ms,
        inputs_digest=message.inputs_digest,
        deadline_ms=message.deadline_ms,
        buyer_bids=tuple(message.buyer_bids),
        max_tokens=message.max_tokens,
        prefix_tokens=tuple(message.prefix_tokens),
        prefix_text=message.prefix_text,
    )


def _result_to_proto(result: ExecuteResult) -> market_pb2.ExecuteResult:
    return market_pb2.ExecuteResult(
        request_id=result.request_id,
        task_id=result.task_id,
        peer_id=result.peer_id,
        model_id=result.model_id,
        bid_digest=result.bid_digest,
        outputs_digest=result.outputs_digest,
        latency_ms=result.latency_ms,
        finished_at_ms=result.finished_at_ms,
        cost_charged=result.cost_charged,
        input_tokens=result.input_tokens,
    )


def _result_from_proto(message: market_pb2.ExecuteResult) -> ExecuteResult:
    return ExecuteResult(
        request_id=message.request_id,
        task_id=message.task_id,
        peer_id=message.peer_id,
        model_id=message.model_id,
        bid_digest=message.bid_digest,
        outputs_digest=message.outputs_digest,
        latency_ms=message.latency_ms,
        finished_at_ms=message.finished_at_ms,
        cost_charged=message.cost_charged,
        input_tokens=message.input_tokens,
    )


def _notice_to_proto(notice: FeedbackNotice) -> market_pb2.FeedbackNotice:
    kind = market_pb2.FEEDBACK_KIND_UNSPECIFIED if notice.kind is None else _KIND_TO_WIRE[notice.kind]
    return market_pb2.FeedbackNotice(
        request_id=notice.request_id,
        task_id=notice.task_id,
        requester_id=notice.requester_id,
        kind=kind,
        clearing_price=notice.clearing_price,
        score_to_win=notice.score_to_win,
        outcome_score=notice.outcome_score,
        issued_at_ms=notice.issued_at_ms,
        model_id=notice.model_id,
    )


def _notice_from_proto(message: market_pb2.FeedbackNotice) -> FeedbackNotice:
    return FeedbackNotice(
        request_id=message.request_id,
        task_id=message.task_id,
        requester_id=message.requester_id,
        kind=_WIRE_TO_KIND.get(message.kind),
        clearing_price=message.clearing_price,
        score_to_win=message.score_to_win,
        outcome_score=message.outcome_score,
        issued_at_ms=message.issued_at_ms,
        model_id=message.model_id,
    )


def _gradient_to_proto(update: BidGradientUpdate) -> market_pb2.BidGradientUpdate:
    message = market_pb2.BidGradientUpdate(
        request_id=update.request_id,
        task_id=update.task_id,
        requester_id=update.requester_id,
        loss_grad=list(update.loss_grad),
        share_grad=list(update.share_grad),
        price=update.price,
        issued_at_ms=update.issued_at_ms,
    )
    if update.output_grad is not None:
        message.output_grad.CopyFrom(tensor_to_proto(update.output_grad))
    return message


def _gradient_from_proto(message: market_pb2.BidGradientUpdate) -> BidGradientUpdate:
    output_grad = tensor_from_proto(message.output_grad) if message.HasField("output_grad") else None
    return BidGradientUpdate(
        request_id=message.request_id,
        task_id=message.task_id,
        requester_id=message.requester_id,
        loss_grad=tuple(message.loss_grad),
        share_grad=tuple(message.share_grad),
        output_grad=output_grad,
        price=message.price,
        issued_at_ms=message.issued_at_ms,
    )


def _reply_to_proto(reply: RequestBidsReply) -> market_pb2.RequestBidsResponse:
    # Each outcome is written in place (fill_envelope): built apart, it would be copied in.
    message = market_pb2.RequestBidsResponse()
    add = message.outcomes.add
    for outcome in reply.outcomes:
        entry = add()
        if isinstance(outcome, NoBid):
            reason = outcome.reason
            no_bid = entry.no_bid
            no_bid.task_id = outcome.task_id
            no_bid.reason = cast(
                market_pb2.NoBidReason.ValueType,
                _REASON_TO_WIRE[reason] if isinstance(reason, NoBidReason) else reason,
            )
            no_bid.detail = outcome.detail
        else:
            fill_envelope(entry.bid, outcome)
    return message


def _outcome_from_proto(message: market_pb2.BidOutcome) -> Envelope | NoBid:
    which = message.WhichOneof("outcome")
    if which == "bid":
        return envelope_from_proto(message.bid)
    if which == "no_bid":
        no_bid = message.no_bid
        reason = _WIRE_TO_REASON.get(no_bid.reason, no_bid.reason)
        return NoBid(no_bid.task_id, reason, no_bid.detail)
    raise ProtocolError("a bid outcome holds neither a bid nor a no-bid")


def encode_slice(
    name: str, dtype: str, shape: tuple[int, ...], offset: int, data: bytes | memoryview
) -> bytes:
    """The wire bytes of ``ExecuteStreamResponse{slice: TensorSlice{...}}``, the same bytes
    :func:`encode_chunk` gives, with ``data`` copied once (it may be a memoryview into a large
    output): the header is serialized by protobuf and ``data`` (field 5, the last) appended."""
    header = market_pb2.TensorSlice(
        name=name, dtype=DTYPE_TO_WIRE[dtype], shape=list(shape), offset=offset
    ).SerializeToString()
    size = len(data)
    inner = len(header) + (1 + len(_varint(size)) + size if size else 0)
    parts: list[bytes | memoryview] = [b"\x12", _varint(inner), header]
    if size:
        parts += [b"\x2a", _varint(size), data]
    return b"".join(parts)


_SLICE_KEY = b"\x12"  # ExecuteStreamResponse.slice: field 2, length-delimited
_SLICE_DATA = 5  # TensorSlice.data


def _slice_view(data: bytes) -> TensorSlice | None:
    """``ExecuteStreamResponse{slice}`` with the slice's data as a view into ``data``; None for
    anything but one well-formed slice field (the generic parser then decides, and explains).

    Protobuf's own parser would copy the data twice (into its message, then out as ``bytes``);
    here the fields other than ``data`` are cut out and parsed by protobuf, in their order, and
    ``data`` (the last one on the wire wins, as protobuf has it) is only referenced."""
    view = memoryview(data)
    size, at = _read_varint(view, 1)
    if size < 0 or at + size != len(view):  # not exactly one top-level field
        return None
    header = bytearray()
    payload: memoryview | None = None
    position = at
    while position < len(view):
        key, after = _read_varint(view, position)
        wire_type = key & 7
        if key >> 3 == 0 or wire_type not in (0, 2):  # TensorSlice: varint and length fields only
            return None
        length, start = _read_varint(view, after)
        if length < 0:
            return None
        end = start + length if wire_type == 2 else start
        if end > len(view):
            return None
        if key >> 3 == _SLICE_DATA and wire_type == 2:
            payload = view[start:end]
        else:
            header += view[position:end]
        position = end
    message = parse(market_pb2.TensorSlice, bytes(header), "TensorSlice")
    return _slice_from_proto(message, payload if payload is not None else b"")


def _read_varint(view: memoryview, position: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``position``; (-1, position) if malformed."""
    value = shift = 0
    for index in range(position, min(position + 10, len(view))):
        byte = view[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    return -1, position


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _slice_from_proto(message: market_pb2.TensorSlice, data: bytes | memoryview | None = None) -> TensorSlice:
    dtype = WIRE_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(f"tensor slice {message.name[:64]!r} has an unaccepted dtype {message.dtype}")
    return TensorSlice(
        message.name, dtype, tuple(message.shape), message.offset, message.data if data is None else data
    )


def _execute_reply_from_proto(message: market_pb2.ExecuteResponse) -> ExecuteReply:
    if not message.HasField("result"):
        raise ProtocolError("execute response carries no signed result")
    return ExecuteReply(envelope_from_proto(message.result), tensors_from_proto(message.outputs))


_TO_PROTO: dict[type[Any], Any] = {
    TaskSpec: _task_to_proto,
    BidRequest: _bid_request_to_proto,
    Bid: _bid_to_proto,
    ExecuteOrder: _order_to_proto,
    ExecuteResult: _result_to_proto,
    FeedbackNotice: _notice_to_proto,
    BidGradientUpdate: _gradient_to_proto,
    RequestBidsCall: lambda m: market_pb2.RequestBidsRequest(
        request=envelope_to_proto(m.request), tasks=list(m.tasks)
    ),
    RequestBidsReply: _reply_to_proto,
    ExecuteCall: lambda m: market_pb2.ExecuteRequest(
        order=envelope_to_proto(m.order),
        bid=envelope_to_proto(m.bid),
        inputs=[tensor_to_proto(wire) for wire in m.inputs],
        texts=list(m.texts),
    ),
    ExecuteReply: lambda m: market_pb2.ExecuteResponse(
        result=envelope_to_proto(m.result), outputs=[tensor_to_proto(wire) for wire in m.outputs]
    ),
    FeedbackCall: lambda m: market_pb2.FeedbackRequest(notice=envelope_to_proto(m.notice)),
    FeedbackReply: lambda m: market_pb2.FeedbackResponse(
        accepted=m.accepted, strategy_parameters=m.strategy_parameters
    ),
    BidGradientCall: lambda m: market_pb2.BidGradientRequest(update=envelope_to_proto(m.update)),
    BidGradientReply: lambda m: market_pb2.BidGradientResponse(
        applied=m.applied, applied_norm=m.applied_norm
    ),
}

_FROM_PROTO: dict[type[Any], tuple[type[Message], Any]] = {
    TaskSpec: (market_pb2.TaskSpec, _task_from_proto),
    BidRequest: (market_pb2.BidRequest, _bid_request_from_proto),
    Bid: (market_pb2.Bid, _bid_from_proto),
    ExecuteOrder: (market_pb2.ExecuteOrder, _order_from_proto),
    ExecuteResult: (market_pb2.ExecuteResult, _result_from_proto),
    FeedbackNotice: (market_pb2.FeedbackNotice, _notice_from_proto),
    BidGradientUpdate: (market_pb2.BidGradientUpdate, _gradient_from_proto),
    RequestBidsCall: (
        market_pb2.RequestBidsRequest,
        lambda m: RequestBidsCall(envelope_from_proto(m.request), tuple(m.tasks)),
    ),
    RequestBidsReply: (
        market_pb2.RequestBidsResponse,
        lambda m: RequestBidsReply(tuple(_outcome_from_proto(outcome) for outcome in m.outcomes)),
    ),
    ExecuteCall: (
        market_pb2.ExecuteRequest,
        lambda m: ExecuteCall(
            envelope_from_proto(m.order),
            envelope_from_proto(m.bid),
            tensors_from_proto(m.inputs),
            tuple(m.texts),
        ),
    ),
    ExecuteReply: (market_pb2.ExecuteResponse, _execute_reply_from_proto),
    FeedbackCall: (market_pb2.FeedbackRequest, lambda m: FeedbackCall(envelope_from_proto(m.notice))),
    FeedbackReply: (
        market_pb2.FeedbackResponse,
        lambda m: FeedbackReply(bool(m.accepted), dict(m.strategy_parameters)),
    ),
    BidGradientCall: (
        market_pb2.BidGradientRequest,
        lambda m: BidGradientCall(envelope_from_proto(m.update)),
    ),
    BidGradientReply: (
        market_pb2.BidGradientResponse,
        lambda m: BidGradientReply(bool(m.applied), float(m.applied_norm)),
    ),
}
