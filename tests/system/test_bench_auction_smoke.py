"""scripts/bench_auction.py end to end, small (2 peers, 5 rounds): every row it promises is
measured, the floors among them, and the JSON carries the ratios the targets are read from.
The report's shape, not its numbers (a benchmark, never a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_measures_every_row_and_its_floors(tmp_path: Path) -> None:
    out = tmp_path / "bench_auction.json"
    command = [
        sys.executable,
        "scripts/bench_auction.py",
        "--peers",
        "2",
        "--rounds",
        "5",
        "--repeats",
        "2",
        "--json",
        str(out),
    ]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["latency"]
    for label in (
        "bare gRPC fan-out",
        "auction round",
        "RequestBids fan-out",
        "minimal: fan-out",
        "stored replies: fan-out",
    ):
        assert 0 < rows[label]["p50_ms"] <= rows[label]["p99_ms"], label
        assert "peers_cpu_us_per_bid" in rows[label], label  # its value: clock ticks, 5 rounds may read 0
        assert len(rows[label]["p50_ms_runs"]) == 2, label  # each repeat's own p50
    ratios = report["ratios"]
    for key in (
        "auction_vs_bare_p50",
        "minimal_vs_bare_p50",
        "auction_vs_minimal_p50",
        "stored_vs_bare_p50",
        "minimal_vs_stored_p50",
        "minimal_full_vs_direct_5ms",
        "full_vs_direct_5ms_p50",
        "cached_vs_direct_5ms_p50",
    ):
        assert ratios[key] > 0, key
    # A repeated ratio is the median of the repeats' own, each taken from rows run back to back.
    for key, runs in report["ratio_runs"].items():
        assert len(runs) == 2, key
        assert min(runs) <= ratios[key] <= max(runs), key
    assert report["peer_idle_rss_mb"] > report["peer_rss_floor_mb"]["import torch"] > 0
    assert report["peer_rss_floor_mb"]["idle minimal peer"] > report["peer_rss_floor_mb"]["import torch"]
    assert "minimal peers / bare fan-out" in finished.stdout
