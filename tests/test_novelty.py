"""The novelty score: distance from the training data, marginalised over missing sensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorter.features.measure import RAW_COLUMNS
from sorter.novelty import NOVELTY_FEATURES, ClassDensity, NoveltyModel, novelty_inputs, overall


@pytest.fixture(scope="module")
def density():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, size=(400, 4)), rng.normal(6, 1, size=(400, 4))])
    return ClassDensity.fit(x, n_components=2, seed=0)


def test_typical_items_score_low_and_far_items_high(density):
    near = density.score(np.array([[0.0] * 4, [6.0] * 4]))
    between = density.score(np.array([[3.0] * 4]))  # 3 sigma from both modes in each of 4 features
    far = density.score(np.array([[15.0] * 4, [-8.0] * 4]))
    assert (near < 2).all() and 4 < between[0] < 8 and (far > 12).all()


def test_the_score_is_a_calibrated_tail_probability(density):
    rng = np.random.default_rng(2)
    fresh = np.vstack([rng.normal(0, 1, size=(2000, 4)), rng.normal(6, 1, size=(2000, 4))])
    s = density.score(fresh)
    # -log10 p > 2 for about 1 % of fresh draws from the training distribution (nearest of two components)
    assert 0.002 < np.mean(s > 2) < 0.03


def test_a_missing_feature_is_marginalised_not_imputed(density):
    x = np.array([[0.0, 0.0, 0.0, np.nan], [0.0, 0.0, 40.0, np.nan], [np.nan, np.nan, np.nan, 0.0]])
    s = density.score(x)
    assert s[0] < 2 and s[1] > 6  # three features still tell
    assert np.isnan(s[2])  # one alone says too little: no score


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=4, max_size=4), st.integers(0, 3))
def test_score_is_finite_and_bounded_for_any_input(density, row, drop):
    x = np.array([row], float)
    x[0, drop] = np.nan
    s = density.score(x)
    assert 0 <= s[0] <= 300


def test_json_round_trip_gives_the_same_scores(density):
    again = ClassDensity.from_json(density.to_json())
    x = np.array([[0.5, -0.2, 1.0, 2.0], [9.0, 1.0, np.nan, 3.0]])
    np.testing.assert_array_equal(again.score(x), density.score(x))


def test_novelty_inputs_are_physical_and_nan_where_a_sensor_is_missing():
    raw = np.full((2, len(RAW_COLUMNS)), np.nan)
    c = {n: i for i, n in enumerate(RAW_COLUMNS)}
    raw[0, [c["weight_g"], c["length_mm"], c["width_mm"], c["height_mm"]]] = [20000.0, 250.0, 170.0, 200.0]
    x = novelty_inputs(raw)
    assert x.shape == (2, len(NOVELTY_FEATURES))
    density = x[0, NOVELTY_FEATURES.index("log_density")]
    assert density == pytest.approx(np.log(20.0 / 8.5))
    assert np.isnan(x[1]).all()


def test_overall_is_the_nearest_class_and_nan_when_none_scored():
    nov = np.array([[5.0, 1.0, np.nan], [np.nan, np.nan, np.nan]])
    out = overall(nov)
    assert out[0] == 1.0 and np.isnan(out[1])


def test_model_json_refuses_other_features():
    rng = np.random.default_rng(0)
    raw = np.full((300, len(RAW_COLUMNS)), np.nan)
    c = {n: i for i, n in enumerate(RAW_COLUMNS)}
    for k in (
        "weight_g",
        "length_mm",
        "width_mm",
        "height_mm",
        "xr_opaque_frac",
        "xr_al_eq_high_p50",
        "xr_al_eq_low_p50",
        "xr_mat_p50",
        "xr_al_eq_mass_g",
        "xr_area_mm2",
    ):
        raw[:, c[k]] = rng.uniform(1, 2, 300)
    y = np.array(["lead_acid", "li_ion", "other"] * 100)
    d = NoveltyModel.fit(raw, y, ("lead_acid", "li_ion", "other")).to_json()
    assert NoveltyModel.from_json(d).score(raw[:2]).shape == (2, 3)
    d["features"] = ["something", "else"]
    with pytest.raises(ValueError, match="novelty features"):
        NoveltyModel.from_json(d)


def test_a_class_with_a_handful_of_items_gets_a_wide_density_and_none_fails_clearly():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, len(NOVELTY_FEATURES)))
    d = ClassDensity.fit(x)  # four operator-labelled items of a class: one broad Gaussian
    assert np.isfinite(d.score(x)).all()
    with pytest.raises(ValueError, match="at least 3 items"):
        ClassDensity.fit(x[:2])
