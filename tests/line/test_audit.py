"""Tests of sorter.line.audit: the durable audit trail of the line controller."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sorter.line.audit as audit_module
from sorter.errors import SorterError
from sorter.line.audit import (
    DELIVERY_STATES,
    AuditError,
    AuditLog,
    AuditRecord,
    AuditRecordError,
    AuditWriter,
)
from sorter.line.audit.journal import iter_records, replay


def make_record(n: int, **changes: object) -> AuditRecord:
    """A valid decision for item ``it-<n>`` read from source line ``n``."""
    base = AuditRecord(
        item_id=f"it-{n}",
        source_line=n,
        t_item=1.7e9 + n,
        t_available=1.7e9 + n + 0.020,
        t_decided=1.7e9 + n + 0.024,
        chemistry="li_ion",
        p_lead_acid=0.01,
        p_li_ion=0.97,
        p_other=0.02,
        lane="li_ion",
        reason="confident",
        model_id="hgb-test",
        latency_ms=4.0,
        deadline_ms=90.0,
        delivery="pending",
    )
    return dataclasses.replace(base, **changes)


def stored_ids(path: Path) -> set[str]:
    """Item ids in the file, read through a separate, plain sqlite3 connection."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT item_id FROM decisions")}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite"


@pytest.fixture
def log(db: Path) -> Iterator[AuditLog]:
    with AuditLog(db) as opened:
        yield opened


