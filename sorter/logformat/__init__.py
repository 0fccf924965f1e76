"""Read and write line logs in the ``sorter-log/1`` format.

A log is a directory holding ``items.jsonl`` (one JSON object per item, appended
as items pass the sensor bridge), an optional ``meta.json`` (calibration) and the
PNG images the items refer to.  ``docs/log-format.md`` is the contract for
recorders; this package is its reference reader and writer.

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

The package, in the order of the data (each module imports only the ones above it):

* :mod:`.constants` — file names, limits; :mod:`.records` — one record's validation;
* :mod:`.meta` — ``meta.json`` and the log-directory check; :mod:`.incomplete` — the
  ``INCOMPLETE`` marker;
* :mod:`.reader` — the streaming reader; :mod:`.images` — PNG safety and item loading;
* :mod:`.expiry` — tombstones of images a retention run deleted ("expired", not missing);
* :mod:`.segments` — rotated logs: segment files, headers, :func:`locate_line`;
* :mod:`.writer` — the crash-safe writer (rotating when asked).

Everything is re-exported here: import from ``sorter.logformat``.
"""

from __future__ import annotations

from sorter.logformat.constants import (
    IMAGES_DIR,  # noqa: F401 - importable as before the split
    INCOMPLETE_FILE,
    ITEMS_FILE,
    MAX_IMAGE_PIXELS,
    MAX_LINE_BYTES,
    META_FILE,
    SUPPORTED_FORMAT,
    StrPath,  # noqa: F401 - importable as before the split
)
from sorter.logformat.expiry import EXPIRED_FILE, EXPIRED_PROBLEM, is_expired, record_expired
from sorter.logformat.images import encode_png, load_item, load_png, resolve_image_path
from sorter.logformat.incomplete import incomplete_note
from sorter.logformat.meta import check_log_dir, read_meta, write_meta
from sorter.logformat.reader import LogLine, iter_log
from sorter.logformat.records import parse_record
from sorter.logformat.segments import LogPosition, item_files, layout, locate_line, segment_file
from sorter.logformat.writer import LogWriter

__all__ = [
    "EXPIRED_FILE",
    "EXPIRED_PROBLEM",
    "ITEMS_FILE",
    "MAX_IMAGE_PIXELS",
    "INCOMPLETE_FILE",
    "MAX_LINE_BYTES",
    "META_FILE",
    "SUPPORTED_FORMAT",
    "LogLine",
    "LogPosition",
    "LogWriter",
    "check_log_dir",
    "encode_png",
    "incomplete_note",
    "is_expired",
    "item_files",
    "layout",
    "locate_line",
    "iter_log",
    "load_item",
    "load_png",
    "parse_record",
    "read_meta",
    "record_expired",
    "resolve_image_path",
    "segment_file",
    "write_meta",
]
