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


# ---------------------------------------------------------------------------- X-ray


def _object_mask(t_low: np.ndarray | None, t_high: np.ndarray | None) -> np.ndarray:
    ref = t_low if t_low is not None else t_high
    assert ref is not None
    smooth = cv2.blur(ref.astype(np.float32), (3, 3))
    thr = 0.97 if t_low is not None else 0.98
    mask = (smooth < thr).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
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
    spec = np.abs(np.fft.rfft(p * np.hanning(n))) ** 2
    freqs = np.fft.rfftfreq(n, d=mm_per_px)  # cycles per mm
    band = (freqs >= 1 / 90.0) & (freqs <= 1 / 6.0)
    total = spec[1:].sum()
    if not band.any() or total <= 0:
        return math.nan, 0.0
    k = np.flatnonzero(band)[int(np.argmax(spec[band]))]
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
        out[6:9] = np.percentile(att_low, (10, 50, 90))
    if att_high is not None:
        out[9:12] = np.percentile(att_high, (10, 50, 90))
        out[_X['xr_att_integral_cm2']] = float(att_high.sum()) * (px / 10) ** 2
    if att_low is not None and att_high is not None:
        th = t_high[mask]  # type: ignore[index]
        meas = (th > 0.005) & (th < 0.9) & (t_low[mask] > 1e-4)  # type: ignore[index]
        out[12] = float(meas.mean())
        hist = np.zeros((3, 4))
        if meas.sum() >= 3:
            r = att_low[meas] / att_high[meas]
            out[13:16] = np.percentile(r, (25, 50, 75))
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
    ys, xs = np.nonzero(amask)
    if ys.size >= 4:
        crop = aligned[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        cm = amask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)
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
            out[_X["xr_void_frac"]] = float(np.mean(smooth < 0.7 * np.median(smooth)))
        else:
            out[_X["xr_void_frac"]] = 0.0
        # dense spots (BMS components, terminals): small bright features over a smooth background
        k = max(3, int(round(8 / px)) | 1)
        tophat = cv2.morphologyEx(crop, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        spots = ((tophat > 0.6) & interior).astype(np.uint8)
        out[_X['xr_dense_spots']] = float(cv2.connectedComponents(spots)[0] - 1)
    return out


# ---------------------------------------------------------------------------- camera


def _belt_colour(rgb: np.ndarray) -> np.ndarray:
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def measure_camera(rgb: np.ndarray | None, meta: LogMeta) -> np.ndarray:
    """Raw colour-camera measurements (see :data:`CAMERA_COLUMNS`). ``rgb`` is RGB uint8."""
    out = _nan(len(CAMERA_COLUMNS))
    if rgb is None or rgb.ndim != 3 or rgb.shape[0] < 8 or rgb.shape[1] < 8:
        return out
    px = meta.camera_mm_per_px
    belt = _belt_colour(rgb)
    diff = rgb.astype(np.float32) - belt.astype(np.float32)
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    dist = cv2.GaussianBlur(dist, (5, 5), 0)
    # the belt's own texture sets the threshold: a few times its spread, at least 18 DN
    border = np.concatenate([dist[0], dist[-1], dist[:, 0], dist[:, -1]])
    thr = max(18.0, float(np.percentile(border, 95)) * 2.5)
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
    obj = np.zeros_like(mask)
    cv2.drawContours(obj, [c], -1, 1, -1)
    objb = obj.astype(bool)
    _, long_px, short_px, rect, solid, dent = outline_shape(c)
    out[0] = area * px * px
    out[1], out[2] = long_px * px, short_px * px
    out[3], out[4] = rect, solid
    out[24] = dent
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[objb].astype(np.float32)
    hue = hsv[:, 0] * (2 * np.pi / 180.0)
    sat, val = hsv[:, 1], hsv[:, 2]
    wgt = sat / 255.0
    sw = wgt.sum()
    out[5] = float((np.cos(hue) * wgt).sum() / sw) if sw > 0 else 0.0
    out[6] = float((np.sin(hue) * wgt).sum() / sw) if sw > 0 else 0.0
    out[7], out[8] = float(sat.mean()), float(sat.std())
    out[9], out[10] = float(val.mean()), float(val.std())
    out[11] = float(np.mean(val < 60))
    colourful = (sat > 100) & (val > 70)
    out[12] = float(colourful.mean())
    light_grey = (sat < 40) & (val > 120) & (val < 215)
    out[13] = float(light_grey.mean())
    out[14] = float(np.mean((sat < 40) & (val >= 215)))
    if colourful.any():
        bins = np.minimum((hsv[colourful, 0] / 30).astype(int), 5)
        out[15:21] = np.bincount(bins, minlength=6)[:6] / colourful.size
    else:
        out[15:21] = 0.0
    # terminal posts: small round light-grey blobs inside the item
    grey_img = np.zeros_like(mask)
    grey_img[objb] = light_grey.astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(grey_img, connectivity=8)
    r_min, r_max = 3.0 / px, 14.0 / px
    blobs = 0
    for i in range(1, n):
        a = stats[i, cv2.CC_STAT_AREA]
        bw, bh = stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]
        if math.pi * r_min**2 <= a <= math.pi * r_max**2 and 0.6 <= bw / max(bh, 1) <= 1.6 and a >= 0.6 * bw * bh:
            blobs += 1
    out[21] = float(blobs)
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
