"""Feature transformers and measurements."""

from __future__ import annotations

import unittest

import numpy as np
import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from sorter.features import (
    RAW_COLUMNS,
    AmbientTracker,
    CameraFeatures,
    CrossSensorFeatures,
    MassShapeFeatures,
    MaterialFeatures,
    ScaleProfilerFeatures,
    ThermalFeatures,
    XrayFeatures,
    make_feature_transformer,
    mask_sensor,
    measure_item,
)
from sorter.features.measure import (
    CAMERA_COLUMNS,
    XRAY_COLUMNS,
    XRAY_WORK_MM_PER_PX,
    camera_binning,
    material_scale,
    measure_camera,
    measure_xray,
    xray_binning,
)
from sorter.readings import Item, ItemRecord, LogMeta
from sorter.simulate import SimConfig, simulate_item

TRANSFORMERS = [
    ScaleProfilerFeatures(),
    MassShapeFeatures(),
    ThermalFeatures(),
    XrayFeatures(),
    CameraFeatures(),
    CrossSensorFeatures(),
    MaterialFeatures(),
]


def _check_name(check) -> str:
    return getattr(check, "func", check).__name__


# scikit-learn runs its array-API check only when SCIPY_ARRAY_API=1 was set before scipy was
# imported, and raises SkipTest otherwise; the transformers make no array-API claim.
_ENVIRONMENT_SKIPS = {"check_array_api_input": "SCIPY_ARRAY_API"}


