"""The seller's checks on ExecuteStream orders: every check of Execute, then the generation's own
(frames and the time in, no server, no loop; docs/protocol.md section 10)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from atomic_p2p.errors import ProtocolError, SignatureError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.node import load_models
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.strategies import Load
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import Bid, ExecuteCall, ExecuteOrder, ExecuteResult, NoBid, RequestBidsCall
from atomic_p2p.protocol.streaming import tokens_tensor
from atomic_p2p.requester.messages import build_task, sign_bid_request, sign_order
from atomic_p2p.tensors import WireTensor, digest, encode
from atomic_p2p.testing import digits_batch, generator_config, make_bid, seller_config

NOW = 1_700_000_000_000
IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=4)
PROMPT = encode(torch.tensor([[1, 2, 3]]), "prompt")


def make_seller(config: PeerConfig) -> Seller:
    return Seller(
        identity=Identity.generate(),
        models=load_models(config),
        config=config,
        started_at_ms=NOW - 1000,
        clock=lambda: NOW + 5,
    )


def order_for(
    seller: Seller, buyer: Identity, capability: str, wire: WireTensor, **generation: Any
) -> ExecuteCall:
    task = build_task("t0", capability, [wire], preview=False, max_cost=None)
    request = RequestBidsCall(sign_bid_request(buyer, os.urandom(16), [task], NOW, NOW + 5000))
    opened = seller.open_request(request, NOW)
    (envelope,) = seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes
    assert not isinstance(envelope, NoBid)
    bid = codec.decode(Bid, envelope.payload)
    info = replace(make_bid(seller.identity, task_id="t0", request_id=bid.request_id), envelope=envelope)
    order = sign_order(buyer, bid.request_id, info, digest([wire]), NOW, NOW + 5000, **generation)
    return ExecuteCall(order, envelope, (wire,))


@pytest.fixture
def generator(tmp_path: Path) -> Seller:
    return make_seller(generator_config("counter", tmp_path))


def test_a_generation_order_decodes_after_the_prefix_and_its_receipt_covers_the_tokens(
    generator: Seller,
) -> None:
    call = order_for(
        generator, Identity.generate(), "generate/count", PROMPT, max_tokens=3, prefix_tokens=(4, 5)
    )
    job = generator.open_stream(call, NOW + 1)
    decoder = job.model.decoder(job.prompt, job.order.prefix_tokens, job.order.max_tokens)
    tokens = [decoder.step(), decoder.step(), decoder.step(), decoder.step()]
    assert tokens == [6, 7, 8, None]
    receipt = generator.sign_tokens(job, [6, 7, 8], decoder.compute_ms)
    _, result = codec.open_signed(receipt, ExecuteResult, expected_signer=generator.identity.peer_id)
    assert result.outputs_digest == digest([tokens_tensor([6, 7, 8])])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be in"),
        ({"max_tokens": 65}, "max_tokens must be in"),
        ({"max_tokens": 3, "prefix_tokens": (64,)}, "prefix token ids"),
        ({"max_tokens": 3, "prefix_tokens": (-1,)}, "prefix token ids"),
        ({"max_tokens": 64, "prefix_tokens": (1,) * 200}, "over the context"),
    ],
)
def test_generation_orders_the_model_cannot_honour_are_invalid(
    generator: Seller, fields: dict[str, Any], message: str
) -> None:
    call = order_for(generator, Identity.generate(), "generate/count", PROMPT, **fields)
    with pytest.raises(ProtocolError, match=message):
        generator.open_stream(call, NOW + 1)


def test_a_prompt_outside_the_vocabulary_is_invalid(generator: Seller) -> None:
    wire = encode(torch.tensor([[1, 999]]), "prompt")
    call = order_for(generator, Identity.generate(), "generate/count", wire, max_tokens=3)
    with pytest.raises(ProtocolError, match="prompt token ids"):
        generator.open_stream(call, NOW + 1)


def test_a_prefix_changed_after_signing_breaks_the_orders_signature(generator: Seller) -> None:
    call = order_for(
        generator, Identity.generate(), "generate/count", PROMPT, max_tokens=3, prefix_tokens=(4,)
    )
    order = codec.decode(ExecuteOrder, call.order.payload)
    tampered_payload = codec.encode(replace(order, prefix_tokens=(9,)))
    tampered = ExecuteCall(replace(call.order, payload=tampered_payload), call.bid, call.inputs)
    with pytest.raises(SignatureError):
        generator.open_stream(tampered, NOW + 1)


def test_generation_fields_to_a_model_that_does_not_generate_are_invalid(tmp_path: Path) -> None:
    classifier = make_seller(seller_config("sharp", tmp_path))
    wire = encode(digits_batch(2)[0], "x")
    call = order_for(classifier, Identity.generate(), "classify/digits", wire, max_tokens=3)
    with pytest.raises(ProtocolError, match="generation models only"):
        classifier.open_stream(call, NOW + 1)
    plain = order_for(classifier, Identity.generate(), "classify/digits", wire)
    assert classifier.open_stream(plain, NOW + 1).model.generation is None


def test_a_generation_order_sent_to_unary_execute_is_invalid(generator: Seller) -> None:
    call = order_for(generator, Identity.generate(), "generate/count", PROMPT, max_tokens=3)
    with pytest.raises(ProtocolError, match="goes to ExecuteStream"):
        generator.open_order(call, NOW + 1)
