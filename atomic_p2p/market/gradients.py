"""The requester's side of a gradient round, and the peer's check of what arrives.

How this works
--------------
docs/architecture.md section 9: a gradient is computed where the loss is and travels to the owner of the
parameter. :func:`market_gradients` is the requester's half. Given the bids it received
([n_peers, batch]), the peers' outputs ([n_peers, batch, ...], zeros for peers that did not run),
the targets and a loss, it runs the market (shift, masks, top-k, gates, mixture) under autograd
and returns, per peer and per example:

- dL/db_i: what a cooperative peer descends (chain it through its bid function: b.backward(g));
- dg_i/db_i: how its own share moves with its own bid, which a competitive peer multiplies by its
  price to climb its payoff; only the diagonal of each example's n x n Jacobian is sent, because
  that is all a peer can use (g_ib depends on the bids of example b alone, so the derivative of
  sum_b g_ib by b_ib is exactly that diagonal: one backward pass per peer);
- dL/df_i(x): for peers that opted into remote training of their model.

The peer's half is :func:`validate_gradient`: gradients from the network are untrusted, so it
checks dtype, shape and finiteness, rejects absurd norms when asked to, and clips to ``max_norm``
before anything touches a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from atomic_p2p.errors import TensorError
from atomic_p2p.market.allocation import ShiftMode, gates, masks, mixture, shift, top_k

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class MarketGradients:
    """One market round under autograd; every tensor is detached."""

    loss: torch.Tensor  # scalar
    output: torch.Tensor  # y, [batch, ...]
    gates: torch.Tensor  # [n_peers, batch]
    selected: torch.Tensor  # bool [n_peers, batch]: who executes
    loss_by_bid: torch.Tensor  # dL/db_i, [n_peers, batch]
    gate_by_bid: torch.Tensor  # dg_i/db_i (own bid only), [n_peers, batch]
    loss_by_output: torch.Tensor  # dL/df_i(x), [n_peers, batch, ...]


def market_gradients(
    bids: torch.Tensor,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFunction,
    *,
    shift_mode: ShiftMode = "mean",
    k: int | None = None,
    eps: float = 1e-8,
    straight_through: bool = False,
) -> MarketGradients:
    """Run the market on received bids and outputs; return the loss, y and every gradient.

    ``loss_fn(y, targets)`` must return a scalar. ``k=None`` lets every peer with a positive mask
    execute.
    """
    if bids.dim() != 2 or not bids.is_floating_point():
        raise ValueError(f"bids must be a float [n_peers, batch] tensor, got {tuple(bids.shape)}")
    if outputs.shape[:2] != bids.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} do not match bids {tuple(bids.shape)}")
    with torch.enable_grad():
        bid_leaf = bids.detach().clone().requires_grad_(True)
        output_leaf = outputs.detach().clone().requires_grad_(True)
        kept = top_k(
            masks(bid_leaf, shift(bid_leaf, shift_mode)),
            k if k is not None else bids.shape[0],
            straight_through=straight_through,
        )
        gate = gates(kept.masks, eps)
        y = mixture(gate, output_leaf)
        loss = loss_fn(y, targets)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        loss_by_bid, loss_by_output = torch.autograd.grad(loss, (bid_leaf, output_leaf), retain_graph=True)
        gate_by_bid = _own_gate_derivative(gate, bid_leaf)
    return MarketGradients(
        loss=loss.detach(),
        output=y.detach(),
        gates=gate.detach(),
        selected=kept.selected,
        loss_by_bid=loss_by_bid,
        gate_by_bid=gate_by_bid,
        loss_by_output=loss_by_output,
    )


def _own_gate_derivative(gate: torch.Tensor, bid_leaf: torch.Tensor) -> torch.Tensor:
    """dg_ib/db_ib for every peer i and example b: one backward pass per peer."""
    rows = []
    n_peers = gate.shape[0]
    for peer in range(n_peers):
        (by_bid,) = torch.autograd.grad(gate[peer].sum(), bid_leaf, retain_graph=peer < n_peers - 1)
        rows.append(by_bid[peer])
    return torch.stack(rows)


def validate_gradient(
    gradient: object,
    expected_shape: Sequence[int],
    max_norm: float,
    *,
    reject_norm: float | None = None,
) -> torch.Tensor:
    """Check a gradient that arrived from the network; return a detached, clipped copy.

    Raises :class:`~atomic_p2p.errors.TensorError` (INVALID_ARGUMENT) for anything that is not a
    floating tensor of exactly ``expected_shape``, holds NaN or inf, or whose L2 norm is not finite
    or exceeds ``reject_norm``. A norm above ``max_norm`` is scaled down to ``max_norm``.
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
    if not isinstance(gradient, torch.Tensor):
        raise TensorError(f"gradient must be a tensor, got {type(gradient).__name__}")
    if not gradient.is_floating_point():
        raise TensorError(f"gradient must be floating point, got {gradient.dtype}")
    if tuple(gradient.shape) != tuple(expected_shape):
        raise TensorError(f"gradient shape {tuple(gradient.shape)} != expected {tuple(expected_shape)}")
    if not bool(torch.isfinite(gradient).all()):
        raise TensorError("gradient holds NaN or inf")
    norm = float(gradient.detach().double().norm())
    if not math.isfinite(norm):
        raise TensorError("gradient norm overflows")
    if reject_norm is not None and norm > reject_norm:
        raise TensorError(f"gradient norm {norm:.3g} exceeds the limit {reject_norm:.3g}")
    clipped = gradient.detach().clone()
    if norm > max_norm:
        clipped.mul_(max_norm / norm)
    return clipped
