"""scripts/minimal_peer.py, the floor bench_auction.py measures the auction round against, gives real
answers: the requester's own code verifies, binds and scores its bids over real TLS, and it refuses
what a peer must refuse. A floor that skipped required work would make every ratio look worse than
it is, so these tests keep it honest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.node import load_models
from atomic_p2p.peer.server import SERVICE_NAME
from atomic_p2p.protocol import codec
from atomic_p2p.requester import Requester, score
from atomic_p2p.requester.auction import collect_bids
from atomic_p2p.requester.client import TASK_ID
from atomic_p2p.requester.messages import build_task
from atomic_p2p.tensors import encode
from atomic_p2p.testing import digits_batch
from peers.examples import example_config
from scripts import minimal_peer

pytestmark = pytest.mark.integration

CAPABILITY = "classify/digits"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[minimal_peer.MinimalPeer, str, HostedModel]]:
    (model,) = load_models(example_config("small", tmp_path)).values()
    peer, tls = minimal_peer.load(tmp_path / "minimal", minimal_peer.offer_of(model, CAPABILITY))
    server, port = await minimal_peer.serve(peer, tls)
    try:
        yield peer, f"{peer.peer_id.hex}@127.0.0.1:{port}", model
    finally:
        await server.stop(0.5)


async def test_its_bids_pass_the_requesters_own_checks(
    served: tuple[minimal_peer.MinimalPeer, str, HostedModel],
) -> None:
    peer, address, model = served
    rows = digits_batch(8)[0]
    async with Requester([address]) as requester:
        await requester._pool.open(address)  # pinned to the certificate bound to its peer id
        task = build_task(TASK_ID, CAPABILITY, [encode(rows, "x")], preview=True, max_cost=None)
        call = requester._call_for_bids(task, 4.0)
        collected = await collect_bids(requester._transport, [address], call, 4.0, requester.clock)
        ranking = score(collected.bids_for(TASK_ID), None, 4000.0, None)
    (ranked,) = ranking.ranked
    bid = ranked.item
    assert bid.peer_id == peer.peer_id and bid.request_id == call.request_id
    assert bid.model_id == model.model_id and bid.capabilities == (CAPABILITY,)
    assert bid.confidence == pytest.approx(model.preview_confidence((rows,)), abs=1e-6)
    assert bid.cost == pytest.approx(model.config.price_per_example * 8)


async def test_it_refuses_a_forged_replayed_or_malformed_request(
    served: tuple[minimal_peer.MinimalPeer, str, HostedModel],
) -> None:
    _, address, _ = served
    async with Requester([address]) as requester:
        await requester._pool.open(address)
        rpc = requester._pool.channel(address).unary_unary(f"/{SERVICE_NAME}/RequestBids")
        task = build_task(TASK_ID, CAPABILITY, [encode(digits_batch(8)[0], "x")], preview=True, max_cost=None)
        call = requester._call_for_bids(task, 4.0)
        raw = codec.encode(call.frame)
        assert await rpc(raw, timeout=4.0)  # once: bids
        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await rpc(raw, timeout=4.0)
        assert replayed.value.code() == grpc.StatusCode.ALREADY_EXISTS
        for part in ("signature", "task"):
            message = market_pb2.RequestBidsRequest.FromString(
                codec.encode(requester._call_for_bids(task, 4.0).frame)
            )
            if part == "signature":
                message.request.signature = (
                    bytes([message.request.signature[0] ^ 1]) + message.request.signature[1:]
                )
            else:  # the task beside the envelope is not the one whose digest it signs
                message.tasks[0] = message.tasks[0] + b"\x38\x01"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc(message.SerializeToString(), timeout=4.0)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, part
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await rpc(b"\xff" * 64, timeout=4.0)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
