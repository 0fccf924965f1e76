"""sorter: tell lithium-ion from lead-acid batteries on a recycling conveyor and drive the divert."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .lanes import Lane

try:
    __version__ = version("sorter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

CLASSES: tuple[str, ...] = ("lead_acid", "li_ion", "other")
"""Chemistry families the classifier predicts, in model column order."""

LANES: tuple[Lane, ...] = tuple(Lane)
"""Divert lanes (``lead_acid``, ``li_ion``, ``hazard``, ``manual``: :class:`sorter.lanes.Lane`).
Only ``lead_acid`` leads to the breaker; the others are safe for Li-ion."""

__all__ = ["CLASSES", "LANES", "Lane", "__version__"]
