"""The price-of-anarchy game with every node a real peer on 127.0.0.1: rows bought with Execute,
gradients sent as signed BidGradients, and the same seed gives the in-process numbers (tolerance
1e-9 on the raw bids; float64 end to end, so in practice exactly)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "scripts" / "experiments"

pytestmark = pytest.mark.integration


def load_script() -> ModuleType:
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(
        "price_of_anarchy_networked", EXPERIMENTS / "price_of_anarchy_networked.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def test_networked_nodes_replay_the_in_process_game() -> None:
    script = load_script()
    result = await script.compare(seed=3, steps=12, n=4, lr=0.05, gamma=0.5)
    assert result.max_row_difference <= script.TOLERANCE
    assert result.poa_networked == pytest.approx(result.poa_in_process, abs=1e-9)
    assert result.rpcs > 12 * 3  # every step really crossed the network
