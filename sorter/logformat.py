"""Read and write line logs in the ``sorter-log/1`` format.

A log is a directory holding ``items.jsonl`` (one JSON object per item, appended
as items pass the sensor bridge), an optional ``meta.json`` (calibration) and the
PNG images the items refer to.  ``docs/log-format.md`` is the contract for
recorders; this module is its reference reader and writer.

Reading validates at the boundary and never trusts the file:

* :func:`iter_log` streams ``items.jsonl`` line by line (memory does not grow with
  the log), tracks byte offsets so a reader can resume, can follow a log that is
  still being written, and turns every unusable line into a :class:`LogLine` with
  an error message instead of raising.
* :func:`parse_record` checks one object: line-level problems (no usable
  ``item_id`` or ``t``) raise :class:`~sorter.errors.LogFormatError`; field-level
  problems (a NaN weight, an unknown label) set that field to ``None`` and are
  listed in :attr:`ItemRecord.problems <sorter.readings.ItemRecord.problems>`.
* :func:`resolve_image_path` and :func:`load_png` refuse paths that leave the log
  directory, decompression bombs (checked from the PNG header before decoding)
  and images of the wrong bit depth or channel count.

:class:`LogWriter` appends items crash-safely: images first, then one flushed JSON
line, so a crash loses at most the item being written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import IO, Any, Callable, Iterator, Literal, Mapping, Union

import cv2
import numpy as np

from sorter.errors import ImageError, LogFormatError, UnsafePathError
from sorter.readings import (
    IMAGE_FIELDS,
    KNOWN_FIELDS,
    LABELS,
    NUMERIC_FIELDS,
    Item,
    ItemRecord,
    LogMeta,
)

__all__ = [
    "ITEMS_FILE",
    "MAX_IMAGE_PIXELS",
    "INCOMPLETE_FILE",
    "MAX_LINE_BYTES",
    "META_FILE",
    "SUPPORTED_FORMAT",
    "LogLine",
    "LogWriter",
    "check_log_dir",
    "encode_png",
    "incomplete_note",
    "iter_log",
    "load_item",
    "load_png",
    "parse_record",
    "read_meta",
    "resolve_image_path",
    "write_meta",
]

logger = logging.getLogger(__name__)

StrPath = Union[str, "os.PathLike[str]"]

SUPPORTED_FORMAT = "sorter-log/1"
ITEMS_FILE = "items.jsonl"
META_FILE = "meta.json"
IMAGES_DIR = "images"
INCOMPLETE_FILE = "INCOMPLETE"
"""Present while a writer that means to finish a log (``sorter simulate``) is still writing
it, and left behind if it was interrupted: readers warn that the log ends early."""

MAX_IMAGE_PIXELS: int = 4096 * 4096
"""Largest image (width x height) :func:`load_png` decodes; checked from the PNG header."""

MAX_LINE_BYTES: int = 1 << 20
"""Longest line of ``items.jsonl`` that is parsed; longer lines are reported as errors
without being held in memory (a real item line is well under 1 KiB)."""

# Plausible ranges of the sensor fields: (low, high, low_inclusive, unit, hint).
# A value outside is a sensor or recorder fault, not a battery.
_RANGES: dict[str, tuple[float, float, bool, str, str]] = {
    "weight_g": (0.0, 2_000_000.0, False, "g", "check the scale (tare, calibration)"),
    "length_mm": (0.0, 5000.0, False, "mm", "check the laser profiler"),
    "width_mm": (0.0, 5000.0, False, "mm", "check the laser profiler"),
    "height_mm": (0.0, 5000.0, False, "mm", "check the laser profiler"),
    "surface_temp_c": (-60.0, 1200.0, True, "degC", "check the thermal camera"),
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEADER_LEN = 33  # signature + IHDR length, type, 13 data bytes, CRC
# Bit depths PNG allows for each colour type, and the channels each decodes to.
_PNG_DEPTHS: dict[int, tuple[int, ...]] = {
    0: (1, 2, 4, 8, 16),
    2: (8, 16),
    3: (1, 2, 4, 8),
    4: (8, 16),
    6: (8, 16),
}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PNG_COLOUR_NAMES = {
    0: "grayscale",
    2: "RGB",
    3: "palette",
    4: "grayscale+alpha",
    6: "RGBA",
}

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME_STEM = 100  # leaves room for "_xray_high.png" under the 255-byte name limit


# --------------------------------------------------------------------------- meta


def read_meta(log_dir: StrPath) -> LogMeta:
    """Read ``meta.json`` of a log, applying the documented defaults.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory. A missing ``meta.json`` gives ``LogMeta()``.

    Returns
    -------
    LogMeta
        Calibration of the log; unknown top-level keys are kept in ``extra``.

    Raises
    ------
    LogFormatError
        If the file is not JSON, declares another format, has a key of the wrong
        type or value, or an unknown key inside ``xray``/``camera`` (a misspelt
        calibration key would otherwise silently fall back to the default).

    Examples
    --------
    >>> import tempfile
    >>> read_meta(tempfile.mkdtemp()).xray_mm_per_px
    2.0
    """
    if Path(log_dir).exists() and not Path(log_dir).is_dir():
        check_log_dir(log_dir)
    path = Path(log_dir) / META_FILE
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return LogMeta()
    except (OSError, UnicodeDecodeError) as err:
        raise LogFormatError(
            f"{path}: cannot be read as UTF-8 text ({err}); rewrite it with write_meta "
            "or delete it to use the defaults"
        ) from err
    try:
        obj = json.loads(text, parse_constant=_NonFinite)
    except (ValueError, RecursionError) as err:
        raise LogFormatError(
            f"{path}: not valid JSON ({err}); fix the file or delete it to use the defaults"
        ) from err
    return _meta_from_json(obj, str(path))


def check_log_dir(log_dir: StrPath) -> None:
    """Raise :class:`LogFormatError` unless ``log_dir`` is a directory holding ``items.jsonl``.

    The message says which of the usual mistakes it is (no such path, a file where the
    log directory is expected, a directory without ``items.jsonl``) and how to fix it.

    Examples
    --------
    >>> import tempfile
    >>> try:
    ...     check_log_dir(tempfile.mkdtemp())
    ... except LogFormatError as err:
    ...     print("holds no items.jsonl" in str(err))
    True
    """
    d = Path(log_dir)
    if not d.exists():
        raise LogFormatError(f"{d}: no such log directory; check the path (a sorter-log/1 log is a "
                             f"directory holding {ITEMS_FILE}, see docs/log-format.md)")
    if not d.is_dir():
        raise LogFormatError(f"{d} is a file, not a log directory; pass the directory that holds {ITEMS_FILE}")
    items = d / ITEMS_FILE
    if not items.is_file():
        raise LogFormatError(f"{d} holds no {ITEMS_FILE}, so it is not a sorter-log/1 log (or its recorder "
                             "has not written an item yet); pass a log directory, see docs/log-format.md")


def incomplete_note(log_dir: StrPath) -> str | None:
    """What the log's ``INCOMPLETE`` marker says, or ``None`` when the log is complete.

    A writer that means to finish a log (``sorter simulate``) creates the marker before
    the first item and removes it after the last: a marker left behind means the log
    ends early (the writer was interrupted), although every line in it is valid.
    """
    p = Path(log_dir) / INCOMPLETE_FILE
    try:
        text = p.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{p} cannot be read ({err})"
    return text or "its writer did not finish"


def write_meta(log_dir: StrPath, meta: LogMeta) -> None:
    """Write ``meta.json`` atomically (temporary file, then rename).

    The directory is created if needed.  The meta is validated first, so a file
    this function writes always reads back with :func:`read_meta`.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> write_meta(d, LogMeta(line="L1", camera_mm_per_px=0.5))
    >>> read_meta(d).camera_mm_per_px
    0.5
    """
    path = Path(log_dir) / META_FILE
    obj = meta.to_json()
    try:
        text = json.dumps(obj, allow_nan=False, indent=2, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise LogFormatError(
            f"{path}: meta cannot be written as JSON ({err}); extra values must be "
            "JSON types (str, finite numbers, bool, None, lists, dicts)"
        ) from err
    _meta_from_json(json.loads(text), f"{path} (about to be written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(META_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _meta_from_json(obj: object, where: str) -> LogMeta:
    if not isinstance(obj, dict):
        raise LogFormatError(
            f"{where}: expected a JSON object, got {_json_type(obj)}; "
            'write e.g. {"format": "sorter-log/1"}'
        )
    kwargs: dict[str, Any] = {}
    fmt = obj.get("format", SUPPORTED_FORMAT)
    if fmt != SUPPORTED_FORMAT:
        raise LogFormatError(
            f"{where}: key 'format' is {_show(fmt)}, this reader supports only "
            f"{SUPPORTED_FORMAT!r}; convert the log or use a sorter version that reads it"
        )
    kwargs["format"] = fmt
    if "line" in obj:
        if not isinstance(obj["line"], str):
            raise LogFormatError(
                f"{where}: key 'line' is {_show(obj['line'])}, expected a string "
                "naming the sorting line; fix meta.json"
            )
        kwargs["line"] = obj["line"]
    xray = _meta_section(obj, "xray", ("mm_per_px", "energies_kev"), where)
    if "mm_per_px" in xray:
        kwargs["xray_mm_per_px"] = _meta_positive(xray["mm_per_px"], "xray.mm_per_px", where)
    if "energies_kev" in xray:
        kwargs["xray_energies_kev"] = _meta_energies(xray["energies_kev"], where)
    camera = _meta_section(obj, "camera", ("mm_per_px",), where)
    if "mm_per_px" in camera:
        kwargs["camera_mm_per_px"] = _meta_positive(
            camera["mm_per_px"], "camera.mm_per_px", where
        )
    extra = {
        k: _clean_json(v) for k, v in obj.items() if k not in ("format", "line", "xray", "camera")
    }
    return LogMeta(**kwargs, extra=extra)


def _meta_section(
    obj: dict[str, Any], key: str, known: tuple[str, ...], where: str
) -> dict[str, Any]:
    section = obj.get(key, {})
    if not isinstance(section, dict):
        raise LogFormatError(
            f"{where}: key '{key}' is {_show(section)}, expected an object with keys "
            f"{', '.join(known)}; fix meta.json"
        )
    unknown = sorted(str(k) for k in section if k not in known)
    if unknown:
        raise LogFormatError(
            f"{where}: unknown key '{key}.{unknown[0]}' (known: {', '.join(known)}); "
            "fix the spelling — a misspelt calibration key would silently use the default"
        )
    return section


def _meta_positive(value: object, key: str, where: str) -> float:
    num = _as_float(value)
    if num is None or not num > 0:
        raise LogFormatError(
            f"{where}: key '{key}' is {_show(value)}, expected a positive number "
            "(millimetres per pixel at the belt surface); fix meta.json or remove the "
            "key to use the default"
        )
    return num


def _meta_energies(value: object, where: str) -> tuple[float, float]:
    nums = (
        [_as_float(v) for v in value] if isinstance(value, list) and len(value) == 2 else None
    )
    if nums is None or nums[0] is None or nums[1] is None or not 0 < nums[0] < nums[1]:
        raise LogFormatError(
            f"{where}: key 'xray.energies_kev' is {_show(value)}, expected "
            "[low, high] with 0 < low < high (tube energies in keV, e.g. [60, 140]); "
            "fix meta.json"
        )
    return (nums[0], nums[1])


# ------------------------------------------------------------------ one record


class _NonFinite:
    """Stands for a ``NaN``/``Infinity`` JSON constant, which JSON itself forbids."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def parse_record(obj: object, *, line_no: int = 0, where: str = "") -> ItemRecord:
    """Validate one decoded ``items.jsonl`` object into an :class:`ItemRecord`.

    Parameters
    ----------
    obj : object
        The decoded JSON value of one line.
    line_no : int
        1-based line number, stored in the record and used in messages (0: unknown).
    where : str
        The log file, used in messages.

    Returns
    -------
    ItemRecord
        Field-level problems (wrong type, NaN/Infinity, negative or implausible
        value, unknown label, non-string image path) leave that field ``None``
        and are listed in ``problems``; unknown fields are kept in ``extra``.

    Raises
    ------
    LogFormatError
        If the object is unusable: not an object, or ``item_id`` missing, empty or
        not a string, or ``t`` missing or not a finite number.

    Examples
    --------
    >>> rec = parse_record({"item_id": "A1", "t": 1.5, "weight_g": -3})
    >>> rec.weight_g is None, len(rec.problems)
    (True, 1)
    """
    loc = _loc(where, line_no)
    if not isinstance(obj, Mapping):
        raise LogFormatError(
            f"{loc}: expected a JSON object, got {_json_type(obj)}; each line must be "
            'one object such as {"item_id": "A1", "t": 1767225600.0}'
        )
    item_id = obj.get("item_id")
    if "item_id" not in obj:
        raise LogFormatError(
            f"{loc}: field 'item_id' is missing; every line needs the string id the "
            "sensor bridge gave the item"
        )
    if not isinstance(item_id, str) or not item_id.strip():
        raise LogFormatError(
            f"{loc}: field 'item_id' is {_show(item_id)}, expected a non-empty string; "
            "fix the recorder (write the id as a JSON string)"
        )
    if "t" not in obj:
        raise LogFormatError(
            f"{loc}: field 't' is missing; every line needs the time the item passed "
            "the sensor bridge, in epoch seconds"
        )
    t = _as_float(obj["t"])
    if t is None:
        raise LogFormatError(
            f"{loc}: field 't' is {_show(obj['t'])}, expected a finite number "
            "(epoch seconds); fix the recorder's clock or drop the line"
        )

    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in NUMERIC_FIELDS:
        values[name] = _check_number(obj.get(name), name, loc, problems)
    length, width = values["length_mm"], values["width_mm"]
    if length is not None and width is not None and length < width:
        # The fields are the sides of the min-area rectangle, longer side first;
        # the values are still good, only their order is not.
        values["length_mm"], values["width_mm"] = width, length
        problems.append(
            f"{loc}: length_mm {length!r} is shorter than width_mm {width!r}; swapped "
            "(length is the longer side of the footprint rectangle; fix the recorder)"
        )
    for name in IMAGE_FIELDS:
        values[name] = _check_image_field(obj.get(name), name, loc, problems)
    values["label"] = _check_label(obj.get("label"), loc, problems)
    extra = {k: _clean_json(v) for k, v in obj.items() if k not in KNOWN_FIELDS}
    return ItemRecord(
        item_id=item_id,
        t=t,
        **values,
        extra=extra,
        line_no=line_no,
        problems=tuple(problems),
    )


