"""The requester's side of the market messages: build and sign what it sends, check what it gets.

How this works (docs/protocol.md, binding)
------------------------------------------
- A task travels as serialized ``TaskSpec`` bytes inside a signed ``BidRequest``; a bid names
  the task by ``sha256`` of exactly those bytes, so the requester keeps the bytes it sent.
- A bid is trusted only after its envelope verifies (done in a batch off the event loop by the
  auction) *and* its payload binds to this auction: same request id, a task we asked about with
  the digest we computed, a peer id that is the hash of the signing key, and ``valid_until`` in
  the future. :func:`parse_bid` checks the binding; it never sees an unverified envelope.
- An ``ExecuteOrder`` names the bid by ``sha256`` of its payload and the inputs by their tensor
  digest. The signed ``ExecuteResult`` must come from the winner, echo the request, task and bid
  digest, and carry the digest of the outputs exactly as they arrived.

Every message is a value of :mod:`atomic_p2p.protocol.messages`, turned into bytes and signed by
the market codec (:mod:`atomic_p2p.protocol.codec`); nothing here touches protobuf.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from atomic_p2p import tensors
from atomic_p2p.errors import BidExpiredError, ProtocolError
from atomic_p2p.identity import Envelope, Identity, PeerId
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    BidRequest,
    ExecuteOrder,
    ExecuteResult,
    FeedbackKind,
    FeedbackNotice,
    TaskSpec,
    TensorSpec,
    TextSpec,
)
from atomic_p2p.requester.types import BidInfo

# Inline previews let confidence-based strategies look at the data, but a large batch would
# travel twice; above this size only the specs go out with the call for bids.
MAX_PREVIEW_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A task as the requester sent it: its id and the sha256 of its TaskSpec bytes."""

    task_id: str
    spec: bytes
    digest: bytes = field(
        init=False, repr=False, compare=False
    )  # hashed once: every bid is checked against it

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(self.spec).digest())


@dataclass(frozen=True, slots=True)
class ResultReceipt:
    """What a verified ExecuteResult says, with the decoded outputs."""

    outputs: dict[str, torch.Tensor]
    cost_charged: float
    latency_ms: float


def build_task(
    task_id: str,
    capability: str,
    inputs: Sequence[tensors.WireTensor],
    *,
    preview: bool,
    max_cost: float | None,
    model_id: str = "",
    texts: Sequence[bytes] = (),
    language: str = "",
) -> TaskRef:
    """Serialize one TaskSpec (inputs and texts inline as a preview when asked and small enough)."""
    size = sum(len(wire.data) for wire in inputs) + sum(len(text) for text in texts)
    inline = preview and size <= MAX_PREVIEW_BYTES
    spec = TaskSpec(
        task_id=task_id,
        capability=capability,
        model_id=model_id,
        inputs=tuple(TensorSpec(wire.name, wire.dtype, wire.shape) for wire in inputs),
        preview=tuple(inputs) if inline else (),
        max_cost=max_cost or 0.0,
        text=TextSpec.of(tuple(texts)) if texts else None,
        text_preview=tuple(texts) if inline else (),
        language=language,
    )
    return TaskRef(task_id, codec.encode(spec))


def sign_bid_request(
    identity: Identity,
    request_id: bytes,
    tasks: Sequence[TaskRef],
    issued_at_ms: int,
    deadline_ms: int,
    *,
    gradient_mode: bool = False,
    detached: bool = False,
) -> Envelope:
    """``identity``'s signed BidRequest for ``tasks``; ``detached``: it signs their digests and
    the TaskSpec bytes travel beside it (RequestBidsCall.tasks, docs/protocol.md section 3.2)."""
    return codec.sign(
        identity,
        BidRequest(
            request_id=request_id,
            requester_id=identity.peer_id.raw,
            issued_at_ms=issued_at_ms,
            deadline_ms=deadline_ms,
            tasks=() if detached else tuple(task.spec for task in tasks),
            gradient_mode=gradient_mode,
            batch_signatures=True,  # every bid check here takes a batch proof (docs/protocol.md 3.1)
            task_digests=tuple(task.digest for task in tasks) if detached else (),
        ),
    )


@functools.lru_cache(maxsize=4096)  # quotes repeat; numpy's shortest repr costs ~2 us a call
def _from_float32(value: float) -> float:
    # proto float fields are float32: 0.9 arrives as 0.8999999761581421. The shortest decimal
    # that round-trips through float32 is what the peer meant, and what reports should show.
    return float(str(np.float32(value)))


