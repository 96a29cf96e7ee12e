"""``decode(..., finite=True)``: a tensor with any NaN or infinity is refused, every other tensor
passes, whatever its dtype; without ``finite`` nothing is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p.errors import TensorError
from atomic_p2p.tensors import WireTensor, decode, decode_many, encode

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def refused(tensor: torch.Tensor, name: str = "x") -> bool:
    try:
        decoded = decode(encode(tensor, name), finite=True)
    except TensorError:
        return True
    assert torch.equal(decoded, tensor)
    return False


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(FLOATS),
    size=st.integers(0, 40),
    scale=st.sampled_from([1.0, 1e4, 6e4, 3e38, 1e308]),
    bad=st.lists(st.tuples(st.integers(0, 39), st.sampled_from([np.nan, np.inf, -np.inf])), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_refused_exactly_when_an_element_is_nan_or_infinite(
    dtype: torch.dtype, size: int, scale: float, bad: list[tuple[int, float]], seed: int
) -> None:
    values = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, size) * scale).to(dtype)
    for index, value in bad:
        if index < size:
            values[index] = value
    # Large finite values may round to infinity in a narrow dtype: the truth is the tensor as made.
    assert refused(values) == (not bool(torch.isfinite(values).all()))


def test_an_empty_tensor_of_any_stride_encodes_and_decodes() -> None:
    odd = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, 0)).to(torch.float16)  # stride 0
    assert decode(encode(odd, "x"), finite=True).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_largest_finite_values_pass(dtype: torch.dtype) -> None:
    largest = torch.finfo(dtype).max
    assert not refused(torch.full((64,), largest, dtype=dtype))
    assert not refused(torch.tensor([largest, -largest, largest], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_and_bool_tensors_pass(dtype: torch.dtype) -> None:
    assert not refused(torch.ones(3, dtype=dtype))


def test_without_finite_nothing_is_checked_and_the_refusal_names_the_tensor_within_bounds() -> None:
    wire = encode(torch.tensor([1.0, float("nan")]), "pixels" * 100)
    assert torch.isnan(decode(wire)).any()
    with pytest.raises(TensorError, match="holds NaN or infinite values") as caught:
        decode(wire, finite=True)
    assert len(str(caught.value)) < 200


ALL_DTYPES = [*FLOATS, torch.int64, torch.int32, torch.uint8, torch.bool]


def decoded_alone(wires: list, finite: bool) -> list[torch.Tensor] | str:
    try:
        return [decode(wire, finite=finite) for wire in wires]
    except TensorError as error:
        return str(error)


@settings(max_examples=150, deadline=None)
@given(
    tensors=st.lists(
        st.tuples(
            st.sampled_from(ALL_DTYPES),
            st.lists(st.integers(0, 4), min_size=1, max_size=3),
            st.sampled_from([None, np.nan, np.inf]),
        ),
        max_size=6,
    ),
    finite=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_decode_many_gives_what_decode_gives_tensor_by_tensor(
    tensors: list[tuple[torch.dtype, list[int], float | None]], finite: bool, seed: int
) -> None:
    """Same values, dtypes and shapes; refused exactly when decode refuses one of them, with
    decode's error for the first bad one."""
    rng = np.random.default_rng(seed)
    wires = []
    for index, (dtype, shape, bad) in enumerate(tensors):
        values = torch.from_numpy(rng.uniform(-4, 4, shape)).to(dtype)
        if bad is not None and values.numel() and values.is_floating_point():
            values.view(-1)[0] = bad
        wires.append(encode(values, f"t{index}"))
    alone = decoded_alone(wires, finite)
    try:
        together: list[torch.Tensor] | str = decode_many(wires, finite=finite)
    except TensorError as error:
        together = str(error)
    if isinstance(alone, str):
        assert together == alone  # the same error: the first bad tensor's
        return
    assert isinstance(together, list) and len(together) == len(alone)
    for mine, theirs in zip(together, alone, strict=True):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert torch.equal(mine, theirs) or bool(torch.isnan(theirs).any())


def test_decode_many_refuses_a_bad_length_and_names_the_tensor_with_nan() -> None:
    good = encode(torch.ones(2, 3), "good")
    nan = encode(torch.tensor([[1.0, float("nan"), 2.0]]), "poisoned")
    with pytest.raises(TensorError, match="poisoned"):
        decode_many([good, nan, good], finite=True)
    assert len(decode_many([good, nan, good])) == 3  # not asked to check
    short = WireTensor("short", "float32", (2, 3), good.data[:-4])
    with pytest.raises(TensorError, match="short: 20 bytes"):
        decode_many([good, short])


def test_decode_many_tensors_do_not_share_memory_with_the_wire() -> None:
    wires = [encode(torch.zeros(2, 2), "a"), encode(torch.ones(2, 2), "b")]
    first, second = decode_many(wires)
    first += 5  # writable, and only its own rows
    assert torch.equal(second, torch.ones(2, 2)) and torch.equal(decode(wires[0]), torch.zeros(2, 2))
