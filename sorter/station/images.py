"""Images of an item for a browser: X-ray energies in false colour, the camera image.

Images are read through :meth:`sorter.station.linedata.LineLog.image_path`, which refuses
any path leaving the line's log directory, decoded with the log format's checks
(:func:`sorter.logformat.load_png`: header checked before decoding, size limits) and
re-encoded as 8-bit PNGs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from sorter.errors import ImageError
from sorter.logformat import load_png
from sorter.readings import ItemRecord

from .linedata import LineLog

__all__ = ["ImageCache", "render_image", "render_material", "render_rgb", "render_xray"]


def _attenuation(img: np.ndarray) -> np.ndarray:
    """-ln(transmission): 0 for air, larger for more material."""
    return -np.log(np.maximum(img.astype(np.float32), 1.0) / 65535.0)


def _png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ImageError("PNG encoding failed")
    return buf.tobytes()


def render_xray(img: np.ndarray, scale: float | None = None) -> bytes:
    """One X-ray energy in false colour (inferno: dark = air, bright = dense) as PNG bytes."""
    a = _attenuation(img)
    top = scale if scale else max(float(np.percentile(a, 99.5)), 0.3)
    g = np.clip(a / top * 255.0, 0, 255).astype(np.uint8)
    return _png(cv2.applyColorMap(g, cv2.COLORMAP_INFERNO))


def render_material(low: np.ndarray, high: np.ndarray) -> bytes:
    """Both energies in one false-colour picture, as baggage scanners show them.

    Hue from the low/high attenuation ratio (which grows with atomic number: orange
    for light, organic material, green for mixed, blue for metals such as lead),
    brightness from the amount of material; air is white.
    """
    al, ah = _attenuation(low), _attenuation(high)
    ratio = np.where(ah > 0.02, al / np.maximum(ah, 1e-6), 1.0)
    # ratio ~1.0-1.3: organic/light; ~1.3-1.7: mixed; above: heavy metal
    t = np.clip((ratio - 1.0) / 0.9, 0.0, 1.0)
    hue = (15 + t * 105).astype(np.uint8)  # OpenCV hue 0..180: 15 orange -> 60 green -> 120 blue
    amount = np.clip(ah / max(float(np.percentile(ah, 99.5)), 0.3), 0.0, 1.0)
    sat = (amount * 255).astype(np.uint8)
    val = (255 - amount * 170).astype(np.uint8)
    hsv = np.dstack([hue, sat, val])
    return _png(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def render_rgb(img: np.ndarray) -> bytes:
    return _png(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


class ImageCache:
    """Rendered images by (item id, kind), least recently used first out."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._data: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            v = self._data.get(key)
            if v is not None:
                self._data.move_to_end(key)
            return v

    def put(self, key: tuple[str, str], value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


def render_image(log: LineLog, record: ItemRecord, kind: str) -> bytes:
    """PNG bytes of ``kind`` (``xray_low``, ``xray_high``, ``material``, ``rgb``) for a record.

    Raises ImageError (UnsafePathError for a path leaving the log) when it cannot be shown.
    """
    if kind == "material":
        low = load_png(log.image_path(record, "xray_low"), kind="xray")
        high = load_png(log.image_path(record, "xray_high"), kind="xray")
        if low.shape != high.shape:
            raise ImageError("the two X-ray images differ in size")
        return render_material(low, high)
    if kind in ("xray_low", "xray_high"):
        return render_xray(load_png(log.image_path(record, kind), kind="xray"))
    if kind == "rgb":
        return render_rgb(load_png(log.image_path(record, "rgb"), kind="rgb"))
    raise ImageError(f"unknown image kind {kind!r}; use xray_low, xray_high, material or rgb")
