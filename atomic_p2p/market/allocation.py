"""The differentiable market: bids become masks, masks become gates, gates mix outputs.

How this works
--------------
docs/architecture.md section 9, after the "Gradient Bidding" experiments (unconst/GradientBidding): for one
microtask batch x with candidate peers i = 1..n, each peer bids b_i(x) >= 0 per example.

    s   = mean_i b_i            (or a constant market shift)      shift()
    m_i = relu(b_i - s)                                          masks()
    top-k peers by m_i execute; the others' masks are zeroed     top_k()
    g_i = m_i / (sum_j m_j + eps)                                 gates()
    y   = sum_i g_i * f_i(x)                                      mixture()

Every step is a plain torch function, so autograd carries dL/db_i from the loss back to each bid.
Shapes follow one convention: peers on dim 0, examples on dim 1 (``bids`` is [n_peers, batch],
``outputs`` is [n_peers, batch, ...]). A mean shift needs at least two peers: with one, b - s is 0.

Buyer-side mode (the originals): the requester owns the bid vector w, sends w_i with the inputs,
and each peer answers relu(w_i - shift) * f_i(x): :func:`masked_output`. Paying more buys more
signal.

Invariants: masks are >= 0; gates are >= 0 and sum to sum(m) / (sum(m) + eps) < 1 per example
(0 when every mask is 0, never NaN, because eps > 0); a peer outside the top k has gate 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch

ShiftMode: TypeAlias = Literal["mean"] | float


def shift(bids: torch.Tensor, mode: ShiftMode = "mean", dim: int = 0) -> torch.Tensor:
    """The market shift s that a bid must beat: the mean bid over ``dim``, or a constant.

    The mean keeps ``dim`` (size 1) so it broadcasts against ``bids``; a constant comes back as a
    0-d tensor of the bids' dtype and device. Gradients flow through the mean: raising one's bid
    also raises the bar for everyone.
    """
    if isinstance(mode, str):
        if mode != "mean":
            raise ValueError(f"shift mode must be 'mean' or a number, got {mode!r}")
        return bids.mean(dim=dim, keepdim=True)
    if isinstance(mode, bool) or not math.isfinite(mode):
        raise ValueError(f"a constant shift must be a finite number, got {mode!r}")
    return torch.as_tensor(mode, dtype=bids.dtype, device=bids.device)


def masks(bids: torch.Tensor, market_shift: torch.Tensor | float) -> torch.Tensor:
    """m = relu(b - s): what survives of each bid above the market shift."""
    return torch.relu(bids - market_shift)


def gates(masks: torch.Tensor, eps: float = 1e-8, dim: int = 0) -> torch.Tensor:
    """g_i = m_i / (sum_j m_j + eps) over ``dim``: each peer's share of the example."""
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return masks / (masks.sum(dim=dim, keepdim=True) + eps)


@dataclass(frozen=True, slots=True)
class TopK:
    """The masks after selection, and which peers execute (top k by mask, mask > 0)."""

    masks: torch.Tensor
    selected: torch.Tensor


def top_k(masks: torch.Tensor, k: int, dim: int = 0, straight_through: bool = False) -> TopK:
    """Keep the k largest masks per example over ``dim``; zero the rest.

    A peer is selected when it is in the top k and its mask is positive (a zero mask earns a zero
    gate, so running it would be wasted work). Ties go to the lower index (torch.topk on CPU).

    With ``straight_through`` the forward values are the same, but the backward pass treats the
    zeroing as the identity, so peers just outside the top k still learn how their bid would have
    moved the loss. Without it (the default) a peer outside the top k gets no gradient through
    its mask, which is the exact derivative of the masked market.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= masks.shape[dim]:
        selected = masks > 0
    else:
        index = masks.topk(k, dim=dim).indices
        chosen = torch.zeros_like(masks, dtype=torch.bool).scatter(dim, index, True)
        selected = chosen & (masks > 0)
    keep = selected.to(masks.dtype)
    kept = masks * keep
    if straight_through:
        kept = kept + (masks - masks.detach()) * (1 - keep)
    return TopK(masks=kept, selected=selected)


def mixture(gates: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """y = sum_i g_i * f_i(x): gates [n_peers, batch], outputs [n_peers, batch, ...] -> [batch, ...].

    Pass zeros for peers that did not execute (their gate is 0; NaN times 0 is still NaN).
    """
    if outputs.shape[:2] != gates.shape:
        raise ValueError(f"gates {tuple(gates.shape)} do not match outputs {tuple(outputs.shape)}")
    weights = gates.reshape(gates.shape + (1,) * (outputs.dim() - 2))
    return (weights * outputs).sum(dim=0)


def masked_output(
    weight: torch.Tensor, market_shift: torch.Tensor | float, output: torch.Tensor
) -> torch.Tensor:
    """Buyer-side, on the peer: relu(w_i - shift) * f_i(x).

    ``weight`` is the requester's bid for this peer: a scalar, or one per example ([batch]),
    which is broadcast over the output's feature dimensions.
    """
    mask = torch.relu(weight - market_shift)
    if mask.dim() > 0:
        mask = mask.reshape(mask.shape + (1,) * (output.dim() - mask.dim()))
    return mask * output
