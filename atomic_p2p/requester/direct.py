"""Buying from a peer you chose yourself: one call for bids, its order, and gradients for its bid.

:class:`DirectBuyer` is for experiments and tools that pick the peer and the model themselves (the
networked gradient-bidding reproductions give each node its own row or expert): no candidates, no
evaluator, no fallback. Everything else is the market's own code: the task and the signed
BidRequest from :mod:`.messages`, the bid verified and bound to the call exactly as in an auction
(:func:`.auction.collect_round`), the signed order and the verified receipt
(:class:`.execution.Executor` with one bid), and BidGradientUpdates signed by the market codec.
Purchases that should win the best offer go through :class:`~.client.Requester`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atomic_p2p import tensors
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import AuctionError, NoBidsError
from atomic_p2p.identity import Identity
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import BidGradientCall, BidGradientReply, BidGradientUpdate
from atomic_p2p.requester.auction import call_for_bids, collect_round
from atomic_p2p.requester.execution import ExecutionPolicy, Executor, Payload
from atomic_p2p.requester.messages import build_task
from atomic_p2p.requester.transport import Transport
from atomic_p2p.requester.types import BidInfo


class DirectBuyer:
    """Bids, orders and gradients for peers chosen by the caller; see the module docstring.

    Every call may take ``timeout_s``; a call for bids is valid that long, and so is an order."""

    def __init__(
        self,
        identity: Identity,
        transport: Transport,
        *,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = 30.0,
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.timeout_s = timeout_s
        self._transport = transport
        policy = ExecutionPolicy(max_call_s=timeout_s, min_call_s=timeout_s)
        self._executor = Executor(transport, identity, policy, clock)

    async def bid(
        self,
        address: str,
        capability: str,
        inputs: Sequence[tensors.WireTensor],
        *,
        task_id: str = "t",
        model_id: str = "",
        preview: bool = True,
        gradient_mode: bool = False,
    ) -> BidInfo:
        """The peer's verified bid on one task over ``inputs`` (sent as a preview when asked);
        a decline or a bid that does not verify raises :class:`NoBidsError` saying why."""
        task = build_task(task_id, capability, inputs, preview=preview, max_cost=None, model_id=model_id)
        issued = self.clock.wall_ms()
        call = call_for_bids(
            self.identity, [task], issued, issued + round(self.timeout_s * 1000), gradient_mode=gradient_mode
        )
        collected = await collect_round(
            self._transport,
            [(address, call)],
            self.timeout_s,
            self.clock,
        )
        if not collected.bids:
            said = "; ".join(str(no_bid) for no_bid in collected.no_bids) or "no answer"
            raise NoBidsError(f"{address} made no usable bid for {capability!r}: {said}")
        return collected.bids[0]

    async def execute(self, bid: BidInfo, inputs: Sequence[tensors.WireTensor]) -> dict[str, torch.Tensor]:
        """Order ``bid`` on ``inputs``; the outputs of the receipt that verified."""
        wires = tuple(inputs)
        payload = Payload(wires, tensors.digest(wires))
        deadline = self.clock.monotonic() + self.timeout_s
        executed = await self._executor.run(bid.request_id, [bid], payload, deadline)
        if executed.success is None:
            error = executed.attempts[-1].error if executed.attempts else "the deadline passed"
            raise AuctionError(f"{bid.address} did not deliver: {error}")
        return executed.success.receipt.outputs

    async def send_gradient(
        self,
        bid: BidInfo,
        loss_grad: Sequence[float] = (),
        *,
        share_grad: Sequence[float] = (),
        output_grad: tensors.WireTensor | None = None,
        price: float = 0.0,
    ) -> BidGradientReply:
        """A signed BidGradientUpdate for ``bid``: dL/db (and dg/db) per example, and dL/dy for a
        peer that trains its model remotely. A refusal raises its AtomicError."""
        update = BidGradientUpdate(
            request_id=bid.request_id,
            task_id=bid.task_id,
            requester_id=self.identity.peer_id.raw,
            loss_grad=tuple(loss_grad),
            share_grad=tuple(share_grad),
            output_grad=output_grad,
            price=price,
            issued_at_ms=self.clock.wall_ms(),
        )
        call = BidGradientCall(codec.sign(self.identity, update))
        return await self._transport.bid_gradient(bid.address, call, self.timeout_s)
