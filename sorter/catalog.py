"""The battery catalogue: real products found in a lead-acid recycler's intake.

The bundled ``data/battery_catalog.csv`` is a sample of the market; add products by
appending rows, or pass extra CSV files with the same columns.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from .errors import SimulationError

FAMILIES = ("lead_acid", "li_ion", "other")
CHEMISTRIES = (
    "lead_acid",
    "li_ion_lfp",
    "li_ion_nmc",
    "li_ion_nca",
    "li_ion_lco",
    "li_ion_lmo",
    "nimh",
    "nicd",
    "alkaline",
)


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue row. Dimensions in mm (for cylinders length is the axis)."""

    name: str
    chemistry: str
    family: str
    length_mm: float
    width_mm: float
    height_mm: float
    mass_kg: float
    nominal_v: float | None
    nominal_ah: float | None
    quality: str = "U"
    source: str = ""

    @property
    def volume_l(self) -> float:
        return self.length_mm * self.width_mm * self.height_mm * 1e-6

    @property
    def density_kg_l(self) -> float:
        return self.mass_kg / self.volume_l

    @property
    def energy_wh(self) -> float | None:
        if self.nominal_v is None or self.nominal_ah is None:
            return None
        return self.nominal_v * self.nominal_ah


def _opt_float(v: str) -> float | None:
    v = v.strip()
    return float(v) if v else None


def parse_catalog(text: str, where: str = "catalogue") -> list[Product]:
    """Parse catalogue CSV text; raises :class:`SimulationError` naming the bad row."""
    rows = csv.DictReader(io.StringIO(text))
    out: list[Product] = []
    for i, row in enumerate(rows, start=2):
        try:
            p = Product(
                name=row["name"].strip(),
                chemistry=row["chemistry"].strip(),
                family=row["family"].strip(),
                length_mm=float(row["length_mm"]),
                width_mm=float(row["width_mm"]),
                height_mm=float(row["height_mm"]),
                mass_kg=float(row["mass_kg"]),
                nominal_v=_opt_float(row.get("nominal_v") or ""),
                nominal_ah=_opt_float(row.get("nominal_ah") or ""),
                quality=(row.get("quality") or "U").strip(),
                source=(row.get("source") or "").strip(),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SimulationError(
                f"{where} row {i}: {err!r}; each row needs name, chemistry, family, "
                "length_mm, width_mm, height_mm, mass_kg (numbers in mm and kg)"
            ) from err
        if p.chemistry not in CHEMISTRIES or p.family not in FAMILIES:
            raise SimulationError(
                f"{where} row {i}: chemistry {p.chemistry!r} / family {p.family!r} unknown; "
                f"use one of {CHEMISTRIES} / {FAMILIES}"
            )
        if min(p.length_mm, p.width_mm, p.height_mm, p.mass_kg) <= 0:
            raise SimulationError(f"{where} row {i}: dimensions and mass must be positive")
        out.append(p)
    return out


def load_catalog(extra: Iterable[str | Path] = ()) -> list[Product]:
    """The bundled catalogue plus any extra CSV files.

    Examples
    --------
    >>> from sorter.catalog import load_catalog
    >>> cat = load_catalog()
    >>> sorted({p.family for p in cat})
    ['lead_acid', 'li_ion', 'other']
    """
    text = resources.files("sorter").joinpath("data/battery_catalog.csv").read_text("utf-8")
    products = parse_catalog(text, "bundled battery_catalog.csv")
    for path in extra:
        products += parse_catalog(Path(path).read_text("utf-8"), str(path))
    return products
