"""``sorter evaluate``: metrics, plots and a report for a model on a labelled log; model cards.

The headline table is the one the plant cares about: Li-ion items in the lead_acid
lane (with the exact 95 % upper bound on the rate when the count is zero), the purity
of the lead_acid lane, lead-acid recall, the manual rate, damaged Li-ion sent to
hazard; then the same table with each sensor removed in turn, per-product and
per-hard-case errors, and the items that went wrong.

Why this module is long (about 920 lines): the metrics, their plots, the Markdown report
and the model card read the same metric dictionaries, which stay readable side by side;
matplotlib is imported only where a plot is drawn (the ``report`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import LANES
from .batch import MeasuredLog, measure_logs
from .errors import SorterError
from .features.measure import RAW_COLUMNS
from .features.transformers import SENSOR_GROUPS, mask_sensor
from .logformat import check_log_dir, read_meta
from .model import SorterModel, load_model
from .progress import Progress
from .readings import LogMeta
from .scoring import Scorer

logger = logging.getLogger(__name__)

CLASSES = ("lead_acid", "li_ion", "other")
PRODUCT_ROWS = 40  # rows of the per-product table in report.md (metrics.json has them all)
HAZARD_CASE_WH = 2100.0  # DoT special permit: at most 2.1 kWh of damaged Li-ion per fire-safe case


def upper_bound_95(k: int, n: int) -> float:
    """Exact (Clopper-Pearson) one-sided 95 % upper bound on a rate with ``k`` events in ``n``."""
    if n == 0:
        return float("nan")
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, k + 1, n - k))


def lanes_for(
    model: SorterModel, raw: np.ndarray, meta: LogMeta | None = None, *, allow_line_mismatch: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Probabilities, P(damaged), lanes and reasons of raw rows, through the scoring path
    (:meth:`sorter.scoring.Scorer.decide_rows`, with the line check for ``meta``)."""
    proba, p_dmg = model.predict(raw)
    n = raw.shape[0]
    scorer = Scorer(model, allow_line_mismatch=allow_line_mismatch)
    decisions = scorer.decide_rows(raw, list(range(1, n + 1)), [None] * n, [""] * n, meta)
    return proba, p_dmg, np.array([d.lane for d in decisions]), [d.reason for d in decisions]


