"""What comes down the simulated belt: the intake mixes, and what one simulated item is.

Shared by the simulator of lines a and b (:mod:`sorter.simulate.run`, which dispatches
line c's items to :mod:`sorter.simulate.linec`) and line c's own route, which needs these
and nothing else of ``run``: so ``linec`` does not import ``run`` back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..readings import ItemRecord
from .items import Instance

__all__ = ["MAX_REDRAWS", "MIXES", "Mix", "SimItem", "hard_cases"]

MAX_REDRAWS = 2000  # draws per item before a family filter is declared unsatisfiable


@dataclass(frozen=True)
class Mix:
    """Family shares of an intake and, within each family, the shares of item kinds."""

    family: dict[str, float]
    li_kinds: dict[str, float]
    other_kinds: dict[str, float]
    unknown_rate: float = 0.08
    damaged_li_rate: float = 0.05


MIXES: dict[str, Mix] = {
    # A lead-acid recycler's intake: mostly lead-acid, a few percent hidden lithium
    "recycler": Mix(
        family={"lead_acid": 0.88, "li_ion": 0.07, "other": 0.05},
        li_kinds={"dropin": 0.35, "pack": 0.30, "cell": 0.17, "module": 0.05, "unknown": 0.13},
        other_kinds={"battery": 0.45, "contaminant": 0.55},
    ),
    # For training: classes balanced, hard cases over-represented
    "balanced": Mix(
        family={"lead_acid": 0.40, "li_ion": 0.40, "other": 0.20},
        li_kinds={"dropin": 0.32, "pack": 0.28, "cell": 0.20, "module": 0.05, "unknown": 0.15},
        other_kinds={"battery": 0.5, "contaminant": 0.5},
        damaged_li_rate=0.08,
    ),
}


@dataclass
class SimItem:
    """One simulated item: its record, its images and the truth behind them."""

    record: ItemRecord
    images: dict[str, np.ndarray] = field(default_factory=dict)


def hard_cases(inst: Instance, xl: np.ndarray | None, dropped: list[str], blackout_below: float) -> list[str]:
    """Tags naming why an item is hard (kept in the log for evaluation only).

    ``blackout_below``: the 16-bit low-channel level under which a pixel counts as blacked out
    (about 20 read-noise sigmas of the line's detector, whose noise model is the renderer's own)."""
    tags: list[str] = []
    a = inst.appearance
    if a.kind == "dropin":
        tags.append("lookalike_dropin")
    if inst.family == "li_ion" and a.kind == "cell" and inst.mass_g / (np.prod(inst.size_mm) * 1e-3) > 1.8:
        tags.append("dense_bare_cell")
    if inst.chemistry in ("nimh", "nicd", "alkaline"):
        tags.append("xray_lookalike_other")
    if "steel case" in inst.product:
        tags.append("steel_cased_li_ion")
    if inst.extra.get("dry"):
        tags.append("dry_lead_acid")
    if inst.family != "lead_acid" and xl is not None:
        occupied = xl < 0.98 * 65535
        if occupied.any() and np.mean(xl[occupied] < blackout_below) > 0.5:
            tags.append("xray_blackout")
    if not inst.in_catalog:
        tags.append("unknown_product")
    if inst.damage:
        tags.append("damaged")
    tags += [f"dropout_{s}" for s in dropped]
    return tags
