"""The sensor bridge: scale, laser profiler, dual-energy X-ray, colour and thermal camera.

Each sensor turns a posed :class:`~sorter.simulate.items.Instance` into what the real
sensor reports, with that sensor's noise and limits.  :class:`LineProfile` holds what
differs between two real lines (tube spectrum, detector noise, pixel pitch, camera
white balance and exposure, belt colour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .geometry import mass_by_material, project_z
from .items import Instance
from .physics import XrayChannels, detector_channels, mu_matrix

U16 = 65535


@dataclass(frozen=True)
class LineProfile:
    """A sensor set-up. Two presets differ the way two real lines do."""

    name: str
    kvp: float
    tube_filter_al_mm: float
    mid_filter_cu_mm: float
    photons_low: float  # photons per pixel in air, low channel (sets counting noise)
    photons_high: float
    electronic_noise: float  # detector read noise, in transmission units (sets the floor)
    xray_mm_per_px: float
    camera_mm_per_px: float
    white_balance: tuple[float, float, float]  # gains R, G, B
    exposure: float
    camera_noise: float  # DN
    belt_rgb: tuple[int, int, int]
    blur_sigma_px: tuple[float, float]  # focus: range of Gaussian blur
    scale_noise_g: float
    scale_rel_noise: float
    profiler_noise_mm: float
    thermal_noise_c: float
    # Knobs for what else differs between real lines; the defaults leave lines a and b as they were.
    front_scint_mm: float = 0.3  # front (low-channel) scintillator thickness
    back_scint_mm: float = 4.0  # back (high-channel) scintillator thickness
    xray_gain: tuple[float, float] = (1.0, 1.0)  # detector gain error per channel (low, high), on T
    xray_offset: tuple[float, float] = (0.0, 0.0)  # detector offset per channel, in transmission units
    belt_speed_m_s: float = 0.0  # 0: no motion blur
    xray_integration_ms: float = 1.0  # X-ray line integration time (motion blur = speed x time)
    camera_exposure_ms: float = 1.0  # camera exposure time (motion blur = speed x time)
    ambient_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  # stray ambient light added, DN per channel
    scale_offset_g: float = 0.0  # scale zero offset
    thermal_offset_c: float = 0.0  # thermal camera offset
    profiler_offset_mm: float = 0.0  # profiler offset on each of length, width, height

    def channels(self) -> XrayChannels:
        return detector_channels(
            self.kvp, self.tube_filter_al_mm, self.front_scint_mm, self.mid_filter_cu_mm, self.back_scint_mm
        )

    def xray_blur_px(self) -> float:
        """Motion blur of the X-ray image along the belt (px): belt speed x integration time / pitch."""
        return self.belt_speed_m_s * self.xray_integration_ms / self.xray_mm_per_px

    def camera_blur_px(self) -> float:
        """Motion blur of the camera image along the belt (px): belt speed x exposure time / pitch."""
        return self.belt_speed_m_s * self.camera_exposure_ms / self.camera_mm_per_px


LINES: dict[str, LineProfile] = {
    # A 160 kV dual-energy sorter, neutral camera, dark grey belt.
    "a": LineProfile(
        name="a",
        kvp=160.0,
        tube_filter_al_mm=2.0,
        mid_filter_cu_mm=0.6,
        photons_low=4.0e4,
        photons_high=2.5e4,
        electronic_noise=2.5e-4,
        xray_mm_per_px=2.0,
        camera_mm_per_px=1.5,
        white_balance=(1.0, 1.0, 1.0),
        exposure=1.0,
        camera_noise=2.0,
        belt_rgb=(58, 60, 62),
        blur_sigma_px=(0.3, 1.2),
        scale_noise_g=2.0,
        scale_rel_noise=0.002,
        profiler_noise_mm=1.0,
        thermal_noise_c=0.4,
    ),
    # An older 140 kV line: harder-filtered tube, noisier detector, finer X-ray pitch,
    # warm white balance, darker exposure, green belt, coarser camera.
    "b": LineProfile(
        name="b",
        kvp=140.0,
        tube_filter_al_mm=3.0,
        mid_filter_cu_mm=1.0,
        photons_low=1.5e4,
        photons_high=1.0e4,
        electronic_noise=6.0e-4,
        xray_mm_per_px=1.6,
        camera_mm_per_px=2.0,
        white_balance=(1.18, 1.0, 0.80),
        exposure=0.78,
        camera_noise=3.5,
        belt_rgb=(45, 75, 50),
        blur_sigma_px=(0.5, 1.8),
        scale_noise_g=5.0,
        scale_rel_noise=0.004,
        profiler_noise_mm=2.0,
        thermal_noise_c=0.8,
    ),
}

# Limits of the knobs (a value outside is refused with its range named).
_RANGES: dict[str, tuple[float, float]] = {
    "kvp": (40.0, 450.0),
    "tube_filter_al_mm": (0.0, 20.0),
    "mid_filter_cu_mm": (0.0, 10.0),
    "photons_low": (10.0, 1e9),
    "photons_high": (10.0, 1e9),
    "electronic_noise": (0.0, 0.1),
    "xray_mm_per_px": (0.5, 10.0),
    "camera_mm_per_px": (0.5, 10.0),
    "white_balance": (0.1, 5.0),
    "exposure": (0.05, 5.0),
    "camera_noise": (0.0, 60.0),
    "belt_rgb": (0, 255),
    "blur_sigma_px": (0.0, 10.0),
    "scale_noise_g": (0.0, 1000.0),
    "scale_rel_noise": (0.0, 0.2),
    "profiler_noise_mm": (0.0, 50.0),
    "thermal_noise_c": (0.0, 20.0),
    "front_scint_mm": (0.01, 5.0),
    "back_scint_mm": (0.1, 20.0),
    "xray_gain": (0.5, 2.0),
    "xray_offset": (-0.1, 0.1),
    "belt_speed_m_s": (0.0, 10.0),
    "xray_integration_ms": (0.0, 50.0),
    "camera_exposure_ms": (0.0, 50.0),
    "ambient_rgb": (-50.0, 120.0),
    "scale_offset_g": (-5000.0, 5000.0),
    "thermal_offset_c": (-30.0, 30.0),
    "profiler_offset_mm": (-50.0, 50.0),
    # line c's own fields
    "tube_filter_cu_mm": (0.0, 10.0),
    "k_line_fraction": (0.0, 0.5),
    "front_csi_mm": (0.01, 5.0),
    "back_csi_mm": (0.1, 20.0),
    "quanta_low": (10.0, 1e9),
    "quanta_high": (10.0, 1e9),
    "read_noise_adu": (0.0, 1000.0),
    "dark_adu": (0.0, 4000.0),
    "air_adu": (100.0, 65535.0),
    "adc_bits": (8, 16),
    "column_gain_sd": (0.0, 0.2),
    "supersample": (1, 4),
    "colour_cast": (0.1, 5.0),
    "sharpen": (0.0, 5.0),
    "jpeg_quality": (10, 100),
    "scale_gain": (0.5, 1.5),
    "thermal_emissivity_assumed": (0.05, 1.0),
    "unknown_rate": (0.0, 1.0),
}


def _coerce(key: str, value: object, default: object, where: str) -> object:
    """``value`` (a number, a sequence, or text like ``"1.05,0.97"``) as the type of ``default``."""
    from ..errors import SimulationError

    def num(v: object) -> float:
        if isinstance(v, bool):
            raise ValueError
        f = float(v)  # type: ignore[arg-type]
        if not math.isfinite(f):
            raise ValueError
        return f

    try:
        if isinstance(default, tuple):
            parts = [p for p in value.split(",")] if isinstance(value, str) else list(value)  # type: ignore[union-attr]
            if len(parts) != len(default):
                raise ValueError
            vals: tuple = tuple(num(p) for p in parts)
            if isinstance(default[0], int):
                vals = tuple(int(round(v)) for v in vals)
        else:
            vals = (num(value),)
    except (TypeError, ValueError):
        shape = f"{len(default)} comma-separated numbers" if isinstance(default, tuple) else "a number"
        raise SimulationError(f"{where}: {key}={value!r} is not {shape} (default {default!r})") from None
    lo, hi = _RANGES.get(key, (-math.inf, math.inf))
    for v in vals:
        if not lo <= v <= hi:
            raise SimulationError(f"{where}: {key}={value!r} is outside its range [{lo:g}, {hi:g}]")
    if isinstance(default, tuple):
        return vals
    return int(round(vals[0])) if isinstance(default, int) and not isinstance(default, bool) else vals[0]


def overridable_keys(profile: object) -> list[str]:
    """Field names of a line profile that ``line_overrides`` / ``--line-param`` may set."""
    from dataclasses import fields

    return [f.name for f in fields(profile) if f.name != "name"]  # type: ignore[arg-type]


def apply_overrides(profile, overrides, where: str = "--line-param"):
    """A copy of ``profile`` (any frozen line-profile dataclass) with ``overrides`` applied.

    Unknown keys and bad values raise :class:`~sorter.errors.SimulationError` naming the
    valid keys or the expected form.  The copy's ``name`` gains ``+key=value`` for each
    override, so caches keyed on the profile never serve the preset's values.
    """
    from dataclasses import replace as _replace

    from ..errors import SimulationError

    if not overrides:
        return profile
    valid = overridable_keys(profile)
    changes: dict[str, object] = {}
    for key, value in dict(overrides).items():
        if key not in valid:
            raise SimulationError(
                f"{where}: unknown line parameter {key!r} for line {profile.name!r}; valid keys: {', '.join(valid)}"
            )
        changes[key] = _coerce(key, value, getattr(profile, key), where)
    suffix = "".join(f"+{k}={_fmt(v)}" for k, v in sorted(changes.items()))
    return _replace(profile, name=profile.name + suffix, **changes)


def _fmt(v: object) -> str:
    if isinstance(v, tuple):
        return ",".join(_fmt(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def motion_blur(img: np.ndarray, px: float) -> np.ndarray:
    """Box blur of ``px`` pixels (fractional ends) along the image's vertical axis, the
    belt's direction of travel."""
    if px <= 1e-3:
        return img
    n = int(math.floor(px))
    k = np.ones(n + 2 if px > n else n, np.float32)
    if px > n:
        k[0] = k[-1] = (px - n) / 2
    k /= k.sum()
    return cv2.filter2D(img, -1, k.reshape(-1, 1), borderType=cv2.BORDER_REPLICATE)


