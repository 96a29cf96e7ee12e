"""Reading the requester's store from the command line: the ``--store`` argument, opening it
read-only with an error that says what to do, and peer ids given as prefixes."""

from __future__ import annotations

import argparse
from pathlib import Path

from atomic_p2p.cli.keygen import default_store_path
from atomic_p2p.errors import ConfigError
from atomic_p2p.store import Store


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DB",
        help=f"the requester's SQLite store (default {default_store_path()}, what `atomic run` writes)",
    )


def open_store(path: Path | None) -> Store:
    """The store at ``path`` (default: ``atomic run``'s), read-only: no writer, no migration."""
    path = path or default_store_path()
    if not path.exists():
        raise ConfigError(
            f"no store at {path}; run `atomic run --store {path} ...` (or a Requester(store=...)) "
            "first, or pass --store DB"
        )
    return Store.open(path, read_only=True)


def resolve_peer(store: Store, peer: str | None) -> str | None:
    """A full peer id for ``peer``, which may be a unique prefix (the 8 hex digits tables show)
    of a peer the store knows (from its profiles, ledger and bids); None stays None."""
    if peer is None:
        return None
    peer = peer.strip().lower()
    if not peer or any(c not in "0123456789abcdef" for c in peer):
        raise ConfigError(f"--peer takes a peer id in hex (or a prefix of one), got {peer!r}")
    if len(peer) == 64:
        return peer
    known = {record.peer for record in store.latest_profiles()}
    known |= set(store.ledger_totals())
    known |= {record.peer for record in store.bid_history(limit=100_000)}
    matches = sorted(p for p in known if p.startswith(peer))
    if len(matches) > 1:
        raise ConfigError(f"--peer {peer} matches {len(matches)} peers: {', '.join(m[:12] for m in matches)}")
    if not matches:
        raise ConfigError(f"no peer in the store has an id starting with {peer}; give more or other digits")
    return matches[0]
