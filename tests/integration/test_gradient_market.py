"""Requester gradient mode against real peers on 127.0.0.1: over a few dozen rounds on digits the
cooperative peers' bids move the market's loss down, every peer applies its gradient, and the
ledger records price * gate for every peer that ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomic_p2p.errors import NoBidsError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import GradientConfig
from atomic_p2p.requester import Requester
from atomic_p2p.requester.gradient import GradientMarket
from atomic_p2p.store import Store
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers

pytestmark = pytest.mark.integration

BATCH = 32
ROUNDS = 36


async def test_gradient_rounds_lower_the_loss_and_pay_by_gate(tmp_path: Path) -> None:
    gradient = GradientConfig(enabled=True, lr=0.05)
    store = Store.open(tmp_path / "ledger.db")
    try:
        async with (
            running_peers(
                ["small", "specialist", "large"], tmp_path, model_overrides={"gradient": gradient}
            ) as nodes,
            GradientMarket(
                Identity.generate(),
                [node.address for node in nodes],
                capability="classify/digits",
                shift_mode=0.0,  # a constant shift: every bidder runs and the gates mix them all
                store=store,
            ) as market,
        ):
            losses, paid = [], 0.0
            for step in range(ROUNDS):
                x, y = digits_batch(BATCH, offset=(step * BATCH) % 1400)
                result = await market.step(x, y)
                losses.append(result.loss)
                assert len(result.peers) == 3 and all(p.applied and p.executed for p in result.peers)
                assert torch.allclose(sum(p.gates for p in result.peers), torch.ones(BATCH), atol=1e-5)
                paid += sum(p.payment for p in result.peers)
            final = {p.model_id: float(p.bids[0]) for p in result.peers}
        store.flush(timeout=10)
        first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
        assert last < 0.8 * first, (first, last, final)
        # The specialist (digits 0-4 only) hurts the mixture: its bid falls below the generalists'.
        assert final["digits-specialist-0-4"] < min(final["digits-small"], final["digits-large"])
        totals = store.ledger_totals()
        assert sum(kinds.get("charge", 0.0) for kinds in totals.values()) == pytest.approx(paid, rel=1e-6)
    finally:
        store.close()


async def test_only_peers_named_for_remote_training_get_output_gradients(tmp_path: Path) -> None:
    gradient = GradientConfig(enabled=True, remote_training=True, model_lr=0.01)
    async with running_peers(["small", "large"], tmp_path, model_overrides={"gradient": gradient}) as nodes:
        weights = [
            [p.detach().clone() for p in n.models[next(iter(n.models))].module.parameters()] for n in nodes
        ]
        async with GradientMarket(
            Identity.generate(),
            [node.address for node in nodes],
            capability="classify/digits",
            shift_mode=0.0,
            train_outputs={nodes[0].address},
        ) as market:
            x, y = digits_batch(BATCH, offset=500)
            result = await market.step(x, y)
        assert all(p.applied for p in result.peers)
        moved = [
            any(
                not torch.equal(w, p)
                for w, p in zip(before, n.models[next(iter(n.models))].module.parameters(), strict=True)
            )
            for before, n in zip(weights, nodes, strict=True)
        ]
        assert moved == [True, False]


async def test_competitive_peers_bid_up_and_plain_peers_sit_out(tmp_path: Path) -> None:
    competitive = GradientConfig(enabled=True, role="competitive", lr=0.05)
    async with (
        running_peers(["small", "large"], tmp_path, model_overrides={"gradient": competitive}) as bidders,
        running_peers(["specialist"], tmp_path) as plain,  # no [models.gradient]: no bid values
        GradientMarket(
            Identity.generate(),
            [node.address for node in [*bidders, *plain]],
            capability="classify/digits",
            shift_mode=0.0,
        ) as market,
    ):
        rounds = [await market.step(*digits_batch(16, offset=16 * i)) for i in range(5)]
    assert all(len(r.peers) == 2 and all(p.applied for p in r.peers) for r in rounds)
    assert "digits-specialist-0-4" not in {p.model_id for r in rounds for p in r.peers}
    # Paid per unit of gate, with dg/db > 0 and no cost per bid, each raises its bid.
    for first, last in zip(rounds[0].peers, rounds[-1].peers, strict=True):
        assert float(last.bids[0]) > float(first.bids[0])


async def test_the_requester_sdk_opens_a_gradient_market_on_its_candidates(tmp_path: Path) -> None:
    """Requester.gradient_market: the requester's identity, channels and store (ledger)."""
    gradient = GradientConfig(enabled=True, lr=0.05)
    async with running_peers(["small", "large"], tmp_path, model_overrides={"gradient": gradient}) as nodes:
        async with Requester(
            peers=[node.address for node in nodes], store=tmp_path / "requester.db"
        ) as requester:
            async with requester.gradient_market("classify/digits", shift_mode=0.0) as market:
                result = await market.step(*digits_batch(BATCH, offset=64))
                assert market.addresses == tuple(node.address for node in nodes)
            assert {p.model_id for p in result.peers} == {"digits-small", "digits-large"}
            assert all(p.applied and p.executed and p.payment > 0 for p in result.peers)
            # Closing the market leaves the requester's shared channels open.
            assert (await requester.run("classify/digits", {"x": digits_batch(4)[0]}, deadline_s=5.0)).winner
            store = requester.memory.store
            assert store is not None
            store.flush(timeout=10)
            charged = {peer: kinds.get("charge", 0.0) for peer, kinds in store.ledger_totals().items()}
        paid = {p.peer_id: p.payment for p in result.peers}
        for peer_id, payment in paid.items():
            assert charged[peer_id] >= payment - 1e-12


def test_a_gradient_market_needs_candidates() -> None:
    unstarted = Requester(bootstrap=["127.0.0.1:9"])  # gossip not joined: no candidate known yet
    with pytest.raises(NoBidsError, match="wait_for_peers"):
        unstarted.gradient_market("classify/digits")
