"""The bid manager's pure rules: pre-filtering, tmax from answer times, the bid cache."""

from __future__ import annotations

import random

import pytest

from atomic_p2p.errors import ConfigError
from atomic_p2p.identity import PeerId
from atomic_p2p.requester.bidpolicy import BidCache, BidPolicy, LatencyTracker, peer_prior, prefilter, rebind
from atomic_p2p.requester.profiler import BetaPosterior, Profile, ProfileKey
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.testing import make_bid, peer_identity

SPECS = (("x", "float32", (8, 64)),)


def peer(name: str) -> PeerId:
    return peer_identity(name).peer_id


def bid(name: str, *, ttl_ms: int = 1000, seq: int = 7, valid_until_ms: int = 10_000) -> BidInfo:
    """A bid from peer ``name`` that may be reused (the cache keeps no other kind) by default."""
    return make_bid(
        name, request_id=b"r" * 16, valid_until_ms=valid_until_ms, reusable_ttl_ms=ttl_ms, record_seq=seq
    )


# --- policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [{"max_tasks_per_call": 0}, {"top_m": -1}, {"exploration_share": 1.5}, {"grace_s": float("nan")}],
)
def test_a_bad_policy_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        BidPolicy(**bad)  # type: ignore[arg-type]


def test_plain_switches_every_rule_off() -> None:
    plain = BidPolicy.plain()
    assert not (plain.batching or plain.cache or plain.adaptive_tmax) and plain.top_m == plain.k_min == 0


# --- pre-filtering --------------------------------------------------------------------------------


def test_prefilter_keeps_everyone_when_few() -> None:
    asked: list[str] = []

    def prior_of(address: str) -> float | None:
        asked.append(address)
        return 0.1 if address == "a" else None

    picked = prefilter(["a", "b", "c"], prior_of, top_m=3, exploration_share=0.5, rng=random.Random(0))
    assert picked.chosen == ("a", "b", "c") and picked.skipped == ()
    assert asked == []  # no priors are looked up when everyone is asked anyway


def test_prefilter_off_asks_every_candidate_once() -> None:
    picked = prefilter(["a", "b", "a", "c"], {}.get, top_m=0, exploration_share=0.5, rng=random.Random(0))
    assert picked.chosen == ("a", "b", "c") and picked.explorers == picked.skipped == ()


def test_prefilter_takes_the_top_m_by_prior_plus_explorers() -> None:
    candidates = [f"p{i}" for i in range(10)]
    priors = {f"p{i}": i / 10 for i in range(10)}  # p9 best
    picked = prefilter(candidates, priors.get, top_m=4, exploration_share=0.5, rng=random.Random(1))
    top = {"p9", "p8", "p7", "p6"}
    assert top <= set(picked.chosen)
    assert len(picked.explorers) == 2 and not set(picked.explorers) & top
    assert len(picked.chosen) == 6 and set(picked.chosen) | set(picked.skipped) == set(candidates)
    assert list(picked.chosen) == [a for a in candidates if a in picked.chosen]  # caller's order kept


def test_unprofiled_peers_fill_the_top_and_explorers_rotate() -> None:
    candidates = [f"p{i}" for i in range(20)]
    rng = random.Random(2)
    seen: set[str] = set()
    for _ in range(50):
        picked = prefilter(candidates, {"p0": 0.9}.get, top_m=3, exploration_share=0.3, rng=rng)
        assert "p0" in picked.chosen and len(picked.chosen) == 4
        seen |= set(picked.chosen)
    assert seen == set(candidates)  # exploration reaches everyone eventually


def test_peer_prior_is_the_best_observed_model() -> None:
    key = ProfileKey("aa", "m1", "cap")
    profiles = {
        key: Profile(key, BetaPosterior(9, 1), outcomes=10),
        ProfileKey("aa", "m2", "cap"): Profile(
            ProfileKey("aa", "m2", "cap"), BetaPosterior(1, 9), outcomes=10
        ),
        ProfileKey("bb", "m", "cap"): Profile(
            ProfileKey("bb", "m", "cap"), BetaPosterior(1, 1)
        ),  # nothing seen
    }
    assert peer_prior(profiles, "aa", "cap") == pytest.approx(0.9)
    assert peer_prior(profiles, "bb", "cap") is None
    assert peer_prior(profiles, "aa", "other") is None


# --- tmax -----------------------------------------------------------------------------------------