@pytest.mark.parametrize("estimator", TRANSFORMERS, ids=lambda t: type(t).__name__)
def test_sklearn_estimator_checks(estimator):
    """scikit-learn's own checks (``estimator_checks_generator``, what ``parametrize_with_checks``
    runs). Our transformers take the fixed columns of one sensor: a check that feeds another width
    must meet our clear width error; every other check must pass. One test per transformer, so a
    run shows no line per refused check; any other outcome fails, naming the check."""
    passed, refused, other = [], [], []
    for est, check in estimator_checks_generator(estimator, legacy=True):
        name = _check_name(check)
        try:
            check(est)
        except unittest.SkipTest as err:
            if _ENVIRONMENT_SKIPS.get(name, "\x00") not in str(err):
                other.append(f"{name}: skipped: {err}")
        except (ValueError, AssertionError) as err:  # some checks wrap the error in an assertion
            if f"expects {est.n_inputs} columns" in f"{err} {err.__cause__}":
                refused.append(name)
            else:
                other.append(f"{name}: {type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - reported with the check's name below
            other.append(f"{name}: {type(err).__name__}: {err}")
        else:
            passed.append(name)
    assert not other, "\n".join(other)
    # the checks that matter for a fixed-width transformer ran and passed
    assert {
        "check_transformer_n_iter",
        "check_get_params_invariance",
        "check_set_params",
        "check_estimators_nan_inf",
    } & set(passed)
    assert len(passed) >= 15, passed


@pytest.mark.parametrize("t", TRANSFORMERS, ids=lambda t: type(t).__name__)
def test_wrong_width_is_refused_with_the_columns_named(t):
    with pytest.raises(ValueError, match="expects"):
        t.fit(np.zeros((3, t.n_inputs + 1)))


@pytest.mark.parametrize("t", TRANSFORMERS, ids=lambda t: type(t).__name__)
def test_all_missing_rows_give_indicators_not_errors(t):
    x = np.full((2, t.n_inputs), np.nan)
    out = t.fit(x).transform(x)
    names = list(t.get_feature_names_out())
    assert out.shape == (2, len(names))
    for k, n in enumerate(names):
        if n.endswith("_missing"):
            assert np.all(out[:, k] == 1.0), n


def test_scale_features_physics():
    t = ScaleProfilerFeatures().fit(np.zeros((1, 4)))
    # a Group 24 lead-acid battery and a LiFePO4 drop-in of the same envelope
    out = t.transform(np.array([[20000.0, 260, 173, 225], [6800.0, 260, 173, 225]]))
    names = list(t.get_feature_names_out())
    dens = out[:, names.index("density_kg_l")]
    ratio = out[:, names.index("mass_vs_lead_acid")]
    assert 1.8 < dens[0] < 3.1 and dens[1] < 1.7  # reference ranges
    assert ratio[0] > 2 * ratio[1] * 0.9


def test_mass_shape_is_the_scale_features_without_the_envelope_density():
    x = np.array([[20000.0, 260, 173, 225], [3500.0, 344, 90, 38]])
    old = ScaleProfilerFeatures().fit(x)
    new = MassShapeFeatures().fit(x)
    names_old, names_new = list(old.get_feature_names_out()), list(new.get_feature_names_out())
    assert "density_kg_l" not in names_new and "mass_vs_lead_acid" not in names_new
    keep = [names_old.index(n) for n in names_new]
    np.testing.assert_array_equal(new.transform(x), old.transform(x)[:, keep])


def _material_row(weight_g, length_mm, width_mm, al_eq_low, al_eq_high):
    """Raw MaterialFeatures inputs of a box whose X-ray sees ``al_eq_*`` (p10, p50, p90) g/cm^2."""
    area = length_mm * width_mm
    mass = al_eq_high[1] * area / 100.0
    return [weight_g, length_mm, width_mm, area, mass, 0.0, area, *al_eq_low, *al_eq_high]


def test_material_features_do_not_change_with_the_size_of_the_item():
    """A pack of twice the cells side by side (twice the footprint and mass, the same areal
    densities) has the same per-gram features: they describe the material, not the item."""
    small = _material_row(1000.0, 200, 100, (5, 6, 8), (4, 5, 7))
    large = _material_row(2000.0, 400, 100, (5, 6, 8), (4, 5, 7))
    t = MaterialFeatures().fit(np.array([small]))
    out = t.transform(np.array([small, large]))
    np.testing.assert_allclose(out[0], out[1])
    names = list(t.get_feature_names_out())
    # 5 g/cm^2 of aluminium-equivalent over 200 cm^2 is 1000 g: one gram per gram weighed
    assert out[0, names.index("al_eq_high_p50_per_gram")] == pytest.approx(1.0)
    # lead attenuates far more per gram than a plastic or aluminium item of the same mass
    lead = _material_row(1000.0, 100, 50, (24, 26, 26), (20, 26, 26))
    assert t.transform(np.array([lead]))[0, names.index("al_eq_high_p50_per_gram")] > 1.2


def test_the_material_feature_step_has_no_envelope_density():
    """``features="material"``: the classifier sees density only through the policy's density gate."""
    x = np.zeros((2, len(RAW_COLUMNS)))
    names = list(make_feature_transformer("material").fit(x).get_feature_names_out())
    assert not [n for n in names if "density_kg_l" in n or "mass_vs_lead_acid" in n or "areal_density" in n]
    assert "cross__al_eq_low_p50_per_gram" in names
    assert "scale__density_kg_l" in make_feature_transformer().fit(x).get_feature_names_out()  # the default
    with pytest.raises(ValueError, match="envelope, material"):
        make_feature_transformer("colour")


def test_thermal_excess():
    t = ThermalFeatures().fit(np.zeros((1, 2)))
    out = t.transform(np.array([[35.0, 20.0], [np.nan, 20.0]]))
    assert out[0, 0] == 15.0 and out[0, 1] == 0.0
    assert np.isnan(out[1, 0]) and out[1, 1] == 1.0


def test_feature_transformer_names_every_column():
    ft = make_feature_transformer().fit(np.zeros((2, len(RAW_COLUMNS))))
    names = ft.get_feature_names_out()
    assert len(names) == ft.transform(np.zeros((1, len(RAW_COLUMNS)))).shape[1]
    assert len(set(names)) == len(names)


def _sim_item(i, seed=3):
    cfg = SimConfig(items=100, seed=seed)
    s = simulate_item(cfg, i)
    return Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), cfg.meta())


def test_measurements_separate_lead_from_lithium_physically():
    cfg = SimConfig(items=400, seed=8)
    rows, labels = [], []
    for i in range(150):
        s = simulate_item(cfg, i)
        item = Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), cfg.meta())
        rows.append(measure_item(item, 15.0))
        labels.append(s.record.label)
    raw = np.array(rows)
    y = np.array(labels)
    opaque = raw[:, RAW_COLUMNS.index("xr_opaque_frac")]
    assert np.nanmedian(opaque[y == "lead_acid"]) > 0.6
    assert np.nanmedian(opaque[y == "li_ion"]) < 0.3


