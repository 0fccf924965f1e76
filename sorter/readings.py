"""One record type per reading: what the sensor bridge reports for one item.

A :class:`ItemRecord` is one line of ``items.jsonl`` (see ``docs/log-format.md``),
validated at the boundary.  :class:`Item` is a record with its images decoded
into numpy arrays, ready for feature extraction; a sensor whose reading is
missing or could not be loaded is ``None`` there and its problem is listed in
:attr:`Item.problems`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

LABELS: tuple[str, ...] = ("lead_acid", "li_ion", "other")

NUMERIC_FIELDS: tuple[str, ...] = (
    "weight_g",
    "length_mm",
    "width_mm",
    "height_mm",
    "surface_temp_c",
)
IMAGE_FIELDS: tuple[str, ...] = ("xray_low", "xray_high", "rgb")
KNOWN_FIELDS: frozenset[str] = frozenset(("item_id", "t", "label", *NUMERIC_FIELDS, *IMAGE_FIELDS))


def _empty_mapping() -> Mapping[str, Any]:
    # A plain dict (not a read-only proxy): records cross process boundaries by pickle.
    return {}


@dataclass(frozen=True, slots=True)
class LogMeta:
    """The optional ``meta.json`` of a log, with the documented defaults."""

    format: str = "sorter-log/1"
    line: str = "unknown"
    xray_mm_per_px: float = 2.0
    xray_energies_kev: tuple[float, float] = (60.0, 140.0)
    camera_mm_per_px: float = 1.0
    extra: Mapping[str, Any] = field(default_factory=_empty_mapping, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            {
                "format": self.format,
                "line": self.line,
                "xray": {
                    "mm_per_px": self.xray_mm_per_px,
                    "energies_kev": list(self.xray_energies_kev),
                },
                "camera": {"mm_per_px": self.camera_mm_per_px},
            }
        )
        return out


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One validated line of ``items.jsonl``.

    Units are in the field names. ``extra`` keeps unknown fields (for example the
    simulator's own truth: ``product``, ``damaged``, ``pose``); the classifier never
    reads them.
    """

    item_id: str
    t: float
    weight_g: float | None = None
    length_mm: float | None = None
    width_mm: float | None = None
    height_mm: float | None = None
    xray_low: str | None = None
    xray_high: str | None = None
    rgb: str | None = None
    surface_temp_c: float | None = None
    label: str | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty_mapping, compare=False)
    line_no: int = 0
    problems: tuple[str, ...] = ()
    """Field-level problems found while validating (e.g. a NaN weight, which is then
    treated as missing); the item is still scored, and the policy sends it to a safe lane."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object for ``items.jsonl`` (``None`` fields written as ``null``)."""
        out: dict[str, Any] = {"item_id": self.item_id, "t": self.t}
        for name in (*NUMERIC_FIELDS, *IMAGE_FIELDS):
            out[name] = getattr(self, name)
        if self.label is not None:
            out["label"] = self.label
        for k, v in self.extra.items():
            if k not in out:
                out[k] = v
        return out


@dataclass(frozen=True, slots=True)
class Item:
    """A record with its images decoded: what feature extraction consumes.

    ``xray_low``/``xray_high`` are 2-D ``uint16`` arrays of air-normalised
    transmission (65535 = nothing in the beam); ``rgb`` is an ``H x W x 3`` ``uint8``
    array in RGB order. Each is ``None`` when missing or unreadable.
    """

    record: ItemRecord
    xray_low: np.ndarray | None = None
    xray_high: np.ndarray | None = None
    rgb: np.ndarray | None = None
    meta: LogMeta = field(default_factory=LogMeta)
    problems: tuple[str, ...] = ()

    @property
    def item_id(self) -> str:
        return self.record.item_id
