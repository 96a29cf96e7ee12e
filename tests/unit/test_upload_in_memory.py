"""ExecuteUpload on the in-memory network: inputs sent in slices after the order, checked before
any input is taken (docs/protocol.md section 10)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p.errors import ProtocolError, SignatureError
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    Bid,
    ExecuteCall,
    NoBid,
    RequestBidsCall,
    RequestBidsReply,
    TensorSlice,
)
from atomic_p2p.protocol.streaming import encoded_slices
from atomic_p2p.requester import ExecutionPolicy, Requester
from atomic_p2p.requester.messages import build_task, sign_bid_request, sign_order
from atomic_p2p.tensors import WireTensor, digest, encode
from atomic_p2p.testing import FakeClock, InMemoryNetwork, InMemoryPeer, digits_batch, make_bid, seller_config

CAPABILITY = "classify/digits"


@pytest.fixture
def peer(network: InMemoryNetwork, tmp_path: Path) -> InMemoryPeer:
    return network.add_peer(seller_config("seller", tmp_path))


async def ordered(peer: InMemoryPeer, clock: FakeClock, buyer: Identity, wire: WireTensor) -> ExecuteCall:
    """A signed order for ``wire`` on the bid ``peer`` made for it."""
    now = clock.wall_ms()
    task = build_task("t0", CAPABILITY, [wire], preview=False, max_cost=None)
    request = RequestBidsCall(sign_bid_request(buyer, os.urandom(16), [task], now, now + 5000))
    reply = codec.decode(RequestBidsReply, await peer.service.call("RequestBids", codec.encode(request)))
    (envelope,) = reply.outcomes
    assert not isinstance(envelope, NoBid)
    bid = codec.decode(Bid, envelope.payload)
    info = replace(make_bid(peer.seller.identity, task_id="t0", request_id=bid.request_id), envelope=envelope)
    order = sign_order(buyer, bid.request_id, info, digest([wire]), now, now + 5000)
    return ExecuteCall(order, envelope, (wire,))


class Sent:
    """Request messages, counting how many the peer took."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for message in self.messages:
            self.taken += 1
            yield message


async def upload(network: InMemoryNetwork, peer: InMemoryPeer, sent: Sent) -> list[object]:
    stream = network.transport().send_upload(peer.address, "ExecuteUpload", iter(sent), 5.0)
    return [codec.decode_chunk(message) async for message in stream]


async def test_inputs_sent_in_slices_after_the_order_give_the_unary_answer(
    network: InMemoryNetwork, clock: FakeClock, peer: InMemoryPeer
) -> None:
    x, _ = digits_batch(3)
    policy = ExecutionPolicy(stream_inputs=True)
    transport = network.transport()
    async with Requester([peer.address], transport=transport, clock=clock, execution=policy) as requester:
        result = await requester.run(CAPABILITY, {"x": x}, deadline_s=5.0, preview=False)
    async with Requester([peer.address], transport=transport, clock=clock) as unary:
        expected = await unary.run(CAPABILITY, {"x": x}, deadline_s=5.0, preview=False)
    assert network.calls[(peer.address, "ExecuteUpload")] == 1
    assert torch.equal(result.outputs["logits"], expected.outputs["logits"])


async def test_an_upload_is_refused_before_any_input_is_taken(
    network: InMemoryNetwork, clock: FakeClock, peer: InMemoryPeer
) -> None:
    buyer = Identity.generate()
    wire = encode(digits_batch(1)[0], "x")
    call = await ordered(peer, clock, buyer, wire)
    slices = list(encoded_slices([wire], slice_bytes=64))
    forged = replace(call, order=replace(call.order, signature=bytes(64)))
    sent = Sent([codec.encode_upload_call(forged), *slices])
    with pytest.raises(SignatureError):
        await upload(network, peer, sent)
    assert sent.taken == 1  # the order only: no slice was read
    other = replace(wire, name="y")
    sent = Sent([codec.encode_upload_call(call), *encoded_slices([other], slice_bytes=64)])
    with pytest.raises(ProtocolError, match="not one the bid was for"):
        await upload(network, peer, sent)
    assert sent.taken == 2  # refused at the first slice of an input the bid was not for
    with pytest.raises(ProtocolError, match="starts with its call"):
        await upload(network, peer, Sent(slices))
    whole = market_pb2.ExecuteUploadRequest(
        call=market_pb2.ExecuteStreamRequest.FromString(codec.encode(call))
    )
    with pytest.raises(ProtocolError, match="carries no inputs"):
        await upload(network, peer, Sent([whole.SerializeToString()]))
    # The order still stands: sent properly, it runs.
    chunks = await upload(network, peer, Sent([codec.encode_upload_call(call), *slices]))
    assert isinstance(chunks[0], TensorSlice) and isinstance(chunks[-1], Envelope)
