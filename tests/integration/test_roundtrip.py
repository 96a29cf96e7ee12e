"""The requester SDK against real example peers on loopback: bids, scoring, execution, fallback.

Three real nodes (small MLP, CNN, 0-4 specialist) serve the whole module; tests that kill a node
start their own. A hand-written servicer stands in for a malicious outside party that forges
bids; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import pytest_asyncio
import torch

from atomic_p2p._proto.atomic.v1 import market_pb2, market_pb2_grpc
from atomic_p2p.errors import NoBidsError
from atomic_p2p.identity import Envelope, Identity, verify
from atomic_p2p.peer.models import load_factory
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.protocol.wire import envelope_from_proto, envelope_to_proto, parse
from atomic_p2p.requester import NoBidKind, Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.tensors import digest, encode
from atomic_p2p.tls import TlsCredentials
from peers.examples import PEERS_DIR, example_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CAPABILITY = "classify/digits"


def held_out_digits(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits none of the example models trained on (the split lives in peers/digits.py)."""
    dataset = load_factory(f"{PEERS_DIR / 'digits.py'}:dataset")  # the loader the peers use
    _, _, x, y = dataset()
    return x[:batch].clone(), y[:batch].clone()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trio(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, PeerNode]]:
    """small, large and specialist. The large one is made slow (300 ms) but as cheap as the
    small one, so the speed profile prefers small and the accuracy profile prefers large."""
    tmp = tmp_path_factory.mktemp("trio")
    configs = {
        "small": example_config("small", tmp),
        "large": example_config(
            "large", tmp, model_overrides={"extra_latency_ms": 300, "price_per_example": 0.001}
        ),
        "specialist": example_config("specialist", tmp),
    }
    nodes: dict[str, PeerNode] = {}
    try:
        for name, config in configs.items():
            nodes[name] = await asyncio.wait_for(PeerNode.start(config), timeout=120)
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop(grace=1.0)


def addresses(nodes: dict[str, PeerNode]) -> list[str]:
    return [node.address for node in nodes.values()]


async def test_round_trip_with_three_real_peers(trio: dict[str, PeerNode]) -> None:
    x, y = held_out_digits(64)
    async with Requester(addresses(trio)) as requester:
        result = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=5.0), timeout=10)

    assert {scored.item.peer_id for scored in result.bids} == {node.peer_id for node in trio.values()}
    assert result.no_bids == () and result.excluded == ()
    for scored in result.bids:  # every bid is signed by the node at the address it came from
        node = next(n for n in trio.values() if n.address == scored.item.address)
        assert verify(scored.item.envelope, "atomic.v1.Bid", expected_signer=node.peer_id)
    assert [s.rank for s in result.bids] == [1, 2, 3]
    assert result.winner is result.bids[0].item
    assert len(result.attempts) == 1 and result.attempts[0].ok and result.fallbacks == ()

    logits = result.outputs["logits"]
    assert logits.dtype == torch.float32 and logits.shape == (64, 10)
    assert (logits.argmax(dim=1) == y).float().mean().item() >= 0.8

    verify(result.receipt, "atomic.v1.ExecuteResult", expected_signer=result.winner.peer_id)
    receipt = market_pb2.ExecuteResult.FromString(result.receipt.payload)
    assert receipt.request_id == result.request_id and receipt.bid_digest == result.winner.digest
    assert receipt.outputs_digest == digest([encode(logits, "logits")])
    assert result.price == pytest.approx(result.winner.cost)
    assert 0 < result.timings.bids_ms <= result.timings.total_ms


async def test_priority_profiles_pick_different_winners(trio: dict[str, PeerNode]) -> None:
    x, _ = held_out_digits(32)
    large = trio["large"].peer_id
    # Greedy: exploration would sometimes (rightly) try the other peer first.
    async with Requester(addresses(trio), evaluator=EvaluatorConfig.greedy()) as requester:
        fast = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, weights="speed"), timeout=10)
        sharp = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, weights="accuracy"), timeout=10)
    assert fast.winner.peer_id != large
    assert sharp.winner.peer_id == large
    assert fast.weights.as_dict() == pytest.approx({"accuracy": 0.3, "latency": 0.6, "cost": 0.1})
    for result in (fast, sharp):
        scores = [s.score for s in result.bids]
        assert scores == sorted(scores, reverse=True)


async def test_concurrent_runs_share_one_requester(trio: dict[str, PeerNode]) -> None:
    x, _ = held_out_digits(8)
    async with Requester(addresses(trio)) as requester:
        runs = [requester.run(CAPABILITY, {"x": x}, weights="speed") for _ in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*runs), timeout=20)
    # Four tasks, each its own: runs handed over together may share one call for bids (one
    # request id: tests/integration/test_bidding.py), never a task id.
    assert len({result.task_id for result in results}) == 4
    assert len({(result.request_id, result.task_id) for result in results}) == 4
    assert all(result.outputs["logits"].shape == (8, 10) for result in results)


