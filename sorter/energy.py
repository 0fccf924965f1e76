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
- **Group-conditional bound** (optional, :meth:`EnergyModel.with_group_bound`): Mondrian conformal
  prediction.  The items are grouped by their *estimate* (bins of Wh, a function of the
  measurements only, never of the truth), and each group has its own quantile of
  ``log(true / estimate)``, calibrated on held-out labelled Li-ion items of that group.  Within
  each group the bound covers at least the stated share of exchangeable items, hence overall
  too; a group with too few calibration items for the rank gets no model bound (the physical
  bound alone).  A single global quantile is set by the worst-estimated kind of item (unknown
  packs, a few light cells); the groups let the large, well-estimated items (12 V drop-ins) that
  fill a case carry a bound of their own.  ``sorter model energy-bound`` calibrates it
  (:mod:`sorter.energy_calibration`).
- **Conformalized quantile regression** (optional, ``sorter model energy-bound --adaptive``): a
  gradient-boosted regressor of the :data:`UPPER_QUANTILE` of ``log(true / estimate)`` given the
  measurements (:func:`upper_inputs`), fitted on one half of the held-out items; each group's
  conformal quantile is then taken, on the other half, of ``log(true / estimate)`` minus its
  prediction, and the bound is ``estimate x exp(prediction + quantile)``.  The coverage argument
  is the split-conformal one above (the regressor never sees the calibration half); the bound
  follows how well each kind of item is estimated (a catalogue drop-in closely, an unknown pack of
  the same size loosely) instead of one ratio per bin.
- **The hazard lane's own quantiles** (optional, ``--hazard-groups``): the cases pack the hazard
  lane, i.e. damaged items, which are estimated worse than the rest; the items the model sends to
  the hazard lane get a quantile per group of their own, so the stated coverage holds within the
  lane the cases are packed from.  The caller passes each item's lane (``predict(..., hazard=)``).
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
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from .features.measure import RAW_COLUMNS

MAX_WH_PER_G = 0.30  # reference README: mass x 0.30 Wh/g bounds any Li-ion item's rated energy
# The scale reads light items a few grams off: the physical bound takes the mass the item may
# have, not the one read (a 21700 cell of 68 g at 276 Wh/kg read 5 g light would pass 0.30 x weight).
SCALE_ALLOWANCE_G, SCALE_ALLOWANCE_REL = 15.0, 0.02
# Stated coverage of the bound is 99.5 %; the conformal quantile is taken at 99.8 %, so that the
# bound still covers 99.5 % when the plant's items differ a little from the held-out ones.
COVERAGE = 0.998
# The quantile the conformalized quantile regressor learns (its conformal offset then brings the
# bound to COVERAGE): high enough to follow the tail, low enough to be learnt from a few thousand items.
UPPER_QUANTILE = 0.99
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


