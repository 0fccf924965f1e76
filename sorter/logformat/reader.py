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
from typing import IO, Callable, Iterator

from sorter.errors import ErrorKind, LogFormatError
from sorter.logformat.constants import ITEMS_FILE, MAX_LINE_BYTES, StrPath
from sorter.logformat.incomplete import incomplete_note
from sorter.logformat.meta import check_log_dir
from sorter.logformat.records import _NonFinite, _show, parse_record
from sorter.readings import ItemRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of ``items.jsonl`` as :func:`iter_log` saw it.

    Exactly one of ``record`` and ``error`` is set.  ``end_offset`` is where a
    reader resumes (``iter_log(..., start_offset=l.end_offset, start_line=l.line_no + 1)``).
    ``kind`` is the code of the error (:class:`~sorter.errors.ErrorKind`), None for a record.
    """

    line_no: int
    offset: int
    end_offset: int
    record: ItemRecord | None
    error: str | None
    item_id: str | None
    kind: ErrorKind | None = None


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


def iter_log(
    log_dir: StrPath,
    *,
    start_offset: int = 0,
    start_line: int = 1,
    follow: bool = False,
    poll_s: float = 0.2,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[LogLine]:
    """Stream the lines of ``items.jsonl``, one :class:`LogLine` per line.

    Bad lines never raise: invalid JSON or UTF-8, a non-object, a missing or bad
    ``item_id``/``t``, a duplicate ``item_id`` or an over-long line come out as a
    ``LogLine`` with ``record=None`` and an ``error`` naming the file, the line,
    the field and the fix.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory.
    start_offset, start_line : int
        Resume at this byte offset, which must be the start of line ``start_line``
        (take both from the last line read: ``end_offset`` and ``line_no + 1``).
        The lines before are re-read once, only to know which item ids were seen.
    follow : bool
        If false, stop at the end of the file; a final line without a newline is
        parsed if it is valid JSON, else reported as torn.  If true, wait for the
        file to exist and for more lines, never consuming an incomplete last line,
        until ``should_stop()`` returns true.
    poll_s : float
        Seconds to sleep between checks for new bytes when following.
    should_stop : callable, optional
        Checked whenever a follower has caught up with the end of the file; once
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
        Only for problems with the file as a whole: ``items.jsonl`` missing (when
        not following), ``start_offset`` not at the start of line ``start_line``,
        or the file shrinking or being replaced while followed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "items.jsonl").write_text('{"item_id":"A1","t":1}\\n[1]\\n')
    >>> [(l.line_no, l.record is not None) for l in iter_log(d)]
    [(1, True), (2, False)]
    """
    if start_offset < 0 or start_line < 1:
        raise LogFormatError(
            f"start_offset must be >= 0 and start_line >= 1, got {start_offset} and "
            f"{start_line}; pass a LogLine's end_offset and line_no + 1"
        )
    path = Path(log_dir) / ITEMS_FILE
    where = str(path)
    stop = should_stop if should_stop is not None else _never
    fh = _open_items(path, follow, poll_s, stop)
    if fh is None:
        return
    if not follow and start_offset == 0:
        note = incomplete_note(log_dir)
        if note is not None:
            logger.warning("%s is an incomplete log: %s (its items are valid, but it ends early)", log_dir, note)
    with fh:
        ids = _IdIndex()
        _skip_prefix(fh, start_offset, start_line, ids, where)
        offset, line_no = start_offset, start_line
        ino = os.fstat(fh.fileno()).st_ino
        stopping = False
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if raw.endswith(b"\n"):
                yield _make_line(raw, line_no, offset, where, ids)
                offset += len(raw)
                line_no += 1
                continue
            if len(raw) > MAX_LINE_BYTES:
                more, complete = _skip_rest_of_line(fh)
                if complete:
                    yield _too_long(line_no, offset, offset + len(raw) + more, where)
                    offset += len(raw) + more
                    line_no += 1
                    continue
                tail = len(raw) + more
            else:
                tail = len(raw)
            # End of file, with `tail` bytes of an unfinished line after `offset`.
            if not follow:
                if tail > MAX_LINE_BYTES:
                    yield _too_long(line_no, offset, offset + tail, where)
                elif tail:
                    yield _make_line(raw, line_no, offset, where, ids, torn=True)
                return
            if stopping:
                return
            _check_still_same_file(fh, path, ino, offset)
            fh.seek(offset)
            if stop():
                # One more pass, so every line completed before the stop is yielded.
                stopping = True
                continue
            time.sleep(poll_s)


def _never() -> bool:
    return False


def _open_items(
    path: Path, follow: bool, poll_s: float, stop: Callable[[], bool]
) -> IO[bytes] | None:
    while True:
        stopping = follow and stop()
        try:
            return open(path, "rb")  # noqa: SIM115 - closed by the caller's `with`
        except (FileNotFoundError, NotADirectoryError) as err:
            if not follow:
                check_log_dir(path.parent)  # says which mistake it is
                raise LogFormatError(f"{path} not found; pass a sorter-log/1 log directory") from err
        if stopping:
            return None
        time.sleep(poll_s)


def _skip_prefix(
    fh: IO[bytes], start_offset: int, start_line: int, ids: _IdIndex, where: str
) -> None:
    """Read the lines before ``start_offset`` to learn their ids and check the position."""
    offset, line_no = 0, 1
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
        raise LogFormatError(
            f"{path} was removed while being followed; a log must only be appended to"
        ) from err
    if now != ino:
        raise LogFormatError(
            f"{path} was replaced by another file while being followed; a log must only "
            "be appended to — start a new log directory instead"
        )


def _too_long(line_no: int, offset: int, end: int, where: str) -> LogLine:
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
    )


def _make_line(
    raw: bytes, line_no: int, offset: int, where: str, ids: _IdIndex, *, torn: bool = False
) -> LogLine:
    loc = f"{where} line {line_no}"
    end = offset + len(raw)

    def bad(error: str, kind: ErrorKind, item_id: str | None = None) -> LogLine:
        return LogLine(line_no, offset, end, None, error, item_id, kind)

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
    return LogLine(line_no, offset, end, record, None, record.item_id)


def _torn_message(loc: str) -> str:
    return (
        f"{loc}: last line has no trailing newline and is not complete JSON (torn: the "
        "log is still being written, or the recorder stopped mid-line); read it with "
        "follow=True, or delete the partial line if the recorder has stopped"
    )
