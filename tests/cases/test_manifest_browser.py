"""Manifests rendered by a real headless Chromium: the printed page holds the items and the
totals, on one A4 page.  Skipped only when no Chromium is installed (CI installs it)."""

from __future__ import annotations

import json
import math
import struct

import pytest

from sorter.cases import PackItem, StationConfig, StationState
from sorter.cases.browser import find_chromium
from sorter.cases.manifest import Consignor, render_manifest
from sorter.cases.plan import ItemInfo, PlannedItem

pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed (the test extra)")
CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)"),
    pytest.mark.e2e,
]

from sorter.cases.browser import render  # noqa: E402


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_a_packed_manifest_in_chromium_shows_items_and_totals(hazard_scores, tmp_path):
    from sorter.cli import main

    out = tmp_path / "out"
    assert main(["pack", str(hazard_scores["scores"]), "--out", str(out), "--line", "L1"]) == 0
    cases = json.loads((out / "summary.json").read_text())["cases"]
    case = max(cases, key=lambda c: c["items"])
    ids = [line.split(",")[2] for line in (out / case["manifest_csv"]).read_text().splitlines()[1:]]
    png, pdf = tmp_path / "manifest.png", tmp_path / "manifest.pdf"
    r = render(out / case["manifest_html"], png=png, pdf=pdf, executable=CHROMIUM)
    for i in ids:
        assert i in r.text
    assert case["case_id"] in r.text
    assert f"{case['upper_wh']:,.1f} Wh of 2,100 Wh limit" in r.text
    assert f"Total, {case['items']} item(s)" in r.text
    assert f"{case['mass_g'] / 1000:,.2f} kg" in r.text
    assert "DAMAGED/DEFECTIVE LITHIUM ION BATTERIES" in r.text and "UN3480" in r.text
    w, h = png_size(png)
    assert 700 <= w <= 900 and 900 <= h <= 1400  # about one A4 page at 96 dpi
    assert png.stat().st_size > 20_000  # not a blank page
    assert r.pdf_pages == 1  # prints on one page


@pytest.mark.parametrize("n", [10, 26, 27, 200])
def test_the_manifest_prints_on_one_page_up_to_200_items(hazard_scores, tmp_path, n):
    """Few large packs with thumbnails, or many small cells in three columns: one A4 page."""
    truth = hazard_scores["truth"]
    some = next(r for r in truth.values() if r.xray_low and (hazard_scores["log"] / r.xray_low).exists())
    cfg = StationConfig(line="L1", auto_open=True)
    state = StationState.new(cfg)
    items = []
    for k in range(n):
        pi = PackItem(
            f"CELL-{k:05d}", energy_wh_upper=2100 / n * 0.99, energy_wh=2100 / n * 0.75, weight_g=48.0, t=1.78e9 + k
        )
        res = state.offer(pi)
        state = res.state
        items.append(
            PlannedItem(
                str(hazard_scores["log"]),
                k + 1,
                pi.item_id,
                "hazard",
                pi,
                ItemInfo(t=pi.t, log_dir=str(hazard_scores["log"]), xray=some.xray_low),
                "Panasonic NCR18650BD (NCA), a long product name that wraps",
                "assigned",
                "",
                res.case_id,
                k + 1,
            )
        )
    state, case = state.close(1.78e9 + n)
    assert case is not None and len(case.items) == n
    page = tmp_path / "case.html"
    page.write_text(render_manifest(case, items, cfg, Consignor({"consignor": "Example", "permit": "DOT-SP 1"})))
    r = render(page, pdf=tmp_path / "case.pdf", executable=CHROMIUM)
    assert r.pdf_pages == 1
    assert "CELL-00000" in r.text and f"CELL-{n - 1:05d}" in r.text
    assert f"{math.fsum(i.energy_wh_upper for i in case.items):,.1f}" in r.text
