"""Line "c": a third line whose sensor readings come from a route written apart from lines a and b.

A model trained on lines a and b and tested here is not tested against its own renderer.
Line c shares only the product physics with the other lines — the catalogue, the item
builders of :mod:`sorter.simulate.items` (primitives, masses, materials) and the NIST
table through :class:`~sorter.simulate.physics.AttenuationTable` — and does everything
from there on its own way:

* **intake**: its own draw, and about one item in six is a product outside the catalogue
  made by this module's own generator (e-scooter packs, LFP prismatic-cell drop-ins with a
  2 x 2 cell layout, pouch-cell modules, power banks, 2 V OPzS cells, truck batteries,
  6 V blocks);
* **projection**: supersampled point sampling of the posed primitives along the beam, on
  the belt's own pixel grid (each sub-sample is mapped back into the item frame), instead
  of coverage maps warped onto the belt;
* **X-ray source and detector**: a Kramers energy-fluence spectrum with tungsten K lines,
  aluminium + copper tube filtration, 3 keV bins; an energy-integrating CsI sandwich
  detector (absorbed energy with iodine K-escape) with a copper filter between layers;
  Poisson quanta drawn per pixel, read noise, a dark offset, per-column gain
  non-uniformity left after flat-fielding, a 14-bit ADC scaled to 16-bit;
* **camera**: an item-frame texture drawn in its own style, Lambert shading from one
  direction with bevelled edges, a stripe highlight, a blue-grey woven belt, a cool cast,
  a tone curve, demosaic-like noise, sharpening and a JPEG round trip;
* **scalar sensors**: a scale reading 0.3 % high at 1 g resolution, a caliper profiler
  (rotating calipers, 0.5 mm steps, +1 mm offset) and a radiometric (T^4) thermal camera
  assuming emissivity 0.90.

Records and logs have the same format and truth fields as lines a and b.

Why this module is long (about 1,100 lines): line c's whole route, from intake to every
sensor, is written apart from lines a and b on purpose (above), so it shares no renderer
code with :mod:`sorter.simulate.sensors` and lives in one module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import cv2
import numpy as np

from ..catalog import Product
from ..readings import ItemRecord
from .geometry import Box, Primitive, total_mass_g
from .intake import MAX_REDRAWS, MIXES, SimItem, hard_cases
from .items import (
    CATHODE,
    CELL_FORMATS,
    CELL_FRACTIONS,
    CONTAMINANTS,
    PP,
    Appearance,
    Instance,
    _cyl_cells,
    _fill,
    _li_kind,
    _shell,
    build,
    build_contaminant,
    build_lead_acid,
    contaminant_family,
    product_family,
)
from .physics import attenuation_table


class SimConfig(Protocol):
    """What line c reads of a simulation's settings (:class:`sorter.simulate.run.SimConfig`, which
    chooses this module for line c: described here rather than imported, so the two do not
    import each other)."""

    seed: int
    t0: float
    rate_hz: float
    faults: float
    mix: str
    labelled: bool
    extra_catalogs: tuple[str, ...]
    only_families: tuple[str, ...]
    exclude_families: tuple[str, ...]

    def family_allowed(self, family: str) -> bool: ...

    def damaged_li_rate(self) -> float: ...

    def profile(self) -> Any: ...


U16 = 65535
SENSORS = ("scale", "profiler", "xray", "camera", "thermal")


@dataclass(frozen=True)
class LineCProfile:
    """Line c's sensor set-up (every field may be overridden like lines a and b's)."""

    name: str = "c"
    kvp: float = 150.0
    tube_filter_al_mm: float = 1.5
    tube_filter_cu_mm: float = 0.1
    k_line_fraction: float = 0.07  # share of the tube's photons in tungsten's K lines (kVp > 69.5)
    front_csi_mm: float = 0.3  # low-energy layer
    mid_filter_cu_mm: float = 1.5
    back_csi_mm: float = 6.0  # high-energy layer
    quanta_low: float = 9000.0  # effective quanta per pixel in air (sets the Poisson noise)
    quanta_high: float = 6000.0
    read_noise_adu: float = 2.5
    dark_adu: float = 210.0
    air_adu: float = 15200.0  # ADC level of air after the line's gain (14-bit ADC: 16383 full scale)
    adc_bits: int = 14
    column_gain_sd: float = 0.004  # residual gain non-uniformity across detector columns after flat-field
    xray_gain: tuple[float, float] = (1.0, 1.0)
    xray_mm_per_px: float = 2.0
    supersample: int = 2  # projection sub-samples per pixel side
    camera_mm_per_px: float = 1.0
    belt_rgb: tuple[int, int, int] = (104, 116, 132)
    colour_cast: tuple[float, float, float] = (0.92, 1.0, 1.09)  # cool LED lighting
    exposure: float = 1.05
    ambient_rgb: tuple[float, float, float] = (4.0, 4.0, 6.0)
    camera_noise: float = 2.5
    sharpen: float = 0.6
    jpeg_quality: int = 82
    belt_speed_m_s: float = 0.0
    xray_integration_ms: float = 1.0
    camera_exposure_ms: float = 0.5
    scale_gain: float = 1.003
    scale_noise_g: float = 3.0
    scale_rel_noise: float = 0.001
    scale_offset_g: float = 0.0
    profiler_offset_mm: float = 1.0
    profiler_noise_mm: float = 1.5
    thermal_emissivity_assumed: float = 0.90
    thermal_offset_c: float = 0.5
    thermal_noise_c: float = 0.5
    unknown_rate: float = 1 / 6  # share of items from line c's own product generator

    def __post_init__(self) -> None:
        from ..errors import SimulationError

        if not self.dark_adu < self.air_adu < 2**self.adc_bits:
            raise SimulationError(
                f"line c: need dark_adu < air_adu < 2**adc_bits, got {self.dark_adu:g} / {self.air_adu:g} / "
                f"{2**self.adc_bits}; set --line-param air_adu=... below the ADC's full scale"
            )

    def channels(self) -> CChannels:
        return _channels(
            self.kvp,
            self.tube_filter_al_mm,
            self.tube_filter_cu_mm,
            self.k_line_fraction,
            self.front_csi_mm,
            self.mid_filter_cu_mm,
            self.back_csi_mm,
        )


LINE_C = LineCProfile()


# ---------------------------------------------------------------------------- X-ray source and detector


@dataclass(frozen=True)
class CChannels:
    energies_kev: np.ndarray
    weights: np.ndarray  # (2, K): share of each channel's air signal from each energy bin

    def mean_energy(self) -> tuple[float, float]:
        e = self.energies_kev
        return float(self.weights[0] @ e), float(self.weights[1] @ e)


def _csi_mu(e: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) of CsI. The table has no Cs or I: antimony (Z 51) and
    lanthanum (Z 57) bracket them, mixed half and half by mass, at CsI's density."""
    tab = attenuation_table()
    return (0.5 * tab.at("Sb", e) + 0.5 * tab.at("La", e)) * 4.51 / 10


