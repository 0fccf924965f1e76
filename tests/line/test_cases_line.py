"""Packing on the line (issue 15, docs/cases.md and docs/plc-interface.md "Case station block"):
the controller keeps the station's open case with the packing core, records each item's case
outcome in its audit row, and the simulated PLC drops each item into the case or the buffer."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sorter.line.audit import AuditLog, AuditRecord
from sorter.line.controller import Controller
from sorter.line.plc import MemoryPlc, ModbusPlcLink
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.link import CaseBlockMissingError
from sorter.line.plc.protocol import CaseBlockMap
from sorter.line.plc.sim import PlcSimulator
from sorter.line.scoring_pool import ScoringPool
from sorter.line.sources import plc_item_id
from sorter.line.summary import RunSummary
from sorter.simulate.run import SimItem
from tests.line.line_run import LINK, audit_rows, check_invariants, make_config, sim_source

LIMIT_WH = 600.0
# The balanced mix has few hazard items; a station on the li_ion lane packs the same way and
# fills several cases in a short run.
CASES = ("cases.enabled=true", "cases.lane=li_ion", f"cases.limit_wh={LIMIT_WH}")


def case_events(path: Any) -> list[tuple[str, dict[str, Any]]]:
    with AuditLog(path) as log:
        return [(k, d) for _, k, d in log.events() if k.startswith("case_")]


async def run_packing(
    cfg: Any, scorer: ScoringPool, pool: list[SimItem], backend: str, *, items: int, prog: CaseStationProgram
) -> RunSummary:
    sim = None
    if backend == "modbus":
        sim = PlcSimulator(port=0, scan_ms=2, case_station=prog, case_base=cfg.cases.base)
        await sim.start()
        link: Any = ModbusPlcLink("127.0.0.1", sim.port, case_block=CaseBlockMap(cfg.cases.base), **LINK)
    else:
        link = MemoryPlc(scan_ms=2, case_block=CaseBlockMap(cfg.cases.base), case_station=prog, **LINK)
    try:
        source = sim_source(cfg, pool, items=items, rate_hz=20)
        return await Controller(cfg, link=link, source=source, scorer=scorer, settle=False).run()
    finally:
        if sim is not None:
            await sim.stop()


def check_cases(rows: list[AuditRecord], limit_wh: float, lane: str) -> dict[str, list[AuditRecord]]:
    """No case over the limit by its summed bound; each case's items in belt order, at 1..n."""
    cases: dict[str, list[AuditRecord]] = defaultdict(list)
    for r in rows:
        if r.case_status is not None:
            assert r.lane == lane, r
        if r.case_status == "assigned":
            cases[r.case_id].append(r)  # type: ignore[index]
        elif r.case_status is not None:
            assert r.case_id is None and r.case_reason, r
    for case_id, items in cases.items():
        items.sort(key=lambda r: r.case_seq)  # type: ignore[arg-type, return-value]
        assert [r.case_seq for r in items] == list(range(1, len(items) + 1)), case_id
        assert math.fsum(r.energy_wh_upper for r in items) <= limit_wh, case_id  # type: ignore[misc]
        assert [r.t_item for r in items] == sorted(r.t_item for r in items), "not in belt order"
    return cases


@pytest.mark.parametrize("backend", ["memory", "modbus"])
def test_the_line_packs_cases_within_the_limit_and_the_plc_drops_items_where_the_audit_says(
    backend: str, tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, *CASES, belt_speed=0.03)
    prog = CaseStationProgram(swap_s=0.3, ready_at_start=True, lane="li_ion")
    summary = asyncio.run(run_packing(cfg, scorer, sim_pool, backend, items=80, prog=prog))
    rows = audit_rows(cfg)
    check_invariants(summary, rows, None)
    assert summary.plc_agrees
    cases = check_cases(rows, LIMIT_WH, "li_ion")
    station = [r for r in rows if r.lane == "li_ion" and r.delivery == "acked"]
    assert station and all(r.case_status is not None for r in station)
    assert all(r.case_status is None for r in rows if r.lane != "li_ion")
    statuses = {r.case_status for r in station}
    assert statuses == {"assigned", "not_packable", "no_case_ready"}, statuses  # the pool has all three
    assert all("exceeds the case limit" in (r.case_reason or "") for r in station if r.case_status == "not_packable")
    assert len(cases) >= 2
    # Every Li-ion-lane item has its energy, and every scored item its novelty, in its audit row.
    assert all(r.energy_wh is not None and r.energy_wh_upper is not None for r in station)
    assert all(r.novelty is not None for r in rows if r.chemistry is not None)
    # The PLC's side: each case holds exactly the items the audit assigned to it, in order, and the
    # quarantine buffer everything else of the lane: not packable, or no case ready (the swap window).
    events = case_events(cfg.audit.path)
    placed_of = {d["case_id"]: d["placed"] for k, d in events if k == "case_open"}
    for case_id, items in cases.items():
        assert prog.cases[placed_of[case_id]] == [plc_item_id(r.item_id) for r in items], case_id
    refused = [plc_item_id(r.item_id) for r in station if r.case_status != "assigned"]
    assert prog.buffer == refused
    assert prog.buffered == 0  # no item decided into the case found none in place
    # A case closes (full) and the next one opens only after the PLC confirms it.
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["case_open", "case_close", "case_open"]
    assert all(d["reason"] == "full" for k, d in events if k == "case_close")


