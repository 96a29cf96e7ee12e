"""``atomic-peer``: run a peer node from one or more TOML configs.

    atomic-peer peers/small.toml
    atomic-peer peers/small.toml peers/slow.toml --port 50051 --data-dir /tmp/p1

Several configs make one node hosting every model they list: node settings (the ``[peer]``
table) come from the first file, models from all of them (model ids must differ).

Joining a network: ``--bootstrap ADDR`` (repeatable) names seed peers to gossip with first
(``PEERID@host:port`` checks the seed's identity on first contact; the node logs its own such
address at startup); ``--advertise HOST:PORT`` is the address others should dial (needed behind a
wildcard ``--host``). The node serves TLS bound to its key (``data_dir/tls-key.pem``,
``tls-cert.pem``; docs/security.md); ``--insecure`` serves plaintext and talks to plaintext peers,
for debugging only.
``--fault-*`` flags inject delay, jitter and loss into this node's outgoing calls for testing
(field by field over ``ATOMIC_P2P_FAULTS``; see :mod:`atomic_p2p.faults`).

Once serving, one line goes to stdout, so scripts can wait for it::

    atomic-peer 1a2b3c4d listening on 127.0.0.1:50051 hosting digits-small, digits-small-slow

With ``--metrics-port`` a second line follows it:
``atomic-peer 1a2b3c4d metrics on http://127.0.0.1:9100/metrics``. ``--log-format json`` writes
the logs on stderr as JSON lines (:mod:`atomic_p2p.cli.observability`).

SIGTERM or SIGINT drains: new work is refused (UNAVAILABLE), work in flight completes, then the
process exits 0. A bad config or a busy port prints what to change and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomic_p2p.cli import observability
from atomic_p2p.cli.arguments import non_negative, positive, positive_int
from atomic_p2p.cli.exits import closed_pipe
from atomic_p2p.errors import AtomicError, ConfigError
from atomic_p2p.faults import FaultPlan
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.peer.config import PeerConfig, load_configs
from atomic_p2p.peer.node import PeerNode, freeze_heap
from atomic_p2p.tls import parse_address

if TYPE_CHECKING:
    from atomic_p2p.metrics import MetricsServer

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_DRAIN_S = 30.0

log = logging.getLogger("atomic_p2p.cli.peer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomic-peer",
        description="Host models on the atomic-p2p market: bid for microtasks and execute won bids.",
        epilog="Several configs: one node hosting all their models; [peer] settings come from the first.",
    )
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG.toml", help="peer config file(s)")
    parser.add_argument("--host", help="address to listen on (overrides [peer] host)")
    parser.add_argument(
        "--port", type=int, help="port to listen on; 0 = any free port (overrides [peer] port)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where key.pem and cached weights live (overrides data_dir)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="trained-weight cache, shareable between peers (overrides cache_dir)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext and talk to plaintext peers (debugging only; default: TLS bound to the "
        "node's key, plaintext peers refused)",
    )
    _add_gossip_arguments(parser)
    _add_fault_arguments(parser)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_S,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight work may take to finish (default {DEFAULT_DRAIN_S:g})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity on stderr (default INFO)",
    )
    observability.add_arguments(parser)
    return parser


def _add_gossip_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gossip")
    group.add_argument(
        "--bootstrap",
        action="append",
        type=_seed,
        metavar="ADDR",
        help="host:port of a peer to join the network through, or PEERID@host:port to require "
        "that peer id there (else its certificate is trusted on first use); repeat for several "
        "(replaces [peer] bootstrap)",
    )
    group.add_argument(
        "--advertise",
        type=_address,
        metavar="HOST:PORT",
        help="the address other peers should dial (default: the bound address)",
    )
    group.add_argument(
        "--gossip-interval",
        type=positive,
        metavar="S",
        help="seconds between gossip rounds (overrides gossip_interval_s, default 1)",
    )
    group.add_argument(
        "--gossip-fanout",
        type=positive_int,
        metavar="K",
        help="members contacted per round (overrides gossip_fanout, default 3)",
    )


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "fault injection (outgoing calls of this node; each flag overrides ATOMIC_P2P_FAULTS)"
    )
    group.add_argument("--fault-delay-ms", type=non_negative, metavar="MS", help="added to every call")
    group.add_argument(
        "--fault-jitter-ms", type=non_negative, metavar="MS", help="plus a uniform random 0..MS"
    )
    group.add_argument(
        "--fault-loss", type=non_negative, metavar="P", help="probability a call is dropped (UNAVAILABLE)"
    )
    group.add_argument(
        "--fault-seed", type=int, metavar="N", help="seed of the fault RNG (reproducible runs)"
    )


def _seed(text: str) -> str:
    try:
        address, _ = parse_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    _address(address)
    return text


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port (e.g. 127.0.0.1:50051)")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    observability.configure_logging(args.log_level, args.log_format)
    metrics_server = None
    try:
        config = config_from_args(args)
        check_port_free(config.host, config.port)
        metrics_server = observability.start_metrics(args)
        return asyncio.run(serve(config, drain_timeout=args.drain_timeout, metrics=metrics_server))
    except BrokenPipeError:  # whoever read the "listening" line has gone
        return closed_pipe()
    except AtomicError as exc:  # a bad config, key file or port: say what to change
        print(f"atomic-peer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if metrics_server is not None:
            metrics_server.close()


def config_from_args(args: argparse.Namespace) -> PeerConfig:
    config = load_configs(args.configs)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port; use 0..65535 (0 = any free port)")
    data_dir = args.data_dir.expanduser().resolve() if args.data_dir else None
    cache_dir = args.cache_dir.expanduser().resolve() if args.cache_dir else None
    return config.with_overrides(
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        cache_dir=cache_dir,
        bootstrap=tuple(args.bootstrap) if args.bootstrap else None,
        advertise=args.advertise,
        gossip_interval_s=args.gossip_interval,
        gossip_fanout=args.gossip_fanout,
        faults=fault_plan(args),
        insecure=args.insecure or None,
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on before the models load (seconds, or minutes of
    training) and before gRPC's C core prints its own bind failure; gRPC's bind still decides."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError):
        return  # not an address we can try here: gRPC's bind reports it
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as error:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {error.strerror or error}; pick a free port with "
                "--port (or --port 0 for any free port), or another --host"
            ) from None


def fault_plan(args: argparse.Namespace) -> FaultPlan | None:
    """The environment's plan with the ``--fault-*`` flags given laid over it; None without flags."""
    given: dict[str, Any] = {
        field: value
        for field, value in (
            ("delay_ms", args.fault_delay_ms),
            ("jitter_ms", args.fault_jitter_ms),
            ("loss", args.fault_loss),
            ("seed", args.fault_seed),
        )
        if value is not None
    }
    if not given:
        return None  # the node's channel pool reads ATOMIC_P2P_FAULTS itself
    return dataclasses.replace(FaultPlan.from_env(), **given)  # FaultPlan checks the ranges


