"""Requester gradient mode: run the differentiable market over the network and send gradients back.

How this works
--------------
Seller-side gradient bidding (docs/gradient.md): one :meth:`GradientMarket.step` takes a batch of
inputs and their targets and

1. signs a BidRequest with ``gradient_mode`` and the batch as the task's preview, and collects
   bids from every candidate address with the same auction round as every other purchase
   (:func:`~atomic_p2p.requester.auction.collect_round`: one call per peer, bids verified off the
   event loop and bound to the call); a bid that carries one ``bid_values`` entry per example
   joins the market (a peer that bids without them, declines or fails sits this round out);
2. runs the market on the bids (:func:`atomic_p2p.market.shift`, ``masks``, ``top_k``) and executes
   the batch on every peer with a selected example (the top k by mask, or every positive mask
   when ``k`` is None: the mixture) through the requester's fallback walk
   (:class:`~atomic_p2p.requester.execution.Executor`: signed order, call timeout, verified
   receipt). A peer whose Execute fails, or whose output has another shape than the others', is
   dropped and the market is cleared again among the rest (so a runner-up takes its place under
   top-k), until every selected peer has delivered or nobody is left;
3. computes the loss and every gradient with :func:`atomic_p2p.market.market_gradients` over the
   peers still in the market (peers that did not run contribute zeros; their gate is 0);
4. signs one BidGradientUpdate per bidder in the market (dL/db, dg/db, the price per unit of gate,
   and dL/dy for the addresses named in ``train_outputs``, which opted into remote training) and
   sends them at once; each peer's answer (applied, applied_norm, or the status it refused with)
   is returned;
5. records the payment ``price_i * sum_b g_ib`` of every peer that ran in the store's ledger.

The price per unit of gate is the bid's ``cost_estimate`` (the task total) divided by the batch
size, so a peer holding the whole gate of every example is paid exactly its quote. The pure market never sees the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

from atomic_p2p import tensors
from atomic_p2p.channels import ChannelPool
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import AtomicError, NoBidsError, ProtocolError
from atomic_p2p.identity import Identity
from atomic_p2p.market import LossFunction, ShiftMode, gates, market_gradients, masks, mixture, shift, top_k
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import BidGradientCall, BidGradientUpdate
from atomic_p2p.requester.auction import call_for_bids, collect_round
from atomic_p2p.requester.execution import ExecutionPolicy, Executor, Payload
from atomic_p2p.requester.messages import MAX_PREVIEW_BYTES, build_task
from atomic_p2p.requester.transport import GrpcTransport, Transport, status_name
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.store import Store
from atomic_p2p.store_schema import PaymentKind, PaymentRecord

TASK_ID = "gradient"


@dataclass(frozen=True, slots=True)
class PeerRound:
    """One bidder's part in a round."""

    address: str
    peer_id: str  # hex
    model_id: str
    bids: torch.Tensor  # b, [batch]
    gates: torch.Tensor  # g, [batch]
    executed: bool
    payment: float  # price * sum(g), 0 if it did not run
    applied: bool  # the peer applied our gradient
    applied_norm: float
    refusal: str = ""  # the status it refused the gradient with, or its Execute failed with


@dataclass(frozen=True, slots=True)
class GradientRound:
    request_id: bytes
    loss: float
    output: torch.Tensor  # y, [batch, ...]
    peers: tuple[PeerRound, ...]
    # Wall milliseconds per phase: "bids", "execute", "market" (loss and gradients), "send".
    phases_ms: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Bidder:
    info: BidInfo
    values: torch.Tensor


@dataclass(slots=True)
class _Cleared:
    """The bidders still in the market after execution, their outputs, and who dropped out why."""

    bidders: list[_Bidder]
    outputs: dict[int, torch.Tensor]  # index into bidders -> output, for those that ran
    dropped: list[tuple[_Bidder, str]]


