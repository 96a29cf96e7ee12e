"""Model factories with declared contracts, for tests of the model I/O contract.

Loaded by peer configs as ``tests/integration/contract_models.py:<function>``; no training, no cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract
from atomic_p2p.peer.models import BuiltModel


class SumDiff(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"diff": a - b, "sum": a + b}  # by name: the order here does not matter


def pair(cache_dir: Path) -> BuiltModel:
    """``a: float32[B, 4], b: float32[B, 4] -> sum: float32[B, 4], diff: float32[B, 4]``."""
    four = (Dim.fixed(4),)
    return BuiltModel(
        SumDiff(),
        contract=ModelContract(
            TaskKind.REGRESSION,
            (TensorContract("a", "float32", four), TensorContract("b", "float32", four)),
            (TensorContract("sum", "float32", four), TensorContract("diff", "float32", four)),
        ),
        validation_accuracy=None,
    )


class MeanEmbedding(torch.nn.Module):
    def __init__(self, vocabulary: int = 100, width: int = 8) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(vocabulary, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).mean(dim=1)


def tokens(cache_dir: Path, longest: int = 32) -> BuiltModel:
    """``ids: int64[B, 1..longest] -> embedding: float32[B, 8]``: a variable-length token model."""
    torch.manual_seed(0)
    return BuiltModel(
        MeanEmbedding(),
        contract=ModelContract(
            TaskKind.EMBEDDING,
            (TensorContract("ids", "int64", (Dim(1, longest),)),),
            (TensorContract("embedding", "float32", (Dim.fixed(8),)),),
        ),
        validation_accuracy=None,
    )


class Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x + 1.0


def affine(cache_dir: Path) -> BuiltModel:
    """``x: float32[B, 3] -> y: float32[B, 3]``, ``y = 2x + 1``: a one-input regression model."""
    three = (Dim.fixed(3),)
    return BuiltModel(
        Affine(),
        contract=ModelContract(
            TaskKind.REGRESSION,
            (TensorContract("x", "float32", three),),
            (TensorContract("y", "float32", three),),
        ),
        validation_accuracy=None,
    )