async def test_no_bids_says_what_each_peer_said(trio: dict[str, PeerNode]) -> None:
    x, _ = held_out_digits(4)
    peers = [*addresses(trio), "127.0.0.1:1"]  # port 1: nobody listens
    async with Requester(peers) as requester:
        with pytest.raises(NoBidsError) as raised:
            await asyncio.wait_for(requester.run("classify/letters", {"x": x}, deadline_s=2.0), timeout=10)
    message = str(raised.value)
    for address in addresses(trio):
        assert f"{address} declined [unknown_capability]" in message
    assert "127.0.0.1:1 unreachable" in message


async def test_budget_below_every_price_gets_no_bids(trio: dict[str, PeerNode]) -> None:
    x, _ = held_out_digits(16)
    async with Requester(addresses(trio)) as requester:
        with pytest.raises(NoBidsError):
            await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, max_cost=1e-9), timeout=10)


async def test_fallback_when_the_winner_dies_mid_execution(tmp_path: Path) -> None:
    # The large model is made the clear winner (accuracy only) and slow, so its Execute is in
    # flight for 1.5 s; the node is stopped once its model runs. Without a preview in the call
    # for bids, the model runs only to execute.
    slow_large = example_config("large", tmp_path, model_overrides={"extra_latency_ms": 1500})
    large = await asyncio.wait_for(PeerNode.start(slow_large), timeout=120)
    small = await asyncio.wait_for(PeerNode.start(example_config("small", tmp_path)), timeout=120)
    executing = threading.Event()
    large.models["digits-large"].module.register_forward_pre_hook(lambda *_: executing.set())
    x, y = held_out_digits(32)
    try:
        greedy = EvaluatorConfig.greedy()  # the large model must rank first, not be explored past
        async with Requester([large.address, small.address], evaluator=greedy) as requester:
            run = asyncio.create_task(
                requester.run(CAPABILITY, {"x": x}, deadline_s=6.0, weights={"accuracy": 1}, preview=False)
            )
            assert await asyncio.to_thread(executing.wait, 10), "the large model never ran"
            await large.stop(grace=0)
            result = await asyncio.wait_for(run, timeout=10)
    finally:
        await large.stop(grace=0)
        await small.stop(grace=1.0)

    assert [attempt.bid.peer_id for attempt in result.attempts] == [large.peer_id, small.peer_id]
    failed, succeeded = result.attempts
    assert not failed.ok and failed.error is not None and succeeded.ok
    assert result.fallbacks == (failed,)
    assert result.winner.peer_id == small.peer_id
    verify(result.receipt, "atomic.v1.ExecuteResult", expected_signer=small.peer_id)
    assert (result.outputs["logits"].argmax(dim=1) == y).float().mean().item() >= 0.8


# --- a malicious outside party ----------------------------------------------------------------

Forgery = Callable[[market_pb2.Bid, Identity], Envelope]


