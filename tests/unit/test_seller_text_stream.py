"""The seller's checks on a text generation order: one prompt text tokenised by the peer's own
tokenizer, continued by ``prefix_text`` (UTF-8), refused before any work otherwise
(docs/protocol.md section 10)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from atomic_p2p.errors import ProtocolError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.textgen import TextPieces
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import Bid, ExecuteCall, ExecuteResult, NoBid, RequestBidsCall
from atomic_p2p.requester.messages import build_task, sign_bid_request, sign_order
from atomic_p2p.tensors import digest, encode
from atomic_p2p.testing import make_bid, text_generator_config
from tests.unit.test_seller_stream import IDLE, NOW, make_seller

CAPABILITY = "generate/text"


def text_order(seller: Seller, prompt: bytes, **generation: Any) -> ExecuteCall:
    buyer = Identity.generate()
    task = build_task("t0", CAPABILITY, [], preview=False, max_cost=None, texts=[prompt])
    request = RequestBidsCall(sign_bid_request(buyer, os.urandom(16), [task], NOW, NOW + 5000))
    opened = seller.open_request(request, NOW)
    (envelope,) = seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes
    assert not isinstance(envelope, NoBid)
    bid = codec.decode(Bid, envelope.payload)
    info = replace(make_bid(seller.identity, task_id="t0", request_id=bid.request_id), envelope=envelope)
    order = sign_order(buyer, bid.request_id, info, digest((), (prompt,)), NOW, NOW + 5000, **generation)
    return ExecuteCall(order, envelope, (), (prompt,))


@pytest.fixture
def words(tmp_path: Path) -> Seller:
    return make_seller(text_generator_config("words", tmp_path, tokenizer="word", words=("a", "b", "c", "d")))


def test_the_peer_generates_after_prompt_and_prefix_text_by_its_own_tokenizer(words: Seller) -> None:
    job = words.open_stream(text_order(words, b"a", max_tokens=2, prefix_text=b" b"), NOW + 1)
    assert job.prompt.tolist() == [[2, 3]]  # "a b" in its word vocabulary
    decoder = job.model.decoder(job.prompt, (), job.order.max_tokens)
    assert job.model.tokenizer is not None
    pieces = TextPieces(job.model.tokenizer, job.prompt[0].tolist())
    assert [pieces.add(token) for token in (decoder.step(), decoder.step()) if token is not None] == [
        " c",
        " d",
    ]
    receipt = words.sign_tokens(job, [4, 5], decoder.compute_ms, pieces.text)
    _, result = codec.open_signed(receipt, ExecuteResult, expected_signer=words.identity.peer_id)
    assert result.outputs_digest == digest((), (b" c d",))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": 2, "prefix_text": b"\xff\xfe"}, "not valid UTF-8"),
        ({"max_tokens": 2, "prefix_tokens": (2,)}, "continues by prefix_text"),
        ({"max_tokens": 2, "prefix_text": b" a" * 300}, "over the context"),
    ],
)
def test_text_orders_the_peer_cannot_honour_are_invalid(
    words: Seller, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as refused:
        words.open_stream(text_order(words, b"a", **fields), NOW + 1)
    assert refused.value.code.name == "INVALID_ARGUMENT"


def test_prefix_text_on_a_token_prompt_is_invalid(tmp_path: Path) -> None:
    from tests.unit.test_seller_stream import generator_config, order_for

    seller = make_seller(generator_config("counter", tmp_path))
    wire = encode(torch.tensor([[1, 2]]), "prompt")
    call = order_for(seller, Identity.generate(), "generate/count", wire, max_tokens=2, prefix_text=b"x")
    with pytest.raises(ProtocolError, match="prompt is token ids"):
        seller.open_stream(call, NOW + 1)
