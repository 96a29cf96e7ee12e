"""A running peer: its key, its hosted models, its executor and its gRPC server.

Contract
--------
``node = await PeerNode.start(config)`` loads (or creates, mode 0600) ``data_dir/key.pem`` and
the TLS key and certificate bound to it (``data_dir/tls-key.pem``, ``tls-cert.pem``;
:mod:`atomic_p2p.tls`), loads every model in the config (training or reading cached weights; on
CUDA when there is one), binds ``host:port`` with TLS (plaintext with ``config.insecure``; port 0:
any free port; see :attr:`PeerNode.address`) and serves ``atomic.v1.Peer``,
``grpc.health.v1.Health`` and server reflection.

``await node.drain(timeout)`` stops taking new work: new RequestBids and Execute calls get
UNAVAILABLE and health says NOT_SERVING, while calls already admitted run to completion.
``await node.stop()`` drains (if not yet drained) and closes the server. ``async with node:``
stops on exit. The node never stops serving because of a bad request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType, TracebackType

import grpc
import torch
from grpc_health.v1 import health, health_pb2

from atomic_p2p import metrics
from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import ConfigError
from atomic_p2p.gossip import GossipConfig, LoadSummary, ModelAdvert
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.guard import SourceLimits
from atomic_p2p.identity import Identity, PeerId
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.latency import LatencyProbe
from atomic_p2p.peer.models import HostedModel, default_device
from atomic_p2p.peer.seller import Seller
from atomic_p2p.peer.server import SERVICE_NAME, PeerService, build_server, wall_ms
from atomic_p2p.peer.strategies import Strategy
from atomic_p2p.peer.strategies.journal import JOURNAL_NAME, StrategyJournal
from atomic_p2p.peer.workers import WorkerPool
from atomic_p2p.tensors import DEFAULT_LIMITS, TensorLimits
from atomic_p2p.tls import TlsCredentials, parse_address

log = logging.getLogger(__name__)

# After drain, how long in-flight RPCs get to send their (already computed) answers.
STOP_GRACE_S = 5.0
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


class NodeState(Enum):
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


def serving_threads(config: PeerConfig, cores: int | None = None) -> int:
    """torch intra-op threads for a node: ``torch_threads``, or the cores shared among the
    ``max_concurrency`` workers that run models at once (at least 1). torch's own default, every
    core for every call, makes concurrent calls fight over the same cores: on a busy 2-core
    machine one 160-row forward pass of a small MLP took 10 ms with 2 threads and 58 us with 1."""
    if config.torch_threads:
        return config.torch_threads
    return max(1, (cores or os.cpu_count() or 1) // config.max_concurrency)


class PeerNode:
    """Use :meth:`start`; the constructor only assembles parts that are already running."""

    def __init__(
        self,
        config: PeerConfig,
        identity: Identity,
        models: Mapping[str, HostedModel],
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        port: int,
        limits: TensorLimits = DEFAULT_LIMITS,
        tls_credentials: TlsCredentials | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.tls = tls_credentials  # None: serving plaintext (config.insecure)
        self._models = MappingProxyType(dict(models))
        self._server = server
        self._health = health_servicer
        self._port = port
        # The node's state lives here, and only here: the service and the seller ask for it.
        self.state = NodeState.SERVING
        self.gossip: GossipAgent | None = None
        self.journal = StrategyJournal(config.data_dir / JOURNAL_NAME)
        # Every outgoing call this node makes (gossip) goes through this pool and its FaultPlan.
        self._pool = ChannelPool(faults=config.faults, allow_plaintext=config.insecure)
        self.workers: WorkerPool[bytes] = WorkerPool(
            max_concurrency=config.max_concurrency,
            queue_limit=config.queue_limit,
            # A retry needs a live bid, and the bid book forgets bids after this long.
            result_ttl_s=config.bid_validity_s + config.replay_window_s,
            max_results=config.max_remembered,
        )
        self.seller = Seller(
            identity=identity,
            models=self._models,
            config=config,
            started_at_ms=wall_ms(),
            limits=limits,
            clock=wall_ms,
            record_seq=self._record_seq,
            learned=self._learned,
        )
        self.service = PeerService(
            self.seller,
            self.workers,
            draining=lambda: self.draining,
            gossip=lambda: self.gossip,
            limits=SourceLimits(config.guard),
        )
        self.latency_probe = LatencyProbe(
            self._models, config.latency_probe_s, lambda: self.workers.load(self.draining)
        )

    @classmethod
    async def start(
        cls,
        config: PeerConfig,
        identity: Identity | None = None,
        *,
        device: torch.device | None = None,
        limits: TensorLimits = DEFAULT_LIMITS,
    ) -> PeerNode:
        """Load the key, bind, load the models, serve; see the module docstring."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(serving_threads(config))
        if identity is None:
            identity = Identity.load_or_create(config.key_path)
        for seed in config.bootstrap:
            parse_address(seed)  # a malformed PEERID@ fails here, not in every gossip round
        credentials = None if config.insecure else TlsCredentials.load_or_create(config.data_dir, identity)
        server, health_servicer = build_server(
            max_message_bytes=config.max_message_bytes, max_pending_calls=config.guard.max_pending_calls
        )
        port = _bind(
            server, config, credentials
        )  # before the models: a busy port should not cost a training run
        node: PeerNode | None = None
        try:
            models = await asyncio.to_thread(load_models, config, device)
            node = cls(config, identity, models, server, health_servicer, port, limits, credentials)
            server.add_generic_rpc_handlers((node.service.handler(),))
            await server.start()
        except BaseException:
            await server.stop(None)  # release the port
            if node is not None:
                node.workers.close()
                node.journal.close()
            raise
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        await node._start_gossip()
        node.latency_probe.start()
        metrics.watch(node, metrics.peer_reading)
        security = "plaintext (--insecure)" if credentials is None else "TLS"
        log.info(
            "peer %s serving %s on %s: %s", identity.peer_id.short, security, node.address, ", ".join(models)
        )
        return node

    @property
    def address(self) -> str:
        """``host:port`` to dial this node at (a wildcard bind is reported as 127.0.0.1)."""
        host = "127.0.0.1" if self.config.host in _WILDCARD_HOSTS else self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self._port}"

    @property
    def advertised_address(self) -> str:
        return self.config.advertise or self.address

    @property
    def dial_address(self) -> str:
        """``PEERID@host:port``: the advertised address with the peer id a client must find there
        (a bootstrap address that checks first contact)."""
        return f"{self.peer_id.hex}@{self.advertised_address}"

    async def _start_gossip(self) -> None:
        config = self.config
        self.gossip = GossipAgent(
            self.identity,
            GossipConfig(interval=config.gossip_interval_s, fanout=config.gossip_fanout),
            addresses=[self.advertised_address],
            models=[advert(model) for model in self._models.values()],
            seeds=config.bootstrap,
            pool=self._pool,
            load=self._load_summary,
            tls_certificate=self.tls.certificate_der if self.tls is not None else b"",
        )
        await self.gossip.start()

    def _record_seq(self) -> int:
        return self.gossip.membership.local_record.seq if self.gossip is not None else 0

    def _learned(self, model_id: str, strategy: Strategy) -> None:
        self.journal.append(model_id, strategy)

    def _load_summary(self) -> LoadSummary:
        load = self.workers.load(self.draining)
        return LoadSummary(load.in_flight, load.capacity, load.in_flight / max(1, load.capacity))

    @property
    def port(self) -> int:
        return self._port

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def models(self) -> Mapping[str, HostedModel]:
        return self._models

    @property
    def draining(self) -> bool:
        return self.state is not NodeState.SERVING

    async def drain(self, timeout: float = 30.0) -> bool:
        """Take no new work and wait for admitted work; True when all of it finished in time."""
        if self.state is NodeState.SERVING:
            self.state = NodeState.DRAINING
            await self._health.enter_graceful_shutdown()
            log.info("peer %s draining", self.peer_id.short)
        finished = await self.workers.drain(timeout)
        if not finished:
            log.warning("peer %s: work still running after %.1f s of draining", self.peer_id.short, timeout)
        return finished

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        if self.state is NodeState.STOPPED:
            return
        await self.latency_probe.stop()
        await self.drain(grace)
        if self.gossip is not None:
            await self.gossip.stop(leave=True)  # a signed leave, so others stop soliciting us now
        await self._pool.close()
        await self._server.stop(grace)
        self.workers.close()
        self.journal.close()
        self.state = NodeState.STOPPED
        metrics.unwatch(self)
        log.info("peer %s stopped", self.peer_id.short)

    async def __aenter__(self) -> PeerNode:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