MARGIN_MM = 16.0
_BANK_SIZE = 1 << 22


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of standard normal deviates (float32).

    Drawing millions of fresh Gaussian deviates per item costs more than the rest of
    the simulation; a random window into a large fixed bank gives noise with the same
    per-pixel statistics, deterministic for the item's generator.
    """
    return np.random.default_rng(20261126).standard_normal(_BANK_SIZE, dtype=np.float32)


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of ``shape`` (float32), a window into the noise bank."""
    n = int(np.prod(shape))
    bank = _noise_bank()
    if n >= _BANK_SIZE // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.integers(0, _BANK_SIZE - n))
    return bank[start : start + n].reshape(shape)


@lru_cache(maxsize=512)
def _mu_for(materials: tuple[str, ...], line: LineProfile) -> tuple[np.ndarray, np.ndarray]:
    # keyed on the whole (frozen) profile: an overridden profile never gets the preset's values
    ch = line.channels()
    return mu_matrix(materials, ch.energies_kev), ch.weights.T.astype(np.float32)


@dataclass
class Footprint:
    """The item's outline on the belt in its own posed frame (mm), before rotation."""

    polygon: np.ndarray  # (N, 2) mm, in the posed frame
    size: tuple[float, float, float]  # posed L', W', H'
    angle_deg: float


