"""The requester's orchestration on the in-memory network and a fake clock: no sockets, no sleeps.

Every seller here is the real seller core and servicer (atomic_p2p.testing.InMemoryNetwork), every
call goes through the market codec, every bid and result is signed and verified; only the wire and
the clock are stand-ins. Deadlines, late bidders and fallbacks are decided by the fake clock, so the
times asserted below are exact, not bounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from atomic_p2p.errors import AuctionError, ExecutionError, UnavailableError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import GradientConfig
from atomic_p2p.requester import BidPolicy, NoBidKind, Request, Requester, ShardPolicy
from atomic_p2p.requester.auction import call_for_bids, collect_round
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.requester.transport import status_name
from atomic_p2p.terms import ModelConstraints
from atomic_p2p.testing import FakeClock, InMemoryNetwork, InMemoryPeer, digits_batch, seller_config

CAPABILITY = "classify/digits"
# Tasks close as soon as every asked peer answered, and the best claim wins: what each test
# changes is then the only thing that decides.
PLAIN = BidPolicy(k_min=0, adaptive_tmax=False, cache=False, top_m=0)


def sellers(network: InMemoryNetwork, tmp_path: Path, **confidences: float) -> dict[str, InMemoryPeer]:
    return {
        name: network.add_peer(seller_config(name, tmp_path, confidence=confidence, seed=index))
        for index, (name, confidence) in enumerate(confidences.items())
    }


def buyer(
    network: InMemoryNetwork, clock: FakeClock, peers: Iterable[InMemoryPeer], **options: Any
) -> Requester:
    settings: dict[str, Any] = {"evaluator": EvaluatorConfig.greedy(), "bids": PLAIN, "seed": 0}
    settings.update(options)
    return Requester([peer.address for peer in peers], transport=network.transport(), clock=clock, **settings)


def forward(peer: InMemoryPeer, inputs: torch.Tensor) -> torch.Tensor:
    (model,) = peer.models.values()
    with torch.inference_mode():
        return model.module(inputs)


async def test_no_usable_bid_says_what_each_peer_offers_in_good_grammar(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    x, _ = digits_batch(2)
    one = sellers(network, tmp_path, only=0.9)
    async with buyer(network, clock, one.values()) as requester:
        with pytest.raises(AuctionError) as failed:
            await requester.run("translate/en-fr", {"x": x})
    first = str(failed.value).splitlines()[0]
    assert first == "no usable bid for 'translate/en-fr' from 1 answer:"
    assert f"offered: {CAPABILITY}" in str(failed.value)
    two = sellers(network, tmp_path, other=0.9, third=0.8)
    async with buyer(network, clock, two.values()) as requester:
        with pytest.raises(AuctionError, match="from 2 answers:"):
            await requester.run("translate/en-fr", {"x": x})


async def test_a_purchase_runs_end_to_end_without_sockets(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, sharp=0.95, dull=0.6)
    x, _ = digits_batch(4)
    async with buyer(network, clock, peers.values()) as requester:
        result = await requester.run(CAPABILITY, {"x": x})
    sharp, dull = peers["sharp"], peers["dull"]
    assert result.winner.address == sharp.address and result.fallbacks == ()
    torch.testing.assert_close(result.outputs["logits"], forward(sharp, x))
    assert network.calls[(sharp.address, "RequestBids")] == network.calls[(dull.address, "RequestBids")] == 1
    assert network.calls[(sharp.address, "Execute")] == 1 and network.calls[(dull.address, "Execute")] == 0
    # The notices went out: the winner's strategy heard a win, the loser's a loss.
    assert sharp.models["sharp-model"].strategy.snapshot()["wins"] == 1
    assert dull.models["dull-model"].strategy.snapshot()["losses"] == 1
    assert clock.monotonic() == 0.0  # nothing had to wait


async def test_a_winner_that_hangs_costs_exactly_its_call_timeout_then_the_runner_up_delivers(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, sharp=0.95, dull=0.6)
    network.delay(peers["sharp"].address, 30.0, method="Execute")
    x, _ = digits_batch(4)
    async with buyer(network, clock, peers.values()) as requester:
        result = await requester.run(CAPABILITY, {"x": x}, deadline_s=5.0)
    assert result.winner.address == peers["dull"].address
    (failed,) = result.fallbacks
    assert failed.bid.address == peers["sharp"].address and status_name(failed.error) == "DEADLINE_EXCEEDED"
    # ExecutionPolicy.min_call_s: a tiny model's own timeout is the 1 s floor, to the microsecond.
    assert failed.elapsed_ms == pytest.approx(1000.0, abs=1e-3)
    torch.testing.assert_close(result.outputs["logits"], forward(peers["dull"], x))


async def test_a_refusing_winner_is_replaced_at_once(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, sharp=0.95, dull=0.6)
    network.fail(peers["sharp"].address, UnavailableError("restarting"), method="Execute")
    async with buyer(network, clock, peers.values()) as requester:
        result = await requester.run(CAPABILITY, {"x": digits_batch(2)[0]})
    (failed,) = result.fallbacks
    assert isinstance(failed.error, UnavailableError) and "restarting" in str(failed.error)
    assert result.winner.address == peers["dull"].address and clock.monotonic() == 0.0


async def test_a_model_that_fails_at_execute_counts_against_that_model_not_the_peer(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, sharp=0.95, dull=0.6)
    network.fail(
        peers["sharp"].address, ExecutionError("model sharp-model failed: ValueError"), method="Execute"
    )
    async with buyer(network, clock, peers.values()) as requester:
        first = await requester.run(CAPABILITY, {"x": digits_batch(2)[0]})
        network.fail(peers["sharp"].address, None, method="Execute")
        second = await requester.run(CAPABILITY, {"x": digits_batch(2)[0]})
        (failed,) = first.fallbacks
        assert isinstance(failed.error, ExecutionError) and first.winner.address == peers["dull"].address
        # Only the (peer, model) profile learned of the failure: the peer is still asked, bids and
        # may win at once, with nothing on it backed off or marked unreachable.
        assert {bid.item.address for bid in second.bids} == {peers["sharp"].address, peers["dull"].address}
        assert not second.no_bids and not second.fallbacks
        sharp = [key for key in requester.memory.profiles if key.model_id == "sharp-model"]
        assert [requester.memory.profiles[key].outcomes for key in sharp] == [1]


async def test_when_every_winner_hangs_the_deadline_ends_the_request(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, a=0.9, b=0.8, c=0.7, d=0.6)
    for peer in peers.values():
        network.delay(peer.address, 30.0, method="Execute")
    async with buyer(network, clock, peers.values()) as requester:
        with pytest.raises(AuctionError, match="failed to execute") as raised:
            await requester.run(CAPABILITY, {"x": digits_batch(2)[0]}, deadline_s=2.5)
    # 1 s, 1 s, then the 0.5 s left; the fourth bid is never tried.
    assert clock.monotonic() == pytest.approx(2.5, abs=1e-6)
    assert "1 more bid(s) not tried: the deadline passed" in str(raised.value)


async def test_a_silent_bidder_is_late_once_k_min_bids_are_in_and_the_grace_passed(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, a=0.9, b=0.8, slow=0.99)
    network.delay(peers["slow"].address, 30.0, method="RequestBids")
    policy = BidPolicy(k_min=2, grace_s=0.05, adaptive_tmax=False, cache=False, top_m=0)
    async with buyer(network, clock, peers.values(), bids=policy) as requester:
        result = await requester.run(CAPABILITY, {"x": digits_batch(2)[0]})
    late = [no_bid for no_bid in result.no_bids if no_bid.kind is NoBidKind.LATE]
    assert [no_bid.address for no_bid in late] == [peers["slow"].address]
    assert result.winner.address == peers["a"].address
    assert result.timings.bids_ms == pytest.approx(50.0, abs=1e-3)  # the grace period, exactly


async def test_without_k_min_a_silent_bidder_holds_the_round_for_the_bid_window(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, a=0.9, slow=0.99)
    network.delay(peers["slow"].address, 30.0, method="RequestBids")
    async with buyer(network, clock, peers.values(), bid_timeout_s=0.4) as requester:
        result = await requester.run(CAPABILITY, {"x": digits_batch(2)[0]}, deadline_s=2.0)
    (silent,) = [no_bid for no_bid in result.no_bids if no_bid.address == peers["slow"].address]
    # The round may last min(bid_timeout_s, bid_share * deadline); the answer in hand covers the
    # task, so the window closes on time and the silent peer is late rather than waited out.
    assert silent.kind is NoBidKind.LATE and silent.reason == "TMAX"
    assert result.timings.bids_ms == pytest.approx(400.0, abs=1e-3)


async def test_shards_of_one_request_share_one_call_for_bids_per_peer(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = sellers(network, tmp_path, sharp=0.95, dull=0.6)
    x, _ = digits_batch(12)
    async with buyer(network, clock, peers.values()) as requester:
        result = await requester.submit(Request.single(CAPABILITY, {"x": x}), shard=ShardPolicy(max_rows=4))
    assert len(result.results) == 3
    assert network.calls[(peers["sharp"].address, "RequestBids")] == 1  # one round for all three
    assert network.calls[(peers["sharp"].address, "Execute")] == 3
    torch.testing.assert_close(result.outputs["logits"], forward(peers["sharp"], x))


async def test_peers_asked_with_one_call_get_its_bytes_and_another_call_gets_its_own(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    # The transport keeps the last call's bytes: the same call again reuses them, another
    # call (even one sent between two sends of the first) never gets them.
    one, two, three = sellers(network, tmp_path, one=0.9, two=0.8, three=0.7).values()
    x, _ = digits_batch(2)
    async with buyer(network, clock, [one, two, three]) as requester:
        terms = requester._terms(30.0, None, None, "normal", True)
        tasks = [
            (await requester._broker.prepare(f"t{i}", CAPABILITY, {"x": x}, terms)).task for i in range(3)
        ]
        now = clock.wall_ms()
        first = call_for_bids(requester.identity, tasks[:2], now, now + 10_000)
        second = call_for_bids(requester.identity, tasks[2:], now, now + 10_000)
        asks = [(one.address, first), (two.address, first), (one.address, second), (three.address, first)]
        collected = await collect_round(network.transport(), asks, 5.0, clock)
    assert collected.no_bids == ()  # every bid bound to the request id of the call it answers
    expected = [(one.address, task) for task in ("t0", "t1", "t2")]
    expected += [(peer.address, task) for peer in (two, three) for task in ("t0", "t1")]
    assert sorted((bid.address, bid.task_id) for bid in collected.bids) == sorted(expected)


async def test_a_peer_behind_two_addresses_gets_one_bid_per_task(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    key = Identity.from_seed(b"one key, two hosts")
    first = network.add_peer(seller_config("a", tmp_path), identity=key)
    second = network.add_peer(seller_config("b", tmp_path), identity=key)
    other = network.add_peer(seller_config("c", tmp_path))
    x, _ = digits_batch(2)
    async with buyer(network, clock, [first, second, other]) as requester:
        terms = requester._terms(30.0, None, None, "normal", True)
        task = (await requester._broker.prepare("t0", CAPABILITY, {"x": x}, terms)).task
        now = clock.wall_ms()
        call = call_for_bids(requester.identity, [task], now, now + 10_000)
        collected = await collect_round(
            network.transport(), [(p.address, call) for p in (first, second, other)], 5.0, clock
        )
    assert sorted(bid.peer_id.hex for bid in collected.bids) == sorted(
        [key.peer_id.hex, other.identity.peer_id.hex]
    )
    (dropped,) = collected.no_bids
    assert (dropped.kind, dropped.reason, dropped.peer_id, dropped.task_id) == (
        NoBidKind.INVALID,
        "INVALID_ARGUMENT",
        key.peer_id,
        "t0",
    )
    assert dropped.detail == "a second bid from the same peer for the same task"


async def test_a_batch_over_a_fixed_peers_unknown_limit_is_learned_then_sharded(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    narrow = network.add_peer(seller_config("narrow", tmp_path, constraints=ModelConstraints(max_batch=4)))
    x, _ = digits_batch(10)
    async with buyer(network, clock, [narrow]) as requester:
        result = await requester.submit(Request.single(CAPABILITY, {"x": x}))
        # Refused whole (max_batch unknown), bids on one row teach max_batch 4, then the shards.
        assert network.calls[(narrow.address, "RequestBids")] == 3
        assert [r.outputs["logits"].shape[0] for r in result.results.values()] == [4, 3, 3]
        torch.testing.assert_close(result.outputs["logits"], forward(narrow, x))
        again = await requester.submit(Request.single(CAPABILITY, {"x": x}))
        assert network.calls[(narrow.address, "RequestBids")] == 4  # known now: sharded at once
        assert again.shards == 3
        with pytest.raises(AuctionError, match="unknown_capability"):
            await requester.submit(Request.single("translate/en-fr", {"x": x}))
        # The row's call for bids learned no limit, so the request was not run again.
        assert network.calls[(narrow.address, "RequestBids")] == 6


async def test_a_draining_peer_is_skipped(network: InMemoryNetwork, clock: FakeClock, tmp_path: Path) -> None:
    peers = sellers(network, tmp_path, sharp=0.95, dull=0.6)
    peers["sharp"].drain()
    async with buyer(network, clock, peers.values()) as requester:
        result = await requester.run(CAPABILITY, {"x": digits_batch(2)[0]})
    (refused,) = [no_bid for no_bid in result.no_bids if no_bid.address == peers["sharp"].address]
    assert refused.kind is NoBidKind.UNREACHABLE and refused.reason == "UNAVAILABLE"
    assert result.winner.address == peers["dull"].address


async def test_reusable_bids_answer_later_requests_until_their_ttl_passes(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = {
        name: network.add_peer(seller_config(name, tmp_path, confidence=confidence, bid_reuse_ttl_s=2.0))
        for name, confidence in (("sharp", 0.95), ("dull", 0.6))
    }
    x, _ = digits_batch(4)
    policy = BidPolicy(k_min=0, adaptive_tmax=False, cache=True, top_m=0)
    async with buyer(network, clock, peers.values(), bids=policy) as requester:
        first = await requester.run(CAPABILITY, {"x": x})
        await clock.advance(1.9)
        reused = await requester.run(CAPABILITY, {"x": x})
        await clock.advance(0.2)  # 2.1 s after the bids were signed: past their reuse period
        fresh = await requester.run(CAPABILITY, {"x": x})
    assert not first.cached and reused.cached and reused.winner.reused and not fresh.cached
    assert reused.winner.digest == first.winner.digest  # the very bid signed before, ordered anew
    assert network.calls[(peers["sharp"].address, "RequestBids")] == 2
    assert network.calls[(peers["sharp"].address, "Execute")] == 3


def bidders(network: InMemoryNetwork, tmp_path: Path, **bids: tuple[float, int]) -> dict[str, InMemoryPeer]:
    """Gradient-mode sellers: name -> (initial scalar bid, output classes)."""
    return {
        name: network.add_peer(
            seller_config(
                name,
                tmp_path,
                seed=index,
                classes=classes,
                gradient=GradientConfig(enabled=True, initial_bid=bid),
            )
        )
        for index, (name, (bid, classes)) in enumerate(bids.items())
    }


async def test_the_gradient_market_drops_a_failing_peer_and_clears_again(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = bidders(network, tmp_path, high=(3.0, 10), mid=(1.0, 10), low=(0.5, 10))
    network.fail(peers["high"].address, UnavailableError("gone"), method="Execute")
    x, y = digits_batch(4)
    async with buyer(network, clock, peers.values()) as requester:
        market = requester.gradient_market(CAPABILITY, batch=4)
        round_ = await market.step(x, y)
    by_address = {peer.address: peer for peer in round_.peers}
    high, mid, low = (by_address[peers[name].address] for name in ("high", "mid", "low"))
    assert not high.executed and high.refusal == "execute failed: UNAVAILABLE" and not high.applied
    # Cleared again between mid and low: mean shift 0.75, so mid holds every example's gate.
    assert mid.executed and torch.all(mid.gates > 0.99) and mid.applied
    assert not low.executed and low.applied  # it bid, so it learns from its (zero) share
    torch.testing.assert_close(round_.output, forward(peers["mid"], x), atol=1e-5, rtol=1e-5)


async def test_the_gradient_market_drops_a_peer_whose_output_does_not_fit(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = bidders(network, tmp_path, a=(2.0, 10), b=(2.0, 10), odd=(2.0, 7), low=(0.1, 10))
    x, y = digits_batch(4)
    async with buyer(network, clock, peers.values()) as requester:
        round_ = await requester.gradient_market(CAPABILITY, batch=4).step(x, y)
    (odd,) = [peer for peer in round_.peers if peer.address == peers["odd"].address]
    assert not odd.executed and "output shape [4, 7]" in odd.refusal
    assert round_.output.shape == (4, 10)
    assert {peer.address for peer in round_.peers if peer.executed} == {
        peers["a"].address,
        peers["b"].address,
    }
