"""Model factories for the example peers: digit classifiers trained at start-up.

The data is scikit-learn's bundled 8x8 digits set (1,797 images, no download). Pixels 0..16 are
scaled to [0, 1] and flattened: inputs are float32 ``[B, 64]``, outputs float32 logits ``[B, 10]``.
One seeded split (80% train, 20% held out) is shared by every model, so their held-out accuracies
compare.

- :func:`small`: a tiny MLP (64-16-10). Trains in well under a second; about 95% held out.
- :func:`large`: a small CNN over the 8x8 image. Tens of times slower per call; about 98%.
- :func:`specialist`: an MLP trained only on ``classes`` (digits 0-4 unless told). Near perfect
  there, useless elsewhere (about half right overall); its per-class accuracy shows the domain.

Trained weights are cached in ``cache_dir`` under a key made of the recipe and this file's
source, so a restart loads them in milliseconds and a code change retrains. Training shows a
progress bar when stderr is a terminal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from atomic_p2p.peer.models import BuiltModel
from atomic_p2p.peer.training import save_atomically, single_threaded
from atomic_p2p.progress import progress

SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
CLASSES = 10


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained model (and so its cache key)."""

    name: str
    architecture: str  # "mlp" or "cnn"
    hidden: int
    epochs: int
    learning_rate: float
    classes: tuple[int, ...] = tuple(range(CLASSES))  # the classes it is trained on
    batch_size: int = 64
    seed: int = 0


def small(cache_dir: Path, seed: int = 0, epochs: int = 20) -> BuiltModel:
    return build(Recipe("small", "mlp", hidden=16, epochs=epochs, learning_rate=3e-3, seed=seed), cache_dir)


def large(cache_dir: Path, seed: int = 0, epochs: int = 8) -> BuiltModel:
    return build(Recipe("large", "cnn", hidden=128, epochs=epochs, learning_rate=2e-3, seed=seed), cache_dir)


def specialist(
    cache_dir: Path, seed: int = 0, epochs: int = 30, classes: Sequence[int] = (0, 1, 2, 3, 4)
) -> BuiltModel:
    domain = tuple(sorted({int(c) for c in classes}))
    if not domain or not set(domain) <= set(range(CLASSES)):
        raise ValueError(f"classes must be digits 0-9, got {list(classes)}")
    recipe = Recipe(
        "specialist", "mlp", hidden=64, epochs=epochs, learning_rate=3e-3, classes=domain, seed=seed
    )
    return build(recipe, cache_dir)


class DigitsCnn(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.reshape(-1, 1, 8, 8))


def make_module(recipe: Recipe) -> nn.Module:
    if recipe.architecture == "cnn":
        return DigitsCnn(recipe.hidden)
    return nn.Sequential(nn.Linear(64, recipe.hidden), nn.ReLU(), nn.Linear(recipe.hidden, CLASSES))


@lru_cache(maxsize=1)
def dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, held-out x, held-out y), the same split every time."""
    from sklearn.datasets import load_digits  # training only: a peer serving cached weights never loads it

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    held_out = int(len(x) * HELD_OUT_FRACTION)
    test, train = order[:held_out], order[held_out:]
    return x[train], y[train], x[test], y[test]


def build(recipe: Recipe, cache_dir: Path) -> BuiltModel:
    """Load the recipe's cached weights, or train and cache them."""
    path = Path(cache_dir) / f"digits-{recipe.name}-{cache_key(recipe)[:16]}.pt"
    module = make_module(recipe)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        module.load_state_dict(saved["state"])
        accuracy, per_class = saved["accuracy"], tuple(saved["class_accuracy"])
    else:
        with single_threaded():
            train(module, recipe)
        accuracy, per_class = evaluate(module)
        save_atomically(
            path, {"state": module.state_dict(), "accuracy": accuracy, "class_accuracy": per_class}
        )
    return BuiltModel(
        module=module.eval(),
        input_shape=(64,),
        input_dtype="float32",
        validation_accuracy=accuracy,
        class_accuracy=per_class,
    )


def cache_key(recipe: Recipe) -> str:
    source = Path(__file__).read_bytes()  # a change to this file retrains
    text = json.dumps(asdict(recipe), sort_keys=True) + torch.__version__
    return hashlib.sha256(text.encode() + source).hexdigest()


def train(module: nn.Module, recipe: Recipe) -> None:
    x, y, _, _ = dataset()
    keep = torch.isin(y, torch.tensor(recipe.classes))
    x, y = x[keep], y[keep]
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():  # seeded initialisation without touching the global RNG
        for parameter in module.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 10_000
            bound = fan_in**-0.5
            parameter.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=recipe.learning_rate)
    module.train()
    epochs = progress(range(recipe.epochs), desc=f"training {recipe.name}", leave=False)
    for _ in epochs:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            loss = nn.functional.cross_entropy(module(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()


def evaluate(module: nn.Module) -> tuple[float, tuple[float, ...]]:
    """Held-out accuracy overall and per class."""
    _, _, x, y = dataset()
    with torch.inference_mode():
        correct = module(x).argmax(dim=-1) == y
    per_class = tuple(float(correct[y == c].float().mean()) for c in range(CLASSES))
    return float(correct.float().mean()), per_class
