"""The running ambient-temperature estimate: state carried from item to item, not a measurement.

:func:`sorter.features.measure.measure_item` takes the estimate as an argument; whoever reads
a log or a line in order (the batch engines' chunk reader, the line controller) keeps one
:class:`AmbientTracker` per log and feeds it every item's surface temperature.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

__all__ = ["AmbientTracker"]


class AmbientTracker:
    """Running estimate of the hall's ambient temperature from the items' own readings.

    Sound batteries sit at ambient, so the running median of recent surface
    temperatures tracks the hall's temperature; an item's thermal excess is measured
    against the estimate *before* it is updated with that item.  Items far above the
    estimate (hot ones) are not fed in, so a run of hot items cannot drag it up.

    Parameters
    ----------
    window : the number of recent accepted readings the median is taken over.
    initial_c : a first reading to start from, if any.
    reject_above_c : readings this much above the estimate (or more) are not fed in.
    """

    def __init__(self, window: int = 64, initial_c: float | None = None, reject_above_c: float = 8.0):
        self.window = window
        self.reject_above_c = reject_above_c
        self._buf: deque[float] = deque([] if initial_c is None else [initial_c], maxlen=window)

    @property
    def ambient_c(self) -> float | None:
        return float(statistics.median(self._buf)) if self._buf else None  # np.median's value, without its overhead

    def observe(self, surface_temp_c: float | None) -> float | None:
        """Return the ambient estimate for this item, then learn from its reading."""
        est = self.ambient_c
        if surface_temp_c is not None and math.isfinite(surface_temp_c):
            if est is None or surface_temp_c - est < self.reject_above_c:
                self._buf.append(float(surface_temp_c))  # the oldest drops out past `window`
        return est