def test_a_restart_resumes_the_open_case_exactly(tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]) -> None:
    """Stop mid-case; the next run (a new PLC link, the same physical case in place: CASE_PLACED
    unchanged) fills the same case from the position where it stopped, never over the limit."""
    cfg = make_config(tmp_path, *CASES, "cases.limit_wh=2100", belt_speed=0.03)
    prog = CaseStationProgram(swap_s=None, ready_at_start=True, lane="li_ion")  # no swap: one case
    asyncio.run(run_packing(cfg, scorer, sim_pool, "memory", items=8, prog=prog))
    first = [r for r in audit_rows(cfg) if r.case_status == "assigned"]
    assert first and len({r.case_id for r in first}) == 1
    assert case_events(cfg.audit.path)[-1][0] == "case_open"  # stopped with the case open
    case_id = first[0].case_id
    # The second run: the items continue (new ids), the same case is still in place.
    prog2 = CaseStationProgram(swap_s=None, ready_at_start=True, lane="li_ion")
    source_cfg = cfg

    async def second() -> RunSummary:
        link = MemoryPlc(scan_ms=2, case_block=CaseBlockMap(cfg.cases.base), case_station=prog2, **LINK)
        source = sim_source(source_cfg, sim_pool, items=40, rate_hz=20)
        return await Controller(cfg, link=link, source=_renamed(source, "b"), scorer=scorer, settle=False).run()

    asyncio.run(second())
    rows = audit_rows(cfg)
    cases = check_cases(rows, 2100.0, "li_ion")
    assert len(cases[case_id]) > len(first), "the second run did not continue the open case"
    assert [r.item_id for r in cases[case_id][: len(first)]] == [r.item_id for r in first]
    opens = [d for k, d in case_events(cfg.audit.path) if k == "case_open"]
    assert opens[0]["case_id"] == case_id and sum(1 for d in opens if d["case_id"] == case_id) == 1


def _renamed(source: Any, prefix: str) -> Any:
    """The same simulated belt with item ids prefixed (a second run's items are new items)."""
    import dataclasses

    from sorter.line.sources import ItemSource

    class Renamed(ItemSource):
        def __init__(self) -> None:
            self.inner = source

        async def start(self) -> None:
            await self.inner.start()

        def stop(self) -> None:
            self.inner.stop()

        async def close(self) -> None:
            await self.inner.close()

        def __aiter__(self) -> Any:
            return self._items()

        async def _items(self) -> Any:
            async for si in self.inner:
                new_id = f"{prefix}{si.item_id}"
                yield dataclasses.replace(si, item_id=new_id, plc_id=plc_item_id(new_id))

    return Renamed()


def test_cases_disabled_leave_the_hazard_lane_as_before(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, belt_speed=0.03)
    link = MemoryPlc(scan_ms=2, **LINK)  # a PLC without the case block

    async def main() -> RunSummary:
        return await Controller(
            cfg, link=link, source=sim_source(cfg, sim_pool, items=30, rate_hz=30), scorer=scorer, settle=False
        ).run()

    summary = asyncio.run(main())
    rows = audit_rows(cfg)
    check_invariants(summary, rows, link.model.decisions)
    assert summary.delivery == {"acked": 30}
    assert all(r.case_status is None and r.case_id is None for r in rows)
    assert not case_events(cfg.audit.path)


@pytest.mark.parametrize("backend", ["memory", "modbus"])
def test_cases_enabled_with_a_plc_without_the_block_stop_at_connect_saying_what_to_do(
    backend: str, tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, *CASES, belt_speed=0.03)

    async def main() -> None:
        sim = None
        if backend == "modbus":
            sim = PlcSimulator(port=0, scan_ms=2)  # no case block
            await sim.start()
            link: Any = ModbusPlcLink("127.0.0.1", sim.port, case_block=CaseBlockMap(300), **LINK)
        else:
            link = MemoryPlc(scan_ms=2, case_block=CaseBlockMap(300), **LINK)
        try:
            await Controller(
                cfg, link=link, source=sim_source(cfg, sim_pool, items=5, rate_hz=30), scorer=scorer, settle=False
            ).run()
        finally:
            if sim is not None:
                await sim.stop()

    with pytest.raises(CaseBlockMissingError) as info:
        asyncio.run(main())
    message = str(info.value)
    assert "no case-station block at register 300" in message
    assert "docs/plc-interface.md" in message and "cases.enabled = false" in message


