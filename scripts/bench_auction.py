#!/usr/bin/env python3
"""Benchmark: one auction round over 10 peers on loopback, against a bare gRPC fan-out.

    python scripts/bench_auction.py                 # 10 peers, 5 x 300 rounds, JSON to out/bench_auction.json
    python scripts/bench_auction.py --rounds 1000 --peers 10 --repeats 3
    make flamegraph                                 # where the round's CPU goes (py-spy, out/flame_*.svg)

What is measured, all in one run so the noisy machine cancels out (docs/architecture.md section 11):

- **auction round**: sign a BidRequest, one RequestBids per peer concurrently, every bid envelope
  verified (in a worker thread) and bound to the request, bids scored. This is the requester's
  real code path (``collect_bids`` + ``score``), minus Execute.
- **bare fan-out**: the same number of concurrent unary calls to the same servers over the same
  channels, to the cheapest handler they serve (grpc.health.v1 Check): the floor any protocol
  on this gRPC stack pays.
- **the floor, measured**: the same fan-out of signed RequestBids calls to minimal peers
  (``scripts/minimal_peer.py``: verify the request, run the model on the preview, sign a bid,
  nothing else, on the generated protobuf classes), as many to a process as the real peers and
  served the same way; beside it, the same raw fan-out to the real peers (no bid scored) and the
  requester's real round against the minimal peers. The work alone, timed warm in a tight loop,
  is printed too: in a serving process it runs colder and costs more.
- **stored replies**: the same fan-out to servers like the minimal peers' that send their first
  answer again for every call without reading it: these very request and reply bytes over
  this stack, with no work. The three fan-outs split the round: transport (stored / bare), the
  protocol's minimum in Python (minimal / stored), a real peer's features (auction / minimal).
- **repeats**: the fast rows run ``--repeats`` times in turn, every row once per repeat, back to
  back; each row's percentiles pool all its calls, and each ratio is the median of the repeats'
  own (``ratio_runs`` in the JSON), so a slow spell of the shared machine moves a repeat, not a
  ratio.
- **full request**: ``Requester.run`` (auction + Execute on the winner + result verification),
  and **direct execute**: calling the same winner without an auction (a bid is still needed to
  execute, so this is RequestBids to that one peer + Execute).
- **CPU per bid**: CPU time of the requester process and of the peers' process over the auction
  rounds, divided by the bids (rounds x peers), beside the same for the bare fan-out per call.
- **5 ms model**: a second set of peers whose model takes 5 ms a call (``extra_latency_ms``) and
  declares bids reusable: a full request (auction + Execute, bid cache off), a request served
  from the bid cache, and direct execution (one Execute of a reusable bid on the same peer with a
  fresh order, the result verified: the protocol's minimum for a paid call), taken in turn round
  after round so that load spikes on the shared machine hit all three alike.
- **idle peer memory**: RSS of a real ``atomic-peer peers/small.toml`` process, idle after start.
- **Ed25519 verifications per second**, on one thread and on two.
- **TLS cost**: every row above runs against peers serving TLS bound to their peer ids (the
  default; addresses ``PEERID@host:port``); the fast rows run again in the same run against the
  same peers started ``insecure`` (plaintext), and the table gives TLS / plaintext per row, beside
  **connect**: the first contact with every peer from a fresh pool (certificate fetched and
  checked, channel pinned, TLS handshake, one health check) against the same in plaintext.

The peers run in a separate process (``--peer-procs`` of them, the peers split among them) so the
requester's event loop measures only the requester's work.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example peers: peers.examples

from atomic_p2p.progress import progress  # noqa: E402

if TYPE_CHECKING:
    from scripts.minimal_peer import Answers

CAPABILITY = "classify/digits"


# --------------------------------------------------------------------------- peer farm (child)
async def serve_peers(count: int, data_dir: Path, extra_ms: float, reuse_s: float, insecure: bool) -> None:
    """Child process: start ``count`` small digit peers, print their addresses (``PEERID@host:port``
    with TLS), wait for EOF."""
    from atomic_p2p.peer.node import freeze_heap
    from peers.examples import start_example_peers

    nodes = []
    model = {"extra_latency_ms": extra_ms}
    for index in range(count):
        nodes += await start_example_peers(
            ["small"],
            data_dir / f"p{index}",
            model_overrides=model,
            bid_reuse_ttl_s=reuse_s,
            insecure=insecure,
        )
    freeze_heap()  # as atomic-peer does once its node listens
    print(json.dumps([node.address if insecure else node.dial_address for node in nodes]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for node in nodes:
        await node.stop(grace=0.5)


async def serve_minimal(count: int, data_dir: Path, insecure: bool, stored: bool = False) -> None:
    """Child process: ``count`` minimal peers (scripts/minimal_peer.py: the floor), each with its
    own copy of the small model, served as :func:`serve_peers` serves real ones; ``stored``: each
    sends its first answer again for every later call (:class:`StoredReply`)."""
    import torch

    from atomic_p2p.peer.node import freeze_heap, load_models, serving_threads
    from peers.examples import example_config
    from scripts import minimal_peer

    servers, addresses = [], []
    for index in range(count):
        config = example_config("small", data_dir / f"p{index}")
        torch.set_num_threads(serving_threads(config))
        (model,) = load_models(config).values()
        offer = minimal_peer.offer_of(model, CAPABILITY)
        peer, tls = minimal_peer.load(data_dir / f"p{index}" / "minimal", offer)
        answers: minimal_peer.Answers = StoredReply(peer) if stored else peer
        server, port = await minimal_peer.serve(answers, None if insecure else tls)
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}" if insecure else f"{peer.peer_id.hex}@127.0.0.1:{port}")
    freeze_heap()
    print(json.dumps(addresses), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop(0.5)


class StoredReply:
    """A minimal peer's first answer, sent again for every later call without reading the call:
    the same request and reply bytes as the floor's fan-out, and no work (its bid still verifies:
    the requester's fan-out checks the last bid's signature, not its request id)."""

    def __init__(self, peer: Answers) -> None:
        self._peer = peer
        self._reply: bytes | None = None

    def request_bids(self, raw: bytes) -> bytes:
        if self._reply is None:
            self._reply = self._peer.request_bids(raw)
        return self._reply


def start_farms(
    peers: int,
    procs: int,
    data_dir: Path,
    extra_ms: float = 0.0,
    reuse_s: float = 0.0,
    insecure: bool = False,
    minimal: bool = False,
    stored: bool = False,
) -> tuple[list[subprocess.Popen[str]], list[str]]:
    farms, addresses = [], []
    share = [peers // procs + (1 if i < peers % procs else 0) for i in range(procs)]
    for index, count in enumerate(share):
        command = [
            sys.executable,
            __file__,
            "--serve-peers",
            str(count),
            "--data-dir",
            str(data_dir / str(index)),
            "--extra-ms",
            str(extra_ms),
            "--reuse-s",
            str(reuse_s),
            *(["--insecure"] if insecure else []),
            *(["--minimal"] if minimal else []),
            *(["--stored"] if stored else []),
        ]
        farm = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        farms.append(farm)
    for farm in farms:
        assert farm.stdout is not None
        line = farm.stdout.readline()
        if not line:
            raise SystemExit("a peer process failed to start; run with --serve-peers 1 to see why")
        addresses += json.loads(line)
    return farms, addresses


# --------------------------------------------------------------------------- measurements
def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "mean_ms": statistics.fmean(ordered),
        "n": len(ordered),
    }


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


class Run(NamedTuple):
    """One row measured once: each call's latency (ms), and the CPU seconds each side used."""

    samples_ms: list[float]
    requester_cpu_s: float
    peers_cpu_s: float


