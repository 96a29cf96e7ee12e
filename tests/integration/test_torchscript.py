"""A TorchScript file named in a peer TOML, with its contract there too, sold by a real node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomic_p2p.contract import TaskKind
from atomic_p2p.peer.config import load_config
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester

pytestmark = [pytest.mark.integration]

CONFIG = """
[peer]
name = "scripted"
data_dir = "data"

[[models]]
model_id = "doubler"
capabilities = ["classify/scripted"]
torchscript = "doubler.pt"
price_per_example = 0.01
strategy = "fixed"
strategy_options = { confidence = 0.9 }
[models.contract]
kind = "classification"
[[models.contract.inputs]]
name = "x"
dtype = "float32"
dims = [4]
[[models.contract.outputs]]
name = "logits"
dims = [4]
"""


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


# torch 2.13 deprecates TorchScript (in favour of torch.export); existing files still script and load.
@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
async def test_a_torchscript_file_is_served_with_the_contract_from_its_config(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(Doubler()), str(tmp_path / "doubler.pt"))
    (tmp_path / "peer.toml").write_text(CONFIG)
    config = load_config(tmp_path / "peer.toml")
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    async with await PeerNode.start(config) as node, Requester([node.address]) as requester:
        (model,) = node.models.values()
        assert model.kind is TaskKind.CLASSIFICATION and model.contract.describe() == (
            "x: float32[B, 4] -> logits: float32[B, 4]"
        )
        result = await requester.run("classify/scripted", {"x": x}, deadline_s=10.0, preview=False)
    assert torch.equal(result.outputs["logits"], x * 2)
