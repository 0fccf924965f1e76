"""Features: raw measurements per sensor (OpenCV, numpy) and scikit-learn transformers."""

from .measure import RAW_COLUMNS, AmbientTracker, measure_item
from .transformers import (
    CameraFeatures,
    CrossSensorFeatures,
    ScaleProfilerFeatures,
    ThermalFeatures,
    XrayFeatures,
    make_feature_transformer,
    mask_sensor,
)

__all__ = [
    "RAW_COLUMNS",
    "AmbientTracker",
    "CameraFeatures",
    "CrossSensorFeatures",
    "ScaleProfilerFeatures",
    "ThermalFeatures",
    "XrayFeatures",
    "make_feature_transformer",
    "mask_sensor",
    "measure_item",
]
