"""Line c: a line rendered by its own route, for testing a model on a line it was not trained on."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sorter.catalog import load_catalog
from sorter.errors import SimulationError
from sorter.logformat import iter_log, load_item, read_meta
from sorter.simulate import SimConfig, simulate_item, simulate_log
from sorter.simulate import linec
from sorter.simulate.items import PRODUCT_FAMILIES, build

LINEC_SOURCE = Path(linec.__file__)
CATALOG = load_catalog()


def _by_name(fragment: str):
    return next(p for p in CATALOG if fragment in p.name)


@pytest.fixture(scope="module")
def items300():
    cfg = SimConfig(items=300, seed=21, line="c", faults=0.02)
    return [simulate_item(cfg, i) for i in range(cfg.items)]


def test_linec_does_not_use_the_renderer_of_lines_a_and_b():
    """Line c may share the product physics (items, geometry primitives, the attenuation table)
    but none of the a/b rendering route."""
    forbidden = {
        "areal_density",
        "project_z",
        "render_xray",
        "render_rgb",
        "detector_channels",
        "_noise_bank",
        "gaussian_noise",
        "transmission",
        "mu_matrix",
        "read_scale",
        "read_profiler",
        "read_thermal",
        "outline",
        "_mu_for",
        "_cyl_path_z",
        "_coverage",
        "XrayChannels",
    }
    tree = ast.parse(LINEC_SOURCE.read_text())
    imported: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
    assert not imported & forbidden, imported & forbidden
    assert "sensors" not in modules and not any(m.endswith(".sensors") for m in modules)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }
    assert not names & forbidden, names & forbidden
    # the geometry module is used for its primitive types only
    geo = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").endswith("geometry")]
    assert {a.name for g in geo for a in g.names} <= {"Box", "CylinderArray", "Primitive", "total_mass_g"}


def test_linec_log_is_valid_and_declares_its_line(tmp_path):
    out = tmp_path / "c"
    summary = simulate_log(SimConfig(items=40, seed=5, line="c", faults=0.1), out, workers=1)
    assert summary.items == 40
    meta = read_meta(out)
    assert meta.line == "sim-c" and meta.xray_mm_per_px == 2.0 and meta.camera_mm_per_px == 1.0
    lo, hi = meta.xray_energies_kev
    assert 55 <= lo <= 68 and 93 <= hi <= 108
    lines = list(iter_log(out))
    assert len(lines) == 40 and all(ln.error is None for ln in lines)
    for ln in lines:
        item = load_item(ln.record, out, meta)
        assert not [p for p in item.problems if "dropout" not in p and "missing" not in p], item.problems
        if item.xray_low is not None and item.xray_high is not None:
            assert item.xray_low.dtype == np.uint16 and item.xray_low.shape == item.xray_high.shape
        if item.rgb is not None:
            assert item.rgb.dtype == np.uint8 and item.rgb.ndim == 3
        for key in (
            "product",
            "chemistry_truth",
            "in_catalog",
            "damaged",
            "damage",
            "energy_wh",
            "product_family",
            "hard_cases",
            "pose",
            "true_mass_g",
        ):
            assert key in ln.record.extra, key


def test_linec_is_deterministic_and_the_same_whatever_the_worker_count(tmp_path):
    cfg = SimConfig(items=24, seed=13, line="c")
    a, b = simulate_item(cfg, 5), simulate_item(cfg, 5)
    assert a.record.to_json() == b.record.to_json()
    for k in a.images:
        np.testing.assert_array_equal(a.images[k], b.images[k])
    assert simulate_item(SimConfig(seed=14, line="c"), 5).record.to_json() != a.record.to_json()
    simulate_log(cfg, tmp_path / "one", workers=1)
    simulate_log(cfg, tmp_path / "two", workers=2)
    assert (tmp_path / "one" / "items.jsonl").read_bytes() == (tmp_path / "two" / "items.jsonl").read_bytes()
    for p in sorted((tmp_path / "one" / "images").iterdir()):
        assert p.read_bytes() == (tmp_path / "two" / "images" / p.name).read_bytes(), p.name


def test_linec_intake_has_unseen_products_dropouts_and_damage(items300):
    recs = [s.record for s in items300]
    unseen = [r for r in recs if "(line c)" in r.extra["product"]]
    assert 0.10 <= len(unseen) / len(recs) <= 0.25  # about one in six
    assert all(r.extra["in_catalog"] is False and "unknown_product" in r.extra["hard_cases"] for r in unseen)
    assert {r.extra["product_family"] for r in unseen} >= {"li_pack_escooter", "li_dropin"}
    tags = Counter(t for r in recs for t in r.extra["hard_cases"])
    assert sum(v for k, v in tags.items() if k.startswith("dropout_")) >= 3
    assert any(r.weight_g is None for r in recs) or any(r.surface_temp_c is None for r in recs) or tags["dropout_xray"]
    damaged = {r.extra["damage"] for r in recs if r.extra["damaged"]}
    assert damaged >= {"swollen", "dented", "hot"} - {None} or len(damaged) >= 2
    for r in recs:
        assert r.extra["product_family"] in PRODUCT_FAMILIES
        if r.extra["chemistry_truth"].startswith("li_ion"):
            assert r.extra["energy_wh"] > 0
            assert 60 <= r.extra["energy_wh"] / (r.extra["true_mass_g"] / 1000) <= 300, r.extra["product"]
    assert {r.label for r in recs} == {"lead_acid", "li_ion", "other"}


def test_unseen_products_are_physically_consistent():
    rng = np.random.default_rng(2)
    for _ in range(40):
        for fam in ("li_ion", "lead_acid"):
            inst = linec.unseen_product(fam, rng)
            vol_l = float(np.prod(inst.size_mm)) * 1e-6
            dens = inst.mass_g / 1000 / vol_l
            wh_kg = inst.energy_wh / (inst.mass_g / 1000)
            if fam == "li_ion":
                assert 0.5 <= dens <= 2.8 and 70 <= wh_kg <= 276, (inst.product, dens, wh_kg)
            else:
                assert 1.5 <= dens <= 3.2 and 20 <= wh_kg <= 55, (inst.product, dens, wh_kg)
            assert not inst.in_catalog and inst.extra["_family"] in PRODUCT_FAMILIES


def _transmission_c(inst, pose="upright"):
    prims, size = inst.posed(pose)
    frame = linec.BeltFrame.make(size[0], size[1], 0.0)
    sig, mats, _, _ = linec.areal_density_c(prims, frame, 2.0, 2)
    low, high = linec.render_xray_c(sig, mats, linec.LINE_C, np.random.default_rng(0))
    occupied = sig.sum(axis=0) > 0.05
    return low[occupied] / 65535, high[occupied] / 65535, sig, frame


@pytest.mark.parametrize("fragment", ["Group 24 SLI", "YTZ7S", "Panasonic LC-R061R3P"])
def test_lead_acid_is_near_opaque_in_both_channels_on_line_c(fragment):
    inst = build(_by_name(fragment), np.random.default_rng(1))
    low, high, _, _ = _transmission_c(inst)
    assert np.median(low) < 0.003 and np.median(high) < 0.003


@pytest.mark.parametrize("fragment", ["DeWalt DCB205", "12V 7Ah LFP", "Bosch PowerTube"])
def test_li_ion_packs_transmit_measurably_on_line_c_much_as_on_line_a(fragment):
    from sorter.simulate.sensors import LINES, areal_density, render_xray

    inst = build(_by_name(fragment), np.random.default_rng(1))
    low, high, _, _ = _transmission_c(inst)
    cells = np.percentile(low, 25)  # the cells' part of the footprint (the rest is case and gaps)
    assert 0.002 <= cells <= 0.1  # reference: Li-ion packs T_low about 0.002-0.1
    assert np.median(high) > np.median(low)
    sigma, mats = areal_density(inst, "upright", 0.0, LINES["a"].xray_mm_per_px)
    low_a = render_xray(sigma, mats, LINES["a"], np.random.default_rng(0))[0][sigma.sum(axis=2) > 0] / 65535
    assert 0.5 < cells / np.percentile(low_a, 25) < 2.0  # the same physics, other numbers


def test_projection_integrates_to_the_item_mass():
    for fragment in ("DeWalt DCB205", "Group 24 SLI", "Molicel"):
        inst = build(_by_name(fragment), np.random.default_rng(3))
        prims, size = inst.posed("upright")
        frame = linec.BeltFrame.make(size[0], size[1], 33.0)
        sig, _, _, _ = linec.areal_density_c(prims, frame, 2.0, 2)
        grams = float(sig.sum()) * (0.2 * 0.2)
        assert grams == pytest.approx(inst.mass_g, rel=0.04), fragment


def test_linec_line_params_are_overridable_and_declared():
    cfg = SimConfig(line="c", line_overrides={"kvp": 120, "xray_mm_per_px": 2.5})
    meta = cfg.meta()
    assert meta.line == "sim-c+kvp=120+xray_mm_per_px=2.5" and meta.xray_mm_per_px == 2.5
    assert meta.xray_energies_kev[1] < SimConfig(line="c").meta().xray_energies_kev[1]
    base = simulate_item(SimConfig(line="c", seed=3, faults=0), 2)
    item = simulate_item(SimConfig(line="c", seed=3, faults=0, line_overrides={"xray_mm_per_px": 4.0}), 2)
    assert item.images["xray_low"].shape[0] < 0.7 * base.images["xray_low"].shape[0]
    with pytest.raises(SimulationError, match="valid keys: kvp"):
        SimConfig(line="c", line_overrides={"white_balance": "1,1,1"})


def test_linec_leaves_families_out():
    cfg = SimConfig(seed=4, line="c", exclude_families=("li_pack_escooter", "li_dropin", "lead_auto"))
    fams = {simulate_item(cfg, i).record.extra["product_family"] for i in range(60)}
    assert not fams & {"li_pack_escooter", "li_dropin", "lead_auto"}


def test_linec_differs_from_line_a_like_another_recorder():
    a = simulate_item(SimConfig(seed=30, faults=0), 0)
    c = simulate_item(SimConfig(seed=30, faults=0, line="c"), 0)
    meta_a, meta_c = SimConfig().meta(), SimConfig(line="c").meta()
    assert meta_a.xray_energies_kev != meta_c.xray_energies_kev and meta_a.camera_mm_per_px != meta_c.camera_mm_per_px
    # the scale reads 0.3 % high at 1 g resolution, the profiler in 0.5 mm steps
    for s in (simulate_item(SimConfig(seed=31, line="c", faults=0), i).record for i in range(10)):
        assert float(s.weight_g).is_integer() and (s.length_mm * 2).is_integer()
    assert json.dumps(a.record.extra, sort_keys=True).count(":") > 5 and set(a.record.extra) == set(c.record.extra)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"adc_bits": 12}, "air_adu < 2\\*\\*adc_bits"),
        ({"jpeg_quality": 5}, "outside its range"),
        ({"supersample": 9}, "outside its range"),
        ({"colour_cast": "1,1"}, "3 comma-separated numbers"),
    ],
)
def test_bad_linec_parameters_are_refused_with_a_clear_message(over, message):
    with pytest.raises(SimulationError, match=message):
        SimConfig(line="c", line_overrides=over)


def test_the_cli_writes_a_linec_log(tmp_path):
    from sorter.cli import main

    out = tmp_path / "c"
    assert (
        main(
            [
                "simulate",
                "--line",
                "c",
                "--items",
                "12",
                "--seed",
                "2",
                "--workers",
                "1",
                "--out",
                str(out),
                "--line-param",
                "adc_bits=16",
                "--line-param",
                "air_adu=60000",
            ]
        )
        == 0
    )
    meta = read_meta(out)
    assert (
        meta.line == "sim-c+adc_bits=16+air_adu=60000"
        and meta.xray_energies_kev == SimConfig(line="c").meta().xray_energies_kev
    )
    assert len(list(iter_log(out))) == 12
