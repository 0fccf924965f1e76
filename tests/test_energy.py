"""Rated energy of likely Li-ion items: the estimate, the conformal bound, the physical fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sorter.energy import EnergyModel, physical_upper_wh
from sorter.features.measure import RAW_COLUMNS

C = {n: i for i, n in enumerate(RAW_COLUMNS)}


def packs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic Li-ion items: specific energy 80-250 Wh/kg, told (noisily) by their density."""
    rng = np.random.default_rng(seed)
    raw = np.full((n, len(RAW_COLUMNS)), np.nan)
    w = rng.uniform(200, 20000, n)
    spec = rng.uniform(0.08, 0.25, n)  # Wh/g
    dens = 0.6 + 5 * spec + rng.normal(0, 0.05, n)  # kg/L: denser packs hold more
    vol_l = w / 1000 / dens
    side = (vol_l * 1e6) ** (1 / 3)
    raw[:, C["weight_g"]] = w
    raw[:, C["length_mm"]] = raw[:, C["width_mm"]] = raw[:, C["height_mm"]] = side
    for col in (
        "xr_area_mm2",
        "xr_high_ok",
        "xr_low_ok",
        "xr_al_eq_mass_g",
        "xr_pb_eq_mass_g",
        "xr_mat_p50",
        "xr_al_eq_high_p50",
        "xr_opaque_frac",
    ):
        raw[:, C[col]] = 1.0
    raw[:, C["xr_al_eq_mass_g"]] = w * 1.3
    return raw, w * spec


@pytest.fixture(scope="module")
def energy_model():
    raw, e = packs(1500, 1)
    raw_c, e_c = packs(600, 2)
    return EnergyModel.fit(raw, e, raw_c, e_c, seed=0)


def test_bound_covers_fresh_items_at_the_stated_rate(energy_model):
    raw, e = packs(4000, 3)
    est, upper = energy_model.predict(raw)
    assert np.mean(upper >= e) >= 0.99  # 99.8 % in expectation; 4000 draws of one calibration
    assert np.median(np.abs(est - e) / e) < 0.15
    assert (upper <= physical_upper_wh(raw[:, C["weight_g"]]) + 1e-9).all()


def test_missing_xray_or_outside_the_envelope_falls_back_to_the_physical_bound(energy_model):
    raw, _ = packs(10, 4)
    raw[:3, C["xr_area_mm2"]] = np.nan
    est, upper = energy_model.predict(raw, fallback=np.array([False] * 8 + [True] * 2))
    w = raw[:, C["weight_g"]]
    np.testing.assert_allclose(upper[:3], physical_upper_wh(w[:3]))
    np.testing.assert_allclose(upper[8:], physical_upper_wh(w[8:]))
    assert (upper[3:8] < physical_upper_wh(w[3:8])).all()
    np.testing.assert_allclose(est[:3], w[:3] * energy_model.median_wh_per_g)


def test_no_weight_no_bound(energy_model):
    raw, _ = packs(2, 5)
    raw[0, C["weight_g"]] = np.nan
    est, upper = energy_model.predict(raw)
    assert math.isnan(est[0]) and math.isnan(upper[0]) and np.isfinite(upper[1])


def test_too_few_held_out_items_leave_only_the_physical_bound():
    raw, e = packs(300, 6)
    raw_c, e_c = packs(20, 7)  # rank ceil(21 x 0.998) = 21 > 20: no finite conformal quantile
    m = EnergyModel.fit(raw, e, raw_c, e_c)
    assert math.isinf(m.log_q_upper)
    _, upper = m.predict(raw[:5])
    np.testing.assert_allclose(upper, physical_upper_wh(raw[:5, C["weight_g"]]))


def test_json_round_trip(energy_model):
    again = EnergyModel.from_json(energy_model.to_json(), energy_model.regressor)
    raw, _ = packs(20, 8)
    for a, b in zip(again.predict(raw), energy_model.predict(raw)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="energy features"):
        EnergyModel.from_json({**energy_model.to_json(), "features": ["x"]}, energy_model.regressor)


