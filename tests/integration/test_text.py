"""Text on the wire over real gRPC: a node with a text classifier over its own tokenizer, bought
through ``Requester.run(text=...)`` and ``atomic run --text``; bad text is refused and the node
serves on."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from atomic_p2p.channels import ChannelPool
from atomic_p2p.cli.main import main
from atomic_p2p.errors import NoBidsError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.peer.config import ModelConfig, PeerConfig
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import ExecuteResult
from atomic_p2p.requester import Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.requester.transport import BytesTransport, GrpcTransport
from atomic_p2p.testing import text_seller_config

CAPABILITY = "classify/sentiment"


class CountingTransport(BytesTransport):
    """gRPC, counting every RequestBids RPC by address (as in test_bidding)."""

    def __init__(self) -> None:
        self.pool = ChannelPool()
        self.calls: Counter[str] = Counter()
        self._grpc = GrpcTransport(self.pool)

    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        if method == "RequestBids":
            self.calls[address] += 1
        return await self._grpc.send(address, method, request, timeout_s)

    def send_stream(
        self, address: str, method: str, request: bytes, timeout_s: float
    ) -> AsyncIterator[bytes]:
        return self._grpc.send_stream(address, method, request, timeout_s)


pytestmark = pytest.mark.integration


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[PeerNode]:
    words = text_seller_config("words", tmp_path, tokenizer="word", max_input_tokens=6, languages=("en",))
    chars = text_seller_config("chars", tmp_path, tokenizer="char", max_input_tokens=12, confidence=0.99)
    config = PeerConfig(name="text", models=(*words.models, *chars.models), data_dir=tmp_path / "text")
    async with await PeerNode.start(config) as running:
        yield running


async def test_text_is_classified_by_the_model_whose_tokenizer_fits(node: PeerNode) -> None:
    async with Requester([node.address], evaluator=EvaluatorConfig.greedy()) as requester:
        short = await requester.run(CAPABILITY, text=["good", "bad"])
        assert short.winner.model_id == "chars-model"  # the favourite, while the text fits it
        result = await requester.run(CAPABILITY, text=["what a great film", "an awful boring plot"])
        assert result.winner.model_id == "words-model"  # 20 characters are over the other's limit
        assert result.outputs["logits"].argmax(dim=-1).tolist() == [1, 0]
        with pytest.raises(NoBidsError, match="constraint_violated"):
            await requester.run(CAPABILITY, text=["one two three four five six seven eight nine ten eleven"])
        # The node serves on after its refusals.
        again = await requester.run(CAPABILITY, text=["great"])
        assert again.outputs["logits"].shape == (1, 2)


async def test_two_peers_with_different_tokenizers_compete_for_text_over_grpc(tmp_path: Path) -> None:
    # Two nodes, two vocabularies: the character model is the favourite while a text fits its 12
    # tokens; a longer text is over its limit (it says by how much) and goes to the word model.
    chars_config = text_seller_config(
        "chars", tmp_path, tokenizer="char", max_input_tokens=12, confidence=0.99
    )
    words_config = text_seller_config("words", tmp_path, tokenizer="word", max_input_tokens=8)
    async with (
        await PeerNode.start(chars_config) as chars,
        await PeerNode.start(words_config) as words,
        Requester([chars.address, words.address], evaluator=EvaluatorConfig.greedy()) as requester,
    ):
        short = await requester.run(CAPABILITY, text=["good", "bad"])
        assert {bid.item.address for bid in short.bids} == {chars.address, words.address}
        assert short.winner.address == chars.address and not short.no_bids
        texts = ["a great and wonderful film", "boring and awful"]
        result = await requester.run(CAPABILITY, text=texts)
    assert result.winner.address == words.address and result.winner.model_id == "words-model"
    (declined,) = result.no_bids
    assert declined.address == chars.address and declined.reason == "constraint_violated"
    assert "26 input tokens" in declined.detail and "max_input_tokens 12" in declined.detail
    _, signed = codec.open_signed(result.receipt, ExecuteResult, expected_signer=words.identity.peer_id)
    assert signed.model_id == "words-model"
    (model,) = words.models.values()
    with torch.inference_mode():
        expected = model.forward(dict(model.tokenize(texts)))[0][1]
    torch.testing.assert_close(result.outputs["logits"], expected)
    assert result.outputs["logits"].argmax(dim=-1).tolist() == [1, 0]


async def test_atomic_run_text(node: PeerNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--peer", node.address, "--capability", CAPABILITY, "--no-store", "--json"]
    args += ["--text", "a wonderful film", "--text", "terrible", "--language", "en"]
    args += ["--output", str(tmp_path / "out.pt")]
    code = await asyncio.to_thread(main, args)
    out = capsys.readouterr().out
    assert code == 0, out
    document = json.loads(out)
    assert document["ok"] is True and document["winner"]["model_id"] == "words-model"
    assert (tmp_path / "out.pt").exists()
    code = await asyncio.to_thread(main, [*args[: args.index("--json")], "--text", "good"])
    assert code == 0 and "winner" in capsys.readouterr().out


async def test_a_requester_with_gossip_asks_only_the_peers_whose_models_take_text(tmp_path: Path) -> None:
    # The same capability on a tensor-only peer (its advert declares a contract, not takes_text):
    # a text task leaves it out, a tensor task still reaches it.
    words_config = text_seller_config("words", tmp_path, gossip_interval_s=0.2)
    tensor_model = ModelConfig(
        "pair",
        (CAPABILITY,),
        f"{Path(__file__).with_name('contract_models.py')}:pair",
        price_per_example=0.001,
    )
    counted = CountingTransport()
    async with await PeerNode.start(words_config) as words:
        tensor_config = PeerConfig(
            name="tensors",
            models=(tensor_model,),
            data_dir=tmp_path / "tensors",
            bootstrap=(words.address,),
            gossip_interval_s=0.2,
        )
        async with (
            await PeerNode.start(tensor_config) as tensors,
            Requester(
                bootstrap=[words.address], gossip=GossipConfig(interval=0.2), transport=counted
            ) as requester,
        ):
            assert await requester.wait_for_peers(CAPABILITY, 2, timeout=20)
            result = await requester.run(CAPABILITY, text=["good", "bad"])
            assert result.winner.address == words.address and not result.no_bids
            assert counted.calls[tensors.address] == 0 and counted.calls[words.address] == 1
            summed = await requester.run(CAPABILITY, {"a": torch.ones(2, 4), "b": torch.ones(2, 4)})
            assert summed.winner.address == tensors.address
            assert counted.calls[tensors.address] == 1
    await counted.pool.close()
