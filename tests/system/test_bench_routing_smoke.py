"""scripts/bench_routing.py --quick: the routing benchmark end to end on real peers, small.

The script is loaded from its file (scripts/ is not a package) and its core ``run`` is called with
the ``--quick`` settings: real peers on loopback, a 32-task stream, every policy replayed on two
seeds. The numbers are not judged here (a benchmark, never a timed test); the report's shape and
its invariants are.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from atomic_p2p.peer.strategies import STRATEGIES
from tests.support.scripts import load_script

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
    return load_script("bench_routing.py")


def test_quick_run_reports_every_policy_and_the_oracle_bounds_them(tmp_path: Path) -> None:
    bench = load()
    args = bench.parse(["--quick", "--out", str(tmp_path), "--no-progress"])
    result = bench.run(args)

    assert list(result["scenarios"]) == list(bench.scenarios.REPORTED)
    assert "tuning" not in result["scenarios"]  # tuned on, never reported
    assert isinstance(result["goals_met_everywhere"], bool)
    for scenario_name, scenario in result["scenarios"].items():
        assert set(scenario["policies"]) == POLICIES, scenario_name
        judged = {"pct_oracle_after_warmup_ge_95", "regret_below_every_baseline"}
        if scenario["config"]["liar"] is not None:
            judged.add("liar_share_after_lt_5pct")
        assert set(scenario["goals"]) == judged, scenario_name
        assert all(isinstance(goal["met"], bool) for goal in scenario["goals"].values())
        check_bounds(scenario["policies"], args)
        # A simulated market's roster is known: the learn-once reference is replayed beside the
        # policies (never judged, never among them); the live one has none.
        assert set(scenario["references"]) == (set() if scenario_name == "current" else {"learn-once"})
        check_bounds({**scenario["references"], "oracle": scenario["policies"]["oracle"]}, args)
        # The judged policy against the best baseline, paired by seed, with a verdict.
        versus = scenario["versus_best"]
        best = versus["baseline"]
        assert best in bench.baselines()
        mine, theirs = (scenario["policies"][name]["per_seed"]["regret"] for name in (bench.JUDGED, best))
        assert versus["per_seed"] == pytest.approx([a - b for a, b in zip(mine, theirs, strict=True)])
        assert versus["diff"] == pytest.approx(sum(versus["per_seed"]) / args.seeds)
        assert scenario["verdict"] == versus["verdict"] == result["verdicts"][scenario_name]
        assert versus["verdict"] in {"ahead", "behind", "tie"}
    current = result["scenarios"]["current"]
    assert current["config"]["events"] == {"latecomer joins": 8, "degrader degrades": 16}
    assert current["policies"]["cheapest"]["liar_share_after"]["mean"] == 1.0  # the liar undercuts all
    # The simulated markets carry their own events, in task time.
    assert result["scenarios"]["leave-return"]["config"]["events"] == {"best leaves": 10, "best returns": 21}

    calibration = current["calibration"]
    assert {"small", "large", "generalist", "spec-0-4", "spec-5-9", "liar", "latecomer"} <= set(calibration)
    assert {"degrader (before)", "degrader (after)"} <= set(calibration)
    assert calibration["liar"]["bias"] > 0.2  # it claims 0.99 and delivers a weak model's accuracy
    assert calibration["latecomer"]["tasks"] == args.tasks - 8

    assert set(current["failed_executions"]) <= set(calibration) | {"degrader"}
    json.dumps(result)  # the report is plain JSON
    paths = bench.report.plot(current, tmp_path, bench.JUDGED)
    assert all(path.stat().st_size > 0 for path in paths)
    assert "bench-liar" not in STRATEGIES  # the adversary's strategy was registered only for the run
    table = bench.report.scenario_table(result["scenarios"], bench.JUDGED, list(bench.baselines()))
    assert all(name in table for name in result["scenarios"])


def test_the_paired_verdict_needs_the_difference_beyond_two_standard_errors() -> None:
    paired = load().report.paired
    # Always 1 lower, whatever the seed's level: no spread in the differences, clearly ahead.
    ahead = paired([4.0, 9.0, 6.0], [5.0, 10.0, 7.0])
    assert ahead["diff"] == pytest.approx(-1.0) and ahead["se"] == pytest.approx(0.0)
    assert ahead["verdict"] == "ahead"
    assert paired([5.0, 10.0, 7.0], [4.0, 9.0, 6.0])["verdict"] == "behind"
    # Differences -1, +1, -1, +1 around 0 (unpaired means 0.0 apart): a tie. se = stdev/sqrt(n).
    tie = paired([1.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0])
    assert tie["verdict"] == "tie"
    assert tie["se"] == pytest.approx((4 / 3) ** 0.5 / 2)
    # Ahead only below -2 se.
    near = paired([0.0, 1.0], [1.0, 1.0])  # diffs -1, 0: mean -0.5, se 0.5
    assert near["se"] == pytest.approx(0.5) and near["verdict"] == "tie"
    # One seed has no standard error: never a verdict but a tie.
    assert paired([1.0], [5.0]) | {"per_seed": None} == {
        "diff": -4.0,
        "se": None,
        "sigmas": 2.0,
        "per_seed": None,
        "verdict": "tie",
    }


def check_bounds(policies: dict[str, Any], args: Any) -> None:
    oracle = policies["oracle"]
    for name, metrics in policies.items():
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


def test_simulated_scenarios_are_seeded_and_keep_their_events() -> None:
    bench = load()
    scenarios = bench.scenarios
    drift = scenarios.SCENARIOS["slow-drift"]
    first = scenarios.simulate(drift, 80, 16, seed=3)
    again = scenarios.simulate(drift, 80, 16, seed=3)
    other = scenarios.simulate(drift, 80, 16, seed=4)
    assert [task.outcomes for task in first] == [task.outcomes for task in again]
    assert [task.outcomes for task in first] != [task.outcomes for task in other]
    # The drifter delivers less late than early while claiming the same.
    early = [task.outcomes["drifter"].accuracy for task in first[:20]]
    late = [task.outcomes["drifter"].accuracy for task in first[-20:]]
    assert sum(late) / 20 < sum(early) / 20 - 0.2
    assert {task.bid_of("drifter").confidence for task in first} == {0.97}
    # The best peer of leave-return does not bid while away.
    away = scenarios.simulate(scenarios.SCENARIOS["leave-return"], 30, 8, seed=0)
    assert ["best" in task.bidders for task in away] == [not 10 <= i < 20 for i in range(30)]
    with pytest.raises(ValueError, match="live"):
        scenarios.simulate(scenarios.SCENARIOS["current"], 4, 4, seed=0)


def test_the_learn_once_reference_values_unknown_peers_at_their_claims_then_at_the_truth() -> None:
    bench = load()
    scenarios = bench.scenarios
    scenario = scenarios.SCENARIOS["leave-return"]
    stream = scenarios.simulate(scenario, 60, 16, seed=0)
    reference = bench.LearnOnce(scenarios.expectation(scenario, 60))
    steps = bench.replay(reference, stream)
    # Nothing known: the liar's bid (0.99, 5 ms, the lowest price) is the best claim, so it is
    # bought first, as any policy that reads bids buys it; once bought, it is known for the
    # weak, slow peer it is and never bought again.
    assert steps[0].peer == "liar"
    assert [step.peer for step in steps[1:]].count("liar") == 0
    assert reference.known >= {"liar", "best"}
    # While the best peer is away its stand-in is bought; it is back as soon as it bids again.
    assert all(step.peer != "best" for step in steps[20:40])
    assert all(step.peer == "best" for step in steps[40:])
    # The oracle bounds it task by task; an honest claim moves its expectation of that peer.
    oracle = bench.replay(bench.Oracle(), stream)
    assert all(mine.utility <= best.utility + 1e-12 for mine, best in zip(steps, oracle, strict=True))
    expect = scenarios.expectation(scenario, 60)
    task = stream[1]
    sure = bench.LoggedTask(
        task.index,
        task.source,
        task.ask,
        task.request_id,
        tuple(
            dataclasses.replace(bid, confidence=1.0) if task.names[bid.peer_id.hex] == "second" else bid
            for bid in task.bids
        ),
        task.names,
        task.outcomes,
    )
    assert expect(sure, "second")[0] > expect(task, "second")[0]
    assert expect(sure, "liar") == expect(task, "liar")  # a fixed claim tells nothing