@lru_cache(maxsize=32)
def _channels(
    kvp: float, al_mm: float, cu_mm: float, k_frac: float, front_mm: float, mid_cu_mm: float, back_mm: float
) -> CChannels:
    tab = attenuation_table()
    e = np.arange(16.5, kvp, 3.0)  # 3 keV bins; 85.5 and 88.5 straddle lead's K-edge
    # Kramers: energy fluence per keV falls linearly to kVp; photons = energy / E
    photons = np.clip(kvp - e, 0, None) / e
    if kvp > 69.5 and k_frac > 0:  # tungsten K-alpha (59.3 keV) and K-beta (67.2 keV)
        total = photons.sum()
        for line_kev, share in ((59.3, 0.75), (67.2, 0.25)):
            photons[int(np.argmin(np.abs(e - line_kev)))] += total * k_frac * share
    photons = photons * np.exp(-tab.at("Al", e) * 2.70 * al_mm / 10 - tab.at("Cu", e) * 8.96 * cu_mm / 10)
    mu = _csi_mu(e)
    front_abs = 1 - np.exp(-mu * front_mm)
    reach_back = np.exp(-mu * front_mm) * np.exp(-tab.at("Cu", e) * 8.96 * mid_cu_mm / 10)
    back_abs = reach_back * (1 - np.exp(-mu * back_mm))
    # energy deposited per absorbed photon: iodine K-fluorescence (28.6 keV) escapes from a
    # thin layer more often than from a thick one
    escape = np.where(e > 33.2, 28.6, 0.0)
    dep_front = e - 0.18 * escape
    dep_back = e - 0.04 * escape
    low = photons * front_abs * dep_front
    high = photons * back_abs * dep_back
    return CChannels(e, np.vstack([low / low.sum(), high / high.sum()]))


@lru_cache(maxsize=512)
def _mu_c(materials: tuple[str, ...], prof: LineCProfile) -> tuple[np.ndarray, np.ndarray]:
    ch = prof.channels()
    tab = attenuation_table()
    mu = np.vstack([tab.at(m, ch.energies_kev) for m in materials]).astype(np.float32)
    return mu, ch.weights.T.astype(np.float32).copy()


@lru_cache(maxsize=4)
def _column_gains(sd: float, n: int = 2048) -> np.ndarray:
    """Residual gain of each detector column after the line's flat-field (fixed for the line)."""
    g = np.random.default_rng(77031).normal(1.0, sd, n)
    return cv2.GaussianBlur(g.reshape(1, -1), (0, 0), 1.5).ravel().astype(np.float32)


# ---------------------------------------------------------------------------- geometry on the belt


@dataclass
class BeltFrame:
    """The rotation of an item on the belt and the extent of its canvas (mm, belt frame)."""

    L: float
    W: float
    angle: float  # rad
    half_w: float  # canvas half-extent across the belt (x)
    half_h: float  # canvas half-extent along the belt (y)

    @classmethod
    def make(cls, L: float, W: float, angle_deg: float, margin_mm: float = 10.0) -> BeltFrame:
        a = math.radians(angle_deg)
        c, s = abs(math.cos(a)), abs(math.sin(a))
        return cls(L, W, a, (L * c + W * s) / 2 + margin_mm, (L * s + W * c) / 2 + margin_mm)

    def grid(self, pitch: float, ss: int = 1) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Item-frame coordinates (x, y) of sub-sample centres on a belt grid of ``pitch``,
        each ``(ny*ss, nx*ss)``, and the grid's size in pixels."""
        nx = max(2, int(math.ceil(2 * self.half_w / pitch)))
        ny = max(2, int(math.ceil(2 * self.half_h / pitch)))
        u = (np.arange(nx * ss, dtype=np.float32) + 0.5) * (pitch / ss) - nx * pitch / 2
        v = (np.arange(ny * ss, dtype=np.float32) + 0.5) * (pitch / ss) - ny * pitch / 2
        c, s = math.cos(self.angle), math.sin(self.angle)
        # belt (u, v) = R(angle) (x - L/2, y - W/2)  =>  item = R(-angle) (u, v) + centre
        x = c * u[None, :] + s * v[:, None] + self.L / 2
        y = -s * u[None, :] + c * v[:, None] + self.W / 2
        return x.astype(np.float32), y.astype(np.float32), nx, ny

    def to_belt(self, pts: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        d = pts - np.array([self.L / 2, self.W / 2])
        return np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], axis=1)


