"""File names, limits and the path type shared by the reader and the writer of ``sorter-log/1``."""

from __future__ import annotations

import os
from typing import Union

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
