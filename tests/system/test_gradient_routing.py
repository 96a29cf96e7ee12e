"""Gradient bidding learns routing (scripts/experiments/gradient_routing.py).

Over the network: four atomic-peer processes with cooperative ffnn bid functions, a requester
GradientMarket sending dL/db in signed BidGradients; a short run must equal the in-process
reference exactly (same factories, same seeded bid functions, same float32 arithmetic).
In process: a longer run must show the claim of the experiment: each specialist comes to win
most of its half of the digits, and the market's held-out accuracy beats every single peer's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.experiments import load_experiment

pytestmark = pytest.mark.system


async def test_networked_rounds_equal_the_in_process_reference(tmp_path: Path) -> None:
    routing = load_experiment("gradient_routing")
    # At lr 0.05 with the bid-scale anchor: the peers read [models.gradient] anchor from TOML.
    config = routing.Config(steps=12, eval_every=6, lr=0.05, anchor=1.0)
    networked = await routing.run(3, config, tmp_path, show=False)
    local = routing.simulate(3, config, show=False)
    assert networked.solo_accuracy == local.solo_accuracy
    assert networked.train_loss == pytest.approx(local.train_loss, rel=1e-6, abs=1e-7)
    for remote, reference in zip(networked.evaluations, local.evaluations, strict=True):
        assert remote.step == reference.step
        assert remote.mixture_accuracy == reference.mixture_accuracy
        assert remote.top1_accuracy == reference.top1_accuracy
        assert remote.wins == reference.wins
        assert remote.mean_gate == pytest.approx(reference.mean_gate, rel=1e-5)
    assert networked.payments == pytest.approx(local.payments, rel=1e-5)
    # The bids moved: a market that learnt nothing would hand out the same wins at every evaluation.
    assert networked.evaluations[0].mean_gate != networked.evaluations[-1].mean_gate


def test_bids_specialise_and_the_market_beats_every_peer() -> None:
    routing = load_experiment("gradient_routing")
    result = routing.simulate(0, routing.Config(steps=800, eval_every=800), show=False)
    start, end = result.start, result.end
    spec_low, spec_high = result.names.index("spec-0-4"), result.names.index("spec-5-9")
    low = [end.wins[spec_low][c] for c in range(5)]
    high = [end.wins[spec_high][c] for c in range(5, 10)]
    assert sum(low) / 5 > 0.7 and sum(high) / 5 > 0.7, (low, high)
    # Out of their halves they win (almost) nothing: the routing follows each model's skill.
    assert max(end.wins[spec_low][5:]) < 0.1 and max(end.wins[spec_high][:5]) < 0.1, end.wins
    assert end.mixture_accuracy > max(result.solo_accuracy), (end.mixture_accuracy, result.solo_accuracy)
    assert end.top1_accuracy > max(result.solo_accuracy), (end.top1_accuracy, result.solo_accuracy)
    assert end.mixture_accuracy > start.mixture_accuracy


@pytest.mark.parametrize("mixing", ["logits", "probabilities"])
def test_at_lr_0_05_the_bids_collapse_without_the_anchor_and_specialise_with_it(mixing: str) -> None:
    routing = load_experiment("gradient_routing")

    def run(anchor: float) -> tuple[float, float, list[float]]:
        config = routing.Config(steps=400, eval_every=400, lr=0.05, mixing=mixing, anchor=anchor)
        end = routing.simulate(0, config, show=False).end
        return sum(end.wins[0][:5]) / 5, sum(end.wins[1][5:]) / 5, end.mean_gate

    low, high, gate = run(0.0)
    # The generalist ("small") took every example; the specialists' bids went to (almost) 0.
    assert max(low, high) < 0.05 and max(gate[0], gate[1]) < 0.05 and gate[2] > 0.9, (low, high, gate)
    low, high, gate = run(1.0)
    assert min(low, high) > 0.6 and min(gate[0], gate[1]) > 0.15, (low, high, gate)


def test_the_sweep_covers_every_lr_and_mixing_with_and_without_the_anchor() -> None:
    routing = load_experiment("gradient_routing")
    rows = routing.sweep(routing.Config(steps=5), [0], (0.0, 1.0), show=False)
    settings = {(row.mixing, row.lr, row.anchor) for row in rows}
    assert len(rows) == len(settings) == 16
    assert {lr for _, lr, _ in settings} == {0.005, 0.01, 0.02, 0.05}
    assert {mixing for mixing, _, _ in settings} == {"logits", "probabilities"}
    for row in rows:
        assert 0 < row.best_peer_accuracy < 1 and 0 < row.mixture_accuracy < 1
        assert row.specialised == (min(row.specialist_wins) > 0.5)
    text = routing.sweep_report(rows, routing.Config(steps=5, anchor=1.0))
    assert text.count("probabilities") == 8 and "off" in text
