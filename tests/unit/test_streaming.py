"""Streamed output cut into slices and put back together: what a receiver accepts and refuses."""

from __future__ import annotations

import dataclasses

import pytest

from atomic_p2p.errors import LimitExceededError, ProtocolError, TensorError
from atomic_p2p.protocol.messages import TensorSlice
from atomic_p2p.protocol.streaming import Reassembly, slice_outputs, tokens_tensor
from atomic_p2p.tensors import TensorLimits, WireTensor, digest

BIG = WireTensor("y", "float32", (3, 5), bytes(range(60)))
SMALL = WireTensor("z", "int64", (2,), b"\x01" * 16)


def reassemble(pieces: list[TensorSlice]) -> tuple[WireTensor, ...]:
    reassembly = Reassembly()
    for piece in pieces:
        reassembly.add(piece)
    return reassembly.tensors()


def test_slices_put_back_together_give_the_same_tensors_and_digest() -> None:
    pieces = list(slice_outputs([BIG, SMALL], slice_bytes=16))
    assert [piece.offset for piece in pieces] == [0, 16, 32, 48, 0]
    assert max(len(piece.data) for piece in pieces) == 16
    tensors = reassemble(pieces)
    assert tensors == (BIG, SMALL) and digest(tensors) == digest([BIG, SMALL])


def test_an_empty_tensor_travels_as_one_empty_slice() -> None:
    empty = WireTensor("e", "float32", (0, 4), b"")
    assert reassemble(list(slice_outputs([empty]))) == (empty,)


def test_a_gap_a_repeat_an_overflow_or_a_short_tensor_is_refused() -> None:
    first, second, *_ = slice_outputs([BIG], slice_bytes=16)
    with pytest.raises(ProtocolError, match="expected 16"):
        reassemble([first, dataclasses.replace(second, offset=20)])
    with pytest.raises(ProtocolError, match="starts at 16"):
        reassemble([second])
    with pytest.raises(ProtocolError, match="ended after 16 of 60"):
        reassemble([first])
    with pytest.raises(ProtocolError, match="more data"):
        reassemble([first, dataclasses.replace(second, data=b"\x00" * 60)])
    with pytest.raises(ProtocolError, match="twice"):
        reassemble(list(slice_outputs([SMALL, BIG, SMALL])))


def test_shapes_and_sizes_are_held_to_the_limits() -> None:
    with pytest.raises(LimitExceededError):
        Reassembly(TensorLimits(max_bytes=32)).add(next(slice_outputs([BIG])))
    with pytest.raises(TensorError):
        Reassembly().add(dataclasses.replace(next(slice_outputs([BIG])), shape=(-1, 5)))
    reassembly = Reassembly(max_bytes=70)
    reassembly.add(next(slice_outputs([BIG])))
    with pytest.raises(LimitExceededError, match="over 70 bytes"):
        reassembly.add(next(slice_outputs([SMALL])))


def test_the_tokens_digest_covers_int64_little_endian_ids() -> None:
    wire = tokens_tensor([1, -2, 2**40])
    assert (wire.name, wire.dtype, wire.shape) == ("tokens", "int64", (3,))
    assert wire.data[:8] == (1).to_bytes(8, "little") and len(wire.data) == 24
