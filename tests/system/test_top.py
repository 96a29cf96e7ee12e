"""``atomic top`` against a small real network: two peers gossiping on loopback and a requester's
store holding the auctions it ran among them.

The one-shot table is read from a real ``atomic top`` process over a pipe; the live view's render
function is fed a real snapshot; and the live mode runs in a pseudo-terminal, where q and Ctrl-C
end it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from rich.console import Console

from atomic_p2p.cli.top import render, take_snapshot
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.identity import Identity
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.store import Store
from atomic_p2p.testing import digits_batch
from peers.examples import example_config

pytestmark = [pytest.mark.system, pytest.mark.asyncio(loop_scope="module")]

INTERVAL = 0.5
AUCTIONS = 3


@dataclass
class Network:
    nodes: list[PeerNode]
    store: Path
    winners: dict[str, int]  # peer id hex -> auctions won

    @property
    def seed(self) -> str:
        return self.nodes[0].address


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def network(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Network]:
    tmp = tmp_path_factory.mktemp("top")
    nodes: list[PeerNode] = []
    try:
        for name in ("small", "specialist"):
            seeds = (nodes[0].address,) if nodes else ()
            nodes.append(
                await PeerNode.start(example_config(name, tmp, gossip_interval_s=INTERVAL, bootstrap=seeds))
            )
        store = tmp / "requester.db"
        winners: dict[str, int] = {}
        peers = [node.address for node in nodes]
        async with Requester(peers, store=store, evaluator=EvaluatorConfig.greedy()) as requester:
            for index in range(AUCTIONS):
                x, _ = digits_batch(4, offset=4 * index)
                result = await requester.run("classify/digits", {"x": x})
                winners[result.winner.peer_id.hex] = winners.get(result.winner.peer_id.hex, 0) + 1
        yield Network(nodes, store, winners)
    finally:
        await asyncio.gather(*(node.stop(grace=0.5) for node in nodes))


def top_command(network: Network, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "atomic_p2p.cli.main", "top", "--bootstrap", network.seed,
        "--store", str(network.store), "--interval", str(INTERVAL), *extra,
    ]  # fmt: skip


async def test_over_a_pipe_it_prints_the_network_once(network: Network) -> None:
    process = await asyncio.create_subprocess_exec(
        *top_command(network), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "\x1b" not in text  # plain text, no terminal codes
    assert "q or Ctrl-C" not in text
    lines = text.splitlines()
    for node in network.nodes:
        (row,) = [line for line in lines if line.startswith(node.peer_id.short)]
        assert "alive" in row and node.address in row and next(iter(node.models)) in row
        wins = network.winners.get(node.peer_id.hex, 0)
        assert f" {wins} " in f" {row} "
    decisions = [line for line in lines if "classify/digits" in line and ":" in line.split()[0]]
    assert len(decisions) == AUCTIONS
    assert "2 members, 2 alive hosting models" in text


async def test_the_live_view_renders_a_real_snapshot(network: Network) -> None:
    agent = GossipAgent(Identity.generate(), GossipConfig(interval=INTERVAL), seeds=[network.seed])
    await agent.start()
    try:
        assert await agent.wait_until(lambda: len(agent.membership.live_members()) >= 2, 10)
        with Store.open(network.store, read_only=True) as store:
            snapshot = take_snapshot(agent, [network.seed], store, decisions=2)
    finally:
        await agent.stop(leave=True)
    assert {member["peer_id"] for member in snapshot.members} == {n.peer_id.hex for n in network.nodes}
    assert len(snapshot.decisions) == 2 and sum(snapshot.wins.values()) == AUCTIONS
    screen = Console(file=io.StringIO(), width=160, force_terminal=True, color_system=None)
    screen.print(render(snapshot, live=True))
    drawn = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "(q or Ctrl-C quits)" in drawn and "recent decisions" in drawn
    for node in network.nodes:
        assert node.peer_id.short in drawn and next(iter(node.models)) in drawn


async def read_until(master: int, needle: bytes, timeout_s: float) -> bytes:
    seen = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while needle not in seen:
        assert loop.time() < deadline, f"no {needle!r} on the terminal; it showed {seen[-2000:]!r}"
        readable = asyncio.Event()
        loop.add_reader(master, readable.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(readable.wait(), 0.5)
        finally:
            loop.remove_reader(master)
        if readable.is_set():
            seen += os.read(master, 65536)
    return seen


@pytest.mark.parametrize("quit_with", ["q", "ctrl-c"])
async def test_the_live_view_redraws_until_q_or_ctrl_c(network: Network, quit_with: str) -> None:
    master, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *top_command(network, "--refresh", "0.3"),
            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
            env={**os.environ, "COLUMNS": "180", "LINES": "40", "TERM": "xterm"},
        )  # fmt: skip
        os.close(terminal)
        try:
            shown = await read_until(master, b"q or Ctrl-C quits", 60)
            shown += await read_until(master, network.nodes[1].peer_id.short.encode(), 20)
            if quit_with == "q":
                os.write(master, b"q")
            else:
                process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 20) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        os.close(master)
    assert b"Traceback" not in shown
