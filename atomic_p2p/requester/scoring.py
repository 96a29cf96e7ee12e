"""The simple weighted score: the evaluator with no profile, no exploration, no floor, no penalty.

:func:`score` ranks bids on their claims alone (confidence, expected latency, cost) against the
time left and the budget, exactly as :func:`.evaluator.evaluate` does for peers it knows nothing
about, with :meth:`.evaluator.EvaluatorConfig.greedy`. It stays for callers that want a
deterministic ranking without learning; the weights, profiles and result types live in
:mod:`.weights` and :mod:`.evaluator` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from atomic_p2p.requester.evaluator import (
    Ask,
    EvaluatorConfig,
    Excluded,
    Ranking,
    Scorable,
    Scored,
    evaluate,
)
from atomic_p2p.requester.weights import (
    COMPONENTS,
    DEFAULT_PROFILE,
    PROFILES,
    Weights,
    WeightsSpec,
    resolve_weights,
)

T = TypeVar("T", bound=Scorable)

_GREEDY = EvaluatorConfig.greedy()


def score(
    bids: Sequence[T], weights: WeightsSpec, time_left_ms: float, budget: float | None = None
) -> Ranking[T]:
    """Rank ``bids`` best first; the ones that break a hard constraint are excluded with a reason.

    ``time_left_ms`` is how long remains until the request's deadline; ``budget`` the most the
    caller will pay for this task (None: no cap).
    """
    ask = Ask(task_id="", capability="", time_left_ms=time_left_ms, budget=budget, weights=weights)
    decision = evaluate(bids, ask, config=_GREEDY, explain=False)
    return Ranking(decision.ranked, decision.excluded, decision.weights)


__all__ = [
    "COMPONENTS",
    "DEFAULT_PROFILE",
    "PROFILES",
    "Excluded",
    "Ranking",
    "Scorable",
    "Scored",
    "Weights",
    "WeightsSpec",
    "resolve_weights",
    "score",
]
