"""``Requester.report_outcome`` against a real peer: the profile learns, the store keeps it, the
peer's strategy hears an OUTCOME notice; an unknown or already reported task is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_p2p.errors import ConfigError, UnknownTaskError
from atomic_p2p.requester import Requester
from atomic_p2p.requester.profiler import Profile, ProfileKey
from atomic_p2p.store import Store
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers

pytestmark = pytest.mark.integration


async def test_an_outcome_reaches_the_profile_the_store_and_the_peer(tmp_path: Path) -> None:
    store_path = tmp_path / "requester.db"
    async with running_peers(["small"], tmp_path) as (small,):
        async with Requester([small.address], store=store_path) as requester:
            x, _ = digits_batch(8)
            result = await requester.run("classify/digits", {"x": x})
            key = ProfileKey(small.peer_id.hex, "digits-small", "classify/digits")
            before = requester.memory.profiles[key]
            assert (before.deliveries, before.outcomes) == (1, 0)

            await requester.report_outcome(result.task_ref, 0.75)
            after = requester.memory.profiles[key]
            assert after.outcomes == 1
            assert after.quality.alpha == pytest.approx(before.quality.alpha + 0.75)
            assert after.quality.beta == pytest.approx(before.quality.beta + 0.25)

            with pytest.raises(UnknownTaskError, match="no delivered task"):
                await requester.report_outcome(result.task_ref, 1.0)  # once per task
            with pytest.raises(UnknownTaskError, match="no delivered task"):
                await requester.report_outcome("00" * 16 + "/task-0", 1.0)
            with pytest.raises(ConfigError, match=r"\[0, 1\]"):
                await requester.report_outcome(result, 1.5)

            await requester.memory.store.commit()  # type: ignore[union-attr]
            with Store.open(store_path, read_only=True) as store:
                (latest,) = store.latest_profiles()
                assert Profile.from_dict(latest.snapshot) == after
        # Closing the requester drained its notices: a WIN when the result landed, then the OUTCOME.
        record = small.models["digits-small"].strategy.record  # type: ignore[attr-defined]
        assert (record.wins, record.outcomes) == (1, 1)
        assert record.mean_outcome == pytest.approx(0.75)


async def test_a_later_requester_on_the_same_store_reports_once(tmp_path: Path) -> None:
    store_path = tmp_path / "requester.db"
    async with running_peers(["small"], tmp_path) as (small,):
        async with Requester([small.address], store=store_path) as first:
            result = await first.run("classify/digits", {"x": digits_batch(8)[0]})
        key = ProfileKey(small.peer_id.hex, "digits-small", "classify/digits")
        async with Requester([small.address], store=store_path) as later:
            before = later.memory.profiles[key]  # restored from the store
            await later.report_outcome(result.task_ref, 1.0)
            assert later.memory.profiles[key].outcomes == before.outcomes + 1
        async with Requester([small.address], store=store_path) as third:
            with pytest.raises(UnknownTaskError, match="no delivered task"):
                await third.report_outcome(result.task_ref, 1.0)  # already reported, by another process
            assert third.memory.profiles[key].outcomes == 1
