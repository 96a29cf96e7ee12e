"""The single- and multiple-bidder markets with the experts as real atomic-peer processes: outputs
bought with Execute, dL/dy sent as signed BidGradients, and the same seed gives the in-process run
within the script's stated tolerance. A corrupted gradient is refused and moves nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import torch

from atomic_p2p.errors import ProtocolError
from atomic_p2p.testing import peer_processes
from tests.support.experiments import load_experiment

STEPS, EVAL_EVERY = 20, 10

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_experiment("bidders_networked")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """As the script runs by default (--threads 1): the peers use one thread each, too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(script: ModuleType) -> Any:
    return script.common.load_digits_split()


def rpcs_expected(setting: Any) -> int:
    """3 RPCs per expert per step, 2 per expert per evaluation (every EVAL_EVERY steps and the end)."""
    experts = setting.expert.n_experts
    return STEPS * 3 * experts + (STEPS // EVAL_EVERY + 1) * 2 * experts


async def test_both_markets_over_grpc_match_in_process_and_refuse_bad_gradients(
    script: ModuleType, digits: Any, tmp_path: Path, one_thread: None
) -> None:
    """Six expert processes, started together to save start-up time: three (seed 1, shift 0.2)
    for the single bidder, three (seed 2, mean shift) for the three bidders."""
    single = script.setting_for("single", STEPS, EVAL_EVERY)
    multiple = script.setting_for("multiple", STEPS, EVAL_EVERY)
    runs = [(1, single), (2, multiple)]
    tables = [
        script.expert_table(i, seed, setting.expert, setting.shift, f"{setting.experiment}-{i}")
        for seed, setting in runs
        for i in range(3)
    ]
    networked = []
    async with peer_processes(tables, tmp_path) as peers:
        for k, (seed, setting) in enumerate(runs):
            broker = script.Broker([peer.address for peer in peers[3 * k : 3 * k + 3]])
            try:
                networked.append(await script.run_networked(seed, setting, digits, broker))
                assert networked[-1].rpcs == rpcs_expected(setting)  # every step crossed the network
                if setting is single:
                    await refuses_corrupted_gradients(script, broker, digits.x_test[:8])
            finally:
                await broker.close()
    for (seed, setting), run in zip(runs, networked, strict=True):
        result = script.differences(seed, run, script.run_in_process(seed, setting, digits), 0.0)
        assert len(result.networked.test_accuracy) == setting.n_bidders
        assert result.within(script.TOLERANCE), result  # NaN differences fail too


async def refuses_corrupted_gradients(script: ModuleType, broker: Any, x: torch.Tensor) -> None:
    """NaN or a wrongly shaped dL/dy is refused with INVALID_ARGUMENT, and the expert stays put."""
    rows = script.order_rows(x, torch.tensor([0.9]))
    before = await broker.buy(0, rows, learn=True)
    assert bool((before.output != 0).any())  # 0.9 is above the shift: a real answer
    for corrupt in (torch.full_like(before.output, float("nan")), torch.ones(len(x), 3)):
        with pytest.raises(ProtocolError) as refused:  # the SDK's class for INVALID_ARGUMENT
            await broker.teach(0, before, corrupt)
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    after = await broker.buy(0, rows, learn=False)
    assert torch.equal(after.output, before.output)
