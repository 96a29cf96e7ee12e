"""The bid-scale anchor's penalty (docs/gradient.md); the collapse it prevents is shown on the
digits market in tests/system/test_gradient_routing.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from atomic_p2p.market import CooperativeLearner, FeedForwardBid, anchor_penalty


def test_the_penalty_pulls_the_mean_log_bid_to_the_anchor_and_ignores_the_ratios() -> None:
    bids = torch.tensor([0.5, 2.0])  # geometric mean 1
    assert float(anchor_penalty(bids, 1.0, 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(anchor_penalty(bids * math.e, 1.0, 3.0)) == pytest.approx(1.5)
    raw = torch.tensor([-60.0, -60.0], requires_grad=True)  # softplus: bids near e^-60
    anchor_penalty(functional.softplus(raw), 1.0, 1.0).backward()
    assert raw.grad is not None and bool((raw.grad < -10).all())  # a collapsed bid is pulled up
    with pytest.raises(ValueError):
        CooperativeLearner(FeedForwardBid(2, 2), anchor=0.0)
