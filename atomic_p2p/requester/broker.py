"""One microtask from its inputs to a verified result, for :meth:`Requester.run` and graphs alike.

How this works (docs/architecture.md section 2, per microtask)
--------------------------------------------------------------
1. :meth:`Broker.prepare` encodes the inputs and serializes the TaskSpec (its digest is what
   bids name), and notes the input-shape bucket and specs the bid cache keys on.
2. :meth:`Broker.offers` finds each task's candidates (fixed peers, gossip) and hands all the
   tasks to the :class:`~.bidmanager.BidManager` at once, so tasks that are ready together
   share one RequestBids per peer (or come straight from the bid cache).
3. :meth:`Broker.settle` clears one task: the evaluator ranks its bids (hard constraints,
   profile-based expectations, exploration, rationale), the decision is logged, the executor
   walks the ranking until a signed result verifies, notices go out in the background, and
   the profile learns from the delivery. A reused bid that fails empties its peer's cache.

Every task ends in a :class:`~.types.Result` or an :class:`~atomic_p2p.errors.AuctionError`
(:class:`~atomic_p2p.errors.NoBidsError` when no usable bid came back) whose message says what
each peer said or how each attempt failed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from atomic_p2p import metrics, tensors
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import AuctionError, NoBidsError
from atomic_p2p.frozen import quick_init
from atomic_p2p.requester.bidmanager import BidManager, Offers, Wanted, input_specs
from atomic_p2p.requester.bidpolicy import InputSpecs
from atomic_p2p.requester.clearing import payment
from atomic_p2p.requester.decomposer import batch_limit
from atomic_p2p.requester.discovery import Discovery
from atomic_p2p.requester.evaluator import Ask
from atomic_p2p.requester.execution import Executed, Executor, Payload, Success
from atomic_p2p.requester.feedback import FeedbackSender
from atomic_p2p.requester.memory import MarketMemory
from atomic_p2p.requester.messages import TaskRef, build_task
from atomic_p2p.requester.profiler import shape_bucket
from atomic_p2p.requester.ranking import Decision
from atomic_p2p.requester.selection import ANY, Selection
from atomic_p2p.requester.spotcheck import SpotCheckConfig, agreement
from atomic_p2p.requester.transport import status_name
from atomic_p2p.requester.types import BidInfo, Result, Timings
from atomic_p2p.requester.weights import WeightsSpec

logger = logging.getLogger(__name__)

# Above this many input bytes, encoding and hashing move to a worker thread.
INLINE_ENCODE_BYTES = 1024 * 1024


@quick_init
@dataclass(frozen=True, slots=True)
class Terms:
    """What the caller asked of a whole request; ``deadline`` is an instant on ``clock``
    (``clock.monotonic()``), the clock :meth:`left_s` reads."""

    deadline: float
    deadline_ms: int  # the same instant, wall clock (what peers see)
    weights: WeightsSpec = None
    max_cost: float | None = None
    priority: int = 1
    preview: bool = True
    selection: Selection = ANY  # the caller's model, peers and fallback (selection.py)
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)

    def left_s(self) -> float:
        return self.deadline - self.clock.monotonic()


@quick_init
@dataclass(frozen=True, slots=True)
class Prepared:
    """One microtask ready to auction: its TaskSpec, encoded inputs, and how the cache keys it."""

    task: TaskRef
    capability: str
    payload: Payload
    bucket: str
    specs: InputSpecs
    batch: int


def encode(inputs: Mapping[str, torch.Tensor], texts: Sequence[str] = ()) -> Payload:
    wires = tuple(tensors.encode(tensor, name) for name, tensor in inputs.items())
    raw = tensors.encode_texts(texts)
    return Payload(wires, tensors.digest(wires, raw), raw)


class Broker:
    """Prepares, solicits and settles microtasks (see the module docstring)."""

    def __init__(
        self,
        discovery: Discovery,
        bids: BidManager,
        memory: MarketMemory,
        executor: Executor,
        feedback: FeedbackSender,
        *,
        bid_timeout_s: float,
        bid_share: float,
        clock: Clock = SYSTEM_CLOCK,
        spot_checks: SpotCheckConfig | None = None,
    ) -> None:
        self.discovery = discovery
        self.spot_checks = spot_checks or SpotCheckConfig()
        self.bids = bids
        self.memory = memory
        self._executor = executor
        self._feedback = feedback
        self._bid_timeout_s = bid_timeout_s
        self._bid_share = bid_share
        self._clock = clock

    async def prepare(
        self,
        task_id: str,
        capability: str,
        inputs: Mapping[str, torch.Tensor],
        terms: Terms,
        texts: Sequence[str] = (),
        language: str = "",
    ) -> Prepared:
        """``texts``: one UTF-8 string per example, tokenised by each peer with its own tokenizer;
        ``language``: their BCP 47 tag (e.g. "en"), checked against each model's languages."""
        size = sum(tensor.numel() * tensor.element_size() for tensor in inputs.values())
        size += sum(len(text) for text in texts)
        payload = (
            await self._clock.run_blocking(encode, inputs, texts)
            if size > INLINE_ENCODE_BYTES
            else encode(inputs, texts)
        )
        task = build_task(
            task_id,
            capability,
            payload.inputs,
            preview=terms.preview,
            max_cost=terms.max_cost,
            model_id=terms.selection.model_id,
            texts=payload.texts,
            language=language,
        )
        first = payload.inputs[0] if payload.inputs else None
        shapes = {wire.name: wire.shape for wire in payload.inputs}
        if texts:
            shapes["texts"] = (len(texts),)  # a bid for n texts is cached apart from any tensor task
        return Prepared(
            task=task,
            capability=capability,
            payload=payload,
            bucket=shape_bucket(shapes),
            specs=input_specs([(wire.name, wire.dtype, wire.shape) for wire in payload.inputs]),
            batch=len(texts) if texts else first.shape[0] if first is not None and first.shape else 1,
        )

    async def offers(self, prepared: Sequence[Prepared], terms: Terms, deadline_s: float) -> list[Offers]:
        """Bids for every task in ``prepared``, solicited together."""
        window = min(self._bid_timeout_s, self._bid_share * deadline_s)
        await self.discovery.start()
        # Just joined: the first exchange with a seed brings its whole table; give it part of
        # the bid window to land rather than auction among whoever answered first.
        await self.discovery.first_exchange(window)
        wanted = [
            Wanted(
                task=item.task,
                capability=item.capability,
                candidates=tuple(
                    self.discovery.candidates(
                        item.capability, item.batch, item.payload.inputs, text=bool(item.payload.texts)
                    )
                ),
                bucket=item.bucket,
                specs=item.specs,
                window_s=window,
                deadline_ms=terms.deadline_ms,
                deadline=terms.deadline,
                priority=terms.priority,
            )
            for item in prepared
        ]
        return await self.bids.offers(wanted)

    def limits_unknown(self, capability: str) -> bool:
        """Whether some candidate for ``capability`` has neither advertised nor bid a max_batch
        (a fixed peer this requester has not yet heard a bid from)."""
        advertised = self.discovery.limits(capability)
        return any(
            address not in advertised and self.bids.max_batch(address, capability) is None
            for address in self.discovery.candidates(capability, 1)
        )

    def max_batch(self, capability: str, min_candidates: int) -> int:
        """The largest batch ``min_candidates`` of the candidates for ``capability`` accept, from
        their gossip adverts or, failing that, the constraints of their last bids (0: no limit)."""
        advertised = self.discovery.limits(capability)
        limits = []
        for address in self.discovery.candidates(capability, 1):
            limit = advertised.get(address)
            if limit is None:
                limit = self.bids.max_batch(address, capability)
            limits.append(limit or 0)
        return batch_limit(limits, min_candidates)

    async def settle(
        self, item: Prepared, offers: Offers, terms: Terms, *, started: float, bids_ms: float
    ) -> Result:
        """Clear, execute (with fallback) and learn for one task; see the module docstring.
        ``started`` is the ``clock.monotonic()`` instant the task's request began."""
        ask, decision = self.rank(item, offers, terms)

        executing = self._clock.monotonic()
        ranked = [scored.item for scored in decision.ranked]
        if not terms.selection.fallback:
            ranked = ranked[:1]
        executed = await self._executor.run(
            offers.request_id, ranked, item.payload, terms.deadline, self.memory
        )
        finished = self._clock.monotonic()
        if not offers.cached:
            # A reused bid was made for an earlier request: a notice under this request's fresh
            # id names nothing the peer issued, so it would only be signed, sent and declined.
            self._feedback.send(offers.request_id, decision, executed)
        for attempt in executed.attempts:
            if not attempt.ok:
                self.memory.failed(attempt.bid, ask)
                if attempt.bid.reused:
                    self.bids.forget(attempt.bid)
        if executed.success is None:
            metrics.task_settled("failed")
            raise AuctionError(_failed_message(item.capability, executed))
        success = executed.success
        paid = payment(decision.price, success.receipt.cost_charged, fallback=success.bid is not ranked[0])
        request_id = success.bid.request_id or offers.request_id
        elapsed_ms = executed.attempts[-1].elapsed_ms
        reference = self.memory.delivered(request_id, success.bid, ask, elapsed_ms, paid)
        metrics.task_settled("delivered", paid)
        if self.spot_checks.enabled:
            await self._spot_check(request_id, ask, item, decision, success, terms)
        timings = Timings(
            bids_ms=bids_ms,
            verify_ms=offers.verify_ms,
            execute_ms=(finished - executing) * 1000,
            total_ms=(finished - started) * 1000,
        )
        return Result(
            request_id=offers.request_id,
            task_id=item.task.task_id,
            capability=item.capability,
            outputs=success.receipt.outputs,
            winner=success.bid,
            price=paid,
            bids=decision.ranked,
            weights=decision.weights,
            excluded=decision.excluded,
            no_bids=offers.no_bids,
            attempts=executed.attempts,
            timings=timings,
            receipt=success.result,
            task_ref=reference,
            rationale=decision.rationale,
            cached=offers.cached,
        )

    async def _spot_check(
        self,
        request_id: bytes,
        ask: Ask,
        item: Prepared,
        decision: Decision[BidInfo],
        success: Success,
        terms: Terms,
    ) -> None:
        """Maybe run the task on another peer too and learn from the agreement (:mod:`.spotcheck`)."""
        winner: BidInfo = success.bid
        share = self.spot_checks.share_for(
            self.memory.estimate(winner, ask), self.memory.config.bias_tolerance
        )
        if self.memory.rng.random() >= share:
            return
        checker = next(
            (scored.item for scored in decision.ranked if scored.item.peer_id != winner.peer_id), None
        )
        if checker is None:
            return
        checked = await self._executor.run(
            checker.request_id or request_id, [checker], item.payload, terms.deadline, self.memory
        )
        if checked.success is None:
            logger.info("task %s: spot check on %s failed; skipped", ask.task_id, checker.peer_id.short)
            return
        score = agreement(success.receipt.outputs, checked.success.receipt.outputs)
        self.memory.spot_check(
            request_id,
            ask,
            winner,
            checker,
            score,
            latency_ms=checked.attempts[-1].elapsed_ms,
            paid=checked.success.receipt.cost_charged,
        )

    def rank(self, item: Prepared, offers: Offers, terms: Terms) -> tuple[Ask, Decision[BidInfo]]:
        """The evaluator's ranking of ``offers`` for ``item``, logged; NoBidsError if it is empty."""
        ask = Ask(
            task_id=item.task.task_id,
            capability=item.capability,
            time_left_ms=terms.left_s() * 1000,
            budget=terms.max_cost,
            weights=terms.weights,
            bucket=item.bucket,
            batch_size=item.batch,
            selection=terms.selection,
        )
        decision = self.memory.decide(offers.bids, ask, self._utilization(offers.bids))
        self.memory.log(offers.request_id, ask, decision, offers.no_bids)
        if not decision.ranked:
            metrics.task_settled("no_bids")
            raise NoBidsError(_no_bids_message(item.capability, offers, decision))
        return ask, decision

    def _utilization(self, bids: Sequence[BidInfo]) -> dict[str, float]:
        agent = self.discovery.agent
        if agent is None:
            return {}
        loads = {bid.peer_id.hex: agent.membership.load_of(bid.peer_id) for bid in bids}
        return {peer: load.utilization for peer, load in loads.items() if load is not None}


def _no_bids_message(capability: str, offers: Offers, decision: Decision[BidInfo]) -> str:
    answers = len(offers.no_bids) + len(offers.bids)
    lines = [f"no usable bid for {capability!r} from {answers} answer{'' if answers == 1 else 's'}:"]
    lines += [f"  {no_bid}" for no_bid in offers.no_bids]
    lines += [
        f"  {ex.item.address} ({ex.item.peer_id.short}) excluded: {ex.reason}" for ex in decision.excluded
    ]
    if offers.skipped:
        lines.append(f"  {len(offers.skipped)} more candidate(s) not asked (pre-filtered)")
    return "\n".join(lines)


def _failed_message(capability: str, executed: Executed) -> str:
    lines = [f"every bid for {capability!r} failed to execute:"]
    for attempt in executed.attempts:
        bid, error = attempt.bid, attempt.error
        lines.append(
            f"  {bid.address} ({bid.peer_id.short}, {bid.model_id}) after {attempt.elapsed_ms:.0f} ms: "
            f"[{status_name(error) if error else 'OK'}] {error}"
        )
    if executed.untried:
        lines.append(f"  {executed.untried} more bid(s) not tried: the deadline passed")
    return "\n".join(lines)
