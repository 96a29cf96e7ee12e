"""Argument types shared by every command: each rejects bad values with a message argparse shows."""

from __future__ import annotations

import argparse
import math
import sys

from atomic_p2p.errors import ConfigError


def positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative number")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is not a number in [0, 1]")
    return value


def peer_address(text: str) -> str:
    """``HOST:PORT`` of a peer, optionally ``PEERID@HOST:PORT`` to require that peer id; a bare
    ``PORT`` means a peer on this machine (``127.0.0.1:PORT``)."""
    text = text.strip()
    peer_id, at, rest = text.rpartition("@")
    if at and not peer_id:
        raise argparse.ArgumentTypeError(f"{text[:100]!r}: nothing before '@' (PEERID@HOST:PORT)")
    if rest.isdigit() and 0 < int(rest) <= 65535:
        return f"{peer_id}{at}127.0.0.1:{int(rest)}"
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text[:100]!r} is not HOST:PORT (e.g. 127.0.0.1:50051), PEERID@HOST:PORT, nor a bare PORT of a "
            "peer on this machine"
        )
    return text


def add_peer_arguments(parser: argparse.ArgumentParser, flag: str) -> None:
    """``flag`` (``--peer``: the peers to ask, kept as ``peers``; ``--bootstrap``: the peers to join
    the gossip through), repeatable and required, each address as :func:`peer_address` takes it;
    and ``--insecure``, which every command that dials peers takes alike."""
    what = "a peer to ask" if flag == "--peer" else "a peer to join the gossip through"
    parser.add_argument(
        flag,
        **({"dest": "peers"} if flag == "--peer" else {}),
        action="append",
        required=True,
        type=peer_address,
        metavar="ADDR",
        help=f"host:port of {what}, PEERID@host:port to require that peer id, or a bare port for one on "
        "this machine (repeat for several)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="talk to peers that serve plaintext (debugging only; by default they are refused)",
    )


# The profile names of atomic_p2p.requester.weights.PROFILES (a test keeps them equal), spelled
# out so that parsing arguments does not import the SDK, and with it torch (seconds).
WEIGHTS = ("accuracy", "balanced", "speed")


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    """``--weights`` (the SDK's ``weights=``), and ``--priority``, its old spelling: in the SDK
    ``priority=`` is the queue class, so the CLI no longer uses that word for the weights."""
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="how to weigh accuracy, latency and cost, as the SDK's weights= (default: balanced)",
    )
    parser.add_argument(
        "--priority", dest="old_priority", choices=WEIGHTS, help="deprecated spelling of --weights"
    )


def weights_of(args: argparse.Namespace) -> str:
    """The weights profile asked for; the deprecated ``--priority`` still works, with a warning."""
    if args.old_priority is not None:
        print("warning: --priority is deprecated; use --weights (the SDK's weights=)", file=sys.stderr)
        if args.weights is not None and args.weights != args.old_priority:
            raise ConfigError(f"--weights {args.weights} and --priority {args.old_priority} disagree")
        return str(args.weights or args.old_priority)
    return str(args.weights or "balanced")
