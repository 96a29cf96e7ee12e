"""The requester's memory on disk: bid log, decisions with their rationale, profile snapshots, the
payment ledger, and strategy/price observations over time. SQLite (stdlib ``sqlite3``), WAL mode.
The schema is documented in ``docs/store.md``.

How this works
--------------
**Writes stay off the hot path.** One writer thread owns the only writing connection. Callers
hand it records with :meth:`Store.write` (or the ``log_*`` / ``save_*`` / ``record_*``
helpers), which only enqueues and returns an :class:`Ack` (a ``concurrent.futures.Future``).
The writer takes whatever is queued (up to ``max_batch`` records, waiting ``linger_s`` for more)
and writes it in one transaction, so under load many records share one COMMIT (group commit).
The records of one ``write`` call always land in the same transaction: a decision and its bids
commit together or not at all.

**Acknowledged** means: the record's Ack resolved without an exception, or :meth:`Store.flush`
or ``await`` :meth:`Store.commit` returned after the record was handed over. The writer
resolves an Ack only after the COMMIT of the transaction holding the record returned. With
``journal_mode=WAL`` and ``synchronous=FULL`` (the default, :class:`Durability.POWER_LOSS`),
COMMIT returns after the WAL file was fsynced, so an acknowledged record survives a SIGKILL of
the requester, a kernel panic and a power cut. ``Durability.PROCESS_CRASH`` (``synchronous=
NORMAL``) still survives SIGKILL (the WAL frames reach the kernel before COMMIT returns) but may
lose the last transactions on power loss; the fsync it saves is paid once per batch, not once
per record, which is why FULL is the default. Nothing is acknowledged before its COMMIT, so a
kill can only lose records whose Ack had not resolved yet.

**Schema versions.** ``schema_version`` holds one row; :data:`MIGRATIONS` is a list of steps,
step ``i`` taking the schema from version ``i`` to ``i + 1``, each in its own transaction. A
database newer than this code is refused (ConfigError) rather than misread.

Reads (the query helpers, for the CLI and for restoring profiles at start) use a separate
connection behind a lock; WAL lets them run while the writer writes. :meth:`Store.open` with
``read_only=True`` opens no writer at all (what ``atomic bids`` and ``atomic profile`` use).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from atomic_p2p.errors import ConfigError, UnavailableError
from atomic_p2p.store_schema import (
    INSERTS,
    MIGRATIONS,
    SCHEMA_VERSION,
    BidRecord,
    DecisionRecord,
    ObservationRecord,
    PaymentKind,
    PaymentRecord,
    ProfileRecord,
    Record,
    hex_id,
    migrate,
    schema_version,
)

Ack = Future[None]


class Durability(Enum):
    """What an acknowledged write survives (see the module docstring)."""

    PROCESS_CRASH = "NORMAL"
    POWER_LOSS = "FULL"


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Writer counters: transactions committed, records written, records that failed."""

    batches: int
    records: int
    failed: int


@dataclass(slots=True)
class _Group:
    records: tuple[Record, ...]  # serialised on the writer thread
    ack: Ack


_STOP = object()


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        if not path.exists():
            raise ConfigError(f"no store at {path}")
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    else:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


