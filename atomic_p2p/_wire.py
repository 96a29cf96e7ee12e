"""Translation between generated protobuf types and domain types (the transport's edge).

Only transport modules (servers, stubs) import this or ``atomic_p2p._proto``; the pure cores
deal in :class:`~atomic_p2p.identity.Envelope` and :class:`~atomic_p2p.tensors.WireTensor`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from atomic_p2p._proto.atomic.v1 import envelope_pb2, gossip_pb2, tensor_pb2
from atomic_p2p.errors import ProtocolError, TensorError
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.tensors import DTYPES, WireTensor
from atomic_p2p.terms import ModelConstraints, Resources

_DTYPE_TO_ENUM = {name: tensor_pb2.DType.Value(f"D_TYPE_{name.upper()}") for name in DTYPES}
_ENUM_TO_DTYPE = {value: name for name, value in _DTYPE_TO_ENUM.items()}

M = TypeVar("M", bound=Message)


def envelope_from_proto(message: envelope_pb2.SignedEnvelope) -> Envelope:
    return Envelope(message.public_key, message.payload_type, message.payload, message.signature)


def envelope_to_proto(envelope: Envelope) -> envelope_pb2.SignedEnvelope:
    return envelope_pb2.SignedEnvelope(
        public_key=envelope.public_key,
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signature=envelope.signature,
    )


def payload_type(message_class: type[Message]) -> str:
    return str(message_class.DESCRIPTOR.full_name)


def sign_message(identity: Identity, message: Message) -> Envelope:
    """Serialize ``message`` once and sign those bytes; returns the domain Envelope."""
    return identity.sign(payload_type(type(message)), message.SerializeToString())


def parse(message_class: type[M], data: bytes, what: str) -> M:
    """Parse bytes that already passed signature checks; malformed bytes -> ProtocolError."""
    message = message_class()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"malformed {what}: {exc}") from exc
    return message


def tensor_from_proto(message: tensor_pb2.Tensor) -> WireTensor:
    dtype = _ENUM_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(
            f"tensor {message.name or '(unnamed)'} has dtype {message.dtype}, which is not accepted; "
            f"use one of {sorted(DTYPES)}"
        )
    return WireTensor(message.name, dtype, tuple(message.shape), message.data)


def tensor_to_proto(wire: WireTensor) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(
        name=wire.name, dtype=_DTYPE_TO_ENUM[wire.dtype], shape=list(wire.shape), data=wire.data
    )


def tensors_from_proto(messages: Iterable[tensor_pb2.Tensor]) -> list[WireTensor]:
    return [tensor_from_proto(m) for m in messages]


def tensors_to_proto(wires: Iterable[WireTensor]) -> list[tensor_pb2.Tensor]:
    return [tensor_to_proto(w) for w in wires]


def spec_from_proto(message: tensor_pb2.TensorSpec) -> tuple[str, str, tuple[int, ...]]:
    dtype = _ENUM_TO_DTYPE.get(message.dtype)
    if dtype is None:
        raise TensorError(f"input spec {message.name or '(unnamed)'} has an unaccepted dtype {message.dtype}")
    return message.name, dtype, tuple(message.shape)


def spec_to_proto(name: str, dtype: str, shape: Iterable[int]) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(name=name, dtype=_DTYPE_TO_ENUM[dtype], shape=list(shape))


# A model's terms travel in gossip adverts and in bids as the same two messages.


def constraints_to_proto(constraints: ModelConstraints) -> gossip_pb2.ModelConstraints:
    return gossip_pb2.ModelConstraints(
        max_input_tokens=constraints.max_input_tokens,
        supported_languages=constraints.supported_languages,
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
