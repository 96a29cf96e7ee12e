"""Limits per source address and per address prefix: what keeps an open network usable when
identities cost nothing (docs/security.md).

How this works
--------------
A peer id costs a key pair (tens of microseconds), so a limit per peer id alone stops nobody. A
source address costs more, and a whole address prefix (a /24 of IPv4, a /64 of IPv6: what one
host or one customer usually holds) costs more still. :func:`source_of` turns gRPC's name for a
connection (``ipv4:1.2.3.4:5678``, ``ipv6:[2001:db8::1]:5678``) into a :class:`Source`: its address
and its prefix. :class:`SourceLimits` keeps two token buckets per RPC class, one per address and one
per prefix, and is asked before a request is even parsed, so a refused call costs a dict lookup.

The same :class:`Source` keys the fair shares further in: the bid book's share per prefix
(:class:`~atomic_p2p.peer.replay.BidBook`), the member table's newcomers per prefix and the
signature verifications per prefix (:class:`~atomic_p2p.gossip.membership.Membership`).

The gossip side (new members and signature checks per prefix, an optional cost for a new
identity) is set by :class:`~atomic_p2p.gossip.config.GossipLimits`. That cost:
:func:`~atomic_p2p.gossip.ratelimit.work_bits` / :func:`mine_identity`: a peer id (sha256 of
the public key) with ``bits`` leading zero bits takes about ``2**bits`` key generations to find and
one look at the id to check. Off by default (0 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

from atomic_p2p.errors import ConfigError, LimitExceededError
from atomic_p2p.gossip.ratelimit import TokenBuckets, work_bits
from atomic_p2p.identity import Identity
from atomic_p2p.sources import UNKNOWN, Source


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: ``per_s`` sustained, ``burst`` at once."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_s > 0 and self.burst >= 1):
            raise ConfigError(f"a rate needs per_s > 0 and burst >= 1, got {self.per_s}, {self.burst}")


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Every per-source limit of a node, with its default (``[peer.guard]`` in a peer's TOML;
    docs/security.md explains each)."""

    max_pending_calls: int = 512
    """Calls the gRPC server holds at once (running or waiting); past it: RESOURCE_EXHAUSTED."""
    address_calls: Rate = Rate(1000.0, 2000.0)
    """Market calls (RequestBids, Execute, ExecuteStream, Feedback, BidGradient) per address."""
    prefix_calls: Rate = Rate(2000.0, 4000.0)
    """The same calls per /24 (IPv4) or /64 (IPv6)."""
    address_gossip: Rate = Rate(50.0, 100.0)
    """Gossip calls per address (an honest node gets a few per second from each partner)."""
    prefix_gossip: Rate = Rate(100.0, 300.0)
    bid_share_per_prefix: float = 1 / 16
    """Share of the bid book (max_remembered) the live bids asked for from one prefix may hold."""
    newcomer_bid_share: float = 0.5
    """Share of the bid book that requesters without history here (no order run) may hold."""
    max_sources: int = 65_536
    """Addresses and prefixes tracked per table; the least recent is forgotten first."""

    def __post_init__(self) -> None:
        shares = (self.bid_share_per_prefix, self.newcomer_bid_share)
        if not all(0 < share <= 1 for share in shares):
            raise ConfigError("guard shares must lie in (0, 1]")
        if self.max_pending_calls < 1 or self.max_sources < 1:
            raise ConfigError("max_pending_calls and max_sources must be >= 1")


DEFAULT_GUARD = GuardConfig()
GOSSIP = "Gossip"


class SourceLimits:
    """Token buckets per address and per prefix for each class of call (gossip, market)."""

    def __init__(self, config: GuardConfig = DEFAULT_GUARD) -> None:
        self.config = config
        size = config.max_sources
        self._buckets = {
            GOSSIP: (
                TokenBuckets(config.address_gossip.per_s, config.address_gossip.burst, size),
                TokenBuckets(config.prefix_gossip.per_s, config.prefix_gossip.burst, size),
            ),
            "": (
                TokenBuckets(config.address_calls.per_s, config.address_calls.burst, size),
                TokenBuckets(config.prefix_calls.per_s, config.prefix_calls.burst, size),
            ),
        }
        self.refused = 0

    def admit(self, method: str, source: Source, now: float) -> None:
        """Take one call of ``method`` from ``source``; LimitExceededError when over a limit."""
        if source is UNKNOWN or not source.address:
            return
        by_address, by_prefix = self._buckets[GOSSIP if method == GOSSIP else ""]
        if not by_address.take(source.address, now) or not by_prefix.take(source.prefix, now):
            self.refused += 1
            raise LimitExceededError(
                f"too many calls from {source.prefix}; slow down (limits per address and per prefix)"
            )


def mine_identity(bits: int, *, attempts: int = 1 << 26) -> Identity:
    """A fresh identity whose peer id has ``bits`` leading zero bits (about ``2**bits`` tries:
    16 bits take a few seconds). ConfigError if ``attempts`` keys were not enough."""
    for _ in range(attempts):
        identity = Identity.generate()
        if work_bits(identity.peer_id.raw) >= bits:
            return identity
    raise ConfigError(f"no peer id with {bits} leading zero bits in {attempts} tries")
