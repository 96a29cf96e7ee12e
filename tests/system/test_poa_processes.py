"""The price-of-anarchy game with every node an ``atomic-peer`` process: the config tables go out
as TOML (float64 rows exactly), rows are bought with Execute and gradients sent as signed
BidGradients across process boundaries, and the same seed gives the in-process numbers exactly."""

from __future__ import annotations

import pytest

from tests.support.experiments import load_experiment

pytestmark = pytest.mark.system


async def test_peer_processes_replay_the_in_process_game_exactly() -> None:
    script = load_experiment("price_of_anarchy_networked")
    experiment = await script.compare_seeds([3, 4], steps=12, n=4, lr=0.05, gamma=0.5)
    for result in experiment.comparisons:
        assert result.max_row_difference == 0.0  # float64 end to end: not merely within 1e-9
        assert result.poa_networked == result.poa_in_process
        assert result.rpcs > 12 * 3  # every step really crossed the network
