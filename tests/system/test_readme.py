"""The README's SDK example runs as printed, against real peers (only the addresses change), and
its command-line peers find each other."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from peers.examples import running_peers, weights_cache_dir

ROOT = Path(__file__).resolve().parents[2]


def sdk_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The SDK") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README lost its SDK example"
    return match.group(1)


def test_sdk_example_is_ten_lines() -> None:
    assert len([line for line in sdk_example().splitlines() if line.strip()]) <= 10


@pytest.mark.system
async def test_sdk_example_runs(tmp_path: Path) -> None:
    code = sdk_example()
    addresses = re.findall(r'"(127\.0\.0\.1:\d+)"', code)
    assert addresses, "the example names no peer addresses"
    async with running_peers(["small", "large"], tmp_path) as nodes:
        for old, node in zip(addresses, nodes, strict=True):
            code = code.replace(old, node.address)
        script = tmp_path / "example.py"
        script.write_text(code)
        # The peers serve from this event loop: wait for the example without blocking it.
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(script), cwd=tmp_path, stdout=PIPE, stderr=PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().strip().splitlines()
    assert lines[0].split()[0] in {"digits-small", "digits-large"}
    assert len(lines) == 1 + 2  # the winner line, then one line per bid


def readme_peer_commands() -> list[list[str]]:
    """The ``atomic-peer`` lines of the README's command-line block, as argument lists."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Command line") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README lost its command-line example"
    lines = [line.split("#")[0] for line in match.group(1).splitlines() if line.startswith("atomic-peer ")]
    return [shlex.split(line)[1:] for line in lines]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.system
async def test_the_readme_peers_meet(tmp_path: Path) -> None:
    commands = readme_peer_commands()
    assert len(commands) == 2 and "--bootstrap" in commands[1], "the second peer must join the first"
    words = " ".join(word for command in commands for word in command)
    ports = {port: str(free_port()) for port in re.findall(r"\b\d{5}\b", words)}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}
    processes = []
    try:
        for index, arguments in enumerate(commands):
            arguments = [re.sub(r"\b\d{5}\b", lambda m: ports[m.group(0)], a) for a in arguments]
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "atomic_p2p.cli.peer", *arguments,
                "--data-dir", str(tmp_path / f"peer{index}"), "--cache-dir", str(weights_cache_dir()),
                "--gossip-interval", "0.3", cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE,
            )  # fmt: skip
            processes.append(process)
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            assert b"listening on" in line, line
        first = commands[0][commands[0].index("--port") + 1]
        members: list[dict[str, object]] = []
        for _ in range(5):  # bounded: the second peer's first exchange lands within a few rounds
            observer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "atomic_p2p.cli.main", "peers", "--bootstrap",
                f"127.0.0.1:{ports[first]}", "--json", env=env, stdout=PIPE, stderr=PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(observer.communicate(), timeout=60)
            assert observer.returncode == 0, err.decode()
            members = json.loads(out)["members"]
            if len(members) == 2:
                break
        models = {model["model_id"] for member in members for model in member["models"]}  # type: ignore[attr-defined]
        assert models == {"digits-small", "digits-large"}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), timeout=30)
