"""sorter: tell lithium-ion from lead-acid batteries on a recycling conveyor and drive the divert."""

from __future__ import annotations

from typing import Any

from .lanes import Lane

CLASSES: tuple[str, ...] = ("lead_acid", "li_ion", "other")
"""Chemistry families the classifier predicts, in model column order."""

LANES: tuple[Lane, ...] = tuple(Lane)
"""Divert lanes (``lead_acid``, ``li_ion``, ``hazard``, ``manual``: :class:`sorter.lanes.Lane`).
Only ``lead_acid`` leads to the breaker; the others are safe for Li-ion."""

__all__ = ["CLASSES", "LANES", "Lane", "__version__"]


def __getattr__(name: str) -> Any:
    # __version__ on first use (PEP 562): importlib.metadata scans the installed packages, which
    # every spawned worker process would otherwise pay at start-up without ever reading it.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("sorter")
        except PackageNotFoundError:  # running from a source tree that is not installed
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
