"""The benchmark's named markets: the live one of :mod:`.market`, and simulated ones with their own rosters.

How this works
--------------
A :class:`Scenario` is a roster, a task stream and an ask. ``current`` is the live market of
:mod:`.market` (real PeerNodes on loopback, every bid executed). Every other scenario is
*simulated*: its peers are profiles (:class:`SimPeer`), not processes, because collecting a
live log costs real RPCs and sleeps per peer per task (minutes per scenario on a busy box), and
because some of these markets (a dozen peers, text models) would take far longer live. A
simulated log has exactly the live log's shape (:class:`~.policies.LoggedTask`: an
:class:`~atomic_p2p.requester.evaluator.Ask`, one :class:`~atomic_p2p.requester.types.BidInfo`
per bidder, every bidder's :class:`~.policies.Outcome`), so every policy, the evaluator
included, is replayed on it by the same code. The bids are built, not signed (the evaluator is
pure and never reads a signature; verification is the live market's business).

Per task and per present peer, seeded:

- the peer's accuracy on this task: its profile's accuracy for the task's source at this point
  of the run (drift and steps are functions of task time), plus a per-task jitter (some batches
  are harder for it);
- the claim: an honest peer reports that per-task accuracy plus its ``claim_bias`` and a little
  noise, as the ``confidence`` strategy's max-softmax on the preview does; a liar reports a
  fixed ``claim``; a *plausibly wrong* peer (``wrong_share``) answers a share of tasks wrongly
  but in the right form, while claiming as if it had answered well;
- the outcome: the batch accuracy (a binomial draw of ``batch`` answers), the latency (its
  profile's, with log-normal jitter) and the cost (price per example times the batch).

Scenarios (``SCENARIOS``; ``tuning`` is for ``--tune`` only and is never reported):

- ``current``: the live eight-peer digits market (:data:`.market.ROSTER`).
- ``near-identical``: ten peers of one quality whose prices differ by a tenth each.
- ``accurate-expensive``: the ``accuracy`` priority; the accurate peer costs five times the cheap
  ones, and is still the best buy under that priority's weights.
- ``slow-drift``: the best general peer loses accuracy linearly over the middle half of the run,
  claiming as before.
- ``text-market``: text-generation peers as the accuracy/latency profiles of ``peers/text.py``'s
  small and large models and of hosted-API-like peers (simulated: real text models are too slow
  to run hundreds of times per policy here), prompt kinds as sources, a 2 s deadline.
- ``leave-return``: the best peer leaves a third of the way in and returns at two thirds.
- ``plausible-liar``: a cheap fast peer that answers 35% of tasks plausibly but wrongly while
  claiming 0.97 (issue item 5's adversary), beside honest peers.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from atomic_p2p.identity import Envelope, PeerId
from atomic_p2p.requester.evaluator import Ask
from atomic_p2p.requester.types import BidInfo

from .policies import Expectation, LoggedTask, Outcome

DIGIT_SOURCES: tuple[tuple[str, float], ...] = (("0-4", 0.4), ("5-9", 0.4), ("mixed", 0.2))
CLAIM_NOISE = 0.01  # std of an honest claim around this task's accuracy (plus its bias)
LATENCY_SIGMA = 0.2  # log-normal jitter of a delivered latency
LATENCY_FLOOR_MS = 0.5  # added to every delivered latency
TEXT_SOURCES: tuple[tuple[str, float], ...] = (("chat", 0.5), ("code", 0.3), ("long", 0.2))


@dataclass(frozen=True)
class SimPeer:
    """One simulated peer's profile (see the module docstring)."""

    name: str
    accuracy: Mapping[str, float] | float  # by source, or one value for every source
    price_per_example: float
    latency_ms: float
    claim_bias: float = 0.0  # honest peers: claim = this task's accuracy + claim_bias (+ noise)
    claim: float | None = None  # a liar: this claim whatever it delivers
    claimed_latency_ms: float | None = None  # None: it promises its real latency
    drift: tuple[float, float, float] | None = None  # (from, to) in task time, accuracy at `to`
    absent: tuple[float, float] | None = None  # [from, to) in task time it does not bid
    joins: float = 0.0  # task-time fraction at which it starts bidding
    wrong_share: float = 0.0  # plausibly wrong on this share of tasks
    wrong_accuracy: float = 0.1  # its accuracy on such a task
    jitter: float = 0.02  # per-task accuracy spread (std)
    role: str = ""

    def base_accuracy(self, source: str) -> float:
        if isinstance(self.accuracy, Mapping):
            return float(self.accuracy.get(source, self.accuracy.get("*", 0.0)))
        return float(self.accuracy)

    def accuracy_at(self, source: str, at: float) -> float:
        """Its mean accuracy on ``source`` at task-time fraction ``at`` (drift included)."""
        base = self.base_accuracy(source)
        if self.drift is None:
            return base
        start, stop, end = self.drift
        progress = min(1.0, max(0.0, (at - start) / (stop - start)))
        return base + (end - base) * progress

    def present(self, at: float) -> bool:
        if at < self.joins:
            return False
        return not (self.absent is not None and self.absent[0] <= at < self.absent[1])


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    peers: tuple[SimPeer, ...] = ()  # empty: the live market of .market
    live: bool = False
    sources: tuple[tuple[str, float], ...] = DIGIT_SOURCES
    weights: str = "balanced"
    time_left_ms: float = 250.0
    price_cap_per_example: float = 0.01
    capability: str = "classify/digits"
    liar: str | None = None  # whose win share after task N is judged
    seed: int = 0  # mixed into the stream seed, so scenarios differ
    events: Mapping[str, float] = field(default_factory=dict)  # label -> task-time fraction

    def event_tasks(self, tasks: int) -> dict[str, int | None]:
        return {label: int(at * tasks) for label, at in self.events.items()}


