"""Streamed generation on the in-memory network and a fake clock: tokens as produced, a winner that
dies mid-stream continued by the runner-up, and a client that cancels (docs/protocol.md section 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atomic_p2p.errors import AuctionError, ConfigError
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import ExecuteResult
from atomic_p2p.requester import BidPolicy, Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.testing import FakeClock, InMemoryNetwork, InMemoryPeer, generator_config

CAPABILITY = "generate/count"
PLAIN = BidPolicy(k_min=0, adaptive_tmax=False, cache=False, top_m=0)


def buyer(network: InMemoryNetwork, clock: FakeClock, *peers: InMemoryPeer, **options: Any) -> Requester:
    settings: dict[str, Any] = {"evaluator": EvaluatorConfig.greedy(), "bids": PLAIN, "seed": 0}
    settings.update(options)
    return Requester([peer.address for peer in peers], transport=network.transport(), clock=clock, **settings)


def forward_calls(peer: InMemoryPeer) -> int:
    (model,) = peer.models.values()
    return int(model.module.calls)


async def test_tokens_stream_as_produced_and_the_result_covers_them(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peer = network.add_peer(generator_config("counter", tmp_path))
    async with buyer(network, clock, peer) as requester:
        generation = requester.generate(CAPABILITY, [1, 2, 3], max_tokens=5)
        chunks = [chunk async for chunk in generation]
    assert [token for chunk in chunks for token in chunk.tokens] == [4, 5, 6, 7, 8]
    assert {chunk.address for chunk in chunks} == {peer.address}
    result = generation.result
    assert result.tokens == (4, 5, 6, 7, 8)
    (part,) = result.parts
    assert part.verified and part.start == 0 and part.bid.address == peer.address
    assert part.receipt is not None
    _, signed = codec.open_signed(part.receipt, ExecuteResult, expected_signer=peer.identity.peer_id)
    assert signed.model_id == "counter-lm"
    assert result.price == pytest.approx(signed.cost_charged)
    assert peer.workers.load().in_flight == 0


async def test_a_winner_that_dies_mid_stream_is_continued_by_the_runner_up(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    # The favourite breaks on a sequence of 5 tokens: after the 3-token prompt it produces 2.
    winner = network.add_peer(generator_config("fragile", tmp_path, confidence=0.95, fail_at_length=5))
    runner_up = network.add_peer(generator_config("steady", tmp_path, confidence=0.6))
    async with buyer(network, clock, winner, runner_up) as requester:
        result = await requester.generate(CAPABILITY, [1, 2, 3], max_tokens=6, deadline_s=5.0).collect()
    assert result.tokens == (4, 5, 6, 7, 8, 9)
    first, second = result.parts
    assert (first.bid.address, first.start, first.tokens, first.verified) == (
        winner.address,
        0,
        (4, 5),
        False,
    )
    assert (second.bid.address, second.start, second.tokens) == (runner_up.address, 2, (6, 7, 8, 9))
    assert second.verified
    assert [attempt.ok for attempt in result.attempts] == [False, True]
    assert winner.workers.load().in_flight == 0
    # Learned as any delivery: both peers heard how it went, the runner-up's profile delivered.
    assert network.calls[(winner.address, "Feedback")] == 1
    assert network.calls[(runner_up.address, "Feedback")] == 1
    profiles = {key.peer: profile for key, profile in requester.memory.profiles.items()}
    assert profiles[runner_up.identity.peer_id.hex].deliveries == 1
    assert profiles[winner.identity.peer_id.hex].outcomes == 1  # its failure, an outcome of 0


async def test_every_peer_failing_is_an_auction_error(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peer = network.add_peer(generator_config("fragile", tmp_path, fail_at_length=4))
    async with buyer(network, clock, peer) as requester:
        with pytest.raises(AuctionError, match="1 tokens received"):
            await requester.generate(CAPABILITY, [1, 2, 3], max_tokens=4).collect()


async def test_a_client_that_cancels_stops_the_generation_and_the_peer_serves_on(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peer = network.add_peer(generator_config("counter", tmp_path, max_concurrency=1))
    warm_up = forward_calls(peer)
    async with buyer(network, clock, peer) as requester:
        generation = requester.generate(CAPABILITY, [1], max_tokens=60)
        received = [await anext(generation), await anext(generation)]
        await generation.aclose()
        calls = forward_calls(peer)
        assert [chunk.tokens for chunk in received] == [(2,), (3,)]
        assert calls - warm_up <= 3  # the two steps sent, and at most the one in progress
        assert peer.workers.load().in_flight == 0
        await clock.sleep(1.0)
        assert forward_calls(peer) == calls  # nothing runs on after the cancel
        result = await requester.generate(CAPABILITY, [7], max_tokens=2).collect()
    assert result.tokens == (8, 9)
    assert forward_calls(peer) == calls + 2


async def test_the_peer_refuses_a_budget_over_its_models_limit(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peer = network.add_peer(generator_config("counter", tmp_path))
    async with buyer(network, clock, peer) as requester:
        with pytest.raises(AuctionError, match=r"INVALID_ARGUMENT.*max_tokens"):
            await requester.generate(CAPABILITY, [1], max_tokens=1000).collect()


def test_bad_prompts_and_budgets_are_refused_before_any_traffic(
    network: InMemoryNetwork, clock: FakeClock
) -> None:
    requester = Requester(["nowhere:1"], transport=network.transport(), clock=clock)
    for prompt in ([], [[1, 2], [3, 4]], [0.5]):
        with pytest.raises(ConfigError, match="prompt"):
            requester.generate(CAPABILITY, prompt, max_tokens=3)
    with pytest.raises(ConfigError, match="max_tokens"):
        requester.generate(CAPABILITY, [1], max_tokens=0)
    assert network.calls == {}
