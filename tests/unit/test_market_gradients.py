"""The requester's gradient round (dL/db, dg/db, dL/df) and the peer's gradient validation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from atomic_p2p.errors import ProtocolError, TensorError
from atomic_p2p.market import gates, market_gradients, masks, mixture, shift, top_k, validate_gradient


def squared_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).sum(dim=-1).mean()


def round_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 peers, 3 examples, 2 features, float64; bids at least 0.01 from their mean and each other."""
    generator = torch.Generator().manual_seed(seed)
    levels = 0.1 * 1.7 ** torch.arange(4, dtype=torch.float64)
    bids = torch.stack([levels[torch.randperm(4, generator=generator)] for _ in range(3)], dim=1)
    outputs = torch.randn(4, 3, 2, generator=generator, dtype=torch.float64)
    targets = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    return bids, outputs, targets


def market_loss(bids: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    return squared_error(mixture(gates(top_k(masks(bids, shift(bids)), k).masks), outputs), targets)


@pytest.mark.parametrize("k", [4, 2])
def test_loss_by_bid_matches_finite_differences(k: int) -> None:
    bids, outputs, targets = round_inputs()
    result = market_gradients(bids, outputs, targets, squared_error, k=k)
    assert result.loss_by_bid.shape == bids.shape and result.gate_by_bid.shape == bids.shape
    assert float(result.loss) == pytest.approx(float(market_loss(bids, outputs, targets, k)))
    step = 1e-6
    for peer in range(4):
        for example in range(3):
            up, down = bids.clone(), bids.clone()
            up[peer, example] += step
            down[peer, example] -= step
            difference = market_loss(up, outputs, targets, k) - market_loss(down, outputs, targets, k)
            numeric = difference / (2 * step)
            assert float(result.loss_by_bid[peer, example]) == pytest.approx(float(numeric), abs=1e-7)


def test_gate_by_bid_is_the_diagonal_of_each_examples_jacobian() -> None:
    bids, outputs, targets = round_inputs(seed=1)
    result = market_gradients(bids, outputs, targets, squared_error)
    for example in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda b: gates(masks(b, shift(b))), bids[:, example])
        assert torch.allclose(result.gate_by_bid[:, example], torch.diagonal(jacobian))


def test_outputs_gates_selection_and_output_gradient() -> None:
    bids, outputs, targets = round_inputs(seed=2)
    result = market_gradients(bids, outputs, targets, squared_error, k=2)
    assert result.output.shape == (3, 2)
    assert result.selected.dtype == torch.bool and (result.selected.sum(0) <= 2).all()
    assert torch.equal(result.gates > 0, result.selected)
    assert torch.allclose(result.output, mixture(result.gates, outputs))
    loss_by_y = 2 * (result.output - targets) / 3
    assert torch.allclose(result.loss_by_output, result.gates[..., None] * loss_by_y[None])
    assert not bids.requires_grad and not result.loss_by_bid.requires_grad


def test_a_constant_shift_lets_one_peer_execute() -> None:
    bids = torch.tensor([[0.7, 0.1]], dtype=torch.float64)
    outputs = torch.ones(1, 2, 3, dtype=torch.float64)
    result = market_gradients(
        bids, outputs, torch.zeros(2, 3, dtype=torch.float64), squared_error, shift_mode=0.2
    )
    assert result.selected.tolist() == [[True, False]]
    assert result.gate_by_bid[0, 1] == 0 and result.loss_by_bid[0, 1] == 0


def test_market_gradients_rejects_mismatched_arguments() -> None:
    bids, outputs, targets = round_inputs()
    with pytest.raises(ValueError):
        market_gradients(bids[0], outputs, targets, squared_error)
    with pytest.raises(ValueError):
        market_gradients(bids, outputs[:, :2], targets, squared_error)
    with pytest.raises(ValueError):
        market_gradients(bids, outputs, targets, lambda y, t: functional.mse_loss(y, t, reduction="none"))


def test_validate_gradient_passes_clips_and_copies() -> None:
    gradient = torch.tensor([3.0, 4.0])
    assert torch.equal(validate_gradient(gradient, (2,), max_norm=10.0), gradient)
    clipped = validate_gradient(gradient, (2,), max_norm=1.0)
    assert clipped.tolist() == pytest.approx([0.6, 0.8])
    assert gradient.tolist() == [3.0, 4.0]  # the caller's tensor is not modified


@pytest.mark.parametrize(
    "gradient",
    [
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("inf"), 0.0]),
        torch.tensor([1.0, 2.0, 3.0]),  # too many elements
        torch.tensor([[1.0, 2.0]]),  # right size, wrong shape
        torch.tensor([1, 2]),  # integers
        [1.0, 2.0],  # not a tensor
        torch.tensor([1e30, 1e30]),  # above reject_norm
    ],
)
def test_validate_gradient_rejects_bad_input(gradient: object) -> None:
    with pytest.raises(TensorError) as error:
        validate_gradient(gradient, (2,), max_norm=1.0, reject_norm=1e6)
    assert isinstance(error.value, ProtocolError)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_validate_gradient_needs_a_positive_max_norm(max_norm: float) -> None:
    with pytest.raises(ValueError):
        validate_gradient(torch.ones(2), (2,), max_norm=max_norm)