def test_missing_images_give_nan_groups_and_no_error():
    rec = ItemRecord("a", 0.0, weight_g=100.0, length_mm=50.0, width_mm=20.0, height_mm=20.0, surface_temp_c=20.0)
    row = measure_item(Item(rec), 19.0)
    assert row[RAW_COLUMNS.index("weight_g")] == 100.0
    assert np.isnan(row[RAW_COLUMNS.index("xr_area_mm2")]) and np.isnan(row[RAW_COLUMNS.index("cam_area_mm2")])


def test_one_xray_channel_still_measures():
    item = _sim_item(2)
    full = measure_xray(item.xray_low, item.xray_high, item.meta)
    low_only = measure_xray(item.xray_low, None, item.meta)
    assert low_only[XRAY_COLUMNS.index("xr_high_ok")] == 0.0
    assert low_only[XRAY_COLUMNS.index("xr_area_mm2")] == pytest.approx(
        full[XRAY_COLUMNS.index("xr_area_mm2")], rel=0.2
    )
    assert np.isnan(low_only[XRAY_COLUMNS.index("xr_mat_p50")])


def test_blank_images_measure_no_object():
    meta = LogMeta()
    blank = np.full((40, 40), 65535, np.uint16)
    x = measure_xray(blank, blank, meta)
    assert x[XRAY_COLUMNS.index("xr_area_mm2")] == 0.0
    belt = np.full((40, 40, 3), 60, np.uint8)
    c = measure_camera(belt, meta)
    assert c[CAMERA_COLUMNS.index("cam_area_mm2")] == 0.0


def test_camera_outline_measures_the_item():
    meta = LogMeta(camera_mm_per_px=1.0)
    img = np.full((100, 160, 3), 60, np.uint8)
    img[20:80, 30:130] = (230, 200, 20)  # a 100 x 60 mm yellow pack
    c = measure_camera(img, meta)
    # measured on pixels binned to CAMERA_WORK_MM_PER_PX (3 mm here): within a pixel either side
    tol = 2 * camera_binning(meta.camera_mm_per_px) * meta.camera_mm_per_px
    assert c[CAMERA_COLUMNS.index("cam_len_mm")] == pytest.approx(100, abs=tol)
    assert c[CAMERA_COLUMNS.index("cam_wid_mm")] == pytest.approx(60, abs=tol)
    assert c[CAMERA_COLUMNS.index("cam_rectangularity")] > 0.95
    assert c[CAMERA_COLUMNS.index("cam_colourful_frac")] > 0.8


@pytest.mark.parametrize("mm_per_px", [1.0, 1.6, 2.0, 4.0])
def test_xray_outline_and_attenuation_measure_the_item_at_any_pitch(mm_per_px):
    """A 100 x 60 mm slab of uniform transmission: its size in mm and its attenuation come out
    the same whatever the detector pitch, whether its pixels are binned or not."""
    meta = LogMeta(xray_mm_per_px=mm_per_px)
    h, w = round(120 / mm_per_px), round(200 / mm_per_px)
    y0, x0, ly, lx = round(30 / mm_per_px), round(50 / mm_per_px), round(60 / mm_per_px), round(100 / mm_per_px)
    low = np.full((h, w), 65535, np.uint16)
    high = low.copy()
    low[y0 : y0 + ly, x0 : x0 + lx] = round(0.2 * 65535)
    high[y0 : y0 + ly, x0 : x0 + lx] = round(0.4 * 65535)
    x = measure_xray(low, high, meta)
    # the outline is the detector's, at most a pixel large either side (the 3 x 3 mean before
    # the air threshold); the attenuations come from binned pixels
    tol = 2 * mm_per_px
    assert x[XRAY_COLUMNS.index("xr_len_mm")] == pytest.approx(100, abs=tol)
    assert x[XRAY_COLUMNS.index("xr_wid_mm")] == pytest.approx(60, abs=tol)
    assert lx * ly * mm_per_px**2 <= x[XRAY_COLUMNS.index("xr_area_mm2")] <= (lx + 2) * (ly + 2) * mm_per_px**2
    # in line-independent units: aluminium-equivalent areal density, the ratio on the material scale
    scale = material_scale(meta.xray_energies_kev)
    assert x[XRAY_COLUMNS.index("xr_al_eq_low_p50")] == pytest.approx(-np.log(0.2) / scale.mu_al_low, rel=1e-3)
    r = np.log(0.2) / np.log(0.4)
    assert x[XRAY_COLUMNS.index("xr_mat_p50")] == pytest.approx(
        (r - scale.r_plastic) / (scale.r_iron - scale.r_plastic), rel=1e-3
    )
    area_cm2 = (lx * ly) * (mm_per_px / 10) ** 2
    assert x[XRAY_COLUMNS.index("xr_al_eq_mass_g")] == pytest.approx(
        -np.log(0.4) / scale.mu_al_high * area_cm2, rel=0.03
    )


