"""Standardized benchmarking against real peers: every peer probed, outcomes in the profiles,
probe payments in the ledger, and the budget cap respected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from atomic_p2p.requester import Requester
from atomic_p2p.requester.probes import ProbeConfig, Prober
from atomic_p2p.requester.profiler import ProfileKey
from atomic_p2p.store import Store
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers

pytestmark = pytest.mark.integration

CAPABILITY = "classify/digits"


async def test_probes_measure_every_peer_and_stop_at_the_budget(tmp_path: Path) -> None:
    x, y = digits_batch(64, offset=1200)  # every class: the specialist knows only 0-4
    async with running_peers(["small", "specialist"], tmp_path) as (small, specialist):
        store_path = tmp_path / "requester.db"
        async with Requester([small.address, specialist.address], store=store_path, seed=0) as requester:
            # 16 examples: 0.016 a probe of small, 0.032 of the specialist; 0.2 pays 4 rounds.
            config = ProbeConfig(budget=0.2, interval_s=0.01, max_rate_per_peer=1000.0, batch=16)
            async with Prober(requester, CAPABILITY, {"x": x}, y, config) as prober:
                await asyncio.wait_for(prober.wait(), 60)
            results = list(prober.results)
            profiles = dict(requester.memory.profiles)

        assert all(result.ok for result in results), [r.error for r in results]
        probed = {result.address: 0 for result in results}
        for result in results:
            probed[result.address] += 1
        assert probed == {small.address: 4, specialist.address: 4}
        assert prober.schedule.spent == pytest.approx(0.192)
        assert prober.schedule.remaining < min(prober.schedule.last_price.values())  # nothing affordable

        measured = {
            address: profiles[ProfileKey(peer.peer_id.hex, model, CAPABILITY)]
            for address, peer, model in (
                (small.address, small, "digits-small"),
                (specialist.address, specialist, "digits-specialist-0-4"),
            )
        }
        assert {profile.outcomes for profile in measured.values()} == {4}
        assert measured[small.address].quality.mean > measured[specialist.address].quality.mean + 0.15
        # Every probe outcome reached the peer's strategy as an OUTCOME notice.
        assert small.models["digits-small"].strategy.record.outcomes == 4  # type: ignore[attr-defined]
        assert specialist.models["digits-specialist-0-4"].strategy.record.outcomes == 4  # type: ignore[attr-defined]

        with Store.open(store_path, read_only=True) as store:
            totals = store.ledger_totals()
            assert set(totals) == {small.peer_id.hex, specialist.peer_id.hex}
            assert all(set(kinds) == {"probe"} for kinds in totals.values())
            assert sum(kinds["probe"] for kinds in totals.values()) == pytest.approx(0.192)
            observed = store.observations(name="probe_accuracy")
            assert len(observed) == 8 and {o.peer for o in observed} == set(totals)


async def test_a_peer_too_dear_for_what_is_left_is_not_probed(tmp_path: Path) -> None:
    x, y = digits_batch(32, offset=1200)
    async with running_peers(["small", "specialist"], tmp_path) as (small, specialist):
        async with Requester([small.address, specialist.address], store=tmp_path / "r.db") as requester:
            # 0.02 pays one probe of small (0.016); the specialist (0.032) never fits.
            config = ProbeConfig(budget=0.02, interval_s=0.01, max_rate_per_peer=1000.0, batch=16)
            async with Prober(requester, CAPABILITY, {"x": x}, y, config) as prober:
                await asyncio.wait_for(prober.wait(), 60)
        paid = [(r.address, r.paid) for r in prober.results if r.ok]
        assert paid == [(small.address, pytest.approx(0.016))]
        refused = [r for r in prober.results if not r.ok]
        assert [r.address for r in refused] == [specialist.address]
        assert "exceeds max_cost" in refused[0].error or "budget" in refused[0].error
        assert prober.schedule.too_dear == {specialist.address}
        assert prober.schedule.spent <= config.budget
