"""Shared pieces of the gradient-bidding reproductions (docs/architecture.md section 9).

Every experiment script imports this module for the digits data and its split, the batch stream,
the TensorFlow-style layer initialisation the originals used, noisy top-k gating, the command
line, tables, JSON and plots. Nothing here is specific to one experiment.

The originals (unconst/GradientBidding, TensorFlow 1) trained on MNIST, which cannot be downloaded
here; scikit-learn's bundled 8x8 digits stand in: 1,797 images, 64 features scaled to [0, 1],
split 80/20 by a fixed seed so every run and every seed sees the same held-out set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from atomic_p2p.progress import progress as progress_bar

SPLIT_SEED = 0
N_CLASSES = 10


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = SPLIT_SEED, test_fraction: float = 0.2) -> Digits:
    """scikit-learn's digits as float32 in [0, 1], split by a seeded permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


def derived_generator(seed: int, stream: int) -> torch.Generator:
    """An independent generator per (seed, stream): the bidder's init, each expert's init, the
    batch order and the gating noise each get one, so a networked run (where each node creates
    its own) draws exactly what the in-process run draws."""
    return torch.Generator().manual_seed(seed * 1_000 + stream)


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches forever, reshuffling every epoch (as ``mnist.train.next_batch`` did)."""
    order = torch.randperm(n, generator=generator)
    start = 0
    while True:
        if start + batch_size > n:
            rest = order[start:]
            order = torch.randperm(n, generator=generator)
            start = batch_size - len(rest)
            yield torch.cat([rest, order[:start]])
        else:
            yield order[start : start + batch_size]
            start += batch_size


def tf_linear(in_features: int, out_features: int, generator: torch.Generator) -> nn.Linear:
    """A linear layer initialised as the originals did: truncated normal (std 0.1), bias 0.1."""
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        nn.init.trunc_normal_(layer.weight, std=0.1, a=-0.2, b=0.2, generator=generator)
        layer.bias.fill_(0.1)
    return layer


def affine_stack(sizes: Sequence[int], generator: torch.Generator, activation: str = "none") -> nn.Sequential:
    """Affine layers of the given sizes. The originals stacked them with no nonlinearity ("none");
    "relu" puts one between layers."""
    if activation not in ("none", "relu"):
        raise ValueError(f"activation must be 'none' or 'relu', got {activation!r}")
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if index and activation == "relu":
            layers.append(nn.ReLU())
        layers.append(tf_linear(fan_in, fan_out, generator))
    return nn.Sequential(*layers)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural Networks"), as the
    originals used it from tensor2tensor: zero-initialised gate and noise weights; logits
    x W_g + N(0, 1) * (softplus(x W_noise) + 0.01) while training; softmax over the top k, 0
    elsewhere. Returns gates [batch, n_experts]."""

    def __init__(self, in_features: int, n_experts: int, k: int) -> None:
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"need 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
        self.k = k
        self.w_gate = nn.Parameter(torch.zeros(in_features, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_features, n_experts))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits = x @ self.w_gate
        if self.training:
            stddev = functional.softplus(x @ self.w_noise) + 1e-2
            noise = torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
            logits = logits + noise * stddev
        top_values, top_index = logits.topk(self.k, dim=1)
        return torch.zeros_like(logits).scatter(1, top_index, torch.softmax(top_values, dim=1))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and mean of a list of numbers."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table; floats get 3 decimals."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    text = [[cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(lines)


def experiment_parser(description: str, *, seeds: int, steps: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=seeds, help=f"run seeds 0..N-1 (default {seeds})")
    parser.add_argument("--seed", type=int, default=None, help="run this one seed instead")
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, a few dozen steps")
    parser.add_argument("--out", type=Path, default=Path("out/experiments"), help="JSON and PNG go here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def seeds_from(args: argparse.Namespace) -> list[int]:
    if args.seed is not None:
        return [args.seed]
    return list(range(2 if args.quick else args.seeds))


def progress(total: int, description: str, enabled: bool = True) -> tqdm:
    return progress_bar(total=total, desc=description, enabled=enabled, leave=False, dynamic_ncols=True)


def to_jsonable(value: Any) -> Any:
    """Tensors become lists; NaN and inf become None (JSON has neither)."""
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(payload), indent=1) + "\n")
    return path


Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


@dataclass(frozen=True)
class Panel:
    """One subplot: a title, a y label, and named (x, y) series."""

    title: str
    ylabel: str
    series: Series
    xlabel: str = "step"
    style: str = "-"  # a matplotlib format string: "o" for points


def plot_panels(path: Path, panels: Sequence[Panel], suptitle: str = "") -> Path:
    """Side-by-side line plots written to a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        for label, (xs, ys) in panel.series.items():
            axis.plot(list(xs), list(ys), panel.style, label=label, linewidth=1.2)
        axis.set_title(panel.title)
        axis.set_xlabel(panel.xlabel)
        axis.set_ylabel(panel.ylabel)
        if 1 < len(panel.series) <= 12:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    if suptitle:
        figure.suptitle(suptitle)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
