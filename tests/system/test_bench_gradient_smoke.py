"""scripts/bench_gradient.py end to end on real peers, small: the report's shape, not its numbers
(a benchmark, never a timed test)."""

from __future__ import annotations

import pytest

from tests.support.scripts import load_script

pytestmark = pytest.mark.system


async def test_the_benchmark_times_both_kinds_of_round_on_the_same_peers() -> None:
    report = await load_script("bench_gradient.py").bench(
        ["small", "specialist"], rounds=3, batch=8, warmup=1
    )
    timings = report["timings"]
    assert set(timings) == {"forward", "gradient", "bids", "execute", "market", "send"}
    assert all(row["n"] == 3 and 0 < row["p50_ms"] <= row["p99_ms"] for row in timings.values())
    assert report["peers"] == ["small", "specialist"] and report["batch"] == 8
