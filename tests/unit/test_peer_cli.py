"""``atomic-peer`` flags become config fields (no server is started here)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atomic_p2p.cli.peer import build_parser, config_from_args, main, watch_bootstrap
from atomic_p2p.faults import ENV_VAR, FaultPlan
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import PeerConfig
from peers.examples import PEERS_DIR

SMALL = str(PEERS_DIR / "small.toml")


def parse(*flags: str) -> PeerConfig:
    return config_from_args(build_parser().parse_args([SMALL, *flags]))


def test_gossip_flags_override_the_config(tmp_path: Path) -> None:
    config = parse(
        "--bootstrap",
        "127.0.0.1:5001",
        "--bootstrap",
        "10.0.0.2:5002",
        "--advertise",
        "198.18.1.10:6000",
        "--gossip-interval",
        "0.25",
        "--gossip-fanout",
        "4",
        "--cache-dir",
        str(tmp_path),
    )
    assert config.bootstrap == ("127.0.0.1:5001", "10.0.0.2:5002")
    assert config.advertise == "198.18.1.10:6000"
    assert config.gossip_interval_s == 0.25
    assert config.gossip_fanout == 4
    assert config.cache_dir == tmp_path.resolve()
    assert config.faults is None  # no flag: the pool reads the environment


def test_tls_is_the_default_and_a_bootstrap_may_name_its_peer() -> None:
    assert parse().insecure is False
    peer = "ab" * 32
    config = parse("--insecure", "--bootstrap", f"{peer}@127.0.0.1:5001")
    assert config.insecure is True and config.bootstrap == (f"{peer}@127.0.0.1:5001",)


def test_fault_flags_lie_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "delay_ms=5,jitter_ms=3,seed=1")
    config = parse("--fault-loss", "0.2", "--fault-delay-ms", "40", "--fault-seed", "9")
    assert config.faults == FaultPlan(delay_ms=40, jitter_ms=3, loss=0.2, seed=9)


@pytest.mark.parametrize(
    "flags",
    [
        ["--bootstrap", "nohost"],
        ["--bootstrap", "127.0.0.1:0"],
        ["--bootstrap", "notapeerid@127.0.0.1:5001"],
        ["--bootstrap", f"{'ab' * 32}@nohost"],
        ["--gossip-interval", "0"],
        ["--gossip-fanout", "0"],
        ["--fault-jitter-ms", "-1"],
    ],
)
def test_bad_flags_are_usage_errors(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([SMALL, *flags])
    assert exit_info.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_a_loss_of_one_exits_2_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([SMALL, "--fault-loss", "1"]) == 2
    assert "loss" in capsys.readouterr().err


async def test_an_unanswered_bootstrap_is_retried_and_warned_about_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        seed = f"127.0.0.1:{probe.getsockname()[1]}"
    agent = GossipAgent(Identity.generate(), GossipConfig(interval=0.1), seeds=[seed])
    caplog.set_level(logging.WARNING, logger="atomic_p2p.cli.peer")
    await agent.start()
    watcher = asyncio.create_task(watch_bootstrap(agent, [seed], first_s=0.2, longest_s=0.4))
    try:
        for _ in range(100):  # bounded: 10 s at most
            if len(caplog.records) >= 4:
                break
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
        await agent.stop(leave=False)
    warnings = caplog.records[:4]
    assert len(warnings) == 4
    gaps = [later.created - earlier.created for earlier, later in itertools.pairwise(warnings)]
    assert gaps[0] >= 0.35 and gaps[1] >= 0.35  # 0.2 s, then doubled to the 0.4 s ceiling
    last = warnings[-1].getMessage()
    assert f"tried {seed} (" in last and "last UNAVAILABLE" in last and "check --bootstrap" in last
    assert agent.failures[seed] >= 2  # gossip kept retrying the seed


async def test_serve_freezes_the_start_up_heap_once_its_node_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atomic_p2p.cli import peer as cli
    from peers.examples import example_config

    frozen: list[int] = []

    def freeze_then_stop() -> None:  # not the real freeze: this test process goes on
        frozen.append(1)
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "freeze_heap", freeze_then_stop)
    config = example_config("small", tmp_path, insecure=True)
    assert await asyncio.wait_for(cli.serve(config, drain_timeout=1.0), timeout=60) == 0
    assert frozen == [1]


def test_freeze_heap_moves_what_is_alive_out_of_the_collectors_walks() -> None:
    probe = (
        "import gc; from atomic_p2p.peer.node import freeze_heap; freeze_heap();"
        "print(gc.get_freeze_count(), *gc.get_threshold())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    frozen, young, older, oldest = map(int, out.stdout.split()[-4:])
    assert frozen > 100_000  # torch's objects and ours
    assert (young, older, oldest) == (10_000, 10, 10)  # young collections every 10,000 allocations
