"""The divert policy: from probabilities and readings to a lane and a reason.

A separate, inspectable step after the classifier.  Its thresholds are chosen at
training time on held-out data to meet a stated target (no Li-ion in the lead_acid
lane) and stored with the model; nothing here is a magic number in ``predict``.

Rules, in order (the first that applies decides):

1. the item could not be scored (bad line, model failure), or has neither an X-ray nor a
   scale reading -> ``manual``;
2. hot: surface temperature over the running ambient by ``hot_excess_c`` or more -> ``hazard``;
3. unlike anything in training (readings far outside the training envelope) -> ``manual``;
4. ``p_lead_acid >= lead_acid_min`` *and* every critical reading present and valid *and* the
   item's log comes from a line the model is valid for (its declared settings, see
   :mod:`sorter.domain`) *and* the item is typical of the training lead-acid items (its
   lead-acid novelty at most ``novelty_max``, see :mod:`sorter.novelty`) *and* the item is
   not too light for lead-acid (its weight over its envelope's volume at least
   ``lead_density_min`` kg/L, when the profiler measured it) -> ``lead_acid``;
   when only the line, the novelty or the density stands in the way -> ``manual``, the
   reason naming it.  The density is a physical proof that carries from line to line (a
   scale and a profiler measure the same on every line): lead-acid batteries run
   1.8-3.1 kg/L of envelope, a lithium drop-in made to look like one 0.7-1.7 kg/L.
   Critical are the two independent physical proofs of lead: the dual-energy X-ray (both
   channels, with an object in the beam) and the scale.  The profiler, camera and thermal
   camera are not critical: the model was trained with each of them missing in turn, and
   an item without one of them must clear that sensor's own, stricter threshold
   (``lead_acid_min_missing``, chosen on held-out items with that sensor removed) as well;
5. ``p_lead_acid <= not_lead_max`` (confidently not lead-acid): damaged-looking Li-ion ->
   ``hazard``; Li-ion -> ``li_ion``; anything else -> ``other_lane`` (default ``li_ion``,
   the non-breaker battery stream);
6. otherwise (doubt) -> ``manual``.

A Li-ion item reaches ``lead_acid`` only through rule 4, so every doubt, every missing
critical sensor and every fault ends in a safe lane.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import ConfigError
from .features.measure import CAMERA_COLUMNS, RAW_COLUMNS
from .lanes import Lane

SAFE_LANES = (Lane.LI_ION, Lane.HAZARD, Lane.MANUAL)  # every lane but lead_acid
_COL = {n: i for i, n in enumerate(RAW_COLUMNS)}
# Non-critical sensors, and the raw columns that are all present when the sensor gave a
# usable reading (the camera's shape columns are only measured when it saw the item).
OPTIONAL_SENSORS: dict[str, tuple[int, ...]] = {
    "profiler": tuple(_COL[c] for c in ("length_mm", "width_mm", "height_mm")),
    "camera": tuple(_COL[c] for c in CAMERA_COLUMNS[:5]),
    "thermal": (_COL["surface_temp_c"],),
}


def missing_optional(raw: np.ndarray | list[float]) -> list[str]:
    """The non-critical sensors without a usable reading in a raw measurement row."""
    return [s for s, cols in OPTIONAL_SENSORS.items() if any(math.isnan(raw[c]) for c in cols)]


@dataclass(frozen=True)
class PolicyThresholds:
    """Thresholds of the divert policy, stored in the model manifest."""

    lead_acid_min: float = 0.99
    # Stricter lead_acid_min for an item without a reading of one of these sensors.
    lead_acid_min_missing: Mapping[str, float] = field(default_factory=dict)
    not_lead_max: float = 0.5
    damage_min: float = 0.5
    damage_li_min: float = 0.25  # Li-ion probability above which the damage score counts
    hot_excess_c: float = 6.0
    other_lane: str = "li_ion"
    envelope: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Highest lead-acid novelty (sorter.novelty) with which an item may go to lead_acid.
    novelty_max: float = math.inf
    # Lowest envelope density (weight / profiler volume, kg/L) with which an item may go to
    # lead_acid; 0 = no such check (models trained before it).
    lead_density_min: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.lead_acid_min <= 1:
            raise ConfigError(f"lead_acid_min must be in (0, 1], got {self.lead_acid_min}")
        if not 0 <= self.not_lead_max < self.lead_acid_min:
            raise ConfigError(f"not_lead_max ({self.not_lead_max}) must be below lead_acid_min ({self.lead_acid_min})")
        for sensor, v in self.lead_acid_min_missing.items():
            if sensor not in OPTIONAL_SENSORS:
                raise ConfigError(
                    f"lead_acid_min_missing: unknown sensor {sensor!r}; known: {sorted(OPTIONAL_SENSORS)}"
                )
            if not self.lead_acid_min <= v <= 1:
                raise ConfigError(f"lead_acid_min_missing[{sensor!r}] must be in [lead_acid_min, 1], got {v}")
        if not self.novelty_max > 0:
            raise ConfigError(f"novelty_max must be > 0, got {self.novelty_max}")
        if not 0 <= self.lead_density_min < 5:
            raise ConfigError(f"lead_density_min must be in [0, 5) kg/L, got {self.lead_density_min}")
        if self.other_lane not in SAFE_LANES:
            raise ConfigError(f"other_lane must be one of {tuple(map(str, SAFE_LANES))}, got {self.other_lane!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["envelope"] = {k: list(v) for k, v in self.envelope.items()}
        d["lead_acid_min_missing"] = dict(self.lead_acid_min_missing)
        d["novelty_max"] = None if math.isinf(self.novelty_max) else self.novelty_max  # JSON has no infinity
        return d

    def lead_acid_min_for(self, raw: np.ndarray | list[float]) -> tuple[float, list[str]]:
        """The lead_acid threshold that applies to this item, and the optional sensors it lacks."""
        missing = missing_optional(raw)
        return max(
            [self.lead_acid_min, *(self.lead_acid_min_missing.get(s, self.lead_acid_min) for s in missing)]
        ), missing

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PolicyThresholds":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown policy keys {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(d)
        kw["envelope"] = {k: (float(v[0]), float(v[1])) for k, v in d.get("envelope", {}).items()}
        kw["lead_acid_min_missing"] = {str(k): float(v) for k, v in d.get("lead_acid_min_missing", {}).items()}
        kw["novelty_max"] = math.inf if d.get("novelty_max") is None else float(d["novelty_max"])
        return cls(**kw)


@dataclass(frozen=True)
class Verdict:
    lane: str
    reason: str
    chemistry: str | None


def envelope_density(raw: np.ndarray | list[float]) -> float:
    """The item's weight over its envelope's volume (length x width x height from the
    profiler) in kg/L; NaN when the scale or the profiler gave no usable reading."""
    w = raw[_COL["weight_g"]]
    vol = raw[_COL["length_mm"]] * raw[_COL["width_mm"]] * raw[_COL["height_mm"]]
    if not (w > 0 and vol > 0):  # NaN compares False: missing readings give NaN
        return math.nan
    return float(w / vol * 1e3)


def outside_envelope(t: PolicyThresholds, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Per envelope column, the rows of a raw matrix whose measured value lies outside the
    training envelope (rule 3 sends such a row to manual); a missing reading is never outside.

    Examples
    --------
    >>> import numpy as np
    >>> from sorter.features.measure import RAW_COLUMNS
    >>> from sorter.policy import PolicyThresholds, outside_envelope
    >>> raw = np.full((2, len(RAW_COLUMNS)), np.nan)
    >>> raw[:, RAW_COLUMNS.index("weight_g")] = [20000.0, 60000.0]
    >>> outside_envelope(PolicyThresholds(envelope={"weight_g": (10.0, 54000.0)}), raw)["weight_g"].tolist()
    [False, True]
    """
    out = {}
    for col, (lo, hi) in t.envelope.items():
        v = raw[:, _COL[col]]
        with np.errstate(invalid="ignore"):
            out[col] = (v < lo) | (v > hi)  # NaN compares False
    return out


