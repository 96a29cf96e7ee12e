"""Gradient bidding as pure torch functions (docs/architecture.md section 9): no sockets, no protobuf.

- :mod:`~atomic_p2p.market.allocation`: shift, masks, top-k, gates, mixture; buyer-side masking.
- :mod:`~atomic_p2p.market.payments`: revenue, payoff and the payoff gradient.
- :mod:`~atomic_p2p.market.gradients`: the requester's dL/db, dg/db and dL/df per peer and
  example; the peer's validation of a received gradient.
- :mod:`~atomic_p2p.market.bidders`: peer bid functions and the cooperative and competitive
  learners.

The requester, the peers and ``scripts/experiments`` all use these; the transport layer only
translates their tensors to and from BidGradient messages.
"""

from atomic_p2p.market.allocation import ShiftMode, TopK, gates, masked_output, masks, mixture, shift, top_k
from atomic_p2p.market.bidders import (
    CompetitiveLearner,
    CooperativeLearner,
    FeedForwardBid,
    ScalarBid,
    anchor_penalty,
)
from atomic_p2p.market.gradients import LossFunction, MarketGradients, market_gradients, validate_gradient
from atomic_p2p.market.payments import payoff, payoff_gradient, revenue

__all__ = [
    "CompetitiveLearner",
    "CooperativeLearner",
    "FeedForwardBid",
    "LossFunction",
    "MarketGradients",
    "ScalarBid",
    "ShiftMode",
    "TopK",
    "anchor_penalty",
    "gates",
    "market_gradients",
    "masked_output",
    "masks",
    "mixture",
    "payoff",
    "payoff_gradient",
    "revenue",
    "shift",
    "top_k",
    "validate_gradient",
]
