"""A peer with ``bid_reuse_ttl_s`` lets its requester reuse a bid under new ids, within limits.

The requester side is driven by hand (:class:`~tests.support.handbuyer.HandBuyer`), so what the
peer accepts and refuses is checked independently of the SDK's bid cache.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from atomic_p2p._proto.atomic.v1 import envelope_pb2, market_pb2
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.protocol.wire import tensor_from_proto, tensor_to_proto
from atomic_p2p.tensors import WireTensor, decode, digest
from peers.examples import example_config
from tests.support.handbuyer import HandBuyer, now_ms
from tests.support.waiting import until_past

pytestmark = pytest.mark.integration

REUSE_S = 1.0


@pytest.fixture
def node_config(tmp_path: Path) -> PeerConfig:
    """The ``node`` and ``buyer`` fixtures (conftest.py) run on a peer that lets bids be reused."""
    return example_config("small", tmp_path, bid_reuse_ttl_s=REUSE_S)


def reuse(
    buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope, inputs: list[WireTensor], **fields: Any
) -> market_pb2.ExecuteRequest:
    """An order that names ``bid`` under a fresh request id and task id."""
    now = now_ms()
    signer = fields.pop("signer", None)
    order = market_pb2.ExecuteOrder(
        request_id=fields.pop("request_id", secrets.token_bytes(16)),
        task_id="t2",
        bid_digest=hashlib.sha256(bid.payload).digest(),
        issued_at_ms=now,
        inputs_digest=digest(inputs),
        deadline_ms=fields.pop("deadline_ms", now + 30_000),
    )
    return market_pb2.ExecuteRequest(
        order=buyer.sign(order, signer), bid=bid, inputs=[tensor_to_proto(wire) for wire in inputs]
    )


async def refused(buyer: HandBuyer, request: market_pb2.ExecuteRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await buyer.stub.Execute(request, timeout=30)
    return caught.value


async def test_a_bid_declares_its_reuse_period_and_record(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(batch=4)
    terms = market_pb2.Bid.FromString(bid.payload)
    assert node.gossip is not None
    assert terms.reusable_ttl_ms == REUSE_S * 1000
    assert terms.record_seq == node.gossip.membership.local_record.seq > 0


async def test_a_reusable_bid_runs_again_under_new_ids(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(batch=4)
    first = buyer.inputs(4)
    await buyer.execute(bid, [first])
    again = buyer.inputs(4, offset=100)  # other inputs, same shape
    request = reuse(buyer, bid, [again])
    response = await buyer.stub.Execute(request, timeout=30)
    retried = await buyer.stub.Execute(request, timeout=30)  # at most once per new ids
    result = market_pb2.ExecuteResult.FromString(response.result.payload)
    order = market_pb2.ExecuteOrder.FromString(request.order.payload)
    assert (result.request_id, result.task_id) == (order.request_id, "t2")
    assert result.bid_digest == hashlib.sha256(bid.payload).digest()
    outputs = decode(tensor_from_proto(response.outputs[0]))
    expected = node.models["digits-small"].run(decode(again))
    assert torch.allclose(outputs, expected, atol=1e-5)
    assert retried.result == response.result


async def test_reuse_is_only_for_the_requester_the_bid_was_made_for(buyer: HandBuyer) -> None:
    bid = await buyer.win(batch=4)
    error = await refused(buyer, reuse(buyer, bid, [buyer.inputs(4)], signer=Identity.generate()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_reuse_needs_a_deadline_and_the_same_shape(buyer: HandBuyer) -> None:
    bid = await buyer.win(batch=4)
    no_deadline = await refused(buyer, reuse(buyer, bid, [buyer.inputs(4)], deadline_ms=0))
    other_shape = await refused(buyer, reuse(buyer, bid, [buyer.inputs(5)]))
    assert no_deadline.code() is grpc.StatusCode.INVALID_ARGUMENT and "deadline" in (
        no_deadline.details() or ""
    )
    assert other_shape.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_reuse_ends_with_its_period(buyer: HandBuyer) -> None:
    bid = await buyer.win(batch=4)
    terms = market_pb2.Bid.FromString(bid.payload)
    await until_past(terms.issued_at_ms + terms.reusable_ttl_ms)  # the reuse period is over
    error = await refused(buyer, reuse(buyer, bid, [buyer.inputs(4)]))
    await buyer.execute(bid, [buyer.inputs(4)])  # the bid itself is still valid
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and "reuse period" in (error.details() or "")


async def test_reuse_ends_when_the_record_changes(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(batch=4)
    assert node.gossip is not None
    node.gossip.membership.update_record(time.time())
    error = await refused(buyer, reuse(buyer, bid, [buyer.inputs(4)]))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION and "record changed" in (error.details() or "")
