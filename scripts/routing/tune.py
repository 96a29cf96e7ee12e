"""A small grid over EvaluatorConfig knobs, replayed on a log, to choose the benchmark's "ours".

``bench_routing.py --tune`` replays it on the ``tuning`` scenario only (a market of its own,
never reported; pass another ``--stream-seed`` than the reported one), so the reported numbers are
not fitted to their own markets.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

from atomic_p2p.progress import progress as progress_bar
from atomic_p2p.requester.evaluator import EvaluatorConfig, Exploration
from atomic_p2p.requester.profiler import ProfilerConfig

from .policies import Evaluator, LoggedTask, Oracle, replay

EXPLORATIONS = (Exploration.THOMPSON, Exploration.UCB, Exploration.NONE)
CLAIM_FOLLOWS = (0.0, 3.0, 10.0, 30.0)
DECAYS = (0.98, 0.9)
UCB_CS = (0.05, 0.1, 0.2)
SHRINKS = (0.5, 2.0)
CALIBRATION_DECAYS = (None, 0.99)  # None: the claim bias forgets as fast as the posterior (no long memory)


def grid() -> Iterator[tuple[dict[str, Any], EvaluatorConfig]]:
    for exploration, follow, decay, ucb_c, shrink, calibration_decay in itertools.product(
        EXPLORATIONS, CLAIM_FOLLOWS, DECAYS, UCB_CS, SHRINKS, CALIBRATION_DECAYS
    ):
        if exploration is not Exploration.UCB and ucb_c != UCB_CS[-1]:
            continue  # ucb_c only matters to UCB
        knobs = {
            "exploration": exploration.value,
            "claim_follow": follow,
            "decay": decay,
            "ucb_c": ucb_c,
            "shrink": shrink,
            "calibration_decay": decay if calibration_decay is None else calibration_decay,
        }
        config = EvaluatorConfig(
            exploration=exploration,
            claim_follow=follow,
            ucb_c=ucb_c,
            shrink=shrink,
            profiler=ProfilerConfig(
                decay=decay, calibration_decay=decay if calibration_decay is None else calibration_decay
            ),
        )
        yield knobs, config


def tune(streams: Sequence[Sequence[LoggedTask]], warmup: int, progress: bool = True) -> list[dict[str, Any]]:
    """Every grid point's mean final regret and % of oracle after warm-up over the streams, best first."""
    oracles = [[step.utility for step in replay(Oracle(), stream)] for stream in streams]
    rows = []
    points = list(grid())
    for knobs, config in progress_bar(points, desc="tune", enabled=progress):
        regrets, shares = [], []
        for seed, (stream, best) in enumerate(zip(streams, oracles, strict=True)):
            gains = [step.utility for step in replay(Evaluator("tune", config, seed), stream)]
            regrets.append(sum(best) - sum(gains))
            shares.append(100.0 * sum(gains[warmup:]) / sum(best[warmup:]))
        rows.append(
            {
                **knobs,
                "regret": statistics.fmean(regrets),
                "regret_std": statistics.stdev(regrets) if len(regrets) > 1 else 0.0,
                "pct_oracle_after_warmup": statistics.fmean(shares),
            }
        )
    rows.sort(key=lambda row: row["regret"])
    return rows
