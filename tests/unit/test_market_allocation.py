"""Market allocation and payments: values, shapes, top-k, eps, and float64 gradient checks."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from atomic_p2p.market import (
    gates,
    masked_output,
    masks,
    mixture,
    payoff,
    payoff_gradient,
    revenue,
    shift,
    top_k,
)


def spaced_bids(n_peers: int = 4, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Bids in float64 whose distances to each other and to their mean exceed 0.01.

    A random permutation of geometrically spaced values per example keeps every b - mean(b) and
    every pairwise gap away from the relu kink and from top-k ties, so finite differences are exact.
    """
    generator = torch.Generator().manual_seed(seed)
    levels = 0.1 * 1.7 ** torch.arange(n_peers, dtype=torch.float64) + 0.013
    columns = [levels[torch.randperm(n_peers, generator=generator)] for _ in range(batch)]
    bids = torch.stack(columns, dim=1)
    assert (bids - bids.mean(0, keepdim=True)).abs().min() > 0.01
    return bids.requires_grad_(True)


def test_shift_mean_keeps_dim_and_constant_is_scalar() -> None:
    bids = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(shift(bids), torch.tensor([[2.0, 4.0]]))
    assert torch.equal(shift(bids, "mean", dim=1), torch.tensor([[1.5], [4.5]]))
    constant = shift(bids.double(), 0.2)
    assert constant.dim() == 0 and constant.dtype == torch.float64 and float(constant) == 0.2


@pytest.mark.parametrize("mode", ["median", float("nan"), float("inf"), True])
def test_shift_rejects_unknown_modes(mode: object) -> None:
    with pytest.raises(ValueError):
        shift(torch.ones(2, 2), mode)  # type: ignore[arg-type]


def test_masks_are_relu_of_bid_minus_shift() -> None:
    bids = torch.tensor([[0.1, 0.5], [0.3, 0.1], [0.8, 0.3]])
    expected = torch.tensor([[0.0, 0.2], [0.0, 0.0], [0.4, 0.0]])
    assert torch.allclose(masks(bids, shift(bids)), expected)
    assert torch.allclose(masks(bids, 0.2), torch.relu(bids - 0.2))


def test_gates_share_each_example_and_eps_keeps_zero_masks_finite() -> None:
    m = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    g = gates(m, eps=1e-12)
    assert torch.allclose(g[:, 0], torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.equal(g[:, 1], torch.zeros(2, dtype=torch.float64))  # all masks 0: gates 0, not NaN
    assert float(gates(m, eps=1.0)[:, 0].sum()) == pytest.approx(4 / 5)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf")])
def test_gates_reject_bad_eps(eps: float) -> None:
    with pytest.raises(ValueError):
        gates(torch.ones(2, 2), eps=eps)


def test_top_k_keeps_the_largest_positive_masks() -> None:
    m = torch.tensor([[0.5, 0.0], [0.2, 0.0], [0.9, 0.3]])
    kept = top_k(m, 2)
    assert torch.equal(kept.selected, torch.tensor([[True, False], [False, False], [True, True]]))
    assert torch.equal(kept.masks, torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.9, 0.3]]))
    everyone = top_k(m, 10)
    assert torch.equal(everyone.selected, m > 0) and torch.equal(everyone.masks, m)
    with pytest.raises(ValueError):
        top_k(m, 0)


def test_top_k_gradient_masked_or_straight_through() -> None:
    m = torch.tensor([[0.5], [0.2], [0.9]], requires_grad=True)
    top_k(m, 2).masks.sum().backward()
    assert m.grad is not None and m.grad.flatten().tolist() == [1.0, 0.0, 1.0]
    m.grad = None
    kept = top_k(m, 2, straight_through=True)
    assert kept.masks.flatten().tolist() == pytest.approx([0.5, 0.0, 0.9])
    kept.masks.sum().backward()
    assert m.grad is not None and m.grad.flatten().tolist() == [1.0, 1.0, 1.0]


def test_mixture_and_masked_output_shapes() -> None:
    g = torch.rand(3, 5)
    outputs = torch.rand(3, 5, 2, 4)
    y = mixture(g, outputs)
    assert y.shape == (5, 2, 4)
    assert torch.allclose(y[1], sum(g[i, 1] * outputs[i, 1] for i in range(3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mixture(g, torch.rand(3, 4, 2))
    assert masked_output(torch.tensor(0.5), 0.2, torch.ones(5, 2)).allclose(torch.full((5, 2), 0.3))
    per_example = masked_output(torch.tensor([0.1, 0.7]), 0.2, torch.ones(2, 3))
    assert per_example.flatten().tolist() == pytest.approx([0.0] * 3 + [0.5] * 3)


def test_revenue_payoff_and_payoff_gradient() -> None:
    g = torch.tensor([[0.5, 0.25], [0.5, 0.75]])
    assert revenue(torch.tensor([2.0, 4.0]), g).tolist() == [1.5, 5.0]
    assert revenue(1.0, g).tolist() == [0.75, 1.25]
    assert payoff(torch.tensor([1.5, 4.0]), torch.tensor([0.5, 5.0])).tolist() == [1.0, -1.0]
    assert payoff_gradient(2.0, torch.tensor([0.1, 0.3]), 0.1).tolist() == pytest.approx([0.1, 0.5])
    with pytest.raises(ValueError):
        revenue(1.0, torch.ones(3))


# Gradient checks, float64, inputs away from the relu kink and from top-k ties.


def test_gradcheck_shift_and_masks() -> None:
    bids = spaced_bids()
    assert gradcheck(lambda b: masks(b, shift(b)), (bids,))
    assert gradcheck(lambda b: masks(b, shift(b, "mean", dim=1)), (bids,))
    assert gradcheck(lambda b: masks(b, shift(b, 0.5)), (bids,))


def test_gradcheck_gates_of_masks_and_of_bids() -> None:
    positive = (torch.rand(4, 3, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert gradcheck(lambda m: gates(m, eps=1e-3), (positive,))
    assert gradcheck(lambda b: gates(masks(b, shift(b))), (spaced_bids(seed=1),))


def test_gradcheck_top_k() -> None:
    # Only the masked mode: straight-through is deliberately not the derivative of its forward.
    bids = spaced_bids(n_peers=5, seed=2)
    assert gradcheck(lambda b: gates(top_k(masks(b, shift(b)), 2).masks), (bids,))
    assert gradcheck(lambda b: gates(top_k(masks(b, 0.0), 3).masks), (bids,))


def test_gradcheck_mixture_masked_output_revenue() -> None:
    g = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    outputs = torch.rand(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(mixture, (g, outputs))
    weight = torch.tensor([0.3, 0.9, 0.6, 0.45], dtype=torch.float64, requires_grad=True)
    output = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda w, f: masked_output(w, 0.2, f), (weight, output))
    price = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda p, gate: payoff(revenue(p, gate), 0.1), (price, g))
