"""Gossip codec: domain <-> protobuf, signing, and every way a received envelope is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_p2p._proto.atomic.v1 import gossip_pb2, tensor_pb2
from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract
from atomic_p2p.errors import ProtocolError
from atomic_p2p.gossip import codec
from atomic_p2p.gossip.messages import DigestEntry, GossipRequest, GossipResponse
from atomic_p2p.gossip.records import (
    Heartbeat,
    Leave,
    LoadSummary,
    ModelAdvert,
    PeerRecord,
    RecordLimits,
    Rejection,
    RejectReason,
    Signed,
)
from atomic_p2p.identity import Identity
from atomic_p2p.terms import ModelConstraints, Resources

ALICE = Identity.from_seed(b"alice")
BOB = Identity.from_seed(b"bob")
LIMITS = RecordLimits()
MODEL = ModelAdvert(
    "resnet",
    ("classify", "embed"),
    ModelConstraints(max_input_tokens=512, supported_languages=("en", "fr"), max_batch=16),
    price_hint=0.25,
    resources=Resources(cpu_cores=2, memory_mb=512, gpu_memory_mb=0),
    typical_latency_ms=4.5,
    strategy="confidence",
)


def test_an_advert_carries_its_terms_field_for_field() -> None:
    message = gossip_pb2.ModelAdvert(
        model_id="resnet",
        capabilities=["classify", "embed"],
        constraints=gossip_pb2.ModelConstraints(
            max_input_tokens=512, supported_languages=["en", "fr"], max_batch=16
        ),
        price_hint=0.25,
        resources=gossip_pb2.ResourceRequirements(cpu_cores=2, memory_mb=512, gpu_memory_mb=0),
        typical_latency_ms=4.5,
        strategy="confidence",
    )
    assert codec.advert_to_proto(MODEL).SerializeToString() == message.SerializeToString()
    assert codec.advert_from_proto(message) == MODEL


def record(identity: Identity = ALICE, **changes: object) -> PeerRecord:
    base = PeerRecord(
        identity.peer_id,
        ("10.0.0.1:7000",),
        (MODEL,),
        1_700_000_000_000,
        1_700_000_000_000,
        LoadSummary(1, 8, 0.125),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_record_roundtrips_through_proto() -> None:
    original = record()
    assert codec.record_from_proto(codec.record_to_proto(original)) == original


def test_sign_then_open_gives_back_each_kind() -> None:
    for signed in (
        codec.sign_record(ALICE, record()),
        codec.sign_heartbeat(ALICE, Heartbeat(ALICE.peer_id, 5, 9, LoadSummary(2, 4, 0.5))),
        codec.sign_leave(ALICE, Leave(ALICE.peer_id, 5, 1234)),
    ):
        opened = codec.open_envelope(signed.envelope, LIMITS)
        assert isinstance(opened, Signed)
        assert opened.value == signed.value


def rejection(envelope: object, limits: RecordLimits = LIMITS) -> RejectReason:
    result = codec.open_envelope(envelope, limits)  # type: ignore[arg-type]
    assert isinstance(result, Rejection), result
    return result.reason


def test_forged_and_mismatched_envelopes_are_refused() -> None:
    good = codec.sign_record(ALICE, record()).envelope
    assert rejection(replace(good, payload=good.payload + b"\x00")) is RejectReason.BAD_SIGNATURE
    assert rejection(replace(good, signature=bytes(64))) is RejectReason.BAD_SIGNATURE
    assert rejection(replace(good, public_key=BOB.public_key)) is RejectReason.BAD_SIGNATURE
    assert rejection(replace(good, payload_type="atomic.v1.Bid")) is RejectReason.WRONG_TYPE
    # Bob signs a record claiming to be Alice: the signature is fine, the key does not match the id
    claims_alice = codec.sign_record(BOB, record(ALICE)).envelope
    assert rejection(claims_alice) is RejectReason.PEER_ID_MISMATCH


def test_malformed_payload_is_refused_after_the_signature_checks() -> None:
    garbage = ALICE.sign(codec.RECORD_TYPE, b"\xff\xff\xff")
    assert rejection(garbage) is RejectReason.MALFORMED
    short_id = ALICE.sign(codec.HEARTBEAT_TYPE, gossip_pb2.Heartbeat(peer_id=b"short").SerializeToString())
    assert rejection(short_id) is RejectReason.MALFORMED


def test_bounds() -> None:
    tight = RecordLimits(max_record_bytes=200, max_models=2, max_addresses=1, max_string_length=16)
    too_big = codec.sign_record(ALICE, record(models=(MODEL,) * 3)).envelope
    assert rejection(too_big, tight) is RejectReason.TOO_LARGE
    roomy = replace(tight, max_record_bytes=10_000)
    assert rejection(too_big, roomy) is RejectReason.TOO_MANY_MODELS
    two_addresses = codec.sign_record(ALICE, record(addresses=("a:1", "b:2"))).envelope
    assert rejection(two_addresses, roomy) is RejectReason.TOO_MANY_ADDRESSES
    long_capability = replace(MODEL, capabilities=("x" * 17,))
    long = codec.sign_record(ALICE, record(models=(long_capability,))).envelope
    assert rejection(long, roomy) is RejectReason.FIELD_TOO_LONG
    negative = codec.sign_record(ALICE, record(models=(replace(MODEL, price_hint=-1.0),))).envelope
    assert rejection(negative) is RejectReason.INVALID_FIELD


TOKENS = ModelContract(
    TaskKind.EMBEDDING,
    (TensorContract("ids", "int64", (Dim(1, 32),)),),
    (TensorContract("embedding", "float32", (Dim.fixed(8),)),),
)


def test_an_advert_carries_its_contract_field_for_field() -> None:
    advert = replace(MODEL, kind=TaskKind.EMBEDDING, inputs=TOKENS.inputs, outputs=TOKENS.outputs)
    message = codec.advert_to_proto(advert)
    assert gossip_pb2.TaskKind.Name(message.kind) == "TASK_KIND_EMBEDDING"
    assert [(d.min, d.max) for d in message.inputs[0].dims] == [(1, 32)]
    assert tensor_pb2.DType.Name(message.outputs[0].dtype) == "D_TYPE_FLOAT32"
    assert codec.advert_from_proto(message) == advert and advert.contract == TOKENS
    # An advert from a peer that declares nothing (or an older one) has no contract.
    assert codec.advert_from_proto(codec.advert_to_proto(MODEL)).contract is None
    message.kind = 99  # a newer peer's kind: not declared here, the contract still holds
    assert codec.advert_from_proto(message).kind is None


def test_takes_text_round_trips_and_defaults_to_false() -> None:
    text = replace(MODEL, kind=TaskKind.CLASSIFICATION, inputs=TOKENS.inputs, takes_text=True)
    message = codec.advert_to_proto(text)
    assert message.takes_text
    assert codec.advert_from_proto(gossip_pb2.ModelAdvert.FromString(message.SerializeToString())) == text
    # Unset on the wire (a peer older than field 11): takes no text.
    assert not codec.advert_from_proto(codec.advert_to_proto(MODEL)).takes_text


def test_a_contract_out_of_bounds_or_malformed_is_refused() -> None:
    def opened(advert: ModelAdvert, limits: RecordLimits = LIMITS) -> RejectReason | None:
        result = codec.open_envelope(codec.sign_record(ALICE, record(models=(advert,))).envelope, limits)
        return result.reason if isinstance(result, Rejection) else None

    good = replace(MODEL, inputs=TOKENS.inputs, outputs=TOKENS.outputs)
    assert opened(good) is None
    many = replace(MODEL, inputs=tuple(TensorContract(f"x{i}", "float32", ()) for i in range(17)))
    assert opened(many) is RejectReason.INVALID_FIELD
    deep = replace(MODEL, inputs=(TensorContract("x", "float32", (Dim.fixed(1),) * 9),))
    assert opened(deep) is RejectReason.INVALID_FIELD
    assert opened(good, replace(LIMITS, max_tensors=1)) is RejectReason.INVALID_FIELD
    twice = replace(MODEL, inputs=(TensorContract("x", "float32", ()),) * 2)
    assert opened(twice) is RejectReason.INVALID_FIELD
    named_long = replace(MODEL, inputs=(TensorContract("x" * 129, "float32", ()),))
    assert opened(named_long) is RejectReason.FIELD_TOO_LONG
    outputs_only = replace(MODEL, outputs=TOKENS.outputs)
    assert opened(outputs_only) is RejectReason.INVALID_FIELD
    payload = codec.record_to_proto(record(models=(good,)))
    payload.models[0].inputs[0].dims[0].min = 40  # min > max
    assert rejection(ALICE.sign(codec.RECORD_TYPE, payload.SerializeToString())) is RejectReason.MALFORMED
    payload.models[0].inputs[0].dims[0].min = 1
    payload.models[0].inputs[0].dtype = 0
    assert rejection(ALICE.sign(codec.RECORD_TYPE, payload.SerializeToString())) is RejectReason.MALFORMED


def test_opener_verifies_each_envelope_once() -> None:
    opener = codec.Opener(LIMITS, max_entries=4)
    envelopes = [codec.sign_heartbeat(ALICE, Heartbeat(ALICE.peer_id, 1, n)).envelope for n in range(10)]
    for envelope in envelopes[:3] * 5:
        assert isinstance(opener(envelope), Signed)
    assert opener.verified == 3
    for envelope in envelopes:  # past max_entries the older half is dropped, nothing breaks
        opener(envelope)
    assert opener.verified == 10
    forged = replace(envelopes[0], payload=envelopes[1].payload)  # same signature, other bytes
    assert isinstance(opener(forged), Rejection)


def test_request_and_response_map_one_to_one() -> None:
    beat = codec.sign_heartbeat(ALICE, Heartbeat(ALICE.peer_id, 3, 4)).envelope
    request = GossipRequest(
        codec.sign_record(ALICE, record()).envelope,
        {ALICE.peer_id.raw: DigestEntry(3, 4, False), BOB.peer_id.raw: DigestEntry(2, 0, True)},
        (beat,),
    )
    again = codec.request_from_proto(codec.request_to_proto(request))
    assert again.sender == request.sender and again.updates == request.updates
    assert dict(again.digest) == dict(request.digest)
    push = GossipRequest(None, {}, (beat,))
    assert codec.request_from_proto(codec.request_to_proto(push)).sender is None
    response = GossipResponse((beat,), {BOB.peer_id.raw: DigestEntry(1, 1, False)})
    back = codec.response_from_proto(codec.response_to_proto(response))
    assert back.updates == response.updates and dict(back.wanted) == dict(response.wanted)


def test_digest_with_a_bad_or_repeated_peer_id_is_malformed() -> None:
    with pytest.raises(ProtocolError):
        codec.digest_from_proto([gossip_pb2.DigestEntry(peer_id=b"x" * 31)])
    entry = gossip_pb2.DigestEntry(peer_id=b"x" * 32, seq=1)
    with pytest.raises(ProtocolError):
        codec.digest_from_proto([entry, entry])


entries = st.tuples(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    digest=st.lists(entries, max_size=6),
    beats=st.lists(st.integers(0, 2**40), max_size=4),
    with_sender=st.booleans(),
    payload_type=st.sampled_from(["", "atomic.v1.Heartbeat", "é" * 70]),
    summary=st.sampled_from([None, b"", b"\x01" * 8, b"\x02" * 8 * 256]),
    differing=st.lists(st.integers(0, 4095), max_size=5),
)
def test_wire_sizes_equal_the_encoded_sizes(
    digest: list[tuple[bytes, int, int, bool]],
    beats: list[int],
    with_sender: bool,
    payload_type: str,
    summary: bytes | None,
    differing: list[int],
) -> None:
    updates = tuple(
        replace(
            codec.sign_heartbeat(ALICE, Heartbeat(ALICE.peer_id, n, n)).envelope, payload_type=payload_type
        )
        for n in beats
    )
    mapping = {raw: DigestEntry(seq, beat, dead) for raw, seq, beat, dead in digest}
    sender = codec.sign_record(ALICE, record()).envelope if with_sender else None
    request = GossipRequest(sender, mapping, updates, summary)
    assert codec.request_wire_size(request) == len(codec.request_to_proto(request).SerializeToString())
    response = GossipResponse(updates, mapping, tuple(differing), mapping)
    assert codec.response_wire_size(response) == len(codec.response_to_proto(response).SerializeToString())


def test_summaries_and_differing_ranges_round_trip_and_a_bad_summary_is_refused() -> None:
    entry = {bytes(range(32)): DigestEntry(7, 3)}
    for summary in (None, b"", bytes(range(16))):
        request = GossipRequest(None, entry, (), summary)
        assert codec.request_from_proto(codec.request_to_proto(request)) == request
    response = GossipResponse((), {}, (0, 5), entry)
    assert codec.response_from_proto(codec.response_to_proto(response)) == response
    old = gossip_pb2.GossipRequest.FromString(
        codec.request_to_proto(GossipRequest(None, entry, ())).SerializeToString()
    )
    assert not old.HasField("summary")  # a full digest, as before summaries
    for length in (7, 24, 8 * 8192):  # not 8 bytes a range, not a power of two, too many ranges
        bad = gossip_pb2.GossipRequest(summary=gossip_pb2.DigestSummary(fingerprints=bytes(length)))
        with pytest.raises(ProtocolError, match="digest summary"):
            codec.request_from_proto(bad)
