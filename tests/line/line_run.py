"""Helpers of the line tests that run the controller: configuration, sources, invariants.

Plain functions and constants (imported by the test modules); the fixtures are in
``tests/line/conftest.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from sorter import LANES
from sorter.line.audit import AuditLog, AuditRecord
from sorter.line.config import LineConfig, load_config
from sorter.line.sources import BeltTiming, SimulatedSource, plc_item_id
from sorter.line.summary import RunSummary
from sorter.logformat import LogWriter
from sorter.simulate.run import SimConfig, SimItem

WAIT_S = 30.0  # bound for anything that should happen "soon"; only there to avoid hangs
LINK = {
    "heartbeat_timeout_s": 1.5,
    "request_timeout_s": 0.5,
    "reconnect_min_s": 0.02,
    "reconnect_max_s": 0.2,
    "poll_interval_s": 0.001,
    "rewrite_interval_s": 0.02,
}
SIM_CFG = SimConfig(items=40, seed=11, mix="balanced")
REPO = Path(__file__).resolve().parents[2]


def make_config(tmp_path: Path, *overrides: str, belt_speed: float = 0.3) -> LineConfig:
    """Simulated source, audit in tmp_path; deadline (0.3 m / 0.3 m/s - 10 ms) = 990 ms unless told."""
    return load_config(
        None,
        env={},
        overrides=[
            "line.source=simulated",
            f"audit.path={tmp_path / 'audit.sqlite'}",
            f"line.belt_speed_m_s={belt_speed}",
            "status.enabled=false",
            *overrides,
        ],
    )


def audit_rows(cfg: LineConfig) -> list[AuditRecord]:
    with AuditLog(cfg.audit.path) as log:
        return list(log.rows())


def went(row: AuditRecord) -> str:
    return row.lane if row.delivery == "acked" else "manual"


def check_invariants(summary: RunSummary, rows: list[AuditRecord], plc_decisions: dict[int, str] | None) -> None:
    """What must hold whatever the timing."""
    assert summary.audit_ok, summary.format()
    assert len({r.item_id for r in rows}) == len(rows)
    assert all(r.delivery != "pending" for r in rows)
    assert sum(summary.effective_lanes.values()) == summary.items
    for r in rows:
        assert r.lane in LANES
        if r.delivery != "acked":
            assert went(r) == "manual"
    if plc_decisions is not None:
        for r in rows:
            if r.delivery == "acked":
                # An unreadable line's audit id is "<id>@line<n>"; the PLC knows it by <id>.
                assert plc_decisions[plc_item_id(r.item_id.split("@line")[0])] == r.lane, r


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def sim_source(
    cfg: LineConfig,
    pool: list[SimItem],
    *,
    items: int,
    rate_hz: float,
    announce: Callable[[int, float], None] | None = None,
) -> SimulatedSource:
    return SimulatedSource(
        SIM_CFG, BeltTiming(cfg.line.deadline_ms / 1000), items=items, rate_hz=rate_hz, pool=pool, announce=announce
    )


def write_log(log_dir: Path, pool: list[SimItem], n: int, *, first: int = 1, t: float | None = None) -> None:
    with LogWriter(log_dir, meta=SIM_CFG.meta()) as writer:
        for k in range(first, first + n):
            sim = pool[k % len(pool)]
            rec = dataclasses.replace(sim.record, item_id=f"{k:08d}", t=time.time() if t is None else t)
            writer.append(rec, sim.images)