def _resign(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    envelope: Envelope = identity.sign(bid.DESCRIPTOR.full_name, bid.SerializeToString())
    return envelope


def bad_signature(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    envelope = _resign(bid, identity)
    return dataclasses.replace(envelope, signature=bytes(64))


def tampered_after_signing(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    envelope = _resign(bid, identity)
    bid.model_id = "digits-large"  # a signed bid whose terms were changed on the way
    return dataclasses.replace(envelope, payload=bid.SerializeToString())


def impersonation(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    bid.peer_id = hashlib.sha256(b"a peer with a good reputation").digest()
    return _resign(bid, identity)


def wrong_task_digest(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    bid.task_digest = hashlib.sha256(b"some other task").digest()
    return _resign(bid, identity)


def wrong_request(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    bid.request_id = bytes(16)
    return _resign(bid, identity)


def already_expired(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    bid.valid_until_ms = int(time.time() * 1000) - 1_000
    return _resign(bid, identity)


def wrong_payload_type(bid: market_pb2.Bid, identity: Identity) -> Envelope:
    return identity.sign("atomic.v1.ExecuteResult", bid.SerializeToString())


class Forger(market_pb2_grpc.PeerServicer):
    """Bids irresistible terms (sure, instant, free) with one flaw; counts Execute calls."""

    terms: ClassVar[dict[str, Any]] = {
        "model_id": "too-good-to-be-true",
        "confidence_score": 1.0,
        "expected_latency_ms": 0.0,
        "cost_estimate": 0.0,
    }

    def __init__(self, forgery: Forgery) -> None:
        self.identity = Identity.generate()
        self.forgery = forgery
        self.executions = 0

    async def RequestBids(  # the gRPC method name
        self, request: market_pb2.RequestBidsRequest, context: grpc.aio.ServicerContext
    ) -> market_pb2.RequestBidsResponse:
        call = parse(market_pb2.BidRequest, envelope_from_proto(request.request).payload, "bid request")
        outcomes = []
        for spec in request.tasks if call.task_digests else call.tasks:  # detached, as the SDK sends
            task = market_pb2.TaskSpec.FromString(spec)
            now = int(time.time() * 1000)
            bid = market_pb2.Bid(
                request_id=call.request_id,
                task_id=task.task_id,
                task_digest=hashlib.sha256(spec).digest(),
                peer_id=self.identity.peer_id.raw,
                issued_at_ms=now,
                valid_until_ms=now + 10_000,
                **self.terms,
            )
            outcomes.append(market_pb2.BidOutcome(bid=envelope_to_proto(self.forgery(bid, self.identity))))
        return market_pb2.RequestBidsResponse(outcomes=outcomes)

    async def Execute(
        self, request: market_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> market_pb2.ExecuteResponse:
        self.executions += 1
        await context.abort(grpc.StatusCode.INTERNAL, "a forger never delivers")
        raise AssertionError("unreachable")


async def serve(servicer: Forger) -> tuple[grpc.aio.Server, str]:
    """A rogue peer with a valid TLS certificate of its own: TLS proves who it is, not that it is honest."""
    server = grpc.aio.server()
    market_pb2_grpc.add_PeerServicer_to_server(servicer, server)
    credentials = TlsCredentials.generate(servicer.identity)
    port = server.add_secure_port("127.0.0.1:0", credentials.server_credentials())
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    "forgery",
    [
        bad_signature,
        tampered_after_signing,
        impersonation,
        wrong_task_digest,
        wrong_request,
        already_expired,
        wrong_payload_type,
    ],
)
async def test_forged_bids_are_dropped(trio: dict[str, PeerNode], forgery: Forgery) -> None:
    forger = Forger(forgery)
    server, forger_address = await serve(forger)
    x, _ = held_out_digits(16)
    try:
        async with Requester([forger_address, *addresses(trio)]) as requester:
            result = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}), timeout=10)
    finally:
        await server.stop(None)

    assert forger.executions == 0
    assert result.winner.peer_id in {node.peer_id for node in trio.values()}
    assert forger.identity.peer_id not in {scored.item.peer_id for scored in result.bids}
    (dropped,) = result.no_bids
    assert dropped.address == forger_address and dropped.kind is NoBidKind.INVALID


class SulkingLoser(Forger):
    """An honest peer with poor terms that hangs on every Feedback call."""

    terms: ClassVar[dict[str, Any]] = {
        "model_id": "guesswork",
        "confidence_score": 0.1,
        "expected_latency_ms": 50.0,
        "cost_estimate": 1.0,
    }

    def __init__(self) -> None:
        super().__init__(_resign)
        self.notices: list[tuple[Envelope, market_pb2.FeedbackNotice]] = []

    async def Feedback(  # the gRPC method name
        self, request: market_pb2.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> market_pb2.FeedbackResponse:
        envelope = envelope_from_proto(request.notice)
        self.notices.append((envelope, market_pb2.FeedbackNotice.FromString(envelope.payload)))
        await asyncio.sleep(30)
        return market_pb2.FeedbackResponse(accepted=True)


async def test_feedback_never_holds_up_the_result(trio: dict[str, PeerNode]) -> None:
    loser = SulkingLoser()
    server, loser_address = await serve(loser)
    x, _ = held_out_digits(8)
    try:
        requester = Requester([loser_address, *addresses(trio)], feedback_timeout_s=0.5)
        result = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}), timeout=10)
        async with asyncio.timeout(5):
            while not loser.notices:  # the loss notice is on its way in the background
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            await requester.close()  # gives up on the hanging call after its timeout
            assert time.perf_counter() - started < 2.0
    finally:
        await server.stop(None)

    assert result.bids[-1].item.peer_id == loser.identity.peer_id
    ((envelope, notice),) = loser.notices
    verify(envelope, "atomic.v1.FeedbackNotice", expected_signer=requester.identity.peer_id)
    assert notice.kind == market_pb2.FEEDBACK_KIND_LOSS
    assert notice.request_id == result.request_id and notice.model_id == "guesswork"
    assert notice.score_to_win == pytest.approx(result.bids[0].score)
    assert notice.clearing_price == pytest.approx(result.price)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_cuda_inputs_travel(trio: dict[str, PeerNode]) -> None:
    x, y = held_out_digits(32)
    async with Requester(addresses(trio)) as requester:
        result = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x.cuda()}), timeout=10)
    logits = result.outputs["logits"]  # outputs arrive on the CPU, whatever device sent them
    assert logits.device.type == "cpu" and (logits.argmax(dim=1) == y).float().mean().item() >= 0.8