def critical_problems(raw: np.ndarray | list[float]) -> list[str]:
    """Critical readings that are missing or invalid in a raw measurement row."""
    out = []
    if math.isnan(raw[_COL["xr_low_ok"]]) or math.isnan(raw[_COL["xr_high_ok"]]):
        out.append("X-ray missing" if math.isnan(raw[_COL["xr_area_mm2"]]) else "an X-ray channel missing")
    elif not raw[_COL["xr_area_mm2"]] >= 64.0:  # under 8 x 8 mm: the beam saw nothing
        out.append("X-ray sees no object")
    if math.isnan(raw[_COL["weight_g"]]):
        out.append("scale missing")
    return out


def decide(
    proba: np.ndarray,
    p_damaged: float,
    raw: np.ndarray,
    t: PolicyThresholds,
    classes: tuple[str, ...] = ("lead_acid", "li_ion", "other"),
    lead_novelty: float = math.nan,
    line_closed: str | None = None,
) -> Verdict:
    """Lane and reason for one item.

    Parameters
    ----------
    proba : the classifier's probabilities in ``classes`` order.
    p_damaged : probability that a Li-ion item is damaged (NaN if no damage model).
    raw : the item's raw measurement row (``RAW_COLUMNS``).
    t : thresholds.
    lead_novelty : the item's novelty for the lead-acid class (NaN: not scored).
    line_closed : why the lead_acid lane is closed for this item's log (its line is not the
        model's), or None.

    Examples
    --------
    >>> import numpy as np
    >>> from sorter.features.measure import RAW_COLUMNS
    >>> from sorter.policy import PolicyThresholds, decide
    >>> raw = np.full(len(RAW_COLUMNS), np.nan)   # nothing measured
    >>> decide(np.array([0.999, 0.0005, 0.0005]), np.nan, raw, PolicyThresholds()).lane
    'manual'
    """
    # Python floats from here on: the same values, read without numpy's per-element cost
    pl = proba.tolist() if proba.shape == (len(classes),) else []
    if not pl or not all(map(math.isfinite, pl)):
        return Verdict("manual", "model gave no valid probabilities", None)
    raw = raw.tolist() if isinstance(raw, np.ndarray) else raw
    p = dict(zip(classes, pl))
    chem = classes[pl.index(max(pl))]  # the first of equal maxima, as np.argmax
    excess = raw[_COL["surface_temp_c"]] - raw[_COL["ambient_c"]]
    if excess >= t.hot_excess_c:
        return Verdict("hazard", f"hot: {excess:.1f} C over ambient (limit {t.hot_excess_c:.1f})", chem)
    for col, (lo, hi) in t.envelope.items():
        v = raw[_COL[col]]
        if not math.isnan(v) and not lo <= v <= hi:
            return Verdict("manual", f"unlike training data: {col}={v:.4g} outside [{lo:.4g}, {hi:.4g}]", chem)
    crit = critical_problems(raw)
    if len(crit) == 2 and "scale missing" in crit and "X-ray missing" in crit:
        return Verdict("manual", "no X-ray and no scale reading: nothing to judge the chemistry by", chem)
    p_lead = p["lead_acid"]
    lead_min, missing = t.lead_acid_min_for(raw)
    if p_lead >= lead_min:
        if crit:
            return Verdict("manual", f"looks lead-acid (p={p_lead:.3f}) but {', '.join(crit)}", chem)
        if line_closed:
            return Verdict("manual", f"looks lead-acid (p={p_lead:.3f}) but lead_acid is closed: {line_closed}", chem)
        if t.lead_density_min > 0:
            dens = envelope_density(raw)
            if dens < t.lead_density_min:
                return Verdict(
                    "manual",
                    f"looks lead-acid (p={p_lead:.3f}) but too light for lead-acid: "
                    f"{dens:.2f} kg/L under {t.lead_density_min:.2f} (a lithium drop-in "
                    "in a lead-acid case?)",
                    chem,
                )
        if lead_novelty > t.novelty_max:
            return Verdict(
                "manual",
                f"looks lead-acid (p={p_lead:.3f}) but unlike the training lead-acid items "
                f"(novelty {lead_novelty:.1f} > {t.novelty_max:.1f})",
                chem,
            )
        return Verdict("lead_acid", f"lead-acid p={p_lead:.4f}", chem)
    if p_lead <= t.not_lead_max:
        p_li = p.get("li_ion", 0.0)
        if p_li >= t.damage_li_min and not math.isnan(p_damaged) and p_damaged >= t.damage_min:
            return Verdict("hazard", f"damaged Li-ion suspected (p_damaged={p_damaged:.2f}, p_li_ion={p_li:.2f})", chem)
        if chem == "li_ion" or (chem == "lead_acid" and p_li >= p.get("other", 0.0)):
            return Verdict("li_ion", f"Li-ion p={p_li:.3f}", "li_ion")
        return Verdict(t.other_lane, f"other (not for the breaker) p={p.get('other', 0.0):.3f}", chem)
    why = f"uncertain: p_lead_acid={p_lead:.3f} between {t.not_lead_max:.3g} and {lead_min:.4g}"
    if missing and lead_min > t.lead_acid_min:
        why += f" (the threshold without {', '.join(missing)})"
    if crit:
        why += f"; {', '.join(crit)}"
    return Verdict("manual", why, chem)
