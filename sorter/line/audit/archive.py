"""Archive old audit rows to Parquet, and read them back: what keeps the audit log a bounded size.

At 100 items/s the audit log gains about 360,000 rows (about 83 MB) an hour.  The line only needs the
recent rows (the resume point, the pending rows, the station's last hour); the rest is a record to keep,
not to query on the deadline path.  :func:`export_before` copies every decision decided before a date into
a Parquet file with a fixed schema (:data:`ARCHIVE_SCHEMA`), and with ``delete=True`` then removes the
copied rows from the SQLite log.  SQLite reuses the freed pages, so a log exported daily with
``--delete`` stays the size of its retention window (the file does not shrink; ``VACUUM`` with the line
stopped would shrink it).

Safe beside a running line:

- The export reads in pages of :data:`CHUNK_ROWS` rows by insertion id, each its own short read.
- The Parquet file is written to ``<out>.partial``, flushed to disk and renamed: a half-written archive
  never carries the final name, and nothing is deleted before the whole archive is on disk.
- Rows are deleted in transactions of at most :data:`CHUNK_ROWS` rows (a few milliseconds each, with
  a pause between them), so the line's writer, which waits for the write lock, is never held long.
- Rows still ``pending`` are neither exported nor deleted (the next start reconciles them), and the
  newest row is always kept: the controller resumes its source log after the highest recorded line.

Examples
--------
>>> import datetime as dt, tempfile, pathlib
>>> from sorter.line.audit import AuditLog, AuditRecord
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> with AuditLog(tmp / "audit.sqlite") as log:
...     for k, t in enumerate((1.7e9, 1.7e9 + 1, 1.8e9), 1):
...         _ = log.record_decision(AuditRecord(f"b-{k}", k, t, t, t, None, None, None, None,
...             "manual", "no_reading", "m1", 1.0, 90.0, "late"))
>>> res = export_before(tmp / "audit.sqlite", dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
...                     tmp / "old.parquet", delete=True)
>>> res.rows, res.deleted, [r.item_id for r in read_archive(tmp / "old.parquet")]
(2, 2, ['b-1', 'b-2'])
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from sorter.line.audit.record import SCHEMA_VERSION, AuditError, AuditRecord, StrPath
from sorter.line.audit.store import _wrap

logger = logging.getLogger(__name__)

__all__ = ["ARCHIVE_FORMAT", "ExportResult", "archive_schema", "export_before", "parse_date", "read_archive"]

ARCHIVE_FORMAT: Final = "sorter-audit-archive/1"
"""Value of the ``sorter.format`` key in the Parquet file's metadata."""

CHUNK_ROWS: Final = 5000
"""Rows per read page and per delete transaction."""

_COLUMNS: Final[tuple[str, ...]] = ("id",) + tuple(f.name for f in fields(AuditRecord))
_PAUSE_S: Final = 0.005  # between delete transactions: the line's writer takes the lock in between


