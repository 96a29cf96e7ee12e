"""Clearing an auction once bids are scored: the anti-starvation floor, second-score pricing,
and what the bid that delivers is paid. The last step of the evaluator (who wins); see
:mod:`.evaluator` for where it sits among the places a peer is chosen.

How this works
--------------
**Floor.** :class:`WinShares` keeps, per peer, exponentially decayed counts of the auctions it
was eligible in and of those it won, so ``wins / eligible`` is its recent win share. When the
floor is on (``min_share > 0``), an eligible peer with at least ``warmup`` (decayed) eligible
auctions whose share is under ``min_share`` is *starved*; the most starved one (lowest
share / min_share, then best score) is promoted to winner, provided its score is within
``max_gap`` of the top. One promotion per decision, so the floor costs at most about
``min_share`` of the auctions per starved peer.

**Second-score pricing.** Write each bid's score as ``base + w * s_cost(c)``, where ``w`` is
the cost weight, ``c`` the bid's cost and ``base`` everything else (the other weighted
components, the exploration bonus, minus the utilization penalty: none depends on ``c``).
``s_cost(c) = 1 - c / C`` with ``C`` the budget when there is one, otherwise the dearest eligible
cost, the winner's included. The price is the largest ``c`` at which the winner's score is still
at least every rival's (ties are then broken as in the ranking: faster, cheaper, earlier):

- with a budget, ``C`` is fixed and the winner's score falls linearly:
  ``c* = C * (base_W + w - T) / w`` where ``T`` is the best rival score; capped at the budget;
- without one, ``C = max(M, c)`` where ``M`` is the dearest rival cost. Up to ``M`` the same line
  holds with ``C = M``; beyond ``M`` the winner's cost term is 0 and each rival's grows as
  ``w * (1 - c_R / c)``, so rival R overtakes at ``c = w * c_R / (base_R + w - base_W)``; the
  price is the first such crossing.

When nothing bounds the price (the winner wins at any cost: no rival, or a zero cost weight)
it is the budget if there is one, otherwise the winner's own bid. The price is never below the
winner's own bid (float rounding aside, it cannot be: the winner won at that cost).

**Payment.** The price clears the auction for its winner (rank 1). When the winner fails and a
runner-up delivers instead (execution's fallback walk), the runner-up is paid what it charged in
its signed result: the clearing price was set for another bid, not for it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from atomic_p2p.errors import ConfigError


@dataclass(frozen=True, slots=True)
class WinShares:
    """Decayed per-peer counts of auctions eligible in and won. Advance with :meth:`after`."""

    eligible: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    wins: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    decay: float = 0.99

    def __post_init__(self) -> None:
        if not 0 < self.decay <= 1:
            raise ConfigError(f"share decay must lie in (0, 1], got {self.decay!r}")

    def share(self, peer: str, warmup: float = 0.0) -> float | None:
        """The peer's recent win share, or None before ``warmup`` eligible auctions."""
        eligible = self.eligible.get(peer, 0.0)
        if eligible <= 0 or eligible < warmup:
            return None
        return self.wins.get(peer, 0.0) / eligible

    def after(self, eligible_peers: Iterable[str], winner: str | None) -> WinShares:
        """The counts after one auction in which ``eligible_peers`` competed and ``winner`` won."""
        eligible = dict(self.eligible)
        wins = dict(self.wins)
        for peer in set(eligible_peers):
            eligible[peer] = self.decay * eligible.get(peer, 0.0) + 1.0
            wins[peer] = self.decay * wins.get(peer, 0.0) + (1.0 if peer == winner else 0.0)
        return WinShares(MappingProxyType(eligible), MappingProxyType(wins), self.decay)


@dataclass(frozen=True, slots=True)
class FloorRule:
    """The anti-starvation floor; ``min_share = 0`` turns it off."""

    min_share: float = 0.0
    warmup: float = 20.0
    max_gap: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_share < 1 or self.warmup < 0 or self.max_gap < 0:
            raise ConfigError("floor: min_share in [0, 1), warmup >= 0 and max_gap >= 0")


