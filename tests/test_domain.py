"""The model's applicability domain: the line it was trained for, checked on every log scored."""

from __future__ import annotations

import numpy as np
import pytest

from sorter.domain import LineDomain, LineSettings
from sorter.readings import Item, LogMeta
from sorter.scoring import Scorer

A = LineSettings("sim-a", (53.1, 96.2), 2.0, 1.5)


def meta(**over) -> LogMeta:
    kw = dict(line="sim-a", xray_energies_kev=(53.1, 96.2), xray_mm_per_px=2.0, camera_mm_per_px=1.5)
    kw.update(over)
    return LogMeta(**kw)


def test_settings_within_tolerance_match():
    dom = LineDomain((A,))
    assert dom.differences(meta(xray_energies_kev=(54.5, 95.0), xray_mm_per_px=2.1)) == []


@pytest.mark.parametrize(
    "over, word",
    [
        ({"line": "plant-7"}, "line 'plant-7'"),
        ({"xray_energies_kev": (60.0, 96.2)}, "low energy 60"),
        ({"xray_energies_kev": (53.1, 110.0)}, "high energy 110"),
        ({"xray_mm_per_px": 2.5}, "X-ray pitch 2.5"),
        ({"camera_mm_per_px": 1.0}, "camera pitch 1"),
    ],
)
def test_each_declared_setting_outside_tolerance_is_named(over, word):
    diffs = LineDomain((A,)).differences(meta(**over))
    assert len(diffs) == 1 and word in diffs[0]


def test_domain_round_trips_and_matches_any_of_its_lines():
    b = LineSettings("sim-b", (51.0, 92.3), 1.6, 2.0)
    dom = LineDomain.from_json(LineDomain((A, b)).to_json())
    assert dom.lines == (A, b)
    assert (
        dom.differences(meta(line="sim-b", xray_energies_kev=(51.0, 92.3), xray_mm_per_px=1.6, camera_mm_per_px=2.0))
        == []
    )


def test_shipped_model_records_its_training_line(model):
    assert model.domain is not None and [s.line for s in model.domain.lines] == ["sim-a"]
    assert model.novelty is not None and np.isfinite(model.thresholds.novelty_max)


def test_a_log_of_another_line_closes_lead_acid_and_says_why(model, caplog):
    from sorter.simulate import SimConfig, simulate_item

    cfg = SimConfig(items=1, seed=3, mix="recycler", line="a")
    items = []
    for i in range(60):
        sim = simulate_item(cfg, i)
        if sim.record.label == "lead_acid":
            items.append(sim)
    assert items, "the recycler mix always has lead-acid items"
    own = cfg.meta()
    other = LogMeta(
        line="plant-7",
        xray_energies_kev=own.xray_energies_kev,
        xray_mm_per_px=own.xray_mm_per_px,
        camera_mm_per_px=own.camera_mm_per_px,
    )
    lanes_own, lanes_other, lanes_allowed, reasons = [], [], [], []
    strict, allowing = Scorer(model), Scorer(model, allow_line_mismatch=True)
    with caplog.at_level("WARNING"):
        for sim in items:
            imgs = sim.images
            it_own = Item(
                sim.record,
                xray_low=imgs.get("xray_low"),
                xray_high=imgs.get("xray_high"),
                rgb=imgs.get("rgb"),
                meta=own,
            )
            it_other = Item(
                sim.record,
                xray_low=imgs.get("xray_low"),
                xray_high=imgs.get("xray_high"),
                rgb=imgs.get("rgb"),
                meta=other,
            )
            lanes_own.append(strict.score_item(it_own).lane)
            d = strict.score_item(it_other)
            lanes_other.append(d.lane)
            reasons.append(d.reason)
            lanes_allowed.append(allowing.score_item(it_other).lane)
    assert lanes_own.count("lead_acid") >= len(items) // 2
    assert "lead_acid" not in lanes_other
    assert any("line mismatch: line 'plant-7'" in r for r in reasons)
    assert lanes_allowed == lanes_own  # reopened, the same decisions
    warnings = [r.getMessage() for r in caplog.records if "plant-7" in r.getMessage()]
    # one clear warning per scorer setting, however many items: what differs and how to fix it
    assert len([w for w in warnings if "lead_acid is closed" in w]) == 1
    assert "sorter calibrate" in warnings[0]
    assert len([w for w in warnings if "LINE MISMATCH ALLOWED" in w]) == 1


def test_the_line_passes_allow_line_mismatch_from_its_configuration_to_its_scorers(tmp_path):
    import asyncio

    from sorter.line.config import load_config
    from sorter.line.scoring_pool import ScoringPool

    cfg_file = tmp_path / "line.toml"
    cfg_file.write_text('[line]\nsource = "simulated"\nallow_line_mismatch = true\n')
    cfg = load_config(cfg_file)
    assert cfg.line.allow_line_mismatch is True
    assert load_config(None, validate=False).line.allow_line_mismatch is False  # the default: closed

    async def scorer_flag(allow: bool) -> bool:
        pool = ScoringPool(None, workers=1, kind="thread", allow_line_mismatch=allow)
        await pool.start()
        try:
            return pool._scorer.allow_line_mismatch  # noqa: SLF001 - what the pool scores with
        finally:
            await pool.close()

    assert asyncio.run(scorer_flag(True)) is True
    assert asyncio.run(scorer_flag(False)) is False
