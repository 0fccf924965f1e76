"""Training: from labelled logs to a model directory with thresholds, metrics and a manifest.

Steps (each reproducible for a seed):

1. measure every item of the labelled logs (in parallel);
2. split items into training and held-out parts (stratified by label);
3. augment the training rows with copies whose sensors drop out one at a time, so the
   model learns what a missing reading looks like instead of guessing;
4. fit the chemistry pipeline (features -> gradient-boosted trees, their own log-loss
   probabilities), with costs that make the dangerous error rare (Li-ion weighted up).
   With ``threshold_folds`` >= 2 (the default) it is *cross-fitted*: the shipped classifier
   is fitted on every item, and ``threshold_folds`` more, each on all items but one fold,
   give every item a probability from a classifier that never saw it (out of fold); with
   ``threshold_folds`` = 0 the classifier is fitted on the training part only;
5. fit the damaged-Li-ion detector where the logs carry a ``damaged`` truth;
6. fit the class densities of the novelty score on the training part (:mod:`sorter.novelty`)
   and record the training logs' declared line settings (:mod:`sorter.domain`): the model's
   applicability domain;
7. choose the chemistry thresholds, with each sensor missing in turn, to meet the target (no
   Li-ion in the lead_acid lane, with a safety margin) on the out-of-fold probabilities of
   every item (cross-fitted) or on the held-out part; the damage and novelty thresholds on
   the held-out part;
8. save with skops and a manifest (hashes, versions, data digest, metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from .batch import data_digest, log_digests, measure_logs
from .domain import LineDomain
from .energy import rated_energy_wh
from .errors import SorterError
from .features.measure import MEASUREMENTS_VERSION, RAW_COLUMNS
from .features.transformers import SENSOR_GROUPS, make_feature_transformer, mask_sensor
from .logformat import read_meta
from .model import SorterModel, save_model
from .novelty import NoveltyModel
from .policy import OPTIONAL_SENSORS, PolicyThresholds, critical_problems, envelope_density
from .progress import Progress

logger = logging.getLogger(__name__)

CLASSES = ("lead_acid", "li_ion", "other")
CLASS_WEIGHT = {"lead_acid": 1.0, "li_ion": 4.0, "other": 2.0}
ENVELOPE_COLUMNS = ("weight_g", "length_mm", "width_mm", "height_mm")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    val_fraction: float = 0.3
    # Boosting rounds are what one item's latency on the line is made of (scikit-learn
    # walks each tree in a separate call): 70 rounds x 3 classes + 50 for damage keep one
    # item's prediction near a millisecond; more rounds gained nothing measurable here.
    max_iter: int = 70
    damage_max_iter: int = 50
    learning_rate: float = 0.25
    max_leaf_nodes: int = 31
    dropout_augment: float = 0.15  # share of training rows copied once per sensor with that sensor missing
    lead_margin_logit: float = 1.5  # safety margin above the most lead-like non-lead item seen, in logits
    # Cross-fitting for the chemistry thresholds (step 4 above): the lead_acid threshold is
    # chosen on out-of-fold probabilities of every item instead of the held-out part's only,
    # so it sees 1 / val_fraction times as many non-lead items, and the shipped classifier
    # learns from every item.  0 (or 1): the held-out part's probabilities, as before.
    threshold_folds: int = 5
    lead_acid_min_floor: float = 0.9
    # The classifier's feature step (sorter.features.transformers.make_feature_transformer):
    # "envelope" (with the envelope density) or "material" (without it, the X-ray per gram).
    features: str = "envelope"
    # The lead-acid density gate (policy rule 4): this share of the lightest held-out
    # lead-acid items' envelope density (their 0.1 % quantile), in kg/L.
    lead_density_quantile: float = 0.001
    lead_density_factor: float = 0.9
    damage_recall_target: float = 0.97
    hot_excess_c: float = 6.0
    other_lane: str = "li_ion"
    workers: int = 1
    # The novelty threshold: this quantile of the held-out lead-acid items' novelty, plus a
    # margin (in -log10 p), and never below the floor.
    novelty_quantile: float = 0.995
    novelty_margin: float = 1.0
    novelty_floor: float = 4.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _augment(raw: np.ndarray, y: np.ndarray, w: np.ndarray, rng: np.random.Generator, share: float):
    parts_x, parts_y, parts_w = [raw], [y], [w]
    n = raw.shape[0]
    for sensor in SENSOR_GROUPS:
        idx = rng.choice(n, size=int(share * n), replace=False)
        parts_x.append(mask_sensor(raw[idx], sensor))
        parts_y.append(y[idx])
        parts_w.append(w[idx])
    return np.vstack(parts_x), np.concatenate(parts_y), np.concatenate(parts_w)


def _hgb(cfg: TrainConfig, seed: int, max_iter: int | None = None, **kw) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_iter=max_iter or cfg.max_iter,
        learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
        **kw,
    )


def fit_classifier(raw: np.ndarray, y: np.ndarray, w: np.ndarray, cfg: TrainConfig) -> Pipeline:
    # One booster, its own (log-loss) probabilities, no sigmoid calibration on top: the
    # lead_acid threshold is chosen on held-out items by rank (above the most lead-like
    # non-lead item, plus a margin in logits), so a monotone recalibration adds nothing to
    # safety; a sigmoid fitted over all classes squeezed the booster's top end, so the same
    # margin cost 2-4 % of lead-acid yield on shifted lines (line c retrained: 95.2 % ->
    # 99.0 %, 0 Li-ion in lead_acid either way).
    pipe = Pipeline([("features", make_feature_transformer(cfg.features)), ("classifier", _hgb(cfg, cfg.seed))])
    pipe.fit(raw, y, classifier__sample_weight=w)
    return pipe


def cross_fit(raw: np.ndarray, y: np.ndarray, w: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, list[Pipeline]]:
    """``cfg.threshold_folds`` classifiers, each fitted (as :func:`fit_classifier`, with the
    dropout copies) on all rows but one stratified fold.  Returns each row's fold and the
    classifiers: row ``i`` is out of fold for ``pipes[fold[i]]``."""
    fold = np.empty(len(y), dtype=int)
    pipes = []
    splits = StratifiedKFold(n_splits=cfg.threshold_folds, shuffle=True, random_state=cfg.seed)
    for k, (fit_rows, out_rows) in enumerate(splits.split(raw, y)):
        fold[out_rows] = k
        rng = np.random.default_rng(cfg.seed + 1 + k)
        xa, ya, wa = _augment(raw[fit_rows], y[fit_rows], w[fit_rows], rng, cfg.dropout_augment)
        pipes.append(fit_classifier(xa, ya, wa, cfg))
    return fold, pipes


def out_of_fold_probas(
    model: SorterModel, fold: np.ndarray, pipes: Sequence[Pipeline], raw: np.ndarray
) -> dict[str, np.ndarray]:
    """Each row's chemistry probabilities from the classifier of :func:`cross_fit` that never
    saw it, as recorded (``"all"``) and with each sensor masked: :func:`choose_thresholds`'s
    ``probas``."""
    models = [dataclasses.replace(model, classifier=pipe, damage=None) for pipe in pipes]
    out = {}
    for name in ("all", *SENSOR_GROUPS):
        r = raw if name == "all" else mask_sensor(raw, name)
        proba = np.empty((len(r), len(model.classes)))
        for k, m in enumerate(models):
            proba[fold == k] = m.predict(r[fold == k])[0]
        out[name] = proba
    return out


def fit_damage(raw: np.ndarray, damaged: np.ndarray, cfg: TrainConfig) -> Pipeline | None:
    if damaged.sum() < 10 or (~damaged).sum() < 10:
        logger.warning("fewer than 10 damaged or sound Li-ion items with a 'damaged' truth: no damage detector")
        return None
    pipe = Pipeline(
        [
            ("features", make_feature_transformer(cfg.features)),
            ("classifier", _hgb(cfg, cfg.seed + 1, cfg.damage_max_iter, class_weight="balanced")),
        ]
    )
    pipe.fit(raw, damaged.astype(int))
    return pipe


def choose_damage_min(
    model: SorterModel, raw: np.ndarray, y: np.ndarray, damaged: np.ndarray, cfg: TrainConfig
) -> tuple[float, int]:
    """The damage threshold: the highest that keeps recall at ``damage_recall_target`` on the
    held-out damaged Li-ion items (less 10 %, within [0.02, 0.5]); 0.5 without any.  Returns
    the threshold and the number of held-out damaged Li-ion items."""
    is_li = y == "li_ion"
    _, p_dmg = model.predict(raw[is_li])
    d = damaged[is_li]
    if not d.any():
        return 0.5, 0
    dmg_min = float(np.quantile(p_dmg[d], 1 - cfg.damage_recall_target))
    return float(np.clip(dmg_min * 0.9, 0.02, 0.5)), int(d.sum())


def choose_thresholds(
    model: SorterModel,
    raw: np.ndarray,
    y: np.ndarray,
    damaged: np.ndarray | None,
    cfg: TrainConfig,
    probas: Mapping[str, np.ndarray] | None = None,
) -> tuple[PolicyThresholds, dict[str, Any]]:
    """Pick the policy thresholds on held-out rows, with each sensor missing in turn.

    ``probas``: the rows' chemistry probabilities as recorded (``"all"``) and with each sensor
    of :data:`~sorter.features.transformers.SENSOR_GROUPS` masked (by its name), when they do
    not come from ``model`` (training's out-of-fold probabilities); by default ``model``'s.

    ``lead_acid_min`` sits ``lead_margin_logit`` above the most lead-like non-lead-acid
    item of the held-out rows as recorded; for each optional sensor (profiler, camera,
    thermal) the same rule on the held-out rows with that sensor removed gives that
    sensor's own threshold, which an item without its reading must also clear.  Rows
    without a valid X-ray or scale reading cannot reach the lead_acid lane at all (the
    policy's critical readings), so they set no threshold (the X-ray- and scale-removed
    variants' maxima are reported as 0).
    """
    variants = [("all", raw)] + [(s, mask_sensor(raw, s)) for s in SENSOR_GROUPS]
    report: dict[str, Any] = {}
    given, probas = probas, {}
    # The density gate first: an item it stops cannot reach lead_acid, so it sets no
    # probability threshold (a lithium drop-in in a lead-acid case is stopped by physics).
    dens_lead = np.array([envelope_density(row) for row in raw[y == "lead_acid"]])
    dens_lead = dens_lead[np.isfinite(dens_lead)]
    density_min = (
        float(np.quantile(dens_lead, cfg.lead_density_quantile)) * cfg.lead_density_factor
        if dens_lead.size >= 20
        else 0.0
    )
    report["lead_density_min"] = density_min
    report["lead_density_heldout_n"] = int(dens_lead.size)

    def threshold(worst: float) -> float:
        return min(max(cfg.lead_acid_min_floor, _sigmoid(_logit(worst) + cfg.lead_margin_logit)), 1 - 1e-9)

    per_variant: dict[str, float] = {}
    for name, r in variants:
        proba = model.predict(r)[0] if given is None else given[name]
        probas[name] = proba
        # only rows the policy could send to lead_acid: critical readings present and valid
        eligible = np.array(
            [not critical_problems(row) and not envelope_density(row) < density_min for row in r], dtype=bool
        )
        nonlead = proba[(y != "lead_acid") & eligible, 0]
        m = float(nonlead.max()) if nonlead.size else 0.0
        report[f"max_p_lead_nonlead_{name}"] = m
        per_variant[name] = threshold(m)
    lead_min = per_variant["all"]
    lead_min_missing = {s: max(lead_min, per_variant[s]) for s in OPTIONAL_SENSORS}
    # "Confidently not lead-acid": below the p_lead of all but the least lead-like 0.1 % of
    # lead-acid items (those go to manual rather than to another lane), capped at 0.5.
    pl_lead = probas["all"][y == "lead_acid", 0]
    not_lead = float(min(0.5, np.quantile(pl_lead, 0.001))) if pl_lead.size else 0.5
    not_lead = min(not_lead, lead_min * 0.5)
    dmg_min = 0.5
    if damaged is not None and model.damage is not None:
        dmg_min, report["damage_heldout_n"] = choose_damage_min(model, raw, y, damaged, cfg)
    finite = raw[:, [RAW_COLUMNS.index(c) for c in ENVELOPE_COLUMNS]]
    envelope = {}
    for k, col in enumerate(ENVELOPE_COLUMNS):
        v = finite[:, k][np.isfinite(finite[:, k])]
        if v.size:
            lo, hi = float(v.min()), float(v.max())
            envelope[col] = (lo * 0.5, hi * 1.5)  # generous: only far-out items count as unknown
    t = PolicyThresholds(
        lead_acid_min=lead_min,
        lead_acid_min_missing=lead_min_missing,
        not_lead_max=not_lead,
        damage_min=dmg_min,
        lead_density_min=density_min,
        hot_excess_c=cfg.hot_excess_c,
        other_lane=cfg.other_lane,
        envelope=envelope,
    )
    report.update(
        {
            "lead_acid_min": lead_min,
            "lead_acid_min_missing": lead_min_missing,
            "not_lead_max": not_lead,
            "damage_min": dmg_min,
        }
    )
    return t, report


# The measurements that depend on the line's X-ray (its spectrum, detector and filters) even
# in line-independent units: ``sorter calibrate`` maps a new line's onto the training line's.
LINE_DEPENDENT_COLUMNS = (
    "xr_al_eq_low_p10",
    "xr_al_eq_low_p50",
    "xr_al_eq_low_p90",
    "xr_al_eq_high_p10",
    "xr_al_eq_high_p50",
    "xr_al_eq_high_p90",
    "xr_mat_p25",
    "xr_mat_p50",
    "xr_mat_p75",
    "xr_al_eq_mass_g",
    "xr_pb_eq_mass_g",
)
REFERENCE_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def reference_quantiles(raw: np.ndarray, y: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Per line-dependent column and class, the quantiles :data:`REFERENCE_QUANTILES` of the
    training items: what ``sorter calibrate`` matches a new line's measurements to."""
    out: dict[str, dict[str, list[float]]] = {}
    for col in LINE_DEPENDENT_COLUMNS:
        v = raw[:, RAW_COLUMNS.index(col)]
        out[col] = {}
        for c in CLASSES:
            x = v[(y == c) & np.isfinite(v)]
            if x.size >= 20:
                out[col][c] = [float(q) for q in np.quantile(x, REFERENCE_QUANTILES)]
    return out


def fit_energy(
    model: SorterModel,
    raw: np.ndarray,
    y: np.ndarray,
    energy: np.ndarray,
    tr: np.ndarray,
    va: np.ndarray,
    cfg: TrainConfig,
) -> tuple[Any, dict[str, Any]]:
    """The rated-energy estimator of Li-ion items (:mod:`sorter.energy`): fitted on the training
    part's Li-ion items with a rated energy; its conformal bound, its envelope (the held-out
    Li-ion items' novelty) and the report (error, coverage) on the held-out part."""
    from .energy import EnergyModel

    li_tr = tr[(y[tr] == "li_ion") & np.isfinite(energy[tr])]
    li_va = va[(y[va] == "li_ion") & np.isfinite(energy[va])]
    if li_tr.size < 30 or li_va.size < 10:
        logger.warning(
            "only %d training and %d held-out Li-ion items with a rated energy ('energy_wh'): no energy "
            "estimator; the hazard lane's cases will use the physical bound (mass x 0.30 Wh/g)",
            li_tr.size,
            li_va.size,
        )
        return None, {"fitted": False, "train_n": int(li_tr.size), "heldout_n": int(li_va.size)}
    # conformal calibration on one half of the held-out Li-ion items, the report on the other
    rng = np.random.default_rng(cfg.seed)
    cal_idx = rng.permutation(li_va)
    cal, rep = cal_idx[: cal_idx.size // 2], cal_idx[cal_idx.size // 2 :]
    em = EnergyModel.fit(raw[li_tr], energy[li_tr], raw[cal], energy[cal], seed=cfg.seed)
    nov = model.novelty_scores(raw[li_va])[:, model.classes.index("li_ion")]
    nov = nov[np.isfinite(nov)]
    if nov.size:
        em.novelty_max = max(cfg.novelty_floor, float(np.quantile(nov, cfg.novelty_quantile)) + cfg.novelty_margin)
    model.energy = em
    est, upper = model.energy_wh(raw[rep], model.novelty_scores(raw[rep])[:, model.classes.index("li_ion")])
    truth = energy[rep]
    rel = np.abs(est - truth) / truth
    bounded = np.isfinite(upper)  # an item without a weight has no bound (it is never packed)
    return em, {
        "fitted": True,
        "train_n": int(li_tr.size),
        "calibration_n": int(cal.size),
        "report_n": int(rep.size),
        "median_abs_rel_error": float(np.nanmedian(rel)),
        "median_abs_error_wh": float(np.nanmedian(np.abs(est - truth))),
        "without_bound": int((~bounded).sum()),
        "bound_coverage": float(np.mean(upper[bounded] >= truth[bounded])) if bounded.any() else None,
        "coverage_target": em.coverage,
        "mean_bound_over_truth": float(np.nanmean(upper / truth)),
        "novelty_max": em.novelty_max,
    }


def choose_novelty_max(
    model: SorterModel, raw: np.ndarray, y: np.ndarray, cfg: TrainConfig
) -> tuple[float, dict[str, Any]]:
    """The lead-acid novelty threshold from held-out lead-acid items (those the policy could
    send to lead_acid): a high quantile of their novelty, plus a margin, at least a floor."""
    lead = (y == "lead_acid") & np.array([not critical_problems(row) for row in raw], dtype=bool)
    nov = model.novelty_scores(raw[lead])[:, model.classes.index("lead_acid")]
    nov = nov[np.isfinite(nov)]
    q = float(np.quantile(nov, cfg.novelty_quantile)) if nov.size else cfg.novelty_floor
    return max(cfg.novelty_floor, q + cfg.novelty_margin), {
        "novelty_heldout_lead_acid_quantile": q,
        "novelty_heldout_lead_acid_n": int(nov.size),
    }


def heldout_metrics(
    model: SorterModel,
    raw: np.ndarray,
    y: np.ndarray,
    damaged: np.ndarray | None,
    meta: Any = None,
    classifiers: Sequence[tuple[np.ndarray, Pipeline]] | None = None,
) -> dict[str, Any]:
    """The plant's table on labelled rows, through the scoring path (:class:`~sorter.scoring.Scorer`).

    ``classifiers``: (row mask, classifier) pairs covering the rows: each row is scored by
    ``model`` with its pair's classifier instead of ``model``'s (cross-fitted training scores a
    held-out row by the classifier that never saw it)."""
    from .scoring import Scorer

    n = len(y)
    parts = [(np.ones(n, dtype=bool), model)]
    if classifiers is not None:
        parts = [(rows, dataclasses.replace(model, classifier=pipe)) for rows, pipe in classifiers]
    proba = np.empty((n, len(model.classes)))
    lanes = np.empty(n, dtype=object)
    for rows, m in parts:
        idx = np.flatnonzero(rows)
        proba[idx] = m.predict(raw[idx])[0]
        decisions = Scorer(m).decide_rows(raw[idx], (idx + 1).tolist(), [str(k) for k in idx], [""] * idx.size, meta)
        lanes[idx] = [d.lane for d in decisions]
    pred = np.array(CLASSES)[np.argmax(proba, axis=1)]
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)),
        "li_ion_in_lead_acid_lane": int(np.sum((y == "li_ion") & (lanes == "lead_acid"))),
        "non_lead_in_lead_acid_lane": int(np.sum((y != "lead_acid") & (lanes == "lead_acid"))),
        "lead_acid_to_lead_acid": float(np.mean(lanes[y == "lead_acid"] == "lead_acid"))
        if (y == "lead_acid").any()
        else None,
        "manual_rate": float(np.mean(lanes == "manual")),
    }
    if damaged is not None:
        dm = (y == "li_ion") & damaged
        out["damaged_li_ion_to_hazard"] = float(np.mean(lanes[dm] == "hazard")) if dm.any() else None
    return out


