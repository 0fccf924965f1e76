"""Counters and clocks over weeks (issue 19).

Every counter the PC and the PLC share wraps (docs/plc-interface.md): the mailbox ``seq`` (uint16,
1..65535, 0 = never used), both heartbeats (uint16, 65535 -> 0) and the lane counters (uint32).  A line
that runs for weeks passes each wrap; these tests start every counter just below it and check that
nothing notices: decisions are acked, the links stay up, the PLC's counters agree with the controller's.

Deadlines run on monotonic time; records keep wall time.  The wall clock is stepped by an hour (an NTP
correction, a wrong clock set right) in the middle of a run: no deadline fires early and none is hidden.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sorter.line.audit import AuditLog
from sorter.line.config import load_config
from sorter.line.controller import Controller, ScoringPool
from sorter.line.plc import AckTimeoutError, MemoryPlc, ModbusPlcLink, PlcFault
from sorter.line.plc.protocol import SEQ_MAX
from sorter.line.plc.sim import PlcSimulator
from sorter.line.reconcile import _delta
from sorter.line.sources import BeltTiming, SimulatedSource, generate_pool
from sorter.simulate.run import SimConfig

WAIT_S = 30.0  # only a guard against hangs
U32 = 0xFFFF_FFFF
LINK = {
    "heartbeat_timeout_s": 1.5,
    "request_timeout_s": 0.5,
    "reconnect_min_s": 0.02,
    "reconnect_max_s": 0.2,
    "poll_interval_s": 0.001,
    "rewrite_interval_s": 0.02,
}
SIM = SimConfig(items=20, seed=19, mix="balanced")


async def eventually(pred, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def near_wrap(model) -> dict[str, int]:
    """Put the PLC's heartbeat and every counter a few counts below their wrap; return the counters."""
    model._heartbeat = 0xFFFF - 30
    for name in model._counters:
        model._counters[name] = U32 - 2
    return dict(model._counters)


@pytest.mark.parametrize("backend", ["memory", "modbus"])
def test_every_shared_counter_wraps_without_a_fault(backend: str) -> None:
    async def body() -> None:
        sim = None
        if backend == "memory":
            link = MemoryPlc(scan_ms=2.0, pc_heartbeat_timeout_s=1.5, **LINK)
            model = link.model
        else:
            sim = PlcSimulator(port=0, scan_ms=2.0, pc_heartbeat_timeout_s=1.5)
            await sim.start()
            link = ModbusPlcLink("127.0.0.1", sim.port, **LINK)
            model = sim.model
        before = near_wrap(model)
        link._next_seq = SEQ_MAX - 3  # the PC's mailbox sequence: 65532, 65533, 65534, 65535, 1, 2 ...
        await link.connect()
        link._pc_heartbeat = 0xFFFF - 3  # the PC heartbeat wraps after four beats
        beat = asyncio.create_task(link.run_heartbeat(0.02))
        try:
            seqs = []
            for k in range(10):
                ack = await link.send_decision(1000 + k, "li_ion", timeout_s=5.0)
                assert ack.accepted, ack
                seqs.append(ack.seq)
            assert seqs == [65532, 65533, 65534, 65535, 1, 2, 3, 4, 5, 6]  # 0 is never used
            # both heartbeats have wrapped, and neither side saw the other as lost
            await eventually(lambda: model._heartbeat < 1000 and link._pc_heartbeat < 100, "both heartbeats to wrap")
            await eventually(
                lambda: model.scans > 0 and model._pc_heartbeat is not None and model._pc_heartbeat < 100,
                "the PLC to see the wrapped PC heartbeat",
            )
            assert link.state == "connected"
            assert not model.faults & PlcFault.PC_HEARTBEAT_LOST
            assert (await link.send_decision(2000, "lead_acid", timeout_s=5.0)).accepted
            # the uint32 lane counters wrapped too; differences are taken modulo 2**32
            after = await link.read_counters()
            assert after["li_ion"] == (before["li_ion"] + 10) & U32 == 7
            assert _delta(after, before, "li_ion") == 10
            assert _delta(after, before, "lead_acid") == 1
            assert _delta(after, before, "manual") == 0
        finally:
            beat.cancel()
            await link.close()
            if sim is not None:
                await sim.stop()

    asyncio.run(asyncio.wait_for(body(), 60))


def make_config(tmp_path: Path, belt_speed_m_s: float):
    # over 0.3 m: 0.1 m/s is a deadline of about 3 s, 0.01 m/s of 30 s (no machine load can miss that)
    return load_config(
        None,
        env={},
        overrides=[
            "line.source=simulated",
            f"audit.path={tmp_path / 'audit.sqlite'}",
            f"line.belt_speed_m_s={belt_speed_m_s}",
            "status.enabled=false",
        ],
    )


