"""The crash journal (issue 14): a decision is on tmpfs before it is sent; SQLite follows off the path.

- A stalled SQLite commit (a disk waiting on another process's flush) holds no decision back with
  the journal, and holds every one back without it.
- What the journal holds is written into the log by the next start; a torn tail is reported and
  the whole records before it are kept.
- A failing audit disk: journaled decisions (already sent) are kept and written when it recovers,
  or at the next start; new decisions are refused while it fails (not sent: the safe lane).
- One process per journal; segments are deleted once their rows are committed.
The kill -9 test of the writer with the journal is in ``test_audit.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sorter.line.audit import AuditError, AuditLog, AuditRecord, AuditWriter
from sorter.line.audit.journal import CrashJournal, encode, iter_records, journal_dir_for, read_segment, replay
from sorter.line.config import LineConfig


def record(n: int, lane: str = "li_ion") -> AuditRecord:
    return AuditRecord(
        f"it-{n}", n, 1.7e9 + n, 1.7e9 + n, 1.7e9 + n, "li_ion", 0.0, 1.0, 0.0, lane, "confident", "m", 1.0, 90.0,
        "pending",
    )  # fmt: skip


def rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT item_id FROM decisions ORDER BY id")]


def wait_for(cond, timeout: float = 30.0) -> bool:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


class StalledCommits:
    """Makes every SQLite transaction of the audit wait until released (a disk stuck in a flush)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.waiting = threading.Event()
        real = AuditLog._apply

        def stalled(log: AuditLog, ops):  # noqa: ANN001, ANN202 - the patched method's own signature
            self.waiting.set()
            self.release.wait(30)
            return real(log, ops)

        monkeypatch.setattr(AuditLog, "_apply", stalled)


def test_a_stalled_commit_holds_no_journaled_decision_back_and_every_one_reaches_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, journal = tmp_path / "audit.sqlite", tmp_path / "journal"
    stall = StalledCommits(monkeypatch)
    with AuditWriter(db, journal_dir=journal, sync_interval_s=0.005) as writer:
        futures = [writer.submit(record(n)) for n in range(1, 41)]
        assert all(f.done() and f.result() is True for f in futures), "a journaled decision waited for SQLite"
        assert stall.waiting.wait(30)
        assert writer.journal is not None and writer.journal.pending() == 40
        assert {r.item_id for r, _ in iter_records(journal)} == {f"it-{n}" for n in range(1, 41)}
        lag = writer.durability_lag_s()
        time.sleep(0.03)
        assert writer.durability_lag_s() > lag > 0  # what a power cut would lose is measured from the journal
        stall.release.set()
        assert wait_for(lambda: writer.journal is not None and writer.journal.pending() == 0)
    assert rows(db) == [f"it-{n}" for n in range(1, 41)]  # every one, in the order sent
    assert not list(journal.glob("*.jnl")), "a clean close leaves no journal"


def test_without_the_journal_a_stalled_commit_holds_the_decision_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stall = StalledCommits(monkeypatch)
    with AuditWriter(tmp_path / "audit.sqlite") as writer:
        fut = writer.submit(record(1))
        assert stall.waiting.wait(30)
        time.sleep(0.05)
        assert not fut.done()  # the decision would wait for the disk: what the journal removes
        stall.release.set()
        assert fut.result(timeout=30) is True


def test_a_killed_run_s_journal_is_written_into_the_log_at_the_next_start(tmp_path: Path) -> None:
    db, journal = tmp_path / "audit.sqlite", tmp_path / "journal"
    with AuditLog(db) as log:  # the run had committed the first two before it died
        log.record_decision(record(1))
        log.record_decision(record(2))
    j = CrashJournal(journal)
    for n in (1, 2, 3, 4):
        events = [(1.7e9, "case_close", '{"case_id":"L1-0001"}')] if n == 4 else []
        j.append(record(n), events)
    j.close(remove=False)  # what kill -9 leaves: the segment, its lock released with the process
    assert replay(db, journal) == 2  # 3 and 4; 1 and 2 were in the log already
    assert rows(db) == ["it-1", "it-2", "it-3", "it-4"]
    with AuditLog(db) as log:
        assert [k for _, k, _ in log.events("case_close")] == ["case_close"]  # in the decision's transaction
    assert not journal.exists()  # nothing left behind on tmpfs
    assert replay(db, journal) == 0  # nothing twice


def test_a_writer_opening_over_a_journal_replays_it_first_and_refuses_replayed_items(tmp_path: Path) -> None:
    db, journal = tmp_path / "audit.sqlite", tmp_path / "journal"
    j = CrashJournal(journal)
    j.append(record(1))
    j.close(remove=False)
    with AuditWriter(db, journal_dir=journal) as writer:
        # A restarted reader passes item 1 again: refused at once, not sent twice.
        assert writer.submit(record(1)).result(timeout=5) is False
        assert writer.submit(record(2)).result(timeout=5) is True
    assert rows(db) == ["it-1", "it-2"]


