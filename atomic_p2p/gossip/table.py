"""The membership table: one slot per member, the digest over them, and digest reconciliation.

How this works
--------------
The *digest* maps every member (by raw peer id) to the :class:`DigestEntry` ``(seq, heartbeat,
dead)`` this node holds; it is the table's index and what travels in a GossipRequest. Given a
partner's digest, :meth:`MemberTable.reconcile` answers the two questions of a Scuttlebutt
exchange (van Renesse et al., 2008) in one pass: what does the partner lack (the records and
beats to send it), and what does it hold newer (the entries to ask for, ``wanted``).

Rules, in order of importance:

- A newer ``seq`` sends the whole record (with its latest beat, or its leave).
- A tombstone (DEAD or LEFT) is never handed to a node that does not know the member at all,
  which would keep tombstones alive forever; a leave does go to nodes that hold an older version.
- Heartbeat slack: a beat fewer than ``slack`` ahead of the partner is held back, unless it has
  *settled* (this node saw no newer one since ``settled``): that is what a crashed member's last
  beat looks like, and it must reach everyone before anyone suspects the member, because a last
  beat arriving late would look newer and refute the suspicion.
- Entries the partner itself gave up on (``dead`` without a leave) are not asked for.

:meth:`MemberTable.package` orders what goes out (records first) and caps it per message.

This is the hot loop of the whole protocol (N entries, fanout times per node per round), so it is
written for speed: equal entries skipped first, heartbeat-only gaps handled inline.
"""

from __future__ import annotations

import random

from atomic_p2p.gossip.messages import LEFT_HEARTBEAT, Digest, DigestEntry, MemberState
from atomic_p2p.gossip.ranges import RangeIndex, range_of
from atomic_p2p.gossip.records import PeerRecord
from atomic_p2p.identity import Envelope

NOTHING = DigestEntry(0, 0, False)
"""What a node holds about a member it does not know."""


class Slot:
    """What one node holds about one member (mutable; owned by the table)."""

    __slots__ = (
        "address",
        "advanced_at",
        "beat",
        "beats",
        "down_since",
        "leave",
        "load",
        "peer_id",
        "record",
        "record_envelope",
        "source",
        "state",
        "suspect_since",
    )

    def __init__(self, record: PeerRecord, envelope: Envelope, now: float) -> None:
        self.peer_id = record.peer_id
        self.record = record
        self.record_envelope = envelope
        self.address = record.addresses[0] if record.addresses else None
        self.beat: Envelope | None = None
        self.leave: Envelope | None = None
        self.load = record.load
        self.state = MemberState.ALIVE
        self.advanced_at = now
        """When this node last saw the member's heartbeat (or record) advance."""
        self.suspect_since = now
        self.down_since = now
        self.source = ""
        """The source prefix that introduced the member here ("": unknown)."""
        self.beats = -1
        """Heartbeat advances seen since it joined; -1: it has history (never evicted)."""

    @property
    def latest(self) -> Envelope | None:
        """The leave of a member that left, else its latest beat."""
        return self.leave if self.state is MemberState.LEFT else self.beat