def outline(inst: Instance, size: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Outline polygon (mm) of the posed footprint, deformed by damage."""
    L, W = size[0], size[1]
    if inst.damage == "swollen":
        # bulging sides: each side bows outwards by a few percent of the other side
        n = 24
        pts = []
        bow = rng.uniform(0.05, 0.12)
        for side in range(4):
            for i in range(n):
                s = i / n
                if side == 0:
                    x, y = s * L, -bow * W * math.sin(math.pi * s)
                elif side == 1:
                    x, y = L + bow * L * 0.5 * math.sin(math.pi * s), s * W
                elif side == 2:
                    x, y = L - s * L, W + bow * W * math.sin(math.pi * s)
                else:
                    x, y = -bow * L * 0.5 * math.sin(math.pi * s), W - s * W
                pts.append((x, y))
        return np.array(pts)
    if inst.damage == "dented":
        # a notch pushed into one long side, and a corner crushed
        d = rng.uniform(0.15, 0.35) * W
        c = rng.uniform(0.3, 0.7) * L
        w = rng.uniform(0.15, 0.3) * L
        k = rng.uniform(0.1, 0.2) * min(L, W)
        return np.array([(k, 0), (c - w / 2, 0), (c, d), (c + w / 2, 0), (L, 0), (L, W), (0, W), (0, k)])
    return np.array([(0, 0), (L, 0), (L, W), (0, W)], dtype=float)


def _rotation(size_px: tuple[float, float], angle_deg: float, margin_px: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Affine matrix rotating a (w, h) image about its centre into a canvas that holds it."""
    w, h = size_px
    a = math.radians(angle_deg)
    cw = abs(w * math.cos(a)) + abs(h * math.sin(a)) + 2 * margin_px
    ch = abs(w * math.sin(a)) + abs(h * math.cos(a)) + 2 * margin_px
    cw_i, ch_i = int(math.ceil(cw)), int(math.ceil(ch))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    m[0, 2] += cw_i / 2 - w / 2
    m[1, 2] += ch_i / 2 - h / 2
    return m, (cw_i, ch_i)


# ---------------------------------------------------------------------------- X-ray


def areal_density(
    inst: Instance, pose: str, angle_deg: float, px_mm: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Areal density maps (g/cm^2) of each material on the belt, and the material names.

    The maps are renormalised so that each material's integral equals its mass
    exactly (pixel sampling and rotation interpolation otherwise bias it by a few percent).
    """
    prims, size = inst.posed(pose)
    masses = mass_by_material(prims)
    materials = tuple(m for m, v in masses.items() if v > 1e-9)
    nx, ny = max(1, int(math.ceil(size[0] / px_mm))), max(1, int(math.ceil(size[1] / px_mm)))
    maps = project_z(prims, materials, nx, ny, px_mm)
    np.clip(maps, 0, None, out=maps)
    if inst.damage == "dented" and rng is not None:
        poly = outline(inst, size, rng) / px_mm
        mask = np.zeros((ny, nx), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        maps *= mask[:, :, None]
    if inst.damage == "swollen" and rng is not None:
        # gas pockets inside the cells: areal density drops in a few blobs
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(0.2, 0.8) * nx, rng.uniform(0.2, 0.8) * ny
            r = rng.uniform(0.08, 0.2) * min(nx, ny) + 1
            yy, xx = np.ogrid[:ny, :nx]
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            maps *= (1 - 0.45 * blob)[:, :, None]
    m, (cw, ch) = _rotation((nx, ny), angle_deg, MARGIN_MM / px_mm)
    rot = np.empty((ch, cw, len(materials)), np.float32)
    for k in range(0, len(materials), 4):  # OpenCV warps up to four channels at once
        part = np.ascontiguousarray(maps[:, :, k : k + 4])
        warped = cv2.warpAffine(part, m, (cw, ch), flags=cv2.INTER_LINEAR, borderValue=0)
        rot[:, :, k : k + 4] = warped.reshape(ch, cw, -1)
    px_area_cm2 = (px_mm / 10) ** 2
    sums = rot.sum(axis=(0, 1), dtype=np.float64) * px_area_cm2
    for k, name in enumerate(materials):
        if sums[k] > 0:
            rot[:, :, k] *= np.float32(masses[name] / sums[k])
    return rot, materials


def render_xray(
    sigma: np.ndarray, materials: tuple[str, ...], line: LineProfile, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Low and high channel images (uint16, 65535 = air) with counting noise and a floor."""
    mu, weights = _mu_for(materials, line)
    h, w, m = sigma.shape
    flat = sigma.reshape(-1, m)
    occupied = np.flatnonzero(flat.any(axis=1))
    t = np.ones((2, h * w), np.float32)
    if occupied.size:
        optical = flat[occupied] @ mu.astype(np.float32)
        np.negative(optical, out=optical)
        np.exp(optical, out=optical)
        t[:, occupied] = (optical @ weights).T
    out = []
    blur = line.xray_blur_px()
    for c, n0 in enumerate((line.photons_low, line.photons_high)):
        tc = t[c].reshape(h, w)
        if blur > 1e-3:
            tc = motion_blur(tc, blur)
        # Poisson counting noise (Gaussian approximation) plus detector read noise
        sd = np.sqrt(tc * np.float32(1 / n0) + np.float32(line.electronic_noise**2))
        meas = tc + gaussian_noise(rng, (h, w)) * sd
        if line.xray_gain[c] != 1.0 or line.xray_offset[c] != 0.0:
            meas = meas * np.float32(line.xray_gain[c]) + np.float32(line.xray_offset[c])
        np.clip(meas, 0.0, 1.0, out=meas)
        out.append(np.rint(meas * U16).astype(np.uint16))
    return out[0], out[1]


# ---------------------------------------------------------------------------- camera


def render_rgb(
    inst: Instance,
    pose: str,
    size: tuple[float, float, float],
    angle_deg: float,
    poly_mm: np.ndarray,
    line: LineProfile,
    rng: np.random.Generator,
) -> np.ndarray:
    """Top view (RGB uint8) of the item on the belt."""
    px = line.camera_mm_per_px
    L, W = size[0], size[1]
    nx, ny = max(2, int(math.ceil(L / px))), max(2, int(math.ceil(W / px)))
    app = inst.appearance
    img = np.empty((ny, nx, 3), np.uint8)  # drawn in 8 bits (OpenCV's text needs it), lit in float
    img[:] = app.case_rgb
    top_visible = pose == "upright"
    s = 1.0 / px
    if app.accent_rgb is not None and pose != "end":
        # a two-tone housing: accent band along one end
        band = int(nx * rng.uniform(0.2, 0.45))
        img[:, :band] = app.accent_rgb
    if app.kind in ("lead_acid", "dropin", "nimh") and top_visible:
        if app.posts:
            r = max(2, int(min(W * 0.07, 10) * s))
            cy = int(ny * 0.22)
            for cx, rr in ((int(nx * 0.1), r), (int(nx * 0.9), max(2, int(r * 0.85)))):
                cv2.circle(img, (cx, cy), rr, app.post_rgb, -1)
                cv2.circle(img, (cx, cy), max(1, rr // 3), tuple(int(v * 0.7) for v in app.post_rgb), -1)
        if app.vents == "caps":
            n_caps = 6 if L > 120 else 3
            for i in range(n_caps):
                cx = int(nx * (0.2 + 0.6 * i / max(1, n_caps - 1)))
                cv2.circle(img, (cx, int(ny * 0.55)), max(2, int(6 * s)), tuple(int(v * 0.6) for v in app.case_rgb), -1)
        elif app.vents == "eye":
            cv2.circle(img, (int(nx * 0.5), int(ny * 0.3)), max(2, int(8 * s)), (30, 150, 60), -1)
        elif app.vents == "flat":
            cv2.rectangle(
                img,
                (int(nx * 0.15), int(ny * 0.45)),
                (int(nx * 0.85), int(ny * 0.6)),
                tuple(int(v * 0.85) for v in app.case_rgb),
                -1,
            )
    if app.label is not None and rng.random() < 0.85:  # labels face up only some of the time
        x0, y0 = int(nx * rng.uniform(0.2, 0.35)), int(ny * rng.uniform(0.6, 0.7))
        x1, y1 = int(nx * rng.uniform(0.65, 0.8)), int(ny * rng.uniform(0.85, 0.95))
        if x1 - x0 > 4 and y1 - y0 > 3:
            cv2.rectangle(img, (x0, y0), (x1, y1), app.label_rgb, -1)
            ink = (20, 20, 20) if sum(app.label_rgb) > 300 else (235, 235, 235)
            fs = max(0.2, (y1 - y0) / 40)
            text = {"pb_bin": "Pb", "li_text": "Li-ion", "brand": "POWER", "warning": "!"}[app.label]
            if app.label == "li_text" and inst.chemistry == "li_ion_lfp":
                text = "LiFePO4"
            cv2.putText(img, text, (x0 + 2, y1 - 3), cv2.FONT_HERSHEY_SIMPLEX, fs, ink, 1, cv2.LINE_AA)
            if app.label == "pb_bin":  # crossed-out wheelie bin
                bx = x1 - (y1 - y0)
                cv2.line(img, (bx, y0 + 1), (x1 - 1, y1 - 1), ink, 1)
                cv2.line(img, (bx, y1 - 1), (x1 - 1, y0 + 1), ink, 1)
    # wear and dirt
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 6))):
            c = (int(rng.integers(nx)), int(rng.integers(ny)))
            cv2.circle(img, c, int(rng.integers(1, max(2, nx // 8))), (90, 80, 65), -1)
    img = img.astype(np.float32)
    # cylinders and bottles: shading across the width
    if app.shape == "cylinder" and pose != "end":
        yy = (np.arange(ny) + 0.5) / ny * 2 - 1
        shade = 0.55 + 0.45 * np.sqrt(np.clip(1 - yy**2, 0, 1))
        img *= shade[:, None, None]
    # shape mask from the outline, rotate onto the belt
    mask = np.zeros((ny, nx), np.float32)
    cv2.fillPoly(mask, [np.round(poly_mm * s).astype(np.int32)], 1.0)
    pad = int(math.ceil(0.15 * max(nx, ny))) + 2
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    mask = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    cv2.fillPoly(mask, [np.round(poly_mm * s + pad).astype(np.int32)], 1.0)
    m, (cw, ch) = _rotation((nx + 2 * pad, ny + 2 * pad), angle_deg, MARGIN_MM / px)
    img = cv2.warpAffine(img, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(mask, m, (cw, ch), flags=cv2.INTER_LINEAR, borderValue=0)
    # the belt: its colour with texture, darkened by the item's shadow
    shadow = cv2.GaussianBlur(mask, (0, 0), 2.5)
    shade = 1 - 0.35 * np.roll(shadow, (2, 2), axis=(0, 1))
    texture = gaussian_noise(rng, (ch, cw)) * np.float32(4.0)
    belt = cv2.merge([(texture + np.float32(c)) * shade for c in line.belt_rgb])
    out = cv2.blendLinear(img, belt, mask, 1 - mask)  # item over belt, anti-aliased edge
    # illumination: vignetting, a specular highlight on glossy items, exposure, white balance
    xs = np.arange(cw, dtype=np.float32)
    ys = np.arange(ch, dtype=np.float32)
    # vignetting (separable), exposure and white balance in one multiply
    gain = line.exposure * rng.uniform(0.9, 1.1)
    vign = np.outer(1 - 0.15 * ((ys - ch / 2) / ch) ** 2, 1 - 0.15 * ((xs - cw / 2) / cw) ** 2)
    if app.gloss > 0.2:  # a specular highlight (separable Gaussian) on glossy items
        hx, hy = rng.uniform(0.3, 0.7) * cw, rng.uniform(0.3, 0.7) * ch
        sd2 = 2 * (0.12 * max(cw, ch)) ** 2
        hl = np.outer(np.exp(-((ys - hy) ** 2) / sd2), np.exp(-((xs - hx) ** 2) / sd2))
        out += (60 * app.gloss * hl * mask)[:, :, None]
    out *= cv2.merge([vign * np.float32(gain * wb) for wb in line.white_balance])
    if any(line.ambient_rgb):
        out += np.array(line.ambient_rgb, np.float32)
    sig = rng.uniform(*line.blur_sigma_px)
    out = cv2.GaussianBlur(out, (0, 0), sig)
    out = motion_blur(out, line.camera_blur_px())
    out += gaussian_noise(rng, out.shape) * np.float32(line.camera_noise)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


# ---------------------------------------------------------------------------- scalar sensors


def read_scale(mass_g: float, line: LineProfile, rng: np.random.Generator) -> float:
    return float(
        round(mass_g + line.scale_offset_g + rng.normal(0, line.scale_noise_g + line.scale_rel_noise * mass_g), 1)
    )


def read_profiler(
    poly_mm: np.ndarray, height_mm: float, angle_deg: float, line: LineProfile, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Sides of the minimum-area rectangle around the footprint and the maximum height."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (poly_mm @ rot.T).astype(np.float32)
    (_, _), (w, h), _ = cv2.minAreaRect(pts)
    length, width = max(w, h), min(w, h)
    n, off = line.profiler_noise_mm, line.profiler_offset_mm
    length, width = length + off + rng.normal(0, n), width + off + rng.normal(0, n)
    height = height_mm + off + rng.normal(0, n)
    length, width = max(length, width), min(length, width)
    return (round(max(length, 1.0), 1), round(max(width, 1.0), 1), round(max(height, 1.0), 1))


def read_thermal(inst: Instance, ambient_c: float, line: LineProfile, rng: np.random.Generator) -> float:
    """Hottest surface temperature: ambient plus the item's own heat, seen through its emissivity.

    A low-emissivity surface (bare metal) reflects its surroundings and reads close to the
    reflected ambient whatever its own temperature; the camera assumes emissivity 0.95.
    """
    t_item = ambient_c + inst.heat_c + rng.normal(0, 0.8)  # storage lag: items are not all at ambient
    # radiometric mix (linearised): reading = eps*T_item + (1-eps)*T_reflected
    reading = inst.emissivity * t_item + (1 - inst.emissivity) * (ambient_c - 2.0)
    return float(round(reading + line.thermal_offset_c + rng.normal(0, line.thermal_noise_c), 2))
