"""A model's input/output contract: what it takes, what it returns, and what kind of task it does.

How this works
--------------
A :class:`ModelContract` names every input and output tensor of a model with its dtype and its
dimensions per example; the batch dimension is implicit, always first, the same for every input,
and bounded by the model's ``max_batch``. Each :class:`Dim` is fixed (``min == max``) or dynamic
within bounds (a token model's sequence length: ``Dim(1, 32)``). :meth:`ModelContract.problem`
checks the input specs of a task against the contract and says precisely what is wrong (a missing,
extra or misnamed input, a dtype, a dimension outside its bounds, batches that differ); the seller
screens tasks with it before bidding and checks inputs with it again at Execute, and a requester
leaves out gossip candidates whose advertised contract cannot take its inputs.

The same type travels in gossip (``ModelAdvert``), is shown by ``atomic peers``, and is what a
model factory may declare on its ``BuiltModel``; one written without one gets the contract of its
single ``input_name``/``input_shape``/``input_dtype`` and ``output_name``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class TaskKind(Enum):
    """What a model does, and so what a bid's confidence can mean (wire enum ``TaskKind``)."""

    CLASSIFICATION = "classification"  # confidence: max-softmax on a preview, or held-out accuracy
    EMBEDDING = "embedding"  # no confidence of its own
    REGRESSION = "regression"  # no confidence of its own
    GENERATION = "generation"  # no confidence of its own

    @property
    def has_confidence(self) -> bool:
        return self is TaskKind.CLASSIFICATION


@dataclass(frozen=True, slots=True)
class Dim:
    """One dimension per example: fixed (``min == max``) or any size in ``[min, max]``."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(f"a dimension needs 0 <= min <= max, got [{self.min}, {self.max}]")

    @classmethod
    def fixed(cls, size: int) -> Dim:
        return cls(size, size)

    @property
    def is_fixed(self) -> bool:
        return self.min == self.max

    def admits(self, size: int) -> bool:
        return self.min <= size <= self.max

    @property
    def representative(self) -> int:
        """A small size within bounds (what warm-up runs): the minimum, but at least one."""
        return min(self.max, max(self.min, 1))

    def __str__(self) -> str:
        return str(self.min) if self.is_fixed else f"{self.min}..{self.max}"


class Spec(Protocol):
    """A tensor's name, dtype and full shape (batch first), as a task announces it."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, slots=True)
class TensorContract:
    """One named tensor of a model: its dtype and its dimensions per example (batch left out)."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]

    def problem(self, dtype: str, shape: Sequence[int]) -> str | None:
        """Why a tensor of this dtype and full shape (batch first) does not fit; None if it does."""
        if dtype != self.dtype:
            return f"{self.name!r} is {self}, got dtype {dtype}"
        if len(shape) != 1 + len(self.dims):
            return f"{self.name!r} is {self}, got shape {list(shape)}"
        for axis, (size, dim) in enumerate(zip(shape[1:], self.dims, strict=True), start=1):
            if not dim.admits(size):
                return f"{self.name!r} is {self}, got {size} in dimension {axis} (shape {list(shape)})"
        return None

    def describe(self, max_batch: int = 0) -> str:
        batch = f"B<={max_batch}" if max_batch else "B"
        return f"{self.name}: {self.dtype}[{', '.join([batch, *map(str, self.dims)])}]"

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(['B', *map(str, self.dims)])}]"


@dataclass(frozen=True, slots=True)
class ModelContract:
    """What a model takes and returns, and its task kind; see the module docstring."""

    kind: TaskKind
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...] = ()

    def __post_init__(self) -> None:
        for side, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [tensor.name for tensor in tensors]
            if len(set(names)) != len(names) or not all(names):
                raise ValueError(f"{side} names must be unique and non-empty, got {names}")
        if not self.inputs:
            raise ValueError("a model takes at least one input")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.outputs)

    def problem(self, specs: Sequence[Spec], max_batch: int = 0) -> str | None:
        """Why these input specs do not fit (the first thing wrong); None if they all do."""
        given = [spec.name for spec in specs]
        if len(set(given)) != len(given):
            return f"input names repeat: {given}"
        missing = [name for name in self.input_names if name not in given]
        extra = [name for name in given if name not in self.input_names]
        if len(missing) == len(extra) == 1:
            return f"takes an input named {missing[0]!r}, got {extra[0]!r} instead"
        if missing or extra:
            return (
                f"takes inputs {list(self.input_names)}, got {given}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
            )
        contracts = {tensor.name: tensor for tensor in self.inputs}
        for spec in specs:
            problem = contracts[spec.name].problem(spec.dtype, spec.shape)
            if problem is not None:
                return f"input {problem}"
        return _batch_problem(specs, max_batch)

    def describe(self, max_batch: int = 0) -> str:
        """``x: float32[B<=256, 64] -> logits: float32[B, 10]`` (outputs left out if unknown)."""
        inputs = ", ".join(tensor.describe(max_batch) for tensor in self.inputs)
        outputs = ", ".join(tensor.describe() for tensor in self.outputs)
        return f"{inputs} -> {outputs}" if outputs else inputs


def _batch_problem(specs: Sequence[Spec], max_batch: int) -> str | None:
    batches = {spec.shape[0] for spec in specs}
    if len(batches) != 1:
        return f"every input needs the same batch (first dimension), got {sorted(batches)}"
    (batch,) = batches
    if batch < 1:
        return f"needs a batch of at least one example, got {batch}"
    if max_batch and batch > max_batch:
        return f"batch {batch} exceeds max_batch {max_batch}"
    return None


def single_input(
    name: str, dtype: str, shape: Sequence[int], outputs: Sequence[TensorContract] = ()
) -> ModelContract:
    """The contract of a classifier with one fixed-shape input (what a BuiltModel without one gets)."""
    return ModelContract(
        TaskKind.CLASSIFICATION,
        (TensorContract(name, dtype, tuple(Dim.fixed(size) for size in shape)),),
        tuple(outputs),
    )
