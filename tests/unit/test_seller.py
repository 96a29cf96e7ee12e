"""The seller core on its own: frames and the time in, frames out or the error it deserves.

No server, no event loop: the tests call :class:`atomic_p2p.peer.seller.Seller` as the servicer
does, with a `now` they choose, and check what comes back with the codec and real signatures.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from atomic_p2p.errors import ProtocolError, ReplayError, SignatureError, StaleRequestError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.node import load_models
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.strategies import Load
from atomic_p2p.peer.strategies import NoBid as Declined
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    Bid,
    ExecuteCall,
    ExecuteOrder,
    ExecuteResult,
    FeedbackCall,
    FeedbackKind,
    FeedbackNotice,
    NoBid,
    NoBidReason,
    RequestBidsCall,
)
from atomic_p2p.requester.messages import build_task, sign_bid_request, sign_order
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.tensors import digest, encode
from atomic_p2p.testing import digits_batch, make_bid, seller_config

NOW = 1_700_000_000_000
IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=4)


@pytest.fixture
def seller(tmp_path: Path) -> Seller:
    return seller_for(seller_config("sharp", tmp_path, confidence=0.9, price=0.01))


def seller_for(config: PeerConfig) -> Seller:
    return Seller(
        identity=Identity.generate(),
        models=load_models(config),
        config=config,
        started_at_ms=NOW - 1000,
        clock=lambda: NOW + 5,
    )


def call_for_bids(buyer: Identity, capabilities: list[str], *, issued: int = NOW) -> RequestBidsCall:
    wire = encode(digits_batch(2)[0], "x")
    tasks = [build_task(f"t{i}", c, [wire], preview=False, max_cost=None) for i, c in enumerate(capabilities)]
    return RequestBidsCall(sign_bid_request(buyer, os.urandom(16), tasks, issued, issued + 5000))


def test_a_call_for_bids_gets_a_signed_bid_or_a_reasoned_no_bid(seller: Seller) -> None:
    buyer = Identity.generate()
    call = call_for_bids(buyer, ["classify/digits", "translate/fr"])
    opened = seller.open_request(call, NOW)
    reply = seller.answer(opened, seller.decide(opened, IDLE), NOW)
    bid_envelope, no_bid = reply.outcomes
    assert isinstance(no_bid, NoBid) and no_bid.reason is NoBidReason.UNKNOWN_CAPABILITY
    assert not isinstance(bid_envelope, NoBid)
    _, bid = codec.open_signed(bid_envelope, Bid, expected_signer=seller.identity.peer_id)
    assert (bid.task_id, bid.confidence_score, bid.issued_at_ms) == ("t0", pytest.approx(0.9), NOW)
    assert bid.cost_estimate == pytest.approx(0.02)  # price per example x 2 examples


def test_replays_and_stale_requests_are_refused_by_the_callers_clock(seller: Seller) -> None:
    buyer = Identity.generate()
    call = call_for_bids(buyer, ["classify/digits"])
    seller.open_request(call, NOW)
    with pytest.raises(ReplayError):
        seller.open_request(call, NOW + 1)
    with pytest.raises(StaleRequestError, match="before this node started"):
        seller.open_request(call_for_bids(buyer, ["classify/digits"], issued=NOW - 2000), NOW)


@pytest.mark.parametrize("field", ["task_id", "capability", "model_id", "language"])
def test_a_task_field_over_the_length_limit_is_refused_by_name(seller: Seller, field: str) -> None:
    from atomic_p2p.peer.seller import MAX_FIELD_CHARS

    wire = encode(digits_batch(2)[0], "x")
    buyer = Identity.generate()

    def call_with(chars: int) -> RequestBidsCall:
        fields = {"task_id": "t0", "capability": "classify/digits", "model_id": "", "language": ""}
        fields[field] = "y" * chars
        task = build_task(
            fields["task_id"],
            fields["capability"],
            [wire],
            preview=False,
            max_cost=None,
            model_id=fields["model_id"],
            language=fields["language"],
        )
        return RequestBidsCall(sign_bid_request(buyer, os.urandom(16), [task], NOW, NOW + 5000))

    seller.open_request(call_with(MAX_FIELD_CHARS), NOW)  # at the limit: admitted
    with pytest.raises(ProtocolError, match=f"a TaskSpec {field} of {MAX_FIELD_CHARS + 1} chars") as refused:
        seller.open_request(call_with(MAX_FIELD_CHARS + 1), NOW)
    assert "yyyy" not in str(refused.value)  # the untrusted text is not echoed


def _won(seller: Seller, buyer: Identity) -> tuple[BidInfo, ExecuteCall]:
    opened = seller.open_request(call_for_bids(buyer, ["classify/digits"]), NOW)
    (envelope,) = seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes
    assert not isinstance(envelope, NoBid)
    bid = codec.decode(Bid, envelope.payload)
    info = replace(
        make_bid(seller.identity, task_id=bid.task_id, request_id=bid.request_id), envelope=envelope
    )
    inputs = (encode(digits_batch(2)[0], "x"),)
    order = sign_order(buyer, bid.request_id, info, digest(inputs), NOW, NOW + 5000)
    return info, ExecuteCall(order, envelope, inputs)


def test_an_order_runs_once_checked_and_its_receipt_verifies(seller: Seller) -> None:
    buyer = Identity.generate()
    info, call = _won(seller, buyer)
    job = seller.open_order(call, NOW + 1)
    assert job.key == (info.request_id, info.task_id) and job.timeout_s == pytest.approx(4.999)
    reply = seller.perform(job)
    _, result = codec.open_signed(reply.result, ExecuteResult, expected_signer=seller.identity.peer_id)
    assert result.outputs_digest == digest(reply.outputs) and result.finished_at_ms == NOW + 5


def test_an_order_signed_by_another_requester_is_refused(seller: Seller) -> None:
    _, call = _won(seller, Identity.generate())
    intruder = Identity.generate()
    forged = ExecuteCall(
        codec.sign(intruder, codec.decode(ExecuteOrder, call.order.payload)), call.bid, call.inputs
    )
    with pytest.raises(SignatureError, match="not signed by the requester"):
        seller.open_order(forged, NOW + 1)


def test_feedback_teaches_the_strategy_once(seller: Seller) -> None:
    buyer = Identity.generate()
    info, _ = _won(seller, buyer)
    notice = FeedbackNotice(info.request_id, info.task_id, buyer.peer_id.raw, FeedbackKind.WIN, 0.02)
    call = FeedbackCall(codec.sign(buyer, notice))
    reply = seller.feedback(call, NOW + 2)
    assert reply.accepted and reply.strategy_parameters["wins"] == 1
    with pytest.raises(ReplayError):
        seller.feedback(call, NOW + 3)


def _reading_seller(tmp_path: Path) -> Seller:
    """A seller whose model's strategy reads previews (``confidence``: mean max-softmax)."""
    config = seller_config("reader", tmp_path, confidence=0.9, price=0.01)
    model = replace(config.models[0], strategy="confidence", strategy_options={})
    return seller_for(replace(config, models=(model,)))


