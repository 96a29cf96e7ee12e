"""A real peer on 127.0.0.1 against hand-built, hand-signed requests: every refusal has its exact
status code, and the node keeps serving valid requests afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc import StatusCode as Code
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from atomic_p2p._proto.atomic.v1 import envelope_pb2, market_pb2, tensor_pb2
from atomic_p2p.identity import Identity, verify
from atomic_p2p.peer.config import load_config
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.peer.strategies.journal import JOURNAL_NAME, read_journal
from atomic_p2p.protocol.wire import envelope_from_proto, envelope_to_proto, tensors_from_proto
from atomic_p2p.tensors import decode, digest, encode
from atomic_p2p.testing import digits_batch
from peers.examples import example_config
from tests.support.handbuyer import HandBuyer, now_ms
from tests.support.waiting import draining, eventually, until_past

pytestmark = pytest.mark.integration


async def code_of(call: Awaitable[Any]) -> Code:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def buy_and_check(buyer: HandBuyer, node: PeerNode, batch: int = 4) -> market_pb2.ExecuteResponse:
    """The happy path, fully verified: what every refusal test ends with."""
    bid_envelope = await buyer.win(batch)
    inputs = [buyer.inputs(batch)]
    response = await buyer.execute(bid_envelope, inputs)
    signer = verify(
        envelope_from_proto(response.result), "atomic.v1.ExecuteResult", expected_signer=node.peer_id
    )
    assert signer == node.peer_id
    result = market_pb2.ExecuteResult.FromString(response.result.payload)
    bid = market_pb2.Bid.FromString(bid_envelope.payload)
    outputs = tensors_from_proto(response.outputs)
    assert result.outputs_digest == digest(outputs)
    assert result.bid_digest == hashlib.sha256(bid_envelope.payload).digest()
    assert (result.request_id, result.task_id, result.model_id) == (bid.request_id, bid.task_id, bid.model_id)
    assert result.cost_charged == pytest.approx(bid.cost_estimate)
    assert [(o.name, o.dtype, o.shape) for o in outputs] == [("logits", "float32", (batch, 10))]
    return response


async def refusal(call: Awaitable[Any]) -> tuple[Code, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def re_sign(envelope: envelope_pb2.SignedEnvelope, identity: Identity, payload: bytes | None = None) -> None:
    signed = identity.sign(envelope.payload_type, envelope.payload if payload is None else payload)
    envelope.public_key, envelope.payload, envelope.signature = (
        signed.public_key,
        signed.payload,
        signed.signature,
    )


# --- happy path ---------------------------------------------------------------------------------


async def test_bid_execute_and_verify_the_signed_result(node: PeerNode, buyer: HandBuyer) -> None:
    bid_envelope = await buyer.win(8)
    verify(envelope_from_proto(bid_envelope), "atomic.v1.Bid", expected_signer=node.peer_id)
    bid = market_pb2.Bid.FromString(bid_envelope.payload)
    assert bid.peer_id == node.peer_id.raw and bid.model_id == "digits-small"
    assert bid.task_digest == hashlib.sha256(buyer.task("t1", 8)).digest()
    assert 0.9 < bid.confidence_score <= 1.0 and bid.expected_latency_ms > 0
    assert bid.cost_estimate == pytest.approx(8 * 0.001)
    assert list(bid.capabilities) == ["classify/digits"] and bid.constraints.max_batch == 256
    assert bid.resource_requirements.cpu_cores == 0.25 and bid.strategy == "confidence"
    assert bid.valid_until_ms - bid.issued_at_ms == 10_000

    x, labels = digits_batch(32)
    inputs = [encode(x, "x")]
    bid_envelope = await buyer.win(32)
    response = await buyer.execute(bid_envelope, inputs)
    logits = decode(tensors_from_proto(response.outputs)[0])
    assert (logits.argmax(dim=-1) == labels).float().mean() > 0.8  # a trained model, really run
    await buy_and_check(buyer, node)


async def test_an_execute_retry_returns_the_identical_result(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(4)
    inputs = [buyer.inputs(4)]
    first, again = await asyncio.gather(buyer.execute(bid, inputs), buyer.execute(bid, inputs))
    later = await buyer.execute(bid, inputs)  # a new order (new issued_at) for the same bid and inputs
    assert first.SerializeToString() == again.SerializeToString() == later.SerializeToString()


async def test_preview_inputs_let_the_model_bid_its_own_confidence(node: PeerNode, buyer: HandBuyer) -> None:
    preview = buyer.inputs(4, offset=100)
    response = await buyer.request_bids([buyer.task("t1", 4, preview=[preview])])
    bid = market_pb2.Bid.FromString(response.outcomes[0].bid.payload)
    model = node.models["digits-small"]
    expected = model.preview_confidence([decode(preview)])
    assert bid.confidence_score == pytest.approx(expected, rel=1e-6)


async def test_health_serves_and_reflection_lists_the_services(node: PeerNode, buyer: HandBuyer) -> None:
    health = health_pb2_grpc.HealthStub(buyer.channel)
    for service in ("", "atomic.v1.Peer"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(buyer.channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for answer in stub.ServerReflectionInfo(ask(), timeout=10):
        names |= {service.name for service in answer.list_services_response.service}
    assert {"atomic.v1.Peer", "grpc.health.v1.Health"} <= names


async def test_bid_gradient_refuses_unsigned_and_garbage_updates(node: PeerNode, buyer: HandBuyer) -> None:
    # tests/integration/test_bid_gradient.py covers BidGradient itself; here: it is served.
    assert await code_of(buyer.raw("BidGradient")(b"", timeout=10)) is Code.UNAUTHENTICATED
    assert await code_of(buyer.raw("BidGradient")(b"\xff\xff", timeout=10)) is Code.INVALID_ARGUMENT
    await buy_and_check(buyer, node)


async def test_gossip_garbage_is_invalid_argument_and_node_keeps_serving(
    node: PeerNode, buyer: HandBuyer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await buyer.raw("Gossip")(b"\xff\x00garbage", timeout=10)
    assert info.value.code() is Code.INVALID_ARGUMENT
    await buy_and_check(buyer, node)


# --- RequestBids refusals -------------------------------------------------------------------------

BidRequestEdit = Callable[[HandBuyer], market_pb2.RequestBidsRequest | bytes]


def _garbage_payload(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    envelope = buyer.identity.sign("atomic.v1.BidRequest", b"\xff\xff\xff\xff")
    return market_pb2.RequestBidsRequest(request=envelope_to_proto(envelope))


def _forged(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task()])
    request.request.signature = bytes(64)
    return request


def _tampered(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task()])
    request.request.payload += b"\x30\x01"  # appends gradient_mode = true after signing
    return request


def _wrong_type(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task()])
    signed = buyer.identity.sign("atomic.v1.Bid", request.request.payload)
    request.request.payload_type, request.request.signature = signed.payload_type, signed.signature
    return request


def _oversized_preview(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    huge = tensor_pb2.Tensor(name="x", dtype=tensor_pb2.D_TYPE_FLOAT32, shape=[1 << 20, 64], data=b"")
    spec = market_pb2.TaskSpec.FromString(buyer.task())
    spec.preview.append(huge)
    return buyer.bid_request([spec.SerializeToString()])


def _short_preview(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    spec = market_pb2.TaskSpec.FromString(buyer.task())
    spec.preview.append(
        tensor_pb2.Tensor(name="x", dtype=tensor_pb2.D_TYPE_FLOAT32, shape=[1, 64], data=b"abc")
    )
    return buyer.bid_request([spec.SerializeToString()])


def _unknown_dtype(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    spec = market_pb2.TaskSpec.FromString(buyer.task())
    spec.inputs[0].dtype = 99  # type: ignore[assignment]  # an enum value this peer does not know
    return buyer.bid_request([spec.SerializeToString()])


def _detached_tampered(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task("a"), buyer.task("b")], detached=True)
    request.tasks[1] = buyer.task("b", max_cost=9.0)  # another task than the digest signed
    return request


def _detached_short(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task("a"), buyer.task("b")], detached=True)
    del request.tasks[1]
    return request


def _beside_unsigned(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task("a")])
    request.tasks.append(buyer.task("b"))  # a task no signature covers
    return request


def _tasks_and_digests(buyer: HandBuyer) -> market_pb2.RequestBidsRequest:
    request = buyer.bid_request([buyer.task("a")], detached=True)
    payload = market_pb2.BidRequest.FromString(request.request.payload)
    payload.tasks.append(buyer.task("a"))
    return market_pb2.RequestBidsRequest(request=buyer.sign(payload), tasks=request.tasks)


REQUEST_BIDS_REFUSALS: dict[str, tuple[BidRequestEdit, Code, str]] = {
    "detached task not the one signed": (_detached_tampered, Code.UNAUTHENTICATED, "task 1 does not match"),
    "detached task missing": (
        _detached_short,
        Code.INVALID_ARGUMENT,
        "1 TaskSpecs for 2 signed task digests",
    ),
    "task beside an inline request": (_beside_unsigned, Code.INVALID_ARGUMENT, "need their digests signed"),
    "tasks and task digests": (_tasks_and_digests, Code.INVALID_ARGUMENT, "not both"),
    "garbage bytes": (lambda b: b"\xff\xff\xff\xff", Code.INVALID_ARGUMENT, "malformed RequestBidsRequest"),
    "garbage payload": (_garbage_payload, Code.INVALID_ARGUMENT, "malformed BidRequest"),
    "garbage task": (lambda b: b.bid_request([b"\xff\xff\xff"]), Code.INVALID_ARGUMENT, "malformed TaskSpec"),
    "no envelope": (lambda b: market_pb2.RequestBidsRequest(), Code.UNAUTHENTICATED, "public key"),
    "forged signature": (_forged, Code.UNAUTHENTICATED, "does not verify"),
    "tampered payload": (_tampered, Code.UNAUTHENTICATED, "does not verify"),
    "wrong payload type": (_wrong_type, Code.UNAUTHENTICATED, "expected a signed atomic.v1.BidRequest"),
    "requester id of someone else": (
        lambda b: b.bid_request([b.task()], signer=Identity.generate()),
        Code.UNAUTHENTICATED,
        "requester_id",
    ),
    "short request id": (
        lambda b: b.bid_request([b.task()], request_id=b"1234"),
        Code.INVALID_ARGUMENT,
        "16 bytes",
    ),
    "issued long ago": (
        lambda b: b.bid_request([b.task()], issued_at_ms=now_ms() - 60_000),
        Code.FAILED_PRECONDITION,
        "window",
    ),
    "issued in the future": (
        lambda b: b.bid_request([b.task()], issued_at_ms=now_ms() + 60_000),
        Code.FAILED_PRECONDITION,
        "window",
    ),
    "issued before the node started": (
        lambda b: b.bid_request([b.task()], issued_at_ms=now_ms() - 25_000),
        Code.FAILED_PRECONDITION,
        "before this node started",
    ),
    "deadline passed": (
        lambda b: b.bid_request([b.task()], deadline_ms=now_ms() - 1),
        Code.DEADLINE_EXCEEDED,
        "deadline",
    ),
    "no deadline": (
        lambda b: b.bid_request([b.task()], deadline_ms=0),
        Code.INVALID_ARGUMENT,
        "deadline_ms is required",
    ),
    "too many tasks": (
        lambda b: b.bid_request([b.task(f"t{i}") for i in range(65)]),
        Code.RESOURCE_EXHAUSTED,
        "limit is 64",
    ),
    "too many detached tasks (refused before they are hashed)": (
        lambda b: b.bid_request([b.task(f"t{i}") for i in range(65)], detached=True),
        Code.RESOURCE_EXHAUSTED,
        "limit is 64",
    ),
    "negative max cost": (
        lambda b: b.bid_request([b.task(max_cost=-1.0)]),
        Code.INVALID_ARGUMENT,
        "max_cost",
    ),
    "duplicate task ids": (
        lambda b: b.bid_request([b.task("t"), b.task("t")]),
        Code.INVALID_ARGUMENT,
        "unique",
    ),
    "oversized input spec": (
        lambda b: b.bid_request([b.task(shape=(1 << 30, 64))]),
        Code.RESOURCE_EXHAUSTED,
        "exceed the limit",
    ),
    "oversized preview tensor": (_oversized_preview, Code.RESOURCE_EXHAUSTED, "exceed the limit"),
    "preview bytes short": (_short_preview, Code.INVALID_ARGUMENT, "expected 256"),
    "unknown dtype": (_unknown_dtype, Code.INVALID_ARGUMENT, "dtype 99"),
}


@pytest.mark.parametrize("case", REQUEST_BIDS_REFUSALS)
async def test_request_bids_refusals(node: PeerNode, buyer: HandBuyer, case: str) -> None:
    edit, expected, detail = REQUEST_BIDS_REFUSALS[case]
    request = edit(buyer)
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    code, details = await refusal(buyer.raw("RequestBids")(raw, timeout=10))
    assert code is expected and detail in details, details
    await buy_and_check(buyer, node)


async def test_detached_tasks_get_the_bids_inline_ones_get(node: PeerNode, buyer: HandBuyer) -> None:
    """Both forms of a call for bids (docs/protocol.md section 3.2): each bid names its task by
    the same digest, the one the detached request signed."""
    tasks = [buyer.task("a"), buyer.task("b", capability="translate/en-de")]
    for detached in (False, True):
        request = buyer.bid_request(tasks, detached=detached)
        response = await buyer.stub.RequestBids(request, timeout=10)
        bid = market_pb2.Bid.FromString(response.outcomes[0].bid.payload)
        assert bid.task_digest == hashlib.sha256(tasks[0]).digest()
        assert response.outcomes[1].no_bid.reason == market_pb2.NO_BID_REASON_UNKNOWN_CAPABILITY
    await buy_and_check(buyer, node)


async def test_a_replayed_bid_request_is_refused(node: PeerNode, buyer: HandBuyer) -> None:
    request = buyer.bid_request([buyer.task()])
    await buyer.stub.RequestBids(request, timeout=10)
    assert await code_of(buyer.stub.RequestBids(request, timeout=10)) is Code.ALREADY_EXISTS
    await buy_and_check(buyer, node)


async def test_tasks_the_node_cannot_do_get_a_reasoned_no_bid(node: PeerNode, buyer: HandBuyer) -> None:
    tasks = [
        buyer.task("ok"),
        buyer.task("model", model_id="digits-huge"),
        buyer.task("capability", capability="translate/en-de"),
        buyer.task("dtype", dtype="float64"),
        buyer.task("shape", shape=(4, 8, 8)),
        buyer.task("batch", batch=257),
        buyer.task("cost", max_cost=0.0001),
    ]
    response = await buyer.request_bids(tasks)
    assert response.outcomes[0].HasField("bid")
    reasons = [market_pb2.NoBidReason.Name(o.no_bid.reason) for o in response.outcomes[1:]]
    assert reasons == [
        "NO_BID_REASON_UNKNOWN_MODEL",
        "NO_BID_REASON_UNKNOWN_CAPABILITY",
        "NO_BID_REASON_BAD_INPUT_SPEC",
        "NO_BID_REASON_BAD_INPUT_SPEC",
        "NO_BID_REASON_CONSTRAINT_VIOLATED",
        "NO_BID_REASON_BELOW_COST",
    ]
    assert [o.no_bid.task_id for o in response.outcomes[1:]] == [
        "model",
        "capability",
        "dtype",
        "shape",
        "batch",
        "cost",
    ]
    assert all(o.no_bid.detail for o in response.outcomes[1:])
    await buy_and_check(buyer, node)


async def test_oversized_messages_are_refused_by_size(tmp_path: Path) -> None:
    config = example_config("small", tmp_path, max_message_bytes=32 * 1024)
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        big = encode(torch.zeros(256, 64), "x")  # 64 KiB of data alone
        request = buyer.bid_request([buyer.task("t1", 256, preview=[big])])
        assert await code_of(buyer.stub.RequestBids(request, timeout=10)) is Code.RESOURCE_EXHAUSTED
        bid = await buyer.win(256)
        assert await code_of(buyer.execute(bid, [big])) is Code.RESOURCE_EXHAUSTED
        await buy_and_check(buyer, node)


# --- Execute refusals -----------------------------------------------------------------------------

OrderEdit = Callable[[HandBuyer, envelope_pb2.SignedEnvelope], market_pb2.ExecuteRequest | bytes]


def _order(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope, **fields: Any) -> market_pb2.ExecuteRequest:
    return buyer.order(bid, [buyer.inputs(4)], **fields)


def _forged_order(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.ExecuteRequest:
    request = _order(buyer, bid)
    request.order.signature = bytes(reversed(request.order.signature))
    return request


def _bid_signed_by_someone_else(
    buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope
) -> market_pb2.ExecuteRequest:
    forged = envelope_pb2.SignedEnvelope()
    forged.CopyFrom(bid)
    re_sign(forged, Identity.generate())
    return _order(buyer, forged)


def _tampered_bid(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.ExecuteRequest:
    terms = market_pb2.Bid.FromString(bid.payload)
    terms.cost_estimate = 0.0
    cheap = envelope_pb2.SignedEnvelope()
    cheap.CopyFrom(bid)
    cheap.payload = terms.SerializeToString()
    return _order(buyer, cheap)


def _other_bid_digest(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.ExecuteRequest:
    request = _order(buyer, bid)
    order = market_pb2.ExecuteOrder.FromString(request.order.payload)
    order.bid_digest = hashlib.sha256(b"another bid").digest()
    request.order.CopyFrom(buyer.sign(order))
    return request


def _other_task_id(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.ExecuteRequest:
    request = _order(buyer, bid)
    order = market_pb2.ExecuteOrder.FromString(request.order.payload)
    order.task_id = "another task"
    request.order.CopyFrom(buyer.sign(order))
    return request


def _inputs(tensor: torch.Tensor, name: str = "x") -> OrderEdit:
    return lambda buyer, bid: buyer.order(bid, [encode(tensor, name)])


def _oversized_input(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.ExecuteRequest:
    request = _order(buyer, bid)
    del request.inputs[:]
    request.inputs.append(tensor_pb2.Tensor(name="x", dtype=tensor_pb2.D_TYPE_FLOAT32, shape=[1 << 30, 64]))
    return request


def _short_input(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.ExecuteRequest:
    request = _order(buyer, bid)
    request.inputs[0].data = request.inputs[0].data[:-1]
    return request


EXECUTE_REFUSALS: dict[str, tuple[OrderEdit, Code, str]] = {
    "garbage bytes": (lambda b, bid: b"\xff\xff\xff\xff", Code.INVALID_ARGUMENT, "malformed ExecuteRequest"),
    "no envelopes": (lambda b, bid: market_pb2.ExecuteRequest(), Code.UNAUTHENTICATED, "public key"),
    "forged order signature": (_forged_order, Code.UNAUTHENTICATED, "ExecuteOrder does not verify"),
    "order signed by another requester": (
        lambda b, bid: _order(b, bid, signer=Identity.generate()),
        Code.UNAUTHENTICATED,
        "not signed by the requester",
    ),
    "bid signed by someone else": (_bid_signed_by_someone_else, Code.UNAUTHENTICATED, "expected"),
    "tampered bid": (_tampered_bid, Code.UNAUTHENTICATED, "Bid does not verify"),
    "bid digest mismatch": (_other_bid_digest, Code.INVALID_ARGUMENT, "bid_digest"),
    "task id mismatch": (_other_task_id, Code.INVALID_ARGUMENT, "task_id"),
    "inputs digest mismatch": (
        lambda b, bid: _order(b, bid, inputs_digest=bytes(32)),
        Code.INVALID_ARGUMENT,
        "inputs_digest",
    ),
    "wrong dtype": (_inputs(torch.zeros(4, 64, dtype=torch.float64)), Code.INVALID_ARGUMENT, "dtype float64"),
    "wrong shape": (_inputs(torch.zeros(4, 63)), Code.INVALID_ARGUMENT, "shape [4, 63]"),
    "wrong rank": (_inputs(torch.zeros(4, 8, 8)), Code.INVALID_ARGUMENT, "shape [4, 8, 8]"),
    "wrong name": (_inputs(torch.zeros(4, 64), name="image"), Code.INVALID_ARGUMENT, "named 'x'"),
    "batch differs from the bid": (_inputs(torch.zeros(3, 64)), Code.INVALID_ARGUMENT, "the bid was for"),
    "bytes short": (_short_input, Code.INVALID_ARGUMENT, "expected 1024"),
    "oversized tensor": (_oversized_input, Code.RESOURCE_EXHAUSTED, "exceed the limit"),
    "deadline passed": (
        lambda b, bid: _order(b, bid, deadline_ms=now_ms() - 1),
        Code.DEADLINE_EXCEEDED,
        "deadline",
    ),
    "no deadline": (
        lambda b, bid: _order(b, bid, deadline_ms=0),
        Code.INVALID_ARGUMENT,
        "deadline_ms is required",
    ),
}


@pytest.mark.parametrize("case", EXECUTE_REFUSALS)
async def test_execute_refusals(node: PeerNode, buyer: HandBuyer, case: str) -> None:
    edit, expected, detail = EXECUTE_REFUSALS[case]
    bid = await buyer.win(4)
    request = edit(buyer, bid)
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    code, details = await refusal(buyer.raw("Execute")(raw, timeout=10))
    assert code is expected and detail in details, details
    # The refused bid is still good for a correct order, and the node for new work.
    await buyer.execute(bid, [buyer.inputs(4)])
    await buy_and_check(buyer, node)


async def test_a_different_order_for_an_executed_task_is_a_replay(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(4)
    await buyer.execute(bid, [buyer.inputs(4)])
    other_inputs = [buyer.inputs(4, offset=50)]
    assert await code_of(buyer.execute(bid, other_inputs)) is Code.ALREADY_EXISTS
    await buy_and_check(buyer, node)


async def test_an_expired_bid_is_refused(tmp_path: Path) -> None:
    config = example_config("small", tmp_path, bid_validity_s=0.3)
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        bid = await buyer.win(4)
        await until_past(market_pb2.Bid.FromString(bid.payload).valid_until_ms)
        assert await code_of(buyer.execute(bid, [buyer.inputs(4)])) is Code.FAILED_PRECONDITION
        # Feedback about it can still be attributed for the skew window.
        accepted = await buyer.stub.Feedback(buyer.feedback(bid, "loss"), timeout=10)
        assert accepted.accepted
        await buy_and_check(buyer, node)


async def test_a_bid_from_before_a_restart_is_unknown(tmp_path: Path) -> None:
    config = example_config("small", tmp_path)
    identity = Identity.generate()
    async with await PeerNode.start(config, identity) as first, HandBuyer(first.address) as buyer:
        bid = await buyer.win(4)
    async with await PeerNode.start(config, identity) as second, HandBuyer(second.address) as buyer:
        assert second.peer_id == identity.peer_id  # same key: the bid's signature still verifies
        assert await code_of(buyer.execute(bid, [buyer.inputs(4)])) is Code.FAILED_PRECONDITION
        await buy_and_check(buyer, second)


async def test_a_full_queue_refuses_orders_and_declines_bids(tmp_path: Path) -> None:
    config = example_config(
        "small", tmp_path, max_concurrency=1, queue_limit=0, model_overrides={"extra_latency_ms": 400.0}
    )
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        first, second = await buyer.win(4), await buyer.win(4)
        running = asyncio.ensure_future(buyer.execute(first, [buyer.inputs(4)]))
        response = await buyer.request_bids([buyer.task()])
        for _ in range(100):  # until the executor has admitted the first order
            if response.outcomes[0].HasField("no_bid") or running.done():
                break
            await asyncio.sleep(0.01)
            response = await buyer.request_bids([buyer.task()])
        assert market_pb2.NoBidReason.Name(response.outcomes[0].no_bid.reason) == "NO_BID_REASON_OVERLOADED"
        assert await code_of(buyer.execute(second, [buyer.inputs(4)])) is Code.RESOURCE_EXHAUSTED
        await asyncio.wait_for(running, 10)
        await buyer.execute(second, [buyer.inputs(4)])  # refused orders may be retried
        await buy_and_check(buyer, node)


async def test_a_model_that_fails_is_internal_and_the_node_serves_on(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(
        "import torch\n"
        "from atomic_p2p.peer.models import BuiltModel\n\n"
        "class Flaky(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if (x < 0).any():\n"
        "            raise ValueError('negative pixels')\n"
        "        return torch.zeros(x.shape[0], 10)\n\n"
        "def build(cache_dir):\n"
        "    return BuiltModel(Flaky(), input_shape=(64,), validation_accuracy=0.99)\n"
    )
    (tmp_path / "flaky.toml").write_text(
        '[peer]\nname = "flaky"\n[[models]]\nmodel_id = "flaky"\ncapabilities = ["classify/digits"]\n'
        'factory = "flaky.py:build"\nprice_per_example = 0.001\n'
    )
    small = example_config("small", tmp_path)
    config = dataclasses.replace(small, models=small.models + load_config(tmp_path / "flaky.toml").models)
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        bid = await buyer.win(4, model_id="flaky")
        negative = [encode(-torch.ones(4, 64), "x")]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await buyer.execute(bid, negative)
        assert info.value.code() is Code.INTERNAL and "negative pixels" in (info.value.details() or "")
        # At most once holds for failures too: the same order gets the same answer, without a rerun.
        assert await code_of(buyer.execute(bid, negative)) is Code.INTERNAL
        flaky_bid = await buyer.win(4, model_id="flaky")
        await buyer.execute(flaky_bid, [buyer.inputs(4)])
        await buy_and_check(buyer, node)


async def test_a_model_that_raises_on_a_preview_declines_that_task_alone(tmp_path: Path) -> None:
    (tmp_path / "touchy.py").write_text(
        "import torch\n"
        "from atomic_p2p.peer.models import BuiltModel\n\n"
        "class Touchy(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if (x < 0).any():\n"
        "            raise ValueError('negative input ' + repr(x.tolist()))\n"
        "        return torch.zeros(x.shape[0], 10)\n\n"
        "def build(cache_dir):\n"
        "    return BuiltModel(Touchy(), input_shape=(64,), validation_accuracy=0.99)\n"
    )
    (tmp_path / "touchy.toml").write_text(
        '[peer]\nname = "touchy"\n[[models]]\nmodel_id = "touchy"\ncapabilities = ["classify/digits"]\n'
        'factory = "touchy.py:build"\nprice_per_example = 0.001\n'
    )
    small = example_config("small", tmp_path)
    config = dataclasses.replace(small, models=small.models + load_config(tmp_path / "touchy.toml").models)
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        negative = [encode(-torch.ones(4, 64), "x")]
        other = small.models[0].model_id
        response = await buyer.request_bids(
            [
                buyer.task("bad", model_id="touchy", preview=negative),
                buyer.task("good", model_id=other, preview=negative),
                buyer.task("any", preview=negative),
            ]
        )
        bad, good, anyone = response.outcomes
        assert market_pb2.NoBidReason.Name(bad.no_bid.reason) == "NO_BID_REASON_MODEL_ERROR"
        detail = bad.no_bid.detail
        assert "touchy" in detail and "ValueError: negative input" in detail and len(detail) < 260
        assert good.HasField("bid") and anyone.HasField("bid")  # the other model bids on the same input
        assert market_pb2.Bid.FromString(anyone.bid.payload).model_id == other
        await buy_and_check(buyer, node)


# --- Feedback -------------------------------------------------------------------------------------

FeedbackEdit = Callable[[HandBuyer, envelope_pb2.SignedEnvelope], market_pb2.FeedbackRequest | bytes]


def _forged_notice(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.FeedbackRequest:
    request = buyer.feedback(bid, "win")
    request.notice.signature = bytes(64)
    return request


def _claimed_by_another(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.FeedbackRequest:
    request = buyer.feedback(bid, "win")
    notice = market_pb2.FeedbackNotice.FromString(request.notice.payload)
    notice.requester_id = Identity.generate().peer_id.raw
    request.notice.CopyFrom(buyer.sign(notice))
    return request


FEEDBACK_REFUSALS: dict[str, tuple[FeedbackEdit, Code, str]] = {
    "garbage bytes": (lambda b, bid: b"\xff\xff\xff\xff", Code.INVALID_ARGUMENT, "malformed FeedbackRequest"),
    "garbage payload": (
        lambda b, bid: market_pb2.FeedbackRequest(
            notice=envelope_to_proto(b.identity.sign("atomic.v1.FeedbackNotice", b"\xff\xff\xff"))
        ),
        Code.INVALID_ARGUMENT,
        "malformed FeedbackNotice",
    ),
    "forged signature": (_forged_notice, Code.UNAUTHENTICATED, "does not verify"),
    "requester id of someone else": (_claimed_by_another, Code.UNAUTHENTICATED, "requester_id"),
    "from another requester": (
        lambda b, bid: b.feedback(bid, "win", signer=Identity.generate()),
        Code.UNAUTHENTICATED,
        "not signed by the requester",
    ),
    "no kind": (lambda b, bid: b.feedback(bid, "unspecified"), Code.INVALID_ARGUMENT, "needs kind"),
    "outcome out of range": (
        lambda b, bid: b.feedback(bid, "outcome", outcome_score=1.5),
        Code.INVALID_ARGUMENT,
        "outcome_score",
    ),
}


@pytest.mark.parametrize("case", FEEDBACK_REFUSALS)
async def test_feedback_refusals(node: PeerNode, buyer: HandBuyer, case: str) -> None:
    edit, expected, detail = FEEDBACK_REFUSALS[case]
    bid = await buyer.win(4)
    request = edit(buyer, bid)
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    code, details = await refusal(buyer.raw("Feedback")(raw, timeout=10))
    assert code is expected and detail in details, details
    assert (await buyer.stub.Feedback(buyer.feedback(bid, "win"), timeout=10)).accepted
    await buy_and_check(buyer, node)


async def test_feedback_reaches_the_strategy_once(node: PeerNode, buyer: HandBuyer) -> None:
    record = node.models["digits-small"].strategy.record  # type: ignore[attr-defined]
    won, lost = await buyer.win(4), await buyer.win(4)
    for request in (
        buyer.feedback(won, "win", clearing_price=0.004),
        buyer.feedback(won, "outcome", outcome_score=0.75),
        buyer.feedback(lost, "loss", score_to_win=0.9),
    ):
        assert (await buyer.stub.Feedback(request, timeout=10)).accepted
    assert (record.wins, record.losses, record.outcomes) == (1, 1, 1)
    assert record.revenue == pytest.approx(0.004) and record.mean_outcome == pytest.approx(0.75)
    replay = buyer.feedback(won, "win", clearing_price=0.004)
    assert await code_of(buyer.stub.Feedback(replay, timeout=10)) is Code.ALREADY_EXISTS
    assert record.wins == 1
    # Every accepted notice is journaled under the data dir, for `atomic profile` and restarts.
    journal = read_journal(node.config.data_dir / JOURNAL_NAME)
    assert [entry.model_id for entry in journal][-3:] == ["digits-small"] * 3
    assert journal[-1].point.wins == 1 and journal[-1].point.losses == 1
    await buy_and_check(buyer, node)


async def test_feedback_about_a_bid_never_issued_is_declined(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(4)
    terms = market_pb2.Bid.FromString(bid.payload)
    terms.task_id = "never bid on"
    unknown = envelope_pb2.SignedEnvelope(payload_type="atomic.v1.Bid", payload=terms.SerializeToString())
    assert not (await buyer.stub.Feedback(buyer.feedback(unknown, "loss"), timeout=10)).accepted
    await buy_and_check(buyer, node)


# --- drain ----------------------------------------------------------------------------------------


async def test_drain_finishes_in_flight_work_and_refuses_new(tmp_path: Path) -> None:
    config = example_config("small", tmp_path, model_overrides={"extra_latency_ms": 500.0})
    node = await PeerNode.start(config)
    try:
        async with HandBuyer(node.address) as buyer:
            bid, spare = await buyer.win(4), await buyer.win(4)
            running = threading.Event()  # set by the model's first forward pass: the order is admitted
            node.models["digits-small"].module.register_forward_pre_hook(lambda *_: running.set())
            in_flight = asyncio.ensure_future(buyer.execute(bid, [buyer.inputs(4)]))
            assert await asyncio.to_thread(running.wait, 10), "the order never reached the model"
            drained = asyncio.ensure_future(node.drain(10))
            await eventually(lambda: node.draining, what="the node starts draining")
            assert await code_of(buyer.request_bids([buyer.task()])) is Code.UNAVAILABLE
            assert await code_of(buyer.execute(spare, [buyer.inputs(4)])) is Code.UNAVAILABLE
            await eventually(lambda: draining(buyer.channel), what="health reports NOT_SERVING")
            assert await asyncio.wait_for(drained, 10) is True
            response = await asyncio.wait_for(in_flight, 10)
            assert market_pb2.ExecuteResult.FromString(response.result.payload).latency_ms >= 500
    finally:
        await node.stop()