async def sampled(
    label: str, rounds: int, call: Callable[[], Awaitable[object]], peer_pids: list[int]
) -> Run:
    """``rounds`` calls, after a few to warm channels, caches and the peers' models."""
    for _ in range(min(20, rounds)):
        await call()
    samples = []
    requester_cpu, peers_cpu = time.process_time(), cpu_seconds(peer_pids)
    for _ in progress(range(rounds), desc=label, unit="round", leave=False):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return Run(samples, time.process_time() - requester_cpu, cpu_seconds(peer_pids) - peers_cpu)


def pooled(runs: list[Run]) -> dict[str, Any]:
    """A row from its runs: latency percentiles over every call, the CPU each side used per call,
    and each run's own p50 (``p50_ms_runs``), the ratios' same-period pairs."""
    samples = [sample for run in runs for sample in run.samples_ms]
    row: dict[str, Any] = percentiles(samples)
    row["requester_cpu_us_per_call"] = sum(run.requester_cpu_s for run in runs) / len(samples) * 1e6
    row["peers_cpu_us_per_call"] = sum(run.peers_cpu_s for run in runs) / len(samples) * 1e6
    row["p50_ms_runs"] = [percentiles(run.samples_ms)["p50_ms"] for run in runs]
    return row


async def timed(
    label: str, rounds: int, call: Callable[[], Awaitable[object]], peer_pids: list[int]
) -> dict[str, Any]:
    """Latency percentiles of ``rounds`` calls, and the CPU each side used per call."""
    return pooled([await sampled(label, rounds, call, peer_pids)])