def upper_inputs(raw: np.ndarray, est_wh: np.ndarray) -> np.ndarray:
    """The quantile regressor's inputs: :data:`ENERGY_FEATURES` and log(estimate)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.column_stack([energy_inputs(raw), np.log(np.asarray(est_wh, dtype=np.float64))])


def fit_upper_regressor(raw: np.ndarray, est_wh: np.ndarray, log_ratio: np.ndarray, *, seed: int = 0) -> Any:
    """The quantile regressor of conformalized quantile regression: the :data:`UPPER_QUANTILE` of
    ``log(true / estimate)`` given the measurements (:func:`upper_inputs`), by gradient boosting
    with the pinball loss.  Fit it on items the estimator was not fitted on."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        loss="quantile",
        quantile=UPPER_QUANTILE,
        max_iter=200,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        random_state=seed,
    ).fit(upper_inputs(raw, est_wh), log_ratio)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """Split conformal: the ``ceil((n + 1) * coverage)``-th smallest score, ``inf`` when there are
    too few scores for that rank (the bound is then the physical one alone)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    rank = int(np.ceil((s.size + 1) * coverage))
    return float(s[rank - 1]) if 0 < rank <= s.size else math.inf


def check_edges(edges_wh: Sequence[float]) -> tuple[float, ...]:
    """Bins of the estimate for the group-conditional bound, checked: ascending positive Wh."""
    edges = tuple(float(e) for e in edges_wh)
    if not edges or any(not math.isfinite(e) or e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
        raise ValueError(
            f"group edges must be ascending positive Wh values, got {list(edges_wh)}; e.g. 30,100,300,1100,1700"
        )
    return edges


def rated_energy_wh(extra: Mapping[str, Any]) -> float:
    """An item's labelled rated energy (``energy_wh`` of its log line: nominal V x Ah), NaN if absent."""
    v = extra.get("energy_wh")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


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
    # Group-conditional (Mondrian) bound: bins of the estimate (Wh edges, ascending) and one
    # quantile per bin (len(edges) + 1; inf: too few calibration items, the physical bound alone).
    # Empty: the global ``log_q_upper`` for every item.
    group_edges_wh: tuple[float, ...] = ()
    log_q_groups: tuple[float, ...] = ()
    group_calibration_n: tuple[int, ...] = ()
    # Conformalized quantile regression (optional, :meth:`with_group_bound` given ``fit`` rows): a
    # regressor of the UPPER_QUANTILE of log(true / estimate) from the item's measurements; the
    # group quantiles above are then offsets over its prediction.  None: the bound is a fixed
    # ratio per group.
    upper_regressor: Any = None
    # The hazard lane's own quantiles (same edges; empty: the hazard lane uses the groups above):
    # damaged items, which the cases pack, are estimated worse than the rest.
    hazard_log_q_groups: tuple[float, ...] = ()
    hazard_calibration_n: tuple[int, ...] = ()

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
        # with too few held-out items for the conformal rank the bound is the physical one alone
        model.log_q_upper = conformal_quantile(r, coverage)
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

    def group_of(self, est_wh: np.ndarray) -> np.ndarray:
        """The bound's group of each estimate (the bin index; 0 for all without groups)."""
        est = np.asarray(est_wh, dtype=np.float64)
        if not self.log_q_groups:
            return np.zeros(est.shape, dtype=np.intp)
        return np.searchsorted(np.asarray(self.group_edges_wh, dtype=np.float64), est, side="right")

    def log_q_for(self, est_wh: np.ndarray, hazard: np.ndarray | None = None) -> np.ndarray:
        """The conformal quantile that bounds each estimate (the global one without groups);
        ``hazard`` (bool per row): the item goes to the hazard lane (its own quantiles, if any)."""
        est = np.asarray(est_wh, dtype=np.float64)
        if not self.log_q_groups:
            return np.full(est.shape, self.log_q_upper)
        g = self.group_of(est)
        q = np.asarray(self.log_q_groups, dtype=np.float64)[g]
        if hazard is not None and self.hazard_log_q_groups:
            q = np.where(np.asarray(hazard, dtype=bool), np.asarray(self.hazard_log_q_groups, dtype=np.float64)[g], q)
        return q

    def log_upper(self, raw: np.ndarray, est_wh: np.ndarray, hazard: np.ndarray | None = None) -> np.ndarray:
        """log(bound / estimate) of each row: the quantile regressor's prediction (0 without one)
        plus the row's conformal quantile."""
        q = self.log_q_for(est_wh, hazard)
        if self.upper_regressor is None:
            return q
        base = np.zeros(q.shape)
        ok = np.isfinite(est_wh) & (np.asarray(est_wh) > 0)
        if ok.any():
            base[ok] = self.upper_regressor.predict(upper_inputs(np.atleast_2d(raw)[ok], np.asarray(est_wh)[ok]))
        return base + q

    def with_group_bound(
        self,
        raw_cal: np.ndarray,
        energy_cal: np.ndarray,
        edges_wh: Sequence[float],
        *,
        coverage: float | None = None,
        hazard_cal: np.ndarray | None = None,
        fit: tuple[np.ndarray, np.ndarray] | None = None,
        seed: int = 0,
    ) -> tuple["EnergyModel", dict[str, Any]]:
        """This model with a group-conditional bound calibrated on held-out Li-ion rows
        (``raw_cal``, already normalised to the model's line, and their true rated energy).

        Split conformal per group (Mondrian): in each bin of the estimate the
        ``ceil((n + 1) * coverage)``-th smallest score; a bin with fewer items than that rank
        gets ``inf`` (the physical bound alone).  The score is ``log(true / estimate)``, or, given
        ``fit`` (other held-out rows and their true energy), the same minus a quantile regressor's
        prediction fitted on ``fit`` (conformalized quantile regression: the bound follows how well
        each kind of item is estimated).  ``hazard_cal`` (bool per row: the model sends the item to
        the hazard lane) gives the hazard lane quantiles of its own.  None of the rows may have
        been used to fit the estimator.  Returns the model and a report per group.
        """
        edges = check_edges(edges_wh)
        cov = self.coverage if coverage is None else float(coverage)
        if not 0 < cov < 1:
            raise ValueError(f"coverage must be in (0, 1), got {cov}")

        def usable(raw_: np.ndarray, energy_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            raw_ = np.atleast_2d(np.asarray(raw_, dtype=np.float64))
            energy_ = np.asarray(energy_, dtype=np.float64)
            ok = np.isfinite(energy_) & (energy_ > 0) & np.isfinite(raw_[:, _C["weight_g"]])
            est_ = self.estimate(raw_[ok])
            return raw_[ok], est_, np.log(energy_[ok] / est_), ok

        upper = None
        if fit is not None:
            raw_f, est_f, r_f, _ = usable(*fit)
            if r_f.size < 200:
                raise ValueError(f"{r_f.size} items to fit the quantile regressor on; give it at least 200")
            upper = fit_upper_regressor(raw_f, est_f, r_f, seed=seed)
        raw_c, est, r, ok = usable(raw_cal, energy_cal)
        hz = np.zeros(r.size, dtype=bool) if hazard_cal is None else np.asarray(hazard_cal, dtype=bool)[ok]
        if upper is not None:
            r = r - upper.predict(upper_inputs(raw_c, est))
        g = np.searchsorted(np.asarray(edges), est, side="right")
        report: dict[str, Any] = {
            "coverage": cov,
            "calibration_n": int(r.size),
            "global_log_q_upper": self.log_q_upper,
            "score": "log(true / estimate)"
            if upper is None
            else f"log(true / estimate) - the quantile regressor's {UPPER_QUANTILE} quantile",
        }
        if upper is not None:
            report["quantile_regressor"] = {"quantile": UPPER_QUANTILE, "fit_n": int(r_f.size)}
        tables = {}  # report key -> (quantiles, counts): the other items' (all without hazard_cal), the hazard lane's
        for key, rows in [("groups", ~hz)] + ([("hazard_groups", hz)] if hazard_cal is not None else []):
            qs, ns, groups = [], [], []
            for k in range(len(edges) + 1):
                rk = r[rows & (g == k)]
                q = conformal_quantile(rk, cov)
                qs.append(q)
                ns.append(int(rk.size))
                lo = 0.0 if k == 0 else edges[k - 1]
                hi = math.inf if k == len(edges) else edges[k]
                groups.append(
                    {
                        "estimate_wh": [lo, None if math.isinf(hi) else hi],
                        "calibration_n": int(rk.size),
                        "log_q_upper": None if math.isinf(q) else q,
                        "bound_over_estimate": None if math.isinf(q) or upper is not None else float(np.exp(q)),
                    }
                )
            tables[key] = (tuple(qs), tuple(ns))
            report[key] = groups
        main_q, main_n = tables["groups"]
        hz_q, hz_n = tables.get("hazard_groups", ((), ()))
        model = replace(
            self,
            group_edges_wh=edges,
            log_q_groups=main_q,
            group_calibration_n=main_n,
            upper_regressor=upper,
            hazard_log_q_groups=hz_q,
            hazard_calibration_n=hz_n,
        )
        return model, report

    def predict(
        self, raw: np.ndarray, fallback: np.ndarray | None = None, hazard: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(energy_wh, energy_wh_upper)`` of raw rows. ``fallback`` (bool per row): use the
        physical bound (the item is outside the model's envelope or its X-ray is missing).
        ``hazard`` (bool per row): the item goes to the hazard lane (its quantiles, if any)."""
        raw = np.atleast_2d(raw)
        w = raw[:, _C["weight_g"]]
        est = self.estimate(raw)
        phys = physical_upper_wh(w)
        with np.errstate(invalid="ignore"):
            upper = np.minimum(est * np.exp(self.log_upper(raw, est, hazard)), phys)
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
            **(
                {
                    "group_edges_wh": list(self.group_edges_wh),
                    "log_q_groups": [None if math.isinf(q) else q for q in self.log_q_groups],
                    "group_calibration_n": list(self.group_calibration_n),
                }
                if self.log_q_groups
                else {}
            ),
            **(
                {
                    "hazard_log_q_groups": [None if math.isinf(q) else q for q in self.hazard_log_q_groups],
                    "hazard_calibration_n": list(self.hazard_calibration_n),
                }
                if self.hazard_log_q_groups
                else {}
            ),
            **({"upper_quantile": UPPER_QUANTILE} if self.upper_regressor is not None else {}),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], regressor: Any, upper_regressor: Any = None) -> "EnergyModel":
        if list(d.get("features", ())) != list(ENERGY_FEATURES):
            raise ValueError(f"energy features {d.get('features')} are not this sorter's {list(ENERGY_FEATURES)}")
        nmax = d.get("novelty_max")
        q = d["log_q_upper"]
        edges = tuple(float(e) for e in d.get("group_edges_wh", ()))
        qs = tuple(math.inf if x is None else float(x) for x in d.get("log_q_groups", ()))
        ns = tuple(int(n) for n in d.get("group_calibration_n", ()))
        if qs and (len(qs) != len(edges) + 1 or list(edges) != sorted(set(edges)) or len(ns) != len(qs)):
            raise ValueError(
                f"energy bound groups: {len(edges)} edges need {len(edges) + 1} quantiles and counts, got "
                f"{len(qs)} and {len(ns)}; recalibrate with 'sorter model energy-bound'"
            )
        hq = tuple(math.inf if x is None else float(x) for x in d.get("hazard_log_q_groups", ()))
        hn = tuple(int(n) for n in d.get("hazard_calibration_n", ()))
        if hq and (not qs or len(hq) != len(qs) or len(hn) != len(hq)):
            raise ValueError(
                f"energy bound: {len(hq)} hazard quantiles for {len(qs)} groups; recalibrate with 'sorter model energy-bound'"
            )
        if ("upper_quantile" in d) != (upper_regressor is not None):
            raise ValueError(
                "the energy bound's quantile regressor and the manifest disagree (one without the other); "
                "recalibrate with 'sorter model energy-bound'"
            )
        return cls(
            regressor,
            math.inf if q is None else float(q),
            float(d["coverage"]),
            float(d["median_wh_per_g"]),
            int(d["calibration_n"]),
            math.inf if nmax is None else float(nmax),
            edges if qs else (),
            qs,
            ns if qs else (),
            upper_regressor,
            hq,
            hn if hq else (),
        )


DEFAULT_GROUP_EDGES_WH = (30.0, 100.0, 300.0, 1100.0, 1700.0)
"""Bins of the estimate for the group-conditional bound: cells (< 30 Wh), small packs, tool packs
and small drop-ins, e-bike packs and mid-size drop-ins (300-1,100), the 12 V 100 Ah drop-ins that
fill a case (1,100-1,700), modules (above; over a case's limit anyway).  Each bin needs at least
``1 / (1 - coverage)`` held-out Li-ion items (499 at 99.8 %) for a model bound of its own."""
