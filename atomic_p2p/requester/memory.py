"""What a requester has learned, and where it is kept: profiles, win shares, load, the store.

How this works
--------------
The evaluator is pure; this class holds the state it reads and that outcomes update:

- ``profiles``: one :class:`~.profiler.Profile` per (peer, model, capability), fed by every
  delivery (latency and cost against what the bid promised), every failure (outcome 0) and every
  outcome reported later (:meth:`outcome`, behind :meth:`Requester.report_outcome`);
- ``shares``: recent win shares, for the anti-starvation floor;
- ``in_flight``: this requester's own tasks running at each peer, for the utilization penalty.

With a :class:`~atomic_p2p.store.Store` every bid, every decision with its rationale, every
payment and every profile change is written off the hot path (a writer thread batches them);
profiles are reloaded from it at start, so a restarted requester knows what it knew. Tasks that
can still receive an outcome are remembered in a bounded table (oldest forgotten first); with a
store, a task delivered to an earlier requester on the same store can receive one too (``atomic
report``): its decision, bid and payment are read back, and every outcome is stored as an
``outcome`` observation so that each task counts once across processes.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import UnknownTaskError
from atomic_p2p.identity import Envelope, PeerId
from atomic_p2p.requester.clearing import WinShares
from atomic_p2p.requester.evaluator import Ask, EvaluatorConfig, MarketView, evaluate
from atomic_p2p.requester.profiler import Estimate, Observation, Profile, ProfileKey, estimate, record
from atomic_p2p.requester.ranking import Decision
from atomic_p2p.requester.types import BidInfo, NoBidInfo
from atomic_p2p.store import (
    BidRecord,
    DecisionRecord,
    ObservationRecord,
    PaymentKind,
    PaymentRecord,
    ProfileRecord,
    Store,
)

MAX_PENDING_OUTCOMES = 100_000


@dataclass(frozen=True, slots=True)
class PendingOutcome:
    """A delivered task whose quality may be reported later."""

    key: ProfileKey
    bid: BidInfo
    request_id: bytes
    bucket: str


class MarketMemory:
    """Profiles, shares, load and (optionally) the store; see the module docstring."""

    # How a delivered task's payment is booked (a prober's memory books PaymentKind.PROBE).
    payment_kind = PaymentKind.CHARGE

    def __init__(
        self,
        config: EvaluatorConfig | None = None,
        store: Store | None = None,
        rng: random.Random | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config or EvaluatorConfig()
        self.store = store
        self.rng = rng or random.Random()
        self.clock = clock  # stamps observations, decisions and payments (wall_ms)
        self.profiles: dict[ProfileKey, Profile] = {}
        self.shares = WinShares()
        self.in_flight: Counter[str] = Counter()
        self._pending: OrderedDict[str, PendingOutcome] = OrderedDict()
        self._reported: OrderedDict[str, None] = OrderedDict()  # not yet readable from the store
        self._owns_store = True
        # The latest decision and no-bids passed to log(): what a caller that caught a
        # NoBidsError can inspect (meaningful when one auction at a time uses this memory).
        self.last_auction: tuple[Decision[BidInfo], tuple[NoBidInfo, ...]] | None = None
        if store is not None:
            for row in store.latest_profiles():
                key = ProfileKey(row.peer, row.model_id, row.capability)
                self.profiles[key] = Profile.from_dict(row.snapshot)

    @classmethod
    def open(
        cls,
        path: Path | str | None,
        config: EvaluatorConfig | None,
        seed: int | None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> MarketMemory:
        store = Store.open(Path(path)) if path is not None else None
        return cls(config, store, random.Random(seed), clock=clock)

    def close(self) -> None:
        if self.store is not None and self._owns_store:
            self.store.close()

    async def commit(self) -> None:
        """Return once everything this memory has written so far (decisions and their bids,
        payments, profiles) is committed: acknowledged, in the sense of docs/store.md."""
        if self.store is not None:
            await self.clock.run_blocking(self.store.flush)

    def follow(self, main: MarketMemory, payment_kind: PaymentKind) -> None:
        """Learn into ``main`` from now on: its profiles, its load and its store, with payments
        booked as ``payment_kind``; win shares and pending outcomes stay this memory's own.
        A prober's one-peer requester does this, so what probes teach lands where the main
        requester decides. :meth:`close` then leaves the store to ``main``."""
        self.profiles = main.profiles
        self.in_flight = main.in_flight
        self.store = main.store
        self.payment_kind = payment_kind
        self._owns_store = False

    # --- deciding -----------------------------------------------------------------------------

    def decide(
        self, bids: Sequence[BidInfo], ask: Ask, utilization: Mapping[str, float]
    ) -> Decision[BidInfo]:
        view = MarketView(self.profiles, dict(self.in_flight), utilization, self.shares)
        decision = evaluate(bids, ask, view, self.config, rng=self.rng, now_ms=self.clock.wall_ms())
        self.shares = self.shares.after(decision.eligible_peers(), decision.winner_peer())
        return decision

    def log(
        self,
        request_id: bytes,
        ask: Ask,
        decision: Decision[BidInfo],
        no_bids: Sequence[NoBidInfo],
    ) -> None:
        """Every bid and the decision with its rationale, in one transaction (off the hot path)."""
        self.last_auction = (decision, tuple(no_bids))
        if self.store is None:
            return
        at = self.clock.wall_ms()
        bids = [scored.item for scored in decision.ranked] + [e.item for e in decision.excluded]
        winner = decision.ranked[0].item if decision.ranked else None
        rationale = dict(decision.rationale.to_dict()) if decision.rationale is not None else {}
        rationale["no_bids"] = [str(no_bid) for no_bid in no_bids]
        self.store.log_decision(
            DecisionRecord(
                at_ms=at,
                request_id=request_id,
                task_id=ask.task_id,
                capability=ask.capability,
                winner_peer=winner.peer_id.hex if winner else None,
                winner_model=winner.model_id if winner else None,
                price=decision.price,
                rationale=rationale,
            ),
            [_bid_record(at, request_id, ask, bid) for bid in bids],
        )

    # --- outcomes -----------------------------------------------------------------------------

    def started(self, bid: BidInfo) -> None:
        self.in_flight[bid.peer_id.hex] += 1

    def finished(self, bid: BidInfo) -> None:
        key = bid.peer_id.hex
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]

    def delivered(self, request_id: bytes, bid: BidInfo, ask: Ask, latency_ms: float, paid: float) -> str:
        """A verified result arrived: learn latency and cost, pay, and remember the task for a
        later outcome. Returns the task reference :meth:`outcome` takes."""
        key = ProfileKey(bid.peer_id.hex, bid.model_id, ask.capability)
        observation = Observation(
            at_ms=self.clock.wall_ms(),
            latency_ms=max(0.0, latency_ms),
            cost=max(0.0, paid),
            promised_latency_ms=bid.expected_latency_ms,
            promised_cost=bid.cost,
            bucket=ask.bucket,
        )
        self._learn(key, observation)
        if self.store is not None:
            self.store.record_payment(
                PaymentRecord(
                    self.clock.wall_ms(), request_id, ask.task_id, bid.peer_id.hex, paid, self.payment_kind
                )
            )
        reference = task_reference(request_id, ask.task_id)
        self._pending[reference] = PendingOutcome(key, bid, request_id, ask.bucket)
        while len(self._pending) > MAX_PENDING_OUTCOMES:
            self._pending.popitem(last=False)
        return reference

    def failed(self, bid: BidInfo, ask: Ask) -> None:
        """An execution failed or timed out: an outcome of 0 against the confidence it claimed."""
        key = ProfileKey(bid.peer_id.hex, bid.model_id, ask.capability)
        self._learn(
            key,
            Observation(
                self.clock.wall_ms(), outcome=0.0, promised_confidence=claimed(bid), bucket=ask.bucket
            ),
        )

    def outcome(self, reference: str, score: float) -> PendingOutcome:
        """The quality of a delivered task became known (a label, a rating), in [0, 1]."""
        pending = self._pending.get(reference)
        if pending is None and reference not in self._reported:
            pending = self._stored_delivery(reference)
        if pending is None:
            raise UnknownTaskError(
                f"no delivered task {reference[:80]!r} is awaiting an outcome here; pass Result.task_ref "
                "of a result this requester (or, with a store, one on the same store) returned and "
                f"not yet reported (outcomes are kept for the most recent {MAX_PENDING_OUTCOMES} tasks)"
            )
        observation = Observation(
            self.clock.wall_ms(),
            outcome=score,
            promised_confidence=claimed(pending.bid),
            bucket=pending.bucket,
        )
        self._learn(pending.key, observation)
        self._pending.pop(reference, None)
        self._reported[reference] = None
        while len(self._reported) > MAX_PENDING_OUTCOMES:
            self._reported.popitem(last=False)
        if self.store is not None:
            self.store.record_observation(
                ObservationRecord(
                    observation.at_ms,
                    pending.key.peer,
                    pending.key.model_id,
                    "outcome",
                    score,
                    {"task": reference},
                )
            )
        return pending

    def _stored_delivery(self, reference: str) -> PendingOutcome | None:
        """A task an earlier requester on this store delivered and nobody has reported yet,
        rebuilt from its decision, its deliverer's logged bid and the payment; else None."""
        request_hex, _, task_id = reference.partition("/")
        if self.store is None or not task_id or len(request_hex) != 32:
            return None
        try:
            request_id = bytes.fromhex(request_hex)
        except ValueError:
            return None
        peer = self.store.charged_peer(request_id, task_id)
        if peer is None or self.store.outcome_reported(peer, reference):
            return None
        logged = [bid for bid in self.store.bids_for(request_id, task_id) if bid.peer == peer]
        decisions = self.store.decisions_matching(request_hex, task_id, limit=1)
        if not logged or not decisions:
            return None
        bid, settings = logged[-1], decisions[0].rationale.get("settings") or {}
        return PendingOutcome(
            ProfileKey(peer, bid.model_id, bid.capability),
            _stored_bid(bid, request_id),
            request_id,
            str(settings.get("bucket") or ""),
        )

    def estimate(self, bid: BidInfo, ask: Ask) -> Estimate | None:
        """What the profile of ``bid``'s (peer, model, capability) says for ``ask``, if any."""
        profile = self.profiles.get(ProfileKey(bid.peer_id.hex, bid.model_id, ask.capability))
        if profile is None:
            return None
        return estimate(profile, self.config.profiler, bucket=ask.bucket, shrink=self.config.shrink)

    def spot_check(
        self,
        request_id: bytes,
        ask: Ask,
        winner: BidInfo,
        checker: BidInfo,
        score: float,
        *,
        latency_ms: float,
        paid: float,
    ) -> None:
        """A spot check (:mod:`.spotcheck`) compared ``winner``'s answer with ``checker``'s:
        ``score`` (their agreement, in [0, 1]) is an outcome for both, against the confidence
        each claimed; the checker's delivery is learnt too and its payment booked as a probe;
        the store keeps a ``spot_check`` observation per peer."""
        at = self.clock.wall_ms()
        checker_key = ProfileKey(checker.peer_id.hex, checker.model_id, ask.capability)
        self._learn(
            checker_key,
            Observation(
                at,
                latency_ms=max(0.0, latency_ms),
                cost=max(0.0, paid),
                promised_latency_ms=checker.expected_latency_ms,
                promised_cost=checker.cost,
                bucket=ask.bucket,
            ),
        )
        for bid, other in ((winner, checker), (checker, winner)):
            key = ProfileKey(bid.peer_id.hex, bid.model_id, ask.capability)
            self._learn(
                key, Observation(at, outcome=score, promised_confidence=claimed(bid), bucket=ask.bucket)
            )
            if self.store is not None:
                detail = {"task": task_reference(request_id, ask.task_id), "against": other.peer_id.hex}
                self.store.record_observation(
                    ObservationRecord(at, key.peer, key.model_id, "spot_check", score, detail)
                )
        if self.store is not None:
            self.store.record_payment(
                PaymentRecord(at, request_id, ask.task_id, checker.peer_id.hex, paid, PaymentKind.PROBE)
            )

    def observe_strategy(self, bid: BidInfo, parameters: Mapping[str, float]) -> None:
        """A peer's strategy parameters, as its Feedback answer reported them: kept over time
        in the store's observations (what ``atomic profile`` plots), one series per name."""
        if self.store is None:
            return
        at = self.clock.wall_ms()
        for name, value in sorted(parameters.items()):
            self.store.record_observation(
                ObservationRecord(at, bid.peer_id.hex, bid.model_id, f"strategy.{name}", float(value))
            )

    def _learn(self, key: ProfileKey, observation: Observation) -> None:
        profile = record(self.profiles.get(key), key, observation, self.config.profiler)
        self.profiles[key] = profile
        if self.store is not None:
            self.store.save_profile(
                ProfileRecord(observation.at_ms, key.peer, key.model_id, key.capability, profile.to_dict())
            )