def archive_schema() -> Any:
    """The Parquet schema of an archive: the ``decisions`` table's columns, typed, with ``id`` first.

    Times are float64 epoch seconds (UTC), as in the audit log; probabilities float64 or null.
    """
    import pyarrow as pa

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    cols = [
        ("id", i64, False),
        ("item_id", s, False),
        ("source_line", i64, True),
        ("t_item", f64, False),
        ("t_available", f64, False),
        ("t_decided", f64, False),
        ("chemistry", s, True),
        ("p_lead_acid", f64, True),
        ("p_li_ion", f64, True),
        ("p_other", f64, True),
        ("lane", s, False),
        ("reason", s, False),
        ("model_id", s, False),
        ("latency_ms", f64, False),
        ("deadline_ms", f64, False),
        ("delivery", s, False),
        ("plc_seq", i64, True),
        ("plc_status", s, True),
        ("t_acked", f64, True),
        ("energy_wh", f64, True),
        ("energy_wh_upper", f64, True),
        ("novelty", f64, True),
        ("weight_g", f64, True),
        ("case_id", s, True),
        ("case_seq", i64, True),
        ("case_status", s, True),
        ("case_reason", s, True),
    ]
    assert tuple(c[0] for c in cols) == _COLUMNS, "archive schema out of step with AuditRecord"
    return pa.schema(
        [pa.field(n, t, nullable=null) for n, t, null in cols],
        metadata={"sorter.format": ARCHIVE_FORMAT, "sorter.audit_schema": str(SCHEMA_VERSION)},
    )


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_before` did."""

    rows: int
    """Rows written to the archive."""
    deleted: int
    """Rows deleted from the audit log (0 without ``delete``)."""
    out: Path | None
    """The archive (``None`` when no row was old enough: no file is written)."""
    first_t: float | None
    last_t: float | None
    """Oldest and newest ``t_decided`` archived (epoch s)."""
    kept_pending: int
    """Rows before the date left in the log because their delivery is still ``pending``."""


def parse_date(text: str) -> dt.datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 time with a zone, as an aware datetime.

    Raises
    ------
    ValueError
        Naming the expected forms.
    """
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--before {text!r}: expected a date YYYY-MM-DD (midnight UTC) or an ISO 8601 time "
            "with a zone, e.g. 2026-11-01 or 2026-11-01T06:00:00+01:00"
        ) from None
    if when.tzinfo is None:
        if len(text.strip()) > 10:
            raise ValueError(f"--before {text!r}: a time needs a zone (e.g. +00:00), or give a date only")
        when = when.replace(tzinfo=dt.timezone.utc)
    return when


def _connect(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise AuditError(f"audit log {path} does not exist; give the audit.path of the line (--audit PATH)")
    try:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'").fetchone()
    except sqlite3.Error as err:
        raise _wrap(err, path, "open") from err
    if not has:
        conn.close()
        raise AuditError(f"audit log {path} has no decisions table; is it a sorter audit log?")
    return conn


def export_before(audit: StrPath, before: dt.datetime, out: StrPath, *, delete: bool = False) -> ExportResult:
    """Copy the decisions decided before ``before`` to a Parquet file; with ``delete``, then remove them.

    Parameters
    ----------
    audit : path
        The audit log (SQLite); the line may be running on it.
    before : datetime
        Rows with ``t_decided`` earlier than this (an aware datetime) are archived.
    out : path
        The Parquet file to write; refused if it exists.
    delete : bool
        Remove the archived rows from the audit log once the archive is on disk.

    Raises
    ------
    AuditError
        If the audit log cannot be read or written, or ``out`` exists.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if before.tzinfo is None:
        raise AuditError("export_before: `before` must be timezone-aware (e.g. UTC)")
    path, out = str(audit), Path(out)
    if out.exists():
        raise AuditError(f"{out} already exists; choose a new archive file name (nothing was exported)")
    cutoff = before.timestamp()
    conn = _connect(path)
    partial = out.with_name(out.name + ".partial")
    try:
        newest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0]
        where = "t_decided < ? AND delivery != 'pending' AND id < ?"
        schema = archive_schema()
        rows = 0
        first_t: float | None = None
        last_t: float | None = None
        last_id = 0
        writer = None
        try:
            while True:
                page = conn.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM decisions WHERE id > ? AND {where} "  # noqa: S608
                    "ORDER BY id LIMIT ?",
                    (last_id, cutoff, newest, CHUNK_ROWS),
                ).fetchall()
                if not page:
                    break
                if writer is None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(str(partial), schema, compression="zstd")
                columns = list(zip(*page))
                writer.write_table(
                    pa.table([pa.array(c, type=schema.field(k).type) for k, c in enumerate(columns)], schema=schema)
                )
                ts = columns[_COLUMNS.index("t_decided")]
                first_t = min(ts) if first_t is None else min(first_t, min(ts))
                last_t = max(ts) if last_t is None else max(last_t, max(ts))
                rows += len(page)
                last_id = page[-1][0]
        finally:
            if writer is not None:
                writer.close()
        kept_pending = int(
            conn.execute(
                "SELECT COUNT(*) FROM decisions WHERE delivery = 'pending' AND t_decided < ?", (cutoff,)
            ).fetchone()[0]
        )
        if rows == 0:
            return ExportResult(0, 0, None, None, None, kept_pending)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, out)
        dfd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        logger.info("audit log %s: %d rows before %s archived to %s", path, rows, before.isoformat(), out)
        deleted = _delete(conn, path, where, cutoff, newest, last_id) if delete else 0
        return ExportResult(rows, deleted, out, first_t, last_t, kept_pending)
    except sqlite3.Error as err:
        raise _wrap(err, path, "archive old rows") from err
    finally:
        partial.unlink(missing_ok=True)
        conn.close()


def _delete(conn: sqlite3.Connection, path: str, where: str, cutoff: float, newest: int, last_id: int) -> int:
    """Delete the archived rows (those matching ``where`` with ``id <= last_id``), a chunk per transaction."""
    deleted = 0
    lo = int(conn.execute("SELECT COALESCE(MIN(id), 1) FROM decisions").fetchone()[0]) - 1
    while lo < last_id:
        hi = min(last_id, lo + CHUNK_ROWS)
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                f"DELETE FROM decisions WHERE id > ? AND id <= ? AND {where}",  # noqa: S608
                (lo, hi, cutoff, newest),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        deleted += cur.rowcount
        lo = hi
        time.sleep(_PAUSE_S)
    logger.info("audit log %s: %d archived rows deleted", path, deleted)
    return deleted


def read_archive(path: StrPath) -> Iterator[AuditRecord]:
    """The decisions of an archive written by :func:`export_before`, in insertion order.

    Raises
    ------
    AuditError
        If the file is not a sorter audit archive.
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except (OSError, ValueError) as err:
        raise AuditError(f"{path}: not a readable Parquet file: {err}") from err
    meta = pf.schema_arrow.metadata or {}
    if meta.get(b"sorter.format") != ARCHIVE_FORMAT.encode():
        raise AuditError(
            f"{path}: not a sorter audit archive (format {meta.get(b'sorter.format')!r}, expected {ARCHIVE_FORMAT!r})"
        )
    for batch in pf.iter_batches(batch_size=CHUNK_ROWS):
        cols = batch.to_pydict()
        for k in range(batch.num_rows):
            yield AuditRecord(*(cols[c][k] for c in _COLUMNS[1:]))
