"""Replay protection and the bid book, driven by a hand-set clock (no sockets)."""

from __future__ import annotations

import dataclasses

import pytest

import atomic_p2p.peer
from atomic_p2p.errors import (
    BidExpiredError,
    DeadlineError,
    LimitExceededError,
    PreconditionError,
    ProtocolError,
    ReplayError,
    SignatureError,
    StaleRequestError,
)
from atomic_p2p.identity import Identity
from atomic_p2p.peer.replay import BidBook, BidRequestHeader, ExpiringMap, IssuedBid, RequestGuard
from atomic_p2p.peer.strategies import FeedbackKind, InputSpec

START = 1_000_000
WINDOW = 30_000
REQUESTER = Identity.from_seed(b"requester").peer_id


def header(
    request_id: bytes = b"r" * 16, issued_at_ms: int = START + 1000, **changes: object
) -> BidRequestHeader:
    base = BidRequestHeader(request_id, REQUESTER.raw, REQUESTER, issued_at_ms, START + 60_000, 1)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def guard() -> RequestGuard:
    return RequestGuard(started_at_ms=START, window_ms=WINDOW, max_tasks=4, capacity=100)


def test_a_fresh_request_is_admitted_once() -> None:
    requests = guard()
    requests.admit(header(), now_ms=START + 1000)
    with pytest.raises(ReplayError):
        requests.admit(header(), now_ms=START + 2000)
    requests.admit(header(request_id=b"s" * 16), now_ms=START + 2000)


def test_ids_are_remembered_as_long_as_their_request_could_pass_the_window() -> None:
    requests = guard()
    future = START + 1000 + WINDOW  # issued as far ahead of our clock as the window allows
    requests.admit(header(issued_at_ms=future), now_ms=START + 1000)
    still_fresh = future + WINDOW  # the last moment that issued_at is within the window
    with pytest.raises(ReplayError):
        requests.admit(header(issued_at_ms=future), now_ms=still_fresh)
    with pytest.raises(StaleRequestError):  # once forgotten, the window refuses it anyway
        requests.admit(header(issued_at_ms=future), now_ms=still_fresh + 1)


@pytest.mark.parametrize(
    ("changes", "now", "error"),
    [
        ({"request_id": b"short"}, START + 1000, ProtocolError),
        ({"requester_id": b"x" * 32}, START + 1000, SignatureError),
        ({"issued_at_ms": START + 1000}, START + 1000 + WINDOW + 1, StaleRequestError),
        ({"issued_at_ms": START + 1000 + WINDOW + 1}, START + 1000, StaleRequestError),
        ({"issued_at_ms": START - 1}, START + 1000, StaleRequestError),
        ({"deadline_ms": START + 999}, START + 1000, DeadlineError),
        ({"deadline_ms": 0}, START + 1000, ProtocolError),  # required
        ({"task_count": 5}, START + 1000, LimitExceededError),
    ],
)
def test_refusals(changes: dict[str, object], now: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        guard().admit(header(**changes), now_ms=now)  # type: ignore[arg-type]


def test_a_full_table_refuses_instead_of_forgetting() -> None:
    table: ExpiringMap[str, int] = ExpiringMap(ttl_ms=100, capacity=2, what="things")
    table.put("a", 1, now_ms=0)
    table.put("b", 2, now_ms=50)
    with pytest.raises(LimitExceededError, match="2 things"):
        table.put("c", 3, now_ms=99)
    table.put("c", 3, now_ms=100)  # "a" expired, making room
    assert (table.get("a", 100), table.get("b", 100), table.get("c", 100)) == (None, 2, 3)
    assert table.contains("c", 199) and not table.contains("c", 200)


def test_put_all_stores_every_pair_or_none_and_prunes_first() -> None:
    table: ExpiringMap[str, int] = ExpiringMap(ttl_ms=100, capacity=3, what="things")
    table.put("a", 1, now_ms=0)
    with pytest.raises(LimitExceededError, match="3 things"):
        table.put_all([("b", 2), ("c", 3), ("d", 4)], now_ms=50)  # four would not fit: none stored
    assert not table.contains("b", 50) and len(table) == 1
    table.put_all([("a", 5), ("b", 2), ("c", 3)], now_ms=60)  # "a" replaced, not counted twice
    assert (table.get("a", 60), table.get("b", 60), table.get("c", 60)) == (5, 2, 3)
    table.put_all([("d", 4), ("e", 5), ("f", 6)], now_ms=160)  # all three expired first
    assert len(table) == 3 and table.get("d", 160) == 4 and not table.contains("d", 260)


def issued(digest: bytes = b"d" * 32) -> IssuedBid:
    return IssuedBid(
        b"r" * 16, "t", digest, REQUESTER, "m", START + 10_000, 0.5, (InputSpec("x", "float32", (4, 64)),)
    )


def test_the_bid_book_knows_live_expired_and_unknown_bids() -> None:
    book = BidBook(validity_ms=10_000, grace_ms=WINDOW, capacity=10)
    book.record(issued(), now_ms=START)
    assert book.lookup(b"r" * 16, "t", b"d" * 32, now_ms=START + 10_000) == issued()
    with pytest.raises(BidExpiredError):
        book.lookup(b"r" * 16, "t", b"d" * 32, now_ms=START + 10_001)
    with pytest.raises(PreconditionError, match="no such bid"):
        book.lookup(b"r" * 16, "t", b"e" * 32, now_ms=START)
    with pytest.raises(PreconditionError, match="no such bid"):
        book.lookup(b"r" * 16, "t", b"d" * 32, now_ms=START + 10_000 + WINDOW)
    assert book.has_room(START, 10) and not book.has_room(START, 11)


def test_a_whole_answer_is_recorded_at_once_and_counted_by_source() -> None:
    book = BidBook(
        validity_ms=10_000, grace_ms=WINDOW, capacity=10, prefix_share=0.5, newcomer_share=0.5, min_quota=1
    )
    answer = [
        dataclasses.replace(issued(), task_id=f"t{i}", source="10.0.0.0/24", newcomer=True) for i in range(4)
    ]
    book.record_all(answer, now_ms=START)
    for bid in answer:
        assert book.lookup(bid.request_id, bid.task_id, bid.digest, now_ms=START) == bid
    assert book.has_room(START, 6) and not book.has_room(START, 7)
    book.check_room(START, 1, "10.0.0.0/24", newcomer=True)  # 4 + 1 fit the shares of 5
    with pytest.raises(LimitExceededError, match=r"10\.0\.0\.0/24 fill its share"):
        book.check_room(START, 2, "10.0.0.0/24")  # the prefix's live bids are counted
    with pytest.raises(LimitExceededError, match="new to this peer"):
        book.check_room(START, 2, "10.9.0.0/24", newcomer=True)  # and the newcomers'


def test_each_kind_of_feedback_counts_once_per_bid() -> None:
    book = BidBook(validity_ms=10_000, grace_ms=WINDOW, capacity=10)
    book.note_feedback(issued(), FeedbackKind.WIN, now_ms=START)
    book.note_feedback(issued(), FeedbackKind.OUTCOME, now_ms=START)
    with pytest.raises(ReplayError):
        book.note_feedback(issued(), FeedbackKind.WIN, now_ms=START + 1)


def test_the_peer_package_exports_what_it_documents() -> None:
    assert atomic_p2p.peer.__all__ == sorted(atomic_p2p.peer.__all__)
    for name in atomic_p2p.peer.__all__:
        assert getattr(atomic_p2p.peer, name).__module__.startswith("atomic_p2p.peer.")
