"""Standardized benchmarking: probe every eligible peer with tasks whose answers are known.

How this works
--------------
A requester holds a held-out labelled set (:class:`ProbeSet`). Every ``interval_s`` the
:class:`Prober` runs one round: the same batch of that set goes to every peer eligible for the
capability (the requester's fixed peers and what gossip offers) that the :class:`ProbeSchedule`
says is due, one peer after another. Each probe is a one-candidate auction: a
:class:`~.client.Requester` restricted to that peer's address, signing with the main requester's
identity, whose memory follows the main one (:meth:`MarketMemory.follow`: same profiles, load
and store, payments booked as ``PaymentKind.PROBE``; its own win shares, since a probe is not a
market win). The outputs are scored against the labels (:func:`accuracy`, in [0, 1])
and reported with ``report_outcome``, so the profile learns exactly as from any later outcome and
the peer gets an OUTCOME notice. Each probe also writes a ``probe_accuracy`` observation.

The schedule is pure (time is passed in). Invariants: a peer is probed at most once per
``1 / max_rate_per_peer`` seconds; every probe is sent with ``max_cost`` = the budget left, so
the peer declines or the evaluator excludes a bid that would overspend, and the total paid never
exceeds ``budget``; a peer once found too dear for what is left is not asked again (what is left
only shrinks). The prober stops once no eligible peer is affordable.

Usage::

    async with Requester(peers, store="requester.db") as requester:
        config = ProbeConfig(budget=1.0, interval_s=60, max_rate_per_peer=1 / 300, batch=32)
        async with Prober(requester, "classify/digits", {"x": held_out_x}, held_out_y, config):
            ...  # the requester's own work; probes run in the background meanwhile
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from atomic_p2p.clock import wait_for
from atomic_p2p.errors import AuctionError, ConfigError, NoBidsError
from atomic_p2p.requester.client import Requester
from atomic_p2p.requester.ranking import Decision, Exclusion
from atomic_p2p.requester.types import BidInfo, NoBidInfo
from atomic_p2p.store import ObservationRecord, PaymentKind

logger = logging.getLogger(__name__)

RESULTS_KEPT = 1000  # the most recent probes, for callers and tests

Scorer = Callable[[Mapping[str, torch.Tensor], torch.Tensor], float]


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """``budget``: the most all probes together may cost. ``interval_s``: time between rounds.
    ``max_rate_per_peer``: probes per second one peer may get, at most. ``batch``: examples per
    probe. ``deadline_s``: per probe, bids and execution."""

    budget: float
    interval_s: float = 30.0
    max_rate_per_peer: float = 1 / 60
    batch: int = 16
    deadline_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("budget", "interval_s", "max_rate_per_peer", "deadline_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name != "budget" and value == 0):
                raise ConfigError(
                    f"{name} must be a finite {'non-negative' if name == 'budget' else 'positive'} number"
                )
        if self.batch < 1:
            raise ConfigError("batch must be at least 1")

    @property
    def min_gap_s(self) -> float:
        return 1.0 / self.max_rate_per_peer


@dataclass(slots=True)
class ProbeSchedule:
    """Who is due for a probe and what is left of the budget (mutable; time passed in)."""

    budget: float
    min_gap_s: float
    spent: float = 0.0
    last_probe_s: dict[str, float] = field(default_factory=dict)
    last_price: dict[str, float] = field(default_factory=dict)
    too_dear: set[str] = field(default_factory=set)

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent)

    def affordable(self, address: str) -> bool:
        """Could a probe of this peer still be paid for (its last price, if any, fits)?"""
        if address in self.too_dear or self.remaining <= 0:
            return False
        return self.last_price.get(address, 0.0) <= self.remaining

    def due(self, addresses: Iterable[str], now_s: float) -> list[str]:
        """The affordable peers not probed in the last ``min_gap_s``, in the given order."""
        return [
            address
            for address in addresses
            if self.affordable(address)
            and (address not in self.last_probe_s or now_s - self.last_probe_s[address] >= self.min_gap_s)
        ]

    def started(self, address: str, now_s: float) -> None:
        self.last_probe_s[address] = now_s

    def paid(self, address: str, amount: float) -> None:
        self.spent += amount
        self.last_price[address] = amount

    def refused_as_too_dear(self, address: str) -> None:
        """Its bid cost more than what is left; what is left only shrinks, so never ask again."""
        self.too_dear.add(address)

    def exhausted(self, addresses: Iterable[str]) -> bool:
        """Nothing left, or none of ``addresses`` affordable any more."""
        return self.remaining <= 0 or not any(self.affordable(address) for address in addresses)


class ProbeSet:
    """A held-out labelled set, handed out one batch per round, wrapping around at the end."""

    def __init__(self, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, batch: int) -> None:
        if not inputs:
            raise ConfigError("a probe set needs at least one input tensor")
        sizes = {tensor.shape[0] if tensor.dim() else -1 for tensor in inputs.values()}
        if sizes != {labels.shape[0] if labels.dim() else -1} or -1 in sizes or labels.shape[0] == 0:
            raise ConfigError("every probe input and the labels need the same non-zero leading dimension")
        self.inputs = dict(inputs)
        self.labels = labels
        self.batch = batch

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, round_index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rows = (torch.arange(self.batch) + round_index * self.batch) % len(self)
        return {name: tensor[rows] for name, tensor in self.inputs.items()}, self.labels[rows]


def accuracy(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> float:
    """The share of rows whose predicted class equals the label: the argmax of the logits when the
    output has one more dimension than the labels, else the output itself. With several outputs,
    ``logits`` is used."""
    if len(outputs) == 1:
        (predicted,) = outputs.values()
    elif "logits" in outputs:
        predicted = outputs["logits"]
    else:
        raise ConfigError(f"cannot tell which output to score among {sorted(outputs)}; pass score=")
    if predicted.dim() == labels.dim() + 1:
        predicted = predicted.argmax(dim=-1)
    if predicted.shape != labels.shape:
        raise ConfigError(
            f"outputs of shape {list(predicted.shape)} do not match labels {list(labels.shape)}"
        )
    return float((predicted == labels).float().mean())


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe: whom, when, what it scored and cost, or why it produced nothing."""

    address: str
    at_ms: int
    examples: int
    peer: str = ""  # peer id hex of the bid that delivered
    model_id: str = ""
    accuracy: float | None = None
    paid: float = 0.0
    latency_ms: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.accuracy is not None


