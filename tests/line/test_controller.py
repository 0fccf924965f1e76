"""The line controller end to end: sources, scoring, audit, PLC delivery, restarts.

Runs against the in-memory PLC and against the real pymodbus PLC simulator over
loopback (in this process and in another one).  Tests never assert on speed:
where an outcome depends on timing, the deadline is made generous (seconds),
and the invariants checked hold whatever the timing: one audit row per item,
and the PLC's own lane for an item equals where the audit says it went.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorter import LANES
from sorter.line.app import build_source
from sorter.line.audit import AuditLog
from sorter.line.controller import Controller
from sorter.line.metrics import LineMetrics, StatusLine
from sorter.line.plc import MemoryPlc, ModbusPlcLink
from sorter.line.plc.sim import PlcSimulator
from sorter.line.scoring_pool import ScoringPool
from sorter.line.sources import plc_item_id
from sorter.line.summary import RunSummary
from sorter.logformat import LogWriter
from sorter.readings import Item
from sorter.scoring import Scorer
from sorter.simulate.run import SimItem
from tests.line.line_run import (
    LINK,
    REPO,
    SIM_CFG,
    WAIT_S,
    audit_rows,
    check_invariants,
    eventually,
    make_config,
    sim_source,
    went,
    write_log,
)

# --------------------------------------------------------------------------- scoring


def test_batched_scoring_gives_the_same_decisions_as_one_at_a_time(
    scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    from sorter.model import load_model

    single = Scorer(load_model(None))
    items = [
        Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), SIM_CFG.meta())
        for s in sim_pool[:12]
    ]
    batch = single.score_items([(it, 18.0) for it in items])
    for it, d in zip(items, batch, strict=True):
        one = single.score_item(it, 18.0)
        assert (d.item_id, d.lane, d.reason) == (one.item_id, one.lane, one.reason)
        assert d.p_lead_acid == pytest.approx(one.p_lead_acid, abs=1e-12)


def test_items_past_their_deadline_are_not_scored_by_the_pool(scorer: ScoringPool, sim_pool: list[SimItem]) -> None:
    s = sim_pool[0]
    item = Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), SIM_CFG.meta())

    async def main() -> tuple[object, object]:
        late = await scorer.score(item, 18.0, due_mono=time.monotonic() - 0.001)
        in_time = await scorer.score(item, 18.0, due_mono=time.monotonic() + 60.0)
        return late, in_time

    shed, scored = scorer.shed, scorer.items_scored
    late, in_time = asyncio.run(main())
    assert late is None and scorer.shed == shed + 1
    assert in_time is not None and scorer.items_scored == scored + 1


@pytest.mark.e2e  # spawned scoring processes, one killed
def test_worker_processes_score_like_in_process_survive_a_killed_worker_and_serve_two_loops(
    sim_pool: list[SimItem],
) -> None:
    """The process pool (sockets from the event loop, no executor threads): the same decisions as
    scoring in-process; a worker killed between batches costs only its own batch (safe lane) and
    is replaced; the pool serves one event loop after another; close() reaps every worker."""
    from sorter.model import load_model

    single = Scorer(load_model(None))
    items = [
        Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), SIM_CFG.meta())
        for s in sim_pool[:10]
    ]
    expected = [single.score_item(it, 18.0) for it in items]
    pool = ScoringPool(None, workers=2, kind="process", max_batch=4)

    async def first_loop() -> list[Any]:
        await pool.start()
        assert len(pool.worker_pids) == 2 and pool.model_id == single.model.model_id
        return list(await asyncio.gather(*(pool.score(it, 18.0) for it in items)))

    async def second_loop() -> tuple[Any, list[Any]]:
        victim = pool.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.2)
        # Both workers get a batch: the dead one's items fail to the safe lane, the other's are scored.
        lost = await asyncio.gather(pool.score(items[0], 18.0), pool.score(items[1], 18.0))
        await eventually(lambda: pool.respawned == 1 and len(pool.worker_pids) == 2, "a replacement worker")
        assert victim not in pool.worker_pids
        after = [await pool.score(it, 18.0) for it in items]
        return lost, after

    try:
        got = asyncio.run(first_loop())
        lost, after = asyncio.run(second_loop())
    finally:
        procs = list(pool._procs)
        asyncio.run(pool.close())
    for decisions in (got, after):
        for d, one in zip(decisions, expected, strict=True):
            assert (d.item_id, d.lane, d.reason) == (one.item_id, one.lane, one.reason)
            assert d.p_lead_acid == pytest.approx(one.p_lead_acid, abs=1e-12)
    assert any(d.lane == "manual" and "scorer failed" in d.reason for d in lost)
    assert pool.items_scored >= 2 * len(items)
    assert procs and not any(p.process.is_alive() for p in procs)


def test_a_pool_whose_loop_ended_mid_batch_replaces_that_worker_on_the_next_loop(sim_pool: list[SimItem]) -> None:
    s = sim_pool[0]
    item = Item(s.record, s.images.get("xray_low"), s.images.get("xray_high"), s.images.get("rgb"), SIM_CFG.meta())
    pool = ScoringPool(None, workers=1, kind="process")

    async def first_loop() -> Any:
        await pool.start()
        proc = pool._procs[0]
        for _ in range(4):
            asyncio.get_running_loop().create_task(pool.score(item, 18.0))
        await asyncio.sleep(0.001)  # a batch is in the worker when this loop ends (its tasks are cancelled)
        return proc

    async def second_loop() -> Any:
        return await asyncio.wait_for(pool.score(item, 18.0), WAIT_S)

    try:
        old = asyncio.run(first_loop())
        decision = asyncio.run(second_loop())
    finally:
        asyncio.run(pool.close())
    assert "scorer failed" not in decision.reason and decision.lane in LANES
    assert old.broken and not old.process.is_alive()


# --------------------------------------------------------------------------- happy path, both PLCs


@pytest.mark.parametrize("backend", ["memory", "modbus"])
def test_every_item_is_decided_recorded_and_acked(
    backend: str, tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, belt_speed=0.03)  # 10 s deadline: timing cannot matter here

    async def main() -> tuple[RunSummary, dict[int, str], dict[str, int]]:
        sim = None
        if backend == "modbus":
            sim = PlcSimulator(port=0, scan_ms=2)
            await sim.start()
            link: Any = ModbusPlcLink("127.0.0.1", sim.port, **LINK)
            model = sim.model
        else:
            link = MemoryPlc(scan_ms=2, **LINK)
            model = link.model
        try:
            # Items not announced: the PLC applies each accepted decision at once, so its record is complete.
            source = sim_source(cfg, sim_pool, items=40, rate_hz=40)
            summary = await Controller(cfg, link=link, source=source, scorer=scorer, settle=False).run()
        finally:
            if sim is not None:
                await sim.stop()
        return summary, model.decisions, model.counters

    summary, decisions, counters = asyncio.run(main())
    rows = audit_rows(cfg)
    check_invariants(summary, rows, decisions)
    assert summary.items == 40 and len(rows) == 40
    assert summary.delivery == {"acked": 40}
    assert all(r.model_id == scorer.model_id and r.chemistry is not None for r in rows)
    assert {plc_item_id(r.item_id) for r in rows} == set(decisions)
    assert summary.plc_counters is not None and summary.plc_agrees
    assert sum(counters[lane] for lane in LANES) == 40
    assert summary.li_ion_total is not None and summary.li_ion_total > 0  # truth is carried through
    assert summary.latency_p50_ms is not None


# --------------------------------------------------------------------------- deadlines and overload


def test_plc_that_never_acks_gives_late_items_that_default_to_manual(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, "plc.ack_grace_ms=20", belt_speed=3.0)  # the real 90 ms deadline

    async def main() -> tuple[RunSummary, MemoryPlc]:
        link = MemoryPlc(scan_ms=2, **LINK)
        link.model.acking = False
        source = sim_source(cfg, sim_pool, items=20, rate_hz=50, announce=link.model.expect)
        summary = await Controller(cfg, link=link, source=source, scorer=scorer).run()
        return summary, link

    summary, link = asyncio.run(main())
    rows = audit_rows(cfg)
    check_invariants(summary, rows, None)
    assert summary.items == 20 == len(rows)
    assert all(r.delivery in ("late", "undelivered") for r in rows)
    # A decision written but never acknowledged keeps its mailbox seq, to match the PLC's own log.
    assert any(r.delivery == "late" and r.plc_seq is not None and r.plc_status is None for r in rows)
    assert summary.effective_lanes == {"manual": 20}
    # The PLC's own record: every item went to the safe lane by default.
    assert set(link.model.decisions.values()) == {"manual"} and len(link.model.decisions) == 20
    assert summary.plc_counters is not None and summary.plc_counters["defaulted"] == 20
    assert summary.plc_agrees


def test_items_past_their_deadline_are_recorded_as_overload_without_scoring(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    log_dir = tmp_path / "log"
    write_log(log_dir, sim_pool, 15, t=time.time() - 60.0)  # passed the bridge a minute ago
    cfg = make_config(
        tmp_path,
        "line.source=log",
        f"line.log_dir={log_dir}",
        "line.follow=false",
        "line.deadline_from=bridge",
        belt_speed=3.0,
    )
    scored_before = scorer.items_scored

    async def main() -> RunSummary:
        link = MemoryPlc(scan_ms=2, **LINK)
        return await Controller(cfg, link=link, source=build_source(cfg), scorer=scorer).run()

    summary = asyncio.run(main())
    rows = audit_rows(cfg)
    check_invariants(summary, rows, None)
    assert summary.items == 15 == summary.overload
    assert all((r.lane, r.reason, r.delivery, r.chemistry) == ("manual", "overload", "late", None) for r in rows)
    assert [r.source_line for r in rows] == list(range(1, 16))
    assert scorer.items_scored == scored_before


def test_in_flight_work_is_bounded_and_every_item_still_gets_a_row(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, "line.max_in_flight=2", belt_speed=3.0)

    async def main() -> RunSummary:
        link = MemoryPlc(scan_ms=2, **LINK)
        source = sim_source(cfg, sim_pool, items=60, rate_hz=400, announce=link.model.expect)
        return await Controller(cfg, link=link, source=source, scorer=scorer).run()

    summary = asyncio.run(main())
    check_invariants(summary, audit_rows(cfg), None)
    assert summary.items == 60
    assert summary.peak_in_flight <= 2
    assert summary.plc_agrees


def test_unreadable_lines_get_a_row_and_the_safe_lane(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    log_dir = tmp_path / "log"
    write_log(log_dir, sim_pool, 2)
    with open(log_dir / "items.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
        fh.write('{"item_id": "123", "weight_g": 5}\n')  # no t
        fh.write('{"item_id": "00000001", "t": 1.0}\n')  # duplicate id
    cfg = make_config(
        tmp_path,
        "line.source=log",
        f"line.log_dir={log_dir}",
        "line.follow=false",
        "line.deadline_from=arrival",
        belt_speed=0.03,
    )

    async def main() -> tuple[RunSummary, dict[int, str]]:
        link = MemoryPlc(scan_ms=2, **LINK)
        summary = await Controller(cfg, link=link, source=build_source(cfg), scorer=scorer, settle=False).run()
        return summary, link.model.decisions

    summary, decisions = asyncio.run(main())
    rows = audit_rows(cfg)
    check_invariants(summary, rows, decisions)
    assert summary.items == 5 and summary.errors == 3
    by_line = {r.source_line: r for r in rows}
    assert by_line[3].item_id == "log@line3" and by_line[3].delivery == "undelivered"  # no id: nothing to send
    assert by_line[4].item_id == "123@line4" and decisions[123] == "manual"
    assert by_line[5].item_id == "00000001@line5"
    for line in (3, 4, 5):
        assert by_line[line].lane == "manual" and by_line[line].reason.startswith("cannot score")


# --------------------------------------------------------------------------- PLC outage


def test_plc_restart_mid_run_loses_no_item_and_the_link_comes_back(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    cfg = make_config(tmp_path, belt_speed=0.03)  # 10 s deadline: only the outage may keep items from the PLC

    async def main() -> tuple[RunSummary, int, int]:
        sim = PlcSimulator(port=0, scan_ms=2)
        await sim.start()
        port = sim.port
        link = ModbusPlcLink("127.0.0.1", port, **LINK)
        source = sim_source(cfg, sim_pool, items=150, rate_hz=40)
        controller = Controller(cfg, link=link, source=source, scorer=scorer, settle=False)
        run = asyncio.create_task(controller.run())
        try:
            await eventually(lambda: controller.snapshot()["acked"] >= 10, "first acks")
            await sim.stop()
            await eventually(lambda: controller.snapshot()["undelivered"] >= 3, "undelivered decisions")
            assert not run.done()  # still scoring, still recording
            await sim.start()
            assert sim.port == port
            acked_at_restart = controller.snapshot()["acked"]
            summary = await asyncio.wait_for(run, WAIT_S)
        finally:
            await sim.stop()
        return summary, acked_at_restart, len(sim.decisions)

    summary, acked_at_restart, _ = asyncio.run(main())
    rows = audit_rows(cfg)
    check_invariants(summary, rows, None)
    assert summary.items == 150 == len(rows)
    assert summary.undelivered >= 3
    assert summary.delivery.get("acked", 0) > acked_at_restart  # reconnected by itself and delivered again
    undelivered = [r for r in rows if r.delivery == "undelivered"]
    assert all(r.t_acked is None and went(r) == "manual" for r in undelivered)


# --------------------------------------------------------------------------- restart and resume


def test_resume_after_a_crash_continues_after_the_resume_point(
    tmp_path: Path, scorer: ScoringPool, sim_pool: list[SimItem]
) -> None:
    log_dir = tmp_path / "log"
    write_log(log_dir, sim_pool, 20)
    cfg = make_config(
        tmp_path, "line.source=log", f"line.log_dir={log_dir}", "line.follow=false", "line.deadline_from=arrival"
    )

    async def run_once() -> RunSummary:
        link = MemoryPlc(scan_ms=2, **LINK)
        return await Controller(cfg, link=link, source=build_source(cfg), scorer=scorer, settle=False).run()

    first = asyncio.run(run_once())
    assert first.items == 20 and first.audit_ok and first.resume_point == 0

    # A crash: line 18's row never committed, line 19's delivery never recorded.
    with sqlite3.connect(cfg.audit.path) as db:
        db.execute("DELETE FROM decisions WHERE source_line = 18")
        db.execute(
            "UPDATE decisions SET delivery = 'pending', plc_seq = NULL, plc_status = NULL, t_acked = NULL "
            "WHERE source_line = 19"
        )
    write_log(log_dir, sim_pool, 10, first=21)

    second = asyncio.run(run_once())
    assert second.resume_point == 20 and second.pending_marked == 1
    assert second.items == 11 and second.audit_ok  # line 18 again, and lines 21..30
    rows = {r.source_line: r for r in audit_rows(cfg)}
    assert sorted(rows) == list(range(1, 31))
    assert rows[19].delivery == "undelivered"
    assert rows[18].delivery != "pending"
    with AuditLog(cfg.audit.path) as log:
        assert log.resume_point() == 30 and log.count() == 30


# --------------------------------------------------------------------------- sorter run + plc-sim processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows_in(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    except sqlite3.Error:
        return 0


class _Lines:
    """Collect a subprocess stream's lines in a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.e2e  # sorter run and a PLC in subprocesses