async def measure(
    addresses: list[str],
    rounds: int,
    peer_pids: list[int],
    insecure: bool = False,
    minimal_dir: Path | None = None,
    repeats: int = 1,
) -> dict[str, dict[str, Any]]:
    """The fast rows, ``repeats`` times in turn; with ``minimal_dir``, also the same fan-out to
    minimal peers (the floor) and to stored replies (the same bytes, no work), each started there
    as many to a process as the real ones."""
    farms: list[subprocess.Popen[str]] = []
    floors: dict[str, tuple[list[str], list[int]]] = {}
    try:
        if minimal_dir is not None:
            for name, stored in (("minimal", False), ("stored", True)):
                started, served = start_farms(
                    len(addresses),
                    len(peer_pids),
                    minimal_dir / name,
                    insecure=insecure,
                    minimal=True,
                    stored=stored,
                )
                farms += started
                floors[name] = (served, [farm.pid for farm in started])
        return await _measure(addresses, rounds, peer_pids, insecure, repeats, floors)
    finally:
        stop_farms(farms)


async def _measure(
    addresses: list[str],
    rounds: int,
    peer_pids: list[int],
    insecure: bool,
    repeats: int,
    floors: dict[str, tuple[list[str], list[int]]],
) -> dict[str, dict[str, Any]]:
    import torch

    from atomic_p2p.identity import verify
    from atomic_p2p.protocol import codec
    from atomic_p2p.protocol.messages import RequestBidsReply
    from atomic_p2p.requester import Requester, score
    from atomic_p2p.requester.auction import collect_bids
    from atomic_p2p.requester.client import TASK_ID
    from atomic_p2p.requester.messages import build_task
    from atomic_p2p.tensors import encode

    x = torch.rand(8, 64)
    wire = [encode(x, "x")]
    minimal, minimal_pids = floors.get("minimal", ([], []))
    stored, stored_pids = floors.get("stored", ([], []))
    async with Requester(addresses, insecure=insecure) as requester:
        transport = requester._transport  # the bench drives the requester's own transport
        pool = requester._pool
        for address in [*addresses, *minimal, *stored]:  # pinned to each one's certificate (TLS)
            await pool.open(address)
        health = [health_pb2_grpc.HealthStub(pool.channel(a)) for a in addresses]  # the auction's channels

        def round_on(peers: list[str]) -> Callable[[], Awaitable[None]]:
            async def auction_round() -> None:
                task = build_task(TASK_ID, CAPABILITY, wire, preview=True, max_cost=None)
                call = requester._call_for_bids(task, 2.0)
                collected = await collect_bids(transport, peers, call, 2.0, requester.clock)
                ranking = score(collected.bids_for(TASK_ID), None, 2000.0, None)
                assert len(ranking.ranked) == len(peers), collected.no_bids

            return auction_round

        auction_round = round_on(addresses)
        grpc_transport = transport.inner  # the bytes a call sends, under the requester's watch

        def fanout_to(peers: list[str]) -> Callable[[], Awaitable[None]]:
            async def requests_only() -> None:
                # The least a requester does: sign and send the call, check the last bid to arrive.
                task = build_task(TASK_ID, CAPABILITY, wire, preview=True, max_cost=None)
                raw = codec.encode(requester._call_for_bids(task, 2.0).frame)
                replies = await asyncio.gather(
                    *(grpc_transport.send(p, "RequestBids", raw, 2.0) for p in peers)
                )
                (outcome,) = codec.decode(RequestBidsReply, replies[-1]).outcomes
                verify(outcome, codec.BID_TYPE)

            return requests_only

        async def bare_fanout() -> None:
            request = health_pb2.HealthCheckRequest(service="")
            await asyncio.gather(*(stub.Check(request, timeout=2.0) for stub in health))

        async def full_request() -> None:
            await requester.run(CAPABILITY, {"x": x}, deadline_s=2.0)

        async with Requester(addresses[:1], insecure=insecure) as direct:

            async def direct_execute() -> None:
                await direct.run(CAPABILITY, {"x": x}, deadline_s=2.0)

            # Each row: its label, its call, and the processes serving it (their CPU is its cost).
            rows = [
                ("bare gRPC fan-out", bare_fanout, peer_pids),
                ("auction round", auction_round, peer_pids),
                ("full request (10 peers)", full_request, peer_pids),
                ("direct (1 peer)", direct_execute, peer_pids),
                *(
                    [
                        ("RequestBids fan-out", fanout_to(addresses), peer_pids),
                        ("minimal: fan-out", fanout_to(minimal), minimal_pids),
                        ("minimal: auction round", round_on(minimal), minimal_pids),
                        ("stored replies: fan-out", fanout_to(stored), stored_pids),
                    ]
                    if minimal
                    else []
                ),
            ]
            # Every row once, then again: a repeat's ratios are measured in the same spell.
            runs: dict[str, list[Run]] = {label: [] for label, _, _ in rows}
            for repeat in range(repeats):
                for label, call, served_by in rows:
                    desc = f"{label} ({repeat + 1}/{repeats})" if repeats > 1 else label
                    runs[label].append(await sampled(desc, rounds, call, served_by))
            results = {label: pooled(label_runs) for label, label_runs in runs.items()}
        label = f"connect ({len(addresses)} peers)"
        results[label] = await timed(
            label, max(10, rounds // 10), lambda: first_contact(addresses, insecure), peer_pids
        )
    for label in PER_BID_ROWS:  # one call or one bid per peer per round
        row = results.get(label)
        if row is None:
            continue
        for side in ("requester", "peers"):
            row[f"{side}_cpu_us_per_bid"] = row[f"{side}_cpu_us_per_call"] / len(addresses)
    return results


PER_BID_ROWS = (
    "bare gRPC fan-out",
    "auction round",
    "RequestBids fan-out",
    "minimal: fan-out",
    "minimal: auction round",
    "stored replies: fan-out",
)


async def first_contact(addresses: list[str], insecure: bool) -> None:
    """A fresh pool opens every peer's channel and makes one call on each (so the handshake runs)."""
    from atomic_p2p.channels import ChannelPool

    pool = ChannelPool(allow_plaintext=insecure)
    try:
        await asyncio.gather(*(pool.open(address) for address in addresses))
        request = health_pb2.HealthCheckRequest(service="")
        stubs = [health_pb2_grpc.HealthStub(pool.channel(address)) for address in addresses]
        await asyncio.gather(*(stub.Check(request, timeout=5.0) for stub in stubs))
    finally:
        await pool.close()


async def measure_plaintext(
    addresses: list[str], rounds: int, peer_pids: list[int]
) -> dict[str, dict[str, float]]:
    """The fast rows against the same peers serving plaintext (``--insecure``)."""
    return await measure(addresses, rounds, peer_pids, insecure=True)


async def measure_5ms(addresses: list[str], rounds: int, peer_pids: list[int]) -> dict[str, dict[str, Any]]:
    """Full request, bid-cache hit and direct execution on peers whose model takes 5 ms."""
    import torch

    from atomic_p2p import tensors
    from atomic_p2p.requester import BidPolicy, Requester
    from atomic_p2p.requester.bidpolicy import rebind
    from atomic_p2p.requester.direct import DirectBuyer
    from atomic_p2p.requester.execution import Payload

    x = torch.rand(8, 64)
    wire = (tensors.encode(x, "x"),)
    async with (
        Requester(addresses, bids=BidPolicy(cache=False)) as auctioned,
        Requester(addresses) as cached,
    ):
        buyer = DirectBuyer(auctioned.identity, auctioned._transport)  # the same channels and key
        bids = [await buyer.bid(addresses[0], CAPABILITY, wire)]
        if not bids[0].reusable_ttl_ms:
            raise SystemExit("the 5 ms peers declare no reusable bids")
        payload = Payload(wire, tensors.digest(wire))

        async def direct() -> None:  # one Execute of the same bid under a fresh order, verified
            if bids[0].valid_until_ms - time.time() * 1000 < 2000:  # reuse ends with validity
                bids[0] = await buyer.bid(addresses[0], CAPABILITY, wire)
            fresh = rebind(bids[0], "t", os.urandom(16))
            executed = await buyer._executor.run(fresh.request_id, [fresh], payload, time.monotonic() + 2.0)
            assert executed.success is not None, executed.attempts

        async def full() -> None:
            await auctioned.run(CAPABILITY, {"x": x}, deadline_s=2.0)

        async def from_cache() -> None:
            await cached.run(CAPABILITY, {"x": x}, deadline_s=2.0)

        async def settle() -> None:  # win/loss notices go out in the background: not in the next call
            await auctioned._feedback.drain()
            await cached._feedback.drain()

        calls = {"direct 5ms": direct, "full request 5ms": full, "cached request 5ms": from_cache}
        results = await interleaved(calls, rounds, peer_pids, settle)
        hits = cached.bids.cache.hits
        results["cached request 5ms"]["cache_hit_share"] = hits / (rounds + min(20, rounds))
    return results


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[object]]],
    rounds: int,
    peer_pids: list[int],
    settle: Callable[[], Awaitable[object]],
) -> dict[str, dict[str, Any]]:
    """Like :func:`timed` for several calls taken in turn, round after round, so a noisy spell on
    the shared machine hits them all alike; ``settle`` runs after each call, outside its time
    but inside its CPU (background work the call started is its cost)."""
    for _ in range(min(20, rounds)):
        for call in calls.values():
            await call()
            await settle()
    samples: dict[str, list[float]] = {label: [] for label in calls}
    requester_cpu = dict.fromkeys(calls, 0.0)
    peers_cpu = dict.fromkeys(calls, 0.0)
    for _ in progress(range(rounds), desc="5 ms model", unit="round", leave=False):
        for label, call in calls.items():
            cpu_before, peers_before = time.process_time(), cpu_seconds(peer_pids)
            started = time.perf_counter()
            await call()
            samples[label].append((time.perf_counter() - started) * 1000)
            await settle()
            requester_cpu[label] += time.process_time() - cpu_before
            peers_cpu[label] += cpu_seconds(peer_pids) - peers_before
    return {label: pooled([Run(samples[label], requester_cpu[label], peers_cpu[label])]) for label in calls}


