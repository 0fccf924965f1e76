"""``sorter pack`` end to end on a simulated, scored log, and ``sorter cases`` on its output."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sorter.cli import main
from sorter.cases import StationState

CONSIGNOR = """
consignor = "Example Lead Recycling Ltd"
address = "1 Smelter Road\\nLeadville"
emergency_phone = "+1 555 0100 (24 h)"
permit = "DOT-SP 99999 (2.1 kWh per case)"
consignee = "Example Li-ion Recycler"
"""


def read_csv(p):
    with open(p, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def packed(hazard_scores, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "out"
    cons = out.parent / "consignor.toml"
    cons.write_text(CONSIGNOR)
    assert (
        main(["pack", str(hazard_scores["scores"]), "--out", str(out), "--consignor", str(cons), "--line", "L1"]) == 0
    )
    return out


def test_every_hazard_item_once_in_belt_order_and_no_case_over_the_limit(hazard_scores, packed):
    rows = read_csv(packed / "cases.csv")
    assert [r["item_id"] for r in rows] == hazard_scores["hazard"]  # each hazard item once, belt order
    assert [int(r["line_no"]) for r in rows] == sorted(int(r["line_no"]) for r in rows)
    sums = defaultdict(float)
    truth_sums = defaultdict(float)
    for r in rows:
        if r["status"] == "assigned":
            sums[r["case_id"]] += float(r["energy_wh_upper"])
            truth_sums[r["case_id"]] += hazard_scores["truth"][r["item_id"]].extra["energy_wh"]
        else:
            assert r["case_id"] == "" and r["reason"]
    assert len(sums) >= 3
    assert max(sums.values()) <= 2100.0 and max(truth_sums.values()) <= 2100.0
    # case ids follow the scheme and the cases' items are contiguous on the belt
    order = [r["case_id"] for r in rows if r["case_id"]]
    assert order == sorted(order) and all(
        c.startswith("L1-") and c.endswith(f"-{n:04d}") for n, c in enumerate(dict.fromkeys(order), start=1)
    )
    by_id = {r["item_id"]: r for r in rows}
    assert by_id[hazard_scores["no_bound"]]["status"] == "not_packable"
    assert "no valid energy bound" in by_id[hazard_scores["no_bound"]]["reason"]
    big = [r for r in rows if r["energy_wh_upper"] and float(r["energy_wh_upper"]) > 2100]
    assert big and all(r["status"] == "not_packable" and "alone exceeds" in r["reason"] for r in big)
    assert json.loads((packed / "summary.json").read_text())["refused"]["not_packable"] == len(big) + 1


def test_each_closed_case_has_a_manifest_csv_and_page(hazard_scores, packed):
    summary = json.loads((packed / "summary.json").read_text())
    rows = read_csv(packed / "cases.csv")
    assert all(c["status"] == "closed" for c in summary["cases"])  # the last one closes at the end of input
    for c in summary["cases"]:
        items = [r["item_id"] for r in rows if r["case_id"] == c["case_id"]]
        man = read_csv(packed / c["manifest_csv"])
        assert [m["item_id"] for m in man] == items and len(items) == c["items"]
        # each row is rounded to 0.001 Wh and each item counted in whole mWh, rounded up: 0.0015 Wh an item at most
        assert math.isclose(sum(float(m["energy_wh_upper"]) for m in man), c["upper_wh"], abs_tol=0.0015 * len(man))
        html = (packed / c["manifest_html"]).read_text(encoding="utf-8")
        for i in items:
            assert f"<b>{i}</b>" in html
        for words in (
            "DAMAGED/DEFECTIVE LITHIUM ION BATTERIES",
            "UN3480, LITHIUM ION BATTERIES, Class 9",
            "49 CFR 173.185(f)",
            "DOT-SP 99999",
            "Example Li-ion Recycler",
            f"{c['upper_wh']:,.1f} Wh of 2,100 Wh",
        ):
            assert words in html
    pages = {c["manifest_html"]: (packed / c["manifest_html"]).read_text() for c in summary["cases"]}
    with_missing = [h for h in pages.values() if f"<b>{hazard_scores['no_image']}</b>" in h]
    assert len(with_missing) == 1 and "no X-ray" in with_missing[0]  # a placeholder, not a crash
    assert (
        sum(h.count("data:image/png;base64,") for h in pages.values()) == sum(c["items"] for c in summary["cases"]) - 1
    )


def test_the_station_state_resumes_an_open_case(hazard_scores, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["pack", str(hazard_scores["scores"]), "--out", str(a), "--keep-open", "--line", "L1"]) == 0
    st = StationState.from_json((a / "station.json").read_text())
    assert st.open_case is not None
    summary = json.loads((a / "summary.json").read_text())
    assert summary["cases"][-1]["status"] == "open" and summary["cases"][-1]["manifest_html"] is None
    assert not list(a.glob(f"case-*{st.open_case.n:04d}.html"))
    # the next run fills the open case first, never past the limit
    assert main(["pack", str(hazard_scores["scores"]), "--out", str(b), "--state", str(a / "station.json")]) == 0
    s2 = json.loads((b / "summary.json").read_text())["cases"][0]
    assert s2["case_id"] == st.open_case.case_id and s2["status"] == "closed" and s2["upper_wh"] <= 2100
    man = read_csv(b / s2["manifest_csv"])
    assert [m["item_id"] for m in man][: len(st.open_case.items)] == [i.item_id for i in st.open_case.items]
    assert s2["items"] == len(man) >= len(st.open_case.items)


def test_several_positions_fill_no_more_cases_and_keep_every_case_within_the_limit(hazard_scores, packed, tmp_path):
    out = tmp_path / "p3"
    args = ["pack", str(hazard_scores["scores"]), "--line", "L1", "--no-thumbnails"]
    assert main([*args, "--out", str(out), "--positions", "3", "--keep-open"]) == 0
    rows = read_csv(out / "cases.csv")
    assert [r["item_id"] for r in rows] == hazard_scores["hazard"]  # each item once, in belt order
    sums = defaultdict(float)
    for r in rows:
        if r["status"] == "assigned":
            sums[r["case_id"]] += float(r["energy_wh_upper"])
    assert max(sums.values()) <= 2100.0
    one = json.loads((packed / "summary.json").read_text())["cases"]
    three = json.loads((out / "summary.json").read_text())["cases"]
    assert len(three) <= len(one)
    st = StationState.from_json((out / "station.json").read_text())
    assert 1 <= len(st.open_cases) <= 3 and sum(c["status"] == "open" for c in three) == len(st.open_cases)
    # the next run resumes the three positions; with one position it is refused, with a message
    assert (
        main([*args, "--out", str(tmp_path / "again"), "--positions", "3", "--state", str(out / "station.json")]) == 0
    )
    if len(st.open_cases) > 1:
        assert main([*args, "--out", str(tmp_path / "one"), "--state", str(out / "station.json")]) == 2
    assert main([*args, "--out", str(tmp_path / "zero"), "--positions", "0"]) == 2


def test_pack_reads_the_csv_scores_too_and_a_mass_limit_holds(hazard_scores, tmp_path):
    csv_scores = tmp_path / "scores.csv"
    pacsv.write_csv(hazard_scores["table"], csv_scores)
    out = tmp_path / "out"
    assert main(["pack", str(csv_scores), "--out", str(out), "--mass-limit-kg", "12", "--no-thumbnails"]) == 0
    rows = read_csv(out / "cases.csv")
    assert rows[0]["item_id"] == hazard_scores["hazard"][0]  # ids stay text ("00000012")
    mass = defaultdict(float)
    for r in rows:
        if r["status"] == "assigned":
            mass[r["case_id"]] += float(r["weight_g"])
    assert mass and max(mass.values()) <= 12_000


def test_bad_inputs_exit_2_with_a_message(hazard_scores, packed, tmp_path, capsys):
    s = str(hazard_scores["scores"])
    assert main(["pack", s, "--out", str(packed)]) == 2  # non-empty --out
    assert "not empty" in capsys.readouterr().err
    no_energy = tmp_path / "old.parquet"
    pq.write_table(hazard_scores["table"].drop(["energy_wh", "energy_wh_upper"]), no_energy)
    assert main(["pack", str(no_energy), "--out", str(tmp_path / "o1")]) == 2
    assert "energy_wh" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    bad = tmp_path / "c.toml"
    bad.write_text('consigner = "typo"\n')
    assert main(["pack", s, "--out", str(tmp_path / "o2"), "--consignor", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["pack", s, "--out", str(tmp_path / "o3"), "--limit-wh", "-5"]) == 2
    assert main(["pack", s, "--out", str(tmp_path / "o4"), "--case-id", "{line}-{date}"]) == 2
    assert "{n}" in capsys.readouterr().err
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    assert main(["pack", str(tmp_path / "junk.csv"), "--out", str(tmp_path / "o5")]) == 2
    assert "missing column" in capsys.readouterr().err
    assert main(["cases", "list", "--from", str(tmp_path)]) == 2
    assert main(["cases", "show", "NOPE", "--from", str(packed)]) == 2
    assert "known:" in capsys.readouterr().err


def test_force_replaces_an_earlier_run(hazard_scores, tmp_path):
    out = tmp_path / "out"
    assert main(["pack", str(hazard_scores["scores"]), "--out", str(out), "--case-id", "OLD-{n:03d}"]) == 0
    assert list(out.glob("case-OLD-*.html"))
    (out / "notes.txt").write_text("keep me")
    assert main(["pack", str(hazard_scores["scores"]), "--out", str(out), "--force"]) == 0
    assert not list(out.glob("case-OLD-*"))  # no stale manifests
    assert len(list(out.glob("case-*.html"))) == len(json.loads((out / "summary.json").read_text())["cases"])
    assert (out / "notes.txt").read_text() == "keep me"


def test_cases_list_show_export(hazard_scores, packed, tmp_path, capsys):
    summary = json.loads((packed / "summary.json").read_text())
    assert main(["cases", "list", "--from", str(packed)]) == 0
    out = capsys.readouterr().out
    assert all(c["case_id"] in out for c in summary["cases"]) and f"{len(summary['cases'])} case(s)" in out
    c0 = summary["cases"][0]
    assert main(["cases", "show", c0["case_id"], "--from", str(packed), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["case"]["upper_wh"] == c0["upper_wh"] and len(shown["items"]) == c0["items"]
    assert main(["cases", "show", c0["case_id"], "--from", str(packed)]) == 0
    assert c0["manifest_html"] in capsys.readouterr().out
    assert main(["cases", "export", "--from", str(packed), "--out", str(tmp_path / "cases.csv")]) == 0
    exp = read_csv(tmp_path / "cases.csv")
    assert [r["case_id"] for r in exp] == [c["case_id"] for c in summary["cases"]]
    assert main(["cases", "export", "--items", "--from", str(packed), "--out", str(tmp_path / "items.json")]) == 0
    items = json.loads((tmp_path / "items.json").read_text())
    assert len(items) == sum(c["items"] for c in summary["cases"])


def test_a_log_that_cannot_be_read_leaves_blanks_not_a_crash(hazard_scores, tmp_path, capsys):
    import pyarrow as pa

    t = hazard_scores["table"]
    moved = t.set_column(t.schema.get_field_index("log"), "log", pa.array([str(tmp_path / "gone")] * t.num_rows))
    scores = tmp_path / "moved.parquet"
    pq.write_table(moved, scores)
    out = tmp_path / "out"
    assert main(["pack", str(scores), "--out", str(out), "--line", "L1"]) == 0
    assert "no items.jsonl" in capsys.readouterr().err
    rows = read_csv(out / "cases.csv")
    assert [r["item_id"] for r in rows] == hazard_scores["hazard"] and all(r["t"] == "" for r in rows)
    page = next(out.glob("case-*.html")).read_text()
    assert "no X-ray" in page and "data:image/png" not in page


def test_cases_manifest_rewrites_a_pack_runs_manifest_with_the_same_content(packed, tmp_path):
    summary = json.loads((packed / "summary.json").read_text())
    c = next(c for c in summary["cases"] if c["status"] == "closed" and c["items"] >= 2)
    out = tmp_path / "again"
    assert main(["cases", "manifest", c["case_id"], "--from", str(packed), "--out", str(out)]) == 0
    assert (out / c["manifest_csv"]).read_text() == (packed / c["manifest_csv"]).read_text()
    html, before = (out / c["manifest_html"]).read_text(), (packed / c["manifest_html"]).read_text()
    for r in read_csv(packed / c["manifest_csv"]):
        assert r["item_id"] in html
    assert html.count("data:image/png;base64,") == before.count("data:image/png;base64,")
    assert f"{c['upper_wh']:,.1f}" in html and "UN3480" in html
