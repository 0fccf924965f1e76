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
  commit waits for ``fsync``; a power cut loses nothing committed.  Under an
  :class:`AuditWriter` the automatic checkpoint is off here too, and the
  writer's own thread checkpoints, so no commit waits for a checkpoint.

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
- The crash journal (:mod:`~sorter.line.audit.journal`, ``AuditWriter(journal_dir=...)``, the
  line's default with ``"interval"``): a decision is appended to a file on tmpfs before its future
  resolves, and committed to SQLite just after on the writer's thread, so even the ``write`` of a
  commit (which can wait on ext4's journal while another process flushes a large file) is off the
  deadline path.  A killed process's journal is written into the log by the next start
  (:func:`~sorter.line.audit.journal.replay`), before anything reads the log.
- An ``events`` table holds what is not one item's decision: durability lags,
  PLC protocol faults, reconciliation gaps, PLC counter snapshots
  (:meth:`AuditLog.record_event`, :meth:`AuditLog.events`).  It was added
  without changing the ``decisions`` layout, so the schema version is still 1
  and older logs gain the table when opened.
- A ``decision_count`` table holds the number of decision rows, kept by triggers in the
  transaction that inserts or deletes them (:meth:`AuditLog.count`): the controller's start and
  summary and the operator station read it in constant time, where ``COUNT(*)`` walks a whole
  index (seconds at 30 days of rows).  Older logs gain it, counted once, when opened.
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

The package is split by what each part holds: :mod:`~sorter.line.audit.record`
(the record type, delivery states and errors), :mod:`~sorter.line.audit.store`
(the schema and :class:`AuditLog`) and :mod:`~sorter.line.audit.writer`
(:class:`AuditWriter` and its flusher) and :mod:`~sorter.line.audit.journal` (the crash journal).
Import the public names from here.
"""

from __future__ import annotations

from sorter.line.audit.record import (
    DELIVERY_STATES,
    SCHEMA_VERSION,
    SYNC_MODES,
    AuditError,
    AuditRecord,
    AuditRecordError,
    Delivery,
)
from sorter.line.audit.store import AuditLog
from sorter.line.audit.writer import AuditWriter

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
