"""A model factory for pipeline tests: a softmax over 10 logits (capability ``calibrate/softmax``).

Loaded by peer configs as ``tests/integration/stage_models.py:softmax``; no training, no cache.
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
