"""Training: reproducible, saved safely, thresholds meet the target on held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sorter.batch import measure_logs
from sorter.cli import main
from sorter.errors import SorterError
from sorter.model import load_model
from sorter.simulate import SimConfig, simulate_log
from sorter.train import TrainConfig, train, train_and_save

FAST = TrainConfig(seed=3, max_iter=40, workers=1, threshold_folds=3)  # 3 folds: small and quick


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("train") / "log"
    simulate_log(SimConfig(items=360, seed=77, mix="balanced", faults=0.01), d, workers=2)
    return d


def test_training_is_reproducible_and_round_trips(tmp_path, small_log):
    m1, r1 = train_and_save([str(small_log)], tmp_path / "m1", FAST)
    m2, r2 = train([str(small_log)], FAST)
    assert r1["training"]["data_sha256"] == r2["training"]["data_sha256"]
    raw = measure_logs([small_log]).raw
    p1, d1 = m1.predict(raw)
    p2, d2 = m2.predict(raw)
    np.testing.assert_array_equal(p1, p2)
    loaded = load_model(tmp_path / "m1")
    p3, _ = loaded.predict(raw)
    np.testing.assert_allclose(p1, p3, rtol=0, atol=0)
    assert loaded.thresholds == m1.thresholds
    man = json.loads((tmp_path / "m1" / "manifest.json").read_text())
    assert man["heldout_metrics"]["li_ion_in_lead_acid_lane"] == 0
    assert man["feature_names"] and man["raw_columns"]
    # sorter train writes the fast predictor file; the line and sorter score load through it,
    # without scikit-learn, and get the same probabilities bit for bit
    assert "predictor.npz" in man["files"]
    fast = load_model(tmp_path / "m1", estimators=False)
    assert fast.classifier is None
    p4, d4 = fast.predict(raw)
    _, d3 = loaded.predict(raw)
    np.testing.assert_array_equal(p4, p3)
    np.testing.assert_array_equal(d4, d3)


def test_thresholds_keep_every_heldout_non_lead_item_out_of_lead_acid(small_log):
    model, report = train([str(small_log)], FAST)
    sel = report["threshold_selection"]
    t = model.thresholds
    # complete items clear the margin above every non-lead item as recorded...
    assert t.lead_acid_min > sel["max_p_lead_nonlead_all"]
    # ...and an item without an optional sensor must clear that sensor's own threshold
    assert set(t.lead_acid_min_missing) == {"profiler", "camera", "thermal"}
    for sensor, v in t.lead_acid_min_missing.items():
        assert v >= t.lead_acid_min and v > sel[f"max_p_lead_nonlead_{sensor}"]
    assert 0 <= t.not_lead_max < t.lead_acid_min


def test_cross_fitted_training_fits_on_every_item_and_keeps_each_out_of_fold_non_lead_item_out(small_log):
    import dataclasses

    from sorter.train import CLASS_WEIGHT, cross_fit, out_of_fold_probas

    model, report = train([str(small_log)], FAST)
    tr, sel = report["training"], report["threshold_selection"]
    assert tr["train_rows"] == tr["usable"]  # the shipped classifier learns from every item
    assert "out-of-fold" in sel["chemistry_thresholds_on"]
    # every non-lead item, scored by a classifier that never saw it, stays under the threshold
    m = measure_logs([small_log])
    ok = m.ok & np.array([lab in ("lead_acid", "li_ion", "other") for lab in m.labels])
    raw, y = m.raw[ok], np.array([m.labels[i] for i in np.flatnonzero(ok)])
    fold, pipes = cross_fit(raw, y, np.array([CLASS_WEIGHT[c] for c in y]), FAST)
    assert sorted(set(fold)) == list(range(FAST.threshold_folds))
    p = out_of_fold_probas(model, fold, pipes, raw)["all"][:, 0]
    assert p[y != "lead_acid"].max() == pytest.approx(sel["max_p_lead_nonlead_all"])
    assert model.thresholds.lead_acid_min > p[y != "lead_acid"].max()
    # 0 folds: the classifier fitted on the training part, the thresholds on the held-out part
    held_model, held = train([str(small_log)], dataclasses.replace(FAST, threshold_folds=0))
    assert held["training"]["train_rows"] + held["training"]["heldout_rows"] == held["training"]["usable"]
    assert "held-out" in held["threshold_selection"]["chemistry_thresholds_on"]


def test_cli_train_refuses_a_bad_fold_count(tmp_path, small_log, capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", str(small_log), "--out", str(tmp_path / "m"), "--threshold-folds", "1"])
    assert err.value.code == 2
    assert "--threshold-folds must be 0 or a whole number from 2 to 20" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"(default {TrainConfig().threshold_folds})" in " ".join(capsys.readouterr().out.split())


def test_unlabelled_logs_are_refused_with_a_reason(tmp_path):
    d = tmp_path / "u"
    simulate_log(SimConfig(items=30, seed=1, labelled=False), d)
    with pytest.raises(SorterError, match="labelled"):
        train([str(d)], FAST)


def test_cli_train_writes_a_loadable_model(tmp_path, small_log, capsys):
    out = tmp_path / "cli-model"
    assert main(["train", str(small_log), "--out", str(out), "--seed", "1", "--workers", "1"]) == 0
    assert "held-out" in capsys.readouterr().out
    assert (out / "MODEL_CARD.md").exists()
    load_model(out)


def test_cli_train_with_material_features_writes_a_model_without_the_envelope_density(tmp_path, small_log, capsys):
    """``--features material``: the classifier sees no envelope density; the model saves, loads through
    skops and through its fast predictor file, and both give the same probabilities."""
    out = tmp_path / "material"
    args = ["train", str(small_log), "--out", str(out), "--seed", "1", "--workers", "1", "--threshold-folds", "0"]
    assert main([*args, "--features", "material"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["training"]["config"]["features"] == "material"
    assert not [n for n in man["feature_names"] if "density" in n]
    assert "cross__al_eq_high_p50_per_gram" in man["feature_names"]
    assert "only through the policy's density gate" in (out / "MODEL_CARD.md").read_text()
    raw = measure_logs([small_log]).raw
    p_skops, _ = load_model(out).predict(raw)
    p_fast, _ = load_model(out, estimators=False).predict(raw)
    np.testing.assert_array_equal(p_fast, p_skops)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args[:-2], "--features", "colour"])
    assert "invalid choice" in capsys.readouterr().err


def test_evaluate_warns_when_given_a_log_the_model_was_trained_on(tmp_path, small_log):
    from sorter.report import evaluate_log

    other = tmp_path / "other"
    simulate_log(SimConfig(items=60, seed=78, mix="balanced"), other)
    fresh = tmp_path / "fresh"
    simulate_log(SimConfig(items=40, seed=79, mix="balanced"), fresh)
    train_and_save([str(small_log), str(other)], tmp_path / "m", FAST)
    model = load_model(tmp_path / "m")  # what `sorter evaluate --model` sees: the manifest on disk
    seen = evaluate_log(str(small_log), str(tmp_path / "r1"), model=model, workers=1)
    assert seen["notes"] and "trained on" in seen["notes"][0]
    assert "**Warning:" in (tmp_path / "r1" / "report.md").read_text()
    unseen = evaluate_log(str(fresh), str(tmp_path / "r2"), model=model, workers=1)
    assert unseen["notes"] == []


def test_training_announces_its_stages(small_log, capsys):
    train([str(small_log)], FAST, progress=True)
    err = capsys.readouterr().err
    assert "train: fitting the chemistry classifier" in err  # no silent stretch while fitting
    assert "choosing the policy thresholds" in err


@pytest.mark.slow
def test_cli_train_shows_its_stages_and_refuses_to_replace_a_model_without_force(tmp_path, small_log, capsys):
    out = tmp_path / "m"
    assert main(["train", str(small_log), "--out", str(out), "--workers", "1"]) == 0
    cap = capsys.readouterr()
    assert "train: fitting the chemistry classifier" in cap.err  # no silent stretch while fitting
    assert "choosing the policy thresholds" in cap.err
    held = cap.out.split("held-out: ")[1].splitlines()[0]
    assert all(len(v.split(".", 1)[-1]) <= 4 for v in (kv.split("=")[1] for kv in held.split(", ")))
    manifest = (out / "manifest.json").read_text()
    assert main(["train", str(small_log), "--out", str(out), "--workers", "1", "--seed", "9"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == manifest  # untouched


class _StubModel:
    """predict() answers p(lead_acid) from a column of the row: thresholds without training."""

    damage = None

    def __init__(self, p_col: int):
        self.p_col = p_col

    def predict(self, raw):
        p = raw[:, self.p_col].copy()
        return np.stack([p, 1 - p, np.zeros_like(p)], axis=1), np.full(len(p), np.nan)


def _rows(n, weight, p):
    from sorter.features.measure import RAW_COLUMNS

    raw = np.ones((n, len(RAW_COLUMNS)))
    col = {c: i for i, c in enumerate(RAW_COLUMNS)}
    for k, v in {
        "weight_g": weight,
        "length_mm": 260.0,
        "width_mm": 173.0,
        "height_mm": 225.0,
        "xr_area_mm2": 40000.0,
        "surface_temp_c": 20.0,
        "ambient_c": 20.0,
        "cam_area_mm2": 40000.0,
    }.items():
        raw[:, col[k]] = v
    raw[:, col["xr_long_power"]] = p  # the stub's probability column
    return raw, col["xr_long_power"]


def test_an_item_the_density_gate_stops_sets_no_probability_threshold():
    from sorter.train import choose_thresholds

    lead, pc = _rows(60, 20000.0, 0.995)  # 1.98 kg/L
    li, _ = _rows(60, 5000.0, 0.01)
    dropin, _ = _rows(1, 11900.0, 0.97)  # 1.18 kg/L: a LiFePO4 drop-in the model takes for lead
    raw = np.vstack([lead, li, dropin])
    y = np.array(["lead_acid"] * 60 + ["li_ion"] * 61)
    t, rep = choose_thresholds(_StubModel(pc), raw, y, None, FAST)
    assert 1.7 < t.lead_density_min < 1.98  # 0.9 x the lightest lead-acid
    assert t.lead_acid_min < 0.97  # the drop-in is the density gate's, not the threshold's
    # the same item at a lead-acid density must set the threshold above itself
    heavy, _ = _rows(1, 20000.0, 0.97)
    t2, _ = choose_thresholds(_StubModel(pc), np.vstack([lead, li, heavy]), y, None, FAST)
    assert t2.lead_acid_min > 0.97


def test_thresholds_are_chosen_on_the_probabilities_given_not_the_models():
    from sorter.features.transformers import SENSOR_GROUPS
    from sorter.train import choose_thresholds

    lead, pc = _rows(60, 20000.0, 0.995)
    li, _ = _rows(61, 20000.0, 0.01)  # the model finds every Li-ion item plainly not lead-acid...
    raw = np.vstack([lead, li])
    y = np.array(["lead_acid"] * 60 + ["li_ion"] * 61)
    t, _ = choose_thresholds(_StubModel(pc), raw, y, None, FAST)
    assert t.lead_acid_min == FAST.lead_acid_min_floor
    given = _StubModel(pc).predict(raw)[0]
    given[-1, :2] = [0.97, 0.03]  # ...but the classifier that never saw the last one found it lead-like
    t2, rep = choose_thresholds(_StubModel(pc), raw, y, None, FAST, probas={n: given for n in ("all", *SENSOR_GROUPS)})
    assert rep["max_p_lead_nonlead_all"] == 0.97
    assert t2.lead_acid_min > 0.97