def test_scoring_gives_li_ion_and_hazard_items_an_energy_and_bound(tmp_path):
    """Through the scoring path (sorter score's output): every item in the li_ion or hazard lane
    with a weight has an estimate and a bound no larger than the physical one; no other item has."""
    import pyarrow.parquet as pq

    from sorter.score import score_logs
    from sorter.simulate import SimConfig, simulate_log

    log = tmp_path / "log"
    simulate_log(SimConfig(items=120, seed=31, mix="balanced"), log, workers=1)
    score_logs([str(log)], tmp_path / "s.parquet", workers=0)
    t = pq.read_table(tmp_path / "s.parquet").to_pydict()
    li_lanes = [k for k, lane in enumerate(t["lane"]) if lane in ("li_ion", "hazard")]
    assert len(li_lanes) > 20
    for k, lane in enumerate(t["lane"]):
        w, e, u = t["weight_g"][k], t["energy_wh"][k], t["energy_wh_upper"][k]
        if lane in ("li_ion", "hazard") and w == w:  # NaN != NaN: a missing weight has no bound
            assert 0 < e <= u <= physical_upper_wh(np.array([w]))[0] + 1e-6
        elif lane not in ("li_ion", "hazard"):
            assert e != e and u != u


def test_physical_bound_allows_for_a_scale_that_reads_light():
    """A 21700 NMC cell (68 g, 18.4 Wh, 270 Wh/kg) read 5 g light is still bounded."""
    assert physical_upper_wh(np.array([63.0]))[0] >= 18.4


# -- the group-conditional (Mondrian) bound ------------------------------------------------------