_HONEST_DIGITS = {"0-4": 0.96, "5-9": 0.95, "mixed": 0.955}


def _identical() -> tuple[SimPeer, ...]:
    return tuple(
        SimPeer(f"twin-{i}", 0.95, 0.0010 + 0.0001 * i, 8.0, claim_bias=-0.02, role="near-identical")
        for i in range(10)
    )


SCENARIOS: Mapping[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "current",
            "the live eight-peer digits market (specialists, liar, degrader, latecomer)",
            live=True,
            liar="liar",
        ),
        Scenario(
            "near-identical",
            "ten peers of one quality, prices 0.0010-0.0019 per example",
            _identical(),
            seed=11,
        ),
        Scenario(
            "accurate-expensive",
            "accuracy priority: a 0.99 peer at 5x the price of 0.88-0.93 peers (worth it under these weights)",
            (
                SimPeer("accurate", 0.99, 0.005, 20.0, claim_bias=-0.01, role="accurate, expensive"),
                SimPeer("cheap-a", 0.88, 0.001, 5.0, claim_bias=0.02, role="cheap"),
                SimPeer("cheap-b", 0.90, 0.0012, 8.0, claim_bias=0.01, role="cheap"),
                SimPeer("mid", 0.93, 0.002, 15.0, claim_bias=0.0, role="mid"),
                SimPeer("liar", 0.66, 0.0006, 60.0, claim=0.995, claimed_latency_ms=5.0, role="liar"),
            ),
            weights="accuracy",
            liar="liar",
            seed=12,
        ),
        Scenario(
            "slow-drift",
            "the best general peer drifts from 0.98 to 0.55 over the middle half, claiming as before",
            (
                SimPeer(
                    "drifter",
                    0.98,
                    0.0008,
                    3.0,
                    drift=(0.25, 0.75, 0.55),
                    claim=0.97,
                    role="drifts slowly, claims 0.97 throughout",
                ),
                SimPeer("steady", 0.965, 0.0015, 10.0, claim_bias=-0.02, role="steady"),
                SimPeer("small", 0.93, 0.001, 4.0, claim_bias=-0.03, role="small"),
                SimPeer("large", 0.985, 0.008, 45.0, claim_bias=-0.01, role="large"),
            ),
            events={"drift starts": 0.25, "drift ends": 0.75},
            seed=13,
        ),
        Scenario(
            "text-market",
            "text peers (profiles of peers/text.py small/large and hosted-API-like peers), 2 s deadline",
            (
                SimPeer(
                    "text-small",
                    {"chat": 0.78, "code": 0.55, "long": 0.60},
                    0.0002,
                    180.0,
                    claim_bias=0.05,
                    jitter=0.05,
                    role="small local LM",
                ),
                SimPeer(
                    "text-large",
                    {"chat": 0.90, "code": 0.80, "long": 0.85},
                    0.0015,
                    900.0,
                    claim_bias=0.0,
                    jitter=0.04,
                    role="large local LM",
                ),
                SimPeer(
                    "code-tuned",
                    {"chat": 0.70, "code": 0.92, "long": 0.62},
                    0.0008,
                    350.0,
                    claim_bias=-0.02,
                    jitter=0.04,
                    role="code specialist",
                ),
                SimPeer(
                    "api-relay",
                    {"chat": 0.88, "code": 0.86, "long": 0.88},
                    0.0030,
                    600.0,
                    claim_bias=-0.05,
                    jitter=0.03,
                    role="hosted API relay",
                ),
                SimPeer(
                    "liar",
                    {"chat": 0.45, "code": 0.30, "long": 0.35},
                    0.0001,
                    1200.0,
                    claim=0.98,
                    claimed_latency_ms=100.0,
                    jitter=0.05,
                    role="liar",
                ),
            ),
            sources=TEXT_SOURCES,
            time_left_ms=2000.0,
            price_cap_per_example=0.005,
            capability="generate/text",
            liar="liar",
            seed=14,
        ),
        Scenario(
            "leave-return",
            "the best peer leaves at 1/3 and returns at 2/3",
            (
                SimPeer("best", 0.98, 0.0008, 3.0, claim_bias=-0.01, absent=(1 / 3, 2 / 3), role="leaves"),
                SimPeer("second", 0.96, 0.0012, 8.0, claim_bias=-0.01, role="second"),
                SimPeer("small", 0.92, 0.0010, 4.0, claim_bias=-0.03, role="small"),
                SimPeer("large", 0.985, 0.008, 45.0, claim_bias=-0.01, role="large"),
                SimPeer("liar", 0.66, 0.0006, 60.0, claim=0.99, claimed_latency_ms=5.0, role="liar"),
            ),
            liar="liar",
            events={"best leaves": 1 / 3, "best returns": 2 / 3},
            seed=15,
        ),
        Scenario(
            "plausible-liar",
            "a cheap fast peer wrong on 35% of tasks (plausibly), claiming 0.97",
            (
                SimPeer(
                    "liar",
                    0.97,
                    0.0005,
                    3.0,
                    claim=0.97,
                    wrong_share=0.35,
                    wrong_accuracy=0.1,
                    role="plausibly wrong on 35%, claims 0.97",
                ),
                SimPeer("honest", _HONEST_DIGITS, 0.0010, 5.0, claim_bias=-0.02, role="honest"),
                SimPeer("honest-2", 0.955, 0.0012, 6.0, claim_bias=-0.01, role="honest"),
                SimPeer("large", 0.985, 0.008, 45.0, claim_bias=-0.01, role="large"),
            ),
            liar="liar",
            seed=16,
        ),
        Scenario(
            "tuning",
            "for --tune only: a market like none of the above (never reported)",
            (
                SimPeer("a", {"0-4": 0.97, "5-9": 0.5, "mixed": 0.74}, 0.0006, 4.0, role="specialist"),
                SimPeer("b", {"0-4": 0.5, "5-9": 0.97, "mixed": 0.74}, 0.0006, 4.0, role="specialist"),
                SimPeer("c", 0.95, 0.0014, 12.0, claim_bias=-0.02, drift=(0.5, 0.6, 0.7), role="steps"),
                SimPeer("d", 0.96, 0.0011, 6.0, claim_bias=0.01, joins=0.3, role="joins"),
                SimPeer("e", 0.98, 0.007, 50.0, claim_bias=-0.01, role="large"),
                SimPeer("liar", 0.7, 0.0004, 30.0, claim=0.98, claimed_latency_ms=4.0, role="liar"),
            ),
            liar="liar",
            seed=99,
        ),
    )
}
REPORTED = tuple(name for name in SCENARIOS if name != "tuning")


