"""Features: raw measurements per sensor (OpenCV, numpy) and scikit-learn transformers.

The transformers are imported on first use (PEP 562): a scoring worker only measures, and
importing scikit-learn would add about a second and 90 MB to every worker it starts.
"""

from __future__ import annotations

import importlib
from typing import Any

from .ambient import AmbientTracker
from .measure import RAW_COLUMNS, measure_item

_TRANSFORMERS = (
    "CameraFeatures",
    "CrossSensorFeatures",
    "MassShapeFeatures",
    "MaterialFeatures",
    "ScaleProfilerFeatures",
    "ThermalFeatures",
    "XrayFeatures",
    "make_feature_transformer",
    "mask_sensor",
)

__all__ = ["RAW_COLUMNS", "AmbientTracker", "measure_item", *_TRANSFORMERS]


def __getattr__(name: str) -> Any:
    if name in _TRANSFORMERS:
        return getattr(importlib.import_module(".transformers", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