@pytest.fixture
def write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock until rolled back."""
    AuditLog(db).close()  # create the file and schema first
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


# --------------------------------------------------------------------------- schema


def test_durability_pragmas_and_schema_version(log: AuditLog, db: Path) -> None:
    pragmas = log.pragmas()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == 2  # FULL
    assert pragmas["busy_timeout_ms"] == 5000
    assert pragmas["schema_version"] == audit_module.SCHEMA_VERSION
    # WAL is a property of the file: any other connection sees it too.
    with sqlite3.connect(db) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT version FROM schema_version").fetchall() == [(audit_module.SCHEMA_VERSION,)]


def test_reopen_keeps_rows_and_does_not_recreate_schema(db: Path) -> None:
    with AuditLog(db) as log:
        assert log.record_decision(make_record(1))
    with AuditLog(db) as log:
        assert log.count() == 1
        assert log.pragmas()["schema_version"] == audit_module.SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


def test_other_schema_version_is_refused(db: Path) -> None:
    AuditLog(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(AuditError, match="schema version 99"):
        AuditLog(db)


def test_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(AuditError, match="not a usable SQLite database"):
        AuditLog(db)


def test_missing_directory_is_an_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="directory exists") as info:
        AuditLog(tmp_path / "no-such-dir" / "audit.sqlite")
    assert isinstance(info.value, SorterError)
    assert isinstance(info.value, OSError)
    with pytest.raises(AuditError):
        AuditWriter(tmp_path / "no-such-dir" / "audit.sqlite")


def test_in_memory_database_is_refused_because_it_cannot_use_wal() -> None:
    with pytest.raises(AuditError, match="WAL"):
        AuditLog(":memory:")


# --------------------------------------------------------------------------- decisions


def test_insert_and_read_back_in_insertion_order(log: AuditLog) -> None:
    recs = [
        make_record(5, item_id="z-last-alphabetically"),
        make_record(
            2,
            item_id="a-first-alphabetically",
            chemistry=None,
            p_lead_acid=None,
            p_li_ion=None,
            p_other=None,
            lane="manual",
            reason="no_xray",
        ),
        make_record(
            9, item_id="m", source_line=None, delivery="acked", plc_seq=3, plc_status="ok", t_acked=1.7e9 + 9.03
        ),
    ]
    assert [log.record_decision(r) for r in recs] == [True, True, True]
    assert list(log.rows()) == recs
    assert log.get("a-first-alphabetically") == recs[1]
    assert log.get("unknown") is None
    assert log.has("m") and not log.has("unknown")
    assert log.count() == 3


def test_rows_pages_through_a_large_log(log: AuditLog) -> None:
    recs = [make_record(n) for n in range(1, 2502)]  # crosses two page boundaries
    assert all(log.record_decisions(recs))
    assert list(log.rows()) == recs


def test_duplicate_item_is_not_inserted_and_first_decision_wins(log: AuditLog, db: Path) -> None:
    first = make_record(1)
    assert log.record_decision(first) is True
    assert log.record_decision(dataclasses.replace(first, lane="manual")) is False
    assert log.count() == 1
    assert log.get(first.item_id) == first
    # Duplicates inside one batch, and against earlier batches.
    assert log.record_decisions([make_record(2), make_record(1), make_record(2)]) == [
        True,
        False,
        False,
    ]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 2


def test_batch_is_refused_whole_when_one_entry_is_not_a_record(log: AuditLog) -> None:
    with pytest.raises(AuditRecordError, match="AuditRecord"):
        log.record_decisions([make_record(1), {"item_id": "it-2"}])  # type: ignore[list-item]
    assert log.count() == 0


def test_resume_point_is_the_highest_source_line(log: AuditLog) -> None:
    assert log.resume_point() == 0
    log.record_decision(make_record(1, item_id="no-line", source_line=None))
    assert log.resume_point() == 0
    log.record_decisions([make_record(3), make_record(7), make_record(5)])
    assert log.resume_point() == 7


def test_counts_by_lane(log: AuditLog) -> None:
    log.record_decisions(
        [
            make_record(1),
            make_record(2, lane="lead_acid"),
            make_record(3),
            make_record(4, lane="manual"),
        ]
    )
    assert log.counts_by_lane() == {"li_ion": 2, "lead_acid": 1, "manual": 1}


# --------------------------------------------------------------------------- deliveries


def test_delivery_update_is_stored(log: AuditLog) -> None:
    log.record_decisions([make_record(1), make_record(2), make_record(3)])
    log.record_delivery("it-2", "acked", plc_seq=41, plc_status="ok", t_acked=1.7e9 + 2.05)
    log.record_delivery("it-3", "late")
    assert log.get("it-2") == make_record(2, delivery="acked", plc_seq=41, plc_status="ok", t_acked=1.7e9 + 2.05)
    assert log.counts_by_delivery() == {"acked": 1, "late": 1, "pending": 1}
    assert [r.item_id for r in log.pending()] == ["it-1"]


def test_delivery_for_unknown_item_is_refused(log: AuditLog) -> None:
    with pytest.raises(AuditRecordError, match="record_decision must come before"):
        log.record_delivery("never-decided", "acked")
    assert log.count() == 0


def test_invalid_delivery_state_is_refused_and_nothing_changes(log: AuditLog) -> None:
    log.record_decision(make_record(1))
    with pytest.raises(AuditRecordError, match="delivery must be one of"):
        log.record_delivery("it-1", "done")
    assert log.get("it-1") == make_record(1)


def test_pending_survives_a_restart(db: Path) -> None:
    with AuditLog(db) as log:
        log.record_decisions([make_record(n) for n in (1, 2, 3)])
        log.record_delivery("it-2", "acked", plc_seq=1, plc_status="ok")
    with AuditLog(db) as log:
        assert log.pending() == [make_record(1), make_record(3)]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "changes",
    [
        {"item_id": ""},
        {"source_line": 0},
        {"source_line": 2**63},
        {"source_line": True},
        {"t_item": float("nan")},
        {"t_decided": float("inf")},
        {"latency_ms": -1.0},
        {"p_li_ion": 1.5},
        {"p_other": float("nan")},
        {"lane": ""},
        {"delivery": "sent"},
        {"plc_seq": -1},
        {"t_acked": float("nan")},
        {"chemistry": 3},
    ],
)
def test_invalid_record_is_refused_at_construction(changes: dict[str, object]) -> None:
    field = next(iter(changes))
    with pytest.raises(AuditRecordError, match=field) as info:
        make_record(1, **changes)
    assert isinstance(info.value, ValueError)


_finite = st.floats(allow_nan=False, allow_infinity=False)
_prob = st.none() | st.floats(min_value=0.0, max_value=1.0)
_records = st.builds(
    AuditRecord,
    item_id=st.text(min_size=1),
    source_line=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
    t_item=_finite,
    t_available=_finite,
    t_decided=_finite,
    chemistry=st.none() | st.text(),
    p_lead_acid=_prob,
    p_li_ion=_prob,
    p_other=_prob,
    lane=st.text(min_size=1),
    reason=st.text(min_size=1),
    model_id=st.text(min_size=1),
    latency_ms=st.floats(min_value=0.0, allow_infinity=False),
    deadline_ms=st.floats(min_value=0.0, allow_infinity=False),
    delivery=st.sampled_from(DELIVERY_STATES),
    plc_seq=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    plc_status=st.none() | st.text(),
    t_acked=st.none() | _finite,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=st.lists(_records, min_size=1, max_size=5))
def test_any_valid_record_round_trips(recs: list[AuditRecord]) -> None:
    with tempfile.TemporaryDirectory() as tmp, AuditLog(Path(tmp) / "a.sqlite") as log:
        inserted = log.record_decisions(recs)
        seen: set[str] = set()
        expected = []
        for rec in recs:
            expected.append(rec.item_id not in seen)
            seen.add(rec.item_id)
        assert inserted == expected
        assert list(log.rows()) == [r for r, new in zip(recs, inserted) if new]


# --------------------------------------------------------------------------- errors


def test_locked_database_raises_audit_error_and_records_nothing(db: Path, write_lock: sqlite3.Connection) -> None:
    # Opening an existing log needs no write lock (a restart is not stalled) ...
    with AuditLog(db, busy_timeout_s=0.05) as log:
        # ... but writing does, and fails cleanly after busy_timeout_s.
        with pytest.raises(AuditError, match="locked") as info:
            log.record_decision(make_record(1))
        assert isinstance(info.value, SorterError) and isinstance(info.value, OSError)
        write_lock.execute("ROLLBACK")
        assert log.count() == 0
        assert log.record_decision(make_record(1)) is True  # usable again


def test_closed_log_raises(db: Path) -> None:
    log = AuditLog(db)
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        log.record_decision(make_record(1))


# --------------------------------------------------------------------------- writer


def test_writer_future_resolves_only_after_the_row_is_committed(db: Path) -> None:
    committed_when_resolved: list[bool] = []

    def check(fut: Future[bool]) -> None:
        # Runs as soon as the future resolves: a fresh connection must see the row.
        item_id = ids[futures.index(fut)] if fut in futures else None
        with sqlite3.connect(db) as other:
            row = other.execute("SELECT 1 FROM decisions WHERE item_id = ?", (item_id,)).fetchone()
        committed_when_resolved.append(row is not None)

    ids = [f"it-{n}" for n in range(1, 201)]
    futures: list[Future[bool]] = []
    with AuditWriter(db) as writer:
        for n in range(1, 201):
            futures.append(writer.submit(make_record(n)))
        for fut in futures:
            fut.add_done_callback(check)
        assert [f.result(timeout=10) for f in futures] == [True] * 200
    assert committed_when_resolved == [True] * 200


def test_writer_futures_wait_for_commit_and_group_commit_batches(db: Path, write_lock: sqlite3.Connection) -> None:
    # Hold the write lock so the writer cannot commit; meanwhile 8 threads submit.
    futures: list[Future[bool]] = []
    guard = threading.Lock()

    def producer(base: int) -> None:
        for n in range(base, base + 60):
            fut = writer.submit(make_record(n))
            with guard:
                futures.append(fut)

    writer = AuditWriter(db, busy_timeout_s=20.0)
    try:
        threads = [threading.Thread(target=producer, args=(1 + 100 * k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.05)
        assert not any(f.done() for f in futures), "resolved before its commit"
        write_lock.execute("ROLLBACK")
        assert all(f.result(timeout=20) for f in futures)
        assert writer.entries == 480
        # Everything queued behind the lock went in at most two transactions.
        assert writer.transactions <= 2
    finally:
        writer.close()
    with AuditLog(db) as log:
        assert log.count() == 480


def test_writer_duplicates_and_deliveries_apply_in_order(db: Path) -> None:
    with AuditWriter(db) as writer:
        first = writer.submit(make_record(1))
        ack = writer.submit_delivery("it-1", "acked", plc_seq=5, plc_status="ok", t_acked=2e9)
        again = writer.submit(make_record(1, lane="manual"))
        unknown = writer.submit_delivery("it-404", "late")
        assert first.result(timeout=10) is True
        assert ack.result(timeout=10) is None
        assert again.result(timeout=10) is False
        with pytest.raises(AuditRecordError, match="it-404"):
            unknown.result(timeout=10)
        with pytest.raises(AuditRecordError):
            writer.submit_delivery("it-1", "lost")  # refused before queueing
    with AuditLog(db) as log:
        assert list(log.rows()) == [make_record(1, delivery="acked", plc_seq=5, plc_status="ok", t_acked=2e9)]


def test_delivery_updates_share_the_next_decisions_transaction_and_every_future_waits_for_its_commit(
    db: Path,
) -> None:
    """Group commit: a decision is committed at once (before it could be sent); the delivery
    updates waiting beside it go into the same transaction; each future resolves after the
    commit that holds its entry."""
    seen: list[tuple[str, bool]] = []

    def committed(kind: str, item_id: str, want: str | None) -> None:
        with sqlite3.connect(db) as other:
            row = other.execute("SELECT delivery FROM decisions WHERE item_id = ?", (item_id,)).fetchone()
        seen.append((kind, row is not None and (want is None or row[0] == want)))

    with AuditWriter(db, delivery_delay_s=5.0) as writer:
        for n in range(1, 41):
            fut = writer.submit(make_record(n))
            fut.add_done_callback(lambda _f, n=n: committed("decision", f"it-{n}", None))
            # The decision is on disk before the caller may send it: well before the delay.
            t0 = time.monotonic()
            assert fut.result(timeout=10) is True
            assert time.monotonic() - t0 < 2.5
            if n > 1:  # the previous item's outcome arrives while this one is in flight
                upd = writer.submit_delivery(f"it-{n - 1}", "acked", plc_seq=n - 1, plc_status="accepted", t_acked=2e9)
                upd.add_done_callback(lambda _f, n=n: committed("delivery", f"it-{n - 1}", "acked"))
        last = writer.submit_delivery("it-40", "late")
        time.sleep(0.05)
        assert not last.done(), "a lone delivery update waits for company (up to delivery_delay_s)"
    assert last.result() is None  # close() commits what was held back
    assert all(ok for _, ok in seen) and len(seen) == 40 + 39
    # One transaction per decision (the deliveries rode along), plus the one at close.
    assert writer.transactions <= 41
    with AuditLog(db) as log:
        assert log.counts_by_delivery() == {"acked": 39, "late": 1}


def test_a_held_delivery_update_is_committed_after_delivery_delay(db: Path) -> None:
    with AuditWriter(db, delivery_delay_s=0.05) as writer:
        assert writer.submit(make_record(1)).result(timeout=10)
        t0 = time.monotonic()
        writer.submit_delivery("it-1", "acked", plc_seq=1, plc_status="accepted", t_acked=2e9).result(timeout=10)
        assert time.monotonic() - t0 < 2.0
        assert stored_ids(db) == {"it-1"}
    with pytest.raises(AuditRecordError, match="delivery_delay_s"):
        AuditWriter(db, delivery_delay_s=-1.0)


def test_every_transaction_is_reported_to_the_commit_observer_and_a_failing_observer_changes_nothing(
    db: Path,
) -> None:
    seen: list[float] = []
    with AuditWriter(db, on_commit=seen.append) as writer:
        for i in range(1, 6):
            assert writer.submit(make_record(i)).result(timeout=10)
    assert len(seen) == writer.transactions == 5
    assert all(0 <= s < 10 for s in seen)

    def broken(_: float) -> None:
        raise RuntimeError("metrics backend gone")

    with AuditWriter(db, on_commit=broken) as writer:
        assert writer.submit(make_record(6)).result(timeout=10)
    assert stored_ids(db) == {f"it-{i}" for i in range(1, 7)}


def test_writer_futures_cannot_be_cancelled(db: Path) -> None:
    with AuditWriter(db) as writer:
        fut = writer.submit(make_record(1))
        assert fut.cancel() is False
        assert fut.result(timeout=10) is True


def test_close_drains_the_queue_and_refuses_new_entries(db: Path) -> None:
    writer = AuditWriter(db, max_batch=7)  # many small transactions left to drain
    futures = [writer.submit(make_record(n)) for n in range(1, 301)]
    writer.close()
    assert all(f.done() for f in futures)
    assert all(f.result() for f in futures)
    assert stored_ids(db) == {f"it-{n}" for n in range(1, 301)}
    with pytest.raises(AuditError, match="closed"):
        writer.submit(make_record(301))
    writer.close()  # idempotent


def test_writer_reports_a_failed_batch_and_carries_on(db: Path, write_lock: sqlite3.Connection) -> None:
    with AuditWriter(db, busy_timeout_s=0.05) as writer:
        failed = writer.submit(make_record(1))
        with pytest.raises(AuditError, match="locked"):
            failed.result(timeout=10)
        write_lock.execute("ROLLBACK")
        assert writer.submit(make_record(2)).result(timeout=10) is True
        assert writer.submit(make_record(1)).result(timeout=10) is True  # was not stored
    assert stored_ids(db) == {"it-1", "it-2"}


def test_submit_times_out_when_the_queue_stays_full(db: Path, write_lock: sqlite3.Connection) -> None:
    writer = AuditWriter(db, busy_timeout_s=20.0, max_queue=2, max_batch=1)
    try:
        accepted = [writer.submit(make_record(1))]  # taken by the (blocked) writer
        deadline = time.monotonic() + 5
        with pytest.raises(AuditError, match="queue full"):
            n = 2
            while time.monotonic() < deadline:
                accepted.append(writer.submit(make_record(n), timeout=0.05))
                n += 1
        write_lock.execute("ROLLBACK")
        assert all(f.result(timeout=20) for f in accepted)
    finally:
        writer.close()


# --------------------------------------------------------------------------- crash safety

_CHILD = r"""
import collections, sys, time
from sorter.line.audit import AuditLog, AuditRecord, AuditWriter
from sorter.line.audit.journal import replay

