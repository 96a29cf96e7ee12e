"""Requester gradient mode: run the differentiable market over the network and send gradients back.

How this works
--------------
DESIGN section 9, seller-side: one :meth:`GradientMarket.step` takes a batch of inputs and their
targets and

1. signs a BidRequest with ``gradient_mode`` and the batch as the task's preview, and asks every
   candidate address at once; a verified bid that carries one ``bid_values`` entry per example
   joins the market (a peer that bids without them, or declines, sits this round out);
2. runs the market on the bids (:func:`atomic_p2p.market.shift`, ``masks``, ``top_k``) and executes
   the batch on every peer with a selected example: the top k by mask, or every positive mask when
   ``k`` is None (the mixture);
3. computes the loss and every gradient with :func:`atomic_p2p.market.market_gradients` (peers
   that did not run contribute zeros; their gate is 0);
4. signs one BidGradientUpdate per bidder (dL/db, dg/db, the price per unit of gate, and dL/dy for
   the addresses named in ``train_outputs``, which opted into remote training) and sends them at
   once; each peer's answer (applied, applied_norm, or the status it refused with) is returned;
5. records the payment ``price_i * sum_b g_ib`` of every peer that ran in the store's ledger.

The price of a bid is its ``cost_estimate`` per example, so a peer holding the whole gate of every
example is paid exactly its quote. Everything on the wire goes through :mod:`transport` helpers'
types and :mod:`messages` checks; the pure market never sees protobuf.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from grpc import aio
from torch.nn import functional

from atomic_p2p import identity as signing
from atomic_p2p import tensors
from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p._wire import envelope_to_proto, parse, sign_message, tensor_to_proto
from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import AtomicError, NoBidsError, ProtocolError, from_status
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.market import LossFunction, ShiftMode, gates, market_gradients, masks, mixture, shift, top_k
from atomic_p2p.requester.messages import BID_TYPE, TaskRef, build_task, check_result, parse_bid, sign_order
from atomic_p2p.requester.transport import PeerTransport, status_name
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.store import Store
from atomic_p2p.store_schema import PaymentKind, PaymentRecord

TASK_ID = "gradient"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
    refusal: str = ""  # the status it refused the gradient with, if it did


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
        self._own_pool = pool is None
        self._pool = pool or ChannelPool()
        self._transport = PeerTransport(self._pool)

    async def __aenter__(self) -> GradientMarket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_pool:
            await self._pool.close()

    async def step(self, inputs: torch.Tensor, targets: torch.Tensor, *, learn: bool = True) -> GradientRound:
        """One round: bids, execution, loss, gradients to every bidder, payments.

        ``learn=False`` is the forward market alone: the same bids, execution, mixture, loss and
        payments, with no gradient computed or sent (benchmarks compare the two).
        """
        phases: dict[str, float] = {}
        clock = time.perf_counter()
        request_id = secrets.token_bytes(16)
        wire = tensors.encode(inputs, self.input_name)
        task = build_task(TASK_ID, self.capability, [wire], preview=True, max_cost=None)
        if not market_pb2.TaskSpec.FromString(task.spec).preview:
            raise ProtocolError("gradient mode sends the batch as a preview; this batch is too large for one")
        bidders = await self._solicit(request_id, task, inputs.shape[0])
        if not bidders:
            raise NoBidsError("no candidate answered with a gradient-mode bid")
        phases["bids"], clock = _lap(clock)
        bids = torch.stack([bidder.values for bidder in bidders])
        kept = top_k(masks(bids, shift(bids, self.shift_mode)), self.k or len(bidders))
        running = [bool(row.any()) for row in kept.selected]
        outputs = await self._execute(request_id, wire, bidders, running)
        phases["execute"], clock = _lap(clock)
        prices = [bidder.info.cost / inputs.shape[0] for bidder in bidders]
        if not learn:
            gate = gates(kept.masks)
            output = mixture(gate, outputs)
            loss = float(self.loss_fn(output, targets))
            peers = [_unlearnt(bidder, gate[i], running[i], prices[i]) for i, bidder in enumerate(bidders)]
            phases["market"], clock = _lap(clock)
            self._record_payments(request_id, peers)
            return GradientRound(request_id, loss, output, tuple(peers), phases)
        market = market_gradients(bids, outputs, targets, self.loss_fn, shift_mode=self.shift_mode, k=self.k)
        phases["market"], clock = _lap(clock)
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
        phases["send"], clock = _lap(clock)
        self._record_payments(request_id, peers)
        return GradientRound(request_id, float(market.loss), market.output, tuple(peers), phases)

    # --- the steps ------------------------------------------------------------------------------

    async def _solicit(self, request_id: bytes, task: TaskRef, batch: int) -> list[_Bidder]:
        issued = now_ms()
        message = market_pb2.BidRequest(
            request_id=request_id,
            requester_id=self.identity.peer_id.raw,
            issued_at_ms=issued,
            deadline_ms=issued + round(self.timeout_s * 1000),
            tasks=[task.spec],
            gradient_mode=True,
        )
        request: Envelope = sign_message(self.identity, message)
        replies = await asyncio.gather(
            *(self._transport.request_bids(a, request, self.timeout_s) for a in self.addresses),
            return_exceptions=True,
        )
        bidders = []
        for address, reply in zip(self.addresses, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, AtomicError):
                    raise reply
                continue  # an unreachable or refusing peer sits the round out
            for outcome in reply:
                if not isinstance(outcome, Envelope):
                    continue
                bidder = self._bidder(outcome, address, request_id, task, batch)
                if bidder is not None:
                    bidders.append(bidder)
        return bidders

    def _bidder(
        self, envelope: Envelope, address: str, request_id: bytes, task: TaskRef, batch: int
    ) -> _Bidder | None:
        try:
            signer = signing.verify(envelope, BID_TYPE)
            info = parse_bid(envelope, signer, address, request_id, task, now_ms())
        except AtomicError:
            return None
        values = parse(market_pb2.Bid, envelope.payload, "bid").bid_values
        if len(values) != batch:
            return None  # no gradient-mode bid values: it cannot take part in this market
        return _Bidder(info, torch.tensor(list(values), dtype=torch.float32))

    async def _execute(
        self, request_id: bytes, wire: tensors.WireTensor, bidders: Sequence[_Bidder], running: Sequence[bool]
    ) -> torch.Tensor:
        inputs_digest = tensors.digest([wire])

        async def run(bidder: _Bidder) -> torch.Tensor:
            issued = now_ms()
            order = sign_order(
                self.identity,
                request_id,
                bidder.info,
                inputs_digest,
                issued,
                issued + round(self.timeout_s * 1000),
            )
            result, outputs = await self._transport.execute(
                bidder.info.address, order, bidder.info.envelope, [wire], self.timeout_s
            )
            receipt = check_result(result, outputs, request_id, bidder.info)
            if len(receipt.outputs) != 1:
                raise ProtocolError(
                    f"{bidder.info.model_id} returned {len(receipt.outputs)} outputs; one expected"
                )
            return next(iter(receipt.outputs.values())).float()

        results = await asyncio.gather(*(run(b) for b, on in zip(bidders, running, strict=True) if on))
        if not results:
            raise NoBidsError("every bid fell below the market shift; no peer executes")
        template = torch.zeros_like(results[0])
        ran = iter(results)
        return torch.stack([next(ran) if on else template for on in running])

    async def _send_gradient(
        self,
        request_id: bytes,
        bidder: _Bidder,
        loss_grad: torch.Tensor,
        share_grad: torch.Tensor,
        price: float,
        output_grad: torch.Tensor | None,
    ) -> tuple[bool, float, str]:
        update = market_pb2.BidGradientUpdate(
            request_id=request_id,
            task_id=TASK_ID,
            requester_id=self.identity.peer_id.raw,
            loss_grad=loss_grad.tolist(),
            share_grad=share_grad.tolist(),
            price=price,
            issued_at_ms=now_ms(),
        )
        if output_grad is not None and bidder.info.address in self.train_outputs:
            update.output_grad.CopyFrom(tensor_to_proto(tensors.encode(output_grad, "output_grad")))
        envelope: Envelope = sign_message(self.identity, update)
        message = market_pb2.BidGradientRequest(update=envelope_to_proto(envelope))
        try:
            response = await self._pool.stub(bidder.info.address).BidGradient(message, timeout=self.timeout_s)
        except aio.AioRpcError as error:
            return False, 0.0, status_name(from_status(error.code(), error.details()))
        return bool(response.applied), float(response.applied_norm), ""

    def _record_payments(self, request_id: bytes, peers: Sequence[PeerRound]) -> None:
        if self.store is None:
            return
        at = now_ms()
        for peer in peers:
            if peer.executed:
                self.store.record_payment(
                    PaymentRecord(at, request_id, TASK_ID, peer.peer_id, peer.payment, PaymentKind.CHARGE)
                )


def _lap(started: float) -> tuple[float, float]:
    now = time.perf_counter()
    return (now - started) * 1000, now


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
