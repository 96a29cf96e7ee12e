"""The gRPC face of a peer: service ``atomic.v1.Peer``, plus health and reflection.

How this works
--------------
Handlers are registered with raw-bytes request deserializers, so a malformed request is our
INVALID_ARGUMENT rather than gRPC's generic UNKNOWN. Each handler parses, verifies envelopes
(always the bytes as received, then parses them), hands plain values to the pure parts (replay
guard, bid book, strategies) and the executor, and serializes the answer. Any
:class:`~atomic_p2p.errors.AtomicError` raised below is turned into a status in :func:`_rpc`,
the one place that aborts; anything else is logged and answered INTERNAL, and the node serves on.

RequestBids: verify -> admit (skew window, node start, fresh request id, deadline, task count)
-> parse each TaskSpec (its digest is sha256 of the bytes as received) -> strategies decide ->
sign each Bid and remember it in the bid book.

Execute: verify the bid (signed by this node) and the order (signed by the requester that asked
for the bid) -> the order names that bid's digest and ids -> the bid is live -> decode the inputs
under limits -> their digest matches the order -> dtype and shape fit the model and the bid ->
deadline -> executor (at most once per (request id, task id)) -> a signed ExecuteResult.

BidGradient (:mod:`atomic_p2p.peer.gradients`): verify the update -> requester_id is its signer
-> a gradient-mode bid this node issued for (request id, task id), to that signer -> not already
applied -> the learner checks shape, finiteness and norm, then steps and checkpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NoReturn

import grpc
import torch
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from atomic_p2p._proto.atomic.v1 import gossip_pb2, market_pb2
from atomic_p2p._wire import (
    envelope_from_proto,
    envelope_to_proto,
    parse,
    payload_type,
    spec_from_proto,
    tensor_from_proto,
    tensors_from_proto,
    tensors_to_proto,
)
from atomic_p2p.errors import (
    AtomicError,
    BidExpiredError,
    DeadlineError,
    LimitExceededError,
    PreconditionError,
    ProtocolError,
    SignatureError,
    UnavailableError,
    UnimplementedError,
)
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.identity import Envelope, Identity, verify
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.executor import Executor
from atomic_p2p.peer.gradients import GradientBook, GradientUpdate, load_learners
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.replay import BidBook, BidRequestHeader, IssuedBid, RequestGuard
from atomic_p2p.peer.strategies import BidTerms, FeedbackKind, InputSpec, NoBid, Notice, Task, decide
from atomic_p2p.peer.strategies.journal import StrategyJournal
from atomic_p2p.tensors import DEFAULT_LIMITS, TensorLimits, check_spec, decode, digest, encode

log = logging.getLogger(__name__)

SERVICE_NAME = "atomic.v1.Peer"
BID_REQUEST_TYPE = payload_type(market_pb2.BidRequest)
BID_TYPE = payload_type(market_pb2.Bid)
ORDER_TYPE = payload_type(market_pb2.ExecuteOrder)
RESULT_TYPE = payload_type(market_pb2.ExecuteResult)
FEEDBACK_TYPE = payload_type(market_pb2.FeedbackNotice)
GRADIENT_TYPE = payload_type(market_pb2.BidGradientUpdate)
# Below this measured forward time, a preview runs inline: a hop to a worker thread and back
# (~0.2 ms on this 2-core box) would cost more than the forward pass it moves off the loop.
INLINE_FORWARD_MS = 0.5

_FEEDBACK_KINDS = {
    market_pb2.FEEDBACK_KIND_WIN: FeedbackKind.WIN,
    market_pb2.FEEDBACK_KIND_LOSS: FeedbackKind.LOSS,
    market_pb2.FEEDBACK_KIND_OUTCOME: FeedbackKind.OUTCOME,
}


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class PeerService:
    """The handlers of ``atomic.v1.Peer``; one per node. Set :attr:`draining` to refuse new work."""

    def __init__(
        self,
        *,
        identity: Identity,
        models: Mapping[str, HostedModel],
        config: PeerConfig,
        executor: Executor[bytes],
        started_at_ms: int,
        limits: TensorLimits = DEFAULT_LIMITS,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.identity = identity
        self.models = models
        self.executor = executor
        self.limits = limits
        self.draining = False
        self._now_ms = clock
        self._validity_ms = round(config.bid_validity_s * 1000)
        # A reusable bid is still checked against the bid book, so reuse never outlives validity.
        self._reuse_ms = min(round(config.bid_reuse_ttl_s * 1000), self._validity_ms)
        window_ms = round(config.replay_window_s * 1000)
        self._guard = RequestGuard(
            started_at_ms, window_ms, config.max_tasks_per_request, config.max_remembered
        )
        self._book = BidBook(self._validity_ms, window_ms, config.max_remembered)
        self._candidates = [(model, model.strategy) for model in models.values()]
        self._learners = load_learners(models, config.data_dir)
        self._gradients = GradientBook(self._validity_ms + window_ms, config.max_remembered)
        self.gossip_agent: GossipAgent | None = None  # set by the node once gossip runs
        self.journal: StrategyJournal | None = None  # strategy history under data_dir, set by the node

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Gossip": self.gossip,
            "RequestBids": self.request_bids,
            "Execute": self.execute,
            "Feedback": self.feedback,
            "BidGradient": self.bid_gradient,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                name: grpc.unary_unary_rpc_method_handler(_rpc(name, method))
                for name, method in methods.items()
            },
        )

    # --- RequestBids --------------------------------------------------------------------------

    async def request_bids(self, raw: bytes) -> bytes:
        self._refuse_new_work()
        message = parse(market_pb2.RequestBidsRequest, raw, "RequestBidsRequest")
        envelope = envelope_from_proto(message.request)
        signer = verify(envelope, BID_REQUEST_TYPE)
        request = parse(market_pb2.BidRequest, envelope.payload, "BidRequest")
        now = self._now_ms()
        header = BidRequestHeader(
            request.request_id,
            request.requester_id,
            signer,
            request.issued_at_ms,
            request.deadline_ms,
            len(request.tasks),
        )
        self._guard.admit(header, now)
        tasks = [self._parse_task(task_bytes) for task_bytes in request.tasks]
        if len({task.task_id for task, _ in tasks}) != len(tasks):
            raise ProtocolError("task ids must be unique within one BidRequest")
        if not self._book.has_room(now, len(tasks)):
            raise LimitExceededError("too many live bids remembered; retry later")
        load = self.executor.load(self.draining)
        plain = [task for task, _ in tasks]
        if any(task.preview for task in plain) and self._slowest_forward_ms() > INLINE_FORWARD_MS:
            # Scoring previews runs the models: keep slow ones off the event loop.
            decisions = await asyncio.to_thread(lambda: [decide(t, self._candidates, load) for t in plain])
        else:
            decisions = [decide(task, self._candidates, load) for task in plain]
        now = self._now_ms()
        outcomes = [
            self._outcome(header, task, task_digest, decision, now, request.gradient_mode)
            for (task, task_digest), decision in zip(tasks, decisions, strict=True)
        ]
        return market_pb2.RequestBidsResponse(outcomes=outcomes).SerializeToString()

    def _slowest_forward_ms(self) -> float:
        return max((model.latency.value for model in self.models.values()), default=0.0)

    def _parse_task(self, raw: bytes) -> tuple[Task, bytes]:
        spec = parse(market_pb2.TaskSpec, raw, "TaskSpec")
        if not spec.task_id:
            raise ProtocolError("every TaskSpec needs a task_id")
        if not math.isfinite(spec.max_cost) or spec.max_cost < 0:
            raise ProtocolError(f"max_cost must be a finite number >= 0 (0: no cap), got {spec.max_cost}")
        inputs = []
        for input_spec in spec.inputs:
            name, dtype, shape = spec_from_proto(input_spec)
            check_spec(dtype, shape, self.limits)  # a task whose inputs we would refuse is refused now
            inputs.append(InputSpec(name, dtype, shape))
        preview = tuple(decode(tensor_from_proto(t), self.limits) for t in spec.preview)
        task = Task(
            task_id=spec.task_id,
            capability=spec.capability,
            inputs=tuple(inputs),
            model_id=spec.model_id,
            preview=preview,
            max_cost=spec.max_cost,
            input_tokens=spec.input_tokens,
            language=spec.language,
        )
        return task, hashlib.sha256(raw).digest()

    def _outcome(
        self,
        header: BidRequestHeader,
        task: Task,
        task_digest: bytes,
        decision: tuple[HostedModel, BidTerms] | NoBid,
        now: int,
        gradient_mode: bool = False,
    ) -> market_pb2.BidOutcome:
        if isinstance(decision, NoBid):
            reason = market_pb2.NoBidReason.Value(f"NO_BID_REASON_{decision.reason.name}")
            no_bid = market_pb2.NoBid(task_id=task.task_id, reason=reason, detail=decision.detail)
            return market_pb2.BidOutcome(no_bid=no_bid)
        model, terms = decision
        bid_values = self._gradient_bid(header, task, model, now) if gradient_mode else []
        envelope = self._sign_bid(header, task, task_digest, model, terms, now, bid_values)
        issued = IssuedBid(
            request_id=header.request_id,
            task_id=task.task_id,
            digest=envelope.digest,
            requester=header.signer,
            model_id=model.model_id,
            valid_until_ms=now + self._validity_ms,
            cost=terms.cost,
            input=task.inputs[0],
            confidence=terms.confidence,
        )
        self._book.record(issued, now)
        return market_pb2.BidOutcome(bid=envelope_to_proto(envelope))

    def _sign_bid(
        self,
        header: BidRequestHeader,
        task: Task,
        task_digest: bytes,
        model: HostedModel,
        terms: BidTerms,
        now: int,
        bid_values: Sequence[float] = (),
    ) -> Envelope:
        resources, constraints = model.config.resources, model.config.constraints
        bid = market_pb2.Bid(
            request_id=header.request_id,
            task_id=task.task_id,
            task_digest=task_digest,
            peer_id=self.identity.peer_id.raw,
            model_id=model.model_id,
            confidence_score=terms.confidence,
            expected_latency_ms=terms.expected_latency_ms,
            resource_requirements=gossip_pb2.ResourceRequirements(
                cpu_cores=resources.cpu_cores,
                memory_mb=resources.memory_mb,
                gpu_memory_mb=resources.gpu_memory_mb,
            ),
            cost_estimate=terms.cost,
            capabilities=list(model.capabilities),
            constraints=gossip_pb2.ModelConstraints(
                max_input_tokens=constraints.max_input_tokens,
                supported_languages=list(constraints.supported_languages),
                max_batch=constraints.max_batch,
            ),
            issued_at_ms=now,
            valid_until_ms=now + self._validity_ms,
            strategy=terms.strategy,
            reusable_ttl_ms=self._reuse_ms,
            record_seq=self._record_seq(),
            bid_values=bid_values,
        )
        return self.identity.sign(BID_TYPE, bid.SerializeToString())

    def _gradient_bid(
        self, header: BidRequestHeader, task: Task, model: HostedModel, now: int
    ) -> list[float]:
        """The bid values of a gradient-mode bid (none if the model does not bid by gradient),
        remembering the inputs they were computed on until the bid is forgotten."""
        learner = self._learners.get(model.model_id)
        batch = task.inputs[0].shape[0]
        if learner is None:
            return []
        if not learner.needs_preview:
            inputs = torch.zeros(batch, 1)  # a scalar bid reads the batch length only
        elif task.preview and task.preview[0].shape[0] == batch:
            inputs = task.preview[0]
        else:
            return []  # it cannot bid per example on inputs it has not seen
        if not self._gradients.remember(header.request_id, task.task_id, inputs, now):
            return []  # over the memory for gradient-mode inputs: a plain bid, nothing to learn
        return learner.bid(inputs)

    def _record_seq(self) -> int:
        agent = self.gossip_agent
        return agent.membership.local_record.seq if agent is not None else 0

    def _check_reuse(self, bid: market_pb2.Bid, order: market_pb2.ExecuteOrder, now: int) -> None:
        """An order under new ids for a bid signed earlier: only for a reusable bid, within its
        reuse period, while this node's record is the one it bid under, and with a deadline (a
        replayed order then finds the result kept for retries, or a bid too old to reuse)."""
        if not bid.reusable_ttl_ms:
            raise ProtocolError("the order's request_id and task_id differ from the attached bid's")
        if now > bid.issued_at_ms + bid.reusable_ttl_ms:
            raise BidExpiredError("the bid's reuse period is over; ask for bids again")
        if bid.record_seq != self._record_seq():
            raise PreconditionError("this node's record changed since the bid; ask for bids again")
        if not order.deadline_ms:
            raise ProtocolError("an order that reuses a bid needs a deadline")

    # --- Execute ------------------------------------------------------------------------------

    async def execute(self, raw: bytes) -> bytes:
        self._refuse_new_work()
        message = parse(market_pb2.ExecuteRequest, raw, "ExecuteRequest")
        bid_envelope = envelope_from_proto(message.bid)
        order_envelope = envelope_from_proto(message.order)
        verify(bid_envelope, BID_TYPE, expected_signer=self.identity.peer_id)
        order_signer = verify(order_envelope, ORDER_TYPE)
        order = parse(market_pb2.ExecuteOrder, order_envelope.payload, "ExecuteOrder")
        bid = parse(market_pb2.Bid, bid_envelope.payload, "Bid")
        if order.bid_digest != bid_envelope.digest:
            raise ProtocolError("the order's bid_digest is not sha256 of the attached bid's payload")
        now = self._now_ms()
        if order.request_id != bid.request_id or order.task_id != bid.task_id:
            self._check_reuse(bid, order, now)
        issued = self._book.lookup(bid.request_id, bid.task_id, bid_envelope.digest, now)
        if order_signer != issued.requester:
            raise SignatureError("the order is not signed by the requester this bid was made for")
        model, inputs = self._check_inputs(message, order, issued)
        if order.deadline_ms and order.deadline_ms <= now:
            raise DeadlineError("the order's deadline has passed")
        timeout = (order.deadline_ms - now) / 1000 if order.deadline_ms else None
        return await self.executor.run(
            (order.request_id, order.task_id),  # the bid's own ids, unless it is being reused
            issued.digest + order.inputs_digest,
            lambda: self._run(model, inputs, issued, order),
            timeout,
        )

    def _check_inputs(
        self, message: market_pb2.ExecuteRequest, order: market_pb2.ExecuteOrder, issued: IssuedBid
    ) -> tuple[HostedModel, torch.Tensor]:
        wires = tensors_from_proto(message.inputs)
        decoded = [decode(wire, self.limits) for wire in wires]
        if digest(wires) != order.inputs_digest:
            raise ProtocolError("the inputs' digest differs from the order's inputs_digest")
        model = self.models[issued.model_id]
        inputs = model.check_inputs(
            [(wire.name, tensor) for wire, tensor in zip(wires, decoded, strict=True)]
        )
        if tuple(inputs.shape) != issued.input.shape:
            raise ProtocolError(
                f"inputs have shape {list(inputs.shape)}, but the bid was for {list(issued.input.shape)}"
            )
        return model, inputs

    def _run(
        self, model: HostedModel, inputs: torch.Tensor, issued: IssuedBid, order: market_pb2.ExecuteOrder
    ) -> bytes:
        """The paid work, in a worker thread: forward pass, encode, sign the receipt."""
        started = time.perf_counter()
        outputs = encode(model.run(inputs), model.output_name)
        result = market_pb2.ExecuteResult(
            request_id=order.request_id,
            task_id=order.task_id,
            peer_id=self.identity.peer_id.raw,
            model_id=model.model_id,
            bid_digest=issued.digest,
            outputs_digest=digest([outputs]),
            latency_ms=(time.perf_counter() - started) * 1000,
            finished_at_ms=self._now_ms(),
            cost_charged=issued.cost,
        )
        envelope = self.identity.sign(RESULT_TYPE, result.SerializeToString())
        response = market_pb2.ExecuteResponse(
            result=envelope_to_proto(envelope), outputs=tensors_to_proto([outputs])
        )
        return response.SerializeToString()

    # --- Feedback -----------------------------------------------------------------------------

    async def feedback(self, raw: bytes) -> bytes:
        message = parse(market_pb2.FeedbackRequest, raw, "FeedbackRequest")
        envelope = envelope_from_proto(message.notice)
        signer = verify(envelope, FEEDBACK_TYPE)
        notice = parse(market_pb2.FeedbackNotice, envelope.payload, "FeedbackNotice")
        if notice.requester_id != signer.raw:
            raise SignatureError("requester_id is not sha256 of the key that signed the notice")
        kind = _FEEDBACK_KINDS.get(notice.kind)
        if kind is None:
            raise ProtocolError("a FeedbackNotice needs kind WIN, LOSS or OUTCOME")
        if kind is FeedbackKind.OUTCOME and not 0.0 <= notice.outcome_score <= 1.0:
            raise ProtocolError(f"outcome_score must be in [0, 1], got {notice.outcome_score}")
        now = self._now_ms()
        issued = self._book.find(notice.request_id, notice.task_id, now)
        if issued is None:
            # Feedback is advisory: one we cannot attribute to a bid of ours is declined, not an error.
            return market_pb2.FeedbackResponse(accepted=False).SerializeToString()
        if signer != issued.requester:
            raise SignatureError("the notice is not signed by the requester this bid was made for")
        self._book.note_feedback(issued, kind, now)
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
                at_ms=now,
            )
        )
        if self.journal is not None:
            self.journal.append(issued.model_id, strategy)
        return market_pb2.FeedbackResponse(
            accepted=True, strategy_parameters=numeric_parameters(strategy.snapshot())
        ).SerializeToString()

    # --- BidGradient --------------------------------------------------------------------------

    async def bid_gradient(self, raw: bytes) -> bytes:
        message = parse(market_pb2.BidGradientRequest, raw, "BidGradientRequest")
        envelope = envelope_from_proto(message.update)
        signer = verify(envelope, GRADIENT_TYPE)
        update = parse(market_pb2.BidGradientUpdate, envelope.payload, "BidGradientUpdate")
        if update.requester_id != signer.raw:
            raise SignatureError("requester_id is not sha256 of the key that signed the update")
        now = self._now_ms()
        issued = self._book.find(update.request_id, update.task_id, now)
        learner = None if issued is None else self._learners.get(issued.model_id)
        if issued is None or learner is None:
            raise PreconditionError("this peer never served a gradient-mode bid for that request and task")
        if signer != issued.requester:
            raise SignatureError("the update is not signed by the requester this bid was made for")
        inputs = self._gradients.inputs(update.request_id, update.task_id, now)
        # Applied inline, with no await between the replay check and marking the bid applied: two
        # copies of one update cannot both pass. The step is one small forward and backward pass.
        output_grad = None
        if update.HasField("output_grad"):
            output_grad = decode(tensor_from_proto(update.output_grad), self.limits)
        applied_norm = learner.apply(
            inputs,
            GradientUpdate(
                loss_grad=torch.tensor(list(update.loss_grad), dtype=torch.float32),
                share_grad=torch.tensor(list(update.share_grad), dtype=torch.float32),
                output_grad=output_grad,
                price=update.price,
            ),
        )
        self._gradients.applied(update.request_id, update.task_id, now)
        return market_pb2.BidGradientResponse(applied=True, applied_norm=applied_norm).SerializeToString()

    # --- not yet served -----------------------------------------------------------------------

    async def gossip(self, raw: bytes, connection: str = "") -> bytes:
        # Still served while draining: the leave, and others' view of us, travel through it.
        if self.gossip_agent is None:
            raise UnimplementedError("this node runs without gossip; reach it by address")
        return self.gossip_agent.handle(raw, connection)

    def _refuse_new_work(self) -> None:
        if self.draining:
            raise UnavailableError("this peer is draining and takes no new work; try another peer")


def numeric_parameters(snapshot: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers at the top level of a strategy snapshot (what Feedback answers carry)."""
    return {
        key: float(value)
        for key, value in snapshot.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _rpc(name: str, method: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[bytes]]:
    """Wrap a handler: the one place where errors become gRPC statuses."""
    wants_connection = name == "Gossip"  # rate limits key on who is calling

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            if wants_connection:
                return await method(raw, context.peer())
            return await method(raw)
        except AtomicError as err:
            log.debug("%s refused: %s %s", name, err.code.name, err)
            await _abort(context, err.code, str(err))
        except Exception:
            log.exception("%s failed unexpectedly; the node keeps serving", name)
            await _abort(context, grpc.StatusCode.INTERNAL, f"{name} failed inside the peer; see its log")

    return handle


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it raises; this keeps type checkers honest


def build_server(*, max_message_bytes: int) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with grpc.health.v1 and reflection; add :meth:`PeerService.handler` to it."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC sets SO_REUSEPORT by default, which lets a second node bind a busy port silently.
            ("grpc.so_reuseport", 0),
        ]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    return server, health_servicer
