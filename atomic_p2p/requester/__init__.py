"""The requester SDK: buy model inference from peers through signed sealed-bid auctions.

Usage::

    async with Requester(peers=["127.0.0.1:5001", "127.0.0.1:5002"]) as requester:
        result = await requester.run("classify/digits", {"x": batch}, deadline_s=2.0, weights="speed")
        result.outputs["logits"], result.winner, result.attempts

        pipeline = Request.graph(
            [Node("classify", "classify/digits", {"x": "inputs.x"}),
             Node("probs", "calibrate/softmax", {"x": "classify.logits"})],
            {"x": batch},
        )
        graph = await requester.submit(pipeline, deadline_s=5.0, priority="high")
        graph.outputs["probs"], graph.results["classify"].winner, graph.price

        # gradient bidding (docs/gradient.md): bids, execution, loss, a BidGradient to every bidder
        async with requester.gradient_market("classify/digits", shift_mode=0.0) as market:
            round_ = await market.step(batch, labels)
            round_.loss, [(p.model_id, p.gates.mean(), p.payment, p.applied) for p in round_.peers]
"""

from atomic_p2p.requester.admission import Priority
from atomic_p2p.requester.bidpolicy import BidPolicy
from atomic_p2p.requester.client import Requester
from atomic_p2p.requester.decomposer import FromInput, FromNode, Node, Request, ShardPolicy
from atomic_p2p.requester.evaluator import score
from atomic_p2p.requester.execution import ExecutionPolicy
from atomic_p2p.requester.generation import GeneratedTokens, Generation, GenerationPart, GenerationResult
from atomic_p2p.requester.gradient import GradientMarket, GradientRound, PeerRound
from atomic_p2p.requester.graphrun import GraphResult
from atomic_p2p.requester.ranking import Excluded, Ranking, Scored
from atomic_p2p.requester.selection import Selection
from atomic_p2p.requester.spotcheck import SpotCheckConfig
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
from atomic_p2p.requester.weights import PROFILES, Weights, resolve_weights

__all__ = [
    "PROFILES",
    "Attempt",
    "BidInfo",
    "BidPolicy",
    "Excluded",
    "ExcludedBid",
    "ExecutionPolicy",
    "FromInput",
    "FromNode",
    "GeneratedTokens",
    "Generation",
    "GenerationPart",
    "GenerationResult",
    "GradientMarket",
    "GradientRound",
    "GraphResult",
    "NoBidInfo",
    "NoBidKind",
    "Node",
    "PeerRound",
    "Priority",
    "Ranking",
    "Request",
    "Requester",
    "Result",
    "Scored",
    "ScoredBid",
    "Selection",
    "ShardPolicy",
    "SpotCheckConfig",
    "Timings",
    "Weights",
    "resolve_weights",
    "score",
]
