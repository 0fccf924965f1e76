"""Stream ``items.jsonl``: :func:`iter_log`, one :class:`LogLine` per line, bad lines as errors.

Memory does not grow with the log; byte offsets let a reader resume, and a reader can
follow a log that is still being written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Generator, Iterator

from sorter.errors import ErrorKind, LogFormatError
from sorter.logformat.constants import ITEMS_FILE, MAX_LINE_BYTES, StrPath
from sorter.logformat.incomplete import incomplete_note
from sorter.logformat.meta import check_log_dir
from sorter.logformat.records import _NonFinite, _show, parse_record
from sorter.logformat.segments import (
    Layout,
    LogPosition,
    layout,
    list_segments,
    missing_segment_message,
    read_header,
    segment_file,
    segment_numbers,
)
from sorter.readings import ItemRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One item line of a log as :func:`iter_log` saw it.

    Exactly one of ``record`` and ``error`` is set.  ``line_no`` counts the item lines
    of the whole log from 1 (across the segments of a rotated log); ``offset`` and
    ``end_offset`` are byte offsets in the file holding the line, which is ``items.jsonl``
    (``segment`` 0) or segment file ``segment`` of a rotated log.  A reader resumes
    with ``iter_log(..., start=line.next_position)``.
    ``kind`` is the code of the error (:class:`~sorter.errors.ErrorKind`), None for a record.
    """

    line_no: int
    offset: int
    end_offset: int
    record: ItemRecord | None
    error: str | None
    item_id: str | None
    kind: ErrorKind | None = None
    segment: int = 0

    @property
    def next_position(self) -> LogPosition:
        """Where the line after this one starts: pass it as ``iter_log(..., start=...)``."""
        return LogPosition(self.segment, self.end_offset, self.line_no + 1)


class _IdIndex:
    """Item ids seen so far, as 64-bit hashes mapped to their first line.

    About 100 bytes per item, whatever the id length.  Two different ids collide
    with probability ~n²/2⁶⁵ (about 1e-8 for a million items), which would
    report a false duplicate; that is accepted.
    """

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first: dict[int, int] = {}

    @staticmethod
    def _key(item_id: str) -> int:
        raw = item_id.encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")

    def first_line(self, item_id: str) -> int | None:
        return self._first.get(self._key(item_id))

    def add(self, item_id: str, line_no: int) -> None:
        self._first.setdefault(self._key(item_id), line_no)


class _IdWindow(_IdIndex):
    """The ids of the current and the previous segment of a rotated log.

    Memory stays bounded however long the log runs: a duplicate is caught when it is
    in the same segment as the first use of the id or in the next one.
    """

    __slots__ = ("_prev",)

    def __init__(self) -> None:
        super().__init__()
        self._prev: dict[int, int] = {}

    def first_line(self, item_id: str) -> int | None:
        key = self._key(item_id)
        found = self._prev.get(key)
        return found if found is not None else self._first.get(key)

    def next_segment(self) -> None:
        self._prev, self._first = self._first, {}


FOLLOW_ID_WINDOW = 100_000
"""Lines per half of the duplicate-id window of a followed single-file log."""


class _IdRing(_IdWindow):
    """:class:`_IdWindow` for a single-file log followed for weeks: a new half every
    ``every`` ids, so memory stays bounded (a duplicate is caught within ``every`` to
    ``2 * every`` lines of the id's first use; the line's audit log refuses older ones)."""

    __slots__ = ("_every", "_n")

    def __init__(self, every: int = FOLLOW_ID_WINDOW) -> None:
        super().__init__()
        self._every, self._n = every, 0

    def add(self, item_id: str, line_no: int) -> None:
        super().add(item_id, line_no)
        self._n += 1
        if self._n >= self._every:
            self._n = 0
            self.next_segment()


