"""Test helpers: example peers in-process, and a requester that builds messages by hand.

Example peers (the configs in ``peers/`` of a source checkout)::

    async with running_peers(["small", "large"], tmp_path) as (small, large):
        small.address, small.peer_id, small.models["digits-small"]

Every example peer gets its own ``data_dir`` under ``tmp_path``, port 0, and one shared
trained-weight cache (:func:`weights_cache_dir`), so only the first test of a session trains.

:class:`HandBuyer` speaks the wire protocol with the generated stub and hand-signed messages,
independent of the requester SDK, so protocol tests can forge, replay and tamper at will and the
SDK and the peer can each be checked against a second implementation::

    async with HandBuyer(node.address) as buyer:
        response = await buyer.request_bids([buyer.task("t1", batch=4)])
        bid = response.outcomes[0].bid
        result = await buyer.execute(bid, [buyer.inputs(4)])

:func:`peer_processes` starts real ``atomic-peer`` processes from config tables (written as TOML)
and yields their addresses once each has printed its listening line::

    async with peer_processes([table_a, table_b], tmp_path) as (a, b):
        a.address, a.models, a.log
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import grpc
import tomli_w
import torch

from atomic_p2p._proto.atomic.v1 import envelope_pb2, market_pb2, market_pb2_grpc
from atomic_p2p._wire import envelope_to_proto, payload_type, spec_to_proto, tensor_to_proto
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import PeerConfig, load_config
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.tensors import WireTensor, digest, encode

PEERS_DIR = Path(__file__).resolve().parent.parent / "peers"
EXPERIMENTS_DIR = PEERS_DIR.parent / "scripts" / "experiments"
EXAMPLE_PEERS = ("small", "large", "specialist", "slow", "small-fixed", "large-discount")
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 128 * 1024 * 1024),
    ("grpc.max_send_message_length", 128 * 1024 * 1024),
]


def weights_cache_dir() -> Path:
    """Where example peers in tests keep trained weights: ``$ATOMIC_P2P_WEIGHTS_CACHE``, else a
    per-user directory under the system temp dir. Entries are keyed by recipe and source, so
    sharing it across runs is safe."""
    override = os.environ.get("ATOMIC_P2P_WEIGHTS_CACHE")
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"atomic-p2p-weights-{os.getuid()}"


def example_config(
    name: str, tmp_path: Path, *, model_overrides: Mapping[str, Any] | None = None, **overrides: Any
) -> PeerConfig:
    """``peers/<name>.toml`` set up for a test: data_dir under ``tmp_path``, port 0, shared weights.

    ``overrides`` replace :class:`PeerConfig` fields (``queue_limit=1``); ``model_overrides``
    replace :class:`ModelConfig` fields of every model (``extra_latency_ms=500``).
    """
    path = PEERS_DIR / f"{name}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no example peer {name!r}; there are {', '.join(EXAMPLE_PEERS)}")
    config = load_config(path)
    models = tuple(dataclasses.replace(m, **(model_overrides or {})) for m in config.models)
    settings: dict[str, Any] = {"data_dir": tmp_path / name, "port": 0, "cache_dir": weights_cache_dir()}
    settings.update(overrides)
    return dataclasses.replace(config, models=models, **settings)


async def start_example_peers(names: Sequence[str], tmp_path: Path, **overrides: Any) -> list[PeerNode]:
    """Start one in-process node per example name (``overrides`` as for :func:`example_config`)."""
    nodes: list[PeerNode] = []
    try:
        for name in names:  # one at a time: a first run trains, and two trainings only contend
            nodes.append(await PeerNode.start(example_config(name, tmp_path, **overrides)))
    except BaseException:
        for node in nodes:
            await node.stop()
        raise
    return nodes


@contextlib.asynccontextmanager
async def running_peers(
    names: Sequence[str], tmp_path: Path, **overrides: Any
) -> AsyncIterator[list[PeerNode]]:
    """:func:`start_example_peers`, stopped on exit."""
    nodes = await start_example_peers(names, tmp_path, **overrides)
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.stop(grace=1.0)


LISTENING = re.compile(r"^atomic-peer ([0-9a-f]{8}) listening on (\S+) hosting (.+)$")


def peer_command() -> list[str]:
    """The installed ``atomic-peer`` console script when there is one, else the same entry point."""
    script = shutil.which("atomic-peer", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "atomic_p2p.cli.peer"]


@dataclasses.dataclass
class PeerProcess:
    """A running ``atomic-peer`` process started by :func:`peer_processes`."""

    name: str
    process: asyncio.subprocess.Process
    address: str
    peer_id_short: str
    models: list[str]
    config: Path
    log: Path


@contextlib.asynccontextmanager
async def peer_processes(
    tables: Sequence[Mapping[str, Any]],
    workdir: Path,
    *,
    start_timeout_s: float = 120.0,
    stop_grace_s: float = 10.0,
    threads: int | None = 1,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[list[PeerProcess]]:
    """Start one ``atomic-peer`` process per config table; stop them all (SIGTERM, then SIGKILL).

    Each table (what a peer TOML file holds: ``{"peer": {...}, "models": [...]}``) is written to
    ``workdir/<name>/peer.toml``, where ``<name>`` is ``[peer] name`` (or ``peer-<i>``); the process
    listens on 127.0.0.1 port 0, keeps its data under ``workdir/<name>/data`` and its stderr in
    ``workdir/<name>/peer.log``. ``threads`` sets OMP_NUM_THREADS for the peers (1 by default:
    several peers share few cores, and one thread keeps their arithmetic the same as a
    single-threaded in-process run); None leaves the environment alone.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started: list[PeerProcess] = []
    logs = []
    try:
        pending = []
        for index, table in enumerate(tables):
            name = str(table.get("peer", {}).get("name") or f"peer-{index}")
            home = workdir / name
            home.mkdir(parents=True, exist_ok=True)
            config = home / "peer.toml"
            config.write_text(tomli_w.dumps(dict(table)))
            log_path = home / "peer.log"
            log = log_path.open("wb")
            logs.append(log)
            process = await asyncio.create_subprocess_exec(
                *peer_command(),
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(home / "data"),
                *extra_args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
            started.append(PeerProcess(name, process, "", "", [], config, log_path))
            pending.append(_listening(started[-1], start_timeout_s))
        await asyncio.gather(*pending)
        yield started
    finally:
        await _stop_processes(started, stop_grace_s)
        for log in logs:
            log.close()


async def _listening(peer: PeerProcess, timeout_s: float) -> None:
    assert peer.process.stdout is not None
    try:
        line = await asyncio.wait_for(peer.process.stdout.readline(), timeout_s)
    except TimeoutError:
        raise RuntimeError(
            f"peer {peer.name} did not start within {timeout_s:.0f} s; see {peer.log}"
        ) from None
    match = LISTENING.match(line.decode().strip())
    if match is None:
        code = await peer.process.wait() if not line else None
        tail = peer.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"peer {peer.name} printed {line!r} (exit {code}) instead of listening:\n{tail}")
    peer.peer_id_short, peer.address = match.group(1), match.group(2)
    peer.models = [model.strip() for model in match.group(3).split(",")]