def _check_number(value: object, name: str, loc: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, _NonFinite) or (isinstance(value, float) and not math.isfinite(value)):
        problems.append(
            f"{loc}: field '{name}' is {value!r}, expected a finite number or null; "
            "write null when the sensor has no reading; treated as missing"
        )
        return None
    num = _as_float(value)
    if num is None and isinstance(value, int) and not isinstance(value, bool):
        num = math.inf  # an integer too large for a float: reported as out of range
    if num is None:
        problems.append(
            f"{loc}: field '{name}' is {_show(value)}, expected a number or null; "
            "fix the recorder or drop the field; treated as missing"
        )
        return None
    low, high, low_incl, unit, hint = _RANGES[name]
    if not ((num >= low) if low_incl else (num > low)) or not num <= high:
        lo_br = "[" if low_incl else "("
        problems.append(
            f"{loc}: field '{name}' is {_show(value)}, outside the plausible range "
            f"{lo_br}{low:.0f}, {high:.0f}] {unit}; {hint}; treated as missing"
        )
        return None
    return num


def _check_image_field(value: object, name: str, loc: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(
            f"{loc}: field '{name}' is {_show(value)}, expected a non-empty string path "
            "relative to the log directory, or null; treated as missing"
        )
        return None
    return value


def _check_label(value: object, loc: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in LABELS:
        problems.append(
            f"{loc}: field 'label' is {_show(value)}, expected one of "
            f"{', '.join(LABELS)} or null; treated as unlabelled"
        )
        return None
    return value


def _as_float(value: object) -> float | None:
    """A finite float from a JSON number; ``None`` for anything else (bool included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        num = float(value)
    except OverflowError:  # an integer beyond the float range
        return None
    return num if math.isfinite(num) else None


def _clean_json(value: Any) -> Any:
    """Copy a decoded JSON value with NaN/Infinity replaced by ``None``.

    Unknown fields are kept for round-tripping; they must stay writable with
    ``allow_nan=False``.  Iterative, because JSON nesting can be as deep as the
    recursion limit.
    """
    if not isinstance(value, (dict, list, tuple, float, _NonFinite)):
        return value
    holder: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, holder, 0)]
    while stack:
        src, dst, key = stack.pop()
        if isinstance(src, dict):
            new_d: dict[Any, Any] = dict.fromkeys(src)
            dst[key] = new_d
            stack.extend((v, new_d, k) for k, v in src.items())
        elif isinstance(src, (list, tuple)):
            new_l: list[Any] = [None] * len(src)
            dst[key] = new_l
            stack.extend((v, new_l, i) for i, v in enumerate(src))
        elif isinstance(src, _NonFinite) or (isinstance(src, float) and not math.isfinite(src)):
            dst[key] = None
        else:
            dst[key] = src
    return holder[0]


def _loc(where: str, line_no: int) -> str:
    if where and line_no:
        return f"{where} line {line_no}"
    if line_no:
        return f"line {line_no}"
    return where or "record"


def _show(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    if isinstance(value, (int, float, _NonFinite)):
        return "a number"
    return type(value).__name__


# ---------------------------------------------------------------- whole log


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of ``items.jsonl`` as :func:`iter_log` saw it.

    Exactly one of ``record`` and ``error`` is set.  ``end_offset`` is where a
    reader resumes (``iter_log(..., start_offset=l.end_offset, start_line=l.line_no + 1)``).
    """

    line_no: int
    offset: int
    end_offset: int
    record: ItemRecord | None
    error: str | None
    item_id: str | None


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
    )


def _make_line(
    raw: bytes, line_no: int, offset: int, where: str, ids: _IdIndex, *, torn: bool = False
) -> LogLine:
    loc = f"{where} line {line_no}"
    end = offset + len(raw)

    def bad(error: str, item_id: str | None = None) -> LogLine:
        return LogLine(line_no, offset, end, None, error, item_id)

    body = raw[:-1] if raw.endswith(b"\n") else raw  # a CR of CRLF is JSON whitespace
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        if torn:
            return bad(_torn_message(loc))
        return bad(
            f"{loc}: not valid UTF-8 (bad byte at position {err.start} of the line); "
            "write the log as UTF-8 JSON, or delete the line"
        )
    if offset == 0 and text.startswith("\ufeff"):  # a BOM some editors add
        text = text[1:]
    if not text.strip():
        return bad(f"{loc}: blank line; each line must hold one JSON object — delete it")
    try:
        obj = json.loads(text, parse_constant=_NonFinite)
    except (ValueError, RecursionError) as err:
        if torn:
            return bad(_torn_message(loc))
        if isinstance(err, json.JSONDecodeError):
            detail = f"{err.msg} at column {err.colno}"
        else:  # too deeply nested, or an integer with too many digits
            detail = _show(str(err), 120)
        return bad(f"{loc}: not valid JSON ({detail}); fix the recorder, or delete the line")
    item_id = obj.get("item_id") if isinstance(obj, dict) else None
    if not isinstance(item_id, str) or not item_id.strip():
        item_id = None
    try:
        record = parse_record(obj, line_no=line_no, where=where)
    except LogFormatError as err:
        return bad(str(err), item_id)
    first = ids.first_line(record.item_id)
    if first is not None:
        return bad(
            f"{loc}: duplicate item_id {_show(record.item_id)} (first seen at line {first}); "
            "item ids must be unique within a log — fix the recorder's id counter",
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


# -------------------------------------------------------------------- images


def resolve_image_path(log_dir: StrPath, rel: str) -> Path:
    """Resolve an image path from the log, refusing anything outside the log directory.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory.
    rel : str
        The path as written in ``items.jsonl``: relative, ``/``-separated.

    Returns
    -------
    Path
        The absolute, symlink-free path of the image (which need not exist).

    Raises
    ------
    UnsafePathError
        For an absolute path, a ``..`` that leaves the log directory, or a symlink
        whose target lies outside it.

    Examples
    --------
    >>> resolve_image_path("/data/log1", "images/A1_rgb.png").name
    'A1_rgb.png'
    >>> resolve_image_path("/data/log1", "../log2/x.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sorter.errors.UnsafePathError: image path '../log2/x.png' resolves outside the log ...
    """
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError(
            f"image path {_show(rel)} is not a non-empty string; write a path relative "
            f"to the log directory {log_dir}, e.g. images/A1_rgb.png"
        )
    if "\x00" in rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).anchor:
        raise UnsafePathError(
            f"image path {_show(rel)} is absolute or malformed; write it relative to the "
            f"log directory {log_dir}, e.g. images/A1_rgb.png"
        )
    base = Path(log_dir).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as err:  # symlink loops
        raise UnsafePathError(
            f"image path {_show(rel)} in {log_dir} cannot be resolved ({err}); "
            "remove the symlink loop"
        ) from err
    if not target.is_relative_to(base):
        raise UnsafePathError(
            f"image path {_show(rel)} resolves outside the log directory {log_dir}; "
            "image paths must stay inside the log directory (e.g. images/A1_rgb.png)"
        )
    return target


def load_png(
    path: StrPath,
    *,
    kind: Literal["xray", "rgb"],
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Load a log image, checking its PNG header before decoding.

    Parameters
    ----------
    path : str or path-like
        The PNG file.
    kind : {"xray", "rgb"}
        ``"xray"``: single-channel 16-bit transmission, returned as a 2-D
        ``uint16`` array.  ``"rgb"``: 8-bit colour (RGB, RGBA or palette),
        returned as ``H x W x 3`` ``uint8`` in RGB order (alpha dropped).
    max_pixels : int
        Largest width x height accepted; larger images are refused from the header
        alone, so a decompression bomb is never decoded.

    Raises
    ------
    ImageError
        If the file is missing, empty, not a PNG, too large, of the wrong kind,
        corrupt or truncated; the message names the file and the fix.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> _ = p.write_bytes(encode_png(np.full((4, 6), 65535, np.uint16)))
    >>> load_png(p, kind="xray").shape
    (4, 6)
    """
    if kind not in ("xray", "rgb"):
        raise ImageError(f"kind must be 'xray' or 'rgb', got {kind!r}")
    try:
        with open(path, "rb") as fh:
            header = fh.read(_PNG_HEADER_LEN)
            width, height, depth, colour = _check_png_header(header, path, kind, max_pixels)
            size = os.fstat(fh.fileno()).st_size
            limit = _max_png_bytes(width, height, depth, colour)
            if size > limit:
                raise ImageError(
                    f"{path}: file is {size} bytes, far more than a {width}x{height} PNG "
                    f"needs (limit {limit}); refusing to read it — rewrite the image "
                    "without large ancillary chunks"
                )
            data = header + fh.read()
    except FileNotFoundError as err:
        raise ImageError(
            f"{path}: image file not found; check the path in items.jsonl and that the "
            "images folder was copied with the log"
        ) from err
    except OSError as err:
        raise ImageError(
            f"{path}: cannot read the image ({err}); check the file and its permissions"
        ) from err
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageError(
            f"{path}: the PNG could not be decoded ({_show(str(err), 120)}); the file is "
            "corrupt — re-export it from the recorder"
        ) from err
    if img is None:
        raise ImageError(
            f"{path}: the PNG could not be decoded (corrupt or truncated: the recorder "
            "may have crashed while writing it); re-export it or set the field to null"
        )
    if kind == "xray":
        if img.ndim != 2 or img.dtype != np.uint16:
            raise ImageError(
                f"{path}: decoded to {img.dtype} with shape {img.shape}, expected a 2-D "
                "uint16 xray image; rewrite it as single-channel 16-bit PNG"
            )
        return img
    if img.ndim != 3 or img.dtype != np.uint8 or img.shape[2] not in (3, 4):
        raise ImageError(
            f"{path}: decoded to {img.dtype} with shape {img.shape}, expected an 8-bit "
            "colour image; rewrite it as 8-bit RGB PNG"
        )
    code = cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGB
    return cv2.cvtColor(img, code)


def _check_png_header(
    header: bytes, path: StrPath, kind: str, max_pixels: int
) -> tuple[int, int, int, int]:
    if not header:
        raise ImageError(
            f"{path}: image file is empty (0 bytes; the recorder probably crashed while "
            "writing it); re-export the image or set the field to null"
        )
    if not (header.startswith(_PNG_SIGNATURE) or _PNG_SIGNATURE.startswith(header)):
        raise ImageError(
            f"{path}: not a PNG file (bad signature); log images must be PNG — "
            "re-export it with cv2.imwrite(..., '.png') or sorter.logformat.encode_png"
        )
    if len(header) < _PNG_HEADER_LEN:
        raise ImageError(
            f"{path}: truncated PNG ({len(header)} bytes, no complete header); "
            "re-export the image or set the field to null"
        )
    length, ctype = struct.unpack(">I4s", header[8:16])
    ihdr, crc = header[16:29], int.from_bytes(header[29:33], "big")
    if length != 13 or ctype != b"IHDR" or zlib.crc32(ctype + ihdr) != crc:
        raise ImageError(
            f"{path}: corrupt PNG header (IHDR chunk missing or failing its CRC); "
            "re-export the image"
        )
    width, height, depth, colour, _comp, _filt, _interlace = struct.unpack(">IIBBBBB", ihdr)
    if not (0 < width < 2**31 and 0 < height < 2**31) or depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageError(
            f"{path}: invalid PNG header ({width}x{height}, bit depth {depth}, colour type "
            f"{colour}); re-export the image"
        )
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: PNG declares {width}x{height} = {width * height} pixels, more than "
            f"the limit of {max_pixels}; refusing to decode it (possible decompression "
            "bomb) — if the image is genuine, pass a larger max_pixels"
        )
    what = f"{depth}-bit {_PNG_COLOUR_NAMES[colour]}"
    if kind == "xray" and (colour != 0 or depth != 16):
        raise ImageError(
            f"{path}: is {what}, but an xray image must be single-channel 16-bit "
            "grayscale (air-normalised transmission, 65535 = air); write the detector's "
            "16-bit values, not an 8-bit or colour rendering"
        )
    if kind == "rgb" and (colour not in (2, 3, 6) or depth == 16):
        raise ImageError(
            f"{path}: is {what}, but an rgb image must be 8-bit colour (RGB, RGBA or "
            "palette); write the camera's 8-bit colour frame"
        )
    return width, height, depth, colour


def _max_png_bytes(width: int, height: int, depth: int, colour: int) -> int:
    """Generous bound on the size of a PNG of these dimensions.

    Deflate never grows data by more than a few bytes per 64 KiB block, so a file
    much larger than the raw pixels is not a plain image; refusing it keeps a
    hostile file from being read into memory.
    """
    row = 1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8
    raw = height * row
    return raw + raw // 8 + (1 << 20)


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """Encode an image as PNG bytes, the way :class:`LogWriter` stores images.

    Parameters
    ----------
    img : numpy.ndarray
        ``H x W`` (``uint8`` or ``uint16``) grayscale, or ``H x W x 3`` /
        ``H x W x 4`` in **RGB(A)** order — the order :func:`load_png` returns.
    level : int
        zlib compression level 0–9; 1 decodes several times faster than 9 at
        little size cost, so recorders use 1 (with Huffman-only coding after the PNG
        "sub" filter: noisy sensor images gain little from LZ77 matching).

    Examples
    --------
    >>> import numpy as np
    >>> encode_png(np.zeros((2, 2), np.uint16))[:4]
    b'\\x89PNG'
    """
    if not 0 <= level <= 9:
        raise ImageError(f"PNG compression level must be 0..9, got {level}")
    img = np.asarray(img)
    if img.dtype not in (np.uint8, np.uint16) or img.ndim not in (2, 3):
        raise ImageError(
            f"cannot encode a {img.dtype} array of shape {img.shape} as PNG; pass "
            "H x W or H x W x 3 uint8/uint16"
        )
    if img.ndim == 3:
        if img.shape[2] == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGBA2BGRA)
        else:
            raise ImageError(
                f"cannot encode an image with {img.shape[2]} channels as PNG; pass 1, 3 or 4"
            )
    try:
        params = [cv2.IMWRITE_PNG_COMPRESSION, level]
        if level == 1:
            # Sensor images are noisy: LZ77 matching finds little, so Huffman coding after
            # the "sub" filter gives nearly the same size at a third of the encoding time.
            params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                       cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
        ok, buf = cv2.imencode(".png", img, params)
    except cv2.error as err:
        raise ImageError(f"OpenCV could not encode the image as PNG ({err})") from err
    if not ok:
        raise ImageError("OpenCV could not encode the image as PNG")
    return buf.tobytes()


def load_item(record: ItemRecord, log_dir: StrPath, meta: LogMeta) -> Item:
    """Decode the images of a record into an :class:`Item`.

    Never raises for image problems: an image that is unsafe, missing, corrupt or
    of the wrong kind is ``None`` and its reason is appended to ``problems``
    (after the record's own problems).  An X-ray pair whose two images differ in
    size is dropped too, because the dual-energy ratio needs them pixel-aligned.

    Examples
    --------
    >>> import tempfile
    >>> rec = ItemRecord(item_id="A1", t=0.0, rgb="images/missing.png")
    >>> item = load_item(rec, tempfile.mkdtemp(), LogMeta())
    >>> item.rgb is None, len(item.problems)
    (True, 1)
    """
    problems = list(record.problems)
    images: dict[str, np.ndarray | None] = {}
    where = f"{Path(log_dir) / ITEMS_FILE} line {record.line_no}" if record.line_no else str(log_dir)
    for name in IMAGE_FIELDS:
        rel = getattr(record, name)
        images[name] = None
        if rel is None:
            continue
        kind: Literal["xray", "rgb"] = "rgb" if name == "rgb" else "xray"
        try:
            images[name] = load_png(resolve_image_path(log_dir, rel), kind=kind)
        except ImageError as err:
            problems.append(f"{where}: item {_show(record.item_id)} field '{name}': {err}")
            logger.debug("item %r: %s not loaded: %s", record.item_id, name, err)
    low, high = images["xray_low"], images["xray_high"]
    if low is not None and high is not None and low.shape != high.shape:
        problems.append(
            f"{where}: item {_show(record.item_id)}: xray_low is {low.shape[1]}x{low.shape[0]} but "
            f"xray_high is {high.shape[1]}x{high.shape[0]}; the dual-energy pair must be "
            "registered to the same pixel grid — both treated as missing"
        )
        images["xray_low"] = images["xray_high"] = None
    return Item(
        record=record,
        xray_low=images["xray_low"],
        xray_high=images["xray_high"],
        rgb=images["rgb"],
        meta=meta,
        problems=tuple(problems),
    )


# -------------------------------------------------------------------- writer


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
