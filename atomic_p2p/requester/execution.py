"""Execute on the winner; on failure fall back down the ranking, inside the request's deadline.

How this works (docs/architecture.md sections 2 and 10)
-------------------------------------------------------
Walk the ranking best first. Each attempt signs an ExecuteOrder for that bid and calls Execute
with a timeout of ``min(time left, the call's own timeout)``; the call's own timeout scales with
the latency the peer promised (``latency_slack`` times it, at least ``min_call_s``, at most
``max_call_s``), so a winner that hangs costs a bounded slice of the budget and leaves time for
the runner-up. A bid that expired while earlier attempts ran is skipped without a call.

An attempt succeeds only when the signed ExecuteResult verifies against the bid (signer, request,
task, bid digest, outputs digest); a peer that answers with a bad receipt is treated exactly like
one that failed. Every attempt, failed or not, is returned in order so the caller can report it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from atomic_p2p import metrics
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import AtomicError, BidExpiredError
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.protocol.messages import ExecuteCall
from atomic_p2p.protocol.streaming import collect_reply_digest
from atomic_p2p.requester.messages import ResultReceipt, check_result, sign_order
from atomic_p2p.requester.transport import Transport
from atomic_p2p.requester.types import Attempt, BidInfo
from atomic_p2p.tensors import WireTensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExecutionPolicy:
    """How long one Execute call may take before the requester moves to the runner-up."""

    max_call_s: float = 30.0
    # A floor that absorbs scheduling noise on a busy host: tiny models quote ~0.1 ms, and a
    # fallback triggered by a 50 ms hiccup costs more than it saves.
    min_call_s: float = 1.0
    latency_slack: float = 4.0
    # Receive outputs over ExecuteStream in slices (docs/protocol.md section 10), so an output is
    # not capped by one gRPC message; the result is verified exactly as a unary one.
    stream_outputs: bool = False
    # Send inputs over ExecuteUpload in slices after the order (docs/protocol.md section 10), so an
    # input is not capped by one gRPC message either; outputs then come back in slices too.
    stream_inputs: bool = False

    def call_timeout(self, bid: BidInfo, remaining_s: float) -> float:
        own = max(self.min_call_s, self.latency_slack * bid.expected_latency_ms / 1000.0)
        return max(0.0, min(remaining_s, self.max_call_s, own))


@dataclass(frozen=True, slots=True)
class Success:
    bid: BidInfo
    receipt: ResultReceipt
    result: Envelope


@dataclass(frozen=True, slots=True)
class Executed:
    """Every attempt in order, and the one that worked (None when all failed)."""

    attempts: tuple[Attempt, ...]
    success: Success | None
    untried: int  # bids never attempted because the deadline passed


@dataclass(frozen=True, slots=True)
class Payload:
    """The encoded inputs of one task and their digest (computed once, signed per attempt)."""

    inputs: tuple[WireTensor, ...]
    digest: bytes  # atomic_p2p.tensors.digest of the inputs and the texts
    texts: tuple[bytes, ...] = ()  # UTF-8, one per example (a text task)


class InFlight(Protocol):
    def started(self, bid: BidInfo) -> None: ...
    def finished(self, bid: BidInfo) -> None: ...


class Executor:
    """Runs the fallback walk for one request (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        policy: ExecutionPolicy,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._transport = transport
        self._identity = identity
        self._policy = policy
        self._clock = clock

    async def run(
        self,
        request_id: bytes,
        ranked: Sequence[BidInfo],
        payload: Payload,
        deadline: float,
        tracker: InFlight | None = None,
    ) -> Executed:
        """Try ``ranked`` in order until one succeeds; ``deadline`` is a ``clock.monotonic()`` instant.

        Each order names the request id its bid carries (:attr:`BidInfo.request_id`: bids of one
        round may come from several calls, and a bid reused from the cache is ordered under a
        fresh id), else ``request_id``. ``tracker`` hears when each attempt starts and ends (the requester's own load per peer)."""
        attempts: list[Attempt] = []
        for index, bid in enumerate(ranked):
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return Executed(tuple(attempts), None, untried=len(ranked) - index)
            if bid.valid_until_ms <= self._clock.wall_ms():
                attempts.append(Attempt(bid, 0.0, BidExpiredError("the bid expired before its turn")))
                continue
            if attempts:
                metrics.fallback("execute")
            if tracker is not None:
                tracker.started(bid)
            try:
                attempt, success = await self._attempt(bid.request_id or request_id, bid, payload, remaining)
            finally:
                if tracker is not None:
                    tracker.finished(bid)
            attempts.append(attempt)
            if success is not None:
                return Executed(tuple(attempts), success, untried=0)
        return Executed(tuple(attempts), None, untried=0)

    async def _attempt(
        self, request_id: bytes, bid: BidInfo, payload: Payload, remaining_s: float
    ) -> tuple[Attempt, Success | None]:
        timeout_s = self._policy.call_timeout(bid, remaining_s)
        now = self._clock.wall_ms()
        order = sign_order(self._identity, request_id, bid, payload.digest, now, now + int(timeout_s * 1000))
        started = self._clock.monotonic()
        try:
            call = ExecuteCall(order, bid.envelope, payload.inputs, payload.texts)
            outputs_digest: bytes | None = None  # hashed as a stream arrives
            if self._policy.stream_inputs or self._policy.stream_outputs:
                if self._policy.stream_inputs:
                    opened = self._transport.execute_upload(bid.address, call, timeout_s)
                else:
                    opened = self._transport.execute_stream(bid.address, call, timeout_s)
                async with aclosing(opened) as chunks:
                    reply, outputs_digest = await collect_reply_digest(
                        chunks, run_blocking=self._clock.run_blocking
                    )
            else:
                reply = await self._transport.execute(bid.address, call, timeout_s)
            receipt = await self._clock.run_blocking(
                check_result, reply.result, reply.outputs, request_id, bid, outputs_digest=outputs_digest
            )
        except AtomicError as error:
            elapsed = (self._clock.monotonic() - started) * 1000
            logger.warning(
                "execution on %s (%s) failed after %.0f ms: %s",
                bid.address,
                bid.peer_id.short,
                elapsed,
                error,
            )
            metrics.execution(error, elapsed)
            return Attempt(bid, elapsed, error), None
        elapsed = (self._clock.monotonic() - started) * 1000
        metrics.execution(None, elapsed)
        return Attempt(bid, elapsed), Success(bid, receipt, reply.result)
