"""Real inputs for tests: scikit-learn's bundled 8x8 digits (no download), as the example peers see them."""

from __future__ import annotations

import functools

import torch


def digits_batch(batch: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` real digits images as float32 [B, 64] in [0, 1], and their labels."""
    x, y = _digits()
    return x[offset : offset + batch].clone(), y[offset : offset + batch].clone()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target, dtype=torch.int64)
