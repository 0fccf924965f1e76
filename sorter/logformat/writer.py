"""Append items to a log crash-safely: :class:`LogWriter` (images first, then one flushed line)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from types import TracebackType
from typing import IO, Mapping

import numpy as np

from sorter.errors import ImageError, LogFormatError
from sorter.logformat.constants import IMAGES_DIR, ITEMS_FILE, META_FILE, StrPath
from sorter.logformat.images import encode_png
from sorter.logformat.meta import read_meta, write_meta
from sorter.logformat.reader import LogLine, _IdIndex, _IdWindow, iter_log
from sorter.logformat.records import _as_float, _clean_json, _show, parse_record
from sorter.logformat.segments import (
    LogPosition,
    header_line,
    layout,
    list_segments,
    read_header,
    segment_file,
    segment_images,
)
from sorter.readings import (
    IMAGE_FIELDS,
    NUMERIC_FIELDS,
    ItemRecord,
    LogMeta,
)

logger = logging.getLogger(__name__)


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME_STEM = 100  # leaves room for "_xray_high.png" under the 255-byte name limit


def _safe_name(item_id: str) -> str:
    """A file-name stem for an item id: ``[A-Za-z0-9._-]`` only.

    Ids that had to be changed (or shortened) get a hash of the original id, so
    two ids that map to the same characters ("a/b", "a:b") never share images.
    """
    safe = _UNSAFE_NAME_CHARS.sub("_", item_id)
    if safe == item_id and len(safe) <= _MAX_NAME_STEM:
        return safe
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{safe[:_MAX_NAME_STEM]}-{digest}"


class LogWriter:
    """Append items to a ``sorter-log/1`` directory, crash-safely.

    Each :meth:`append` writes the item's images first, then its JSON line in a
    single write followed by a flush (and ``fsync`` if asked), so a crash loses at
    most the item being written and never leaves a line pointing at a missing
    image.  Opening an existing log appends to it: ids already in it are refused
    as duplicates, and a torn last line left by a crash is closed with a newline
    so it cannot swallow the next item.  Not thread-safe: one writer per log.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory (created if needed).
    meta : LogMeta, optional
        Written to ``meta.json``.  If omitted, an existing ``meta.json`` is kept,
        else the defaults are written.  Refused if the log already has items and a
        different ``meta.json``.
    png_level : int
        PNG compression level (1 records fast and decodes fast).
    fsync : bool
        ``fsync`` every image and line (survives power loss, costs milliseconds).
    rotate_items : int, optional
        Write a rotated log (``items-000001.jsonl``, …, see ``docs/log-format.md``),
        starting a new segment every ``rotate_items`` items; :meth:`rotate` starts one
        at any time (e.g. every hour).  Without it a new log is one ``items.jsonl``.
        An existing log keeps its layout; reopening a rotated log starts a new segment.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> with LogWriter(d) as w:
    ...     rec = w.append(ItemRecord(item_id="A1", t=1.0, weight_g=120.0),
    ...                    {"xray_low": np.full((8, 8), 65535, np.uint16)})
    >>> rec.xray_low
    'images/A1_xray_low.png'
    >>> [l.record.weight_g for l in iter_log(d)]
    [120.0]
    """

    def __init__(
        self,
        log_dir: StrPath,
        meta: LogMeta | None = None,
        *,
        png_level: int = 1,
        fsync: bool = False,
        rotate_items: int | None = None,
    ) -> None:
        if not 0 <= png_level <= 9:
            raise ImageError(f"png_level must be 0..9 (zlib level), got {png_level}")
        if rotate_items is not None and (
            isinstance(rotate_items, bool) or not isinstance(rotate_items, int) or rotate_items < 1
        ):
            raise LogFormatError(f"rotate_items must be a whole number >= 1 (items per segment), got {rotate_items!r}")
        self.log_dir = Path(log_dir)
        self.png_level = png_level
        self.fsync = fsync
        self.rotate_items = rotate_items
        self._next_line = 1
        self._fh: IO[bytes] | None = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        kind = layout(self.log_dir)
        if kind == "single" and rotate_items is not None:
            raise LogFormatError(
                f"{self.log_dir} holds a single {ITEMS_FILE}; a rotated log starts in a new log directory "
                "(or append to this one without rotation)"
            )
        self.rotated = kind == "rotated" or (kind is None and rotate_items is not None)
        self.segment = 0
        """The segment being written (0: a single-file log)."""
        self._seg_lines = 0
        self._images_dir = IMAGES_DIR
        self._ids: _IdIndex = _IdWindow() if self.rotated else _IdIndex()
        items = self.log_dir / ITEMS_FILE
        if self.rotated:
            has_items = kind == "rotated"
        else:
            has_items = items.exists() and items.stat().st_size > 0
        current = read_meta(self.log_dir)  # the defaults when there is no meta.json
        if meta is None:
            meta = current
        same = meta == current and dict(meta.extra) == dict(current.extra)
        if has_items and not same:
            raise LogFormatError(
                f"{self.log_dir}: the log already has items recorded with a different "
                "meta; start a new log directory for a new calibration"
            )
        if not same or not (self.log_dir / META_FILE).exists():
            write_meta(self.log_dir, meta)
        self.meta = meta
        if self.rotated:
            self._open_rotated()
            return
        torn = self._scan_existing(items) if has_items else False
        (self.log_dir / IMAGES_DIR).mkdir(exist_ok=True)
        self._fh = open(items, "ab")  # noqa: SIM115 - closed in close()
        if torn:
            # Without this newline the torn fragment would swallow the next item.
            logger.warning("%s ends with a torn line; closing it with a newline", items)
            self._write_line(b"\n")
        if fsync:
            _fsync_dir(self.log_dir)

    def _scan_existing(self, items: Path) -> bool:
        """Learn the ids and line count of an existing log; True if its last line is torn."""
        last: LogLine | None = None
        for line in iter_log(self.log_dir):
            if line.record is not None:
                self._ids.add(line.record.item_id, line.line_no)
            last = line
        if last is None:
            return False
        self._next_line = last.line_no + 1
        with open(items, "rb") as fh:
            fh.seek(last.end_offset - 1)
            return fh.read(1) != b"\n"

    def _open_rotated(self) -> None:
        """Continue a rotated log in a new segment (or the last one, if it has no line yet)."""
        segs = list_segments(self.log_dir)
        if not segs:
            self._start_segment(1, 1)
            return
        last = segs[-1]
        first = read_header(self.log_dir / segment_file(last), last).first_line
        lines = 0
        for line in iter_log(self.log_dir, start=LogPosition(last, 0, 1)):
            if line.record is not None:
                self._ids.add(line.record.item_id, line.line_no)
            lines += 1
        self._next_line = first + lines
        self.segment = last
        if lines == 0:
            self._open_segment(last)
            return
        # A new segment: a torn last line of the old one stays as it is (readers report it).
        self._start_segment(last + 1, self._next_line)

    def _start_segment(self, n: int, first_line: int) -> None:
        """Create segment ``n`` whole (header written under a temporary name, then renamed)."""
        final = self.log_dir / segment_file(n)
        if final.exists():
            raise LogFormatError(f"{final} exists already; is another writer appending to this log?")
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(header_line(n, first_line))
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if self.fsync:
            _fsync_dir(self.log_dir)
        self._open_segment(n)

    def _open_segment(self, n: int) -> None:
        if self._fh is not None:
            self._fh.close()
        if n != self.segment and self.segment:
            assert isinstance(self._ids, _IdWindow)
            self._ids.next_segment()
        self.segment = n
        self._seg_lines = 0
        self._images_dir = segment_images(n)
        self._fh = open(self.log_dir / segment_file(n), "ab")  # noqa: SIM115 - closed in close()

    @property
    def items_path(self) -> Path:
        """The file lines are appended to now: ``items.jsonl`` or the current segment."""
        return self.log_dir / (segment_file(self.segment) if self.rotated else ITEMS_FILE)

    def rotate(self) -> None:
        """Start a new segment now (a rotated log only; a no-op while the segment has no line).

        The current segment is complete when the next one appears: a follower that sees
        segment ``k + 1`` reads ``k`` to its end once more and moves on.
        """
        if self._fh is None:
            raise LogFormatError(f"cannot rotate {self.log_dir}: the LogWriter is closed")
        if not self.rotated:
            raise LogFormatError(f"{self.log_dir} is a single-file log; open a new log with rotate_items to rotate")
        if self._seg_lines:
            self._start_segment(self.segment + 1, self._next_line)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def append(self, record: ItemRecord, images: Mapping[str, np.ndarray] | None = None) -> ItemRecord:
        """Write an item's images and its line; return the record as the log now holds it.

        Parameters
        ----------
        record : ItemRecord
            The item.  ``item_id`` must be new to this log and ``t`` finite.
            Non-finite numeric readings are written as ``null``.
        images : mapping, optional
            ``"xray_low"``/``"xray_high"``: 2-D ``uint16``; ``"rgb"``: ``H x W x 3``
            ``uint8`` in RGB order.  Each is written to
            ``images/<safe item id>_<key>.png`` and its path set in the record.

        Returns
        -------
        ItemRecord
            Exactly what :func:`iter_log` will yield for this line (paths set,
            ``line_no`` set, field problems listed).

        Raises
        ------
        LogFormatError
            Bad or duplicate ``item_id``, non-finite ``t``, unserialisable extra
            fields, or a closed writer.
        ImageError
            An image key or array of the wrong kind.
        """
        if self._fh is None:
            raise LogFormatError(f"cannot append to {self.log_dir}: the LogWriter is closed")
        if self.rotate_items is not None and self._seg_lines >= self.rotate_items:
            self.rotate()
        where = f"{self.items_path} (writing item {_show(record.item_id)})"
        if not isinstance(record.item_id, str) or not record.item_id.strip():
            raise LogFormatError(f"{where}: item_id must be a non-empty string")
        record = _plain_numbers(record)
        if _as_float(record.t) is None:
            raise LogFormatError(f"{where}: t is {record.t!r}, expected finite epoch seconds")
        first = self._ids.first_line(record.item_id)
        if first is not None:
            raise LogFormatError(
                f"{where}: duplicate item_id (already written at line {first}); give every item a new id"
            )
        for name in NUMERIC_FIELDS:
            value = getattr(record, name)
            if isinstance(value, float) and not math.isfinite(value):
                logger.warning("%s: %s is %r, written as null", where, name, value)
        paths = self._write_images(record.item_id, images or {})
        record = dataclasses.replace(record, **paths)
        try:
            obj = _clean_json(record.to_json())
            line = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as err:
            raise LogFormatError(
                f"{where}: the record cannot be written as JSON ({err}); extra fields "
                "must be JSON types (str, finite numbers, bool, None, lists, dicts)"
            ) from err
        written = parse_record(json.loads(line), line_no=self._next_line, where=str(self.items_path))
        self._write_line(line + b"\n")
        self._ids.add(record.item_id, self._next_line)
        self._next_line += 1
        self._seg_lines += 1
        return written

    def _write_images(self, item_id: str, images: Mapping[str, np.ndarray]) -> dict[str, str]:
        unknown = sorted(set(images) - set(IMAGE_FIELDS))
        if unknown:
            raise ImageError(
                f"unknown image key {unknown[0]!r} for item {_show(item_id)}; use {', '.join(IMAGE_FIELDS)}"
            )
        encoded: dict[str, bytes] = {}
        for key, img in images.items():
            img = np.asarray(img)
            if key == "rgb":
                ok = img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
                want = "H x W x 3 uint8 (RGB order)"
            else:
                ok = img.ndim == 2 and img.dtype == np.uint16
                want = "2-D uint16 (transmission, 65535 = air)"
            if not ok or img.size == 0:
                raise ImageError(
                    f"image {key!r} of item {_show(item_id)} is {img.dtype} with shape "
                    f"{img.shape}; expected a non-empty {want}"
                )
            encoded[key] = encode_png(img, self.png_level)
        paths: dict[str, str] = {}
        stem = _safe_name(item_id)
        if encoded and self.rotated:
            (self.log_dir / self._images_dir).mkdir(exist_ok=True)
        for key, data in encoded.items():
            rel = f"{self._images_dir}/{stem}_{key}.png"
            with open(self.log_dir / rel, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            paths[key] = rel
        if paths and self.fsync:
            _fsync_dir(self.log_dir / self._images_dir)
        return paths

    def _write_line(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close ``items.jsonl``; further appends raise. Safe to call twice."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _plain_numbers(record: ItemRecord) -> ItemRecord:
    """Turn numpy scalars in ``t`` and the sensor fields into Python numbers for JSON."""
    changes = {
        name: getattr(record, name).item()
        for name in ("t", *NUMERIC_FIELDS)
        if isinstance(getattr(record, name), np.generic)
    }
    return dataclasses.replace(record, **changes) if changes else record


def _fsync_dir(path: Path) -> None:
    """Make new directory entries durable (POSIX); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
