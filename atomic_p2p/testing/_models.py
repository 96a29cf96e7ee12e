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

from pathlib import Path
from typing import Any

import torch

from atomic_p2p.peer.config import GradientConfig, ModelConfig, PeerConfig
from atomic_p2p.peer.models import BuiltModel

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
    model = ModelConfig(
        model_id=f"{name}-model",
        capabilities=(capability,),
        factory=FACTORY,
        price_per_example=price,
        strategy="fixed",
        strategy_options={"confidence": confidence},
        options={"seed": seed, "accuracy": confidence, "classes": classes},
        gradient=gradient or GradientConfig(),
    )
    return PeerConfig(name=name, models=(model,), data_dir=data_dir / name, **peer_fields)
