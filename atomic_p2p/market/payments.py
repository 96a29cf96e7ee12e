"""What the market pays: revenue, payoff, and the gradient a competitive peer climbs.

How this works
--------------
docs/architecture.md section 9: the requester pays each executing peer price_i * g_i per example, so over a
batch revenue_i = price_i * sum_b g_ib, and a peer's payoff is P_i = revenue_i - cost_i.

A peer cannot compute how its share g_i moves with its bid, because g_i depends on every other
peer's bid. The requester can, so its BidGradient carries dg_i/db_i per example (the diagonal of
the per-example Jacobian, see :func:`atomic_p2p.market.market_gradients`). With it the peer's own
payoff gradient is a product: dP_i/db_ib = price_i * dg_ib/db_ib - dcost_i/db_ib
(:func:`payoff_gradient`).
"""

from __future__ import annotations

import torch


def revenue(price: torch.Tensor | float, gates: torch.Tensor) -> torch.Tensor:
    """revenue_i = price_i * sum over examples of g_i: gates [n_peers, batch] -> [n_peers]."""
    if gates.dim() != 2:
        raise ValueError(f"gates must be [n_peers, batch], got {tuple(gates.shape)}")
    return torch.as_tensor(price, dtype=gates.dtype, device=gates.device) * gates.sum(dim=1)


def payoff(revenue: torch.Tensor, cost: torch.Tensor | float) -> torch.Tensor:
    """P_i = revenue_i - cost_i."""
    return revenue - cost


def payoff_gradient(
    price: torch.Tensor | float,
    gate_by_bid: torch.Tensor,
    cost_by_bid: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """dP/db per example for one peer: price * dg/db - dcost/db (the ascent direction)."""
    return price * gate_by_bid - cost_by_bid
