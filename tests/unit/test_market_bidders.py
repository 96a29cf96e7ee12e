"""Peer bid functions and learners: they move the right way, and bad gradients change nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from atomic_p2p.errors import TensorError
from atomic_p2p.market import (
    CompetitiveLearner,
    CooperativeLearner,
    FeedForwardBid,
    ScalarBid,
    market_gradients,
    revenue,
)


def squared_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).sum(dim=-1).mean()


def test_bid_functions_are_positive_per_example_and_per_capability() -> None:
    scalar = ScalarBid(n_capabilities=2, initial=0.5)
    inputs = torch.randn(7, 3)
    assert scalar(inputs).tolist() == pytest.approx([0.5] * 7)
    assert scalar(inputs, capability=1).shape == (7,)
    network = FeedForwardBid(in_features=3, hidden=4, n_capabilities=2)
    assert network(inputs, capability=1).shape == (7,) and bool((network(inputs) > 0).all())
    with pytest.raises(ValueError):
        ScalarBid(initial=0.0)


def toy_round(learner_bids: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peer 0 (learning) answers the target, peer 1 answers its negation and bids a fixed 1.0."""
    target = torch.ones(batch, 2)
    bids = torch.stack([learner_bids, torch.ones(batch)])
    outputs = torch.stack([target, -target])
    return bids, outputs, target


