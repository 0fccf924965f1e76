"""``meta.json`` (a log's calibration) and the checks on a log directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sorter.errors import LogFormatError
from sorter.logformat.constants import ITEMS_FILE, META_FILE, SUPPORTED_FORMAT, StrPath
from sorter.logformat.records import (
    _as_float,
    _clean_json,
    _json_type,
    _NonFinite,
    _show,
)
from sorter.logformat.segments import layout, list_segments
from sorter.readings import LogMeta


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
            f"{path}: cannot be read as UTF-8 text ({err}); rewrite it with write_meta or delete it to use the defaults"
        ) from err
    try:
        obj = json.loads(text, parse_constant=_NonFinite)
    except (ValueError, RecursionError) as err:
        raise LogFormatError(f"{path}: not valid JSON ({err}); fix the file or delete it to use the defaults") from err
    return _meta_from_json(obj, str(path))


def check_log_dir(log_dir: StrPath) -> None:
    """Raise :class:`LogFormatError` unless ``log_dir`` is a directory holding ``items.jsonl``
    (or the segment files of a rotated log, numbered without a gap).

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
        raise LogFormatError(
            f"{d}: no such log directory; check the path (a sorter-log/1 log is a "
            f"directory holding {ITEMS_FILE}, see docs/log-format.md)"
        )
    if not d.is_dir():
        raise LogFormatError(f"{d} is a file, not a log directory; pass the directory that holds {ITEMS_FILE}")
    if layout(d) == "rotated":
        list_segments(d)  # a missing segment is an error
        return
    items = d / ITEMS_FILE
    if not items.is_file():
        raise LogFormatError(
            f"{d} holds no {ITEMS_FILE}, so it is not a sorter-log/1 log (or its recorder "
            "has not written an item yet); pass a log directory, see docs/log-format.md"
        )


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
            f'{where}: expected a JSON object, got {_json_type(obj)}; write e.g. {{"format": "sorter-log/1"}}'
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
                f"{where}: key 'line' is {_show(obj['line'])}, expected a string naming the sorting line; fix meta.json"
            )
        kwargs["line"] = obj["line"]
    xray = _meta_section(obj, "xray", ("mm_per_px", "energies_kev"), where)
    if "mm_per_px" in xray:
        kwargs["xray_mm_per_px"] = _meta_positive(xray["mm_per_px"], "xray.mm_per_px", where)
    if "energies_kev" in xray:
        kwargs["xray_energies_kev"] = _meta_energies(xray["energies_kev"], where)
    camera = _meta_section(obj, "camera", ("mm_per_px",), where)
    if "mm_per_px" in camera:
        kwargs["camera_mm_per_px"] = _meta_positive(camera["mm_per_px"], "camera.mm_per_px", where)
    extra = {k: _clean_json(v) for k, v in obj.items() if k not in ("format", "line", "xray", "camera")}
    return LogMeta(**kwargs, extra=extra)


def _meta_section(obj: dict[str, Any], key: str, known: tuple[str, ...], where: str) -> dict[str, Any]:
    section = obj.get(key, {})
    if not isinstance(section, dict):
        raise LogFormatError(
            f"{where}: key '{key}' is {_show(section)}, expected an object with keys {', '.join(known)}; fix meta.json"
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
    nums = [_as_float(v) for v in value] if isinstance(value, list) and len(value) == 2 else None
    if nums is None or nums[0] is None or nums[1] is None or not 0 < nums[0] < nums[1]:
        raise LogFormatError(
            f"{where}: key 'xray.energies_kev' is {_show(value)}, expected "
            "[low, high] with 0 < low < high (tube energies in keV, e.g. [60, 140]); "
            "fix meta.json"
        )
    return (nums[0], nums[1])
