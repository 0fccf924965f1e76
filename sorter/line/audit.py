"""Durable audit trail of the line controller: one SQLite row per item decided.

The controller records every decision here *before* it counts as made, and
later the outcome of its delivery to the PLC.  The log is built to survive a
crash of the process (``kill -9``) without losing anything it acknowledged:

- ``journal_mode=WAL``: a committed transaction is in the write-ahead log,
  visible to any other connection and to a restarted process, and readers
  never block the writer.
- Each public write commits before it returns; :class:`AuditWriter` resolves
  a future only after the transaction holding its row has committed.
- Two durability modes (``sync``):

  ``"full"`` (:class:`AuditLog`'s default): ``synchronous=FULL``, every
  commit waits for ``fsync``; a power cut loses nothing committed.

  ``"interval"`` (:class:`AuditWriter`'s default, the line's default): the
  writer's commits do not wait for the disk (``synchronous=OFF``, automatic
  checkpoints off), so a disk that stalls for hundreds of milliseconds never
  holds a decision back.  A separate *flusher* thread makes them durable on a
  fixed cadence (``sync_interval_s``): it ``fdatasync``s the WAL file, and now
  and then checkpoints the WAL into the database from its own connection
  with ``synchronous=FULL`` (WAL synced before the copy, database after it,
  so a WAL that the writer later reuses never holds the only copy of a row).
  A process crash (``kill -9``) loses nothing committed (the data is in the
  kernel's page cache); a power cut loses at most the rows committed since
  the last completed flush.  The flusher reports how far durability lags
  (``on_durable``) and records lags over ``lag_alarm_s`` in the ``events``
  table.
- An ``events`` table holds what is not one item's decision: durability lags,
  PLC protocol faults, reconciliation gaps, PLC counter snapshots
  (:meth:`AuditLog.record_event`, :meth:`AuditLog.events`).  It was added
  without changing the ``decisions`` layout, so the schema version is still 1
  and older logs gain the table when opened.
- ``item_id`` is unique: a restarted controller that re-reads part of its
  source log cannot record an item twice (:meth:`AuditLog.record_decision`
  returns ``False``), and :meth:`AuditLog.resume_point` tells it where to
  continue.

:class:`AuditLog` is the synchronous API (safe to call from any thread, one
call at a time, e.g. through :func:`asyncio.to_thread`).  :class:`AuditWriter`
owns an :class:`AuditLog` on a dedicated thread and group-commits whatever is
queued, which keeps throughput high at 100+ items/s while each caller still
waits for its own commit.

Failures of the database (locked, disk full, I/O error, not a database) are
raised as :class:`AuditError`; invalid values given to the log are refused
with :class:`AuditRecordError` before anything is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
from collections import deque
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from os import PathLike
from types import TracebackType
from typing import Any, Final, Literal

from sorter.errors import SorterError

logger = logging.getLogger(__name__)

__all__ = [
    "DELIVERY_STATES",
    "SYNC_MODES",
    "SCHEMA_VERSION",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "AuditRecordError",
    "AuditWriter",
    "Delivery",
]

SCHEMA_VERSION: Final = 1
"""Version of the table layout this module writes; stored in ``schema_version``."""

Delivery = Literal["pending", "acked", "late", "undelivered", "rejected"]
DELIVERY_STATES: Final[tuple[str, ...]] = (
    "pending",
    "acked",
    "late",
    "undelivered",
    "rejected",
)
"""Delivery states of a decision.

