"""The pieces of docs/security.md one at a time: sources and prefixes, limits per source, counting
fields on the wire, the bid book's shares, the member table's record checks, [peer.guard]."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from atomic_p2p.errors import ConfigError, LimitExceededError, ProtocolError, TensorError, bounded, shown
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.gossip.codec import sign_record
from atomic_p2p.gossip.membership import Membership
from atomic_p2p.gossip.messages import EMPTY_DIGEST, GossipRequest
from atomic_p2p.gossip.records import PeerRecord, RejectReason
from atomic_p2p.guard import GuardConfig, Rate, SourceLimits
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import config_from_dict
from atomic_p2p.peer.replay import BidBook, IssuedBid
from atomic_p2p.protocol.wire import check_counts
from atomic_p2p.sources import UNKNOWN, Source, source_of, source_of_address
from atomic_p2p.tensors import check_spec

T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("ipv4:10.1.2.3:5000", Source("10.1.2.3", "10.1.2.0/24")),
        ("ipv6:[2001:db8:1:2:3::4]:5000", Source("2001:db8:1:2:3::4", "2001:db8:1:2::/64")),
        ("ipv6:[::ffff:10.1.2.3]:5000", Source("10.1.2.3", "10.1.2.0/24")),  # IPv4-mapped
        ("ipv4:127.0.0.1:5000", Source("127.0.0.1", "127.0.0.0/24", local=True)),
        ("unix:/tmp/socket", UNKNOWN),
        ("memory:mem-1:small", UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_a_connection_name_gives_its_address_and_prefix(peer: str, source: Source) -> None:
    assert source_of(peer) == source


def test_a_dialled_address_gives_its_source() -> None:
    assert source_of_address("10.1.2.3:50051") == Source("10.1.2.3", "10.1.2.0/24")
    assert source_of_address("[2001:db8::1]:50051").prefix == "2001:db8::/64"
    assert source_of_address("peer.example:50051") is UNKNOWN


def test_limits_apply_per_address_and_per_prefix() -> None:
    limits = SourceLimits(GuardConfig(address_calls=Rate(1.0, 3.0), prefix_calls=Rate(1.0, 5.0)))
    one, neighbour = source_of("ipv4:10.0.0.1:1"), source_of("ipv4:10.0.0.2:1")
    for _ in range(3):
        limits.admit("Execute", one, 0.0)
    with pytest.raises(LimitExceededError):
        limits.admit("Execute", one, 0.0)  # its address is spent
    limits.admit("Execute", neighbour, 0.0)
    limits.admit("Execute", neighbour, 0.0)
    with pytest.raises(LimitExceededError):
        limits.admit("Execute", neighbour, 0.0)  # its prefix is spent (3 + 2 of 5)
    limits.admit("Execute", source_of("ipv4:10.0.1.1:1"), 0.0)  # another /24 is not
    limits.admit("Gossip", one, 0.0)  # gossip has buckets of its own
    limits.admit("Execute", UNKNOWN, 0.0)  # no IP source: no per-source limit
    limits.admit("Execute", one, 1.0)  # tokens come back
    assert limits.refused == 2


def test_fields_are_counted_without_parsing_and_bounded_by_the_caps() -> None:
    update = b"\x1a\x00"  # field 3, empty
    check_counts(update * 4, {3: 4}, "m")
    with pytest.raises(LimitExceededError):
        check_counts(update * 5, {3: 4}, "m")
    with pytest.raises(LimitExceededError):  # other fields count against the total too
        check_counts(b"\x78\x01" * 1_000_000, {3: 4}, "m")
    with pytest.raises(ProtocolError):
        check_counts(b"\x1a\x05ab", {3: 4}, "m")  # truncated
    with pytest.raises(ProtocolError):
        check_counts(b"\x1f", {3: 4}, "m")  # wire type 7


def test_an_empty_tensor_with_huge_dimensions_is_malformed() -> None:
    with pytest.raises(TensorError):
        check_spec("float32", (0, 2**62, 2**62))
    assert check_spec("float32", (0, 64)) == 0
    with pytest.raises(LimitExceededError):
        check_spec("float32", (2**40,))  # a real size over the limit stays RESOURCE_EXHAUSTED


def test_untrusted_text_is_quoted_short() -> None:
    assert len(shown("c" * 1_000_000)) < 100 and "1000000 chars" in shown("c" * 1_000_000)
    assert shown("short") == "'short'"
    assert len(bounded("x" * 100_000)) < 1100


def issued(index: int, source: str, newcomer: bool) -> IssuedBid:
    return IssuedBid(bytes(16), f"t{index}", b"d", Identity.from_seed(b"r" * 32).peer_id, "m", 10**12, 1.0, (), source=source, newcomer=newcomer)  # fmt: skip


def test_the_bid_book_keeps_shares_per_prefix_and_for_newcomers() -> None:
    book = BidBook(10_000, 0, 100, prefix_share=0.2, newcomer_share=0.5, min_quota=1)
    for i in range(20):
        book.record(issued(i, "a", newcomer=True), 0)
    with pytest.raises(LimitExceededError, match="share"):
        book.check_room(0, 1, "a", newcomer=False)
    for i in range(30):
        book.record(issued(100 + i, f"p{i % 3}", newcomer=True), 0)
    with pytest.raises(LimitExceededError, match="new to this peer"):
        book.check_room(0, 1, "q", newcomer=True)
    book.check_room(0, 10, "q", newcomer=False)  # a requester with history gets in
    book.check_room(10_001, 20, "a", newcomer=True)  # expiry gives every share back


def record_of(who: Identity, seq: int, issued_at_ms: int) -> GossipRequest:
    signed = sign_record(who, PeerRecord(who.peer_id, ("10.0.0.1:1",), (), seq, issued_at_ms))
    return GossipRequest(None, EMPTY_DIGEST, (signed.envelope,))


def test_records_from_the_future_or_issued_at_zero_are_refused() -> None:
    node = Membership(Identity.generate(), GossipConfig(), random.Random(0), now=T0)
    now_ms = int(T0 * 1000)
    node.handle_request(T0, record_of(Identity.generate(), 2**64 - 1, now_ms), "x")
    node.handle_request(T0, record_of(Identity.generate(), now_ms, 0), "y")
    assert node.stats.rejected[RejectReason.FROM_THE_FUTURE] == 1
    assert node.stats.rejected[RejectReason.INVALID_FIELD] == 1
    node.handle_request(T0, record_of(Identity.generate(), now_ms, now_ms), "z")
    assert node.member_count == 2


def test_guard_settings_come_from_the_peer_table(tmp_path: Path) -> None:
    model = {"model_id": "m", "capabilities": ["c"], "factory": "x:y", "price_per_example": 0.1}
    guard = {"max_pending_calls": 64, "address_calls": [10.0, 20.0], "bid_share_per_prefix": 0.25}
    config = config_from_dict({"peer": {"name": "p", "guard": guard}, "models": [model]}, tmp_path)
    assert config.guard.max_pending_calls == 64
    assert config.guard.address_calls == Rate(10.0, 20.0)
    assert config.guard.bid_share_per_prefix == 0.25
    with pytest.raises(ConfigError, match="per_second, burst"):
        config_from_dict({"peer": {"name": "p", "guard": {"prefix_calls": 5}}, "models": [model]}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"peer": {"name": "p", "guard": {"nope": 1}}, "models": [model]}, tmp_path)
