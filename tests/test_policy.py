"""The divert policy's fail-safe rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorter.errors import ConfigError
from sorter.features.measure import RAW_COLUMNS
from sorter.features.transformers import SENSOR_GROUPS, mask_sensor
from sorter.policy import PolicyThresholds, critical_problems, decide, envelope_density, missing_optional

T = PolicyThresholds(
    lead_acid_min=0.98, not_lead_max=0.3, damage_min=0.4, hot_excess_c=6.0, envelope={"weight_g": (10.0, 60000.0)}
)
LEAD = np.array([0.999, 0.0005, 0.0005])
LI = np.array([0.001, 0.99, 0.009])
OTHER = np.array([0.001, 0.01, 0.989])


def full_row(**over) -> np.ndarray:
    """A raw row with every sensor present and plausible values."""
    raw = np.ones(len(RAW_COLUMNS))
    vals = {
        "weight_g": 20000.0,
        "length_mm": 260.0,
        "width_mm": 173.0,
        "height_mm": 225.0,
        "surface_temp_c": 20.0,
        "ambient_c": 20.0,
        "xr_low_ok": 1.0,
        "xr_high_ok": 1.0,
        "xr_area_mm2": 40000.0,
        "cam_area_mm2": 40000.0,
    }
    vals.update(over)
    for k, v in vals.items():
        raw[RAW_COLUMNS.index(k)] = v
    return raw


def test_confident_lead_acid_with_all_sensors_goes_to_lead_acid():
    v = decide(LEAD, 0.0, full_row(), T)
    assert v.lane == "lead_acid" and v.chemistry == "lead_acid"


@pytest.mark.parametrize("sensor", ["xray", "scale"])
def test_missing_critical_sensor_never_goes_to_lead_acid(sensor):
    raw = mask_sensor(full_row()[None, :], sensor)[0]
    v = decide(np.array([1.0, 0.0, 0.0]), 0.0, raw, T)
    assert v.lane == "manual" and "missing" in v.reason


def test_one_xray_channel_is_not_enough_for_lead_acid():
    raw = full_row()
    raw[RAW_COLUMNS.index("xr_high_ok")] = np.nan
    assert decide(LEAD, 0.0, raw, T).lane == "manual"


def test_xray_that_sees_nothing_is_invalid():
    raw = full_row(xr_area_mm2=0.0)
    v = decide(LEAD, 0.0, raw, T)
    assert v.lane == "manual" and "no object" in v.reason
    assert critical_problems(raw) == ["X-ray sees no object"]


def test_hot_item_goes_to_hazard_whatever_the_chemistry():
    for p in (LEAD, LI, OTHER):
        v = decide(p, 0.0, full_row(surface_temp_c=40.0, ambient_c=20.0), T)
        assert v.lane == "hazard" and "hot" in v.reason


def test_damaged_li_ion_goes_to_hazard_sound_to_li_ion():
    assert decide(LI, 0.9, full_row(), T).lane == "hazard"
    assert decide(LI, 0.1, full_row(), T).lane == "li_ion"


def test_other_goes_to_the_configured_safe_lane():
    assert decide(OTHER, 0.0, full_row(), T).lane == "li_ion"
    t2 = PolicyThresholds(lead_acid_min=0.98, not_lead_max=0.3, other_lane="manual")
    assert decide(OTHER, 0.0, full_row(), t2).lane == "manual"


def test_doubt_goes_to_manual():
    v = decide(np.array([0.7, 0.2, 0.1]), 0.0, full_row(), T)
    assert v.lane == "manual" and "uncertain" in v.reason


def test_unlike_training_goes_to_manual():
    v = decide(LEAD, 0.0, full_row(weight_g=90000.0), T)
    assert v.lane == "manual" and "unlike training" in v.reason


def test_invalid_probabilities_go_to_manual():
    for p in (np.array([np.nan, 0.5, 0.5]), np.array([0.5, 0.5]), np.array([np.inf, 0, 0])):
        assert decide(p, 0.0, full_row(), T).lane == "manual"


def test_thresholds_are_validated_and_round_trip():
    with pytest.raises(ConfigError):
        PolicyThresholds(lead_acid_min=0.5, not_lead_max=0.6)
    with pytest.raises(ConfigError):
        PolicyThresholds(other_lane="lead_acid")
    with pytest.raises(ConfigError, match="unknown policy keys"):
        PolicyThresholds.from_json({"lead_acid_min": 0.9, "bogus": 1})
    assert PolicyThresholds.from_json(T.to_json()) == T


probs = st.lists(st.floats(0, 1), min_size=3, max_size=3).map(np.array)
sensor = st.sampled_from(sorted(SENSOR_GROUPS))
values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None)
@given(p=probs, p_dmg=st.floats(0, 1), temp=values, weight=values)
def test_lead_acid_only_with_confidence_and_complete_critical_evidence(p, p_dmg, temp, weight):
    raw = full_row(surface_temp_c=temp, weight_g=weight)
    v = decide(p, p_dmg, raw, T)
    if v.lane == "lead_acid":
        assert p[0] >= T.lead_acid_min
        assert not critical_problems(raw)
        assert not np.isnan(weight)


@settings(max_examples=200, deadline=None)
@given(p=probs, missing=st.sampled_from(["xray", "scale"]))
def test_no_probability_can_send_an_item_without_xray_or_scale_to_lead_acid(p, missing):
    raw = mask_sensor(full_row()[None, :], missing)[0]
    assert decide(p, 0.0, raw, T).lane != "lead_acid"


def test_an_item_without_xray_and_scale_goes_to_manual_whatever_it_looks_like():
    raw = mask_sensor(mask_sensor(full_row()[None, :], "xray"), "scale")[0]
    for p in (LEAD, LI, OTHER):
        v = decide(p, 0.0, raw, T)
        assert v.lane == "manual" and "nothing to judge" in v.reason


@pytest.mark.parametrize("sensor", ["profiler", "camera", "thermal"])
def test_an_item_without_an_optional_sensor_must_clear_its_stricter_threshold(sensor):
    t = PolicyThresholds(lead_acid_min=0.95, lead_acid_min_missing={sensor: 0.995}, not_lead_max=0.3)
    p = np.array([0.99, 0.005, 0.005])
    assert decide(p, 0.0, full_row(), t).lane == "lead_acid"
    raw = mask_sensor(full_row()[None, :], sensor)[0]
    assert missing_optional(raw) == [sensor]
    v = decide(p, 0.0, raw, t)
    assert v.lane == "manual" and sensor in v.reason and "0.995" in v.reason
    assert decide(np.array([0.999, 0.0005, 0.0005]), 0.0, raw, t).lane == "lead_acid"


def test_a_camera_that_saw_no_item_counts_as_missing():
    raw = full_row()
    raw[RAW_COLUMNS.index("cam_area_mm2")] = 0.0
    raw[RAW_COLUMNS.index("cam_len_mm")] = np.nan  # what measure_camera gives for a blank picture
    assert missing_optional(raw) == ["camera"]


def test_per_sensor_thresholds_are_validated_and_old_manifests_load():
    with pytest.raises(ConfigError, match="unknown sensor"):
        PolicyThresholds(lead_acid_min=0.9, lead_acid_min_missing={"xray": 0.99})
    with pytest.raises(ConfigError, match="lead_acid_min_missing"):
        PolicyThresholds(lead_acid_min=0.9, lead_acid_min_missing={"camera": 0.5})
    t = PolicyThresholds(lead_acid_min=0.9, lead_acid_min_missing={"camera": 0.99})
    assert PolicyThresholds.from_json(t.to_json()) == t
    old = t.to_json()
    del old["lead_acid_min_missing"]  # a manifest written before per-sensor thresholds
    assert PolicyThresholds.from_json(old).lead_acid_min_missing == {}


def test_an_item_unlike_the_training_lead_acid_never_goes_to_lead_acid():
    t = PolicyThresholds(lead_acid_min=0.98, not_lead_max=0.3, novelty_max=5.0)
    assert decide(LEAD, 0.0, full_row(), t, lead_novelty=4.9).lane == "lead_acid"
    v = decide(LEAD, 0.0, full_row(), t, lead_novelty=5.1)
    assert v.lane == "manual" and "unlike the training lead-acid items" in v.reason and "5.1 > 5.0" in v.reason
    # novelty concerns the breaker only: a novel Li-ion item still goes to the Li-ion lane
    assert decide(LI, 0.0, full_row(), t, lead_novelty=50.0).lane == "li_ion"


def test_a_closed_line_sends_lead_acid_to_manual_naming_why():
    v = decide(LEAD, 0.0, full_row(), T, line_closed="line mismatch: line 'x'")
    assert v.lane == "manual" and "lead_acid is closed: line mismatch: line 'x'" in v.reason
    assert decide(LI, 0.0, full_row(), T, line_closed="line mismatch").lane == "li_ion"


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 400), st.booleans())
def test_lead_acid_only_when_typical_and_on_the_models_line(p_lead, p_li, novelty, closed):
    t = PolicyThresholds(lead_acid_min=0.9, not_lead_max=0.3, novelty_max=6.0)
    rest = max(0.0, 1 - p_lead)
    proba = np.array([p_lead, rest * p_li, rest * (1 - p_li)])
    v = decide(proba, 0.0, full_row(), t, lead_novelty=novelty, line_closed="x" if closed else None)
    if v.lane == "lead_acid":
        assert novelty <= 6.0 and not closed


def test_novelty_max_survives_json_including_no_limit():
    for t in (PolicyThresholds(novelty_max=7.5), PolicyThresholds()):
        assert PolicyThresholds.from_json(t.to_json()) == t
    with pytest.raises(ConfigError):
        PolicyThresholds(novelty_max=0.0)


def test_an_item_too_light_for_lead_acid_goes_to_manual_however_lead_like():
    # a 12 V LiFePO4 drop-in in a group-24 case: 11.9 kg in 10.1 L is 1.18 kg/L, lead-acid 1.8-3.1
    t = PolicyThresholds(lead_acid_min=0.9, not_lead_max=0.3, lead_density_min=1.4)
    v = decide(np.array([0.9999, 0.0001, 0.0]), 0.0, full_row(weight_g=11900.0), t)
    assert v.lane == "manual" and "too light for lead-acid" in v.reason and "1.18 kg/L" in v.reason
    assert decide(LEAD, 0.0, full_row(weight_g=20000.0), t).lane == "lead_acid"  # 1.98 kg/L
    # a light item the model calls Li-ion still goes to the Li-ion lane
    assert decide(LI, 0.0, full_row(weight_g=11900.0), t).lane == "li_ion"


def test_without_a_profiler_the_density_is_unknown_and_the_stricter_threshold_decides():
    t = PolicyThresholds(
        lead_acid_min=0.9, not_lead_max=0.3, lead_density_min=1.4, lead_acid_min_missing={"profiler": 0.99}
    )
    raw = mask_sensor(full_row(weight_g=11900.0)[None, :], "profiler")[0]
    assert np.isnan(envelope_density(raw))
    assert decide(np.array([0.995, 0.005, 0.0]), 0.0, raw, t).lane == "lead_acid"
    assert decide(np.array([0.95, 0.05, 0.0]), 0.0, raw, t).lane == "manual"


@settings(max_examples=200, deadline=None)
@given(st.floats(0.9, 1.0), st.floats(100.0, 60000.0))
def test_lead_acid_never_below_the_density_gate(p_lead, weight):
    t = PolicyThresholds(lead_acid_min=0.9, not_lead_max=0.3, lead_density_min=1.5)
    raw = full_row(weight_g=weight)
    v = decide(np.array([p_lead, 1 - p_lead, 0.0]), 0.0, raw, t)
    if v.lane == "lead_acid":
        assert envelope_density(raw) >= 1.5


def test_density_gate_survives_json_and_old_manifests_have_none():
    t = PolicyThresholds(lead_acid_min=0.9, not_lead_max=0.3, lead_density_min=1.43)
    assert PolicyThresholds.from_json(t.to_json()).lead_density_min == 1.43
    old = {k: v for k, v in t.to_json().items() if k != "lead_density_min"}
    assert PolicyThresholds.from_json(old).lead_density_min == 0.0
    with pytest.raises(ConfigError, match="lead_density_min"):
        PolicyThresholds(lead_density_min=-1.0)
