"""Sellers for tests: a model that needs no training and configs to host it.

:func:`linear_classifier` is a model factory (``atomic_p2p.testing:linear_classifier``): a seeded
random linear layer over digits-shaped inputs, ready at once, that declares a held-out accuracy
instead of measuring one. :func:`seller_config` writes the :class:`PeerConfig` of a peer hosting
such models, each bidding with the ``fixed`` strategy at the confidence it is given, so a test
decides who should win::

    config = seller_config("sharp", tmp_path, confidence=0.95, price=0.002)
    peer = network.add_peer(config)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from atomic_p2p.peer.config import DEFAULT_CONSTRAINTS, GradientConfig, ModelConfig, PeerConfig
from atomic_p2p.peer.generation import Generation
from atomic_p2p.peer.models import BuiltModel
from atomic_p2p.terms import ModelConstraints

FACTORY = "atomic_p2p.testing:linear_classifier"


def linear_classifier(
    cache_dir: Path, *, features: int = 64, classes: int = 10, seed: int = 0, accuracy: float = 0.9
) -> BuiltModel:
    """A seeded ``Linear(features, classes)`` taking ``x: float32[B, features]``; nothing is
    trained or cached (``cache_dir`` is unused), and ``accuracy`` is what it declares."""
    generator = torch.Generator().manual_seed(seed)
    module = torch.nn.Linear(features, classes)
    with torch.no_grad():
        module.weight.copy_(torch.randn(classes, features, generator=generator) * 0.1)
        module.bias.zero_()
    return BuiltModel(module=module, input_shape=(features,), validation_accuracy=accuracy)


def one_model_peer(
    name: str,
    data_dir: Path,
    *,
    model_id: str,
    capability: str,
    factory: str,
    confidence: float,
    price: float,
    options: Mapping[str, Any],
    constraints: ModelConstraints = DEFAULT_CONSTRAINTS,
    gradient: GradientConfig | None = None,
    **peer_fields: Any,
) -> PeerConfig:
    """A peer called ``name`` (data under ``data_dir / name``) hosting one model of ``factory`` that
    bids ``confidence`` at ``price`` per example with the ``fixed`` strategy: what every config
    builder of this package shares."""
    model = ModelConfig(
        model_id=model_id,
        capabilities=(capability,),
        factory=factory,
        price_per_example=price,
        strategy="fixed",
        strategy_options={"confidence": confidence},
        options=dict(options),
        constraints=constraints,
        gradient=gradient or GradientConfig(),
    )
    return PeerConfig(name=name, models=(model,), data_dir=data_dir / name, **peer_fields)


def seller_config(
    name: str,
    data_dir: Path,
    *,
    capability: str = "classify/digits",
    confidence: float = 0.9,
    price: float = 0.001,
    seed: int = 0,
    gradient: GradientConfig | None = None,
    classes: int = 10,
    **peer_fields: Any,
) -> PeerConfig:
    """A peer called ``name`` (data under ``data_dir / name``) hosting one
    :func:`linear_classifier` ``<name>-model`` with ``classes`` outputs that bids ``confidence``
    at ``price`` per example (``gradient``: its ``[models.gradient]``); ``peer_fields`` set other
    :class:`PeerConfig` fields (``bid_reuse_ttl_s=5``)."""
    return one_model_peer(
        name,
        data_dir,
        model_id=f"{name}-model",
        capability=capability,
        factory=FACTORY,
        confidence=confidence,
        price=price,
        options={"seed": seed, "accuracy": confidence, "classes": classes},
        gradient=gradient,
        **peer_fields,
    )


GENERATOR_FACTORY = "atomic_p2p.testing:count_up_lm"


class CountUp(torch.nn.Module):
    """A causal LM that needs no training: after token t it predicts (t + 1) mod ``vocab``.

    ``fail_at_length`` > 1 makes it raise on a sequence that long (a peer that dies mid-stream);
    ``step_s`` makes every forward pass take that long (sleeping, as a slow model would compute);
    ``calls`` counts forward passes, so a test can see a generation stop."""

    def __init__(self, vocab: int, fail_at_length: int = 0, step_s: float = 0.0) -> None:
        super().__init__()
        self.vocab = vocab
        self.fail_at_length = fail_at_length
        self.step_s = step_s
        self.calls = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.step_s > 0:
            time.sleep(self.step_s)
        if self.fail_at_length > 1 and ids.shape[1] >= self.fail_at_length:
            raise RuntimeError(f"count-up model breaks at length {self.fail_at_length}")
        return torch.nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float() * 10.0


def count_up_lm(
    cache_dir: Path,
    *,
    vocab: int = 64,
    max_tokens: int = 64,
    context: int = 256,
    fail_at_length: int = 0,
    step_s: float = 0.0,
) -> BuiltModel:
    """A :class:`CountUp` generation model taking ``prompt: int64[1, T]`` (``cache_dir`` unused)."""
    return BuiltModel(
        module=CountUp(vocab, fail_at_length, step_s),
        input_shape=(1,),
        input_dtype="int64",
        validation_accuracy=1.0,
        input_name="prompt",
        output_name="logits",
        generation=Generation(vocab_size=vocab, max_tokens=max_tokens, context=context),
    )


def generator_config(
    name: str,
    data_dir: Path,
    *,
    capability: str = "generate/count",
    confidence: float = 0.9,
    price: float = 0.001,
    fail_at_length: int = 0,
    step_s: float = 0.0,
    **peer_fields: Any,
) -> PeerConfig:
    """A peer called ``name`` hosting one :func:`count_up_lm` ``<name>-lm`` that bids ``confidence``
    at ``price`` (``fail_at_length``: it breaks on sequences that long; ``step_s``: each step's time)."""
    return one_model_peer(
        name,
        data_dir,
        model_id=f"{name}-lm",
        capability=capability,
        factory=GENERATOR_FACTORY,
        confidence=confidence,
        price=price,
        options={"fail_at_length": fail_at_length, "step_s": step_s},
        **peer_fields,
    )
