"""``atomic gateway``: serve OpenAI's HTTP API in front of the market (docs/gateway.md).

The gateway joins the gossip through ``--bootstrap`` as a requester, prints one line once it
listens (``atomic gateway listening on http://127.0.0.1:8000``) and serves until Ctrl-C or
SIGTERM. Every call is an auction, logged to the store (``atomic bids`` shows the decisions).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from atomic_p2p.cli import observability
from atomic_p2p.cli.arguments import add_peer_arguments, non_negative, positive
from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.keygen import default_store_path
from atomic_p2p.cli.run import load_identity
from atomic_p2p.errors import ConfigError

if TYPE_CHECKING:
    from atomic_p2p.gateway import Access
    from atomic_p2p.identity import Identity
    from atomic_p2p.metrics import MetricsServer


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="serve an OpenAI-compatible HTTP API that buys from the market",
        description="Join the gossip through --bootstrap and serve GET /v1/models, POST "
        "/v1/chat/completions, /v1/completions and /v1/embeddings: each call is bought through an "
        "auction among the peers (docs/gateway.md).",
    )
    add_peer_arguments(parser, "--bootstrap")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any)")
    parser.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        help="allowed API keys, one per line with an optional requests/minute (default: no keys needed)",
    )
    parser.add_argument(
        "--rate-limit",
        type=non_negative,
        default=0.0,
        metavar="N",
        help="requests per minute per key (or per client address without keys); 0: none (default)",
    )
    parser.add_argument(
        "--deadline",
        type=positive,
        default=30.0,
        metavar="S",
        help="seconds a call may take, fallbacks included, unless its market.deadline_s says (default 30)",
    )
    parser.add_argument("--key", type=Path, metavar="PATH", help="signing key (default: the keygen path)")
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DB",
        help=f"SQLite store for the bid log, decisions and profiles (default {default_store_path()})",
    )
    parser.add_argument("--no-store", action="store_true", help="keep nothing of the auctions")
    observability.add_arguments(parser)
    parser.set_defaults(handler=handle)


async def serve(args: argparse.Namespace) -> None:
    try:
        from atomic_p2p.gateway import Access, load_keys
    except ImportError as error:  # the gateway extra is missing
        raise ConfigError(
            f"atomic gateway needs the gateway extra: pip install 'atomic-p2p[gateway]' ({error})"
        ) from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port is in [0, 65535], got {args.port}")
    keys = load_keys(args.api_keys) if args.api_keys is not None else None
    if keys is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"atomic gateway: warning: listening on {args.host} without --api-keys: anyone who can reach "
            "it spends your money",
            file=sys.stderr,
        )
    access = Access(keys, args.rate_limit)
    store = None if args.no_store else (args.store or default_store_path())
    if store is not None:
        Path(store).parent.mkdir(parents=True, exist_ok=True)
    identity = load_identity(args.key)
    metrics_server = observability.start_metrics(args)  # the requester's and the gateway's metrics
    try:
        await _serve(args, identity, store, access, metrics_server)
    finally:
        if metrics_server is not None:
            metrics_server.close()


async def _serve(
    args: argparse.Namespace,
    identity: Identity,
    store: Path | None,
    access: Access,
    metrics_server: MetricsServer | None,
) -> None:
    from atomic_p2p.gateway import Gateway
    from atomic_p2p.peer.node import freeze_heap
    from atomic_p2p.requester import Requester

    async with Requester(
        bootstrap=args.bootstrap, identity=identity, store=store, insecure=args.insecure
    ) as requester:
        gateway = Gateway(requester, access=access, deadline_s=args.deadline)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        async with gateway.serving(args.host, args.port) as url:
            freeze_heap()  # as atomic-peer does: full collections stop walking start-up's objects
            print(f"atomic gateway listening on {url}", flush=True)
            if metrics_server is not None:  # a second line, after the one scripts wait for
                print(f"atomic gateway metrics on {metrics_server.url}", flush=True)
            await stop.wait()
    # Leaving the blocks: finish the calls in flight, leave the gossip, flush the store.


def handle(args: argparse.Namespace) -> ExitCode:
    asyncio.run(serve(args))
    print("atomic gateway: stopped", file=sys.stderr)
    return ExitCode.OK