def _previewed_call(buyer: Identity, batches: list[object]) -> RequestBidsCall:
    tasks = [
        build_task(f"t{i}", "classify/digits", [encode(x, "x")], preview=True, max_cost=None)  # type: ignore[arg-type]
        for i, x in enumerate(batches)
    ]
    return RequestBidsCall(sign_bid_request(buyer, os.urandom(16), tasks, NOW, NOW + 5000))


def _confidences(seller: Seller, call: RequestBidsCall) -> list[float | str]:
    opened = seller.open_request(call, NOW)
    answers: list[float | str] = []
    for decision in seller.decide(opened, IDLE):
        answers.append(decision.reason.name if isinstance(decision, Declined) else decision[1].confidence)
    return answers


def test_previews_of_one_call_run_in_one_forward_pass_with_the_same_confidences(tmp_path: Path) -> None:
    seller = _reading_seller(tmp_path)
    (model,) = seller.models.values()
    batches = [digits_batch(2, offset=2 * i)[0] for i in range(5)]
    calls: list[int] = []
    model.module.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    buyer = Identity.generate()
    together = _confidences(seller, _previewed_call(buyer, batches))
    assert calls == [10]  # five tasks of two rows: one pass
    alone = [_confidences(seller, _previewed_call(buyer, [x]))[0] for x in batches]
    assert calls == [10, 2, 2, 2, 2, 2]
    assert together == pytest.approx(alone, abs=1e-6)
    assert len({round(c, 6) for c in together if isinstance(c, float)}) > 1  # the tasks differ
    assert not model._primed  # nothing kept past the call


def test_primed_previews_give_each_task_its_own_rows_of_the_logits(tmp_path: Path) -> None:
    seller = _reading_seller(tmp_path)
    (model,) = seller.models.values()
    previews = [(digits_batch(rows, offset=3 * i)[0].float(),) for i, rows in enumerate([2, 1, 3, 2])]
    alone = [model._preview_logits(preview) for preview in previews]
    keys = model.prime_previews(previews)
    assert len(keys) == len(previews)
    for preview, own in zip(previews, alone, strict=True):
        assert torch.allclose(model._preview_logits(preview), own, atol=1e-5)
        assert model.preview_confidence(preview) == pytest.approx(model_confidence_alone(own), abs=1e-6)
    model.forget_previews(keys)
    assert not model._primed


def model_confidence_alone(logits: torch.Tensor) -> float:
    return float(torch.softmax(logits, dim=-1).max(dim=-1).values.mean())


def test_a_preview_that_does_not_fit_is_refused_alone_when_previews_run_together(tmp_path: Path) -> None:
    seller = _reading_seller(tmp_path)
    good = digits_batch(2)[0]
    wrong = good[:, :10].contiguous()  # 10 features where the model takes 64
    answers = _confidences(seller, _previewed_call(Identity.generate(), [good, wrong, good]))
    assert isinstance(answers[0], float) and answers[0] == answers[2]
    assert answers[1] == "BAD_INPUT_SPEC"


def test_a_node_shares_the_cores_among_its_workers(tmp_path: Path) -> None:
    from atomic_p2p.peer.node import serving_threads

    config = seller_config("threads", tmp_path)
    assert serving_threads(replace(config, max_concurrency=2), cores=16) == 8
    assert serving_threads(replace(config, max_concurrency=4), cores=2) == 1
    assert serving_threads(replace(config, torch_threads=3), cores=16) == 3
