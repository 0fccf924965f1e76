"""Measurements from one item's readings: the OpenCV and numpy work, one group per sensor.

Each ``measure_*`` function turns one sensor's reading into a fixed-length vector of
raw measurements in physical units, with NaN where the reading is missing or the
measurement is undefined.  :func:`measure_item` concatenates the groups in the order
of :data:`RAW_COLUMNS`; the scikit-learn transformers in :mod:`sorter.features.transformers`
turn those columns into model features with explicit missing-reading indicators.

The same function serves the line (one item at a time) and batch scoring (many).

Every measurement is written to its column by name (``_X[...]``, ``_C[...]``).  The module
is longer than most (about 700 lines) on purpose: the X-ray and camera groups share the
binning, percentile and outline helpers whose shortcuts are proven bit-identical to the
plain numpy/OpenCV calls in ``tests/test_features.py``, and they read best side by side.
The running ambient estimate, which is state rather than a measurement, is
:mod:`sorter.features.ambient`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

from ..readings import Item, LogMeta
from .ambient import AmbientTracker  # noqa: F401 - importable from here, as before it had its own module

# What the measurements mean: raised whenever a change alters their values (not just their
# cost), so that a model trained on other measurements is refused rather than misled.
# 1: the first release; 2: the camera measured on binned pixels (CAMERA_WORK_MM_PER_PX), the
# X-ray outline from the 16-bit image, the X-ray structure turned within the item's box;
# 3: the X-ray's attenuations and structure measured on binned pixels (XRAY_WORK_MM_PER_PX),
# its void blur and interior erosion sized in mm; 4: the X-ray in line-independent units
# (aluminium-equivalent areal density, the dual-energy ratio on the material scale of the
# line's declared energies, a lead-equivalent mass), texture and dense-spot counts dropped
# (they measured our renderer's noise and sharpness more than the item); 5: both resampled to
# exactly their working pitch (by a factor that need not be whole), so lines of other pitches
# are measured at the same scale.
MEASUREMENTS_VERSION = 5

U16 = 65535.0
T_MIN = 1e-5  # transmissions below this are clipped before taking logs (below the detector floor)
OPAQUE_LOW, OPAQUE_HIGH = 0.003, 0.01  # below both: nothing measurable gets through

SCALE_COLUMNS = ("weight_g", "length_mm", "width_mm", "height_mm")
THERMAL_COLUMNS = ("surface_temp_c", "ambient_c")
# The (areal density, material) histogram: three bands of aluminium-equivalent areal density at
# the high energy (g/cm^2; thin, middle, thick) by four bands of the material scale.
_AL_EQ_EDGES = (7.0, 17.0)
_MAT_EDGES = (0.06, 0.18, 0.35)
XRAY_COLUMNS = (
    "xr_low_ok",
    "xr_high_ok",
    "xr_area_mm2",
    "xr_len_mm",
    "xr_wid_mm",
    "xr_opaque_frac",
    # attenuation in line-independent units: aluminium-equivalent areal density (g/cm^2)
    "xr_al_eq_low_p10",
    "xr_al_eq_low_p50",
    "xr_al_eq_low_p90",
    "xr_al_eq_high_p10",
    "xr_al_eq_high_p50",
    "xr_al_eq_high_p90",
    "xr_measurable_frac",
    # the dual-energy ratio on the line's material scale: 0 = plastic, 1 = iron (see material_scale)
    "xr_mat_p25",
    "xr_mat_p50",
    "xr_mat_p75",
    *(f"xr_hist_t{i}_r{j}" for i in range(3) for j in range(4)),
    "xr_al_eq_mass_g",
    "xr_pb_eq_mass_g",
    "xr_long_period_mm",
    "xr_long_power",
    "xr_cross_period_mm",
    "xr_cross_power",
    "xr_rectangularity",
    "xr_solidity",
    "xr_defect_rel",
    "xr_void_frac",
)
CAMERA_COLUMNS = (
    "cam_area_mm2",
    "cam_len_mm",
    "cam_wid_mm",
    "cam_rectangularity",
    "cam_solidity",
    "cam_hue_cos",
    "cam_hue_sin",
    "cam_sat_mean",
    "cam_sat_std",
    "cam_val_mean",
    "cam_val_std",
    "cam_dark_frac",
    "cam_colourful_frac",
    "cam_light_grey_frac",
    "cam_white_frac",
    *(f"cam_hue_hist{i}" for i in range(6)),
    "cam_post_blobs",
    "cam_edge_density",
    "cam_contrast_to_belt",
    "cam_defect_rel",
)
RAW_COLUMNS: tuple[str, ...] = (*SCALE_COLUMNS, *THERMAL_COLUMNS, *XRAY_COLUMNS, *CAMERA_COLUMNS)
# Column indices by name: every measurement is written through these, so a reordered or extended
# column tuple can never mislabel one.
_X = {name: i for i, name in enumerate(XRAY_COLUMNS)}
_C = {name: i for i, name in enumerate(CAMERA_COLUMNS)}


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _frac(b: np.ndarray) -> float:
    """Share of true (non-zero) elements: ``np.mean(b)`` of a boolean array, without its overhead."""
    return np.count_nonzero(b) / b.size


def _mean(a: np.ndarray) -> np.floating:
    """``a.mean()`` of a float array, in its own precision, without the overhead."""
    return a.dtype.type(a.sum() / a.size)


def _ranks(n: int, qs: tuple[float, ...]) -> list[tuple[int, int, float]]:
    """For each percentile in ``qs`` of ``n`` sorted values: the two ranks either side and
    the weight of the upper one (numpy's linear method, in the same float64 arithmetic)."""
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        lo = math.floor(pos)
        out.append((lo, min(lo + 1, n - 1), pos - lo))
    return out


def _percentiles(a: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(a, qs)`` (linear method) from one partial sort, without its overhead.

    On the few thousand pixels of one item, ``np.percentile``'s argument handling costs
    more than the partial sort itself; this does the sort once for all ``qs``.
    """
    ranks = _ranks(a.size, qs)
    part = np.partition(a, sorted({r for lo, hi, _ in ranks for r in (lo, hi)}))
    out = np.empty(len(qs))
    for i, (lo, hi, w) in enumerate(ranks):
        lo_v, hi_v = float(part[lo]), float(part[hi])
        out[i] = lo_v + (hi_v - lo_v) * w
    return out


def _binning(work_mm_per_px: float, mm_per_px: float) -> float:
    """The factor (per side, not necessarily whole) that brings pixels of ``mm_per_px`` to
    ``work_mm_per_px``; 1 when they are that coarse already.  Every line is measured at the same
    working pitch, whatever its detector's, so what is measured on the working pixels (noise
    averaged over the same area, structure and texture at the same scale) carries over between
    lines of different pitch."""
    return max(1.0, work_mm_per_px / mm_per_px)


def _bin(img: np.ndarray | None, f: float) -> np.ndarray | None:
    """``img`` area-averaged down by ``f`` per side (``f`` >= 1, not necessarily whole: each
    output pixel is the mean of the input area it covers; a last partial output row or column is
    dropped), keeping its type (rounded) and channels.  For a whole ``f`` this is the mean of
    ``f`` x ``f`` blocks."""
    if img is None:
        return None
    h, w = int(img.shape[0] / f + 1e-9), int(img.shape[1] / f + 1e-9)
    hc, wc = min(img.shape[0], round(h * f)), min(img.shape[1], round(w * f))
    return cv2.resize(img[:hc, :wc], (w, h), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=256)
def _fft_band(n: int, mm_per_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Hann-windowed real DFT of length ``n`` as one matrix (cosine rows over sine rows),
    the frequencies (cycles per mm) and the indices of the 6-90 mm band.

    A matrix product gives the same spectrum as ``np.fft.rfft(p * np.hanning(n))`` (to
    rounding) for the few dozen samples of a profile, at a fraction of its call overhead."""
    k = np.arange(n // 2 + 1)
    phase = np.outer(k, np.arange(n)) * (2 * np.pi / n)
    window = np.hanning(n)
    dft = np.vstack([np.cos(phase) * window, np.sin(phase) * window])
    freqs = k * (1.0 / (n * mm_per_px))  # as np.fft.rfftfreq computes them
    band = np.flatnonzero((freqs >= 1 / 90.0) & (freqs <= 1 / 6.0))
    return dft, freqs, band


# ---------------------------------------------------------------------------- X-ray


def _attenuation(levels: np.ndarray) -> np.ndarray:
    """Attenuation -ln T (float32) of 16-bit transmission levels (T = level / 65535, clipped at
    the detector floor)."""
    return -np.log(np.clip(levels.astype(np.float32) / np.float32(U16), T_MIN, 1.0))


_LEVEL_T = np.arange(65536, dtype=np.float32) / np.float32(U16)  # the transmission of every 16-bit level
_ATT = _attenuation(np.arange(65536, dtype=np.uint16))  # and its attenuation: a lookup gives the same values
_ATT9 = np.minimum(_ATT, np.float32(9.0))  # the same, capped at 9 (the structure image's range)


def _level_below(t: float) -> int:
    """The 16-bit levels ``u`` with ``float32(u) / 65535 < t`` are exactly ``u < _level_below(t)``."""
    return int(np.count_nonzero(_LEVEL_T < np.float32(t)))


def _level_above(t: float) -> int:
    """The 16-bit levels ``u`` with ``float32(u) / 65535 > t`` are exactly ``u > _level_above(t)``."""
    return 65535 - int(np.count_nonzero(_LEVEL_T > np.float32(t)))


_OPAQUE_LOW_U, _OPAQUE_HIGH_U = _level_below(OPAQUE_LOW), _level_below(OPAQUE_HIGH)
_AIR_LOW_U, _AIR_HIGH_U = _level_below(0.97), _level_below(0.98)  # below: the item, not air (after a 3 x 3 mean)
_MEAS_HIGH_MIN_U, _MEAS_HIGH_MAX_U, _MEAS_LOW_MIN_U = _level_above(0.005), _level_below(0.9), _level_above(1e-4)
_MAT_EDGES_A = np.asarray(_MAT_EDGES)
_K3, _K5 = np.ones((3, 3), np.uint8), np.ones((5, 5), np.uint8)
_SUM3 = np.ones((1, 3), np.float32)


def _square(k: int) -> np.ndarray:
    """A k x k square structuring element."""
    return _K3 if k == 3 else _K5 if k == 5 else np.ones((k, k), np.uint8)


def _att_percentiles(levels: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Percentiles (linear method) of the attenuations of 16-bit ``levels``, as
    ``np.percentile(_ATT[levels], qs)`` gives them.

    Attenuation falls as the level rises, so the k-th smallest attenuation is that of the
    k-th largest level; 16-bit values sort by radix in linear time, several times faster
    than partitioning the float attenuations (which are full of ties at the floor).
    """
    s = np.sort(levels, kind="stable")
    n = s.size
    out = np.empty(len(qs))
    for i, (lo, hi, w) in enumerate(_ranks(n, qs)):
        lo_v, hi_v = float(_ATT[s[n - 1 - lo]]), float(_ATT[s[n - 1 - hi]])
        out[i] = lo_v + (hi_v - lo_v) * w
    return out


def _object_outline(low: np.ndarray | None, high: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The item in the beam: its mask (pixels darker than air, gaps closed, the largest
    outline filled, minus what is air inside it) and that outline (None when there is none).

    ``low`` and ``high`` are the 16-bit transmission images; the 3 x 3 mean is taken on the
    16-bit levels (rounded to a level: 1.5e-5 of transmission)."""
    ref = low if low is not None else high
    assert ref is not None
    smooth = cv2.blur(ref, (3, 3))
    thr = _AIR_LOW_U if low is not None else _AIR_HIGH_U
    mask = (smooth < thr).view(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _K3)
    # Straight runs of the outline kept as their end points: the same polygon (area, hull, deepest
    # dent, filled mask) in a fraction of the points.
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros(mask.shape, dtype=bool), None
    outline = max(contours, key=cv2.contourArea)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, [outline], -1, 1, -1)
    return cv2.bitwise_and(filled, mask).view(bool), outline


def outline_shape(contour: np.ndarray, box: tuple | None = None) -> tuple[float, float, float, float, float, float]:
    """Area, long and short side of the min-area rectangle, and how the outline departs
    from it: rectangularity (area / rectangle), solidity (area / convex hull), and the
    deepest dent (convexity defect) relative to the short side.  ``box`` is the outline's
    ``cv2.minAreaRect`` when the caller has it already."""
    area = float(cv2.contourArea(contour))
    (_, _), (w, h), _ = box if box is not None else cv2.minAreaRect(contour)
    hull_idx = cv2.convexHull(contour, returnPoints=False)
    hull_area = float(cv2.contourArea(contour[hull_idx.ravel()]))
    defect = 0.0
    if len(contour) >= 4:
        try:
            d = cv2.convexityDefects(contour, hull_idx)
        except cv2.error:  # self-intersecting outlines: no defect measure
            d = None
        if d is not None and len(d):
            defect = float(np.asarray(d).reshape(-1, 4)[:, 3].max()) / 256.0  # depth in 1/256 px
    short = max(min(w, h), 1e-6)
    return area, max(w, h), min(w, h), area / max(w * h, 1e-6), area / max(hull_area, 1e-6), defect / short


def _periodicity(profile: np.ndarray, mm_per_px: float) -> tuple[float, float]:
    """Dominant period (mm) of a profile in the 6-90 mm band, and its share of the power."""
    n = profile.size
    if n < 8 or not np.isfinite(profile).all():
        return math.nan, math.nan
    p = profile - profile.sum() / n
    if not p.any():
        return math.nan, 0.0
    dft, freqs, band = _fft_band(n, float(mm_per_px))
    y = dft @ p.astype(np.float64)
    y *= y
    spec = y[: freqs.size] + y[freqs.size :]  # |rfft(p * hanning)|^2
    total = spec[1:].sum()
    if not band.size or total <= 0:
        return math.nan, 0.0
    k = band[int(np.argmax(spec[band]))]
    return float(1 / freqs[k]), float(spec[k] / total)


@dataclass(frozen=True)
class MaterialScale:
    """A line's dual-energy reading in units that do not depend on its energies.

    From the line's declared mean energies (``meta.json``: ``xray.energies_kev``) and the NIST
    table (:mod:`sorter.attenuation`), monoenergetic at those energies:

    - ``mu_al_low``, ``mu_al_high``: aluminium's mass attenuation (cm^2/g). An attenuation
      ``-ln T`` divided by it is the aluminium-equivalent areal density (g/cm^2); at these
      energies aluminium, plastics and water attenuate by Compton scattering alike, so the
      figure hardly depends on the energies.
    - ``r_plastic``, ``r_iron``: the dual-energy ratio ``R = ln T_low / ln T_high`` of
      polypropylene and of iron; ``(R - r_plastic) / (r_iron - r_plastic)`` places a pixel on a
      material scale (0 plastic, about 0.25 aluminium, 0.6-0.8 cathode materials, 1 iron).
      Lead, with its K-edge between the channels of most lines, sits near or below 0.
    - ``pb_basis``: the 2 x 2 inverse that splits a pixel's two attenuations into lead and
      aluminium areal densities (a two-material decomposition), or None when the energies
      leave lead and aluminium with ratios too alike to tell apart.

    Industrial sorters calibrate the same curves per line with step wedges
    (``shared/reference``); a polychromatic beam bends them (beam hardening), which
    ``sorter calibrate`` corrects from labelled items of the line.

    Examples
    --------
    >>> s = material_scale((53.1, 96.2))
    >>> round(s.r_iron, 2), round(s.r_plastic, 2)
    (4.14, 1.18)
    """

    energies_kev: tuple[float, float]
    mu_al_low: float
    mu_al_high: float
    r_plastic: float
    r_iron: float
    pb_basis: np.ndarray | None


@lru_cache(maxsize=16)
def material_scale(energies_kev: tuple[float, float]) -> MaterialScale:
    """The :class:`MaterialScale` of a line with these declared mean energies (keV)."""
    from ..attenuation import attenuation_table

    tab = attenuation_table()
    e = [float(energies_kev[0]), float(energies_kev[1])]
    al, pp, fe, pb = (tab.at(m, e) for m in ("Al", "Polypropylene(CH2)n", "Fe", "Pb"))
    basis = np.array([[pb[0], al[0]], [pb[1], al[1]]])
    r_pb, r_al = pb[0] / pb[1], al[0] / al[1]
    inv = np.linalg.inv(basis) if abs(r_pb - r_al) >= 0.3 else None
    return MaterialScale((e[0], e[1]), float(al[0]), float(al[1]), float(pp[0] / pp[1]), float(fe[0] / fe[1]), inv)


XRAY_WORK_MM_PER_PX = 4.0  # the X-ray is measured at this pitch or finer (see xray_binning)


def xray_binning(mm_per_px: float) -> float:
    """Pixels binned (per side) before the X-ray is measured (see :func:`_binning`)."""
    return _binning(XRAY_WORK_MM_PER_PX, mm_per_px)


def measure_xray(low: np.ndarray | None, high: np.ndarray | None, meta: LogMeta) -> np.ndarray:
    """Raw X-ray measurements (see :data:`XRAY_COLUMNS`), in three groups.

    The outline (size, shape, dents: :func:`_xray_outline`) is measured on the detector's
    pixels; the attenuation statistics (:func:`_xray_attenuation`) and the internal structure
    (:func:`_xray_structure`) on pixels binned to about :data:`XRAY_WORK_MM_PER_PX` (see
    :func:`xray_binning` and :func:`_xray_work_view`): what they tell (materials, cells of
    18 mm and more, case walls, BMS boards, gas voids) spans several such pixels, and every
    step after the binning costs a third to a half as much.

    Parameters
    ----------
    low, high : uint16 images of air-normalised transmission (65535 = air), or None.
    meta : the log's meta (pixel pitch).
    """
    out = _nan(len(XRAY_COLUMNS))
    if low is None and high is None:
        return out
    if low is not None and high is not None and low.shape != high.shape:
        high = None  # the channels disagree: trust neither pairing, keep the low channel
    out[_X["xr_low_ok"]] = float(low is not None)
    out[_X["xr_high_ok"]] = float(high is not None)
    px = meta.xray_mm_per_px
    mask, outline = _object_outline(low, high)
    area_px = int(np.count_nonzero(mask))
    out[_X["xr_area_mm2"]] = area_px * px * px
    if area_px < 4 or outline is None:
        return out  # nothing in the beam: the policy treats this as an invalid reading
    box = _xray_outline(out, outline, px)
    view = _xray_work_view(low, high, mask, outline, box, area_px, px)
    _xray_attenuation(out, view, material_scale(tuple(meta.xray_energies_kev)))
    _xray_structure(out, view, box)
    return out


def _xray_outline(out: np.ndarray, outline: np.ndarray, px: float) -> tuple:
    """Writes the outline's columns (length, width, rectangularity, solidity, deepest dent),
    measured on the detector's own pixels (dents are a few mm); returns its min-area rectangle."""
    # The outline holds every extreme pixel of the (single, filled) mask, so its minimum-area
    # rectangle is the mask's, at a fraction of the points.
    box = cv2.minAreaRect(outline)
    (_, _), (w, h), _ = box
    out[_X["xr_len_mm"]], out[_X["xr_wid_mm"]] = max(w, h) * px, min(w, h) * px
    _, _, _, rect, solid, dent = outline_shape(outline, box)
    out[_X["xr_rectangularity"]], out[_X["xr_solidity"]], out[_X["xr_defect_rel"]] = rect, solid, dent
    return box


class _XrayView(NamedTuple):
    """The images the attenuation and the structure are measured on: binned to about
    :data:`XRAY_WORK_MM_PER_PX` when the item is large enough, else the detector's own."""

    low: np.ndarray | None
    high: np.ndarray | None
    mask: np.ndarray  # bool: the item
    area_px: int  # pixels in ``mask``
    cx: float  # the centre of the item's min-area rectangle, in these pixels
    cy: float
    px: float  # mm per pixel
    rect: tuple[int, int, int, int]  # the item's bounding rectangle (x, y, w, h)


def _xray_work_view(
    low: np.ndarray | None,
    high: np.ndarray | None,
    mask: np.ndarray,
    outline: np.ndarray,
    box: tuple,
    area_px: int,
    px: float,
) -> _XrayView:
    """The images binned to about XRAY_WORK_MM_PER_PX, the mask binned with them (pixels at
    least half inside the item); the detector's pixels when there is no binning or the binned
    item would be a sliver."""
    (cx, cy), _, _ = box
    f = xray_binning(px)
    binned = None
    if f > 1 and mask.shape[0] >= 8 * f and mask.shape[1] >= 8 * f:
        binned = _bin(mask.view(np.uint8) * np.uint8(255), f) >= 128  # type: ignore[operator]
    n_binned = 0 if binned is None else int(np.count_nonzero(binned))
    if n_binned >= 16:  # else (no binning, or a sliver of an item): the detector's pixels
        low, high, mask, area_px = _bin(low, f), _bin(high, f), binned, n_binned
        cx, cy = (cx - (f - 1) / 2) / f, (cy - (f - 1) / 2) / f  # the centre in binned pixels
        px *= f
        rect = cv2.boundingRect(mask.view(np.uint8))
    else:
        rect = cv2.boundingRect(outline)
    return _XrayView(low, high, mask, area_px, cx, cy, px, rect)


def _xray_attenuation(out: np.ndarray, v: _XrayView, scale: MaterialScale) -> None:
    """Writes the attenuation columns: opaque share, aluminium-equivalent areal densities and
    mass, the measurable share, the material scale's quartiles, the (density, material)
    histogram and the lead-equivalent mass."""
    # Work on the raw 16-bit values inside the item: thresholds as integer levels, attenuation
    # percentiles from a radix sort of the levels (see _level_below and _att_percentiles), and
    # attenuations looked up in _ATT (the same values as _attenuation computes, at a third of its cost).
    u_low = None if v.low is None else v.low[v.mask]
    u_high = None if v.high is None else v.high[v.mask]
    area_px = v.area_px
    px_cm2 = (v.px / 10) ** 2
    if u_low is not None and u_high is not None:
        opaque = (u_low < _OPAQUE_LOW_U) & (u_high < _OPAQUE_HIGH_U)
        out[_X["xr_opaque_frac"]] = float(np.count_nonzero(opaque)) / area_px
    elif u_low is not None:
        out[_X["xr_opaque_frac"]] = float(np.count_nonzero(u_low < _OPAQUE_LOW_U)) / area_px
    else:
        out[_X["xr_opaque_frac"]] = float(np.count_nonzero(u_high < _OPAQUE_HIGH_U)) / area_px  # type: ignore[operator]
    # Aluminium-equivalent areal densities: attenuation percentiles over aluminium's mu. Opaque
    # pixels are censored at the opacity threshold: below it a detector reads its own floor
    # (noise, offset), which differs from line to line and says nothing more about the item.
    if u_low is not None:
        censored = np.maximum(u_low, np.uint16(_OPAQUE_LOW_U))
        out[_X["xr_al_eq_low_p10"] : _X["xr_al_eq_low_p90"] + 1] = (
            _att_percentiles(censored, (10, 50, 90)) / scale.mu_al_low
        )
    if u_high is not None:
        censored = np.maximum(u_high, np.uint16(_OPAQUE_HIGH_U))
        out[_X["xr_al_eq_high_p10"] : _X["xr_al_eq_high_p90"] + 1] = (
            _att_percentiles(censored, (10, 50, 90)) / scale.mu_al_high
        )
        out[_X["xr_al_eq_mass_g"]] = float(_ATT.take(censored).sum()) * px_cm2 / scale.mu_al_high
    if u_low is not None and u_high is not None:
        meas = (u_high > _MEAS_HIGH_MIN_U) & (u_high < _MEAS_HIGH_MAX_U) & (u_low > _MEAS_LOW_MIN_U)
        n_meas = int(np.count_nonzero(meas))
        out[_X["xr_measurable_frac"]] = n_meas / area_px
        hist = np.zeros((3, 4))
        out[_X["xr_pb_eq_mass_g"]] = 0.0 if scale.pb_basis is not None else math.nan
        if n_meas >= 3:
            a_low, a_high = _ATT.take(u_low[meas]), _ATT.take(u_high[meas])  # type: ignore[index]
            r = a_low / a_high
            span = scale.r_iron - scale.r_plastic
            out[_X["xr_mat_p25"] : _X["xr_mat_p75"] + 1] = (_percentiles(r, (25, 50, 75)) - scale.r_plastic) / span
            al_eq = a_high * np.float32(1.0 / scale.mu_al_high)
            ti = (al_eq < _AL_EQ_EDGES[1]).view(np.uint8) + (al_eq < _AL_EQ_EDGES[0])  # 0: thick .. 2: thin
            ri = np.searchsorted(_MAT_EDGES_A, (r - scale.r_plastic) / span, side="right")
            hist = np.bincount(ti * 4 + ri, minlength=12).astype(np.float64).reshape(3, 4)
            hist /= hist.sum()
            if scale.pb_basis is not None:
                # two-material decomposition into lead and aluminium; lead's share, summed (g)
                (i00, i01), _ = scale.pb_basis
                sigma_pb = np.maximum(i00 * a_low.astype(np.float64) + i01 * a_high, 0.0)
                out[_X["xr_pb_eq_mass_g"]] = float(sigma_pb.sum()) * px_cm2
        out[_X["xr_hist_t0_r0"] : _X["xr_hist_t2_r3"] + 1] = hist.ravel()


def _xray_structure(out: np.ndarray, v: _XrayView, box: tuple) -> None:
    """Writes the internal-structure columns: the dominant periods along and across the item
    (cells, plates) and the share of voids, on the attenuation image aligned with the item's
    long axis."""
    (_, _), (w, h), ang = box
    cx, cy, px, mask = v.cx, v.cy, v.px, v.mask
    sx, sy, sw, sh = v.rect
    # only the item's box of the image is turned (zero around it), into the box it turns into,
    # clipped to the frame as a full-frame turn would clip it
    u_ref = v.high if v.high is not None else v.low
    att_img = _ATT9.take(u_ref[sy : sy + sh, sx : sx + sw])  # type: ignore[index]
    mbox = mask[sy : sy + sh, sx : sx + sw]
    att_img[~mbox] = 0
    angle = ang if w >= h else ang + 90.0
    rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    corners = np.array([[sx, sy, 1], [sx + sw, sy, 1], [sx, sy + sh, 1], [sx + sw, sy + sh, 1]], np.float64) @ rot.T
    frame_h, frame_w = mask.shape
    ox, oy = max(math.floor(corners[:, 0].min()) - 2, 0), max(math.floor(corners[:, 1].min()) - 2, 0)
    ox2 = min(math.ceil(corners[:, 0].max()) + 2, frame_w)
    oy2 = min(math.ceil(corners[:, 1].max()) + 2, frame_h)
    rot[:, 2] += rot[:, :2] @ (sx, sy) - (ox, oy)
    size = (max(ox2 - ox, 1), max(oy2 - oy, 1))
    aligned = cv2.warpAffine(att_img, rot, size, flags=cv2.INTER_LINEAR)
    amask = (aligned > 0).view(np.uint8)  # the turned item: attenuation is > 0.03 inside it, 0 around
    bx, by, bw, bh = cv2.boundingRect(amask)
    if bw * bh >= 4 and np.count_nonzero(amask[by : by + bh, bx : bx + bw]) >= 4:
        crop = aligned[by : by + bh, bx : bx + bw]
        cm = amask[by : by + bh, bx : bx + bw]
        # trim the case walls: the middle 80 % in each direction
        hh, ww = crop.shape
        inner = crop[
            int(0.1 * hh) : max(int(0.9 * hh), int(0.1 * hh) + 1), int(0.1 * ww) : max(int(0.9 * ww), int(0.1 * ww) + 1)
        ]
        out[_X["xr_long_period_mm"]], out[_X["xr_long_power"]] = _periodicity(inner.sum(axis=0) / inner.shape[0], px)
        out[_X["xr_cross_period_mm"]], out[_X["xr_cross_power"]] = _periodicity(inner.sum(axis=1) / inner.shape[1], px)
        # the interior: the item less about 4 mm all round (5 x 5 at 2 mm, 3 x 3 at 3-4 mm)
        interior = cv2.erode(cm, _square(max(3, round(8 / px) | 1))).view(bool)
        interior &= crop < 5.3  # only where the high channel measures (T > 0.005): the floor's noise is no structure
        n_in = np.count_nonzero(interior)
        # voids (gas in swollen cells): share of the interior much thinner than its median
        if n_in >= 16:
            smooth = cv2.GaussianBlur(crop, (0, 0), 4.0 / px)[interior]  # sigma 4 mm
            out[_X["xr_void_frac"]] = _frac(smooth < 0.7 * _percentiles(smooth, (50,))[0])
        else:
            out[_X["xr_void_frac"]] = 0.0


# ---------------------------------------------------------------------------- camera


CAMERA_WORK_MM_PER_PX = 3.0  # the camera is measured at this pitch or finer (see camera_binning)
_HUE_COS = np.cos(np.arange(256) * (2 * np.pi / 180.0))  # OpenCV's 8-bit hue: 0..179 = 0..358 degrees
_HUE_SIN = np.sin(np.arange(256) * (2 * np.pi / 180.0))
_LEVELS = np.arange(256, dtype=np.float64)
_GREY_LO, _GREY_HI = (0, 0, 121), (255, 39, 214)  # light grey: saturation < 40, 120 < value < 215
_LEVELS32 = _LEVELS.astype(np.float32)[:, None]


def _belt_colour(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the image border (the belt), per channel, as ``np.median`` gives it."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    n = border.shape[0]
    mid = np.partition(border, sorted({(n - 1) // 2, n // 2}), axis=0)
    return (mid[(n - 1) // 2].astype(np.float32) + mid[n // 2].astype(np.float32)) / np.float32(2)


def _label_type(img: np.ndarray) -> int:
    """16-bit labels where they cannot overflow (8-connected components of an image of N
    pixels number at most N / 4): they cost OpenCV a third of 32-bit ones."""
    return cv2.CV_16U if img.size < 4 * 65535 else cv2.CV_32S


def _level_stats(counts: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of 8-bit values from their histogram."""
    n = counts.sum()
    mean = float(counts @ _LEVELS) / n
    var = float(counts @ (_LEVELS - mean) ** 2) / n
    return mean, math.sqrt(max(var, 0.0))


def camera_binning(mm_per_px: float) -> float:
    """Pixels binned (per side) before the camera is measured (see :func:`_binning`)."""
    return _binning(CAMERA_WORK_MM_PER_PX, mm_per_px)


def measure_camera(rgb: np.ndarray | None, meta: LogMeta) -> np.ndarray:
    """Raw colour-camera measurements (see :data:`CAMERA_COLUMNS`). ``rgb`` is RGB uint8.

    The image is first binned to about :data:`CAMERA_WORK_MM_PER_PX` (see
    :func:`camera_binning`): what the camera tells (outline, colours, terminal posts, label
    edges) is centimetre-sized, and binning averages the sensor noise away at a quarter of
    the cost of every step after it.
    """
    out = _nan(len(CAMERA_COLUMNS))
    if rgb is None or rgb.ndim != 3 or rgb.shape[0] < 8 or rgb.shape[1] < 8:
        return out
    f = camera_binning(meta.camera_mm_per_px)
    if f > 1 and rgb.shape[0] >= 8 * f and rgb.shape[1] >= 8 * f:
        rgb = _bin(rgb, f)
    else:
        f = 1
    px = meta.camera_mm_per_px * f
    belt = _belt_colour(rgb)
    # distance to the belt's colour: squared differences per channel by lookup table
    sq = (_LEVELS32 - belt[None, :].astype(np.float32)) ** 2
    diff = cv2.LUT(rgb, np.ascontiguousarray(sq.reshape(1, 256, 3)))
    dist = cv2.sqrt(cv2.transform(diff, _SUM3))
    k = 5 if f == 1 else 3  # about 5-9 mm of smoothing either way
    dist = cv2.GaussianBlur(dist, (k, k), 0)
    # the belt's own texture sets the threshold: a few times its spread, at least 18 DN
    border = np.concatenate([dist[0], dist[-1], dist[:, 0], dist[:, -1]])
    thr = max(18.0, float(_percentiles(border, (95,))[0]) * 2.5)
    mask = (dist > thr).view(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _K3)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        out[_C["cam_area_mm2"]] = 0.0
        return out
    c = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(c)
    if area < 16:
        out[_C["cam_area_mm2"]] = 0.0
        return out
    _, long_px, short_px, rect, solid, dent = outline_shape(c)
    # The rest looks only at the item: work in its bounding box, with a margin for the
    # 3x3 and 5x5 neighbourhoods of the edge and erosion steps.
    bx, by, bw, bh = cv2.boundingRect(c)
    m = 4
    x0, y0 = max(bx - m, 0), max(by - m, 0)
    x1, y1 = min(bx + bw + m, rgb.shape[1]), min(by + bh + m, rgb.shape[0])
    rgb, dist = rgb[y0:y1, x0:x1], dist[y0:y1, x0:x1]
    obj = np.zeros(rgb.shape[:2], np.uint8)
    cv2.drawContours(obj, [c], -1, 1, -1, offset=(-x0, -y0))
    objb = obj.view(bool)
    out[_C["cam_area_mm2"]] = area * px * px
    out[_C["cam_len_mm"]], out[_C["cam_wid_mm"]] = long_px * px, short_px * px
    out[_C["cam_rectangularity"]], out[_C["cam_solidity"]] = rect, solid
    out[_C["cam_defect_rel"]] = dent
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0][objb], hsv[..., 1][objb], hsv[..., 2][objb]
    n_px = hue.size
    # saturation-weighted mean direction of the hue
    wsum = np.bincount(hue, weights=sat, minlength=256)
    sw = wsum.sum()
    out[_C["cam_hue_cos"]] = float(wsum @ _HUE_COS / sw) if sw > 0 else 0.0
    out[_C["cam_hue_sin"]] = float(wsum @ _HUE_SIN / sw) if sw > 0 else 0.0
    out[_C["cam_sat_mean"]], out[_C["cam_sat_std"]] = _level_stats(np.bincount(sat, minlength=256).astype(np.float64))
    vcount = np.bincount(val, minlength=256).astype(np.float64)
    out[_C["cam_val_mean"]], out[_C["cam_val_std"]] = _level_stats(vcount)
    out[_C["cam_dark_frac"]] = float(vcount[:60].sum() / n_px)
    colourful = (sat > 100) & (val > 70)
    out[_C["cam_colourful_frac"]] = _frac(colourful)
    pale = sat < 40
    light_grey = pale & (val > 120) & (val < 215)
    out[_C["cam_light_grey_frac"]] = _frac(light_grey)
    out[_C["cam_white_frac"]] = _frac(pale & (val >= 215))
    if colourful.any():
        bins = np.minimum(hue[colourful] // 30, 5)
        out[_C["cam_hue_hist0"] : _C["cam_hue_hist5"] + 1] = np.bincount(bins, minlength=6)[:6] / n_px
    else:
        out[_C["cam_hue_hist0"] : _C["cam_hue_hist5"] + 1] = 0.0
    # terminal posts: small round light-grey blobs inside the item
    grey_img = cv2.bitwise_and(cv2.inRange(hsv, _GREY_LO, _GREY_HI), obj)  # light_grey, as an image
    n, _, stats, _ = cv2.connectedComponentsWithStats(grey_img, connectivity=8, ltype=_label_type(grey_img))
    a_min, a_max = math.pi * (3.0 / px) ** 2, math.pi * (14.0 / px) ** 2
    if n > 1:
        a, bw, bh = (stats[1:, cv2.CC_STAT_AREA], stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
        aspect = bw / np.maximum(bh, 1)
        round_blob = (a >= a_min) & (a <= a_max) & (aspect >= 0.6) & (aspect <= 1.6) & (a >= 0.6 * bw * bh)
        out[_C["cam_post_blobs"]] = float(round_blob.sum())
    else:
        out[_C["cam_post_blobs"]] = 0.0
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 60, 150)
    inner = cv2.erode(obj, _K5).view(bool)
    out[_C["cam_edge_density"]] = _frac(edges[inner]) if inner.any() else 0.0  # Canny marks edges 255, the rest 0
    out[_C["cam_contrast_to_belt"]] = float(_mean(dist[objb]))
    return out


# ---------------------------------------------------------------------------- whole item


def measure_scalars(item: Item, ambient_c: float | None) -> np.ndarray:
    r = item.record
    vals = [r.weight_g, r.length_mm, r.width_mm, r.height_mm, r.surface_temp_c, ambient_c]
    return np.array([np.nan if v is None else float(v) for v in vals])


def measure_item(item: Item, ambient_c: float | None = None) -> np.ndarray:
    """All raw measurements of one item, in the order of :data:`RAW_COLUMNS`.

    Examples
    --------
    >>> from sorter.readings import Item, ItemRecord
    >>> from sorter.features.measure import RAW_COLUMNS, measure_item
    >>> row = measure_item(Item(ItemRecord("a", 0.0, weight_g=900.0)))
    >>> row.shape == (len(RAW_COLUMNS),) and bool(row[0] == 900.0)
    True
    """
    return np.concatenate(
        [
            measure_scalars(item, ambient_c),
            measure_xray(item.xray_low, item.xray_high, item.meta),
            measure_camera(item.rgb, item.meta),
        ]
    )
