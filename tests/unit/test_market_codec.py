"""The market codec: the same bytes as the generated protobuf code, round trips, refusals, and the
rule that only codecs and transports import the generated code."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p._proto.atomic.v1 import envelope_pb2, gossip_pb2, market_pb2, tensor_pb2
from atomic_p2p.errors import ProtocolError, SignatureError, TensorError
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import (
    Bid,
    BidGradientCall,
    BidGradientReply,
    BidGradientUpdate,
    BidRequest,
    ExecuteCall,
    ExecuteOrder,
    ExecuteReply,
    ExecuteResult,
    FeedbackCall,
    FeedbackKind,
    FeedbackNotice,
    FeedbackReply,
    NoBid,
    NoBidReason,
    RequestBidsCall,
    RequestBidsReply,
    TaskSpec,
    TensorSlice,
    TensorSpec,
    TextSpec,
    TokenChunk,
)
from atomic_p2p.requester.messages import TaskRef, parse_bid
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.tensors import WireTensor
from atomic_p2p.terms import ModelConstraints, Resources

PACKAGE = Path(__file__).resolve().parents[2] / "atomic_p2p"
# The codecs and the transports: the only modules that may import the generated code.
MAY_IMPORT_PROTO = {
    "protocol/codec.py",
    "protocol/wire.py",
    "gossip/codec.py",
    "gossip/transport.py",
    "channels.py",
}

WIRE = WireTensor("x", "float32", (1, 2), b"\x00" * 8)
ENVELOPE = Envelope(b"k" * 32, "atomic.v1.Bid", b"payload", b"s" * 64)


def _envelope_proto(envelope: Envelope = ENVELOPE) -> envelope_pb2.SignedEnvelope:
    return envelope_pb2.SignedEnvelope(
        public_key=envelope.public_key,
        payload_type=envelope.payload_type,
        payload=envelope.payload,
        signature=envelope.signature,
    )


def _tensor_proto() -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(name="x", dtype=tensor_pb2.D_TYPE_FLOAT32, shape=[1, 2], data=b"\x00" * 8)


BID = Bid(
    request_id=b"r" * 16,
    task_id="t1",
    task_digest=b"d" * 32,
    peer_id=b"p" * 32,
    model_id="m",
    confidence_score=0.5,
    expected_latency_ms=1.25,
    resource_requirements=Resources(0.25, 16.0, 0.0),
    cost_estimate=0.004,
    capabilities=("classify/digits",),
    constraints=ModelConstraints(0, ("en",), 256),
    issued_at_ms=1_700_000_000_000,
    valid_until_ms=1_700_000_010_000,
    strategy="confidence",
    bid_values=(0.5, 1.5),
    reusable_ttl_ms=2000,
    record_seq=7,
    confidence_unknown=True,
)

# Each domain value beside the message the generated code builds for it, field for field.
PAIRS = {
    "TaskSpec": (
        TaskSpec("t1", "classify/digits", "m", (TensorSpec("x", "float32", (1, 2)),), (WIRE,), 0.5, 3, "en"),
        market_pb2.TaskSpec(
            task_id="t1",
            capability="classify/digits",
            model_id="m",
            inputs=[tensor_pb2.TensorSpec(name="x", dtype=tensor_pb2.D_TYPE_FLOAT32, shape=[1, 2])],
            preview=[_tensor_proto()],
            max_cost=0.5,
            input_tokens=3,
            language="en",
        ),
    ),
    "TaskSpec with texts": (
        TaskSpec("t2", "classify/sentiment", text=TextSpec(2, 7), text_preview=(b"good", "h\u00e9".encode())),
        market_pb2.TaskSpec(
            task_id="t2",
            capability="classify/sentiment",
            text=market_pb2.TextSpec(count=2, total_bytes=7),
            text_preview=[b"good", "h\u00e9".encode()],
        ),
    ),
    "BidRequest": (
        BidRequest(b"r" * 16, b"q" * 32, 10, 20, (b"task-a", b"task-b"), True),
        market_pb2.BidRequest(
            request_id=b"r" * 16,
            requester_id=b"q" * 32,
            issued_at_ms=10,
            deadline_ms=20,
            tasks=[b"task-a", b"task-b"],
            gradient_mode=True,
        ),
    ),
    "Bid": (
        BID,
        market_pb2.Bid(
            request_id=b"r" * 16,
            task_id="t1",
            task_digest=b"d" * 32,
            peer_id=b"p" * 32,
            model_id="m",
            confidence_score=0.5,
            expected_latency_ms=1.25,
            resource_requirements=gossip_pb2.ResourceRequirements(cpu_cores=0.25, memory_mb=16.0),
            cost_estimate=0.004,
            capabilities=["classify/digits"],
            constraints=gossip_pb2.ModelConstraints(supported_languages=["en"], max_batch=256),
            issued_at_ms=1_700_000_000_000,
            valid_until_ms=1_700_000_010_000,
            strategy="confidence",
            bid_values=[0.5, 1.5],
            reusable_ttl_ms=2000,
            record_seq=7,
            confidence_unknown=True,
        ),
    ),
    "ExecuteOrder/generation": (
        ExecuteOrder(b"r" * 16, "t1", b"d" * 32, 10, b"i" * 32, 30, max_tokens=8, prefix_tokens=(5, 6)),
        market_pb2.ExecuteOrder(
            request_id=b"r" * 16,
            task_id="t1",
            bid_digest=b"d" * 32,
            issued_at_ms=10,
            inputs_digest=b"i" * 32,
            deadline_ms=30,
            max_tokens=8,
            prefix_tokens=[5, 6],
        ),
    ),
    "ExecuteOrder/text generation": (
        ExecuteOrder(b"r" * 16, "t1", b"d" * 32, 10, b"i" * 32, 30, max_tokens=8, prefix_text="é".encode()),
        market_pb2.ExecuteOrder(
            request_id=b"r" * 16,
            task_id="t1",
            bid_digest=b"d" * 32,
            issued_at_ms=10,
            inputs_digest=b"i" * 32,
            deadline_ms=30,
            max_tokens=8,
            prefix_text="é".encode(),
        ),
    ),
    "ExecuteOrder": (
        ExecuteOrder(b"r" * 16, "t1", b"d" * 32, 10, b"i" * 32, 30),
        market_pb2.ExecuteOrder(
            request_id=b"r" * 16,
            task_id="t1",
            bid_digest=b"d" * 32,
            issued_at_ms=10,
            inputs_digest=b"i" * 32,
            deadline_ms=30,
        ),
    ),
    "ExecuteResult": (
        ExecuteResult(b"r" * 16, "t1", b"p" * 32, "m", b"d" * 32, b"o" * 32, 0.5, 11, 0.004),
        market_pb2.ExecuteResult(
            request_id=b"r" * 16,
            task_id="t1",
            peer_id=b"p" * 32,
            model_id="m",
            bid_digest=b"d" * 32,
            outputs_digest=b"o" * 32,
            latency_ms=0.5,
            finished_at_ms=11,
            cost_charged=0.004,
        ),
    ),
    "FeedbackNotice": (
        FeedbackNotice(b"r" * 16, "t1", b"q" * 32, FeedbackKind.LOSS, 0.1, 0.7, 0.0, 12, "m"),
        market_pb2.FeedbackNotice(
            request_id=b"r" * 16,
            task_id="t1",
            requester_id=b"q" * 32,
            kind=market_pb2.FEEDBACK_KIND_LOSS,
            clearing_price=0.1,
            score_to_win=0.7,
            issued_at_ms=12,
            model_id="m",
        ),
    ),
    "BidGradientUpdate": (
        BidGradientUpdate(b"r" * 16, "t1", b"q" * 32, (0.5,), (0.25,), WIRE, 0.01, 13),
        market_pb2.BidGradientUpdate(
            request_id=b"r" * 16,
            task_id="t1",
            requester_id=b"q" * 32,
            loss_grad=[0.5],
            share_grad=[0.25],
            output_grad=_tensor_proto(),
            price=0.01,
            issued_at_ms=13,
        ),
    ),
    "RequestBidsCall": (
        RequestBidsCall(ENVELOPE),
        market_pb2.RequestBidsRequest(request=_envelope_proto()),
    ),
    "RequestBidsReply": (
        RequestBidsReply((ENVELOPE, NoBid("t2", NoBidReason.OVERLOADED, "busy"))),
        market_pb2.RequestBidsResponse(
            outcomes=[
                market_pb2.BidOutcome(bid=_envelope_proto()),
                market_pb2.BidOutcome(
                    no_bid=market_pb2.NoBid(
                        task_id="t2", reason=market_pb2.NO_BID_REASON_OVERLOADED, detail="busy"
                    )
                ),
            ]
        ),
    ),
    "ExecuteCall": (
        ExecuteCall(ENVELOPE, ENVELOPE, (WIRE,)),
        market_pb2.ExecuteRequest(order=_envelope_proto(), bid=_envelope_proto(), inputs=[_tensor_proto()]),
    ),
    "ExecuteCall with texts": (
        ExecuteCall(ENVELOPE, ENVELOPE, (), (b"good", b"\xff")),
        market_pb2.ExecuteRequest(order=_envelope_proto(), bid=_envelope_proto(), texts=[b"good", b"\xff"]),
    ),
    "ExecuteReply": (
        ExecuteReply(ENVELOPE, (WIRE,)),
        market_pb2.ExecuteResponse(result=_envelope_proto(), outputs=[_tensor_proto()]),
    ),
    "FeedbackCall": (FeedbackCall(ENVELOPE), market_pb2.FeedbackRequest(notice=_envelope_proto())),
    "FeedbackReply": (
        FeedbackReply(True, {"price_multiplier": 1.5}),
        market_pb2.FeedbackResponse(accepted=True, strategy_parameters={"price_multiplier": 1.5}),
    ),
    "BidGradientCall": (BidGradientCall(ENVELOPE), market_pb2.BidGradientRequest(update=_envelope_proto())),
    "BidGradientReply": (
        BidGradientReply(True, 0.75),
        market_pb2.BidGradientResponse(applied=True, applied_norm=0.75),
    ),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_encode_gives_the_generated_codes_bytes_and_decodes_back(name: str) -> None:
    value, message = PAIRS[name]
    assert codec.encode(value) == message.SerializeToString()
    assert codec.decode(type(value), codec.encode(value)) == value


def test_bid_fields_are_the_bid_decoded_field_for_field() -> None:
    bid, _ = PAIRS["Bid"]
    assert isinstance(bid, Bid)
    fields = codec.decode_bid_fields(codec.encode(bid))
    assert fields._fields == tuple(f.name for f in dataclasses.fields(Bid))
    assert Bid(*fields) == bid == codec.decode(Bid, codec.encode(bid))
    with pytest.raises(ProtocolError, match="malformed Bid"):
        codec.decode_bid_fields(b"\xff\xff\xff")


def test_a_bound_bid_keeps_every_term_the_peer_signed() -> None:
    identity = Identity.from_seed(b"bidder")
    task = TaskRef(BID.task_id, b"spec")
    bid = dataclasses.replace(BID, peer_id=identity.peer_id.raw, task_digest=task.digest, record_seq=9)
    envelope = codec.sign(identity, bid)
    info = parse_bid(envelope, identity.peer_id, "host:1", bid.request_id, task, bid.valid_until_ms - 1)
    assert info == BidInfo(
        peer_id=identity.peer_id,
        address="host:1",
        task_id=bid.task_id,
        model_id=bid.model_id,
        confidence=0.5,
        expected_latency_ms=1.25,
        cost=bid.cost_estimate,
        valid_until_ms=bid.valid_until_ms,
        strategy=bid.strategy,
        envelope=envelope,
        capabilities=bid.capabilities,
        constraints=bid.constraints,
        resources=bid.resource_requirements,
        request_id=bid.request_id,
        reusable_ttl_ms=2000,
        record_seq=9,
        reused=False,
        bid_values=bid.bid_values,
        confidence_unknown=True,
    )


CHUNKS = {
    "tokens": (
        TokenChunk((1, 2, 2**40)),
        market_pb2.ExecuteStreamResponse(tokens=market_pb2.TokenChunk(tokens=[1, 2, 2**40])),
    ),
    "text": (
        TokenChunk((7,), " wörld"),
        market_pb2.ExecuteStreamResponse(tokens=market_pb2.TokenChunk(tokens=[7], text=" wörld")),
    ),
    "slice": (
        TensorSlice("y", "float32", (2, 3), 8, b"\x01" * 16),
        market_pb2.ExecuteStreamResponse(
            slice=market_pb2.TensorSlice(
                name="y", dtype=tensor_pb2.D_TYPE_FLOAT32, shape=[2, 3], offset=8, data=b"\x01" * 16
            )
        ),
    ),
    "result": (ENVELOPE, market_pb2.ExecuteStreamResponse(result=_envelope_proto())),
}


@pytest.mark.parametrize("name", sorted(CHUNKS))
def test_stream_chunks_give_the_generated_codes_bytes_and_decode_back(name: str) -> None:
    value, message = CHUNKS[name]
    assert codec.encode_chunk(value) == message.SerializeToString()
    assert codec.decode_chunk(message.SerializeToString()) == value


def test_a_slices_data_is_a_view_of_the_message_and_parses_as_protobuf_does() -> None:
    value, message = CHUNKS["slice"]
    raw = message.SerializeToString()
    piece = codec.decode_chunk(raw)
    assert isinstance(piece, TensorSlice) and isinstance(piece.data, memoryview)
    assert piece.data.obj is raw  # no copy of the data
    # Fields in another order, data twice (the last wins) and shape split in two: protobuf's rules.
    inner = (
        market_pb2.TensorSlice(data=b"first", shape=[2]).SerializeToString()
        + market_pb2.TensorSlice(name="y", offset=8).SerializeToString()
        + market_pb2.TensorSlice(
            data=b"\x01" * 16, shape=[3], dtype=tensor_pb2.D_TYPE_FLOAT32
        ).SerializeToString()
    )
    shuffled = market_pb2.ExecuteStreamResponse(slice=market_pb2.TensorSlice.FromString(inner))
    outer = b"\x12" + bytes([len(inner)]) + inner
    assert market_pb2.ExecuteStreamResponse.FromString(outer) == shuffled
    assert codec.decode_chunk(outer) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x05\x0a\x01y",  # the slice is cut short
        b"\x12\x03\x0a\x01y\x12\x00",  # a second top-level field after the slice
        b"\x12\x02\x2a\x05",  # data longer than the message
        b"\x12\x03\x0a\x01\xff",  # a name that is not UTF-8
    ],
)
def test_a_malformed_slice_is_refused_as_the_generic_parser_refuses_it(raw: bytes) -> None:
    with pytest.raises((ProtocolError, TensorError)):
        codec.decode_chunk(raw)


def test_a_stream_message_with_no_part_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no tokens, slice or result"):
        codec.decode_chunk(b"")


def test_execute_call_bytes_parse_as_the_stream_request() -> None:
    call = ExecuteCall(ENVELOPE, ENVELOPE, (WIRE,))
    stream_request = market_pb2.ExecuteStreamRequest.FromString(codec.encode(call))
    assert stream_request.SerializeToString() == codec.encode(call)


def test_an_empty_submessage_is_still_sent() -> None:
    """A bid with no declared constraints or resources still carries both (empty) submessages, as
    the peer always sent them: the signed bytes must not change."""
    bare = Bid(**{**{f: getattr(BID, f) for f in BID.__slots__}, "constraints": ModelConstraints()})  # type: ignore[arg-type]
    reference = market_pb2.Bid.FromString(codec.encode(BID))
    reference.constraints.Clear()
    assert reference.HasField("constraints")
    assert codec.encode(bare) == reference.SerializeToString()


def test_garbage_is_a_protocol_error_naming_the_wire_message() -> None:
    with pytest.raises(ProtocolError, match="malformed ExecuteRequest"):
        codec.decode(ExecuteCall, b"\xff\xff\xff")


def test_an_unknown_dtype_is_a_tensor_error() -> None:
    raw = market_pb2.ExecuteRequest(inputs=[tensor_pb2.Tensor(name="x", dtype=99)]).SerializeToString()
    with pytest.raises(TensorError, match="not accepted"):
        codec.decode(ExecuteCall, raw)


def test_a_newer_peers_no_bid_reason_survives_the_round_trip() -> None:
    raw = market_pb2.RequestBidsResponse(
        outcomes=[market_pb2.BidOutcome(no_bid=market_pb2.NoBid(task_id="t", reason=42))]  # type: ignore[arg-type]
    ).SerializeToString()
    reply = codec.decode(RequestBidsReply, raw)
    (outcome,) = reply.outcomes
    assert isinstance(outcome, NoBid) and outcome.reason == 42
    assert codec.no_bid_reason_name(outcome.reason) == "reason_42"
    assert codec.encode(reply) == raw


def test_an_outcome_with_neither_bid_nor_no_bid_is_refused() -> None:
    raw = market_pb2.RequestBidsResponse(outcomes=[market_pb2.BidOutcome()]).SerializeToString()
    with pytest.raises(ProtocolError, match="neither"):
        codec.decode(RequestBidsReply, raw)


def test_unset_feedback_kind_decodes_as_none() -> None:
    raw = market_pb2.FeedbackNotice(task_id="t").SerializeToString()
    assert codec.decode(FeedbackNotice, raw).kind is None


def test_sign_then_open_returns_the_signer_and_the_value() -> None:
    identity = Identity.generate()
    envelope = codec.sign(identity, BID)
    assert envelope.payload_type == "atomic.v1.Bid"
    signer, opened = codec.open_signed(envelope, Bid, expected_signer=identity.peer_id)
    assert signer == identity.peer_id and opened == BID


def test_open_checks_the_signature_before_parsing() -> None:
    identity = Identity.generate()
    envelope = codec.sign(identity, BID)
    forged = Envelope(envelope.public_key, envelope.payload_type, b"\xff not a bid", envelope.signature)
    with pytest.raises(SignatureError):
        codec.open_signed(forged, Bid)
    with pytest.raises(SignatureError, match=r"expected a signed atomic\.v1\.ExecuteOrder"):
        codec.open_signed(envelope, ExecuteOrder)


def _imports_proto(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atomic_p2p._proto"):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("atomic_p2p._proto") for a in node.names):
            return True
    return False


def test_only_codecs_and_transports_import_the_generated_code() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "_proto" not in path.relative_to(PACKAGE).parts[:1] and _imports_proto(path)
    }
    assert importers <= MAY_IMPORT_PROTO, sorted(importers - MAY_IMPORT_PROTO)


def _imports_time(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    return any(
        (isinstance(node, ast.Import) and any(alias.name == "time" for alias in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "time")
        for node in ast.walk(tree)
    )


def test_requester_orchestration_reads_time_only_through_its_clock() -> None:
    readers = sorted(
        str(path.relative_to(PACKAGE)) for path in (PACKAGE / "requester").glob("*.py") if _imports_time(path)
    )
    assert readers == []


def test_model_terms_are_remembered_by_their_bytes_and_the_memory_stays_bounded() -> None:
    from atomic_p2p.protocol import wire

    terms = ModelConstraints(max_input_tokens=512, supported_languages=("en", "de"), max_batch=64)
    message = wire.constraints_to_proto(terms)
    assert wire.constraints_to_proto(terms) is message  # the same shared message
    assert wire.constraints_from_proto(message) == terms
    assert wire.constraints_from_proto(message) is wire.constraints_from_proto(message)
    assert wire.resources_from_proto(wire.resources_to_proto(Resources(0.5, 16.0, 0.0))) == Resources(
        0.5, 16.0, 0.0
    )
    for batch in range(3 * wire._TERMS_REMEMBERED):  # a peer sending ever new terms
        fresh = ModelConstraints(max_batch=batch + 1)
        assert wire.constraints_from_proto(wire.constraints_to_proto(fresh)) == fresh
        assert len(wire._CONSTRAINTS) <= wire._TERMS_REMEMBERED


_SHARED_TERMS = (Resources(1.0, 512, 0), ("classify/digits", "classify/any"), ModelConstraints(max_batch=64))


@settings(max_examples=60, deadline=None)
@given(
    bids=st.lists(
        st.tuples(
            st.text(max_size=8),  # task id
            st.binary(max_size=32),  # task digest
            st.floats(0, 1),  # confidence
            st.floats(0, 1e4),  # latency
            st.floats(0, 1e3),  # cost
            st.lists(st.floats(-10, 10), max_size=3),  # bid values
            st.booleans(),  # confidence unknown
            st.sampled_from(["small", "large", ""]),  # model id: bids of several models in one batch
            st.integers(0, 2),  # record seq (0: left off the wire)
            st.booleans(),  # the model's own terms objects, or equal copies of them
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_batch_of_bids_encodes_each_bid_to_what_encode_gives_it(bids: list[tuple]) -> None:  # type: ignore[type-arg]
    made = []
    for task_id, task_digest, confidence, latency, cost, values, unknown, model, seq, same in bids:
        resources, capabilities, constraints = _SHARED_TERMS
        if not same:
            resources, capabilities, constraints = (
                replace(resources),
                tuple(capabilities),
                replace(constraints),
            )
        made.append(
            Bid(
                request_id=b"\x01" * 16,
                task_id=task_id,
                task_digest=task_digest,
                peer_id=b"\x02" * 32,
                model_id=model,
                confidence_score=confidence,
                expected_latency_ms=latency,
                resource_requirements=resources,
                cost_estimate=cost,
                capabilities=capabilities,
                constraints=constraints,
                issued_at_ms=1000,
                valid_until_ms=31000,
                strategy="fixed",
                bid_values=tuple(values),
                reusable_ttl_ms=5000 if seq else 0,
                record_seq=seq,
                confidence_unknown=unknown,
            )
        )
    payloads = codec.encode_bids(made)
    assert [codec.decode(Bid, payload) for payload in payloads] == [
        codec.decode(Bid, codec.encode(bid)) for bid in made
    ]
    signer = Identity.generate()
    envelopes = codec.sign_batch(signer, made)
    assert [envelope.payload for envelope in envelopes] == (
        payloads if len(made) > 1 else [codec.encode(made[0])]
    )
    for envelope, bid in zip(envelopes, made, strict=True):
        assert codec.open_signed(envelope, Bid, expected_signer=signer.peer_id)[1] == codec.decode(
            Bid, codec.encode(bid)
        )


def test_a_reply_of_batched_bids_encodes_as_the_generated_code_builds_it() -> None:
    envelopes = Identity.generate().sign_batch("atomic.v1.Bid", [b"first", b"second", b"third"])
    outcomes = (
        envelopes[0],
        NoBid("t1", NoBidReason.OVERLOADED, ""),
        envelopes[1],
        NoBid("t3", 42),
        envelopes[2],
    )
    wire_reasons = {"t1": market_pb2.NO_BID_REASON_OVERLOADED, "t3": 42}  # 42: a newer peer's reason
    expected = market_pb2.RequestBidsResponse(
        outcomes=[
            market_pb2.BidOutcome(no_bid=market_pb2.NoBid(task_id=o.task_id, reason=wire_reasons[o.task_id]))  # type: ignore[arg-type]
            if isinstance(o, NoBid)
            else market_pb2.BidOutcome(
                bid=envelope_pb2.SignedEnvelope(
                    public_key=o.public_key,
                    payload_type=o.payload_type,
                    payload=o.payload,
                    signature=o.signature,
                    batch=envelope_pb2.BatchProof(
                        leaf_count=3, leaf_index=o.batch.leaf_index, path=list(o.batch.path)
                    ),
                )
            )
            for o in outcomes
        ]
    )
    raw = codec.encode(RequestBidsReply(outcomes))
    assert raw == expected.SerializeToString()
    assert codec.decode(RequestBidsReply, raw).outcomes == outcomes


def test_input_specs_are_remembered_by_bytes_bounded_and_refusals_never_remembered() -> None:
    from atomic_p2p.protocol import wire

    message = wire.spec_to_proto(TensorSpec("x", "float32", (8, 64)))
    first = wire.spec_from_proto(message)
    assert first == TensorSpec("x", "float32", (8, 64)) and wire.spec_from_proto(message) is first
    bad = tensor_pb2.TensorSpec(name="x", dtype=99, shape=[8, 64])
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(TensorError, match="unaccepted dtype"):
            wire.spec_from_proto(bad)
    for rows in range(3 * wire._TERMS_REMEMBERED):  # a requester sending ever new shapes
        spec = TensorSpec("x", "float32", (rows, 64))
        assert wire.spec_from_proto(wire.spec_to_proto(spec)) == spec
        assert len(wire._SPECS) <= wire._TERMS_REMEMBERED


def test_the_two_halves_of_a_bid_are_every_field_of_bid_once() -> None:
    bid = Bid(
        request_id=b"\x01" * 16,
        task_id="t",
        task_digest=b"\x02" * 32,
        peer_id=b"\x03" * 32,
        model_id="m",
        confidence_score=0.5,
        expected_latency_ms=2.0,
        resource_requirements=Resources(1.0, 2.0, 3.0),
        cost_estimate=0.25,
        capabilities=("c",),
        constraints=ModelConstraints(max_input_tokens=5, supported_languages=("en",), max_batch=4),
        issued_at_ms=1,
        valid_until_ms=2,
        strategy="s",
        bid_values=(0.5,),
        reusable_ttl_ms=3,
        record_seq=4,
        confidence_unknown=True,
    )
    shared = {field.name for field, _ in codec._bid_shared(bid).ListFields()}
    own = {field.name for field, _ in codec._bid_own(bid).ListFields()}
    assert not shared & own
    assert shared | own == {field.name for field in market_pb2.Bid.DESCRIPTOR.fields}
    assert len(market_pb2.Bid.DESCRIPTOR.fields) == len(dataclasses.fields(Bid))  # each set above
