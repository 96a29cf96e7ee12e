"""Gossip with ``atomic-peer`` processes: a SIGKILLed peer is declared dead in time and dropped.

Three in-process example nodes form the network; one more peer runs as a real ``atomic-peer``
process that joins through ``--bootstrap`` (with ``--fault-delay-ms``, so the flag path is used
end to end), is listed by ``atomic peers``, and is then killed with SIGKILL: it sends no leave,
so only failure detection can notice.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from atomic_p2p.gossip import GossipConfig, MemberState
from atomic_p2p.identity import PeerId
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester
from atomic_p2p.testing import digits_batch
from peers.examples import PEERS_DIR, example_config, weights_cache_dir

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

INTERVAL = 0.5
GOSSIP = GossipConfig(interval=INTERVAL)
CAPABILITY = "classify/digits"
START_TIMEOUT_S = 90.0  # a cold first start trains the model
LISTENING = re.compile(r"^atomic-peer ([0-9a-f]{8}) listening on (\S+) hosting (.+)$")


@pytest_asyncio.fixture(loop_scope="module")
async def network(tmp_path: Path) -> AsyncIterator[list[PeerNode]]:
    nodes: list[PeerNode] = []
    try:
        for name in ("small", "large", "specialist"):
            seeds = (nodes[0].address,) if nodes else ()
            config = example_config(name, tmp_path, gossip_interval_s=INTERVAL, bootstrap=seeds)
            nodes.append(await PeerNode.start(config))
        yield nodes
    finally:
        await asyncio.gather(*(node.stop(grace=0.5) for node in nodes))


async def start_peer_process(tmp_path: Path, bootstrap: str) -> tuple[asyncio.subprocess.Process, str]:
    log = tmp_path / "peer.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "atomic_p2p.cli.peer",
            str(PEERS_DIR / "small.toml"),
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "process"),
            "--cache-dir",
            str(weights_cache_dir()),
            "--bootstrap",
            bootstrap,
            "--gossip-interval",
            str(INTERVAL),
            "--fault-delay-ms",
            "5",
            "--log-level",
            "WARNING",
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
    match = LISTENING.match(line.decode().strip())
    assert match, f"unexpected first line {line!r}; log:\n{log.read_text()}"
    return process, match[2]


async def atomic_peers_json(bootstrap: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "atomic_p2p.cli.main",
        "peers",
        "--bootstrap",
        bootstrap,
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    view: dict[str, Any] = json.loads(out)
    return view


def state_at(node: PeerNode, peer: PeerId) -> MemberState | None:
    assert node.gossip is not None
    return node.gossip.membership.state_of(peer)


async def test_a_sigkilled_peer_is_declared_dead_in_time_and_no_longer_solicited(
    network: list[PeerNode], tmp_path: Path
) -> None:
    process, address = await start_peer_process(tmp_path, network[0].address)
    try:
        async with Requester(bootstrap=[network[1].address], gossip=GOSSIP) as requester:
            assert await requester.wait_for_peers(CAPABILITY, 4, timeout=20)
            assert address in requester.discovery.candidates(CAPABILITY, 1)
            view = await atomic_peers_json(network[2].address)
            listed = {m["addresses"][0]: m for m in view["members"] if m["addresses"]}
            assert listed[address]["state"] == "alive"
            assert listed[address]["models"][0]["model_id"] == "digits-small"

            agent = requester.discovery.agent
            assert agent is not None
            peer = next(r.peer_id for r in agent.membership.live_members() if address in r.addresses)
            deadline = time.monotonic() + 20
            while not all(state_at(node, peer) is MemberState.ALIVE for node in network):
                assert time.monotonic() < deadline, "the process never joined every view"
                await asyncio.sleep(0.05)

            # The bound: silence until SUSPECT, then until DEAD, each noticed at the next tick, plus
            # one round for the victim's last beat to reach a peer through another.
            members = max(node.gossip.membership.member_count for node in network if node.gossip)
            bound = GOSSIP.suspicion_timeout(members) + GOSSIP.dead_timeout(members) + 3 * INTERVAL
            process.send_signal(signal.SIGKILL)
            await process.wait()
            killed_at = time.monotonic()
            declared: dict[int, float] = {}
            while len(declared) < len(network) and time.monotonic() - killed_at < bound + 5:
                for index, node in enumerate(network):
                    if index not in declared and state_at(node, peer) is MemberState.DEAD:
                        declared[index] = time.monotonic() - killed_at
                await asyncio.sleep(0.02)
            assert len(declared) == len(network), f"not DEAD everywhere: {declared}"
            assert max(declared.values()) <= bound, f"declared dead after {declared} s; bound {bound:.2f} s"

            assert address not in requester.discovery.candidates(CAPABILITY, 1)
            result = await requester.run(CAPABILITY, {"x": digits_batch(4)[0]}, deadline_s=5.0)
            asked = {s.item.address for s in result.bids} | {n.address for n in result.no_bids}
            assert address not in asked
            assert asked == {node.address for node in network}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
