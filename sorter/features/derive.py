"""The feature arithmetic of each sensor, as plain numpy functions (no scikit-learn).

The transformers of :mod:`sorter.features.transformers` are thin scikit-learn wrappers
around these functions (validation, fitting, feature names); the line and ``sorter score``
call them directly through a model's fast predictor file (:mod:`sorter.fastmodel`), so
scoring does not import scikit-learn.  One function per transformer, the same code on
both paths, so the features are the same bit for bit.

Examples
--------
>>> import numpy as np
>>> from sorter.features.derive import scale_profiler
>>> round(float(scale_profiler(np.array([[20000.0, 260, 173, 225]]))[0, 4]), 2)   # density, kg/L
1.98
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .measure import CAMERA_COLUMNS

LEAD_ACID_DENSITY_KG_L = 2.4  # middle of the 1.8-3.1 kg/L range of lead-acid batteries (reference)
CAMERA_GEOMETRY = CAMERA_COLUMNS[:5] + ("cam_defect_rel",)  # the camera columns the model sees
_CAMERA_GEOMETRY_INDEX = [CAMERA_COLUMNS.index(c) for c in CAMERA_GEOMETRY]
CROSS_SENSOR_INPUTS = (
    "weight_g",
    "length_mm",
    "width_mm",
    "xr_area_mm2",
    "xr_al_eq_mass_g",
    "xr_pb_eq_mass_g",
    "cam_area_mm2",
)


def scale_profiler(X: np.ndarray) -> np.ndarray:
    """``weight_g, length_mm, width_mm, height_mm`` to mass, volume, density and shape features."""
    w, length, width, height = X.T
    with np.errstate(invalid="ignore", divide="ignore"):
        vol_l = length * width * height * 1e-6
        dens = (w / 1000.0) / vol_l
        lead_ratio = (w / 1000.0) / (LEAD_ACID_DENSITY_KG_L * vol_l)
        out = np.column_stack(
            [
                w,
                np.log(np.clip(w, 1e-3, None)),
                vol_l,
                np.log(np.clip(vol_l, 1e-9, None)),
                dens,
                lead_ratio,
                length,
                width,
                height,
                length / width,
                width / height,
                np.isnan(w).astype(float),
                np.isnan(X[:, 1:]).any(axis=1).astype(float),
            ]
        )
    out[~np.isfinite(out)] = np.nan
    return out


def mass_shape(X: np.ndarray) -> np.ndarray:
    """:func:`scale_profiler` without the envelope density (nor the mass against a lead-acid
    battery's, which is the same figure over 2.4 kg/L).

    How tightly a product fills its envelope is a fact of the product family, not of its
    chemistry: Li-ion cells are 2-3 kg/L themselves, and a pack of them reaches the density of
    a stone or a steel part (an e-bike pack of 18650 cells, 3 kg/L, was called "other" when no
    Li-ion item of the training log was that dense).  What the item is made of is told by the
    X-ray per gram (:func:`material_per_gram`); the one thing density tells for certain, that an
    item lighter for its envelope than any lead-acid battery is not one, is the policy's
    density gate (:func:`sorter.policy.envelope_density`).
    """
    return scale_profiler(X)[:, _MASS_SHAPE_INDEX]


_MASS_SHAPE_INDEX = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12]  # scale_profiler's columns but 4 and 5 (densities)
# the cross-sensor inputs, then the aluminium-equivalent areal density's percentiles at each energy
MATERIAL_INPUTS = CROSS_SENSOR_INPUTS + tuple(
    f"xr_al_eq_{e}_{q}" for e in ("low", "high") for q in ("p10", "p50", "p90")
)


def material_per_gram(X: np.ndarray) -> np.ndarray:
    """:data:`MATERIAL_INPUTS` to what the X-ray sees per gram weighed, and footprint agreement.

    :func:`cross_sensor`'s first four columns (aluminium- and lead-equivalent mass per gram, the
    X-ray's and the camera's footprint against the profiler's), without the mass per footprint
    area (it grows with the item's height), and six more: each percentile of the
    aluminium-equivalent areal density, at each energy, times the X-ray footprint, per gram.
    These describe the material, whatever the size of the item: near 1 for plastics, water and
    aluminium, 1.3-1.9 for cells (steel cans, cathode oxides), above 1 at the low energy more
    than at the high one the higher the atomic number.
    """
    w, xa = X[:, 0], X[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        per = X[:, 7:13] * (xa / 100.0 / w)[:, None]
    out = np.column_stack([cross_sensor(X[:, :7])[:, :4], per])
    out[~np.isfinite(out)] = np.nan
    return out


def thermal(X: np.ndarray) -> np.ndarray:
    """``surface_temp_c, ambient_c`` to the excess over ambient and a missing indicator."""
    excess = X[:, 0] - X[:, 1]
    return np.column_stack([excess, np.isnan(excess).astype(float)])


def xray(X: np.ndarray) -> np.ndarray:
    """The X-ray columns (without the two ``*_ok`` flags) and missing / one-channel / no-object indicators."""
    low_ok, high_ok, area = X[:, 0], X[:, 1], X[:, 2]
    missing = np.isnan(low_ok) & np.isnan(high_ok)
    one = ~missing & ((np.nan_to_num(low_ok) + np.nan_to_num(high_ok)) < 2)
    no_obj = ~missing & (np.nan_to_num(area, nan=0.0) < 16.0)
    return np.column_stack([X[:, 2:], missing.astype(float), one.astype(float), no_obj.astype(float)])


def camera(X: np.ndarray) -> np.ndarray:
    """The camera outline's geometry (:data:`CAMERA_GEOMETRY`) and missing / no-object indicators."""
    missing = np.isnan(X).all(axis=1)
    no_obj = ~missing & (np.nan_to_num(X[:, 0], nan=0.0) < 100.0)
    geo = X[:, _CAMERA_GEOMETRY_INDEX]
    return np.column_stack([geo, missing.astype(float), no_obj.astype(float)])


def cross_sensor(X: np.ndarray) -> np.ndarray:
    """:data:`CROSS_SENSOR_INPUTS` to attenuation per gram and footprint agreement."""
    w, length, width, xa, al_eq, pb_eq, ca = X.T
    with np.errstate(invalid="ignore", divide="ignore"):
        foot = length * width
        out = np.column_stack([al_eq / w, pb_eq / w, xa / foot, ca / foot, w / (foot / 100.0)])
    out[~np.isfinite(out)] = np.nan
    return out


FEATURE_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ScaleProfilerFeatures": scale_profiler,
    "MassShapeFeatures": mass_shape,
    "MaterialFeatures": material_per_gram,
    "ThermalFeatures": thermal,
    "XrayFeatures": xray,
    "CameraFeatures": camera,
    "CrossSensorFeatures": cross_sensor,
}
"""The function behind each transformer of :mod:`sorter.features.transformers`, by class name:
the only feature steps a fast predictor file may name."""