def test_tmax_is_the_ceiling_until_peers_are_timed() -> None:
    tracker = LatencyTracker()
    assert tracker.tmax_s(["a"], 0.1, 2.0) == 2.0
    tracker.observe("a", 5.0)
    assert tracker.tmax_s(["a", "b"], 0.1, 2.0) == 2.0  # b is unknown


def test_tmax_shrinks_to_the_floor_for_fast_peers_and_grows_after_silence() -> None:
    tracker = LatencyTracker()
    for _ in range(20):
        tracker.observe("a", 5.0)
        tracker.observe("b", 8.0)
    assert tracker.tmax_s(["a", "b"], 0.1, 2.0) == pytest.approx(0.1)  # clamped to the floor
    assert tracker.tmax_s(["a", "b"], 0.001, 2.0) == pytest.approx(0.008, rel=0.2)  # b's timeout
    for _ in range(5):
        tracker.silent("b", 400.0)
    assert tracker.tmax_s(["a", "b"], 0.1, 2.0) > 0.4
    assert tracker.tmax_s(["a", "b"], 0.1, 2.0, quantile=0.5) == pytest.approx(0.1)  # a alone


def test_a_jittery_peer_gets_more_slack() -> None:
    tracker = LatencyTracker()
    for value in [10.0, 50.0] * 20:
        tracker.observe("jitter", value)
        tracker.observe("steady", 30.0)
    assert tracker.timeout_ms("jitter") > tracker.timeout_ms("steady")  # type: ignore[operator]


# --- cache ----------------------------------------------------------------------------------------


def test_only_reusable_bids_are_cached() -> None:
    cache = BidCache()
    assert not cache.put(bid("a", ttl_ms=0), "cap", "x=8x64", SPECS, received_ms=0)
    assert cache.put(bid("b"), "cap", "x=8x64", SPECS, received_ms=0)
    assert [b.peer_id for b in cache.get("cap", "x=8x64", SPECS, now_ms=10)] == [peer("b")]
    assert cache.get("cap", "x=16x64", SPECS, now_ms=10) == []
    assert cache.get("other", "x=8x64", SPECS, now_ms=10) == []
    assert (
        cache.get("cap", "x=8x64", (("x", "float32", (7, 64)),), now_ms=10) == []
    )  # same bucket, other shape


def test_entries_expire_at_the_ttl_or_validity() -> None:
    cache = BidCache()
    cache.put(bid("a", ttl_ms=1000), "cap", "b", SPECS, received_ms=0)
    cache.put(bid("b", ttl_ms=5000, valid_until_ms=600), "cap", "b", SPECS, received_ms=0)
    assert len(cache.get("cap", "b", SPECS, now_ms=500)) == 2
    assert [x.peer_id for x in cache.get("cap", "b", SPECS, now_ms=700)] == [peer("a")]
    assert cache.get("cap", "b", SPECS, now_ms=1000) == [] and len(cache) == 0


def test_a_changed_record_seq_drops_the_entry() -> None:
    cache = BidCache()
    cache.put(bid("a", seq=7), "cap", "b", SPECS, received_ms=0)
    cache.put(bid("b", seq=3), "cap", "b", SPECS, received_ms=0)
    cache.put(bid("c", seq=5), "cap", "b", SPECS, received_ms=0)
    # a re-signed its record; b is unknown to gossip; gossip has not yet brought c's record.
    seqs = {peer("a"): 8, peer("b"): None, peer("c"): 4}
    found = cache.get("cap", "b", SPECS, now_ms=1, seq_of=seqs.get)
    assert [x.peer_id for x in found] == [peer("b"), peer("c")] and len(cache) == 2


def test_drop_peer_and_capacity() -> None:
    cache = BidCache(capacity=2)
    cache.put(bid("a"), "cap", "b1", SPECS, received_ms=0)
    cache.put(bid("a"), "cap", "b2", SPECS, received_ms=0)
    assert cache.drop_peer(peer("a")) == 2 and len(cache) == 0
    for name in ("a", "b", "c"):
        cache.put(bid(name), "cap", f"bucket-{name}", SPECS, received_ms=0)
    assert len(cache) == 2 and cache.get("cap", "bucket-a", SPECS, now_ms=1) == []  # oldest evicted


def test_rebind_keeps_the_signed_bid_and_takes_new_ids() -> None:
    original = bid("a")
    again = rebind(original, "task-9", b"n" * 16)
    assert (again.task_id, again.request_id, again.reused) == ("task-9", b"n" * 16, True)
    assert again.envelope is original.envelope and again.digest == original.digest
