"""The evaluation report: tables that render, plots that say something, nothing left on failure."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from sorter import report as report_mod
from sorter.errors import SorterError
from sorter.simulate import SimConfig, simulate_log


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, model):
    d = tmp_path_factory.mktemp("report")
    simulate_log(SimConfig(items=90, seed=31, mix="balanced", faults=0.02), d / "log")
    metrics = report_mod.evaluate_log(str(d / "log"), str(d / "rep"), model=model, workers=1)
    return d, metrics


def _cells(row: str) -> int:
    """Cells of a Markdown table row: pipes that are not escaped, minus the outer two."""
    return len(re.findall(r"(?<!\\)\|", row)) - 1


def test_every_table_in_report_md_has_as_many_cells_as_its_header(evaluated):
    d, _ = evaluated
    lines = (d / "rep" / "report.md").read_text().splitlines()
    tables = 0
    for k, line in enumerate(lines):
        if line.startswith("|---"):
            tables += 1
            header = _cells(lines[k - 1])
            assert _cells(line) == header, lines[k - 1]
            j = k + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert _cells(lines[j]) == header, lines[j]
                j += 1
    assert tables >= 5
    text = "\n".join(lines)
    assert "| label | product |" in text


def test_per_product_table_says_when_it_is_cut(evaluated, monkeypatch):
    _, metrics = evaluated
    n = len(metrics["per_product"])
    monkeypatch.setattr(report_mod, "PRODUCT_ROWS", n)
    assert f"## Per product (most errors first; all {n} products)" in report_mod.render_report(metrics, [])
    monkeypatch.setattr(report_mod, "PRODUCT_ROWS", 5)
    md = report_mod.render_report(metrics, [])
    assert f"the first 5 of {n} products, all in metrics.json" in md
    section = md.split("## Per product")[1].split("## ")[0]
    assert len([ln for ln in section.splitlines() if ln.startswith("| ")]) == 1 + 5


def test_a_pipe_in_a_cell_is_escaped():
    md = report_mod._table(("a", "b"), [["x | y", 1]])
    assert md.splitlines()[2] == "| x \\| y | 1 |"


def test_calibration_uses_bins_that_hold_data_and_scores_it():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    # most probabilities near 0 or 1, as a good classifier gives: fixed-width bins would hold
    # next to nothing in between
    p0 = np.concatenate([rng.uniform(0.0, 0.02, 400), rng.uniform(0.98, 1.0, 400), rng.uniform(0.2, 0.8, 20)])
    y = np.where(rng.uniform(size=p0.size) < p0, "lead_acid", "li_ion")
    proba = np.stack([p0, 1 - p0, np.zeros_like(p0)], axis=1)
    cal = report_mod.calibration(y, proba)
    bins = cal["bins"]["lead_acid"]
    assert len(bins) >= 8 and sum(b["n"] for b in bins) == y.size
    assert min(b["n"] for b in bins) >= y.size // 20
    assert cal["brier"]["lead_acid"] == pytest.approx(brier_score_loss(y == "lead_acid", p0))
    assert 0 <= cal["ece"]["lead_acid"] < 0.05
    # a classifier that is confidently wrong is badly calibrated, and the figures say so
    bad = report_mod.calibration(np.where(y == "lead_acid", "li_ion", "lead_acid"), proba)
    assert bad["ece"]["lead_acid"] > 0.8 and bad["brier"]["lead_acid"] > 0.8


def test_metrics_and_report_carry_calibration(evaluated):
    d, metrics = evaluated
    cal = json.loads((d / "rep" / "metrics.json").read_text())["calibration"]
    assert set(cal["ece"]) == {"lead_acid", "li_ion", "other"}
    assert all(sum(b["n"] for b in cal["bins"][c]) == metrics["scored_items"] for c in cal["bins"])
    assert "## Calibration" in (d / "rep" / "report.md").read_text()


def test_plots_label_what_they_show(evaluated, model, monkeypatch, tmp_path):
    import matplotlib.axes

    labels, bar_labels, notes = [], [], []
    real_xlabel, real_bar_label, real_annotate = (
        matplotlib.axes.Axes.set_xlabel,
        matplotlib.axes.Axes.bar_label,
        matplotlib.axes.Axes.annotate,
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_xlabel",
        lambda self, text, *a, **k: (labels.append(text), real_xlabel(self, text, *a, **k))[1],
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "bar_label",
        lambda self, bars, *a, **k: (bar_labels.append(k.get("labels")), real_bar_label(self, bars, *a, **k))[1],
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "annotate",
        lambda self, text, *a, **k: (notes.append(text), real_annotate(self, text, *a, **k))[1],
    )
    d, _ = evaluated
    report_mod.evaluate_log(str(d / "log"), str(tmp_path / "rep"), model=model, workers=1)
    assert "increase in log-loss when shuffled" in labels and not any("drop" in t for t in labels)
    assert len(bar_labels) == 3 and any(any(x) for x in bar_labels)  # counts on the lanes chart's bars
    assert notes and all(t.isdigit() for t in notes if t)  # item counts on the reliability points


def test_evaluate_on_an_unlabelled_log_says_so_and_leaves_nothing(tmp_path, model):
    simulate_log(SimConfig(items=10, seed=2, labelled=False), tmp_path / "u")
    with pytest.raises(SorterError, match="'label'"):
        report_mod.evaluate_log(str(tmp_path / "u"), str(tmp_path / "rep"), model=model, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]


def test_a_failing_report_leaves_the_folder_as_it_was(evaluated, model, tmp_path, monkeypatch):
    d, _ = evaluated

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_mod, "_plots", broken)
    with pytest.raises(RuntimeError):
        report_mod.evaluate_log(str(d / "log"), str(tmp_path / "rep"), model=model, workers=1)
    assert list(tmp_path.iterdir()) == []
