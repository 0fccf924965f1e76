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
    workers: int = 1,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Give the model in ``model_dir`` (None: the shipped one) a group-conditional energy bound
    calibrated on the labelled Li-ion items of ``log_dirs`` (held-out logs of the model's line,
    never its training logs), and write it as a new model directory ``out_dir``.  The
    classifier, its thresholds and the energy estimate are unchanged; the manifest records the
    calibration (per group: items, quantile)."""
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
    energy, report = base.energy.with_group_bound(base.normalise(m.raw[li]), truth[li], edges_wh)
    report["logs"] = [Path(d).name for d in log_dirs]
    model = base
    model.energy = energy
    manifest = inherited_manifest(base.manifest)
    manifest["energy_bound_calibration"] = report
    save_model(model, out_dir, name=str(base.manifest.get("name", "sorter")), extra_manifest=manifest)
    (Path(out_dir) / "MODEL_CARD.md").write_text(model_card(model.manifest), encoding="utf-8")
    return model, report