async def watch_bootstrap(
    agent: GossipAgent, seeds: Sequence[str], *, first_s: float = 2.0, longest_s: float = 60.0
) -> None:
    """Until the first gossip exchange succeeds: warn which seeds were tried, how often, how they
    failed and when each is tried next, after ``first_s``, then at doubling intervals up to
    ``longest_s``; gossip retries each seed with exponential backoff meanwhile
    (``GossipConfig.seed_backoff_max_s``). Logs once when the node has joined."""
    started, wait = time.monotonic(), first_s
    while not await agent.wait_until(lambda: agent.exchanges_completed > 0, wait):
        now = agent.now()
        tried = ", ".join(
            f"{seed} ({agent.failures[seed]} tries, last {agent.last_failure.get(seed, 'no answer yet')}, "
            f"next in {agent.membership.seed_retry_s(seed, now):.0f} s)"
            for seed in seeds
        )
        log.warning(
            "no gossip answer from the bootstrap peers after %.0f s: tried %s; retrying with backoff "
            "(is an atomic-peer running there? check --bootstrap)",
            time.monotonic() - started,
            tried,
        )
        wait = min(2 * wait, longest_s)
    log.info("joined the network through %s after %.1f s", ", ".join(seeds), time.monotonic() - started)


async def serve(
    config: PeerConfig, drain_timeout: float = DEFAULT_DRAIN_S, metrics: MetricsServer | None = None
) -> int:
    """Run a node until SIGTERM/SIGINT, then drain and stop; ``metrics``: the endpoint to announce."""
    node = await PeerNode.start(config)
    freeze_heap()  # start-up's objects stay: full collections stop walking them
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = None
    if node.gossip is not None and config.bootstrap:
        log.info("joining the network through %s", ", ".join(config.bootstrap))
        watcher = asyncio.create_task(watch_bootstrap(node.gossip, config.bootstrap))
    try:
        print(
            f"atomic-peer {node.peer_id.short} listening on {node.address} hosting {', '.join(node.models)}",
            flush=True,
        )
        log.info("others can join through --bootstrap %s", node.dial_address)
        if metrics is not None:  # a second line, after the one scripts wait for
            print(f"atomic-peer {node.peer_id.short} metrics on {metrics.url}", flush=True)
        await stop.wait()
        log.info("signal received: draining (up to %.0f s)", drain_timeout)
        await node.drain(drain_timeout)
    finally:
        if watcher is not None:
            watcher.cancel()
        await node.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
