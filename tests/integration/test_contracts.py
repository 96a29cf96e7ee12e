"""Models with declared contracts on a real node: several named inputs and outputs, dynamic
dimensions, and a model that raises on inputs it cannot take, bought through ``Requester.run``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from atomic_p2p.contract import TaskKind
from atomic_p2p.errors import AuctionError, NoBidsError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.peer.config import ModelConfig, PeerConfig
from atomic_p2p.peer.node import PeerNode, load_models
from atomic_p2p.requester import Requester

pytestmark = pytest.mark.integration

MODELS = Path(__file__).with_name("contract_models.py")


def model(model_id: str, capability: str, function: str) -> ModelConfig:
    return ModelConfig(model_id, (capability,), f"{MODELS}:{function}", price_per_example=0.001)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[PeerNode]:
    config = PeerConfig(
        name="contracts",
        models=(model("pair", "math/sum-diff", "pair"), model("tokens", "embed/tokens", "tokens")),
        data_dir=tmp_path / "contracts",
        gossip_interval_s=0.2,
    )
    async with await PeerNode.start(config) as running:
        yield running


async def test_a_two_input_model_returns_both_outputs(node: PeerNode) -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    async with Requester([node.address]) as requester:
        result = await requester.run("math/sum-diff", {"a": a, "b": b})
    assert set(result.outputs) == {"sum", "diff"}
    # A regression model cannot estimate its confidence: its bid says so instead of claiming 0 or 1.
    assert result.winner.confidence_unknown and result.winner.confidence == 0.0
    torch.testing.assert_close(result.outputs["sum"], a + b)
    torch.testing.assert_close(result.outputs["diff"], a - b)


async def test_a_regression_model_bids_confidence_unknown_and_returns_its_values(tmp_path: Path) -> None:
    config = PeerConfig(
        name="regression",
        models=(model("affine", "regress/affine", "affine"),),
        data_dir=tmp_path / "regression",
    )
    x = torch.tensor([[0.0, 1.0, -2.0], [0.5, 3.0, 10.0]])
    async with await PeerNode.start(config) as node, Requester([node.address]) as requester:
        assert node.models["affine"].contract.kind is TaskKind.REGRESSION
        result = await requester.run("regress/affine", {"x": x})
    # Its bid claims no confidence: the flag is set and the number is no claim (0, not 0.5 or 1).
    assert result.winner.model_id == "affine" and result.winner.address == node.address
    assert result.winner.confidence_unknown and result.winner.confidence == 0.0
    assert [bid.item.confidence_unknown for bid in result.bids] == [True]
    assert set(result.outputs) == {"y"}
    torch.testing.assert_close(result.outputs["y"], 2.0 * x + 1.0)


async def test_the_start_log_shows_each_contract_and_no_accuracy_for_models_without_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = PeerConfig(
        name="log", models=(model("pair", "math/sum-diff", "pair"),), data_dir=tmp_path / "log"
    )
    with caplog.at_level(logging.INFO, logger="atomic_p2p.peer.node"):
        load_models(config)
    assert "a: float32[B<=" in caplog.text and "held-out accuracy n/a" in caplog.text


async def test_a_variable_length_token_model_starts_and_sells(node: PeerNode) -> None:
    hosted = node.models["tokens"]
    assert hosted.contract.describe(hosted.max_batch).startswith("ids: int64[B<=")
    async with Requester([node.address]) as requester:
        for length in (1, 20, 32):
            result = await requester.run("embed/tokens", {"ids": torch.randint(0, 100, (2, length))})
            assert result.outputs["embedding"].shape == (2, 8)
        with pytest.raises(NoBidsError, match="got 33 in dimension 1"):
            await requester.run("embed/tokens", {"ids": torch.zeros(2, 33, dtype=torch.int64)})
        with pytest.raises(NoBidsError, match="missing"):
            await requester.run("math/sum-diff", {"a": torch.zeros(2, 4)})


async def test_ids_outside_the_vocabulary_are_the_models_error_and_the_node_serves_on(node: PeerNode) -> None:
    async with Requester([node.address]) as requester:
        # An embedding model does not look at a preview to bid, so the ids reach Execute: INTERNAL,
        # naming the model and its cause.
        with pytest.raises(AuctionError, match=r"INTERNAL.*model tokens failed: IndexError"):
            await requester.run("embed/tokens", {"ids": torch.full((2, 5), 1000)})
        result = await requester.run("embed/tokens", {"ids": torch.ones(2, 5, dtype=torch.int64)})
    assert result.outputs["embedding"].shape == (2, 8)


async def test_a_requester_with_gossip_skips_a_peer_whose_contract_does_not_fit(
    node: PeerNode, tmp_path: Path
) -> None:
    short = dataclasses.replace(model("short", "embed/tokens", "tokens"), options={"longest": 8})
    config = PeerConfig(
        name="short",
        models=(short,),
        data_dir=tmp_path / "short",
        bootstrap=(node.address,),
        gossip_interval_s=0.2,
    )
    async with await PeerNode.start(config) as other:
        async with Requester(bootstrap=[node.address], gossip=GossipConfig(interval=0.2)) as requester:
            assert await requester.wait_for_peers("embed/tokens", 2, timeout=20)
            both = await requester.run("embed/tokens", {"ids": torch.ones(2, 8, dtype=torch.int64)})
            assert {bid.item.model_id for bid in both.bids} == {"tokens", "short"}
            longer = await requester.run("embed/tokens", {"ids": torch.ones(2, 20, dtype=torch.int64)})
        # The short model was never asked: no bid and no NoBid from it.
        assert {bid.item.model_id for bid in longer.bids} == {"tokens"} and not longer.no_bids
        assert other.address not in {bid.item.address for bid in longer.bids}
