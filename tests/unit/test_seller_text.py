"""The seller on text tasks: bad text at RequestBids and at Execute gets its own refusal."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from atomic_p2p.errors import LimitExceededError, ProtocolError, TextError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.node import load_models
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.strategies import Load
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import Bid, ExecuteCall, NoBid, NoBidReason, RequestBidsCall
from atomic_p2p.requester.messages import build_task, sign_bid_request, sign_order
from atomic_p2p.tensors import TextLimits, digest
from atomic_p2p.testing import make_bid, text_seller_config

NOW = 1_700_000_000_000
IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=4)
BUYER = Identity.from_seed(b"buyer")


@pytest.fixture
def seller(tmp_path: Path) -> Seller:
    config = text_seller_config("chars", tmp_path, tokenizer="char", max_input_tokens=8)
    return Seller(
        identity=Identity.generate(),
        models=load_models(config),
        config=config,
        started_at_ms=NOW - 1000,
        text_limits=TextLimits(max_texts=4, max_text_bytes=64, max_total_bytes=128),
        clock=lambda: NOW + 5,
    )


def call_for_bids(texts: list[bytes], *, preview: bool) -> RequestBidsCall:
    task = build_task("t0", "classify/sentiment", [], preview=preview, max_cost=None, texts=texts)
    return RequestBidsCall(sign_bid_request(BUYER, os.urandom(16), [task], NOW, NOW + 5000))


def won(seller: Seller, texts: list[bytes]) -> tuple[Bid, ExecuteCall]:
    """A bid made without a preview (so the peer could not count), and an order carrying ``texts``."""
    opened = seller.open_request(call_for_bids([b"x" * len(text) for text in texts], preview=False), NOW)
    (envelope,) = seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes
    assert not isinstance(envelope, NoBid)
    bid = codec.decode(Bid, envelope.payload)
    info = replace(make_bid(seller.identity, task_id="t0", request_id=bid.request_id), envelope=envelope)
    order = sign_order(BUYER, bid.request_id, info, digest([], texts), NOW, NOW + 5000)
    return bid, ExecuteCall(order, envelope, (), tuple(texts))


def test_a_previewed_text_over_the_token_limit_is_declined_with_the_count(seller: Seller) -> None:
    opened = seller.open_request(call_for_bids([b"short", b"far too long"], preview=True), NOW)
    (outcome,) = seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes
    assert isinstance(outcome, NoBid) and outcome.reason is NoBidReason.CONSTRAINT_VIOLATED
    assert "12 input tokens" in outcome.detail and "max_input_tokens 8" in outcome.detail


def test_preview_text_that_is_not_utf8_or_over_the_limits_is_refused(seller: Seller) -> None:
    with pytest.raises(TextError, match="text 1 is not UTF-8"):
        seller.open_request(call_for_bids([b"ok", b"\xc3\x28"], preview=True), NOW)
    with pytest.raises(LimitExceededError, match="5 texts"):
        seller.open_request(call_for_bids([b"a"] * 5, preview=True), NOW)


def test_an_order_with_good_text_runs(seller: Seller) -> None:
    _, call = won(seller, [b"good", b"bad"])
    job = seller.open_order(call, NOW + 1)
    assert job.inputs["input_ids"].shape == (2, 4)
    reply = seller.perform(job)
    assert reply.outputs[0].shape == (2, 2)


def test_an_order_with_bad_text_gets_its_own_refusal_and_the_seller_serves_on(seller: Seller) -> None:
    _, call = won(seller, [b"good", b"\xff"])
    with pytest.raises(TextError, match="text 1 is not UTF-8") as caught:
        seller.open_order(call, NOW + 1)
    assert caught.value.code.name == "INVALID_ARGUMENT"
    _, call = won(seller, [b"a" * 65])
    with pytest.raises(LimitExceededError, match="text 0: 65 bytes"):
        seller.open_order(call, NOW + 1)
    _, call = won(seller, [b"far too long"])
    with pytest.raises(ProtocolError, match=r"a text of 12 tokens .* exceeds max_input_tokens 8"):
        seller.open_order(call, NOW + 1)
    _, call = won(seller, [b"good"])
    forged = replace(call, texts=(b"good", b"bad"))
    with pytest.raises(ProtocolError, match="digest"):
        seller.open_order(forged, NOW + 1)
    assert seller.perform(seller.open_order(call, NOW + 1)).outputs[0].shape == (1, 2)


def test_a_confidence_strategy_bids_its_softmax_on_the_tokenised_preview(tmp_path: Path) -> None:
    config = text_seller_config("words", tmp_path, tokenizer="word")
    (model_config,) = config.models
    config = replace(config, models=(replace(model_config, strategy="confidence", strategy_options={}),))
    models = load_models(config)
    seller = Seller(
        identity=Identity.generate(),
        models=models,
        config=config,
        started_at_ms=NOW - 1000,
        clock=lambda: NOW,
    )
    texts = ["great great great", "awful"]
    opened = seller.open_request(call_for_bids([text.encode() for text in texts], preview=True), NOW)
    assert opened.has_preview
    (envelope,) = seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes
    assert not isinstance(envelope, NoBid)
    bid = codec.decode(Bid, envelope.payload)
    assert bid.confidence_score == pytest.approx(models["words-model"].text_confidence(texts), abs=1e-6)
    assert not bid.confidence_unknown and bid.confidence_score > 0.9
