"""``make demo``'s text part: text auctions and a streamed generation between real peer processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType

import pytest

from peers.examples import weights_cache_dir
from tests.support.scripts import load_script

pytestmark = pytest.mark.system


def load_testnet() -> ModuleType:
    return load_script("testnet.py")


def test_the_demo_sells_text_and_streams_a_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    testnet = load_testnet()
    options = testnet.Options(
        peers=3,
        configs=("text-small", "text-large", "lm-small"),
        data_dir=tmp_path,
        cache_dir=weights_cache_dir(),
    )
    with testnet.testnet(options) as net:
        tallies = asyncio.run(testnet.demo(net, options, requests=0, batch=8, quiet=False))
        testnet.print_summary(net.peers, tallies)
    out = capsys.readouterr().out
    assert "=== text request 3/3" in out and "predicted truth" in out
    assert "=== streamed generation (generate/docstrings) ===" in out
    assert "48 tokens from 02-lm-small" in out
    assert "nan" not in out  # the language model gets no accuracy: "-", not nan
    text_wins = tallies["00-text-small"].wins + tallies["01-text-large"].wins
    assert text_wins == testnet.TEXT_REQUESTS
    assert tallies["02-lm-small"].wins == 1
