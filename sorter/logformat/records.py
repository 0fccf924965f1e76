"""One record of ``items.jsonl``: :func:`parse_record` and its field checks.

Line-level problems (no usable ``item_id`` or ``t``) raise
:class:`~sorter.errors.LogFormatError`; field-level problems (a NaN weight, an unknown label)
set that field to ``None`` and are listed in ``ItemRecord.problems``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from sorter.errors import ErrorKind, LogFormatError
from sorter.readings import (
    IMAGE_FIELDS,
    KNOWN_FIELDS,
    LABELS,
    NUMERIC_FIELDS,
    ItemRecord,
)

# Plausible ranges of the sensor fields: (low, high, low_inclusive, unit, hint).
# A value outside is a sensor or recorder fault, not a battery.
_RANGES: dict[str, tuple[float, float, bool, str, str]] = {
    "weight_g": (0.0, 2_000_000.0, False, "g", "check the scale (tare, calibration)"),
    "length_mm": (0.0, 5000.0, False, "mm", "check the laser profiler"),
    "width_mm": (0.0, 5000.0, False, "mm", "check the laser profiler"),
    "height_mm": (0.0, 5000.0, False, "mm", "check the laser profiler"),
    "surface_temp_c": (-60.0, 1200.0, True, "degC", "check the thermal camera"),
}


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
            'one object such as {"item_id": "A1", "t": 1767225600.0}',
            kind=ErrorKind.JSON,
        )
    item_id = obj.get("item_id")
    if "item_id" not in obj:
        raise LogFormatError(
            f"{loc}: field 'item_id' is missing; every line needs the string id the sensor bridge gave the item",
            kind=ErrorKind.ITEM_ID,
        )
    if not isinstance(item_id, str) or not item_id.strip():
        raise LogFormatError(
            f"{loc}: field 'item_id' is {_show(item_id)}, expected a non-empty string; "
            "fix the recorder (write the id as a JSON string)",
            kind=ErrorKind.ITEM_ID,
        )
    if "t" not in obj:
        raise LogFormatError(
            f"{loc}: field 't' is missing; every line needs the time the item passed "
            "the sensor bridge, in epoch seconds",
            kind=ErrorKind.TIME,
        )
    t = _as_float(obj["t"])
    if t is None:
        raise LogFormatError(
            f"{loc}: field 't' is {_show(obj['t'])}, expected a finite number "
            "(epoch seconds); fix the recorder's clock or drop the line",
            kind=ErrorKind.TIME,
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
