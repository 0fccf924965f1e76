"""Sensor alarms: raised within the window, items stripped, lead_acid closed, cleared on recovery."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sorter.line.health import HealthLimits, SensorHealth, guard_lane
from sorter.readings import Item
from sorter.simulate import SimConfig, simulate_item

CFG = SimConfig(items=100, seed=31, faults=0.0)


def items(n, start=0):
    for i in range(start, start + n):
        s = simulate_item(CFG, i)
        yield Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), CFG.meta())


def test_healthy_stream_raises_no_alarm():
    h = SensorHealth()
    for it in items(30):
        out = h.check(it)
        assert out is it
    assert h.alarms == {} and not h.blocks_lead_acid


@pytest.mark.parametrize(
    "sensor,fault",
    [
        ("scale", lambda it: replace(it, record=replace(it.record, weight_g=None))),
        ("scale", lambda it: replace(it, record=replace(it.record, weight_g=15000.0))),
        ("scale", lambda it: replace(it, record=replace(it.record, weight_g=80000.0))),
        ("thermal", lambda it: replace(it, record=replace(it.record, surface_temp_c=21.5))),
        (
            "profiler",
            lambda it: replace(it, record=replace(it.record, length_mm=300.0, width_mm=170.0, height_mm=220.0)),
        ),
        ("xray", lambda it: replace(it, xray_low=None, xray_high=None)),
        (
            "xray",
            lambda it: replace(
                it, xray_low=np.full_like(it.xray_low, 65535), xray_high=np.full_like(it.xray_high, 65535)
            ),
        ),
        ("camera", lambda it: replace(it, rgb=np.zeros_like(it.rgb))),
    ],
)
def test_a_faulty_sensor_alarms_within_the_window_and_closes_lead_acid(sensor, fault):
    changes = []
    h = SensorHealth(HealthLimits(window=5), on_change=lambda *a: changes.append(a))
    for it in items(10):
        h.check(it)
    frozen_rgb = None
    for k, it in enumerate(items(5, start=10)):
        bad = fault(it)
        out = h.check(bad)
    assert sensor in h.alarms, h.alarms
    assert changes and changes[-1][0] == sensor
    assert h.blocks_lead_acid
    assert guard_lane("lead_acid", "lead-acid p=0.999", h)[0] == "manual"
    assert guard_lane("li_ion", "x", h) == ("li_ion", "x")
    assert any("sensor alarm" in p for p in out.problems)
    # the alarmed sensor's readings are removed from the items
    if sensor == "scale":
        assert out.record.weight_g is None
    if sensor == "xray":
        assert out.xray_low is None and out.xray_high is None
    # recovery: plausible, changing readings clear it
    for it in items(6, start=20):
        h.check(it)
    assert sensor not in h.alarms
    del frozen_rgb


def test_a_frozen_camera_frame_is_stuck():
    h = SensorHealth()
    frame = None
    for it in items(6):
        frame = it.rgb if frame is None else frame
        h.check(replace(it, rgb=frame.copy()))
    assert h.alarms.get("camera") == "stuck"


def test_a_white_frame_is_saturated_but_a_dim_noisy_one_is_not():
    white = SensorHealth()
    dim = SensorHealth()
    rng = np.random.default_rng(0)
    for it in items(6):
        white.check(replace(it, rgb=np.full_like(it.rgb, 255)))
        # mean about 1.5 (near the black rail) but noisy: a dark scene, not a dead camera
        dim.check(replace(it, rgb=rng.integers(0, 4, size=it.rgb.shape, dtype=np.uint8)))
    assert white.alarms.get("camera") == "saturated"
    assert "camera" not in dim.alarms


def test_one_changed_pixel_is_a_live_frame_not_a_stuck_one():
    h = SensorHealth()
    frame = None
    for k, it in enumerate(items(8)):
        frame = it.xray_low if frame is None else frame
        live = frame.copy()
        live.flat[k] ^= 1  # the least bit of one pixel: still a different frame
        h.check(replace(it, xray_low=live, xray_high=live))
    assert "xray" not in h.alarms
    h2 = SensorHealth()
    for it in items(6):
        h2.check(replace(it, xray_low=frame.copy(), xray_high=frame.copy()))
    assert h2.alarms.get("xray") == "stuck"