def parse_bid(
    envelope: Envelope, signer: PeerId, address: str, request_id: bytes, task: TaskRef, now_ms: int
) -> BidInfo:
    """Check a verified bid envelope binds to this auction; return its terms or raise."""
    bid = codec.decode_bid_fields(envelope.payload)  # its fields: a Bid value would be dropped
    if bid.peer_id != signer.raw:
        raise ProtocolError("bid peer_id is not the hash of the key that signed it")
    if bid.request_id != request_id:
        raise ProtocolError("bid echoes a different request id")
    if bid.task_id != task.task_id or bid.task_digest != task.digest:
        raise ProtocolError(f"bid is for task {bid.task_id!r} with a digest that does not match ours")
    if bid.valid_until_ms <= now_ms:
        raise BidExpiredError(f"bid expired {now_ms - bid.valid_until_ms} ms ago")
    # Positional, in BidInfo's field order (keywords cost 0.8 us more for 19 fields, per bid).
    return BidInfo(
        signer,  # peer_id
        address,
        bid.task_id,
        bid.model_id,
        _from_float32(bid.confidence_score),  # confidence
        _from_float32(bid.expected_latency_ms),
        float(bid.cost_estimate),  # cost
        int(bid.valid_until_ms),
        bid.strategy,
        envelope,
        bid.capabilities,
        bid.constraints,
        bid.resource_requirements,  # resources
        bid.request_id,
        int(bid.reusable_ttl_ms),
        int(bid.record_seq),
        False,  # reused: it came from a call for bids
        bid.bid_values,
        bid.confidence_unknown,
    )


def sign_order(
    identity: Identity,
    request_id: bytes,
    bid: BidInfo,
    inputs_digest: bytes,
    issued_at_ms: int,
    deadline_ms: int,
    *,
    max_tokens: int = 0,
    prefix_tokens: tuple[int, ...] = (),
    prefix_text: bytes = b"",
) -> Envelope:
    """Sign the order to run ``bid``; ``inputs_digest`` is :func:`atomic_p2p.tensors.digest` of the
    inputs. A generation order sets ``max_tokens`` and, to continue, ``prefix_tokens`` (a
    token-id prompt) or ``prefix_text`` (a text prompt)."""
    order = ExecuteOrder(
        request_id=request_id,
        task_id=bid.task_id,
        bid_digest=bid.digest,
        issued_at_ms=issued_at_ms,
        inputs_digest=inputs_digest,
        deadline_ms=deadline_ms,
        max_tokens=max_tokens,
        prefix_tokens=prefix_tokens,
        prefix_text=prefix_text,
    )
    return codec.sign(identity, order)


def check_result(
    envelope: Envelope,
    outputs: Sequence[tensors.WireTensor],
    request_id: bytes,
    bid: BidInfo,
    texts: Sequence[bytes] = (),
    outputs_digest: bytes | None = None,
) -> ResultReceipt:
    """Verify a signed ExecuteResult against the bid it answers and decode the outputs
    (``texts``: a text generation's output, UTF-8, covered by the digest after the tensors).

    CPU-bound (a signature check, a digest over every output byte, a copy per tensor): the
    caller runs it in a worker thread. ``outputs_digest``: ``tensors.digest(outputs, texts)``
    where the caller already has it (hashed as a stream arrived).
    """
    _, result = codec.open_signed(envelope, ExecuteResult, expected_signer=bid.peer_id)
    if result.request_id != request_id or result.task_id != bid.task_id:
        raise ProtocolError("result echoes a different request or task")
    if result.peer_id != bid.peer_id.raw or result.bid_digest != bid.digest:
        raise ProtocolError("result does not name the winning bid")
    if outputs_digest is None:
        outputs_digest = tensors.digest(outputs, texts)
    if result.outputs_digest != outputs_digest:
        raise ProtocolError("outputs do not match the digest the peer signed")
    decoded: dict[str, torch.Tensor] = {}
    for wire in outputs:
        if wire.name in decoded:
            raise ProtocolError(f"output {wire.name!r} appears twice")
        decoded[wire.name] = tensors.decode(wire)
    return ResultReceipt(decoded, float(result.cost_charged), float(result.latency_ms))


def sign_feedback(
    identity: Identity,
    request_id: bytes,
    bid: BidInfo,
    kind: FeedbackKind,
    issued_at_ms: int,
    *,
    clearing_price: float = 0.0,
    score_to_win: float = 0.0,
    outcome_score: float = 0.0,
) -> Envelope:
    """Sign a FeedbackNotice about ``bid``."""
    notice = FeedbackNotice(
        request_id=request_id,
        task_id=bid.task_id,
        requester_id=identity.peer_id.raw,
        kind=kind,
        clearing_price=clearing_price,
        score_to_win=score_to_win,
        outcome_score=outcome_score,
        issued_at_ms=issued_at_ms,
        model_id=bid.model_id,
    )
    return codec.sign(identity, notice)
