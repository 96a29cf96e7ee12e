"""``atomic-peer``: run a peer node from one or more TOML configs.

    atomic-peer peers/small.toml
    atomic-peer peers/small.toml peers/slow.toml --port 50051 --data-dir /tmp/p1

Several configs make one node hosting every model they list: node settings (the ``[peer]``
table) come from the first file, models from all of them (model ids must differ).

Once serving, one line goes to stdout, so scripts can wait for it::

    atomic-peer 1a2b3c4d listening on 127.0.0.1:50051 hosting digits-small, digits-small-slow

SIGTERM or SIGINT drains: new work is refused (UNAVAILABLE), work in flight completes, then the
process exits 0. A bad config or a busy port prints what to change and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from atomic_p2p.errors import AtomicError, ConfigError
from atomic_p2p.peer.config import PeerConfig, load_configs
from atomic_p2p.peer.node import PeerNode

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = _config(args)
        return asyncio.run(serve(config, drain_timeout=args.drain_timeout))
    except AtomicError as exc:  # a bad config, key file or port: say what to change
        print(f"atomic-peer: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _config(args: argparse.Namespace) -> PeerConfig:
    config = load_configs(args.configs)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port; use 0..65535 (0 = any free port)")
    data_dir = args.data_dir.expanduser().resolve() if args.data_dir else None
    return config.with_overrides(host=args.host, port=args.port, data_dir=data_dir)


async def serve(config: PeerConfig, drain_timeout: float = DEFAULT_DRAIN_S) -> int:
    """Run a node until SIGTERM/SIGINT, then drain and stop."""
    node = await PeerNode.start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(
            f"atomic-peer {node.peer_id.short} listening on {node.address} hosting {', '.join(node.models)}",
            flush=True,
        )
        await stop.wait()
        log.info("signal received: draining (up to %.0f s)", drain_timeout)
        await node.drain(drain_timeout)
    finally:
        await node.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
