"""Rated energy of a likely Li-ion item: an estimate and an upper bound, for the hazard lane's cases.

Damaged Li-ion batteries leave the plant in fire-safe cases whose permit allows at most
2.1 kWh of *rated* energy per case (``shared/reference``: DoT special permit), so every
item packed needs an upper bound on its rated energy (nominal V x Ah) that holds.

- **Estimate** (``energy_wh``): a gradient-boosted regressor of the item's specific energy
  (log Wh per gram) on physical measurements (:data:`ENERGY_FEATURES`: mass, envelope,
  density, the X-ray's aluminium-equivalent mass per gram, material scale and opacity),
  learned at training time from the labelled logs' rated energy, times the weighed mass.
- **Upper bound** (``energy_wh_upper``): split conformal prediction.  On held-out Li-ion items
  the log-ratio of the true rated energy to the estimate has an empirical quantile
  ``log_q_upper`` at the stated coverage (default 99.5 %); the bound is the estimate times
  ``exp(log_q_upper)``.  For exchangeable items that bound holds with at least the stated
  probability (taken at 99.8 % for a stated 99.5 %).  It is never above the physical bound below, which holds for any Li-ion item.
- **Physical fallback**: mass (plus the scale's allowance) x :data:`MAX_WH_PER_G` (commercial Li-ion cells rarely pass
  300 Wh/kg; the reference catalogue's highest is a 21700 NMC cell at 276).  Used as the
  bound, with the estimate at the training items' median specific energy, when the item is
  unlike the training Li-ion items (novelty above the model's threshold) or its X-ray is
  missing.  Without a weight there is no bound at all (NaN): such an item cannot be packed.

Examples
--------
>>> import numpy as np
>>> from sorter.energy import physical_upper_wh
>>> float(physical_upper_wh(np.array([2000.0]))[0])   # a 2 kg pack (2,055 g at most): at most 616.5 Wh
616.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .features.measure import RAW_COLUMNS

MAX_WH_PER_G = 0.30  # reference README: mass x 0.30 Wh/g bounds any Li-ion item's rated energy
# The scale reads light items a few grams off: the physical bound takes the mass the item may
# have, not the one read (a 21700 cell of 68 g at 276 Wh/kg read 5 g light would pass 0.30 x weight).
SCALE_ALLOWANCE_G, SCALE_ALLOWANCE_REL = 15.0, 0.02
# Stated coverage of the bound is 99.5 %; the conformal quantile is taken at 99.8 %, so that the
# bound still covers 99.5 % when the plant's items differ a little from the held-out ones.
COVERAGE = 0.998
ENERGY_FEATURES = (
    "log_weight",
    "log_volume",
    "log_density",
    "al_eq_per_gram",
    "pb_eq_per_gram",
    "material_p50",
    "al_eq_high_p50",
    "opaque_frac",
    "length_mm",
    "width_mm",
    "height_mm",
)
_C = {n: i for i, n in enumerate(RAW_COLUMNS)}


def physical_upper_wh(weight_g: np.ndarray) -> np.ndarray:
    """The physical bound on any Li-ion item's rated energy: the most the item may weigh (the
    reading plus the scale's allowance) x :data:`MAX_WH_PER_G`."""
    w = np.asarray(weight_g, dtype=np.float64)
    return (w * (1 + SCALE_ALLOWANCE_REL) + SCALE_ALLOWANCE_G) * MAX_WH_PER_G


