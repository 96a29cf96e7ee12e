"""Peers report their strategy parameters in Feedback answers; the requester keeps them over time."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_p2p.requester import Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.store import Store
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers

pytestmark = pytest.mark.integration


async def test_feedback_answers_land_in_the_store_as_strategy_series(tmp_path: Path) -> None:
    db = tmp_path / "requester.db"
    x, _ = digits_batch(8)
    async with (
        running_peers(["small", "large"], tmp_path) as nodes,
        Requester(
            [node.address for node in nodes], store=db, evaluator=EvaluatorConfig.greedy()
        ) as requester,
    ):
        results = [await requester.run("classify/digits", {"x": x}, deadline_s=5.0) for _ in range(3)]
        # closing the requester drained the notices and committed the store
    winner = results[-1].winner
    loser = next(node.peer_id for node in nodes if node.peer_id != winner.peer_id)
    with Store.open(db, read_only=True) as store:
        wins = store.observations(peer=winner.peer_id.hex, name="strategy.wins")
        losses = store.observations(peer=loser.hex, name="strategy.losses")
        multipliers = store.observations(peer=winner.peer_id.hex, name="strategy.price_multiplier")
    assert [round(o.value) for o in wins][-1] >= 1
    assert wins == sorted(wins, key=lambda o: o.at_ms)
    assert [o.value for o in losses][-1] >= 1
    assert multipliers and all(o.value > 0 for o in multipliers)


def test_only_finite_top_level_numbers_travel() -> None:
    from atomic_p2p.peer.seller import numeric_parameters

    snapshot = {
        "wins": 3,
        "price_multiplier": 1.25,
        "strategy": "learning",
        "ok": True,
        "nan": float("nan"),
        "settings": {"a": 1},
    }
    assert numeric_parameters(snapshot) == {"wins": 3.0, "price_multiplier": 1.25}
