"""``sorter calibrate``: fit a trained model to a new line from a short labelled log of it.

A model measures physics through a line's sensors.  What depends on the line, and is
re-fitted here from a few hundred labelled items of it (retraining needs thousands):

1. **measurement normalisation**: the X-ray's aluminium-equivalent areal densities, material
   scale and equivalent masses (:data:`sorter.train.LINE_DEPENDENT_COLUMNS`) carry the
   line's spectrum and detector even in physical units (beam hardening bends them).  For
   each, an affine map ``a * x + b`` takes the new line's class quantiles onto the training
   line's (stored in the manifest at training time): the step-wedge calibration of an
   industrial dual-energy sorter, done with labelled items instead of wedges;
2. **policy thresholds** on the calibration items, with each sensor missing in turn, by the
   same rules as training (:func:`sorter.train.choose_thresholds`): the lead_acid threshold
   above the most lead-like non-lead item plus the safety margin, never below
   :data:`CALIBRATION_LEAD_FLOOR` (a few hundred items show less of the tail than training's
   thousands), the damage threshold;
3. **novelty threshold** from the calibration lead-acid items (:func:`sorter.train.choose_novelty_max`);
4. **line domain**: the new model is valid for the calibration log's declared line.

The classifier's trees are not refitted, and the training envelope of weight and size is kept
(policy rule 3): the report counts the calibration items outside it, which always go to
manual, and a warning names them when they are 1 % or more of the lead-acid items.  The
result is a new model directory (the same skops files, a new manifest recording the line, the
maps and the calibration log) and a report with the plant's safety table on the calibration
items.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .batch import MeasuredLog, measure_logs
from .domain import LineDomain
from .errors import SorterError
from .features.measure import RAW_COLUMNS
from .logformat import read_meta
from .model import SorterModel, inherited_manifest, load_model, save_model
from .policy import outside_envelope
from .train import (
    CLASSES,
    LINE_DEPENDENT_COLUMNS,
    REFERENCE_QUANTILES,
    TrainConfig,
    choose_novelty_max,
    choose_thresholds,
    heldout_metrics,
)

logger = logging.getLogger(__name__)

MIN_ITEMS_PER_CLASS = 10
SLOPE_RANGE = (0.25, 4.0)  # a column whose map falls outside this is dropped (read as missing)
MAX_DROPPED = 2  # more dropped columns than this: not a line difference but a broken sensor or log
# The lowest lead_acid threshold a calibration may set.  Its threshold rule (the most lead-like
# non-lead item plus a margin) sees the few hundred non-lead items of a calibration log; on a
# line of another renderer a Li-ion pack the log did not have scored p 0.96-0.98 under a
# threshold at training's floor of 0.9 (benchmarks.calibration_floor), so calibration never
# sets it below this.
CALIBRATION_LEAD_FLOOR = 0.99
# A share of the calibration log's lead-acid items at least this large outside the model's
# training envelope earns a warning: they always go to manual, whatever the calibration.
ENVELOPE_WARN_SHARE = 0.01


def envelope_coverage(base: SorterModel, raw: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """How many of the calibration items lie outside ``base``'s training envelope (policy rule
    3: always manual), per class and, for the lead-acid ones, per envelope column with their
    measured range; warns when the lead-acid share reaches :data:`ENVELOPE_WARN_SHARE`.

    Calibration keeps the envelope: the classifier's trees never saw heavier or larger items
    than training's, and on a plant the Li-ion packs of that size (traction, storage) are
    ballasted to lead-acid weights, so a few hundred labelled items are no proof they sort
    right.  Retraining with the line's items widens it."""
    cols = outside_envelope(base.thresholds, raw)
    out = np.logical_or.reduce([np.zeros(len(y), dtype=bool), *cols.values()])
    lead = y == "lead_acid"
    n_lead, k_lead = int(lead.sum()), int((out & lead).sum())
    beyond = {}
    for col, m in cols.items():
        v = raw[m & lead, RAW_COLUMNS.index(col)]
        if v.size:
            lo, hi = base.thresholds.envelope[col]
            beyond[col] = {"items": int(v.size), "measured": [float(v.min()), float(v.max())], "envelope": [lo, hi]}
    report = {
        "items": {c: int((out & (y == c)).sum()) for c in CLASSES},
        "lead_acid_share": k_lead / n_lead if n_lead else 0.0,
        "lead_acid_beyond": beyond,
    }
    if n_lead and k_lead / n_lead >= ENVELOPE_WARN_SHARE:
        what = "; ".join(
            f"{col} {b['measured'][0]:.4g}-{b['measured'][1]:.4g} (envelope {b['envelope'][0]:.4g}-{b['envelope'][1]:.4g})"
            for col, b in beyond.items()
        )
        logger.warning(
            "calibration: %d of %d lead-acid items of this line (%.1f %%) lie outside the model's training "
            "envelope (%s): they always go to manual, and calibration cannot change that (the model never saw "
            "such items). To sort them, retrain on this line ('sorter train') with these items in the log",
            k_lead,
            n_lead,
            100 * k_lead / n_lead,
            what,
        )
    return report


