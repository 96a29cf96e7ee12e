"""Token buckets per key, on a clock the caller passes in (so they work in virtual time too), and
the work a peer id shows."""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    """``take(key, now)`` admits at most ``burst`` at once and ``rate`` per second sustained, per key.

    At most ``max_keys`` keys are tracked; the least recently refilled one is forgotten first,
    which can only ever be generous to it (a forgotten key starts again with a full bucket).
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # An OrderedDict: forgetting the oldest of a plain dict that keys move through scans the
        # holes they leave at its front (21 us a new key at 65,536 keys under a flood of new
        # sources, against 0.7 us here).
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        if len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
        self._buckets[key] = (tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


def work_bits(peer_id: bytes) -> int:
    """Leading zero bits of a raw peer id (sha256 of its public key): the work its key took to
    find, when a network asks for some (``GossipLimits.identity_work_bits``)."""
    value = int.from_bytes(peer_id[:8], "big")
    return 64 - value.bit_length() if value else 64
