"""The crash journal: each decision on tmpfs before it is sent, in SQLite a moment later (issue 14).

Why: with ``sync = "interval"`` a decision's SQLite commit does not wait for ``fsync``, yet it
still *writes* to a file on the audit disk, and on ext4 that ``write`` can wait on the file
system's journal or on the kernel's dirty-page throttling while another process flushes a large
file to the same disk (a recorder rotating, a backup): tens to hundreds of milliseconds, which
is past the deadline of every item behind it.  A file on tmpfs (``/dev/shm``) lives in memory:
appending to it never waits for a disk.

The contract is unchanged: **a process crash (kill -9) loses nothing**, because what a dead
process wrote to tmpfs is still there for the next start, which replays it into the audit log
(:func:`replay`) before anything reads the log.  A power cut loses the journal, as it loses
whatever the page cache held; the restart's reconciliation with the PLC's counters flags it,
exactly as before (``docs/line.md``, "Durability").

Layout: a directory of segments ``journal-NNNNNNNN.jnl``, each a run of records

    length: uint32 LE | crc32(payload): uint32 LE | payload: JSON

with payload ``{"r": [AuditRecord fields in order], "e": [[t, kind, detail_json], ...]}`` (the
decision and the events committed with it).  Each record is written with one ``write`` call on
a file opened ``O_APPEND``; a killed process cannot leave half of it (the call completes before
the signal is acted on), and :func:`read_segment` still stops at a torn or corrupt tail and says
so.  A segment is deleted once every record in it is committed to SQLite and a newer segment has
been started; a clean close deletes them all.  A lock file (``flock``) keeps a second process
from using the same journal.

The directory (``audit.journal``): ``"auto"`` is ``/dev/shm/sorter-journal-<hash of the audit
path>`` where ``/dev/shm`` exists, else none (commits on the decision's path, as before);
``"off"``: none; anything else is a directory (it should be on tmpfs, or the point is lost).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any, Final

from sorter.line.audit.record import AuditError, AuditRecord, AuditRecordError, StrPath

logger = logging.getLogger(__name__)

__all__ = ["CrashJournal", "journal_dir_for", "read_segment", "replay"]

_HEADER: Final = struct.Struct("<II")
_SUFFIX: Final = ".jnl"
_PREFIX: Final = "journal-"
SEGMENT_BYTES: Final = 4 << 20
"""A segment is closed (and a new one started) once it holds this many bytes."""
SHM: Final = Path("/dev/shm")

Event = tuple[float, str, str]


def journal_dir_for(audit_path: StrPath, setting: str) -> Path | None:
    """The journal directory for an audit log and the ``audit.journal`` setting, or ``None``."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting)
    if not SHM.is_dir() or not os.access(SHM, os.W_OK):
        logger.warning(
            "audit journal: %s is missing or not writable, so decisions are committed to the audit disk before "
            "they are sent (a stalling disk then delays them); set audit.journal to a tmpfs directory",
            SHM,
        )
        return None
    digest = hashlib.sha256(os.path.realpath(audit_path).encode()).hexdigest()[:16]
    return SHM / f"sorter-journal-{digest}"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"{_PREFIX}*{_SUFFIX}"):
        try:
            out.append((int(p.name[len(_PREFIX) : -len(_SUFFIX)]), p))
        except ValueError:
            continue
    return sorted(out)


