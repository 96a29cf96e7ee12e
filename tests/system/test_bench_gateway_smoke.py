"""scripts/bench_gateway.py end to end on a real peer process and a real gateway process, tiny:
the report's shape, not its numbers (a benchmark, never a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_gateway.py"

pytestmark = pytest.mark.system


def test_the_benchmark_reports_the_gateway_beside_the_sdk(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--rounds",
        "2",
        "--warmup",
        "0",
        "--tokens",
        "5",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr
    assert "gateway (httpx)" in done.stdout and "target gateway (httpx) total_p50" in done.stdout
    report = json.loads(out.read_text())
    assert set(report["rows"]) == {"sdk", "gateway (httpx)", "gateway (openai)"}
    for row in report["rows"].values():
        assert row["ttft_ms"]["n"] == 2 and 0 < row["ttft_ms"]["p50"] <= row["total_ms"]["p50"]
    assert set(report["ratios"]["gateway (httpx)"]) == {
        "ttft_ms_p50",
        "ttft_ms_p99",
        "total_ms_p50",
        "total_ms_p99",
    }
