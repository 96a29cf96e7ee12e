"""The experiment reproductions in scripts/experiments run, reproduce and report sane numbers.

Each script is loaded from its file (scripts/ is not a package), and its core ``run`` is called
with a few dozen steps. The networked versions reuse these functions, so they are pinned here.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional

from tests.support.experiments import load_experiment as load


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


# Single bidder


def sgd_deltas(modules: list[Any], step: Any) -> list[torch.Tensor]:
    """Run ``step`` with SGD(lr=1) per module; return -(parameter change) = the gradient used."""
    before = [p.detach().clone() for m in modules for p in m.parameters()]
    step([torch.optim.SGD(m.parameters(), lr=1.0) for m in modules])
    after = [p.detach() for m in modules for p in m.parameters()]
    return [b - a for b, a in zip(before, after, strict=True)]


def test_single_bidder_runs_and_reports(digits: Any) -> None:
    single = load("single_bidder")
    config = single.Config(steps=20, eval_every=10)
    result = single.run(0, config, digits)
    assert result.revenue_start == pytest.approx(2**-0.5, abs=1e-6)  # self-weight 1, importance norm 1
    assert len(result.bids_end) == 3 and all(m >= 0 for m in result.masks_end)
    assert 0 <= result.test_accuracy <= 1 and math.isfinite(result.revenue_end)
    assert len(result.history["revenue"]) == 20 and result.history["eval_step"] == [10, 20]
    again = single.run(0, config, digits)
    assert (again.test_accuracy, again.revenue_end) == (result.test_accuracy, result.revenue_end)


def test_single_bidder_masks_each_expert_by_its_own_bid() -> None:
    single = load("single_bidder")
    weights = torch.tensor([0.9, 0.1, 0.2, 0.3])
    assert single.expert_bids(weights, "intended").tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert single.expert_bids(weights, "original").tolist() == pytest.approx([0.9, 0.1, 0.2])


def test_single_bidder_split_round_equals_one_autograd_graph(digits: Any) -> None:
    """Requester and peers exchanging dL/dy and dL/dw give the gradients of one graph."""
    single = load("single_bidder")
    config = single.Config()
    bidder, experts, _ = single.build(0, config)
    x, y = digits.x_train[:32], digits.y_train[:32]
    reference_bidder, reference_experts = copy.deepcopy(bidder), copy.deepcopy(experts)
    split = sgd_deltas(
        [bidder, *experts],
        lambda optimizers: single.train_step(
            bidder, experts, optimizers, (x, y), torch.Generator().manual_seed(5), config
        ),
    )
    gates, weights = single.allocate(reference_bidder, x, torch.Generator().manual_seed(5))
    outputs = torch.stack(
        [single.market.masked_output(weights[1 + i], 0.2, e(x)) for i, e in enumerate(reference_experts)]
    )
    logits = reference_bidder.readout(single.market.mixture(gates.T, outputs))
    objective = functional.cross_entropy(logits, y) - weights[0]
    parameters = [p for m in [reference_bidder, *reference_experts] for p in m.parameters()]
    expected = torch.autograd.grad(objective, parameters)
    for got, want in zip(split, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


# FFNN bidding


def test_ffnn_bidding_runs_and_masks_by_bids(digits: Any) -> None:
    ffnn = load("ffnn_bidding")
    result = ffnn.run(0, ffnn.Config(steps=20, eval_every=10, hidden=32), digits)
    assert 0 <= result.test_accuracy <= 1 and len(result.history["accuracy"]) == 20
    assert len(result.sparsity_end) == 3 and all(0 < s < 1 for s in result.sparsity_end)
    layer = ffnn.make_network(ffnn.Config(hidden=8), torch.Generator().manual_seed(0))[0]
    mask = layer.mask()
    assert bool((mask >= 0).all()) and bool((mask.amax(dim=0) > 0).all())  # every neuron keeps an input


# Multiple bidders


def test_multiple_bidders_run_and_report(digits: Any) -> None:
    multiple = load("multiple_bidders")
    single = load("single_bidder")
    config = multiple.Config(steps=20, expert=single.Config(eval_every=10))
    result = multiple.run(0, config, digits)
    assert len(result.test_accuracy) == 3 and all(0 <= a <= 1 for a in result.test_accuracy)
    masks = torch.tensor(result.masks_end)
    assert masks.shape == (3, 3) and bool((masks.amin(dim=0) == 0).all())  # someone is outbid on each expert
    assert all(math.isfinite(r) for r in result.revenue_end)


def test_multiple_bidders_each_descends_only_its_own_objective(digits: Any) -> None:
    multiple = load("multiple_bidders")
    config = multiple.Config(n_bidders=3)
    bidders, experts, _ = multiple.build(0, config)
    x, y = digits.x_train[:32], digits.y_train[:32]
    reference_bidders, reference_experts = copy.deepcopy(bidders), copy.deepcopy(experts)
    noises = [torch.Generator().manual_seed(7 + j) for j in range(3)]
    split = sgd_deltas(
        [*bidders, *experts],
        lambda optimizers: multiple.train_step(bidders, experts, optimizers, (x, y), noises),
    )
    allocations = [
        multiple.allocate(b, x, torch.Generator().manual_seed(7 + j)) for j, b in enumerate(reference_bidders)
    ]
    bids = torch.stack([weights[1:] for _, weights in allocations])
    masks = multiple.market.masks(bids, bids.mean(dim=0, keepdim=True))  # every bid live
    features = torch.stack([e(x) for e in reference_experts])
    losses, expected = [], []
    for j, (bidder, (gates, weights)) in enumerate(zip(reference_bidders, allocations, strict=True)):
        logits = bidder.readout(multiple.market.mixture(gates.T, masks[j][:, None, None] * features))
        losses.append(functional.cross_entropy(logits, y))
        own = list(bidder.parameters())
        expected += torch.autograd.grad(losses[-1] - weights[0], own, retain_graph=True)
    expert_parameters = [p for e in reference_experts for p in e.parameters()]
    expected += torch.autograd.grad(sum(losses), expert_parameters)
    for got, want in zip(split, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("single_bidder", ["single_bidder_intended.json", "single_bidder_intended.png"]),
        ("ffnn_bidding", ["ffnn_bidding.json", "ffnn_bidding.png"]),
        ("multiple_bidders", ["multiple_bidders.json", "multiple_bidders.png"]),
    ],
)
def test_digits_experiments_main_writes_json_and_png(
    name: str, files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load(name).main(["--quick", "--seed", "0", "--no-progress", "--out", str(tmp_path)]) == 0
    for file in files:
        assert (tmp_path / file).stat().st_size > 0
    payload = json.loads((tmp_path / files[0]).read_text())
    assert len(payload["seeds"]) == 1 and "held-out" in capsys.readouterr().out
