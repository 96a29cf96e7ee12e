"""Real ``atomic-peer`` processes started from config tables, for tests and experiments.

Each process prints one line once it serves (``atomic-peer <id> listening on <address> hosting
<models>``); :func:`peer_processes` waits for that line rather than for a guessed duration, and
stops every process it started on exit, SIGTERM first and SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from atomic_p2p.identity import Identity

LISTENING = re.compile(r"^atomic-peer ([0-9a-f]{8}) listening on (\S+) hosting (.+)$")


def peer_command() -> list[str]:
    """The installed ``atomic-peer`` console script when there is one, else the same entry point."""
    script = shutil.which("atomic-peer", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "atomic_p2p.cli.peer"]


@dataclasses.dataclass
class PeerProcess:
    """A running ``atomic-peer`` process started by :func:`peer_processes`."""

    name: str
    process: asyncio.subprocess.Process
    address: str
    peer_id_short: str
    models: list[str]
    config: Path
    log: Path
    peer_id: str = ""  # hex, read from the peer's key file once it serves

    @property
    def dial_address(self) -> str:
        """``PEERID@host:port``: its address with the peer id that must answer there (TLS checks it)."""
        return f"{self.peer_id}@{self.address}"


@contextlib.asynccontextmanager
async def peer_processes(
    tables: Sequence[Mapping[str, Any]],
    workdir: Path,
    *,
    start_timeout_s: float = 120.0,
    stop_grace_s: float = 10.0,
    threads: int | None = 1,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[list[PeerProcess]]:
    """Start one ``atomic-peer`` process per config table; stop them all (SIGTERM, then SIGKILL).

    Each table (what a peer TOML file holds: ``{"peer": {...}, "models": [...]}``) is written to
    ``workdir/<name>/peer.toml``, where ``<name>`` is ``[peer] name`` (or ``peer-<i>``); the process
    listens on 127.0.0.1 port 0, keeps its data under ``workdir/<name>/data`` and its stderr in
    ``workdir/<name>/peer.log``. ``threads`` sets OMP_NUM_THREADS for the peers (1 by default:
    several peers share few cores, and one thread keeps their arithmetic the same as a
    single-threaded in-process run); None leaves the environment alone.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started: list[PeerProcess] = []
    logs = []
    try:
        pending = []
        for index, table in enumerate(tables):
            name = str(table.get("peer", {}).get("name") or f"peer-{index}")
            home = workdir / name
            home.mkdir(parents=True, exist_ok=True)
            config = home / "peer.toml"
            config.write_text(tomli_w.dumps(dict(table)))
            log_path = home / "peer.log"
            log = log_path.open("wb")
            logs.append(log)
            process = await asyncio.create_subprocess_exec(
                *peer_command(),
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(home / "data"),
                *extra_args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
            started.append(PeerProcess(name, process, "", "", [], config, log_path))
            pending.append(_listening(started[-1], start_timeout_s))
        await asyncio.gather(*pending)
        yield started
    finally:
        await _stop_processes(started, stop_grace_s)
        for log in logs:
            log.close()


async def _listening(peer: PeerProcess, timeout_s: float) -> None:
    assert peer.process.stdout is not None
    try:
        line = await asyncio.wait_for(peer.process.stdout.readline(), timeout_s)
    except TimeoutError:
        raise RuntimeError(
            f"peer {peer.name} did not start within {timeout_s:.0f} s; see {peer.log}"
        ) from None
    match = LISTENING.match(line.decode().strip())
    if match is None:
        code = await peer.process.wait() if not line else None
        tail = peer.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"peer {peer.name} printed {line!r} (exit {code}) instead of listening:\n{tail}")
    peer.peer_id_short, peer.address = match.group(1), match.group(2)
    peer.models = [model.strip() for model in match.group(3).split(",")]
    peer.peer_id = Identity.load(peer.config.parent / "data" / "key.pem").peer_id.hex


async def _stop_processes(peers: Sequence[PeerProcess], grace_s: float) -> None:
    for peer in peers:
        if peer.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                peer.process.send_signal(signal.SIGTERM)

    async def reap(peer: PeerProcess) -> None:
        try:
            await asyncio.wait_for(peer.process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(peer.process.pid, signal.SIGKILL)
            await peer.process.wait()

    await asyncio.gather(*(reap(peer) for peer in peers))