def task_reference(request_id: bytes, task_id: str) -> str:
    return f"{request_id.hex()}/{task_id}"


def _bid_record(at: int, request_id: bytes, ask: Ask, bid: BidInfo) -> BidRecord:
    return BidRecord(
        at_ms=at,
        request_id=request_id,
        task_id=bid.task_id,
        capability=ask.capability,
        peer=bid.peer_id.hex,
        model_id=bid.model_id,
        address=bid.address,
        confidence=bid.confidence,
        expected_latency_ms=bid.expected_latency_ms,
        cost=bid.cost,
        strategy=bid.strategy,
        digest=bid.digest,
        fields={"batch": ask.batch_size},  # cost / batch: the price per example over time
    )


def _stored_bid(bid: BidRecord, request_id: bytes) -> BidInfo:
    """A logged bid as a BidInfo for an outcome notice: its terms; the store keeps the signed
    envelope's digest, not the envelope, so the envelope here is empty (nothing verifies it)."""
    confidence = bid.confidence
    return BidInfo(
        peer_id=PeerId(bytes.fromhex(bid.peer)),
        address=bid.address,
        task_id=bid.task_id,
        model_id=bid.model_id,
        confidence=0.0 if confidence is None else confidence,
        expected_latency_ms=bid.expected_latency_ms or 0.0,
        cost=bid.cost or 0.0,
        valid_until_ms=0,
        strategy=bid.strategy,
        envelope=Envelope(b"", "", b"", b""),
        request_id=request_id,
        confidence_unknown=confidence is None,
    )


def claimed(bid: BidInfo) -> float | None:
    """The confidence a bid claimed; None when its model could not estimate one (nothing to calibrate)."""
    return None if bid.confidence_unknown else bid.confidence
