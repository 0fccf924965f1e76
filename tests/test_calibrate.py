"""``sorter calibrate``: a trained model fitted to a new line from a short labelled log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sorter.batch import measure_logs
from sorter.calibrate import calibrate, calibrate_and_save
from sorter.cli import main
from sorter.errors import SorterError
from sorter.logformat import read_meta
from sorter.model import load_model
from sorter.report import lanes_for
from sorter.simulate import SimConfig, simulate_log


@pytest.fixture(scope="module")
def line_b_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal") / "b-cal"
    simulate_log(SimConfig(items=300, seed=404, mix="balanced", line="b", faults=0.01), d, workers=2)
    return d


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, line_b_log):
    out = tmp_path_factory.mktemp("calmodel") / "model-b"
    model, report = calibrate_and_save([str(line_b_log)], None, str(out), workers=1)
    return out, model, report


def test_calibrated_model_is_valid_for_the_new_line_and_opens_lead_acid(calibrated, line_b_log):
    out, model, report = calibrated
    loaded = load_model(out)
    assert [s.line for s in loaded.domain.lines] == ["sim-b"]
    assert loaded.normalisation == model.normalisation and loaded.normalisation  # some column was re-mapped
    man = json.loads((out / "manifest.json").read_text())
    assert man["calibration"]["base_model"] == load_model().model_id
    assert man["calibration"]["logs"] == ["b-cal"]
    meta = read_meta(line_b_log)
    m = measure_logs([line_b_log], workers=0)
    keep = m.ok & np.array([lab in ("lead_acid", "li_ion", "other") for lab in m.labels])
    y = np.array([m.labels[i] for i in np.flatnonzero(keep)])
    _, _, shipped_lanes, _ = lanes_for(load_model(), m.raw[keep], meta)
    _, _, cal_lanes, _ = lanes_for(loaded, m.raw[keep], meta)
    # what the line loads (predictor.npz, written by calibrate, no scikit-learn) gives the same lanes
    fast = load_model(out, estimators=False)
    assert fast.classifier is None and fast.normalisation == loaded.normalisation
    np.testing.assert_array_equal(lanes_for(fast, m.raw[keep], meta)[2], cal_lanes)
    np.testing.assert_array_equal(fast.predict(m.raw[keep][:5])[0], loaded.predict(m.raw[keep][:5])[0])
    assert "lead_acid" not in shipped_lanes  # the shipped model: another line, lead_acid closed
    # a few hundred items set no lead_acid threshold below the calibration floor
    assert loaded.thresholds.lead_acid_min >= 0.99
    assert np.mean(cal_lanes[y == "lead_acid"] == "lead_acid") > 0.8
    assert not np.any((y == "li_ion") & (cal_lanes == "lead_acid"))
    report_md = (out / "calibration-report" / "report.md").read_text()
    assert "Li-ion" in report_md
    # the same classifier: calibration refits no trees (only what comes before and after them)
    rows = np.nan_to_num(m.raw[keep][:50], nan=0.0)
    np.testing.assert_array_equal(loaded.classifier.predict_proba(rows), load_model().classifier.predict_proba(rows))


def test_calibration_refuses_a_log_missing_a_class(line_b_log, tmp_path):
    lines = [ln for ln in (line_b_log / "items.jsonl").read_text().splitlines() if '"label":"other"' not in ln]
    d = tmp_path / "no-other"
    d.mkdir()
    (d / "items.jsonl").write_text("\n".join(lines) + "\n")
    (d / "meta.json").write_text((line_b_log / "meta.json").read_text())
    (d / "images").symlink_to(line_b_log / "images")
    with pytest.raises(SorterError, match=r"\['other'\] have fewer"):
        calibrate([str(d)], load_model(), workers=0)


def test_calibration_needs_a_model_trained_with_reference_quantiles(line_b_log):
    base = load_model()
    base.manifest = {k: v for k, v in base.manifest.items() if k != "reference_quantiles"}
    with pytest.raises(SorterError, match="retrain it"):
        calibrate([str(line_b_log)], base, workers=0)


def test_cli_calibrate_refuses_a_non_empty_out(line_b_log, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    assert main(["calibrate", str(line_b_log), "--out", str(tmp_path / "taken")]) == 2
    assert "is not empty and does not hold a model" in capsys.readouterr().err


def _scaled(m, cols, factor):
    """``m`` with the raw columns ``cols`` multiplied by ``factor`` (a line where they read otherwise)."""
    import dataclasses

    from sorter.features.measure import RAW_COLUMNS

    raw = m.raw.copy()
    for c in cols:
        raw[:, RAW_COLUMNS.index(c)] *= factor
    return dataclasses.replace(m, raw=raw)


def test_a_column_no_map_can_carry_is_dropped_not_the_line(line_b_log, tmp_path, caplog):
    """A line whose lead-equivalent mass reads 40 times the training line's (both energies under
    lead's K-edge): calibration drops that one column (read as missing), says so, and still
    keeps Li-ion out of lead_acid; the dropped column survives the manifest's round trip."""
    import logging

    from sorter.features.measure import MEASUREMENTS_VERSION, RAW_COLUMNS
    from sorter.model import save_model

    m = _scaled(measure_logs([line_b_log], workers=0), ["xr_pb_eq_mass_g"], 40.0)
    with caplog.at_level(logging.WARNING, logger="sorter.calibrate"):
        model, report = calibrate([str(line_b_log)], load_model(), measured=m)
    assert str(report["normalisation"]["xr_pb_eq_mass_g"]).startswith("dropped")
    assert any("xr_pb_eq_mass_g" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    a, b = model.normalisation["xr_pb_eq_mass_g"]
    assert a == 0.0 and np.isnan(b)
    assert np.isnan(model.normalise(m.raw[:3])[:, RAW_COLUMNS.index("xr_pb_eq_mass_g")]).all()
    save_model(model, tmp_path / "m", name="dropped", extra_manifest={"measurements": MEASUREMENTS_VERSION})
    loaded = load_model(tmp_path / "m")
    assert np.isnan(loaded.normalisation["xr_pb_eq_mass_g"][1])
    keep = m.ok & np.array([lab in ("lead_acid", "li_ion", "other") for lab in m.labels])
    y = np.array([m.labels[i] for i in np.flatnonzero(keep)])
    _, _, lanes, _ = lanes_for(loaded, m.raw[keep], read_meta(line_b_log))
    assert not np.any((y != "lead_acid") & (lanes == "lead_acid"))


def test_calibration_refuses_a_line_where_many_columns_cannot_be_mapped(line_b_log):
    cols = ["xr_pb_eq_mass_g", "xr_al_eq_mass_g", "xr_al_eq_low_p50", "xr_al_eq_high_p50"]
    m = _scaled(measure_logs([line_b_log], workers=0), cols, 40.0)
    with pytest.raises(SorterError, match="no line difference a calibration can absorb"):
        calibrate([str(line_b_log)], load_model(), measured=m)


def test_lead_acid_items_beyond_the_training_envelope_are_reported_and_stay_manual(line_b_log, tmp_path, caplog):
    """A line with lead-acid items heavier than anything in training (line c's 54-69 kg truck
    batteries): calibration keeps the envelope, so they stay in manual; it counts them, warns
    with how to sort them (retrain), and the model card says so."""
    import dataclasses
    import logging

    from sorter.features.measure import MEASUREMENTS_VERSION, RAW_COLUMNS
    from sorter.model import save_model
    from sorter.report import model_card

    base = load_model()
    hi = base.thresholds.envelope["weight_g"][1]
    m = measure_logs([line_b_log], workers=0)
    keep = m.ok & np.array([lab in ("lead_acid", "li_ion", "other") for lab in m.labels])
    lead_rows = np.flatnonzero(keep & np.array([lab == "lead_acid" for lab in m.labels]))
    heavy = lead_rows[:5]  # five lead-acid items made heavier than the envelope allows
    raw = m.raw.copy()
    raw[heavy, RAW_COLUMNS.index("weight_g")] = hi * 1.2
    m = dataclasses.replace(m, raw=raw)
    with caplog.at_level(logging.WARNING, logger="sorter.calibrate"):
        model, report = calibrate([str(line_b_log)], base, measured=m)
    env = report["outside_training_envelope"]
    assert env["items"]["lead_acid"] == 5 and env["items"]["li_ion"] == 0
    assert env["lead_acid_beyond"]["weight_g"]["items"] == 5
    assert env["lead_acid_beyond"]["weight_g"]["measured"][0] == pytest.approx(hi * 1.2)
    assert any(
        "outside the model's training envelope" in r.getMessage() and "retrain" in r.getMessage()
        for r in caplog.records
    )
    assert dict(model.thresholds.envelope) == dict(base.thresholds.envelope)  # kept, not widened
    _, _, lanes, reasons = lanes_for(model, raw[heavy], read_meta(line_b_log))
    assert set(lanes) == {"manual"} and all("unlike training data: weight_g" in r for r in reasons)
    save_model(
        model,
        tmp_path / "m",
        name="heavy",
        extra_manifest={"measurements": MEASUREMENTS_VERSION, "calibration": report},
    )
    card = model_card(json.loads((tmp_path / "m" / "manifest.json").read_text()))
    assert "5 lead-acid calibration items" in card and "retrain with them" in card


def test_no_warning_when_the_calibration_items_lie_inside_the_envelope(calibrated):
    _, _, report = calibrated
    env = report["outside_training_envelope"]
    assert env["items"]["lead_acid"] == 0 and env["lead_acid_share"] == 0.0