async def _stop_processes(peers: Sequence[PeerProcess], grace_s: float) -> None:
    for peer in peers:
        if peer.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                peer.process.send_signal(signal.SIGTERM)

    async def reap(peer: PeerProcess) -> None:
        try:
            await asyncio.wait_for(peer.process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(peer.process.pid, signal.SIGKILL)
            await peer.process.wait()

    await asyncio.gather(*(reap(peer) for peer in peers))


def load_experiment(name: str) -> ModuleType:
    """Import ``scripts/experiments/<name>.py`` of a source checkout (scripts/ is not a package)
    under its own name, once, with its folder on ``sys.path``: the scripts import ``common`` and
    each other by name, and dataclasses look their module up in ``sys.modules``."""
    path = EXPERIMENTS_DIR / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    if str(EXPERIMENTS_DIR) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS_DIR))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no experiment script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def digits_batch(batch: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` real digits images as float32 [B, 64] in [0, 1], and their labels."""
    x, y = _digits()
    return x[offset : offset + batch].clone(), y[offset : offset + batch].clone()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target, dtype=torch.int64)


class HandBuyer:
    """A requester that signs every message by hand and calls a peer through the raw stub."""

    def __init__(self, address: str, identity: Identity | None = None) -> None:
        self.address = address
        self.identity = identity or Identity.generate()
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = market_pb2_grpc.PeerStub(self.channel)

    async def __aenter__(self) -> HandBuyer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.channel.close()

    def raw(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """``/atomic.v1.Peer/<method>`` taking and returning raw bytes (for garbage tests)."""
        return self.channel.unary_unary(f"/atomic.v1.Peer/{method}")

    # --- building messages --------------------------------------------------------------------

    @staticmethod
    def inputs(batch: int, *, name: str = "x", offset: int = 0) -> WireTensor:
        return encode(digits_batch(batch, offset)[0], name)

    @staticmethod
    def task(
        task_id: str = "t1",
        batch: int = 4,
        *,
        capability: str = "classify/digits",
        model_id: str = "",
        dtype: str = "float32",
        shape: Sequence[int] | None = None,
        preview: Sequence[WireTensor] = (),
        max_cost: float = 0.0,
    ) -> bytes:
        """Serialized TaskSpec bytes (what BidRequest.tasks carries)."""
        spec = market_pb2.TaskSpec(
            task_id=task_id,
            capability=capability,
            model_id=model_id,
            inputs=[spec_to_proto("x", dtype, shape if shape is not None else (batch, 64))],
            preview=[tensor_to_proto(wire) for wire in preview],
            max_cost=max_cost,
        )
        return spec.SerializeToString()

    def bid_request(
        self,
        tasks: Sequence[bytes],
        *,
        request_id: bytes | None = None,
        issued_at_ms: int | None = None,
        deadline_ms: int | None = None,
        signer: Identity | None = None,
        gradient_mode: bool = False,
    ) -> market_pb2.RequestBidsRequest:
        now = now_ms()
        payload = market_pb2.BidRequest(
            request_id=request_id or secrets.token_bytes(16),
            requester_id=self.identity.peer_id.raw,
            issued_at_ms=now if issued_at_ms is None else issued_at_ms,
            deadline_ms=now + 30_000 if deadline_ms is None else deadline_ms,
            tasks=list(tasks),
            gradient_mode=gradient_mode,
        )
        return market_pb2.RequestBidsRequest(request=self.sign(payload, signer))

    def order(
        self,
        bid: envelope_pb2.SignedEnvelope,
        inputs: Sequence[WireTensor],
        *,
        deadline_ms: int | None = None,
        inputs_digest: bytes | None = None,
        signer: Identity | None = None,
    ) -> market_pb2.ExecuteRequest:
        terms = market_pb2.Bid.FromString(bid.payload)
        now = now_ms()
        order = market_pb2.ExecuteOrder(
            request_id=terms.request_id,
            task_id=terms.task_id,
            bid_digest=hashlib.sha256(bid.payload).digest(),
            issued_at_ms=now,
            inputs_digest=digest(inputs) if inputs_digest is None else inputs_digest,
            deadline_ms=now + 30_000 if deadline_ms is None else deadline_ms,
        )
        return market_pb2.ExecuteRequest(
            order=self.sign(order, signer), bid=bid, inputs=[tensor_to_proto(w) for w in inputs]
        )

    def feedback(
        self,
        bid: envelope_pb2.SignedEnvelope,
        kind: str = "win",
        *,
        signer: Identity | None = None,
        **fields: Any,
    ) -> market_pb2.FeedbackRequest:
        terms = market_pb2.Bid.FromString(bid.payload)
        notice = market_pb2.FeedbackNotice(
            request_id=terms.request_id,
            task_id=terms.task_id,
            requester_id=(signer or self.identity).peer_id.raw,
            kind=market_pb2.FeedbackKind.Value(f"FEEDBACK_KIND_{kind.upper()}"),
            issued_at_ms=now_ms(),
            model_id=terms.model_id,
            **fields,
        )
        return market_pb2.FeedbackRequest(notice=self.sign(notice, signer))

    def gradient(
        self,
        bid: envelope_pb2.SignedEnvelope,
        loss_grad: Sequence[float] = (),
        *,
        signer: Identity | None = None,
        **fields: Any,
    ) -> market_pb2.BidGradientRequest:
        """A signed BidGradientUpdate for ``bid`` (``share_grad``, ``price``, ... as fields)."""
        terms = market_pb2.Bid.FromString(bid.payload)
        update = market_pb2.BidGradientUpdate(
            request_id=terms.request_id,
            task_id=terms.task_id,
            requester_id=(signer or self.identity).peer_id.raw,
            loss_grad=list(loss_grad),
            issued_at_ms=now_ms(),
            **fields,
        )
        return market_pb2.BidGradientRequest(update=self.sign(update, signer))

    def sign(self, message: Any, signer: Identity | None = None) -> envelope_pb2.SignedEnvelope:
        identity = signer or self.identity
        return envelope_to_proto(identity.sign(payload_type(type(message)), message.SerializeToString()))

    # --- calling ------------------------------------------------------------------------------

    async def request_bids(self, tasks: Sequence[bytes], **fields: Any) -> market_pb2.RequestBidsResponse:
        response: market_pb2.RequestBidsResponse = await self.stub.RequestBids(
            self.bid_request(tasks, **fields), timeout=30
        )
        return response

    async def win(self, batch: int = 4, **task_fields: Any) -> envelope_pb2.SignedEnvelope:
        """Ask for bids on one task and return the bid envelope (fails if the peer declines)."""
        response = await self.request_bids([self.task("t1", batch, **task_fields)])
        outcome = response.outcomes[0]
        if not outcome.HasField("bid"):
            raise AssertionError(f"the peer declined: {outcome.no_bid}")
        return outcome.bid

    async def execute(
        self, bid: envelope_pb2.SignedEnvelope, inputs: Sequence[WireTensor], **fields: Any
    ) -> market_pb2.ExecuteResponse:
        response: market_pb2.ExecuteResponse = await self.stub.Execute(
            self.order(bid, inputs, **fields), timeout=60
        )
        return response
