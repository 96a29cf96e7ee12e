"""The requester SDK's face: :class:`Requester` buys one inference at a time through an auction.

How one :meth:`Requester.run` goes (DESIGN section 2, one microtask)
--------------------------------------------------------------------
1. Encode the inputs, describe them in a TaskSpec, sign a BidRequest (fresh 16-byte request id,
   absolute deadline) and ask every peer for a bid at once (:mod:`.auction`). Bid collection
   gets at most ``bid_share`` of the deadline, so execution always has time left.
2. Verify every bid off the event loop, drop the invalid ones, rank the rest by the weighted
   score (:mod:`.scoring`) against the time that is left and the caller's budget.
3. Execute on the winner and fall back down the ranking (:mod:`.execution`) until a signed,
   verified result arrives or the deadline passes.
4. Send win/loss/outcome notices in the background; the result never waits for them.

Every run ends in a :class:`~.types.Result` or an :class:`~atomic_p2p.errors.AuctionError`
(:class:`~atomic_p2p.errors.NoBidsError` when no usable bid came back) whose message says what
each peer said or how each attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import torch

from atomic_p2p import tensors
from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import AuctionError, ConfigError, NoBidsError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.identity import Identity
from atomic_p2p.requester.auction import CallForBids, Collected, collect_bids
from atomic_p2p.requester.discovery import Discovery
from atomic_p2p.requester.evaluator import Ask, EvaluatorConfig
from atomic_p2p.requester.execution import Executed, ExecutionPolicy, Executor, Payload
from atomic_p2p.requester.feedback import FeedbackSender
from atomic_p2p.requester.memory import MarketMemory
from atomic_p2p.requester.messages import TaskRef, build_task, sign_bid_request
from atomic_p2p.requester.profiler import shape_bucket
from atomic_p2p.requester.ranking import Decision
from atomic_p2p.requester.scoring import Ranking, WeightsSpec, resolve_weights
from atomic_p2p.requester.transport import PeerTransport, status_name
from atomic_p2p.requester.types import BidInfo, Result, Timings

logger = logging.getLogger(__name__)

TASK_ID = "task-0"
# Above this many input bytes, encoding and hashing move to a worker thread.
_INLINE_ENCODE_BYTES = 1024 * 1024


def now_ms() -> int:
    """Unix time in milliseconds: what issued_at, deadline and valid_until are measured in."""
    return time.time_ns() // 1_000_000


def _encode(inputs: Mapping[str, torch.Tensor]) -> Payload:
    wires = tuple(tensors.encode(tensor, name) for name, tensor in inputs.items())
    return Payload(wires, tensors.digest(wires))


def _check_run_arguments(
    capability: str,
    inputs: Mapping[str, torch.Tensor],
    deadline_s: float,
    weights: WeightsSpec,
    max_cost: float | None,
) -> int:
    """Fail on bad arguments before any network traffic; returns the input size in bytes."""
    if not isinstance(capability, str) or not capability:
        raise ConfigError("capability must be a non-empty string")
    _check_number("deadline_s", deadline_s, positive=True)
    _check_number("max_cost", max_cost, positive=False)
    resolve_weights(weights)
    if not isinstance(inputs, Mapping) or not inputs:
        raise ConfigError("inputs must be a non-empty mapping of name -> torch.Tensor")
    for name, tensor in inputs.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"input names must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"input {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
    return sum(tensor.numel() * tensor.element_size() for tensor in inputs.values())


def _check_number(name: str, value: float | None, *, positive: bool) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number")


def _no_bids_message(capability: str, collected: Collected, ranking: Ranking[BidInfo]) -> str:
    lines = [f"no usable bid for {capability!r} from {len(collected.no_bids) + len(collected.bids)} answers:"]
    lines += [f"  {no_bid}" for no_bid in collected.no_bids]
    lines += [
        f"  {ex.item.address} ({ex.item.peer_id.short}) excluded: {ex.reason}" for ex in ranking.excluded
    ]
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


class Requester:
    """Buys model inference from peers, one sealed-bid auction per call.

    Contract: create it anywhere, use it inside one event loop, close it (``async with`` does)
    to close its channels. Concurrent :meth:`run` calls share the channels. ``identity`` signs
    every call for bids, order and notice; without one an ephemeral key is generated.
    """

    def __init__(
        self,
        peers: Sequence[str] = (),
        identity: Identity | None = None,
        *,
        bootstrap: Sequence[str] = (),
        gossip: GossipConfig | None = None,
        store: str | Path | None = None,
        evaluator: EvaluatorConfig | None = None,
        seed: int | None = None,
        bid_timeout_s: float = 1.0,
        bid_share: float = 0.5,
        execution: ExecutionPolicy | None = None,
        feedback_timeout_s: float = 2.0,
    ) -> None:
        for name, addresses in (("peers", peers), ("bootstrap", bootstrap)):
            if isinstance(addresses, str) or not all(isinstance(a, str) and a for a in addresses):
                raise ConfigError(f"{name} must be a sequence of 'host:port' strings")
        if not peers and not bootstrap:
            raise ConfigError(
                "give peers=[...] (addresses to ask) or bootstrap=[...] (gossip seeds), or both"
            )
        _check_number("bid_timeout_s", bid_timeout_s, positive=True)
        if not 0 < bid_share < 1:
            raise ConfigError("bid_share must lie strictly between 0 and 1")
        self.peers = tuple(dict.fromkeys(peers))  # keep order, drop duplicates
        self.identity = identity or Identity.generate()
        self._bid_timeout_s = bid_timeout_s
        self._bid_share = bid_share
        self._pool = ChannelPool()
        self.discovery = Discovery(self.identity, self.peers, bootstrap, self._pool, gossip)
        self._transport = PeerTransport(self._pool)
        self._executor = Executor(self._transport, self.identity, execution or ExecutionPolicy(), now_ms)
        self._feedback = FeedbackSender(self._transport, self.identity, feedback_timeout_s, now_ms)
        self.memory = MarketMemory.open(store, evaluator, seed)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Join the gossip when bootstrap addresses were given (``async with`` calls this)."""
        await self.discovery.start()

    async def wait_for_peers(
        self, capability: str, count: int = 1, timeout: float = 10.0, batch: int = 1
    ) -> bool:
        """Wait until gossip (or the fixed peers) offers ``count`` candidates for ``capability``."""
        await self.start()
        return await self.discovery.wait_for(capability, batch, count, timeout)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Let pending notices finish (briefly), leave the gossip, then close every channel."""
        await self._feedback.drain()
        await self.discovery.stop()
        await self._pool.close()
        await asyncio.to_thread(self.memory.close)  # flushes the store's last batch

    async def run(
        self,
        capability: str,
        inputs: Mapping[str, torch.Tensor],
        *,
        deadline_s: float = 2.0,
        weights: WeightsSpec = None,
        max_cost: float | None = None,
        preview: bool = True,
    ) -> Result:
        """Auction one task and return the verified result of the best bid that delivers.

        ``weights`` is "speed", "accuracy", "balanced" (None), or a mapping of the components
        ``accuracy``, ``latency`` and ``cost`` to non-negative weights. ``max_cost`` excludes
        dearer bids. ``preview`` sends small inputs with the call for bids so peers can judge them.
        Raises :class:`NoBidsError` or :class:`AuctionError`; bad arguments raise ConfigError.
        """
        input_bytes = _check_run_arguments(capability, inputs, deadline_s, weights, max_cost)

        started = time.perf_counter()
        deadline = time.monotonic() + deadline_s
        if input_bytes > _INLINE_ENCODE_BYTES:
            payload = await asyncio.to_thread(_encode, inputs)
        else:
            payload = _encode(inputs)
        task = build_task(TASK_ID, capability, payload.inputs, preview=preview, max_cost=max_cost)
        call = self._call_for_bids(task, deadline_s)
        window = min(self._bid_timeout_s, self._bid_share * deadline_s)
        collected = await collect_bids(
            self._transport, await self._candidates(capability, payload, window), call, window, now_ms
        )
        shapes = {wire.name: wire.shape for wire in payload.inputs}
        ask = Ask(
            task_id=TASK_ID,
            capability=capability,
            time_left_ms=(deadline - time.monotonic()) * 1000,
            budget=max_cost,
            weights=weights,
            bucket=shape_bucket(shapes),
            batch_size=_batch_size(payload),
        )
        decision = self.memory.decide(collected.bids_for(TASK_ID), ask, self._utilization(collected))
        self.memory.log(call.request_id, ask, decision, collected.no_bids)
        if not decision.ranked:
            raise NoBidsError(_no_bids_message(capability, collected, decision))

        executing = time.perf_counter()
        ranked = [scored.item for scored in decision.ranked]
        executed = await self._executor.run(call.request_id, ranked, payload, deadline, self.memory)
        finished = time.perf_counter()
        self._feedback.send(call.request_id, decision, executed)
        for attempt in executed.attempts:
            if not attempt.ok:
                self.memory.failed(attempt.bid, ask)
        if executed.success is None:
            raise AuctionError(_failed_message(capability, executed))
        success = executed.success
        paid = success.receipt.cost_charged
        if success.bid is ranked[0] and decision.price is not None:
            paid = decision.price  # the clearing price (second-score pricing may lower it)
        reference = self.memory.delivered(
            call.request_id, success.bid, ask, executed.attempts[-1].elapsed_ms, paid
        )
        timings = Timings(
            bids_ms=collected.bids_ms,
            verify_ms=collected.verify_ms,
            execute_ms=(finished - executing) * 1000,
            total_ms=(finished - started) * 1000,
        )
        return _result(call, capability, collected, decision, executed, timings, reference, paid)

    async def report_outcome(self, task: str | Result, score: float) -> None:
        """Tell the requester how good a delivered result turned out (a label, a rating), in [0, 1].

        ``task`` is a :class:`Result` or its ``task_ref``. The peer's profile learns from it and
        the peer gets an OUTCOME notice. An unknown task raises :class:`UnknownTaskError`."""
        if not (isinstance(score, int | float) and math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ConfigError(f"an outcome score is a number in [0, 1], got {score!r}")
        reference = task.task_ref if isinstance(task, Result) else task
        pending = self.memory.outcome(reference, float(score))
        self._feedback.send_outcome(pending.request_id, pending.bid, float(score))

    def _utilization(self, collected: Collected) -> dict[str, float]:
        agent = self.discovery.agent
        if agent is None:
            return {}
        loads = {bid.peer_id.hex: agent.membership.load_of(bid.peer_id) for bid in collected.bids}
        return {peer: load.utilization for peer, load in loads.items() if load is not None}

    async def _candidates(self, capability: str, payload: Payload, window: float) -> list[str]:
        await self.discovery.start()
        batch = _batch_size(payload)
        # Just joined: the first exchange with a seed brings its whole table; give it part of
        # the bid window to land rather than auction among whoever answered first.
        await self.discovery.first_exchange(window)
        return self.discovery.candidates(capability, batch)

    def _call_for_bids(self, task: TaskRef, deadline_s: float) -> CallForBids:
        request_id = os.urandom(16)
        issued = now_ms()
        envelope = sign_bid_request(
            self.identity, request_id, [task], issued, issued + int(deadline_s * 1000)
        )
        return CallForBids(request_id, (task,), envelope)


def _batch_size(payload: Payload) -> int:
    first = payload.inputs[0] if payload.inputs else None
    return first.shape[0] if first is not None and first.shape else 1


def _result(
    call: CallForBids,
    capability: str,
    collected: Collected,
    decision: Decision[BidInfo],
    executed: Executed,
    timings: Timings,
    reference: str,
    paid: float,
) -> Result:
    success = executed.success
    assert success is not None
    return Result(
        request_id=call.request_id,
        task_id=TASK_ID,
        capability=capability,
        outputs=success.receipt.outputs,
        winner=success.bid,
        price=paid,
        bids=decision.ranked,
        weights=decision.weights,
        excluded=decision.excluded,
        no_bids=collected.no_bids,
        attempts=executed.attempts,
        timings=timings,
        receipt=success.result,
        task_ref=reference,
        rationale=decision.rationale,
    )
