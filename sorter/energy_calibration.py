"""Recalibrating a trained model's energy bound on held-out labelled logs (``sorter model energy-bound``).

The group-conditional bound itself is :meth:`sorter.energy.EnergyModel.with_group_bound`; this
module measures the held-out logs, applies it to a model directory's energy model and writes
the result as a new model directory (the classifier, its thresholds and the estimate unchanged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .batch import measure_logs
from .energy import DEFAULT_GROUP_EDGES_WH, rated_energy_wh
from .errors import SorterError
from .model import inherited_manifest, load_model, save_model
from .report import model_card

__all__ = ["recalibrate_bound"]


def recalibrate_bound(
    model_dir: str | None,
    log_dirs: Sequence[str],
    out_dir: str,
    *,
    edges_wh: Sequence[float] = DEFAULT_GROUP_EDGES_WH,
    adaptive: bool = False,
    hazard_groups: bool = False,
    coverage: float | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Give the model in ``model_dir`` (None: the shipped one) a group-conditional energy bound
    calibrated on the labelled Li-ion items of ``log_dirs`` (held-out logs of the model's line,
    never its training logs), and write it as a new model directory ``out_dir``.  The
    classifier, its thresholds and the energy estimate are unchanged; the manifest records the
    calibration (per group: items, quantile).

    ``adaptive``: conformalized quantile regression.  The items are split at random (``seed``)
    into two halves: a quantile regressor of how far each kind of item's true energy lies above
    its estimate is fitted on one, the conformal offsets are calibrated on the other.
    ``hazard_groups``: the items the model sends to the hazard lane (scored here, as the line
    scores them) get quantiles of their own; give logs with many damaged Li-ion items
    (``sorter simulate --damaged-rate``).  ``coverage``: the conformal level (default the model's)."""
    base = load_model(model_dir)
    if base.energy is None:
        raise SorterError(f"{base.path}: the model has no energy estimator to calibrate; train one with 'sorter train'")
    training = set(base.manifest.get("training", {}).get("logs", []) or [])
    reused = sorted({str(d) for d in log_dirs if Path(d).name in training})
    if reused:
        raise SorterError(
            f"{', '.join(reused)}: named like a log the model was trained on; the bound must be calibrated "
            "on held-out items (simulate or record a fresh labelled log)"
        )
    m = measure_logs(log_dirs, workers=workers, progress=progress)
    truth = np.array([rated_energy_wh(e) for e in m.extras])
    li = np.array([lab == "li_ion" for lab in m.labels], dtype=bool) & m.ok & np.isfinite(truth)
    if not li.any():
        raise SorterError(
            f"{', '.join(map(str, log_dirs))}: no labelled Li-ion item with a rated energy ('energy_wh'); "
            "pass labelled logs of the model's line"
        )
    rows = np.flatnonzero(li)
    hazard = None
    if hazard_groups:
        from .lanes import Lane
        from .scoring import Scorer

        decisions = Scorer(base, allow_line_mismatch=True).decide_rows(
            m.raw[rows], [m.line_nos[k] for k in rows], [m.item_ids[k] for k in rows], [""] * rows.size
        )
        hazard = np.array([d.lane == Lane.HAZARD for d in decisions])
        if not hazard.any():
            raise SorterError(
                f"{', '.join(map(str, log_dirs))}: the model sends none of these Li-ion items to the hazard lane; "
                "pass logs with damaged items (sorter simulate --damaged-rate 1) or leave out --hazard-groups"
            )
    raw = base.normalise(m.raw[rows])
    fit = None
    cal = np.ones(rows.size, dtype=bool)
    if adaptive:
        cal = np.random.default_rng(seed).permutation(rows.size) % 2 == 0
        fit = (raw[~cal], truth[rows][~cal])
    energy, report = base.energy.with_group_bound(
        raw[cal],
        truth[rows][cal],
        edges_wh,
        coverage=coverage,
        hazard_cal=None if hazard is None else hazard[cal],
        fit=fit,
        seed=seed,
    )
    report["logs"] = [Path(d).name for d in log_dirs]
    model = base
    model.energy = energy
    manifest = inherited_manifest(base.manifest)
    manifest["energy_bound_calibration"] = report
    save_model(model, out_dir, name=str(base.manifest.get("name", "sorter")), extra_manifest=manifest)
    (Path(out_dir) / "MODEL_CARD.md").write_text(model_card(model.manifest), encoding="utf-8")
    return model, report
