"""Novelty: how far an item lies from the training data, in physical measurement space.

The model's applicability domain, per item.  A gradient-boosted classifier answers for any
input, also far from everything it was fitted on, and there its probabilities mean little:
on a line we did not train on, two Li-ion packs got p(lead_acid) 0.91 and 0.92.  So besides
the classifier the model keeps, for each class, a density of its training items in a
handful of physical, line-independent measurements (:data:`NOVELTY_FEATURES`: mass,
envelope, density, X-ray opacity and aluminium-equivalent areal density, the material
scale, attenuation per gram), and the policy sends an item to ``lead_acid`` only if it is
typical of the *lead-acid* training items too.

Method: a Gaussian mixture per class (full covariances) on the standardised features.  An
item's novelty for a class is the chi-square tail of its squared Mahalanobis distance to
the nearest component, as ``-log10(p)``: 2 means one training item in a hundred lies
further out, 6 one in a million.  A missing feature (a sensor dropped out) is
marginalised: the distance uses the other features and their sub-covariance, and the
chi-square its degrees of freedom, so the score means the same with fewer sensors.  It
costs a few microseconds per item (no trees, no neighbours search): fit for the hot path.
The lead-acid threshold is chosen on held-out items at training time and stored in the
policy (``novelty_max``).

Examples
--------
>>> import numpy as np
>>> from sorter.novelty import ClassDensity
>>> rng = np.random.default_rng(0)
>>> d = ClassDensity.fit(rng.normal(size=(500, 3)), n_components=1, seed=0)
>>> near, far = d.score(np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]))
>>> bool(near < 1 < 10 < far)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .features.measure import RAW_COLUMNS

_COL = {n: i for i, n in enumerate(RAW_COLUMNS)}
NOVELTY_FEATURES = (
    "log_weight",
    "log_volume",
    "log_density",
    "xray_opaque_frac",
    "log_al_eq_high_p50",
    "log_al_eq_low_p50",
    "material_p50",
    "log_al_eq_per_gram",
    "xray_vs_envelope_area",
)
MAX_NOVELTY = 300.0  # -log10 of the smallest tail probability reported
MIN_ROWS = 3  # a class density needs this many complete items (a few: one wide Gaussian; 50 a component)


def novelty_inputs(raw: np.ndarray) -> np.ndarray:
    """The :data:`NOVELTY_FEATURES` of raw measurement rows (``RAW_COLUMNS``); NaN where missing."""
    raw = np.atleast_2d(np.asarray(raw, dtype=np.float64))
    c = _COL
    w, length, width, height = (raw[:, c[k]] for k in ("weight_g", "length_mm", "width_mm", "height_mm"))
    with np.errstate(invalid="ignore", divide="ignore"):
        vol_l = length * width * height * 1e-6
        out = np.column_stack(
            [
                np.log(w),
                np.log(vol_l),
                np.log(w / 1000.0 / vol_l),
                raw[:, c["xr_opaque_frac"]],
                np.log1p(raw[:, c["xr_al_eq_high_p50"]]),
                np.log1p(raw[:, c["xr_al_eq_low_p50"]]),
                raw[:, c["xr_mat_p50"]],
                np.log(raw[:, c["xr_al_eq_mass_g"]] / w),
                raw[:, c["xr_area_mm2"]] / (length * width),
            ]
        )
    out[~np.isfinite(out)] = np.nan
    return out


def _chi2_novelty(d2: np.ndarray, dof: int) -> np.ndarray:
    """-log10 of the chi-square (``dof`` degrees) tail probability of squared distances ``d2``."""
    from scipy.special import gammaincc

    p = gammaincc(dof / 2.0, np.maximum(d2, 0.0) / 2.0)
    with np.errstate(divide="ignore"):
        return np.minimum(-np.log10(np.maximum(p, 1e-300)), MAX_NOVELTY)


@dataclass
class ClassDensity:
    """A Gaussian mixture of one class's training items on standardised features."""

    center: np.ndarray  # (d,) per-feature median of the training items
    scale: np.ndarray  # (d,) per-feature spread (IQR / 1.349, at least 5 % of the median's size, or 0.05)
    means: np.ndarray  # (k, d) in standardised units
    covariances: np.ndarray  # (k, d, d)
    _inv_cache: dict[tuple[bool, ...], list[np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int = 4, seed: int = 0) -> "ClassDensity":
        """Fit on rows ``x`` (features in columns); rows with a missing feature are left out."""
        from sklearn.mixture import GaussianMixture

        full = x[np.isfinite(x).all(axis=1)]
        if full.shape[0] < MIN_ROWS:
            raise ValueError(
                f"need at least {MIN_ROWS} items with every sensor read to fit a class density, got {full.shape[0]}"
            )
        center = np.median(full, axis=0)
        q75, q25 = np.percentile(full, [75, 25], axis=0)
        # a floor on the spread: a feature a class barely varies in (an opaque share of 1) must not
        # turn a line's small offset into a huge distance
        scale = np.maximum((q75 - q25) / 1.349, 0.05 * np.maximum(np.abs(center), 1.0))
        z = (full - center) / scale
        k = max(1, min(n_components, full.shape[0] // 50))
        gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-2, random_state=seed, n_init=2).fit(z)
        return cls(center, scale, gm.means_.copy(), gm.covariances_.copy())

    def _inverses(self, present: tuple[bool, ...]) -> list[np.ndarray]:
        inv = self._inv_cache.get(present)
        if inv is None:
            idx = np.flatnonzero(present)
            inv = [np.linalg.inv(cov[np.ix_(idx, idx)]) for cov in self.covariances]
            self._inv_cache[present] = inv
        return inv

    def score(self, x: np.ndarray) -> np.ndarray:
        """Novelty (``-log10`` chi-square tail, nearest component) of rows ``x``; NaN with fewer
        than 3 features present."""
        x = np.atleast_2d(x)
        out = np.full(x.shape[0], np.nan)
        z = (x - self.center) / self.scale
        ok = np.isfinite(z)
        patterns: dict[tuple[bool, ...], list[int]] = {}
        for r, row_ok in enumerate(ok):
            patterns.setdefault(tuple(row_ok.tolist()), []).append(r)
        for present, rows in patterns.items():
            dof = sum(present)
            if dof < 3:
                continue
            idx = np.flatnonzero(present)
            zs = z[np.ix_(rows, idx)]
            d2 = np.full(len(rows), np.inf)
            for mean, inv in zip(self.means, self._inverses(present)):
                diff = zs - mean[idx]
                d2 = np.minimum(d2, np.einsum("ij,jk,ik->i", diff, inv, diff))
            out[rows] = _chi2_novelty(d2, dof)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ClassDensity":
        return cls(
            np.asarray(d["center"], float),
            np.asarray(d["scale"], float),
            np.asarray(d["means"], float),
            np.asarray(d["covariances"], float),
        )


@dataclass
class NoveltyModel:
    """One :class:`ClassDensity` per class, in the classifier's class order."""

    classes: tuple[str, ...]
    densities: tuple[ClassDensity, ...]

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, classes: tuple[str, ...], seed: int = 0) -> "NoveltyModel":
        from .errors import SorterError

        x = novelty_inputs(raw)
        densities = []
        for c in classes:
            try:
                densities.append(ClassDensity.fit(x[y == c], seed=seed))
            except ValueError as err:
                raise SorterError(
                    f"class {c!r}: {err}; record more {c} items with the scale, profiler and "
                    "X-ray all working (the novelty score learns what typical items of each class "
                    "are)"
                ) from err
        return cls(tuple(classes), tuple(densities))

    def score(self, raw: np.ndarray) -> np.ndarray:
        """Novelty of raw rows for each class: shape ``(n, n_classes)``."""
        x = novelty_inputs(raw)
        return np.column_stack([d.score(x) for d in self.densities])

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(NOVELTY_FEATURES),
            "classes": list(self.classes),
            "densities": [d.to_json() for d in self.densities],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "NoveltyModel":
        if list(d.get("features", ())) != list(NOVELTY_FEATURES):
            raise ValueError(f"novelty features {d.get('features')} are not this sorter's {list(NOVELTY_FEATURES)}")
        return cls(tuple(d["classes"]), tuple(ClassDensity.from_json(x) for x in d["densities"]))


def overall(novelty: np.ndarray) -> np.ndarray:
    """An item's novelty against the whole training data: its novelty for the nearest class
    (NaN where no class could be scored)."""
    nearest = np.where(np.isnan(novelty), np.inf, novelty).min(axis=1)
    nearest[np.isinf(nearest)] = np.nan
    return nearest