def test_sorter_run_follows_a_growing_log_and_drives_a_plc_in_another_process(
    tmp_path: Path, sim_pool: list[SimItem]
) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("SORTER_")}
    plc = subprocess.Popen(
        [sys.executable, "-m", "sorter", "plc-sim", "--port", str(port), "--scan-ms", "5", "--report-s", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    run = None
    try:
        plc_out = _Lines(plc.stdout)
        deadline = time.monotonic() + WAIT_S
        while "simulated PLC on" not in plc_out.text():
            assert plc.poll() is None and time.monotonic() < deadline, plc_out.text()
            time.sleep(0.05)

        log_dir, audit = tmp_path / "log", tmp_path / "audit.sqlite"
        (tmp_path / "line.toml").write_text(f"""
[line]
name = "test"
source = "log"
log_dir = "log"
follow = true
belt_speed_m_s = 0.03  # 10 s deadline: this test is about following, not speed
scorer_workers = 1
[plc]
port = {port}
heartbeat_ms = 100
[audit]
path = "audit.sqlite"
[status]
enabled = false
""")
        run = subprocess.Popen(
            [sys.executable, "-m", "sorter", "-v", "run", "--config", "line.toml"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        run_out, run_err = _Lines(run.stdout), _Lines(run.stderr)
        while "running: deadline" not in run_err.text():
            assert run.poll() is None and time.monotonic() < deadline + WAIT_S, run_err.text()
            time.sleep(0.05)

        n = 30

        def append() -> None:  # the sensor bridge's recorder, writing while the controller follows
            with LogWriter(log_dir, meta=SIM_CFG.meta()) as writer:
                for k in range(1, n + 1):
                    sim = sim_pool[k % len(sim_pool)]
                    writer.append(dataclasses.replace(sim.record, item_id=f"{k:08d}", t=time.time()), sim.images)
                    time.sleep(0.03)

        writer = threading.Thread(target=append)
        writer.start()
        writer.join(WAIT_S)
        while _rows_in(audit) < n:
            assert run.poll() is None and time.monotonic() < deadline + 3 * WAIT_S, run_err.text()
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)  # graceful stop: drain, summary, exit 0
        assert run.wait(WAIT_S) == 0, run_err.text()
        time.sleep(0.1)
        summary = run_out.text()
        assert re.search(rf"audit +{n} new rows for {n} items \(OK\)", summary), summary

        with AuditLog(audit) as log:
            rows = list(log.rows())
        assert [r.source_line for r in rows] == list(range(1, n + 1))
        acked = [r for r in rows if r.delivery == "acked"]
        assert len(acked) >= 1

        async def plc_counters() -> dict[str, int]:
            async with ModbusPlcLink("127.0.0.1", port) as link:
                return await link.read_counters()

        counters = asyncio.run(plc_counters())
        # The PLC in the other process applied exactly the accepted decisions (items were not announced to it).
        assert sum(counters[lane] for lane in LANES) == len(acked)
        for lane in LANES:
            assert counters[lane] == sum(1 for r in acked if r.lane == lane)
    finally:
        for proc in (run, plc):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


# --------------------------------------------------------------------------- ids, metrics, status


@given(st.text(max_size=40))
def test_plc_item_id_is_a_uint32_and_stable(item_id: str) -> None:
    value = plc_item_id(item_id)
    assert 0 <= value <= 0xFFFF_FFFF
    assert plc_item_id(item_id) == value
    if not (item_id.isascii() and item_id.isdecimal() and int(item_id) <= 0xFFFF_FFFF):
        assert value >= 2**31  # hashed ids never collide with numeric ids below 2**31


@given(st.integers(0, 0xFFFF_FFFF), st.integers(0, 4))
def test_numeric_item_ids_are_the_plc_id(number: int, zeros: int) -> None:
    assert plc_item_id("0" * zeros + str(number)) == number


def test_metrics_are_served_on_loopback_from_a_private_registry() -> None:
    import urllib.request

    first, second = LineMetrics(), LineMetrics()
    first.record_item(lane="hazard", delivery="acked", latency_s=0.02, overload=False, hazard_wh=120.0)
    first.record_item(lane="lead_acid", delivery="undelivered", latency_s=None, overload=False, hazard_wh=None)
    first.set_link_state("down")
    port = _free_port()
    first.serve(port)  # default address: loopback
    try:
        assert first._server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        first.close()
    assert 'sorter_line_items_total{delivery="acked",lane="hazard"} 1.0' in text
    assert "sorter_line_undelivered_total 1.0" in text
    assert "sorter_line_hazard_energy_wh_total 120.0" in text
    assert 'sorter_line_plc_link_state{state="down"} 1.0' in text
    assert second.registry.get_sample_value("sorter_line_undelivered_total") == 0.0


def test_status_line_rewrites_in_place_on_a_terminal_and_prints_lines_otherwise() -> None:
    import io

    snap = {
        "items": 5,
        "rate_hz": 2.5,
        "lanes": {"li_ion": 2, "manual": 3},
        "in_flight": 1,
        "p99_ms": 33.0,
        "misses": 0,
        "undelivered": 1,
        "link": "connected",
    }
    tty, plain = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (plain, False)):
        line = StatusLine(lambda: snap, stream=stream, interval_s=0.0, tty=is_tty)
        line.update()
        line.update()
        line.finish()
    assert tty.getvalue().count("\r\x1b[2K") == 3 and tty.getvalue().endswith("\n")
    assert plain.getvalue().count("\n") == 3 and "\r" not in plain.getvalue()
    assert "items 5 (2.5/s) | li_ion 2 manual 3 | in flight 1 | p99 33 ms" in plain.getvalue()


def test_a_model_that_cannot_load_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    from sorter.errors import ModelError

    pool = ScoringPool(str(tmp_path), workers=1, kind="process")  # an empty directory: no model there

    async def start() -> None:
        try:
            await pool.start()
        finally:
            await pool.close()

    with pytest.raises(ModelError, match=str(tmp_path)):
        asyncio.run(start())