def _peer_id(scenario: str, peer: str) -> PeerId:
    return PeerId(hashlib.sha256(f"{scenario}/{peer}".encode()).digest())


def simulate(scenario: Scenario, tasks: int, batch: int, seed: int) -> list[LoggedTask]:
    """A seeded log of ``tasks`` tasks of ``scenario`` (simulated; see the module docstring)."""
    if scenario.live:
        raise ValueError(f"{scenario.name} is the live market: collect it with market.collect")
    rng = random.Random(f"{scenario.name}/{scenario.seed}/{seed}")
    ids = {peer.name: _peer_id(scenario.name, peer.name) for peer in scenario.peers}
    names = {pid.hex: name for name, pid in ids.items()}
    labels, shares = zip(*scenario.sources, strict=True)
    log = []
    for index in range(tasks):
        at = index / tasks
        source = rng.choices(labels, weights=shares)[0]
        task_id = f"t{index}"
        ask = Ask(
            task_id=task_id,
            capability=scenario.capability,
            time_left_ms=scenario.time_left_ms,
            budget=scenario.price_cap_per_example * batch,
            weights=scenario.weights,
            bucket=f"sim:{batch}",
            batch_size=batch,
        )
        bids, outcomes = [], {}
        for peer in scenario.peers:
            if not peer.present(at):
                continue
            bid, outcome = _one(peer, ids[peer.name], scenario, source, at, task_id, batch, rng)
            bids.append(bid)
            outcomes[peer.name] = outcome
        request_id = hashlib.sha256(f"{scenario.name}/{seed}/{index}".encode()).digest()[:16]
        log.append(LoggedTask(index, source, ask, request_id, tuple(bids), names, outcomes))
    return log


