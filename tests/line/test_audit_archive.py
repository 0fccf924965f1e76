"""Archiving old audit rows to Parquet (``sorter audit export``): what keeps the audit log bounded (issue 19)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sorter.cli import main
from sorter.line.audit import AuditError, AuditLog, AuditRecord, AuditWriter
from sorter.line.audit.archive import ARCHIVE_FORMAT, export_before, read_archive

DAY = 86400.0
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).timestamp()


def rec(k: int, t: float, delivery: str = "acked") -> AuditRecord:
    return AuditRecord(
        f"it-{k:05d}",
        k,
        t - 0.05,
        t - 0.01,
        t,
        "li_ion",
        0.01,
        0.98,
        0.01,
        "li_ion",
        "confident",
        "m1",
        4.0,
        90.0,
        delivery,
        plc_seq=k if delivery == "acked" else None,
        plc_status="ok" if delivery == "acked" else None,
        t_acked=t + 0.01 if delivery == "acked" else None,
    )


def fill(path: Path, days: int = 4, per_day: int = 50) -> list[AuditRecord]:
    recs = [rec(d * per_day + k + 1, T0 + d * DAY + k * 20.0) for d in range(days) for k in range(per_day)]
    recs[3] = rec(4, recs[3].t_decided, delivery="pending")  # an old row whose fate is not known yet
    with AuditLog(path) as log:
        log.record_decisions(recs)
    return recs


def test_export_then_delete_moves_old_rows_to_a_readable_parquet_file(tmp_path: Path) -> None:
    audit, out = tmp_path / "audit.sqlite", tmp_path / "arch" / "2026-11-01.parquet"
    recs = fill(audit)
    res = export_before(audit, dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc), out, delete=True)
    old = [r for r in recs if r.t_decided < T0 + 2 * DAY and r.delivery != "pending"]
    assert res.rows == res.deleted == len(old) == 99
    assert res.kept_pending == 1
    assert list(read_archive(out)) == old  # every field back as it was recorded
    meta = pq.ParquetFile(out).schema_arrow.metadata
    assert meta[b"sorter.format"] == ARCHIVE_FORMAT.encode()
    with AuditLog(audit) as log:
        left = list(log.rows())
        assert [r.item_id for r in left] == [r.item_id for r in recs if r not in old]
        assert log.resume_point() == len(recs)  # the controller resumes where it did


def test_export_without_delete_leaves_the_log_alone_and_never_archives_the_newest_row(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = fill(audit, days=1, per_day=10)
    res = export_before(audit, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), tmp_path / "a.parquet")
    assert res.rows == 8 and res.deleted == 0  # 10 minus the pending row and the newest row
    with AuditLog(audit) as log:
        assert log.count() == len(recs)
    res = export_before(audit, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), tmp_path / "b.parquet", delete=True)
    with AuditLog(audit) as log:
        assert [r.item_id for r in log.rows()] == [recs[3].item_id, recs[-1].item_id]
        assert log.resume_point() == len(recs)


def test_nothing_old_enough_writes_no_file_and_an_existing_archive_is_never_overwritten(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    fill(audit, days=1)
    res = export_before(audit, dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), tmp_path / "x.parquet", delete=True)
    assert res.out is None and not (tmp_path / "x.parquet").exists()
    (tmp_path / "y.parquet").write_bytes(b"keep me")
    with pytest.raises(AuditError, match="already exists"):
        export_before(audit, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), tmp_path / "y.parquet")
    assert (tmp_path / "y.parquet").read_bytes() == b"keep me"


def test_deleting_beside_a_running_writer_loses_none_of_its_rows(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    fill(audit, days=3, per_day=3000)
    with AuditWriter(audit) as writer:
        futs = [writer.submit(rec(100_000 + k, T0 + 10 * DAY + k)) for k in range(200)]
        res = export_before(
            audit, dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc), tmp_path / "a.parquet", delete=True
        )
        futs += [writer.submit(rec(200_000 + k, T0 + 10 * DAY + 300 + k)) for k in range(200)]
        assert all(f.result(timeout=60) for f in futs)
    assert res.deleted == 5999
    with AuditLog(audit) as log:
        assert log.count() == 3 * 3000 - 5999 + 400


def test_cli_exports_and_refuses_a_bad_date_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.sqlite"
    fill(audit, days=2, per_day=5)
    assert (
        main(
            [
                "audit",
                "export",
                "--audit",
                str(audit),
                "--before",
                "2026-11-02",
                "--out",
                str(tmp_path / "a.parquet"),
                "--delete",
            ]
        )
        == 0
    )
    assert "4 decisions" in capsys.readouterr().out
    assert (
        main(["audit", "export", "--audit", str(audit), "--before", "yesterday", "--out", str(tmp_path / "b.parquet")])
        == 2
    )
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert (
        main(
            [
                "audit",
                "export",
                "--audit",
                str(tmp_path / "nope.sqlite"),
                "--before",
                "2026-11-02",
                "--out",
                str(tmp_path / "c.parquet"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert sqlite3.connect(audit).execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 6


# ---- the row count (issue 19): the controller's start and summary read it instead of COUNT(*) ----------


def sql_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])


def test_the_row_count_follows_inserts_duplicates_rollbacks_other_writers_and_archive_deletes(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    with AuditLog(audit) as log:
        assert log.count() == 0
        recs = fill(audit)  # four days through a second connection
        assert log.count() == len(recs) == sql_count(audit)
        assert log.record_decisions(recs[:5] + [rec(900, T0 + 5 * DAY)]) == [False] * 5 + [True]
        assert log.count() == len(recs) + 1
        with sqlite3.connect(audit, isolation_level=None) as raw:
            cols = ", ".join(r[1] for r in raw.execute("PRAGMA table_info(decisions)") if r[1] not in ("id", "item_id"))
            copy = f"INSERT INTO decisions SELECT NULL, 'x-' || item_id, {cols} FROM decisions"  # noqa: S608
            raw.execute("BEGIN")  # a transaction that is rolled back changes nothing
            raw.execute(copy)
            raw.execute("DELETE FROM decisions WHERE id < 50")
            raw.execute("ROLLBACK")
            assert log.count() == len(recs) + 1 == sql_count(audit)
            raw.execute(copy + " WHERE id <= 3")  # a writer that knows nothing of the count (an older sorter)
        assert log.count() == len(recs) + 4 == sql_count(audit)
        res = export_before(
            audit, dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc), tmp_path / "o.parquet", delete=True
        )
        assert res.deleted == 99 + 2  # and two of the copies; the newest row stays
        assert log.count() == len(recs) + 4 - 101 == sql_count(audit)


def test_a_log_written_before_the_row_count_gains_it_counted_at_open(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = fill(audit)
    with sqlite3.connect(audit) as conn:  # as an older sorter left it
        conn.execute("DROP TRIGGER decision_count_insert")
        conn.execute("DROP TRIGGER decision_count_delete")
        conn.execute("DROP TABLE decision_count")
        conn.execute("DELETE FROM decisions WHERE id % 7 = 0")
    left = sql_count(audit)
    assert 0 < left < len(recs)
    with AuditLog(audit) as log:
        assert log.count() == left
        log.record_decision(rec(1000, T0 + 9 * DAY))
        assert log.count() == left + 1 == sql_count(audit)
    with AuditLog(audit) as log:  # opened again: counted once, not twice
        assert log.count() == left + 1
