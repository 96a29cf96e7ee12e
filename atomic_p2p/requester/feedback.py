"""Win, loss and outcome notices, sent in the background so a result never waits for them.

Who hears what after one auction: the peer whose result was accepted gets a WIN with the
clearing price; every bid that was tried and failed gets an OUTCOME with score 0 (so a
learning strategy sees the failure); every other bidder gets a LOSS with the score it would
have needed to win. Delivery is best effort: a notice that fails is logged at debug level and
dropped; the requester never retries it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from atomic_p2p.clock import SYSTEM_CLOCK, Clock, wait_all
from atomic_p2p.errors import AtomicError
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.protocol.messages import FeedbackCall, FeedbackKind
from atomic_p2p.requester.execution import Executed
from atomic_p2p.requester.messages import sign_feedback
from atomic_p2p.requester.ranking import Ranking
from atomic_p2p.requester.transport import Transport
from atomic_p2p.requester.types import BidInfo

logger = logging.getLogger(__name__)


def notices(
    identity: Identity, request_id: bytes, ranking: Ranking[BidInfo], executed: Executed, now_ms: int
) -> list[tuple[BidInfo, Envelope]]:
    """Sign one notice per bidder (see the module docstring); returns (bid, notice) pairs."""
    winner = executed.success.bid if executed.success else None
    winning_score = next((s.score for s in ranking.ranked if s.item is winner), 0.0)
    price = executed.success.receipt.cost_charged if executed.success else 0.0
    failed = {id(attempt.bid) for attempt in executed.attempts if not attempt.ok}
    bids = [scored.item for scored in ranking.ranked] + [excluded.item for excluded in ranking.excluded]
    signed: list[tuple[BidInfo, Envelope]] = []
    for bid in bids:
        answered = bid.request_id or request_id  # the call this bid answered
        if bid is winner:
            notice = sign_feedback(identity, answered, bid, FeedbackKind.WIN, now_ms, clearing_price=price)
        elif id(bid) in failed:
            notice = sign_feedback(identity, answered, bid, FeedbackKind.OUTCOME, now_ms, outcome_score=0.0)
        else:
            notice = sign_feedback(
                identity,
                answered,
                bid,
                FeedbackKind.LOSS,
                now_ms,
                clearing_price=price,
                score_to_win=winning_score,
            )
        signed.append((bid, notice))
    return signed


class FeedbackSender:
    """Fire-and-forget delivery of notices, with a bounded drain at shutdown."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        timeout_s: float,
        clock: Clock = SYSTEM_CLOCK,
        observe: Callable[[BidInfo, dict[str, float]], None] | None = None,
    ) -> None:
        # ``observe`` hears each peer's strategy parameters as its Feedback answer reports them.
        self._observe = observe
        self._transport = transport
        self._identity = identity
        self._timeout_s = timeout_s
        self._clock = clock
        # Strong references: the event loop only keeps weak ones to tasks.
        self._pending: set[asyncio.Task[None]] = set()

    def send(self, request_id: bytes, ranking: Ranking[BidInfo], executed: Executed) -> None:
        """Schedule the notices for one auction and return at once."""
        task = asyncio.create_task(self._deliver(request_id, ranking, executed))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, request_id: bytes, ranking: Ranking[BidInfo], executed: Executed) -> None:
        signed = notices(self._identity, request_id, ranking, executed, self._clock.wall_ms())
        await asyncio.gather(*(self._deliver_one(bid, notice) for bid, notice in signed))

    def send_outcome(self, request_id: bytes, bid: BidInfo, score: float) -> None:
        """An OUTCOME notice for a delivered task whose quality became known later."""
        notice = sign_feedback(
            self._identity,
            bid.request_id or request_id,
            bid,
            FeedbackKind.OUTCOME,
            self._clock.wall_ms(),
            outcome_score=score,
        )
        task = asyncio.create_task(self._deliver_one(bid, notice))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver_one(self, bid: BidInfo, notice: Envelope) -> None:
        try:
            reply = await self._transport.feedback(bid.address, FeedbackCall(notice), self._timeout_s)
        except AtomicError as error:
            logger.debug("feedback to %s not delivered: %s", bid.address, error)
            return
        except Exception:
            logger.warning("feedback to %s failed unexpectedly", bid.address, exc_info=True)
            return
        # An unattributed notice is declined; its answer carries no parameters worth keeping.
        if reply.accepted and reply.strategy_parameters and self._observe is not None:
            self._observe(bid, reply.strategy_parameters)

    async def drain(self) -> None:
        """Wait for notices in flight (each is bounded by its own timeout), then cancel leftovers."""
        if not self._pending:
            return
        pending = list(self._pending)
        _, late = await wait_all(self._clock, pending, self._timeout_s + 0.5)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
