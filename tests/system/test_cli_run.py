"""The ``atomic`` command line: keygen, and run against real example peers on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch

from atomic_p2p.cli.main import main
from atomic_p2p.identity import Identity
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.testing import digits_batch
from peers.examples import start_example_peers

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def isolated_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the default key and store paths inside the test (subprocesses inherit them too)."""
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    return home


def atomic(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real command in a fresh interpreter, as a user would."""
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "atomic_p2p.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_keygen_writes_a_private_key_and_prints_its_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "me.pem"
    done = atomic("keygen", "--out", str(path), timeout=30)
    assert done.returncode == 0, done.stderr
    peer_id = done.stdout.strip()
    assert len(peer_id) == 64 and int(peer_id, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).peer_id.hex == peer_id
    assert "BEGIN PRIVATE KEY" not in done.stdout + done.stderr


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "me.pem"
    assert main(["keygen", "--out", str(path)]) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["keygen", "--out", str(path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_keygen_default_path_follows_xdg(
    isolated_config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen"]) == 0
    key = isolated_config_home / "atomic-p2p" / "requester.pem"
    assert Identity.load(key).peer_id.hex == capsys.readouterr().out.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "missing.pt"], "does not exist"),
        (["--input", "inputs.txt"], "must end in"),
        (["--input", "x.pt", "--output", "out.csv"], "must end in"),
        (["--input", "x.pt", "--key", "nokey.pem"], "does not exist"),
        (["--input", "x.pt", "--dtype", "complex64"], "cannot travel"),
        (["--input", "corrupt.pt"], "is not a file torch.save wrote (it may be truncated"),
        (["--input", "corrupt.npy"], "is not a .npy array numpy.save wrote"),
        (["--input", "list.pt"], "not a list; make one with torch.save("),
    ],
)
def test_run_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args, message
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save(torch.zeros(2, 64), tmp_path / "x.pt")
    (tmp_path / "inputs.txt").write_text("1 2 3")
    (tmp_path / "corrupt.pt").write_text("hello world\n")  # what torch.load answered with KeyError: 101
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    torch.save([1, 2], tmp_path / "list.pt")
    code = main(["run", "--peer", "127.0.0.1:1", "--capability", "classify/digits", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_bare_port_is_a_peer_on_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(torch.zeros(2, 64), tmp_path / "x.pt")
    code = main(["run", "--peer", "1", "--capability", "c", "--input", str(tmp_path / "x.pt"), "--json"])
    assert code == 1  # port 1 refuses: asked at 127.0.0.1:1, not looked up as a host name "1"
    document = json.loads(capsys.readouterr().out)
    assert "127.0.0.1:1 unreachable" in document["message"] and "DNS" not in document["message"]
    assert "atomic-peer" in document["hint"] and "listening on" in document["hint"]
    with pytest.raises(SystemExit) as exited:
        main(["run", "--peer", "no-port-here", "--capability", "c", "--input", "x.pt"])
    assert exited.value.code == 2
    assert "is not HOST:PORT" in capsys.readouterr().err


def test_weights_choices_are_the_scoring_profiles() -> None:
    from atomic_p2p.cli.arguments import WEIGHTS
    from atomic_p2p.requester.weights import PROFILES

    assert tuple(sorted(PROFILES)) == WEIGHTS


def test_generate_failures_say_what_next(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--peer", "1", "--capability", "generate/count", "--prompt-ids", "1,2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "127.0.0.1:1 unreachable" in err and "what next: a peer did not answer" in err


def test_weights_and_the_deprecated_priority_must_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(torch.zeros(2, 64), tmp_path / "x.pt")
    base = ["run", "--peer", "127.0.0.1:1", "--capability", "c", "--input", str(tmp_path / "x.pt")]
    assert main([*base, "--weights", "speed", "--priority", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert "--priority is deprecated; use --weights" in err and "disagree" in err


def test_help_does_not_import_torch() -> None:
    # `atomic --help` and `atomic keygen` must stay fast: torch alone takes seconds to import.
    code = "import sys; from atomic_p2p.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_run_rejects_a_bad_deadline(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--peer", "a:1", "--capability", "c", "--input", "x.pt", "--deadline", "-1"])
    assert exited.value.code == 2
    assert "positive" in capsys.readouterr().err


def test_run_refuses_a_key_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.pem"
    Identity.generate().save(key)
    key.chmod(0o644)
    torch.save(torch.zeros(2, 64), tmp_path / "x.pt")
    code = main(
        [
            "run",
            "--peer",
            "127.0.0.1:1",
            "--capability",
            "c",
            "--input",
            str(tmp_path / "x.pt"),
            "--key",
            str(key),
        ]
    )
    assert code == 2
    assert "chmod 600" in capsys.readouterr().err


def test_json_output_reports_no_bids_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"x": torch.zeros(2, 64)}, tmp_path / "x.pt")
    # Port 1 refuses connections: the peer is unreachable, so nobody bids.
    code = main(
        ["run", "--peer", "127.0.0.1:1", "--capability", "c", "--input", str(tmp_path / "x.pt"), "--json"]
    )
    assert code == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["error"] == "NoBidsError"
    assert "127.0.0.1:1" in document["message"] and document["hint"]


# --- atomic run against real example peers ---------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def peers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[PeerNode]]:
    nodes = await asyncio.wait_for(
        start_example_peers(["small", "large", "specialist"], tmp_path_factory.mktemp("peers")), timeout=120
    )
    yield nodes
    for node in nodes:
        await node.stop(grace=1.0)


async def atomic_async(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Like :func:`atomic`, without blocking the event loop the in-process peers serve on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "atomic_p2p.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def peer_args(nodes: list[PeerNode]) -> list[str]:
    return [arg for node in nodes for arg in ("--peer", node.address)]


@pytest.mark.asyncio(loop_scope="module")
async def test_run_prints_the_auction_and_saves_outputs(peers: list[PeerNode], tmp_path: Path) -> None:
    x, y = digits_batch(12, offset=100)
    torch.save(x, tmp_path / "x.pt")
    key = tmp_path / "me.pem"
    Identity.generate().save(key)
    code, out, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "classify/digits", "--input", str(tmp_path / "x.pt"),
        "--key", str(key), "--weights", "speed", "--output", str(tmp_path / "out.pt"),
    )  # fmt: skip
    assert code == 0, err
    assert "weights speed (" in out and "deprecated" not in err
    for node in peers:  # one table row per peer
        assert node.peer_id.short in out
    winner_line = next(line for line in out.splitlines() if line.startswith("winner"))
    winner = next(node for node in peers if node.peer_id.short in winner_line)
    assert winner.address in winner_line
    assert "fallbacks none" in out and "argmax per row" in out
    outputs = torch.load(tmp_path / "out.pt", weights_only=True)
    assert outputs["logits"].shape == (12, 10)
    assert (outputs["logits"].argmax(dim=1) == y).float().mean().item() >= 0.75


@pytest.mark.asyncio(loop_scope="module")
async def test_run_json_is_machine_readable(peers: list[PeerNode], tmp_path: Path) -> None:
    x, _ = digits_batch(5, offset=200)
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "classify/digits", "--input", str(tmp_path / "x.npy"),
        "--priority", "accuracy", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "warning: --priority is deprecated; use --weights" in err  # the old spelling still works
    document = json.loads(out)
    assert document["ok"] is True and document["weights_profile"] == "accuracy"
    assert {bid["peer_id"] for bid in document["bids"]} == {node.peer_id.hex for node in peers}
    assert document["winner"]["peer_id"] == document["bids"][0]["peer_id"]
    assert document["bids"][0]["rank"] == 1 and set(document["bids"][0]["components"]) == {
        "accuracy",
        "latency",
        "cost",
    }
    assert document["attempts"][-1]["ok"] is True and document["no_bids"] == []
    logits = document["outputs"]["logits"]
    assert logits["shape"] == [5, 10] and len(logits["argmax"]) == 5
    assert document["price"] == pytest.approx(document["winner"]["cost"])


@pytest.mark.asyncio(loop_scope="module")
async def test_run_with_no_bids_exits_1_and_says_what_next(peers: list[PeerNode], tmp_path: Path) -> None:
    torch.save(torch.zeros(2, 64), tmp_path / "x.pt")
    code, _, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "translate/en-fr", "--input", str(tmp_path / "x.pt"),
    )  # fmt: skip
    assert code == 1
    assert err.count("unknown_capability") == len(peers)
    assert err.count("offered: classify/digits") == len(peers)
    assert "what next: a peer does not serve 'translate/en-fr'" in err


@pytest.mark.asyncio(loop_scope="module")
async def test_float64_inputs_get_a_note_and_a_hint_to_cast(peers: list[PeerNode], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", digits_batch(4)[0].double().numpy())
    code, _, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "classify/digits", "--input", str(tmp_path / "x.npy"),
        "--no-store",
    )  # fmt: skip
    assert code == 1
    assert "note: the inputs are float64" in err
    assert (
        "what next: the inputs are float64 (numpy's default) and the models take float32: add --dtype float32"
        in err
    )
    code, _, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "classify/digits", "--input", str(tmp_path / "x.npy"),
        "--no-store", "--dtype", "float32",
    )  # fmt: skip
    assert code == 0, err


@pytest.mark.asyncio(loop_scope="module")
async def test_a_batch_larger_than_any_peer_takes_is_sharded(peers: list[PeerNode], tmp_path: Path) -> None:
    x, y = digits_batch(300)
    torch.save(x, tmp_path / "x.pt")
    code, out, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "classify/digits", "--input", str(tmp_path / "x.pt"),
        "--output", str(tmp_path / "out.pt"), "--no-store", "--deadline", "10",
    )  # fmt: skip
    assert code == 0, err
    assert "sharded into 2 microtasks of 150, 150 rows" in out
    logits = torch.load(tmp_path / "out.pt", weights_only=True)["logits"]
    assert logits.shape == (300, 10)
    assert (logits.argmax(dim=1) == y).float().mean().item() >= 0.75


@pytest.mark.asyncio(loop_scope="module")
async def test_report_feeds_an_outcome_back_that_profile_shows(peers: list[PeerNode], tmp_path: Path) -> None:
    x, _ = digits_batch(4, offset=300)
    torch.save(x, tmp_path / "x.pt")
    store, key = str(tmp_path / "requester.db"), tmp_path / "me.pem"
    Identity.generate().save(key)
    code, out, err = await atomic_async(
        "run", *peer_args(peers), "--capability", "classify/digits", "--input", str(tmp_path / "x.pt"),
        "--store", store, "--key", str(key),
    )  # fmt: skip
    assert code == 0, err
    report_line = next(line for line in out.splitlines() if line.startswith("report"))
    task = report_line.split("atomic report ")[1].split()[0]  # REQUEST/TASK, as `atomic bids` shows it
    code, out, err = await atomic_async("report", task, "1", "--store", store, "--key", str(key))
    assert code == 0, err
    before, after = (float(v) for v in out.split("expected accuracy ")[1].split(" -> "))
    assert after > before
    code, out, err = await atomic_async("profile", "--store", store, "--json")
    assert code == 0, err
    (learned,) = [p for p in json.loads(out)["profiles"] if p["outcomes"]]
    assert learned["outcomes"] == 1 and learned["mean"] == pytest.approx(after, abs=5e-4)
    code, _, err = await atomic_async("report", task, "0", "--store", store, "--key", str(key))
    assert code == 1 and "no delivered task" in err  # one outcome per task, across processes
    code, _, err = await atomic_async("report", "ffffffff/task-9", "1", "--store", store)
    assert code == 2 and "atomic bids" in err
