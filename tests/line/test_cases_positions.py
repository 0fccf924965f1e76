"""A case station with several case positions on the line (``[cases] positions``, docs/cases.md and
docs/plc-interface.md "Case station block", version 2): the controller keeps one open case per
position, sends each assigned item with its position's lane code, the simulated PLC drops it into
that position's case, each position is swapped on its own, a restart resumes every open case, and
a case taken away closes only that case."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sorter.cases.plan import iso
from sorter.cases.records import AuditSource
from sorter.line.audit import AuditRecord
from sorter.line.casestation import CaseStation, PackItem
from sorter.line.config import CasesSection
from sorter.line.controller import Controller
from sorter.line.plc import MemoryPlc, ModbusPlcLink
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.link import CaseBlockMissingError
from sorter.line.plc.protocol import (
    CaseBlockMap,
    CasePcWords,
    CasePlcWords,
    case_lane_code,
    decode_slot,
    encode_case_slot,
)
from sorter.line.plc.sim import PlcSimulator
from sorter.line.scoring_pool import ScoringPool
from sorter.line.sources import plc_item_id
from sorter.line.summary import RunSummary
from sorter.simulate.run import SimItem
from tests.line.line_run import LINK, audit_rows, check_invariants, eventually, make_config, sim_source
from tests.line.test_cases_line import _renamed, case_events, check_cases

LIMIT_WH = 600.0
N = 3
CASES = ("cases.enabled=true", "cases.lane=li_ion", f"cases.limit_wh={LIMIT_WH}", f"cases.positions={N}")


def _link(cfg: Any, prog: CaseStationProgram, backend: str, sim: PlcSimulator | None) -> Any:
    block = cfg.cases.case_block()
    if backend == "modbus":
        assert sim is not None
        return ModbusPlcLink("127.0.0.1", sim.port, case_block=block, **LINK)
    return MemoryPlc(scan_ms=2, case_block=block, case_station=prog, **LINK)


async def run_positions(
    cfg: Any,
    scorer: ScoringPool,
    pool: list[SimItem],
    backend: str,
    *,
    items: int,
    prog: CaseStationProgram,
    prefix: str = "",
) -> RunSummary:
    sim = None
    if backend == "modbus":
        sim = PlcSimulator(port=0, scan_ms=2, case_station=prog, case_base=cfg.cases.base)
        await sim.start()
    try:
        source = sim_source(cfg, pool, items=items, rate_hz=20)
        if prefix:
            source = _renamed(source, prefix)
        link = _link(cfg, prog, backend, sim)
        return await Controller(cfg, link=link, source=source, scorer=scorer, settle=False).run()
    finally:
        if sim is not None:
            await sim.stop()


def position_of_cases(path: Any) -> dict[str, tuple[int, int]]:
    """case id -> (position, CASE_PLACED it was opened for), from the case_open events."""
    return {d["case_id"]: (d["position"], d["placed"]) for k, d in case_events(path) if k == "case_open"}


def test_the_block_version_2_layout_and_codes() -> None:
    b = CaseBlockMap(300, positions=3)
    assert (b.version, b.plc_words, b.pc_words, b.size) == (2, 11, 18, 29)
    prog = CaseStationProgram(ready_at_start=True, positions=3)
    prog.remove(2)
    plc = b.decode_plc(prog.outputs())
    assert [(w.version, w.ready, w.placed) for w in plc] == [(2, True, 1), (2, False, 1), (2, True, 1)]
    words = [CasePcWords(k, 100 * k, 2100, k, False, 1) for k in (1, 2, 3)]
    assert b.decode_pc(b.encode_pc(words)) == tuple(words)
    assert [case_lane_code(p) for p in (1, 2, 3)] == [5, 6, 7]
    slot = decode_slot(encode_case_slot(9, 1234, 3))
    assert slot.check_ok and slot.lane_code == 7 and slot.lane is None  # not a lane: only the case block takes it
    with pytest.raises(ValueError, match="CASE_POSITIONS"):
        CaseBlockMap(300, positions=2).decode_plc(prog.outputs()[:8])  # a 3-position PLC read as 2 positions
    # One position is version 1, exactly the old four + six words.
    assert CaseBlockMap(300).decode_plc([1, 1, 7, 0]) == (CasePlcWords(1, True, 7, 0),)


@pytest.mark.parametrize("backend", ["memory", "modbus"])
def test_three_positions_spread_items_each_case_within_the_limit_and_swapped_on_its_own(
    backend: str, tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, *CASES, belt_speed=0.03)
    prog = CaseStationProgram(swap_s=0.3, ready_at_start=True, lane="li_ion", positions=N)
    summary = asyncio.run(run_positions(cfg, scorer, sim_pool, backend, items=100, prog=prog))
    rows = audit_rows(cfg)
    check_invariants(summary, rows, None)
    assert summary.plc_agrees
    cases = check_cases(rows, LIMIT_WH, "li_ion")
    where = position_of_cases(cfg.audit.path)
    # Items went to every position, and the PLC dropped each into the case the audit names.
    assert {where[c][0] for c in cases} == {1, 2, 3}
    for case_id, items in cases.items():
        position, placed = where[case_id]
        assert prog.position(position).cases[placed] == [plc_item_id(r.item_id) for r in items], case_id
    station = [r for r in rows if r.lane == "li_ion" and r.delivery == "acked"]
    assert prog.buffer == [plc_item_id(r.item_id) for r in station if r.case_status != "assigned"]
    assert prog.buffered == 0
    # Several cases open at once: an item can go into an older case while a newer one is open.
    opened = {d["case_id"]: t for t, (k, d) in enumerate(case_events(cfg.audit.path)) if k == "case_open"}
    by_time = sorted((r.t_item, opened[r.case_id]) for r in rows if r.case_status == "assigned")
    assert any(a > b for (_, a), (_, b) in zip(by_time, by_time[1:])), "never more than one case in use"
    # Each full case was swapped at its own position, and the next case there opened afterwards.
    closes = [d for k, d in case_events(cfg.audit.path) if k == "case_close"]
    assert closes and all(d["reason"] == "full" and d["position"] in (1, 2, 3) for d in closes)
    assert sum(q.swaps for q in prog.positions) >= 2
    for q in prog.positions:
        opened_here = sorted(placed for p, placed in where.values() if p == q.number)
        assert opened_here == list(range(1, len(opened_here) + 1))  # one case per confirmed placement
    # Every event says where every open case stands.
    for _, d in case_events(cfg.audit.path):
        assert [e["position"] for e in d["positions"]] == [1, 2, 3]
    # `sorter cases --audit` reads each case's opening time from its own event (not the first open case's).
    listed = {c["case_id"]: c for c in AuditSource(cfg.audit.path).list_cases()}
    assert set(listed) == set(where)
    for k, d in case_events(cfg.audit.path):
        if k == "case_open":
            st = d["state"]
            mine = next(c for c in [st["open_case"], *st.get("other_cases", [])] if c["case_id"] == d["case_id"])
            assert listed[d["case_id"]]["opened_utc"] == iso(mine["opened_t"])


def open_at_end(path: Any) -> list[str]:
    """The cases open after the last case event, from where it says each case stands."""
    events = case_events(path)
    return [e["case_id"] for e in events[-1][1]["positions"] if e["case_id"]] if events else []


def test_a_restart_resumes_every_open_case_exactly(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    """Stop with several cases open; the next run (the same cases in place, CASE_PLACED unchanged)
    fills each from the position where it stopped, never over the limit, and opens no new case."""
    cfg = make_config(tmp_path, *CASES, "cases.limit_wh=1500", belt_speed=0.03)
    prog = CaseStationProgram(swap_s=None, ready_at_start=True, lane="li_ion", positions=N)
    asyncio.run(run_positions(cfg, scorer, sim_pool, "memory", items=40, prog=prog))
    first: dict[str, list[str]] = defaultdict(list)
    for r in sorted(audit_rows(cfg), key=lambda r: r.case_seq or 0):
        if r.case_status == "assigned":
            first[r.case_id].append(r.item_id)  # type: ignore[index]
    still_open = open_at_end(cfg.audit.path)
    assert len([c for c in still_open if first.get(c)]) >= 2, (still_open, dict(first))
    prog2 = CaseStationProgram(swap_s=None, ready_at_start=True, lane="li_ion", positions=N)
    asyncio.run(run_positions(cfg, scorer, sim_pool, "memory", items=60, prog=prog2, prefix="b"))
    rows = audit_rows(cfg)
    cases = check_cases(rows, 1500.0, "li_ion")
    assert sum(1 for k, _ in case_events(cfg.audit.path) if k == "case_open") == N  # no case opened anew
    grown = 0
    for case_id, items in first.items():
        assert [r.item_id for r in cases[case_id][: len(items)]] == items
        grown += len(cases[case_id]) > len(items)
        if case_id not in still_open:
            assert len(cases[case_id]) == len(items), f"{case_id} was closed, yet filled after the restart"
    assert grown >= 1, "the second run did not continue the open cases"
    # The second PLC program saw the second run's items at the positions the audit names.
    where = position_of_cases(cfg.audit.path)
    for case_id, items in cases.items():
        position, placed = where[case_id]
        later = [plc_item_id(r.item_id) for r in items if r.item_id.startswith("b")]
        assert prog2.position(position).cases[placed] == later


def test_a_case_taken_away_mid_fill_closes_only_that_case(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, *CASES, belt_speed=0.03)
    prog = CaseStationProgram(swap_s=0.3, ready_at_start=True, lane="li_ion", positions=N)
    link = MemoryPlc(scan_ms=2, case_block=cfg.cases.case_block(), case_station=prog, **LINK)
    two = prog.position(2)

    async def main() -> None:
        ctl = Controller(
            cfg, link=link, source=sim_source(cfg, sim_pool, items=100, rate_hz=20), scorer=scorer, settle=False
        )
        run = asyncio.create_task(ctl.run())
        await eventually(
            lambda: (two.ready and len(two.cases[two.placed]) >= 1) or run.done(), "an item in the case at position 2"
        )
        assert not run.done(), "the run ended before position 2 was used"
        prog.remove(2)  # the operator takes the case at position 2 away (station fault); no new one comes
        await run

    asyncio.run(main())
    rows = audit_rows(cfg)
    check_cases(rows, LIMIT_WH, "li_ion")
    where = position_of_cases(cfg.audit.path)
    closes = [d for k, d in case_events(cfg.audit.path) if k == "case_close"]
    removed = [d for d in closes if d["reason"] != "full"]
    assert [(d["position"], d["reason"]) for d in removed] == [(2, "case removed at position 2 (CASE_READY = 0)")]
    gone = removed[0]
    assert gone["positions"][1]["case_id"] is None and gone["positions"][0]["case_id"] is not None
    assert where[gone["case_id"]][0] == 2
    # Nothing is assigned to position 2 after the removal; positions 1 and 3 keep filling (and swapping).
    after = [r for r in rows if r.case_status == "assigned" and r.t_decided > gone["closed_t"]]
    assert after and all(where[r.case_id][0] != 2 for r in after)  # type: ignore[index]
    assert sum(1 for p, _ in where.values() if p == 2) == where[gone["case_id"]][1]  # none opened there since
    # The PLC's cases at positions 1 and 3 hold exactly what the audit assigned to them.
    for case_id, (position, placed) in where.items():
        if position != 2:
            items = sorted(_assigned(rows, case_id), key=lambda r: r.case_seq or 0)
            assert prog.position(position).cases[placed] == [plc_item_id(r.item_id) for r in items]


def _assigned(rows: list[AuditRecord], case_id: str) -> list[AuditRecord]:
    return [r for r in rows if r.case_id == case_id and r.case_status == "assigned"]


@pytest.mark.parametrize(("pc", "plc", "match"), [(3, 1, "has one case position"), (2, 3, "CASE_POSITIONS = 3")])
def test_positions_that_do_not_match_the_plc_stop_at_connect_saying_what_to_set(pc: int, plc: int, match: str) -> None:
    async def main() -> None:
        prog = CaseStationProgram(ready_at_start=True, positions=plc)
        link = MemoryPlc(scan_ms=1, case_block=CaseBlockMap(300, positions=pc), case_station=prog, **LINK)
        try:
            await link.connect()
        finally:
            await link.close()

    with pytest.raises(CaseBlockMissingError, match=match) as info:
        asyncio.run(main())
    assert "cases.positions" in str(info.value)


def test_a_station_restored_from_events_knows_where_each_case_stands(tmp_path: Path) -> None:
    """The station rebuilt from a position-by-position event log equals the one that wrote it."""
    from sorter.line.audit import AuditWriter

    section = CasesSection(enabled=True, positions=3, limit_wh=1000.0)
    st = CaseStation(section, "L1")
    w = [CasePlcWords(2, True, 4, 0), CasePlcWords(2, True, 9, 0), CasePlcWords(2, False, 2, 0)]
    path = tmp_path / "audit.sqlite"
    events = st.on_plc(w, now=1.7e9)
    assert [d["position"] for _, d in events] == [1, 2]
    r1, _ = st.offer(PackItem("A", energy_wh_upper=600.0, t=1.7e9), now=1.7e9)
    r2, _ = st.offer(PackItem("B", energy_wh_upper=700.0, t=1.7e9), now=1.7e9)
    assert (st.position_of(r1.case_id), st.position_of(r2.case_id)) == (1, 2)
    base = dict(
        source_line=None, t_available=1.7e9, t_decided=1.7e9, chemistry="li_ion", p_lead_acid=0.0, p_li_ion=1.0,
        p_other=0.0, lane="hazard", reason="x", model_id="m", latency_ms=1.0, deadline_ms=90.0, delivery="acked",
    )  # fmt: skip
    with AuditWriter(path) as writer:
        for kind, detail in events:
            writer.submit_event(kind, detail)
        for it, r in (("A", r1), ("B", r2)):
            rec = AuditRecord(
                item_id=it, t_item=1.7e9, energy_wh_upper=r.item.energy_wh_upper, case_id=r.case_id,
                case_seq=r.seq, case_status="assigned", **base,
            )  # fmt: skip
            assert writer.submit(rec).result(timeout=30)
    again = CaseStation.restore(section, "L1", path)
    assert again.state == st.state
    assert again.pc_words() == st.pc_words()
    assert [(q.case_id, q.opened_for) for q in again.positions] == [(q.case_id, q.opened_for) for q in st.positions]
    # Position 3 is confirmed later; a known position keeps its case (PLACED unchanged).
    w[2] = CasePlcWords(2, True, 3, 0)
    assert [k for k, _ in again.on_plc(w, now=1.7e9 + 1)] == ["case_open"]
    assert again.position_of(again.state.open_cases[-1].case_id) == 3
    assert len(again.state.open_cases) == 3 and math.isclose(again.state.open_cases[0].upper_wh, 600.0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["cases.positions=9"], "cases.positions = 9 must be in 1..8"),
        (["cases.positions=8", "cases.base=65500"], "does not leave room for 74 registers"),
        (["cases.positions=3", "cases.base=150"], "overlaps the mailbox"),
    ],
)
def test_bad_positions_in_the_configuration_say_what_to_fix(overrides: list[str], match: str) -> None:
    from sorter.errors import ConfigError
    from sorter.line.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, env={}, overrides=["line.source=simulated", "cases.enabled=true", *overrides])
    cfg = load_config(None, env={}, overrides=["line.source=simulated", "cases.enabled=true", "cases.positions=3"])
    assert cfg.cases.case_block() == CaseBlockMap(300, positions=3)
