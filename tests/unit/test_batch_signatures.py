"""One signature over a peer's bids for a request: the Merkle tree, batch envelopes, the seller
signing them and an order executing one of them (docs/protocol.md section 3.1)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_p2p import identity, merkle
from atomic_p2p.errors import SignatureError
from atomic_p2p.identity import BatchProof, Envelope, Identity, verify, verify_many
from atomic_p2p.peer.node import load_models
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.strategies import Load
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import Bid, BidRequest, ExecuteCall, ExecuteResult, NoBid, RequestBidsCall
from atomic_p2p.requester.messages import build_task, sign_bid_request, sign_order
from atomic_p2p.tensors import digest, encode
from atomic_p2p.testing import digits_batch, make_bid, seller_config

ALICE = Identity.from_seed(b"alice")
BID = "atomic.v1.Bid"
NOW = 1_700_000_000_000
IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=4)


def _reference_root(payloads: list[bytes]) -> bytes:
    """RFC 9162 MTH written straight from its definition."""
    if len(payloads) == 1:
        return hashlib.sha256(b"\x00" + payloads[0]).digest()
    k = 1
    while k * 2 < len(payloads):
        k *= 2
    left, right = _reference_root(payloads[:k]), _reference_root(payloads[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=40))
def test_every_proof_leads_to_the_rfc_9162_root(payloads: list[bytes]) -> None:
    root, proofs = merkle.tree(payloads)
    assert root == _reference_root(payloads)
    for index, (payload, proof) in enumerate(zip(payloads, proofs, strict=True)):
        assert merkle.root_from_proof(payload, index, len(payloads), proof) == root
        assert len(proof) <= (len(payloads) - 1).bit_length()  # a short proof: log2(n) hashes at most


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_a_proof_for_another_index_or_of_another_length_does_not_lead_to_the_root(count: int) -> None:
    payloads = [bytes([i]) * 3 for i in range(count)]
    root, proofs = merkle.tree(payloads)
    for index, proof in enumerate(proofs):
        for other in range(count):
            if other != index:
                assert _root_or_none(payloads[index], other, count, proof) != root
        assert _root_or_none(payloads[index], index, count, (*proof, root)) is None
        if proof:
            assert _root_or_none(payloads[index], index, count, proof[:-1]) is None
    with pytest.raises(SignatureError, match="out of range"):
        merkle.root_from_proof(payloads[0], count, count, proofs[0])


def _root_or_none(payload: bytes, index: int, count: int, path: tuple[bytes, ...]) -> bytes | None:
    try:
        return merkle.root_from_proof(payload, index, count, path)
    except SignatureError:
        return None


def test_a_batch_verifies_envelope_by_envelope_with_one_signature_among_them() -> None:
    payloads = [os.urandom(50) for _ in range(5)]
    envelopes = ALICE.sign_batch(BID, payloads)
    assert len({envelope.signature for envelope in envelopes}) == 1
    for envelope in envelopes:
        assert verify(envelope, BID, ALICE.peer_id) == ALICE.peer_id
    with mock.patch.object(identity, "crypto_sign_open", wraps=identity.crypto_sign_open) as checks:
        assert verify_many([(envelope, BID) for envelope in envelopes]) == [ALICE.peer_id] * 5
    assert checks.call_count == 1


def test_a_swapped_payload_a_moved_proof_or_a_lone_signature_is_refused() -> None:
    first, second, third = ALICE.sign_batch(BID, [b"one", b"two", b"three"])
    assert first.batch is not None and second.batch is not None
    forged = [
        replace(first, payload=b"ONE"),
        replace(first, batch=second.batch),
        replace(first, batch=BatchProof(3, 0, second.batch.path)),
        replace(first, batch=BatchProof(4, 0, first.batch.path)),  # the signature covers the count
        replace(first, batch=None),  # a batch signature never passes as a single one
        replace(ALICE.sign(BID, b"one"), batch=first.batch),  # nor the other way round
        replace(first, payload_type="atomic.v1.ExecuteResult"),
    ]
    results = verify_many([(envelope, BID) for envelope in [third, *forged]])
    assert results[0] == ALICE.peer_id
    assert all(isinstance(result, SignatureError) for result in results[1:])
    wire = codec.decode(RequestBidsCall, codec.encode(RequestBidsCall(second))).request
    assert wire == second  # the proof travels


# --- the seller -------------------------------------------------------------------------------


@pytest.fixture
def seller(tmp_path: Path) -> Seller:
    config = seller_config("sharp", tmp_path, confidence=0.9, price=0.01)
    return Seller(
        identity=Identity.generate(),
        models=load_models(config),
        config=config,
        started_at_ms=NOW - 1000,
        clock=lambda: NOW + 5,
    )


def _ask(seller: Seller, buyer: Identity, capabilities: list[str], *, batch: bool) -> list[Envelope | NoBid]:
    wire = encode(digits_batch(2)[0], "x")
    tasks = [build_task(f"t{i}", c, [wire], preview=False, max_cost=None) for i, c in enumerate(capabilities)]
    envelope = sign_bid_request(buyer, os.urandom(16), tasks, NOW, NOW + 5000)
    if not batch:  # a requester that predates batch signatures
        request = codec.decode(BidRequest, envelope.payload)
        envelope = codec.sign(buyer, replace(request, batch_signatures=False))
    opened = seller.open_request(RequestBidsCall(envelope), NOW)
    return list(seller.answer(opened, seller.decide(opened, IDLE), NOW).outcomes)


def test_the_seller_signs_a_requests_bids_once_and_each_order_executes(seller: Seller) -> None:
    buyer = Identity.generate()
    outcomes = _ask(seller, buyer, ["classify/digits", "translate/fr", "classify/digits"], batch=True)
    first, declined, last = outcomes
    assert isinstance(declined, NoBid) and not isinstance(first, NoBid) and not isinstance(last, NoBid)
    assert first.signature == last.signature and first.batch == BatchProof(2, 0, first.batch.path)  # type: ignore[union-attr]
    for envelope in (first, last):
        _, bid = codec.open_signed(envelope, Bid, expected_signer=seller.identity.peer_id)
        info = replace(
            make_bid(seller.identity, task_id=bid.task_id, request_id=bid.request_id), envelope=envelope
        )
        inputs = (encode(digits_batch(2)[0], "x"),)
        order = sign_order(buyer, bid.request_id, info, digest(inputs), NOW, NOW + 5000)
        reply = seller.perform(seller.open_order(ExecuteCall(order, envelope, inputs), NOW + 1))
        _, result = codec.open_signed(reply.result, ExecuteResult, expected_signer=seller.identity.peer_id)
        assert result.bid_digest == hashlib.sha256(envelope.payload).digest()


def test_a_request_with_no_bid_to_sign_gets_its_no_bids(seller: Seller) -> None:
    outcomes = _ask(seller, Identity.generate(), ["translate/fr", "translate/de"], batch=True)
    assert [type(outcome) for outcome in outcomes] == [NoBid, NoBid]


def test_a_requester_that_does_not_ask_for_batches_gets_a_signature_per_bid(seller: Seller) -> None:
    outcomes = _ask(seller, Identity.generate(), ["classify/digits", "classify/digits"], batch=False)
    assert all(isinstance(envelope, Envelope) and envelope.batch is None for envelope in outcomes)
    assert len({envelope.signature for envelope in outcomes if isinstance(envelope, Envelope)}) == 2


def test_a_whole_batch_is_checked_against_its_rebuilt_tree_and_a_bad_proof_still_fails_alone() -> None:
    envelopes = ALICE.sign_batch(BID, [os.urandom(40) for _ in range(7)])
    items = [(envelope, BID) for envelope in reversed(envelopes)]  # order does not matter
    with mock.patch.object(merkle, "root_from_proof", wraps=merkle.root_from_proof) as one_by_one:
        assert verify_many(items) == [ALICE.peer_id] * 7
    assert one_by_one.call_count == 0  # every leaf here: the tree is rebuilt once
    third = envelopes[2]
    assert third.batch is not None
    bent = replace(third, batch=BatchProof(7, 2, (os.urandom(32), *third.batch.path[1:])))
    results = verify_many([(envelope if envelope is not third else bent, BID) for envelope in envelopes])
    assert isinstance(results[2], SignatureError)
    assert results[:2] + results[3:] == [ALICE.peer_id] * 6
    twice = verify_many([(envelopes[0], BID), *((envelope, BID) for envelope in envelopes)])
    assert twice == [ALICE.peer_id] * 8  # a leaf sent twice: checked one by one, still fine