def test_xray_binning_keeps_the_working_pitch():
    """Every detector pitch finer than the working pitch is brought exactly to it (a line of
    2.5 mm pixels is measured at 4 mm like one of 2 mm); coarser pixels are left as they are."""
    for p in (1.0, 1.6, 2.0, 2.5, 3.3, 4.0):
        assert p * xray_binning(p) == pytest.approx(XRAY_WORK_MM_PER_PX)
    assert xray_binning(5.0) == 1.0


def test_fractional_binning_averages_the_area():
    """Resampling by a factor that is not whole keeps the mean and the item's extent in mm."""
    from sorter.features.measure import _bin

    img = np.zeros((100, 160), np.uint16)
    img[20:80, 40:120] = 40000
    out = _bin(img, 1.6)
    assert out.shape == (62, 100)
    assert out.dtype == np.uint16
    assert float(out.mean()) == pytest.approx(float(img[:99, :160].mean()), rel=0.01)
    inside = np.count_nonzero(out > 20000) * 1.6 * 1.6
    assert inside == pytest.approx(60 * 80, rel=0.05)


def test_periodicity_finds_the_cell_pitch():
    """Cells of 21 mm side by side along a pack: the long-axis period is theirs."""
    from sorter.features.measure import _periodicity

    px = 2.0
    x = np.arange(70) * px
    profile = (1.0 + 0.3 * np.cos(2 * np.pi * x / 21.0)).astype(np.float32)
    period, power = _periodicity(profile, px)
    assert period == pytest.approx(21.0, rel=0.1)
    assert power > 0.5


def test_mask_sensor_blanks_only_that_sensor():
    raw = np.ones((2, len(RAW_COLUMNS)))
    m = mask_sensor(raw, "camera")
    assert np.isnan(m[:, RAW_COLUMNS.index("cam_area_mm2")]).all()
    assert (m[:, RAW_COLUMNS.index("weight_g")] == 1).all()
    assert (raw == 1).all()  # a copy


def test_ambient_tracker_ignores_hot_items_and_tracks_drift():
    tr = AmbientTracker(window=8)
    assert tr.observe(20.0) is None
    for _ in range(10):
        tr.observe(20.0)
    assert tr.observe(70.0) == 20.0  # a hot item is measured against ambient ...
    assert tr.ambient_c == 20.0  # ... and does not drag it up
    for _ in range(10):
        tr.observe(24.0)
    assert tr.ambient_c == 24.0


# The hot path replaces numpy's general functions by cheaper exact equivalents; they must
# stay equivalent, or features drift away from what the shipped model was trained on.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from sorter.features.measure import _belt_colour, _percentiles  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 400), elements=st.floats(0, 20, width=32)),
    st.lists(st.floats(0, 100), min_size=1, max_size=4),
)
def test_percentiles_equal_numpy(a, qs):
    np.testing.assert_allclose(
        _percentiles(a, tuple(qs)), np.percentile(a.astype(np.float64), qs), rtol=1e-6, atol=1e-6
    )


@settings(max_examples=100, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(2, 40), st.integers(2, 40), st.just(3))))
def test_belt_colour_is_the_border_median(rgb):
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    np.testing.assert_array_equal(_belt_colour(rgb), np.median(border, axis=0))


from sorter.features.measure import (  # noqa: E402
    _ATT,
    _MEAS_HIGH_MAX_U,
    _MEAS_HIGH_MIN_U,
    _MEAS_LOW_MIN_U,
    _OPAQUE_HIGH_U,
    _OPAQUE_LOW_U,
    OPAQUE_HIGH,
    OPAQUE_LOW,
    U16,
    _att_percentiles,
)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.uint16, st.integers(1, 400), elements=st.integers(0, 65535)),
    st.lists(st.floats(0, 100), min_size=1, max_size=4),
)
def test_attenuation_percentiles_equal_numpy(levels, qs):
    # order statistics of the 16-bit levels stand in for those of their attenuations
    np.testing.assert_allclose(
        _att_percentiles(levels, tuple(qs)), np.percentile(_ATT[levels].astype(np.float64), qs), rtol=1e-6, atol=1e-6
    )