path = sys.argv[1]
journal = sys.argv[2] if len(sys.argv) > 2 else None
if journal:
    replay(path, journal)  # as the controller's start does, before it reads the resume point
    slow = AuditLog._apply  # SQLite lags the decisions: at the kill, many live only in the journal

    def lagging(self, ops):
        time.sleep(0.02)
        return slow(self, ops)

    AuditLog._apply = lagging
with AuditLog(path) as log:
    start = log.resume_point()
print("start", start, flush=True)

def record(n):
    return AuditRecord(f"it-{n}", n, 1.7e9 + n, 1.7e9 + n, 1.7e9 + n, "li_ion", 0.0, 1.0,
                       0.0, "li_ion", "confident", "m", 1.0, 90.0, "pending")

writer = AuditWriter(path, journal_dir=journal)
# A restarted controller re-reads a few lines before its resume point.
n = max(1, start - 5)
window = collections.deque()
while True:  # until killed
    while len(window) < 64:
        window.append(("decision", n, writer.submit(record(n))))
        n += 1
    kind, k, fut = window.popleft()
    result = fut.result()
    if kind == "delivery":
        print("acked", k, flush=True)
    elif result:
        print("decided", k, flush=True)
        if k % 3 == 0:
            window.append(("delivery", k, writer.submit_delivery(
                f"it-{k}", "acked", plc_seq=k, plc_status="ok", t_acked=1.7e9 + k)))
    else:
        print("dup", k, flush=True)
