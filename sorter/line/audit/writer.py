"""The audit writer: an :class:`AuditLog` on its own thread, group commit and a flusher.

Why this module is long (about 800 lines): the writer thread, its group commit, the
durability flusher, the crash journal's hand-over and the full-disk pause and resume share one
connection and one queue; each decides what the others may do next (a commit may not run while
the flusher syncs, a full disk stops both and keeps journaled decisions for a retry), and apart
they would pass each other that state.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import closing, suppress
from types import TracebackType
from typing import Any, Final

from sorter.line.audit.record import (
    SYNC_MODES,
    AuditError,
    AuditRecord,
    AuditRecordError,
    StrPath,
    _check_delivery,
    _is_finite,
    _is_int,
)
from sorter.line.audit.journal import CrashJournal, replay
from sorter.line.audit.store import AuditLog, _event_payload, _wrap
from sorter.logformat.reader import _IdRing

logger = logging.getLogger(__name__)


def audit_disk_full(err: BaseException) -> bool:
    """Whether an audit error is a full disk (SQLITE_FULL, ENOSPC)."""
    text = str(err).lower()
    return "full" in text or "no space" in text or "enospc" in text


# --------------------------------------------------------------------------- writer


_STOP: Final = object()
_RECENT_IDS: Final = 20_000  # item ids the journal path remembers, to refuse a re-submitted item at once
_RETRY_S: Final = 0.5  # how often journaled decisions whose commit failed are tried again


class _Journaled(Future[bool]):
    """The (already resolved) future of a decision the crash journal holds: where, and since when."""

    def __init__(self, seg: int, t_journal: float) -> None:
        super().__init__()
        self.seg = seg
        self.t_journal = t_journal


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
    journal_dir : str or os.PathLike, optional
        With ``sync="interval"``: a directory on tmpfs for the crash journal
        (:mod:`~sorter.line.audit.journal`).  A decision is then journaled there
        and its future resolves at once; the SQLite commit follows on this
        writer's thread, so a stalling audit disk never holds a decision back.
        Whatever a killed process left in the journal is written to the log
        first, here.  ``None``: decisions wait for their SQLite commit.
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
        journal_dir: StrPath | None = None,
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
        self._failing_since: float | None = None  # monotonic time of the first failed commit of this outage
        self._failed_entries = 0  # entries not recorded in the current outage
        self._failed_total = 0
        self.last_error: str | None = None
        """The last failed commit's error (``None`` once commits succeed again)."""
        self._entries = 0
        self._journal: CrashJournal | None = None
        self._journal_times: deque[float] = deque()  # when each queued journaled decision was journaled
        # the log reader's bounded id memory: an id is remembered for _RECENT_IDS to twice that many ids
        self._recent = _IdRing(every=_RECENT_IDS)
        self._retry: list[tuple[str, Any, Future[Any]]] = []  # journaled decisions whose commit failed
        self._journal_broken = False
        self.late_duplicates = 0
        """Journaled decisions SQLite then found already recorded (sent before their duplicate was known)."""
        if journal_dir is not None and sync == "interval":
            replay(self._path, journal_dir)  # what a killed process left, before anything new
            self._remember_last_ids(busy_timeout_s)
            self._journal = CrashJournal(journal_dir)
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
        try:
            started.result()  # re-raises AuditError from opening the log
        except BaseException:
            if self._journal is not None:
                self._journal.close(remove=False)
            raise
        # Both modes: the flusher checkpoints the WAL off the commits (and in "interval" mode syncs it).
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
            conn = sqlite3.connect(self._path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
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
                # "full": every commit synced itself; only checkpoints are left to this thread
                lag = self._flush_once(wal) if self._sync == "interval" else None
                now = time.monotonic()
                if lag is not None:
                    recent.append(self._last_sync_s)
                if lag is not None and lag > self._lag_alarm_s:
                    worst, count = lag_note or (0.0, 0)
                    lag_note = (max(worst, lag), count + 1)
                if lag_note is not None and (now - last_note >= 10.0 or stopping):
                    worst, count = lag_note
                    logger.warning(
                        "audit log %s: durability lagged %.0f ms behind the commits (%d flush(es) over "
                        "%.0f ms); a power cut now would lose that much",
                        self._path,
                        1000 * worst,
                        count,
                        1000 * self._lag_alarm_s,
                    )
                    with suppress(AuditError):
                        self.submit_event(
                            "durability_lag",
                            {
                                "worst_lag_ms": round(1000 * worst, 1),
                                "flushes_over_alarm": count,
                                "alarm_ms": 1000 * self._lag_alarm_s,
                            },
                        )
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
                    quiesce = wal_frames > _WAL_RESET_FRAMES and len(recent) == recent.maxlen and max(recent) < 0.010
                    t_checkpoint = time.monotonic()
                    try:
                        if quiesce:
                            with self._commit_lock:
                                result = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                            self.wal_resets += 1
                        else:
                            result = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                        _busy, wal_frames, copied = result  # frames in the WAL, frames copied
                        behind = max(0, wal_frames - copied) if wal_frames >= 0 else 0
                        if self._sync == "full":  # no flushes to time: the checkpoint's syncs say how quick
                            recent.append(time.monotonic() - t_checkpoint)
                    except sqlite3.Error as err:  # busy now and then: the next one catches up
                        logger.debug("audit log %s: checkpoint skipped: %s", self._path, err)
        except BaseException:
            logger.exception(
                "audit flusher %s stopped unexpectedly; rows are committed but no longer flushed on a cadence",
                self._path,
            )
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
                    self._unsynced_since = since if self._unsynced_since is None else min(since, self._unsynced_since)
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
            log = AuditLog(self._path, busy_timeout_s=busy_timeout_s, sync=self._sync, autocheckpoint=False)
        except BaseException as err:
            started.set_exception(err)
            return
        started.set_result(None)
        try:
            stop = False
            while not stop:
                batch: list[tuple[str, Any, Future[Any]]] = []
                try:
                    item = self._queue.get(timeout=_RETRY_S) if self._retry else self._queue.get()
                except queue.Empty:  # only failed journaled decisions to try again
                    self._commit(log, batch)
                    continue
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
                    if self._delivery_delay_s <= 0 or any(kind.startswith("decision") for kind, _, _ in batch):
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
                if batch or self._retry:
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
        if self._retry:  # journaled decisions come first, in the order they were sent
            batch, self._retry = self._retry + batch, []
        t0 = time.monotonic()
        try:
            with self._commit_lock:
                if self._sync == "interval":
                    oldest = min((f.t_journal for _, _, f in batch if isinstance(f, _Journaled)), default=t0)
                    if self._unsynced_since is None or oldest < self._unsynced_since:
                        self._unsynced_since = oldest
                results = log._apply([(kind, payload) for kind, payload, _ in batch])
        except AuditError as err:
            # A journaled decision was sent already: it stays in the journal and is tried again
            # until it is written (or the next start replays it).  The rest failed, as before.
            lost = [entry for entry in batch if not isinstance(entry[2], _Journaled)]
            self._retry = [entry for entry in batch if isinstance(entry[2], _Journaled)]
            self._note_failure(err, len(lost))
            for _, _, fut in lost:
                fut.set_exception(err)
            return
        if self._failing_since is not None:
            logger.warning(
                "audit log %s: writes resumed after %.1f s; %d entries were not recorded meanwhile "
                "(their items were not sent: the PLC sent them to the safe lane)",
                self._path,
                time.monotonic() - self._failing_since,
                self._failed_entries,
            )
            self._failing_since, self._failed_entries, self.last_error = None, 0, None
        self._transactions += 1
        self._entries += len(batch)
        if self._on_commit is not None:
            try:
                self._on_commit(time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - an observer must not stop the audit trail
                logger.exception("audit writer %s: commit observer failed", self._path)
        for (_, payload, fut), result in zip(batch, results):
            if isinstance(fut, _Journaled):
                self._journal_committed(fut, payload, result)
                continue
            if isinstance(result, AuditRecordError):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def _journal_committed(self, fut: _Journaled, payload: Any, result: Any) -> None:
        assert self._journal is not None
        self._journal.committed(fut.seg)
        with suppress(IndexError):
            self._journal_times.popleft()
        if result is False:
            self.late_duplicates += 1
            logger.error(
                "audit log %s: item %s was already recorded; its second decision was sent before that was "
                "known (the first row is kept; the PLC's answer to the second is recorded on it)",
                self._path,
                payload[0].item_id,
            )

    def _note_failure(self, err: AuditError, entries: int) -> None:
        """A commit failed: raise the alarm once per outage (naming the cause), count the rest."""
        self._failed_entries += entries
        self._failed_total += entries
        self.last_error = str(err)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            cause = "the disk is full" if audit_disk_full(err) else "the database cannot be written"
            logger.error(
                "ALARM audit log %s: %s (%s); decisions are not sent while this lasts, so the PLC sends "
                "their items to the safe lane; writing resumes by itself when the cause is fixed",
                self._path,
                cause,
                err,
            )
        else:
            logger.debug("audit writer %s: %d entries not recorded: %s", self._path, entries, err)

    @property
    def failing(self) -> bool:
        """Whether the last commit failed (the audit disk full, the file unwritable ...)."""
        return self._failing_since is not None

    @property
    def failed_entries(self) -> int:
        """Entries not recorded since this writer opened (decisions, deliveries, events)."""
        return self._failed_total

    def _fail_queued(self, err: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and not item[2].done():  # a journaled decision's is resolved already
                item[2].set_exception(AuditError(f"audit writer {self._path} stopped: {err!r}; not recorded"))

    # -- callers' side --------------------------------------------------------

    def _enqueue(self, kind: str, payload: Any, timeout: float | None) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_running_or_notify_cancel()  # not cancellable: see class notes
        with self._submit_lock:
            if self._closed:
                raise AuditError(f"audit writer {self._path} is closed; nothing more can be recorded")
            try:
                self._queue.put((kind, payload, fut), timeout=timeout)
            except queue.Full:
                raise AuditError(
                    f"audit writer {self._path}: queue full ({self._queue.maxsize} entries "
                    f"waiting) after {timeout} s; the disk is not keeping up"
                ) from None
        return fut

    def submit(
        self, rec: AuditRecord, *, timeout: float | None = None, events: Sequence[tuple[str, Mapping[str, Any]]] = ()
    ) -> Future[bool]:
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
                f"expected an AuditRecord, got {type(rec).__name__}; build one with AuditRecord(...)"
            )
        payloads = [_event_payload(kind, detail, rec.t_decided) for kind, detail in events]
        if self._journal is not None and not self.failing and not self._journal_broken:
            fut = self._submit_journaled(rec, payloads, timeout)
            if fut is not None:
                return fut
        if payloads:
            return self._enqueue("decision+events", (rec, payloads), timeout)
        return self._enqueue("decision", rec, timeout)

    def _remember_last_ids(self, busy_timeout_s: float) -> None:
        """Seed the journal path's memory of recorded ids with the log's last rows, so an item a
        restarted reader passes again (just before its resume point) is refused at once, as a
        commit would refuse it."""
        try:
            with closing(sqlite3.connect(self._path, timeout=busy_timeout_s)) as conn:
                rows = conn.execute("SELECT item_id FROM decisions ORDER BY id DESC LIMIT ?", (_RECENT_IDS,)).fetchall()
        except sqlite3.Error as err:  # a new log has no table yet; the writer's own open reports real trouble
            logger.debug("audit log %s: last ids not read: %s", self._path, err)
            return
        for (item_id,) in reversed(rows):
            self._recent.add(item_id, 0)

    def _submit_journaled(
        self, rec: AuditRecord, payloads: list[tuple[float, str, str]], timeout: float | None
    ) -> Future[bool] | None:
        """Journal a decision on tmpfs and queue its commit; ``None``: the journal failed, commit instead."""
        assert self._journal is not None
        with self._submit_lock:
            if self._closed:
                raise AuditError(f"audit writer {self._path} is closed; nothing more can be recorded")
            if self._recent.first_line(rec.item_id) is not None:
                done: Future[bool] = Future()
                done.set_running_or_notify_cancel()
                done.set_result(False)
                return done
            try:
                seg = self._journal.append(rec, payloads)
            except OSError as err:
                self._journal_broken = True
                logger.error(
                    "audit journal %s cannot be written (%s); decisions now wait for their commit to the audit "
                    "disk before they are sent, as with no journal",
                    self._journal.directory,
                    err,
                )
                return None
            fut = _Journaled(seg, time.monotonic())
            fut.set_running_or_notify_cancel()
            fut.set_result(True)
            self._journal_times.append(fut.t_journal)
            try:
                self._queue.put(("decision+events", (rec, payloads), fut), timeout=timeout)
            except queue.Full:
                self._journal_times.pop()
                self._journal.committed(seg)  # abandoned: the caller does not send it
                raise AuditError(
                    f"audit writer {self._path}: queue full ({self._queue.maxsize} entries "
                    f"waiting) after {timeout} s; the disk is not keeping up"
                ) from None
            self._recent.add(rec.item_id, 0)
        return fut

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
        return self._enqueue("delivery", (item_id, delivery, plc_seq, plc_status, t_acked), timeout)

    def submit_event(
        self, kind: str, detail: Mapping[str, Any], *, t: float | None = None, timeout: float | None = None
    ) -> Future[None]:
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
        with suppress(IndexError):  # a journaled decision still waiting for its commit
            oldest.append(self._journal_times[0])
        return time.monotonic() - min(oldest) if oldest else 0.0

    @property
    def journal(self) -> CrashJournal | None:
        """The crash journal (``None`` without one)."""
        return self._journal

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
        journal, self._journal = self._journal, None
        if journal is not None:
            left = len(self._retry)
            journal.close(remove=left == 0)
            if left:
                logger.error(
                    "audit log %s: %d sent decision(s) could not be written; they stay in the crash journal %s "
                    "and are written at the next start",
                    self._path,
                    left,
                    journal.directory,
                )

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
        return f"AuditWriter({self._path!r}, {state}, transactions={self._transactions}, entries={self._entries})"
