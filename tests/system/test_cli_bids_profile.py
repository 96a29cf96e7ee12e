"""``atomic bids`` and ``atomic profile`` as a user runs them, on a store that real auctions filled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from atomic_p2p.cli.main import main
from atomic_p2p.requester import Requester
from atomic_p2p.testing import digits_batch
from peers.examples import running_peers

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Filled:
    small: str  # peer ids, hex
    specialist: str
    requests: tuple[str, ...]  # request ids of every decision, oldest first


async def fill(tmp_path: Path, store: Path) -> Filled:
    """Five real auctions: three open ones with outcomes, one under a cost cap the specialist
    refuses, one for a capability only the specialist serves."""
    requests = []
    async with running_peers(["small", "specialist"], tmp_path) as (small, specialist):
        async with Requester([small.address, specialist.address], store=store, seed=3) as requester:
            for offset in (0, 8, 16):
                x, y = digits_batch(8, offset)
                result = await requester.run("classify/digits", {"x": x})
                score = float((result.outputs["logits"].argmax(dim=1) == y).float().mean())
                await requester.report_outcome(result, score)
                requests.append(result.request_id.hex())
            x, _ = digits_batch(8, 24)
            capped = await requester.run("classify/digits", {"x": x}, max_cost=0.01)
            assert capped.winner.peer_id == small.peer_id
            only = await requester.run("classify/digits/0-4", {"x": x})
            assert only.winner.peer_id == specialist.peer_id
            requests += [capped.request_id.hex(), only.request_id.hex()]
        return Filled(small.peer_id.hex, specialist.peer_id.hex, tuple(requests))


def atomic(*args: str, data_home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(data_home)}
    return subprocess.Popen(
        [sys.executable, "-m", "atomic_p2p.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


async def test_bids_and_profile_show_decisions_rationale_and_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_home = tmp_path / "data"
    store = data_home / "atomic-p2p" / "requester.db"  # the default path: `atomic bids` finds it alone
    filled = await fill(tmp_path, store)
    plot = tmp_path / "plots" / "profile.png"
    # Two as a user runs them (fresh interpreters, side by side), the rest in this process.
    runs = {
        "bids": atomic("bids", data_home=data_home),
        "profile_json": atomic(
            "profile", "--store", str(store), "--json", "--plot", str(plot), data_home=data_home
        ),
    }
    done = {}
    for name, args in (
        ("bids_json", ["bids", "--store", str(store), "--json", "--limit", "4"]),
        ("bids_peer", ["bids", "--store", str(store), "--peer", filled.specialist[:8], "--json"]),
        ("profile", ["profile", "--store", str(store)]),
        ("missing", ["bids", "--store", str(tmp_path / "nothing.db")]),
    ):
        code = main(args)
        out, err = capsys.readouterr()
        done[name] = (code, out, err)
    done.update({name: finish(process) for name, process in runs.items()})

    code, text, err = done["bids"]
    assert code == 0, err
    assert text.startswith(f"5 decision(s) from {store}, newest first")
    assert f"winner {filled.specialist[:8]} digits-specialist-0-4" in text
    assert "weights accuracy 0.40, cost 0.30, latency 0.30" in text and "pricing first" in text
    assert "rank  peer" in text and "exp acc" in text
    assert "no bid:" in text and "unknown_capability" in text  # small serves no classify/digits/0-4
    assert "below_cost" in text or "excluded" in text  # the specialist under max_cost 0.01

    code, text, err = done["bids_json"]
    assert code == 0, err
    decisions = json.loads(text)["decisions"]
    assert [d["request_id"] for d in decisions] == list(reversed(filled.requests))[:4]
    newest_open = decisions[2]  # the third open auction: both bid, both ranked
    ranked = newest_open["rationale"]["candidates"]
    assert {c["bid"]["peer"] for c in ranked} == {filled.small, filled.specialist}
    for candidate in ranked:
        assert set(candidate["components"]) == {"accuracy", "latency", "cost"}
        assert 0 <= candidate["score"] <= 1.5 and candidate["claimed"]["cost"] > 0
    assert newest_open["winner_peer"] == ranked[0]["bid"]["peer"]
    assert newest_open["price"] == pytest.approx(ranked[0]["claimed"]["cost"])
    assert decisions[0]["rationale"]["no_bids"] and decisions[0]["winner_peer"] == filled.specialist

    code, text, err = done["bids_peer"]
    assert code == 0, err
    won = json.loads(text)["decisions"]
    assert won and {d["winner_peer"] for d in won} == {filled.specialist}

    code, text, err = done["profile"]
    assert code == 0, err
    assert "learned (newest profile per peer, model, capability)" in text
    assert f"{filled.small[:8]}  digits-small" in text and "payments" in text and "0.00100 -> 0.00100" in text

    code, text, err = done["profile_json"]
    assert code == 0, err
    view = json.loads(text)
    by_key = {(p["peer"], p["capability"]): p for p in view["profiles"]}
    small = by_key[(filled.small, "classify/digits")]
    assert small["outcomes"] >= 1 and 0 < small["mean"] < 1 and small["latency_ms"]["p50"] > 0
    assert small["calibration"]["brier"] is not None and small["calibration"]["latency_mape"] is not None
    assert (filled.specialist, "classify/digits/0-4") in by_key
    assert set(view["payments"]) >= {filled.small, filled.specialist}
    prices = {(p["peer"], p["capability"]): p["points"] for p in view["prices"]}
    assert [pt["per_example"] for pt in prices[(filled.small, "classify/digits")]] == [
        pytest.approx(0.001)
    ] * 4
    assert {pt["batch"] for pt in prices[(filled.specialist, "classify/digits/0-4")]} == {8}
    accuracy = {(a["peer"], a["capability"]): a["points"] for a in view["accuracy"]}
    assert accuracy[(filled.small, "classify/digits")][-1]["outcomes"] == small["outcomes"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    code, text, err = done["missing"]
    assert code == 2 and "no store at" in err and text == ""
