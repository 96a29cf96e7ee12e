"""``atomic``: the requester's command line. A small dispatcher over one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)``, which registers its arguments and sets
``handler`` (``args -> ExitCode``). A new subcommand is one module plus one line in ``COMMANDS``.
Errors from the library map to exit codes here, in one place: a bad config or input is a usage
error (2), any other atomic-p2p error a failure (1).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from atomic_p2p.cli.exits import ExitCode, closed_pipe
from atomic_p2p.cli.observability import configure_logging

COMMANDS = (
    "atomic_p2p.cli.keygen",
    "atomic_p2p.cli.run",
    "atomic_p2p.cli.generate",
    "atomic_p2p.cli.gateway",
    "atomic_p2p.cli.peers",
    "atomic_p2p.cli.bids",
    "atomic_p2p.cli.profile",
    "atomic_p2p.cli.outcome",
    "atomic_p2p.cli.top",
)

EPILOG = (
    "exit codes: 0 ok, 1 the command failed (e.g. no usable bid), 2 usage or input error, "
    "141 stdout was closed early (atomic bids | head)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomic",
        description="Buy model inference from atomic-p2p peers through signed sealed-bid auctions.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:  # a closed pipe shows here, inside the guard, not in the interpreter's last flush
            sys.stdout.flush()
    except BrokenPipeError:  # `atomic bids | head`: the reader has all it wanted
        return closed_pipe()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)  # --help prints here, so it is inside main's guard
    level = (logging.ERROR, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    configure_logging(level, getattr(args, "log_format", "text"), "%(levelname)s %(name)s: %(message)s")

    from atomic_p2p.errors import AtomicError, ConfigError

    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"atomic {args.command}: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except AtomicError as error:
        print(f"atomic {args.command}: failed: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
