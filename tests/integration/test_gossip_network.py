"""Gossip between 20 real peers on loopback: convergence, discovery, joins, leaves, bad input.

Twenty in-process example nodes (real keys, real models, real gRPC servers on 127.0.0.1) gossip
at a 0.2 s interval, each joining through a random earlier one, and serve the whole module. Tests
that add or remove a peer start their own extra node, so the twenty stay as they are.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from atomic_p2p._proto.atomic.v1 import gossip_pb2, market_pb2_grpc
from atomic_p2p.channels import ChannelPool, connect
from atomic_p2p.cli.peers import observe, render
from atomic_p2p.gossip import (
    GossipConfig,
    GossipRequest,
    MemberState,
    ModelAdvert,
    PeerRecord,
    RejectReason,
)
from atomic_p2p.gossip.codec import RECORD_TYPE, request_to_proto, sign_heartbeat, sign_record
from atomic_p2p.gossip.messages import EMPTY_DIGEST, DigestEntry
from atomic_p2p.gossip.records import Heartbeat
from atomic_p2p.gossip.transport import fetch_record
from atomic_p2p.identity import Envelope, Identity
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester
from atomic_p2p.testing import digits_batch
from peers.examples import example_config
from tests.support.handbuyer import HandBuyer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PEERS = 20
INTERVAL = 0.2
GOSSIP = GossipConfig(interval=INTERVAL)
CAPABILITY = "classify/digits"
NAMES = ("small", "large", "specialist")
SETTLE_S = 20.0  # generous: convergence takes a few rounds, but this box is shared


async def eventually(predicate: Callable[[], bool], timeout: float = SETTLE_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.05)


async def start_node(tmp_path: Path, index: int, seeds: tuple[str, ...]) -> PeerNode:
    config = example_config(
        NAMES[index % len(NAMES)],
        tmp_path,
        data_dir=tmp_path / f"peer-{index:02d}",  # a key of its own
        gossip_interval_s=INTERVAL,
        bootstrap=seeds,
    )
    return await PeerNode.start(config)


def directory_size(node: PeerNode) -> int:
    assert node.gossip is not None
    return len(node.gossip.directory)


def state_at(node: PeerNode, other: PeerNode) -> MemberState | None:
    assert node.gossip is not None
    return node.gossip.membership.state_of(other.peer_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def network(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[PeerNode]]:
    tmp_path = tmp_path_factory.mktemp("gossip")
    rng = random.Random(3)
    nodes: list[PeerNode] = []
    try:
        for index in range(PEERS):
            seeds = (rng.choice(nodes).dial_address,) if nodes else ()
            nodes.append(await start_node(tmp_path, index, seeds))
        yield nodes
    finally:
        await asyncio.gather(*(node.stop(grace=0.5) for node in nodes))


@pytest_asyncio.fixture(loop_scope="module")
async def requester(network: list[PeerNode]) -> AsyncIterator[Requester]:
    async with Requester(bootstrap=[network[7].dial_address], gossip=GOSSIP) as requester:
        assert await requester.wait_for_peers(CAPABILITY, PEERS, timeout=SETTLE_S)
        yield requester


async def test_twenty_peers_converge(network: list[PeerNode]) -> None:
    await eventually(
        lambda: all(directory_size(node) == PEERS - 1 for node in network),
        what="every directory lists the other 19",
    )
    for node in network:
        assert node.gossip is not None
        listed = {c.record.peer_id for c in node.gossip.directory.candidates(CAPABILITY)}
        assert listed == {other.peer_id for other in network if other is not node}


async def test_a_requester_with_one_bootstrap_address_finds_all_twenty(
    network: list[PeerNode], requester: Requester
) -> None:
    assert set(requester.discovery.candidates(CAPABILITY, 1)) == {node.address for node in network}
    x, _ = digits_batch(4)
    result = await requester.run(CAPABILITY, {"x": x}, deadline_s=5.0)
    answered = {s.item.address for s in result.bids} | {n.address for n in result.no_bids}
    assert result.winner.address in {node.address for node in network}
    assert len(answered) == PEERS  # every one of them was asked


async def test_atomic_peers_lists_every_peer_with_its_models(network: list[PeerNode]) -> None:
    view = await observe([network[11].address], GOSSIP, wait_s=10.0)
    alive = {m["addresses"][0] for m in view.members if m["state"] == "alive" and m["models"]}
    assert alive == {node.address for node in network}
    member = next(m for m in view.members if m["addresses"] == [network[1].address])  # a "large" node
    assert member["models"][0]["model_id"] == "digits-large"
    assert member["models"][0]["price_hint"] == pytest.approx(0.01)
    assert member["load"]["capacity"] == 2
    table = render(view)
    assert all(node.address in table for node in network)
    assert "digits-specialist-0-4" in table and "classify/digits/0-4" in table
    assert member["models"][0]["kind"] == "classification"
    assert member["models"][0]["contract"].startswith("x: float32[B<=")
    assert "x: float32[B<=" in table and "-> logits: float32[B, 10]" in table


async def test_a_client_learns_the_peer_id_behind_an_address_from_its_signed_record(
    network: list[PeerNode],
) -> None:
    pool = ChannelPool()
    try:
        record = await fetch_record(pool, network[3].address)
    finally:
        await pool.close()
    assert record.peer_id == network[3].peer_id
    assert network[3].address in record.addresses and record.models


async def test_a_late_joiner_becomes_a_candidate_without_restarts(
    network: list[PeerNode], requester: Requester, tmp_path: Path
) -> None:
    joiner = await start_node(tmp_path, PEERS, (network[13].dial_address,))
    try:
        assert await requester.wait_for_peers(CAPABILITY, PEERS + 1, timeout=SETTLE_S)
        assert joiner.address in requester.discovery.candidates(CAPABILITY, 1)
        await eventually(
            lambda: all(state_at(node, joiner) is MemberState.ALIVE for node in network),
            what="every peer knows the joiner",
        )
        assert directory_size(joiner) == PEERS
    finally:
        await joiner.stop(grace=0.5)


async def test_a_graceful_leave_propagates_and_the_peer_is_no_longer_solicited(
    network: list[PeerNode], requester: Requester, tmp_path: Path
) -> None:
    leaver = await start_node(tmp_path, PEERS + 1, (network[5].address,))
    try:
        assert await requester.wait_for_peers(CAPABILITY, PEERS + 1, timeout=SETTLE_S)
        await eventually(
            lambda: all(state_at(node, leaver) is MemberState.ALIVE for node in network),
            what="every peer knows the leaver",
        )
    finally:
        await leaver.stop(grace=0.5)
    await eventually(
        lambda: all(state_at(node, leaver) is MemberState.LEFT for node in network),
        what="LEFT everywhere",
    )
    assert requester.discovery.agent is not None
    await eventually(
        lambda: (
            requester.discovery.agent is not None
            and requester.discovery.agent.membership.state_of(leaver.peer_id) is MemberState.LEFT
        ),
        what="LEFT at the requester",
    )
    assert leaver.address not in requester.discovery.candidates(CAPABILITY, 1)
    result = await requester.run(CAPABILITY, {"x": digits_batch(4)[0]}, deadline_s=5.0)
    asked = {s.item.address for s in result.bids} | {n.address for n in result.no_bids}
    assert leaver.address not in asked


# --- bad input over real gRPC -----------------------------------------------------------------


def record_of(identity: Identity, seq: int, *, peer_id: Identity | None = None) -> PeerRecord:
    owner = (peer_id or identity).peer_id
    return PeerRecord(owner, (), (ModelAdvert("fake", (CAPABILITY,)),), seq, seq)


def push(*envelopes: Envelope) -> gossip_pb2.GossipRequest:
    return request_to_proto(GossipRequest(None, EMPTY_DIGEST, tuple(envelopes)))


async def test_bad_records_and_a_flood_are_rejected_and_counted_and_the_node_keeps_serving(
    network: list[PeerNode],
) -> None:
    target, victim = network[2], network[3]
    assert target.gossip is not None
    stats = target.gossip.membership.stats
    before = stats.rejected.copy()
    attacker = Identity.generate()
    now_ms = int(time.time() * 1000)
    signed = sign_record(attacker, record_of(attacker, now_ms)).envelope
    victim_record = target.gossip.membership.record_of(victim.peer_id)
    assert victim_record is not None
    bad = {
        RejectReason.BAD_SIGNATURE: [
            Envelope(signed.public_key, signed.payload_type, signed.payload, bytes(64)),  # forged
            Envelope(signed.public_key, signed.payload_type, signed.payload, b""),  # unsigned
        ],
        RejectReason.PEER_ID_MISMATCH: [  # the attacker's key, the victim's peer id
            sign_record(attacker, record_of(attacker, now_ms, peer_id=victim.identity)).envelope
        ],
        RejectReason.TOO_LARGE: [attacker.sign(RECORD_TYPE, bytes(20_000))],
        RejectReason.STALE: [  # the victim's own key, an older seq than the one everybody holds
            sign_record(victim.identity, record_of(victim.identity, victim_record.seq - 1)).envelope
        ],
        RejectReason.FROM_THE_FUTURE: [
            sign_record(attacker, record_of(attacker, now_ms + 3_600_000)).envelope
        ],
    }
    beat = sign_heartbeat(attacker, Heartbeat(attacker.peer_id, 1, 1)).envelope
    channel, _ = await connect(target.dial_address)
    async with channel:
        stub = market_pb2_grpc.PeerStub(channel)
        for envelopes in bad.values():
            for envelope in envelopes:
                await stub.Gossip(push(envelope), timeout=5)
        over = await _status(stub.Gossip(push(*[beat] * 600), timeout=5))  # over max_updates_per_message
        flood = request_to_proto(GossipRequest(signed, {attacker.peer_id.raw: DigestEntry(now_ms, 0)}, ()))
        flooding = time.monotonic()
        codes = await asyncio.gather(*(_status(stub.Gossip(flood, timeout=5)) for _ in range(80)))
        flooded_s = time.monotonic() - flooding
    for reason, envelopes in bad.items():
        assert stats.rejected[reason] - before[reason] >= len(envelopes), reason
    assert over is grpc.StatusCode.RESOURCE_EXHAUSTED  # refused on the wire, before any conversion
    assert stats.rejected[RejectReason.TOO_MANY_UPDATES] - before[RejectReason.TOO_MANY_UPDATES] >= 1
    # The sender's bucket: a burst, then its rate over however long a loaded machine took to serve
    # the flood (a fixed count of refusals would depend on that time).
    limits = target.gossip.config.limits
    allowed = limits.rate_burst + limits.rate_per_interval / INTERVAL * flooded_s
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert codes.count(grpc.StatusCode.OK) <= allowed + 1 and refused >= 1
    assert stats.rejected[RejectReason.RATE_LIMITED] - before[RejectReason.RATE_LIMITED] >= refused
    assert target.gossip.membership.record_of(victim.peer_id) == victim_record  # nothing was overwritten

    async with HandBuyer(target.address) as buyer:  # the node keeps serving, and gossiping
        await buyer.win(4)
    others = [node for node in network if node is not target]
    await eventually(
        lambda: (
            directory_size(target) == PEERS - 1
            and all(state_at(node, target) is MemberState.ALIVE for node in others)
        ),
        what="the target still gossips with everyone",
    )


async def _status(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
