"""The audit store: the SQLite schema and :class:`AuditLog`, the synchronous API.

Why this module is long (about 600 lines): the schema, its additive migrations and every
query the line, the reconciliation, the cases and the station's readers make of it live
with the one connection discipline (transactions, busy waits, error wrapping) they share.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from types import TracebackType
from typing import Any, Final

from sorter.line.audit.record import (
    DELIVERY_STATES,
    SCHEMA_VERSION,
    SYNC_MODES,
    AuditError,
    AuditRecord,
    AuditRecordError,
    StrPath,
    _check_delivery,
    _is_finite,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- schema

_COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in fields(AuditRecord))

_DELIVERY_SQL: Final = ", ".join(f"'{state}'" for state in DELIVERY_STATES)
_SCHEMA: Final = f"""
CREATE TABLE decisions (
    id          INTEGER PRIMARY KEY,          -- insertion order
    item_id     TEXT    NOT NULL UNIQUE,
    source_line INTEGER CHECK (source_line IS NULL OR source_line >= 1),
    t_item      REAL    NOT NULL,
    t_available REAL    NOT NULL,
    t_decided   REAL    NOT NULL,
    chemistry   TEXT,
    p_lead_acid REAL,
    p_li_ion    REAL,
    p_other     REAL,
    lane        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    model_id    TEXT    NOT NULL,
    latency_ms  REAL    NOT NULL,
    deadline_ms REAL    NOT NULL,
    delivery    TEXT    NOT NULL CHECK (delivery IN ({_DELIVERY_SQL})),
    plc_seq     INTEGER,
    plc_status  TEXT,
    t_acked     REAL
);
CREATE INDEX decisions_source_line ON decisions (source_line);
CREATE INDEX decisions_pending ON decisions (id) WHERE delivery = 'pending';
"""
_EVENTS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    t       REAL    NOT NULL,              -- epoch s
    kind    TEXT    NOT NULL,
    detail  TEXT    NOT NULL               -- JSON object
)
"""
_EVENT_INSERT: Final = "INSERT INTO events (t, kind, detail) VALUES (?, ?, ?)"

# Issue 19: the number of decision rows, kept by triggers in the transaction that inserts or deletes
# them, so the controller's start and summary and the station read it in constant time: SQLite's
# COUNT(*) walks a whole index (seconds at 30 days of rows).  A trigger fires for every writer, an
# archive export's deletes and an older sorter's inserts included.  Added to older logs at open.
ROW_COUNT_TABLE: Final = "decision_count"
_ROW_COUNT_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS decision_count (n INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS decision_count_insert AFTER INSERT ON decisions "
    "BEGIN UPDATE decision_count SET n = n + 1; END",
    "CREATE TRIGGER IF NOT EXISTS decision_count_delete AFTER DELETE ON decisions "
    "BEGIN UPDATE decision_count SET n = n - 1; END",
)

# Issue 15: columns added to `decisions` after schema version 1 was written.  Additive, so the
# version stays 1: an older log gains them at open (NULL in its old rows), and an older sorter
# still reads a newer log (it names its columns).
_ADDED_COLUMNS: Final = (
    ("energy_wh", "REAL"),
    ("energy_wh_upper", "REAL"),
    ("novelty", "REAL"),
    ("weight_g", "REAL"),
    ("case_id", "TEXT"),
    ("case_seq", "INTEGER"),
    ("case_status", "TEXT"),
    ("case_reason", "TEXT"),
)

_INSERT: Final = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (item_id) DO NOTHING"
)
_UPDATE: Final = "UPDATE decisions SET delivery = ?, plc_seq = ?, plc_status = ?, t_acked = ? WHERE item_id = ?"
_SELECT: Final = f"SELECT id, {', '.join(_COLUMNS)} FROM decisions"
_PAGE_ROWS: Final = 1000

# An operation queued for a batch: ("decision", AuditRecord) or
# ("delivery", (item_id, delivery, plc_seq, plc_status, t_acked)).
_Op = tuple[str, Any]


