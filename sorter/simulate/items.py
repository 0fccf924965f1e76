"""Physical item instances: a product's inner structure, mass budget, pose and damage.

Each builder turns a catalogue :class:`~sorter.catalog.Product` (or a contaminant or an
unknown product made up on the spot) into an :class:`Instance`: solid primitives in
the item's frame whose masses add up to the item's mass, plus what the camera and the
thermal camera need to know about its outside.

Compositions follow the reference facts: lead and its compounds are 55-60 % of a
lead-acid battery's mass, electrolyte 12-20 %, the polypropylene case 5-8 %; in Li-ion
packs cells are 68-94 % of the mass, cylindrical cells have 0.22-0.28 mm steel cans.

Why this module is long (about 760 lines): one builder per product family (lead-acid
blocks, cylindrical-cell packs, prismatic and pouch cells, modules, drop-ins, contaminants,
unknown products), each a page of physics that shares the mass-budget and pose helpers
here; split by family they would import each other's helpers back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..catalog import Product
from .geometry import Box, CylinderArray, Primitive, mass_by_material, permute, total_mass_g

PP = "Polypropylene(CH2)n"
ELECTROLYTE_PB = "H2SO4_37wt%_electrolyte"
ELECTROLYTE_LI = "LiPF6_EC_DMC_electrolyte"
RHO_PP = 0.90

CATHODE = {
    "li_ion_lfp": "LiFePO4",
    "li_ion_nmc": "NMC111",
    "li_ion_nca": "NMC811",  # NCA's attenuation is close to high-nickel NMC
    "li_ion_lco": "LiCoO2",
    "li_ion_lmo": "LiMn2O4",
}

# Mass fractions of one cell's contents (reference: cell teardowns; cans are 0.22-0.28 mm steel)
CELL_FRACTIONS = {
    "cyl": {"Fe": 0.18, "cathode": 0.38, "C": 0.20, "Cu": 0.09, "Al": 0.05, ELECTROLYTE_LI: 0.08, PP: 0.02},
    "cyl_lfp": {"Fe": 0.16, "cathode": 0.33, "C": 0.16, "Cu": 0.12, "Al": 0.06, ELECTROLYTE_LI: 0.14, PP: 0.03},
    "prismatic": {"Al": 0.16, "cathode": 0.34, "C": 0.17, "Cu": 0.12, ELECTROLYTE_LI: 0.16, PP: 0.05},
    "pouch": {"Al": 0.10, "cathode": 0.38, "C": 0.19, "Cu": 0.13, ELECTROLYTE_LI: 0.15, PP: 0.05},
}
# Cylindrical cell formats: diameter, length (mm), mass (g) — public datasheets
CELL_FORMATS = {
    "18650": (18.3, 65.1, 46.0),
    "21700": (21.2, 70.0, 68.0),
    "26650": (26.5, 65.5, 85.0),
    "32700": (32.2, 70.5, 142.0),
}


@dataclass
class Appearance:
    """What the colour camera sees (colours are RGB 0-255)."""

    kind: str  # lead_acid, pack, dropin, cell, module, nimh, contaminant names ...
    case_rgb: tuple[int, int, int]
    lid_rgb: tuple[int, int, int] | None = None
    posts: bool = False
    post_rgb: tuple[int, int, int] = (170, 170, 165)
    vents: str | None = None  # "caps", "eye", "flat"
    label: str | None = None  # "pb_bin", "li_text", "brand", "warning", None
    label_rgb: tuple[int, int, int] = (235, 235, 230)
    accent_rgb: tuple[int, int, int] | None = None
    shape: str = "box"  # box, cylinder, irregular
    gloss: float = 0.3

    def __post_init__(self) -> None:
        if self.label == "none":
            self.label = None
        if self.vents == "none":
            self.vents = None


@dataclass
class Instance:
    """One physical item on the belt."""

    product: str
    chemistry: str
    family: str
    in_catalog: bool
    size_mm: tuple[float, float, float]  # L, W, H in the item frame
    prims: list[Primitive]
    appearance: Appearance
    emissivity: float = 0.94
    damage: str | None = None  # swollen, dented, hot
    heat_c: float = 0.0  # internal heat above ambient
    energy_wh: float | None = None
    pose: str = "upright"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mass_g(self) -> float:
        return total_mass_g(self.prims)

    def posed_size(self, pose: str) -> tuple[float, float, float]:
        order = POSES[pose]
        return (self.size_mm[order[0]], self.size_mm[order[1]], self.size_mm[order[2]])

    def posed(self, pose: str) -> tuple[list[Primitive], tuple[float, float, float]]:
        """Primitives and size in the belt frame for a pose (beam along the new z)."""
        order = POSES[pose]
        size = tuple(self.size_mm[o] for o in order)
        return [permute(p, order, self.size_mm) for p in self.prims], size  # type: ignore[return-value]


POSES: dict[str, tuple[int, int, int]] = {
    "upright": (0, 1, 2),  # standing on its base
    "side": (0, 2, 1),  # lying on its broad side: footprint L x H, beam through W
    "end": (1, 2, 0),  # standing on its end: footprint W x H, beam through L
}


# ---------------------------------------------------------------------------- helpers


def _shell(
    lo: tuple[float, float, float], hi: tuple[float, float, float], t: float, material: str, rho: float
) -> list[Box]:
    """A closed hollow box of wall thickness ``t`` (outer minus inner)."""
    inner_lo = tuple(a + t for a in lo)
    inner_hi = tuple(b - t for b in hi)
    return [Box(lo, hi, material, rho), Box(inner_lo, inner_hi, material, -rho)]  # type: ignore[arg-type]


def _fill(lo, hi, fractions: dict[str, float], mass_g: float) -> list[Box]:
    """Boxes filling one volume, one per material, with densities giving ``mass_g`` split by ``fractions``."""
    vol = float(np.prod(np.subtract(hi, lo))) * 1e-3
    tot = sum(fractions.values())
    return [Box(tuple(lo), tuple(hi), m, mass_g * f / tot / vol) for m, f in fractions.items() if f > 0]


def _cyl_cells(origin, counts, axis, fmt_d, fmt_l, cell_mass_g, fractions, cathode, can_mm=0.25) -> list[Primitive]:
    """Arrays of cylindrical cells: a steel can (tube + ends folded into the tube) and a jelly roll."""
    r = fmt_d / 2
    prims: list[Primitive] = []
    n = int(np.prod(counts))
    tot = sum(fractions.values())
    can_mass = cell_mass_g * fractions.get("Fe", 0.0) / tot
    core_vol = math.pi * (r - can_mm) ** 2 * fmt_l * 1e-3
    can_vol = math.pi * (r**2 - (r - can_mm) ** 2) * fmt_l * 1e-3
    base = dict(origin=tuple(origin), counts=tuple(counts), axis=axis, radius=r, length=fmt_l, pitch=fmt_d + 0.2)
    prims.append(CylinderArray(**base, material="Fe", density=can_mass / can_vol, r_inner=r - can_mm))
    for m, f in fractions.items():
        if m == "Fe":
            continue
        mat = cathode if m == "cathode" else m
        core = dict(base, radius=r - can_mm)
        core["origin"] = tuple(o + (can_mm if d != axis else 0.0) for d, o in enumerate(origin))
        core["pitch"] = base["pitch"]
        prims.append(CylinderArray(**core, material=mat, density=cell_mass_g * f / tot / core_vol))
    assert n > 0
    return prims


def _jitter(rng: np.random.Generator, x: float, rel: float) -> float:
    return float(x * (1 + rng.normal(0, rel)))


def _pick_rgb(rng: np.random.Generator, palette: list[tuple[int, int, int]], var: int = 12) -> tuple[int, int, int]:
    c = np.array(palette[rng.integers(len(palette))], float) + rng.normal(0, var, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


LEAD_CASE_COLOURS = [(20, 20, 22), (35, 35, 38), (120, 120, 125), (215, 215, 205), (110, 30, 35), (25, 45, 110)]
LI_BRAND_COLOURS = [
    (250, 200, 20),
    (0, 140, 150),
    (30, 90, 200),
    (200, 30, 30),
    (40, 160, 60),
    (240, 120, 20),
    (25, 25, 28),
    (90, 90, 95),
]
SHRINK_COLOURS = [
    (30, 90, 200),
    (40, 160, 60),
    (150, 60, 160),
    (200, 40, 40),
    (230, 230, 230),
    (20, 20, 20),
    (250, 140, 30),
]


# ---------------------------------------------------------------------------- lead-acid


def build_lead_acid(p: Product, rng: np.random.Generator, in_catalog: bool = True) -> Instance:
    L, W, H = (_jitter(rng, d, 0.012) for d in (p.length_mm, p.width_mm, p.height_mm))
    mass = _jitter(rng, p.mass_kg * 1000, 0.04)
    n_cells = max(1, int(round((p.nominal_v or 12) / 2)))
    wall = float(np.clip(1.5 + 0.012 * W, 1.8, 4.0))
    part = wall * 0.7
    lid = wall * 1.6
    prims: list[Primitive] = _shell((0, 0, 0), (L, W, H), wall, PP, RHO_PP)
    # partitions between cells, across the length
    inner_L = L - 2 * wall - (n_cells - 1) * part
    cell_L = inner_L / n_cells
    for i in range(1, n_cells):
        x0 = wall + i * cell_L + (i - 1) * part
        prims.append(Box((x0, wall, wall), (x0 + part, W - wall, H - lid), PP, RHO_PP))
    prims.append(Box((wall, wall, H - lid), (L - wall, W - wall, H - wall), PP, RHO_PP))  # lid slab
    case_mass = total_mass_g(prims)
    rest = mass - case_mass
    if rest <= 0.3 * mass:  # a very small block: thinner walls would be real; keep the budget honest
        rest = 0.3 * mass
    # Condition of the battery: sulfation converts active material; some have lost most
    # of their electrolyte (dried out, or drained before shipping) and are light for their size
    sulf = float(rng.beta(2, 5))
    dry = rng.random() < 0.06
    # Lead and its compounds ~58 % of the mass (with posts and straps), electrolyte 12-20 %,
    # separators ~3 %, water held in the paste and plates the rest.
    frac = {
        "Pb": 0.25,
        "PbO2": 0.15 * (1 - 0.5 * sulf),
        "PbSO4": 0.12 + 0.15 * 0.5 * sulf,
        ELECTROLYTE_PB: 0.19 * float(rng.uniform(0.8, 1.05)) * (float(rng.uniform(0.05, 0.3)) if dry else 1.0),
        "Glass_fibre(SiO2)": 0.035,
        "Water": 0.08,
    }
    post_frac = 0.06
    tot = sum(frac.values()) + post_frac
    plate_top = H - lid - 0.12 * H
    for i in range(n_cells):
        x0 = wall + i * (cell_L + part)
        prims += _fill(
            (x0, wall, wall), (x0 + cell_L, W - wall, plate_top), frac, rest * (1 - post_frac / tot) / n_cells
        )
    # straps along the cells and two tapered posts (lead)
    post_mass = rest * post_frac / tot
    strap_w = min(12.0, W * 0.15)
    r_post = float(np.clip(0.035 * W, 4.0, 9.0))
    post_len = max(6.0, 0.08 * H)
    strap = [
        Box((wall, wall + 2, plate_top), (L - wall, wall + 2 + strap_w, plate_top + 6), "Pb", 1.0),
        Box((wall, W - wall - 2 - strap_w, plate_top), (L - wall, W - wall - 2, plate_top + 6), "Pb", 1.0),
    ]
    py = wall + 2 + strap_w / 2 - r_post
    posts = [
        CylinderArray((wall + 4, py, H - 1), (1, 1, 1), 2, r_post, post_len, 2 * r_post + 1, "Pb", 1.0),
        CylinderArray(
            (L - wall - 4 - 2 * r_post, py, H - 1), (1, 1, 1), 2, r_post * 0.9, post_len, 2 * r_post, "Pb", 1.0
        ),
    ]
    unit = total_mass_g(strap + posts)  # at density 1
    scale = post_mass / unit * 1.0
    prims += [replace(s, density=scale) for s in strap + posts]
    app = Appearance(
        kind="lead_acid",
        case_rgb=_pick_rgb(rng, LEAD_CASE_COLOURS),
        lid_rgb=None,
        posts=True,
        vents=str(rng.choice(["caps", "eye", "flat"], p=[0.35, 0.35, 0.30])),
        label=str(rng.choice(["pb_bin", "brand", "warning", "none"], p=[0.45, 0.25, 0.15, 0.15])),
        label_rgb=_pick_rgb(rng, [(235, 235, 230), (230, 40, 40), (30, 80, 200), (240, 200, 30)]),
        gloss=float(rng.uniform(0.1, 0.5)),
    )
    return Instance(
        product=p.name,
        chemistry=p.chemistry,
        family="lead_acid",
        in_catalog=in_catalog,
        size_mm=(L, W, H + post_len),
        prims=prims,
        appearance=app,
        emissivity=0.94,
        energy_wh=p.energy_wh,
        extra={"sulfation": round(sulf, 3), "dry": dry},
    )


# ---------------------------------------------------------------------------- lithium


def _li_kind(p: Product) -> str:
    n = p.name.lower()
    if "pouch" in n and p.height_mm < 15:
        return "pouch_cell"
    if "prismatic" in n and "pack" not in n and p.mass_kg < 3 and p.height_mm < 60:
        return "prismatic_cell"
    if p.width_mm == p.height_mm and p.length_mm < 80:
        return "cyl_cell"
    if p.chemistry == "li_ion_lfp" and p.mass_kg > 0.5 and p.height_mm > 80:
        return "dropin"
    if "module" in n:
        return "module"
    return "pack"


def build_li_ion(p: Product, rng: np.random.Generator, in_catalog: bool = True) -> Instance:
    kind = _li_kind(p)
    cath = CATHODE.get(p.chemistry, "NMC111")
    L, W, H = (_jitter(rng, d, 0.01) for d in (p.length_mm, p.width_mm, p.height_mm))
    mass = _jitter(rng, p.mass_kg * 1000, 0.03)
    lfp = p.chemistry == "li_ion_lfp"
    if kind == "cyl_cell":
        fr = CELL_FRACTIONS["cyl_lfp" if lfp else "cyl"]
        prims = _cyl_cells((0, 0, 0), (1, 1, 1), 0, W, L, mass, fr, cath)
        wrap = _pick_rgb(rng, SHRINK_COLOURS)
        app = Appearance(
            "cell",
            wrap,
            shape="cylinder",
            label=str(rng.choice(["brand", "li_text", "none"])),
            accent_rgb=_pick_rgb(rng, SHRINK_COLOURS),
            gloss=0.6,
        )
        return Instance(
            p.name, p.chemistry, "li_ion", in_catalog, (L, W, H), prims, app, 0.9, energy_wh=rated_energy_wh(p)
        )
    if kind in ("pouch_cell", "prismatic_cell"):
        fr = CELL_FRACTIONS["pouch" if kind == "pouch_cell" else "prismatic"]
        t = 0.15 if kind == "pouch_cell" else 0.8
        prims = _shell((0, 0, 0), (L, W, H), t, "Al", 2.70)
        can = total_mass_g(prims)
        fr2 = {(cath if k == "cathode" else k): v for k, v in fr.items() if k != "Al"}
        prims += _fill((t, t, t), (L - t, W - t, H - t), fr2, max(mass - can, 0.5 * mass))
        colour = (
            (190, 190, 195) if kind == "pouch_cell" else _pick_rgb(rng, [(60, 110, 190), (160, 160, 165), (30, 30, 30)])
        )
        app = Appearance(
            "cell",
            colour,
            label=str(rng.choice(["brand", "li_text", "warning", "none"])),
            gloss=0.7,
            posts=kind == "prismatic_cell",
            post_rgb=(200, 200, 205),
        )
        return Instance(
            p.name,
            p.chemistry,
            "li_ion",
            in_catalog,
            (L, W, H),
            prims,
            app,
            0.3 if kind == "pouch_cell" else 0.5,
            energy_wh=rated_energy_wh(p),
        )
    return _build_pack(p, kind, rng, L, W, H, mass, cath, in_catalog)


def _build_pack(p, kind, rng, L, W, H, mass, cath, in_catalog) -> Instance:
    lfp = p.chemistry == "li_ion_lfp"
    steel_case = "steel case" in p.name
    wall = float(rng.uniform(2.0, 3.5)) if kind != "module" else 1.5
    prims: list[Primitive] = _shell((0, 0, 0), (L, W, H), wall, PP, 1.05)
    if kind == "module":
        prims = _shell((0, 0, 0), (L, W, H), wall, "Al", 2.70)
    elif steel_case:  # marine and golf-cart LFP batteries in sheet-steel boxes: heavy and dark under X-ray
        wall = float(rng.uniform(1.2, 2.0))
        prims = _shell((0, 0, 0), (L, W, H), wall, "Fe", 7.85)
    inner = (L - 2 * wall - 2, W - 2 * wall - 2, H - 2 * wall - 4)
    cell_frac = float(rng.uniform(0.70, 0.90))
    budget = mass * cell_frac
    use_prismatic = (
        (lfp and kind == "dropin" and rng.random() < 0.55)
        or ("prismatic" in p.name.lower())
        or ("bmw i3" in p.name.lower())
    )
    if use_prismatic:
        n_cells = 4 if (p.nominal_v or 12.8) < 14 else 8
        if "bmw" in p.name.lower():
            n_cells = 12
        gap = float(rng.uniform(1.0, 3.0))
        # cells stand side by side along the length
        cl = (inner[0] - (n_cells - 1) * gap) / n_cells
        fr = {(cath if k == "cathode" else k): v for k, v in CELL_FRACTIONS["prismatic"].items() if k != "Al"}
        per = budget / n_cells
        for i in range(n_cells):
            x0 = wall + 1 + i * (cl + gap)
            lo, hi = (x0, wall + 1, wall + 2), (x0 + cl, wall + 1 + inner[1], wall + 2 + inner[2] * 0.92)
            can = _shell(lo, hi, 0.8, "Al", 2.70)
            prims += can
            prims += _fill(
                tuple(a + 0.8 for a in lo), tuple(b - 0.8 for b in hi), fr, max(per - total_mass_g(can), 0.6 * per)
            )
        cells_desc = f"{n_cells} prismatic"
    else:
        fmt = "32700" if (lfp and kind == "dropin") else ("21700" if rng.random() < 0.35 else "18650")
        if lfp and kind != "dropin":
            fmt = "26650" if inner[2] > 30 and rng.random() < 0.5 else "18650"
        d, ln, m_cell = CELL_FORMATS[fmt]
        if lfp:
            m_cell *= 0.85  # LFP cells of a format are lighter than NMC
        fr = CELL_FRACTIONS["cyl_lfp" if lfp else "cyl"]
        pitch = d + 0.2
        best = None
        for ax in (0, 1, 2):
            if inner[ax] < ln:
                continue
            counts = [int(inner[k] // pitch) if k != ax else int(inner[k] // ln) for k in range(3)]
            if min(counts) < 1:
                continue
            best_n = int(np.prod(counts))
            if best is None or best_n > best[0]:
                best = (best_n, ax, counts)
        if best is None:  # too thin for the format: one row of cells lying along the length
            ax, counts = 0, [max(1, int(inner[0] // ln)), max(1, int(inner[1] // pitch)), 1]
        else:
            _, ax, counts = best
        target = max(1, int(budget // m_cell))
        # Remove rows until the cells fit the mass budget
        while int(np.prod(counts)) > target:
            k = int(np.argmax([c if i != ax else 0 for i, c in enumerate(counts)]))
            if counts[k] <= 1:
                k = ax
                if counts[k] <= 1:
                    break
            counts[k] -= 1
        n = int(np.prod(counts))
        origin = [wall + 1, wall + 1, wall + 2]
        prims += _cyl_cells(tuple(origin), tuple(counts), ax, d, ln, m_cell, fr, cath)
        # nickel strips over the cell ends
        ext = prims[-1].extent() if isinstance(prims[-1], CylinderArray) else (10, 10, 10)
        strip = Box(tuple(origin), (origin[0] + ext[0], origin[1] + ext[1], origin[2] + 0.3), "Ni", 8.9)
        prims.append(strip)
        cells_desc = f"{n} x {fmt}"
    # BMS board: FR4 with copper, dense spots of components
    bl, bw = min(60.0, inner[0] * 0.5), min(40.0, inner[1] * 0.6)
    z_bms = H - wall - 3
    prims.append(Box((wall + 2, wall + 2, z_bms - 1.6), (wall + 2 + bl, wall + 2 + bw, z_bms), "FR4", 1.9))
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(wall + 4, wall + bl - 4), rng.uniform(wall + 4, wall + bw - 4)
        prims.append(Box((cx - 2.5, cy - 2.5, z_bms - 3.5), (cx + 2.5, cy + 2.5, z_bms - 1.6), "Cu", 6.0))
    # whatever mass remains: wiring, potting, foam — spread through the interior
    rest = mass - total_mass_g(prims)
    if rest > 0:
        lo, hi = (wall, wall, wall), (L - wall, W - wall, H - wall)
        prims += _fill(lo, hi, {PP: 0.8, "Cu": 0.2}, rest)
    if kind == "dropin":
        app = Appearance(
            "dropin",
            _pick_rgb(rng, [(22, 22, 24), (35, 35, 38), (60, 60, 62), (215, 215, 205), (30, 60, 120)], 8),
            posts=True,
            vents=str(rng.choice(["flat", "caps", "none"], p=[0.6, 0.15, 0.25])),
            label=str(rng.choice(["li_text", "brand", "pb_bin", "none"], p=[0.35, 0.3, 0.05, 0.3])),
            label_rgb=_pick_rgb(rng, [(235, 235, 230), (30, 160, 80), (240, 200, 30), (30, 80, 200)]),
            gloss=0.3,
        )
    elif kind == "module":
        app = Appearance("module", (175, 175, 180), label=str(rng.choice(["warning", "none"])), gloss=0.6)
    else:
        base = _pick_rgb(rng, LI_BRAND_COLOURS)
        app = Appearance(
            "pack",
            base,
            accent_rgb=_pick_rgb(rng, LI_BRAND_COLOURS + [(20, 20, 20)]),
            label=str(rng.choice(["brand", "li_text", "warning", "none"], p=[0.4, 0.25, 0.15, 0.2])),
            gloss=0.4,
        )
    return Instance(
        p.name,
        p.chemistry,
        "li_ion",
        in_catalog,
        (L, W, H),
        prims,
        app,
        0.94,
        energy_wh=rated_energy_wh(p),
        extra={"cells": cells_desc},
    )


# ---------------------------------------------------------------------------- other batteries


def build_other_battery(p: Product, rng: np.random.Generator, in_catalog: bool = True) -> Instance:
    L, W, H = (_jitter(rng, d, 0.01) for d in (p.length_mm, p.width_mm, p.height_mm))
    mass = _jitter(rng, p.mass_kg * 1000, 0.03)
    if p.chemistry == "alkaline":
        fr = {"Fe": 0.20, "MnO2_proxy": 0.42, "Zn": 0.20, "KOH": 0.06, "Water": 0.08, "C": 0.04}
        prims = _cyl_cells((0, 0, 0), (1, 1, 1), 0, W, L, mass, fr, "MnO2_proxy", can_mm=0.3)
        app = Appearance(
            "cell",
            _pick_rgb(rng, [(30, 30, 30), (200, 140, 40), (180, 30, 30), (40, 80, 160)]),
            shape="cylinder",
            label="brand",
            accent_rgb=(200, 140, 40),
            gloss=0.6,
        )
        return Instance(p.name, p.chemistry, "other", in_catalog, (L, W, H), prims, app, 0.6)
    if p.chemistry == "nicd":
        d, ln = 22.0, 42.0  # sub-C cells
        fr = {"Fe": 0.22, "Cd(OH)2": 0.30, "Ni(OH)2": 0.25, "KOH": 0.08, "Water": 0.10, "Ni": 0.05}
        wall = 2.5
        prims: list[Primitive] = _shell((0, 0, 0), (L, W, H), wall, PP, 1.05)
        counts = [max(1, int((L - 6) // (d + 0.2))), max(1, int((W - 6) // (d + 0.2))), 1]
        n = int(np.prod(counts))
        m_cell = min(52.0, 0.75 * mass / n)
        prims += _cyl_cells((wall + 1, wall + 1, wall + 2), tuple(counts), 2, d, ln, m_cell, fr, "Cd(OH)2")
        rest = mass - total_mass_g(prims)
        if rest > 0:
            prims += _fill((wall, wall, wall), (L - wall, W - wall, H - wall), {PP: 1.0}, rest)
        app = Appearance("pack", (250, 200, 20), accent_rgb=(20, 20, 20), label="brand")
        return Instance(p.name, p.chemistry, "other", in_catalog, (L, W, H), prims, app, 0.94)
    # NiMH prismatic module (Prius-like): six cells in a plastic case
    wall = 1.5
    prims = _shell((0, 0, 0), (L, W, H), wall, PP, 1.05)
    fr = {"Ni(OH)2": 0.30, "LaNi5 (AB5 proxy)": 0.35, "KOH": 0.06, "Water": 0.10, "Ni": 0.08}
    n = 6
    gap = 1.5
    cl = (L - 2 * wall - (n - 1) * gap) / n
    for i in range(n):
        x0 = wall + i * (cl + gap)
        prims += _fill(
            (x0, wall, wall), (x0 + cl, W - wall, H - wall - 8), fr, (mass - total_mass_g(prims[:2])) / n * 0.95
        )
    rest = mass - total_mass_g(prims)
    if rest > 0:
        prims += _fill((wall, wall, H - wall - 8), (L - wall, W - wall, H - wall), {PP: 0.7, "Ni": 0.3}, rest)
    app = Appearance(
        "nimh", (70, 70, 75), posts=True, post_rgb=(190, 190, 195), label=str(rng.choice(["brand", "none"]))
    )
    return Instance(p.name, p.chemistry, "other", in_catalog, (L, W, H), prims, app, 0.94)


# ---------------------------------------------------------------------------- contaminants


CONTAMINANTS = ("steel_part", "plastic_box", "wood_block", "stone", "glass_bottle", "pet_bottle")


def build_contaminant(kind: str, rng: np.random.Generator) -> Instance:
    if kind == "steel_part":
        L, W = rng.uniform(60, 250), rng.uniform(30, 120)
        H = rng.uniform(5, 60)
        prims: list[Primitive] = [Box((0, 0, 0), (L, W, min(H, rng.uniform(4, 15))), "Fe", 7.85)]
        if rng.random() < 0.6:  # a boss or shaft
            r = rng.uniform(6, min(W, H + 10) / 2)
            prims.append(CylinderArray((L * 0.3, 0, 0), (1, 1, 1), 1, r, W, 2 * r, "Fe", 7.85))
            H = max(H, 2 * r)
        app = Appearance(
            "steel", _pick_rgb(rng, [(110, 105, 100), (150, 150, 150), (120, 70, 40)]), gloss=0.6, shape="irregular"
        )
        return Instance("steel part", "none", "other", False, (L, W, H), prims, app, 0.3)
    if kind == "plastic_box":
        L, W, H = rng.uniform(80, 350), rng.uniform(60, 200), rng.uniform(40, 200)
        t = rng.uniform(1.5, 4)
        prims = _shell((0, 0, 0), (L, W, H), t, PP, 0.95)
        if rng.random() < 0.4:  # with something in it
            prims += _fill(
                (t, t, t), (L - t, W - t, H * 0.3), {"Water": 0.7, "Glass_fibre(SiO2)": 0.3}, rng.uniform(100, 1500)
            )
        app = Appearance("plastic", _pick_rgb(rng, LEAD_CASE_COLOURS + LI_BRAND_COLOURS), gloss=0.4)
        return Instance("plastic box", "none", "other", False, (L, W, H), prims, app, 0.94)
    if kind == "wood_block":
        L, W, H = rng.uniform(80, 400), rng.uniform(40, 150), rng.uniform(20, 100)
        prims = [Box((0, 0, 0), (L, W, H), "Wood", rng.uniform(0.45, 0.8))]
        app = Appearance("wood", _pick_rgb(rng, [(160, 120, 70), (120, 85, 50), (190, 160, 110)]), gloss=0.1)
        return Instance("wood block", "none", "other", False, (L, W, H), prims, app, 0.92)
    if kind == "stone":
        L, W, H = rng.uniform(60, 220), rng.uniform(50, 150), rng.uniform(40, 120)
        prims = [Box((0, 0, 0), (L, W, H), "Stone", rng.uniform(2.4, 2.8))]
        app = Appearance(
            "stone", _pick_rgb(rng, [(130, 125, 115), (90, 85, 80), (170, 160, 140)]), gloss=0.05, shape="irregular"
        )
        return Instance("stone", "none", "other", False, (L, W, H), prims, app, 0.93)
    if kind == "glass_bottle":
        d, ln = rng.uniform(55, 90), rng.uniform(180, 320)
        t = rng.uniform(2.5, 5)
        prims = [CylinderArray((0, 0, 0), (1, 1, 1), 0, d / 2, ln, d + 1, "Glass", 2.5, r_inner=d / 2 - t)]
        if rng.random() < 0.5:
            prims.append(CylinderArray((0, t, t), (1, 1, 1), 0, d / 2 - t, ln * rng.uniform(0.2, 0.8), d, "Water", 1.0))
        app = Appearance(
            "glass", _pick_rgb(rng, [(40, 110, 50), (120, 70, 20), (200, 210, 205)]), shape="cylinder", gloss=0.9
        )
        return Instance("glass bottle", "none", "other", False, (ln, d, d), prims, app, 0.9)
    # PET bottle with water
    d, ln = rng.uniform(60, 100), rng.uniform(180, 330)
    prims = [CylinderArray((0, 0, 0), (1, 1, 1), 0, d / 2, ln, d + 1, PP, 1.3, r_inner=d / 2 - 0.4)]
    if rng.random() < 0.6:
        prims.append(
            CylinderArray((0, 0.4, 0.4), (1, 1, 1), 0, d / 2 - 0.4, ln * rng.uniform(0.3, 0.9), d, "Water", 1.0)
        )
    app = Appearance(
        "pet", _pick_rgb(rng, [(200, 220, 230), (60, 140, 200), (40, 150, 60)]), shape="cylinder", gloss=0.8
    )
    return Instance("PET bottle", "none", "other", False, (ln, d, d), prims, app, 0.9)


# ---------------------------------------------------------------------------- unknown products


def unknown_product(family: str, rng: np.random.Generator) -> Product:
    """A plausible product that is not in the catalogue (the market is bigger than any list)."""
    if family == "lead_acid":
        L, W, H = rng.uniform(90, 340), rng.uniform(45, 190), rng.uniform(60, 250)
        dens = rng.uniform(1.8, 3.1)  # kg/L (reference)
        v = float(rng.choice([6, 12]))
        return Product(
            f"unknown lead-acid {int(L)}x{int(W)}", "lead_acid", "lead_acid", L, W, H, L * W * H * 1e-6 * dens, v, None
        )
    chem = str(rng.choice(["li_ion_nmc", "li_ion_lfp", "li_ion_nca"]))
    style = rng.integers(3)
    if style == 0:  # a lead-acid-sized LFP battery from an unknown brand, some in steel boxes
        L, W, H = rng.uniform(150, 330), rng.uniform(65, 175), rng.uniform(90, 240)
        chem = "li_ion_lfp"
        if rng.random() < 0.3:
            dens = rng.uniform(0.9, 1.5)
            mass = L * W * H * 1e-6 * dens
            return Product(
                f"unknown LFP steel case pack {int(L)}x{int(W)}",
                chem,
                "li_ion",
                L,
                W,
                H,
                mass,
                12.8,
                _nominal_ah(mass, 12.8, SPECIFIC_ENERGY_WH_KG["dropin_steel"]),
            )
    elif style == 1:  # a tool or appliance pack
        L, W, H = rng.uniform(80, 200), rng.uniform(50, 110), rng.uniform(35, 90)
    else:  # a long e-mobility pack
        L, W, H = rng.uniform(250, 450), rng.uniform(70, 130), rng.uniform(40, 110)
    dens = rng.uniform(0.75, 1.6)
    mass = L * W * H * 1e-6 * dens
    lfp = chem == "li_ion_lfp"
    volts = 12.8 if lfp else (18.0 if style == 1 else 36.0)
    spec = SPECIFIC_ENERGY_WH_KG["dropin" if style == 0 else ("pack_lfp" if lfp else "pack")]
    return Product(
        f"unknown {chem} pack {int(L)}x{int(W)}", chem, "li_ion", L, W, H, mass, volts, _nominal_ah(mass, volts, spec)
    )


# Rated specific energy (Wh per kg of the whole item) assumed where a product's Ah is not
# published: inside the reference range for Li-ion items (70-276 Wh/kg).
SPECIFIC_ENERGY_WH_KG: dict[str, float] = {
    "cyl_cell": 230.0,
    "cyl_cell_lfp": 120.0,
    "pouch_cell": 180.0,
    "prismatic_cell": 170.0,
    "prismatic_cell_lfp": 140.0,
    "module": 140.0,
    "dropin": 95.0,
    "dropin_steel": 80.0,
    "pack": 140.0,
    "pack_lfp": 100.0,
}


def _nominal_ah(mass_kg: float, volts: float, wh_per_kg: float) -> float:
    return round(mass_kg * wh_per_kg / volts, 2)


def rated_energy_wh(p: Product) -> float | None:
    """Rated energy (V x Ah) of a Li-ion product; for products whose voltage or capacity
    is not published, a nominal one from the mass and the kind's specific energy
    (:data:`SPECIFIC_ENERGY_WH_KG`). ``None`` for other chemistries."""
    if p.family != "li_ion":
        return p.energy_wh
    if p.energy_wh is not None:
        return p.energy_wh
    kind = _li_kind(p)
    lfp = p.chemistry == "li_ion_lfp"
    key = kind if kind in SPECIFIC_ENERGY_WH_KG else "pack"
    if kind == "dropin" and "steel case" in p.name:
        key = "dropin_steel"
    elif lfp and f"{key}_lfp" in SPECIFIC_ENERGY_WH_KG:
        key = f"{key}_lfp"
    volts = p.nominal_v or (3.2 if lfp else 3.6)
    return volts * _nominal_ah(p.mass_kg, volts, SPECIFIC_ENERGY_WH_KG[key])


# ---------------------------------------------------------------------------- product families

# A small vocabulary of product families, for leave-family-out experiments (``product_family``
# in each record's truth fields).  Unknown products get the family of what they physically are.
PRODUCT_FAMILIES: dict[str, str] = {
    "lead_auto": "automotive starter and AGM batteries (BCI/DIN groups)",
    "lead_traction": "deep-cycle traction and stationary cells (golf-cart GC2/GC8, 2 V OPzS)",
    "lead_moto": "motorcycle and powersport batteries",
    "lead_vrla_small": "sealed VRLA/SLA blocks under 8 kg (alarm, UPS, toys); unknown lead-acid under 8 kg",
    "lead_vrla_large": "sealed VRLA/SLA blocks of 8 kg and more; unknown lead-acid of 8 kg and more",
    "li_dropin": "lead-acid-format LFP drop-in batteries in plastic cases",
    "li_dropin_steel": "LFP batteries in sheet-steel cases",
    "li_pack_tool": "power-tool and appliance packs (under 30 V)",
    "li_pack_ebike": "e-bike, hoverboard and other e-mobility packs (30 V and more)",
    "li_pack_escooter": "e-scooter packs, 10S/13S of 18650/21700 cells in odd shapes (line c only)",
    "li_powerbank": "power banks: a few cells or a pouch in a small shell (line c only)",
    "li_cell_cyl": "bare cylindrical cells (18650, 21700, ...)",
    "li_cell_pouch_prismatic": "bare pouch and prismatic cells",
    "li_module": "EV and storage modules",
    "other_nimh_nicd": "NiMH and NiCd modules and packs",
    "other_alkaline": "alkaline primary cells",
    "contaminant_steel": "steel parts",
    "contaminant_plastic": "plastic boxes, some with contents",
    "contaminant_wood": "wood blocks",
    "contaminant_stone": "stones",
    "contaminant_glass": "glass bottles",
    "contaminant_pet": "PET bottles",
}

_CONTAMINANT_FAMILY = {
    "steel_part": "contaminant_steel",
    "plastic_box": "contaminant_plastic",
    "wood_block": "contaminant_wood",
    "stone": "contaminant_stone",
    "glass_bottle": "contaminant_glass",
    "pet_bottle": "contaminant_pet",
}


def contaminant_family(kind: str) -> str:
    return _CONTAMINANT_FAMILY[kind]


def product_family(p: Product) -> str:
    """The product family (a key of :data:`PRODUCT_FAMILIES`) of a battery product."""
    n = p.name.lower()
    if p.family == "lead_acid":
        if "yuasa" in n or "moto" in n:
            return "lead_moto"
        if "trojan" in n or "gc2" in n or "gc8" in n or "opzs" in n or "traction" in n:
            return "lead_traction"
        if "bci" in n or "din " in n or "sli" in n or "optima" in n or "truck" in n:
            return "lead_auto"
        return "lead_vrla_small" if p.mass_kg < 8 else "lead_vrla_large"
    if p.family == "li_ion":
        if "e-scooter" in n:
            return "li_pack_escooter"
        if "power bank" in n:
            return "li_powerbank"
        kind = _li_kind(p)
        if kind == "cyl_cell":
            return "li_cell_cyl"
        if kind in ("pouch_cell", "prismatic_cell"):
            return "li_cell_pouch_prismatic"
        if kind == "module":
            return "li_module"
        if kind == "dropin":
            return "li_dropin_steel" if "steel case" in n else "li_dropin"
        return "li_pack_ebike" if (p.nominal_v or 0) >= 30 else "li_pack_tool"
    if p.chemistry == "alkaline":
        return "other_alkaline"
    return "other_nimh_nicd"


def build(p: Product, rng: np.random.Generator, in_catalog: bool = True) -> Instance:
    """Build an instance of any catalogue product."""
    if p.family == "lead_acid":
        return build_lead_acid(p, rng, in_catalog)
    if p.family == "li_ion":
        return build_li_ion(p, rng, in_catalog)
    return build_other_battery(p, rng, in_catalog)


def check_mass(inst: Instance) -> dict[str, float]:
    """Mass per material (g), for tests and reports."""
    return mass_by_material(inst.prims)
