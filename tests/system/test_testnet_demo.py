"""``make demo``'s text part: text auctions and a streamed generation between real peer processes."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from peers.examples import weights_cache_dir

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def load_testnet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("testnet", ROOT / "scripts" / "testnet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["testnet"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


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
