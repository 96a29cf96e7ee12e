"""The seller: what a peer decides about every market message, with no I/O (sans-I/O core).

How this works
--------------
:class:`Seller` takes decoded frames (:mod:`atomic_p2p.protocol.messages`) and the time, and
returns the answer frames, or raises the :class:`~atomic_p2p.errors.AtomicError` the caller
deserves. It holds the replay guard, the bid book, the strategies and the gradient learners; it
never touches a socket, a thread or the event loop. The servicer
(:class:`atomic_p2p.peer.server.PeerService`) decodes bytes, calls it, runs the slow parts where
they belong (strategy previews and forward passes off the loop, at most once per order through
the worker pool) and encodes the answer; the in-memory network of :mod:`atomic_p2p.testing`
calls the same servicer without gRPC.

RequestBids (:meth:`Seller.open_request`, :meth:`Seller.decide`, :meth:`Seller.answer`): verify
the request -> admit it (skew window, node start, fresh request id, deadline, task count) -> parse
each TaskSpec (its digest is sha256 of the bytes as received) -> the bid book has room -> the
strategies decide -> sign each Bid and remember it.

Execute (:meth:`Seller.open_order`, then :meth:`Seller.perform` in a worker): verify the bid
(signed by this node) and the order (signed by the requester that asked for the bid) -> the order
names that bid's digest and ids (or reuses a reusable bid) -> the bid is live -> decode the inputs
and texts under limits (texts UTF-8) -> their digest matches the order -> the texts are as many as
the bid was for and within the model's token limit, then tokenised -> dtype and shape fit the
model and the bid ->
deadline -> forward pass -> a signed ExecuteResult.

Feedback: verify -> the notice's requester signed it -> a bid of ours, for that requester -> not a
repeat -> the strategy learns. BidGradient (:mod:`atomic_p2p.peer.gradients`): verify -> the
update's requester signed it -> a gradient-mode bid we issued to that signer -> not yet applied ->
the learner checks shape, finiteness and norm, then steps and checkpoints.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from atomic_p2p import metrics
from atomic_p2p.errors import (
    BidExpiredError,
    DeadlineError,
    LimitExceededError,
    PreconditionError,
    ProtocolError,
    SignatureError,
    StaleRequestError,
    shown,
)
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.generation import check_order
from atomic_p2p.peer.gradients import BidLearner, GradientBook, GradientUpdate, load_learners
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.replay import BidBook, BidRequestHeader, IssuedBid, RequestGuard
from atomic_p2p.peer.strategies import BidTerms, Load, NoBid, Notice, Strategy, Task, decide
from atomic_p2p.peer.strategies.screening import Screened
from atomic_p2p.peer.textgen import generated_digest, text_inputs
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    Bid,
    BidGradientCall,
    BidGradientReply,
    BidGradientUpdate,
    BidRequest,
    ExecuteCall,
    ExecuteOrder,
    ExecuteReply,
    ExecuteResult,
    FeedbackCall,
    FeedbackKind,
    FeedbackNotice,
    FeedbackReply,
    RequestBidsCall,
    RequestBidsReply,
    TaskSpec,
    TensorSpec,
    TextSpec,
)
from atomic_p2p.protocol.messages import NoBid as WireNoBid
from atomic_p2p.sources import UNKNOWN, Source
from atomic_p2p.tensors import (
    DEFAULT_LIMITS,
    DEFAULT_TEXT_LIMITS,
    TensorLimits,
    TextLimits,
    WireTensor,
    check_spec,
    decode,
    decode_many,
    decode_texts,
    digest,
    encode,
)

# The longest task_id, capability, model_id or language a TaskSpec may carry (refused before use).
MAX_FIELD_CHARS = 256

# Below this measured forward time, a preview runs inline: a hop to a worker thread and back
# (~0.2 ms on a 2-core box) would cost more than the forward pass it moves off the loop.
INLINE_FORWARD_MS = 0.5

Decision = tuple[HostedModel, BidTerms] | NoBid


def signed_tasks(
    call: RequestBidsCall, request: BidRequest, check_count: Callable[[int], None]
) -> tuple[Sequence[bytes], list[bytes]]:
    """The TaskSpec bytes that a verified BidRequest signs, and the sha256 of each (its task
    digest): carried in the request itself, or detached beside its envelope with only their
    digests signed (docs/protocol.md section 3.2), where each must match its signed digest.
    ``check_count`` refuses too many tasks before any is hashed."""
    if request.task_digests:
        if request.tasks:
            raise ProtocolError("a BidRequest carries its tasks or their digests, not both")
        if len(call.tasks) != len(request.task_digests):
            raise ProtocolError(
                f"{len(call.tasks)} TaskSpecs for {len(request.task_digests)} signed task digests"
            )
        raws = call.tasks
    elif call.tasks:
        raise ProtocolError(
            "TaskSpecs beside the envelope need their digests signed (BidRequest.task_digests)"
        )
    else:
        raws = request.tasks
    check_count(len(raws))
    digests = [hashlib.sha256(raw).digest() for raw in raws]
    if request.task_digests and digests != list(request.task_digests):
        index = next(i for i, signed in enumerate(request.task_digests) if digests[i] != signed)
        raise SignatureError(f"task {index} does not match the digest its BidRequest signs")
    return raws, digests


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """A verified, admitted BidRequest with its tasks parsed (and each task's digest)."""

    header: BidRequestHeader
    request: BidRequest
    tasks: tuple[tuple[Task, bytes], ...]
    source: str = ""  # the address prefix it came from ("": not known)
    newcomer: bool = False  # from a requester without history here

    @property
    def has_preview(self) -> bool:
        return any(task.preview or task.texts for task, _ in self.tasks)


@dataclass(frozen=True, slots=True)
class Job:
    """An order that passed every check: what to run, and how the worker pool keys it."""

    key: tuple[bytes, str]  # (request id, task id) of the order: at most once per key
    fingerprint: bytes  # bid digest + inputs digest: a retry must match it
    timeout_s: float | None  # how long it may wait for a worker (the order's deadline)
    model: HostedModel
    inputs: dict[str, torch.Tensor]
    issued: IssuedBid
    order: ExecuteOrder
    texts: tuple[str, ...] = ()  # a text task's texts, as decoded
    input_tokens: int = 0  # the texts' tokens by the model's tokenizer (a generation: its prompt's)

    @property
    def prompt(self) -> torch.Tensor:
        """A generation order's prompt: the model's one input (int64[1, T] token ids)."""
        return self.inputs[self.model.contract.inputs[0].name]


class Seller:
    """A peer's decisions on every market message; see the module docstring.

    ``record_seq`` reads the seq of the node's current gossip record (0 without gossip): a bid
    names it, and a reused bid is honoured only while it is unchanged. ``learned`` hears every
    model whose strategy learned from a notice (the node journals it). ``clock`` (Unix ms) stamps
    results finished in a worker; every other method takes ``now_ms`` from its caller.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        models: Mapping[str, HostedModel],
        config: PeerConfig,
        started_at_ms: int,
        limits: TensorLimits = DEFAULT_LIMITS,
        text_limits: TextLimits = DEFAULT_TEXT_LIMITS,
        clock: Callable[[], int],
        record_seq: Callable[[], int] = lambda: 0,
        learned: Callable[[str, Strategy], None] | None = None,
    ) -> None:
        self.identity = identity
        self.models = models
        self.limits = limits
        self.text_limits = text_limits
        self._clock = clock
        self._record_seq = record_seq
        self._learned = learned
        self._validity_ms = round(config.bid_validity_s * 1000)
        # A reusable bid is still checked against the bid book, so reuse never outlives validity.
        self._reuse_ms = min(round(config.bid_reuse_ttl_s * 1000), self._validity_ms)
        window_ms = round(config.replay_window_s * 1000)
        self._guard = RequestGuard(
            started_at_ms, window_ms, config.max_tasks_per_request, config.max_remembered
        )
        self._window_ms = window_ms
        self._book = BidBook(
            self._validity_ms,
            window_ms,
            config.max_remembered,
            prefix_share=config.guard.bid_share_per_prefix,
            newcomer_share=config.guard.newcomer_bid_share,
            min_quota=config.max_tasks_per_request,
        )
        self._candidates = [(model, model.strategy) for model in models.values()]
        self.learners: Mapping[str, BidLearner] = load_learners(models, config.data_dir)
        self.gradients = GradientBook(self._validity_ms + window_ms, config.max_remembered)

    @property
    def bid_book(self) -> BidBook:
        return self._book

    # --- RequestBids --------------------------------------------------------------------------

    def open_request(self, call: RequestBidsCall, now_ms: int, source: Source = UNKNOWN) -> OpenRequest:
        """Verify and admit a call for bids from ``source``: the bid book's share of that prefix
        (not for a loopback source: every local caller shares it), and of requesters without
        history here, must have room for its tasks."""
        signer, request = codec.open_signed(call.request, BidRequest)
        raws, digests = signed_tasks(call, request, self._guard.check_task_count)
        header = BidRequestHeader(
            request.request_id,
            request.requester_id,
            signer,
            request.issued_at_ms,
            request.deadline_ms,
            len(raws),
        )
        self._guard.admit(header, now_ms)
        tasks = self._parse_tasks(raws, digests)
        if len({task.task_id for task, _ in tasks}) != len(tasks):
            raise ProtocolError("task ids must be unique within one BidRequest")
        newcomer = not self._book.has_history(signer)
        prefix = "" if source.local else source.prefix
        self._book.check_room(now_ms, len(tasks), prefix, newcomer)
        return OpenRequest(header, request, tasks, prefix, newcomer)

    def previews_are_slow(self, opened: OpenRequest) -> bool:
        """True when deciding runs a model slow enough to belong off the event loop."""
        slowest = max((model.latency.value for model in self.models.values()), default=0.0)
        return opened.has_preview and slowest > INLINE_FORWARD_MS

    def decide(self, opened: OpenRequest, load: Load) -> list[Decision]:
        """Each task's best offer among the hosted models, or why none (may run models on previews).

        When several tasks carry previews, each model whose strategy reads them runs them all in
        one forward pass first (:meth:`HostedModel.prime_previews`): a batched call for bids of
        64 tasks then costs one model call per model, not 64."""
        primed = self._prime(opened, load)
        try:
            screened: Screened = {}  # tasks of one shape are screened once
            return [decide(task, self._candidates, load, screened) for task, _ in opened.tasks]
        finally:
            for model, keys in primed:
                model.forget_previews(keys)

    def _prime(self, opened: OpenRequest, load: Load) -> list[tuple[HostedModel, list[int]]]:
        if load.draining or load.saturated:
            return []  # every task is declined before any model runs
        tasks = [task for task, _ in opened.tasks if task.preview and not task.text_count]
        if len(tasks) < 2:
            return []
        primed = []
        for model, strategy in self._candidates:
            if not (model.kind.has_confidence and getattr(strategy, "reads_previews", True)):
                continue
            previews = [
                task.preview
                for task in tasks
                if task.capability in model.capabilities
                and (not task.model_id or task.model_id == model.model_id)
            ]
            if len(previews) >= 2:
                primed.append((model, model.prime_previews(previews)))
        return primed

    def answer(self, opened: OpenRequest, decisions: Sequence[Decision], now_ms: int) -> RequestBidsReply:
        """Sign a bid for every task that got an offer and remember it; a NoBid for the others.

        A requester that accepts batch signatures gets all the bids under one signature over
        their Merkle root (docs/protocol.md section 3.1); any other gets one signature per bid."""
        outcomes: list[Envelope | WireNoBid | None] = []
        offers: list[tuple[int, Task, Bid]] = []
        seq = self._record_seq()  # one record for the whole answer
        for (task, task_digest), decision in zip(opened.tasks, decisions, strict=True):
            if isinstance(decision, NoBid):
                metrics.no_bid(decision.reason)
                outcomes.append(WireNoBid(task.task_id, decision.reason, decision.detail))
            else:
                bid = self._offer(opened, task, task_digest, decision, now_ms, seq)
                offers.append((len(outcomes), task, bid))
                outcomes.append(None)  # the signed bid, once all are signed
        bids = [bid for _, _, bid in offers]
        if opened.request.batch_signatures:
            envelopes = codec.sign_batch(self.identity, bids)
        else:
            envelopes = [codec.sign(self.identity, bid) for bid in bids]
        costs: dict[str, list[float]] = {}
        issued = []
        for (position, task, bid), envelope in zip(offers, envelopes, strict=True):
            outcomes[position] = envelope
            costs.setdefault(bid.model_id, []).append(bid.cost_estimate)
            issued.append(self._issued(opened, task, bid, envelope.digest))
        self._book.record_all(issued, now_ms)
        for model_id, quoted in costs.items():
            metrics.bids_issued(model_id, quoted)
        return RequestBidsReply(tuple([outcome for outcome in outcomes if outcome is not None]))

    def _parse_tasks(self, raws: Sequence[bytes], digests: Sequence[bytes]) -> tuple[tuple[Task, bytes], ...]:
        """Each TaskSpec checked, its preview decoded (all the call's previews at once:
        :func:`~atomic_p2p.tensors.decode_many`), as a Task with its digest."""
        specs = [codec.decode(TaskSpec, raw) for raw in raws]
        for spec in specs:
            self._check_task(spec)
        # A preview shows a single-input task; strategies judge a task of several inputs without it.
        previewed = [spec.preview if len(spec.inputs) == 1 else () for spec in specs]
        decoded = iter(decode_many([wire for wires in previewed for wire in wires], self.limits, finite=True))
        # Task's fields in order, not by name (0.5 us less a task): task_id, capability, inputs,
        # model_id, preview, max_cost, input_tokens, language, text_count, texts.
        return tuple(
            [
                (
                    Task(
                        spec.task_id,
                        spec.capability,
                        spec.inputs,
                        spec.model_id,
                        tuple([next(decoded) for _ in wires]) if wires else (),
                        spec.max_cost,
                        spec.input_tokens,
                        spec.language,
                        spec.text_count,
                        self._preview_texts(spec),
                    ),
                    digest,
                )
                for spec, wires, digest in zip(specs, previewed, digests, strict=True)
            ]
        )

    def _check_task(self, spec: TaskSpec) -> None:
        if not spec.task_id:
            raise ProtocolError("every TaskSpec needs a task_id")
        if (
            max(len(spec.task_id), len(spec.capability), len(spec.model_id), len(spec.language))
            > MAX_FIELD_CHARS
        ):
            for name in ("task_id", "capability", "model_id", "language"):
                chars = len(getattr(spec, name))
                if chars > MAX_FIELD_CHARS:
                    raise ProtocolError(f"a TaskSpec {name} of {chars} chars; the limit is {MAX_FIELD_CHARS}")
        if not math.isfinite(spec.max_cost) or spec.max_cost < 0:
            raise ProtocolError(f"max_cost must be a finite number >= 0 (0: no cap), got {spec.max_cost}")
        for input_spec in spec.inputs:
            check_spec(input_spec.dtype, input_spec.shape, self.limits)  # refused now, not at Execute

    def _preview_texts(self, spec: TaskSpec) -> tuple[str, ...]:
        """A text task's previewed texts, after its announced size passes the text limits."""
        if spec.text is None:
            if spec.text_preview:
                raise ProtocolError("a TaskSpec with text_preview needs its text spec (count, total_bytes)")
            return ()
        limits = self.text_limits
        if spec.text.count > limits.max_texts or spec.text.total_bytes > limits.max_total_bytes:
            raise LimitExceededError(
                f"task {spec.task_id[:64]!r}: {spec.text.count} texts of {spec.text.total_bytes} bytes exceed "
                f"the limits of {limits.max_texts} texts and {limits.max_total_bytes} bytes"
            )
        if spec.text_preview and TextSpec.of(spec.text_preview) != spec.text:
            raise ProtocolError("text_preview does not match the task's text spec (count, total_bytes)")
        return decode_texts(spec.text_preview, limits)

    def _offer(
        self,
        opened: OpenRequest,
        task: Task,
        task_digest: bytes,
        decision: tuple[HostedModel, BidTerms],
        now_ms: int,
        record_seq: int,
    ) -> Bid:
        """The unsigned bid for one task, under gossip record ``record_seq``."""
        model, terms = decision
        header = opened.header
        bid_values = self._gradient_bid(header, task, model, now_ms) if opened.request.gradient_mode else []
        bid = Bid(
            request_id=header.request_id,
            task_id=task.task_id,
            task_digest=task_digest,
            peer_id=self.identity.peer_id.raw,
            model_id=model.model_id,
            confidence_score=terms.confidence,
            expected_latency_ms=terms.expected_latency_ms,
            resource_requirements=model.config.resources,
            cost_estimate=terms.cost,
            capabilities=tuple(model.capabilities),
            constraints=model.config.constraints,
            issued_at_ms=now_ms,
            valid_until_ms=now_ms + self._validity_ms,
            strategy=terms.strategy,
            bid_values=tuple(bid_values),
            reusable_ttl_ms=self._reuse_ms,
            record_seq=record_seq,
            confidence_unknown=terms.confidence_unknown,
        )
        return bid

    @staticmethod
    def _issued(opened: OpenRequest, task: Task, bid: Bid, digest: bytes) -> IssuedBid:
        """What the bid book remembers of a signed bid (``digest``: sha256 of its payload)."""
        # IssuedBid's fields in order, not by name (one per bid: 0.4 us less): request_id,
        # task_id, digest, requester, model_id, valid_until_ms, cost, inputs, confidence,
        # text_count, source, newcomer.
        return IssuedBid(
            bid.request_id,
            bid.task_id,
            digest,
            opened.header.signer,
            bid.model_id,
            bid.valid_until_ms,
            bid.cost_estimate,
            task.inputs,
            bid.confidence_score,
            task.text_count,
            opened.source,
            opened.newcomer,
        )

    def _gradient_bid(
        self, header: BidRequestHeader, task: Task, model: HostedModel, now_ms: int
    ) -> list[float]:
        """The bid values of a gradient-mode bid (none if the model does not bid by gradient),
        remembering the inputs they were computed on until the bid is forgotten."""
        learner = self.learners.get(model.model_id)
        if learner is None or not task.inputs:
            return []  # no learner, or a text task (gradient bids take tensors for now)
        batch = task.inputs[0].shape[0]
        if not learner.needs_preview:
            inputs = torch.zeros(batch, 1)  # a scalar bid reads the batch length only
        elif task.preview and task.preview[0].shape[0] == batch:
            inputs = task.preview[0]
        else:
            return []  # it cannot bid per example on inputs it has not seen
        if not self.gradients.remember(header.request_id, task.task_id, inputs, now_ms):
            return []  # over the memory for gradient-mode inputs: a plain bid, nothing to learn
        return learner.bid(inputs)

    # --- Execute ------------------------------------------------------------------------------

    def open_order(self, call: ExecuteCall, now_ms: int) -> Job:
        job = self._open(call, now_ms)
        if job.order.max_tokens or job.order.prefix_tokens or job.order.prefix_text:
            raise ProtocolError("a generation order (max_tokens, prefix) goes to ExecuteStream")
        return job

    def open_upload(self, call: ExecuteCall, now_ms: int) -> tuple[TensorSpec, ...]:
        """Before an ExecuteUpload takes any input: the order's checks that need no inputs
        (signatures, the bid in the book, the order's signer, the deadline), and the inputs the bid
        was for, the only tensors the upload may carry (each its announced dtype and shape, so
        nothing is allocated beyond what this peer bid for). The whole call is checked again with
        its inputs (:meth:`open_stream`)."""
        if call.inputs:
            raise ProtocolError("an ExecuteUpload call carries no inputs: they follow it as slices")
        order, issued = self._authorize(call, now_ms)
        if order.deadline_ms and order.deadline_ms <= now_ms:
            raise DeadlineError("the order's deadline has passed")
        return issued.inputs

    def _authorize(self, call: ExecuteCall, now_ms: int) -> tuple[ExecuteOrder, IssuedBid]:
        """The order and the bid it names: both signed, the bid ours and in the book, the order
        signed by the requester the bid was made for."""
        _, bid = codec.open_signed(call.bid, Bid, expected_signer=self.identity.peer_id)
        order_signer, order = codec.open_signed(call.order, ExecuteOrder)
        bid_digest = call.bid.digest
        if order.bid_digest != bid_digest:
            raise ProtocolError("the order's bid_digest is not sha256 of the attached bid's payload")
        if order.request_id != bid.request_id or order.task_id != bid.task_id:
            self._check_reuse(bid, order, now_ms)
        issued = self._book.lookup(bid.request_id, bid.task_id, bid_digest, now_ms)
        if order_signer != issued.requester:
            raise SignatureError("the order is not signed by the requester this bid was made for")
        self._check_issued_at(order, bid, now_ms)
        return order, issued

    def _open(self, call: ExecuteCall, now_ms: int) -> Job:
        """The checks every order passes, whichever RPC carries it."""
        order, issued = self._authorize(call, now_ms)
        model, inputs, texts, input_tokens = self._check_inputs(call, order, issued)
        if not order.deadline_ms:
            raise ProtocolError("deadline_ms is required (Unix ms after which the result is of no use)")
        if order.deadline_ms <= now_ms:
            raise DeadlineError("the order's deadline has passed")
        return Job(
            key=(order.request_id, order.task_id),  # the bid's own ids, unless it is being reused
            fingerprint=issued.digest + order.inputs_digest,
            timeout_s=(order.deadline_ms - now_ms) / 1000,
            model=model,
            inputs=inputs,
            issued=issued,
            order=order,
            texts=texts,
            input_tokens=input_tokens,
        )

    def _check_issued_at(self, order: ExecuteOrder, bid: Bid, now_ms: int) -> None:
        """An order is signed after its bid and within the replay window of this node's clock
        (either side, as a BidRequest's issued_at): a captured order cannot be replayed later,
        once its result is forgotten."""
        skew = order.issued_at_ms - now_ms
        if abs(skew) > self._window_ms:
            raise StaleRequestError(
                f"the order's issued_at is {skew / 1000:+.1f} s from this node's clock; the window is "
                f"±{self._window_ms / 1000:g} s (check the requester's clock)"
            )
        if order.issued_at_ms + self._window_ms < bid.issued_at_ms:
            raise StaleRequestError("the order was issued before the bid it names")

    def _check_reuse(self, bid: Bid, order: ExecuteOrder, now_ms: int) -> None:
        """An order under new ids for a bid signed earlier: only for a reusable bid, within its
        reuse period, while this node's record is the one it bid under, and with a deadline (a
        replayed order then finds the result kept for retries, or a bid too old to reuse)."""
        if not bid.reusable_ttl_ms:
            raise ProtocolError("the order's request_id and task_id differ from the attached bid's")
        if now_ms > bid.issued_at_ms + bid.reusable_ttl_ms:
            raise BidExpiredError("the bid's reuse period is over; ask for bids again")
        if bid.record_seq != self._record_seq():
            raise PreconditionError("this node's record changed since the bid; ask for bids again")
        if not order.deadline_ms:
            raise ProtocolError("an order that reuses a bid needs a deadline")

    def _check_inputs(
        self, call: ExecuteCall, order: ExecuteOrder, issued: IssuedBid
    ) -> tuple[HostedModel, dict[str, torch.Tensor], tuple[str, ...], int]:
        """The model, its checked inputs, the texts, and the texts' tokens by its tokenizer."""
        decoded = [decode(wire, self.limits, finite=True) for wire in call.inputs]
        texts = decode_texts(call.texts, self.text_limits)
        if digest(call.inputs, call.texts) != order.inputs_digest:
            raise ProtocolError("the inputs' digest differs from the order's inputs_digest")
        model = self.models[issued.model_id]
        named = [(wire.name, tensor) for wire, tensor in zip(call.inputs, decoded, strict=True)]
        tokenized, input_tokens = self._tokenized(model, texts, issued)
        inputs = model.check_inputs(named + tokenized)
        announced = {spec.name: spec.shape for spec in issued.inputs}
        for name, tensor in named:
            if tuple(tensor.shape) != announced.get(name):
                raise ProtocolError(
                    f"input {shown(name)} has shape {list(tensor.shape)}, but the bid was for "
                    f"{list(announced.get(name, ()))}"
                )
        return model, inputs, tuple(texts), input_tokens

    @staticmethod
    def _tokenized(
        model: HostedModel, texts: Sequence[str], issued: IssuedBid
    ) -> tuple[list[tuple[str, torch.Tensor]], int]:
        """The model's inputs for the order's texts: as many as the bid was for, each within the
        model's token limit by its own tokenizer (refused before any work); and their tokens, all
        texts together (what the signed result reports as ``input_tokens``)."""
        if len(texts) != issued.text_count:
            raise ProtocolError(
                f"the order carries {len(texts)} texts, but the bid was for {issued.text_count}"
            )
        if not texts:
            return [], 0
        counts = model.token_counts(texts)
        if counts is None:
            raise ProtocolError(f"model {model.model_id} takes no text")
        tokens = max(counts)
        if model.max_input_tokens and tokens > model.max_input_tokens:
            raise ProtocolError(
                f"a text of {tokens} tokens (by {model.model_id}'s tokenizer) exceeds max_input_tokens "
                f"{model.max_input_tokens}"
            )
        return model.tokenize(texts), sum(counts)

    def perform(self, job: Job) -> ExecuteReply:
        """The paid work (blocking; a worker thread runs it): forward pass, encode, sign the receipt."""
        outputs, compute_ms = self.forward(job)
        return ExecuteReply(self.sign_outputs(job, outputs, compute_ms), outputs)

    def forward(self, job: Job, *, copy: bool = True) -> tuple[tuple[WireTensor, ...], float]:
        """The forward pass and the encoded outputs (blocking), with the milliseconds it took
        (``copy=False``: outputs viewing the tensors' memory, see :func:`encode`)."""
        started = time.perf_counter()
        outputs = tuple(encode(tensor, name, copy=copy) for name, tensor in job.model.forward(job.inputs))
        return outputs, (time.perf_counter() - started) * 1000

    def sign_outputs(self, job: Job, outputs: Sequence[WireTensor], compute_ms: float) -> Envelope:
        """The signed result for :meth:`forward`'s outputs (blocking: it hashes them all; an
        ExecuteStream runs it while the slices go out, the result travelling last)."""
        started = time.perf_counter()
        outputs_digest = digest(outputs)
        return self._signed_result(job, outputs_digest, compute_ms + (time.perf_counter() - started) * 1000)

    # --- ExecuteStream (docs/protocol.md section 10) -------------------------------------------

    def open_stream(self, call: ExecuteCall, now_ms: int) -> Job:
        """Every check of :meth:`open_order` but the last, then the stream's own: generation fields only for a
        generation model, and a generation order the model can honour (budget, context, vocabulary)."""
        job = self._open(call, now_ms)
        generation, order = job.model.generation, job.order
        if generation is None:
            if order.max_tokens or order.prefix_tokens or order.prefix_text:
                raise ProtocolError("max_tokens and prefixes are for generation models only")
            return job
        if job.texts or order.prefix_text:  # a text prompt, continued by text
            job = replace(job, inputs=text_inputs(job.model, job.texts, order, self.text_limits))
        check_order(generation, job.prompt, order.prefix_tokens, order.max_tokens)
        return job

    def sign_tokens(
        self, job: Job, tokens: Sequence[int], compute_ms: float, text: str | None = None
    ) -> Envelope:
        """The signed result of a generation: its digest covers exactly the tokens produced, or for
        a text prompt the text produced (UTF-8, one text under the texts digest)."""
        return self._signed_result(job, generated_digest(tokens, text), compute_ms)

    def _signed_result(self, job: Job, outputs_digest: bytes, latency_ms: float) -> Envelope:
        """The receipt for ``job``'s outputs, whichever way they travelled: signed, bound to its bid.
        The requester has history here from now on (the bid book's fair shares prefer it)."""
        metrics.executed(job.model.model_id, latency_ms)
        self._book.vouch(job.issued.requester)
        result = ExecuteResult(
            request_id=job.order.request_id,
            task_id=job.order.task_id,
            peer_id=self.identity.peer_id.raw,
            model_id=job.model.model_id,
            bid_digest=job.issued.digest,
            outputs_digest=outputs_digest,
            latency_ms=latency_ms,
            finished_at_ms=self._clock(),
            cost_charged=job.issued.cost,
            input_tokens=job.input_tokens,
        )
        return codec.sign(self.identity, result)

    # --- Feedback -----------------------------------------------------------------------------

    def feedback(self, call: FeedbackCall, now_ms: int) -> FeedbackReply:
        signer, notice = codec.open_signed(call.notice, FeedbackNotice)
        if notice.requester_id != signer.raw:
            raise SignatureError("requester_id is not sha256 of the key that signed the notice")
        kind = notice.kind
        if kind is None:
            raise ProtocolError("a FeedbackNotice needs kind WIN, LOSS or OUTCOME")
        if kind is FeedbackKind.OUTCOME and not 0.0 <= notice.outcome_score <= 1.0:
            raise ProtocolError(f"outcome_score must be in [0, 1], got {notice.outcome_score}")
        issued = self._book.find(notice.request_id, notice.task_id, now_ms)
        if issued is None:
            # Feedback is advisory: one we cannot attribute to a bid of ours is declined, not an error.
            return FeedbackReply(accepted=False)
        if signer != issued.requester:
            raise SignatureError("the notice is not signed by the requester this bid was made for")
        self._book.note_feedback(issued, kind, now_ms)
        metrics.auction_result(issued.model_id, kind)
        strategy = self.models[issued.model_id].strategy
        strategy.learn(
            Notice(
                kind=kind,
                model_id=issued.model_id,
                request_id=issued.request_id,
                task_id=issued.task_id,
                clearing_price=notice.clearing_price,
                score_to_win=notice.score_to_win,
                outcome_score=notice.outcome_score,
                bid_cost=issued.cost,
                bid_confidence=issued.confidence,
                at_ms=now_ms,
            )
        )
        if self._learned is not None:
            self._learned(issued.model_id, strategy)
        return FeedbackReply(accepted=True, strategy_parameters=numeric_parameters(strategy.snapshot()))

    # --- BidGradient --------------------------------------------------------------------------

    def gradient(self, call: BidGradientCall, now_ms: int) -> BidGradientReply:
        signer, update = codec.open_signed(call.update, BidGradientUpdate)
        if update.requester_id != signer.raw:
            raise SignatureError("requester_id is not sha256 of the key that signed the update")
        issued = self._book.find(update.request_id, update.task_id, now_ms)
        learner = None if issued is None else self.learners.get(issued.model_id)
        if issued is None or learner is None:
            raise PreconditionError("this peer never served a gradient-mode bid for that request and task")
        if signer != issued.requester:
            raise SignatureError("the update is not signed by the requester this bid was made for")
        inputs = self.gradients.inputs(update.request_id, update.task_id, now_ms)
        # Applied in one call, with nothing in between the replay check and marking the bid
        # applied: two copies of one update cannot both pass. The step is one small forward and
        # backward pass.
        output_grad = (
            None if update.output_grad is None else decode(update.output_grad, self.limits, finite=True)
        )
        applied_norm = learner.apply(
            inputs,
            GradientUpdate(
                loss_grad=torch.tensor(list(update.loss_grad), dtype=torch.float32),
                share_grad=torch.tensor(list(update.share_grad), dtype=torch.float32),
                output_grad=output_grad,
                price=update.price,
            ),
        )
        self.gradients.applied(update.request_id, update.task_id, now_ms)
        return BidGradientReply(applied=True, applied_norm=applied_norm)


def numeric_parameters(snapshot: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers at the top level of a strategy snapshot (what Feedback answers carry)."""
    return {
        key: float(value)
        for key, value in snapshot.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
