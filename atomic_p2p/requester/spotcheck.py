"""Spot checks: a share of tasks also runs on a second peer, and the two answers are compared.

A signature proves who answered, not that the answer is right. When a task's result is in, the
:class:`~.broker.Broker` draws (``MarketMemory.rng``) whether to check it: with probability
:meth:`SpotCheckConfig.share_for` the same payload is executed on the best-ranked bid of
*another* peer, and :func:`agreement` scores the two outputs in [0, 1]. That score is an outcome
for both peers (``MarketMemory.spot_check``): their profiles learn it against the confidence
each claimed, the store books the checker's payment as ``PaymentKind.PROBE`` and writes a
``spot_check`` observation for each. A peer that answers plausibly but wrongly disagrees with
whoever checks it, while two honest peers agree; so the liar's measured bias grows until its
claim is worth nothing (the evaluator's ``trust``), and it stops winning.

The share adapts to trust: a winner the requester has no record of is checked at ``share``, one
with a long record of calibrated claims at ``min_share``; in between, ``share - (share -
min_share) * known * trust`` with ``known = evidence / (evidence + trust_half)`` and ``trust``
the evaluator's (``1 - |bias| / bias_tolerance``). A check costs one more execution (its
price) and runs before the result returns (the caller waits for it: checks are for tasks whose
answers matter more than their latency). A check that fails or finds no second peer is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester.profiler import Estimate


@dataclass(frozen=True, slots=True)
class SpotCheckConfig:
    """``share``: the chance a task is checked when its winner is unknown; ``min_share``: when it
    is well known and calibrated; ``trust_half``: the outcomes of evidence at which the share is
    halfway between. ``SpotCheckConfig()`` checks nothing."""

    share: float = 0.0
    min_share: float = 0.0
    trust_half: float = 10.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_share <= self.share <= 1.0):
            raise ConfigError("spot checks: 0 <= min_share <= share <= 1")
        if not (math.isfinite(self.trust_half) and self.trust_half > 0):
            raise ConfigError("spot checks: trust_half must be a positive number")

    @property
    def enabled(self) -> bool:
        return self.share > 0.0

    def share_for(self, estimate: Estimate | None, bias_tolerance: float) -> float:
        """The chance that a task this peer won is checked (see the module docstring)."""
        if estimate is None:
            return self.share
        known = estimate.evidence / (estimate.evidence + self.trust_half)
        trust = min(1.0, max(0.0, 1.0 - abs(estimate.confidence_bias) / bias_tolerance))
        return self.share - (self.share - self.min_share) * known * trust


def agreement(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> float:
    """How far two answers to the same task agree, in [0, 1], averaged over their shared outputs:
    floating outputs with a last dimension above 1 (logits, scores) by the share of rows whose
    argmax agrees; any other by the share of equal elements (floats: within 1e-3). Outputs of
    different shapes, or no shared output, agree 0."""
    names = sorted(set(first) & set(second))
    if not names:
        return 0.0
    scores = []
    for name in names:
        a, b = first[name], second[name]
        if a.shape != b.shape or a.numel() == 0:
            scores.append(0.0)
        elif a.is_floating_point() and a.dim() >= 1 and a.shape[-1] > 1:
            scores.append(float((a.argmax(dim=-1) == b.argmax(dim=-1)).float().mean()))
        elif a.is_floating_point() or b.is_floating_point():
            close = torch.isclose(a.float(), b.float(), rtol=1e-3, atol=1e-3)
            scores.append(float(close.float().mean()))
        else:
            scores.append(float((a == b).float().mean()))
    return sum(scores) / len(scores)


__all__ = ["SpotCheckConfig", "agreement"]