def encode(rec: AuditRecord, events: Sequence[Event] = ()) -> bytes:
    """One journal record (header and payload) for a decision and its events."""
    payload = json.dumps({"r": astuple(rec), "e": [list(e) for e in events]}, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_segment(path: Path) -> tuple[list[tuple[AuditRecord, list[Event]]], str | None]:
    """The records of one segment, and what is wrong with its tail (``None`` if nothing)."""
    data = path.read_bytes()
    out: list[tuple[AuditRecord, list[Event]]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            return out, f"{len(data) - pos} bytes of a torn header at byte {pos}"
        length, crc = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(body) < length:
            return out, f"a torn record at byte {pos} ({len(body)} of {length} bytes)"
        if zlib.crc32(body) != crc:
            return out, f"a record at byte {pos} fails its checksum"
        try:
            obj = json.loads(body)
            rec = AuditRecord(*obj["r"])
            events = [(float(t), str(k), str(d)) for t, k, d in obj["e"]]
        except (ValueError, KeyError, TypeError, AuditRecordError) as err:
            return out, f"a record at byte {pos} does not decode: {err}"
        out.append((rec, events))
        pos += _HEADER.size + length
    return out, None


def replay(audit_path: StrPath, directory: StrPath | None) -> int:
    """Write what a crashed process left in its journal into the audit log; delete the journal.

    Decisions already in the log are skipped (``item_id`` is unique), so a replay of a journal
    whose rows were committed before the crash changes nothing.  The log is committed with
    ``synchronous=FULL`` before the segments are deleted.

    Returns
    -------
    int
        Decisions written that the log did not hold: those the crash had kept out of SQLite.

    Raises
    ------
    AuditError
        If the log cannot be written (the journal is then kept for the next try).
    """
    from sorter.line.audit.store import AuditLog  # the store imports nothing from here; kept local anyway

    if directory is None:
        return 0
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    segments = _segments(directory)
    if not segments:
        return 0
    inserted = 0
    with _locked(directory), AuditLog(audit_path) as log:
        for _, path in segments:
            records, problem = read_segment(path)
            if problem is not None:
                logger.error(
                    "audit journal %s: %s; the %d record(s) before it are replayed, the rest is unreadable",
                    path,
                    problem,
                    len(records),
                )
            ops: list[tuple[str, Any]] = [("decision+events", (rec, events)) for rec, events in records]
            for start in range(0, len(ops), 1000):
                inserted += sum(1 for r in log._apply(ops[start : start + 1000]) if r is True)
        for _, path in segments:
            path.unlink(missing_ok=True)
        _remove_empty(directory)
    if inserted:
        logger.warning(
            "audit log %s: %d decision(s) the last run had sent but not yet written to SQLite when it stopped "
            "were replayed from its crash journal %s; nothing was lost",
            audit_path,
            inserted,
            directory,
        )
    return inserted


def _remove_empty(directory: Path) -> None:
    """Nothing left to replay: leave no empty journal directory behind in /dev/shm."""
    with contextlib.suppress(OSError):
        (directory / "lock").unlink()
        directory.rmdir()


class _locked:
    """An exclusive ``flock`` on the journal directory's lock file, for one process at a time."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise AuditError(
                f"audit journal {directory} is in use by another process: one controller per audit log "
                "(stop the other one, or give this one its own audit.path)"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1

    def __enter__(self) -> _locked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CrashJournal:
    """Append-only journal segments on tmpfs; see the module notes.

    :meth:`append` runs on the caller's thread (the controller's event loop): one ``write`` to
    tmpfs, microseconds.  :meth:`committed` runs on the audit writer's thread.  Both take one
    short lock and never touch the audit disk.

    Raises
    ------
    AuditError
        If the directory cannot be created or locked.
    """

    def __init__(self, directory: StrPath, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        try:
            self._lock_file = _locked(self.directory)
        except OSError as err:
            raise AuditError(f"audit journal {self.directory} cannot be created: {err}") from err
        self._segment_bytes = int(segment_bytes)
        self._lock = threading.Lock()
        existing = _segments(self.directory)
        self._seg = (existing[-1][0] + 1) if existing else 1
        self._written: dict[int, int] = {}
        self._done: dict[int, int] = {}
        self._fd = -1
        self._size = 0
        self.appended = 0
        """Records appended since this journal opened."""
        self._open_segment()

    def _path(self, seg: int) -> Path:
        return self.directory / f"{_PREFIX}{seg:08d}{_SUFFIX}"

    def _open_segment(self) -> None:
        self._fd = os.open(self._path(self._seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self._written[self._seg] = 0
        self._done[self._seg] = 0

    def append(self, rec: AuditRecord, events: Sequence[Event] = ()) -> int:
        """Journal one decision (and its events); returns its segment, for :meth:`committed`.

        Raises
        ------
        OSError
            If the write failed (tmpfs full, closed journal); nothing usable was journaled.
        """
        data = encode(rec, events)
        with self._lock:
            if self._fd < 0:
                raise OSError(f"audit journal {self.directory} is closed")
            if self._size >= self._segment_bytes:
                self._rotate()
            n = os.write(self._fd, data)
            if n != len(data):  # tmpfs full mid-record: the reader stops at the torn tail
                raise OSError(f"audit journal {self._path(self._seg)}: short write ({n} of {len(data)} bytes)")
            self._size += n
            self._written[self._seg] += 1
            self.appended += 1
            return self._seg

    def _rotate(self) -> None:
        os.close(self._fd)
        old = self._seg
        self._seg += 1
        self._open_segment()
        self._drop_if_done(old)

    def committed(self, seg: int, n: int = 1) -> None:
        """``n`` records of segment ``seg`` are now in SQLite (or will never be: abandoned)."""
        with self._lock:
            if seg in self._done:
                self._done[seg] += n
                self._drop_if_done(seg)

    def _drop_if_done(self, seg: int) -> None:
        if seg != self._seg and self._done.get(seg, 0) >= self._written.get(seg, 0):
            self._path(seg).unlink(missing_ok=True)
            self._done.pop(seg, None)
            self._written.pop(seg, None)

    def pending(self) -> int:
        """Records journaled but not yet committed to SQLite."""
        with self._lock:
            return sum(self._written[s] - self._done[s] for s in self._written)

    def close(self, *, remove: bool) -> None:
        """Close; with ``remove`` delete every segment (all records are in SQLite)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if remove:
                for _, path in _segments(self.directory):
                    path.unlink(missing_ok=True)
                self._written.clear()
                self._done.clear()
        if remove:
            _remove_empty(self.directory)
        self._lock_file.release()

    def __repr__(self) -> str:
        return f"CrashJournal({str(self.directory)!r}, segment={self._seg})"


def iter_records(directory: StrPath) -> Iterator[tuple[AuditRecord, list[Event]]]:
    """Every readable record of a journal directory, oldest first (for inspection and tests)."""
    for _, path in _segments(Path(directory)):
        yield from read_segment(path)[0]
