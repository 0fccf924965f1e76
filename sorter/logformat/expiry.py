"""Expired images: the tombstones a retention run leaves, so a deleted image reads as "expired".

``sorter retention`` deletes old images of a log (``docs/operations.md``).  Before it deletes
``<dir>/<name>.png`` it appends ``<name>.png`` to ``<dir>/EXPIRED`` (one file name per line,
in the folder the image was in) and flushes it: a crash between the two leaves a tombstone
for an image that still exists, which readers simply read.  :func:`is_expired` tells a
missing image that was expired on purpose from one that is missing by mistake, which stays
an error.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from sorter.logformat.constants import StrPath

EXPIRED_FILE = "EXPIRED"
EXPIRED_PROBLEM = "image expired"
"""The words every reader puts in its message for an expired image (scoring looks for them)."""

_CACHE_DIRS = 16
_cache: OrderedDict[str, tuple[tuple[int, int], frozenset[str]]] = OrderedDict()
_lock = threading.Lock()


def expired_names(folder: StrPath) -> frozenset[str]:
    """The file names listed in ``folder/EXPIRED`` (a torn last line is ignored).

    Cached per folder while the file's size and modification time stay the same.
    """
    path = os.path.join(os.fspath(folder), EXPIRED_FILE)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    key = (st.st_mtime_ns, st.st_size)
    with _lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == key:
            _cache.move_to_end(path)
            return hit[1]
    with open(path, "rb") as fh:
        data = fh.read()
    end = data.rfind(b"\n")
    names = frozenset(n for n in data[: end + 1].decode("utf-8", "replace").split("\n") if n)
    with _lock:
        _cache[path] = (key, names)
        _cache.move_to_end(path)
        while len(_cache) > _CACHE_DIRS:
            _cache.popitem(last=False)
    return names


def is_expired(image: StrPath) -> bool:
    """Whether the image file is absent because a retention run deleted it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "EXPIRED").write_text("A1_rgb.png\\n")
    >>> is_expired(d / "A1_rgb.png"), is_expired(d / "A2_rgb.png")
    (True, False)
    """
    p = Path(image)
    return not p.exists() and p.name in expired_names(p.parent)


def record_expired(folder: StrPath, names: list[str], *, fsync: bool = True) -> None:
    """Append tombstones for ``names`` (files in ``folder``) before they are deleted."""
    if not names:
        return
    data = "".join(f"{n}\n" for n in names).encode("utf-8")
    path = os.path.join(os.fspath(folder), EXPIRED_FILE)
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
