"""A small grid over EvaluatorConfig knobs, replayed on a log, to choose the benchmark's "ours".

Tune on a log collected with another stream seed than the one reported (``bench_routing.py
--tune --stream-seed 1``), so the reported numbers are not fitted to their own stream.
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
CLAIM_STRENGTHS = (4.0, 10.0, 25.0)
DECAYS = (0.98, 0.95, 0.9)
UCB_CS = (0.1, 0.2)


def grid() -> Iterator[tuple[dict[str, Any], EvaluatorConfig]]:
    for exploration, strength, decay, ucb_c in itertools.product(
        EXPLORATIONS, CLAIM_STRENGTHS, DECAYS, UCB_CS
    ):
        if exploration is not Exploration.UCB and ucb_c != UCB_CS[-1]:
            continue  # ucb_c only matters to UCB
        knobs = {"exploration": exploration.value, "claim_strength": strength, "decay": decay, "ucb_c": ucb_c}
        config = EvaluatorConfig(
            exploration=exploration,
            claim_strength=strength,
            ucb_c=ucb_c,
            profiler=ProfilerConfig(decay=decay),
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