def test_a_plc_without_the_block_sends_an_into_case_item_to_the_safe_lane() -> None:
    """Fail safe: lane code 5 is not a lane for a protocol-1 PLC: rejected, the item goes to manual."""

    async def main() -> tuple[str, dict[int, str]]:
        link = MemoryPlc(scan_ms=1, **LINK)
        await link.connect()
        link.case_block = CaseBlockMap(300)  # a PC that believes the block is there
        try:
            ack = await link.send_decision(77, "hazard", timeout_s=2.0, into_case=True)
        finally:
            await link.close()
        return ack.status, link.model.decisions

    status, decisions = asyncio.run(main())
    assert status == "rejected_bad_lane" and 77 not in decisions  # never diverted: the PLC's default is manual


def test_the_plc_swaps_a_full_case_only_after_its_last_item_arrived() -> None:
    from sorter.line.plc.protocol import CasePcWords

    prog = CaseStationProgram(swap_s=1.0, ready_at_start=True)
    full = CasePcWords(1, 2000, 2100, 3, True, 1).encode()
    prog.accept_into_case()
    assert prog.scan(full, now=0.0)[1] == 1  # an item decided into the case is still on the belt
    prog.arrive(5, into_case=True, now=0.1)
    assert prog.scan(full, now=0.1)[1] == 0 and prog.cases[1] == [5]  # now it swaps
    prog.arrive(6, into_case=True, now=0.2)  # a late one finds no case: buffer, counted
    assert prog.buffer == [6] and prog.buffered == 1
    assert prog.scan(full, now=1.2)[1:3] == [1, 2]  # the operator confirmed case 2
    # The PC has not seen case 2 yet (CASE_OPEN_FOR still 1): CASE_FULL does not swap it.
    assert prog.scan(full, now=1.3)[1:3] == [1, 2]


def test_an_audit_log_written_before_the_case_columns_opens_and_gains_them(tmp_path: Path) -> None:
    import sqlite3

    from sorter.line.audit import store as audit_module
    from sorter.line.audit import AuditWriter

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES (1)")
    for statement in audit_module._SCHEMA.split(";"):  # version 1's tables, as an older sorter wrote them
        if statement.strip():
            con.execute(statement)
    con.execute(
        "INSERT INTO decisions (item_id, t_item, t_available, t_decided, lane, reason, model_id, latency_ms, "
        "deadline_ms, delivery) VALUES ('old-1', 1, 1, 1, 'hazard', 'hot', 'm', 1, 90, 'acked')"
    )
    con.commit()
    con.close()
    base = dict(
        source_line=None,
        t_item=2.0,
        t_available=2.0,
        t_decided=2.0,
        chemistry="li_ion",
        p_lead_acid=0.0,
        p_li_ion=1.0,
        p_other=0.0,
        lane="hazard",
        reason="hot",
        model_id="m",
        latency_ms=1.0,
        deadline_ms=90.0,
        delivery="pending",
    )
    with AuditLog(path) as log:
        old = log.get("old-1")
        assert old is not None and old.case_id is None and old.energy_wh is None
    new = AuditRecord(
        item_id="new-1",
        **base,
        energy_wh=10.0,
        energy_wh_upper=15.0,
        novelty=0.1,
        weight_g=50.0,
        case_id="C-1",
        case_seq=1,
        case_status="assigned",
    )
    close = ("case_close", {"case_id": "C-0", "reason": "full"})
    with AuditWriter(path) as writer:
        assert writer.submit(new, events=[close]).result(timeout=30)
        # The same item again: not inserted, and the events that came with it are not recorded either.
        assert not writer.submit(new, events=[close]).result(timeout=30)
    with AuditLog(path) as log:
        assert [r.item_id for r in log.case_items("C-1")] == ["new-1"]
        assert log.get("new-1") == new
        assert [k for _, k, _ in log.events()] == ["case_close"]
    with pytest.raises(ValueError, match="case_status"):
        AuditRecord(item_id="x", **base, case_status="packed")
    with pytest.raises(ValueError, match="assigned item needs a case_id"):
        AuditRecord(item_id="x", **base, case_status="assigned")
