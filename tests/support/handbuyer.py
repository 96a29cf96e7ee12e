"""A requester that builds and signs every message by hand and calls a peer through the raw stub.

:class:`HandBuyer` speaks the wire protocol with the generated stub and hand-signed messages,
independent of the requester SDK, so protocol tests can forge, replay and tamper at will and the
SDK and the peer can each be checked against a second implementation::

    async with HandBuyer(node.address) as buyer:
        response = await buyer.request_bids([buyer.task("t1", batch=4)])
        bid = response.outcomes[0].bid
        result = await buyer.execute(bid, [buyer.inputs(4)])
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from atomic_p2p._proto.atomic.v1 import envelope_pb2, market_pb2, market_pb2_grpc
from atomic_p2p.channels import connect
from atomic_p2p.identity import Identity, PeerId
from atomic_p2p.protocol.messages import TensorSpec
from atomic_p2p.protocol.wire import envelope_to_proto, spec_to_proto, tensor_to_proto
from atomic_p2p.tensors import WireTensor, digest, encode
from atomic_p2p.testing import digits_batch

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 128 * 1024 * 1024),
    ("grpc.max_send_message_length", 128 * 1024 * 1024),
)


def now_ms() -> int:
    """Wall-clock milliseconds: the clock peers check issue times and deadlines against."""
    return time.time_ns() // 1_000_000


class HandBuyer:
    """A requester that signs every message by hand and calls a peer through the raw stub."""

    def __init__(self, address: str, identity: Identity | None = None) -> None:
        """``address`` is ``host:port`` or ``PEERID@host:port``; the channel opens on ``async with``,
        pinned to the certificate the peer presents (checked against PEERID when given), or
        plaintext for a peer started with ``insecure``."""
        self.address = address
        self.identity = identity or Identity.generate()
        self.peer_id: PeerId | None = None

    async def __aenter__(self) -> HandBuyer:
        self.channel, pin = await connect(self.address, allow_plaintext=True, options=CHANNEL_OPTIONS)
        self.peer_id = pin.peer
        self.stub = market_pb2_grpc.PeerStub(self.channel)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.channel.close()

    def raw(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """``/atomic.v1.Peer/<method>`` taking and returning raw bytes (for garbage tests)."""
        return self.channel.unary_unary(f"/atomic.v1.Peer/{method}")

    # --- building messages --------------------------------------------------------------------

    @staticmethod
    def inputs(batch: int, *, name: str = "x", offset: int = 0) -> WireTensor:
        return encode(digits_batch(batch, offset)[0], name)

    @staticmethod
    def task(
        task_id: str = "t1",
        batch: int = 4,
        *,
        capability: str = "classify/digits",
        model_id: str = "",
        dtype: str = "float32",
        shape: Sequence[int] | None = None,
        preview: Sequence[WireTensor] = (),
        max_cost: float = 0.0,
    ) -> bytes:
        """Serialized TaskSpec bytes (what BidRequest.tasks carries)."""
        spec = market_pb2.TaskSpec(
            task_id=task_id,
            capability=capability,
            model_id=model_id,
            inputs=[
                spec_to_proto(TensorSpec("x", dtype, tuple(shape) if shape is not None else (batch, 64)))
            ],
            preview=[tensor_to_proto(wire) for wire in preview],
            max_cost=max_cost,
        )
        return spec.SerializeToString()

    def bid_request(
        self,
        tasks: Sequence[bytes],
        *,
        request_id: bytes | None = None,
        issued_at_ms: int | None = None,
        deadline_ms: int | None = None,
        signer: Identity | None = None,
        gradient_mode: bool = False,
        detached: bool = False,
    ) -> market_pb2.RequestBidsRequest:
        """A signed call for ``tasks``; ``detached``: the BidRequest signs their digests and the
        TaskSpec bytes travel beside it (docs/protocol.md section 3.2)."""
        now = now_ms()
        payload = market_pb2.BidRequest(
            request_id=request_id or secrets.token_bytes(16),
            requester_id=self.identity.peer_id.raw,
            issued_at_ms=now if issued_at_ms is None else issued_at_ms,
            deadline_ms=now + 30_000 if deadline_ms is None else deadline_ms,
            tasks=[] if detached else list(tasks),
            gradient_mode=gradient_mode,
            task_digests=[hashlib.sha256(task).digest() for task in tasks] if detached else [],
        )
        beside = list(tasks) if detached else []
        return market_pb2.RequestBidsRequest(request=self.sign(payload, signer), tasks=beside)

    def order(
        self,
        bid: envelope_pb2.SignedEnvelope,
        inputs: Sequence[WireTensor],
        *,
        deadline_ms: int | None = None,
        inputs_digest: bytes | None = None,
        signer: Identity | None = None,
        issued_at_ms: int | None = None,
    ) -> market_pb2.ExecuteRequest:
        terms = market_pb2.Bid.FromString(bid.payload)
        now = now_ms()
        order = market_pb2.ExecuteOrder(
            request_id=terms.request_id,
            task_id=terms.task_id,
            bid_digest=hashlib.sha256(bid.payload).digest(),
            issued_at_ms=now if issued_at_ms is None else issued_at_ms,
            inputs_digest=digest(inputs) if inputs_digest is None else inputs_digest,
            deadline_ms=now + 30_000 if deadline_ms is None else deadline_ms,
        )
        return market_pb2.ExecuteRequest(
            order=self.sign(order, signer), bid=bid, inputs=[tensor_to_proto(w) for w in inputs]
        )

    def feedback(
        self,
        bid: envelope_pb2.SignedEnvelope,
        kind: str = "win",
        *,
        signer: Identity | None = None,
        **fields: Any,
    ) -> market_pb2.FeedbackRequest:
        terms = market_pb2.Bid.FromString(bid.payload)
        notice = market_pb2.FeedbackNotice(
            request_id=terms.request_id,
            task_id=terms.task_id,
            requester_id=(signer or self.identity).peer_id.raw,
            kind=market_pb2.FeedbackKind.Value(f"FEEDBACK_KIND_{kind.upper()}"),
            issued_at_ms=now_ms(),
            model_id=terms.model_id,
            **fields,
        )
        return market_pb2.FeedbackRequest(notice=self.sign(notice, signer))

    def gradient(
        self,
        bid: envelope_pb2.SignedEnvelope,
        loss_grad: Sequence[float] = (),
        *,
        signer: Identity | None = None,
        **fields: Any,
    ) -> market_pb2.BidGradientRequest:
        """A signed BidGradientUpdate for ``bid`` (``share_grad``, ``price``, ... as fields)."""
        terms = market_pb2.Bid.FromString(bid.payload)
        update = market_pb2.BidGradientUpdate(
            request_id=terms.request_id,
            task_id=terms.task_id,
            requester_id=(signer or self.identity).peer_id.raw,
            loss_grad=list(loss_grad),
            issued_at_ms=now_ms(),
            **fields,
        )
        return market_pb2.BidGradientRequest(update=self.sign(update, signer))

    def sign(self, message: Any, signer: Identity | None = None) -> envelope_pb2.SignedEnvelope:
        identity = signer or self.identity
        return envelope_to_proto(identity.sign(message.DESCRIPTOR.full_name, message.SerializeToString()))

    # --- calling ------------------------------------------------------------------------------

    async def request_bids(self, tasks: Sequence[bytes], **fields: Any) -> market_pb2.RequestBidsResponse:
        response: market_pb2.RequestBidsResponse = await self.stub.RequestBids(
            self.bid_request(tasks, **fields), timeout=30
        )
        return response

    async def win(self, batch: int = 4, **task_fields: Any) -> envelope_pb2.SignedEnvelope:
        """Ask for bids on one task and return the bid envelope (fails if the peer declines)."""
        response = await self.request_bids([self.task("t1", batch, **task_fields)])
        outcome = response.outcomes[0]
        if not outcome.HasField("bid"):
            raise AssertionError(f"the peer declined: {outcome.no_bid}")
        return outcome.bid

    async def execute(
        self, bid: envelope_pb2.SignedEnvelope, inputs: Sequence[WireTensor], **fields: Any
    ) -> market_pb2.ExecuteResponse:
        response: market_pb2.ExecuteResponse = await self.stub.Execute(
            self.order(bid, inputs, **fields), timeout=60
        )
        return response