def fit_normalisation(
    raw: np.ndarray, y: np.ndarray, reference: dict[str, dict[str, list[float]]]
) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """Per line-dependent column, the affine map of this line's class quantiles onto the
    reference (training) line's, by least squares over the quantiles of every class with
    enough items on both lines.  Columns without enough points keep the identity; a column
    whose map's slope is outside :data:`SLOPE_RANGE` is dropped (mapped to NaN, which the
    classifier reads as missing), and more than :data:`MAX_DROPPED` of them refuse the line."""
    maps: dict[str, tuple[float, float]] = {}
    report: dict[str, Any] = {}
    dropped: list[str] = []
    for col in LINE_DEPENDENT_COLUMNS:
        ref = reference.get(col, {})
        v = raw[:, RAW_COLUMNS.index(col)]
        xs, ys = [], []
        for c in CLASSES:
            x = v[(y == c) & np.isfinite(v)]
            if c in ref and x.size >= MIN_ITEMS_PER_CLASS:
                xs += list(np.quantile(x, REFERENCE_QUANTILES))
                ys += ref[c]
        if len(xs) < 2 * len(REFERENCE_QUANTILES) or np.ptp(xs) <= 1e-9:
            report[col] = "identity (too few items or no spread)"
            continue
        a, b = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
        if not SLOPE_RANGE[0] <= a <= SLOPE_RANGE[1]:
            # No affine map carries this column over (e.g. the lead-equivalent mass when both of
            # the line's energies lie below lead's K-edge at 88 keV): it is dropped, read as
            # missing by the classifier, and the thresholds below are chosen without it.
            maps[col] = (0.0, math.nan)
            report[col] = f"dropped: slope {a:.3g} outside {SLOPE_RANGE}"
            dropped.append(f"{col} (slope {a:.3g})")
            continue
        maps[col] = (float(a), float(b))
        report[col] = [round(float(a), 4), round(float(b), 4)]
    if len(dropped) > MAX_DROPPED:
        raise SorterError(
            f"calibration: {len(dropped)} X-ray measurements map onto the training line's with slopes outside "
            f"{SLOPE_RANGE} ({', '.join(dropped)}); that is no line difference a calibration can absorb (a broken "
            "sensor, a log of another kind, wrong labels?). Check the log, or retrain on this line ('sorter train')"
        )
    if dropped:
        logger.warning(
            "calibration: %s cannot be mapped onto the training line's and %s dropped (read as missing); "
            "the thresholds are chosen without %s. Retraining on this line ('sorter train') keeps %s",
            ", ".join(dropped),
            "is" if len(dropped) == 1 else "are",
            "it" if len(dropped) == 1 else "them",
            "it" if len(dropped) == 1 else "them",
        )
    return maps, report


