"""The model I/O contract: what fits, what does not and why, and hosted models built on it."""

from __future__ import annotations

import pytest
import torch

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract, single_input
from atomic_p2p.errors import ConfigError, ExecutionError, TensorError
from atomic_p2p.peer.config import ModelConfig
from atomic_p2p.peer.models import BuiltModel, HostedModel
from atomic_p2p.protocol.messages import TensorSpec

TWO = ModelContract(
    TaskKind.REGRESSION,
    (TensorContract("a", "float32", (Dim.fixed(4),)), TensorContract("b", "float32", (Dim.fixed(4),))),
    (TensorContract("sum", "float32", (Dim.fixed(4),)),),
)
TOKENS = ModelContract(TaskKind.EMBEDDING, (TensorContract("ids", "int64", (Dim(1, 32),)),))


def spec(name: str, shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, shape)


@pytest.mark.parametrize(
    ("contract", "specs", "problem"),
    [
        (TWO, [spec("a", (2, 4))], "missing ['b']"),
        (TWO, [spec("a", (2, 4)), spec("b", (2, 4)), spec("c", (2, 4))], "unexpected ['c']"),
        (TWO, [spec("a", (2, 4)), spec("c", (2, 4))], "named 'b', got 'c' instead"),
        (TWO, [spec("a", (2, 4)), spec("a", (2, 4))], "names repeat"),
        (
            TWO,
            [spec("a", (2, 4)), spec("b", (2, 4), "int64")],
            "input 'b' is float32[B, 4], got dtype int64",
        ),
        (TWO, [spec("a", (2, 4)), spec("b", (2, 5))], "got 5 in dimension 1"),
        (TWO, [spec("a", (2, 4)), spec("b", (2, 4, 1))], "got shape [2, 4, 1]"),
        (TWO, [spec("a", (2, 4)), spec("b", (3, 4))], "the same batch"),
        (TWO, [spec("a", (0, 4)), spec("b", (0, 4))], "at least one example"),
        (TOKENS, [spec("ids", (2, 0), "int64")], "got 0 in dimension 1"),
        (TOKENS, [spec("ids", (2, 33), "int64")], "got 33 in dimension 1"),
    ],
)
def test_what_does_not_fit_says_why(contract: ModelContract, specs: list[TensorSpec], problem: str) -> None:
    found = contract.problem(specs)
    assert found is not None and problem in found


def test_what_fits_has_no_problem() -> None:
    assert TWO.problem([spec("b", (2, 4)), spec("a", (2, 4))]) is None  # any order
    assert all(TOKENS.problem([spec("ids", (3, n), "int64")]) is None for n in (1, 17, 32))
    assert (
        TOKENS.problem([spec("ids", (300, 8), "int64")], max_batch=256) == "batch 300 exceeds max_batch 256"
    )


def test_contracts_describe_themselves_and_refuse_nonsense() -> None:
    digits = single_input("x", "float32", (64,), (TensorContract("logits", "float32", (Dim.fixed(10),)),))
    assert digits.describe(256) == "x: float32[B<=256, 64] -> logits: float32[B, 10]"
    assert TOKENS.describe() == "ids: int64[B, 1..32]"
    assert digits.kind.has_confidence and not TOKENS.kind.has_confidence
    with pytest.raises(ValueError, match="min <= max"):
        Dim(5, 2)
    with pytest.raises(ValueError, match="unique"):
        ModelContract(TaskKind.REGRESSION, (TensorContract("a", "float32", ()),) * 2)


def hosted(built: BuiltModel) -> HostedModel:
    config = ModelConfig("m", ("c",), "unused:factory", price_per_example=0.0)
    return HostedModel(config, built, torch.device("cpu"))


class Parts(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x[:, :3], "features": x * 2}


def test_a_model_without_a_contract_gets_one_and_its_outputs_are_named_from_warm_up() -> None:
    model = hosted(BuiltModel(Parts(), input_shape=(4,)))
    assert model.contract.describe() == "x: float32[B, 4] -> logits: float32[B, 3], features: float32[B, 4]"
    outputs = dict(model.forward({"x": torch.ones(2, 4)}))
    assert set(outputs) == {"logits", "features"} and outputs["features"].shape == (2, 4)
    assert model.preview_classes([torch.ones(2, 4)]) == [0, 0]  # a classifier's first output


class Both(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (a, b) if a.shape[0] == 5 else (a + b,)


def test_inputs_are_checked_at_execute_and_outputs_must_fit_the_contract() -> None:
    model = hosted(BuiltModel(Both(), contract=TWO))
    with pytest.raises(TensorError, match="missing"):
        model.check_inputs([("a", torch.zeros(2, 4))])
    assert set(model.check_inputs([("a", torch.zeros(2, 4)), ("b", torch.zeros(2, 4))])) == {"a", "b"}
    assert [name for name, _ in model.forward({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)})] == ["sum"]
    with pytest.raises(ExecutionError, match=r"tensors named \['sum'\]"):
        model.forward({"a": torch.zeros(5, 4), "b": torch.zeros(5, 4)})  # two outputs for one name


def test_a_model_that_breaks_its_declared_outputs_or_declares_a_dynamic_shape_badly_does_not_start() -> None:
    wide = ModelContract(
        TaskKind.REGRESSION, TWO.inputs, (TensorContract("sum", "float32", (Dim.fixed(5),)),)
    )
    with pytest.raises(
        ConfigError, match=r"broke its contract: 'sum' is float32\[B, 5\], got 4 in dimension 1"
    ):
        hosted(BuiltModel(Both(), contract=wide))
    with pytest.raises(ConfigError, match=r"input_shape \(-1,\).*Dim\(min, max\)"):
        hosted(BuiltModel(torch.nn.Identity(), input_shape=(-1,), input_dtype="int64"))


def test_a_model_that_cannot_warm_up_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"warm-up on zeros \(a\[8, 4\], b\[8, 4\]\): model m failed: TypeError"
    ):
        hosted(BuiltModel(torch.nn.Identity(), contract=TWO))
