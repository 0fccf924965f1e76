"""Sensor health on the line: alarms for sensors that stop reporting, freeze or saturate.

A sensor that silently reports stuck or saturated values is worse than one that reports
nothing: its items look complete.  :class:`SensorHealth` watches every item in order and
raises an alarm for a sensor within ``window`` items of it going bad:

- **not reporting**: ``window`` items in a row without that sensor's reading;
- **stuck**: ``window`` items in a row with bit-identical readings (a real scale, profiler
  or thermal camera has noise; a real image never repeats exactly);
- **saturated**: ``window`` items in a row at the sensor's rail (an X-ray image all at air
  although the profiler sees an item, an all-black or all-white frame, a scale at its
  capacity, a profiler or thermal reading at its range limit).

While a sensor is in alarm, its readings are removed from the items (the model then sees
them as missing) and the ``lead_acid`` lane is closed (:attr:`SensorHealth.blocks_lead_acid`):
every item goes to a safe lane until the sensor has given ``clear_after`` plausible readings
in a row.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..lanes import Lane
from ..readings import Item

logger = logging.getLogger(__name__)

SENSORS = ("scale", "profiler", "xray", "camera", "thermal")


@dataclass(frozen=True)
class HealthLimits:
    window: int = 5
    clear_after: int = 3
    scale_capacity_g: float = 80_000.0
    profiler_max_mm: float = 1500.0
    thermal_max_c: float = 500.0


@dataclass
class SensorState:
    status: str = "ok"  # ok | not_reporting | stuck | saturated
    since_item: str | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=16))  # (kind, fingerprint)
    good_run: int = 0

    @property
    def alarm(self) -> bool:
        return self.status != "ok"


def _digest(a: np.ndarray) -> bytes:
    """A fingerprint of an image, to tell a frozen frame from a live one.

    CRC-32 of the pixels plus the shape and dtype: it runs on the event loop for
    every item, and CRC-32 is about five times cheaper than a cryptographic hash
    (no adversary here).  Two different frames share a CRC with probability
    2**-32; a false "stuck" alarm needs ``window - 1`` such coincidences in a
    row, and would only close lanes (the safe direction) anyway.
    """
    a = np.ascontiguousarray(a)
    head = f"{a.dtype.str}{a.shape}".encode()
    return head + zlib.crc32(memoryview(a).cast("B")).to_bytes(4, "big")


class SensorHealth:
    """Watches items in line order and keeps an alarm state per sensor.

    Parameters
    ----------
    limits : thresholds and window sizes.
    on_change : called ``(sensor, old_status, new_status, item_id)`` when a state changes
        (the controller logs it and updates its metrics).

    Examples
    --------
    >>> from sorter.readings import Item, ItemRecord
    >>> h = SensorHealth()
    >>> for i in range(5):
    ...     _ = h.check(Item(ItemRecord(str(i), 0.0, weight_g=1234.5)))
    >>> h.states["scale"].status
    'stuck'
    """

    def __init__(
        self, limits: HealthLimits | None = None, on_change: Callable[[str, str, str, str], None] | None = None
    ):
        self.limits = limits or HealthLimits()
        self.on_change = on_change
        self.states = {s: SensorState() for s in SENSORS}

    @property
    def alarms(self) -> dict[str, str]:
        return {s: st.status for s, st in self.states.items() if st.alarm}

    @property
    def blocks_lead_acid(self) -> bool:
        return any(st.alarm for st in self.states.values())

    # ------------------------------------------------------------------ observation

    def _observe(self, item: Item) -> dict[str, tuple[str, bytes | None]]:
        """Per sensor: ("missing" | "saturated" | "ok", fingerprint for stuck detection)."""
        r, lim = item.record, self.limits
        obs: dict[str, tuple[str, bytes | None]] = {}
        if r.weight_g is None:
            obs["scale"] = ("missing", None)
        else:
            obs["scale"] = ("saturated" if r.weight_g >= lim.scale_capacity_g else "ok", repr(r.weight_g).encode())
        dims = (r.length_mm, r.width_mm, r.height_mm)
        if any(d is None for d in dims):
            obs["profiler"] = ("missing", None)
        else:
            sat = any(d >= lim.profiler_max_mm for d in dims)  # type: ignore[operator]
            obs["profiler"] = ("saturated" if sat else "ok", repr(dims).encode())
        if r.surface_temp_c is None:
            obs["thermal"] = ("missing", None)
        else:
            sat = r.surface_temp_c >= lim.thermal_max_c
            obs["thermal"] = ("saturated" if sat else "ok", repr(r.surface_temp_c).encode())
        if item.xray_low is None and item.xray_high is None:
            obs["xray"] = ("missing", None)
        else:
            imgs = [a for a in (item.xray_low, item.xray_high) if a is not None]
            lo = min(int(a.min()) for a in imgs)
            hi = max(int(a.max()) for a in imgs)
            item_present = r.length_mm is not None and r.length_mm > 5
            blind = lo >= 65000 and item_present  # all air although the profiler saw an item
            dark = hi <= 0  # nothing reaches the detector anywhere, not even beside the item
            obs["xray"] = ("saturated" if (blind or dark) else "ok", b"".join(_digest(a) for a in imgs))
        if item.rgb is None:
            obs["camera"] = ("missing", None)
        else:
            rgb = item.rgb
            # Integer sum (exact, no float copy of the frame); the standard deviation only
            # when the mean is at a rail, the only case where it can matter.
            mean = int(rgb.sum(dtype=np.uint64)) / rgb.size if rgb.dtype == np.uint8 and rgb.size else float(rgb.mean())
            sat = (mean < 3 or mean > 252) and float(rgb.std()) < 1.0
            obs["camera"] = ("saturated" if sat else "ok", _digest(item.rgb))
        return obs

    def check(self, item: Item) -> Item:
        """Update the sensors' states with this item; return the item with the readings of
        sensors in alarm removed."""
        obs = self._observe(item)
        w = self.limits.window
        for sensor, (kind, fp) in obs.items():
            st = self.states[sensor]
            st.recent.append((kind, fp))
            last = list(st.recent)[-w:]
            new = st.status
            if len(last) == w and all(k == "missing" for k, _ in last):
                new = "not_reporting"
            elif len(last) == w and all(k == "saturated" for k, _ in last):
                new = "saturated"
            elif len(last) == w and all(k == "ok" for k, _ in last) and len({f for _, f in last}) == 1:
                new = "stuck"
            if st.alarm and new == st.status:
                # clear after a run of plausible, changing readings
                prev = list(st.recent)[-2][1] if len(st.recent) >= 2 else None
                if kind == "ok" and fp != prev:
                    st.good_run += 1
                else:
                    st.good_run = 0
                if st.good_run >= self.limits.clear_after:
                    new = "ok"
            if new != st.status:
                old, st.status = st.status, new
                st.since_item = item.item_id
                st.good_run = 0
                (logger.warning if new != "ok" else logger.info)(
                    "sensor %s: %s -> %s at item %s", sensor, old, new, item.item_id
                )
                if self.on_change is not None:
                    self.on_change(sensor, old, new, item.item_id)
        return self.strip(item)

    def strip(self, item: Item) -> Item:
        """The item without the readings of sensors in alarm (they count as missing)."""
        alarms = self.alarms
        if not alarms:
            return item
        rec = item.record
        changes_rec: dict = {}
        changes_item: dict = {}
        if "scale" in alarms:
            changes_rec["weight_g"] = None
        if "profiler" in alarms:
            changes_rec.update(length_mm=None, width_mm=None, height_mm=None)
        if "thermal" in alarms:
            changes_rec["surface_temp_c"] = None
        if "xray" in alarms:
            changes_item.update(xray_low=None, xray_high=None)
        if "camera" in alarms:
            changes_item["rgb"] = None
        problems = item.problems + tuple(f"sensor alarm: {s} {v}" for s, v in sorted(alarms.items()))
        return replace(item, record=replace(rec, **changes_rec), problems=problems, **changes_item)


def guard_lane(lane: str, reason: str, health: SensorHealth) -> tuple[str, str]:
    """Close the lead_acid lane while any sensor is in alarm."""
    if lane == Lane.LEAD_ACID and health.blocks_lead_acid:
        alarms = ", ".join(f"{s} {v}" for s, v in sorted(health.alarms.items()))
        return Lane.MANUAL, f"sensor alarm ({alarms}): lead_acid closed; {reason}"
    return lane, reason