def test_integer_levels_select_the_same_pixels_as_the_float_thresholds():
    t = np.arange(65536, dtype=np.float32) / np.float32(U16)
    u = np.arange(65536)
    np.testing.assert_array_equal(u < _OPAQUE_LOW_U, t < OPAQUE_LOW)
    np.testing.assert_array_equal(u < _OPAQUE_HIGH_U, t < OPAQUE_HIGH)
    np.testing.assert_array_equal(u > _MEAS_HIGH_MIN_U, t > 0.005)
    np.testing.assert_array_equal(u < _MEAS_HIGH_MAX_U, t < 0.9)
    np.testing.assert_array_equal(u > _MEAS_LOW_MIN_U, t > 1e-4)
    np.testing.assert_array_equal(_ATT, -np.log(np.clip(t, 1e-5, 1.0)))


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float32, st.integers(8, 160), elements=st.floats(0, 9, width=32)), st.sampled_from([1.6, 2.0, 3.2, 4.0])
)
def test_windowed_dft_equals_numpy_rfft(profile, mm_per_px):
    """The periodicity's matrix DFT is numpy's rfft of the Hann-windowed profile, to rounding."""
    from sorter.features.measure import _fft_band

    n = profile.size
    p = profile - profile.sum() / n
    dft, freqs, _ = _fft_band(n, mm_per_px)
    y = dft @ p.astype(np.float64)
    ref = np.fft.rfft(p * np.hanning(n))
    np.testing.assert_allclose(y[: freqs.size], ref.real, atol=1e-9 * (1 + np.abs(ref).max()))
    np.testing.assert_allclose(y[freqs.size :], -ref.imag, atol=1e-9 * (1 + np.abs(ref).max()))
    np.testing.assert_array_equal(freqs, np.fft.rfftfreq(n, d=mm_per_px))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-40, 90), min_size=1, max_size=200), st.integers(1, 64))
def test_ambient_estimate_is_the_numpy_median_of_the_window(temps, window):
    tr = AmbientTracker(window=window, reject_above_c=1e9)
    for t in temps:
        tr.observe(t)
    assert tr.ambient_c == float(np.median(temps[-window:]))


@settings(max_examples=150, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(6, 40), st.integers(6, 40)), elements=st.integers(0, 1)))
def test_outline_end_points_measure_as_the_whole_pixel_chain(blob):
    """The X-ray outline keeps straight runs as their end points (CHAIN_APPROX_SIMPLE): its area,
    hull, rectangle, deepest dent and filled mask are those of the full chain of pixels."""
    import cv2

    from sorter.features.measure import outline_shape

    full, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    ends, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert len(full) == len(ends)
    if not full:
        return
    a = max(full, key=cv2.contourArea)
    b = max(ends, key=cv2.contourArea)
    assert cv2.contourArea(a) == cv2.contourArea(b)
    fa, fb = np.zeros_like(blob), np.zeros_like(blob)
    cv2.drawContours(fa, [a], -1, 1, -1)
    cv2.drawContours(fb, [b], -1, 1, -1)
    np.testing.assert_array_equal(fa, fb)
    if len(a) >= 3:
        ra, rb = cv2.minAreaRect(a), cv2.minAreaRect(b)
        np.testing.assert_allclose([*ra[0], *ra[1], ra[2]], [*rb[0], *rb[1], rb[2]], rtol=0, atol=1e-9)
        np.testing.assert_allclose(outline_shape(a, ra), outline_shape(b, rb), rtol=0, atol=1e-12)


