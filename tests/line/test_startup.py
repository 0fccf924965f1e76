"""Start-up order: the PLC link and the PC heartbeat come up before the model has loaded, and the
reconciliation's counter snapshot is taken before anything is sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sorter.line.audit import AuditLog
from sorter.line.controller import Controller
from sorter.line.plc import MemoryPlc, PlcFault
from sorter.line.reconcile import SNAPSHOT_EVENT
from sorter.line.scoring_pool import ThreadScoringPool
from sorter.line.sources import generate_pool
from tests.line.line_run import SIM_CFG, make_config, sim_source


class GatedPool(ThreadScoringPool):
    """A scoring pool whose model 'loads' until the test opens the gate."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__(None, workers=1)
        self.gate = gate
        self.loading = False

    async def start(self, *, wait_all: bool = True) -> None:
        self.loading = True
        await self.gate.wait()
        await super().start(wait_all=wait_all)


def test_link_heartbeat_and_snapshot_are_up_before_the_model_loads(tmp_path: Path) -> None:
    pool_items = generate_pool(SIM_CFG, 3, workers=1)
    cfg = make_config(tmp_path, "plc.heartbeat_ms=50")

    async def scenario() -> None:
        gate = asyncio.Event()
        scorer = GatedPool(gate)
        plc = MemoryPlc(scan_ms=2, pc_heartbeat_timeout_s=0.3)
        run = asyncio.create_task(
            Controller(cfg, link=plc, source=sim_source(cfg, pool_items, items=3, rate_hz=20), scorer=scorer).run()
        )
        try:
            while not (scorer.loading and plc.state == "connected"):
                await asyncio.sleep(0.01)
            beats = plc.model._pc_heartbeat
            await asyncio.sleep(0.6)  # twice the PLC's PC-heartbeat timeout, the model still "loading"
            assert not scorer.started
            assert plc.model._pc_heartbeat != beats  # the PC heartbeat runs
            assert not plc.model.faults & PlcFault.PC_HEARTBEAT_LOST
            with AuditLog(cfg.audit.path) as log:
                assert [e[2]["why"] for e in log.events(SNAPSHOT_EVENT)] == ["start"]
        finally:
            gate.set()
            summary = await run
            await scorer.close()
        assert summary.audit_ok and summary.items == 3
        assert set(summary.startup_s) >= {"link_up", "scorer_ready"}
        assert summary.startup_s["link_up"] < summary.startup_s["scorer_ready"]

    asyncio.run(asyncio.wait_for(scenario(), 120))
