"""The README's SDK example runs as printed, against real peers (only the addresses change)."""

from __future__ import annotations

import asyncio
import re
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from peers.examples import running_peers

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