MINIMAL_PEER = "idle minimal peer"
IMPORT_RSS = (
    "import torch",  # what any peer serving a torch model holds
    "import atomic_p2p.cli.peer",  # everything atomic-peer imports before it loads a model
)


def floor_work_us(data_dir: Path, repeats: int = 2000) -> dict[str, float]:
    """What one auction round cannot do without, per peer, timed in this process (us, median of
    five runs): verify the signed BidRequest, run the model on the 8-row preview for its
    confidence, sign the bid; the requester verifies each bid the same way it verifies a request."""
    import torch

    from atomic_p2p.identity import Identity, verify
    from atomic_p2p.peer.node import load_models, serving_threads
    from atomic_p2p.protocol.codec import BID_REQUEST_TYPE, BID_TYPE
    from peers.examples import example_config

    config = example_config("small", data_dir)
    torch.set_num_threads(serving_threads(config))
    (model,) = load_models(config).values()
    preview = (torch.rand(8, 64),)
    key = Identity.generate()
    payload = os.urandom(400)  # a bid is ~400 B
    envelope = key.sign(BID_REQUEST_TYPE, os.urandom(2400))  # a request with one previewed task

    def per_call_us(work: Callable[[], object]) -> float:
        runs = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(repeats // 5):
                work()
            runs.append((time.process_time() - started) / (repeats // 5) * 1e6)
        return statistics.median(runs)

    return {
        "verify_us": per_call_us(lambda: verify(envelope, BID_REQUEST_TYPE)),
        "model_us": per_call_us(lambda: model.preview_confidence(preview)),
        "sign_us": per_call_us(lambda: key.sign(BID_TYPE, payload)),
    }


def import_rss_mb(statement: str) -> float:
    """RSS of a fresh Python process right after ``statement``: the floor under the idle peer."""
    probe = f"{statement}\nimport pathlib\nprint(pathlib.Path('/proc/self/status').read_text())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    status = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout
    return vm_rss_mb(status)


def idle_peer_rss_mb(data_dir: Path, settle_s: float = 3.0) -> float:
    """RSS of a real ``atomic-peer peers/small.toml`` process, ``settle_s`` after it listens."""
    from peers.examples import weights_cache_dir

    command = [sys.executable, "-m", "atomic_p2p.cli.peer", str(ROOT / "peers" / "small.toml")]
    command += ["--data-dir", str(data_dir), "--cache-dir", str(weights_cache_dir())]
    # INFO logs, then the line that says it listens
    return settled_rss_mb(
        "atomic-peer peers/small.toml", command, lambda line: "listening on" in line, settle_s
    )


def minimal_peer_rss_mb(data_dir: Path, settle_s: float = 3.0) -> float:
    """RSS of one minimal peer (scripts/minimal_peer.py) serving the small model over TLS, as a
    process of its own, ``settle_s`` after it listens: what serving that model cannot do without
    (torch, gRPC, the TLS and Ed25519 libraries, the model, a server that has started)."""
    import torch

    from peers.digits import small
    from peers.examples import weights_cache_dir

    data_dir.mkdir(parents=True, exist_ok=True)
    weights = data_dir / "small.pt"
    torch.save({"state": small(weights_cache_dir()).module.state_dict()}, weights)
    command = [sys.executable, str(ROOT / "scripts" / "minimal_peer.py"), "--weights", str(weights)]
    command += ["--data-dir", str(data_dir / "node")]
    return settled_rss_mb(
        "scripts/minimal_peer.py", command, lambda line: True, settle_s
    )  # prints its address


def settled_rss_mb(what: str, command: list[str], listening: Callable[[str], bool], settle_s: float) -> float:
    """Start ``command`` (``what`` names it), read its output until a line says it ``listening``, wait ``settle_s``,
    return its RSS, stop it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if listening(line):
                break
        else:
            raise SystemExit(f"{what} did not start; run it by hand to see why")
        time.sleep(settle_s)
        return vm_rss_mb(Path(f"/proc/{process.pid}/status").read_text())
    finally:
        process.terminate()
        process.wait(timeout=30)


def vm_rss_mb(status: str) -> float:
    """VmRSS of a ``/proc/PID/status`` text, in MB."""
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def verify_rate(count: int = 4000, threads: int = 1) -> float:
    from atomic_p2p.identity import Identity, verify_many

    signer = Identity.generate()
    envelopes = [(signer.sign("atomic.v1.Bid", os.urandom(160)), "atomic.v1.Bid") for _ in range(count)]
    chunks = [envelopes[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = [r for chunk in pool.map(verify_many, chunks) for r in chunk]
    elapsed = time.perf_counter() - started
    assert all(not isinstance(r, Exception) for r in results)
    return count / elapsed


# --------------------------------------------------------------------------- report
def report(
    results: dict[str, dict[str, float]],
    plaintext: dict[str, dict[str, float]],
    rates: dict[str, float],
    rss_mb: float,
    floors: dict[str, float],
    work: dict[str, float],
    args: argparse.Namespace,
) -> dict:
    bare = results["bare gRPC fan-out"]
    auction = results["auction round"]
    full, direct = results["full request (10 peers)"], results["direct (1 peer)"]
    # The round's floor on this stack: the bare fan-out, plus what each peer must do (verify the
    # request, run the model on the preview, sign), one after another for the peers sharing a
    # process (one GIL), plus the requester's check of the last bid to arrive.
    per_peer_ms = (work["verify_us"] + work["model_us"] + work["sign_us"]) / 1000
    peers_per_process = -(-args.peers // args.peer_procs)
    floor_ms = bare["p50_ms"] + peers_per_process * per_peer_ms + work["verify_us"] / 1000
    direct_5ms = results["direct 5ms"]["p50_ms"]
    # The measured floor: the same fan-out to minimal peers (scripts/minimal_peer.py), which do
    # that work and nothing else, in a process like the real peers' and as warm or cold as it.
    minimal_ms = results["minimal: fan-out"]["p50_ms"]

    def same_spell(numerator: str, denominator: str) -> list[float]:
        """Two rows' p50 ratio in each repeat, whose rows ran back to back."""
        pairs = zip(results[numerator]["p50_ms_runs"], results[denominator]["p50_ms_runs"], strict=True)
        return [above / below for above, below in pairs]

    # The transport of these very bytes (stored replies), then the protocol's minimum on top
    # (minimal peers), then everything else a real peer does (the auction round).
    ratio_runs = {
        "auction_vs_bare_p50": same_spell("auction round", "bare gRPC fan-out"),
        "minimal_vs_bare_p50": same_spell("minimal: fan-out", "bare gRPC fan-out"),
        "auction_vs_minimal_p50": same_spell("auction round", "minimal: fan-out"),
        "stored_vs_bare_p50": same_spell("stored replies: fan-out", "bare gRPC fan-out"),
        "minimal_vs_stored_p50": same_spell("minimal: fan-out", "stored replies: fan-out"),
    }
    ratios = {
        **{key: statistics.median(values) for key, values in ratio_runs.items()},
        "minimal_full_vs_direct_5ms": (minimal_ms + direct_5ms) / direct_5ms,
        "floor_vs_bare_p50": floor_ms / bare["p50_ms"],
        "auction_vs_floor_p50": auction["p50_ms"] / floor_ms,
        "floor_full_vs_direct_5ms": (floor_ms + direct_5ms) / direct_5ms,
        "auction_vs_bare_p99": auction["p99_ms"] / bare["p99_ms"],
        "full_vs_direct_p50": full["p50_ms"] / direct["p50_ms"],
        "full_vs_direct_5ms_p50": results["full request 5ms"]["p50_ms"] / results["direct 5ms"]["p50_ms"],
        "cached_vs_direct_5ms_p50": results["cached request 5ms"]["p50_ms"] / results["direct 5ms"]["p50_ms"],
    }
    print(
        f"\nauction benchmark: {args.peers} peers in {args.peer_procs} process(es), {args.rounds} rounds each"
    )
    tls_cost = {
        label: row["p50_ms"] / plaintext[label]["p50_ms"]
        for label, row in results.items()
        if label in plaintext
    }
    print(
        f"  {'what (TLS, the default)':<26}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}"
        f"{'req CPU us':>12}{'peer CPU us':>12}{'plain p50':>11}{'TLS/plain':>11}"
    )
    for label, row in results.items():
        versus = (
            f"{plaintext[label]['p50_ms']:>11.2f}{tls_cost[label]:>10.2f}x"
            if label in plaintext
            else f"{'-':>11}{'-':>11}"
        )
        print(
            f"  {label:<26}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['mean_ms']:>9.2f}"
            f"{row['requester_cpu_us_per_call']:>12.0f}{row['peers_cpu_us_per_call']:>12.0f}{versus}"
        )
    print(
        f"\n  work per peer per round (us): verify request {work['verify_us']:.0f}, model on preview "
        f"{work['model_us']:.0f}, sign bid {work['sign_us']:.0f}"
    )
    print("\n  CPU per bid (us)                 requester    peers")
    for label in PER_BID_ROWS:
        row = results[label]
        print(f"  {label:<32}{row['requester_cpu_us_per_bid']:>9.0f}{row['peers_cpu_us_per_bid']:>9.0f}")

    def spread(key: str) -> str:
        values = ratio_runs[key]
        return f" ({min(values):.2f}-{max(values):.2f} in {len(values)} repeats)" if len(values) > 1 else ""

    repeated = f", median of {args.repeats} repeats" if args.repeats > 1 else ""
    print(f"\n  ratio{repeated:<31}measured   target")
    print(
        f"  auction / bare fan-out, p50        {ratios['auction_vs_bare_p50']:>8.2f}x   <= 2.5x (one process)"
        f"{spread('auction_vs_bare_p50')}"
    )
    print(
        f"    stored replies / bare fan-out     {ratios['stored_vs_bare_p50']:>8.2f}x   (the same bytes, no work)"
        f"{spread('stored_vs_bare_p50')}"
    )
    print(
        f"    minimal peers / bare fan-out      {ratios['minimal_vs_bare_p50']:>8.2f}x   (the measured floor: "
        f"scripts/minimal_peer.py, {minimal_ms:.2f} ms){spread('minimal_vs_bare_p50')}"
    )
    print(
        f"    minimal peers / stored replies    {ratios['minimal_vs_stored_p50']:>8.2f}x   (the protocol's "
        f"minimum, in Python){spread('minimal_vs_stored_p50')}"
    )
    print(
        f"    auction / minimal peers           {ratios['auction_vs_minimal_p50']:>8.2f}x   (what a real peer "
        f"does beyond it){spread('auction_vs_minimal_p50')}"
    )
    print(
        f"    work alone / bare fan-out         {ratios['floor_vs_bare_p50']:>8.2f}x   ({floor_ms:.2f} ms: "
        f"bare + {peers_per_process} x {per_peer_ms * 1000:.0f} us + {work['verify_us']:.0f} us, timed warm)"
    )
    print(f"  auction / bare fan-out, p99        {ratios['auction_vs_bare_p99']:>8.2f}x")
    print(f"  full request / direct, p50         {ratios['full_vs_direct_p50']:>8.2f}x   (1-peer auction)")
    print(f"  full / direct, 5 ms model, p50     {ratios['full_vs_direct_5ms_p50']:>8.2f}x   <= 1.3x")
    print(f"    floor (minimal peers + direct)    {ratios['minimal_full_vs_direct_5ms']:>8.2f}x")
    print(f"    work alone (+ direct)             {ratios['floor_full_vs_direct_5ms']:>8.2f}x")
    print(f"  cached / direct, 5 ms model, p50   {ratios['cached_vs_direct_5ms_p50']:>8.2f}x   <= 1.1x")
    print(
        f"  auction round p50 / p99 (ms)       {auction['p50_ms']:>5.2f} / {auction['p99_ms']:.2f}   <= 7 / 20"
    )
    print(f"  idle peer RSS (MB)                 {rss_mb:>8.0f}    <= 250")
    for statement, mb in floors.items():
        what = statement if statement == MINIMAL_PEER else f"RSS after {statement}"
        print(f"    floor: {what + ' (MB)':<37}{mb:>5.0f}")
    print(
        f"\n  Ed25519 verifications/s, 1 thread  {rates['verify_per_s_1_thread']:>10,.0f}   >= 7,000 per core"
    )
    print(f"  Ed25519 verifications/s, 2 threads {rates['verify_per_s_2_threads']:>10,.0f}")
    return {
        "peers": args.peers,
        "peer_procs": args.peer_procs,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "latency": results,
        "latency_plaintext": plaintext,
        "tls_vs_plaintext_p50": tls_cost,
        "ratios": ratios,
        "ratio_runs": ratio_runs,
        "cpu_us_per_bid": {
            "requester": auction["requester_cpu_us_per_bid"],
            "peers": auction["peers_cpu_us_per_bid"],
            "bare_requester": bare["requester_cpu_us_per_bid"],
            "bare_peers": bare["peers_cpu_us_per_bid"],
            "minimal_peers": results["minimal: fan-out"]["peers_cpu_us_per_bid"],
            "stored_reply_peers": results["stored replies: fan-out"]["peers_cpu_us_per_bid"],
        },
        "peer_idle_rss_mb": rss_mb,
        "peer_rss_floor_mb": floors,
        "floor": {
            "minimal_round_ms": minimal_ms,
            "round_ms": floor_ms,
            "peers_per_process": peers_per_process,
            **work,
        },
        "ed25519": rates,
    }


def run_farm(
    args: argparse.Namespace,
    data_dir: Path,
    measurement: Callable[[list[str], int, list[int]], Awaitable[dict[str, dict[str, float]]]],
    extra_ms: float = 0.0,
    reuse_s: float = 0.0,
    insecure: bool = False,
) -> dict[str, dict[str, float]]:
    """Start the peer processes, take ``measurement`` against them, stop them."""
    farms, addresses = start_farms(args.peers, args.peer_procs, data_dir, extra_ms, reuse_s, insecure)
    try:
        return asyncio.run(measurement(addresses, args.rounds, [farm.pid for farm in farms]))
    finally:
        stop_farms(farms)


def stop_farms(farms: list[subprocess.Popen[str]]) -> None:
    for farm in farms:
        assert farm.stdin is not None
        farm.stdin.close()
    for farm in farms:
        farm.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--peer-procs", type=int, default=1, help="processes the peers are split across")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="measure the fast rows this many times in turn (each `--rounds` rounds); ratios are the median",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench_auction.json")
    parser.add_argument("--serve-peers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--extra-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--reuse-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--insecure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--minimal", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stored", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_peers is not None and args.minimal:
        asyncio.run(serve_minimal(args.serve_peers, args.data_dir, args.insecure, args.stored))
        return 0
    if args.serve_peers is not None:
        asyncio.run(serve_peers(args.serve_peers, args.data_dir, args.extra_ms, args.reuse_s, args.insecure))
        return 0
    with tempfile.TemporaryDirectory(prefix="atomic-bench-") as tmp:
        fast = functools.partial(measure, minimal_dir=Path(tmp) / "floors", repeats=args.repeats)
        results = run_farm(args, Path(tmp) / "fast", fast)
        plaintext = run_farm(args, Path(tmp) / "plain", measure_plaintext, insecure=True)
        results.update(run_farm(args, Path(tmp) / "5ms", measure_5ms, extra_ms=5.0, reuse_s=60.0))
        rss_mb = idle_peer_rss_mb(Path(tmp) / "idle")
        minimal_rss_mb = minimal_peer_rss_mb(Path(tmp) / "idle-minimal")
        work = floor_work_us(Path(tmp) / "floor")
    floors = {statement: import_rss_mb(statement) for statement in IMPORT_RSS}
    floors[MINIMAL_PEER] = minimal_rss_mb
    rates = {
        "verify_per_s_1_thread": verify_rate(threads=1),
        "verify_per_s_2_threads": verify_rate(threads=2),
    }
    document = report(results, plaintext, rates, rss_mb, floors, work, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