``pending``: recorded, not yet confirmed by the PLC.  ``acked``: the PLC
latched it before the deadline.  ``late``: the decision or its ack came after
the deadline (the item went to the safe lane).  ``undelivered``: never reached
the PLC.  ``rejected``: the PLC refused it (see ``plc_status``).
"""

StrPath = str | PathLike[str]

SYNC_MODES: Final[tuple[str, ...]] = ("interval", "full")
"""``"interval"``: commits do not wait for fsync, a flusher syncs on a cadence;
``"full"``: every commit waits for fsync (see the module notes)."""


class AuditError(SorterError, OSError):
    """The audit database could not be opened, read or written.

    Raised for a locked database, a full disk, an I/O error or a file that is
    not a sorter audit log.  A decision whose write raised this is *not*
    recorded.
    """


class AuditRecordError(SorterError, ValueError):
    """A value given to the audit log is invalid (refused before writing)."""


# --------------------------------------------------------------------------- record


_MAX_SQL_INT: Final = 2**63 - 1  # SQLite INTEGER is signed 64-bit


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decided item, as the controller records it.

    Times ending in ``t_`` are epoch seconds; durations carry their unit.

    Parameters
    ----------
    item_id : str
        Id the sensor bridge gave the item; unique in the log.
    source_line : int or None
        1-based line number of the item in the source log (``items.jsonl``),
        so a restarted controller can resume; ``None`` for a live source
        without line numbers.
    t_item : float
        Bridge time of the item (epoch s).
    t_available : float
        When the controller had the item's readings (epoch s).
    t_decided : float
        When the decision was made (epoch s).
    chemistry : str or None
        Predicted chemistry, ``None`` when no prediction was possible.
    p_lead_acid, p_li_ion, p_other : float or None
        Class probabilities in ``[0, 1]``, ``None`` without a prediction.
    lane : str
        Lane sent to the PLC.
    reason : str
        Why this lane (e.g. ``"confident"``, ``"deadline_missed"``).
    model_id : str
        Identity of the model that scored the item.
    latency_ms : float
        Decision latency, ``>= 0``.
    deadline_ms : float
        Budget the item had, ``>= 0``.
    delivery : str
        One of :data:`DELIVERY_STATES`.
    plc_seq : int or None
        Mailbox sequence number used for the divert, ``>= 0``.
    plc_status : str or None
        Status the PLC wrote back.
    t_acked : float or None
        When the PLC acknowledged (epoch s).

    Raises
    ------
    AuditRecordError
        If a field has the wrong type or an impossible value (NaN time,
        probability outside ``[0, 1]``, unknown delivery state ...).

    Examples
    --------
    >>> rec = AuditRecord(
    ...     item_id="b-0001", source_line=1, t_item=1.7e9, t_available=1.7e9 + 0.02,
    ...     t_decided=1.7e9 + 0.025, chemistry="li_ion", p_lead_acid=0.01,
    ...     p_li_ion=0.98, p_other=0.01, lane="li_ion", reason="confident",
    ...     model_id="hgb-2026-01", latency_ms=5.0, deadline_ms=90.0,
    ...     delivery="pending")
    >>> rec.lane
    'li_ion'
    """

    item_id: str
    source_line: int | None
    t_item: float
    t_available: float
    t_decided: float
    chemistry: str | None
    p_lead_acid: float | None
    p_li_ion: float | None
    p_other: float | None
    lane: str
    reason: str
    model_id: str
    latency_ms: float
    deadline_ms: float
    delivery: str
    plc_seq: int | None = None
    plc_status: str | None = None
    t_acked: float | None = None
    # -- issue 15 (added columns, see _ADDED_COLUMNS): energy, novelty and the case station --
    energy_wh: float | None = None
    """Rated-energy estimate, Wh (items of the energy lanes; ``None`` otherwise)."""
    energy_wh_upper: float | None = None
    """Its upper bound, Wh (what cases are packed against)."""
    novelty: float | None = None
    """Distance from the training data (``sorter.novelty``)."""
    weight_g: float | None = None
    """The scale's reading, g (a case's mass limit is checked with it)."""
    case_id: str | None = None
    """The case the item was assigned to (``case_status = "assigned"``)."""
    case_seq: int | None = None
    """Its position in that case (1 = first)."""
    case_status: str | None = None
    """``assigned``, ``not_packable`` or ``no_case_ready`` for items of the case station's lane; else ``None``."""
    case_reason: str | None = None
    """Why not packed (``not_packable``, ``no_case_ready``)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        problems.extend(_case_problems(self))
        for name in ("item_id", "lane", "reason", "model_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name} must be a non-empty str, got {value!r}")
        for name in ("chemistry", "plc_status"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a str or None, got {value!r}")
        if self.source_line is not None and (
            not _is_int(self.source_line) or not 1 <= self.source_line <= _MAX_SQL_INT
        ):
            problems.append(
                f"source_line must be a 1-based int below 2**63 or None, "
                f"got {self.source_line!r}"
            )
        for name in ("t_item", "t_available", "t_decided"):
            value = getattr(self, name)
            if not _is_finite(value):
                problems.append(f"{name} must be a finite number (epoch s), got {value!r}")
        for name in ("latency_ms", "deadline_ms"):
            value = getattr(self, name)
            if not _is_finite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("p_lead_acid", "p_li_ion", "p_other"):
            value = getattr(self, name)
            if value is not None and (not _is_finite(value) or not 0.0 <= value <= 1.0):
                problems.append(f"{name} must be None or in [0, 1], got {value!r}")
        problems.extend(
            _delivery_problems(self.delivery, self.plc_seq, self.plc_status, self.t_acked)
        )
        if problems:
            raise AuditRecordError(
                f"invalid AuditRecord for item {self.item_id!r}: "
                + "; ".join(problems)
            )


CASE_STATUSES: Final = ("assigned", "not_packable", "no_case_ready")


def _case_problems(rec: AuditRecord) -> list[str]:
    """The issue-15 columns: numbers finite (or None), a known case status, a case and seq when assigned."""
    problems = []
    for name in ("energy_wh", "energy_wh_upper", "novelty", "weight_g"):
        value = getattr(rec, name)
        if value is not None and not _is_finite(value):
            problems.append(f"{name} must be a finite number or None, got {value!r}")
    if rec.case_status is not None and rec.case_status not in CASE_STATUSES:
        problems.append(f"case_status must be one of {CASE_STATUSES} or None, got {rec.case_status!r}")
    if rec.case_status == "assigned" and not (isinstance(rec.case_id, str) and rec.case_id and _is_int(rec.case_seq)
                                               and rec.case_seq >= 1):  # type: ignore[operator]
        problems.append(f"an assigned item needs a case_id and a case_seq >= 1, got {rec.case_id!r}, {rec.case_seq!r}")
    for name in ("case_id", "case_reason"):
        value = getattr(rec, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a str or None, got {value!r}")
    return problems


def _delivery_problems(
    delivery: object, plc_seq: object, plc_status: object, t_acked: object
) -> list[str]:
    problems = []
    if delivery not in DELIVERY_STATES:
        problems.append(f"delivery must be one of {DELIVERY_STATES}, got {delivery!r}")
    if plc_seq is not None and (
        not _is_int(plc_seq) or not 0 <= plc_seq <= _MAX_SQL_INT  # type: ignore[operator]
    ):
        problems.append(f"plc_seq must be an int in [0, 2**63) or None, got {plc_seq!r}")
    if plc_status is not None and not isinstance(plc_status, str):
        problems.append(f"plc_status must be a str or None, got {plc_status!r}")
    if t_acked is not None and not _is_finite(t_acked):
        problems.append(f"t_acked must be a finite number (epoch s) or None, got {t_acked!r}")
    return problems


def _check_delivery(
    item_id: object, delivery: object, plc_seq: object, plc_status: object, t_acked: object
) -> None:
    problems = _delivery_problems(delivery, plc_seq, plc_status, t_acked)
    if not isinstance(item_id, str) or not item_id:
        problems.insert(0, f"item_id must be a non-empty str, got {item_id!r}")
    if problems:
        raise AuditRecordError(
            f"invalid delivery update for item {item_id!r}: " + "; ".join(problems)
        )


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

# Issue 15: columns added to `decisions` after schema version 1 was written.  Additive, so the
# version stays 1: an older log gains them at open (NULL in its old rows), and an older sorter
# still reads a newer log (it names its columns).
_ADDED_COLUMNS: Final = (
    ("energy_wh", "REAL"), ("energy_wh_upper", "REAL"), ("novelty", "REAL"), ("weight_g", "REAL"),
    ("case_id", "TEXT"), ("case_seq", "INTEGER"), ("case_status", "TEXT"), ("case_reason", "TEXT"),
)

_INSERT: Final = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (item_id) DO NOTHING"
)
_UPDATE: Final = (
    "UPDATE decisions SET delivery = ?, plc_seq = ?, plc_status = ?, t_acked = ? "
    "WHERE item_id = ?"
)
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
        hint = (
            "another process holds a write lock; stop it or raise busy_timeout_s"
        )
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

    def __init__(self, path: StrPath, *, busy_timeout_s: float = 5.0, sync: str = "full") -> None:
        if not _is_finite(busy_timeout_s) or busy_timeout_s < 0:
            raise AuditRecordError(
                f"busy_timeout_s must be a finite number >= 0, got {busy_timeout_s!r}"
            )
        if sync not in SYNC_MODES:
            raise AuditRecordError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
        self._sync = sync
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
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                version = self._schema_version(conn)
                if version is None:  # nobody created it while we waited for the lock
                    # Statement by statement: executescript() would COMMIT on its
                    # own, and the schema must appear whole or not at all.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                    )
                    version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise AuditError(
                f"audit log {self._path} has schema version {version}, this sorter "
                f"writes version {SCHEMA_VERSION}; open it with the sorter that "
                "wrote it, or start a new log file"
            )
        try:
            has_events = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
        except sqlite3.Error as err:
            raise _wrap(err, self._path, "read the schema") from err
        if not has_events:
            with self._transaction(conn, "add the events table"):
                conn.execute(_EVENTS_SCHEMA)
        self._add_columns(conn)

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
            conn.execute("CREATE INDEX IF NOT EXISTS decisions_case ON decisions (case_id, case_seq) "
                         "WHERE case_id IS NOT NULL")

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
    def _transaction(
        self, conn: sqlite3.Connection, doing: str
    ) -> Iterator[sqlite3.Connection]:
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
            raise AuditError(
                f"audit log {self._path} is closed; open a new AuditLog to use it"
            )
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
                f"expected an AuditRecord, got {type(rec).__name__}; build one with "
                "AuditRecord(...)"
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
                raise AuditRecordError(
                    f"expected AuditRecord items, got {type(rec).__name__}"
                )
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
                problem = self._update(
                    conn, (item_id, delivery, plc_seq, plc_status, t_acked)
                )
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
        rows = self._read(f"{_SELECT} WHERE case_id = ? AND case_status = 'assigned' ORDER BY case_seq",
                          (case_id,))
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
        """Number of decisions recorded."""
        return int(self._read("SELECT COUNT(*) FROM decisions")[0][0])

    def counts_by_lane(self) -> dict[str, int]:
        """Number of decisions per lane (lanes without items are absent)."""
        return dict(self._read("SELECT lane, COUNT(*) FROM decisions GROUP BY lane ORDER BY lane"))

    def counts_by_delivery(self) -> dict[str, int]:
        """Number of decisions per delivery state (absent states omitted)."""
        return dict(
            self._read(
                "SELECT delivery, COUNT(*) FROM decisions GROUP BY delivery ORDER BY delivery"
            )
        )

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
                    "schema_version": conn.execute(
                        "SELECT version FROM schema_version"
                    ).fetchone()[0],
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


# --------------------------------------------------------------------------- writer


_STOP: Final = object()
_WAL_RESET_FRAMES: Final = 4000  # about 16 MB of WAL: then the flusher lets the WAL start over (see _flush_loop)


class AuditWriter:
    """An :class:`AuditLog` on its own thread, with group commit.

    :meth:`submit` queues a decision and returns a future that resolves only
    after the transaction holding its row has committed.  The thread takes
    everything queued (up to ``max_batch``) into one transaction, so many
    concurrent submissions share one fsync.

    Parameters
    ----------
    path : str or os.PathLike
        The database file (see :class:`AuditLog`).
    busy_timeout_s : float, default 5.0
        See :class:`AuditLog`.
    max_queue : int, default 10_000
        Bound of the queue; :meth:`submit` blocks (or times out) when full,
        which means the disk is not keeping up.
    max_batch : int, default 1000
        Most entries per transaction.
    delivery_delay_s : float, default 0.0
        How long a delivery update may wait for company before it is
        committed.  Decisions are never held back: a decision is committed as
        soon as the thread takes it, together with every delivery update
        waiting, so on a busy line each item costs one transaction (one fsync)
        instead of two.  A delivery update waits at most this long (a crash
        within that window leaves its row ``pending``, which the next start
        marks ``undelivered``; the PLC's counters stay the truth).
    on_commit : callable, optional
        Called on the writer thread with the seconds each transaction took
        (write, and fsync when ``sync="full"``), e.g. a metrics histogram's ``observe``.
    sync : {"interval", "full"}, default "interval"
        ``"interval"``: commits do not wait for the disk; the flusher thread
        makes them durable every ``sync_interval_s``.  ``"full"``: every
        commit waits for fsync (for disks with power-loss protection, whose
        fsync is fast and steady).  See the module notes.
    sync_interval_s : float, default 0.02
        Cadence of the flusher (``"interval"`` mode), 0.001..1 s.  A power cut
        loses at most the rows committed since the last completed flush:
        about this long, plus the flush itself when the disk stalls.
    checkpoint_interval_s : float, default 1.0
        How often the flusher checkpoints the WAL into the database (sooner
        when the last checkpoint left more than 1000 frames, about 4 MB), so
        the WAL is reset from its start often and stays small.
    on_durable : callable, optional
        Called on the flusher thread after each flush with the durability lag
        in seconds: how long the oldest row it made durable had waited since
        its transaction began.  E.g. a metrics histogram's ``observe``.
    lag_alarm_s : float, default 0.25
        A flush whose lag exceeds this is logged (WARNING) and recorded in the
        ``events`` table as ``durability_lag`` (at most one record every 10 s,
        with the worst lag and the count since the last record).

    Raises
    ------
    AuditError
        If the log cannot be opened (raised here, by the constructor).

    Notes
    -----
    Futures cannot be cancelled: once submitted, an entry will be written
    (a caller that stops waiting, e.g. on an asyncio timeout, does not take a
    decision out of the audit trail).  From asyncio, await
    ``asyncio.wrap_future(writer.submit(rec))``.  If the transaction fails,
    every future of that batch gets the :class:`AuditError`; the writer then
    carries on with the next batch.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> rec = AuditRecord("b-1", 1, 1.7e9, 1.7e9, 1.7e9, None, None, None, None,
    ...                   "manual", "no_reading", "m1", 1.0, 90.0, "pending")
    >>> with AuditWriter(tmp / "audit.sqlite") as writer:
    ...     writer.submit(rec).result(), writer.submit(rec).result()
    ...     writer.submit_delivery("b-1", "late").result()
    (True, False)
    """

    def __init__(
        self,
        path: StrPath,
        *,
        busy_timeout_s: float = 5.0,
        max_queue: int = 10_000,
        max_batch: int = 1000,
        delivery_delay_s: float = 0.0,
        on_commit: Callable[[float], None] | None = None,
        sync: str = "interval",
        sync_interval_s: float = 0.02,
        checkpoint_interval_s: float = 1.0,
        on_durable: Callable[[float], None] | None = None,
        lag_alarm_s: float = 0.25,
    ) -> None:
        if sync not in SYNC_MODES:
            raise AuditRecordError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
        if not _is_finite(sync_interval_s) or not 0.001 <= sync_interval_s <= 1.0:
            raise AuditRecordError(f"sync_interval_s must be in [0.001, 1] s, got {sync_interval_s!r}")
        if not _is_finite(checkpoint_interval_s) or checkpoint_interval_s <= 0:
            raise AuditRecordError(f"checkpoint_interval_s must be > 0, got {checkpoint_interval_s!r}")
        if not _is_finite(lag_alarm_s) or lag_alarm_s <= 0:
            raise AuditRecordError(f"lag_alarm_s must be > 0, got {lag_alarm_s!r}")
        self._sync = sync
        self._sync_interval_s = float(sync_interval_s)
        self._checkpoint_interval_s = float(checkpoint_interval_s)
        self._on_durable = on_durable
        self._lag_alarm_s = float(lag_alarm_s)
        # Held by the writer around each transaction and by the flusher while it notes what
        # a flush will cover, so "committed before the flush began" is exact.
        self._commit_lock = threading.Lock()
        self._unsynced_since: float | None = None  # monotonic start of the oldest commit not yet flushed
        self._flushing_since: float | None = None  # the same, for the flush in progress
        self._flushes = 0
        self._max_lag_s = 0.0
        self.wal_resets = 0
        self._last_sync_s = 0.0  # how long the last fdatasync of the WAL took (the disk's quickness)
        """Checkpoints that held the writer for the WAL's short tail so the WAL could start over."""
        self._flush_stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.flush_hook: Callable[[str], None] | None = None
        """Test hook, called on the flusher thread: ``"snapshot"`` with the writer held
        (the files then hold exactly what this flush will make durable), ``"synced"``
        once the flush is on disk.  Used to simulate a power cut."""
        if not _is_finite(delivery_delay_s) or not 0.0 <= delivery_delay_s <= 10.0:
            raise AuditRecordError(f"delivery_delay_s must be in [0, 10] s, got {delivery_delay_s!r}")
        if not _is_int(max_queue) or max_queue < 1:
            raise AuditRecordError(f"max_queue must be an int >= 1, got {max_queue!r}")
        if not _is_int(max_batch) or max_batch < 1:
            raise AuditRecordError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self._path = str(path)
        self._max_batch = max_batch
        self._delivery_delay_s = float(delivery_delay_s)
        self._on_commit = on_commit
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._submit_lock = threading.Lock()
        self._closed = False
        self._transactions = 0
        self._entries = 0
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run,
            args=(busy_timeout_s, started),
            name=f"sorter-audit-writer[{self._path}]",
            # Daemon: a program that forgets close() must still exit; anything
            # whose future had resolved is committed regardless.
            daemon=True,
        )
        self._thread.start()
        started.result()  # re-raises AuditError from opening the log
        if self._sync == "interval":
            flusher_started: Future[None] = Future()
            self._flusher = threading.Thread(
                target=self._flush_loop,
                args=(busy_timeout_s, flusher_started),
                name=f"sorter-audit-flusher[{self._path}]",
                daemon=True,
            )
            self._flusher.start()
            try:
                flusher_started.result()
            except BaseException:
                self.close()
                raise

    # -- the flusher thread ---------------------------------------------------

    def _flush_loop(self, busy_timeout_s: float, started: Future[None]) -> None:
        """Make committed rows durable every ``sync_interval_s``, off the decisions' path."""
        try:
            # Its own connection, synchronous=FULL: a checkpoint it runs syncs the WAL before
            # copying it and the database after, before the writer may reuse the WAL.
            conn = sqlite3.connect(self._path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as err:
            started.set_exception(_wrap(err, self._path, "open the flusher's connection"))
            return
        started.set_result(None)
        wal = self._path + "-wal"
        next_checkpoint = time.monotonic() + self._checkpoint_interval_s
        lag_note: tuple[float, int] | None = None  # (worst lag, flushes over the alarm) since the last record
        behind = 0  # WAL frames the last checkpoint could not copy yet
        wal_frames = 0  # frames in the WAL at the last checkpoint
        recent: deque[float] = deque(maxlen=5)  # seconds the last flushes' fdatasync took
        last_note = 0.0
        try:
            while True:
                stopping = self._flush_stop.wait(self._sync_interval_s)
                lag = self._flush_once(wal)
                now = time.monotonic()
                if lag is not None:
                    recent.append(self._last_sync_s)
                if lag is not None and lag > self._lag_alarm_s:
                    worst, count = lag_note or (0.0, 0)
                    lag_note = (max(worst, lag), count + 1)
                if lag_note is not None and (now - last_note >= 10.0 or stopping):
                    worst, count = lag_note
                    logger.warning("audit log %s: durability lagged %.0f ms behind the commits (%d flush(es) over "
                                   "%.0f ms); a power cut now would lose that much", self._path, 1000 * worst,
                                   count, 1000 * self._lag_alarm_s)
                    with suppress(AuditError):
                        self.submit_event("durability_lag", {"worst_lag_ms": round(1000 * worst, 1),
                                                             "flushes_over_alarm": count,
                                                             "alarm_ms": 1000 * self._lag_alarm_s})
                    lag_note, last_note = None, now
                if stopping:
                    return
                if now >= next_checkpoint or behind > 1000:
                    next_checkpoint = now + self._checkpoint_interval_s
                    # A checkpoint running beside the writer copies the WAL into the database, but the
                    # writer only starts the WAL over when a checkpoint has copied *everything* before
                    # its next transaction, which a steady stream of commits never allows.  So once the
                    # WAL is long, and only while the disk is quick (the last flushes synced in under
                    # 10 ms), the writer is held for one checkpoint of the short tail (a WAL sync, a
                    # copy, a database sync: milliseconds on a quick disk); then the WAL restarts.
                    quiesce = wal_frames > _WAL_RESET_FRAMES and len(recent) == recent.maxlen and \
                        max(recent) < 0.010
                    try:
                        if quiesce:
                            with self._commit_lock:
                                result = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                            self.wal_resets += 1
                        else:
                            result = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                        _busy, wal_frames, copied = result  # frames in the WAL, frames copied
                        behind = max(0, wal_frames - copied) if wal_frames >= 0 else 0
                    except sqlite3.Error as err:  # busy now and then: the next one catches up
                        logger.debug("audit log %s: checkpoint skipped: %s", self._path, err)
        except BaseException:
            logger.exception("audit flusher %s stopped unexpectedly; rows are committed but no longer "
                             "flushed on a cadence", self._path)
            raise
        finally:
            conn.close()

    def _flush_once(self, wal: str) -> float | None:
        """One flush: fdatasync the WAL.  Returns the durability lag, ``None`` if nothing was new."""
        with self._commit_lock:
            since, self._unsynced_since = self._unsynced_since, None
            self._flushing_since = since
            if since is not None and self.flush_hook is not None:
                self.flush_hook("snapshot")
        if since is None:
            return None
        try:
            return self._sync_wal(wal, since)
        finally:
            self._flushing_since = None

    def _sync_wal(self, wal: str, since: float) -> float | None:
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # no WAL: everything is in the database file, synced by the checkpoint that removed it
        except OSError as err:
            logger.error("audit log %s: cannot open the WAL to flush it: %s", self._path, err)
            with self._commit_lock:  # still unsynced: the next flush must cover it
                self._unsynced_since = since if self._unsynced_since is None else min(since, self._unsynced_since)
            return None
        if fd is not None:
            try:
                t_sync = time.monotonic()
                os.fdatasync(fd)
                self._last_sync_s = time.monotonic() - t_sync
            except OSError as err:
                logger.error("audit log %s: fdatasync of the WAL failed: %s", self._path, err)
                with self._commit_lock:
                    self._unsynced_since = (since if self._unsynced_since is None
                                            else min(since, self._unsynced_since))
                return None
            finally:
                os.close(fd)
        lag = time.monotonic() - since
        self._flushes += 1
        self._max_lag_s = max(self._max_lag_s, lag)
        if self.flush_hook is not None:
            self.flush_hook("synced")
        if self._on_durable is not None:
            try:
                self._on_durable(lag)
            except Exception:  # noqa: BLE001 - an observer must not stop the flusher
                logger.exception("audit flusher %s: durability observer failed", self._path)
        return lag

    # -- the writer thread ----------------------------------------------------

    def _run(self, busy_timeout_s: float, started: Future[None]) -> None:
        try:
            log = AuditLog(self._path, busy_timeout_s=busy_timeout_s, sync=self._sync)
        except BaseException as err:
            started.set_exception(err)
            return
        started.set_result(None)
        try:
            stop = False
            while not stop:
                batch: list[tuple[str, Any, Future[Any]]] = []
                item = self._queue.get()
                hold_until: float | None = None
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        item = self._queue.get_nowait()
                        continue
                    except queue.Empty:
                        pass
                    # Nothing more queued.  Only delivery updates so far: wait (a little) for a
                    # decision to share the transaction with.  A decision is never held back.
                    if self._delivery_delay_s <= 0 or any(kind == "decision" for kind, _, _ in batch):
                        break
                    now = time.monotonic()
                    if hold_until is None:
                        hold_until = now + self._delivery_delay_s
                    if now >= hold_until:
                        break
                    try:
                        item = self._queue.get(timeout=hold_until - now)
                    except queue.Empty:
                        break
                if batch:
                    self._commit(log, batch)
        except BaseException as err:  # a bug here must not strand callers
            logger.exception("audit writer %s stopped unexpectedly", self._path)
            with self._submit_lock:
                self._closed = True
            self._fail_queued(err)
            raise
        finally:
            log.close()

    def _commit(self, log: AuditLog, batch: list[tuple[str, Any, Future[Any]]]) -> None:
        t0 = time.monotonic()
        try:
            with self._commit_lock:
                if self._unsynced_since is None:
                    self._unsynced_since = t0
                results = log._apply([(kind, payload) for kind, payload, _ in batch])
        except AuditError as err:
            logger.warning(
                "audit writer %s: %d entries not recorded: %s", self._path, len(batch), err
            )
            for _, _, fut in batch:
                fut.set_exception(err)
            return
        self._transactions += 1
        self._entries += len(batch)
        if self._on_commit is not None:
            try:
                self._on_commit(time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - an observer must not stop the audit trail
                logger.exception("audit writer %s: commit observer failed", self._path)
        for (_, _, fut), result in zip(batch, results):
            if isinstance(result, AuditRecordError):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def _fail_queued(self, err: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[2].set_exception(
                    AuditError(f"audit writer {self._path} stopped: {err!r}; not recorded")
                )

    # -- callers' side --------------------------------------------------------

    def _enqueue(self, kind: str, payload: Any, timeout: float | None) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_running_or_notify_cancel()  # not cancellable: see class notes
        with self._submit_lock:
            if self._closed:
                raise AuditError(
                    f"audit writer {self._path} is closed; nothing more can be recorded"
                )
            try:
                self._queue.put((kind, payload, fut), timeout=timeout)
            except queue.Full:
                raise AuditError(
                    f"audit writer {self._path}: queue full ({self._queue.maxsize} entries "
                    f"waiting) after {timeout} s; the disk is not keeping up"
                ) from None
        return fut

    def submit(self, rec: AuditRecord, *, timeout: float | None = None,
               events: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> Future[bool]:
        """Queue a decision; the future resolves after its commit.

        Parameters
        ----------
        rec : AuditRecord
            The decision.
        timeout : float or None
            How long to wait for room in a full queue (``None``: as long as
            it takes).
        events : sequence of (kind, detail)
            Events committed in the same transaction as the decision, and only
            if it is inserted (the case station's closing of a case).

        Returns
        -------
        concurrent.futures.Future of bool
            ``True`` once inserted and committed, ``False`` if the item was
            already recorded; an :class:`AuditError` if the write failed.

        Raises
        ------
        AuditRecordError
            If ``rec`` is not an :class:`AuditRecord`.
        AuditError
            If the writer is closed or the queue stayed full for ``timeout``.
        """
        if not isinstance(rec, AuditRecord):
            raise AuditRecordError(
                f"expected an AuditRecord, got {type(rec).__name__}; build one with "
                "AuditRecord(...)"
            )
        if events:
            payloads = [_event_payload(kind, detail, rec.t_decided) for kind, detail in events]
            return self._enqueue("decision+events", (rec, payloads), timeout)
        return self._enqueue("decision", rec, timeout)

    def submit_delivery(
        self,
        item_id: str,
        delivery: str,
        *,
        plc_seq: int | None = None,
        plc_status: str | None = None,
        t_acked: float | None = None,
        timeout: float | None = None,
    ) -> Future[None]:
        """Queue a delivery update (see :meth:`AuditLog.record_delivery`).

        Updates apply in submission order, after any decision submitted
        before them.

        Returns
        -------
        concurrent.futures.Future of None
            Resolves after the commit; fails with :class:`AuditRecordError`
            if no decision is recorded for ``item_id``, or with
            :class:`AuditError` if the write failed.

        Raises
        ------
        AuditRecordError
            If a value is invalid (checked here, before queueing).
        AuditError
            If the writer is closed or the queue stayed full for ``timeout``.
        """
        _check_delivery(item_id, delivery, plc_seq, plc_status, t_acked)
        return self._enqueue(
            "delivery", (item_id, delivery, plc_seq, plc_status, t_acked), timeout
        )

    def submit_event(self, kind: str, detail: Mapping[str, Any], *, t: float | None = None,
                     timeout: float | None = None) -> Future[None]:
        """Queue an event (see :meth:`AuditLog.record_event`); resolves after its commit."""
        return self._enqueue("event", _event_payload(kind, detail, t), timeout)

    @property
    def sync(self) -> str:
        """The durability mode, ``"interval"`` or ``"full"``."""
        return self._sync

    def durability_lag_s(self) -> float:
        """How long the oldest committed row not yet flushed has waited (0 when all are durable,
        and always 0 with ``sync="full"``).  What a power cut now would lose, in time."""
        oldest = [t for t in (self._flushing_since, self._unsynced_since) if t is not None]
        return time.monotonic() - min(oldest) if oldest else 0.0

    @property
    def flushes(self) -> int:
        """Flushes that made new rows durable (``"interval"`` mode)."""
        return self._flushes

    @property
    def max_durability_lag_s(self) -> float:
        """The worst durability lag seen so far (``"interval"`` mode; 0 in ``"full"``)."""
        return self._max_lag_s

    @property
    def transactions(self) -> int:
        """Transactions committed so far (``entries / transactions`` is the batching factor)."""
        return self._transactions

    @property
    def entries(self) -> int:
        """Decisions and delivery updates committed so far."""
        return self._entries

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting entries, commit everything queued, close the log.

        Idempotent.  After it returns, every future has resolved.

        Parameters
        ----------
        timeout : float or None
            Longest wait for the queue to drain (``None``: no limit).

        Raises
        ------
        AuditError
            If the queue did not drain within ``timeout``.
        """
        with self._submit_lock:
            if not self._closed:
                self._closed = True
                # The writer drains while we wait for room; stop waiting if it died.
                while self._thread.is_alive():
                    try:
                        self._queue.put(_STOP, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AuditError(
                f"audit writer {self._path}: queue not drained after {timeout} s "
                f"({self._queue.qsize()} entries waiting); the disk is not keeping up"
            )
        # The writer's connection is closed: a last flush makes everything durable.
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            self._flush_stop.set()
            flusher.join(timeout)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"AuditWriter({self._path!r}, {state}, transactions={self._transactions}, "
            f"entries={self._entries})"
        )
