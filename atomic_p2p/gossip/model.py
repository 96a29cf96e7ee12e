"""A vectorised model of the gossip protocol, for memberships the simulator cannot hold (10,000 nodes).

How this works
--------------
:mod:`atomic_p2p.gossip.simulator` runs a real :class:`~atomic_p2p.gossip.membership.Membership`
per node: at 10,000 nodes that is 10^8 member slots (about 60 GB of Python objects) and 10^8 slot
visits a round, far past one machine. This model plays the same protocol (digest summaries, the
default) on numpy matrices instead: row ``i`` is node ``i``'s table, column ``j`` a member.

- ``version[i, j]``: the newest ``(seq, heartbeat)`` node ``i`` holds about ``j``, as
  ``generation << 24 | heartbeat`` (generation 1: the record ``j`` published with
  :meth:`GossipModel.publish`), so "newer" is one integer comparison; ``advanced[i, j]``: when
  ``i`` saw it advance (ms, dated by arrival, as ``Slot.advanced_at``); ``state[i, j]``: ALIVE,
  SUSPECT or DEAD; ``suspected[i, j]``: when it became SUSPECT.
- Node ``i`` is the simulator's node with the ``i``-th smallest peer id (same seeds, same keys), so
  "oldest first, ties by peer id" is "oldest first, ties by column". A node lists only the first
  :data:`CANDIDATES` of its stale members; a backlog longer than that (after a start where every
  member was heard of at once) is cut with a partition, not sorted.
- Time runs in buckets of ``step`` seconds (default 50 ms, about one exchange's round trip). A
  node ticks once per interval at a random phase: it beats, sweeps its row (SUSPECT after
  ``suspicion_timeout(N)`` of silence, DEAD ``dead_timeout(N)`` later), lists its stalest members
  (age at least ``slack - 1`` rounds, or SUSPECT, oldest first, ties by peer id), probes up to
  ``fanout`` suspects directly and starts the first of ``fanout`` exchanges with random live members;
  each next exchange starts when the previous one's answer arrives (two delays uniform in
  ``delay_min..delay_max``) or its ``rpc_timeout`` passes. Exchanges due in the same bucket run
  together, as one batch.
- An exchange is the summarised one of ``Membership``: the request carries the initiator's record,
  its own beat, records younger than ``push_rounds`` intervals, the fingerprints of
  ``ranges_for(N)`` ranges and up to ``listed_per_exchange()`` of the stalest members
  not refreshed since the tick; the responder answers listed members with any newer beat (records
  when the seq is newer), adds its own beat, asks back for what the initiator holds newer
  (``reconcile_listed``: far ahead, or quiet here for ``slack`` rounds), and returns its entries in
  every range whose fingerprint differs (records published or members written off); the initiator
  pushes what was asked and what the ranges show the responder lacks, and pulls what they show it
  lacks. Each message is lost with probability ``loss``; a failed exchange, push or pull makes the
  initiator suspect the responder, as ``Membership.failed`` does.
- Bytes are counted per message from sizes the real codec gives (``request_wire_size``,
  ``response_wire_size`` on real signed records, beats and digest entries, real peer ids and
  ``ranges_for``): each message's size is the sum of its parts, as protobuf's is.

Left out: rate limits (an honest node stays far below them), newcomer admission and eviction,
tombstone expiry, crashes, leaves and joins; an exchange still in flight at the next tick ends
its chain (in ``Membership`` its answer would start one more of the new round's). A member written off (DEAD) still makes its range's
fingerprints differ (so the bytes count), but the model does not replay how those entries reconcile.
``scripts/bench_gossip.py --model`` runs it beside the simulator at 100 and 1000 nodes and reports
how closely they agree (docs/gossip.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from atomic_p2p.errors import ConfigError
from atomic_p2p.gossip.codec import (
    digest_size,
    request_wire_size,
    response_wire_size,
    sign_heartbeat,
    sign_record,
)
from atomic_p2p.gossip.config import GossipConfig
from atomic_p2p.gossip.messages import EMPTY_DIGEST, DigestEntry, GossipRequest, GossipResponse
from atomic_p2p.gossip.ranges import FINGERPRINT_BYTES, ranges_for
from atomic_p2p.gossip.records import Heartbeat, PeerRecord
from atomic_p2p.gossip.simulator import START, Network, default_models
from atomic_p2p.identity import Identity

ALIVE, SUSPECT, DEAD = 0, 1, 2
GENERATION = 1 << 24
"""``version`` of a member's published record with heartbeat 0 (heartbeats stay below it)."""
CANDIDATES = 384
"""Stalest members kept per node at its tick: enough for ``fanout`` listings of the budget."""

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class WireSizes:
    """Encoded sizes of the parts of gossip messages, from the real codec."""

    record: Ints
    """Each node's sender record (as a request's ``sender`` field, or an update)."""
    new_record: Ints
    """Each node's record after :meth:`GossipModel.publish` (its models dropped)."""
    beat: tuple[int, int, int]
    """A heartbeat update whose counter takes 1, 2 or 3 varint bytes."""
    entry: tuple[int, int, int, int]
    """A digest entry whose heartbeat is 0, or takes 1, 2 or 3 varint bytes."""

    @classmethod
    def measure(cls, identities: list[Identity], indices: list[int], seq: int, new_seq: int) -> WireSizes:
        def update(envelope: object) -> int:  # a push with one update: just that update's field
            return request_wire_size(GossipRequest(None, EMPTY_DIGEST, (envelope,)))  # type: ignore[arg-type]

        records, new_records = [], []
        for index, identity in zip(indices, identities, strict=True):
            address = (f"sim-{index}:7000",)
            old = PeerRecord(identity.peer_id, address, default_models(index), seq, seq)
            records.append(update(sign_record(identity, old).envelope))
            new = PeerRecord(identity.peer_id, address, (), new_seq, new_seq)
            new_records.append(update(sign_record(identity, new).envelope))
        peer = identities[0].peer_id
        beats = [
            update(sign_heartbeat(identities[0], Heartbeat(peer, seq, h)).envelope) for h in (1, 200, 20_000)
        ]
        raw = peer.raw
        entries = [digest_size({raw: DigestEntry(seq, h)}) for h in (0, 1, 200, 20_000)]
        return cls(
            np.array(records, dtype=np.int64),
            np.array(new_records, dtype=np.int64),
            (beats[0], beats[1], beats[2]),
            (entries[0], entries[1], entries[2], entries[3]),
        )

    def beats(self, versions: Ints) -> Ints:
        heartbeat = versions & (GENERATION - 1)
        table = np.array(self.beat, dtype=np.int64)
        return table[(heartbeat >= 128).astype(np.int64) + (heartbeat >= 16384)]

    def entries(self, versions: Ints) -> Ints:
        heartbeat = versions & (GENERATION - 1)
        table = np.array(self.entry, dtype=np.int64)
        return table[(heartbeat > 0).astype(np.int64) + (heartbeat >= 128) + (heartbeat >= 16384)]