def _event_payload(kind: str, detail: Mapping[str, Any], t: float | None) -> tuple[float, str, str]:
    if not isinstance(kind, str) or not kind:
        raise AuditRecordError(f"event kind must be a non-empty str, got {kind!r}")
    try:
        text = json.dumps(dict(detail), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise AuditRecordError(f"event {kind!r}: detail must be a JSON object of finite values: {err}") from err
    when = time.time() if t is None else t
    if not _is_finite(when):
        raise AuditRecordError(f"event {kind!r}: t must be a finite epoch time, got {t!r}")
    return (float(when), kind, text)


def _wrap(err: sqlite3.Error, path: str, doing: str) -> AuditError:
    text = str(err)
    if "locked" in text or "busy" in text:
        hint = "another process holds a write lock; stop it or raise busy_timeout_s"
    elif "full" in text:
        hint = "free disk space on the audit log's volume"
    elif "not a database" in text or "malformed" in text:
        hint = "the file is not a usable SQLite database; move it aside and start a new log"
    elif "unable to open" in text or "readonly" in text:
        hint = "check that the directory exists and is writable"
    else:
        hint = "check the disk and the file's permissions"
    return AuditError(f"audit log {path}: cannot {doing}: {text} ({hint})")


# --------------------------------------------------------------------------- log


class AuditLog:
    """Synchronous, durable audit log in one SQLite file.

    Every write commits before it returns (with fsync when ``sync="full"``).  One connection,
    guarded by a lock: any thread may call, one call at a time.

    Parameters
    ----------
    path : str or os.PathLike
        The database file; created with its schema if missing.  Its directory
        must exist.
    busy_timeout_s : float, default 5.0
        How long a write waits for another connection's lock before raising
        :class:`AuditError`.
    sync : {"full", "interval"}, default "full"
        ``"full"``: every commit waits for fsync.  ``"interval"``: commits do
        not wait for the disk and automatic checkpoints are off; only use it
        under an :class:`AuditWriter`, whose flusher makes the rows durable.
    autocheckpoint : bool, default True
        With ``sync="full"``: let SQLite checkpoint the WAL inside the commit that crosses 1000 pages
        (``wal_autocheckpoint``).  :class:`AuditWriter` turns it off and checkpoints from its own
        thread, so no decision's commit waits for a checkpoint.

    Raises
    ------
    AuditError
        If the file cannot be opened, WAL cannot be enabled (e.g. an
        in-memory database or a file system without shared memory), or the
        file holds another schema version.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> rec = AuditRecord("b-1", 1, 1.7e9, 1.7e9, 1.7e9, "li_ion", 0.0, 1.0, 0.0,
    ...                   "li_ion", "confident", "m1", 4.0, 90.0, "pending")
    >>> with AuditLog(tmp / "audit.sqlite") as log:
    ...     log.record_decision(rec), log.record_decision(rec)
    ...     log.record_delivery("b-1", "acked", plc_seq=7, plc_status="ok")
    ...     log.resume_point(), log.counts_by_delivery()
    (True, False)
    (1, {'acked': 1})
    """

    def __init__(
        self, path: StrPath, *, busy_timeout_s: float = 5.0, sync: str = "full", autocheckpoint: bool = True
    ) -> None:
        if not _is_finite(busy_timeout_s) or busy_timeout_s < 0:
            raise AuditRecordError(f"busy_timeout_s must be a finite number >= 0, got {busy_timeout_s!r}")
        if sync not in SYNC_MODES:
            raise AuditRecordError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
        self._sync = sync
        self._autocheckpoint = autocheckpoint
        self._path = str(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; we BEGIN/COMMIT
            # ourselves so "returned" means "committed".
            conn = sqlite3.connect(
                self._path,
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "open") from err
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        logger.debug("audit log %s open (schema %d)", self._path, SCHEMA_VERSION)

    def _setup(self, conn: sqlite3.Connection) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if self._sync == "full":
                conn.execute("PRAGMA synchronous=FULL")
                if not self._autocheckpoint:  # the AuditWriter's checkpointer thread does it, off the commits
                    conn.execute("PRAGMA wal_autocheckpoint=0")
            else:
                # Commits never call fsync, and never run a checkpoint (which would): the
                # AuditWriter's flusher does both, off the decisions' path.
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute("PRAGMA wal_autocheckpoint=0")
            # No-op on Linux; on macOS plain fsync does not reach the platter.
            conn.execute("PRAGMA fullfsync=ON")
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "open") from err
        if str(mode).lower() != "wal":
            raise AuditError(
                f"audit log {self._path}: SQLite refused WAL mode (journal_mode={mode}); "
                "use a file on a local disk, not ':memory:' or a network share"
            )
        # Reading the version needs no lock, so opening an existing log does not
        # wait for another writer; only creating the schema takes the write lock.
        version = self._schema_version(conn)
        if version is None:
            with self._transaction(conn, "create the schema"):
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                version = self._schema_version(conn)
                if version is None:  # nobody created it while we waited for the lock
                    # Statement by statement: executescript() would COMMIT on its
                    # own, and the schema must appear whole or not at all.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise AuditError(
                f"audit log {self._path} has schema version {version}, this sorter "
                f"writes version {SCHEMA_VERSION}; open it with the sorter that "
                "wrote it, or start a new log file"
            )
        try:
            has_events = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "read the schema") from err
        if not has_events:
            with self._transaction(conn, "add the events table"):
                conn.execute(_EVENTS_SCHEMA)
        self._add_columns(conn)
        self._add_row_count(conn)

    def _add_row_count(self, conn: sqlite3.Connection) -> None:
        """Issue 19's migration: the row-count table and its triggers, counted once from the rows there are."""
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "read the schema") from err
        if {ROW_COUNT_TABLE, "decision_count_insert", "decision_count_delete"} <= names:
            return
        with self._transaction(conn, "add the row count"):
            for statement in _ROW_COUNT_SCHEMA:
                conn.execute(statement)
            # under the write lock: no row can come or go between the count and the triggers
            conn.execute("DELETE FROM decision_count")
            conn.execute("INSERT INTO decision_count (n) SELECT COUNT(*) FROM decisions")

    def _add_columns(self, conn: sqlite3.Connection) -> None:
        """Issue 15's migration: add the missing `_ADDED_COLUMNS` (and the case index) in one transaction."""
        try:
            have = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "read the schema") from err
        missing = [(n, t) for n, t in _ADDED_COLUMNS if n not in have]
        if not missing:
            return
        with self._transaction(conn, "add the energy and case columns"):
            have = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}  # under the lock now
            for name, sql_type in missing:
                if name not in have:
                    conn.execute(f"ALTER TABLE decisions ADD COLUMN {name} {sql_type}")
            conn.execute(
                "CREATE INDEX IF NOT EXISTS decisions_case ON decisions (case_id, case_seq) WHERE case_id IS NOT NULL"
            )

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        try:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone():
                return None
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "read the schema version") from err
        return None if row is None else int(row[0])

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, doing: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

        IMMEDIATE takes the write lock up front, so a busy database fails at
        BEGIN (after busy_timeout) rather than half-way through a batch.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise _wrap(err, self._path, doing) from err
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:  # the original error is the one to report
                logger.exception("audit log %s: rollback failed", self._path)
            if isinstance(err, sqlite3.Error):
                raise _wrap(err, self._path, doing) from err
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AuditError(f"audit log {self._path} is closed; open a new AuditLog to use it")
        return self._conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise _wrap(err, self._path, "read") from err

    # -- writes -----------------------------------------------------------------

    @staticmethod
    def _insert(conn: sqlite3.Connection, rec: AuditRecord) -> bool:
        if not isinstance(rec, AuditRecord):
            raise AuditRecordError(
                f"expected an AuditRecord, got {type(rec).__name__}; build one with AuditRecord(...)"
            )
        cur = conn.execute(_INSERT, tuple(getattr(rec, c) for c in _COLUMNS))
        return cur.rowcount == 1

    def _update(self, conn: sqlite3.Connection, args: tuple[Any, ...]) -> AuditRecordError | None:
        item_id, delivery, plc_seq, plc_status, t_acked = args
        cur = conn.execute(_UPDATE, (delivery, plc_seq, plc_status, t_acked, item_id))
        if cur.rowcount == 0:
            return AuditRecordError(
                f"audit log {self._path}: no decision recorded for item {item_id!r}; "
                "record_decision must come before record_delivery"
            )
        return None

    def record_decision(self, rec: AuditRecord) -> bool:
        """Insert one decision and commit.

        Parameters
        ----------
        rec : AuditRecord
            The decision.

        Returns
        -------
        bool
            ``True`` if inserted; ``False`` if the item was already recorded
            (the stored row is left unchanged: exactly once across restarts).

        Raises
        ------
        AuditError
            If the write failed; the decision is then not recorded.
        """
        return self.record_decisions([rec])[0]

    def record_decisions(self, recs: Sequence[AuditRecord]) -> list[bool]:
        """Insert many decisions in one transaction (one fsync).

        Parameters
        ----------
        recs : sequence of AuditRecord
            The decisions, in order.

        Returns
        -------
        list of bool
            For each record, whether it was inserted (``False``: the item was
            already recorded, possibly earlier in ``recs``).

        Raises
        ------
        AuditError
            If the transaction failed; then none of ``recs`` is recorded.
        """
        recs = list(recs)
        for rec in recs:  # refuse before writing anything
            if not isinstance(rec, AuditRecord):
                raise AuditRecordError(f"expected AuditRecord items, got {type(rec).__name__}")
        with self._lock:
            conn = self._connection()
            with self._transaction(conn, "record decisions"):
                return [self._insert(conn, rec) for rec in recs]

    def record_delivery(
        self,
        item_id: str,
        delivery: str,
        *,
        plc_seq: int | None = None,
        plc_status: str | None = None,
        t_acked: float | None = None,
    ) -> None:
        """Set the delivery outcome of a recorded decision and commit.

        Parameters
        ----------
        item_id : str
            The item, already recorded with :meth:`record_decision`.
        delivery : str
            One of :data:`DELIVERY_STATES`.
        plc_seq, plc_status, t_acked
            Mailbox sequence, PLC status and ack time (epoch s); each is
            stored as given, ``None`` included.

        Raises
        ------
        AuditRecordError
            If a value is invalid or no decision is recorded for ``item_id``.
        AuditError
            If the write failed.
        """
        _check_delivery(item_id, delivery, plc_seq, plc_status, t_acked)
        with self._lock:
            conn = self._connection()
            with self._transaction(conn, "record a delivery"):
                problem = self._update(conn, (item_id, delivery, plc_seq, plc_status, t_acked))
        if problem is not None:
            raise problem

    def _apply(self, ops: Sequence[_Op]) -> list[bool | AuditRecordError | None]:
        """Run decisions and delivery updates, in order, in one transaction.

        Returns one result per op: ``bool`` for a decision, ``None`` or an
        :class:`AuditRecordError` (unknown item) for a delivery.  Raises
        :class:`AuditError` if the transaction failed (nothing written).
        """
        out: list[bool | AuditRecordError | None] = []
        with self._lock:
            conn = self._connection()
            with self._transaction(conn, f"record {len(ops)} entries"):
                for kind, payload in ops:
                    if kind == "decision":
                        out.append(self._insert(conn, payload))
                    elif kind == "decision+events":  # issue 15: a decision and the case events it caused
                        rec, events = payload
                        inserted = self._insert(conn, rec)
                        if inserted:
                            for event in events:
                                conn.execute(_EVENT_INSERT, event)
                        out.append(inserted)
                    elif kind == "event":
                        conn.execute(_EVENT_INSERT, payload)
                        out.append(None)
                    else:
                        out.append(self._update(conn, payload))
        return out

    def record_event(self, kind: str, detail: Mapping[str, Any], *, t: float | None = None) -> None:
        """Record something that is not one item's decision, and commit.

        Parameters
        ----------
        kind : str
            What happened, e.g. ``"reconciliation_gap"``, ``"durability_lag"``,
            ``"plc_protocol_fault"``, ``"plc_counters"``.
        detail : mapping
            JSON-serialisable details.
        t : float, optional
            When (epoch s); now by default.
        """
        payload = _event_payload(kind, detail, t)
        with self._lock:
            conn = self._connection()
            with self._transaction(conn, "record an event"):
                conn.execute(_EVENT_INSERT, payload)

    def events(self, kind: str | None = None) -> list[tuple[float, str, dict[str, Any]]]:
        """Recorded events ``(t, kind, detail)`` in order, all or of one kind."""
        if kind is None:
            rows = self._read("SELECT t, kind, detail FROM events ORDER BY id")
        else:
            rows = self._read("SELECT t, kind, detail FROM events WHERE kind = ? ORDER BY id", (kind,))
        return [(t, k, json.loads(d)) for t, k, d in rows]

    def case_items(self, case_id: str) -> list[AuditRecord]:
        """Issue 15: the items assigned to case ``case_id``, in case order (``case_seq``)."""
        rows = self._read(f"{_SELECT} WHERE case_id = ? AND case_status = 'assigned' ORDER BY case_seq", (case_id,))
        return [AuditRecord(*row[1:]) for row in rows]

    def last_id(self) -> int:
        """The insertion id of the newest decision (0 if none)."""
        return int(self._read("SELECT COALESCE(MAX(id), 0) FROM decisions")[0][0])

    def rows_after(self, row_id: int) -> list[tuple[int, AuditRecord]]:
        """Decisions with an insertion id above ``row_id``, with their id, in order."""
        rows = self._read(f"{_SELECT} WHERE id > ? ORDER BY id", (row_id,))
        return [(row[0], AuditRecord(*row[1:])) for row in rows]

    # -- reads ------------------------------------------------------------------

    def has(self, item_id: str) -> bool:
        """Whether a decision for ``item_id`` is recorded."""
        return bool(self._read("SELECT 1 FROM decisions WHERE item_id = ?", (item_id,)))

    def get(self, item_id: str) -> AuditRecord | None:
        """The recorded decision for ``item_id``, or ``None``."""
        rows = self._read(f"{_SELECT} WHERE item_id = ?", (item_id,))
        return AuditRecord(*rows[0][1:]) if rows else None

    def resume_point(self) -> int:
        """The highest ``source_line`` recorded, ``0`` if none.

        A restarted controller continues its source log after this line.
        """
        return int(self._read("SELECT COALESCE(MAX(source_line), 0) FROM decisions")[0][0])

    def count(self) -> int:
        """Number of decisions recorded (in constant time: the row-count table, not ``COUNT(*)``)."""
        return int(self._read("SELECT n FROM decision_count")[0][0])

    def counts_by_lane(self) -> dict[str, int]:
        """Number of decisions per lane (lanes without items are absent)."""
        return dict(self._read("SELECT lane, COUNT(*) FROM decisions GROUP BY lane ORDER BY lane"))

    def counts_by_delivery(self) -> dict[str, int]:
        """Number of decisions per delivery state (absent states omitted)."""
        return dict(self._read("SELECT delivery, COUNT(*) FROM decisions GROUP BY delivery ORDER BY delivery"))

    def rows(self) -> Iterator[AuditRecord]:
        """All decisions in insertion order.

        Reads in pages, so iterating a large log neither holds the lock nor
        the whole table in memory; rows committed while iterating may appear.
        """
        last = 0
        while True:
            page = self._read(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (last, _PAGE_ROWS))
            for row in page:
                yield AuditRecord(*row[1:])
            if len(page) < _PAGE_ROWS:
                return
            last = page[-1][0]

    def pending(self) -> list[AuditRecord]:
        """Decisions whose delivery is still ``pending``, in insertion order.

        After a crash these are the items whose fate at the PLC is unknown.
        """
        rows = self._read(f"{_SELECT} WHERE delivery = 'pending' ORDER BY id")
        return [AuditRecord(*row[1:]) for row in rows]

    def pragmas(self) -> dict[str, Any]:
        """The durability settings in force on this connection, as SQLite reports them.

        Returns
        -------
        dict
            ``journal_mode`` (``"wal"``), ``synchronous`` (``2`` = FULL; ``0``
            in ``"interval"`` mode, whose flusher syncs), ``wal_autocheckpoint``
            (``0`` in ``"interval"`` mode), ``busy_timeout_ms`` and ``schema_version``.
        """
        with self._lock:
            conn = self._connection()
            try:
                return {
                    "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                    "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
                    "wal_autocheckpoint": conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                    "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0],
                    "schema_version": conn.execute("SELECT version FROM schema_version").fetchone()[0],
                }
            except sqlite3.Error as err:
                raise _wrap(err, self._path, "read") from err

    # -- lifetime ---------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection; idempotent.  Everything returned is already committed."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                logger.debug("audit log %s closed", self._path)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"AuditLog({self._path!r}, {state})"
