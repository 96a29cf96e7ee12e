"""Routing policies, replayed online over a logged market with bandit feedback.

How this works
--------------
The log (:mod:`.market`) holds, per task, every peer's signed bid *and* the outcome of executing
that bid (accuracy on the batch, latency as the requester measured it, cost charged). A policy
sees the tasks in order; for each it sees the bids and chooses one peer, and only then learns
that one peer's outcome (bandit feedback: what the other peers would have delivered is never
shown to it). Because every bid was executed, every policy can be replayed on the same stream
without a counterfactual model, and the per-task oracle (the best realized outcome) is exact.

The replay is valid because the logged peers do not adapt to who wins (their strategies are
``confidence``, ``fixed`` and the bench liar: none learns from notices); a peer whose bids
depended on its past wins would need a live run per policy.

Utility is the evaluator's own weighted score (:mod:`atomic_p2p.requester.evaluator`, step 3)
computed from the realized outcome instead of the expectation: with the ask's weights normalised,
``w_acc * accuracy + w_lat * (1 - latency / time_left) + w_cost * (1 - cost / budget)``, each
component clipped to [0, 1]. A failed execution is worth 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from atomic_p2p.requester.evaluator import Ask, EvaluatorConfig
from atomic_p2p.requester.memory import MarketMemory
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.requester.weights import resolve_weights


@dataclass(frozen=True, slots=True)
class Outcome:
    """What executing one peer's bid for one task delivered."""

    peer: str
    accuracy: float  # fraction of the batch classified right
    latency_ms: float  # as the requester measured the Execute call
    cost: float  # charged
    ok: bool = True
    degraded: bool = False  # the degrading peer's module was already noisy


@dataclass(frozen=True, slots=True)
class LoggedTask:
    """One task: its ask, the bids (arrival order) and every bid's outcome, by peer name."""

    index: int  # position in the collected stream
    source: str  # which digits the batch was drawn from ("0-4", "5-9", "mixed")
    ask: Ask
    request_id: bytes
    bids: tuple[BidInfo, ...]
    names: Mapping[str, str]  # peer id hex -> peer name
    outcomes: Mapping[str, Outcome]

    @property
    def bidders(self) -> tuple[str, ...]:
        return tuple(self.names[bid.peer_id.hex] for bid in self.bids)

    def bid_of(self, peer: str) -> BidInfo:
        return next(bid for bid in self.bids if self.names[bid.peer_id.hex] == peer)


def utility(outcome: Outcome, ask: Ask) -> float:
    """The evaluator's weighted score of the realized outcome (see the module docstring)."""
    if not outcome.ok:
        return 0.0
    weights = resolve_weights(ask.weights).normalised()
    latency = 1.0 - outcome.latency_ms / ask.time_left_ms if ask.time_left_ms > 0 else 0.0
    cost = 1.0 - outcome.cost / ask.budget if ask.budget else 1.0
    return (
        weights.accuracy * _clip(outcome.accuracy)
        + weights.latency * _clip(latency)
        + weights.cost * _clip(cost)
    )


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


class Policy(Protocol):
    name: str

    def choose(self, task: LoggedTask) -> str | None:
        """The peer to buy from (one of ``task.bidders``), or None to buy nothing."""
        ...

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        """The chosen peer's outcome and its utility: the only feedback a policy gets."""
        ...


@dataclass(frozen=True, slots=True)
class Step:
    """One task of a replay: who was chosen and what it delivered."""

    peer: str | None
    utility: float
    accuracy: float
    cost: float
    latency_ms: float


def replay(policy: Policy, stream: Sequence[LoggedTask]) -> list[Step]:
    steps = []
    for task in stream:
        peer = policy.choose(task)
        if peer is None:
            steps.append(Step(None, 0.0, 0.0, 0.0, 0.0))
            continue
        outcome = task.outcomes[peer]
        gain = utility(outcome, task.ask)
        policy.learn(task, peer, outcome, gain)
        steps.append(Step(peer, gain, outcome.accuracy, outcome.cost, outcome.latency_ms))
    return steps