def iter_log(
    log_dir: StrPath,
    *,
    start_offset: int = 0,
    start_line: int = 1,
    start: LogPosition | None = None,
    follow: bool = False,
    poll_s: float = 0.2,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[LogLine]:
    """Stream the item lines of a log, one :class:`LogLine` per line.

    A log is one ``items.jsonl`` or, when rotated, the segment files
    ``items-000001.jsonl``, ``items-000002.jsonl``, … read as one (``docs/log-format.md``).
    Bad lines never raise: invalid JSON or UTF-8, a non-object, a missing or bad
    ``item_id``/``t``, a duplicate ``item_id`` or an over-long line come out as a
    ``LogLine`` with ``record=None`` and an ``error`` naming the file, the line,
    the field and the fix.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory.
    start : LogPosition, optional
        Resume here: a line's :attr:`~LogLine.next_position`, or
        :func:`~sorter.logformat.locate_line` of a line number.  The lines before it in
        the same file (and, in a rotated log, the previous segment) are re-read once,
        only to know which item ids were seen.
    start_offset, start_line : int
        The same for a single-file log, as two numbers (``end_offset`` and
        ``line_no + 1`` of the last line read); ignored when ``start`` is given.
    follow : bool
        If false, stop at the end of the log; a final line without a newline is
        parsed if it is valid JSON, else reported as torn.  If true, wait for the
        log to exist and for more lines, never consuming an incomplete last line,
        and move on to the next segment of a rotated log when the writer has created
        it, until ``should_stop()`` returns true.
    poll_s : float
        Seconds to sleep between checks for new bytes when following.
    should_stop : callable, optional
        Checked whenever a follower has caught up with the end of the log; once
        it returns true, the lines completed by then are yielded and iteration
        ends (an incomplete last line is left for the next reader).  With
        ``follow=True`` and no ``should_stop``, iteration ends only when the
        consumer stops iterating.

    Yields
    ------
    LogLine

    Raises
    ------
    LogFormatError
        Only for problems with the log as a whole: no items file (when not
        following), a resume position that is not the start of a line, a missing
        segment or a bad segment header, or a file shrinking or being replaced while
        followed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "items.jsonl").write_text('{"item_id":"A1","t":1}\\n[1]\\n')
    >>> [(l.line_no, l.record is not None) for l in iter_log(d)]
    [(1, True), (2, False)]
    """
    if start is None:
        start = LogPosition(0, start_offset, start_line)
    if start.offset < 0 or start.line_no < 1 or start.segment < 0:
        raise LogFormatError(
            f"start position must have offset >= 0, line_no >= 1 and segment >= 0, got {start}; "
            "pass a LogLine's next_position"
        )
    stop = should_stop if should_stop is not None else _never
    kind = _wait_for_log(Path(log_dir), follow, poll_s, stop)
    if kind is None:
        return
    if not follow and start.offset == 0 and start.line_no == 1:
        note = incomplete_note(log_dir)
        if note is not None:
            logger.warning("%s is an incomplete log: %s (its items are valid, but it ends early)", log_dir, note)
    if kind == "single":
        if start.segment != 0:
            raise LogFormatError(
                f"{log_dir} is a single-file log ({ITEMS_FILE}) but the resume position names segment "
                f"{start.segment}; resume from a LogLine of this same log"
            )
        path = Path(log_dir) / ITEMS_FILE
        with open(path, "rb") as fh:
            ids = _IdRing() if follow else _IdIndex()  # a followed log may grow for weeks
            _skip_prefix(fh, 0, 1, start.offset, start.line_no, ids, str(path))
            yield from _read_file(
                fh, path, start.offset, start.line_no, ids, 0, follow=follow, poll_s=poll_s, stop=stop, next_path=None
            )
        return
    yield from _iter_rotated(Path(log_dir), start, follow=follow, poll_s=poll_s, stop=stop)


def _iter_rotated(
    d: Path, start: LogPosition, *, follow: bool, poll_s: float, stop: Callable[[], bool]
) -> Iterator[LogLine]:
    segs = list_segments(d)
    k = start.segment or 1
    if start.segment == 0 and (start.offset, start.line_no) != (0, 1):
        raise LogFormatError(
            f"{d} is a rotated log: a resume position needs its segment; pass a LogLine's next_position "
            "or locate_line(log_dir, line_no)"
        )
    if k not in segs:
        raise LogFormatError(
            f"{d / segment_file(k)}: no such segment (the log has {len(segs)}); resume from a position in this same log"
        )
    ids = _IdWindow()
    if k > 1:  # the previous segment's ids, for the duplicate check across the boundary
        prev = d / segment_file(k - 1)
        hdr = read_header(prev, k - 1)
        with open(prev, "rb") as fh:
            fh.seek(hdr.end)
            for _ in _read_file(
                fh, prev, hdr.end, hdr.first_line, ids, k - 1, follow=False, poll_s=poll_s, stop=stop, next_path=None
            ):
                pass
        ids.next_segment()
    offset, line_no = start.offset, start.line_no
    first = True
    while True:
        path = d / segment_file(k)
        hdr = read_header(path, k)
        if not first or offset == 0:
            offset, line_no_here = hdr.end, hdr.first_line
            if not first:
                if line_no != hdr.first_line:
                    raise LogFormatError(
                        f"{path}: its header says it starts at line {hdr.first_line}, but the segment before "
                        f"ends at line {line_no - 1}; segment files must not be edited after they are written"
                    )
            elif start.line_no not in (1, hdr.first_line):
                raise LogFormatError(
                    f"{path}: offset 0 is the start of line {hdr.first_line}, not line {start.line_no}; pass "
                    "a LogLine's next_position or locate_line(log_dir, line_no)"
                )
            line_no = line_no_here
        elif offset < hdr.end:
            raise LogFormatError(
                f"{path}: start offset {offset} is inside the segment header; resume from a LogLine's next_position"
            )
        with open(path, "rb") as fh:
            _skip_prefix(fh, hdr.end, hdr.first_line, offset, line_no, ids, str(path))
            nxt = d / segment_file(k + 1)
            result = yield from _read_file(
                fh, path, offset, line_no, ids, k, follow=follow, poll_s=poll_s, stop=stop, next_path=nxt
            )
        offset, line_no, stopped = result
        if stopped:
            return
        if not nxt.exists():
            if _later_segment(d, k + 1):
                raise LogFormatError(missing_segment_message(d, k + 1, max(segment_numbers(d))))
            return
        first = False
        k += 1
        ids.next_segment()


def _later_segment(d: Path, k: int) -> bool:
    return any(n > k for n in segment_numbers(d))


def _read_file(
    fh: IO[bytes],
    path: Path,
    offset: int,
    line_no: int,
    ids: _IdIndex,
    segment: int,
    *,
    follow: bool,
    poll_s: float,
    stop: Callable[[], bool],
    next_path: Path | None,
) -> Generator[LogLine, None, tuple[int, int, bool]]:
    """Yield the lines of one file from ``offset``; return ``(offset, line_no, stopped)`` at its end.

    Not following, the end of the file is the end.  Following, the file is final once
    ``next_path`` exists (the writer moved on to the next segment): it is read to its
    end once more, since lines may have been added just before the rotation, and its
    tail is then treated as the end of a finished log.
    """
    where = str(path)
    ino = os.fstat(fh.fileno()).st_ino
    stopping = False
    sealed = not follow
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if raw.endswith(b"\n"):
            yield _make_line(raw, line_no, offset, where, ids, segment=segment)
            offset += len(raw)
            line_no += 1
            continue
        if len(raw) > MAX_LINE_BYTES:
            more, complete = _skip_rest_of_line(fh)
            if complete:
                yield _too_long(line_no, offset, offset + len(raw) + more, where, segment)
                offset += len(raw) + more
                line_no += 1
                continue
            tail = len(raw) + more
        else:
            tail = len(raw)
        # End of file, with `tail` bytes of an unfinished line after `offset`.
        if sealed:
            if tail > MAX_LINE_BYTES:
                yield _too_long(line_no, offset, offset + tail, where, segment)
            elif tail:
                yield _make_line(raw, line_no, offset, where, ids, torn=True, segment=segment)
            if tail:
                offset += tail
                line_no += 1
            return offset, line_no, False
        if stopping:
            return offset, line_no, True
        _check_still_same_file(fh, path, ino, offset)
        fh.seek(offset)
        if next_path is not None:
            if next_path.exists():
                sealed = True  # one more pass: lines written before the rotation, then the tail
                continue
            if segment and (path.parent / segment_file(segment + 2)).exists():
                raise LogFormatError(missing_segment_message(path.parent, segment + 1, segment + 2))
        if stop():
            # One more pass, so every line completed before the stop is yielded.
            stopping = True
            continue
        time.sleep(poll_s)


def _never() -> bool:
    return False


def _wait_for_log(d: Path, follow: bool, poll_s: float, stop: Callable[[], bool]) -> Layout | None:
    """The log's layout, waiting for its first items file when following (None: stopped first)."""
    while True:
        stopping = follow and stop()
        try:
            kind = layout(d)
        except NotADirectoryError:
            kind = None
        if kind is not None:
            return kind
        if not follow:
            check_log_dir(d)  # says which mistake it is
            raise LogFormatError(f"{d / ITEMS_FILE} not found; pass a sorter-log/1 log directory")
        if stopping:
            return None
        time.sleep(poll_s)


def _skip_prefix(
    fh: IO[bytes], begin: int, first_line: int, start_offset: int, start_line: int, ids: _IdIndex, where: str
) -> None:
    """Read the lines from ``begin`` (line ``first_line``) up to ``start_offset`` to learn
    their ids and check the position; leaves ``fh`` at ``start_offset``."""
    fh.seek(begin)
    offset, line_no = begin, first_line
    while offset < start_offset:
        raw = fh.readline(min(MAX_LINE_BYTES + 1, start_offset - offset))
        if not raw.endswith(b"\n"):
            if len(raw) > MAX_LINE_BYTES:  # an over-long line: skip it whole
                more, complete = _skip_rest_of_line(fh)
                if complete and offset + len(raw) + more <= start_offset:
                    offset += len(raw) + more
                    line_no += 1
                    continue
            size = os.fstat(fh.fileno()).st_size
            what = (
                f"is beyond the end of the file ({size} bytes)"
                if start_offset > size
                else "is not at the start of a line"
            )
            raise LogFormatError(
                f"{where}: start_offset {start_offset} {what}; resume from a LogLine's "
                "end_offset in this same log (was the file rewritten?)"
            )
        line = _make_line(raw, line_no, offset, where, ids)
        del line  # only the ids it registered matter
        offset += len(raw)
        line_no += 1
    if line_no != start_line:
        raise LogFormatError(
            f"{where}: start_offset {start_offset} is the start of line {line_no}, not "
            f"line {start_line}; pass start_line=LogLine.line_no + 1 together with "
            "start_offset=LogLine.end_offset"
        )


def _skip_rest_of_line(fh: IO[bytes]) -> tuple[int, bool]:
    """Consume up to and including the next newline; (bytes consumed, newline found)."""
    consumed = 0
    while True:
        chunk = fh.readline(1 << 16)
        consumed += len(chunk)
        if chunk.endswith(b"\n"):
            return consumed, True
        if not chunk:
            return consumed, False


def _check_still_same_file(fh: IO[bytes], path: Path, ino: int, offset: int) -> None:
    size = os.fstat(fh.fileno()).st_size
    if size < offset:
        raise LogFormatError(
            f"{path} shrank to {size} bytes while being followed at offset {offset}; "
            "a log must only be appended to — start a new log directory instead"
        )
    try:
        now = os.stat(path).st_ino
    except FileNotFoundError as err:
        raise LogFormatError(f"{path} was removed while being followed; a log must only be appended to") from err
    if now != ino:
        raise LogFormatError(
            f"{path} was replaced by another file while being followed; a log must only "
            "be appended to — start a new log directory instead"
        )


def _too_long(line_no: int, offset: int, end: int, where: str, segment: int = 0) -> LogLine:
    return LogLine(
        line_no=line_no,
        offset=offset,
        end_offset=end,
        record=None,
        error=(
            f"{where} line {line_no}: line is {end - offset} bytes, longer than the "
            f"{MAX_LINE_BYTES}-byte limit; an item line holds a few fields and image "
            "paths, not image data — fix the recorder"
        ),
        item_id=None,
        kind=ErrorKind.TOO_LONG,
        segment=segment,
    )


def _make_line(
    raw: bytes, line_no: int, offset: int, where: str, ids: _IdIndex, *, torn: bool = False, segment: int = 0
) -> LogLine:
    loc = f"{where} line {line_no}"
    end = offset + len(raw)

    def bad(error: str, kind: ErrorKind, item_id: str | None = None) -> LogLine:
        return LogLine(line_no, offset, end, None, error, item_id, kind, segment)

    body = raw[:-1] if raw.endswith(b"\n") else raw  # a CR of CRLF is JSON whitespace
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        if torn:
            return bad(_torn_message(loc), ErrorKind.TORN)
        return bad(
            f"{loc}: not valid UTF-8 (bad byte at position {err.start} of the line); "
            "write the log as UTF-8 JSON, or delete the line",
            ErrorKind.UTF8,
        )
    if offset == 0 and text.startswith("\ufeff"):  # a BOM some editors add
        text = text[1:]
    if not text.strip():
        return bad(f"{loc}: blank line; each line must hold one JSON object — delete it", ErrorKind.JSON)
    try:
        obj = json.loads(text, parse_constant=_NonFinite)
    except (ValueError, RecursionError) as err:
        if torn:
            return bad(_torn_message(loc), ErrorKind.TORN)
        if isinstance(err, json.JSONDecodeError):
            detail = f"{err.msg} at column {err.colno}"
        else:  # too deeply nested, or an integer with too many digits
            detail = _show(str(err), 120)
        return bad(f"{loc}: not valid JSON ({detail}); fix the recorder, or delete the line", ErrorKind.JSON)
    item_id = obj.get("item_id") if isinstance(obj, dict) else None
    if not isinstance(item_id, str) or not item_id.strip():
        item_id = None
    try:
        record = parse_record(obj, line_no=line_no, where=where)
    except LogFormatError as err:
        return bad(str(err), err.kind, item_id)
    first = ids.first_line(record.item_id)
    if first is not None:
        return bad(
            f"{loc}: duplicate item_id {_show(record.item_id)} (first seen at line {first}); "
            "item ids must be unique within a log — fix the recorder's id counter",
            ErrorKind.DUPLICATE,
            record.item_id,
        )
    ids.add(record.item_id, line_no)
    return LogLine(line_no, offset, end, record, None, record.item_id, None, segment)


def _torn_message(loc: str) -> str:
    return (
        f"{loc}: last line has no trailing newline and is not complete JSON (torn: the "
        "log is still being written, or the recorder stopped mid-line); read it with "
        "follow=True, or delete the partial line if the recorder has stopped"
    )
