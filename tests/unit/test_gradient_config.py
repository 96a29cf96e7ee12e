"""``[models.gradient]`` in a peer config: defaults, every key, and mistakes named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.config import GradientConfig, config_from_dict


def config_with(tmp_path: Path, **gradient: Any) -> Any:
    (tmp_path / "m.py").write_text("def build(cache_dir):\n    pass\n")
    model = {"model_id": "m", "capabilities": ["c"], "factory": "m.py:build", "price_per_example": 0.1}
    if gradient:
        model["gradient"] = gradient
    return config_from_dict({"peer": {"name": "p"}, "models": [model]}, tmp_path).models[0].gradient


def test_gradient_bidding_is_off_unless_asked(tmp_path: Path) -> None:
    assert config_with(tmp_path) == GradientConfig()


def test_every_key_is_read(tmp_path: Path) -> None:
    keys = {
        "enabled": True,
        "role": "competitive",
        "bid_function": "ffnn",
        "lr": 0.5,
        "max_norm": 2.0,
        "reject_norm": 3.0,
        "initial_bid": 0.5,
        "hidden": 8,
        "cost_per_bid": 0.1,
        "seed": 3,
        "remote_training": True,
        "model_lr": 0.1,
        "anchor": 2.0,
        "anchor_weight": 0.5,
    }
    assert config_with(tmp_path, **keys) == GradientConfig(**keys)


@pytest.mark.parametrize(
    ("gradient", "says"),
    [
        ({"role": "greedy"}, "role"),
        ({"bid_function": "tree"}, "bid_function"),
        ({"enabled": "yes"}, "enabled"),
        ({"max_norm": 5.0, "reject_norm": 1.0}, "reject_norm"),
        ({"lr": -1.0}, "lr"),
        ({"anchor": -1.0}, "anchor"),
        ({"anchor_weight": float("nan")}, "anchor_weight"),
        ({"learning_rate": 0.1}, "unknown key"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, gradient: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config_with(tmp_path, **gradient)
