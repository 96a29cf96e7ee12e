#!/usr/bin/env python3
"""FFNN bidding: bids as extra per-layer weights that mask the real ones (docs/architecture.md
section 9, item 3).

    python scripts/experiments/ffnn_bidding.py                  # 5 seeds x 5k steps
    python scripts/experiments/ffnn_bidding.py --steps 53000 --seed 0
    python scripts/experiments/ffnn_bidding.py --quick

How this works
--------------
After unconst/GradientBidding FFNNBidding.ipynb. A feed-forward network 64 -> 256 -> 256 -> 10 whose
every layer has, beside its weights W [in, out] and bias, a matrix of bids ("flows") F [in, out]:
output neuron j is a buyer that spreads a unit budget over its inputs i.

    F_norm = F / sum_i |F_ij|                    normalised per output neuron (L1, as the original)
    mask   = relu(F_norm - mean_i F_norm_ij)     atomic_p2p.market.masks with a mean shift over inputs
    x     <- x (W * mask) + b

Input i reaches neuron j only while j bids on it above j's average bid, so the bids decide the
network's wiring and are trained by the same loss as the weights (Adam 1e-3, batch 256). The
layers are affine with no nonlinearity between them, and initialised like the original
(truncated normal 0.1 for W and F, bias 0.1). The original used MNIST (784 inputs) and printed
training-batch accuracy: 0.58 at 5k steps and about 0.85 at 53k.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from atomic_p2p import market

ORIGINAL = {"5000": 0.58, "53000": 0.85}
MODEL_STREAM, BATCH_STREAM = 0, 100


@dataclass(frozen=True)
class Config:
    steps: int = 5_000
    batch_size: int = 256
    lr: float = 1e-3
    hidden: int = 256
    layers: int = 2
    eval_every: int = 250


class BiddingLayer(nn.Module):
    """One affine layer whose weights are masked by its output neurons' bids on their inputs."""

    def __init__(self, fan_in: int, fan_out: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_in, fan_out))
        self.flow = nn.Parameter(torch.empty(fan_in, fan_out))
        self.bias = nn.Parameter(torch.full((fan_out,), 0.1))
        with torch.no_grad():
            nn.init.trunc_normal_(self.weight, std=0.1, a=-0.2, b=0.2, generator=generator)
            nn.init.trunc_normal_(self.flow, std=0.1, a=-0.2, b=0.2, generator=generator)

    def mask(self) -> torch.Tensor:
        bids = functional.normalize(self.flow, p=1, dim=0)
        return market.masks(bids, market.shift(bids, "mean", dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight * self.mask()) + self.bias


def make_network(config: Config, generator: torch.Generator, in_features: int = 64) -> nn.Sequential:
    sizes = [in_features] + [config.hidden] * config.layers + [common.N_CLASSES]
    return nn.Sequential(*(BiddingLayer(a, b, generator) for a, b in itertools.pairwise(sizes)))


def sparsity(network: nn.Sequential) -> list[float]:
    """Fraction of each layer's connections that its bids switch off (the original's metric)."""
    with torch.no_grad():
        return [
            float((layer.mask() == 0).float().mean()) for layer in network if isinstance(layer, BiddingLayer)
        ]


def train_step(
    network: nn.Sequential, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """One Adam step on cross-entropy; returns (loss, batch accuracy) before the step."""
    logits = network(x)
    loss = functional.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), common.accuracy(logits.detach(), y)


@torch.no_grad()
def evaluate(network: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    return common.accuracy(network(x), y)


@dataclass
class Result:
    seed: int
    config: Config
    train_batch_accuracy: float  # mean over the last 100 training batches
    train_accuracy: float
    test_accuracy: float
    sparsity_end: list[float]
    history: dict[str, list] = field(default_factory=dict)


def run(
    seed: int, config: Config | None = None, data: common.Digits | None = None, show: bool = False
) -> Result:
    config = config or Config()
    data = data or common.load_digits_split()
    network = make_network(config, common.derived_generator(seed, MODEL_STREAM))
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    order = common.batches(len(data.y_train), config.batch_size, common.derived_generator(seed, BATCH_STREAM))
    history: dict[str, list] = {"step": [], "loss": [], "accuracy": [], "eval_step": [], "test_accuracy": []}
    history["sparsity"] = []
    with common.progress(config.steps, f"ffnn bidding seed {seed}", show) as bar:
        for step in range(config.steps):
            index = next(order)
            loss, accuracy = train_step(network, optimizer, data.x_train[index], data.y_train[index])
            history["step"].append(step)
            history["loss"].append(loss)
            history["accuracy"].append(accuracy)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                history["eval_step"].append(step + 1)
                history["test_accuracy"].append(evaluate(network, data.x_test, data.y_test))
                history["sparsity"].append(sparsity(network))
            bar.update(1)
    recent = history["accuracy"][-100:]
    return Result(
        seed=seed,
        config=config,
        train_batch_accuracy=sum(recent) / len(recent),
        train_accuracy=evaluate(network, data.x_train, data.y_train),
        test_accuracy=history["test_accuracy"][-1],
        sparsity_end=sparsity(network),
        history=history,
    )


def report(results: list[Result]) -> str:
    config = results[0].config
    headers = ["seed", "batch acc", "train acc", "held-out acc", "mask sparsity per layer"]
    rows: list[list[object]] = [
        [
            r.seed,
            r.train_batch_accuracy,
            r.train_accuracy,
            r.test_accuracy,
            " ".join(f"{s:.2f}" for s in r.sparsity_end),
        ]
        for r in results
    ]
    keys = ("train_batch_accuracy", "train_accuracy", "test_accuracy")
    rows.append(["median", *(common.summary([getattr(r, k) for r in results])["median"] for k in keys), ""])
    rows.append(["original 5k", ORIGINAL["5000"], "-", "-", "(MNIST, batch acc)"])
    rows.append(["original 53k", ORIGINAL["53000"], "-", "-", "(MNIST, batch acc)"])
    return "\n".join(
        [
            f"FFNN bidding ({config.steps} steps, batch {config.batch_size}, lr {config.lr}, hidden {config.hidden})",
            common.format_table(headers, rows),
            "",
            "batch acc: mean over the last 100 training batches (what the original printed); train/held-out acc:",
            "the whole 80% training split and the held-out 20% of scikit-learn's digits.",
        ]
    )


def plots(results: list[Result], out: Path) -> Path:
    accuracy: common.Series = {}
    bids: common.Series = {}
    for r in results:
        acc = r.history["accuracy"]
        smooth = [
            sum(acc[max(0, i - 99) : i + 1]) / len(acc[max(0, i - 99) : i + 1]) for i in range(len(acc))
        ]
        accuracy[f"seed {r.seed} batch"] = (r.history["step"], smooth)
        accuracy[f"seed {r.seed} held-out"] = (r.history["eval_step"], r.history["test_accuracy"])
    first = results[0]
    for layer in range(len(first.sparsity_end)):
        bids[f"layer {layer + 1}"] = (
            first.history["eval_step"],
            [s[layer] for s in first.history["sparsity"]],
        )
    return common.plot_panels(
        out / "ffnn_bidding.png",
        [
            common.Panel("accuracy", "accuracy", accuracy),
            common.Panel(f"bids: masked-off share, seed {first.seed}", "fraction of weights masked", bids),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.experiment_parser(__doc__.splitlines()[1], seeds=5, steps=5_000)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    config = Config(steps=40 if quick else args.steps, hidden=args.hidden, eval_every=20 if quick else 250)
    data = common.load_digits_split()
    results = [run(seed, config, data, show=not args.no_progress) for seed in common.seeds_from(args)]
    text = report(results)
    print(text)
    payload = {
        "settings": asdict(config),
        "report": text,
        "seeds": [{**asdict(r), "history": {**r.history, "loss": r.history["loss"][::10]}} for r in results],
    }
    for entry in payload["seeds"]:
        entry["history"]["step"] = entry["history"]["step"][::10]
        entry["history"]["accuracy"] = entry["history"]["accuracy"][::10]
    print(
        f"wrote {common.write_json(args.out / 'ffnn_bidding.json', payload)} and {plots(results, args.out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
