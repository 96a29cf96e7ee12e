"""Model factories for tests: a softmax over 10 logits (capability ``calibrate/softmax``), and
``repeat`` (an output of 4 MiB per example).

Loaded by peer configs as ``tests/integration/stage_models.py:<name>``; no training, no cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from atomic_p2p.peer.models import BuiltModel


def softmax(cache_dir: Path) -> BuiltModel:
    return BuiltModel(
        module=torch.nn.Softmax(dim=-1),
        input_shape=(10,),
        validation_accuracy=0.99,
        input_name="x",
        output_name="probs",
    )


class _Repeat(torch.nn.Module):
    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.times)


def repeat(cache_dir: Path, *, features: int = 64, times: int = 16384) -> BuiltModel:
    """``x: float32[B, features]`` repeated ``times`` along the row: 4 MiB per example by default,
    an output larger than one small gRPC message (streamed output tests)."""
    return BuiltModel(
        module=_Repeat(times), input_shape=(features,), validation_accuracy=0.9, output_name="y"
    )
