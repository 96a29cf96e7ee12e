"""``atomic-peer`` processes with TLS (the default) and with ``--insecure``, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_p2p.errors import NoBidsError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.requester import Requester
from atomic_p2p.testing import digits_batch, peer_processes
from atomic_p2p.tls import bound_peer, fetch_certificate
from peers.examples import example_table

pytestmark = pytest.mark.system

CAPABILITY = "classify/digits"


async def test_peer_processes_serve_tls_bound_to_their_keys_and_gossip_over_it(tmp_path: Path) -> None:
    tables = [example_table("small", name=f"tls-{index}") for index in range(2)]
    async with peer_processes(tables, tmp_path) as peers:
        for peer in peers:  # the certificate each process presents names the key in its data dir
            assert bound_peer(await fetch_certificate(peer.address, 10.0)).hex == peer.peer_id
        x, _ = digits_batch(4)
        gossip = GossipConfig(interval=0.5)
        fixed, seeds = [peers[1].dial_address], [peers[0].dial_address]
        async with Requester(fixed, bootstrap=seeds, gossip=gossip, bid_timeout_s=4.0) as requester:
            assert await requester.wait_for_peers(CAPABILITY, 2, timeout=20.0)
            result = await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
        assert result.winner.peer_id.hex in {peer.peer_id for peer in peers}
        assert {bid.item.peer_id.hex for bid in result.bids} == {peer.peer_id for peer in peers}


async def test_an_insecure_peer_process_is_refused_unless_the_requester_allows_plaintext(
    tmp_path: Path,
) -> None:
    # plaintext is what this test checks
    async with peer_processes(
        [example_table("small", name="plain")], tmp_path, extra_args=["--insecure"]
    ) as peers:
        (peer,) = peers
        x, _ = digits_batch(4)
        async with Requester([peer.address], bid_timeout_s=4.0) as requester:
            with pytest.raises(NoBidsError, match="FAILED_PRECONDITION"):
                await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
        async with Requester([peer.address], insecure=True, bid_timeout_s=4.0) as requester:
            result = await requester.run(CAPABILITY, {"x": x}, deadline_s=10.0)
        assert result.winner.peer_id.hex == peer.peer_id