# --- baselines ------------------------------------------------------------------------------


class Oracle:
    """Hindsight: the best realized utility of each task. Not a policy anyone can run."""

    name = "oracle"

    def choose(self, task: LoggedTask) -> str | None:
        return max(
            task.bidders, key=lambda peer: (utility(task.outcomes[peer], task.ask), peer), default=None
        )

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        return None


@dataclass
class RandomPolicy:
    rng: random.Random
    name: str = "random"

    def choose(self, task: LoggedTask) -> str | None:
        return self.rng.choice(task.bidders) if task.bids else None

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        return None


class Cheapest:
    """The lowest bid cost (then the lowest promised latency): what a price-only market buys."""

    name = "cheapest"

    def choose(self, task: LoggedTask) -> str | None:
        best = min(task.bids, key=lambda bid: (bid.cost, bid.expected_latency_ms), default=None)
        return None if best is None else task.names[best.peer_id.hex]

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        return None


@dataclass
class FixedOrder:
    """Always the first available peer of a fixed preference order."""

    order: Sequence[str]
    name: str = "best-single"

    def choose(self, task: LoggedTask) -> str | None:
        bidders = set(task.bidders)
        return next((peer for peer in self.order if peer in bidders), None)

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        return None


def best_single_order(stream: Sequence[LoggedTask]) -> list[str]:
    """Peers by their mean realized utility over the tasks they bid on (hindsight), best first:
    the best single peer, with the next best standing in where it did not bid (before it joined)."""
    totals: dict[str, list[float]] = {}
    for task in stream:
        for peer in task.bidders:
            totals.setdefault(peer, []).append(utility(task.outcomes[peer], task.ask))
    return sorted(totals, key=lambda peer: (-sum(totals[peer]) / len(totals[peer]), peer))


@dataclass
class _Arms:
    """Per-peer play counts and utility sums (peers appear as they first bid)."""

    plays: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)

    def mean(self, peer: str) -> float:
        return self.total[peer] / self.plays[peer]

    def unplayed(self, task: LoggedTask) -> list[str]:
        return [peer for peer in task.bidders if not self.plays.get(peer)]

    def add(self, peer: str, gain: float) -> None:
        self.plays[peer] = self.plays.get(peer, 0) + 1
        self.total[peer] = self.total.get(peer, 0.0) + gain


@dataclass
class EpsilonGreedy:
    """Every new peer once, then the best mean utility, or with probability ``epsilon`` a random one."""

    rng: random.Random
    epsilon: float = 0.1
    name: str = "epsilon-greedy"
    arms: _Arms = field(default_factory=_Arms)

    def choose(self, task: LoggedTask) -> str | None:
        if not task.bids:
            return None
        fresh = self.arms.unplayed(task)
        if fresh:
            return fresh[0]
        if self.rng.random() < self.epsilon:
            return self.rng.choice(task.bidders)
        return max(task.bidders, key=lambda peer: (self.arms.mean(peer), peer))

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        self.arms.add(peer, gain)


@dataclass
class Ucb1:
    """UCB1 (Auer et al., 2002) on utility in [0, 1]: mean + sqrt(2 ln t / n); new peers first."""

    name: str = "ucb1"
    arms: _Arms = field(default_factory=_Arms)

    def choose(self, task: LoggedTask) -> str | None:
        if not task.bids:
            return None
        fresh = self.arms.unplayed(task)
        if fresh:
            return fresh[0]
        t = sum(self.arms.plays.values())
        return max(
            task.bidders,
            key=lambda peer: (
                self.arms.mean(peer) + math.sqrt(2 * math.log(t) / self.arms.plays[peer]),
                peer,
            ),
        )

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        self.arms.add(peer, gain)


