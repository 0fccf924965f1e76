"""Measurements from one item's readings: the OpenCV and numpy work, one group per sensor.

Each ``measure_*`` function turns one sensor's reading into a fixed-length vector of
raw measurements in physical units, with NaN where the reading is missing or the
measurement is undefined.  :func:`measure_item` concatenates the groups in the order
of :data:`RAW_COLUMNS`; the scikit-learn transformers in :mod:`sorter.features.transformers`
turn those columns into model features with explicit missing-reading indicators.

The same function serves the line (one item at a time) and batch scoring (many).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from ..readings import Item, LogMeta

U16 = 65535.0
T_MIN = 1e-5  # transmissions below this are clipped before taking logs (below the detector floor)
OPAQUE_LOW, OPAQUE_HIGH = 0.003, 0.01  # below both: nothing measurable gets through

SCALE_COLUMNS = ("weight_g", "length_mm", "width_mm", "height_mm")
THERMAL_COLUMNS = ("surface_temp_c", "ambient_c")
_R_EDGES_T = (0.9, 0.3, 0.05, 0.005)  # T_high bands for the (ln T_high, R) histogram
_R_EDGES = (1.35, 1.7, 2.2)
XRAY_COLUMNS = (
    "xr_low_ok",
    "xr_high_ok",
    "xr_area_mm2",
    "xr_len_mm",
    "xr_wid_mm",
    "xr_opaque_frac",
    "xr_att_low_p10",
    "xr_att_low_p50",
    "xr_att_low_p90",
    "xr_att_high_p10",
    "xr_att_high_p50",
    "xr_att_high_p90",
    "xr_measurable_frac",
    "xr_r_p25",
    "xr_r_p50",
    "xr_r_p75",
    *(f"xr_hist_t{i}_r{j}" for i in range(3) for j in range(4)),
    "xr_att_integral_cm2",
    "xr_texture",
    "xr_long_period_mm",
    "xr_long_power",
    "xr_cross_period_mm",
    "xr_cross_power",
    "xr_dense_spots",
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
_X = {name: i for i, name in enumerate(XRAY_COLUMNS)}


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _percentiles(a: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(a, qs)`` (linear method) from one partial sort, without its overhead.

    On the few thousand pixels of one item, ``np.percentile``'s argument handling costs
    more than the partial sort itself; this does the sort once for all ``qs``.
    """
    n = a.size
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(a, np.unique(np.concatenate([lo, hi])))
    lo_v, hi_v = part[lo].astype(np.float64), part[hi].astype(np.float64)
    return lo_v + (hi_v - lo_v) * (pos - lo)


