"""``make demo``'s summary (scripts/testnet.py) for peers that never won: "-", never nan."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.support.scripts import load_script


def load_testnet() -> ModuleType:
    return load_script("testnet.py")


def test_a_peer_that_never_won_shows_dashes(capsys: pytest.CaptureFixture[str]) -> None:
    testnet = load_testnet()
    peers = [
        testnet.PeerProcess(name, None, Path("log"), address="127.0.0.1:1", peer_id=name[:8], models=["m"])
        for name in ("winner", "idle")
    ]
    tallies = {"winner": testnet.Tally(bids=2, wins=1, latency_ms=[10.0, 20.0], correct=3, examples=4)}
    testnet.print_summary(peers, tallies)
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["winner"][-3:] == ["15.0", "0.0000", "0.750"]
    assert rows["idle"][-5:] == ["0", "0", "-", "0.0000", "-"]