"""


def _run_and_kill(db: Path, delay_s: float, journal: Path | None = None) -> list[tuple[str, int]]:
    """Run the child writer, SIGKILL it ``delay_s`` after its first ack, return its acks."""
    env = dict(os.environ)
    package_root = str(Path(audit_module.__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), *([str(journal)] if journal else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    first_ack = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("decided", "dup")):
                first_ack.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not first_ack.wait(timeout=15):
            proc.kill()
            raise AssertionError(f"child never acknowledged: {proc.communicate()[1]}")
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    # Only whole lines count: a line torn by the kill was never acknowledged.
    acks = []
    for line in lines:
        if line.endswith("\n") and not line.startswith("start"):
            kind, n = line.split()
            acks.append((kind, int(n)))
    return acks


@pytest.mark.e2e  # a writer process killed with kill -9
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
@pytest.mark.parametrize("journaled", [False, True], ids=["commit-before-ack", "crash-journal"])
def test_everything_acknowledged_survives_kill_9_and_restart_resumes_exactly_once(
    db: Path, tmp_path: Path, journaled: bool
) -> None:
    """With the crash journal, a decision is acknowledged once it is on tmpfs and its SQLite commit
    lags (the child slows every commit); the restart's replay brings back every one of them."""
    rng = random.Random(20260117)
    journal = tmp_path / "journal" if journaled else None
    replays: list[int] = []
    for iteration in range(3):
        before = stored_ids(db) if db.exists() else set()
        acks = _run_and_kill(db, delay_s=rng.uniform(0.05, 0.8), journal=journal)
        if journal is not None:
            in_journal = {rec.item_id for rec, _ in iter_records(journal)}
            replayed = replay(db, journal)  # the next start's first step
            assert not any(journal.glob("*.jnl")), "the replay leaves no segment behind"
            assert replayed <= len(in_journal)
            replays.append(replayed)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = dict(conn.execute("SELECT item_id, delivery FROM decisions"))
            lines = sorted(r[0] for r in conn.execute("SELECT source_line FROM decisions"))
        decided = {f"it-{n}" for kind, n in acks if kind == "decided"}
        acked = {f"it-{n}" for kind, n in acks if kind == "acked"}
        dups = {f"it-{n}" for kind, n in acks if kind == "dup"}
        assert decided, f"iteration {iteration}: nothing was acknowledged before the kill"
        assert decided <= stored.keys(), f"iteration {iteration}: acknowledged rows lost"
        assert all(stored[i] == "acked" for i in acked), "acknowledged deliveries lost"
        # A duplicate is only ever an item stored before this run: exactly once.
        assert dups <= before
        assert not decided & before
        # Commits are FIFO and atomic, and the restart resumes at resume_point:
        # the stored source lines are 1..N with no gap and no repeat.
        assert lines == list(range(1, len(lines) + 1))
    if journaled:  # the kills found decisions that only the journal held
        assert sum(replays) > 0, replays