def train(log_dirs: Sequence[str], cfg: TrainConfig, *, progress: bool = False) -> tuple[SorterModel, dict[str, Any]]:
    """Train a model from labelled logs. Returns the model and a training report."""
    t0 = time.perf_counter()
    stages = Progress("train", enabled=progress)
    m = measure_logs(log_dirs, workers=cfg.workers, progress=progress)
    usable = m.ok & np.array([lab in CLASSES for lab in m.labels], dtype=bool)
    if usable.sum() < 50:
        raise SorterError(
            f"only {int(usable.sum())} labelled, usable items in {list(log_dirs)}; training needs labelled logs "
            "(a 'label' of lead_acid, li_ion or other on each line) with at least a few hundred items"
        )
    raw = m.raw[usable]
    y = np.array([m.labels[i] for i in np.flatnonzero(usable)])
    missing = [c for c in CLASSES if not (y == c).any()]
    if missing:
        raise SorterError(f"no training items labelled {missing}; every class needs examples")
    dmg_truth = [m.extras[i].get("damaged") for i in np.flatnonzero(usable)]
    has_dmg = any(isinstance(d, bool) for d in dmg_truth)
    damaged = np.array([bool(d) for d in dmg_truth]) if has_dmg else None
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=cfg.val_fraction, random_state=cfg.seed, stratify=y)
    # cross-fitting needs every class in every fold
    folds = min(cfg.threshold_folds, min(int((y == c).sum()) for c in CLASSES))
    cross = folds >= 2
    if cfg.threshold_folds >= 2 and not cross:
        logger.warning("a class has fewer than 2 items: thresholds from the held-out part, not cross-fitted")
    cfg_folds = dataclasses.replace(cfg, threshold_folds=folds)
    fit_rows = idx if cross else tr
    rng = np.random.default_rng(cfg.seed)
    w = np.array([CLASS_WEIGHT[c] for c in y])
    xa, ya, wa = _augment(raw[fit_rows], y[fit_rows], w[fit_rows], rng, cfg.dropout_augment)
    t_meas = time.perf_counter() - t0
    logger.info("fitting the chemistry classifier on %d rows (%d after augmentation)", len(fit_rows), len(ya))
    stages.stage(f"fitting the chemistry classifier on {len(ya)} rows (the longest step; no progress count)")
    pipe = fit_classifier(xa, ya, wa, cfg)
    if cross:
        stages.stage(f"cross-fitting {folds} more classifiers for out-of-fold probabilities (no progress count)")
        fold, fold_pipes = cross_fit(raw, y, w, cfg_folds)
    dmg_pipe = None
    if damaged is not None:
        li_tr = tr[y[tr] == "li_ion"]
        stages.stage(f"fitting the damage detector on {len(li_tr)} Li-ion rows")
        dmg_pipe = fit_damage(raw[li_tr], damaged[li_tr], cfg)
    model = SorterModel(pipe, PolicyThresholds(), CLASSES, dmg_pipe)
    model.novelty = NoveltyModel.fit(raw[tr], y[tr], CLASSES, seed=cfg.seed)
    model.domain = LineDomain.from_metas([read_meta(d) for d in log_dirs])
    reference = reference_quantiles(raw[tr], y[tr])
    damaged_va = None if damaged is None else damaged[va]
    if cross:
        stages.stage(f"choosing the policy thresholds on the out-of-fold probabilities of {len(y)} rows")
        thresholds, th_report = choose_thresholds(
            model, raw, y, None, cfg, probas=out_of_fold_probas(model, fold, fold_pipes, raw)
        )
        th_report["chemistry_thresholds_on"] = f"out-of-fold probabilities of all {len(y)} rows ({folds} folds)"
        if damaged_va is not None and model.damage is not None:
            dmg_min, th_report["damage_heldout_n"] = choose_damage_min(model, raw[va], y[va], damaged_va, cfg)
            thresholds = dataclasses.replace(thresholds, damage_min=dmg_min)
            th_report["damage_min"] = dmg_min
    else:
        stages.stage(f"choosing the policy thresholds on {len(va)} held-out rows")
        thresholds, th_report = choose_thresholds(model, raw[va], y[va], damaged_va, cfg)
        th_report["chemistry_thresholds_on"] = f"{len(va)} held-out rows"
    novelty_max, nov_report = choose_novelty_max(model, raw[va], y[va], cfg)
    th_report.update(nov_report, novelty_max=novelty_max)
    model.thresholds = dataclasses.replace(thresholds, novelty_max=novelty_max)
    energy_truth = np.array([rated_energy_wh(m.extras[i]) for i in np.flatnonzero(usable)])
    model.energy, energy_report = fit_energy(model, raw, y, energy_truth, tr, va, cfg)
    # held-out rows: cross-fitted, each scored by the classifier of its fold (which never saw it)
    per_fold = [(fold[va] == k, p) for k, p in enumerate(fold_pipes)] if cross else None
    metrics = heldout_metrics(model, raw[va], y[va], damaged_va, classifiers=per_fold)
    names = list(pipe.named_steps["features"].get_feature_names_out())
    report = {
        "feature_names": names,
        "raw_columns": list(RAW_COLUMNS),
        "measurements": MEASUREMENTS_VERSION,
        "training": {
            # the logs' names, not this machine's paths: the manifest travels with the model
            "logs": [Path(d).name for d in log_dirs],
            "items": int(len(m.labels)),
            "usable": int(usable.sum()),
            "train_rows": int(len(fit_rows)),
            "heldout_rows": int(len(va)),
            "class_counts": {c: int((y == c).sum()) for c in CLASSES},
            "data_sha256": data_digest(m),
            "log_data_sha256": log_digests(m, log_dirs),
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "seconds_measure": round(t_meas, 1),
            "seconds_total": round(time.perf_counter() - t0, 1),
        },
        "threshold_selection": th_report,
        "reference_quantiles": reference,
        "heldout_metrics": metrics,
        "energy_heldout": energy_report,
    }
    return model, report


def train_and_save(
    log_dirs: Sequence[str], out_dir: str, cfg: TrainConfig, *, name: str = "sorter", progress: bool = False
) -> tuple[SorterModel, dict[str, Any]]:
    """Train, then write the model directory with its manifest and model card."""
    from .report import model_card

    model, report = train(log_dirs, cfg, progress=progress)
    save_model(model, out_dir, name=name, extra_manifest=report)
    (model.path / "MODEL_CARD.md").write_text(model_card(model.manifest), encoding="utf-8")  # type: ignore[operator]
    return model, report
