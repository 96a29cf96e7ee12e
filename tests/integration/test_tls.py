"""TLS bound to peer identity, with real handshakes on 127.0.0.1 (docs/security.md).

Every peer here serves TLS, as every peer does by default; the tests that start a plaintext peer
(``insecure``) do so because plaintext is what they check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atomic_p2p._proto.atomic.v1 import gossip_pb2, market_pb2_grpc
from atomic_p2p.channels import ChannelPool, connect
from atomic_p2p.errors import (
    NoBidsError,
    PeerIdentityError,
    PlaintextPeerError,
    SignatureError,
    UnavailableError,
)
from atomic_p2p.gossip import GossipConfig, RejectReason
from atomic_p2p.gossip.codec import request_to_proto, sign_record
from atomic_p2p.gossip.messages import EMPTY_DIGEST, GossipRequest
from atomic_p2p.gossip.records import PeerRecord
from atomic_p2p.identity import Identity, PeerId
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester
from atomic_p2p.requester.transport import GrpcTransport
from atomic_p2p.testing import digits_batch
from atomic_p2p.tls import TlsCredentials, bound_peer
from peers.examples import example_config
from tests.support.forged_tls import tampered

pytestmark = pytest.mark.integration

CAPABILITY = "classify/digits"
INTERVAL = 0.2
GOSSIP = GossipConfig(interval=INTERVAL)
SETTLE_S = 15.0
BID_TIMEOUT_S = 4.0  # first contact includes a handshake or two; this box is shared


async def start(tmp_path: Path, name: str, **overrides: object) -> PeerNode:
    config = example_config(
        "small", tmp_path, data_dir=tmp_path / name, gossip_interval_s=INTERVAL, **overrides
    )
    return await PeerNode.start(config)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[PeerNode, PeerNode]]:
    alice = await start(tmp_path, "alice")
    bob = await start(tmp_path, "bob")
    try:
        yield alice, bob
    finally:
        await asyncio.gather(alice.stop(grace=0.5), bob.stop(grace=0.5))


def knows(node: PeerNode, other: PeerId) -> bool:
    assert node.gossip is not None
    return node.gossip.membership.record_of(other) is not None


async def test_a_peer_serves_tls_bound_to_its_key_and_keeps_its_certificate(tmp_path: Path) -> None:
    node = await start(tmp_path, "alice")
    try:
        assert node.tls is not None and node.gossip is not None
        certificate = node.tls.certificate_der
        assert bound_peer(certificate) == node.peer_id
        assert node.gossip.membership.local_record.tls_certificate == certificate
        async with grpc.aio.insecure_channel(node.address) as plaintext:  # a client without TLS
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        channel, pin = await connect(node.dial_address)
        async with channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING and pin.peer == node.peer_id
    finally:
        await node.stop(grace=0.5)
    again = await start(tmp_path, "alice")  # same data dir: same key, same certificate
    try:
        assert again.tls is not None and again.tls.certificate_der == certificate
    finally:
        await again.stop(grace=0.5)


async def test_an_address_bound_to_another_peer_is_refused_as_unauthenticated(
    pair: tuple[PeerNode, PeerNode],
) -> None:
    alice, bob = pair
    wrong = f"{alice.peer_id.hex}@{bob.address}"  # bob answers where alice is expected
    pool = ChannelPool()
    try:
        with pytest.raises(PeerIdentityError) as caught:
            await GrpcTransport(pool).send(wrong, "RequestBids", b"", 5.0)
    finally:
        await pool.close()
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert alice.peer_id.short in str(caught.value) and bob.peer_id.short in str(caught.value)

    x, _ = digits_batch(4)
    async with Requester([wrong], bid_timeout_s=BID_TIMEOUT_S) as requester:
        with pytest.raises(NoBidsError) as no_bids:
            await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
    assert "UNAUTHENTICATED" in str(no_bids.value) and bob.peer_id.short in str(no_bids.value)
    async with Requester(
        [alice.dial_address], bid_timeout_s=BID_TIMEOUT_S
    ) as requester:  # the right id: served
        result = await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
    assert result.winner.peer_id == alice.peer_id


async def test_an_impostor_with_a_copied_record_cannot_serve(pair: tuple[PeerNode, PeerNode]) -> None:
    alice, impostor = pair  # the impostor holds alice's signed record, certificate included
    assert alice.tls is not None and alice.gossip is not None and impostor.tls is not None
    record = alice.gossip.membership.local_record
    # It cannot present alice's certificate without alice's TLS key: gRPC will not even bind.
    server = grpc.aio.server()
    stolen = grpc.ssl_server_credentials([(impostor.tls.private_key_pem, alice.tls.certificate_pem)])
    with pytest.raises(RuntimeError):
        server.add_secure_port("127.0.0.1:0", stolen)
    await server.stop(None)
    # With its own certificate, at an address alice's record names (as after a takeover), the
    # handshake fails: the channel trusts alice's certificate alone.
    pool = ChannelPool()
    try:
        pool.learn(alice.peer_id, [impostor.address], record.tls_certificate)
        await pool.open(impostor.address)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pool.stub(impostor.address).Gossip(gossip_pb2.GossipRequest(), timeout=5)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        # through the requester's transport the failure says who answered instead
        with pytest.raises(PeerIdentityError, match=f"bound to peer {impostor.peer_id.short}, expected"):
            await GrpcTransport(pool).send(impostor.address, "RequestBids", b"", 5.0)
    finally:
        await pool.close()


async def test_a_bootstrap_naming_the_peer_id_checks_first_contact(
    pair: tuple[PeerNode, PeerNode], tmp_path: Path
) -> None:
    alice, bob = pair
    honest = await start(tmp_path, "carol", bootstrap=(alice.dial_address,))
    fooled = await start(tmp_path, "dave", bootstrap=(f"{bob.peer_id.hex}@{alice.address}",))
    try:
        assert honest.gossip is not None and fooled.gossip is not None
        assert await honest.gossip.wait_until(lambda: knows(honest, alice.peer_id), SETTLE_S)
        # dave expected bob at alice's address: it never sends alice anything, so neither learns
        # of the other (10 gossip rounds)
        assert not await fooled.gossip.wait_until(lambda: knows(fooled, alice.peer_id), 10 * INTERVAL)
        assert not knows(alice, fooled.peer_id)
        assert fooled.gossip.membership.stats.failed_rpcs > 0
    finally:
        await asyncio.gather(honest.stop(grace=0.5), fooled.stop(grace=0.5))


async def test_a_tampered_binding_is_refused_in_gossip(pair: tuple[PeerNode, PeerNode]) -> None:
    alice, bob = pair
    assert alice.gossip is not None and bob.tls is not None
    stats = alice.gossip.membership.stats
    before = stats.rejected[RejectReason.BAD_TLS_BINDING]
    mallory = Identity.generate()
    now_ms = int(time.time() * 1000)
    # mallory's own signed record, claiming bob's certificate (so requesters would pin it for
    # mallory's address), and one whose certificate's binding was altered
    claims_bobs = PeerRecord(
        mallory.peer_id, ("127.0.0.1:9",), (), now_ms, now_ms, tls_certificate=bob.tls.certificate_der
    )
    altered = tampered(TlsCredentials.generate(mallory).certificate_der)
    forged = PeerRecord(mallory.peer_id, ("127.0.0.1:9",), (), now_ms + 1, now_ms, tls_certificate=altered)
    channel, _ = await connect(alice.dial_address)
    async with channel:
        stub = market_pb2_grpc.PeerStub(channel)
        for record in (claims_bobs, forged):
            push = GossipRequest(None, EMPTY_DIGEST, (sign_record(mallory, record).envelope,))
            await stub.Gossip(request_to_proto(push), timeout=5)
    assert stats.rejected[RejectReason.BAD_TLS_BINDING] - before == 2
    assert not knows(alice, mallory.peer_id)


async def test_plaintext_peers_are_refused_unless_the_requester_allows_them(tmp_path: Path) -> None:
    # a plaintext peer: plaintext is what this test checks
    plain = await start(tmp_path, "plain", insecure=True)
    tls_peer = await start(tmp_path, "tls", bootstrap=(plain.address,))
    try:
        assert plain.tls is None and plain.gossip is not None and tls_peer.gossip is not None
        assert plain.gossip.membership.local_record.tls_certificate == b""
        x, _ = digits_batch(4)
        async with Requester([plain.address], bid_timeout_s=BID_TIMEOUT_S) as requester:
            with pytest.raises(NoBidsError, match="FAILED_PRECONDITION"):
                await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
        pool = ChannelPool()
        with pytest.raises(PlaintextPeerError, match="--insecure"):
            await pool.open(plain.address)
        await pool.close()
        async with Requester([plain.address], insecure=True, bid_timeout_s=BID_TIMEOUT_S) as requester:
            result = await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
        assert result.winner.peer_id == plain.peer_id
        # the TLS peer does not gossip with it (5 rounds)
        assert not await tls_peer.gossip.wait_until(lambda: knows(tls_peer, plain.peer_id), 5 * INTERVAL)
    finally:
        await asyncio.gather(plain.stop(grace=0.5), tls_peer.stop(grace=0.5))


async def test_insecure_works_end_to_end(tmp_path: Path) -> None:
    # plaintext throughout: --insecure is what this test checks
    first = await start(tmp_path, "first", insecure=True)
    second = await start(tmp_path, "second", insecure=True, bootstrap=(first.address,))
    try:
        async with Requester(bootstrap=[second.address], gossip=GOSSIP, insecure=True) as requester:
            assert await requester.wait_for_peers(CAPABILITY, 2, timeout=SETTLE_S)
            x, _ = digits_batch(4)
            result = await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
        assert result.winner.peer_id in {first.peer_id, second.peer_id}
        assert second.gossip is not None and knows(second, first.peer_id)
    finally:
        await asyncio.gather(first.stop(grace=0.5), second.stop(grace=0.5))


async def test_a_peer_that_changed_certificate_is_reached_again_at_once(
    pair: tuple[PeerNode, PeerNode],
) -> None:
    alice, _ = pair
    old = TlsCredentials.generate(alice.identity).certificate_der  # as in a record from before a restart
    pool = ChannelPool()
    transport = GrpcTransport(pool)
    try:
        pool.learn(alice.peer_id, [alice.address], old)
        with pytest.raises(UnavailableError):  # the pinned handshake fails once...
            await transport.send(alice.address, "Feedback", b"", 5.0)
        # ...and what alice then proves (bound to alice) is pinned: the call reaches her
        with pytest.raises(SignatureError, match="public key"):  # alice herself refuses an unsigned notice
            await transport.send(alice.address, "Feedback", b"", 5.0)
        pin = pool.pin(alice.address)
        assert alice.tls is not None and pin is not None and pin.certificate == alice.tls.certificate_der
    finally:
        await pool.close()
