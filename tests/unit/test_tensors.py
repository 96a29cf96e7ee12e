"""The tensor codec: round trips, limits, and hostile input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p import tensors
from atomic_p2p.errors import LimitExceededError, TensorError
from atomic_p2p.tensors import TensorLimits, WireTensor

ALL = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
]


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_roundtrip_every_dtype(dtype: torch.dtype) -> None:
    source = (torch.randn(3, 5, 2) * 7).to(dtype)
    wire = tensors.encode(source, "x")
    assert wire.dtype == tensors.NAMES[dtype]
    assert wire.shape == (3, 5, 2)
    assert len(wire.data) == source.numel() * source.element_size()
    decoded = tensors.decode(wire)
    assert decoded.dtype == dtype
    assert torch.equal(decoded, source)


def test_bytes_are_little_endian_c_order() -> None:
    wire = tensors.encode(torch.tensor([[1, 2], [3, 256]], dtype=torch.int32))
    assert wire.data == bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 1, 0, 0])


def test_non_contiguous_and_scalar_and_empty() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert torch.equal(tensors.decode(tensors.encode(base.t())), base.t())
    assert torch.equal(tensors.decode(tensors.encode(torch.tensor(3.5))), torch.tensor(3.5))
    empty = tensors.decode(tensors.encode(torch.empty(0, 4)))
    assert empty.shape == (0, 4)


def test_decoded_tensor_is_writable_and_detached_from_wire() -> None:
    wire = tensors.encode(torch.zeros(4))
    decoded = tensors.decode(wire)
    decoded += 1  # must not raise, must not touch the message bytes
    assert wire.data == bytes(16)


@pytest.mark.parametrize(
    ("wire", "error", "match"),
    [
        (WireTensor("x", "complex64", (2,), bytes(16)), TensorError, "not accepted"),
        (WireTensor("x", "", (2,), bytes(8)), TensorError, "not accepted"),
        (WireTensor("x", "float32", (2,), bytes(7)), TensorError, "expected 8"),
        (WireTensor("x", "float32", (2, -1), b""), TensorError, "negative"),
        (WireTensor("x", "float32", (1,) * 9, bytes(4)), TensorError, "rank"),
        (WireTensor("x", "float32", (2**40,), b""), LimitExceededError, "elements"),
    ],
    ids=["dtype", "unset-dtype", "length", "negative", "rank", "elements"],
)
def test_hostile_specs_are_rejected_before_allocation(wire: WireTensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        tensors.decode(wire)


def test_byte_limit_and_dtype_whitelist_are_configurable() -> None:
    limits = TensorLimits(max_bytes=16, dtypes=frozenset({"float32"}))
    with pytest.raises(LimitExceededError, match="bytes"):
        tensors.decode(tensors.encode(torch.zeros(5)), limits)
    with pytest.raises(TensorError):
        tensors.decode(tensors.encode(torch.zeros(2, dtype=torch.int64)), limits)
    assert tensors.decode(tensors.encode(torch.zeros(4)), limits).numel() == 4


def test_unsupported_torch_dtype_cannot_be_encoded() -> None:
    with pytest.raises(TensorError, match="cannot travel"):
        tensors.encode(torch.zeros(2, dtype=torch.complex64))


def test_digest_binds_name_dtype_shape_and_bytes() -> None:
    base = tensors.encode(torch.zeros(2, 2), "x")
    variants = [
        WireTensor("y", base.dtype, base.shape, base.data),
        WireTensor("x", "int32", base.shape, base.data),
        WireTensor("x", base.dtype, (4,), base.data),
        WireTensor("x", base.dtype, base.shape, bytes(15) + b"\x01"),
    ]
    digests = {tensors.digest([base])} | {tensors.digest([v]) for v in variants}
    assert len(digests) == 5
    assert tensors.digest([base, base]) != tensors.digest([base])
    assert len(tensors.digest([])) == 32


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), max_size=4),
    dtype=st.sampled_from(ALL),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_property(shape: list[int], dtype: torch.dtype, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    source = (
        (torch.randn(*shape, generator=generator) * 100).to(dtype) if shape else torch.tensor(1).to(dtype)
    )
    decoded = tensors.decode(tensors.encode(source))
    assert decoded.shape == source.shape and decoded.dtype == source.dtype
    assert torch.equal(decoded, source) or math.prod(shape) == 0