def headline(y: np.ndarray, lanes: np.ndarray, damaged: np.ndarray | None) -> dict[str, Any]:
    li = y == "li_ion"
    lead = y == "lead_acid"
    in_lead = lanes == "lead_acid"
    k_li = int(np.sum(li & in_lead))
    k_nonlead = int(np.sum(~lead & in_lead))
    out: dict[str, Any] = {
        "items": int(len(y)),
        "li_ion_total": int(li.sum()),
        "li_ion_in_lead_acid": k_li,
        "li_ion_in_lead_acid_rate_ub95": upper_bound_95(k_li, int(li.sum())),
        "non_lead_total": int((~lead).sum()),
        "non_lead_in_lead_acid": k_nonlead,
        "lead_acid_lane_items": int(in_lead.sum()),
        "lead_acid_lane_impurity_per_10k": (1e4 * k_nonlead / in_lead.sum()) if in_lead.any() else None,
        "lead_acid_lane_impurity_ub95_per_10k": 1e4 * upper_bound_95(k_nonlead, int(in_lead.sum()))
        if in_lead.any()
        else None,
        "lead_acid_total": int(lead.sum()),
        "lead_acid_recall": float(np.mean(in_lead[lead])) if lead.any() else float("nan"),
        "manual_rate": float(np.mean(lanes == "manual")),
        "lanes": {lane: int((lanes == lane).sum()) for lane in LANES},
    }
    if damaged is not None:
        dm = li & damaged
        out["damaged_li_ion"] = int(dm.sum())
        out["damaged_to_hazard"] = float(np.mean(lanes[dm] == "hazard")) if dm.any() else None
    else:
        out["damaged_to_hazard"] = None
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.4g}"
        # a pipe inside a cell would end the cell (and a newline the row)
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(fmt(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


REPORT_EXTRA_HINT = "pip install 'sorter[report]'"


def require_matplotlib(what: str) -> None:
    """Raise a :class:`SorterError` (the CLI's exit 2) saying how to install the report extra
    when matplotlib, which only the reports' plots need, is not installed."""
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ImportError as err:
        raise SorterError(
            f"{what} draws its plots with matplotlib, which is not installed; install the "
            f"report extra: {REPORT_EXTRA_HINT}"
        ) from err


def _plots(
    out: Path,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray,
    lanes: np.ndarray,
    importances: list[tuple[str, float]],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    files = []
    cm = confusion_matrix(y, pred, labels=list(CLASSES))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center")
    ax.set_xticks(range(3), CLASSES)
    ax.set_yticks(range(3), CLASSES)
    ax.set_xlabel("predicted chemistry")
    ax.set_ylabel("label")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    files.append("confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cal = calibration(y, proba)
    for k, c in enumerate(CLASSES):
        bins = _merge_close(cal["bins"][c])
        xs = [b["p_mean"] for b in bins]
        ys = [b["observed"] for b in bins]
        (line,) = ax.plot(xs, ys, "o-", label=f"{c}: ECE {cal['ece'][c]:.2g}, Brier {cal['brier'][c]:.2g}")
        for b in bins:  # how many items each point stands for
            ax.annotate(
                str(b["n"]),
                (b["p_mean"], b["observed"]),
                textcoords="offset points",
                xytext=(4, -10 + 8 * k),
                fontsize=7,
                color=line.get_color(),
            )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("predicted probability (mean of the bin)")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability: {RELIABILITY_BINS} quantile bins per class, items per bin")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    files.append("reliability.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.25
    for k, c in enumerate(CLASSES):
        counts = [int(np.sum((y == c) & (lanes == lane))) for lane in LANES]
        bars = ax.bar(np.arange(4) + (k - 1) * width, counts, width, label=c)
        ax.bar_label(bars, labels=[str(n) if n else "" for n in counts], fontsize=7)
    ax.set_xticks(range(4), LANES)
    ax.set_yscale("symlog")
    ax.set_ylabel("items")
    ax.set_title("Lanes by label")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "lanes.png", dpi=100)
    plt.close(fig)
    files.append("lanes.png")

    if importances:
        top = importances[:20][::-1]
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.barh([n for n, _ in top], [v for _, v in top])
        ax.set_xlabel("increase in log-loss when shuffled")
        ax.set_title("Permutation importance (raw measurements)")
        fig.tight_layout()
        fig.savefig(out / "importances.png", dpi=100)
        plt.close(fig)
        files.append("importances.png")
    return files


RELIABILITY_BINS = 10


def calibration(y: np.ndarray, proba: np.ndarray, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Reliability of each class's probability, one class against the rest.

    Items are put in ``bins`` quantile bins of the predicted probability (equal counts,
    so every bin holds data even when most probabilities sit near 0 or 1; tied edges
    merge bins).  Returns, per class, the bins (count, mean predicted probability,
    observed frequency), the expected calibration error (the count-weighted mean gap)
    and the Brier score; and the multiclass Brier score (sum over classes, mean over items).
    """
    out: dict[str, Any] = {"bins": {}, "ece": {}, "brier": {}}
    n = len(y)
    for k, c in enumerate(CLASSES):
        p = proba[:, k]
        hit = (y == c).astype(float)
        out["brier"][c] = float(np.mean((p - hit) ** 2)) if n else float("nan")
        edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1))) if n else np.array([0.0, 1.0])
        idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
        rows, ece = [], 0.0
        for b in range(max(len(edges) - 1, 1)):
            sel = idx == b
            if not sel.any():
                continue
            pm, ob = float(p[sel].mean()), float(hit[sel].mean())
            rows.append({"n": int(sel.sum()), "p_mean": pm, "observed": ob})
            ece += sel.sum() / n * abs(pm - ob)
        out["bins"][c] = rows
        out["ece"][c] = float(ece) if n else float("nan")
    onehot = np.stack([(y == c).astype(float) for c in CLASSES], axis=1) if n else np.zeros((0, len(CLASSES)))
    out["brier_multiclass"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1))) if n else float("nan")
    return out


def _merge_close(bins: list[dict[str, Any]], width: float = 0.02) -> list[dict[str, Any]]:
    """Bins whose mean probabilities lie within ``width`` of each other drawn as one point
    (a confident model puts many quantile bins at almost 0 or 1), counts added."""
    out: list[dict[str, Any]] = []
    for b in bins:
        if out and b["p_mean"] - out[-1]["p_first"] < width:
            m = out[-1]
            n = m["n"] + b["n"]
            m["p_mean"] = (m["p_mean"] * m["n"] + b["p_mean"] * b["n"]) / n
            m["observed"] = (m["observed"] * m["n"] + b["observed"] * b["n"]) / n
            m["n"] = n
        else:
            out.append({**b, "p_first": b["p_mean"]})
    return out


def permutation_importances(
    model: SorterModel, raw: np.ndarray, y: np.ndarray, seed: int = 0, max_rows: int = 1500
) -> list[tuple[str, float]]:
    """Importance of each raw measurement column: log-loss increase when it is shuffled."""
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), size=min(max_rows, len(y)), replace=False)
    x, yy = raw[idx], y[idx]
    base = log_loss(yy, model.predict(x)[0], labels=list(CLASSES))
    out = []
    for j, name in enumerate(RAW_COLUMNS):
        xp = x.copy()
        xp[:, j] = xp[rng.permutation(len(idx)), j]
        out.append((name, float(log_loss(yy, model.predict(xp)[0], labels=list(CLASSES)) - base)))
    return sorted(out, key=lambda t: -t[1])


def evaluate_measured(
    m: MeasuredLog,
    model: SorterModel,
    out_dir: str | Path,
    *,
    title: str = "",
    meta: LogMeta | None = None,
    allow_line_mismatch: bool = False,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write metrics.json, report.md and the plots for measured, labelled items into ``out_dir``.

    The files are written into a new sibling folder first and moved into ``out_dir`` only
    when all are written: a failure leaves ``out_dir`` as it was (or absent).  ``notes``
    are warnings shown at the top of the report (e.g. "this is the training data"). ``meta``
    is the log's (its line is checked as scoring checks it; see :meth:`sorter.scoring.Scorer.line_closed`).
    """
    out = Path(out_dir)
    keep = m.ok & np.array([lab in CLASSES for lab in m.labels], dtype=bool)
    if not keep.any():
        labelled = sum(lab is not None for lab in m.labels)
        what = (
            f"none of its {len(m.labels)} lines carries a usable item with a 'label' field"
            if labelled == 0
            else f"none of its {labelled} labelled lines holds a usable item"
        )
        raise SorterError(
            f"nothing to evaluate: {what}. evaluate compares the lanes with each item's 'label' "
            f"({', '.join(CLASSES)}); pass a labelled log (sorter simulate writes labels unless --unlabelled), "
            "or use sorter score for an unlabelled one"
            if len(m.labels)
            else "nothing to evaluate: the log has no items; pass a labelled log with items"
        )
    if out.exists() and not out.is_dir():
        raise SorterError(f"--out {out} is a file; the report is a folder: choose a folder name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        metrics = _evaluate_into(tmp, m, keep, model, title, list(notes), meta, allow_line_mismatch)
        out.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metrics


def _evaluate_into(
    out: Path,
    m: MeasuredLog,
    keep: np.ndarray,
    model: SorterModel,
    title: str,
    notes: list[str],
    meta: LogMeta | None = None,
    allow_line_mismatch: bool = False,
) -> dict[str, Any]:
    raw = m.raw[keep]
    sel = np.flatnonzero(keep)
    y = np.array([m.labels[i] for i in sel])
    extras = [m.extras[i] for i in sel]
    dmg_vals = [e.get("damaged") for e in extras]
    damaged = np.array([bool(d) for d in dmg_vals]) if any(isinstance(d, bool) for d in dmg_vals) else None
    proba, p_dmg, lanes, reasons = lanes_for(model, raw, meta, allow_line_mismatch=allow_line_mismatch)
    pred = np.array(CLASSES)[np.argmax(proba, axis=1)]
    metrics: dict[str, Any] = {
        "model": model.model_id,
        "items": int(len(m.labels)),
        "scored_items": int(keep.sum()),
        "unusable_lines": int((~m.ok).sum()),
        "accuracy": float(np.mean(pred == y)),
        "notes": notes,
        "all_sensors": headline(y, lanes, damaged),
    }
    cal = calibration(y, proba)
    metrics["calibration"] = {
        "ece": cal["ece"],
        "brier": cal["brier"],
        "brier_multiclass": cal["brier_multiclass"],
        "bins": cal["bins"],
    }
    # each sensor missing in turn
    per_sensor = {}
    for s in SENSOR_GROUPS:
        _, _, lanes_s, _ = lanes_for(model, mask_sensor(raw, s), meta, allow_line_mismatch=allow_line_mismatch)
        per_sensor[s] = headline(y, lanes_s, damaged)
    metrics["sensor_missing"] = per_sensor
    # natural dropouts in the log: items with each sensor missing
    nat = {}
    for s, cols in SENSOR_GROUPS.items():
        j = RAW_COLUMNS.index(cols[0] if s != "xray" else "xr_area_mm2")
        miss = np.isnan(raw[:, j])
        if miss.any():
            nat[s] = {
                "items": int(miss.sum()),
                "li_ion_in_lead_acid": int(np.sum(miss & (y == "li_ion") & (lanes == "lead_acid"))),
                "lanes": dict(Counter(lanes[miss].tolist())),
            }
    metrics["natural_dropouts"] = nat
    # per product and per hard case
    prod: dict[str, Counter] = defaultdict(Counter)
    for k, e in enumerate(extras):
        key = f"{y[k]} | {e.get('product', '?')}"
        c = prod[key]
        c["n"] += 1
        c["wrong_chemistry"] += int(pred[k] != y[k])
        c[f"lane_{lanes[k]}"] += 1
        c["dangerous"] += int(y[k] == "li_ion" and lanes[k] == "lead_acid")
    metrics["per_product"] = {k: dict(v) for k, v in sorted(prod.items())}
    hard: dict[str, Counter] = defaultdict(Counter)
    for k, e in enumerate(extras):
        for tag in e.get("hard_cases", []) or []:
            c = hard[tag]
            c["n"] += 1
            c["wrong_chemistry"] += int(pred[k] != y[k])
            c["li_ion_in_lead_acid"] += int(y[k] == "li_ion" and lanes[k] == "lead_acid")
            c["lead_acid_not_in_lead_lane"] += int(y[k] == "lead_acid" and lanes[k] != "lead_acid")
            c["to_manual"] += int(lanes[k] == "manual")
    metrics["hard_cases"] = {k: dict(v) for k, v in sorted(hard.items())}
    # hazard cases needed under the 2.1 kWh limit
    hz_wh = [float(e.get("energy_wh") or 0.0) for k, e in enumerate(extras) if lanes[k] == "hazard"]
    metrics["hazard"] = {
        "items": len(hz_wh),
        "energy_wh_known": float(sum(hz_wh)),
        "cases_at_2_1_kwh": int(math.ceil(sum(hz_wh) / HAZARD_CASE_WH)) if hz_wh else 0,
    }
    energy_plot = None
    metrics["energy"], energy_rows = energy_metrics(model, raw, y, extras, lanes == "hazard")
    if energy_rows is not None:
        energy_plot = _energy_plot(out, *energy_rows)
    # what went wrong
    missed_damage = damaged if damaged is not None else np.zeros(len(y), bool)
    wrong = [
        k
        for k in range(len(y))
        if (y[k] == "li_ion" and lanes[k] == "lead_acid")
        or (y[k] != "lead_acid" and lanes[k] == "lead_acid")
        or pred[k] != y[k]
        or (y[k] == "lead_acid" and lanes[k] != "lead_acid")
        or (y[k] == "li_ion" and missed_damage[k] and lanes[k] != "hazard")
    ]
    wrong.sort(key=lambda k: (-(y[k] != "lead_acid" and lanes[k] == "lead_acid"), -float(proba[k].max())))
    metrics["wrong_items"] = [
        {
            "line_no": m.line_nos[sel[k]],
            "item_id": m.item_ids[sel[k]],
            "label": str(y[k]),
            "chemistry": str(pred[k]),
            "lane": str(lanes[k]),
            "reason": reasons[k],
            "product": extras[k].get("product"),
            "pose": extras[k].get("pose"),
            "hard_cases": extras[k].get("hard_cases"),
            "damage": extras[k].get("damage"),
            "p": [round(float(x), 4) for x in proba[k]],
            "p_damaged": round(float(p_dmg[k]), 4),
        }
        for k in wrong[:60]
    ]
    metrics["wrong_items_total"] = len(wrong)
    imps = permutation_importances(model, raw, y)
    metrics["importances_top"] = imps[:25]
    plots = _plots(out, y, pred, proba, lanes, imps) + ([energy_plot] if energy_plot else [])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(render_report(metrics, plots, title))
    return metrics


def energy_metrics(
    model: SorterModel,
    raw: np.ndarray,
    y: np.ndarray,
    extras: list[dict[str, Any]],
    hazard: np.ndarray | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None]:
    """The rated-energy estimate and bound (:mod:`sorter.energy`) against the truth, on every Li-ion
    item whose rated energy the log records: median error, bound coverage, per product family.
    ``hazard`` (bool per row: the item went to the hazard lane) bounds those items as the line does
    and reports the hazard lane's coverage on its own."""
    truth = np.array(
        [float(e["energy_wh"]) if isinstance(e.get("energy_wh"), (int, float)) else np.nan for e in extras]
    )
    li = (y == "li_ion") & np.isfinite(truth) & (truth > 0)
    if not li.any():
        return {"items": 0}, None
    nov = model.novelty_scores(raw[li])[:, model.classes.index("li_ion")]
    hz = None if hazard is None else np.asarray(hazard, dtype=bool)[li]
    est, upper = model.energy_wh(raw[li], nov, hz)
    t = truth[li]
    fam = [str(e.get("product_family") or e.get("kind") or "?") for e, keep in zip(extras, li) if keep]
    ok = np.isfinite(upper)
    per: dict[str, dict[str, Any]] = {}
    for f in sorted(set(fam)):
        sel = np.array([x == f for x in fam]) & ok
        if sel.any():
            per[f] = {
                "items": int(sel.sum()),
                "median_abs_rel_error": float(np.nanmedian(np.abs(est[sel] - t[sel]) / t[sel])),
                "bound_coverage": float(np.mean(upper[sel] >= t[sel])),
            }
    return {
        "items": int(li.sum()),
        "without_bound": int((~ok).sum()),
        "median_abs_error_wh": float(np.nanmedian(np.abs(est - t))),
        "median_abs_rel_error": float(np.nanmedian(np.abs(est - t) / t)),
        "bound_coverage": float(np.mean(upper[ok] >= t[ok])) if ok.any() else None,
        "coverage_target": None if model.energy is None else model.energy.coverage,
        "mean_bound_over_truth": float(np.nanmean(upper[ok] / t[ok])) if ok.any() else None,
        **(
            {
                "hazard_items": int((hz & ok).sum()),
                "hazard_bound_coverage": float(np.mean(upper[hz & ok] >= t[hz & ok])),
            }
            if hz is not None and (hz & ok).any()
            else {}
        ),
        "per_family": per,
    }, (t, est, upper, fam)


def _energy_plot(out: Path, truth: np.ndarray, est: np.ndarray, upper: np.ndarray, fam: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(truth, est, s=6, label="estimate", alpha=0.6)
    ax.scatter(truth, upper, s=6, marker="^", label="upper bound", alpha=0.6)
    lo, hi = float(np.nanmin(truth)) * 0.8, float(np.nanmax(upper[np.isfinite(upper)], initial=np.nanmax(truth))) * 1.2
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="truth")
    ax.set_xscale("log"), ax.set_yscale("log")
    cov = np.mean(upper[np.isfinite(upper)] >= truth[np.isfinite(upper)]) if np.isfinite(upper).any() else float("nan")
    ax.set_xlabel("true rated energy (Wh)"), ax.set_ylabel("estimated (Wh)")
    ax.set_title(f"Li-ion rated energy: {len(truth)} items, bound covers {100 * cov:.2f} %")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "energy.png", dpi=110)
    plt.close(fig)
    return "energy.png"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def headline_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, h in [("all sensors", metrics["all_sensors"])] + [
        (f"without {s}", h) for s, h in metrics["sensor_missing"].items()
    ]:
        rows.append(
            [
                name,
                f"{h['li_ion_in_lead_acid']} / {h['li_ion_total']}",
                f"{h['li_ion_in_lead_acid_rate_ub95']:.2e}",
                h["non_lead_in_lead_acid"],
                "n/a"
                if h["lead_acid_lane_impurity_per_10k"] is None
                else f"{h['lead_acid_lane_impurity_per_10k']:.2f}",
                f"{100 * h['lead_acid_recall']:.2f} %",
                f"{100 * h['manual_rate']:.2f} %",
                "n/a"
                if h.get("damaged_to_hazard") is None
                else f"{100 * h['damaged_to_hazard']:.1f} % of {h['damaged_li_ion']}",
            ]
        )
    return rows


HEADLINE_HEADERS = (
    "sensors",
    "Li-ion in lead_acid",
    "95 % UB rate",
    "non-lead in lead_acid",
    "impurity /10k",
    "lead-acid to lead_acid",
    "manual",
    "damaged Li-ion to hazard",
)


def render_report(metrics: dict[str, Any], plots: list[str], title: str = "") -> str:
    md = [
        f"# Evaluation {title}".rstrip(),
        "",
        f"Model `{metrics['model']}`, {metrics['items']} items "
        f"({metrics['unusable_lines']} unusable lines went to manual), chemistry accuracy {metrics['accuracy']:.4f}.",
        "",
        *[f"**Warning: {n}**\n" for n in metrics.get("notes", [])],
        "## The plant's table",
        "",
        _table(HEADLINE_HEADERS, headline_rows(metrics)),
        "",
        "Lanes (all sensors): " + ", ".join(f"{k}={v}" for k, v in metrics["all_sensors"]["lanes"].items()),
        "",
    ]
    hz = metrics["hazard"]
    md += [
        f"Hazard lane: {hz['items']} items, {hz['energy_wh_known']:.0f} Wh of known rated energy, "
        f"{hz['cases_at_2_1_kwh']} fire-safe cases at 2.1 kWh each.",
        "",
    ]
    en = metrics.get("energy", {})
    if en.get("items"):
        md += [
            "## Rated energy of Li-ion items",
            "",
            f"{en['items']} Li-ion items with a recorded rated energy: median error {en['median_abs_error_wh']:.1f} Wh "
            f"({100 * en['median_abs_rel_error']:.1f} %); the upper bound covers "
            + ("n/a" if en["bound_coverage"] is None else f"{100 * en['bound_coverage']:.2f} %")
            + (f" (target {100 * en['coverage_target']:.1f} %)" if en.get("coverage_target") else "")
            + f"; {en['without_bound']} without a bound (no weight)."
            + (
                f" In the hazard lane (the items the cases pack): {en['hazard_items']} items, the bound covers "
                f"{100 * en['hazard_bound_coverage']:.2f} %."
                if "hazard_bound_coverage" in en
                else ""
            ),
            "",
            _table(
                ("family", "items", "median error", "bound coverage"),
                [
                    [f, v["items"], f"{100 * v['median_abs_rel_error']:.1f} %", f"{100 * v['bound_coverage']:.2f} %"]
                    for f, v in en["per_family"].items()
                ],
            ),
            "",
        ]
    md += [
        "## Hard cases",
        "",
        _table(
            ("case", "items", "wrong chemistry", "Li-ion in lead_acid", "lead-acid not to lead_acid", "manual"),
            [
                [
                    k,
                    v.get("n", 0),
                    v.get("wrong_chemistry", 0),
                    v.get("li_ion_in_lead_acid", 0),
                    v.get("lead_acid_not_in_lead_lane", 0),
                    v.get("to_manual", 0),
                ]
                for k, v in metrics["hard_cases"].items()
            ],
        ),
        "",
    ]
    if metrics["natural_dropouts"]:
        md += [
            "## Items with a sensor missing in the log",
            "",
            _table(
                ("sensor", "items", "Li-ion in lead_acid", "lanes"),
                [
                    [
                        s,
                        v["items"],
                        v["li_ion_in_lead_acid"],
                        ", ".join(f"{k}={c}" for k, c in sorted(v["lanes"].items())),
                    ]
                    for s, v in metrics["natural_dropouts"].items()
                ],
            ),
            "",
        ]
    cal = metrics.get("calibration")
    if cal:
        md += [
            "## Calibration (one class against the rest)",
            "",
            f"{RELIABILITY_BINS} quantile bins per class (equal item counts) in `reliability.png`, each point "
            "labelled with its item count. ECE: the count-weighted mean gap between predicted probability and "
            "observed frequency; Brier: the mean squared error of the probability (0 is perfect).",
            "",
            _table(("class", "ECE", "Brier score"), [[c, cal["ece"][c], cal["brier"][c]] for c in CLASSES]),
            "",
            f"Multiclass Brier score: {cal['brier_multiclass']:.4g}.",
            "",
        ]
    prod_rows = sorted(metrics["per_product"].items(), key=lambda kv: (-kv[1].get("wrong_chemistry", 0), kv[0]))
    shown = prod_rows[:PRODUCT_ROWS]
    more = (
        f"; the first {len(shown)} of {len(prod_rows)} products, all in metrics.json"
        if len(prod_rows) > len(shown)
        else f"; all {len(prod_rows)} products"
    )
    md += [
        f"## Per product (most errors first{more})",
        "",
        _table(
            (
                "label",
                "product",
                "items",
                "wrong chemistry",
                "Li-ion in lead_acid",
                "lead_acid",
                "li_ion",
                "hazard",
                "manual",
            ),
            [
                [
                    *k.split(" | ", 1),
                    v.get("n", 0),
                    v.get("wrong_chemistry", 0),
                    v.get("dangerous", 0),
                    v.get("lane_lead_acid", 0),
                    v.get("lane_li_ion", 0),
                    v.get("lane_hazard", 0),
                    v.get("lane_manual", 0),
                ]
                for k, v in shown
            ],
        ),
        "",
    ]
    md += [
        f"## Items that went wrong ({metrics['wrong_items_total']} in all; the first 60)",
        "",
        _table(
            ("line", "label", "chemistry", "lane", "product", "pose", "hard cases", "p (lead, li, other)", "reason"),
            [
                [
                    w["line_no"],
                    w["label"],
                    w["chemistry"],
                    w["lane"],
                    w["product"],
                    w["pose"],
                    ",".join(w["hard_cases"] or []),
                    w["p"],
                    w["reason"],
                ]
                for w in metrics["wrong_items"]
            ],
        ),
        "",
    ]
    md += [
        "## Most important measurements",
        "",
        _table(("measurement", "log-loss increase"), [[n, v] for n, v in metrics["importances_top"]]),
        "",
    ]
    md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(md)


def evaluate_log(
    log_dir: str,
    out_dir: str,
    *,
    model_dir: str | None = None,
    model: SorterModel | None = None,
    workers: int = 1,
    progress: bool = False,
    allow_line_mismatch: bool = False,
) -> dict[str, Any]:
    """Evaluate a model on a labelled log; writes metrics.json, report.md and plots.

    Warns (in the log and at the top of the report) when the log is the data the model
    was trained on, recognised by the data digest in the model's manifest. The log's line is
    checked against the model's as scoring checks it: a log of another line is evaluated with
    lead_acid closed, unless ``allow_line_mismatch``.
    """
    require_matplotlib("sorter evaluate")
    check_log_dir(log_dir)
    model = model or load_model(model_dir)
    m = measure_logs([log_dir], workers=workers, progress=progress)
    notes = []
    if is_training_data(m, model):
        notes.append(
            f"{log_dir} is data model {model.model_id} was trained on (its digest is in the model's "
            "manifest): these figures are optimistic; evaluate on a log the model has not seen"
        )
        logger.warning("%s", notes[-1])
    Progress("evaluate", enabled=progress).stage(
        f"scoring {len(m.labels)} items, each sensor removed in turn, permutation importances and plots"
    )
    return evaluate_measured(
        m,
        model,
        out_dir,
        title=f"on {Path(log_dir).name}",
        notes=notes,
        meta=read_meta(log_dir),
        allow_line_mismatch=allow_line_mismatch,
    )


def is_training_data(m: MeasuredLog, model: SorterModel) -> bool:
    """Whether ``m`` is the whole training data of ``model``, or one of its training logs
    (by the digests :mod:`sorter.train` writes into the manifest)."""
    from .batch import data_digest

    tr = (model.manifest or {}).get("training", {})
    known = {tr.get("data_sha256")} | set(tr.get("log_data_sha256", []) or [])
    known.discard(None)
    return bool(known) and data_digest(m) in known


def _energy_card(manifest: dict[str, Any]) -> list[str]:
    en, rep = manifest.get("energy"), manifest.get("energy_heldout", {})
    if not en:
        return [
            "No energy estimator (the training logs recorded no rated energy): items in the li_ion and hazard "
            "lanes are bounded by mass x 0.30 Wh/g alone."
        ]
    q = en.get("log_q_upper")
    out = [
        f"- estimate: a gradient-boosted regressor of specific energy on physical measurements ({', '.join(en['features'])}), "
        "times the weighed mass;",
        f"- upper bound: split conformal at {100 * en['coverage']:.1f} % coverage on {en['calibration_n']} held-out Li-ion items: "
        + ("the estimate x " + f"{math.exp(q):.3f}" if q is not None else "too few items: the physical bound")
        + f", never above the most the item may weigh (the reading + 2 % + 15 g) x {en['max_wh_per_g']} Wh/g, which is "
        "used alone for an item unlike the training Li-ion items (Li-ion novelty above "
        + ("no limit" if en.get("novelty_max") is None else f"{en['novelty_max']:.1f}")
        + ") or without an X-ray;",
    ]
    cal = manifest.get("energy_bound_calibration", {})
    if en.get("log_q_groups") and cal.get("groups"):  # sorter model energy-bound: one quantile per bin
        adaptive = "upper_quantile" in en

        def table(groups: list[dict[str, Any]]) -> str:
            parts = []
            for g in groups:
                lo, hi = g["estimate_wh"]
                f, q = g["bound_over_estimate"], g["log_q_upper"]
                how = f"x {f:.3f}" if f is not None else "physical"
                if adaptive:
                    how = f"offset {q:+.3f}" if q is not None else "physical"
                parts.append(f"{lo:g}-{'' if hi is None else f'{hi:g}'} Wh: {how} ({g['calibration_n']} items)")
            return "; ".join(parts)

        out.append(
            "- the bound used is group-conditional (`sorter model energy-bound`, Mondrian conformal at "
            f"{100 * cal['coverage']:.1f} % per bin of the estimate, held-out logs {', '.join(cal.get('logs', []))}"
            + (
                f"; conformalized quantile regression: the estimate x exp(a gradient-boosted {en['upper_quantile']} "
                f"quantile of log(true / estimate), fitted on {cal['quantile_regressor']['fit_n']} other held-out "
                "items, + the bin's offset)"
                if adaptive
                else ")"
            )
            + ": "
            + table(cal["groups"])
            + "; the single bound above is not used;"
        )
        if cal.get("hazard_groups"):
            out.append(
                "- items of the hazard lane (the ones the cases pack) have their own: "
                + table(cal["hazard_groups"])
                + ";"
            )
    if rep.get("fitted"):
        out.append(
            ("- with the single bound, " if en.get("log_q_groups") else "- ")
            + f"on {rep['report_n']} other held-out Li-ion items: median error {rep['median_abs_error_wh']:.1f} Wh "
            f"({100 * rep['median_abs_rel_error']:.1f} %), bound coverage {100 * rep['bound_coverage']:.2f} %"
            + (
                f" of those with a bound ({rep['without_bound']} had no weight, so no bound: never packed)"
                if "without_bound" in rep
                else " (items without a weight, which have no bound and are never packed, counted as not covered)"
            )
            + f", bound / truth {rep['mean_bound_over_truth']:.2f} on average."
        )
    return out


def _envelope_card(env: dict[str, Any] | None) -> list[str]:
    """The model card's line on the calibration items outside the training envelope."""
    if not env:
        return []
    k = env.get("items", {}).get("lead_acid", 0)
    if not k:
        return ["- every lead-acid calibration item lies inside the training envelope of weight and size"]
    beyond = ", ".join(
        f"{col} {b['measured'][0]:.4g}-{b['measured'][1]:.4g} beyond {b['envelope'][0]:.4g}-{b['envelope'][1]:.4g}"
        for col, b in env.get("lead_acid_beyond", {}).items()
    )
    return [
        f"- {k} lead-acid calibration items ({100 * env.get('lead_acid_share', 0.0):.1f} %) lie outside the training "
        f"envelope ({beyond}): such items always go to manual on this line; retrain with them to sort them"
    ]


def model_card(manifest: dict[str, Any], evaluations: dict[str, dict[str, Any]] | None = None) -> str:
    """MODEL_CARD.md text for a model directory (intended use, data, metrics, limits)."""
    tr = manifest.get("training", {})
    pol = manifest.get("policy", {})
    held = manifest.get("heldout_metrics", {})
    # older manifests: the held-out part; cross-fitted training: every item's out-of-fold probability
    chem_rows = manifest.get("threshold_selection", {}).get("chemistry_thresholds_on", "the held-out items")
    md = [
        f"# Model card: {manifest.get('name', 'sorter')}",
        "",
        "## Intended use",
        "Sorting batteries on a lead-acid recycler's intake conveyor: tell lead-acid from lithium-ion (and other) "
        "items from a scale, a laser profiler, a dual-energy X-ray, a colour camera and a thermal camera, and pick a "
        "lane. Only confidently lead-acid items with complete critical readings (X-ray and scale) go to the breaker; "
        "everything else goes to a safe lane.",
        "",
        "## Out-of-scope use",
        "- Any line whose sensors differ from the training line's (tube voltage, detector, pixel pitch, camera set-up) "
        "without calibrating the model for that line (`sorter calibrate`, about 500 labelled items) or retraining on "
        "its labelled logs. The model enforces it: a log whose declared line differs (see *Applicability domain*) is "
        "scored with lead_acid closed.",
        "- Deciding on anything but chemistry family and the four lanes (e.g. state of charge, grading for reuse).",
        "- Running without the X-ray or the scale: such items always go to manual, by design.",
        "",
        "## Training data",
        f"- Logs: {', '.join(tr.get('logs', []))} ({tr.get('items')} items, {tr.get('usable')} usable; "
        f"classes {tr.get('class_counts')}).",
        f"- Data digest (sha256 of the measurement rows and labels): `{tr.get('data_sha256', '')[:16]}…`.",
        f"- Held out for thresholds and calibration checks: {tr.get('heldout_rows')} items; trained on "
        f"{tr.get('train_rows')} (plus copies with each sensor removed).",
        f"- Configuration: `{json.dumps(tr.get('config', {}))}`.",
        "",
        "## Policy thresholds (chosen on held-out data, stored in manifest.json)",
        f"- The chemistry thresholds below were chosen on {chem_rows}.",
        f"- lead_acid only when p(lead_acid) ≥ {pol.get('lead_acid_min', float('nan')):.6f} (the most lead-like "
        "non-lead item plus a margin of 1.5 in log-odds, at least 0.9), with the X-ray and the scale "
        "present and valid.",
        "- an item without one of the optional sensors must also clear that sensor's threshold (the same rule on "
        "the items with the sensor removed): "
        + (", ".join(f"{k} {v:.6f}" for k, v in sorted(pol.get("lead_acid_min_missing", {}).items())) or "none")
        + ".",
        f"- confidently not lead-acid when p(lead_acid) ≤ {pol.get('not_lead_max', float('nan')):.4f}; between the "
        "two: manual.",
        f"- hazard when p(damaged) ≥ {pol.get('damage_min', float('nan')):.3f} for a likely Li-ion item, or when "
        f"the surface is ≥ {pol.get('hot_excess_c')} °C over the running ambient.",
        f"- never lead_acid for an item unlike the training lead-acid items: lead-acid novelty above "
        f"{pol.get('novelty_max') if pol.get('novelty_max') is not None else 'no limit'} (-log10 of the chi-square "
        "tail of its distance to the nearest lead-acid training cluster; chosen as the held-out lead-acid items' "
        "99.5th percentile plus 1).",
        "- never lead_acid for an item too light for lead-acid: "
        + (
            f"weight over its profiled envelope under {pol['lead_density_min']:.2f} kg/L (0.9 times the lightest "
            "0.1 % of the held-out lead-acid items; lead-acid runs 1.8-3.1 kg/L, a lithium drop-in in a lead-acid "
            "case 0.7-1.7). An item this check stops sets no probability threshold."
            if pol.get("lead_density_min")
            else "no such check in this model (trained before it)."
        )
        + " Without a profiler reading the density is unknown and the stricter no-profiler threshold applies.",
        "",
        "## Rated energy of likely Li-ion items (the hazard lane's cases)",
        "",
        *_energy_card(manifest),
        "",
        "## Applicability domain",
        "",
        "The line(s) the model is valid for, as the training (or calibration) logs declared them; a log declaring "
        "other settings beyond the tolerance is scored with lead_acid closed (`--allow-line-mismatch` reopens it):",
        "",
        *[
            f"- `{ln.get('line')}`: X-ray {ln.get('xray_energies_kev')} keV at {ln.get('xray_mm_per_px')} mm/px, "
            f"camera {ln.get('camera_mm_per_px')} mm/px"
            for ln in manifest.get("line_domain", {}).get("lines", [])
        ],
        f"- tolerance: {manifest.get('line_domain', {}).get('tolerance')}",
        *(
            [
                f"- calibrated from {manifest['calibration'].get('usable')} labelled items of "
                f"`{manifest['calibration'].get('line', {}).get('line')}` (base model "
                f"`{manifest['calibration'].get('base_model')}`); measurement maps (a, b): "
                f"{json.dumps(manifest.get('normalisation', {}))}",
                *_envelope_card(manifest["calibration"].get("outside_training_envelope")),
            ]
            if manifest.get("calibration")
            else []
        ),
        "",
        "What transfers between lines: the model sees only physical measurements — mass, envelope, the X-ray as "
        "aluminium-equivalent areal density and the dual-energy ratio on the material scale of the line's declared "
        "energies (the NIST table), what the X-ray sees per gram weighed, opacity, outline geometry, thermal excess. "
        "What does not: the camera's colours, markings and textures are measured but not used (they are how a "
        "renderer draws products), and beam hardening bends the X-ray's material scale differently on every tube "
        "and detector — which calibration corrects. Between product families, the envelope density does not "
        "transfer (a pack of 18650 cells is as dense as a stone): "
        + (
            "this model sees it only through the policy's density gate (`sorter train --features material`). "
            if not any("density_kg_l" in str(n) for n in manifest.get("feature_names", []))
            else "this model uses it as a feature (`sorter train --features material` leaves it to the policy's "
            "density gate). "
        )
        + "Where the X-ray cannot see through an item (most lead-acid batteries, but also a thick cell standing on "
        "end, a stone, a steel block), the dual-energy ratio is measured only on the rim's partly covered pixels, "
        "where both energies pass alike and any opaque object reads like lead: there the decision rests on mass, "
        "envelope and shape, and a dense prismatic cell standing on end can look like a small VRLA battery "
        "(section *What stands between the shift benchmark and issue 13's targets*). "
        "`docs/performance.md` (section *Another line*) has the measured figures per shift.",
        "",
        "## Held-out metrics (training split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    md += [f"| {k} | {v} |" for k, v in held.items()]
    if evaluations:
        md += ["", "## Measured on fresh logs (seeds never used in training)", ""]
        for name, m in evaluations.items():
            md += [f"### {name}", "", _table(HEADLINE_HEADERS, headline_rows(m)), ""]
    md += [
        "",
        "## Limits",
        "- Trained on simulated data from sorter's physics-grounded simulator. Real lines differ (see the simulator's "
        "documentation); retrain on a labelled log of the target line before relying on it, and keep the X-ray and "
        "scale critical.",
        "- Products unlike anything in training (far outside the training envelope of weight and size) go to manual.",
        "- The damage detector sees swelling and dents through shape and internal voids; a damaged pack that looks "
        "sound and is not warm is not caught.",
        "- Probabilities are calibrated on the training line's mix; on another mix, calibration shifts.",
        "",
        "Files and their sha256 are listed in manifest.json (`predictor.npz`, when present, holds the fast "
        "predictor's arrays, derived from the skops files: `sorter score` and the line load it without "
        f"scikit-learn); libraries: {manifest.get('libraries')}.",
        "",
    ]
    return "\n".join(md)