def test_a_torn_tail_is_reported_and_the_records_before_it_are_kept(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    db, journal = tmp_path / "audit.sqlite", tmp_path / "journal"
    j = CrashJournal(journal)
    j.append(record(1))
    j.append(record(2))
    j.close(remove=False)
    (segment,) = journal.glob("*.jnl")
    with segment.open("ab") as f:
        f.write(encode(record(3))[:-7])  # a record cut short
    records, problem = read_segment(segment)
    assert [r.item_id for r, _ in records] == ["it-1", "it-2"]
    assert problem is not None and "torn record" in problem
    with caplog.at_level("ERROR"):
        assert replay(db, journal) == 2
    assert "torn record" in caplog.text and str(segment) in caplog.text
    raw = bytearray(encode(record(4)))
    raw[-3] ^= 0xFF  # a flipped byte
    journal.mkdir()  # the replay removed the emptied journal
    (journal / "journal-00000009.jnl").write_bytes(bytes(raw))
    assert replay(db, journal) == 0
    assert "checksum" in caplog.text


def test_a_failing_disk_keeps_sent_decisions_and_refuses_new_ones_until_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, journal = tmp_path / "audit.sqlite", tmp_path / "journal"
    failing = threading.Event()
    real = AuditLog._apply

    def flaky(log: AuditLog, ops):  # noqa: ANN001, ANN202
        if failing.is_set():
            raise AuditError("database or disk is full")
        return real(log, ops)

    monkeypatch.setattr(AuditLog, "_apply", flaky)
    with AuditWriter(db, journal_dir=journal) as writer:
        failing.set()
        sent = writer.submit(record(1))
        assert sent.result(timeout=5) is True  # journaled: the controller sends it
        assert wait_for(lambda: writer.failing)
        refused = writer.submit(record(2))  # the disk fails: no new decision counts as recorded
        with pytest.raises(AuditError):
            refused.result(timeout=30)
        failing.clear()  # the disk recovers: the kept decision is written by the retry
        assert wait_for(lambda: rows(db) == ["it-1"])
        assert writer.submit(record(3)).result(timeout=5) is True
    assert rows(db) == ["it-1", "it-3"]


def test_a_disk_still_failing_at_close_leaves_the_journal_for_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, journal = tmp_path / "audit.sqlite", tmp_path / "journal"
    real = AuditLog._apply
    broken = {"on": False}

    def flaky(log: AuditLog, ops):  # noqa: ANN001, ANN202
        if broken["on"]:
            raise AuditError("disk I/O error")
        return real(log, ops)

    monkeypatch.setattr(AuditLog, "_apply", flaky)
    writer = AuditWriter(db, journal_dir=journal)
    broken["on"] = True
    assert writer.submit(record(7)).result(timeout=5) is True
    assert wait_for(lambda: writer.failing)
    writer.close()
    assert [r.item_id for r, _ in iter_records(journal)] == ["it-7"]
    broken["on"] = False
    with AuditWriter(db, journal_dir=journal):
        pass
    assert rows(db) == ["it-7"]


def test_one_process_per_journal(tmp_path: Path) -> None:
    j = CrashJournal(tmp_path / "journal")
    try:
        with pytest.raises(AuditError, match="in use by another process"):
            CrashJournal(tmp_path / "journal")
    finally:
        j.close(remove=True)
    CrashJournal(tmp_path / "journal").close(remove=True)  # free again once closed


def test_segments_rotate_and_are_deleted_once_their_rows_are_committed(tmp_path: Path) -> None:
    j = CrashJournal(tmp_path / "journal", segment_bytes=2000)
    segs = [j.append(record(n)) for n in range(1, 61)]
    assert len(set(segs)) > 3
    assert len(list((tmp_path / "journal").glob("*.jnl"))) == len(set(segs))
    for s in segs[:-1]:
        j.committed(s)
    # every closed segment is gone; the open one stays, with its one uncommitted record
    assert [p.name for p in (tmp_path / "journal").glob("*.jnl")] == [f"journal-{segs[-1]:08d}.jnl"]
    assert j.pending() == 1
    j.close(remove=True)


def test_the_line_config_puts_the_journal_on_tmpfs_per_audit_log(tmp_path: Path) -> None:
    a = journal_dir_for(tmp_path / "a.sqlite", "auto")
    b = journal_dir_for(tmp_path / "b.sqlite", "auto")
    if Path("/dev/shm").is_dir():
        assert a is not None and b is not None and a != b and a.parent == Path("/dev/shm")
    assert journal_dir_for(tmp_path / "a.sqlite", "off") is None
    assert journal_dir_for(tmp_path / "a.sqlite", str(tmp_path / "j")) == tmp_path / "j"
    assert LineConfig().audit.journal == "auto"