def mixed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic items whose estimate is good for the large ones and poor for the small ones:
    the small ones' true energy scatters from -25 % to +20 % around what their measurements tell
    (never above the physical 0.30 Wh/g, which caps every bound)."""
    raw, e = packs(n, seed)
    rng = np.random.default_rng(seed + 100)
    small = raw[:, C["weight_g"]] < 8000
    e = np.where(small, e * rng.uniform(0.75, 1.2, n), e)
    return raw, e


def test_group_bound_is_tighter_where_the_estimate_is_good_and_covers_each_group(energy_model):
    raw_c, e_c = mixed(4000, 11)
    est_c = energy_model.estimate(raw_c)
    edge = float(np.median(est_c))
    grouped, report = energy_model.with_group_bound(raw_c, e_c, [edge])
    assert [g["calibration_n"] for g in report["groups"]] == [int((est_c < edge).sum()), int((est_c >= edge).sum())]
    # each group's quantile is the split-conformal rank of its own residuals
    r = np.log(e_c / est_c)
    for k, m in enumerate([est_c < edge, est_c >= edge]):
        rs = np.sort(r[m])
        assert grouped.log_q_groups[k] == rs[math.ceil((rs.size + 1) * grouped.coverage) - 1]
    single, _ = energy_model.with_group_bound(raw_c, e_c, [1e12])  # one group: the global rule
    raw, e = mixed(5000, 12)
    est, upper = grouped.predict(raw)
    _, upper1 = single.predict(raw)
    for m in (est < edge, est >= edge):  # coverage holds within each group, not only overall
        assert np.mean(upper[m] >= e[m]) >= 0.99
    # the well-estimated group's bound is tighter than one global quantile would give it, the other's looser
    big = est >= edge
    assert grouped.log_q_groups[1] < single.log_q_groups[0] < grouped.log_q_groups[0]
    assert np.mean(upper[big] / est[big]) < np.mean(upper1[big] / est[big])
    assert (upper <= physical_upper_wh(raw[:, C["weight_g"]]) + 1e-9).all()


def test_group_bound_survives_the_manifest_and_a_thin_group_gets_the_physical_bound(energy_model):
    raw_c, e_c = mixed(1500, 13)
    est_c = energy_model.estimate(raw_c)
    top = float(np.sort(est_c)[-50])  # 50 items above: too few for a 99.8 % rank
    grouped, report = energy_model.with_group_bound(raw_c, e_c, [float(np.median(est_c)), top])
    assert math.isinf(grouped.log_q_groups[-1]) and report["groups"][-1]["log_q_upper"] is None
    again = EnergyModel.from_json(grouped.to_json(), grouped.regressor)
    raw, _ = mixed(300, 14)
    np.testing.assert_array_equal(again.predict(raw)[1], grouped.predict(raw)[1])
    _, upper = grouped.predict(raw)
    est = grouped.estimate(raw)
    w = raw[:, C["weight_g"]]
    np.testing.assert_allclose(upper[est >= top], physical_upper_wh(w[est >= top]))
    # a manifest without groups reads as before: one global quantile
    plain = energy_model.to_json()
    assert "log_q_groups" not in plain and not EnergyModel.from_json(plain, energy_model.regressor).log_q_groups
    with pytest.raises(ValueError, match="edges"):
        energy_model.with_group_bound(raw_c, e_c, [300.0, 100.0])
    bad = dict(grouped.to_json(), log_q_groups=[0.1])
    with pytest.raises(ValueError, match="quantiles"):
        EnergyModel.from_json(bad, grouped.regressor)


def test_sorter_model_energy_bound_writes_a_model_with_the_group_bound(model, tmp_path, capsys):
    from sorter.cli import main
    from sorter.model import load_model
    from sorter.simulate import SimConfig, simulate_log

    log = tmp_path / "heldout"
    simulate_log(SimConfig(items=40, seed=31, mix="balanced"), str(log), workers=1)
    out = tmp_path / "model"
    assert main(["model", "energy-bound", str(log), "--out", str(out), "--edges-wh", "100,1100"]) == 0
    printed = capsys.readouterr().out
    assert "estimate 0-100 Wh" in printed and "estimate 1100- Wh" in printed
    m = load_model(out)
    assert m.energy.group_edges_wh == (100.0, 1100.0) and len(m.energy.log_q_groups) == 3
    cal = m.manifest["energy_bound_calibration"]
    assert cal["logs"] == ["heldout"] and sum(g["calibration_n"] for g in cal["groups"]) == cal["calibration_n"] > 0
    assert "group-conditional" in (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    # A few held-out items: too few for a 99.8 % rank in any group, so the physical bound alone;
    # the classifier and the estimate are those of the model it came from.
    raw = np.random.default_rng(0).uniform(1, 2, (4, len(RAW_COLUMNS)))
    raw[:, C["weight_g"]] = [500.0, 2000.0, 9000.0, 12000.0]
    est0, _ = model.energy.predict(raw)
    est1, up1 = m.energy.predict(raw)
    np.testing.assert_allclose(est1, est0)
    np.testing.assert_allclose(up1, physical_upper_wh(raw[:, C["weight_g"]]))
    np.testing.assert_allclose(m.predict(raw)[0], model.predict(raw)[0])
    # mistakes: exit 2 with a message
    assert main(["model", "energy-bound", str(log), "--out", str(out)]) == 2  # --out holds a model
    assert main(["model", "energy-bound", str(log), "--out", str(tmp_path / "m2"), "--edges-wh", "300,100"]) == 2
    assert main(["model", "energy-bound", str(log), "--out", str(tmp_path / "m3"), "--edges-wh", "a,b"]) == 2
    assert main(["model", "energy-bound", str(tmp_path / "nolog"), "--out", str(tmp_path / "m4")]) == 2
    err = capsys.readouterr().err
    assert "ascending" in err and "no such log directory" in err


# -- conformalized quantile regression and the hazard lane's own quantiles -----------------------


def two_kinds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic items of two kinds the measurements tell apart (the X-ray's opaque share): the
    estimate is good for one kind (true energy within 3 %) and poor for the other (-25 % to +40 %),
    at every size, so bins of the estimate cannot separate them but a quantile regressor can."""
    raw, e = packs(n, seed)
    rng = np.random.default_rng(seed + 200)
    poor = rng.random(n) < 0.3
    raw[:, C["xr_opaque_frac"]] = np.where(poor, 0.8, 0.2)
    e = e * np.where(poor, rng.uniform(0.75, 1.4, n), rng.uniform(0.97, 1.03, n))
    return raw, np.minimum(e, 0.29 * raw[:, C["weight_g"]])


