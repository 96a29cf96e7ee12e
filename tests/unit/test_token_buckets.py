"""Token buckets per key (gossip and call limits) and the gateway's per-client buckets: bounded,
the least recently used key forgotten first, a forgotten key starting again with a full bucket."""

from __future__ import annotations

import pytest

from atomic_p2p.errors import RateLimitedError
from atomic_p2p.gateway import access
from atomic_p2p.gossip.ratelimit import TokenBuckets


def test_a_bucket_admits_its_burst_then_its_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0, max_keys=8)
    assert [buckets.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("a", 0.5)  # one token back after half a second at 2 a second
    assert not buckets.take("a", 0.5)
    assert buckets.take("b", 0.5)  # another key has its own bucket


def test_past_max_keys_the_least_recently_used_key_is_forgotten_first() -> None:
    buckets = TokenBuckets(rate=0.0, burst=1.0, max_keys=3)
    for key in ("a", "b", "c"):
        assert buckets.take(key, 0.0)
    assert not buckets.take("a", 1.0)  # "a" is empty, and now the most recently used
    assert buckets.take("d", 1.0)  # four keys: "b", the least recently used, goes
    assert len(buckets) == 3
    assert not buckets.take("a", 2.0) and not buckets.take("c", 2.0) and not buckets.take("d", 2.0)
    assert buckets.take("b", 2.0)  # forgotten, so it starts again with a full bucket


def test_a_flood_of_new_keys_keeps_the_map_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_keys=100)
    for index in range(10_000):
        buckets.take(f"source-{index}", float(index))
    assert len(buckets) == 100
    assert not buckets.take("source-9999", 9999.0)  # the newest keys are the ones kept


def test_the_gateway_forgets_its_oldest_anonymous_client_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "MAX_CLIENTS", 2)
    gate = access.Access(per_minute=1.0)
    gate.admit(None, "10.0.0.1", 0.0)
    gate.admit(None, "10.0.0.2", 0.0)
    with pytest.raises(RateLimitedError):
        gate.admit(None, "10.0.0.1", 1.0)
    gate.admit(None, "10.0.0.3", 1.0)  # a third client: the oldest (10.0.0.1) is forgotten
    gate.admit(None, "10.0.0.1", 2.0)  # so it starts again with a full bucket
    with pytest.raises(RateLimitedError):
        gate.admit(None, "10.0.0.3", 2.0)
