"""scikit-learn transformers from raw measurements to model features, one per sensor.

Each transformer takes the raw measurement columns of its sensor (see
:mod:`sorter.features.measure`), derives physically meaningful features and adds
explicit missing-reading indicators instead of failing: a NaN input becomes a NaN
feature (the gradient-boosted model handles NaN natively) plus an indicator column.
They learn nothing in ``fit`` beyond the input width, so they are the same in training,
batch scoring and on the line.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.utils.validation import check_is_fitted, validate_data

from . import derive
from .derive import LEAD_ACID_DENSITY_KG_L  # noqa: F401 - importable from here, as before
from .measure import CAMERA_COLUMNS, RAW_COLUMNS, SCALE_COLUMNS, THERMAL_COLUMNS, XRAY_COLUMNS


class _StatelessTransformer(TransformerMixin, BaseEstimator):
    """Common plumbing: validation, width checks, feature names."""

    n_inputs: int | None = None  # fixed input width, or None for any

    def fit(self, X, y=None):
        X = validate_data(self, X, reset=True, ensure_all_finite="allow-nan", dtype=np.float64)
        if self.n_inputs is not None and X.shape[1] != self.n_inputs:
            raise ValueError(
                f"{type(self).__name__} expects {self.n_inputs} columns {self._input_names()}, got {X.shape[1]}; "
                "pass the raw measurement columns from sorter.features.measure"
            )
        return self

    def transform(self, X):
        check_is_fitted(self, "n_features_in_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return self._transform(X)

    def _input_names(self) -> tuple[str, ...]:
        return ()

    def _output_names(self) -> list[str]:
        raise NotImplementedError

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "n_features_in_")
        return np.asarray(self._output_names(), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.requires_fit = True
        return tags


class ScaleProfilerFeatures(_StatelessTransformer):
    """Mass and shape from the scale and the laser profiler.

    Input columns: ``weight_g, length_mm, width_mm, height_mm``. Outputs the mass, the
    envelope volume, the apparent density, the mass against the mass a lead-acid battery
    of that envelope would have, aspect ratios, and missing indicators.

    Examples
    --------
    >>> import numpy as np
    >>> from sorter.features.transformers import ScaleProfilerFeatures
    >>> t = ScaleProfilerFeatures().fit(np.array([[20000.0, 260, 173, 225]]))
    >>> out = t.transform(np.array([[20000.0, 260, 173, 225]]))
    >>> round(float(out[0, 4]), 2)   # apparent density, kg/L
    1.98
    """

    n_inputs = 4

    def _input_names(self):
        return SCALE_COLUMNS

    def _output_names(self):
        return [
            "weight_g",
            "log_weight",
            "volume_l",
            "log_volume",
            "density_kg_l",
            "mass_vs_lead_acid",
            "length_mm",
            "width_mm",
            "height_mm",
            "aspect_length_width",
            "aspect_width_height",
            "weight_missing",
            "dims_missing",
        ]

    def _transform(self, X):
        return derive.scale_profiler(X)


class MassShapeFeatures(ScaleProfilerFeatures):
    """Mass and shape as :class:`ScaleProfilerFeatures`, without the envelope density
    (:func:`sorter.features.derive.mass_shape` says why: it does not carry over between product
    families).  The feature step of models trained with ``sorter train --features material``
    (:func:`make_feature_transformer`).

    Examples
    --------
    >>> import numpy as np
    >>> from sorter.features.transformers import MassShapeFeatures
    >>> t = MassShapeFeatures().fit(np.array([[3500.0, 344, 90, 38]]))
    >>> "density_kg_l" in t.get_feature_names_out()
    False
    """

    def _output_names(self):
        return [n for n in super()._output_names() if n not in ("density_kg_l", "mass_vs_lead_acid")]

    def _transform(self, X):
        return derive.mass_shape(X)


class ThermalFeatures(_StatelessTransformer):
    """Excess of the hottest surface temperature over the hall's running ambient.

    Input columns: ``surface_temp_c, ambient_c``.
    """

    n_inputs = 2

    def _input_names(self):
        return THERMAL_COLUMNS

    def _output_names(self):
        return ["thermal_excess_c", "thermal_missing"]

    def _transform(self, X):
        return derive.thermal(X)


class XrayFeatures(_StatelessTransformer):
    """Dual-energy X-ray features: opacity, attenuation, the (ln T_high, R) plane, structure.

    Input: the columns of :data:`sorter.features.measure.XRAY_COLUMNS`. Adds indicators for
    a missing image, a single channel, and an image in which no object was found.
    """

    n_inputs = len(XRAY_COLUMNS)

    def _input_names(self):
        return XRAY_COLUMNS

    def _output_names(self):
        return [*XRAY_COLUMNS[2:], "xray_missing", "xray_one_channel", "xray_no_object"]

    def _transform(self, X):
        return derive.xray(X)


class CameraFeatures(_StatelessTransformer):
    """Colour-camera features: the outline's size and shape (mm, ratios), and indicators.

    Input: the columns of :data:`sorter.features.measure.CAMERA_COLUMNS`. Only the geometry
    reaches the model: colours, markings and edge texture are how our simulator draws
    products, and they did not carry to another line's camera (issue 13: a model leaning on
    them put Li-ion packs into lead_acid on a line it was not trained on); the outline is
    physics. The appearance columns are still measured, for reports and the operator station.
    """

    n_inputs = len(CAMERA_COLUMNS)
    GEOMETRY = derive.CAMERA_GEOMETRY

    def _input_names(self):
        return CAMERA_COLUMNS

    def _output_names(self):
        return [*self.GEOMETRY, "camera_missing", "camera_no_object"]

    def _transform(self, X):
        return derive.camera(X)


class CrossSensorFeatures(_StatelessTransformer):
    """Agreement between sensors: X-ray-equivalent mass per gram weighed, footprints compared.

    Input columns: ``weight_g, length_mm, width_mm, xr_area_mm2, xr_al_eq_mass_g,
    xr_pb_eq_mass_g, cam_area_mm2``. The aluminium-equivalent mass the X-ray sees over the
    mass the scale weighs is the item's mean attenuation per gram relative to aluminium's: far
    above 1 for lead (until its X-ray saturates), near 1 for plastics, water and aluminium,
    2-4 for steel and cathode materials. The lead-equivalent mass per gram is the share of
    the item that the two-material decomposition finds lead-like. A footprint the X-ray sees
    much smaller than the profiler's is a sign of a hollow or partly transparent item.
    """

    n_inputs = 7
    INPUTS = derive.CROSS_SENSOR_INPUTS

    def _input_names(self):
        return self.INPUTS

    def _output_names(self):
        return [
            "al_eq_mass_per_gram",
            "pb_eq_mass_per_gram",
            "xray_vs_profiler_area",
            "camera_vs_profiler_area",
            "areal_density_g_cm2",
        ]

    def _transform(self, X):
        return derive.cross_sensor(X)


class MaterialFeatures(_StatelessTransformer):
    """What the X-ray sees per gram weighed (:func:`sorter.features.derive.material_per_gram`).

    Input columns: :data:`sorter.features.derive.MATERIAL_INPUTS`. The agreement columns of
    :class:`CrossSensorFeatures` without its mass per footprint area, and the
    aluminium-equivalent areal density's percentiles at each energy times the X-ray footprint,
    per gram: quantities of the material, not of the item's size, so they carry over to product
    families the training log did not have.  The feature step of models trained with
    ``sorter train --features material``.

    Examples
    --------
    >>> import numpy as np
    >>> from sorter.features.transformers import MaterialFeatures
    >>> x = np.array([[1000.0, 200, 100, 20000, 1400, 10, 20000, 5, 6, 8, 4, 5, 7]])
    >>> out = MaterialFeatures().fit(x).transform(x)
    >>> round(float(out[0, 0]), 2), round(float(out[0, 8]), 2)   # al-eq mass per gram; high p50 per gram
    (1.4, 1.0)
    """

    n_inputs = len(derive.MATERIAL_INPUTS)
    INPUTS = derive.MATERIAL_INPUTS

    def _input_names(self):
        return self.INPUTS

    def _output_names(self):
        return [
            "al_eq_mass_per_gram",
            "pb_eq_mass_per_gram",
            "xray_vs_profiler_area",
            "camera_vs_profiler_area",
            *(f"al_eq_{e}_{q}_per_gram" for e in ("low", "high") for q in ("p10", "p50", "p90")),
        ]

    def _transform(self, X):
        return derive.material_per_gram(X)


def _idx(names) -> list[int]:
    return [RAW_COLUMNS.index(n) for n in names]


FEATURE_SETS = ("envelope", "material")
"""The feature steps :func:`make_feature_transformer` can build (``sorter train --features``)."""


def make_feature_transformer(features: str = "envelope") -> ColumnTransformer:
    """The full feature step: raw measurement matrix (``RAW_COLUMNS``) to model features.

    ``features``: ``"envelope"`` (the default) gives the classifier the envelope density and the
    mass per footprint area (:class:`ScaleProfilerFeatures`, :class:`CrossSensorFeatures`);
    ``"material"`` leaves both out and adds what the X-ray sees per gram
    (:class:`MassShapeFeatures`, :class:`MaterialFeatures`): it carries over to product families
    the training logs lack, at a cost in lead-acid yield on some lines (``docs/performance.md``,
    section *Features that carry over between product families*).
    """
    if features not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {features!r}; choose one of {', '.join(FEATURE_SETS)}")
    material = features == "material"
    scale = MassShapeFeatures() if material else ScaleProfilerFeatures()
    cross = MaterialFeatures() if material else CrossSensorFeatures()
    return ColumnTransformer(
        [
            ("scale", scale, _idx(SCALE_COLUMNS)),
            ("thermal", ThermalFeatures(), _idx(THERMAL_COLUMNS)),
            ("xray", XrayFeatures(), _idx(XRAY_COLUMNS)),
            ("camera", CameraFeatures(), _idx(CAMERA_COLUMNS)),
            ("cross", cross, _idx(type(cross).INPUTS)),
        ],
        remainder="drop",
        verbose_feature_names_out=True,
    )


SENSOR_GROUPS: dict[str, tuple[str, ...]] = {
    "scale": ("weight_g",),
    "profiler": ("length_mm", "width_mm", "height_mm"),
    "xray": XRAY_COLUMNS,
    "camera": CAMERA_COLUMNS,
    "thermal": ("surface_temp_c",),
}
"""Raw columns that go missing together when a sensor drops out."""


def mask_sensor(raw: np.ndarray, sensor: str) -> np.ndarray:
    """A copy of a raw matrix with one sensor's readings removed (for evaluation)."""
    out = np.array(raw, dtype=float, copy=True)
    out[:, _idx(SENSOR_GROUPS[sensor])] = np.nan
    return out
