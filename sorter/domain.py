"""The line a model was trained for: its declared sensor settings, and the check against a log's.

A model measures physics, but through a line's sensors: the X-ray's energies and pixel
pitch, the camera's pitch.  Its manifest records the settings the training logs declared
(``meta.json``) as a :class:`LineDomain`; scoring a log whose declared settings differ beyond
:data:`TOLERANCE` closes the ``lead_acid`` lane for every item of that log (the policy's
reason names the difference) until the model is calibrated for that line (``sorter
calibrate``) or retrained.  ``--allow-line-mismatch`` reopens it, loudly.

Examples
--------
>>> from sorter.domain import LineDomain, LineSettings
>>> from sorter.readings import LogMeta
>>> dom = LineDomain((LineSettings("sim-a", (53.1, 96.2), 2.0, 1.5),))
>>> dom.differences(LogMeta(line="sim-a", xray_energies_kev=(53.3, 96.0), xray_mm_per_px=2.0, camera_mm_per_px=1.5))
[]
>>> dom.differences(LogMeta(line="plant-7", xray_energies_kev=(60.0, 100.0), xray_mm_per_px=2.0, camera_mm_per_px=1.0))[0]
"line 'plant-7' (the model knows 'sim-a')"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .readings import LogMeta

# How far a log's declared settings may lie from the model's line and still count as that line.
TOLERANCE = {
    "energy_kev": 2.0,  # each channel's declared mean energy, absolute ...
    "energy_rel": 0.03,  # ... or relative, whichever is larger
    "pitch_rel": 0.10,  # X-ray and camera pixel pitch, relative
}


@dataclass(frozen=True)
class LineSettings:
    """What a log's ``meta.json`` declares about its line."""

    line: str
    xray_energies_kev: tuple[float, float]
    xray_mm_per_px: float
    camera_mm_per_px: float

    @classmethod
    def from_meta(cls, meta: LogMeta) -> "LineSettings":
        e = meta.xray_energies_kev
        return cls(str(meta.line), (float(e[0]), float(e[1])), float(meta.xray_mm_per_px), float(meta.camera_mm_per_px))

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "xray_energies_kev": list(self.xray_energies_kev),
            "xray_mm_per_px": self.xray_mm_per_px,
            "camera_mm_per_px": self.camera_mm_per_px,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LineSettings":
        e = d["xray_energies_kev"]
        return cls(str(d["line"]), (float(e[0]), float(e[1])), float(d["xray_mm_per_px"]), float(d["camera_mm_per_px"]))

    def differences(self, other: "LineSettings") -> list[str]:
        """What ``other`` declares that lies outside :data:`TOLERANCE` of these settings."""
        out = []
        if other.line != self.line:
            out.append(f"line {other.line!r} (the model knows {self.line!r})")
        for k, (mine, theirs) in enumerate(zip(self.xray_energies_kev, other.xray_energies_kev)):
            tol = max(TOLERANCE["energy_kev"], TOLERANCE["energy_rel"] * mine)
            if abs(theirs - mine) > tol:
                out.append(f"X-ray {'low' if k == 0 else 'high'} energy {theirs:g} keV (the model's {mine:g} keV)")
        for name, mine, theirs in (
            ("X-ray", self.xray_mm_per_px, other.xray_mm_per_px),
            ("camera", self.camera_mm_per_px, other.camera_mm_per_px),
        ):
            if abs(theirs - mine) > TOLERANCE["pitch_rel"] * mine:
                out.append(f"{name} pitch {theirs:g} mm/px (the model's {mine:g})")
        return out


@dataclass(frozen=True)
class LineDomain:
    """The lines a model is valid for (the settings its training or calibration logs declared)."""

    lines: tuple[LineSettings, ...]

    @classmethod
    def from_metas(cls, metas: Sequence[LogMeta]) -> "LineDomain":
        seen: list[LineSettings] = []
        for m in metas:
            s = LineSettings.from_meta(m)
            if s not in seen:
                seen.append(s)
        return cls(tuple(seen))

    def differences(self, meta: LogMeta) -> list[str]:
        """Empty when ``meta`` matches one of the model's lines; else how it differs from the first."""
        if not self.lines:
            return []
        theirs = LineSettings.from_meta(meta)
        diffs = [s.differences(theirs) for s in self.lines]
        if any(not d for d in diffs):
            return []
        return min(diffs, key=len)

    def to_json(self) -> dict[str, Any]:
        return {"lines": [s.to_json() for s in self.lines], "tolerance": dict(TOLERANCE)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LineDomain":
        return cls(tuple(LineSettings.from_json(x) for x in d.get("lines", ())))