# Allocations of tracked objects between young collections in a serving process (Python's own
# default is 700). See freeze_heap.
YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_heap() -> None:
    """Collect once, then keep every object alive now out of the cyclic collector's walks
    (:func:`gc.freeze`): what start-up built (torch's ~190,000 objects, the models, the server)
    stays for the life of the process, yet each full collection walked all of it, ~40 ms here,
    about once a second at a thousand bids a second. For a process that serves from now on
    (``atomic-peer`` calls it once its node listens); cycles among frozen objects are never
    collected, so not for a process that keeps starting and dropping nodes (tests).

    Then young collections run every :data:`YOUNG_COLLECTION_THRESHOLD` allocations instead of
    700: a peer answering ~16,000 bids a second (``scripts/bench_batching.py``) ran one every
    ~70 bids, and each one moved the bids its book keeps a step closer to a full collection,
    which walks all of them: the collector took 5.5% of the peers' CPU, and 1% after. What waits
    for the next young collection is at most that many objects."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def advert(model: HostedModel) -> ModelAdvert:
    """How a hosted model is advertised in the node's gossip record."""
    config = model.config
    return ModelAdvert.with_contract(
        model.contract,
        model_id=model.model_id,
        capabilities=model.capabilities,
        constraints=config.constraints,
        price_hint=config.price_per_example,
        resources=config.resources,
        typical_latency_ms=model.expected_latency_ms,
        strategy=config.strategy,
        takes_text=model.tokenizer is not None,
    )


def load_models(config: PeerConfig, device: torch.device | None = None) -> dict[str, HostedModel]:
    """Build every hosted model of a config (blocking: factories may train)."""
    device = device or default_device()
    models: dict[str, HostedModel] = {}
    for model_config in config.models:
        model = HostedModel.load(model_config, config.weights_dir, device)
        accuracy = f"{model.validation_accuracy:.3f}" if model.accuracy_known else "n/a"
        log.info(
            "model %s (%s) on %s: held-out accuracy %s, %.2f ms per call",
            model.model_id,
            model.contract.describe(model.max_batch),
            device,
            accuracy,
            model.latency.value,
        )
        models[model.model_id] = model
    return models


def _bind(server: grpc.aio.Server, config: PeerConfig, credentials: TlsCredentials | None) -> int:
    target = f"{config.host}:{config.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(target)
        else:
            port = server.add_secure_port(target, credentials.server_credentials())
    except RuntimeError as exc:  # gRPC's text only says "failed to bind" and how to debug gRPC
        log.debug("binding %s failed: %s", target, exc)
        port = 0
    if not port:
        raise ConfigError(
            f"cannot listen on {target}: the port is in use or the address is not on this machine; "
            "pick a free port with --port (or --port 0 for any free port), or another --host"
        )
    return port
