"""The store's schema and records: what ``atomic_p2p.store`` writes, and how the schema evolves.

Every table, column and index is documented in ``docs/store.md``; change both together. A
record is a frozen value with a ``row()`` that gives its INSERT parameters (JSON columns
serialised there, on the store's writer thread). :func:`migrate` applies :data:`MIGRATIONS`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from atomic_p2p.errors import ConfigError

_V1 = (
    """CREATE TABLE bids (
        id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, request_id TEXT NOT NULL,
        task_id TEXT NOT NULL, capability TEXT NOT NULL, peer TEXT NOT NULL, model_id TEXT NOT NULL,
        address TEXT NOT NULL, confidence REAL, expected_latency_ms REAL, cost REAL,
        strategy TEXT NOT NULL, digest TEXT NOT NULL, fields TEXT NOT NULL)""",
    "CREATE INDEX bids_by_request ON bids (request_id, task_id)",
    "CREATE INDEX bids_by_peer ON bids (peer, at_ms)",
    """CREATE TABLE decisions (
        id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, request_id TEXT NOT NULL,
        task_id TEXT NOT NULL, capability TEXT NOT NULL, winner_peer TEXT, winner_model TEXT,
        price REAL, rationale TEXT NOT NULL)""",
    "CREATE INDEX decisions_by_time ON decisions (at_ms)",
    "CREATE INDEX decisions_by_winner ON decisions (winner_peer, at_ms)",
    """CREATE TABLE profiles (
        id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, peer TEXT NOT NULL, model_id TEXT NOT NULL,
        capability TEXT NOT NULL, snapshot TEXT NOT NULL)""",
    "CREATE INDEX profiles_by_key ON profiles (peer, model_id, capability, id)",
    """CREATE TABLE ledger (
        id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, request_id TEXT NOT NULL,
        task_id TEXT NOT NULL, peer TEXT NOT NULL, amount REAL NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('charge', 'probe', 'refund')))""",
    "CREATE INDEX ledger_by_peer ON ledger (peer, kind)",
    "CREATE INDEX ledger_by_request ON ledger (request_id, task_id)",
    """CREATE TABLE observations (
        id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, peer TEXT NOT NULL, model_id TEXT NOT NULL,
        name TEXT NOT NULL, value REAL NOT NULL, detail TEXT NOT NULL)""",
    "CREATE INDEX observations_by_peer ON observations (peer, name, at_ms)",
)
# Step i takes the schema from version i to i + 1. Append; never edit a released step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)


class PaymentKind(Enum):
    CHARGE = "charge"  # paid to a peer for a task's result
    PROBE = "probe"  # paid for a benchmark probe (a task whose answer the requester knows)
    REFUND = "refund"  # returned by a peer (amounts are positive; each kind is totalled apart)


def hex_id(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes) else value


def _plain(value: object) -> object:
    """JSON fallback: read-only mappings as objects, anything else as its text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


def _json(value: Mapping[str, Any], *, strict: bool = False) -> str:
    """Compact JSON; ``strict`` refuses NaN and inf (a ValueError) instead of writing them."""
    return json.dumps(
        dict(value), separators=(",", ":"), sort_keys=True, default=_plain, allow_nan=not strict
    )


@dataclass(frozen=True, slots=True)
class BidRecord:
    """One bid as received (valid or not). ``fields`` holds anything else worth keeping as JSON."""

    at_ms: int
    request_id: bytes | str
    task_id: str
    capability: str
    peer: str
    model_id: str
    address: str
    confidence: float
    expected_latency_ms: float
    cost: float
    strategy: str = ""
    digest: bytes | str = ""
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def row(self) -> tuple[Any, ...]:
        return (
            self.at_ms, hex_id(self.request_id), self.task_id, self.capability, self.peer, self.model_id,
            self.address, self.confidence, self.expected_latency_ms, self.cost, self.strategy,
            hex_id(self.digest), _json(self.fields),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One auction's outcome. ``rationale`` is ``Rationale.to_dict()`` (stored as JSON)."""

    at_ms: int
    request_id: bytes | str
    task_id: str
    capability: str
    winner_peer: str | None
    winner_model: str | None
    price: float | None
    rationale: Mapping[str, Any]

    def row(self) -> tuple[Any, ...]:
        return (
            self.at_ms, hex_id(self.request_id), self.task_id, self.capability, self.winner_peer,
            self.winner_model, self.price, _json(self.rationale, strict=True),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """A profile snapshot (``Profile.to_dict()``) at a point in time; the rows form its history."""

    at_ms: int
    peer: str
    model_id: str
    capability: str
    snapshot: Mapping[str, Any]

    def row(self) -> tuple[Any, ...]:
        return (self.at_ms, self.peer, self.model_id, self.capability, _json(self.snapshot))


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """One ledger line."""

    at_ms: int
    request_id: bytes | str
    task_id: str
    peer: str
    amount: float
    kind: PaymentKind = PaymentKind.CHARGE

    def row(self) -> tuple[Any, ...]:
        return (self.at_ms, hex_id(self.request_id), self.task_id, self.peer, self.amount, self.kind.value)


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    """A number about a peer's strategy or market over time: a price, a confidence offset, a win share."""

    at_ms: int
    peer: str
    model_id: str
    name: str
    value: float
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def row(self) -> tuple[Any, ...]:
        return (self.at_ms, self.peer, self.model_id, self.name, self.value, _json(self.detail))


Record = BidRecord | DecisionRecord | ProfileRecord | PaymentRecord | ObservationRecord

INSERTS: Mapping[type, str] = MappingProxyType(
    {
        BidRecord: "INSERT INTO bids (at_ms, request_id, task_id, capability, peer, model_id, address, "
        "confidence, expected_latency_ms, cost, strategy, digest, fields) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        DecisionRecord: "INSERT INTO decisions (at_ms, request_id, task_id, capability, winner_peer, "
        "winner_model, price, rationale) VALUES (?,?,?,?,?,?,?,?)",
        ProfileRecord: "INSERT INTO profiles (at_ms, peer, model_id, capability, snapshot) VALUES (?,?,?,?,?)",
        PaymentRecord: "INSERT INTO ledger (at_ms, request_id, task_id, peer, amount, kind) VALUES (?,?,?,?,?,?)",
        ObservationRecord: "INSERT INTO observations (at_ms, peer, model_id, name, value, detail) "
        "VALUES (?,?,?,?,?,?)",
    }
)


def schema_version(connection: sqlite3.Connection) -> int:
    found = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found is None:
        return 0
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(connection: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema up to ``len(migrations)``, one transaction per step; returns the version.

    Each step re-reads the version under ``BEGIN IMMEDIATE``, so two processes opening the same
    new file cannot both apply a step.
    """
    while True:
        connection.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(connection)
            if current > len(migrations):
                raise ConfigError(
                    f"store schema version {current} is newer than this code ({len(migrations)})"
                )
            if current == len(migrations):
                connection.execute("COMMIT")
                return current
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            for statement in migrations[current]:
                connection.execute(statement)
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version (version) VALUES (?)", (current + 1,))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
