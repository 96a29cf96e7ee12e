"""Tensor <-> wire codec: dtype + shape + raw little-endian bytes, with limits.

A :class:`WireTensor` is what travels: a dtype name from a fixed whitelist, a shape and the
elements as C-order little-endian bytes. Decoding validates everything a hostile sender controls
(dtype, rank, element count, byte length) before a tensor exists, so a bad tensor costs the node
a status code and nothing else.

Copies: encoding makes exactly one (tensor storage -> the ``bytes`` protobuf needs); decoding makes
exactly one (the immutable ``bytes`` protobuf hands us -> writable tensor storage; a model must
never write through to a message buffer).
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from atomic_p2p.errors import LimitExceededError, TensorError, TextError, shown
from atomic_p2p.frozen import quick_init

# Wire name -> torch dtype. The names match the DType enum in protos/atomic/v1/tensor.proto.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
# numpy reads little-endian wire bytes in about half torch.frombuffer's time (bool and bfloat16 stay
# with torch: numpy has no bfloat16, and a bool byte other than 0/1 must read as torch reads it).
_NUMPY_DTYPES: dict[str, np.dtype] = (
    {name: np.dtype(name) for name in DTYPES if name not in ("bfloat16", "bool")}
    if sys.byteorder == "little"
    else {}
)


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """What a node accepts in one tensor (documented in docs/protocol.md)."""

    max_elements: int = 16 * 1024 * 1024
    max_bytes: int = 64 * 1024 * 1024
    max_rank: int = 8
    dtypes: frozenset[str] = frozenset(DTYPES)


DEFAULT_LIMITS = TensorLimits()


@dataclass(frozen=True, slots=True)
class TextLimits:
    """What a node accepts in the texts of one task (documented in docs/protocol.md)."""

    max_texts: int = 1024
    max_text_bytes: int = 1024 * 1024
    max_total_bytes: int = 16 * 1024 * 1024


DEFAULT_TEXT_LIMITS = TextLimits()
# Marks the start of the texts in a digest: no tensor name is 2**32 - 1 bytes long, so a digest with
# texts can never equal one of tensors alone.
TEXTS_MARKER = 0xFFFFFFFF


@quick_init
@dataclass(frozen=True, slots=True)
class WireTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview  # a writable memoryview: a reassembled stream, which decode
    # takes over; a read-only one: an output a peer streams straight from the tensor's memory
    # (encode(copy=False))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


_ITEMSIZE = {name: itemsize(name) for name in DTYPES}


def check_spec(dtype: str, shape: Sequence[int], limits: TensorLimits = DEFAULT_LIMITS) -> int:
    """Validate a dtype and shape against limits; return the expected byte length."""
    if dtype not in limits.dtypes:
        raise TensorError(f"dtype {dtype or '(unset)'} is not accepted; use one of {sorted(limits.dtypes)}")
    if len(shape) > limits.max_rank:
        raise TensorError(f"rank {len(shape)} exceeds the limit of {limits.max_rank}")
    if any(dim < 0 for dim in shape):
        raise TensorError(f"negative dimension in shape {list(shape)[: limits.max_rank]}")
    numel = math.prod(shape)
    # A shape such as [0, 2**62, 2**62] holds no element, yet torch overflows computing its strides:
    # every dimension of an empty tensor must fit the element limit too (not a size: malformed).
    if numel == 0 and any(dim > limits.max_elements for dim in shape):
        raise TensorError(
            f"empty shape {list(shape)} has a dimension over the limit of {limits.max_elements} elements"
        )
    if numel > limits.max_elements:
        raise LimitExceededError(f"{numel} elements exceed the limit of {limits.max_elements}")
    nbytes = numel * _ITEMSIZE[dtype]
    if nbytes > limits.max_bytes:
        raise LimitExceededError(f"{nbytes} bytes exceed the limit of {limits.max_bytes}")
    return nbytes


def encode(tensor: torch.Tensor, name: str = "", *, copy: bool = True) -> WireTensor:
    """Torch tensor -> wire form (moves it to the CPU if needed); ``copy=False``: the data is a
    read-only view of the tensor's memory, not a copy (for ExecuteStream, which slices it)."""
    if tensor.dtype not in NAMES:
        raise TensorError(f"dtype {tensor.dtype} cannot travel; convert to one of {sorted(DTYPES)}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not flat.numel():  # an empty tensor may keep a stride of 0, which no byte view takes
        return WireTensor(name, NAMES[tensor.dtype], tuple(tensor.shape), b"")
    raw = flat.view(torch.uint8).numpy()
    if sys.byteorder == "big" and flat.element_size() > 1:
        raw = flat.numpy().byteswap().view("u1")
    data = raw.tobytes() if copy else raw.data.toreadonly()
    return WireTensor(name, NAMES[tensor.dtype], tuple(tensor.shape), data)


def decode(wire: WireTensor, limits: TensorLimits = DEFAULT_LIMITS, *, finite: bool = False) -> torch.Tensor:
    """Wire form -> torch tensor, validated against ``limits`` before anything is allocated;
    ``finite``: a float tensor holding NaN or infinity is refused (TensorError), checked on the
    data before it becomes a tensor.

    Data held in a ``bytearray`` or a writable ``memoryview`` is not copied: the tensor shares
    that memory."""
    expected = check_spec(wire.dtype, wire.shape, limits)
    if len(wire.data) != expected:
        raise TensorError(
            f"tensor {wire.name[:64] or '(unnamed)'}: {len(wire.data)} bytes for {wire.dtype}{list(wire.shape)}, "
            f"expected {expected}"
        )
    dtype = DTYPES[wire.dtype]
    if expected == 0:
        return torch.empty(wire.shape, dtype=dtype)
    # Writable memory (a reassembled stream's) becomes the tensor's; anything read-only is copied.
    data = wire.data
    if not isinstance(data, bytearray) and (not isinstance(data, memoryview) or data.readonly):
        data = bytearray(data)
    numpy_dtype = _NUMPY_DTYPES.get(wire.dtype)
    if numpy_dtype is not None:
        array = np.frombuffer(data, dtype=numpy_dtype).reshape(wire.shape)
        if finite and numpy_dtype.kind == "f" and not np.isfinite(array).all():
            raise _not_finite(wire.name)
        return torch.from_numpy(array)
    flat = torch.frombuffer(data, dtype=torch.uint8).view(dtype)
    if sys.byteorder == "big" and flat.element_size() > 1:
        flat = torch.from_numpy(flat.numpy().byteswap())
    tensor = flat.reshape(wire.shape)
    if finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise _not_finite(wire.name)
    return tensor


def decode_many(
    wires: Sequence[WireTensor], limits: TensorLimits = DEFAULT_LIMITS, *, finite: bool = False
) -> list[torch.Tensor]:
    """:func:`decode` of each wire tensor, with the same checks and the same error (for the first
    bad one), for many small ones at once (the previews of a call for bids: up to 64 of a few KB).

    Every wire's dtype, shape and byte length is checked first. The ones numpy reads are then
    copied once, into one buffer per dtype, and ``finite`` is checked once over each buffer;
    each tensor is a view of its rows there. One copy and one check instead of one per tensor
    is about half of what decoding a 2 KB preview costs (docs/architecture.md section 11).
    Any refusal is raised by decoding the wires one by one, so it names what :func:`decode`
    in a loop would have named."""
    if len(wires) == 1:  # nothing to share (a call of one task): decode checks it once
        return [decode(wires[0], limits, finite=finite)]
    try:
        return _decode_many(wires, limits, finite)
    except TensorError:
        for wire in wires:
            decode(wire, limits, finite=finite)  # raises for the first bad one
        raise


def _decode_many(wires: Sequence[WireTensor], limits: TensorLimits, finite: bool) -> list[torch.Tensor]:
    out: list[torch.Tensor | None] = [None] * len(wires)
    groups: dict[str, list[int]] = {}
    alone = []
    for index, wire in enumerate(wires):
        expected = check_spec(wire.dtype, wire.shape, limits)
        if len(wire.data) != expected:
            raise TensorError("a wire tensor's byte length does not match its shape")
        if expected and wire.dtype in _NUMPY_DTYPES:
            groups.setdefault(wire.dtype, []).append(index)
        else:
            alone.append(index)
    for name, members in groups.items():
        if len(members) == 1:
            alone += members
            continue
        numpy_dtype = _NUMPY_DTYPES[name]
        whole = np.frombuffer(bytearray().join([wires[index].data for index in members]), dtype=numpy_dtype)
        if finite and numpy_dtype.kind == "f" and not np.isfinite(whole).all():
            raise TensorError("a wire tensor holds NaN or infinite values")
        shape = wires[members[0]].shape
        if all(wires[index].shape == shape for index in members):  # the usual call: one shape
            rows = torch.from_numpy(whole.reshape(len(members), *shape)).unbind(0)
            for index, tensor in zip(members, rows, strict=True):
                out[index] = tensor
            continue
        start = 0
        for index in members:
            wire = wires[index]
            end = start + len(wire.data) // numpy_dtype.itemsize
            out[index] = torch.from_numpy(whole[start:end].reshape(wire.shape))
            start = end
    for index in alone:
        out[index] = decode(wires[index], limits, finite=finite)
    return cast(list[torch.Tensor], out)


def _not_finite(name: str) -> TensorError:
    return TensorError(f"tensor {shown(name)} holds NaN or infinite values")


def check_texts(texts: Sequence[bytes], limits: TextLimits = DEFAULT_TEXT_LIMITS) -> None:
    """Check the count and byte lengths of wire texts against ``limits`` (LimitExceededError)."""
    if len(texts) > limits.max_texts:
        raise LimitExceededError(f"{len(texts)} texts exceed the limit of {limits.max_texts}")
    total = 0
    for index, raw in enumerate(texts):
        if len(raw) > limits.max_text_bytes:
            raise LimitExceededError(
                f"text {index}: {len(raw)} bytes exceed the limit of {limits.max_text_bytes} per text"
            )
        total += len(raw)
    if total > limits.max_total_bytes:
        raise LimitExceededError(
            f"texts: {total} bytes exceed the limit of {limits.max_total_bytes} per task"
        )


def decode_texts(texts: Sequence[bytes], limits: TextLimits = DEFAULT_TEXT_LIMITS) -> tuple[str, ...]:
    """Wire texts -> strings, after the limits; TextError (INVALID_ARGUMENT) names a non-UTF-8 text."""
    check_texts(texts, limits)
    decoded = []
    for index, raw in enumerate(texts):
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TextError(f"text {index} is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    return tuple(decoded)


def encode_texts(texts: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(text.encode("utf-8") for text in texts)


def digest_header(name: str, dtype: str, shape: Sequence[int], nbytes: int) -> bytes:
    """What :func:`digest` hashes for one tensor before its ``nbytes`` of data."""
    raw_name, raw_dtype = name.encode(), dtype.encode()
    return (
        struct.pack(">I", len(raw_name))
        + raw_name
        + struct.pack(">I", len(raw_dtype))
        + raw_dtype
        + struct.pack(f">I{len(shape)}Q", len(shape), *shape)
        + struct.pack(">Q", nbytes)
    )


def digest(tensors: Iterable[WireTensor], texts: Sequence[bytes] = ()) -> bytes:
    """sha256 over every tensor's name, dtype, shape and bytes, in order, then the texts (docs/protocol.md).

    Per tensor: u32(len(name)) name u32(len(dtype)) dtype u32(rank) u64(dim)... u64(len(data)) data.
    Texts, only when there are any: u32(0xFFFFFFFF) u32(count), then per text u64(len(text)) text
    (UTF-8 bytes as sent); without texts the digest is that of the tensors alone.
    """
    hasher = hashlib.sha256()
    for wire in tensors:
        hasher.update(digest_header(wire.name, wire.dtype, wire.shape, len(wire.data)))
        hasher.update(wire.data)
    if texts:
        hasher.update(struct.pack(">II", TEXTS_MARKER, len(texts)))
        for raw in texts:
            hasher.update(struct.pack(">Q", len(raw)))
            hasher.update(raw)
    return hasher.digest()
