"""The gossip protocol at scale, in the simulator: convergence, crashes, partitions, joins, loss."""

from __future__ import annotations

from atomic_p2p.gossip.config import GossipConfig
from atomic_p2p.gossip.messages import MembershipEvent, MemberState, RecordUpdated, StateChanged
from atomic_p2p.gossip.simulator import Network, Simulator


def states_of(sim: Simulator, index: int, seen_from: range | None = None) -> set[MemberState | None]:
    peer = sim.nodes[index].identity.peer_id
    observers = [
        n for n in sim.live_nodes() if n.index != index and (seen_from is None or n.index in seen_from)
    ]
    return {node.membership.state_of(peer) for node in observers}


def test_a_new_record_reaches_all_50_nodes_within_a_few_rounds() -> None:
    reached: dict[int, float] = {}
    sim = Simulator(50, seed=3)
    sim.run_rounds(2)
    origin = sim.nodes[7].membership
    record = origin.update_record(sim.now, models=())
    start = sim.now

    def observe(index: int, now: float, event: MembershipEvent) -> None:
        if isinstance(event, RecordUpdated) and event.peer_id == origin.peer_id:
            assert event.record.seq == record.seq
            reached[index] = now

    sim.observer = observe
    sim.run_rounds(6)
    assert len(reached) == 49
    assert max(reached.values()) - start <= 5 * sim.config.interval


def test_nodes_bootstrapping_from_seeds_converge() -> None:
    sim = Simulator(40, seed=4, bootstrap="seeds")
    sim.run_rounds(12)
    assert all(len(node.membership.live_members()) == 39 for node in sim.nodes)


def test_a_crashed_node_is_declared_dead_everywhere_and_nobody_else_is() -> None:
    deaths: list[tuple[int, float]] = []
    sim = Simulator(30, seed=5)
    victim = sim.nodes[11].identity.peer_id

    def observe(index: int, now: float, event: MembershipEvent) -> None:
        if isinstance(event, StateChanged) and event.state is MemberState.DEAD:
            assert event.peer_id == victim
            deaths.append((index, now))

    sim.observer = observe
    sim.run_rounds(3)
    sim.crash(11)
    crashed_at = sim.now
    config = sim.config
    bound = config.suspicion_timeout(30) + config.dead_timeout(30) + 3 * config.interval
    sim.run_rounds(bound / config.interval)
    assert states_of(sim, 11) == {MemberState.DEAD}
    assert len(deaths) == 29
    assert max(t for _, t in deaths) - crashed_at <= bound


def test_a_partition_heals() -> None:
    config = GossipConfig(suspicion_mult=2, dead_mult=2, reconnect_probability=0.3)
    sim = Simulator(24, seed=6, config=config)
    sim.run_rounds(2)
    left, right = range(12), range(12, 24)
    sim.partition([left])
    sim.run_rounds(12)
    assert states_of(sim, 0, seen_from=left) == {MemberState.ALIVE}
    assert states_of(sim, 0, seen_from=right) == {MemberState.DEAD}
    assert states_of(sim, 20, seen_from=left) == {MemberState.DEAD}
    sim.heal()
    sim.run_rounds(15)
    for index in (0, 20):
        assert states_of(sim, index) == {MemberState.ALIVE}
    assert all(len(sim.nodes[i].membership.live_members()) == 23 for i in (*left, *right))


def test_a_late_joiner_and_a_leaver() -> None:
    sim = Simulator(20, seed=7)
    sim.run_rounds(2)
    joiner = sim.add_node(seeds=[sim.nodes[0].address])
    sim.leave(5)
    sim.run_rounds(8)
    assert len(joiner.membership.live_members()) == 19  # everyone but the leaver
    assert states_of(sim, joiner.index) == {MemberState.ALIVE}
    assert states_of(sim, 5, seen_from=range(20)) == {MemberState.LEFT}
    # tombstones are not handed to nodes that never knew the member, so the joiner may not know
    assert joiner.membership.state_of(sim.nodes[5].identity.peer_id) in (None, MemberState.LEFT)


def test_ten_percent_loss_kills_nobody() -> None:
    sim = Simulator(40, seed=8, network=Network(loss=0.1))
    deaths: list[MembershipEvent] = []
    sim.observer = lambda _i, _t, e: (
        deaths.append(e) if isinstance(e, StateChanged) and e.state is MemberState.DEAD else None
    )
    sim.run_rounds(40)
    assert deaths == []
    assert sim.totals.lost > 0 and sim.totals.failed > 0


def test_the_same_seed_gives_the_same_run() -> None:
    def run() -> tuple[int, int, int]:
        sim = Simulator(15, seed=9, network=Network(loss=0.05), measure_bytes=True)
        sim.run_rounds(6)
        return sim.totals.messages, sim.totals.lost, sum(n.bytes_sent for n in sim.nodes)

    assert run() == run()


def bytes_per_node_round(sim: Simulator, size: int) -> float:
    sim.run_rounds(3 + sim.config.slack(size))  # until liveness traffic is steady
    sim.measure_bytes = True
    sim.run_rounds(2)
    sim.measure_bytes = False
    return sum(node.bytes_sent for node in sim.nodes) / size / 2


def test_summarised_digests_cost_a_fraction_of_full_ones_and_records_still_spread() -> None:
    size = 160
    full = bytes_per_node_round(Simulator(size, config=GossipConfig(summaries=False), seed=11), size)
    sim = Simulator(size, seed=11)
    summarised = bytes_per_node_round(sim, size)
    assert summarised < full / 2  # 160 members: a full digest is 7 KB, sent three times a round
    origin = sim.nodes[17].membership
    record = origin.update_record(sim.now, models=())
    start = sim.now
    reached: dict[int, float] = {}

    def observe(index: int, now: float, event: MembershipEvent) -> None:
        if isinstance(event, RecordUpdated) and event.peer_id == origin.peer_id:
            assert event.record.seq == record.seq
            reached.setdefault(index, now)

    sim.observer = observe
    sim.run_rounds(6)
    assert len(reached) == size - 1
    assert max(reached.values()) - start <= 5 * sim.config.interval
