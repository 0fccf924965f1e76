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
from sorter.logformat.reader import LogLine, _IdIndex, iter_log
from sorter.logformat.records import _as_float, _clean_json, _show, parse_record
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
    ) -> None:
        if not 0 <= png_level <= 9:
            raise ImageError(f"png_level must be 0..9 (zlib level), got {png_level}")
        self.log_dir = Path(log_dir)
        self.png_level = png_level
        self.fsync = fsync
        self._ids = _IdIndex()
        self._next_line = 1
        self._fh: IO[bytes] | None = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        items = self.log_dir / ITEMS_FILE
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

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def append(
        self, record: ItemRecord, images: Mapping[str, np.ndarray] | None = None
    ) -> ItemRecord:
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
        where = f"{self.log_dir / ITEMS_FILE} (writing item {_show(record.item_id)})"
        if not isinstance(record.item_id, str) or not record.item_id.strip():
            raise LogFormatError(f"{where}: item_id must be a non-empty string")
        record = _plain_numbers(record)
        if _as_float(record.t) is None:
            raise LogFormatError(f"{where}: t is {record.t!r}, expected finite epoch seconds")
        first = self._ids.first_line(record.item_id)
        if first is not None:
            raise LogFormatError(
                f"{where}: duplicate item_id (already written at line {first}); give every "
                "item a new id"
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
        written = parse_record(
            json.loads(line), line_no=self._next_line, where=str(self.log_dir / ITEMS_FILE)
        )
        self._write_line(line + b"\n")
        self._ids.add(record.item_id, self._next_line)
        self._next_line += 1
        return written

    def _write_images(self, item_id: str, images: Mapping[str, np.ndarray]) -> dict[str, str]:
        unknown = sorted(set(images) - set(IMAGE_FIELDS))
        if unknown:
            raise ImageError(
                f"unknown image key {unknown[0]!r} for item {_show(item_id)}; use "
                f"{', '.join(IMAGE_FIELDS)}"
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
        for key, data in encoded.items():
            rel = f"{IMAGES_DIR}/{stem}_{key}.png"
            with open(self.log_dir / rel, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            paths[key] = rel
        if paths and self.fsync:
            _fsync_dir(self.log_dir / IMAGES_DIR)
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
