"""``--log-format json`` and ``--metrics-port`` on real ``atomic-peer`` and ``atomic run`` processes."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from atomic_p2p.identity import Identity
from atomic_p2p.testing import digits_batch, peer_processes
from peers.examples import example_table

pytestmark = [pytest.mark.system, pytest.mark.asyncio]

METRICS_LINE = re.compile(r"^atomic-peer ([0-9a-f]{8}) metrics on (http://\S+/metrics)$")
KEYS = {"ts", "level", "logger", "msg"}


def json_events(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` as a JSON object (a line that is not one fails the test)."""
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(event, dict) and set(event) >= KEYS for event in events), events
    return events


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


async def test_a_peer_logs_json_lines_and_serves_metrics_a_requester_does_too(tmp_path: Path) -> None:
    extra = ("--log-format", "json", "--metrics-port", "0")
    async with peer_processes([example_table("small", name="observed")], tmp_path, extra_args=extra) as (
        peer,
    ):
        assert peer.process.stdout is not None
        line = (await asyncio.wait_for(peer.process.stdout.readline(), 30)).decode().strip()
        match = METRICS_LINE.match(line)
        assert match is not None, line
        assert match.group(1) == peer.peer_id_short
        before = await asyncio.to_thread(fetch, match.group(2))
        assert re.search(r"^atomic_peer_workers 2\.0$", before, re.M), before[:2000]

        x, _ = digits_batch(4)
        torch.save(x, tmp_path / "x.pt")
        key = tmp_path / "key.pem"
        Identity.generate().save(key)
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "atomic_p2p.cli.main", "-vv", "run",
            "--peer", peer.address, "--capability", "classify/digits",
            "--input", str(tmp_path / "x.pt"), "--key", str(key), "--no-store",
            "--log-format", "json", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(run.communicate(), 60)
        assert run.returncode == 0, err.decode()
        assert json.loads(out)["winner"]["model_id"] == "digits-small"  # stdout keeps its format
        assert json_events(err.decode()), "atomic -vv run logged nothing"

        after = await asyncio.to_thread(fetch, match.group(2))
        executed = re.search(
            r'^atomic_peer_execution_seconds_count\{model="digits-small"\} (\S+)$', after, re.M
        )
        assert executed is not None and float(executed.group(1)) == 1.0
    events = json_events(peer.log.read_text())
    assert any(
        event["logger"] == "atomic_p2p.peer.node" and "serving TLS on" in str(event["msg"])
        for event in events
    )
    assert {event["level"] for event in events} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
