"""The experiment reproductions in scripts/experiments run, reproduce and report sane numbers.

Each script is loaded from its file (scripts/ is not a package), and its core ``run`` is called
with a few dozen steps. The networked versions reuse these functions, so they are pinned here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "scripts" / "experiments"


def load(name: str) -> ModuleType:
    """Import scripts/experiments/<name>.py (registered so dataclasses can resolve it)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(
        EXPERIMENTS / f"{name}.py"
    ):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits() -> Any:
    return load("common").load_digits_split()


def test_digits_split_is_seeded_and_disjoint(digits: Any) -> None:
    common = load("common")
    again = common.load_digits_split()
    assert torch.equal(digits.x_test, again.x_test)
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert len(digits.y_test) == 359 and float(digits.x_train.max()) == 1.0
    order = common.batches(10, 4, torch.Generator().manual_seed(0))
    first_epochs = torch.cat([next(order) for _ in range(5)])
    assert sorted(first_epochs[:10].tolist()) == list(range(10))  # every example once per epoch


def test_noisy_top_k_gate_rows_sum_to_one_on_k_experts() -> None:
    gate = load("common").NoisyTopKGate(5, 4, k=2)
    gates = gate(torch.rand(6, 5), torch.Generator().manual_seed(0))
    assert gates.shape == (6, 4) and torch.allclose(gates.sum(1), torch.ones(6))
    assert ((gates > 0).sum(1) == 2).all()


# Price of anarchy


def test_price_of_anarchy_game_and_terms() -> None:
    poa = load("price_of_anarchy")
    game = poa.make_game(3, n=10, steps=50)
    assert torch.allclose(game.contributions.sum(1), torch.ones(10, dtype=torch.float64))
    assert float(game.contributions.min()) >= 0 and game.schedule.shape == (50,)
    assert torch.equal(game.competitive_init, poa.make_game(3, n=10, steps=50).competitive_init)
    terms = poa.payoff_terms(game.coordinated_init, game.contributions)
    assert torch.allclose(terms.weights.sum(1), torch.ones(10, dtype=torch.float64))
    assert torch.allclose(terms.ranking.sum(1), torch.ones(10, dtype=torch.float64))
    assert bool((terms.ranking > 0).all())
    assert torch.allclose(terms.payoff, terms.utility + terms.emission - terms.divergence)


def test_price_of_anarchy_is_the_ratio_of_summed_payoffs() -> None:
    poa = load("price_of_anarchy")
    result = poa.run(seed=1, steps=30)
    assert result.total_competitive == pytest.approx(float(result.competitive.final.payoff.sum()))
    assert result.total_coordinated == pytest.approx(float(result.coordinated.final.payoff.sum()))
    assert result.poa == result.total_competitive / result.total_coordinated
    assert math.isfinite(result.poa) and len(result.competitive.total_payoff) == 31
    assert poa.run(seed=1, steps=30).poa == result.poa  # same seed, same number


def test_price_of_anarchy_node_update_is_adam_and_coordination_helps() -> None:
    poa = load("price_of_anarchy")
    row, gradient = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    moved, state = poa.node_update(row, gradient, poa.adam_init(3), step=1, lr=0.05)
    assert moved.tolist() == pytest.approx([-0.05, 0.05, 0.0])  # Adam's first step: lr * sign
    assert torch.allclose(state.first, 0.1 * gradient) and torch.allclose(state.second, 0.001 * gradient**2)
    game = poa.make_game(0, steps=60)
    start = float(poa.payoff_terms(game.coordinated_init, game.contributions).payoff.sum())
    assert poa.converge(game, "coordinated", 0.05, 0.5, "global").total_payoff[-1] > start


def test_price_of_anarchy_main_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    poa = load("price_of_anarchy")
    assert poa.main(["--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "price_of_anarchy.json").read_text())
    assert len(payload["seeds"]) == 2 and (tmp_path / "price_of_anarchy.png").stat().st_size > 0
    assert "original" in capsys.readouterr().out
