"""The membership state machine, driven by hand: no sockets, no simulator, time passed in."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from atomic_p2p.errors import ConfigError, LimitExceededError
from atomic_p2p.gossip import codec
from atomic_p2p.gossip.config import GossipConfig, GossipLimits
from atomic_p2p.gossip.directory import Directory
from atomic_p2p.gossip.membership import Membership
from atomic_p2p.gossip.messages import (
    EMPTY_DIGEST,
    EMPTY_RESPONSE,
    LEFT_HEARTBEAT,
    WHO_ARE_YOU,
    DigestEntry,
    GossipRequest,
    MemberForgotten,
    MemberJoined,
    MemberState,
    Outgoing,
    RecordUpdated,
    StateChanged,
)
from atomic_p2p.gossip.records import (
    Heartbeat,
    Leave,
    LoadSummary,
    ModelAdvert,
    PeerRecord,
    RecordLimits,
    Rejection,
    RejectReason,
)
from atomic_p2p.identity import Envelope, Identity, PeerId

T0 = 1_700_000_000.0
CONFIG = GossipConfig(interval=1.0, tombstone_ttl=60.0)
MODEL = ModelAdvert("m1", ("classify",))


def identity(name: str) -> Identity:
    return Identity.from_seed(name.encode())


def node(name: str, now: float = T0, config: GossipConfig = CONFIG, **kwargs: object) -> Membership:
    kwargs.setdefault("addresses", (f"{name}:7000",))
    kwargs.setdefault("models", (MODEL,))
    return Membership(identity(name), config, random.Random(name), now=now, **kwargs)  # type: ignore[arg-type]


class Net:
    """Delivers whatever the nodes send, at once, until nothing is left to send."""

    def __init__(self, *members: Membership) -> None:
        self.by_address = {m.local_record.addresses[0]: m for m in members if m.local_record.addresses}
        self.down: set[str] = set()

    def run(self, source: Membership, outgoing: list[Outgoing], now: float) -> None:
        queue = [(source, item) for item in outgoing]
        while queue:
            sender, item = queue.pop(0)
            target = self.by_address.get(item.address)
            if target is None or item.address in self.down:
                queue += [(sender, x) for x in sender.failed(now, item)]
                continue
            address = sender.local_record.addresses[0] if sender.local_record.addresses else "client"
            response = target.handle_request(now, item.request, address)
            queue += [(sender, x) for x in sender.handle_response(now, item, response)]

    def round(self, members: list[Membership], now: float) -> None:
        for member in members:
            self.run(member, member.tick(now), now)


def signed_record(who: Identity, seq: int, now: float = T0, **changes: object) -> Envelope:
    record = PeerRecord(who.peer_id, (f"{who.peer_id.short}:1",), (MODEL,), seq, int(now * 1000))
    return codec.sign_record(who, replace(record, **changes)).envelope  # type: ignore[arg-type]


def beat(who: Identity, seq: int, number: int) -> Envelope:
    return codec.sign_heartbeat(who, Heartbeat(who.peer_id, seq, number)).envelope


def push(*updates: Envelope) -> GossipRequest:
    return GossipRequest(None, EMPTY_DIGEST, updates)


def test_two_nodes_find_each_other_through_a_seed() -> None:
    a = node("a")
    b = node("b", seeds=("a:7000",))
    net = Net(a, b)
    net.round([b, a], T0 + 1)
    assert [r.peer_id for r in a.live_members()] == [b.peer_id]
    assert [r.peer_id for r in b.live_members()] == [a.peer_id]
    assert isinstance(a.pop_events()[0], MemberJoined)


def test_newer_seq_replaces_older_is_refused_equal_is_a_duplicate() -> None:
    a = node("a")
    carol = identity("carol")
    a.handle_request(T0, push(signed_record(carol, 10)), "x")
    a.handle_request(T0, push(signed_record(carol, 12, addresses=("new:1",))), "x")
    a.handle_request(T0, push(signed_record(carol, 11)), "x")
    a.handle_request(T0, push(signed_record(carol, 12, addresses=("new:1",))), "x")
    record = a.record_of(carol.peer_id)
    assert record is not None and record.seq == 12 and record.addresses == ("new:1",)
    assert a.stats.rejected[RejectReason.STALE] == 1
    assert a.stats.duplicates == 1
    assert [type(e) for e in a.pop_events()] == [MemberJoined, RecordUpdated]


def test_forged_and_mismatched_records_never_enter_the_table() -> None:
    a = node("a")
    carol, mallory = identity("carol"), identity("mallory")
    forged = replace(signed_record(carol, 5), signature=bytes(64))
    impostor = codec.sign_record(mallory, PeerRecord(carol.peer_id, ("evil:1",), (), 9, 0)).envelope
    a.handle_request(T0, push(forged, impostor), "x")
    assert a.state_of(carol.peer_id) is None
    assert a.stats.rejected[RejectReason.BAD_SIGNATURE] == 1
    assert a.stats.rejected[RejectReason.PEER_ID_MISMATCH] == 1


def test_oversized_and_future_records_are_refused_and_counted() -> None:
    limits = GossipLimits(record=RecordLimits(max_record_bytes=300, max_models=1))
    a = node("a", config=replace(CONFIG, limits=limits))
    carol, dave, erin = identity("carol"), identity("dave"), identity("erin")
    big = signed_record(carol, 5, models=(MODEL,) * 20)
    many = signed_record(dave, 5, models=(MODEL, MODEL))
    future = signed_record(erin, 5, now=T0 + 3600)
    a.handle_request(T0, push(big, many, future), "x")
    rejected = a.stats.rejected
    assert (rejected[RejectReason.TOO_LARGE], rejected[RejectReason.TOO_MANY_MODELS]) == (1, 1)
    assert rejected[RejectReason.FROM_THE_FUTURE] == 1
    assert a.live_members() == []


def test_local_record_out_of_bounds_is_a_config_error() -> None:
    limits = GossipLimits(record=RecordLimits(max_models=1))
    with pytest.raises(ConfigError):
        node("a", config=replace(CONFIG, limits=limits), models=(MODEL, MODEL))


def test_silence_makes_a_member_suspect_then_dead_and_a_newer_beat_refutes() -> None:
    a = node("a")
    carol = identity("carol")
    a.handle_request(T0, push(signed_record(carol, 5), beat(carol, 5, 1)), "x")
    suspect_after = CONFIG.suspicion_timeout(2)
    dead_after = CONFIG.dead_timeout(2)
    a.tick(T0 + suspect_after - 0.5)
    assert a.state_of(carol.peer_id) is MemberState.ALIVE
    a.tick(T0 + suspect_after + 0.5)
    assert a.state_of(carol.peer_id) is MemberState.SUSPECT
    a.handle_request(T0 + suspect_after + 1, push(beat(carol, 5, 2)), "x")
    assert a.state_of(carol.peer_id) is MemberState.ALIVE
    assert a.stats.refutations == 1
    silent_from = T0 + suspect_after + 1
    a.tick(silent_from + suspect_after + 0.5)
    a.tick(silent_from + suspect_after + dead_after + 1)
    assert a.state_of(carol.peer_id) is MemberState.DEAD
    states = [e.state for e in a.pop_events() if isinstance(e, StateChanged)]
    assert states == [MemberState.SUSPECT, MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD]


def test_a_failed_rpc_raises_suspicion_at_once() -> None:
    a, b = node("a"), node("b")
    Net(a, b).run(b, b.tick(T0), T0)  # b knows nobody and has no seeds: sends nothing
    a.handle_request(T0, push(b.snapshot()[0]), "b:7000")
    outgoing = a.tick(T0 + 1)
    assert [o.peer_id for o in outgoing] == [b.peer_id]
    a.failed(T0 + 1.5, outgoing[0])
    assert a.state_of(b.peer_id) is MemberState.SUSPECT
    assert a.stats.failed_rpcs == 1


def test_no_resurrection_after_death_by_old_gossip_but_a_restart_comes_back() -> None:
    a = node("a")
    carol = identity("carol")
    old_record, old_beat = signed_record(carol, 5), beat(carol, 5, 3)
    a.handle_request(T0, push(old_record, old_beat), "x")
    later = T0 + CONFIG.suspicion_timeout(2) + CONFIG.dead_timeout(2) + 2
    a.tick(T0 + CONFIG.suspicion_timeout(2) + 1)
    a.tick(later)
    assert a.state_of(carol.peer_id) is MemberState.DEAD
    a.handle_request(later, push(old_record, old_beat, beat(carol, 5, 2)), "x")
    assert a.state_of(carol.peer_id) is MemberState.DEAD
    assert a.stats.rejected[RejectReason.TOMBSTONED] == 3
    restarted = signed_record(carol, 6, now=later)  # seq is a ms timestamp: a restart is newer
    a.handle_request(later, push(restarted), "x")
    assert a.state_of(carol.peer_id) is MemberState.ALIVE


def test_a_signed_leave_outranks_every_beat_of_that_record() -> None:
    a = node("a")
    carol = identity("carol")
    a.handle_request(T0, push(signed_record(carol, 5), beat(carol, 5, 1)), "x")
    leave = codec.sign_leave(carol, Leave(carol.peer_id, 5, int(T0 * 1000))).envelope
    a.handle_request(T0 + 1, push(leave), "x")
    assert a.state_of(carol.peer_id) is MemberState.LEFT
    assert a.digest()[carol.peer_id.raw] == DigestEntry(5, LEFT_HEARTBEAT, True)
    a.handle_request(T0 + 2, push(beat(carol, 5, 99), signed_record(carol, 5)), "x")
    assert a.state_of(carol.peer_id) is MemberState.LEFT
    assert a.stats.rejected[RejectReason.TOMBSTONED] == 2


def test_tombstones_expire_after_their_ttl() -> None:
    a = node("a")
    carol = identity("carol")
    a.handle_request(T0, push(signed_record(carol, 5)), "x")
    leave = codec.sign_leave(carol, Leave(carol.peer_id, 5, int(T0 * 1000))).envelope
    a.handle_request(T0, push(leave), "x")
    a.tick(T0 + CONFIG.tombstone_ttl - 1)
    assert a.state_of(carol.peer_id) is MemberState.LEFT
    a.tick(T0 + CONFIG.tombstone_ttl + 1)
    assert a.state_of(carol.peer_id) is None
    assert isinstance(a.pop_events()[-1], MemberForgotten)


def test_leave_propagates_and_the_leaver_goes_quiet() -> None:
    a, b, c = node("a"), node("b"), node("c")
    net = Net(a, b, c)
    everyone = [r for m in (a, b, c) for r in m.snapshot()]
    for member in (a, b, c):
        member.absorb(T0, everyone)
    net.run(a, a.leave(T0 + 1), T0 + 1)
    assert a.tick(T0 + 2) == []
    for _ in range(3):
        net.round([b, c], T0 + 3)
    assert b.state_of(a.peer_id) is MemberState.LEFT
    assert c.state_of(a.peer_id) is MemberState.LEFT


def test_update_record_bumps_seq_and_reaches_the_partner() -> None:
    a, b = node("a"), node("b", seeds=("a:7000",))
    net = Net(a, b)
    net.round([b, a], T0 + 1)
    first = a.local_record.seq
    a.update_record(T0 + 1.0001, models=())
    assert a.local_record.seq > first
    net.round([a], T0 + 2)
    record = b.record_of(a.peer_id)
    assert record is not None and record.seq == a.local_record.seq and record.models == ()


def test_requester_hosts_nothing_and_without_an_address_is_never_a_target() -> None:
    a = node("a")
    client = node("client", addresses=(), models=(), seeds=("a:7000",))
    net = Net(a, client)
    net.round([client], T0 + 1)
    net.round([client], T0 + 2)
    assert client.record_of(a.peer_id) is not None
    at_host, at_client = Directory(), Directory()
    at_host.apply(a.pop_events())
    at_client.apply(client.pop_events())
    assert at_host.is_live(client.peer_id) and at_host.candidates("classify") == []
    assert [c.record.peer_id for c in at_client.candidates("classify")] == [a.peer_id]
    assert a.tick(T0 + 3) == []  # the client is live but has no address to gossip to


def test_rate_limit_per_sender_address_is_counted() -> None:
    a = node("a")
    limits = CONFIG.limits
    accepted = 0
    for _ in range(int(limits.rate_burst) + 30):
        try:
            a.handle_request(T0, push(), "flood:1")
            accepted += 1
        except LimitExceededError:
            pass
    assert accepted == int(limits.rate_burst)
    assert a.stats.rejected[RejectReason.RATE_LIMITED] == 30
    a.handle_request(T0, push(), "other:1")  # another sender is unaffected
    a.handle_request(T0 + 1, push(), "flood:1")  # and the flooder gets tokens back with time


def test_too_many_updates_and_a_full_table_are_refused_and_counted() -> None:
    limits = GossipLimits(max_members=3, max_updates_per_message=4)
    a = node("a", config=replace(CONFIG, limits=limits))
    known = [identity(f"k{i}") for i in range(2)]
    a.absorb(T0, [signed_record(k, 5) for k in known])  # members from a snapshot have history
    strangers = [identity(f"s{i}") for i in range(6)]
    a.handle_request(T0, push(*(signed_record(s, 5) for s in strangers)), "x")
    assert a.stats.rejected[RejectReason.TOO_MANY_UPDATES] == 2
    assert a.stats.rejected[RejectReason.TABLE_FULL] == 4  # nobody without history to evict
    assert {r.peer_id for r in a.live_members()} == {k.peer_id for k in known}
    huge = GossipRequest(None, {bytes([i]) * 32: DigestEntry(1, 1) for i in range(4)}, ())
    with pytest.raises(LimitExceededError):
        a.handle_request(T0, huge, "y")


def test_pull_returns_what_is_missing_and_the_follow_up_pushes_what_the_responder_wants() -> None:
    full = replace(CONFIG, summaries=False)  # the whole digest, as peers before summaries send it
    a, b = node("a", config=full), node("b", config=full)
    carol, dave = identity("carol"), identity("dave")
    a.absorb(T0, [signed_record(carol, 5), b.snapshot()[0]])
    b.absorb(T0, [signed_record(dave, 5), a.snapshot()[0]])
    outgoing = a.tick(T0 + 1)
    assert [o.peer_id for o in outgoing] == [b.peer_id]
    response = b.handle_request(T0 + 1, outgoing[0].request, "a:7000")
    assert dave.peer_id in {PeerId.from_public_key(e.public_key) for e in response.updates}
    assert carol.peer_id.raw in response.wanted
    follow_up = [o for o in a.handle_response(T0 + 1, outgoing[0], response) if o.request.is_push]
    assert len(follow_up) == 1 and follow_up[0].address == "b:7000"
    b.handle_request(T0 + 1, follow_up[0].request, "a:7000")
    assert a.state_of(dave.peer_id) is MemberState.ALIVE
    assert b.state_of(carol.peer_id) is MemberState.ALIVE
    assert outgoing[0].request.summary is None and len(outgoing[0].request.digest) == 3


def test_a_summarised_exchange_finds_what_each_side_lacks_through_the_differing_ranges() -> None:
    a, b = node("a"), node("b")
    carol, dave = identity("carol"), identity("dave")
    a.absorb(T0, [signed_record(carol, 5), b.snapshot()[0]])
    b.absorb(T0, [signed_record(dave, 5), a.snapshot()[0]])
    outgoing = a.tick(T0 + 1)
    request = outgoing[0].request
    assert request.summary is not None and not request.is_push
    assert set(request.digest) <= {b.peer_id.raw, carol.peer_id.raw}  # listed for liveness only
    response = b.handle_request(T0 + 1, request, "a:7000")
    assert response.differing == (0,)  # four members: one range
    assert set(response.ranges) == {a.peer_id.raw, b.peer_id.raw, dave.peer_id.raw}
    follow_ups = a.handle_response(T0 + 1, outgoing[0], response)
    pushes = [o for o in follow_ups if o.request.is_push]
    pulls = [o for o in follow_ups if o.follow_up]
    assert signed_record(carol, 5) in pushes[0].request.updates
    assert pulls[0].request.digest == {dave.peer_id.raw: DigestEntry(0, 0)}
    answer = b.handle_request(T0 + 1, pulls[0].request, "a:7000")
    assert a.handle_response(T0 + 1, pulls[0], answer) == []  # a follow-up starts nothing more
    b.handle_request(T0 + 1, pushes[0].request, "a:7000")
    assert a.state_of(dave.peer_id) is MemberState.ALIVE
    assert b.state_of(carol.peer_id) is MemberState.ALIVE
    again = a.tick(T0 + 2)[0]
    assert b.handle_request(T0 + 2, again.request, "a:7000").differing == ()


def test_a_summarised_request_does_not_grow_with_the_table() -> None:
    strangers = [signed_record(identity(f"s{i}"), 5) for i in range(1000)]
    a, b = node("a"), node("b")
    for member in (a, b):
        member.absorb(T0, [*strangers, a.snapshot()[0], b.snapshot()[0]])
    request = a.tick(T0 + 1)[0].request
    assert request.summary is not None and len(request.summary) == 8 * 8  # 1002 members: 8 ranges
    assert len(request.digest) <= CONFIG.listed_per_exchange()
    full = codec.digest_size(a.digest())
    assert codec.request_wire_size(request) < full / 4
    response = b.handle_request(T0 + 1, request, "a:7000")
    assert response.differing == () and not response.ranges  # same records: nothing to compare
    a.handle_request(T0 + 1, b.leave(T0 + 1)[0].request, "b:7000")  # b left: out of both fingerprints
    assert b.handle_request(T0 + 2, a.tick(T0 + 2)[0].request, "a:7000").differing == ()


def test_members_not_heard_from_yet_are_asked_for_at_once_not_when_due() -> None:
    # with a slack of 5 rounds a member is due 4 rounds after its last beat; one this node has no
    # beat from at all (a snapshot, a cold start) is listed from the first round, so that a whole
    # table learned at once does not fall due in one round, too close to the suspicion timeout
    a = node("a", config=replace(CONFIG, heartbeat_slack=5))
    strangers = [identity(f"s{i}") for i in range(30)]
    a.absorb(T0, [signed_record(who, 5) for who in strangers])
    assert set(a.tick(T0 + 1)[0].request.digest) == {who.peer_id.raw for who in strangers}
    a.absorb(T0 + 1, [beat(strangers[0], 5, 1)])  # heard from now: asked for again once due
    listed = a.tick(T0 + 2)[0].request.digest
    assert strangers[0].peer_id.raw not in listed and len(listed) == 29


def test_a_backlog_is_listed_four_times_the_beat_budget_a_round() -> None:
    # a table learned at once (a cold start) must be heard from before the suspicion timeout: a
    # partner holds a beat for about a third of what is listed and loss takes some answers, so a
    # round lists 4 x beats_per_round (at 2 x, a 10,000-member cold start learned 44 beats a
    # round, fewer than the 50 that the 200 s timeout needs: docs/gossip.md)
    config = replace(CONFIG, beats_per_round=30)
    a = node("a", config=config)
    strangers = [identity(f"s{i}") for i in range(200)]
    a.absorb(T0, [signed_record(who, 5) for who in strangers])
    exchanges = 0
    listed: set[bytes] = set()
    out = [o for o in a.tick(T0 + 1) if not o.follow_up]
    while out:  # the round's exchanges, each answered with nothing new
        (outgoing,) = out
        assert len(outgoing.request.digest) == -(-4 * 30 // config.fanout) == 40
        listed |= set(outgoing.request.digest)
        exchanges += 1
        out = [o for o in a.handle_response(T0 + 1, outgoing, EMPTY_RESPONSE) if not o.follow_up]
    assert exchanges == config.fanout
    assert len(listed) == 40  # nothing came back: the same stalest members, asked of each partner


def test_who_are_you_gets_the_responders_own_signed_record_and_nothing_else() -> None:
    a = node("a")
    a.absorb(T0, [signed_record(identity("carol"), 5)])
    answer = a.handle_request(T0 + 1, WHO_ARE_YOU, "client")
    opened = [codec.open_envelope(e, RecordLimits()) for e in answer.updates]
    assert [type(o.value).__name__ for o in opened if not isinstance(o, Rejection)] == [
        "PeerRecord",
        "Heartbeat",
    ]
    assert {o.value.peer_id for o in opened if not isinstance(o, Rejection)} == {a.peer_id}
    assert not answer.wanted and not answer.ranges


def test_a_suspect_is_probed_directly_and_its_answer_refutes_the_suspicion() -> None:
    a, b = node("a"), node("b")
    a.absorb(T0, [b.snapshot()[0]])
    b.absorb(T0, [a.snapshot()[0]])
    first = a.tick(T0 + 1)[0]
    a.failed(T0 + 1, first)  # b did not answer: suspected at once
    assert a.state_of(b.peer_id) is MemberState.SUSPECT
    b.tick(T0 + 2)  # b beats on
    probes = [o for o in a.tick(T0 + 2) if o.follow_up]
    assert [(p.peer_id, set(p.request.digest)) for p in probes] == [(b.peer_id, {b.peer_id.raw})]
    answer = b.handle_request(T0 + 2, probes[0].request, "a:7000")
    assert a.handle_response(T0 + 2, probes[0], answer) == []  # a probe starts nothing more
    assert a.state_of(b.peer_id) is MemberState.ALIVE


def test_a_round_is_fanout_exchanges_one_after_another() -> None:
    members = [node(f"n{i}") for i in range(6)]
    everyone = [m.snapshot()[0] for m in members]
    for member in members:
        member.absorb(T0, everyone)
    first = members[0].tick(T0 + 1)
    assert len(first) == 1
    partners = {first[0].peer_id}
    current = first[0]
    while True:
        response = (
            Net(*members).by_address[current.address].handle_request(T0 + 1, current.request, "n0:7000")
        )
        following = [
            o for o in members[0].handle_response(T0 + 1, current, response) if not o.request.is_push
        ]
        if not following:
            break
        current = following[0]
        partners.add(current.peer_id)
    assert len(partners) == CONFIG.fanout


def test_timeouts_grow_with_log_n() -> None:
    config = GossipConfig(interval=0.5, suspicion_mult=4, dead_mult=2, beats_per_round=1000)
    assert config.suspicion_timeout(1) == config.suspicion_timeout(10) == 4 * 0.5
    assert config.suspicion_timeout(100) == pytest.approx(2 * config.suspicion_timeout(10))
    assert config.suspicion_timeout(1000) == pytest.approx(3 * config.suspicion_timeout(10))
    assert config.dead_timeout(1000) == pytest.approx(3 * 2 * 0.5)
    assert config.slack(10) == 1 and config.slack(1000) == 3


def test_the_liveness_budget_stretches_slack_and_suspicion_past_a_few_hundred_members() -> None:
    config = GossipConfig(interval=1.0, beats_per_round=80)
    assert config.slack(100) == 2 and config.suspicion_timeout(100) == pytest.approx(8)
    assert config.slack(1000) == 19 and config.suspicion_timeout(1000) == pytest.approx(12 + 16)
    assert config.slack(10_000) == 188 and config.suspicion_timeout(10_000) == pytest.approx(16 + 184)
    assert config.dead_timeout(10_000) == pytest.approx(16)
    with pytest.raises(ConfigError):
        GossipConfig(beats_per_round=0)


def test_a_bigger_table_waits_longer_before_suspecting() -> None:
    small, big = node("small"), node("big")
    carol = identity("carol")
    strangers = [signed_record(identity(f"s{i}"), 5) for i in range(150)]
    small.absorb(T0, [signed_record(carol, 5)])
    big.absorb(T0, [signed_record(carol, 5), *strangers])
    now = T0 + CONFIG.suspicion_timeout(10) + 1
    small.tick(now)
    big.tick(now)
    assert small.state_of(carol.peer_id) is MemberState.SUSPECT
    assert big.state_of(carol.peer_id) is MemberState.ALIVE


def test_load_travels_in_heartbeats() -> None:
    a, b = node("a"), node("b", seeds=("a:7000",))
    net = Net(a, b)
    b.set_load(LoadSummary(3, 4, 0.75))
    net.round([b], T0 + 1)
    assert a.load_of(b.peer_id) == LoadSummary(3, 4, 0.75)
    assert a.load_of(PeerId(bytes(32))) is None


def test_heartbeat_slack_holds_back_fresh_beats_but_not_settled_ones() -> None:
    config = replace(CONFIG, heartbeat_slack=3)
    a = node("a", config=config)
    carol = identity("carol")
    a.absorb(T0, [signed_record(carol, 5), beat(carol, 5, 7)])
    behind_by_one = {carol.peer_id.raw: DigestEntry(5, 6), a.peer_id.raw: a.digest()[a.peer_id.raw]}
    request = GossipRequest(None, behind_by_one, ())
    fresh = a.handle_request(T0 + 1, request, "x")
    assert beat(carol, 5, 7) not in fresh.updates  # 1 behind, and carol's beats are still flowing
    settled = a.handle_request(T0 + 3 * config.interval + 1, request, "y")
    assert beat(carol, 5, 7) in settled.updates  # carol went quiet: her last beat goes to everyone
    far_behind = {carol.peer_id.raw: DigestEntry(5, 4), a.peer_id.raw: a.digest()[a.peer_id.raw]}
    assert beat(carol, 5, 7) in a.handle_request(T0 + 1, GossipRequest(None, far_behind, ()), "z").updates


def test_a_seed_that_does_not_answer_is_retried_with_exponential_backoff() -> None:
    config = replace(CONFIG, seed_backoff_max_s=8 * CONFIG.interval)
    lonely = node("lonely", config=config, seeds=("nobody:7000",))
    now, tried_at = T0, []
    for _ in range(40):  # 40 rounds; every contact of the seed fails
        now += config.interval
        for outgoing in lonely.tick(now):
            if outgoing.address == "nobody:7000":
                tried_at.append(round((now - T0) / config.interval))
                lonely.failed(now, outgoing)
    gaps = [later - earlier for earlier, later in itertools.pairwise(tried_at)]
    assert gaps[:4] == [1, 2, 4, 8]  # one interval, then doubling...
    assert set(gaps[4:]) == {8}  # ...up to seed_backoff_max_s
    assert lonely.seed_retry_s("nobody:7000", now) <= 8 * config.interval


def test_a_seed_that_answers_is_back_to_every_round() -> None:
    a, b = node("a"), node("b", seeds=("a:7000",))
    now = T0 + CONFIG.interval
    (first,) = [out for out in b.tick(now) if out.address == "a:7000"]
    b.failed(now, first)
    assert b.seed_retry_s("a:7000", now) == pytest.approx(CONFIG.interval)
    now += CONFIG.interval
    (second,) = [out for out in b.tick(now) if out.address == "a:7000"]
    b.handle_response(now, second, a.handle_request(now, second.request, "b"))
    assert b.seed_retry_s("a:7000", now) == 0.0 and "a:7000" not in b.seed_backoff
