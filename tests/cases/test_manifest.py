"""The manifest page and the consignor file, without a browser."""

from __future__ import annotations

import pytest

from sorter.cases import PackItem, StationConfig, StationState
from sorter.errors import ConfigError

pytest.importorskip("jinja2")

from sorter.cases.manifest import Consignor, load_consignor, render_manifest  # noqa: E402
from sorter.cases.plan import ItemInfo, PlannedItem  # noqa: E402

T0 = 1_780_000_000.0


def one_item_case(item_id="A1", product=None):
    cfg = StationConfig(line="L1", auto_open=True)
    it = PackItem(item_id, 10.0, 8.0, 50.0, T0)
    r = StationState.new(cfg).offer(it)
    _, case = r.state.close(T0 + 1)
    return cfg, case, [PlannedItem("", 1, it.item_id, "hazard", it, ItemInfo(), product, "assigned", "", r.case_id, 1)]


def test_manifest_text_from_logs_is_escaped():
    cfg, case, items = one_item_case("<script>alert(1)</script>", "<b>x</b>")
    html = render_manifest(case, items, cfg, Consignor({"consignor": "A & <B>"}))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "A &amp; &lt;B&gt;" in html


def test_consignor_file_toml_json_and_un3481(tmp_path):
    (tmp_path / "c.json").write_text('{"consignor": "Plant", "un_number": "UN3481"}')
    c = load_consignor(tmp_path / "c.json")
    assert c.un_number == "UN3481" and c.proper_shipping_name == "LITHIUM ION BATTERIES CONTAINED IN EQUIPMENT"
    cfg, case, items = one_item_case()
    html = render_manifest(case, items, cfg, c)
    assert "UN3481, LITHIUM ION BATTERIES CONTAINED IN EQUIPMENT, Class 9" in html
    assert "Not configured" in render_manifest(case, items, cfg, load_consignor(None))


@pytest.mark.parametrize(
    "text, words",
    [
        ('un_number = "UN3090"\n', "un_number"),
        ("permit = 12345\n", "must be text"),
        ("permit = \n", "not valid TOML"),
    ],
)
def test_bad_consignor_files_are_refused(tmp_path, text, words):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_consignor(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_consignor(tmp_path / "missing.toml")
