"""Gossip tuning and limits, in one frozen value.

Timeouts follow Lifeguard (Dadgar et al., 2018): they scale with ``max(1, log10(N))`` where N is
the number of members not yet written off, because an epidemic needs O(log N) rounds to carry a
heartbeat to everyone. With the defaults at a 1 s interval: a silent member is suspected after
4 s (N <= 10) or 8 s (N = 100), and declared dead as long again later.

Past a few hundred members a byte budget stretches them. Every node must see every member's
signed beat (about 175 bytes) once per suspicion timeout, so liveness alone costs each node at
least N * 175 bytes per timeout, whatever the digest. ``beats_per_round`` caps it: a node lists
up to four times that many stale members a round (:data:`LISTING_FACTOR`: a partner holds a newer
beat for a third to a half of them, and loss takes some of the answers), asks
for a member's beat only once it is ``slack = ceil(1.5 * N / beats_per_round)`` rounds old (1.5:
headroom, so that the stale backlog drains), and suspicion waits that much longer. With the
defaults: SUSPECT after 28 s at N = 1000 and 200 s at N = 10,000 (then DEAD 12 s and 16 s later),
for at most about 80 beats per node per round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from atomic_p2p.errors import ConfigError
from atomic_p2p.gossip.records import RecordLimits

LISTING_FACTOR = 4
"""Members listed per round, in units of ``beats_per_round``. A listed member comes back with a
newer beat only when the partner holds one (about half of them in steady state, a third while a
whole table is learned at once, as after a cold start) and both messages arrive (0.81 at 10%
loss); the stale backlog drains only if the beats that come back outpace the
``beats_per_round / 1.5`` a round that fall due (``slack``): 4 x 80 x 1/3 x 0.81 = 86 > 53.
With 2 (the listing before), a cold start of 10,000 members learned 44 beats a round, too few to
hear from all of them before the 200 s suspicion timeout (docs/gossip.md)."""


@dataclass(frozen=True, slots=True)
class GossipLimits:
    """What one node accepts; floods past these are refused and counted."""

    record: RecordLimits = field(default_factory=RecordLimits)
    max_members: int = 10_000
    """Records held, tombstones included; a record for an unknown peer past this is refused."""
    max_updates_per_message: int = 512
    """Envelopes in one request or response; extras are refused (and never sent)."""
    rate_per_interval: float = 6.0
    """Requests one sender may make per interval, sustained (an honest one makes about 2)."""
    rate_burst: float = 20.0
    max_senders_tracked: int = 20_000
    max_clock_skew_s: float = 60.0
    """A record or leave issued further than this in the future is refused (a record's ``seq``
    too: it is a millisecond timestamp, so 2**64 - 1 would freeze the member for good)."""
    max_wire_bytes: int = 16 * 1024 * 1024
    """A Gossip request larger than this is refused before it is parsed."""
    new_members_per_s: float = 32.0
    """Members one source prefix (/24, /64) may introduce per second, sustained: identities cost
    nothing, addresses do (docs/security.md)."""
    new_members_burst: float = 1024.0
    verifications_per_s: float = 2000.0
    """Envelopes not verified before that one source prefix may have this node verify per second."""
    verifications_burst: float = 4096.0
    newcomer_share: float = 0.5
    """Share of ``max_members`` that members without history may hold. Past it (or in a full
    table) a new member evicts the oldest newcomer of the prefix that introduced the most."""
    established_beats: int = 3
    """Heartbeats a member must have advanced here to have history (never evicted for a newcomer)."""
    identity_work_bits: int = 0
    """Leading zero bits a new member's peer id must show (0: none). Each bit doubles the cost of a
    fresh identity for everyone, honest newcomers included (docs/security.md)."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    interval: float = 1.0
    """Seconds between rounds (calls to ``tick``)."""
    fanout: int = 3
    """Members contacted each round."""
    suspicion_mult: float = 4.0
    """Heartbeat silence, in ``interval * max(1, log10 N)`` units, before a member is suspect."""
    dead_mult: float = 4.0
    """Further time, in the same units, before a suspect member is declared dead."""
    tombstone_ttl: float = 600.0
    """Seconds a DEAD or LEFT member is remembered so that old gossip cannot resurrect it."""
    push_rounds: int = 3
    """Rounds a newly learned record or leave is pushed unasked (rumor mongering) besides the pull."""
    heartbeat_slack: int | None = None
    """A member's heartbeat is forwarded only to partners at least this many beats behind (its own
    always), which bounds liveness traffic to about N / slack beats per node per round. ``None``:
    a quarter of the suspicion timeout in rounds (1 for N <= 10, 2 for N = 100, 3 for N = 1000),
    which leaves three quarters of it for the beat to travel."""
    reconnect_probability: float = 0.1
    """Chance per round of also contacting one DEAD member, so that healed partitions merge."""
    seed_backoff_max_s: float = 30.0
    """A bootstrap seed that did not answer is tried again after one interval, then after twice as
    long each time it fails again, at most this many seconds apart (it answers: back to normal)."""
    beats_per_round: int = 80
    """Liveness budget: about this many members' beats received per node per round (see the
    module docstring); past about this many members it stretches the timeouts."""
    summaries: bool = True
    """Send range fingerprints and only the stalest members instead of the whole digest each
    exchange (docs/gossip.md). Turn off while the cluster still has peers that predate them: they
    read a summarised request as a partial digest and answer with everything it does not list."""
    limits: GossipLimits = field(default_factory=GossipLimits)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.fanout < 1 or (self.heartbeat_slack or 1) < 1:
            raise ConfigError("interval must be positive, fanout and heartbeat_slack at least 1")
        if self.beats_per_round < 1:
            raise ConfigError("beats_per_round must be at least 1")

    def scale(self, members: int) -> float:
        return max(1.0, math.log10(max(members, 1)))

    def suspicion_timeout(self, members: int) -> float:
        return (self.suspicion_mult * self.scale(members) + self._stretch(members)) * self.interval

    def dead_timeout(self, members: int) -> float:
        return self.dead_mult * self.scale(members) * self.interval

    def slack(self, members: int) -> int:
        if self.heartbeat_slack is not None:
            return self.heartbeat_slack
        return self._quarter(members) + self._stretch(members)

    def listed_per_exchange(self) -> int:
        """Stale members a summarised request lists at most: a ``fanout``-th of
        :data:`LISTING_FACTOR` times ``beats_per_round`` (107 with the defaults, 321 a round).
        The cap binds only while a backlog of stale members waits (after a start where every
        member was learned at once); in steady state fewer are due."""
        return -(-LISTING_FACTOR * self.beats_per_round // self.fanout)

    def _quarter(self, members: int) -> int:
        return max(1, int(self.suspicion_mult * self.scale(members) / 4))

    def _stretch(self, members: int) -> int:
        """Rounds the byte budget adds to the slack and to the suspicion timeout."""
        return max(0, math.ceil(1.5 * members / self.beats_per_round) - self._quarter(members))