def _sum_by(rows: Ints, values: Ints, count: int) -> Ints:
    """``out[r]``: the sum of ``values`` where ``rows`` is ``r``."""
    return np.bincount(rows, values, minlength=count).astype(np.int64)


def summary_bytes(ranges: int) -> int:
    """What a summary of ``ranges`` fingerprints adds to a request."""
    request = GossipRequest(None, EMPTY_DIGEST, (), bytes(ranges * FINGERPRINT_BYTES))
    return request_wire_size(request)


def differing_bytes(count: int) -> int:
    """What a response's list of ``count`` differing ranges (small indices) adds."""
    return response_wire_size(GossipResponse((), differing=tuple(range(count)))) if count else 0


class GossipModel:
    """``size`` nodes that start converged (everyone holds everyone's record, heartbeat 0), like
    ``Simulator(size, bootstrap="full")``. ``run_rounds`` advances the clock; counters are public."""

    def __init__(
        self,
        size: int,
        *,
        config: GossipConfig | None = None,
        network: Network | None = None,
        seed: int = 0,
        step: float = 0.05,
    ) -> None:
        self.config = config or GossipConfig()
        if not self.config.summaries:
            raise ConfigError("the model plays the summarised protocol only (summaries=True)")
        self.network = network or Network()
        self.size = n = size
        self.step = step
        self.now = 0.0
        """Seconds since the start (the simulator's clock minus :data:`START`)."""
        self.rng = np.random.default_rng([seed, size])
        # the simulator's nodes (same seeds, same keys), numbered here in peer id order, so that
        # "oldest first, ties by peer id" is "oldest first, ties by column"
        identities = [Identity.from_seed(f"sim/{seed}/{index}".encode()) for index in range(n)]
        self.simulated = sorted(range(n), key=lambda index: identities[index].peer_id.raw)
        """``simulated[i]``: the simulator's index of node ``i`` here."""
        identities = [identities[index] for index in self.simulated]
        self.top = np.array([int.from_bytes(i.peer_id.raw[:4], "big") for i in identities], dtype=np.int64)
        seq = int(START * 1000)
        self.sizes = WireSizes.measure(identities, self.simulated, seq, seq + 60_000)
        self.version = np.zeros((n, n), dtype=np.int32)
        self.advanced = np.zeros((n, n), dtype=np.int32)
        self.state = np.zeros((n, n), dtype=np.int8)
        self.suspected = np.zeros((n, n), dtype=np.int32)
        self.live = np.full(n, n, dtype=np.int64)
        self.dead_count = np.zeros(n, dtype=np.int64)
        self.next_tick = self.rng.uniform(0, self.config.interval, n)
        self.next_exchange = np.full(n, np.inf)
        self.targets = np.full((n, self.config.fanout + 1), -1, dtype=np.int64)
        self.pending = np.zeros(n, dtype=np.int64)
        self.listing = self.config.listed_per_exchange()
        if self.listing * self.config.fanout > CANDIDATES:
            raise ConfigError(f"the model keeps {CANDIDATES} stalest members a tick: list fewer")
        self.candidates = np.full((n, CANDIDATES), -1, dtype=np.int64)
        self.candidate_at = np.zeros((n, CANDIDATES), dtype=np.int32)
        self.origins: list[int] = []
        self.published_at: list[float] = []
        self.reached: list[npt.NDArray[np.float64]] = []
        self.is_origin = np.full(n, -1, dtype=np.int64)
        self.measure_bytes = False
        self.bytes_sent = np.zeros(n, dtype=np.float64)
        self.messages = 0
        self.false_deaths = 0
        self.death_times: list[float] = []
        """When each (false) death happened, in seconds since the start."""
        self.suspicions = 0
        self._range_counts_cache: dict[int, Ints] = {}
        self._timings: dict[int, tuple[int, int, int, int]] = {}

    # --- the clock ----------------------------------------------------------------------------

    def run_rounds(self, rounds: float) -> None:
        until = self.now + rounds * self.config.interval
        while self.now < until - 1e-12:
            end = min(self.now + self.step, until)
            ticking = np.flatnonzero(self.next_tick < end)
            if len(ticking):
                self._tick(ticking)
            for _ in range(64):  # exchanges due in this bucket, one per node per batch
                due = np.flatnonzero(self.next_exchange < end)
                if not len(due):
                    break
                self._next(due)
            self.now = end

    def publish(self, origin: int) -> None:
        """``origin`` publishes a new record now (``Membership.update_record``); it spreads from here."""
        self.is_origin[origin] = len(self.origins)
        self.origins.append(origin)
        self.published_at.append(self.now)
        self.reached.append(np.full(self.size, np.nan))
        self.version[origin, origin] = GENERATION | (int(self.version[origin, origin]) & (GENERATION - 1))
        self.advanced[origin, origin] = self._ms(self.now)

    def _ms(self, seconds: float | npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
        return np.asarray(np.round(np.asarray(seconds) * 1000), dtype=np.int32)

    # --- a round: beat, sweep, probe, first exchange --------------------------------------------

    def _tick(self, nodes: Ints) -> None:
        config = self.config
        now = self.next_tick[nodes].copy()
        self.next_tick[nodes] += config.interval
        own = self.version[nodes, nodes] + 1
        self.version[nodes, nodes] = own
        self.advanced[nodes, nodes] = self._ms(now)
        probes = self._sweep(nodes, self._ms(now))
        self._choose_targets(nodes)
        if len(probes[0]):
            self._probe(*probes)
        self.next_exchange[nodes] = now
        self._next(nodes)

    def _per_live(self, lives: Ints) -> npt.NDArray[np.int64]:
        """Per node, from its count of members not written off: slack (rounds), suspicion and dead
        timeouts (ms), and the number of summary ranges, as ``GossipConfig`` and ``ranges_for`` say."""
        config = self.config
        values, where = np.unique(lives, return_inverse=True)
        table = []
        for live in values.tolist():
            row = self._timings.get(live)
            if row is None:
                row = self._timings[live] = (
                    config.slack(live),
                    round(config.suspicion_timeout(live) * 1000),
                    round(config.dead_timeout(live) * 1000),
                    ranges_for(live),
                )
            table.append(row)
        return np.array(table, dtype=np.int64).reshape(-1, 4)[where]

    def _sweep(self, nodes: Ints, now: npt.NDArray[np.int32]) -> tuple[Ints, Ints]:
        """``Membership._sweep`` for each ticking node; returns the suspects it probes."""
        config = self.config
        timing = self._per_live(self.live[nodes])
        now64 = now.astype(np.int64)
        due = now64 - (timing[:, 0] - 1) * round(config.interval * 1000)
        suspect_before = now64 - timing[:, 1]
        if config.heartbeat_slack is not None and np.any(suspect_before > due):
            raise ConfigError("the model needs the suspicion timeout longer than the slack")
        advanced, state = self.advanced[nodes], self.state[nodes]
        rows = np.arange(len(nodes))
        pr, pc = np.nonzero(state == SUSPECT)
        # ALIVE members silent since ``due``: listed, and suspected past the suspicion timeout
        # (a subset: the timeout is longer than the slack)
        old = advanced <= due[:, None].astype(np.int32)
        old |= (self.version[nodes] & (GENERATION - 1)) == 0  # no beat heard yet: asked for at once
        old &= state == ALIVE
        old[rows, nodes] = False  # never suspects or lists itself
        backlog = old.sum(axis=1) + np.bincount(pr, minlength=len(nodes))
        long = np.flatnonzero(backlog > CANDIDATES)
        short = np.flatnonzero(backlog <= CANDIDATES)
        if len(long):
            sr, sc = np.nonzero(old[short])
            sr = short[sr]
        else:
            sr, sc = np.nonzero(old)
        aged = advanced[sr, sc] < suspect_before[sr]
        newly_r, newly_c = sr[aged], sc[aged]
        if len(long):
            lr, lc = np.nonzero(old[long] & (advanced[long] < suspect_before[long, None].astype(np.int32)))
            newly_r, newly_c = np.concatenate([newly_r, long[lr]]), np.concatenate([newly_c, lc])
        if len(newly_r):
            self.state[nodes[newly_r], newly_c] = SUSPECT
            self.suspected[nodes[newly_r], newly_c] = now[newly_r]
            self.suspicions += len(newly_r)
        # members SUSPECT past the dead timeout: DEAD (still listed and probed this round, as there)
        dying = now64[pr] - self.suspected[nodes[pr], pc] > timing[pr, 2]
        if dying.any():
            self.state[nodes[pr[dying]], pc[dying]] = DEAD
            counts = np.bincount(pr[dying], minlength=len(nodes))
            self.live[nodes] -= counts
            self.dead_count[nodes] += counts
            self.false_deaths += int(dying.sum())  # the model crashes nobody: every death is false
            self.death_times += (now64[pr[dying]] / 1000).tolist()
        # the stalest members, oldest first, ties by peer id (the sorted (advanced_at, raw) list):
        # only the first CANDIDATES matter; a long backlog is cut by a partition, not a sort
        in_short = np.isin(pr, short) if len(long) else np.ones(len(pr), dtype=bool)
        sr, sc = np.concatenate([sr, pr[in_short]]), np.concatenate([sc, pc[in_short]])
        if len(long):
            key = np.where(old[long], advanced[long], np.iinfo(np.int32).max)
            where = np.flatnonzero(~in_short)
            position = np.searchsorted(long, pr[where])
            key[position, pc[where]] = advanced[pr[where], pc[where]]
            cut = np.partition(key, CANDIDATES - 1, axis=1)[:, CANDIDATES - 1 : CANDIDATES]
            ties = key == cut
            room = CANDIDATES - (key < cut).sum(axis=1, keepdims=True)
            lr, lc = np.nonzero((key < cut) | (ties & (np.cumsum(ties, axis=1) <= room)))
            sr, sc = np.concatenate([sr, long[lr]]), np.concatenate([sc, lc])
        self.candidates[nodes] = -1
        if len(sr):
            sat = advanced[sr, sc]
            order = np.lexsort((sc, sat, sr))
            sr, sc, sat = sr[order], sc[order], sat[order]
            position = np.arange(len(sr)) - np.searchsorted(sr, rows)[sr]
            self.candidates[nodes[sr], position] = sc
            self.candidate_at[nodes[sr], position] = sat
        # probes: up to fanout of the members SUSPECT before this sweep, at random
        if not len(pr):
            return pr, pc
        order = np.lexsort((self.rng.random(len(pr)), pr))
        pr, pc = pr[order], pc[order]
        position = np.arange(len(pr)) - np.searchsorted(pr, rows)[pr]
        keep = position < config.fanout
        return nodes[pr[keep]], pc[keep]

    def _choose_targets(self, nodes: Ints) -> None:
        fanout, n = self.config.fanout, self.size
        draws = self.rng.integers(0, n, (len(nodes), 4 * fanout))
        ok = (self.state[nodes[:, None], draws] <= SUSPECT) & (draws != nodes[:, None])
        for later in range(1, draws.shape[1]):
            ok[:, later] &= ~(draws[:, :later] == draws[:, later : later + 1]).any(axis=1)
        rank = np.cumsum(ok, axis=1)
        chosen = ok & (rank <= fanout)
        self.targets[nodes] = -1
        self.pending[nodes] = 0
        for row, node in enumerate(nodes.tolist()):
            picked = draws[row, chosen[row]]
            if len(picked) < fanout:  # a small or mostly dead table: sample it exactly
                pool = np.flatnonzero(self.state[node] <= SUSPECT)
                pool = pool[pool != node]
                picked = self.rng.choice(pool, min(fanout, len(pool)), replace=False)
            targets = picked.tolist()
            if self.dead_count[node] and self.rng.random() < self.config.reconnect_probability:
                targets.append(int(self.rng.choice(np.flatnonzero(self.state[node] == DEAD))))
            targets.reverse()  # popped from the end
            self.targets[node, : len(targets)] = targets
            self.pending[node] = len(targets)

    def _next(self, nodes: Ints) -> None:
        """Start each node's next pending exchange (none left: it waits for its next tick)."""
        has = self.pending[nodes] > 0
        idle = nodes[~has]
        self.next_exchange[idle] = np.inf
        nodes = nodes[has]
        if not len(nodes):
            return
        self.pending[nodes] -= 1
        targets = self.targets[nodes, self.pending[nodes]]
        now = self.next_exchange[nodes].copy()
        done = self._exchange(nodes, targets, now)
        self.next_exchange[nodes] = done

    # --- exchanges ----------------------------------------------------------------------------

    def _exchange(
        self, initiators: Ints, responders: Ints, now: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """One summarised exchange per (initiator, responder); returns when each initiator moves on."""
        config, network, sizes = self.config, self.network, self.sizes
        count = len(initiators)
        # message k of the exchange arrives at steps[k]: request, answer, follow-up, its answer
        steps = now + np.cumsum(self.rng.uniform(network.delay_min, network.delay_max, (4, count)), axis=0)
        arrive, answered = self._ms(steps[0]), self._ms(steps[1])
        version = self.version
        # the request: own record and beat, young records, the summary, the stalest members listed
        listed_row, listed = self._listed(initiators)
        their = version[initiators[listed_row], listed].astype(np.int64)
        own = version[initiators, initiators].astype(np.int64)
        ranges = self._per_live(self.live[initiators])[:, 3]
        origins = np.array(self.origins, dtype=np.int64)
        held = (
            version[initiators[:, None], origins[None, :]] >= GENERATION
            if len(origins)
            else np.zeros((count, 0), bool)
        )
        hot = np.array(
            [at + config.push_rounds * config.interval > self.now + 1e-9 for at in self.published_at],
            dtype=bool,
        )
        pushed = held & hot[None, :] & (origins[None, :] != initiators[:, None]) if len(origins) else held
        push_row, push_k = np.nonzero(pushed)
        push_member = origins[push_k]
        push_value = version[initiators[push_row], push_member].astype(np.int64)
        request = np.where(own >= GENERATION, sizes.new_record[initiators], sizes.record[initiators])
        request += sizes.beats(own) + self._summary_sizes(ranges)
        request += _sum_by(listed_row, sizes.entries(their), count)
        request += _sum_by(push_row, sizes.new_record[push_member] + sizes.beats(push_value), count)
        self._count(initiators, request)
        delivered = self.rng.random(count) >= network.loss
        # the responder applies it
        d = np.flatnonzero(delivered)
        self._receive(responders[d], initiators[d], own[d], arrive[d])
        keep = delivered[push_row]
        self._receive(responders[push_row[keep]], push_member[keep], push_value[keep], arrive[push_row[keep]])
        # ... and answers: newer beats (records) for listed members, its own beat, what it wants, ranges
        answer = delivered[listed_row]
        at = responders[listed_row]
        mine = version[at, listed].astype(np.int64)
        newer = answer & (mine > their)
        slack = self._per_live(self.live[responders])[listed_row, 0]
        settled = arrive[listed_row].astype(np.int64) - slack * int(config.interval * 1000)
        ahead = ((their >> 24) > (mine >> 24)) | (their - mine >= slack)
        quiet = (self.state[at, listed] == DEAD) | (self.advanced[at, listed] <= settled)
        wanted = answer & (mine < their) & (ahead | quiet)
        listed_self = np.zeros(count, dtype=bool)
        listed_self[listed_row[listed == at]] = True
        with_own = delivered & ~listed_self
        responder_own = version[responders, responders].astype(np.int64)
        records = newer & ((mine >> 24) > (their >> 24))
        response = _sum_by(listed_row[newer], sizes.beats(mine[newer]), count)
        response += _sum_by(listed_row[records], sizes.new_record[listed[records]], count)
        response += _sum_by(listed_row[wanted], sizes.entries(mine[wanted]), count)
        response += np.where(with_own, sizes.beats(responder_own), 0)
        held_there = version[responders[:, None], origins[None, :]] >= GENERATION if len(origins) else held
        range_entries, range_count = self._differing(initiators, responders, ranges, held, held_there)
        response += np.where(delivered, range_entries + [differing_bytes(int(c)) for c in range_count], 0)
        self._count(responders[d], response[d].astype(np.int64))
        back = delivered & (self.rng.random(count) >= network.loss)
        # the initiator applies the answer
        got = back[listed_row] & newer
        self._receive(initiators[listed_row[got]], listed[got], mine[got], answered[listed_row[got]])
        b = np.flatnonzero(back & with_own)
        self._receive(initiators[b], responders[b], responder_own[b], answered[b])
        failed = ~back
        failed |= self._follow_ups(
            initiators,
            responders,
            self._ms(steps[2]),
            self._ms(steps[3]),
            back,
            listed_row,
            listed,
            wanted,
            mine,
            held,
            held_there,
        )
        self._suspect(initiators[failed], responders[failed], now[failed] + network.rpc_timeout)
        return np.where(back, steps[1], now + network.rpc_timeout)

    def _listed(self, initiators: Ints) -> tuple[Ints, Ints]:
        """The stalest members each initiator lists: its tick's candidates not refreshed since."""
        candidates = self.candidates[initiators]
        valid = candidates >= 0
        members = np.where(valid, candidates, 0)
        at = initiators[:, None]
        valid &= self.advanced[at, members] == self.candidate_at[initiators]
        valid &= self.state[at, members] <= SUSPECT
        valid &= np.cumsum(valid, axis=1) <= self.listing
        row, column = np.nonzero(valid)
        return row, members[row, column]

    def _summary_sizes(self, ranges: Ints) -> Ints:
        out = np.empty(len(ranges), dtype=np.int64)
        for value in np.unique(ranges).tolist():
            out[ranges == value] = summary_bytes(value)
        return out

    def _range_counts(self, ranges: int) -> Ints:
        counts = self._range_counts_cache.get(ranges)
        if counts is None:
            counts = np.bincount((self.top * ranges) >> 32, minlength=ranges)
            self._range_counts_cache[ranges] = counts
        return counts

    def _differing(
        self,
        initiators: Ints,
        responders: Ints,
        ranges: Ints,
        held: npt.NDArray[np.bool_],
        held_there: npt.NDArray[np.bool_],
    ) -> tuple[Ints, Ints]:
        """Per exchange: the bytes of the responder's entries in the ranges whose fingerprints
        differ (records one side lacks, members one side wrote off), and how many ranges differ."""
        count = len(initiators)
        entry = int(self.sizes.entries(np.array([int(self.now / self.config.interval)]))[0])
        members = np.zeros(count, dtype=np.int64)
        differ = np.zeros(count, dtype=np.int64)
        origins = np.array(self.origins, dtype=np.int64)
        lacking = held != held_there
        either_dead = (self.dead_count[initiators] > 0) | (self.dead_count[responders] > 0)
        for count_ranges in np.unique(ranges).tolist():
            rows = np.flatnonzero((ranges == count_ranges) & (lacking.any(axis=1) | either_dead))
            if not len(rows):
                continue
            marked = np.zeros((len(rows), count_ranges), dtype=bool)
            r, k = np.nonzero(lacking[rows])
            marked[r, (self.top[origins[k]] * count_ranges) >> 32] = True
            dead_rows = np.flatnonzero(either_dead[rows])
            if len(dead_rows):
                at = rows[dead_rows]
                written_off = (self.state[initiators[at]] == DEAD) != (self.state[responders[at]] == DEAD)
                r, c = np.nonzero(written_off)
                marked[dead_rows[r], (self.top[c] * count_ranges) >> 32] = True
            differ[rows] = marked.sum(axis=1)
            members[rows] = marked.astype(np.int64) @ self._range_counts(count_ranges)
        return members * entry, differ

    def _follow_ups(
        self,
        initiators: Ints,
        responders: Ints,
        pushed_at: npt.NDArray[np.int32],
        pulled_at: npt.NDArray[np.int32],
        back: npt.NDArray[np.bool_],
        listed_row: Ints,
        listed: Ints,
        wanted: npt.NDArray[np.bool_],
        mine: Ints,
        held: npt.NDArray[np.bool_],
        held_there: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """The initiator's push (what was asked for, records the responder lacks) and pull (records
        it lacks); returns which of them failed (a lost follow-up makes the responder suspect)."""
        sizes, loss, count = self.sizes, self.network.loss, len(initiators)
        version = self.version
        origins = np.array(self.origins, dtype=np.int64)
        asked = wanted & back[listed_row]
        value = version[initiators[listed_row[asked]], listed[asked]].astype(np.int64)
        offer = value > mine[asked]
        push_row, push_member, push_value = listed_row[asked][offer], listed[asked][offer], value[offer]
        record = (push_value >> 24) > (mine[asked][offer] >> 24)
        lack_row, lack_k = np.nonzero(held & ~held_there & back[:, None])
        pull_row, pull_k = np.nonzero(held_there & ~held & back[:, None])
        push_row = np.concatenate([push_row, lack_row])
        push_member = np.concatenate([push_member, origins[lack_k]])
        push_value = np.concatenate(
            [push_value, version[initiators[lack_row], origins[lack_k]].astype(np.int64)]
        )
        record = np.concatenate([record, np.ones(len(lack_row), dtype=bool)])
        push = sizes.beats(push_value) + np.where(record, sizes.new_record[push_member], 0)
        push_bytes = _sum_by(push_row, push, count)
        pushing = np.flatnonzero(push_bytes > 0)
        self._count(initiators[pushing], push_bytes[pushing])
        failed = np.zeros(count, dtype=bool)
        lost = np.zeros(count, dtype=bool)
        lost[pushing] = self.rng.random(len(pushing)) < loss
        failed |= lost
        keep = ~lost[push_row]
        self._receive(
            responders[push_row[keep]], push_member[keep], push_value[keep], pushed_at[push_row[keep]]
        )
        if len(pull_row):
            pull_member = origins[pull_k]
            asked_value = version[initiators[pull_row], pull_member].astype(np.int64)
            request = _sum_by(pull_row, sizes.entries(asked_value), count)
            pulling = np.flatnonzero(request > 0)
            self._count(initiators[pulling], request[pulling] + summary_bytes(0))
            answer = version[responders[pull_row], pull_member].astype(np.int64)
            response = _sum_by(pull_row, sizes.new_record[pull_member] + sizes.beats(answer), count)
            delivered = np.zeros(count, dtype=bool)
            delivered[pulling] = self.rng.random(len(pulling)) >= loss
            answered = np.flatnonzero(delivered)
            self._count(responders[answered], response[answered])
            returned = delivered & (self.rng.random(count) >= loss)
            failed[pulling] |= ~returned[pulling]
            keep = returned[pull_row]
            self._receive(
                initiators[pull_row[keep]], pull_member[keep], answer[keep], pulled_at[pull_row[keep]]
            )
        return failed

    def _probe(self, nodes: Ints, suspects: Ints) -> None:
        """Ask suspects directly (a follow-up listing only the suspect); a live one answers its beat."""
        sizes, loss = self.sizes, self.network.loss
        theirs = self.version[nodes, suspects].astype(np.int64)
        self._count(nodes, sizes.entries(theirs) + summary_bytes(0))
        delivered = self.rng.random(len(nodes)) >= loss
        answer = self.version[suspects, suspects].astype(np.int64)
        newer = delivered & (answer > theirs)
        self._count(suspects[newer], sizes.beats(answer[newer]))
        back = newer & (self.rng.random(len(nodes)) >= loss)
        sent = self.next_tick[nodes[back]] - self.config.interval  # at the tick that just ran
        delay = self.rng.uniform(self.network.delay_min, self.network.delay_max, (2, len(sent))).sum(axis=0)
        self._receive(nodes[back], suspects[back], answer[back], self._ms(sent + delay))

    # --- applying -----------------------------------------------------------------------------

    def _count(self, senders: Ints, sizes: Ints) -> None:
        self.messages += len(senders)
        if self.measure_bytes and len(senders):
            np.add.at(self.bytes_sent, senders, sizes)

    def _receive(self, nodes: Ints, members: Ints, versions: Ints, now_ms: npt.NDArray[np.int32]) -> None:
        """``nodes[k]`` learns ``versions[k]`` of ``members[k]``: a newer one is taken, dated now,
        and refutes a suspicion or a death (``Membership._apply_beat``, ``_apply_record``)."""
        n = self.size
        mask = nodes != members  # a node ignores news about itself
        flat = nodes[mask] * n + members[mask]
        versions, now_ms = versions[mask], now_ms[mask]
        table = self.version.reshape(-1)
        old = table[flat].astype(np.int64)
        newer = versions > old
        if not newer.any():
            return
        flat, versions, now_ms, old = flat[newer], versions[newer], now_ms[newer], old[newer]
        np.maximum.at(table, flat, versions.astype(np.int32))
        self.advanced.reshape(-1)[flat] = now_ms
        state = self.state.reshape(-1)
        revived = np.unique(flat[state[flat] == DEAD])
        if len(revived):
            counts = np.bincount(revived // n, minlength=n)
            self.live += counts
            self.dead_count -= counts
        state[flat] = ALIVE
        origin = self.is_origin[flat % n]
        arrived = (origin >= 0) & (versions >= GENERATION) & (old < GENERATION)
        for index in np.flatnonzero(arrived).tolist():
            reached = self.reached[int(origin[index])]
            node = int(flat[index] // n)
            if np.isnan(reached[node]):
                reached[node] = now_ms[index] / 1000

    def _suspect(self, nodes: Ints, members: Ints, when: npt.NDArray[np.float64]) -> None:
        """A failed exchange, push or pull: the responder becomes SUSPECT (``Membership.failed``)."""
        flat = nodes * self.size + members
        state = self.state.reshape(-1)
        alive = state[flat] == ALIVE
        flat, when = flat[alive], when[alive]
        flat, first = np.unique(flat, return_index=True)
        state[flat] = SUSPECT
        self.suspected.reshape(-1)[flat] = self._ms(when[first])
        self.suspicions += len(flat)
