"""Bench-only models and one adversarial strategy for ``scripts/bench_routing.py``.

These are not example peers (no TOML names them); they give the routing benchmark a market whose
peers differ in ways a router must learn. Inputs and outputs are those of :mod:`digits` (float32
``[B, 64]`` in, logits ``[B, 10]`` out), on the same seeded held-out split.

- :func:`specialist`: an MLP that knows what it does not know. It is trained on its ``classes``
  with cross-entropy, and on every other class towards the uniform distribution ("outlier
  exposure", Hendrycks et al., ICLR 2019). Its max-softmax is high inside its domain and low
  outside, so the ``confidence`` strategy bids honestly on a preview.
- :func:`generalist`: a plain MLP on all ten classes (``hidden`` and ``epochs`` set its quality).
- :func:`weak`: an MLP trained on a small fraction of the training set: clearly worse (~0.7).
- :func:`degrading`: a generalist whose module adds Gaussian noise to its logits from its
  ``degrade_after``-th forward pass on (previews count: each auctioned task is one preview pass
  and, if executed, one more). It goes on bidding as confidently as before: a silent degradation.
- :class:`LiarStrategy` (``strategy = "bench-liar"``): an ADVERSARY. It declares ``confidence``
  (0.99) whatever the input and promises ``claimed_latency_ms`` (5 ms) whatever its real latency
  (the node still sleeps ``extra_latency_ms`` after every call). Register it only for the span of
  a benchmark with :func:`liar_strategy_registered`, so the strategy registry other code sees
  stays the built-in one.

Weights are cached in ``cache_dir`` under a key made of the recipe and this file's source, like
:mod:`digits`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.models import BuiltModel, load_factory
from atomic_p2p.peer.strategies import BidTerms, CountingStrategy, Load, ModelView, Task, register_strategy
from atomic_p2p.peer.strategies.registry import STRATEGIES
from atomic_p2p.peer.training import save_atomically

CLASSES = 10
LIAR_STRATEGY = "bench-liar"
_DIGITS = Path(__file__).with_name("digits.py")


def _digits(name: str) -> Callable[..., Any]:
    # peers/ is not a package: reach digits.py through the loader the peers' factories use, so
    # this file shares its module object (one dataset split, one training code).
    return load_factory(f"{_DIGITS}:{name}")


@dataclass(frozen=True)
class BenchRecipe:
    """Everything that determines a trained bench model (and so its cache key)."""

    name: str
    hidden: int
    epochs: int
    classes: tuple[int, ...] = tuple(range(CLASSES))
    outlier_weight: float = 0.0  # > 0: train other classes towards the uniform distribution
    train_fraction: float = 1.0
    learning_rate: float = 3e-3
    batch_size: int = 64
    seed: int = 0


def specialist(
    cache_dir: Path,
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    hidden: int = 64,
    epochs: int = 30,
    seed: int = 0,
) -> BuiltModel:
    domain = tuple(sorted(int(c) for c in classes))
    name = f"bench-specialist-{domain[0]}-{domain[-1]}"
    return _build(BenchRecipe(name, hidden, epochs, domain, outlier_weight=1.0, seed=seed), cache_dir)


def generalist(cache_dir: Path, hidden: int = 64, epochs: int = 20, seed: int = 0) -> BuiltModel:
    return _build(BenchRecipe(f"bench-generalist-{hidden}", hidden, epochs, seed=seed), cache_dir)


def weak(
    cache_dir: Path, hidden: int = 16, epochs: int = 60, train_fraction: float = 0.03, seed: int = 0
) -> BuiltModel:
    recipe = BenchRecipe("bench-weak", hidden, epochs, train_fraction=train_fraction, seed=seed)
    return _build(recipe, cache_dir)


def degrading(
    cache_dir: Path,
    degrade_after: int = 400,
    noise: float = 6.0,
    hidden: int = 32,
    epochs: int = 20,
    seed: int = 0,
) -> BuiltModel:
    if degrade_after < 0 or noise < 0:
        raise ConfigError("degrading: degrade_after and noise must be >= 0")
    built = generalist(cache_dir, hidden=hidden, epochs=epochs, seed=seed)
    module = DegradingModule(built.module, degrade_after, noise, seed)
    return BuiltModel(
        module=module.eval(),
        input_shape=built.input_shape,
        validation_accuracy=built.validation_accuracy,  # what it measured before it degraded
        class_accuracy=built.class_accuracy,
    )


class DegradingModule(nn.Module):
    """``inner``'s logits, plus N(0, noise^2) noise from the ``degrade_after``-th call on.

    Calls arrive from the node's worker threads; the counter is taken under a lock.
    """

    def __init__(self, inner: nn.Module, degrade_after: int, noise: float, seed: int) -> None:
        super().__init__()
        self.inner = inner
        self.degrade_after = degrade_after
        self.noise = noise
        self.calls = 0
        self._lock = threading.Lock()
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def degraded(self) -> bool:
        return self.calls > self.degrade_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        with self._lock:
            self.calls += 1
            if self.calls <= self.degrade_after:
                return logits
            noise = torch.randn(logits.shape, generator=self._generator) * self.noise
        return logits + noise.to(logits.device, logits.dtype)


class LiarStrategy(CountingStrategy):
    """ADVERSARY (bench only): a fixed high confidence and a latency it does not deliver."""

    name = LIAR_STRATEGY

    def __init__(self, confidence: float, claimed_latency_ms: float) -> None:
        super().__init__()
        self.declared = confidence
        self.claimed_latency_ms = claimed_latency_ms

    def confidence(self, task: Task, model: ModelView) -> float:
        return self.declared

    def bid(self, task: Task, model: ModelView, load: Load) -> BidTerms:
        honest = super().bid(task, model, load)
        assert isinstance(honest, BidTerms)
        return BidTerms(
            honest.model_id, honest.confidence, self.claimed_latency_ms, honest.cost, honest.strategy
        )

    def parameters(self) -> dict[str, Any]:
        return {"confidence": self.declared, "claimed_latency_ms": self.claimed_latency_ms}


def _liar(options: Mapping[str, Any]) -> LiarStrategy:
    unknown = set(options) - {"confidence", "claimed_latency_ms"}
    if unknown:
        raise ConfigError(
            f"strategy {LIAR_STRATEGY!r} takes confidence and claimed_latency_ms, not {unknown}"
        )
    confidence = float(options.get("confidence", 0.99))
    latency = float(options.get("claimed_latency_ms", 5.0))
    if not (0.0 <= confidence <= 1.0 and latency >= 0.0):
        raise ConfigError(f"strategy {LIAR_STRATEGY!r}: confidence in [0, 1], claimed_latency_ms >= 0")
    return LiarStrategy(confidence, latency)


@contextlib.contextmanager
def liar_strategy_registered() -> Iterator[None]:
    """``strategy = "bench-liar"`` is usable inside the block; the registry is restored after."""
    before = STRATEGIES.get(LIAR_STRATEGY)
    register_strategy(LIAR_STRATEGY, _liar)
    try:
        yield
    finally:
        if before is None:
            STRATEGIES.pop(LIAR_STRATEGY, None)
        else:
            STRATEGIES[LIAR_STRATEGY] = before


# --- training and the weight cache --------------------------------------------------------------


def _build(recipe: BenchRecipe, cache_dir: Path) -> BuiltModel:
    key = hashlib.sha256(
        json.dumps(asdict(recipe), sort_keys=True).encode()
        + torch.__version__.encode()
        + Path(__file__).read_bytes()
    ).hexdigest()
    path = Path(cache_dir) / f"{recipe.name}-{key[:16]}.pt"
    module = _digits("make_module")(_digits("Recipe")(recipe.name, "mlp", recipe.hidden, recipe.epochs, 0.0))
    if path.exists():
        saved = torch.load(path, weights_only=True)
        module.load_state_dict(saved["state"])
        accuracy, per_class = saved["accuracy"], tuple(saved["class_accuracy"])
    else:
        _train(module, recipe)
        accuracy, per_class = _digits("evaluate")(module)
        save_atomically(
            path, {"state": module.state_dict(), "accuracy": accuracy, "class_accuracy": per_class}
        )
    return BuiltModel(
        module=module.eval(),
        input_shape=(64,),
        validation_accuracy=accuracy,
        class_accuracy=per_class,
    )


def _train(module: nn.Module, recipe: BenchRecipe) -> None:
    x, y, _, _ = _digits("dataset")()
    generator = torch.Generator().manual_seed(recipe.seed)
    if recipe.train_fraction < 1.0:
        keep = torch.randperm(len(x), generator=generator)[
            : max(CLASSES, int(len(x) * recipe.train_fraction))
        ]
        x, y = x[keep], y[keep]
    inside = torch.isin(y, torch.tensor(recipe.classes))
    with torch.no_grad():  # seeded initialisation without touching the global RNG
        for parameter in module.parameters():
            bound = (parameter[0].numel() if parameter.dim() > 1 else 10_000) ** -0.5
            parameter.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=recipe.learning_rate)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 64 rows: one thread is faster, more so on a busy box
    try:
        module.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), recipe.batch_size):
                batch = order[start : start + recipe.batch_size]
                loss = _loss(module(x[batch]), y[batch], inside[batch], recipe.outlier_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    module.eval()


def _loss(
    logits: torch.Tensor, labels: torch.Tensor, inside: torch.Tensor, outlier_weight: float
) -> torch.Tensor:
    zero = logits.sum() * 0.0
    known = nn.functional.cross_entropy(logits[inside], labels[inside]) if inside.any() else zero
    if outlier_weight <= 0 or inside.all():
        return known
    # Cross-entropy to the uniform distribution: the mean negative log-probability over classes.
    unknown = -nn.functional.log_softmax(logits[~inside], dim=-1).mean()
    return known + outlier_weight * unknown
