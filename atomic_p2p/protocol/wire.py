"""Envelopes, tensors, tensor specs and contracts, and a model's terms <-> their protobuf messages: the wire types
that the market codec (:mod:`.codec`), the gossip codec and the transports share, mapped in one
place."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from atomic_p2p._proto.atomic.v1 import envelope_pb2, gossip_pb2, tensor_pb2
from atomic_p2p.contract import Dim, TensorContract
from atomic_p2p.errors import LimitExceededError, ProtocolError, TensorError
from atomic_p2p.identity import BatchProof, Envelope
from atomic_p2p.protocol.messages import TensorSpec
from atomic_p2p.tensors import DTYPES, WireTensor
from atomic_p2p.terms import ModelConstraints, Resources

DTYPE_TO_WIRE = {name: tensor_pb2.DType.Value(f"D_TYPE_{name.upper()}") for name in DTYPES}
WIRE_TO_DTYPE = {value: name for name, value in DTYPE_TO_WIRE.items()}

M = TypeVar("M", bound=Message)


def parse(message_class: type[M], data: bytes, what: str) -> M:
    """Parse protobuf bytes; malformed bytes -> ProtocolError (INVALID_ARGUMENT)."""
    message = message_class()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"malformed {what}: {exc}") from exc
    return message


MAX_WIRE_RANK = 64
"""Dimensions a tensor or tensor spec may list on the wire, checked before they are converted
(the node's own rank limit, ``TensorLimits.max_rank``, is lower)."""
_SPARE_FIELDS = 16  # fields a capped message may carry besides the capped ones (newer versions')


def check_counts(data: bytes, caps: Mapping[int, int], what: str) -> None:
    """Count the top-level fields of a serialized message without parsing it, and refuse
    (LimitExceededError) one where a field in ``caps`` (field number -> most occurrences) repeats
    more often, or that holds more fields than the caps allow in all: the work is bounded by the
    caps, not by the message's size. Bytes that are not protobuf raise ProtocolError."""
    counts = dict.fromkeys(caps, 0)
    fields_left = sum(caps.values()) + _SPARE_FIELDS
    index, end = 0, len(data)
    while index < end:
        key, index = _varint(data, index, what)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, index = _varint(data, index, what)
        elif wire_type == 2:
            length, index = _varint(data, index, what)
            index += length
        elif wire_type in (1, 5):
            index += 8 if wire_type == 1 else 4
        else:
            raise ProtocolError(f"malformed {what}: wire type {wire_type} at byte {index}")
        fields_left -= 1
        if field in counts:
            counts[field] += 1
            if counts[field] > caps[field]:
                raise LimitExceededError(f"{what}: field {field} repeats more than {caps[field]} times")
        if fields_left < 0:
            raise LimitExceededError(f"{what}: more fields than the limits allow")
    if index > end:
        raise ProtocolError(f"malformed {what}: truncated")


def _varint(data: bytes, index: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while index < len(data) and shift < 64:
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index
        shift += 7
    raise ProtocolError(f"malformed {what}: bad varint")


def envelope_from_proto(message: envelope_pb2.SignedEnvelope) -> Envelope:
    batch = None
    if message.HasField("batch"):
        proof = message.batch
        batch = BatchProof(proof.leaf_count, proof.leaf_index, tuple(proof.path))
    return Envelope(message.public_key, message.payload_type, message.payload, message.signature, batch)


def envelope_to_proto(envelope: Envelope) -> envelope_pb2.SignedEnvelope:
    message = envelope_pb2.SignedEnvelope()
    fill_envelope(message, envelope)
    return message


def fill_envelope(message: envelope_pb2.SignedEnvelope, envelope: Envelope) -> None:
    """Write ``envelope`` into an empty SignedEnvelope in place, such as an entry just added to
    a repeated field: a message built apart and then put there is copied, nested parts and all
    (a reply of 64 bids paid for three copies of each)."""
    message.public_key = envelope.public_key
    message.payload_type = envelope.payload_type
    message.payload = envelope.payload
    message.signature = envelope.signature
    proof = envelope.batch
    if proof is not None:
        batch = message.batch
        batch.leaf_count = proof.leaf_count
        batch.leaf_index = proof.leaf_index
        batch.path.extend(proof.path)


def tensor_from_proto(message: tensor_pb2.Tensor) -> WireTensor:
    dtype = WIRE_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(
            f"tensor {message.name[:64] or '(unnamed)'} has dtype {message.dtype}, which is not accepted; "
            f"use one of {sorted(DTYPES)}"
        )
    shape = message.shape  # each read of a repeated field builds a new container
    if len(shape) > MAX_WIRE_RANK:
        raise TensorError(f"tensor has {len(shape)} dimensions; the limit is {MAX_WIRE_RANK}")
    return WireTensor(message.name, dtype, tuple(shape), message.data)


def tensor_to_proto(wire: WireTensor) -> tensor_pb2.Tensor:
    message = tensor_pb2.Tensor()
    fill_tensor(message, wire)
    return message


def fill_tensor(message: tensor_pb2.Tensor, wire: WireTensor) -> None:
    """Write ``wire`` into an empty Tensor in place (an entry just added to a repeated field:
    one built apart and then put there is copied, data and all, as :func:`fill_envelope` says)."""
    message.name = wire.name
    message.dtype = DTYPE_TO_WIRE[wire.dtype]
    message.shape.extend(wire.shape)
    message.data = bytes(wire.data)  # a copy only for a bytearray


def tensors_from_proto(messages: Iterable[tensor_pb2.Tensor]) -> tuple[WireTensor, ...]:
    return tuple(tensor_from_proto(m) for m in messages)


def spec_from_proto(message: tensor_pb2.TensorSpec) -> TensorSpec:
    # Every task of a call for bids names its inputs, mostly the same few: remembered by bytes.
    return _remembered(_SPECS, message, _spec_from_proto)


def _spec_from_proto(message: tensor_pb2.TensorSpec) -> TensorSpec:
    dtype = WIRE_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(
            f"input spec {message.name[:64] or '(unnamed)'} has an unaccepted dtype {message.dtype}"
        )
    if len(message.shape) > MAX_WIRE_RANK:
        raise TensorError(f"input spec has {len(message.shape)} dimensions; the limit is {MAX_WIRE_RANK}")
    return TensorSpec(message.name, dtype, tuple(message.shape))


def spec_to_proto(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    message = tensor_pb2.TensorSpec()
    fill_spec(message, spec)
    return message


def fill_spec(message: tensor_pb2.TensorSpec, spec: TensorSpec) -> None:
    """Write ``spec`` into an empty TensorSpec in place (see :func:`fill_tensor`)."""
    message.name = spec.name
    message.dtype = DTYPE_TO_WIRE[spec.dtype]
    message.shape.extend(spec.shape)


def tensor_contract_to_proto(tensor: TensorContract) -> tensor_pb2.TensorContract:
    return tensor_pb2.TensorContract(
        name=tensor.name,
        dtype=DTYPE_TO_WIRE[tensor.dtype],
        dims=[tensor_pb2.Dim(min=dim.min, max=dim.max) for dim in tensor.dims],
    )


def tensor_contract_from_proto(message: tensor_pb2.TensorContract) -> TensorContract:
    """A model's tensor as advertised; an unaccepted dtype or empty bounds -> ProtocolError."""
    dtype = WIRE_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise ProtocolError(f"tensor contract has an unaccepted dtype {message.dtype}")
    try:
        dims = tuple(Dim(dim.min, dim.max) for dim in message.dims)
    except ValueError as exc:
        raise ProtocolError(f"tensor contract: {exc}") from None
    return TensorContract(message.name, dtype, dims)


# A model's terms travel in gossip adverts and in bids as the same two messages. Every bid of a
# model carries the same terms, so both directions are remembered (bounded): the messages
# returned are shared and only ever passed to a constructor, which copies them; the values are
# frozen.
_TERMS_REMEMBERED = 1024


@functools.lru_cache(maxsize=_TERMS_REMEMBERED)
def constraints_to_proto(constraints: ModelConstraints) -> gossip_pb2.ModelConstraints:
    return gossip_pb2.ModelConstraints(
        max_input_tokens=constraints.max_input_tokens,
        supported_languages=list(constraints.supported_languages),
        max_batch=constraints.max_batch,
    )


def constraints_from_proto(message: gossip_pb2.ModelConstraints) -> ModelConstraints:
    return _remembered(_CONSTRAINTS, message, _constraints_from_proto)


def _constraints_from_proto(message: gossip_pb2.ModelConstraints) -> ModelConstraints:
    return ModelConstraints(
        max_input_tokens=message.max_input_tokens,
        supported_languages=tuple(message.supported_languages),
        max_batch=message.max_batch,
    )


@functools.lru_cache(maxsize=_TERMS_REMEMBERED)
def resources_to_proto(resources: Resources) -> gossip_pb2.ResourceRequirements:
    return gossip_pb2.ResourceRequirements(
        cpu_cores=resources.cpu_cores, memory_mb=resources.memory_mb, gpu_memory_mb=resources.gpu_memory_mb
    )


def resources_from_proto(message: gossip_pb2.ResourceRequirements) -> Resources:
    return _remembered(_RESOURCES, message, _resources_from_proto)


def _resources_from_proto(message: gossip_pb2.ResourceRequirements) -> Resources:
    return Resources(message.cpu_cores, message.memory_mb, message.gpu_memory_mb)


V = TypeVar("V")
_CONSTRAINTS: dict[bytes, ModelConstraints] = {}
_RESOURCES: dict[bytes, Resources] = {}
_SPECS: dict[bytes, TensorSpec] = {}


def _remembered(memory: dict[bytes, V], message: Message, convert: Callable[[Any], V]) -> V:
    """``convert(message)``, remembered by the message's bytes (emptied when full: a peer that
    sends ever new terms costs a conversion each, as without the memory)."""
    key = message.SerializeToString()
    value = memory.get(key)
    if value is None:
        if len(memory) >= _TERMS_REMEMBERED:
            memory.clear()
        value = memory[key] = convert(message)
    return value