def test_full_sync_writer_checkpoints_off_the_commits(tmp_path: Path) -> None:
    """With sync="full" too, no commit runs SQLite's automatic checkpoint: the writer's own thread does it."""
    import shutil
    import sqlite3
    import time

    path = tmp_path / "audit.sqlite"
    with AuditWriter(path, sync="full", checkpoint_interval_s=0.05) as writer:
        for k in range(50):  # far under the 1000 pages of SQLite's automatic checkpoint
            assert writer.submit(
                AuditRecord(
                    f"ck-{k}",
                    k + 1,
                    1.7e9,
                    1.7e9,
                    1.7e9,
                    None,
                    None,
                    None,
                    None,
                    "manual",
                    "no_reading",
                    "m1",
                    1.0,
                    90.0,
                    "late",
                )
            ).result(timeout=30)
        assert writer.durability_lag_s() == 0.0  # every commit was synced: nothing waits for a flush

        def rows_in_database_file() -> int:
            copy = tmp_path / "copy.sqlite"  # the database file alone, without its WAL
            shutil.copyfile(path, copy)
            try:
                return sqlite3.connect(copy).execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            except sqlite3.Error:
                return 0
            finally:
                copy.unlink()

        deadline = time.monotonic() + 30
        while rows_in_database_file() < 50:
            assert time.monotonic() < deadline, "the WAL was never checkpointed into the database"
            time.sleep(0.05)
