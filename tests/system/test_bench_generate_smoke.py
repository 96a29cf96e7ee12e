"""scripts/bench_generate.py end to end on a real peer process, tiny: the report's shape, not its
numbers (a benchmark, never a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_generate.py"

pytestmark = pytest.mark.system


def test_the_benchmark_reports_generation_and_streaming_beside_their_baselines(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--rounds", "2", "--tokens", "4", "--mb", "2", "--repeats", "1"]
    done = subprocess.run(
        [*command, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "raw gRPC" in done.stdout and " met" in done.stdout
    report = json.loads(out.read_text())
    for side in ("market", "in_process"):
        row = report["generation"][side]
        assert set(row) == {"ttft_ms_p50", "ttft_ms_p90", "tokens_per_s_p50", "tokens_per_s_p90"}
        assert 0 < row["ttft_ms_p50"] <= row["ttft_ms_p90"]
    assert report["stream"]["mb_per_s"] > 0 and report["stream"]["raw_mb_per_s"] > 0
    assert set(report["ratios"]) >= {"ttft_extra_ms_p50", "tokens_per_s", "stream_vs_raw"}
    assert set(report["machine"]) == {"cpus", "python", "platform"}
    assert (report["rounds"], report["tokens"], report["mb"]) == (2, 4, 2)