class Prober:
    """Probes every eligible peer of ``requester`` for ``capability`` (see the module docstring).

    Contract: use it in the requester's event loop. ``async with Prober(...)`` runs the schedule
    in the background until the budget is spent or the block ends; :meth:`probe_round` runs one
    round now. ``peers`` fixes the addresses to probe instead of the requester's candidates.
    :meth:`close` (``async with`` does) closes the per-peer channels, not the requester.
    Time is the requester's clock (``requester.clock``); ``clock`` replaces only the reading
    the schedule is kept on (seconds, by default ``requester.clock.monotonic``).
    """

    def __init__(
        self,
        requester: Requester,
        capability: str,
        inputs: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        config: ProbeConfig,
        *,
        peers: Sequence[str] | None = None,
        score: Scorer = accuracy,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.requester = requester
        self.capability = capability
        self.config = config
        self.probe_set = ProbeSet(inputs, labels, config.batch)
        self.schedule = ProbeSchedule(config.budget, config.min_gap_s)
        self.results: deque[ProbeResult] = deque(maxlen=RESULTS_KEPT)
        self._peers = tuple(peers) if peers is not None else None
        self._score = score
        self._clock = clock if clock is not None else requester.clock.monotonic
        self._rounds = 0
        self._probers: dict[str, Requester] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Prober:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def eligible(self) -> list[str]:
        if self._peers is not None:
            return list(self._peers)
        return self.requester.discovery.candidates(self.capability, self.config.batch)

    def start(self) -> None:
        """Run :meth:`run` in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="atomic-prober")

    async def run(self) -> None:
        """Rounds every ``interval_s`` until the budget is spent or :meth:`close` is called."""
        await self.requester.start()
        while not self._stopping.is_set():
            await self.probe_round()
            eligible = self.eligible()
            if eligible and self.schedule.exhausted(eligible):
                logger.info(
                    "probing %s stops: %.4g of %.4g spent",
                    self.capability,
                    self.schedule.spent,
                    self.config.budget,
                )
                return
            with contextlib.suppress(TimeoutError):
                await wait_for(self.requester.clock, self._stopping.wait(), self.config.interval_s)

    async def wait(self) -> None:
        """Until the background schedule ends (budget spent) or is closed."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def probe_round(self) -> list[ProbeResult]:
        """Probe every due peer once, all with the same batch of the labelled set."""
        inputs, labels = self.probe_set.take(self._rounds)
        self._rounds += 1
        results = []
        for address in self.schedule.due(self.eligible(), self._clock()):
            if self._stopping.is_set():
                break
            if self.schedule.affordable(address):  # earlier probes of this round spent some
                results.append(await self.probe(address, inputs, labels))
        return results

    async def probe(
        self, address: str, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor
    ) -> ProbeResult:
        """One probe of one peer, whatever the schedule says (the budget still caps its price)."""
        prober = self._prober(address)
        self.schedule.started(address, self._clock())
        base = ProbeResult(address, self.requester.clock.wall_ms(), int(labels.shape[0]))
        budget = self.schedule.remaining
        if budget <= 0:
            return self._keep(_failed(base, "the probe budget is spent"))
        try:
            result = await prober.run(
                self.capability, inputs, deadline_s=self.config.deadline_s, max_cost=budget
            )
        except AuctionError as error:
            if isinstance(error, NoBidsError) and _over_budget(prober.memory.last_auction):
                self.schedule.refused_as_too_dear(address)
            return self._keep(_failed(base, str(error)))
        self.schedule.paid(address, result.price)
        score = min(1.0, max(0.0, float(self._score(result.outputs, labels))))
        await prober.report_outcome(result, score)
        bid = result.winner
        store = self.requester.memory.store
        if store is not None:
            detail = {
                "capability": self.capability,
                "request_id": result.request_id.hex(),
                "examples": base.examples,
                "paid": result.price,
            }
            at_ms = self.requester.clock.wall_ms()
            store.record_observation(
                ObservationRecord(at_ms, bid.peer_id.hex, bid.model_id, "probe_accuracy", score, detail)
            )
        latency = result.attempts[-1].elapsed_ms if result.attempts else None
        return self._keep(
            ProbeResult(
                address,
                base.at_ms,
                base.examples,
                bid.peer_id.hex,
                bid.model_id,
                score,
                result.price,
                latency,
            )
        )

    async def close(self) -> None:
        """Stop the schedule and close the per-peer requesters (the main one stays open)."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        probers, self._probers = list(self._probers.values()), {}
        for prober in probers:
            await prober.close()

    def _prober(self, address: str) -> Requester:
        prober = self._probers.get(address)
        if prober is None:
            main = self.requester
            prober = Requester([address], main.identity, evaluator=main.memory.config, clock=main.clock)
            prober.memory.follow(main.memory, PaymentKind.PROBE)
            self._probers[address] = prober
        return prober

    def _keep(self, result: ProbeResult) -> ProbeResult:
        self.results.append(result)
        if not result.ok:
            logger.info("probe of %s for %s: %s", result.address, self.capability, result.error)
        return result


def _over_budget(auction: tuple[Decision[BidInfo], tuple[NoBidInfo, ...]] | None) -> bool:
    """Did this auction fail because the bid cost more than the budget (the evaluator excluded
    it, or the peer declined a task whose max_cost it would exceed)?"""
    if auction is None:
        return False
    decision, no_bids = auction
    return any(e.kind is Exclusion.BUDGET for e in decision.excluded) or any(
        no_bid.reason == "below_cost" for no_bid in no_bids
    )


def _failed(base: ProbeResult, error: str) -> ProbeResult:
    return ProbeResult(base.address, base.at_ms, base.examples, error=error)