class GradientMarket:
    """Gradient-mode rounds against a fixed set of candidate addresses."""

    def __init__(
        self,
        identity: Identity,
        addresses: Sequence[str],
        *,
        capability: str,
        loss_fn: LossFunction = functional.cross_entropy,
        shift_mode: ShiftMode = "mean",
        k: int | None = None,
        input_name: str = "x",
        train_outputs: Collection[str] = (),
        store: Store | None = None,
        pool: ChannelPool | None = None,
        timeout_s: float = 30.0,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.identity = identity
        self.addresses = tuple(addresses)
        self.capability = capability
        self.loss_fn = loss_fn
        self.shift_mode = shift_mode
        self.k = k
        self.input_name = input_name
        self.train_outputs = frozenset(train_outputs)
        self.store = store
        self.timeout_s = timeout_s
        self.clock = clock or SYSTEM_CLOCK
        # Without a transport it talks gRPC over ``pool`` (its own when none is given, closed by
        # :meth:`close`); with one, the transport's owner closes it.
        self._own_pool = pool is None and transport is None
        self._pool: ChannelPool | None = None
        if transport is None:
            self._pool = pool if pool is not None else ChannelPool()  # an empty pool is falsy
            transport = GrpcTransport(self._pool, self.clock)
        self._transport: Transport = transport
        # Each Execute may take the whole round timeout, as a gradient round waits for every peer.
        policy = ExecutionPolicy(max_call_s=timeout_s, min_call_s=timeout_s)
        self._executor = Executor(self._transport, identity, policy, self.clock)

    async def __aenter__(self) -> GradientMarket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_pool and self._pool is not None:
            await self._pool.close()

    async def step(self, inputs: torch.Tensor, targets: torch.Tensor, *, learn: bool = True) -> GradientRound:
        """One round: bids, execution, loss, gradients to every bidder, payments.

        ``learn=False`` is the forward market alone: the same bids, execution, mixture, loss and
        payments, with no gradient computed or sent (benchmarks compare the two).
        """
        phases: dict[str, float] = {}
        lap = self.clock.monotonic()
        wire = tensors.encode(inputs, self.input_name)
        if len(wire.data) > MAX_PREVIEW_BYTES:
            raise ProtocolError("gradient mode sends the batch as a preview; this batch is too large for one")
        task = build_task(TASK_ID, self.capability, [wire], preview=True, max_cost=None)
        issued = self.clock.wall_ms()
        call = call_for_bids(
            self.identity, [task], issued, issued + round(self.timeout_s * 1000), gradient_mode=True
        )
        request_id = call.request_id
        collected = await collect_round(
            self._transport,
            [(address, call) for address in self.addresses],
            self.timeout_s,
            self.clock,
        )
        batch = inputs.shape[0]
        bidders = [
            _Bidder(bid, torch.tensor(bid.bid_values, dtype=torch.float32))
            for bid in collected.bids
            if len(bid.bid_values) == batch  # without per-example values it cannot take part
        ]
        if not bidders:
            raise NoBidsError("no candidate answered with a gradient-mode bid")
        phases["bids"], lap = self._lap(lap)
        cleared = await self._execute(request_id, Payload((wire,), tensors.digest([wire])), bidders)
        phases["execute"], lap = self._lap(lap)
        bidders, outputs = cleared.bidders, _stacked(cleared)
        bids = torch.stack([bidder.values for bidder in bidders])
        running = [index in cleared.outputs for index in range(len(bidders))]
        prices = [bidder.info.cost / batch for bidder in bidders]
        dropped = [_dropped(bidder, reason) for bidder, reason in cleared.dropped]
        if not learn:
            gate = gates(top_k(masks(bids, shift(bids, self.shift_mode)), self.k or len(bidders)).masks)
            output = mixture(gate, outputs)
            loss = float(self.loss_fn(output, targets))
            peers = [_unlearnt(bidder, gate[i], running[i], prices[i]) for i, bidder in enumerate(bidders)]
            phases["market"], lap = self._lap(lap)
            self._record_payments(request_id, peers)
            return GradientRound(request_id, loss, output, tuple(peers + dropped), phases)
        market = market_gradients(bids, outputs, targets, self.loss_fn, shift_mode=self.shift_mode, k=self.k)
        phases["market"], lap = self._lap(lap)
        answers = await asyncio.gather(
            *(
                self._send_gradient(
                    request_id,
                    bidder,
                    market.loss_by_bid[i],
                    market.gate_by_bid[i],
                    prices[i],
                    market.loss_by_output[i] if running[i] else None,
                )
                for i, bidder in enumerate(bidders)
            )
        )
        peers = []
        for i, bidder in enumerate(bidders):
            payment = prices[i] * float(market.gates[i].sum()) if running[i] else 0.0
            applied, applied_norm, refusal = answers[i]
            peers.append(
                PeerRound(
                    address=bidder.info.address,
                    peer_id=bidder.info.peer_id.hex,
                    model_id=bidder.info.model_id,
                    bids=bidder.values,
                    gates=market.gates[i],
                    executed=running[i],
                    payment=payment,
                    applied=applied,
                    applied_norm=applied_norm,
                    refusal=refusal,
                )
            )
        phases["send"], lap = self._lap(lap)
        self._record_payments(request_id, peers)
        return GradientRound(request_id, float(market.loss), market.output, tuple(peers + dropped), phases)

    # --- the steps ------------------------------------------------------------------------------

    async def _execute(self, request_id: bytes, payload: Payload, bidders: list[_Bidder]) -> _Cleared:
        """Execute on every selected bidder; drop those that fail and clear again among the rest."""
        cleared = _Cleared(list(bidders), {}, [])
        deadline = self.clock.monotonic() + self.timeout_s
        while cleared.bidders:
            bids = torch.stack([bidder.values for bidder in cleared.bidders])
            kept = top_k(masks(bids, shift(bids, self.shift_mode)), self.k or len(cleared.bidders))
            selected = [i for i, row in enumerate(kept.selected) if bool(row.any())]
            missing = [i for i in selected if i not in cleared.outputs]
            if not selected:
                raise NoBidsError("every bid fell below the market shift; no peer executes")
            if not missing:
                # Outputs of peers no longer selected would carry a zero gate: leave them out.
                cleared.outputs = {i: cleared.outputs[i] for i in selected}
                return cleared
            runs = await asyncio.gather(
                *(
                    self._executor.run(request_id, [cleared.bidders[i].info], payload, deadline)
                    for i in missing
                )
            )
            failed: dict[int, str] = {}
            for index, executed in zip(missing, runs, strict=True):
                if executed.success is None:
                    error = executed.attempts[-1].error if executed.attempts else None
                    failed[index] = f"execute failed: {status_name(error) if error else 'DEADLINE_EXCEEDED'}"
                    continue
                output = _single_output(executed.success.receipt.outputs, cleared.bidders[index].info)
                if isinstance(output, str):
                    failed[index] = output
                else:
                    cleared.outputs[index] = output
            failed.update(_shape_misfits(cleared.outputs))
            if not failed:
                continue
            cleared.dropped += [(cleared.bidders[i], reason) for i, reason in sorted(failed.items())]
            survivors = [i for i in range(len(cleared.bidders)) if i not in failed]
            cleared.outputs = {
                new: cleared.outputs[old] for new, old in enumerate(survivors) if old in cleared.outputs
            }
            cleared.bidders = [cleared.bidders[i] for i in survivors]
        raise NoBidsError(
            "every selected peer failed to execute: "
            + "; ".join(f"{bidder.info.address}: {reason}" for bidder, reason in cleared.dropped)
        )

    async def _send_gradient(
        self,
        request_id: bytes,
        bidder: _Bidder,
        loss_grad: torch.Tensor,
        share_grad: torch.Tensor,
        price: float,
        output_grad: torch.Tensor | None,
    ) -> tuple[bool, float, str]:
        trains = output_grad is not None and bidder.info.address in self.train_outputs
        update = BidGradientUpdate(
            request_id=request_id,
            task_id=TASK_ID,
            requester_id=self.identity.peer_id.raw,
            loss_grad=tuple(loss_grad.tolist()),
            share_grad=tuple(share_grad.tolist()),
            output_grad=tensors.encode(output_grad, "output_grad")
            if trains and output_grad is not None
            else None,
            price=price,
            issued_at_ms=self.clock.wall_ms(),
        )
        call = BidGradientCall(codec.sign(self.identity, update))
        try:
            reply = await self._transport.bid_gradient(bidder.info.address, call, self.timeout_s)
        except AtomicError as error:
            return False, 0.0, status_name(error)
        return reply.applied, reply.applied_norm, ""

    def _lap(self, started: float) -> tuple[float, float]:
        now = self.clock.monotonic()
        return (now - started) * 1000, now

    def _record_payments(self, request_id: bytes, peers: Sequence[PeerRound]) -> None:
        if self.store is None:
            return
        at = self.clock.wall_ms()
        for peer in peers:
            if peer.executed:
                self.store.record_payment(
                    PaymentRecord(at, request_id, TASK_ID, peer.peer_id, peer.payment, PaymentKind.CHARGE)
                )


def _single_output(outputs: dict[str, torch.Tensor], bid: BidInfo) -> torch.Tensor | str:
    if len(outputs) != 1:
        return f"{bid.model_id} returned {len(outputs)} outputs; one expected"
    return next(iter(outputs.values())).float()


def _shape_misfits(outputs: dict[int, torch.Tensor]) -> dict[int, str]:
    """Outputs whose shape differs from the most common one (the mixture needs one shape)."""
    if not outputs:
        return {}
    shapes = [tuple(output.shape) for output in outputs.values()]
    common = max(set(shapes), key=shapes.count)
    return {
        index: f"output shape {list(output.shape)} differs from the others' {list(common)}"
        for index, output in outputs.items()
        if tuple(output.shape) != common
    }


def _stacked(cleared: _Cleared) -> torch.Tensor:
    template = torch.zeros_like(next(iter(cleared.outputs.values())))
    return torch.stack([cleared.outputs.get(i, template) for i in range(len(cleared.bidders))])


def _dropped(bidder: _Bidder, reason: str) -> PeerRound:
    zeros = torch.zeros_like(bidder.values)
    return PeerRound(
        address=bidder.info.address,
        peer_id=bidder.info.peer_id.hex,
        model_id=bidder.info.model_id,
        bids=bidder.values,
        gates=zeros,
        executed=False,
        payment=0.0,
        applied=False,
        applied_norm=0.0,
        refusal=reason,
    )


def _unlearnt(bidder: _Bidder, gate: torch.Tensor, executed: bool, price: float) -> PeerRound:
    return PeerRound(
        address=bidder.info.address,
        peer_id=bidder.info.peer_id.hex,
        model_id=bidder.info.model_id,
        bids=bidder.values,
        gates=gate,
        executed=executed,
        payment=price * float(gate.sum()) if executed else 0.0,
        applied=False,
        applied_norm=0.0,
    )
