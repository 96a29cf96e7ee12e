"""Gossip membership: a sans-I/O state machine (values and the current time in, messages out).

How this works
--------------
Every node holds a table of members: each member's latest signed :class:`PeerRecord` (``seq``
only grows), its latest signed :class:`Heartbeat` (a counter its owner bumps every interval), and
a state: ALIVE, SUSPECT, DEAD or LEFT. The node's *digest* maps each member to ``(seq,
heartbeat)``; comparing two digests tells two nodes exactly what each lacks.

Anti-entropy, Scuttlebutt style (van Renesse et al., "Efficient Reconciliation and Flow Control
for Anti-Entropy Protocols", 2008). Every interval :meth:`tick` picks ``fanout`` random live
members and exchanges with each in turn (the next exchange starts when the previous one is
reported back, so each carries a digest that includes what the last one brought). A
:class:`GossipRequest` carries the whole digest, the node's own new heartbeat, and records issued
in the last ``push_rounds`` intervals (push, rumor mongering with an age limit). The responder
applies those, compares digests and answers with everything the initiator lacks (pull) plus the
entries the initiator holds newer (``wanted``), which the initiator sends at once as a digest-less
push. Each message carries at most ``max_updates_per_message`` envelopes, records before
heartbeats (Scuttlebutt's flow control). A heartbeat is forwarded only to a partner ``slack`` or
more beats behind unless it has settled, which bounds liveness traffic to about N / slack beats
per node per round; :mod:`atomic_p2p.gossip.table` holds these reconciliation rules.

Digest summaries (``config.summaries``, the default) keep a request's size independent of N. In
place of the whole digest a request carries range fingerprints of the records
(:mod:`atomic_p2p.gossip.ranges`, Meyer's range-based set reconciliation) and lists only the
members whose beat has gone ``slack - 1`` rounds without advancing here (or that it has no beat
from yet), oldest first, at most ``4 * beats_per_round / fanout`` of them
(``GossipConfig.listed_per_exchange``). The responder answers those with any newer beat, adds its
own, and names the ranges whose fingerprints differ along with its entries in them; the initiator
pushes what the responder lacks and pulls what it lacks in one follow-up request
(``Outgoing.follow_up``, whose answer starts nothing more). Each round also probes up to
``fanout`` SUSPECT members directly (a follow-up listing only the suspect), so a live one refutes
at once. A request without a summary is a full digest, answered as above: that is what peers
before summaries send.

Failure detection, SWIM / Lifeguard style (Das et al., 2002; Dadgar et al., 2018). A member whose
heartbeat has not advanced for ``suspicion_timeout(N)`` becomes SUSPECT; one still silent
``dead_timeout(N)`` later becomes DEAD. Both grow with ``log10 N`` (Lifeguard). A failed RPC to a
member (reported by the transport through :meth:`failed`) makes it SUSPECT at once. Any newer
heartbeat or record refutes suspicion, and revives a DEAD member: a newer signed beat is proof of
life (this is how a healed partition merges; ``reconnect_probability`` keeps some traffic going
to DEAD members so that it can). A signed :class:`Leave` makes a member LEFT; only a record with a
larger ``seq`` (a restart: ``seq`` is a millisecond timestamp) brings it back.

Tombstones. DEAD and LEFT members stay in the table for ``tombstone_ttl`` so that old gossip
cannot resurrect them: anything not newer than the tombstone's ``(seq, heartbeat)`` is refused. A
tombstone is never pushed to a node that does not know the member (that would keep tombstones
alive forever), and the records of dead members are not handed out.

Invariants: only the owner's key can advance a member (every record, beat and leave is verified
by :mod:`atomic_p2p.gossip.codec` before it is looked at); a member's version never decreases; a
node never suspects itself. Everything refused is counted in ``stats.rejected`` by reason.

Driving it (what a transport does): call :meth:`tick` at ``next_tick_at`` and send what it
returns; serve an incoming Gossip RPC with :meth:`handle_request`; pass the answer to
:meth:`handle_response` (and send what that returns), or report a failed call with :meth:`failed`;
drain :meth:`pop_events` after each call.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType

from atomic_p2p.errors import ConfigError, LimitExceededError, ProtocolError
from atomic_p2p.gossip.codec import RECORD_TYPE, Opener, sign_heartbeat, sign_leave, sign_record
from atomic_p2p.gossip.config import GossipConfig
from atomic_p2p.gossip.messages import (
    EMPTY_DIGEST,
    EMPTY_RESPONSE,
    LEFT_HEARTBEAT,
    Digest,
    DigestEntry,
    GossipRequest,
    GossipResponse,
    MemberForgotten,
    MemberJoined,
    MembershipEvent,
    MemberState,
    Outgoing,
    RecordUpdated,
    StateChanged,
)
from atomic_p2p.gossip.ranges import ranges_for, valid_summary_length
from atomic_p2p.gossip.ratelimit import TokenBuckets, work_bits
from atomic_p2p.gossip.records import (
    Heartbeat,
    Leave,
    LoadSummary,
    ModelAdvert,
    PeerRecord,
    Rejection,
    RejectReason,
    check_record,
)
from atomic_p2p.gossip.table import MemberTable, Slot
from atomic_p2p.identity import Envelope, Identity, PeerId

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
_entry = tuple.__new__  # builds a DigestEntry without NamedTuple's Python-level __new__ (3x faster)


@dataclass(slots=True)
class GossipStats:
    """Live counters (mutable; read them, don't write them)."""

    rejected: Counter[RejectReason] = field(default_factory=Counter)
    requests_sent: int = 0
    requests_received: int = 0
    responses_received: int = 0
    failed_rpcs: int = 0
    updates_received: int = 0
    updates_applied: int = 0
    duplicates: int = 0
    orphans: int = 0
    """Heartbeats or leaves for a record this node does not hold yet (the record follows)."""
    suspicions: int = 0
    evictions: int = 0
    """Newcomers evicted to make room for another newcomer (fair shares per source prefix)."""
    refutations: int = 0
    deaths: int = 0
    leaves: int = 0


class Membership:
    """One node's view of the gossip membership (see the module docstring).

    Times are wall-clock seconds since the Unix epoch (``time.time()`` in production, a virtual
    clock in the simulator); ``seq`` and ``issued_at_ms`` are derived from them.
    """

    def __init__(
        self,
        identity: Identity,
        config: GossipConfig,
        rng: random.Random,
        *,
        now: float,
        addresses: Iterable[str] = (),
        models: Iterable[ModelAdvert] = (),
        load: LoadSummary | None = None,
        seeds: Iterable[str] = (),
        opener: Opener | None = None,
        tls_certificate: bytes = b"",
    ) -> None:
        self.identity = identity
        self.config = config
        self.stats = GossipStats()
        self.next_tick_at = now
        self._rng = rng
        self._limits = config.limits
        self._open = opener or Opener(config.limits.record)
        self._raw = identity.peer_id.raw
        self._table = MemberTable(self._raw)
        self._members = self._table.slots  # aliases: the hot paths skip an attribute lookup
        self._digest = self._table.digest
        self._pending: list[tuple[str, PeerId | None]] = []  # this round's exchanges not yet started
        self._stalest: list[tuple[float, bytes]] = []  # (advanced_at, member) whose beat is due, oldest first
        self._suspects: list[bytes] = []  # SUSPECT members with an address, probed directly
        self._hot: dict[bytes, float] = {}  # recently issued record or leave -> when to stop pushing
        self._live = 1
        self._slack = config.slack(1)
        self._round = 0
        self._beat = 0
        self._load = load or LoadSummary()
        self._events: list[MembershipEvent] = []
        self._buckets = TokenBuckets(
            config.limits.rate_per_interval / config.interval,
            config.limits.rate_burst,
            config.limits.max_senders_tracked,
        )
        limits = config.limits
        self._admissions = TokenBuckets(
            limits.new_members_per_s, limits.new_members_burst, limits.max_senders_tracked
        )
        self._verifications = TokenBuckets(
            limits.verifications_per_s, limits.verifications_burst, limits.max_senders_tracked
        )
        # Members without history yet, by the source prefix that introduced them, oldest first.
        # Per source, its newcomers oldest first: OrderedDicts, so taking the oldest stays O(1)
        # while a flood keeps evicting them (a dict's first key is found past the holes left).
        self._newcomers: dict[str, OrderedDict[bytes, None]] = {}
        self._newcomer_count = 0
        record = PeerRecord(
            identity.peer_id, tuple(addresses), tuple(models), 0, 0, self._load, tls_certificate
        )
        self._seeds = tuple(s for s in seeds if s not in record.addresses)
        # A seed that failed: (failures in a row, when it may be tried again): exponential backoff.
        self.seed_backoff: dict[str, tuple[int, float]] = {}
        self._self = self._publish(now, record)
        self._members[self._raw] = self._self
        self._sign_beat()

    # --- the local member -------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def opener(self) -> Opener:
        """Verifies and caches envelopes. A transport may call it from a worker thread on a
        request's envelopes before :meth:`handle_request`, which then finds them verified."""
        return self._open

    @property
    def local_record(self) -> PeerRecord:
        return self._self.record

    @property
    def has_left(self) -> bool:
        return self._self.state is LEFT

    def update_record(
        self,
        now: float,
        *,
        addresses: Iterable[str] | None = None,
        models: Iterable[ModelAdvert] | None = None,
        load: LoadSummary | None = None,
    ) -> PeerRecord:
        """Re-sign the local record with a larger ``seq``; it is pushed for ``push_rounds`` rounds."""
        old = self._self.record
        if load is not None:
            self._load = load
        record = PeerRecord(
            old.peer_id,
            old.addresses if addresses is None else tuple(addresses),
            old.models if models is None else tuple(models),
            old.seq,
            old.issued_at_ms,
            self._load,
            old.tls_certificate,
        )
        self._publish(now, record)
        self._sign_beat()
        return self._self.record

    def set_load(self, load: LoadSummary) -> None:
        """Carried by the next heartbeats (no new record)."""
        self._load = load

    def leave(self, now: float) -> list[Outgoing]:
        """Sign a Leave and push it to ``fanout`` live members; later ticks send nothing."""
        me = self._self
        now_ms = int(now * 1000)
        signed = sign_leave(self.identity, Leave(self.peer_id, me.record.seq, now_ms))
        me.leave = signed.envelope
        self._table.set_version(me, DigestEntry(me.record.seq, LEFT_HEARTBEAT, True))
        me.state = LEFT
        request = GossipRequest(None, EMPTY_DIGEST, (signed.envelope,))
        return [Outgoing(a, p, request) for a, p in self._choose_targets(now, reconnect=False)]

    def _publish(self, now: float, record: PeerRecord) -> Slot:
        rejection = check_record(record, self._limits.record)
        if rejection is not None:
            raise ConfigError(f"local record is out of bounds: {rejection.reason.value} {rejection.detail}")
        now_ms = int(now * 1000)
        seq = max(record.seq + 1, now_ms)
        record = PeerRecord(
            record.peer_id, record.addresses, record.models, seq, now_ms, record.load, record.tls_certificate
        )
        signed = sign_record(self.identity, record)
        if len(signed.envelope.payload) > self._limits.record.max_record_bytes:
            raise ConfigError(f"local record is {len(signed.envelope.payload)} bytes, over the limit")
        member = self._members.get(self._raw) or Slot(record, signed.envelope, now)
        member.record, member.record_envelope = record, signed.envelope
        member.address = record.addresses[0] if record.addresses else None
        self._table.set_version(member, DigestEntry(seq, self._beat, False))
        return member

    def _sign_beat(self) -> None:
        me = self._self
        beat = Heartbeat(self.peer_id, me.record.seq, self._beat, self._load)
        me.beat = sign_heartbeat(self.identity, beat).envelope
        self._table.set_version(me, DigestEntry(me.record.seq, self._beat, False))

    # --- driving it ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """One gossip round: beat, update failure detection, and start this round's exchanges.

        The round's ``fanout`` exchanges run one after another: the next starts when the transport
        reports the previous one (:meth:`handle_response` or :meth:`failed` return it), so each
        carries a digest that already includes what the previous one brought, and partners do not
        all send the same news. A round's exchanges still unstarted at the next tick are dropped."""
        self.next_tick_at = now + self.config.interval
        if self.has_left:
            return []
        self._round += 1
        self._beat += 1
        self._sign_beat()
        self._sweep(now)
        self._pending = self._choose_targets(now, reconnect=True)
        self._pending.reverse()  # popped from the end
        return self._probes() + self._next_exchange(now)

    def _probes(self) -> list[Outgoing]:
        """Ask up to ``fanout`` SUSPECT members directly for their latest beat (a small summarised
        request listing only them), as SWIM probes a suspect: with digest summaries a refuting beat
        no longer reaches every node within a round or two by itself."""
        if not self.config.summaries or not self._suspects:
            return []
        chosen = self._rng.sample(self._suspects, min(self.config.fanout, len(self._suspects)))
        out: list[Outgoing] = []
        for raw in chosen:
            member = self._members[raw]
            request = GossipRequest(None, {raw: self._digest[raw]}, (), b"")
            self.stats.requests_sent += 1
            out.append(Outgoing(member.address or "", member.peer_id, request, follow_up=True))
        return out

    def handle_request(
        self, now: float, request: GossipRequest, sender: str, source: str | None = None
    ) -> GossipResponse:
        """Serve an incoming exchange.

        ``sender`` keys the per-sender rate limit: the transport's choice, e.g. the peer id of an
        established member whose signed record verifies, else the connection's address. ``source``
        (the connection's address prefix; None: not known) keys the admission of new members and
        the signature checks it may cost (see :meth:`_apply`). Raises
        :class:`LimitExceededError` when that sender is over its rate or the digest is bigger
        than the table may grow."""
        if not self._buckets.take(sender, now):
            self.stats.rejected[RejectReason.RATE_LIMITED] += 1
            raise LimitExceededError(f"gossip rate limit exceeded for {sender}")
        if len(request.digest) > self._limits.max_members:
            self.stats.rejected[RejectReason.TOO_LARGE] += 1
            raise LimitExceededError(f"digest of {len(request.digest)} entries is over the table limit")
        self.stats.requests_received += 1
        if request.sender is not None:
            self._apply(now, (request.sender,), source=source)
        self._apply(now, request.updates, source=source)
        if request.is_push:
            return EMPTY_RESPONSE
        settled = now - self._slack * self.config.interval
        if request.summary is None:
            records, beats, wanted = self._table.reconcile(request.digest, self._slack, settled)
            updates = self._table.package(records, beats, self._limits.max_updates_per_message, self._rng)
            return GossipResponse(updates, MappingProxyType(wanted) if wanted else EMPTY_DIGEST)
        return self._answer_summarised(request, settled)

    def _answer_summarised(self, request: GossipRequest, settled: float) -> GossipResponse:
        summary = request.summary or b""
        if summary and not valid_summary_length(len(summary)):
            raise ProtocolError(f"a digest summary of {len(summary)} bytes is not a valid set of ranges")
        records, beats, wanted = self._table.reconcile_listed(request.digest, self._slack, settled)
        if not summary and not request.digest:
            # "who is at this address": a client learns the id (and addresses, models) behind an
            # address from the signed record, sent with its latest beat (docs/protocol.md section 2)
            records.append(self._self)
        elif self._raw not in request.digest and self._self.beat is not None:
            beats.append(self._self.beat)  # answering proves this node alive: say so, signed
        ranges: dict[bytes, DigestEntry] = {}
        differing: list[int] = []
        if summary:
            differing = self._table.ranges.differing(summary)
            digest = self._digest
            members = self._table.ranges.members_in(len(summary) // 8, differing)
            ranges = {raw: digest[raw] for raw in members}
        updates = self._table.package(records, beats, self._limits.max_updates_per_message, self._rng)
        return GossipResponse(
            updates,
            MappingProxyType(wanted) if wanted else EMPTY_DIGEST,
            tuple(differing),
            MappingProxyType(ranges) if ranges else EMPTY_DIGEST,
        )

    def handle_response(
        self, now: float, outgoing: Outgoing, response: GossipResponse, source: str | None = None
    ) -> list[Outgoing]:
        """Apply an answer. Returns what to send next: a push of what the responder wanted, and
        the round's next exchange. ``source``: the responder's address prefix, as for
        :meth:`handle_request`."""
        self.stats.responses_received += 1
        self._seed_answered(outgoing.address, True, now)
        self._apply(now, response.updates, source=source)
        request = outgoing.request
        if request.is_push:
            return []
        records: list[Slot] = []
        beats: list[Envelope] = []
        if response.wanted:
            records, beats = self._table.updates_for(response.wanted)
        pull: dict[bytes, DigestEntry] = {}
        if response.differing and request.summary and not outgoing.follow_up:
            count = len(request.summary) // 8
            differing = [i for i in response.differing if i < count]
            lacking, leaves, pull = self._table.compare_ranges(response.ranges, count, differing)
            records += lacking
            beats += leaves
        out: list[Outgoing] = []
        budget = self._limits.max_updates_per_message
        updates = self._table.package(records, beats, budget, self._rng)
        if updates:
            out.append(
                Outgoing(outgoing.address, outgoing.peer_id, GossipRequest(None, EMPTY_DIGEST, updates))
            )
        if pull:
            # a second pull, for what the ranges showed missing here (records come with a beat)
            asked = (
                dict(self._rng.sample(sorted(pull.items()), budget // 2)) if len(pull) > budget // 2 else pull
            )
            follow_up = GossipRequest(None, asked, (), b"")
            self.stats.requests_sent += 1
            out.append(Outgoing(outgoing.address, outgoing.peer_id, follow_up, follow_up=True))
        return out if outgoing.follow_up else out + self._next_exchange(now)

    def failed(self, now: float, outgoing: Outgoing, suspect: bool = True) -> list[Outgoing]:
        """``outgoing`` got no answer. Returns the round's next exchange, if any.

        For a transport failure (unreachable, timed out: UNAVAILABLE, DEADLINE_EXCEEDED) the peer
        becomes SUSPECT at once (Lifeguard). A peer that answered with an error status (say
        RESOURCE_EXHAUSTED for a rate limit) is alive: pass ``suspect=False``."""
        self.stats.failed_rpcs += 1
        self._seed_answered(outgoing.address, False, now)
        peer = outgoing.peer_id
        member = self._members.get(peer.raw) if peer is not None and suspect else None
        if member is not None and member.state is ALIVE and member is not self._self:
            self._suspect(member, now)
        return [] if outgoing.request.is_push or outgoing.follow_up else self._next_exchange(now)

    def suspect(self, now: float, peer: PeerId) -> None:
        """Evidence from outside gossip (a market call that found ``peer`` unreachable): an ALIVE
        member becomes SUSPECT at once, as after a failed gossip exchange (:meth:`failed`)."""
        member = self._members.get(peer.raw)
        if member is not None and member.state is ALIVE and member is not self._self:
            self._suspect(member, now)

    def _next_exchange(self, now: float) -> list[Outgoing]:
        if not self._pending or self.has_left:
            return []
        address, peer = self._pending.pop()
        if self.config.summaries:
            summary = self._table.ranges.summary(ranges_for(self._live))
            request = GossipRequest(
                self._self.record_envelope, self._stalest_entries(), self._push_updates(now), summary
            )
        else:
            request = GossipRequest(
                # a private copy, typed read-only; not wrapped in a MappingProxyType, whose extra
                # indirection costs the responder ~10% of its hottest loop
                self._self.record_envelope,
                dict(self._digest),
                self._push_updates(now),
            )
        self.stats.requests_sent += 1
        return [Outgoing(address, peer, request)]

    def _stalest_entries(self) -> dict[bytes, DigestEntry]:
        """The members whose beat went stalest here (SUSPECT ones first: they are the oldest), at
        most ``config.listed_per_exchange()``; those refreshed by this round's earlier exchanges
        are skipped. A partner answers each with any newer beat it holds."""
        wanted = self.config.listed_per_exchange()
        members, digest = self._members, self._digest
        out: dict[bytes, DigestEntry] = {}
        for advanced_at, raw in self._stalest:
            member = members.get(raw)
            if member is None or member.advanced_at != advanced_at:
                continue
            if member.state is ALIVE or member.state is SUSPECT:
                out[raw] = digest[raw]
                if len(out) == wanted:
                    break
        return out

    def absorb(self, now: float, envelopes: Iterable[Envelope]) -> None:
        """Apply signed records, beats and leaves from elsewhere (a saved snapshot, a seed list).

        Not rate limited or capped, and nothing absorbed is pushed as news: it is the caller's."""
        self._apply(now, tuple(envelopes), news=False)

    def snapshot(self) -> list[Envelope]:
        """Records and latest beats of every member not written off, for :meth:`absorb` later."""
        out: list[Envelope] = []
        for member in self._members.values():
            if not member.state.is_down:
                out.append(member.record_envelope)
                if member.beat is not None:
                    out.append(member.beat)
        return out

    def pop_events(self) -> list[MembershipEvent]:
        events, self._events = self._events, []
        return events

    # --- queries ------------------------------------------------------------------------------

    def live_members(self) -> list[PeerRecord]:
        """Records of ALIVE members other than this node."""
        return [m.record for m in self._members.values() if m.state is ALIVE and m is not self._self]

    def has_history(self, peer: PeerId) -> bool:
        """Whether ``peer`` is a member that has been here long enough (``established_beats``) to
        be no newcomer: it gets its own rate limit and is never evicted for a newcomer."""
        member = self._members.get(peer.raw)
        return member is not None and member.beats < 0 and member is not self._self

    def state_of(self, peer: PeerId) -> MemberState | None:
        member = self._members.get(peer.raw)
        return member.state if member is not None else None

    def record_of(self, peer: PeerId) -> PeerRecord | None:
        member = self._members.get(peer.raw)
        return member.record if member is not None else None

    def load_of(self, peer: PeerId) -> LoadSummary | None:
        """The latest load a member reported (from its last heartbeat, else its record)."""
        member = self._members.get(peer.raw)
        return member.load if member is not None else None

    def counts(self) -> Counter[MemberState]:
        return Counter(m.state for m in self._members.values())

    def digest(self) -> Digest:
        return MappingProxyType(dict(self._digest))

    @property
    def member_count(self) -> int:
        """Members not written off (ALIVE or SUSPECT), this node included: the N of the timeouts."""
        return self._live

    # --- receiving ----------------------------------------------------------------------------

    def _apply(
        self, now: float, envelopes: tuple[Envelope, ...], news: bool = True, source: str | None = None
    ) -> None:
        """Open and apply envelopes. With a ``source``, cheap checks come first: a record for a
        member not in the table must pass :meth:`_may_admit` (its prefix's admission rate, the
        identity's work) before its signature is checked, and each envelope not verified before
        takes a token of the prefix's verification budget; the rest of a message past it is
        dropped unverified (counted RATE_LIMITED)."""
        limit = self._limits.max_updates_per_message
        if news and len(envelopes) > limit:
            self.stats.rejected[RejectReason.TOO_MANY_UPDATES] += len(envelopes) - limit
            envelopes = envelopes[:limit]
        self.stats.updates_received += len(envelopes)
        for index, envelope in enumerate(envelopes):
            if source is not None and not self._open.cached(envelope):
                if envelope.payload_type == RECORD_TYPE and not self._may_admit(now, envelope, source):
                    continue
                if not self._verifications.take(source, now):
                    self.stats.rejected[RejectReason.RATE_LIMITED] += len(envelopes) - index
                    return
            opened = self._open(envelope)
            if isinstance(opened, Rejection):
                self.stats.rejected[opened.reason] += 1
                continue
            value = opened.value
            if value.peer_id.raw == self._raw:
                continue
            if isinstance(value, Heartbeat):
                self._apply_beat(now, envelope, value)
            elif isinstance(value, PeerRecord):
                self._apply_record(now, envelope, value, news, source)
            else:
                self._apply_leave(now, envelope, value, news)

    def _apply_beat(self, now: float, envelope: Envelope, beat: Heartbeat) -> None:
        raw = beat.peer_id.raw
        version = self._digest.get(raw)
        if version is None or beat.record_seq != version.seq:
            if version is None or beat.record_seq > version.seq:
                self.stats.orphans += 1
            else:
                self.stats.rejected[RejectReason.STALE] += 1
            return
        if beat.heartbeat <= version.heartbeat:
            if version.dead:
                self.stats.rejected[RejectReason.TOMBSTONED] += 1
            else:
                self.stats.duplicates += 1
            return
        member = self._members[raw]
        member.beat = envelope
        member.load = beat.load
        member.advanced_at = now
        if member.beats >= 0:  # a newcomer earns history beat by beat
            member.beats += 1
            if member.beats >= self._limits.established_beats:
                self._settle(member)
        self._digest[raw] = _entry(DigestEntry, (version.seq, beat.heartbeat, False))
        self.stats.updates_applied += 1
        if member.state is not ALIVE:
            self.stats.refutations += 1
            self._set_state(member, ALIVE, now)

    def _apply_record(
        self, now: float, envelope: Envelope, record: PeerRecord, news: bool, source: str | None = None
    ) -> None:
        horizon_ms = (now + self._limits.max_clock_skew_s) * 1000
        if record.issued_at_ms > horizon_ms or record.seq > horizon_ms:
            # seq is a millisecond timestamp too (:meth:`_publish`): 2**64 - 1 would freeze the member
            self.stats.rejected[RejectReason.FROM_THE_FUTURE] += 1
            return
        if record.issued_at_ms == 0:  # every record is stamped when signed
            self.stats.rejected[RejectReason.INVALID_FIELD] += 1
            return
        raw = record.peer_id.raw
        member = self._members.get(raw)
        if member is None:
            if not self._make_room():
                self.stats.rejected[RejectReason.TABLE_FULL] += 1
                return
            member = self._members[raw] = Slot(record, envelope, now)
            if news:  # absorbed records (a snapshot, a seed list) were members before
                member.source, member.beats = source or "", 0
                self._newcomers.setdefault(member.source, OrderedDict())[raw] = None
                self._newcomer_count += 1
            self._table.set_version(member, DigestEntry(record.seq, 0, False))
            self._live += 1
            self._table.index(member)
            self._events.append(MemberJoined(record.peer_id, record))
        elif record.seq <= member.record.seq:
            self._not_newer(member, stale=record.seq < member.record.seq)
            return
        else:
            member.record, member.record_envelope, member.load = record, envelope, record.load
            member.address = record.addresses[0] if record.addresses else None
            member.beat = member.leave = None
            member.advanced_at = now
            self._table.set_version(member, DigestEntry(record.seq, 0, False))
            self._events.append(RecordUpdated(record.peer_id, record))
            if member.state is not ALIVE:
                self.stats.refutations += member.state is SUSPECT
                self._set_state(member, ALIVE, now)
            else:
                self._table.index(member)
        self.stats.updates_applied += 1
        if news:
            self._mark_hot(now, raw, record.issued_at_ms)

    def _apply_leave(self, now: float, envelope: Envelope, leave: Leave, news: bool) -> None:
        if leave.issued_at_ms > (now + self._limits.max_clock_skew_s) * 1000:
            self.stats.rejected[RejectReason.FROM_THE_FUTURE] += 1
            return
        member = self._members.get(leave.peer_id.raw)
        if member is None or leave.record_seq > member.record.seq:
            self.stats.orphans += 1
            return
        if leave.record_seq < member.record.seq or member.state is LEFT:
            self._not_newer(member, stale=leave.record_seq < member.record.seq)
            return
        member.leave = envelope
        self._table.set_version(member, DigestEntry(leave.record_seq, LEFT_HEARTBEAT, True))
        self.stats.updates_applied += 1
        self.stats.leaves += 1
        self._set_state(member, LEFT, now)
        if news:
            self._mark_hot(now, leave.peer_id.raw, leave.issued_at_ms)

    def _not_newer(self, member: Slot, stale: bool = False) -> None:
        if self._digest[member.peer_id.raw].dead:  # DEAD or LEFT, without an Enum property call
            self.stats.rejected[RejectReason.TOMBSTONED] += 1
        elif stale:
            self.stats.rejected[RejectReason.STALE] += 1
        else:
            self.stats.duplicates += 1

    # --- sending ------------------------------------------------------------------------------

    def _choose_targets(self, now: float, reconnect: bool) -> list[tuple[str, PeerId | None]]:
        fanout = self.config.fanout
        pool = list(self._table.gossipable)
        chosen = self._rng.sample(pool, min(fanout, len(pool)))
        targets: list[tuple[str, PeerId | None]] = []
        for raw in chosen:
            member = self._members[raw]
            if member.address is not None:  # always, for gossipable members
                targets.append((member.address, member.peer_id))
        if len(targets) < fanout and self._seeds:
            known = {address for address, _ in targets}
            spare = [s for s in self._seeds if s not in known and self._seed_due(s, now)]
            targets += [(s, None) for s in self._rng.sample(spare, min(fanout - len(targets), len(spare)))]
        dead = self._table.dead
        if reconnect and dead and self._rng.random() < self.config.reconnect_probability:
            member = self._members[self._rng.choice(list(dead))]
            if member.address is not None:
                targets.append((member.address, member.peer_id))
        return targets

    def _seed_due(self, seed: str, now: float) -> bool:
        """Whether ``seed`` may be tried this round (not backing off after failed tries)."""
        backoff = self.seed_backoff.get(seed)
        return backoff is None or backoff[1] <= now

    def seed_retry_s(self, seed: str, now: float) -> float:
        """Seconds until ``seed`` is tried again (0: this round)."""
        backoff = self.seed_backoff.get(seed)
        return 0.0 if backoff is None else max(0.0, backoff[1] - now)

    def _seed_answered(self, address: str, answered: bool, now: float) -> None:
        if address not in self._seeds:
            return
        if answered:
            self.seed_backoff.pop(address, None)
            return
        failures = self.seed_backoff.get(address, (0, now))[0] + 1
        wait = min(self.config.interval * 2 ** (failures - 1), self.config.seed_backoff_max_s)
        self.seed_backoff[address] = (failures, now + wait)

    def _mark_hot(self, now: float, raw: bytes, issued_at_ms: int) -> None:
        """Push news unasked while it is young: for ``push_rounds`` intervals after it was issued
        (rumor mongering with an age limit), so a bulk download of old records pushes nothing."""
        until = issued_at_ms / 1000 + self.config.push_rounds * self.config.interval
        if until > now:
            self._hot[raw] = until

    def _push_updates(self, now: float) -> tuple[Envelope, ...]:
        """The new own beat, plus records and leaves young enough to push (newest first)."""
        updates = [] if self._self.beat is None else [self._self.beat]
        for raw, until in list(self._hot.items()):
            if until <= now or raw not in self._members:
                del self._hot[raw]
        budget = self._limits.max_updates_per_message // 4
        young = sorted(self._hot, key=self._hot.__getitem__, reverse=True)[: budget // 2]
        for raw in young:
            member = self._members[raw]
            if member.state is LEFT and member.leave is not None:
                updates.append(member.leave)
            elif not member.state.is_down:
                updates.append(member.record_envelope)
                if member.beat is not None:
                    updates.append(member.beat)
        return tuple(updates)

    # --- failure detection --------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        config = self.config
        self._slack = config.slack(self._live)
        suspect_after = config.suspicion_timeout(self._live)
        dead_after = config.dead_timeout(self._live)
        forget_before = now - config.tombstone_ttl
        due = now - (self._slack - 1) * config.interval  # asked for again from the slack-th round on
        expired: list[Slot] = []
        stalest: list[tuple[float, bytes]] = []
        suspects: list[bytes] = []
        for member in self._members.values():
            state = member.state
            if state is ALIVE:
                # a member not heard from yet (learned from a snapshot, a seed, or everyone at
                # once at a cold start) is asked for at once: waiting until it is due puts the
                # whole table in one backlog, slack rounds later, too close to the timeout
                if (member.advanced_at <= due or member.beat is None) and member is not self._self:
                    stalest.append((member.advanced_at, member.peer_id.raw))
                if now - member.advanced_at > suspect_after and member is not self._self:
                    self._suspect(member, now)
            elif state is SUSPECT:
                stalest.append((member.advanced_at, member.peer_id.raw))
                if member.address is not None:
                    suspects.append(member.peer_id.raw)
                if now - member.suspect_since > dead_after:
                    self.stats.deaths += 1
                    self._set_state(member, DEAD, now)
            elif member.down_since < forget_before and member is not self._self:
                expired.append(member)
        stalest.sort()
        self._stalest = stalest
        self._suspects = suspects
        for member in expired:
            self._forget(member)

    # --- admission: fair shares per source ----------------------------------------------------

    def _may_admit(self, now: float, envelope: Envelope, source: str) -> bool:
        """Cheap checks on a record before its signature is verified: a member already held passes;
        a new one needs the identity's work and a token of its source prefix's admission rate."""
        signer = envelope.signer.raw  # sha256 of the key: what the peer id must be
        if signer in self._members:
            return True
        if work_bits(signer) < self._limits.identity_work_bits:
            self.stats.rejected[RejectReason.NO_WORK] += 1
            return False
        if not self._admissions.take(source, now):
            self.stats.rejected[RejectReason.RATE_LIMITED] += 1
            return False
        return True

    def _make_room(self) -> bool:
        """Room for one more member: in a full table, or once newcomers hold their share, the
        oldest newcomer of the prefix that introduced the most goes. Members with history are
        never evicted, so neither one prefix nor a burst of fresh identities can push them out
        (a member that has left or died goes only at its tombstone's expiry)."""
        limits = self._limits
        full = len(self._members) >= limits.max_members
        if not full and self._newcomer_count < limits.newcomer_share * limits.max_members:
            return True
        if not self._newcomers:
            return not full
        group = max(self._newcomers.values(), key=len)
        victim = self._members[next(iter(group))]
        self.stats.evictions += 1
        self._forget(victim)
        return True

    def _settle(self, member: Slot) -> None:
        """``member`` has history now (or is gone): it leaves the newcomers."""
        group = self._newcomers.get(member.source)
        if group is not None and group.pop(member.peer_id.raw, 0) is None:
            self._newcomer_count -= 1
            if not group:
                del self._newcomers[member.source]
        member.beats = -1

    def _forget(self, member: Slot) -> None:
        raw = member.peer_id.raw
        if member.beats >= 0:
            self._settle(member)
        if not member.state.is_down:
            self._live -= 1
        self._table.remove(raw)
        self._hot.pop(raw, None)
        self._events.append(MemberForgotten(member.peer_id))

    def _suspect(self, member: Slot, now: float) -> None:
        self.stats.suspicions += 1
        member.suspect_since = now
        self._set_state(member, SUSPECT, now)

    def _set_state(self, member: Slot, state: MemberState, now: float) -> None:
        previous = member.state
        if previous is state:
            return
        member.state = state
        raw = member.peer_id.raw
        if state.is_down and not previous.is_down:
            member.down_since = now
            self._live -= 1
        elif previous.is_down and not state.is_down:
            self._live += 1
        if state is DEAD:
            version = self._digest[raw]
            self._table.set_version(member, DigestEntry(version.seq, version.heartbeat, True))
        self._table.index(member)
        self._events.append(StateChanged(member.peer_id, previous, state))