def energy_inputs(raw: np.ndarray) -> np.ndarray:
    """The :data:`ENERGY_FEATURES` of raw measurement rows (NaN where missing)."""
    raw = np.atleast_2d(np.asarray(raw, dtype=np.float64))
    w, L, W, H = (raw[:, _C[k]] for k in ("weight_g", "length_mm", "width_mm", "height_mm"))
    with np.errstate(invalid="ignore", divide="ignore"):
        vol = L * W * H * 1e-6
        out = np.column_stack(
            [
                np.log(w),
                np.log(vol),
                np.log(w / 1000.0 / vol),
                raw[:, _C["xr_al_eq_mass_g"]] / w,
                raw[:, _C["xr_pb_eq_mass_g"]] / w,
                raw[:, _C["xr_mat_p50"]],
                raw[:, _C["xr_al_eq_high_p50"]],
                raw[:, _C["xr_opaque_frac"]],
                L,
                W,
                H,
            ]
        )
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass
class EnergyModel:
    """The fitted estimator and its conformal bound."""

    regressor: Any  # HistGradientBoostingRegressor on ENERGY_FEATURES -> log(Wh per g)
    log_q_upper: float  # conformal quantile of log(true / estimate) at ``coverage`` (inf: too few to tell)
    coverage: float
    median_wh_per_g: float  # the fallback estimate's specific energy
    calibration_n: int
    # Li-ion novelty (sorter.novelty) above which the item is outside the estimator's envelope
    novelty_max: float = math.inf

    @classmethod
    def fit(
        cls,
        raw: np.ndarray,
        energy_wh: np.ndarray,
        raw_cal: np.ndarray,
        energy_cal: np.ndarray,
        *,
        coverage: float = COVERAGE,
        seed: int = 0,
    ) -> "EnergyModel":
        """Fit on Li-ion rows with a known rated energy; the bound's quantile on held-out rows."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        ok = np.isfinite(energy_wh) & (energy_wh > 0) & np.isfinite(raw[:, _C["weight_g"]])
        x, w = energy_inputs(raw[ok]), raw[ok, _C["weight_g"]]
        target = np.log(energy_wh[ok] / w)
        reg = HistGradientBoostingRegressor(
            max_iter=150, learning_rate=0.1, max_leaf_nodes=15, l2_regularization=1.0, random_state=seed
        ).fit(x, target)
        model = cls(reg, 0.0, coverage, float(np.exp(np.median(target))), 0)
        okc = np.isfinite(energy_cal) & (energy_cal > 0) & np.isfinite(raw_cal[:, _C["weight_g"]])
        est = model.estimate(raw_cal[okc])
        r = np.log(energy_cal[okc] / est)
        n = int(r.size)
        if n == 0:
            raise ValueError("no held-out Li-ion items with a rated energy to calibrate the bound on")
        # split conformal: the ceil((n + 1) * coverage)-th smallest residual; with too few held-out
        # items for that rank the bound is unbounded, i.e. the physical bound alone
        k = int(np.ceil((n + 1) * coverage))
        model.log_q_upper = float(np.sort(r)[k - 1]) if k <= n else math.inf
        model.calibration_n = n
        return model

    def estimate(self, raw: np.ndarray) -> np.ndarray:
        """The estimate in Wh (NaN without a weight)."""
        raw = np.atleast_2d(raw)
        w = raw[:, _C["weight_g"]]
        out = np.full(raw.shape[0], np.nan)
        ok = np.isfinite(w)
        if ok.any():
            out[ok] = np.exp(self.regressor.predict(energy_inputs(raw[ok]))) * w[ok]
        return out

    def predict(self, raw: np.ndarray, fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(energy_wh, energy_wh_upper)`` of raw rows. ``fallback`` (bool per row): use the
        physical bound (the item is outside the model's envelope or its X-ray is missing)."""
        raw = np.atleast_2d(raw)
        w = raw[:, _C["weight_g"]]
        est = self.estimate(raw)
        phys = physical_upper_wh(w)
        upper = np.minimum(est * np.exp(self.log_q_upper), phys)
        xray_missing = ~np.isfinite(raw[:, _C["xr_area_mm2"]]) | ~np.isfinite(raw[:, _C["xr_high_ok"]])
        fb = xray_missing if fallback is None else (xray_missing | fallback)
        est = np.where(fb, w * self.median_wh_per_g, est)
        upper = np.where(fb, phys, upper)
        return est, upper

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(ENERGY_FEATURES),
            "log_q_upper": None if math.isinf(self.log_q_upper) else self.log_q_upper,
            "coverage": self.coverage,
            "median_wh_per_g": self.median_wh_per_g,
            "calibration_n": self.calibration_n,
            "max_wh_per_g": MAX_WH_PER_G,
            "novelty_max": None if math.isinf(self.novelty_max) else self.novelty_max,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], regressor: Any) -> "EnergyModel":
        if list(d.get("features", ())) != list(ENERGY_FEATURES):
            raise ValueError(f"energy features {d.get('features')} are not this sorter's {list(ENERGY_FEATURES)}")
        nmax = d.get("novelty_max")
        q = d["log_q_upper"]
        return cls(
            regressor,
            math.inf if q is None else float(q),
            float(d["coverage"]),
            float(d["median_wh_per_g"]),
            int(d["calibration_n"]),
            math.inf if nmax is None else float(nmax),
        )
