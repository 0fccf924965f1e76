"""Named line shifts: ready-made ``SimConfig`` settings for what differs between real lines.

Each shift is a line and the overrides that move it away from the line a model was trained
on (line a by default), one kind of difference at a time, then all of them together, and
line c, which is rendered by a route of its own::

    from sorter.simulate import SimConfig
    from sorter.simulate.shifts import SHIFTS, shifted_config
    cfg = shifted_config("detector", items=4000, seed=7)   # a SimConfig

The values stay inside what real dual-energy sorters show: tube voltages of 120-160 kV,
detector gain errors of a few percent, pixel pitches of 1-2.5 mm, belt speeds of 2-4 m/s.
"""

from __future__ import annotations

from typing import Any

from .run import SimConfig

SHIFTS: dict[str, dict[str, Any]] = {
    # another tube and filtration: the channels' energies and the dual-energy ratios move
    "spectrum": {"line": "a", "line_overrides": {"kvp": 130, "tube_filter_al_mm": 3.5, "mid_filter_cu_mm": 1.0}},
    # detector gain and offset errors, fewer photons, more read noise
    "detector": {
        "line": "a",
        "line_overrides": {
            "xray_gain": (1.04, 0.96),
            "xray_offset": (0.002, -0.002),
            "photons_low": 8000,
            "photons_high": 5000,
            "electronic_noise": 0.001,
        },
    },
    # coarser X-ray pixels, finer camera pixels
    "pitch": {"line": "a", "line_overrides": {"xray_mm_per_px": 2.5, "camera_mm_per_px": 1.2}},
    # lighting: a cool white balance, brighter exposure, stray warm light, a red belt
    "camera": {
        "line": "a",
        "line_overrides": {
            "white_balance": (0.85, 1.0, 1.2),
            "exposure": 1.25,
            "ambient_rgb": (15, 12, 8),
            "belt_rgb": (120, 45, 40),
        },
    },
    # a fast belt: motion blur along it in both imagers
    "belt": {
        "line": "a",
        "line_overrides": {"belt_speed_m_s": 3.0, "xray_integration_ms": 1.5, "camera_exposure_ms": 2.0},
    },
    # sensor offsets: a scale that reads high, a warm thermal camera, a profiler that reads large
    "offsets": {
        "line": "a",
        "line_overrides": {"scale_offset_g": 60, "thermal_offset_c": 2.5, "profiler_offset_mm": 3.0},
    },
    # everything at once, on top of line b
    "all": {
        "line": "b",
        "line_overrides": {
            "kvp": 125,
            "tube_filter_al_mm": 3.5,
            "xray_gain": (1.04, 0.96),
            "xray_offset": (0.002, -0.002),
            "xray_mm_per_px": 2.5,
            "camera_mm_per_px": 1.2,
            "white_balance": (0.85, 1.0, 1.2),
            "exposure": 1.2,
            "ambient_rgb": (15, 12, 8),
            "belt_speed_m_s": 3.0,
            "xray_integration_ms": 1.5,
            "camera_exposure_ms": 2.0,
            "scale_offset_g": 60,
            "thermal_offset_c": 2.5,
            "profiler_offset_mm": 3.0,
        },
    },
    # another recorder altogether: its own projection, spectrum, detector, camera, sensors and products
    "line_c": {"line": "c"},
}


def shifted_config(name: str, **kwargs: Any) -> SimConfig:
    """The :class:`SimConfig` of shift ``name`` (a key of :data:`SHIFTS`); ``kwargs`` set the
    other fields (items, seed, mix, faults, exclude_families, ...)."""
    from ..errors import SimulationError

    if name not in SHIFTS:
        raise SimulationError(f"unknown shift {name!r}; choose one of {', '.join(SHIFTS)}")
    spec = dict(SHIFTS[name])
    spec.update(kwargs)
    return SimConfig(**spec)


__all__ = ["SHIFTS", "shifted_config"]
