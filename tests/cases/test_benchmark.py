"""The cases benchmark's measure can fail: bounds below the truth show as cases over the limit."""

from __future__ import annotations

import dataclasses
import math

from benchmarks.cases import Truth, line_pack, mass_bound, pack


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


def test_the_line_mode_swaps_cases_in_belt_time_and_buffers_what_finds_no_case():
    """Through the line's case station and the simulated PLC: a case takes items only once confirmed, an
    item arriving during a swap goes to the buffer, several positions keep cases open side by side."""
    items = [
        dataclasses.replace(t, t=10.0 * k)
        for k, t in enumerate(truths(6, 1400.0) + truths(6, 600.0) + truths(6, 1400.0))
    ]
    pairs = [(t, t.energy_wh) for t in items]
    fast = line_pack("truth", pairs, 2100.0, positions=1, swap_s=0.0)
    # One position: an item that does not fit closes the case and goes to the buffer (the next case is
    # confirmed only afterwards, even with no swap time): one buffered item per case closed.
    assert fast.assigned + fast.not_packable + fast.no_case_ready == len(items)
    assert fast.over_limit == 0 and fast.no_case_ready == fast.cases
    slow = line_pack("truth", pairs, 2100.0, positions=1, swap_s=25.0)  # swaps outlast two arrivals
    assert slow.no_case_ready > fast.no_case_ready and slow.assigned < fast.assigned and slow.over_limit == 0
    three = line_pack("truth", pairs, 2100.0, positions=3, swap_s=25.0)
    assert three.over_limit == 0 and three.assigned > slow.assigned
    assert three.plan_fill == pack("plan", pairs, 2100.0, 3).fill_mean
