"""The cases benchmark's measure can fail: bounds below the truth show as cases over the limit."""

from __future__ import annotations

import math

from benchmarks.cases import Truth, mass_bound, pack


def truths(n: int, wh: float) -> list[Truth]:
    return [Truth(f"{k}", wh, True, wh / 0.2, "pack", "pack", False) for k in range(n)]


def test_true_bounds_never_overfill_and_low_bounds_are_caught():
    items = truths(40, 300.0)  # 7 per case by the truth
    ok = pack("truth", [(t, t.energy_wh) for t in items], 2100.0)
    assert ok.over_limit == 0 and ok.cases == math.ceil(40 / 7) and ok.coverage == 1.0
    assert ok.fill_mean == 1.0 and ok.packed == 40
    low = pack("half", [(t, t.energy_wh / 2) for t in items], 2100.0)
    assert low.over_limit == low.cases == 3 and low.coverage == 0.0  # 14, 14, 12 items of 300 Wh: all over
    mass = pack("mass", [(t, mass_bound(t, 0.30)) for t in items], 2100.0)
    assert mass.over_limit == 0 and mass.cases > ok.cases and mass.coverage == 1.0


def test_items_without_a_bound_are_not_packed():
    items = truths(3, 100.0) + [Truth("x", 50.0, True, math.nan, "cell", "cyl_cell", False)]
    r = pack("mass", [(t, mass_bound(t, 0.30)) for t in items], 2100.0)
    assert r.packed == 3 and r.not_packable == 1