def starved_pick(
    ranked: Sequence[tuple[str, float]], shares: WinShares, rule: FloorRule
) -> tuple[int, str] | None:
    """Which entry of ``ranked`` ((peer, score), best first) the floor promotes, and why.

    None when the floor is off, nobody is starved, or the top entry is the pick anyway.
    """
    if rule.min_share <= 0 or len(ranked) < 2:
        return None
    top = ranked[0][1]
    best: tuple[float, float, int] | None = None
    for index, (peer, score) in enumerate(ranked):
        share = shares.share(peer, rule.warmup)
        if share is None or share >= rule.min_share or top - score > rule.max_gap:
            continue
        candidate = (share / rule.min_share, -score, index)
        if best is None or candidate < best:
            best = candidate
    if best is None or best[2] == 0:
        return None
    index = best[2]
    peer = ranked[index][0]
    share = shares.share(peer, rule.warmup)
    return index, (
        f"floor: peer {peer[:8] or '?'} won {share:.1%} of its recent auctions (< {rule.min_share:.1%}); "
        f"promoted from rank {index + 1} (score {ranked[index][1]:.4f} vs {top:.4f})"
    )


# Below the smallest normal float, costs are subnormal: dividing by them loses every digit, so the
# evaluator scores such costs alike and clearing never divides by one (hypothesis found 5e-324).
MIN_PRICE = sys.float_info.min


@dataclass(frozen=True, slots=True)
class PriceTerms:
    """One bid's score split as ``base + cost_weight * s_cost(cost)`` (see the module docstring)."""

    base: float
    cost: float


def second_score_price(
    winner: PriceTerms, rivals: Sequence[PriceTerms], cost_weight: float, budget: float | None
) -> tuple[float, str]:
    """The highest cost at which ``winner`` still scores at least every rival, and how it was found."""
    if not rivals or cost_weight <= 0:
        why = "no rival" if not rivals else "cost carries no weight"
        if budget is not None:
            return budget, f"second-score: {why}, so the budget (the reserve)"
        return winner.cost, f"second-score: {why} and no budget, so its own bid"
    if budget is not None:
        return _with_budget(winner, rivals, cost_weight, budget)
    return _without_budget(winner, rivals, cost_weight)


def _with_budget(
    winner: PriceTerms, rivals: Sequence[PriceTerms], weight: float, budget: float
) -> tuple[float, str]:
    if budget <= 0:
        return 0.0, "second-score: the budget is 0"
    best_rival = max(rival.base + weight * (1.0 - rival.cost / budget) for rival in rivals)
    price = budget * (winner.base + weight - best_rival) / weight
    price = min(budget, max(winner.cost, price))
    return price, f"second-score: the cost at which its score meets the best rival's ({best_rival:.6f})"


def _without_budget(winner: PriceTerms, rivals: Sequence[PriceTerms], weight: float) -> tuple[float, str]:
    dearest = max(rival.cost for rival in rivals)
    if dearest >= MIN_PRICE:
        best_rival = max(rival.base + weight * (1.0 - rival.cost / dearest) for rival in rivals)
        if winner.base < best_rival:  # the crossing comes before the winner is the dearest bid
            price = dearest * (winner.base + weight - best_rival) / weight
            return max(winner.cost, price), (
                f"second-score: the cost at which its score meets the best rival's ({best_rival:.6f})"
            )
    crossings = [
        weight * rival.cost / gap for rival in rivals if (gap := rival.base + weight - winner.base) > 0
    ]
    if not crossings:
        return winner.cost, "second-score: it wins at any cost and there is no budget, so its own bid"
    return max(winner.cost, min(crossings)), (
        "second-score: the cost, above every rival's, at which a rival's rising cost score overtakes it"
    )


def payment(price: float | None, charged: float, *, fallback: bool) -> float:
    """What the bid that delivered is paid: the clearing ``price`` when it was the auction's
    winner, what it ``charged`` when it delivered as a ``fallback`` (or no price was set)."""
    if fallback or price is None:
        return charged
    return price
