"""``sorter cases`` reading the line's audit log (issue 15): a short line run follows a log with
the case station on, then ``sorter cases list|show|export|manifest --audit`` read the cases it
packed, with the same totals, item rows and manifest content as a ``sorter pack`` directory."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from sorter.cases.packing import _milli_up
from sorter.cases.plan import MANIFEST_COLUMNS
from sorter.cases.records import AuditSource
from sorter.cli import main
from sorter.line.app import build_source
from sorter.line.audit import AuditLog
from sorter.line.controller import Controller
from sorter.line.plc import MemoryPlc
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.protocol import CaseBlockMap
from sorter.line.scoring_pool import ScoringPool
from sorter.logformat import iter_log, record_expired
from sorter.simulate.run import SimItem
from tests.line.line_run import LINK, audit_rows, make_config, write_log

LIMIT_WH = 600.0


def read_csv(p: Path) -> list[dict[str, str]]:
    with open(p, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def line_run(tmp_path_factory: Any, scorer: ScoringPool, sim_pool: list[SimItem]) -> dict[str, Any]:
    """A line run of 80 items from a log, the station on the li_ion lane (600 Wh cases)."""
    tmp = tmp_path_factory.mktemp("line")
    log_dir = tmp / "log"
    write_log(log_dir, sim_pool, 80)
    cfg = make_config(
        tmp,
        "line.source=log",
        f"line.log_dir={log_dir}",
        "line.follow=false",
        "line.deadline_from=arrival",
        "cases.enabled=true",
        "cases.lane=li_ion",
        f"cases.limit_wh={LIMIT_WH}",
        belt_speed=0.03,
    )
    prog = CaseStationProgram(swap_s=0.3, ready_at_start=True, lane="li_ion")

    async def run() -> None:
        link = MemoryPlc(scan_ms=2, case_block=CaseBlockMap(cfg.cases.base), case_station=prog, **LINK)
        await Controller(cfg, link=link, source=build_source(cfg), scorer=scorer, settle=False).run()

    asyncio.run(run())
    rows = audit_rows(cfg)
    assigned: dict[str, list[Any]] = {}
    for r in rows:
        if r.case_status == "assigned":
            assigned.setdefault(r.case_id, []).append(r)
    for v in assigned.values():
        v.sort(key=lambda r: r.case_seq)
    records = {ln.record.item_id: ln.record for ln in iter_log(log_dir) if ln.record is not None}
    return {"audit": Path(cfg.audit.path), "log": log_dir, "rows": rows, "assigned": assigned, "records": records}


def test_list_gives_every_case_the_line_recorded_with_its_totals(line_run: dict[str, Any], capsys: Any) -> None:
    assigned = line_run["assigned"]
    assert len(assigned) >= 2, "the run filled fewer than two cases"
    src = AuditSource(line_run["audit"], line_run["log"])
    cases = src.list_cases()
    with AuditLog(line_run["audit"]) as log:
        events = [(k, d) for _, k, d in log.events() if k in ("case_open", "case_close")]
    opened = [d["case_id"] for k, d in events if k == "case_open"]
    assert [c["case_id"] for c in cases] == opened  # every case, in the order the station opened them
    closed = {d["case_id"]: d for k, d in events if k == "case_close"}
    for c in cases:
        items = assigned.get(c["case_id"], [])
        assert c["items"] == len(items)
        assert c["upper_wh"] == sum(_milli_up(r.energy_wh_upper) for r in items) / 1000 <= LIMIT_WH
        assert c["limit_wh"] == LIMIT_WH and c["lane"] == "li_ion"
        assert math.isclose(c["mass_g"], sum(r.weight_g for r in items), abs_tol=0.01 * max(1, len(items)))
        if c["case_id"] in closed:
            assert c["status"] == "closed" and c["closed_utc"] and c["close_reason"] == closed[c["case_id"]]["reason"]
            assert c["upper_wh"] == closed[c["case_id"]]["upper_wh"]  # the same sum the line closed it with
        else:
            assert c["status"] == "open" and c["manifest_html"] is None
    src.close()
    assert main(["cases", "list", "--audit", str(line_run["audit"])]) == 0
    out = capsys.readouterr().out
    assert all(c["case_id"] in out for c in cases) and f"{len(cases)} case(s)" in out


def test_show_and_export_give_the_items_of_each_case_from_the_audit(
    line_run: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    case_id, items = next(iter(line_run["assigned"].items()))
    audit, log = str(line_run["audit"]), str(line_run["log"])
    assert main(["cases", "show", case_id, "--audit", audit, "--log", log, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in shown["items"]] == [r.item_id for r in items]
    assert [int(r["seq"]) for r in shown["items"]] == list(range(1, len(items) + 1))
    for row, r in zip(shown["items"], items):
        assert float(row["energy_wh_upper"]) == pytest.approx(r.energy_wh_upper, abs=1e-3)
        assert row["product"] == line_run["records"][r.item_id].extra["product"]  # from the line's log
        assert int(row["line_no"]) == r.source_line
    assert main(["cases", "export", "--items", "--audit", audit, "--out", str(tmp_path / "items.csv")]) == 0
    rows = read_csv(tmp_path / "items.csv")
    station = [r for r in line_run["rows"] if r.case_status == "assigned"]
    assert sorted(r["item_id"] for r in rows) == sorted(r.item_id for r in station)
    assert main(["cases", "export", "--audit", audit, "--out", str(tmp_path / "cases.json")]) == 0
    assert {c["case_id"] for c in json.loads((tmp_path / "cases.json").read_text())} >= set(line_run["assigned"])


def test_a_closed_case_manifest_from_the_audit_carries_items_thumbnails_and_totals(
    line_run: dict[str, Any], tmp_path: Path
) -> None:
    src = AuditSource(line_run["audit"], line_run["log"])
    closed = [c for c in src.list_cases() if c["status"] == "closed" and c["items"] >= 2]
    src.close()
    assert closed, "no closed case with two items or more"
    c = closed[0]
    items = line_run["assigned"][c["case_id"]]
    # One item's image deleted by the retention policy: its thumbnail reads "expired".
    gone = line_run["records"][items[0].item_id].xray_low
    img = line_run["log"] / gone
    record_expired(img.parent, [img.name])
    img.unlink()
    out = tmp_path / "manifests"
    args = ["cases", "manifest", c["case_id"], "--audit", str(line_run["audit"]), "--log", str(line_run["log"])]
    assert main([*args, "--out", str(out)]) == 0
    fid = c["manifest_csv"][len("case-") : -len(".csv")]
    rows = read_csv(out / f"case-{fid}.csv")
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert [r["item_id"] for r in rows] == [r.item_id for r in items]
    for row, r in zip(rows, items):
        rec = line_run["records"][r.item_id]
        assert row["product"] == rec.extra["product"] and row["case_id"] == c["case_id"]
        assert float(row["weight_g"]) == pytest.approx(r.weight_g, abs=1e-3)
        assert float(row["energy_wh"]) == pytest.approx(r.energy_wh, abs=1e-3)
    html = (out / f"case-{fid}.html").read_text(encoding="utf-8")
    assert all(r.item_id in html for r in items)
    assert "UN3480" in html and "LITHIUM ION BATTERIES" in html and c["case_id"] in html
    assert f"{c['upper_wh']:,.1f}" in html  # the summed bound against the limit
    assert html.count("data:image/png;base64,") == len(items) - 1  # every other X-ray still exists
    assert "expired" in html.lower()
    assert main([*args, "--out", str(out)]) == 2  # the files exist: refused without --force
    assert main([*args, "--out", str(out), "--force"]) == 0


def test_bad_audit_arguments_exit_2_with_a_message(line_run: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    assert main(["cases", "list", "--audit", str(tmp_path / "none.sqlite")]) == 2
    assert "audit.path" in capsys.readouterr().err
    assert main(["cases", "show", "NOPE", "--audit", str(line_run["audit"])]) == 2
    assert "no case 'NOPE'" in capsys.readouterr().err
    assert main(["cases", "list", "--audit", str(line_run["audit"]), "--log", str(tmp_path / "nolog")]) == 2
    assert main(["cases", "list", "--from", str(tmp_path), "--log", str(tmp_path)]) == 2
    src = AuditSource(line_run["audit"])
    open_cases = [c["case_id"] for c in src.list_cases() if c["status"] == "open"]
    src.close()
    if open_cases:
        assert (
            main(["cases", "manifest", open_cases[0], "--audit", str(line_run["audit"]), "--out", str(tmp_path)]) == 2
        )
        assert "still open" in capsys.readouterr().err
