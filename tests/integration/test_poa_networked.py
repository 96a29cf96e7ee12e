"""The price-of-anarchy game with every node a real peer on 127.0.0.1 (PeerNodes in this process;
tests/system/test_poa_processes.py runs them as processes): rows bought with Execute, gradients sent
as signed BidGradients, and the same seed gives the in-process numbers (tolerance 1e-9 on the raw
bids; float64 end to end, so in practice exactly)."""

from __future__ import annotations

import tomllib

import pytest
import tomli_w

from tests.support.experiments import load_experiment

pytestmark = pytest.mark.integration


async def test_networked_nodes_replay_the_in_process_game() -> None:
    script = load_experiment("price_of_anarchy_networked")
    result = await script.compare(seed=3, steps=12, n=4, lr=0.05, gamma=0.5, in_process=True)
    assert result.max_row_difference <= script.TOLERANCE
    assert result.poa_networked == pytest.approx(result.poa_in_process, abs=1e-9)
    assert result.rpcs > 12 * 3  # every step really crossed the network


def test_node_tables_keep_every_float64_row_exactly_through_toml() -> None:
    """The process mode writes the rows as TOML text: the peer must read back the very same bits."""
    script = load_experiment("price_of_anarchy_networked")
    games = {seed: script.poa.make_game(seed, 10, 1) for seed in range(20)}
    for index in range(10):
        table = script.node_table(index, games, 0.05)
        assert tomllib.loads(tomli_w.dumps(table)) == table
        rows = [model["options"]["row"] for model in table["models"]]
        assert len(rows) == 20 * 2 and all(len(row) == 10 for row in rows)