def test_quantile_regression_bound_is_tight_for_the_well_estimated_kind_and_covers_both(energy_model):
    raw_f, e_f = two_kinds(4000, 21)
    raw_c, e_c = two_kinds(3000, 22)
    ratio, _ = energy_model.with_group_bound(raw_c, e_c, [1e12])
    cqr, report = energy_model.with_group_bound(raw_c, e_c, [1e12], fit=(raw_f, e_f))
    assert cqr.upper_regressor is not None and report["quantile_regressor"]["quantile"] == 0.99
    raw, e = two_kinds(6000, 23)
    _, up_ratio = ratio.predict(raw)
    _, up = cqr.predict(raw)
    good = raw[:, C["xr_opaque_frac"]] < 0.5
    for m in (good, ~good, good | ~good):
        assert np.mean(up[m] >= e[m]) >= 0.99, m.sum()
    # the fixed ratio is set by the poorly estimated kind; the regressor's bound is not
    assert np.sum(up[good]) < 0.9 * np.sum(up_ratio[good])
    # it survives the manifest (the regressor travels beside it, as the model directory stores it)
    again = EnergyModel.from_json(cqr.to_json(), cqr.regressor, cqr.upper_regressor)
    np.testing.assert_array_equal(again.predict(raw)[1], up)
    with pytest.raises(ValueError, match="quantile regressor"):
        EnergyModel.from_json(cqr.to_json(), cqr.regressor)  # the manifest names a regressor that is missing
    with pytest.raises(ValueError, match="at least 200"):
        energy_model.with_group_bound(raw_c, e_c, [1e12], fit=(raw_f[:50], e_f[:50]))


def test_hazard_lane_items_get_quantiles_of_their_own(energy_model):
    """Damaged items (the hazard lane's) are estimated worse: calibrated together with the rest
    they would be under-covered; with quantiles of their own each lane is covered."""
    raw_c, e_c = packs(8000, 31)
    rng = np.random.default_rng(32)
    hz = rng.random(e_c.size) < 0.4
    e_c = np.where(hz, e_c * rng.uniform(0.8, 1.3, e_c.size), e_c)
    together, _ = energy_model.with_group_bound(raw_c, e_c, [1e12])
    split, report = energy_model.with_group_bound(raw_c, e_c, [1e12], hazard_cal=hz)
    assert [g["calibration_n"] for g in report["hazard_groups"]] == [int(hz.sum()), 0]
    assert [g["calibration_n"] for g in report["groups"]] == [int((~hz).sum()), 0]
    assert split.hazard_log_q_groups[0] > together.log_q_groups[0] > split.log_q_groups[0]
    raw, e = packs(4000, 33)
    hz_t = np.random.default_rng(34).random(e.size) < 0.5
    e = np.where(hz_t, e * np.random.default_rng(35).uniform(0.8, 1.3, e.size), e)
    _, up = split.predict(raw, hazard=hz_t)
    _, up_plain = split.predict(raw)  # no lane given: the other items' quantiles
    assert np.mean(up[hz_t] >= e[hz_t]) >= 0.99 and np.mean(up[~hz_t] >= e[~hz_t]) >= 0.99
    np.testing.assert_array_equal(up[~hz_t], up_plain[~hz_t])
    again = EnergyModel.from_json(split.to_json(), split.regressor)
    np.testing.assert_array_equal(again.predict(raw, hazard=hz_t)[1], up)
    bad = dict(split.to_json(), hazard_log_q_groups=[0.1])  # one quantile for two groups
    with pytest.raises(ValueError, match="hazard"):
        EnergyModel.from_json(bad, split.regressor)


