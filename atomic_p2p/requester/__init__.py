"""The requester SDK: buy model inference from peers through signed sealed-bid auctions.

Usage::

    async with Requester(peers=["127.0.0.1:5001", "127.0.0.1:5002"]) as requester:
        result = await requester.run("classify/digits", {"x": batch}, deadline_s=2.0, weights="speed")
        result.outputs["logits"], result.winner, result.attempts
"""

from atomic_p2p.requester.client import Requester
from atomic_p2p.requester.execution import ExecutionPolicy
from atomic_p2p.requester.scoring import PROFILES, Excluded, Ranking, Scored, Weights, resolve_weights, score
from atomic_p2p.requester.types import (
    Attempt,
    BidInfo,
    ExcludedBid,
    NoBidInfo,
    NoBidKind,
    Result,
    ScoredBid,
    Timings,
)

__all__ = [
    "PROFILES",
    "Attempt",
    "BidInfo",
    "Excluded",
    "ExcludedBid",
    "ExecutionPolicy",
    "NoBidInfo",
    "NoBidKind",
    "Ranking",
    "Requester",
    "Result",
    "Scored",
    "ScoredBid",
    "Timings",
    "Weights",
    "resolve_weights",
    "score",
]
