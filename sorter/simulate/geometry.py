"""Solid geometry of an item and its projection along the X-ray beam.

An item is a list of primitives in its own frame (x along its length, y along its
width, z up), each made of one material at one density.  Projecting along the beam
gives, per pixel, the areal density (g/cm^2) of each material.  Primitives add
linearly, so a hollow case is an outer box plus an inner box of negative density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``lo <= p <= hi`` (mm) of one material (density g/cm^3)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    material: str
    density: float

    @property
    def mass_g(self) -> float:
        (x0, y0, z0), (x1, y1, z1) = self.lo, self.hi
        return (x1 - x0) * (y1 - y0) * (z1 - z0) * 1e-3 * self.density  # mm^3 -> cm^3


@dataclass(frozen=True)
class CylinderArray:
    """A regular grid of identical solid cylinders (or tubes, when ``r_inner > 0``).

    ``axis`` is the cylinders' axis (0, 1, 2 for x, y, z); ``origin`` the lowest corner
    of the array's bounding box; ``counts`` cells along each of x, y, z (the count
    along ``axis`` gives cells end to end); ``pitch`` centre spacing across the axis (mm)
    and ``length`` along it.
    """

    origin: tuple[float, float, float]
    counts: tuple[int, int, int]
    axis: int
    radius: float
    length: float
    pitch: float
    material: str
    density: float
    r_inner: float = 0.0

    @property
    def n(self) -> int:
        a, b, c = self.counts
        return a * b * c

    @property
    def mass_g(self) -> float:
        area = math.pi * (self.radius**2 - self.r_inner**2)
        return self.n * area * self.length * 1e-3 * self.density

    def extent(self) -> tuple[float, float, float]:
        ext = []
        for d in range(3):
            if d == self.axis:
                ext.append(self.counts[d] * self.length)
            else:
                ext.append((self.counts[d] - 1) * self.pitch + 2 * self.radius)
        return tuple(ext)  # type: ignore[return-value]


Primitive = Box | CylinderArray


def permute(p: Primitive, order: tuple[int, int, int], size: tuple[float, float, float]) -> Primitive:
    """Re-express a primitive in a frame whose axis ``i`` is the old axis ``order[i]``."""
    if isinstance(p, Box):
        return replace(p, lo=tuple(p.lo[o] for o in order), hi=tuple(p.hi[o] for o in order))
    return replace(
        p,
        origin=tuple(p.origin[o] for o in order),
        counts=tuple(p.counts[o] for o in order),
        axis=order.index(p.axis),
    )


def _coverage(edges: np.ndarray, a: float, b: float) -> np.ndarray:
    """Fraction of each pixel (between consecutive ``edges``) covered by [a, b]."""
    lo = np.maximum(edges[:-1], a)
    hi = np.minimum(edges[1:], b)
    return np.clip(hi - lo, 0, None) / (edges[1] - edges[0])


def project_z(prims: list[Primitive], materials: tuple[str, ...], nx: int, ny: int, px_mm: float) -> np.ndarray:
    """Areal density maps ``(ny, nx, n_materials)`` in g/cm^2, beam along z.

    Box edges are anti-aliased (fractional pixel coverage); cylinders are sampled at
    pixel centres.
    """
    out = np.zeros((ny, nx, len(materials)), dtype=np.float32)
    xe = np.arange(nx + 1) * px_mm
    ye = np.arange(ny + 1) * px_mm
    xc = (xe[:-1] + xe[1:]) / 2
    yc = (ye[:-1] + ye[1:]) / 2
    # Many boxes share a footprint (one box per material of a mixture): compute each
    # footprint's coverage once.
    footprints: dict[tuple[float, float, float, float], tuple[np.ndarray, int, int] | None] = {}
    index = {m: k for k, m in enumerate(materials)}
    for p in prims:
        k = index[p.material]
        if isinstance(p, Box):
            key = (p.lo[0], p.hi[0], p.lo[1], p.hi[1])
            if key not in footprints:
                cx = _coverage(xe, p.lo[0], p.hi[0])
                cy = _coverage(ye, p.lo[1], p.hi[1])
                ix = np.flatnonzero(cx)
                iy = np.flatnonzero(cy)
                footprints[key] = (
                    None
                    if (ix.size == 0 or iy.size == 0)
                    else (
                        np.outer(cy[iy[0] : iy[-1] + 1], cx[ix[0] : ix[-1] + 1]).astype(np.float32),
                        int(iy[0]),
                        int(ix[0]),
                    )
                )
            fp = footprints[key]
            if fp is None:
                continue
            cov, y0, x0 = fp
            path_cm = (p.hi[2] - p.lo[2]) / 10
            out[y0 : y0 + cov.shape[0], x0 : x0 + cov.shape[1], k] += cov * np.float32(path_cm * p.density)
        else:
            out[:, :, k] += (_cyl_path_z(p, xc, yc) * (p.density / 10)).astype(np.float32)
    return out


def _chord(u: np.ndarray, r: float) -> np.ndarray:
    return 2 * np.sqrt(np.clip(r * r - u * u, 0, None))


def _local(coord: np.ndarray, start: float, n: int, pitch: float, r: float) -> np.ndarray:
    """Offset of each coordinate from the nearest cylinder centre along a grid axis
    (inf outside the array)."""
    c0 = start + r
    i = np.clip(np.round((coord - c0) / pitch), 0, n - 1)
    return coord - (c0 + i * pitch)


def _cyl_path_z(p: CylinderArray, xc: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """Path length (mm) along z through the array at pixel centres."""
    ox, oy, oz = p.origin
    nx, ny, nz = p.counts
    if p.axis == 2:  # upright cylinders: disc footprints, path = stacked lengths
        dx = _local(xc, ox, nx, p.pitch, p.radius)
        dy = _local(yc, oy, ny, p.pitch, p.radius)
        d2 = dy[:, None] ** 2 + dx[None, :] ** 2
        inside = (d2 <= p.radius**2) & (d2 >= p.r_inner**2)
        return inside * (p.length * nz)
    # lying cylinders: axis along x or y; chord across the other in-plane axis,
    # times the number of layers stacked along z
    if p.axis == 0:
        along, across, n_al, n_ac, o_al, o_ac = xc, yc, nx, ny, ox, oy
    else:
        along, across, n_al, n_ac, o_al, o_ac = yc, xc, ny, nx, oy, ox
    du = _local(across, o_ac, n_ac, p.pitch, p.radius)
    chord = _chord(du, p.radius) - _chord(du, p.r_inner)
    cover = ((along >= o_al) & (along <= o_al + n_al * p.length)).astype(float)
    if p.axis == 0:
        return np.outer(chord, cover) * nz
    return np.outer(cover, chord) * nz


def total_mass_g(prims: list[Primitive]) -> float:
    return float(sum(p.mass_g for p in prims))


def mass_by_material(prims: list[Primitive]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in prims:
        out[p.material] = out.get(p.material, 0.0) + p.mass_g
    return out