def _slab(t_low: float, t_high: float, mm_per_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A 100 x 60 mm slab of uniform transmission on air."""
    h, w = round(120 / mm_per_px), round(200 / mm_per_px)
    low = np.full((h, w), 65535, np.uint16)
    high = low.copy()
    ys, xs = slice(round(30 / mm_per_px), round(90 / mm_per_px)), slice(round(50 / mm_per_px), round(150 / mm_per_px))
    low[ys, xs] = round(t_low * 65535)
    high[ys, xs] = round(t_high * 65535)
    return low, high


def test_opaque_pixels_are_censored_at_the_opacity_threshold_whatever_the_detector_floor():
    """Below the opacity threshold a detector reads its own floor; two lines with other floors
    must measure the same opaque item the same."""
    meta = LogMeta()
    a = measure_xray(*_slab(2e-4, 5e-4), meta)
    b = measure_xray(*_slab(1e-5, 3e-5), meta)
    for col in ("xr_al_eq_low_p50", "xr_al_eq_high_p50", "xr_opaque_frac"):
        assert a[XRAY_COLUMNS.index(col)] == b[XRAY_COLUMNS.index(col)], col
    # the mass sums the binned edge pixels too, where air and the floor mix: alike, not equal
    assert a[XRAY_COLUMNS.index("xr_al_eq_mass_g")] == pytest.approx(b[XRAY_COLUMNS.index("xr_al_eq_mass_g")], rel=1e-3)
    assert a[XRAY_COLUMNS.index("xr_opaque_frac")] > 0.75  # all but the binned edge


@pytest.mark.parametrize("energies", [(53.1, 96.2), (60.0, 100.0)])
def test_two_material_decomposition_recovers_the_lead(energies):
    """A slab of 0.15 g/cm^2 of lead over 3 g/cm^2 of aluminium, seen by a line at these
    (monoenergetic) energies: the lead-equivalent mass is the lead's, the ratio sits low on the
    material scale, and the same slab reads alike on both lines."""
    from sorter.attenuation import attenuation_table

    tab = attenuation_table()
    pb, al = tab.at("Pb", list(energies)), tab.at("Al", list(energies))
    t = np.exp(-(pb * 0.15 + al * 3.0))
    meta = LogMeta(xray_energies_kev=energies)
    x = measure_xray(*_slab(float(t[0]), float(t[1])), meta)
    area_cm2 = 10 * 6
    assert x[XRAY_COLUMNS.index("xr_pb_eq_mass_g")] == pytest.approx(0.15 * area_cm2, rel=0.05)
    assert x[XRAY_COLUMNS.index("xr_mat_p50")] < 0.3


def test_material_scale_orders_the_reference_materials():
    s = material_scale((53.1, 96.2))
    assert s.r_plastic < s.r_iron and s.mu_al_low > s.mu_al_high > 0
    assert s.pb_basis is not None


def test_every_measurement_is_written_to_its_column_by_name():
    """measure_xray and measure_camera write their outputs only through the name-to-index maps
    (``_X["xr_..."]``, ``_C["cam_..."]``, single names or ``first : last + 1`` ranges), every
    column is written somewhere, and no output is written at a bare number: reordering or
    extending XRAY_COLUMNS / CAMERA_COLUMNS cannot mislabel a measurement silently."""
    import ast
    import inspect

    from sorter.features import measure as m

    tree = ast.parse(inspect.getsource(m))
    written: dict[str, set[str]] = {"_X": set(), "_C": set()}
    columns = {"_X": m.XRAY_COLUMNS, "_C": m.CAMERA_COLUMNS}

    def name_of(node):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in written
            and isinstance(node.slice, ast.Constant)
        ):
            return node.value.id, node.slice.value
        return None

    groups = [
        f
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        and (f.name in ("measure_xray", "measure_camera") or f.name.startswith("_xray_"))
    ]
    assert len(groups) >= 5  # measure_xray, its outline / attenuation / structure parts, measure_camera
    for node in (n for f in groups for n in ast.walk(f)):
        if not isinstance(node, (ast.Assign, ast.AugAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        for t in flat:
            if not (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == "out"):
                continue
            idx = t.slice
            if isinstance(idx, ast.Slice):
                lo = name_of(idx.lower)
                hi = idx.upper
                assert lo is not None and isinstance(hi, ast.BinOp), ast.unparse(t)
                hi_name = name_of(hi.left)
                assert hi_name is not None and hi_name[0] == lo[0] and ast.unparse(hi.right) == "1", ast.unparse(t)
                cols = columns[lo[0]]
                written[lo[0]].update(cols[cols.index(lo[1]) : cols.index(hi_name[1]) + 1])
            else:
                named = name_of(idx)
                assert named is not None, f"out written at {ast.unparse(idx)!r}, not by column name"
                assert named[1] in columns[named[0]], named
                written[named[0]].add(named[1])
    assert written["_X"] == set(m.XRAY_COLUMNS)
    assert written["_C"] == set(m.CAMERA_COLUMNS)