@dataclass
class BetaThompson:
    """Thompson sampling on Beta(1 + sum u, 1 + sum (1 - u)) per peer: utility as a fractional
    Bernoulli outcome (Agrawal and Goyal, 2012)."""

    rng: random.Random
    name: str = "thompson"
    arms: _Arms = field(default_factory=_Arms)

    def choose(self, task: LoggedTask) -> str | None:
        if not task.bids:
            return None

        def draw(peer: str) -> float:
            plays, total = self.arms.plays.get(peer, 0), self.arms.total.get(peer, 0.0)
            return self.rng.betavariate(1.0 + total, 1.0 + plays - total)

        return max(task.bidders, key=draw)

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        self.arms.add(peer, gain)


Expectation = Callable[[LoggedTask, str], tuple[float, float]]


@dataclass
class LearnOnce:
    """A reference, not a baseline: a buyer that learns everything about a peer from one
    purchase. A peer it never bought from is valued at its bid's claims (confidence, promised
    latency), as any policy that starts knowing nothing must value it; from its first purchase on,
    at what the market's true profile makes of the bid (``expect``: expected accuracy and latency),
    which no online policy can know better. Best expected utility wins. It bounds what reading
    bids and learning can achieve on a simulated market: if it does not beat a baseline, no
    learner does by more than luck."""

    expect: Expectation
    name: str = "learn-once"
    known: set[str] = field(default_factory=set)

    def choose(self, task: LoggedTask) -> str | None:
        def value(peer: str) -> tuple[float, str]:
            bid = task.bid_of(peer)
            if peer in self.known:
                accuracy, latency = self.expect(task, peer)
            else:
                accuracy, latency = bid.confidence, bid.expected_latency_ms
            return utility(Outcome(peer, accuracy, latency, bid.cost), task.ask), peer

        return max(task.bidders, key=value, default=None)

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        self.known.add(peer)


# --- ours -------------------------------------------------------------------------------------


class Evaluator:
    """The requester's evaluator, fed exactly as the real Requester feeds it: a
    :class:`MarketMemory` (no store) decides on the signed bids; the winner's delivery (latency,
    cost) and then its outcome (the batch accuracy, as ``report_outcome`` would give it) update
    its profile; a failed execution is :meth:`MarketMemory.failed`."""

    def __init__(self, name: str, config: EvaluatorConfig, seed: int) -> None:
        self.name = name
        self.memory = MarketMemory(config, store=None, rng=random.Random(seed))

    def choose(self, task: LoggedTask) -> str | None:
        decision = self.memory.decide(task.bids, task.ask, {})
        if not decision.ranked:
            return None
        return task.names[decision.ranked[0].item.peer_id.hex]

    def learn(self, task: LoggedTask, peer: str, outcome: Outcome, gain: float) -> None:
        bid = task.bid_of(peer)
        if not outcome.ok:
            self.memory.failed(bid, task.ask)
            return
        reference = self.memory.delivered(task.request_id, bid, task.ask, outcome.latency_ms, outcome.cost)
        self.memory.outcome(reference, outcome.accuracy)


PolicyFactory = Callable[[Sequence[LoggedTask], int], Policy]


def baselines() -> dict[str, PolicyFactory]:
    """Every baseline, by name: each builds a fresh policy for a stream and a seed."""
    return {
        "random": lambda stream, seed: RandomPolicy(random.Random(seed)),
        "cheapest": lambda stream, seed: Cheapest(),
        "best-single": lambda stream, seed: FixedOrder(best_single_order(stream)),
        "epsilon-greedy": lambda stream, seed: EpsilonGreedy(random.Random(seed)),
        "ucb1": lambda stream, seed: Ucb1(),
        "thompson": lambda stream, seed: BetaThompson(random.Random(seed)),
    }


def ours(configs: Mapping[str, EvaluatorConfig]) -> dict[str, PolicyFactory]:
    """One evaluator policy per named config."""

    def factory(name: str, config: EvaluatorConfig) -> PolicyFactory:
        return lambda stream, seed: Evaluator(name, config, seed)

    return {name: factory(name, config) for name, config in configs.items()}
