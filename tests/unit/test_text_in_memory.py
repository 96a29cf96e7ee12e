"""A text task in memory: peers with different tokenizers bid for the same texts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomic_p2p.errors import ConfigError, NoBidsError
from atomic_p2p.requester import BidPolicy, Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.testing import FakeClock, InMemoryNetwork, InMemoryPeer, text_seller_config

CAPABILITY = "classify/sentiment"
PLAIN = BidPolicy(k_min=0, adaptive_tmax=False, cache=False, top_m=0)
TEXTS = ["a great and wonderful film", "boring and awful"]


def buyer(network: InMemoryNetwork, clock: FakeClock, *peers: InMemoryPeer) -> Requester:
    return Requester(
        [peer.address for peer in peers],
        transport=network.transport(),
        clock=clock,
        evaluator=EvaluatorConfig.greedy(),
        bids=PLAIN,
        seed=0,
    )


async def test_peers_with_different_vocabularies_compete_for_one_text_task(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    # The character model is the favourite, but 26 characters are over its limit of 16 tokens;
    # the word model counts 5 words in the same text and is under its limit.
    chars = network.add_peer(
        text_seller_config("chars", tmp_path, tokenizer="char", confidence=0.99, max_input_tokens=16)
    )
    words = network.add_peer(text_seller_config("words", tmp_path, tokenizer="word", max_input_tokens=8))
    async with buyer(network, clock, chars, words) as requester:
        result = await requester.run(CAPABILITY, text=TEXTS)
    assert result.winner.address == words.address
    (model,) = words.models.values()
    with torch.inference_mode():
        expected = model.forward(dict(model.tokenize(TEXTS)))[0][1]
    torch.testing.assert_close(result.outputs["logits"], expected)
    assert result.outputs["logits"].argmax(dim=-1).tolist() == [1, 0]
    (declined,) = [no_bid for no_bid in result.no_bids if no_bid.address == chars.address]
    assert declined.reason == "constraint_violated"
    assert "26 input tokens" in declined.detail and "max_input_tokens 16" in declined.detail


async def test_a_text_task_goes_unbid_by_a_model_that_takes_no_text_or_over_every_limit(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    chars = network.add_peer(text_seller_config("chars", tmp_path, tokenizer="char", max_input_tokens=4))
    async with buyer(network, clock, chars) as requester:
        with pytest.raises(NoBidsError, match="constraint_violated"):
            await requester.run(CAPABILITY, text=TEXTS)


async def test_language_is_checked_against_supported_languages(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    english = network.add_peer(text_seller_config("english", tmp_path, languages=("en",)))
    async with buyer(network, clock, english) as requester:
        result = await requester.run(CAPABILITY, text=["good"], language="en-GB")
        assert result.outputs["logits"].shape == (1, 2)
        with pytest.raises(NoBidsError, match="language 'fr' is not supported"):
            await requester.run(CAPABILITY, text=["bon"], language="fr")


async def test_a_text_longer_than_the_contract_takes_is_declined_not_cut(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    config = text_seller_config("words", tmp_path)  # no max_input_tokens: the contract's 512 bound it
    words = network.add_peer(config)
    async with buyer(network, clock, words) as requester:
        with pytest.raises(NoBidsError, match="513 input tokens"):
            await requester.run(CAPABILITY, text=["good " * 513])


async def test_text_arguments_are_checked_before_any_traffic(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    words = network.add_peer(text_seller_config("words", tmp_path))
    async with buyer(network, clock, words) as requester:
        with pytest.raises(ConfigError, match="list of strings"):
            await requester.run(CAPABILITY, text="one string")
        with pytest.raises(ConfigError, match="inputs or text"):
            await requester.run(CAPABILITY, {"x": torch.zeros(1, 2)}, text=["a"])
