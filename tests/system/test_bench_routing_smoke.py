"""scripts/bench_routing.py --quick: the routing benchmark end to end on real peers, small.

The script is loaded from its file (scripts/ is not a package) and its core ``run`` is called with
the ``--quick`` settings: real peers on loopback, a 32-task stream, every policy replayed on two
seeds. The numbers are not judged here (a benchmark, never a timed test); the report's shape and
its invariants are.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from atomic_p2p.peer.strategies import STRATEGIES

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_routing.py"
POLICIES = {
    "random",
    "cheapest",
    "best-single",
    "epsilon-greedy",
    "ucb1",
    "thompson",
    "ours",
    "ours-default",
    "ours-greedy",
    "oracle",
}
METRICS = {
    "utility",
    "pct_oracle",
    "pct_oracle_after_warmup",
    "pct_gain",
    "regret_final",
    "accuracy",
    "cost",
    "latency_ms",
    "jain",
    "liar_share_after",
    "win_share",
    "liar_windows",
    "regret_curve",
    "regret_curve_min",
    "regret_curve_max",
    "rolling_utility",
    "per_seed",
}

pytestmark = pytest.mark.system


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_routing", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_routing"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_policy_and_the_oracle_bounds_them(tmp_path: Path) -> None:
    bench = load()
    args = bench.parse(["--quick", "--out", str(tmp_path), "--no-progress"])
    result = bench.run(args)

    assert set(result["policies"]) == POLICIES
    assert set(result["goals"]) == {
        "pct_oracle_after_warmup_ge_95",
        "regret_below_every_baseline",
        "liar_share_after_lt_5pct",
    }
    assert all(isinstance(goal["met"], bool) for goal in result["goals"].values())
    assert result["config"]["events"] == {"latecomer joins": 8, "degrader degrades": 16}
    oracle = result["policies"]["oracle"]
    for name, metrics in result["policies"].items():
        assert set(metrics) >= METRICS, name
        assert len(metrics["regret_curve"]) == args.tasks
        assert len(metrics["per_seed"]["utility"]) == args.seeds
        # Same stream per seed: the oracle's realized utility bounds every policy's, task by task,
        # so even the lowest seed's regret never falls.
        for mine, best in zip(metrics["per_seed"]["utility"], oracle["per_seed"]["utility"], strict=True):
            assert mine <= best + 1e-12, name
        lowest = metrics["regret_curve_min"]
        assert lowest[0] >= -1e-12 and all(b >= a - 1e-12 for a, b in itertools.pairwise(lowest))
        assert sum(metrics["win_share"].values()) == pytest.approx(1.0)
    assert oracle["pct_oracle"]["mean"] == pytest.approx(100.0)
    assert result["policies"]["cheapest"]["liar_share_after"]["mean"] == 1.0  # the liar undercuts all

    calibration = result["calibration"]
    assert {"small", "large", "generalist", "spec-0-4", "spec-5-9", "liar", "latecomer"} <= set(calibration)
    assert {"degrader (before)", "degrader (after)"} <= set(calibration)
    assert calibration["liar"]["bias"] > 0.2  # it claims 0.99 and delivers a weak model's accuracy
    assert calibration["latecomer"]["tasks"] == args.tasks - 8

    assert set(result["failed_executions"]) <= set(calibration) | {"degrader"}
    json.dumps(result)  # the report is plain JSON
    paths = bench.report.plot(result, tmp_path, bench.OURS)
    assert all(path.stat().st_size > 0 for path in paths)
    assert "bench-liar" not in STRATEGIES  # the adversary's strategy was registered only for the run
