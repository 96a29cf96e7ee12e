"""The SQLite store (atomic_p2p.store) on real files: WAL, batching, restarts, and a SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atomic_p2p.errors import ConfigError, UnavailableError
from atomic_p2p.requester.evaluator import Ask, EvaluatorConfig, evaluate
from atomic_p2p.requester.profiler import Observation, Profile, ProfileKey, ProfilerConfig, record
from atomic_p2p.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    BidRecord,
    DecisionRecord,
    Durability,
    ObservationRecord,
    PaymentKind,
    PaymentRecord,
    ProfileRecord,
    Store,
    migrate,
)

pytestmark = pytest.mark.integration


def bid(i: int, peer: str = "aa", request: bytes = b"\x01" * 16) -> BidRecord:
    return BidRecord(
        at_ms=1000 + i,
        request_id=request,
        task_id=f"task-{i}",
        capability="classify/digits",
        peer=peer,
        model_id="mlp",
        address="127.0.0.1:5001",
        confidence=0.9,
        expected_latency_ms=12.5,
        cost=0.25,
        strategy="confidence",
        digest=b"\xab" * 4,
        fields={"max_batch": 64},
    )


def payment(
    i: int, peer: str = "aa", amount: float = 1.0, kind: PaymentKind = PaymentKind.CHARGE
) -> PaymentRecord:
    return PaymentRecord(at_ms=i, request_id="r", task_id=str(i), peer=peer, amount=amount, kind=kind)


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path):
        pass
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert migrate(connection) == SCHEMA_VERSION  # idempotent
    connection.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    connection = sqlite3.connect(path, isolation_level=None)
    assert migrate(connection, [*MIGRATIONS, ("CREATE TABLE later (x INTEGER)",)]) == SCHEMA_VERSION + 1
    connection.close()
    with pytest.raises(ConfigError, match="newer"):
        Store.open(path)
    with pytest.raises(ConfigError, match="schema version"):
        Store.open(path, read_only=True)


def test_batched_writes_read_back_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    key = ProfileKey("aa", "mlp", "classify/digits")
    profile = record(
        None, key, Observation(5, outcome=1.0, latency_ms=10.0, promised_latency_ms=8.0), ProfilerConfig()
    )
    decision = evaluate(
        [bid(0), bid(1, peer="bb")], Ask("task-0", "classify/digits", 1000.0), config=EvaluatorConfig.greedy()
    )
    assert decision.rationale is not None
    with Store.open(path, durability=Durability.PROCESS_CRASH) as store:
        acks = [store.log_bid(bid(i)) for i in range(300)]
        acks += [store.record_payment(payment(i, peer="aa" if i % 3 else "bb")) for i in range(30)]
        acks.append(store.record_payment(payment(99, amount=0.5, kind=PaymentKind.PROBE)))
        acks.append(store.save_profile(ProfileRecord(1, "aa", "mlp", "classify/digits", {"v": 0})))
        acks.append(store.save_profile(ProfileRecord(6, "aa", "mlp", "classify/digits", profile.to_dict())))
        acks.append(store.record_observation(ObservationRecord(7, "aa", "mlp", "price", 0.25, {"load": 0.5})))
        acks.append(
            store.log_decision(
                DecisionRecord(
                    8,
                    b"\x01" * 16,
                    "task-0",
                    "classify/digits",
                    "aa",
                    "mlp",
                    0.25,
                    decision.rationale.to_dict(),
                ),
                [bid(1000)],
            )
        )
        store.flush()
        assert all(ack.done() and ack.exception() is None for ack in acks)
        stats = store.stats()
        assert stats.records == len(acks) + 1 and stats.failed == 0
        assert stats.batches < stats.records  # batched: many records per COMMIT

    with Store.open(path, read_only=True) as again:
        assert again.counts() == {"bids": 301, "decisions": 1, "profiles": 2, "ledger": 31, "observations": 1}
        logged = again.bids_for(b"\x01" * 16, "task-7")
        assert logged == [replace_request(bid(7))]
        (recent,) = again.recent_decisions(5)
        assert recent.winner_peer == "aa" and recent.rationale == decision.rationale.to_dict()
        assert again.recent_decisions(5, peer="zz") == []
        (latest,) = again.latest_profiles()
        assert Profile.from_dict(latest.snapshot) == profile
        assert [p.at_ms for p in again.profile_history("aa")] == [1, 6]
        history = again.bid_history(peer="aa", capability="classify/digits", since_ms=1298, limit=3)
        assert [b.at_ms for b in history] == [1298, 1299, 2000]  # oldest first, the newest 3
        assert history[-1] == replace_request(bid(1000)) and again.bid_history(peer="bb") == []
        totals = again.ledger_totals()
        assert totals == {"aa": {"charge": 20.0, "probe": 0.5}, "bb": {"charge": 10.0}}
        assert again.ledger_totals(peer="bb") == {"bb": {"charge": 10.0}}
        (observed,) = again.observations(peer="aa", name="price", since_ms=0)
        assert observed.value == 0.25 and observed.detail == {"load": 0.5}
        with pytest.raises(UnavailableError, match="read-only"):
            again.log_bid(bid(0))


def replace_request(record: BidRecord) -> BidRecord:
    """How a bid reads back: ids as hex text, mappings as dicts."""
    from dataclasses import replace

    return replace(
        record,
        request_id=(b"\x01" * 16).hex(),
        digest=(b"\xab" * 4).hex(),
        fields=dict(record.fields),
    )


async def test_commit_is_awaitable_and_close_refuses_later_writes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store.db")
    store.record_payment(payment(1))
    await store.commit()
    assert store.ledger_totals() == {"aa": {"charge": 1.0}}
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(UnavailableError, match="closed"):
        store.record_payment(payment(2))


def test_one_bad_record_fails_only_its_own_write(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store.db", linger_s=0.05) as store:
        good = store.record_payment(payment(1))
        bad = store.log_decision(
            DecisionRecord(1, "r", "t", "c", None, None, None, {"score": float("nan")}), [bid(5)]
        )
        also_good = store.record_payment(payment(2))
        store.flush()
        assert good.exception() is None and also_good.exception() is None
        assert isinstance(bad.exception(), ConfigError)
        # The decision's bids were in the same write: neither landed.
        assert store.counts()["bids"] == 0 and store.counts()["ledger"] == 2
        with pytest.raises(ConfigError):
            store.write(object())  # type: ignore[arg-type]


def test_read_only_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no store"):
        Store.open(tmp_path / "missing.db", read_only=True)


WRITER = textwrap.dedent(
    """
    import sys
    from atomic_p2p.store import PaymentRecord, Store

    store = Store.open(sys.argv[1])
    i = 0
    while True:
        # Bursts of 20 writes, then wait for the last one's Ack: it resolves after its COMMIT,
        # and the writer commits in order, so all 20 are acknowledged.
        acks = [
            store.record_payment(PaymentRecord(i + j, "r", str(i + j), "peer", 1.0)) for j in range(20)
        ]
        acks[-1].result()
        i += 20
        print(i, flush=True)
    """
)


def test_nothing_acknowledged_is_lost_to_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert child.stdout is not None
        acknowledged = 0
        while acknowledged < 400:
            line = child.stdout.readline()
            assert line, f"writer died: {child.stderr.read() if child.stderr else ''}"
            acknowledged = int(line)
        child.send_signal(signal.SIGKILL)
        # Lines printed before the kill are acknowledged too: read them from the pipe.
        rest, _ = child.communicate(timeout=30)
        acknowledged = max([acknowledged, *(int(line) for line in rest.split())])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    with Store.open(path):  # recovers the WAL
        pass
    with contextlib.closing(sqlite3.connect(path)) as connection:  # read the file as any reader would
        tasks = {int(row[0]) for row in connection.execute("SELECT task_id FROM ledger")}
    assert set(range(acknowledged)) <= tasks
    assert tasks == set(range(len(tasks)))  # committed in order, no holes


def test_two_stores_on_one_file_share_it(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as first, Store.open(path) as second:
        first.record_payment(payment(1))
        second.record_payment(payment(2, peer="bb"))
        first.flush()
        second.flush()
        assert (
            first.ledger_totals() == second.ledger_totals() == {"aa": {"charge": 1.0}, "bb": {"charge": 1.0}}
        )


async def test_writes_from_many_threads(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store.db") as store:
        await asyncio.gather(
            *(asyncio.to_thread(lambda i=i: store.record_payment(payment(i)).result()) for i in range(50))
        )
        assert store.ledger_totals() == {"aa": {"charge": 50.0}}


def test_default_and_read_only_mappings_are_stored_as_json_objects(tmp_path: Path) -> None:
    plain = BidRecord(1, "r", "t", "c", "aa", "m", "", 0.5, 1.0, 1.0)  # fields: an empty mappingproxy
    with Store.open(tmp_path / "store.db") as store:
        store.log_bid(plain).result()
        store.record_observation(ObservationRecord(1, "aa", "m", "price", 1.0)).result()
        assert store.bids_for("r")[0].fields == {}
        assert store.observations()[0].detail == {}