class MemberTable:
    """Slots and digest, plus the indexes gossip needs (see the module docstring)."""

    __slots__ = ("dead", "digest", "gossipable", "own", "ranges", "slots")

    def __init__(self, own: bytes) -> None:
        self.own = own
        self.slots: dict[bytes, Slot] = {}
        self.digest: dict[bytes, DigestEntry] = {}
        self.gossipable: dict[bytes, None] = {}
        """ALIVE or SUSPECT members other than this node that have an address (ordered set)."""
        self.dead: dict[bytes, None] = {}
        """DEAD members with an address, for reconnection attempts."""
        self.ranges = RangeIndex()
        """Range fingerprints of the records held (:mod:`atomic_p2p.gossip.ranges`)."""

    def set_version(self, slot: Slot, version: DigestEntry) -> None:
        raw = slot.peer_id.raw
        self.digest[raw] = version
        self.ranges.update(raw, version.seq, version.dead)

    def index(self, slot: Slot) -> None:
        """Refresh the indexes after a change of state or address."""
        raw = slot.peer_id.raw
        version = self.digest.get(raw)
        if version is not None:  # a beat may have revived a DEAD member behind set_version's back
            self.ranges.update(raw, version.seq, version.dead)
        if slot.state.is_down or slot.address is None or raw == self.own:
            self.gossipable.pop(raw, None)
        else:
            self.gossipable[raw] = None
        if slot.state is MemberState.DEAD and slot.address is not None:
            self.dead[raw] = None
        else:
            self.dead.pop(raw, None)

    def remove(self, raw: bytes) -> None:
        del self.slots[raw], self.digest[raw]
        self.ranges.discard(raw)
        self.gossipable.pop(raw, None)
        self.dead.pop(raw, None)

    def reconcile(
        self, theirs: Digest, slack: int, settled: float
    ) -> tuple[list[Slot], list[Envelope], dict[bytes, DigestEntry]]:
        """What a partner holding ``theirs`` lacks (whole records, beats), and what to ask it for."""
        slots, own = self.slots, self.own
        records: list[Slot] = []
        beats: list[Envelope] = []
        wanted: dict[bytes, DigestEntry] = {}
        get = theirs.get
        for raw, mine in self.digest.items():
            their = get(raw, NOTHING)
            if their == mine:
                continue
            if their.seq == mine.seq:
                gap = mine.heartbeat - their.heartbeat
                if gap > 0:
                    if gap >= slack or raw == own or (not their.dead and slots[raw].advanced_at <= settled):
                        beat = slots[raw].latest
                        if beat is not None:
                            beats.append(beat)
                elif (not their.dead or their.heartbeat == LEFT_HEARTBEAT) and (
                    -gap >= slack or (not mine.dead and slots[raw].advanced_at <= settled)
                ):
                    wanted[raw] = mine
            elif their.seq < mine.seq:
                self._offer(raw, mine, their, records, beats)
            elif not their.dead or their.heartbeat == LEFT_HEARTBEAT:
                wanted[raw] = mine
        for raw in sorted(theirs.keys() - self.digest.keys()):  # sorted: set order is per-process
            if not theirs[raw].dead:
                wanted[raw] = NOTHING
        return records, beats, wanted

    def updates_for(self, wanted: Digest) -> tuple[list[Slot], list[Envelope]]:
        """Whatever this node holds newer than the entries a partner asked for."""
        records: list[Slot] = []
        beats: list[Envelope] = []
        for raw, their in wanted.items():
            mine = self.digest.get(raw)
            if mine is not None and mine != their:
                self._offer(raw, mine, their, records, beats)
        return records, beats

    def reconcile_listed(
        self, theirs: Digest, slack: int, settled: float
    ) -> tuple[list[Slot], list[Envelope], dict[bytes, DigestEntry]]:
        """:meth:`reconcile` for a summarised request, which lists only some members: those whose
        beat went stalest at the partner (so any newer beat goes, slack or not) and those it asks
        for after comparing ranges. Members it does not list are left to the range comparison."""
        slots = self.slots
        records: list[Slot] = []
        beats: list[Envelope] = []
        wanted: dict[bytes, DigestEntry] = {}
        for raw, their in theirs.items():
            mine = self.digest.get(raw)
            if mine is None:
                if not their.dead:
                    wanted[raw] = NOTHING
            elif mine == their:
                continue
            elif mine.seq > their.seq or (mine.seq == their.seq and mine.heartbeat > their.heartbeat):
                self._offer(raw, mine, their, records, beats)
            elif their.dead and their.heartbeat != LEFT_HEARTBEAT:
                continue  # the partner gave up on it: nothing to ask for
            else:  # theirs is newer: worth asking for when far ahead, or when ours went quiet
                ahead = their.seq > mine.seq or their.heartbeat - mine.heartbeat >= slack
                if ahead or mine.dead or slots[raw].advanced_at <= settled:
                    wanted[raw] = mine
        return records, beats, wanted

    def compare_ranges(
        self, theirs: Digest, ranges: int, which: list[int]
    ) -> tuple[list[Slot], list[Envelope], dict[bytes, DigestEntry]]:
        """The partner's entries in the ranges whose fingerprints differed: what it lacks (records,
        leaves, a beat that revives a member it wrote off) and what to ask it for. Heartbeats alone
        are no difference here; liveness travels in the listed entries."""
        records: list[Slot] = []
        beats: list[Envelope] = []
        wanted: dict[bytes, DigestEntry] = {}
        for raw in self.ranges.members_in(ranges, which):
            mine = self.digest[raw]
            their = theirs.get(raw, NOTHING)
            left = mine.heartbeat == LEFT_HEARTBEAT
            if (
                mine.seq == their.seq
                and mine.dead == their.dead
                and left == (their.heartbeat == LEFT_HEARTBEAT)
            ):
                continue
            if mine.seq > their.seq or (mine.seq == their.seq and mine.heartbeat > their.heartbeat):
                self._offer(raw, mine, their, records, beats)
            elif not their.dead or their.heartbeat == LEFT_HEARTBEAT:
                wanted[raw] = mine
        chosen = set(which)
        for raw in sorted(theirs.keys() - self.digest.keys()):
            if not theirs[raw].dead and range_of(raw, ranges) in chosen:
                wanted[raw] = NOTHING
        return records, beats, wanted

    def _offer(
        self, raw: bytes, mine: DigestEntry, their: DigestEntry, records: list[Slot], beats: list[Envelope]
    ) -> None:
        if mine.seq > their.seq:
            if not mine.dead or (mine.heartbeat == LEFT_HEARTBEAT and their.seq > 0):
                records.append(self.slots[raw])
        elif mine.seq == their.seq and mine.heartbeat > their.heartbeat:  # asked for: no slack
            beat = self.slots[raw].latest
            if beat is not None:
                beats.append(beat)

    @staticmethod
    def package(
        records: list[Slot], beats: list[Envelope], budget: int, rng: random.Random
    ) -> tuple[Envelope, ...]:
        """Records (each with its beat or leave) first, then beats, at most ``budget`` envelopes.

        Over the budget a random subset goes: partners that all hold the same backlog then send
        different parts of it instead of the same first few hundred."""
        if 2 * len(records) > budget:
            records = rng.sample(records, budget // 2)
        out: list[Envelope] = []
        for slot in records:
            out.append(slot.record_envelope)
            latest = slot.latest
            if latest is not None:
                out.append(latest)
        room = budget - len(out)
        if len(beats) > room:
            beats = rng.sample(beats, room)
        out += beats
        return tuple(out)
