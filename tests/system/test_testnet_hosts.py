"""The ``--hosts`` testnet: peers in their own network namespaces; a cut host dies, a healed one returns.

Four ``atomic-peer`` processes, each in its own namespace with its own address on a veth bridge,
started by ``scripts/testnet.py``'s own functions. The test's requester (root namespace, over the
bridge) watches. One host's link goes down: every view declares it DEAD, and a newcomer asking
the other peers is no longer handed its record. The link comes back: gossip heals, it is ALIVE
again everywhere and solicited again.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from atomic_p2p import netns
from atomic_p2p.cli.peers import observe
from atomic_p2p.gossip import GossipConfig, MemberState
from atomic_p2p.requester import Requester
from atomic_p2p.testing import digits_batch
from peers.examples import weights_cache_dir
from tests.support.scripts import load_script

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(netns.available() is not None, reason=f"no network namespaces: {netns.available()}"),
]

INTERVAL = 0.5
GOSSIP = GossipConfig(interval=INTERVAL)
CAPABILITY = "classify/digits"
PEERS = 4


def load_testnet() -> ModuleType:
    return load_script("testnet.py")


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def listed_alive(bootstrap: str) -> set[str]:
    """Addresses a newcomer joining through ``bootstrap`` is told about, as alive and hosting."""
    view = await observe([bootstrap], GOSSIP, wait_s=10.0)
    return {m["addresses"][0] for m in view.members if m["state"] == "alive" and m["models"]}


async def cut_and_heal(testnet: ModuleType, net: Any) -> None:
    peers, network = net.peers, net.network
    victim, witness = peers[2], peers[1]
    addresses = {peer.address for peer in peers}
    async with Requester(bootstrap=[net.seed_address], gossip=GOSSIP) as requester:
        await testnet.wait_converged(requester, PEERS, timeout=30)
        agent = requester.discovery.agent
        assert agent is not None
        victim_id = next(r.peer_id for r in agent.membership.live_members() if victim.address in r.addresses)
        # Gossip is eventually consistent: one failed first dial makes a peer SUSPECT for a round.
        await _until_listed(witness.address, addresses, "every peer listed alive before the cut")

        def state() -> MemberState | None:
            return agent.membership.state_of(victim_id)

        # The bound: silence until SUSPECT, then until DEAD, each noticed at the next tick, plus
        # one round for the victim's last beat to reach this observer through another peer.
        members = agent.membership.member_count
        bound = GOSSIP.suspicion_timeout(members) + GOSSIP.dead_timeout(members) + 3 * INTERVAL
        network.cut(victim.host)
        took = await eventually(lambda: state() is MemberState.DEAD, bound + 5, "DEAD after the cut")
        assert took <= bound
        assert victim.address not in requester.discovery.candidates(CAPABILITY, 1)
        await _until_listed(witness.address, addresses - {victim.address}, "the others drop it")

        network.heal(victim.host)
        healed = await eventually(lambda: state() is MemberState.ALIVE, 30, "ALIVE after the heal")
        print(f"DEAD {took:.2f} s after the cut (bound {bound:.2f} s); ALIVE {healed:.2f} s after the heal")
        assert victim.address in requester.discovery.candidates(CAPABILITY, 1)
        await _until_listed(witness.address, addresses, "the others take it back")
        await eventually(
            lambda: set(requester.discovery.candidates(CAPABILITY, 1)) == addresses,
            30,
            "all candidates again",
        )
        result = await requester.run(CAPABILITY, {"x": digits_batch(4)[0]}, deadline_s=5.0)
        asked = {s.item.address for s in result.bids} | {n.address for n in result.no_bids}
        assert asked == addresses


async def _until_listed(bootstrap: str, expected: set[str], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (listed := await listed_alive(bootstrap)) != expected:
        assert time.monotonic() < deadline, f"{what}: a newcomer is told {sorted(listed)}"


def test_a_cut_host_is_declared_dead_and_gossip_heals_after_the_link_returns(tmp_path: Path) -> None:
    testnet = load_testnet()
    options = testnet.Options(
        peers=PEERS,
        configs=("small", "specialist"),
        data_dir=tmp_path,
        cache_dir=weights_cache_dir(),
        gossip_interval=INTERVAL,
        hosts=True,
    )
    with testnet.testnet(options) as net:
        assert len({peer.host.netns for peer in net.peers}) == PEERS
        assert all(peer.address.startswith(peer.host.address + ":") for peer in net.peers)
        names = [peer.host.netns for peer in net.peers]
        asyncio.run(cut_and_heal(testnet, net))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), "namespaces left behind"
    assert all(peer.process.poll() is not None for peer in net.peers), "peer processes left behind"
