"""Peer bid functions and the two ways a peer learns from a BidGradient.

How this works
--------------
docs/architecture.md section 9: each peer answers a microtask with a bid b(x) >= 0 per example, from
its own bid function: :class:`ScalarBid` (one learnable bid per capability, the same for every
example) or :class:`FeedForwardBid` (a small network of the input, so a peer can bid high exactly
where its model is good). Both end in a softplus, which keeps bids positive with a gradient
everywhere.

After the requester computes its loss it sends each peer a BidGradient; the peer re-runs its bid
function on the inputs it bid on and chains the received per-example gradient through it
(``bids.backward(direction)``), then takes one optimiser step:

- :class:`CooperativeLearner` descends the requester's loss: direction = dL/db.
- :class:`CompetitiveLearner` ascends its own payoff P = price * sum_b g_b - cost_per_bid * sum_b b_b:
  direction = -(price * dg/db - cost_per_bid), from the dg/db the requester sent
  (:func:`~atomic_p2p.market.payoff_gradient`).

Every received gradient passes :func:`~atomic_p2p.market.validate_gradient` first (shape, NaN/inf,
norm: clip, or reject above ``reject_norm``); a rejected one raises TensorError before any
parameter or optimiser state changes. Re-running the bid function costs one small forward pass
and means no graph is held between the auction and the gradient's arrival.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from atomic_p2p.market.gradients import validate_gradient
from atomic_p2p.market.payments import payoff_gradient


def _inverse_softplus(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"an initial bid must be positive and finite, got {value!r}")
    return value + math.log(-math.expm1(-value))


class ScalarBid(nn.Module):
    """b(x) = softplus(theta_c): one learnable bid per capability c, whatever the input."""

    def __init__(self, n_capabilities: int = 1, initial: float = 1.0) -> None:
        super().__init__()
        if n_capabilities < 1:
            raise ValueError(f"n_capabilities must be >= 1, got {n_capabilities}")
        self.raw = nn.Parameter(torch.full((n_capabilities,), _inverse_softplus(initial)))

    def forward(self, inputs: torch.Tensor, capability: int = 0) -> torch.Tensor:
        """Bids [batch] for a batch of inputs (only its length is read)."""
        return functional.softplus(self.raw[capability]).expand(inputs.shape[0])


class FeedForwardBid(nn.Module):
    """b(x) = softplus(MLP(flatten(x)))_c: a bid per example and capability."""

    def __init__(self, in_features: int, hidden: int = 16, n_capabilities: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_capabilities),
        )

    def forward(self, inputs: torch.Tensor, capability: int = 0) -> torch.Tensor:
        """Bids [batch]."""
        return functional.softplus(self.net(inputs)[:, capability])


# Bids are floored here before their log is taken, so a bid that underflowed to 0 still gets a
# finite penalty (its gradient through the floor is 0; the bid function's other outputs carry it).
_LOG_FLOOR = 1e-30


def anchor_penalty(bids: torch.Tensor, anchor: float, weight: float) -> torch.Tensor:
    """R(b) = weight / 2 * (mean_b log b_b - log anchor)^2: pulls the batch's mean log-bid
    (the log of the geometric mean) toward ``log anchor``.

    The market's gates b_i / sum_j b_j do not change when a peer scales all its bids, so the
    requester's dL/db carries nothing about scale; R fixes the scale and leaves every ratio
    between examples free. Its gradient by a pre-activation z with b = softplus(z) is
    weight * (mean log b - log anchor) / batch * sigmoid(z) / b, which tends to
    weight * (...) / batch as b -> 0: a collapsed bid is still pulled back (docs/gradient.md).
    """
    mean_log = torch.log(bids.clamp_min(_LOG_FLOOR)).mean()
    return 0.5 * weight * (mean_log - math.log(anchor)) ** 2


class _Learner:
    """Holds a bid function and its optimiser; subclasses choose the direction to follow."""

    def __init__(
        self,
        bid_function: nn.Module,
        *,
        lr: float = 1e-2,
        max_norm: float = 1.0,
        reject_norm: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        anchor: float | None = None,
        anchor_weight: float = 1.0,
    ) -> None:
        if anchor is not None and not (math.isfinite(anchor) and anchor > 0):
            raise ValueError(f"a bid anchor must be positive and finite, got {anchor!r}")
        if not (math.isfinite(anchor_weight) and anchor_weight >= 0):
            raise ValueError(f"anchor_weight must be >= 0 and finite, got {anchor_weight!r}")
        self.bid_function = bid_function
        self.max_norm = max_norm
        self.reject_norm = reject_norm
        self.anchor = anchor
        self.anchor_weight = anchor_weight
        self.optimizer = optimizer or torch.optim.Adam(bid_function.parameters(), lr=lr)

    def bid(self, inputs: torch.Tensor, capability: int = 0) -> torch.Tensor:
        """The bids to send with an answer ([batch], detached)."""
        with torch.no_grad():
            return self.bid_function(inputs, capability)

    def _checked(self, inputs: torch.Tensor, gradient: object) -> torch.Tensor:
        return validate_gradient(gradient, (inputs.shape[0],), self.max_norm, reject_norm=self.reject_norm)

    def _descend(self, inputs: torch.Tensor, capability: int, direction: torch.Tensor) -> None:
        """One optimiser step along -direction, chained through the bid function, plus the
        scale anchor's own gradient when one is set (:func:`anchor_penalty`)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            bids = self.bid_function(inputs, capability)
            objective = (bids * direction.to(dtype=bids.dtype, device=bids.device)).sum()
            if self.anchor is not None and self.anchor_weight > 0:
                objective = objective + anchor_penalty(bids, self.anchor, self.anchor_weight)
            objective.backward()
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """Bid function and optimiser state, for a checkpoint under the peer's data directory."""
        return {"bid_function": self.bid_function.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bid_function.load_state_dict(state["bid_function"])
        self.optimizer.load_state_dict(state["optimizer"])


class CooperativeLearner(_Learner):
    """Descends the requester's loss: theta <- step(theta, sum_b dL/db_b * db_b/dtheta)."""

    def learn(self, inputs: torch.Tensor, loss_by_bid: object, capability: int = 0) -> None:
        """Apply a received dL/db ([batch]); raises TensorError, untouched, if it is bad."""
        self._descend(inputs, capability, self._checked(inputs, loss_by_bid))


class CompetitiveLearner(_Learner):
    """Ascends its own payoff price * sum_b g_b - cost_per_bid * sum_b b_b."""

    def __init__(self, bid_function: nn.Module, *, cost_per_bid: float = 0.0, **options: Any) -> None:
        super().__init__(bid_function, **options)
        if not (math.isfinite(cost_per_bid) and cost_per_bid >= 0):
            raise ValueError(f"cost_per_bid must be >= 0 and finite, got {cost_per_bid!r}")
        self.cost_per_bid = cost_per_bid

    def learn(self, inputs: torch.Tensor, gate_by_bid: object, price: float, capability: int = 0) -> None:
        """Apply a received dg/db ([batch]) at the price this peer was paid per unit of gate."""
        if not (math.isfinite(price) and price >= 0):
            raise ValueError(f"price must be >= 0 and finite, got {price!r}")
        checked = self._checked(inputs, gate_by_bid)
        self._descend(inputs, capability, -payoff_gradient(price, checked, self.cost_per_bid))