def test_energy_bound_adaptive_with_hazard_groups_writes_a_model_the_line_loads(model, tmp_path, capsys):
    """`sorter model energy-bound --adaptive --hazard-groups`: the quantile regressor is a file of
    the model directory (hashed, in the fast predictor file too), and the fast load (the line's,
    `sorter score`'s) gives the same bounds as the skops load."""
    from sorter.cli import main
    from sorter.model import ENERGY_UPPER_FILE, load_model
    from sorter.simulate import SimConfig, simulate_log

    log = tmp_path / "damaged"
    li = ("li_dropin", "li_pack_tool", "li_cell_cyl", "li_cell_pouch_prismatic")
    simulate_log(SimConfig(items=500, seed=41, mix="recycler", only_families=li, damaged_rate=0.5), str(log))
    out = tmp_path / "model"
    args = ["model", "energy-bound", str(log), "--out", str(out), "--adaptive", "--hazard-groups", "--edges-wh", "1e9"]
    assert main(args + ["--coverage", "1.5"]) == 2  # not a share
    assert main(args + ["--coverage", "0.9"]) == 0  # a few hundred items: a rank for 90 %, not 99.8 %
    printed = capsys.readouterr().out
    assert "hazard lane, estimate 0-1e+09 Wh" in printed and "quantile regressor" in printed
    slow, fast = load_model(out), load_model(out, estimators=False)
    assert ENERGY_UPPER_FILE in slow.manifest["files"] and (out / ENERGY_UPPER_FILE).is_file()
    assert slow.energy.upper_regressor is not None and slow.energy.hazard_log_q_groups
    assert type(fast.energy.upper_regressor).__name__ == "FastRegressor"
    raw, _ = packs(200, 42)
    hz = np.arange(200) % 2 == 0
    np.testing.assert_array_equal(slow.energy_wh(raw, hazard=hz)[1], fast.energy_wh(raw, hazard=hz)[1])
    cal = slow.manifest["energy_bound_calibration"]
    n_li = cal["quantile_regressor"]["fit_n"] + cal["calibration_n"]
    assert 400 < n_li <= 500 and abs(cal["quantile_regressor"]["fit_n"] - cal["calibration_n"]) < 60
    hz_n = cal["hazard_groups"][0]["calibration_n"]
    assert 0 < hz_n < cal["calibration_n"] and hz_n + cal["groups"][0]["calibration_n"] == cal["calibration_n"]
    # a log with no damaged item: --hazard-groups has nothing to calibrate the hazard lane on
    plain = tmp_path / "undamaged"
    simulate_log(SimConfig(items=30, seed=43, mix="recycler", only_families=li, damaged_rate=0.0), str(plain))
    assert main(["model", "energy-bound", str(plain), "--out", str(tmp_path / "m2"), "--hazard-groups"]) == 2
    assert "hazard lane" in capsys.readouterr().err


def test_the_line_and_evaluate_bound_hazard_items_with_the_hazard_lanes_quantiles(model, tmp_path):
    """The shipped bound has the hazard lane's own quantiles: scoring (the line's and `sorter
    score`'s path) passes each item's lane to the bound, and `sorter evaluate` measures the bound
    the same way and reports the hazard lane's coverage on its own."""
    from sorter.batch import measure_logs
    from sorter.report import energy_metrics
    from sorter.scoring import Scorer
    from sorter.simulate import SimConfig, simulate_log

    assert model.energy.hazard_log_q_groups and model.energy.upper_regressor is not None
    log = tmp_path / "damaged"
    li = ("li_dropin", "li_pack_tool", "li_pack_ebike")
    simulate_log(SimConfig(items=60, seed=51, mix="recycler", only_families=li, damaged_rate=0.6), log, workers=1)
    m = measure_logs([str(log)])
    decisions = Scorer(model).decide_rows(m.raw, m.line_nos, m.item_ids, m.problems)
    lanes = np.array([str(d.lane) for d in decisions])
    hz = lanes == "hazard"
    assert 10 < hz.sum() < 60
    upper = np.array([d.energy_wh_upper for d in decisions])
    nov = model.novelty_scores(m.raw)[:, model.classes.index("li_ion")]
    _, as_hazard = model.energy_wh(m.raw, nov, np.ones(len(lanes), dtype=bool))
    _, as_other = model.energy_wh(m.raw, nov)
    np.testing.assert_array_equal(upper[hz], as_hazard[hz])
    li_lane = lanes == "li_ion"
    np.testing.assert_array_equal(upper[li_lane], as_other[li_lane])
    assert not np.array_equal(as_hazard[hz], as_other[hz])  # the hazard lane's quantiles differ
    y = np.array(m.labels)
    metrics, rows = energy_metrics(model, m.raw, y, m.extras, hz)
    assert metrics["hazard_items"] == int((hz & (y == "li_ion") & np.isfinite(upper)).sum())
    assert 0.9 <= metrics["hazard_bound_coverage"] <= 1.0
    keep = (y == "li_ion") & np.array([np.isfinite(float(e.get("energy_wh") or np.nan)) for e in m.extras])
    np.testing.assert_array_equal(rows[2][hz[keep]], upper[keep & hz])