def calibrate(
    log_dirs: Sequence[str],
    base: SorterModel,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
    measured: MeasuredLog | None = None,
    lead_floor: float = CALIBRATION_LEAD_FLOOR,
) -> tuple[SorterModel, dict[str, Any]]:
    """A copy of ``base`` calibrated for the line of ``log_dirs`` (labelled), and a report.
    ``measured``: the logs already measured (:func:`sorter.batch.measure_logs`); ``lead_floor``:
    the lowest lead_acid threshold the calibration may set."""
    t0 = time.perf_counter()
    metas = [read_meta(d) for d in log_dirs]
    domain = LineDomain.from_metas(metas)
    if len(domain.lines) != 1:
        raise SorterError(
            f"the calibration logs declare {len(domain.lines)} different lines "
            f"({[s.line for s in domain.lines]}); calibrate for one line at a time"
        )
    reference = base.manifest.get("reference_quantiles")
    if not reference:
        raise SorterError(
            f"model {base.model_id} has no reference quantiles (trained before calibration existed); "
            "retrain it with this sorter ('sorter train') to calibrate it"
        )
    m = measured if measured is not None else measure_logs(log_dirs, workers=workers, progress=progress)
    usable = m.ok & np.array([lab in CLASSES for lab in m.labels])
    raw = m.raw[usable]
    y = np.array([m.labels[i] for i in np.flatnonzero(usable)])
    short = [c for c in CLASSES if (y == c).sum() < MIN_ITEMS_PER_CLASS]
    if short:
        raise SorterError(
            f"calibration needs at least {MIN_ITEMS_PER_CLASS} labelled items of each class; "
            f"{short} have fewer in {list(log_dirs)}. Record more of them (about 500 items in all)"
        )
    dmg = [m.extras[i].get("damaged") for i in np.flatnonzero(usable)]
    damaged = np.array([bool(d) for d in dmg]) if any(isinstance(d, bool) for d in dmg) else None
    maps, map_report = fit_normalisation(raw, y, reference)
    model = dataclasses.replace(base, normalisation=maps, domain=domain, manifest=dict(base.manifest), path=None)
    cfg = TrainConfig(seed=seed, lead_acid_min_floor=lead_floor)
    thresholds, th_report = choose_thresholds(model, raw, y, damaged, cfg)
    novelty_max, nov_report = choose_novelty_max(model, raw, y, cfg)
    model.thresholds = dataclasses.replace(
        thresholds,
        envelope=base.thresholds.envelope,
        novelty_max=novelty_max,
        hot_excess_c=base.thresholds.hot_excess_c,
        other_lane=base.thresholds.other_lane,
    )
    th_report.update(nov_report, novelty_max=novelty_max)
    metrics = heldout_metrics(model, raw, y, damaged, metas[0])
    envelope = envelope_coverage(base, raw, y)
    report = {
        "base_model": base.model_id,
        "logs": [Path(d).name for d in log_dirs],
        "line": domain.lines[0].to_json(),
        "items": int(len(m.labels)),
        "usable": int(usable.sum()),
        "class_counts": {c: int((y == c).sum()) for c in CLASSES},
        "normalisation": map_report,
        "threshold_selection": th_report,
        "outside_training_envelope": envelope,
        "metrics_on_calibration_items": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return model, report


def calibrate_and_save(
    log_dirs: Sequence[str],
    model_dir: str | None,
    out_dir: str,
    *,
    name: str | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> tuple[SorterModel, dict[str, Any]]:
    """Calibrate the model in ``model_dir`` (None: the shipped one) for the logs' line; write
    the new model directory with its manifest, model card and ``calibration-report/`` (the
    plant's safety table on the calibration items)."""
    from .report import evaluate_measured, model_card, require_matplotlib

    require_matplotlib("sorter calibrate's calibration report")  # before minutes of work, not after
    base = load_model(model_dir)
    m = measure_logs(log_dirs, workers=workers, progress=progress)
    model, report = calibrate(log_dirs, base, seed=seed, measured=m)
    manifest = inherited_manifest(base.manifest)
    manifest["calibration"] = report
    line = report["line"]["line"]
    save_model(model, out_dir, name=name or f"{base.manifest.get('name', 'sorter')}-{line}", extra_manifest=manifest)
    (Path(out_dir) / "MODEL_CARD.md").write_text(model_card(model.manifest), encoding="utf-8")
    evaluate_measured(
        m,
        model,
        Path(out_dir) / "calibration-report",
        title=f"on its calibration items ({', '.join(report['logs'])}; in-sample)",
        meta=read_meta(log_dirs[0]),
    )
    return model, report
