"""BidGradient against a real peer on 127.0.0.1: gradient-mode bids carry bid values, a valid
gradient moves the bid function the right way and survives a restart, and every bad gradient
gets its status code with the bid function's parameters bit-identical before and after."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc import StatusCode as Code

from atomic_p2p._proto.atomic.v1 import envelope_pb2, market_pb2
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import GradientConfig, PeerConfig
from atomic_p2p.peer.gradients import CHECKPOINT_DIR, MODEL_CHECKPOINT_DIR
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.protocol.wire import tensor_to_proto
from atomic_p2p.tensors import encode
from peers.examples import example_config
from tests.support.handbuyer import HandBuyer

pytestmark = pytest.mark.integration

BATCH = 4


def gradient_config(tmp_path: Path, **options: Any) -> PeerConfig:
    settings = {"enabled": True, "lr": 0.1, "max_norm": 1.0, "reject_norm": 10.0, **options}
    return example_config("small", tmp_path, model_overrides={"gradient": GradientConfig(**settings)})


@pytest.fixture
def node_config(tmp_path: Path) -> PeerConfig:
    """The ``node`` and ``buyer`` fixtures (conftest.py) run on a peer that learns from gradients."""
    return gradient_config(tmp_path)


def learner_state(node: PeerNode) -> dict[str, torch.Tensor]:
    learner = node.seller.learners["digits-small"]
    return {name: tensor.clone() for name, tensor in learner.learner.bid_function.state_dict().items()}


def bit_identical(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


async def gradient_bid(buyer: HandBuyer, batch: int = BATCH, **task: Any) -> envelope_pb2.SignedEnvelope:
    preview = buyer.inputs(batch, offset=200)
    response = await buyer.request_bids(
        [buyer.task("t1", batch, preview=[preview], **task)], gradient_mode=True
    )
    assert response.outcomes[0].HasField("bid"), response.outcomes[0]
    return response.outcomes[0].bid


async def send(buyer: HandBuyer, request: market_pb2.BidGradientRequest) -> market_pb2.BidGradientResponse:
    response: market_pb2.BidGradientResponse = await buyer.stub.BidGradient(request, timeout=30)
    return response


async def refused(buyer: HandBuyer, request: market_pb2.BidGradientRequest) -> tuple[Code, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(buyer, request)
    return info.value.code(), info.value.details() or ""


async def test_gradient_mode_bids_carry_one_bid_value_per_example(node: PeerNode, buyer: HandBuyer) -> None:
    bid = market_pb2.Bid.FromString((await gradient_bid(buyer, 6)).payload)
    assert len(bid.bid_values) == 6 and all(v == pytest.approx(1.0, rel=1e-5) for v in bid.bid_values)
    plain = market_pb2.Bid.FromString((await buyer.win(6)).payload)
    assert list(plain.bid_values) == []  # not in gradient mode


async def test_a_valid_gradient_descends_and_survives_a_restart(tmp_path: Path) -> None:
    config = gradient_config(tmp_path)
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        before = learner_state(node)
        bid = await gradient_bid(buyer)
        # dL/db > 0 everywhere: raising the bid raises the loss, so a cooperative peer lowers it.
        response = await send(buyer, buyer.gradient(bid, [0.5] * BATCH))
        assert response.applied and response.applied_norm == pytest.approx(1.0)  # norm 1.0: at max_norm
        after = learner_state(node)
        assert float(after["raw"][0]) < float(before["raw"][0])
        lower = market_pb2.Bid.FromString((await gradient_bid(buyer)).payload).bid_values
        assert all(value < 1.0 for value in lower)
    assert (config.data_dir / CHECKPOINT_DIR / "digits-small.pt").is_file()
    async with await PeerNode.start(config) as restarted:
        assert bit_identical(after, learner_state(restarted))


async def test_a_competitive_peer_climbs_its_payoff(tmp_path: Path) -> None:
    config = gradient_config(tmp_path, role="competitive")
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        before = learner_state(node)
        bid = await gradient_bid(buyer)
        # Its share grows with its bid and it is paid per unit of share: it bids higher.
        response = await send(buyer, buyer.gradient(bid, share_grad=[0.2] * BATCH, price=1.0))
        assert response.applied and response.applied_norm == pytest.approx(0.4)
        assert float(learner_state(node)["raw"][0]) > float(before["raw"][0])


def _wrong_shape(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, [0.1] * (BATCH + 1))


def _nan(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, [0.1, math.nan, 0.1, 0.1])


def _infinite(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, [0.1, math.inf, 0.1, 0.1])


def _oversized(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, [20.0] * BATCH)  # norm 40 > reject_norm 10


def _overflowing(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, [1e38] * BATCH)  # finite float32, but the norm is absurd


def _missing(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, share_grad=[0.1] * BATCH)  # a cooperative peer needs loss_grad


def _output_grad(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    dy = tensor_to_proto(encode(torch.zeros(BATCH, 10), "dy"))
    return buyer.gradient(bid, [0.1] * BATCH, output_grad=dy)  # not opted into remote training


def _forged(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    request = buyer.gradient(bid, [0.1] * BATCH)
    request.update.signature = bytes(64)
    return request


def _stranger(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    return buyer.gradient(bid, [0.1] * BATCH, signer=Identity.generate())  # validly signed, by someone else


def _claims_another_requester(
    buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope
) -> market_pb2.BidGradientRequest:
    request = buyer.gradient(bid, [0.1] * BATCH)
    update = market_pb2.BidGradientUpdate.FromString(request.update.payload)
    update.requester_id = bytes(32)
    return market_pb2.BidGradientRequest(update=buyer.sign(update))


def _never_served(buyer: HandBuyer, bid: envelope_pb2.SignedEnvelope) -> market_pb2.BidGradientRequest:
    request = buyer.gradient(bid, [0.1] * BATCH)
    update = market_pb2.BidGradientUpdate.FromString(request.update.payload)
    update.request_id = bytes(16)
    return market_pb2.BidGradientRequest(update=buyer.sign(update))


BAD = {
    "wrong shape": (_wrong_shape, Code.INVALID_ARGUMENT),
    "nan": (_nan, Code.INVALID_ARGUMENT),
    "infinite": (_infinite, Code.INVALID_ARGUMENT),
    "oversized norm": (_oversized, Code.RESOURCE_EXHAUSTED),
    "overflowing norm": (_overflowing, Code.RESOURCE_EXHAUSTED),
    "missing loss_grad": (_missing, Code.INVALID_ARGUMENT),
    "output_grad without opt-in": (_output_grad, Code.FAILED_PRECONDITION),
    "forged signature": (_forged, Code.UNAUTHENTICATED),
    "signed by a stranger": (_stranger, Code.UNAUTHENTICATED),
    "requester_id of another": (_claims_another_requester, Code.UNAUTHENTICATED),
    "never served": (_never_served, Code.FAILED_PRECONDITION),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_gradient_is_refused_and_changes_nothing(
    node: PeerNode, buyer: HandBuyer, case: str
) -> None:
    build, code = BAD[case]
    bid = await gradient_bid(buyer)
    before = learner_state(node)
    assert (await refused(buyer, build(buyer, bid)))[0] == code
    assert bit_identical(before, learner_state(node))
    # The refusal used up nothing: the requester's valid gradient for the same bid still applies.
    assert (await send(buyer, buyer.gradient(bid, [0.1] * BATCH))).applied


async def test_a_replayed_gradient_is_refused_and_changes_nothing(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await gradient_bid(buyer)
    request = buyer.gradient(bid, [0.1] * BATCH)
    assert (await send(buyer, request)).applied
    after_first = learner_state(node)
    assert (await refused(buyer, request))[0] == Code.ALREADY_EXISTS
    assert (await refused(buyer, buyer.gradient(bid, [0.2] * BATCH)))[0] == Code.ALREADY_EXISTS
    assert bit_identical(after_first, learner_state(node))


async def test_a_plain_bid_gets_no_gradient(node: PeerNode, buyer: HandBuyer) -> None:
    bid = await buyer.win(BATCH)  # not in gradient mode: nothing was remembered to learn from
    before = learner_state(node)
    code, details = await refused(buyer, buyer.gradient(bid, [0.1] * BATCH))
    assert code == Code.FAILED_PRECONDITION and "never served" in details
    assert bit_identical(before, learner_state(node))


async def test_remote_training_takes_output_gradients(tmp_path: Path) -> None:
    config = gradient_config(tmp_path, remote_training=True, model_lr=0.01)
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        module = node.models["digits-small"].module
        weights = [p.detach().clone() for p in module.parameters()]
        bid = await gradient_bid(buyer)
        dy = tensor_to_proto(encode(torch.full((BATCH, 10), 0.1), "dy"))
        assert (await send(buyer, buyer.gradient(bid, [0.1] * BATCH, output_grad=dy))).applied
        assert any(not torch.equal(w, p) for w, p in zip(weights, module.parameters(), strict=True))
        other = await gradient_bid(buyer)
        wrong = tensor_to_proto(encode(torch.zeros(BATCH, 3), "dy"))
        before = learner_state(node)
        trained = {k: v.clone() for k, v in module.state_dict().items()}
        assert (await refused(buyer, buyer.gradient(other, [0.1] * BATCH, output_grad=wrong)))[0] == (
            Code.INVALID_ARGUMENT
        )
        assert bit_identical(before, learner_state(node))
        assert bit_identical(trained, module.state_dict())
    # A restart loads the remotely trained weights over the factory's, and the optimiser's state.
    assert (config.data_dir / MODEL_CHECKPOINT_DIR / "digits-small.pt").is_file()
    async with await PeerNode.start(config) as restarted:
        assert bit_identical(trained, restarted.models["digits-small"].module.state_dict())
        learner = restarted.seller.learners["digits-small"]
        restored = learner.restored_optimizer_state
        assert restored is not None  # SGD without momentum: param groups only
        assert restored["param_groups"][0]["lr"] == pytest.approx(0.01)
    async with await PeerNode.start(gradient_config(tmp_path / "fresh")) as fresh:
        assert not bit_identical(trained, fresh.models["digits-small"].module.state_dict())


async def test_an_ffnn_bid_function_bids_per_example(tmp_path: Path) -> None:
    config = gradient_config(tmp_path, bid_function="ffnn")
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        bid = market_pb2.Bid.FromString((await gradient_bid(buyer, 5)).payload)
        assert len(bid.bid_values) == 5 and len(set(bid.bid_values)) > 1
        before = learner_state(node)
        again = await gradient_bid(buyer, 5)
        assert (await send(buyer, buyer.gradient(again, [0.3] * 5))).applied
        assert not bit_identical(before, learner_state(node))


async def test_over_its_memory_a_peer_bids_without_bid_values(tmp_path: Path) -> None:
    config = gradient_config(tmp_path, bid_function="ffnn")
    async with await PeerNode.start(config) as node, HandBuyer(node.address) as buyer:
        node.seller.gradients.max_bytes = 100  # one 4 x 64 float32 preview is 1 KiB
        bid = await gradient_bid(buyer)
        assert list(market_pb2.Bid.FromString(bid.payload).bid_values) == []
        code, details = await refused(buyer, buyer.gradient(bid, [0.1] * BATCH))
        assert code == Code.FAILED_PRECONDITION and "never served" in details