def run_line(tmp_path: Path, plc: MemoryPlc, items: int, during=None, belt_speed_m_s: float = 0.1, settle: bool = True):
    cfg = make_config(tmp_path, belt_speed_m_s)
    pool = generate_pool(SIM, 20, workers=1)
    source = SimulatedSource(SIM, BeltTiming(cfg.line.deadline_ms / 1000), items=items, rate_hz=25.0, pool=pool)

    async def body():
        scorer = ScoringPool(None, workers=1, kind="thread", max_batch=16)
        await scorer.start()
        try:
            controller = Controller(cfg, link=plc, source=source, scorer=scorer, settle=settle)
            task = asyncio.create_task(controller.run())
            if during is not None:
                await during(controller, task)
            return await task
        finally:
            await scorer.close()

    summary = asyncio.run(asyncio.wait_for(body(), 300))
    with AuditLog(cfg.audit.path) as log:
        return summary, list(log.rows())


def test_a_line_across_every_wrap_agrees_with_the_plc(tmp_path: Path) -> None:
    plc = MemoryPlc(scan_ms=5.0, **LINK)
    near_wrap(plc.model)
    plc._next_seq = SEQ_MAX - 10
    summary, rows = run_line(tmp_path, plc, items=40)
    assert summary.error is None and summary.audit_ok
    assert summary.plc_agrees, summary.format()  # uint32 lane counters wrapped, the deltas still match
    acked = [r for r in rows if r.delivery == "acked"]
    assert len(acked) == len(rows) == 40
    seqs = [r.plc_seq for r in acked]
    assert 65535 in seqs and 1 in seqs and 0 not in seqs
    assert plc.model._heartbeat < 0xFFFF - 30  # the PLC heartbeat wrapped during the run


class SteppedClock:
    """``time.time`` that can be stepped (an NTP step): the real time plus an offset."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real = time.time

    def __call__(self) -> float:
        return self._real() + self.offset


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
def test_a_wall_clock_step_mid_run_neither_fires_nor_hides_a_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_s: float
) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(time, "time", clock)
    plc = MemoryPlc(scan_ms=5.0, **LINK)

    async def step_half_way(controller, task) -> None:
        await eventually(lambda: controller.source.emitted >= 10 or task.done(), "10 items on the belt")
        clock.offset = step_s

    # A 30 s deadline: only a clock step could make an item miss it (a wall-clock deadline would, +1 h).
    summary, rows = run_line(tmp_path, plc, items=30, during=step_half_way, belt_speed_m_s=0.01, settle=False)
    assert summary.error is None and summary.audit_ok
    # no deadline fired: every item decided and acked in time, none sent to the safe lane for lateness
    assert [r.delivery for r in rows] == ["acked"] * 30, [r.reason for r in rows if r.delivery != "acked"]
    assert not any(r.reason.startswith(("overload", "deadline_missed")) for r in rows)
    # latencies are monotonic: the step is not in them
    assert max(r.latency_ms for r in rows) < 60_000
    # records keep wall time, as the (stepped) clock says
    stepped = [r for r in rows if abs((r.t_decided - r.t_item) - step_s) < 600]
    assert stepped, [(r.t_item, r.t_decided) for r in rows]
    # an ack's wall time is the clock's at the ack: the step is in it only if it came between decision and ack
    assert all(
        r.t_acked is not None and min(abs(r.t_acked - r.t_decided), abs(r.t_acked - r.t_decided - step_s)) < 600
        for r in rows
    )


@pytest.mark.parametrize("step_s", [-3600.0, 3600.0])
def test_a_wall_clock_step_while_waiting_for_an_ack_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, step_s: float
) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(time, "time", clock)

    async def body() -> None:
        link = MemoryPlc(scan_ms=2.0, **LINK)
        await link.connect()
        beat = asyncio.create_task(link.run_heartbeat(0.05))
        try:
            # a PLC that does not answer: the ack deadline must still come (a step back must not hide it)
            link.model.expect(1, time.monotonic() + 60)
            link.pause_scan()

            async def step_soon() -> None:
                await asyncio.sleep(0.05)
                clock.offset = step_s

            stepper = asyncio.create_task(step_soon())
            with pytest.raises(AckTimeoutError):
                await asyncio.wait_for(link.send_decision(1, "li_ion", timeout_s=0.3), WAIT_S)
            await stepper
            # a PLC that answers: a step forward must not fire the deadline before the ack
            link.resume_scan()
            await eventually(lambda: link.state == "connected" and not link.model.faults, "the PLC back in RUN")
            clock.offset = 0.0
            stepper = asyncio.create_task(step_soon())
            ack = await link.send_decision(2, "li_ion", timeout_s=5.0)
            await stepper
            assert ack.accepted
        finally:
            beat.cancel()
            await link.close()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_the_simulated_plc_remembers_a_window_of_diverted_items_not_the_whole_run() -> None:
    """Weeks of items must not grow the simulated PLC (it ran in the demo's process: ~230 bytes an item)."""
    from sorter.line.plc.protocol import RegisterMap
    from sorter.line.plc.sim import PlcModel

    m = RegisterMap()
    plc = PlcModel(m)
    image = [0] * m.size
    image[: m.plc_words] = plc.power_on(image, now=0.0)
    n = 25_000
    for item in range(1, n + 1):
        plc.expect(item, 0.5)
    plc.scan(image, now=1.0)  # every item reaches the diverter undecided: defaulted to the safe lane
    assert plc.counters["defaulted"] == n  # the counters count every item
    remembered = plc.decisions
    assert len(remembered) <= 10_000 and n in remembered and 1 not in remembered
