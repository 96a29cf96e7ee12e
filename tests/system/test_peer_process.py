"""``atomic-peer`` as a real process: the listening line, SIGTERM drains, errors exit 2."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import tomli_w

from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p.cli.peer import main
from atomic_p2p.identity import verify
from atomic_p2p.protocol.wire import envelope_from_proto
from atomic_p2p.testing import peer_command, peer_processes
from peers.examples import PEERS_DIR, example_table
from tests.support.handbuyer import HandBuyer
from tests.support.waiting import draining, eventually

pytestmark = pytest.mark.system

START_TIMEOUT_S = 90.0  # a first start trains the model (a few seconds; more on a loaded box)
EXIT_TIMEOUT_S = 20.0
LISTENING = re.compile(r"^atomic-peer ([0-9a-f]{8}) listening on (\S+) hosting (.+)$")


@dataclass
class PeerProcess:
    process: asyncio.subprocess.Process
    address: str
    peer_id_short: str
    models: list[str]
    log: Path


@pytest.fixture
async def peer_process(tmp_path: Path) -> AsyncIterator[PeerProcess]:
    """The small and slow example peers as one process, from two configs. One worker and no queue
    ([peer] comes from the first config): while an order runs, new calls for bids decline with
    OVERLOADED, which is how a test sees that the order was admitted."""
    configs = []
    for name, overrides in (("small", {"max_concurrency": 1, "queue_limit": 0}), ("slow", {})):
        configs.append(tmp_path / f"{name}.toml")
        configs[-1].write_text(tomli_w.dumps(example_table(name, **overrides)))
    log = tmp_path / "peer.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *peer_command(),
            *map(str, configs),
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
        match = LISTENING.match(line.decode().strip())
        assert match, f"unexpected first line {line!r}; log:\n{log.read_text()}"
        yield PeerProcess(process, match[2], match[1], match[3].split(", "), log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_drains_in_flight_work_then_exits_zero(peer_process: PeerProcess) -> None:
    assert peer_process.models == ["digits-small", "digits-small-slow"]
    async with HandBuyer(peer_process.address) as buyer:
        slow_bid = await buyer.win(4, model_id="digits-small-slow")
        spare_bid = await buyer.win(4, model_id="digits-small")
        terms = market_pb2.Bid.FromString(slow_bid.payload)
        assert terms.expected_latency_ms >= 2000  # the simulated slow hardware is quoted
        assert terms.peer_id.hex().startswith(peer_process.peer_id_short)

        async def admitted() -> bool:  # the one worker is busy: new calls for bids decline
            outcome = (await buyer.request_bids([buyer.task()])).outcomes[0]
            return outcome.no_bid.reason == market_pb2.NO_BID_REASON_OVERLOADED

        in_flight = asyncio.ensure_future(buyer.execute(slow_bid, [buyer.inputs(4)]))
        await eventually(admitted, what="the slow order is admitted")
        assert not in_flight.done()  # the model is "running" for 2 s
        peer_process.process.send_signal(signal.SIGTERM)
        await eventually(lambda: draining(buyer.channel), what="the peer drains on SIGTERM")

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await buyer.request_bids([buyer.task()])
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await buyer.execute(spare_bid, [buyer.inputs(4)])
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        response = await asyncio.wait_for(in_flight, EXIT_TIMEOUT_S)
        result = envelope_from_proto(response.result)
        verify(result, "atomic.v1.ExecuteResult")
        assert market_pb2.ExecuteResult.FromString(result.payload).latency_ms >= 2000

    code = await asyncio.wait_for(peer_process.process.wait(), EXIT_TIMEOUT_S)
    assert code == 0, peer_process.log.read_text()
    assert "draining" in peer_process.log.read_text()


def test_a_bad_config_exits_2_and_says_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[peer]\nname = "bad"\nport = "eighty"\n')
    assert main([str(config)]) == 2
    assert "port must be an integer" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_busy_port_exits_2_and_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main([str(PEERS_DIR / "small.toml"), "--port", str(port), "--data-dir", str(tmp_path)])
    assert code == 2
    assert "--port 0" in capsys.readouterr().err


async def test_peer_processes_start_from_tables_serve_and_stop_cleanly(tmp_path: Path) -> None:
    """The launcher the networked experiments use: two tables in, two serving processes out."""
    tables = [example_table("small", name=f"proc-{i}") for i in range(2)]
    async with peer_processes(tables, tmp_path) as peers:
        assert [p.name for p in peers] == ["proc-0", "proc-1"]
        assert all(p.models == ["digits-small"] for p in peers)
        assert peers[0].address != peers[1].address
        for peer in peers:
            async with HandBuyer(peer.address) as buyer:
                bid = await buyer.win()
                result = await buyer.execute(bid, [buyer.inputs(4)])
                assert result.HasField("result")
            assert tomllib.loads(peer.config.read_text())["peer"]["name"] == peer.name
    assert [p.process.returncode for p in peers] == [0, 0]