def test_cooperative_learner_lowers_the_requesters_loss() -> None:
    learner = CooperativeLearner(ScalarBid(initial=0.8), lr=0.05)
    inputs = torch.zeros(8, 3)
    losses = []
    for _ in range(40):
        bids, outputs, target = toy_round(learner.bid(inputs), batch=8)
        result = market_gradients(bids, outputs, target, squared_error, shift_mode=0.0)
        losses.append(float(result.loss))
        learner.learn(inputs, result.loss_by_bid[0])
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("lr", [0.005, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cooperative_feed_forward_bids_specialise_by_input(seed: int, lr: float) -> None:
    """Two peers, each right on one half of the inputs: their bids learn who is right where.

    Every bidder stays in the mixture (``shift_mode=0.0``, as in
    scripts/experiments/gradient_routing.py): under the mean shift only one of two masks is
    positive per example, so the loser's bid gets no gradient and whether a seed specialises is
    up to its initialisation (2 and 4 of 10 seeds at these learning rates, against 10 of 10 here).
    """
    torch.manual_seed(seed)
    inputs = torch.linspace(-1, 1, 16)[:, None]
    sign = torch.sign(inputs)  # peer 0 outputs +1, peer 1 outputs -1; the target is sign(x)
    learners = [CooperativeLearner(FeedForwardBid(1, hidden=8), lr=lr) for _ in range(2)]
    outputs = torch.stack([torch.ones(16, 1), -torch.ones(16, 1)])
    losses = []
    for _ in range(150):
        bids = torch.stack([learner.bid(inputs) for learner in learners])
        result = market_gradients(bids, outputs, sign, squared_error, shift_mode=0.0)
        losses.append(float(result.loss))
        for peer, learner in enumerate(learners):
            learner.learn(inputs, result.loss_by_bid[peer])
    assert losses[-1] < 0.25 * losses[0]
    positive = (inputs > 0).squeeze(1)
    assert bool((result.gates[0, positive] > 0.5).all()) and bool((result.gates[1, ~positive] > 0.5).all())


def test_competitive_learner_raises_its_payoff() -> None:
    learner = CompetitiveLearner(ScalarBid(initial=0.5), lr=0.05, cost_per_bid=0.01)
    inputs = torch.zeros(4, 3)
    payoffs = []
    for _ in range(30):
        bids, outputs, target = toy_round(learner.bid(inputs), batch=4)
        result = market_gradients(bids, outputs, target, squared_error, shift_mode=0.0)
        paid = revenue(2.0, result.gates)[0] - 0.01 * bids[0].sum()
        payoffs.append(float(paid))
        learner.learn(inputs, result.gate_by_bid[0], price=2.0)
    assert payoffs[-1] > payoffs[0] + 0.5


def snapshot(learner: CooperativeLearner | CompetitiveLearner) -> dict[str, Any]:
    return copy.deepcopy(learner.state_dict())


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    for name, tensor in before["bid_function"].items():
        assert torch.equal(tensor, after["bid_function"][name]), name
    assert before["optimizer"]["state"].keys() == after["optimizer"]["state"].keys()


BAD_GRADIENTS = [
    torch.tensor([1.0, float("nan"), 0.0, 0.0]),
    torch.tensor([float("inf"), 0.0, 0.0, 0.0]),
    torch.tensor([float("-inf"), 0.0, 0.0, 0.0]),
    torch.ones(5),
    torch.ones(4, 1),
    torch.ones(3),
    torch.full((4,), 1e12),
    torch.ones(4, dtype=torch.int64),
]


@pytest.mark.parametrize("gradient", BAD_GRADIENTS)
@pytest.mark.parametrize("kind", ["cooperative", "competitive"])
def test_bad_gradients_leave_the_bid_function_untouched(gradient: torch.Tensor, kind: str) -> None:
    function = FeedForwardBid(3, hidden=4)
    inputs = torch.randn(4, 3)
    learner: CooperativeLearner | CompetitiveLearner
    if kind == "cooperative":
        learner = CooperativeLearner(function, reject_norm=1e6)
        learner.learn(inputs, torch.ones(4))  # so the optimiser has state to protect
        before = snapshot(learner)
        with pytest.raises(TensorError):
            learner.learn(inputs, gradient)
    else:
        learner = CompetitiveLearner(function, reject_norm=1e6)
        learner.learn(inputs, torch.ones(4), price=1.0)
        before = snapshot(learner)
        with pytest.raises(TensorError):
            learner.learn(inputs, gradient, price=1.0)
    assert_same_state(before, snapshot(learner))
    assert before["optimizer"]["state"][0]["step"] == learner.optimizer.state_dict()["state"][0]["step"]


@pytest.mark.parametrize("price", [float("nan"), -1.0, float("inf")])
def test_competitive_learner_refuses_a_bad_price_untouched(price: float) -> None:
    learner = CompetitiveLearner(ScalarBid())
    before = snapshot(learner)
    with pytest.raises(ValueError):
        learner.learn(torch.zeros(2, 1), torch.ones(2), price=price)
    assert_same_state(before, snapshot(learner))


def test_large_gradients_are_clipped_to_max_norm() -> None:
    function = ScalarBid(initial=1.0)
    learner = CooperativeLearner(
        function, max_norm=1.0, optimizer=torch.optim.SGD(function.parameters(), lr=1.0)
    )
    raw_before = float(function.raw.detach()[0])
    learner.learn(torch.zeros(1, 1), torch.tensor([1000.0]))
    # d softplus(raw)/d raw = sigmoid(raw); the clipped gradient is exactly 1.
    assert float(function.raw.detach()[0]) == pytest.approx(
        raw_before - float(torch.sigmoid(torch.tensor(raw_before)))
    )


def test_state_dict_round_trip() -> None:
    first = CooperativeLearner(FeedForwardBid(3, hidden=4))
    first.learn(torch.randn(4, 3), torch.ones(4))
    second = CooperativeLearner(FeedForwardBid(3, hidden=4))
    second.load_state_dict(first.state_dict())
    inputs = torch.randn(5, 3)
    assert torch.equal(first.bid(inputs), second.bid(inputs))


def test_gradcheck_bid_functions_in_float64() -> None:
    torch.manual_seed(0)
    network = FeedForwardBid(3, hidden=4, n_capabilities=2).double()
    inputs = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: network(x, capability=1), (inputs,))
    scalar = ScalarBid(n_capabilities=2).double()
    bids = scalar(torch.zeros(4, 1), capability=1)  # one parameter, broadcast to 4 examples
    (gradient,) = torch.autograd.grad(bids.sum(), scalar.raw)
    assert gradient.tolist() == pytest.approx([0.0, 4 * float(torch.sigmoid(scalar.raw.detach()[1]))])