@lru_cache(maxsize=256)
def _fft_band(n: int, mm_per_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window, frequencies (cycles per mm) and indices of the 6-90 mm band for length ``n``."""
    freqs = np.fft.rfftfreq(n, d=mm_per_px)
    band = np.flatnonzero((freqs >= 1 / 90.0) & (freqs <= 1 / 6.0))
    return np.hanning(n), freqs, band


# ---------------------------------------------------------------------------- X-ray


def _object_mask(t_low: np.ndarray | None, t_high: np.ndarray | None) -> np.ndarray:
    ref = t_low if t_low is not None else t_high
    assert ref is not None
    smooth = cv2.blur(ref.astype(np.float32), (3, 3))
    thr = 0.97 if t_low is not None else 0.98
    mask = (smooth < thr).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=_label_type(mask))
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == k


def outline_shape(contour: np.ndarray) -> tuple[float, float, float, float, float]:
    """Area, long and short side of the min-area rectangle, and how the outline departs
    from it: rectangularity (area / rectangle), solidity (area / convex hull), and the
    deepest dent (convexity defect) relative to the short side."""
    area = float(cv2.contourArea(contour))
    (_, _), (w, h), _ = cv2.minAreaRect(contour)
    hull_pts = cv2.convexHull(contour)
    hull_area = float(cv2.contourArea(hull_pts))
    defect = 0.0
    if len(contour) >= 4:
        hull_idx = cv2.convexHull(contour, returnPoints=False)
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
    p = profile - profile.mean()
    if not p.any():
        return math.nan, 0.0
    window, freqs, band = _fft_band(n, float(mm_per_px))
    spec = np.abs(np.fft.rfft(p * window)) ** 2
    total = spec[1:].sum()
    if not band.size or total <= 0:
        return math.nan, 0.0
    k = band[int(np.argmax(spec[band]))]
    return float(1 / freqs[k]), float(spec[k] / total)


def measure_xray(low: np.ndarray | None, high: np.ndarray | None, meta: LogMeta) -> np.ndarray:
    """Raw X-ray measurements (see :data:`XRAY_COLUMNS`).

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
    out[0] = float(low is not None)
    out[1] = float(high is not None)
    px = meta.xray_mm_per_px
    t_low = None if low is None else low.astype(np.float32) / np.float32(U16)
    t_high = None if high is None else high.astype(np.float32) / np.float32(U16)
    mask = _object_mask(t_low, t_high)
    area_px = int(mask.sum())
    out[2] = area_px * px * px
    if area_px < 4:
        return out  # nothing in the beam: the policy treats this as an invalid reading
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    # The outline holds every extreme pixel of the (single, filled) mask, so its minimum-area
    # rectangle is the mask's, at a fraction of the points.
    (cx, cy), (w, h), ang = cv2.minAreaRect(outline)
    out[3], out[4] = max(w, h) * px, min(w, h) * px
    _, _, _, rect, solid, dent = outline_shape(outline)
    out[_X["xr_rectangularity"]], out[_X["xr_solidity"]], out[_X["xr_defect_rel"]] = rect, solid, dent
    att_low = None if t_low is None else -np.log(np.clip(t_low[mask], T_MIN, 1.0))
    att_high = None if t_high is None else -np.log(np.clip(t_high[mask], T_MIN, 1.0))
    if t_low is not None and t_high is not None:
        tl, th = t_low[mask], t_high[mask]
        out[5] = float(np.mean((tl < OPAQUE_LOW) & (th < OPAQUE_HIGH)))
    elif t_low is not None:
        out[5] = float(np.mean(t_low[mask] < OPAQUE_LOW))
    else:
        out[5] = float(np.mean(t_high[mask] < OPAQUE_HIGH))  # type: ignore[index]
    if att_low is not None:
        out[6:9] = _percentiles(att_low, (10, 50, 90))
    if att_high is not None:
        out[9:12] = _percentiles(att_high, (10, 50, 90))
        out[_X['xr_att_integral_cm2']] = float(att_high.sum()) * (px / 10) ** 2
    if att_low is not None and att_high is not None:
        th = t_high[mask]  # type: ignore[index]
        meas = (th > 0.005) & (th < 0.9) & (t_low[mask] > 1e-4)  # type: ignore[index]
        out[12] = float(meas.mean())
        hist = np.zeros((3, 4))
        if meas.sum() >= 3:
            r = att_low[meas] / att_high[meas]
            out[13:16] = _percentiles(r, (25, 50, 75))
            ti = np.digitize(th[meas], _R_EDGES_T[1:-1][::-1])  # 0: thick .. 2: thin
            ri = np.digitize(r, _R_EDGES)
            np.add.at(hist, (ti, ri), 1.0)
            hist /= hist.sum()
        out[16:28] = hist.ravel()
    # internal structure, on the attenuation image aligned with the item's long axis
    att_img = -np.log(np.clip(t_high if t_high is not None else t_low, T_MIN, 1.0))  # type: ignore[arg-type]
    att_img = np.minimum(att_img, 9.0).astype(np.float32)
    att_img[~mask] = 0
    angle = ang if w >= h else ang + 90.0
    rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    aligned = cv2.warpAffine(att_img, rot, (att_img.shape[1], att_img.shape[0]), flags=cv2.INTER_LINEAR)
    amask = cv2.warpAffine(mask.astype(np.uint8), rot, (mask.shape[1], mask.shape[0]), flags=cv2.INTER_NEAREST)
    bx, by, bw, bh = cv2.boundingRect(amask)
    if bw * bh >= 4 and int(amask[by : by + bh, bx : bx + bw].sum()) >= 4:
        crop = aligned[by : by + bh, bx : bx + bw]
        cm = amask[by : by + bh, bx : bx + bw].astype(bool)
        # trim the case walls: the middle 80 % in each direction
        hh, ww = crop.shape
        inner = crop[int(0.1 * hh) : max(int(0.9 * hh), int(0.1 * hh) + 1), int(0.1 * ww) : max(int(0.9 * ww), int(0.1 * ww) + 1)]
        out[_X['xr_long_period_mm']], out[_X['xr_long_power']] = _periodicity(inner.mean(axis=0), px)
        out[_X['xr_cross_period_mm']], out[_X['xr_cross_power']] = _periodicity(inner.mean(axis=1), px)
        lap = cv2.Laplacian(crop, cv2.CV_32F, ksize=3)
        interior = cv2.erode(cm.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        interior &= crop < 5.3  # only where the high channel measures (T > 0.005): the floor's noise is no texture
        out[_X['xr_texture']] = float(np.abs(lap[interior]).mean()) if interior.sum() >= 4 else 0.0
        # voids (gas in swollen cells): share of the interior much thinner than its median
        if interior.sum() >= 16:
            smooth = cv2.GaussianBlur(crop, (0, 0), 2.0)[interior]
            out[_X["xr_void_frac"]] = float(np.mean(smooth < 0.7 * _percentiles(smooth, (50,))[0]))
        else:
            out[_X["xr_void_frac"]] = 0.0
        # dense spots (BMS components, terminals): small bright features over a smooth background
        k = max(3, int(round(8 / px)) | 1)
        tophat = cv2.morphologyEx(crop, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        spots = ((tophat > 0.6) & interior).astype(np.uint8)
        out[_X['xr_dense_spots']] = float(cv2.connectedComponents(spots)[0] - 1)
    return out


# ---------------------------------------------------------------------------- camera


_HUE_COS = np.cos(np.arange(256) * (2 * np.pi / 180.0))  # OpenCV's 8-bit hue: 0..179 = 0..358 degrees
_HUE_SIN = np.sin(np.arange(256) * (2 * np.pi / 180.0))
_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS32 = _LEVELS.astype(np.float32)[:, None]


def _belt_colour(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the image border (the belt), per channel, as ``np.median`` gives it."""
    border = np.sort(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    n = border.shape[0]
    return (border[(n - 1) // 2].astype(np.float32) + border[n // 2].astype(np.float32)) / np.float32(2)


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


def measure_camera(rgb: np.ndarray | None, meta: LogMeta) -> np.ndarray:
    """Raw colour-camera measurements (see :data:`CAMERA_COLUMNS`). ``rgb`` is RGB uint8."""
    out = _nan(len(CAMERA_COLUMNS))
    if rgb is None or rgb.ndim != 3 or rgb.shape[0] < 8 or rgb.shape[1] < 8:
        return out
    px = meta.camera_mm_per_px
    belt = _belt_colour(rgb)
    # distance to the belt's colour: squared differences per channel by lookup table
    sq = (_LEVELS32 - belt[None, :].astype(np.float32)) ** 2
    diff = cv2.LUT(rgb, np.ascontiguousarray(sq.reshape(1, 256, 3)))
    dist = cv2.sqrt(cv2.transform(diff, np.ones((1, 3), np.float32)))
    dist = cv2.GaussianBlur(dist, (5, 5), 0)
    # the belt's own texture sets the threshold: a few times its spread, at least 18 DN
    border = np.concatenate([dist[0], dist[-1], dist[:, 0], dist[:, -1]])
    thr = max(18.0, float(_percentiles(border, (95,))[0]) * 2.5)
    mask = (dist > thr).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        out[0] = 0.0
        return out
    c = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(c)
    if area < 16:
        out[0] = 0.0
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
    objb = obj.astype(bool)
    out[0] = area * px * px
    out[1], out[2] = long_px * px, short_px * px
    out[3], out[4] = rect, solid
    out[24] = dent
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0][objb], hsv[..., 1][objb], hsv[..., 2][objb]
    n_px = hue.size
    # saturation-weighted mean direction of the hue
    wsum = np.bincount(hue, weights=sat, minlength=256)
    sw = wsum.sum()
    out[5] = float(wsum @ _HUE_COS / sw) if sw > 0 else 0.0
    out[6] = float(wsum @ _HUE_SIN / sw) if sw > 0 else 0.0
    out[7], out[8] = _level_stats(np.bincount(sat, minlength=256).astype(np.float64))
    vcount = np.bincount(val, minlength=256).astype(np.float64)
    out[9], out[10] = _level_stats(vcount)
    out[11] = float(vcount[:60].sum() / n_px)
    colourful = (sat > 100) & (val > 70)
    out[12] = float(colourful.mean())
    pale = sat < 40
    light_grey = pale & (val > 120) & (val < 215)
    out[13] = float(light_grey.mean())
    out[14] = float(np.mean(pale & (val >= 215)))
    if colourful.any():
        bins = np.minimum(hue[colourful] // 30, 5)
        out[15:21] = np.bincount(bins, minlength=6)[:6] / n_px
    else:
        out[15:21] = 0.0
    # terminal posts: small round light-grey blobs inside the item
    grey_img = np.zeros_like(obj)
    grey_img[objb] = light_grey.view(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(grey_img, connectivity=8, ltype=_label_type(grey_img))
    a_min, a_max = math.pi * (3.0 / px) ** 2, math.pi * (14.0 / px) ** 2
    if n > 1:
        a, bw, bh = (stats[1:, cv2.CC_STAT_AREA], stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
        aspect = bw / np.maximum(bh, 1)
        round_blob = (a >= a_min) & (a <= a_max) & (aspect >= 0.6) & (aspect <= 1.6) & (a >= 0.6 * bw * bh)
        out[21] = float(round_blob.sum())
    else:
        out[21] = 0.0
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 60, 150)
    inner = cv2.erode(obj, np.ones((5, 5), np.uint8)).astype(bool)
    out[22] = float(edges[inner].mean() / 255.0) if inner.any() else 0.0
    out[23] = float(dist[objb].mean())
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
    >>> row.shape == (len(RAW_COLUMNS),) and row[0] == 900.0
    True
    """
    return np.concatenate(
        [
            measure_scalars(item, ambient_c),
            measure_xray(item.xray_low, item.xray_high, item.meta),
            measure_camera(item.rgb, item.meta),
        ]
    )


class AmbientTracker:
    """Running estimate of the hall's ambient temperature from the items' own readings.

    Sound batteries sit at ambient, so the running median of recent surface
    temperatures tracks the hall's temperature; an item's thermal excess is measured
    against the estimate *before* it is updated with that item.  Items far above the
    estimate (hot ones) are not fed in, so a run of hot items cannot drag it up.
    """

    def __init__(self, window: int = 64, initial_c: float | None = None, reject_above_c: float = 8.0):
        self.window = window
        self.reject_above_c = reject_above_c
        self._buf: list[float] = [] if initial_c is None else [initial_c]

    @property
    def ambient_c(self) -> float | None:
        return float(np.median(self._buf)) if self._buf else None

    def observe(self, surface_temp_c: float | None) -> float | None:
        """Return the ambient estimate for this item, then learn from its reading."""
        est = self.ambient_c
        if surface_temp_c is not None and math.isfinite(surface_temp_c):
            if est is None or surface_temp_c - est < self.reject_above_c:
                self._buf.append(float(surface_temp_c))
                if len(self._buf) > self.window:
                    self._buf.pop(0)
        return est
