"""``atomic keygen``: create the requester's Ed25519 key file (mode 0600) and print its peer id."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.errors import ConfigError
from atomic_p2p.identity import Identity


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/atomic-p2p/requester.pem`` (``~/.config/...`` when unset)."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "atomic-p2p" / "requester.pem"


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/atomic-p2p/requester.db`` (``~/.local/share/...`` when unset): the bid log,
    decisions, profiles and ledger that ``atomic run`` writes and ``atomic bids``/``profile`` read."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "atomic-p2p" / "requester.db"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create a signing key and print its peer id",
        description="Create an Ed25519 key (PKCS#8 PEM, mode 0600) and print its peer id. "
        "Never overwrites an existing file.",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"where to write the key (default: {default_key_path()})"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> ExitCode:
    path: Path = args.out or default_key_path()
    if path.exists():
        raise ConfigError(f"{path} already exists; refusing to overwrite a key (pick another --out)")
    identity = Identity.generate()
    try:
        identity.save(path)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror or error}") from error
    print(identity.peer_id.hex)
    print(f"wrote {path} (mode 0600); use it with: atomic run --key {path} ...", file=sys.stderr)
    return ExitCode.OK
