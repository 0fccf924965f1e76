"""Rotated logs: numbered segment files, their headers, and finding where a line is.

A rotated ``sorter-log/1`` log holds ``items-000001.jsonl``, ``items-000002.jsonl``, …
instead of one ``items.jsonl`` (see ``docs/log-format.md``, "Rotation").  Each segment
starts with a one-line header ``{"segment": k, "first_line": n}``: ``n`` is the log-wide
number of the segment's first item line, so a reader finds the segment holding any line
from the headers alone, without counting the lines of the segments before it.  A
segment file appears whole (written under a temporary name, then renamed), so a reader
never sees half a header; the writer creates segment ``k + 1`` only after the last line
of segment ``k``, so a reader that sees ``k + 1`` knows ``k`` will not grow again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sorter.errors import LogFormatError
from sorter.logformat.constants import ITEMS_FILE, StrPath

SEGMENT_PREFIX = "items-"
SEGMENT_SUFFIX = ".jsonl"
SEGMENT_DIGITS = 6
MAX_HEADER_BYTES = 4096
_SEGMENT_RE = re.compile(r"^items-(\d{6,})\.jsonl$")

Layout = Literal["single", "rotated"]


def segment_file(n: int) -> str:
    """The file name of segment ``n`` (1-based).

    >>> segment_file(2)
    'items-000002.jsonl'
    """
    return f"{SEGMENT_PREFIX}{n:0{SEGMENT_DIGITS}d}{SEGMENT_SUFFIX}"


def segment_images(n: int) -> str:
    """The folder ``LogWriter`` puts segment ``n``'s images in (any layout inside the log works).

    >>> segment_images(2)
    'images-000002'
    """
    return f"images-{n:0{SEGMENT_DIGITS}d}"


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where a reader stands in a log: the start of line ``line_no``.

    ``segment`` is 0 for a single-file log (``items.jsonl``), else the segment number;
    ``offset`` is the byte offset inside that file.  Take it from the last line read
    (:attr:`LogLine.next_position <sorter.logformat.LogLine.next_position>`) or from
    :func:`locate_line`, and pass it to ``iter_log(..., start=position)``.
    """

    segment: int
    offset: int
    line_no: int


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The first line of a segment file."""

    segment: int
    first_line: int
    end: int  # byte offset just after the header line: where the first item line starts


def header_line(segment: int, first_line: int) -> bytes:
    """The header a writer puts first in a new segment file."""
    return json.dumps({"segment": segment, "first_line": first_line}, separators=(",", ":")).encode() + b"\n"


def list_segments(log_dir: StrPath) -> list[int]:
    """The segment numbers of a rotated log, ascending; ``[]`` for a single-file log.

    Raises
    ------
    LogFormatError
        If a segment is missing: segments are numbered from 1 without a gap, and a
        hole means a file was deleted or not copied (the items in it would be lost
        silently).
    """
    nums = segment_numbers(log_dir)
    if nums:
        expected = range(1, nums[-1] + 1)
        if len(nums) != len(expected) or nums[0] != 1:
            missing = sorted(set(expected) - set(nums))
            raise LogFormatError(missing_segment_message(log_dir, missing[0], nums[-1]))
    return nums


def segment_numbers(log_dir: StrPath) -> list[int]:
    """The numbers of the segment files present, ascending, gaps and all."""
    try:
        names = os.listdir(log_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m.group(1)) for name in names if (m := _SEGMENT_RE.match(name)))


def missing_segment_message(log_dir: StrPath, missing: int, last: int) -> str:
    return (
        f"{Path(log_dir) / segment_file(missing)} is missing, although the log goes on to "
        f"{segment_file(last)}: the items in it cannot be read. Segments are numbered from 1 "
        "without a gap; restore the file from a copy of the log (never delete segment files: "
        "retention deletes images, not item lines)"
    )


def layout(log_dir: StrPath) -> Layout | None:
    """``"single"`` (``items.jsonl``), ``"rotated"`` (segment files) or ``None`` (neither yet).

    Raises
    ------
    LogFormatError
        If the directory holds both, which no writer produces.
    """
    d = Path(log_dir)
    single = (d / ITEMS_FILE).is_file()
    rotated = (d / segment_file(1)).is_file() or bool(segment_numbers(d))
    if single and rotated:
        raise LogFormatError(
            f"{d} holds both {ITEMS_FILE} and segment files ({segment_file(1)}, …); a log is either one "
            "file or rotated segments — move one of them to a log directory of its own"
        )
    if single:
        return "single"
    return "rotated" if rotated else None


def item_files(log_dir: StrPath) -> list[Path]:
    """The files holding a log's item lines, in order: ``[items.jsonl]`` or the segments.

    ``[]`` when the log has none yet.
    """
    d = Path(log_dir)
    kind = layout(d)
    if kind == "single":
        return [d / ITEMS_FILE]
    if kind == "rotated":
        return [d / segment_file(n) for n in list_segments(d)]
    return []


def read_header(path: StrPath, segment: int) -> SegmentHeader:
    """Read and check the header of segment file ``path`` (segment number ``segment``)."""
    with open(path, "rb") as fh:
        raw = fh.readline(MAX_HEADER_BYTES)
    return parse_header(raw, path, segment)


def parse_header(raw: bytes, path: StrPath, segment: int) -> SegmentHeader:
    fix = (
        'a segment file starts with a header line {"segment": k, "first_line": n} and appears whole '
        "(written under a temporary name, then renamed); see docs/log-format.md"
    )
    if not raw.endswith(b"\n"):
        raise LogFormatError(f"{path}: the segment header line is incomplete or too long; {fix}")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise LogFormatError(f"{path}: the segment header is not valid JSON ({err}); {fix}") from err
    if not isinstance(obj, dict):
        raise LogFormatError(f"{path}: the segment header is not a JSON object; {fix}")
    seg, first = obj.get("segment"), obj.get("first_line")
    for name, value in (("segment", seg), ("first_line", first)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LogFormatError(f"{path}: segment header field {name!r} is {value!r}, expected an integer >= 1; {fix}")
    if seg != segment:
        raise LogFormatError(
            f"{path}: the header says segment {seg} but the file name says {segment}; "
            "segment files must keep the names their writer gave them"
        )
    if segment == 1 and first != 1:
        raise LogFormatError(f"{path}: the first segment must start at line 1, its header says {first}")
    return SegmentHeader(segment=seg, first_line=first, end=len(raw))


def locate_line(log_dir: StrPath, line_no: int) -> LogPosition:
    """The start of the file holding log line ``line_no``.

    For a single-file log that is ``LogPosition(0, 0, 1)``; for a rotated log, the
    first item line of the last segment whose header's ``first_line`` is at most
    ``line_no`` (a binary search over the headers: the segments before are not read).
    A reader starting there skips the lines before ``line_no`` itself.

    Raises
    ------
    LogFormatError
        ``line_no < 1``, a bad header, or a missing segment.

    Examples
    --------
    >>> import tempfile
    >>> from sorter.logformat import LogWriter
    >>> from sorter.readings import ItemRecord
    >>> d = tempfile.mkdtemp()
    >>> with LogWriter(d, rotate_items=2) as w:
    ...     for i in range(5):
    ...         _ = w.append(ItemRecord(item_id=f"A{i}", t=float(i)))
    >>> locate_line(d, 4)
    LogPosition(segment=2, offset=29, line_no=3)
    """
    if line_no < 1:
        raise LogFormatError(f"line {line_no}: log lines are numbered from 1")
    d = Path(log_dir)
    if layout(d) != "rotated":
        return LogPosition(0, 0, 1)
    segs = list_segments(d)
    lo, hi = 0, len(segs) - 1
    best = read_header(d / segment_file(segs[0]), segs[0])
    while lo < hi:  # the last segment whose first_line <= line_no
        mid = (lo + hi + 1) // 2
        h = read_header(d / segment_file(segs[mid]), segs[mid])
        if h.first_line <= line_no:
            lo, best = mid, h
        else:
            hi = mid - 1
    if best.segment != segs[lo]:
        best = read_header(d / segment_file(segs[lo]), segs[lo])
    return LogPosition(best.segment, best.end, best.first_line)