def _path_cm(p: Primitive, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Path length (cm) along the beam (z) through primitive ``p`` at item-frame points."""
    if isinstance(p, Box):
        inside = (x >= p.lo[0]) & (x < p.hi[0]) & (y >= p.lo[1]) & (y < p.hi[1])
        return inside * np.float32((p.hi[2] - p.lo[2]) / 10)
    ox, oy, _ = p.origin
    nx, ny, nz = p.counts
    r, ri, pitch = p.radius, p.r_inner, p.pitch

    def offset(q: np.ndarray, o: float, n: int) -> np.ndarray:
        k = np.clip(np.floor((q - o) / pitch), 0, n - 1)
        return q - (o + r + k * pitch)

    if p.axis == 2:
        d2 = offset(x, ox, nx) ** 2 + offset(y, oy, ny) ** 2
        return ((d2 <= r * r) & (d2 >= ri * ri)) * np.float32(p.length * nz / 10)
    if p.axis == 0:
        along, o_al, n_al, across, o_ac, n_ac = x, ox, nx, y, oy, ny
    else:
        along, o_al, n_al, across, o_ac, n_ac = y, oy, ny, x, ox, nx
    d = offset(across, o_ac, n_ac)
    chord = 2 * np.sqrt(np.maximum(r * r - d * d, 0)) - 2 * np.sqrt(np.maximum(ri * ri - d * d, 0))
    on = (along >= o_al) & (along <= o_al + n_al * p.length)
    return chord * on * np.float32(nz / 10)


def areal_density_c(
    prims: list[Primitive], frame: BeltFrame, pitch: float, ss: int
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    """Per-material areal density (g/cm^2) on the belt grid, by supersampled point sampling;
    also the item-frame coordinates of the pixel centres (for damage)."""
    x, y, nx, ny = frame.grid(pitch, ss)
    materials = tuple(dict.fromkeys(p.material for p in prims))
    index = {m: k for k, m in enumerate(materials)}
    acc = np.zeros((len(materials), ny * ss, nx * ss), np.float32)
    # primitives of one geometry (the materials of one mixture) share their path map
    paths: dict[tuple, np.ndarray] = {}
    for p in prims:
        key = (
            (p.lo, p.hi) if isinstance(p, Box) else (p.origin, p.counts, p.axis, p.radius, p.r_inner, p.length, p.pitch)
        )
        path = paths.get(key)
        if path is None:
            path = paths[key] = _path_cm(p, x, y)
        acc[index[p.material]] += path * np.float32(p.density)
    sig = acc[:, 0::ss, 0::ss].copy()
    for i in range(ss):
        for j in range(ss):
            if i or j:
                sig += acc[:, i::ss, j::ss]
    sig *= np.float32(1 / (ss * ss))
    np.maximum(sig, 0, out=sig)
    xc, yc, _, _ = frame.grid(pitch, 1)
    return sig, materials, xc, yc


def render_xray_c(
    sig: np.ndarray, materials: tuple[str, ...], prof: LineCProfile, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Low and high channel images (uint16, 65535 = air) of line c's detector."""
    mu, w = _mu_c(materials, prof)
    m, ny, nx = sig.shape
    flat = sig.reshape(m, -1)
    occ = np.flatnonzero(flat.sum(axis=0, dtype=np.float32) > 1e-6)
    t = np.ones((2, ny * nx), np.float32)
    if occ.size:
        # einsum without BLAS: the same sums in the same order whatever the thread count,
        # so a log is bit-identical for any number of workers
        od = np.einsum("mk,mp->kp", mu, flat[:, occ], optimize=False)  # (K, P) optical depth per energy bin
        np.negative(od, out=od)
        np.exp(od, out=od)
        t[:, occ] = np.einsum("kc,kp->cp", w, od, optimize=False)
    t = t.reshape(2, ny, nx)
    blur = prof.belt_speed_m_s * prof.xray_integration_ms / prof.xray_mm_per_px
    full = float(2**prof.adc_bits - 1)
    start = int(rng.integers(0, max(1, 2048 - nx)))
    cols = _column_gains(prof.column_gain_sd)[start : start + nx]
    if cols.size < nx:
        cols = np.resize(cols, nx)
    out = []
    for c, n0 in enumerate((prof.quanta_low, prof.quanta_high)):
        tc = t[c]
        if blur > 1e-3:
            k = max(1, int(round(blur)))
            tc = cv2.blur(tc, (1, k), borderType=cv2.BORDER_REPLICATE)
        quanta = rng.poisson(tc * n0).astype(np.float32)
        adu = prof.dark_adu + (prof.air_adu - prof.dark_adu) * prof.xray_gain[c] * cols[None, :] * quanta / np.float32(
            n0
        )
        adu += rng.standard_normal(adu.shape, dtype=np.float32) * np.float32(prof.read_noise_adu)
        adu = np.clip(np.rint(adu), 0, full)
        # the recorder's flat-field: nominal dark and air levels (it cannot know the residuals)
        norm = (adu - prof.dark_adu) / (prof.air_adu - prof.dark_adu)
        out.append(np.rint(np.clip(norm, 0, 1) * U16).astype(np.uint16))
    return out[0], out[1]


# ---------------------------------------------------------------------------- outline and damage


def outline_c(inst: Instance, L: float, W: float, rng: np.random.Generator) -> np.ndarray:
    """Footprint polygon (mm, item frame), deformed by damage."""
    if inst.damage == "swollen":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        # a superellipse: a box whose sides bulge
        e = float(rng.uniform(5, 9))
        cx, cy = L / 2, W / 2
        ax, ay = L / 2 * (1 + rng.uniform(0.02, 0.06)), W / 2 * (1 + rng.uniform(0.05, 0.12))
        ct, st = np.cos(t), np.sin(t)
        x = cx + ax * np.sign(ct) * np.abs(ct) ** (2 / e)
        y = cy + ay * np.sign(st) * np.abs(st) ** (2 / e)
        return np.stack([x, y], axis=1)
    if inst.damage == "dented":
        c = float(rng.uniform(0.25, 0.75)) * L
        half = float(rng.uniform(0.08, 0.2)) * L
        depth = float(rng.uniform(0.12, 0.3)) * W
        cut = float(rng.uniform(0.08, 0.18)) * min(L, W)
        return np.array(
            [
                (0, 0),
                (c - half, 0),
                (c - half * 0.3, depth),
                (c + half * 0.3, depth),
                (c + half, 0),
                (L - cut, 0),
                (L, cut),
                (L, W),
                (0, W),
            ],
            float,
        )
    return np.array([(0, 0), (L, 0), (L, W), (0, W)], float)


def _inside_polygon(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(x.shape, bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        if y0 == y1:
            continue
        cond = (y0 > y) != (y1 > y)
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= cond & (x < xi)
    return inside


# ---------------------------------------------------------------------------- camera

_FONT = cv2.FONT_HERSHEY_DUPLEX


def _texture(inst: Instance, L: float, W: float, pose: str, px: float, rng: np.random.Generator) -> np.ndarray:
    """The item's top as line c draws it, in the item frame (float32 RGB, linear 0-255)."""
    nx, ny = max(2, int(math.ceil(L / px))), max(2, int(math.ceil(W / px)))
    app = inst.appearance
    base = np.array(app.case_rgb, np.float32)
    tex = np.empty((ny, nx, 3), np.uint8)  # drawn in 8 bits (OpenCV's text needs it)
    tex[:] = app.case_rgb
    s = 1 / px
    if app.accent_rgb is not None and pose != "end":
        frac = rng.uniform(0.55, 0.8)  # accent on the far end, not the near one
        tex[:, int(nx * frac) :] = app.accent_rgb
    upright = pose == "upright"
    if app.kind in ("lead_acid", "dropin", "nimh") and upright:
        if app.vents == "caps":
            n = 6 if L > 120 else 3
            size = max(2, int(5 * s))
            for i in range(n):
                cx = int(nx * (0.18 + 0.64 * i / max(1, n - 1)))
                cy = int(ny * 0.58)
                cv2.rectangle(
                    tex, (cx - size, cy - size), (cx + size, cy + size), tuple(int(v * 0.7) for v in base), -1
                )
        elif app.vents == "eye":
            cv2.circle(tex, (int(nx * 0.55), int(ny * 0.32)), max(2, int(7 * s)), (40, 170, 80), max(1, int(2 * s)))
        elif app.vents == "flat":
            cv2.line(
                tex,
                (int(nx * 0.1), int(ny * 0.5)),
                (int(nx * 0.9), int(ny * 0.5)),
                tuple(int(v * 0.8) for v in base),
                max(1, int(4 * s)),
            )
        if app.posts:
            r = max(2, int(min(W * 0.065, 9) * s))
            for fx, rr in ((0.12, r), (0.88, max(2, int(r * 0.85)))):
                c = (int(nx * fx), int(ny * 0.2))
                for k in range(rr, 0, -1):  # a radial gradient: a rounded post top
                    shade = 0.75 + 0.35 * (1 - k / rr)
                    cv2.circle(tex, c, k, tuple(min(255, int(v * shade)) for v in app.post_rgb), -1)
    if app.label is not None and rng.random() < 0.8:
        x0, y0 = int(nx * rng.uniform(0.15, 0.3)), int(ny * rng.uniform(0.55, 0.68))
        x1, y1 = int(nx * rng.uniform(0.7, 0.85)), int(ny * rng.uniform(0.84, 0.94))
        if x1 - x0 > 5 and y1 - y0 > 4:
            lab = tuple(int(v) for v in app.label_rgb)
            cv2.rectangle(tex, (x0, y0), (x1, y1), lab, -1)
            cv2.rectangle(tex, (x0, y0), (x1, y1), tuple(int(v * 0.6) for v in lab), 1)
            ink = (15, 15, 20) if sum(lab) > 300 else (240, 240, 240)
            text = {"pb_bin": "PB", "li_text": "LI-ION", "brand": "VOLTA", "warning": "CAUTION"}[app.label]
            if app.label == "li_text" and inst.chemistry == "li_ion_lfp":
                text = "LIFEPO4"
            fs = max(0.2, (y1 - y0) / 34)
            cv2.putText(tex, text, (x0 + 2, y1 - 2), _FONT, fs, ink, 1, cv2.LINE_8)
            if app.label == "pb_bin":  # a bin drawn as an outlined box with a bar under it
                h = y1 - y0
                bx = x1 - h
                cv2.rectangle(tex, (bx + 2, y0 + 2), (x1 - 2, y1 - 4), ink, 1)
                cv2.line(tex, (bx, y1 - 2), (x1, y1 - 2), ink, 1)
                cv2.line(tex, (bx, y0), (x1, y1), ink, 1)
            if app.label == "warning":
                h = y1 - y0
                pts = np.array([(x1 - h, y1 - 1), (x1 - h // 2, y0 + 1), (x1, y1 - 1)], np.int32)
                cv2.polylines(tex, [pts], True, ink, 1)
    if rng.random() < 0.4:  # grime: streaks rather than spots
        for _ in range(int(rng.integers(1, 4))):
            p0 = (int(rng.integers(nx)), int(rng.integers(ny)))
            p1 = (int(p0[0] + rng.normal(0, nx / 4)), int(p0[1] + rng.normal(0, ny / 6)))
            cv2.line(tex, p0, p1, (75, 70, 60), max(1, int(rng.uniform(1, 4) * s)))
    return tex.astype(np.float32)


def _shading(inst: Instance, pose: str, xs: np.ndarray, ys: np.ndarray, L: float, W: float) -> np.ndarray:
    """Lambert shading (ambient + diffuse) of the item's top, light from the upper left."""
    light = np.array([-0.45, -0.35, 0.82])
    light /= np.linalg.norm(light)
    if inst.appearance.shape == "cylinder" and pose != "end":
        s = np.clip((ys - W / 2) / (W / 2), -0.999, 0.999)
        nz = np.sqrt(1 - s * s)
        diff = np.clip(light[1] * s + light[2] * nz, 0, None)
        return (0.3 + 0.75 * diff).astype(np.float32)
    # flat top with a bevel 2.5 mm wide at the edges: normals tilt outwards there
    bev = 2.5
    dx = np.where(xs < bev, -(bev - xs) / bev, np.where(xs > L - bev, (xs - (L - bev)) / bev, 0.0))
    dy = np.where(ys < bev, -(bev - ys) / bev, np.where(ys > W - bev, (ys - (W - bev)) / bev, 0.0))
    dx, dy = np.clip(dx, -1, 1) * 0.7, np.clip(dy, -1, 1) * 0.7
    nz = np.sqrt(np.clip(1 - dx * dx - dy * dy, 0.05, 1))
    diff = np.clip(light[0] * dx + light[1] * dy + light[2] * nz, 0, None)
    return (0.3 + 0.75 * diff).astype(np.float32)


_TONE = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** 0.9), 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _weave_tile(px: float) -> np.ndarray:
    n = 1024
    u = np.arange(n, dtype=np.float32)[None, :] * px
    v = np.arange(n, dtype=np.float32)[:, None] * px
    return (5.0 * np.sin((u + v) * (2 * math.pi / 4.0)) * np.sin((u - v) * (2 * math.pi / 6.0))).astype(np.float32)


def _weave(px: float, ny: int, nx: int) -> np.ndarray:
    """The belt's woven texture (DN), from a cached tile."""
    tile = _weave_tile(px)
    if ny > tile.shape[0] or nx > tile.shape[1]:
        tile = np.tile(tile, (ny // tile.shape[0] + 1, nx // tile.shape[1] + 1))
    return tile[:ny, :nx]


def render_rgb_c(
    inst: Instance,
    pose: str,
    L: float,
    W: float,
    frame: BeltFrame,
    poly: np.ndarray,
    prof: LineCProfile,
    rng: np.random.Generator,
) -> np.ndarray:
    px = prof.camera_mm_per_px
    tex = _texture(inst, L, W, pose, px, rng)
    # light the item in its own frame: Lambert shading and a stripe highlight
    ty, tx = tex.shape[:2]
    txs = ((np.arange(tx, dtype=np.float32) + 0.5) * px)[None, :].repeat(ty, 0)
    tys = ((np.arange(ty, dtype=np.float32) + 0.5) * px)[:, None].repeat(tx, 1)
    tex *= _shading(inst, pose, txs, tys, L, W)[:, :, None]
    if inst.appearance.gloss > 0.25:
        yh = rng.uniform(0.2, 0.8) * W
        width = 0.08 * W + 2
        tex += (70 * inst.appearance.gloss * np.exp(-(((tys[:, :1] - yh) / width) ** 2)))[:, :, None]
    xs, ys, nx, ny = frame.grid(px, 1)
    item = cv2.remap(
        tex,
        xs * np.float32(1 / px) - np.float32(0.5),
        ys * np.float32(1 / px) - np.float32(0.5),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    # the footprint, anti-aliased, rasterised on the belt grid (1/16 px precision)
    pts = frame.to_belt(poly) / px + np.array([nx / 2, ny / 2])
    mask8 = np.zeros((ny, nx), np.uint8)
    cv2.fillPoly(mask8, [np.rint((pts - 0.5) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    inside = mask8.astype(np.float32) * np.float32(1 / 255)
    # the belt: woven blue-grey with a slow mottling and the item's soft halo
    mott = cv2.resize(
        rng.standard_normal((max(2, ny // 16), max(2, nx // 16))).astype(np.float32),
        (nx, ny),
        interpolation=cv2.INTER_CUBIC,
    )
    tone = _weave(px, ny, nx) + mott * np.float32(6.0)
    halo = cv2.GaussianBlur(np.roll(inside, (3, -2), axis=(0, 1)), (0, 0), 3.0)
    tone_shade = 1 - 0.25 * halo
    belt = cv2.merge([(tone + np.float32(c)) * tone_shade for c in prof.belt_rgb])
    out = cv2.blendLinear(item, belt, inside, 1 - inside)
    # camera response: exposure and cast, ambient light (one affine colour transform)
    g = prof.exposure * rng.uniform(0.93, 1.07)
    m = np.zeros((3, 4), np.float32)
    for c in range(3):
        m[c, c] = g * prof.colour_cast[c]
        m[c, 3] = prof.ambient_rgb[c]
    out = cv2.transform(out, m)
    np.clip(out, 0, 255, out=out)
    blur = prof.belt_speed_m_s * prof.camera_exposure_ms / px
    if blur > 1e-3:
        out = cv2.blur(out, (1, max(1, int(round(blur)))))
    # demosaic-like noise: drawn at half resolution, shot-noise scaled
    h2, w2 = max(1, ny // 2), max(1, nx // 2)
    nz = cv2.resize(rng.standard_normal((h2, w2, 3)).astype(np.float32), (nx, ny), interpolation=cv2.INTER_LINEAR)
    scale = cv2.sqrt(cv2.max(out, 1.0) * np.float32(1 / 128.0))
    out += nz * scale * np.float32(prof.camera_noise)
    if prof.sharpen > 0:
        out = cv2.addWeighted(out, 1 + prof.sharpen, cv2.GaussianBlur(out, (0, 0), 1.2), -prof.sharpen, 0)
    img = cv2.LUT(np.clip(out, 0, 255).astype(np.uint8), _TONE)  # the camera's tone curve
    if prof.jpeg_quality < 100:
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(prof.jpeg_quality)]
        )
        if ok:
            img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return img


# ---------------------------------------------------------------------------- scalar sensors


def read_scale_c(mass_g: float, prof: LineCProfile, rng: np.random.Generator) -> float:
    """1 g resolution, reads 0.3 % high."""
    g = (
        mass_g * prof.scale_gain
        + prof.scale_offset_g
        + rng.normal(0, prof.scale_noise_g + prof.scale_rel_noise * mass_g)
    )
    return float(max(0.0, round(g)))


def read_profiler_c(
    poly_belt: np.ndarray, height_mm: float, prof: LineCProfile, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Rotating calipers on the footprint: the narrowest width, the extent across it, and the height,
    in 0.5 mm steps with the line's offset."""
    ang = np.radians(np.arange(0, 180, 1.0))
    proj = poly_belt @ np.stack([np.cos(ang), np.sin(ang)])  # (N, A)
    widths = proj.max(axis=0) - proj.min(axis=0)
    k = int(np.argmin(widths))
    perp = poly_belt @ np.array([-math.sin(ang[k]), math.cos(ang[k])])
    width, length = float(widths[k]), float(perp.max() - perp.min())
    n, off = prof.profiler_noise_mm, prof.profiler_offset_mm
    vals = [length + off + rng.normal(0, n), width + off + rng.normal(0, n), height_mm + off + rng.normal(0, n)]
    length, width = max(vals[0], vals[1]), min(vals[0], vals[1])
    return tuple(round(max(v, 1.0) * 2) / 2 for v in (length, width, vals[2]))  # type: ignore[return-value]


def read_thermal_c(inst: Instance, ambient_c: float, prof: LineCProfile, rng: np.random.Generator) -> float:
    """Radiometric: the camera sees eps*T^4 + (1-eps)*T_refl^4 and inverts it with its assumed emissivity."""
    t_item = ambient_c + inst.heat_c + rng.normal(0, 0.6) + 273.15
    t_refl = ambient_c - 1.0 + 273.15
    rad = inst.emissivity * t_item**4 + (1 - inst.emissivity) * t_refl**4
    ea = prof.thermal_emissivity_assumed
    t_read = ((rad - (1 - ea) * t_refl**4) / ea) ** 0.25 - 273.15
    return float(round(t_read + prof.thermal_offset_c + rng.normal(0, prof.thermal_noise_c), 1))


# ---------------------------------------------------------------------------- line c's own products

CELL_AH = {"18650": (2.5, 3.5), "21700": (4.0, 5.0)}


def _li_app(kind: str, rng: np.random.Generator, colours: list[tuple[int, int, int]], **kw: Any) -> Appearance:
    c = colours[int(rng.integers(len(colours)))]
    c = tuple(int(np.clip(v + rng.normal(0, 10), 0, 255)) for v in c)
    return Appearance(kind, c, **kw)  # type: ignore[arg-type]


def _escooter(rng: np.random.Generator) -> Instance:
    s = int(rng.choice([10, 13]))
    p = int(rng.integers(2, 7))
    fmt = "21700" if rng.random() < 0.4 else "18650"
    d, ln, m_cell = CELL_FORMATS[fmt]
    ah = float(rng.uniform(*CELL_AH[fmt]))
    fr = CELL_FRACTIONS["cyl"]
    cath = CATHODE["li_ion_nmc"]
    pitch = d + 0.2
    shape = str(rng.choice(["brick", "flat", "stepped"]))
    wrap = 0.6
    n = s * p
    prims: list[Primitive] = []
    if shape == "flat":  # one layer of cells lying side by side across the deck
        counts = (1, n, 1)
        prims += _cyl_cells((wrap + 1, wrap + 1, wrap + 1), counts, 0, d, ln, m_cell, fr, cath)
        L, W, H = ln + 2 * wrap + 2, n * pitch + 2 * wrap + 2, d + 2 * wrap + 3
    elif shape == "brick":  # cells upright in a grid
        cols = s
        rows = p
        prims += _cyl_cells((wrap + 1, wrap + 1, wrap + 1), (cols, rows, 1), 2, d, ln, m_cell, fr, cath)
        L, W, H = cols * pitch + 2 * wrap + 2, rows * pitch + 2 * wrap + 2, ln + 2 * wrap + 4
    else:  # stepped: a main block and a narrower side block, an L-shaped footprint in one sleeve
        a = max(1, int(round(n * rng.uniform(0.55, 0.75))))
        rows_a = max(1, int(math.ceil(a / s)))
        b = n - rows_a * s if n - rows_a * s > 0 else 0
        prims += _cyl_cells((wrap + 1, wrap + 1, wrap + 1), (s, rows_a, 1), 2, d, ln, m_cell, fr, cath)
        W = rows_a * pitch + 2 * wrap + 2
        if b > 0:
            cols_b = int(math.ceil(b / 2))
            prims += _cyl_cells((wrap + 1, W - wrap - 1 + 0.2, wrap + 1), (cols_b, 2, 1), 2, d, ln, m_cell, fr, cath)
            W += 2 * pitch
        L, H = s * pitch + 2 * wrap + 2, ln + 2 * wrap + 4
        n = rows_a * s + (int(math.ceil(b / 2)) * 2 if b > 0 else 0)
        p = max(1, n // s)
    cells_mass = total_mass_g(prims)
    prims += _shell((0, 0, 0), (L, W, H), wrap, "Polypropylene(CH2)n", 1.35)  # heat-shrink sleeve
    prims.append(Box((wrap, wrap, H - wrap - 0.3), (L - wrap, W - wrap, H - wrap), "Ni", 8.9))  # series strips
    prims.append(Box((wrap, wrap, wrap), (L - wrap, W - wrap, wrap + 0.3), "Ni", 8.9))
    bl, bw = min(70.0, L * 0.6), min(45.0, W * 0.7)
    prims.append(Box((L / 2 - bl / 2, 1.0, H - 4.5), (L / 2 + bl / 2, 1.0 + bw, H - 2.9), "FR4", 1.9))
    extra = max(0.0, cells_mass * rng.uniform(0.06, 0.14) - (total_mass_g(prims) - cells_mass))
    if extra > 0:
        prims += _fill((wrap, wrap, wrap), (L - wrap, W - wrap, H - wrap), {PP: 0.6, "Cu": 0.4}, extra)
    volts = 3.6 * s
    cap = ah * p
    name = f"e-scooter pack {s}S{p}P {fmt} {shape} (line c)"
    app = _li_app(
        "pack",
        rng,
        [(20, 60, 170), (25, 25, 28), (230, 190, 30), (30, 120, 60)],
        label=str(rng.choice(["li_text", "warning", "none"], p=[0.3, 0.3, 0.4])),
        gloss=0.65,
    )
    return Instance(
        name,
        "li_ion_nmc",
        "li_ion",
        False,
        (L, W, H),
        prims,
        app,
        0.93,
        energy_wh=volts * cap,
        extra={"cells": f"{n} x {fmt}", "_family": "li_pack_escooter"},
    )


def _lfp_prismatic_dropin(rng: np.random.Generator) -> Instance:
    cap = float(rng.choice([50.0, 100.0, 150.0, 200.0]))
    s = 4 if rng.random() < 0.8 else 8
    cell_kg = cap * 3.2 / 1000 / rng.uniform(0.145, 0.17)  # LFP prismatic cells 145-170 Wh/kg
    vol_mm3 = cell_kg / 2.05 * 1e6
    cw = (vol_mm3 / 0.3) ** (1 / 3)  # face width; thickness a quarter of it, height 1.2 times it
    ct, chh = 0.25 * cw, 1.2 * cw
    rows = 2
    per_row = s // rows
    steel = rng.random() < 0.25
    wall = float(rng.uniform(1.2, 1.8)) if steel else float(rng.uniform(3.0, 4.5))
    gap = 4.0
    L = per_row * (ct + gap) + 2 * wall + float(rng.uniform(20, 60))  # room for the BMS and wiring at one end
    W = rows * (cw + gap) + 2 * wall + 6
    H = chh + 2 * wall + float(rng.uniform(25, 45))
    prims: list[Primitive] = (
        _shell((0, 0, 0), (L, W, H), wall, "Fe", 7.85) if steel else _shell((0, 0, 0), (L, W, H), wall, PP, 1.05)
    )
    fr = {
        (CATHODE["li_ion_lfp"] if k == "cathode" else k): v for k, v in CELL_FRACTIONS["prismatic"].items() if k != "Al"
    }
    for r in range(rows):
        for i in range(per_row):
            lo = (wall + 3 + i * (ct + gap), wall + 3 + r * (cw + gap), wall + 2)
            hi = (lo[0] + ct, lo[1] + cw, lo[2] + chh)
            can = _shell(lo, hi, 1.0, "Al", 2.70)
            prims += can
            prims += _fill(
                tuple(a + 1.0 for a in lo),
                tuple(b - 1.0 for b in hi),
                fr,
                max(cell_kg * 1000 - total_mass_g(can), 0.7 * cell_kg * 1000),
            )
    # copper busbars across the cell tops
    prims.append(Box((wall + 3, wall + 3, wall + 2 + chh), (L - wall - 3, wall + 15, wall + 5 + chh), "Cu", 8.96))
    prims.append(
        Box((wall + 3, W - wall - 15, wall + 2 + chh), (L - wall - 3, W - wall - 3, wall + 5 + chh), "Cu", 8.96)
    )
    prims.append(Box((wall + 5, W / 2 - 25, H - wall - 8), (wall + 85, W / 2 + 25, H - wall - 6.4), "FR4", 1.9))
    cells = s * cell_kg * 1000
    rest = cells / rng.uniform(0.78, 0.88) - total_mass_g(prims)
    if rest > 0:
        prims += _fill((wall, wall, wall), (L - wall, W - wall, H - wall), {PP: 0.85, "Cu": 0.15}, rest)
    volts = 3.2 * s
    name = f"LFP prismatic drop-in {volts:.1f}V {cap:.0f}Ah 2-row{' steel case' if steel else ''} (line c)"
    app = _li_app(
        "dropin",
        rng,
        [(22, 22, 24), (45, 45, 48), (200, 200, 195), (30, 60, 120)],
        posts=True,
        vents=str(rng.choice(["flat", "none"])),
        label=str(rng.choice(["li_text", "brand", "pb_bin", "none"], p=[0.35, 0.3, 0.1, 0.25])),
        label_rgb=(235, 235, 230),
        gloss=0.25,
    )
    return Instance(
        name,
        "li_ion_lfp",
        "li_ion",
        False,
        (L, W, H),
        prims,
        app,
        0.94,
        energy_wh=volts * cap,
        extra={"cells": f"{s} prismatic {cap:.0f}Ah", "_family": "li_dropin_steel" if steel else "li_dropin"},
    )


def _pouch_module(rng: np.random.Generator) -> Instance:
    n = int(rng.choice([8, 12, 16, 24]))
    cell_ah = float(rng.uniform(30, 65))
    cell_kg = cell_ah * 3.7 / 1000 / rng.uniform(0.20, 0.25)
    ct = 10.0 * cell_ah / 50  # 10 mm for a 50 Ah pouch
    ch = float(rng.uniform(90, 110))
    cw = cell_kg * 1e6 / 2.1 / (ct * ch)
    wall = 2.0
    L, W, H = n * (ct + 0.8) + 2 * wall + 10, cw + 2 * wall + 6, ch + 2 * wall + 12
    prims: list[Primitive] = _shell((0, 0, 0), (L, W, H), wall, "Al", 2.70)
    fr = {(CATHODE["li_ion_nmc"] if k == "cathode" else k): v for k, v in CELL_FRACTIONS["pouch"].items()}
    x = wall + 5
    for _ in range(n):
        prims += _fill((x, wall + 3, wall + 3), (x + ct, wall + 3 + cw, wall + 3 + ch), fr, cell_kg * 1000)
        x += ct + 0.8
    prims.append(Box((wall + 5, wall + 3, H - wall - 6), (L - wall - 5, W - wall - 3, H - wall - 4), "Cu", 3.0))
    cells = n * cell_kg * 1000
    rest = cells / rng.uniform(0.80, 0.90) - total_mass_g(prims)
    if rest > 0:
        prims += _fill((wall, wall, wall), (L - wall, W - wall, H - wall), {PP: 0.7, "Al": 0.3}, rest)
    par = 2 if n >= 12 else 1
    volts, cap = 3.7 * n / par, cell_ah * par
    app = _li_app(
        "module", rng, [(170, 172, 178), (60, 62, 66)], label=str(rng.choice(["warning", "none"])), gloss=0.55
    )
    return Instance(
        f"pouch module {n // par}S{par}P {cell_ah:.0f}Ah (line c)",
        "li_ion_nmc",
        "li_ion",
        False,
        (L, W, H),
        prims,
        app,
        0.2,
        energy_wh=volts * cap,
        extra={"cells": f"{n} pouch", "_family": "li_module"},
    )


def _power_bank(rng: np.random.Generator) -> Instance:
    if rng.random() < 0.5:  # cylindrical cells in a row
        fmt = "21700" if rng.random() < 0.3 else "18650"
        d, ln, m_cell = CELL_FORMATS[fmt]
        n = int(rng.integers(1, 9))
        rows = 2 if n >= 4 and rng.random() < 0.5 else 1
        per = int(math.ceil(n / rows))
        n = per * rows
        wall = float(rng.uniform(1.5, 2.5))
        prims: list[Primitive] = []
        prims += _cyl_cells(
            (wall + 1, wall + 1, wall + 1),
            (1, per, rows),
            0,
            d,
            ln,
            m_cell,
            CELL_FRACTIONS["cyl"],
            CATHODE["li_ion_nmc"],
        )
        L, W, H = ln + 2 * wall + 20, per * (d + 0.2) + 2 * wall + 2, rows * (d + 0.2) + 2 * wall + 2
        ah = float(rng.uniform(*CELL_AH[fmt])) * n
        cells = f"{n} x {fmt}"
    else:  # a flat pouch
        ah = float(rng.uniform(3, 20))
        cell_g = ah * 3.7 / rng.uniform(0.18, 0.23)
        t = float(np.clip(ah * 0.55, 4, 12))
        wall = float(rng.uniform(1.0, 2.0))
        cl = float(rng.uniform(90, 140))
        cw = cell_g / 2.1 / (cl * t) * 1000
        prims = []
        fr = {(CATHODE["li_ion_lco"] if k == "cathode" else k): v for k, v in CELL_FRACTIONS["pouch"].items()}
        prims += _fill((wall + 1, wall + 1, wall + 1), (wall + 1 + cl, wall + 1 + cw, wall + 1 + t), fr, cell_g)
        L, W, H = cl + 2 * wall + 18, cw + 2 * wall + 2, t + 2 * wall + 3
        cells = "1 pouch"
    alu = rng.random() < 0.4
    shell = _shell((0, 0, 0), (L, W, H), wall, "Al" if alu else PP, 2.70 if alu else 1.15)
    prims = shell + prims
    prims.append(Box((L - 17, wall + 1, wall + 1), (L - wall - 1, W - wall - 1, wall + 2.6), "FR4", 1.9))
    prims.append(Box((L - 12, W / 2 - 4, wall + 2.6), (L - 6, W / 2 + 4, wall + 5), "Cu", 5.0))
    app = _li_app(
        "pack",
        rng,
        [(240, 240, 240), (20, 20, 22), (200, 200, 205), (220, 60, 90), (60, 150, 220)],
        label=str(rng.choice(["brand", "li_text", "none"])),
        gloss=0.7,
    )
    return Instance(
        f"power bank {ah * 1000:.0f} mAh (line c)",
        "li_ion_nmc",
        "li_ion",
        False,
        (L, W, H),
        prims,
        app,
        0.1 if alu else 0.93,
        energy_wh=3.7 * ah,
        extra={"cells": cells, "_family": "li_powerbank"},
    )


def _odd_lead(rng: np.random.Generator) -> Instance:
    kind = str(rng.choice(["opzs", "truck", "block6v"], p=[0.35, 0.35, 0.30]))
    if kind == "opzs":  # a single 2 V stationary cell, tall, with acid room above the plates
        ah = float(rng.choice([300, 420, 600, 800]))
        L, W, H = 83 + 14 * (ah / 100), 206.0, 355 + 0.2 * ah
        v, name, dens = 2.0, f"OPzS 2V {ah:.0f}Ah stationary cell (line c)", float(rng.uniform(1.95, 2.25))
    elif kind == "truck":
        ah = float(rng.choice([140, 180, 225]))
        L, W, H = 513.0, 189 + 0.15 * ah, 223.0
        v, name, dens = 12.0, f"truck battery 12V {ah:.0f}Ah (line c)", float(rng.uniform(2.15, 2.6))
    else:
        ah = float(rng.choice([4.0, 4.5, 7.0, 10.0, 12.0]))
        vol_mm3 = (0.075 * ah + 0.05) * 1e6
        H, W = 95 + 2 * ah, 47 + 1.5 * ah
        L = vol_mm3 / (H * W)
        v, name, dens = 6.0, f"6V {ah:.0f}Ah block (line c)", float(rng.uniform(2.2, 2.7))
    mass = L * W * H * 1e-6 * dens
    p = Product(name, "lead_acid", "lead_acid", L, W, H, mass, v, ah)
    inst = build_lead_acid(p, rng, in_catalog=False)
    inst.extra["_family"] = product_family(p)
    return inst


_LI_GENERATORS = (_escooter, _lfp_prismatic_dropin, _pouch_module, _power_bank)
_LI_GEN_SHARES = np.array([0.35, 0.25, 0.15, 0.25])


def unseen_product(family: str, rng: np.random.Generator) -> Instance:
    """An item of a product outside the catalogue, from line c's own generator."""
    if family == "lead_acid":
        return _odd_lead(rng)
    return _LI_GENERATORS[int(rng.choice(len(_LI_GENERATORS), p=_LI_GEN_SHARES))](rng)


# ---------------------------------------------------------------------------- intake


_CAT_CACHE: dict[tuple[str, ...], dict[str, list[Product]]] = {}


def _catalogue(extra: tuple[str, ...]) -> dict[str, list[Product]]:
    if extra not in _CAT_CACHE:
        from ..catalog import load_catalog

        groups: dict[str, list[Product]] = {}
        for p in load_catalog(extra):
            if p.family == "li_ion":
                k = _li_kind(p)
                key = "li_" + {"cyl_cell": "cell", "pouch_cell": "cell", "prismatic_cell": "cell"}.get(k, k)
            else:
                key = p.family
            groups.setdefault(key, []).append(p)
        _CAT_CACHE[extra] = groups
    return _CAT_CACHE[extra]


def _pick(rng: np.random.Generator, shares: dict[str, float]) -> str:
    keys = sorted(shares)
    w = np.array([shares[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _draw_once(cfg: SimConfig, prof: LineCProfile, rng: np.random.Generator) -> tuple[str, Any]:
    mix = MIXES[cfg.mix]
    cat = _catalogue(cfg.extra_catalogs)
    if rng.random() < prof.unknown_rate:
        lead, li = mix.family["lead_acid"], mix.family["li_ion"]
        return "unseen", ("lead_acid" if rng.random() < lead / (lead + li) else "li_ion")
    fam = _pick(rng, mix.family)
    if fam == "lead_acid":
        prods = cat["lead_acid"]
        return "product", prods[int(rng.integers(len(prods)))]
    if fam == "li_ion":
        kinds = {k: v for k, v in mix.li_kinds.items() if f"li_{k}" in cat}
        prods = cat[f"li_{_pick(rng, kinds)}"]
        return "product", prods[int(rng.integers(len(prods)))]
    if rng.random() < 0.5 and cat.get("other"):
        prods = cat["other"]
        return "product", prods[int(rng.integers(len(prods)))]
    return "contaminant", CONTAMINANTS[int(rng.integers(len(CONTAMINANTS)))]


def draw_instance_c(cfg: SimConfig, prof: LineCProfile, rng: np.random.Generator) -> tuple[Instance, str]:
    from ..errors import SimulationError

    for _ in range(MAX_REDRAWS):
        what, obj = _draw_once(cfg, prof, rng)
        if what == "unseen":
            inst = unseen_product(obj, rng)
            family = inst.extra.pop("_family")
        elif what == "contaminant":
            family = contaminant_family(obj)
            if not cfg.family_allowed(family):
                continue
            inst = build_contaminant(obj, rng)
        else:
            family = product_family(obj)
            if not cfg.family_allowed(family):
                continue
            inst = build(obj, rng, in_catalog=True)
        if cfg.family_allowed(family):
            break
    else:
        raise SimulationError(
            f"no product family left to draw after {MAX_REDRAWS} tries: --only-family {list(cfg.only_families)} "
            f"--exclude-family {list(cfg.exclude_families)} leave nothing of mix {cfg.mix!r}; widen the filter"
        )
    if inst.family == "li_ion" and rng.random() < min(1.0, cfg.damaged_li_rate() * 1.2):
        dmg = str(rng.choice(["swollen", "dented", "hot"], p=[0.35, 0.35, 0.30]))
        inst.damage = dmg
        if dmg == "hot":
            inst.heat_c = float(rng.uniform(10, 70))
        elif dmg == "swollen":
            inst.heat_c = float(rng.uniform(0, 5))
            L, W, H = inst.size_mm
            inst.size_mm = (L, W, H * float(rng.uniform(1.12, 1.4)))
        else:
            inst.heat_c = float(rng.uniform(0, 8))
    return inst, family


def _pose_c(inst: Instance, rng: np.random.Generator) -> str:
    if inst.appearance.shape == "cylinder":
        return "end" if rng.random() < 0.1 else "upright"
    if inst.family == "lead_acid":
        return str(rng.choice(["upright", "side", "end"], p=[0.8, 0.17, 0.03]))
    return str(rng.choice(["upright", "side", "end"], p=[0.62, 0.33, 0.05]))


def _ambient_c(cfg: SimConfig, t: float) -> float:
    base = 16.0 + (cfg.seed * 104729 % 9)
    return base + 3.0 * math.sin(2 * math.pi * (t - cfg.t0) / 86400.0 + 1.0) + 1.0 * math.sin((t - cfg.t0) / 2400.0)


# ---------------------------------------------------------------------------- one item


def _swollen_voids(
    sig: np.ndarray, xc: np.ndarray, yc: np.ndarray, L: float, W: float, rng: np.random.Generator
) -> None:
    """Gas pockets: ellipsoidal regions of lower density in the item frame."""
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.25, 0.75) * L, rng.uniform(0.25, 0.75) * W
        rx, ry = rng.uniform(0.1, 0.25) * L + 2, rng.uniform(0.1, 0.25) * W + 2
        q = ((xc - cx) / rx) ** 2 + ((yc - cy) / ry) ** 2
        sig *= (1 - 0.5 * np.clip(1 - q, 0, 1))[None, :, :]


def simulate_item_c(cfg: SimConfig, index: int) -> SimItem:
    """Simulate item ``index`` on line c (deterministic for ``(cfg.seed, index)``)."""
    rng = np.random.default_rng([cfg.seed, index, 3])
    prof: LineCProfile = cfg.profile()
    inst, family = draw_instance_c(cfg, prof, rng)
    pose = _pose_c(inst, rng)
    inst.pose = pose
    angle = float(rng.uniform(-90, 90)) if rng.random() < 0.6 else float(rng.normal(0, 5))
    prims, size = inst.posed(pose)
    L, W, H = size
    mass_g = inst.mass_g
    t = cfg.t0 + index / cfg.rate_hz + float(rng.uniform(0, 0.4 / cfg.rate_hz))
    ambient = _ambient_c(cfg, t)
    dropped = [s for s in SENSORS if rng.random() < cfg.faults]
    poly = outline_c(inst, L, W, rng)
    frame = BeltFrame.make(L, W, angle)
    images: dict[str, np.ndarray] = {}
    xl = None
    if "xray" not in dropped:
        sig, mats, xc, yc = areal_density_c(prims, frame, prof.xray_mm_per_px, prof.supersample)
        if inst.damage == "dented":
            sig *= _inside_polygon(poly, xc, yc)[None, :, :]
        elif inst.damage == "swollen":
            _swollen_voids(sig, xc, yc, L, W, rng)
        xl, xh = render_xray_c(sig, mats, prof, rng)
        gone = rng.random()
        if gone >= cfg.faults / 4:
            images["xray_low"] = xl
        if gone >= cfg.faults / 4 or gone < cfg.faults / 8:
            images["xray_high"] = xh
    if "camera" not in dropped:
        images["rgb"] = render_rgb_c(inst, pose, L, W, frame, poly, prof, rng)
    weight = read_scale_c(mass_g, prof, rng) if "scale" not in dropped else None
    dims = read_profiler_c(frame.to_belt(poly), H, prof, rng) if "profiler" not in dropped else (None, None, None)
    temp = read_thermal_c(inst, ambient, prof, rng) if "thermal" not in dropped else None
    extra: dict[str, Any] = {
        "product": inst.product,
        "chemistry_truth": inst.chemistry,
        "in_catalog": inst.in_catalog,
        "pose": pose,
        "angle_deg": round(angle, 1),
        "damaged": inst.damage is not None,
        "damage": inst.damage,
        "true_mass_g": round(mass_g, 1),
        "energy_wh": None if inst.energy_wh is None else round(inst.energy_wh, 1),
        "product_family": family,
        "ambient_c": round(ambient, 2),
        # the same truth tags as lines a/b; only what counts as blacked out is this detector's
        "hard_cases": hard_cases(inst, xl, dropped, 20 * prof.read_noise_adu / (prof.air_adu - prof.dark_adu) * U16),
    }
    rec = ItemRecord(
        item_id=f"{index + 1:08d}",
        t=round(t, 3),
        weight_g=weight,
        length_mm=dims[0],
        width_mm=dims[1],
        height_mm=dims[2],
        surface_temp_c=temp,
        label=inst.family if cfg.labelled else None,
        extra=extra,
    )
    return SimItem(rec, images)


__all__ = ["LINE_C", "LineCProfile", "simulate_item_c", "unseen_product"]
