"""The model directory: capability index, constraint filters, liveness, versions."""

from __future__ import annotations

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract, single_input
from atomic_p2p.gossip.directory import Candidate, Directory, Requirements
from atomic_p2p.gossip.messages import MemberForgotten, MemberJoined, MemberState, RecordUpdated, StateChanged
from atomic_p2p.gossip.records import ModelAdvert, PeerRecord
from atomic_p2p.identity import Identity
from atomic_p2p.protocol.messages import TensorSpec
from atomic_p2p.terms import ModelConstraints

ALICE, BOB, CAROL = (Identity.from_seed(n).peer_id for n in (b"alice", b"bob", b"carol"))

SMALL = ModelAdvert(
    "small",
    ("classify",),
    ModelConstraints(max_input_tokens=128, supported_languages=("en",), max_batch=4),
    0.1,
)
BIG = ModelAdvert(
    "big", ("classify", "summarize"), ModelConstraints(max_input_tokens=4096, max_batch=64), price_hint=2.0
)
ANY = ModelAdvert("any", ("classify",), price_hint=0.5)  # declares no limits


def record(peer: object, *models: ModelAdvert, seq: int = 1) -> PeerRecord:
    return PeerRecord(peer, ("h:1",), models, seq, 0)  # type: ignore[arg-type]


def directory() -> Directory:
    d = Directory()
    d.apply(
        [
            MemberJoined(ALICE, record(ALICE, SMALL)),
            MemberJoined(BOB, record(BOB, BIG)),
            MemberJoined(CAROL, record(CAROL, ANY)),
        ]
    )
    return d


def names(found: list[Candidate]) -> list[str]:
    return [c.model.model_id for c in found]


def test_candidates_by_capability_cheapest_first() -> None:
    d = directory()
    assert names(d.candidates("classify")) == ["small", "any", "big"]
    assert names(d.candidates("summarize")) == ["big"]
    assert d.candidates("translate") == []
    assert d.capabilities() == ["classify", "summarize"]
    assert len(d) == 3


def test_constraint_filters() -> None:
    d = directory()
    assert names(d.candidates("classify", Requirements(batch=8))) == ["any", "big"]
    assert names(d.candidates("classify", Requirements(input_tokens=1000))) == ["any", "big"]
    assert names(d.candidates("classify", Requirements(input_tokens=5000))) == ["any"]
    assert names(d.candidates("classify", Requirements(language="de"))) == ["any", "big"]
    assert names(d.candidates("classify", Requirements(language="en"))) == ["small", "any", "big"]
    assert names(d.candidates("classify", Requirements(max_price=0.5))) == ["small", "any"]


def test_suspect_dead_and_left_peers_are_excluded_until_alive_again() -> None:
    d = directory()
    for state in (MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT):
        d.apply([StateChanged(ALICE, MemberState.ALIVE, state)])
        assert "small" not in names(d.candidates("classify"))
        d.apply([StateChanged(ALICE, state, MemberState.ALIVE)])
        assert "small" in names(d.candidates("classify"))


def test_record_updates_reindex_and_bump_the_version() -> None:
    d = directory()
    assert d.version(ALICE) == 1
    d.apply([RecordUpdated(ALICE, record(ALICE, BIG, seq=7))])
    assert d.version(ALICE) == 7
    assert names(d.candidates("summarize")) == ["big", "big"]
    assert "small" not in names(d.candidates("classify"))
    d.apply([MemberForgotten(ALICE)])
    assert d.version(ALICE) is None and d.record(ALICE) is None
    assert names(d.candidates("summarize")) == ["big"]


def test_a_requester_record_with_no_models_adds_no_candidates() -> None:
    d = Directory()
    d.apply([MemberJoined(ALICE, record(ALICE))])
    assert d.is_live(ALICE) and d.capabilities() == [] and len(d) == 0


def test_a_model_whose_advertised_contract_cannot_take_the_inputs_is_left_out() -> None:
    digits = single_input("x", "float32", (64,))
    tokens = ModelContract(TaskKind.EMBEDDING, (TensorContract("ids", "int64", (Dim(1, 32),)),))
    d = Directory()
    d.apply(
        [
            MemberJoined(
                ALICE,
                record(ALICE, ModelAdvert.with_contract(digits, model_id="digits", capabilities=("c",))),
            ),
            MemberJoined(
                BOB, record(BOB, ModelAdvert.with_contract(tokens, model_id="tokens", capabilities=("c",)))
            ),
            MemberJoined(CAROL, record(CAROL, ModelAdvert("silent", ("c",)))),  # no contract: stays in
        ]
    )
    assert sorted(names(d.candidates("c"))) == ["digits", "silent", "tokens"]
    pixels = (TensorSpec("x", "float32", (4, 64)),)
    assert sorted(names(d.candidates("c", Requirements(inputs=pixels)))) == ["digits", "silent"]
    ids = (TensorSpec("ids", "int64", (4, 12)),)
    assert sorted(names(d.candidates("c", Requirements(inputs=ids)))) == ["silent", "tokens"]
    too_long = (TensorSpec("ids", "int64", (4, 33)),)
    assert names(d.candidates("c", Requirements(inputs=too_long))) == ["silent"]


def test_a_text_task_leaves_out_models_that_declare_a_contract_but_take_no_text() -> None:
    digits = single_input("x", "float32", (64,))
    tokens = ModelContract(TaskKind.CLASSIFICATION, (TensorContract("ids", "int64", (Dim(1, 32),)),))
    d = Directory()
    d.apply(
        [
            MemberJoined(
                ALICE,
                record(ALICE, ModelAdvert.with_contract(digits, model_id="digits", capabilities=("c",))),
            ),
            MemberJoined(
                BOB,
                record(
                    BOB,
                    ModelAdvert.with_contract(tokens, model_id="text", capabilities=("c",), takes_text=True),
                    ModelAdvert("kind-only", ("c",), kind=TaskKind.EMBEDDING),  # a kind is a contract
                ),
            ),
            MemberJoined(CAROL, record(CAROL, ModelAdvert("silent", ("c",)))),  # no contract: stays in
        ]
    )
    assert sorted(names(d.candidates("c", Requirements(text=True)))) == ["silent", "text"]
    # A tensor task ignores takes_text: only the contract decides, as before.
    pixels = (TensorSpec("x", "float32", (4, 64)),)
    assert sorted(names(d.candidates("c", Requirements(inputs=pixels)))) == ["digits", "kind-only", "silent"]
    assert sorted(names(d.candidates("c"))) == ["digits", "kind-only", "silent", "text"]
