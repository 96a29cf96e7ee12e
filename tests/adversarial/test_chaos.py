"""scripts/chaos.py at CI size: peer processes SIGKILLed under load and restarted, a requester
process SIGKILLed and reopened on its store, and nothing that ``run()`` returned is then missing
from the store (its decision, its bids, its payment). ``python scripts/chaos.py`` runs it at full
size."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scripts import load_script

pytestmark = pytest.mark.system


async def test_nothing_returned_is_lost_to_sigkills_of_peers_and_the_requester(tmp_path: Path) -> None:
    chaos = load_script("chaos.py", "chaos_script")
    peers, lives, results = chaos.QUICK
    report = await chaos.chaos(tmp_path, peers=peers, lives=lives, results=results)
    assert report.peer_kills == lives
    assert report.returned >= lives * results
    assert (report.missing_decisions, report.missing_bids, report.missing_payments) == (0, 0, 0)
