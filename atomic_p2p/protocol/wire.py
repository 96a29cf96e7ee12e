"""Envelopes, tensors, tensor specs and contracts, and a model's terms <-> their protobuf messages: the wire types
that the market codec (:mod:`.codec`), the gossip codec and the transports share, mapped in one
place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from atomic_p2p._proto.atomic.v1 import envelope_pb2, gossip_pb2, tensor_pb2
from atomic_p2p.contract import Dim, TensorContract
from atomic_p2p.errors import ProtocolError, TensorError
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


def envelope_from_proto(message: envelope_pb2.SignedEnvelope) -> Envelope:
    batch = None
    if message.HasField("batch"):
        proof = message.batch
        batch = BatchProof(proof.leaf_count, proof.leaf_index, tuple(proof.path))
    return Envelope(message.public_key, message.payload_type, message.payload, message.signature, batch)


def envelope_to_proto(envelope: Envelope) -> envelope_pb2.SignedEnvelope:
    proof = envelope.batch
    return envelope_pb2.SignedEnvelope(
        public_key=envelope.public_key,
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signature=envelope.signature,
        batch=None
        if proof is None
        else envelope_pb2.BatchProof(
            leaf_count=proof.leaf_count, leaf_index=proof.leaf_index, path=list(proof.path)
        ),
    )


def tensor_from_proto(message: tensor_pb2.Tensor) -> WireTensor:
    dtype = WIRE_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(
            f"tensor {message.name or '(unnamed)'} has dtype {message.dtype}, which is not accepted; "
            f"use one of {sorted(DTYPES)}"
        )
    return WireTensor(message.name, dtype, tuple(message.shape), message.data)


def tensor_to_proto(wire: WireTensor) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(
        name=wire.name,
        dtype=DTYPE_TO_WIRE[wire.dtype],
        shape=list(wire.shape),
        data=bytes(wire.data),  # a copy only for a bytearray
    )


def tensors_from_proto(messages: Iterable[tensor_pb2.Tensor]) -> tuple[WireTensor, ...]:
    return tuple(tensor_from_proto(m) for m in messages)


def spec_from_proto(message: tensor_pb2.TensorSpec) -> TensorSpec:
    dtype = WIRE_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(f"input spec {message.name or '(unnamed)'} has an unaccepted dtype {message.dtype}")
    return TensorSpec(message.name, dtype, tuple(message.shape))


def spec_to_proto(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(name=spec.name, dtype=DTYPE_TO_WIRE[spec.dtype], shape=list(spec.shape))


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


# A model's terms travel in gossip adverts and in bids as the same two messages.


def constraints_to_proto(constraints: ModelConstraints) -> gossip_pb2.ModelConstraints:
    return gossip_pb2.ModelConstraints(
        max_input_tokens=constraints.max_input_tokens,
        supported_languages=list(constraints.supported_languages),
        max_batch=constraints.max_batch,
    )


def constraints_from_proto(message: gossip_pb2.ModelConstraints) -> ModelConstraints:
    return ModelConstraints(
        max_input_tokens=message.max_input_tokens,
        supported_languages=tuple(message.supported_languages),
        max_batch=message.max_batch,
    )


def resources_to_proto(resources: Resources) -> gossip_pb2.ResourceRequirements:
    return gossip_pb2.ResourceRequirements(
        cpu_cores=resources.cpu_cores, memory_mb=resources.memory_mb, gpu_memory_mb=resources.gpu_memory_mb
    )


def resources_from_proto(message: gossip_pb2.ResourceRequirements) -> Resources:
    return Resources(message.cpu_cores, message.memory_mb, message.gpu_memory_mb)
