"""The command lines end cleanly where a user's shell cuts them short: a reader that closes the
pipe (``atomic bids | head``) and a port something already listens on. Real subprocesses, as a
user runs them, so that what the interpreter and gRPC's C core print at exit is seen too."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atomic_p2p.store import Store
from peers.examples import PEERS_DIR

ROOT = Path(__file__).resolve().parents[2]


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("GRPC_VERBOSITY", None)  # what a user's shell has: the commands set their own default
    return env


def _into_closed_pipe(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=_environment(tmp_path),
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "arguments",
    [
        ["keygen", "--out", "{tmp}/key.pem"],
        ["bids", "--store", "{tmp}/requester.db"],
        ["profile", "--store", "{tmp}/requester.db"],
    ],
)
def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path, arguments: list[str]) -> None:
    Store.open(tmp_path / "requester.db").close()
    command = [argument.format(tmp=tmp_path) for argument in arguments]
    done = _into_closed_pipe(tmp_path, "-m", "atomic_p2p.cli.main", *command)
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert done.returncode == 141  # as a shell reports a process that SIGPIPE ended


def test_a_busy_port_prints_one_clean_line(tmp_path: Path) -> None:
    small = str(PEERS_DIR / "small.toml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "atomic_p2p.cli.peer",
                small,
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=_environment(tmp_path),
            check=False,
        )
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # gRPC's C core adds no line of its own
    assert line.startswith(f"atomic-peer: cannot listen on 127.0.0.1:{port}: ")
    assert "--port 0" in line