def _one(
    peer: SimPeer,
    peer_id: PeerId,
    scenario: Scenario,
    source: str,
    at: float,
    task_id: str,
    batch: int,
    rng: random.Random,
) -> tuple[BidInfo, Outcome]:
    mean = peer.accuracy_at(source, at)
    here = min(1.0, max(0.0, rng.gauss(mean, peer.jitter)))
    wrong = peer.wrong_share > 0 and rng.random() < peer.wrong_share
    delivered_p = peer.wrong_accuracy if wrong else here
    correct = sum(rng.random() < delivered_p for _ in range(batch))
    if peer.claim is not None:
        claim = peer.claim
    else:
        claim = min(1.0, max(0.0, here + peer.claim_bias + rng.gauss(0.0, CLAIM_NOISE)))
    latency = peer.latency_ms * math.exp(rng.gauss(0.0, LATENCY_SIGMA)) + LATENCY_FLOOR_MS
    promised = peer.claimed_latency_ms if peer.claimed_latency_ms is not None else peer.latency_ms
    cost = peer.price_per_example * batch
    envelope = Envelope(peer_id.raw, "atomic.bench.SimulatedBid", f"{peer.name}/{task_id}".encode(), b"")
    bid = BidInfo(
        peer_id=peer_id,
        address=f"sim://{peer.name}",
        task_id=task_id,
        model_id=f"sim-{peer.name}",
        confidence=claim,
        expected_latency_ms=promised,
        cost=cost,
        valid_until_ms=0,
        strategy="simulated",
        envelope=envelope,
        capabilities=(scenario.capability,),
    )
    return bid, Outcome(peer.name, correct / batch, latency, cost, True, False)


def expectation(scenario: Scenario, tasks: int) -> Expectation:
    """What a buyer who knew ``scenario``'s roster would expect of a peer's bid: its accuracy
    (the profile's mean at this point of the run; an honest claim, less its bias, regressed on
    as far as it tells this task's accuracy apart from the mean; the plausibly wrong share
    mixed in) and its mean latency. For :class:`~.policies.LearnOnce`."""
    peers = {peer.name: peer for peer in scenario.peers}

    def expect(task: LoggedTask, name: str) -> tuple[float, float]:
        peer = peers[name]
        mean = peer.accuracy_at(task.source, task.index / tasks)
        here = mean
        if peer.claim is None:
            weight = peer.jitter**2 / (peer.jitter**2 + CLAIM_NOISE**2)
            here = mean + weight * (task.bid_of(name).confidence - peer.claim_bias - mean)
        accuracy = (1.0 - peer.wrong_share) * here + peer.wrong_share * peer.wrong_accuracy
        latency = peer.latency_ms * math.exp(LATENCY_SIGMA**2 / 2) + LATENCY_FLOOR_MS
        return accuracy, latency

    return expect


def roster_table(peers: Sequence[SimPeer]) -> list[dict[str, object]]:
    return [
        {
            "name": peer.name,
            "role": peer.role,
            "accuracy": dict(peer.accuracy) if isinstance(peer.accuracy, Mapping) else peer.accuracy,
            "price_per_example": peer.price_per_example,
            "latency_ms": peer.latency_ms,
            "claim": peer.claim if peer.claim is not None else f"honest{peer.claim_bias:+g}",
            "drift": peer.drift,
            "absent": peer.absent,
            "joins": peer.joins,
            "wrong_share": peer.wrong_share,
        }
        for peer in peers
    ]