class Store:
    """The requester's SQLite store. Create with :meth:`open`; :meth:`close` (or ``with``) at the end.

    Contract: :meth:`write` and the helpers may be called from any thread or the event loop and
    never wait for the disk; the queries block briefly on a read (wrap them in
    ``asyncio.to_thread`` inside a busy event loop). Hand records over and do not mutate their
    mappings afterwards: they are serialised on the writer thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        read_only: bool,
        durability: Durability,
        max_batch: int,
        linger_s: float,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self._durability = durability
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._queue: queue.SimpleQueue[_Group | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._batches = self._records = self._failed = 0
        self._ready: Future[None] = Future()
        self._thread: threading.Thread | None = None
        self._reader_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        read_only: bool = False,
        durability: Durability = Durability.POWER_LOSS,
        max_batch: int = 512,
        linger_s: float = 0.0,
    ) -> Store:
        """Open (creating and migrating if needed) the store at ``path`` and start its writer.

        ``read_only`` opens an existing store for queries only (no writer, no migration).
        """
        if max_batch < 1 or linger_s < 0:
            raise ConfigError("max_batch must be >= 1 and linger_s >= 0")
        if not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        store = cls(
            Path(path), read_only=read_only, durability=durability, max_batch=max_batch, linger_s=linger_s
        )
        if not read_only:
            store._thread = threading.Thread(
                target=store._write_loop, name="atomic-store-writer", daemon=True
            )
            store._thread.start()
            store._ready.result()  # migration errors surface here, in the caller's thread
        try:
            store._reader = _connect(store.path, read_only=read_only)
            version = schema_version(store._reader)
            if version != SCHEMA_VERSION:
                raise ConfigError(
                    f"store schema version {version}, this code reads {SCHEMA_VERSION}; "
                    "open it read-write once to migrate"
                )
        except BaseException:
            store.close()
            raise
        return store

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------

    def write(self, *records: Record) -> Ack:
        """Queue ``records`` to be committed together; the Ack resolves after their COMMIT."""
        for record in records:
            if type(record) not in INSERTS:
                raise ConfigError(f"cannot store a {type(record).__name__}")
        group = _Group(tuple(records), Future())
        with self._lock:
            if self.read_only or self._closed:
                raise UnavailableError(f"store {self.path} is {'read-only' if self.read_only else 'closed'}")
            self._queue.put(group)
        return group.ack

    def log_bid(self, record: BidRecord) -> Ack:
        return self.write(record)

    def log_decision(self, decision: DecisionRecord, bids: Iterable[BidRecord] = ()) -> Ack:
        """A decision and (optionally) the bids it chose among, in one transaction."""
        return self.write(decision, *bids)

    def save_profile(self, record: ProfileRecord) -> Ack:
        return self.write(record)

    def record_payment(self, record: PaymentRecord) -> Ack:
        return self.write(record)

    def record_observation(self, record: ObservationRecord) -> Ack:
        return self.write(record)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything written before this call is committed (or failed)."""
        self.write().result(timeout)

    async def commit(self) -> None:
        """Await until everything written before this call is committed; the async :meth:`flush`."""
        await asyncio.wrap_future(self.write())

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def stats(self) -> StoreStats:
        return StoreStats(self._batches, self._records, self._failed)

    # --- the writer thread -------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            connection = _connect(self.path, read_only=False)
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            connection.execute(f"PRAGMA synchronous = {self._durability.value}")
            migrate(connection)
        except BaseException as error:
            self._ready.set_exception(error)
            return
        self._ready.set_result(None)
        try:
            stop = False
            while not stop:
                groups, stop = self._take()
                if groups:
                    self._commit(connection, groups)
        finally:
            connection.close()

    def _take(self) -> tuple[list[_Group], bool]:
        """Block for one group, then take what else is queued, up to max_batch records."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        assert isinstance(first, _Group)
        groups, count = [first], len(first.records)
        deadline = time.monotonic() + self._linger_s
        while count < self._max_batch:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return groups, True
            assert isinstance(item, _Group)
            groups.append(item)
            count += len(item.records)
        return groups, False

    def _commit(self, connection: sqlite3.Connection, groups: list[_Group]) -> None:
        """One transaction for ``groups``; if it fails, retry each group alone so one bad record
        fails only its own group."""
        records = [record for group in groups for record in group.records]
        try:
            if records:
                by_sql: dict[str, list[tuple[Any, ...]]] = {}
                for record in records:
                    by_sql.setdefault(INSERTS[type(record)], []).append(record.row())
                connection.execute("BEGIN")
                try:
                    for sql, rows in by_sql.items():
                        connection.executemany(sql, rows)
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, TypeError, ValueError) as error:
            if len(groups) > 1:
                for group in groups:
                    self._commit(connection, [group])
                return
            self._failed += len(records)
            wrapped: Exception = (
                UnavailableError(f"store write failed: {error}")
                if isinstance(error, sqlite3.Error)
                else ConfigError(f"record cannot be stored: {error}")
            )
            wrapped.__cause__ = error
            groups[0].ack.set_exception(wrapped)
            return
        if records:
            self._batches += 1
            self._records += len(records)
        for group in groups:
            group.ack.set_result(None)

    # --- queries (for the CLI and for restoring state at start) ----------------------------------

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reader_lock:
            if self._reader is None:
                raise UnavailableError(f"store {self.path} is closed")
            return self._reader.execute(sql, parameters).fetchall()

    def recent_decisions(
        self, limit: int = 20, *, peer: str | None = None, capability: str | None = None
    ) -> list[DecisionRecord]:
        """The latest decisions, newest first, with their rationale parsed; ``peer`` filters on
        the winner."""
        where, parameters = _filters({"winner_peer": peer, "capability": capability})
        rows = self._query(
            "SELECT at_ms, request_id, task_id, capability, winner_peer, winner_model, price, rationale "
            f"FROM decisions {where} ORDER BY id DESC LIMIT ?",
            [*parameters, limit],
        )
        return [DecisionRecord(*_parsed(row)) for row in rows]

    def wins(self) -> dict[str, int]:
        """How many auctions each peer won (decisions naming it the winner), by peer id."""
        rows = self._query(
            "SELECT winner_peer, count(*) FROM decisions WHERE winner_peer IS NOT NULL GROUP BY winner_peer"
        )
        return {peer: int(count) for peer, count in rows}

    def bids_for(self, request_id: bytes | str, task_id: str | None = None) -> list[BidRecord]:
        """Every bid logged for one request (and task), in arrival order."""
        where, parameters = _filters({"request_id": hex_id(request_id), "task_id": task_id})
        rows = self._query(
            "SELECT at_ms, request_id, task_id, capability, peer, model_id, address, confidence, "
            f"expected_latency_ms, cost, strategy, digest, fields FROM bids {where} ORDER BY id",
            parameters,
        )
        return [BidRecord(*_parsed(row)) for row in rows]

    def decisions_matching(self, request_prefix: str, task_id: str, limit: int = 10) -> list[DecisionRecord]:
        """Decisions for ``task_id`` of a request whose hex id starts with ``request_prefix``
        (what ``atomic report`` resolves an id such as ``1cbabd9f/task-0`` with), newest first."""
        rows = self._query(
            "SELECT at_ms, request_id, task_id, capability, winner_peer, winner_model, price, rationale "
            "FROM decisions WHERE request_id >= ? AND request_id < ? AND task_id = ? ORDER BY id DESC LIMIT ?",
            [request_prefix, request_prefix + "g", task_id, limit],  # "g" sorts after every hex digit
        )
        return [DecisionRecord(*_parsed(row)) for row in rows]

    def charged_peer(self, request_id: bytes | str, task_id: str) -> str | None:
        """The peer paid for the task's result (a charge in the ledger): who delivered it."""
        rows = self._query(
            "SELECT peer FROM ledger WHERE request_id = ? AND task_id = ? AND kind = 'charge' "
            "ORDER BY id DESC LIMIT 1",
            [hex_id(request_id), task_id],
        )
        return str(rows[0][0]) if rows else None

    def outcome_reported(self, peer: str, task_ref: str) -> bool:
        """Whether an ``outcome`` observation for ``task_ref`` is stored (outcomes count once)."""
        rows = self._query(
            "SELECT 1 FROM observations WHERE peer = ? AND name = 'outcome' "
            "AND json_extract(detail, '$.task') = ? LIMIT 1",
            [peer, task_ref],
        )
        return bool(rows)

    def bid_history(
        self,
        *,
        peer: str | None = None,
        capability: str | None = None,
        since_ms: int | None = None,
        limit: int = 1000,
    ) -> list[BidRecord]:
        """Bids over time, oldest first (the newest ``limit`` of them): how a peer's prices moved."""
        where, parameters = _filters({"peer": peer, "capability": capability}, since_ms=since_ms)
        rows = self._query(
            "SELECT at_ms, request_id, task_id, capability, peer, model_id, address, confidence, "
            f"expected_latency_ms, cost, strategy, digest, fields FROM bids {where} ORDER BY id DESC LIMIT ?",
            [*parameters, limit],
        )
        return [BidRecord(*_parsed(row)) for row in reversed(rows)]

    def latest_profiles(self) -> list[ProfileRecord]:
        """The newest snapshot of every (peer, model, capability): what a requester restores at start."""
        rows = self._query(
            "SELECT p.at_ms, p.peer, p.model_id, p.capability, p.snapshot FROM profiles p "
            "JOIN (SELECT max(id) AS id FROM profiles GROUP BY peer, model_id, capability) latest "
            "ON p.id = latest.id ORDER BY p.peer, p.model_id, p.capability"
        )
        return [ProfileRecord(*_parsed(row)) for row in rows]

    def profile_history(
        self, peer: str, *, model_id: str | None = None, capability: str | None = None, limit: int = 100
    ) -> list[ProfileRecord]:
        """A peer's snapshots over time, oldest first (the newest ``limit`` of them)."""
        where, parameters = _filters({"peer": peer, "model_id": model_id, "capability": capability})
        rows = self._query(
            "SELECT at_ms, peer, model_id, capability, snapshot FROM profiles "
            f"{where} ORDER BY id DESC LIMIT ?",
            [*parameters, limit],
        )
        return [ProfileRecord(*_parsed(row)) for row in reversed(rows)]

    def ledger_totals(self, *, peer: str | None = None) -> dict[str, dict[str, float]]:
        """Total amount per peer per payment kind."""
        where, parameters = _filters({"peer": peer})
        rows = self._query(
            f"SELECT peer, kind, sum(amount) FROM ledger {where} GROUP BY peer, kind ORDER BY peer, kind",
            parameters,
        )
        totals: dict[str, dict[str, float]] = {}
        for who, kind, amount in rows:
            totals.setdefault(who, {})[kind] = float(amount)
        return totals

    def observations(
        self,
        *,
        peer: str | None = None,
        name: str | None = None,
        since_ms: int | None = None,
        limit: int = 1000,
    ) -> list[ObservationRecord]:
        """Strategy and price observations, oldest first (the newest ``limit`` of them)."""
        where, parameters = _filters({"peer": peer, "name": name}, since_ms=since_ms)
        rows = self._query(
            f"SELECT at_ms, peer, model_id, name, value, detail FROM observations {where} "
            "ORDER BY id DESC LIMIT ?",
            [*parameters, limit],
        )
        return [ObservationRecord(*_parsed(row)) for row in reversed(rows)]

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {
            table: int(self._query(f"SELECT count(*) FROM {table}")[0][0])
            for table in ("bids", "decisions", "profiles", "ledger", "observations")
        }


def _parsed(row: tuple[Any, ...]) -> list[Any]:
    """A row whose last column is JSON, that column parsed."""
    return [*row[:-1], json.loads(row[-1])]


def _filters(equal: Mapping[str, Any], *, since_ms: int | None = None) -> tuple[str, list[Any]]:
    """A WHERE clause for the non-None values (column names are ours, never the caller's)."""
    clauses = [f"{column} = ?" for column, value in equal.items() if value is not None]
    parameters = [value for value in equal.values() if value is not None]
    if since_ms is not None:
        clauses.append("at_ms >= ?")
        parameters.append(since_ms)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", parameters


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Ack",
    "BidRecord",
    "DecisionRecord",
    "Durability",
    "ObservationRecord",
    "PaymentKind",
    "PaymentRecord",
    "ProfileRecord",
    "Record",
    "Store",
    "StoreStats",
    "migrate",
]
