"""Durability off the deadline path (audit.sync = "interval") and the restart's reconciliation.

- Commits do not wait for the disk: a flusher that is stuck in fdatasync holds no decision back.
- A simulated power cut: the database and WAL files are copied at every flush point with the
  writer held (exactly what that flush makes durable); a cut keeps the last flushed copy.  The
  copy opens cleanly, holds every row committed before that flush, loses only rows committed
  after it, and the reconciliation against the PLC's counters flags every lost row.
- The controller records a counter snapshot at start and at a clean end, and a later start
  reports a gap in its summary and the audit's events table.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import sorter.line.audit.writer as audit_module  # the writer holds the flusher (os.fdatasync, _WAL_RESET_FRAMES)
from sorter.line.audit import AuditLog, AuditRecord, AuditWriter
from sorter.line.controller import recover_audit
from sorter.line.plc import MemoryPlc
from sorter.line.reconcile import GAP_EVENT, SNAPSHOT_EVENT, reconcile, snapshot_detail
from sorter.line.sources import plc_item_id

LANES = ("lead_acid", "li_ion", "hazard", "manual")


def record(n: int, lane: str, delivery: str = "pending") -> AuditRecord:
    return AuditRecord(
        item_id=f"{n:08d}",
        source_line=n,
        t_item=1.7e9 + n,
        t_available=1.7e9 + n,
        t_decided=1.7e9 + n,
        chemistry=None,
        p_lead_acid=None,
        p_li_ion=None,
        p_other=None,
        lane=lane,
        reason="test",
        model_id="m",
        latency_ms=1.0,
        deadline_ms=90.0,
        delivery=delivery,
    )


def test_interval_mode_writer_connection_never_syncs_and_full_keeps_fsync(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.sqlite", sync="interval") as log:
        p = log.pragmas()
        assert (p["journal_mode"], p["synchronous"], p["wal_autocheckpoint"]) == ("wal", 0, 0)
    with AuditLog(tmp_path / "b.sqlite", sync="full") as log:
        assert log.pragmas()["synchronous"] == 2


def test_commits_do_not_wait_for_a_stalled_flush_and_the_lag_is_measured_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "audit.sqlite"
    stalled = threading.Event()
    release = threading.Event()
    real = audit_module.os.fdatasync

    def stalling_fdatasync(fd: int) -> None:
        stalled.set()
        release.wait(30)
        real(fd)

    monkeypatch.setattr(audit_module.os, "fdatasync", stalling_fdatasync)
    lags: list[float] = []
    with AuditWriter(db, sync_interval_s=0.005, on_durable=lags.append, lag_alarm_s=0.001) as writer:
        assert writer.submit(record(1, "li_ion")).result(timeout=30)
        assert stalled.wait(30), "the flusher never flushed"
        # The disk is "stalled" in the flusher: decisions still commit, visible to another connection.
        for n in range(2, 12):
            assert writer.submit(record(n, "li_ion")).result(timeout=30)
        with sqlite3.connect(db) as other:
            assert other.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 11
        assert writer.flushes == 0
        lag = writer.durability_lag_s()
        time.sleep(0.05)
        assert writer.durability_lag_s() > lag > 0  # what a power cut now would lose keeps growing
        release.set()
        deadline = time.monotonic() + 30
        while writer.flushes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.flushes >= 2
    assert lags and max(lags) >= min(lags) > 0
    with AuditLog(db) as log:
        events = log.events("durability_lag")
    assert events and events[-1][2]["worst_lag_ms"] > 0


class PowerCut:
    """Copies the database and WAL at every flush point; a cut keeps the last completed flush's copy."""

    def __init__(self, db: Path, where: Path) -> None:
        self.db, self.where = db, where
        self.lock = threading.Lock()
        self.k = 0
        self.candidate: tuple[Path, int] | None = None
        self.durable: tuple[Path, int] | None = None
        self.committed_ids = lambda: 0  # replaced by the test: rows committed at the snapshot

    def hook(self, phase: str) -> None:
        if phase == "snapshot":  # the writer is held: the files hold exactly the committed rows
            self.k += 1
            d = self.where / f"flush-{self.k:05d}"
            d.mkdir()
            for suffix in ("", "-wal"):
                src = Path(f"{self.db}{suffix}")
                if src.exists():
                    shutil.copyfile(src, d / src.name)
            self.candidate = (d, self.committed_ids())
        elif phase == "synced":
            with self.lock:
                self.durable = self.candidate

    def cut(self) -> tuple[Path, int]:
        with self.lock:
            assert self.durable is not None, "no flush completed"
            return self.durable


@pytest.mark.parametrize("journaled", [False, True], ids=["commit-before-send", "crash-journal"])
def test_a_power_cut_loses_only_rows_after_the_last_flush_and_reconciliation_flags_every_one(
    tmp_path: Path, journaled: bool
) -> None:
    """With the crash journal the cut also takes the journal (tmpfs): the rows lost are still only
    those not yet flushed, and the reconciliation flags every one."""
    db = tmp_path / "audit.sqlite"
    cuts = tmp_path / "cuts"
    cuts.mkdir()
    rng = random.Random(7)
    lanes = {n: rng.choice(LANES) for n in range(1, 401)}
    done: list[int] = []  # items whose decision is committed, in order

    async def line() -> tuple[MemoryPlc, Path, int, dict[int, str]]:
        plc = MemoryPlc(scan_ms=1, rewrite_interval_s=0.01)
        await plc.connect()
        hb = asyncio.create_task(plc.run_heartbeat(0.05))
        counters, mailbox = await plc.read_counters(), await plc.read_mailbox()
        with AuditLog(db) as log:  # the controller's start-up snapshot
            log.record_event(SNAPSHOT_EVENT, snapshot_detail(counters, log.last_id(), "start", mailbox))
        cut = PowerCut(db, cuts)
        writer = AuditWriter(
            db, sync_interval_s=0.01, delivery_delay_s=0.02, journal_dir=tmp_path / "journal" if journaled else None
        )
        journal = writer.journal
        # Decisions in SQLite at the snapshot: those sent, less those only journaled (never more than true).
        cut.committed_ids = lambda: len(done) - (journal.pending() if journal is not None else 0)
        writer.flush_hook = cut.hook
        stop_at = rng.randint(150, 350)
        delivered: dict[int, str] = {}
        try:
            for n in range(1, stop_at + 1):
                lane = lanes[n]
                assert await asyncio.wrap_future(writer.submit(record(n, lane)))
                done.append(n)
                ack = await plc.send_decision(n, lane, timeout_s=10)
                assert ack.accepted
                delivered[n] = lane
                writer.submit_delivery(f"{n:08d}", "acked", plc_seq=ack.seq, plc_status=ack.status, t_acked=time.time())
                if n % 7 == 0:
                    await asyncio.sleep(0.003)
            copy, committed_before = cut.cut()  # the power goes: only the last flush is on disk
        finally:
            writer.flush_hook = None
            writer.close()
        hb.cancel()
        return plc, copy / db.name, committed_before, delivered

    async def scenario() -> None:
        plc, copy, committed_before, delivered = await line()
        try:
            # Restart from what the disk held.
            with sqlite3.connect(copy) as con:
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                kept = {int(r[0]) for r in con.execute("SELECT item_id FROM decisions")}
            # Everything acknowledged as committed before the last flush is kept; what is lost was
            # committed after it (the window a power cut may take).
            assert set(done[:committed_before]) <= kept <= set(done)
            lost = set(delivered) - kept
            assert lost <= set(done[committed_before:])
            resume = recover_audit(copy)
            counters, mailbox = await plc.read_counters(), await plc.read_mailbox()
            with AuditLog(copy) as log:
                found = reconcile(log, counters, mailbox, resume.pending)
                rows = {r.item_id: r for r in log.rows()}
            assert found is not None
            # Per lane, the gap is every decision the PLC carried out that the copy does not hold as acked:
            # the lost rows, and the rows whose 'acked' delivery update was lost with them (now undelivered).
            expected: dict[str, int] = {}
            for n, lane in delivered.items():
                row = rows.get(f"{n:08d}")
                if row is None or row.delivery != "acked":
                    expected[lane] = expected.get(lane, 0) + 1
            assert dict(found.lane_gaps) == expected
            assert found.items_without_row == len(lost)
            assert not found.ok and found.gap_items >= len(lost)
            # Every lost row still standing in the mailbox is named there.
            standing = {e.item_id for e in mailbox if e.ack_seq == e.slot_seq and e.status == 1}
            for n in lost & standing:
                assert any(f"PLC id {plc_item_id(f'{n:08d}')} " in text for text in found.mailbox), n
        finally:
            await plc.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_reconciliation_agrees_when_nothing_was_lost(tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"

    async def scenario() -> None:
        async with MemoryPlc(scan_ms=1) as plc:
            with AuditLog(db) as log:
                log.record_event(
                    SNAPSHOT_EVENT, snapshot_detail(await plc.read_counters(), 0, "start", await plc.read_mailbox())
                )
                for n, lane in enumerate(LANES * 3, 1):
                    log.record_decision(record(n, lane))
                    ack = await plc.send_decision(n, lane, timeout_s=10)
                    log.record_delivery(f"{n:08d}", "acked", plc_seq=ack.seq, plc_status=ack.status)
                found = reconcile(log, await plc.read_counters(), await plc.read_mailbox(), ())
            assert found is not None and found.ok and found.lines() == []
            assert found.plc_carried_out == dict.fromkeys(LANES, 3) == found.audit_acked

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_accepted_but_defaulted_and_latched_after_a_crash_are_both_flagged(tmp_path: Path) -> None:
    """`accepted` does not guarantee the lane, and a crash's pending row may have been latched."""
    db = tmp_path / "audit.sqlite"

    async def scenario() -> None:
        async with MemoryPlc(scan_ms=1) as plc:
            with AuditLog(db) as log:
                log.record_event(
                    SNAPSHOT_EVENT, snapshot_detail(await plc.read_counters(), 0, "start", await plc.read_mailbox())
                )
                # Item 1: accepted, then the diverter faults before it arrives -> safe lane.
                plc.model.expect(1, time.monotonic() + 0.3)
                log.record_decision(record(1, "li_ion"))
                ack = await plc.send_decision(1, "li_ion", timeout_s=10)
                log.record_delivery("00000001", "acked", plc_seq=ack.seq, plc_status=ack.status)
                plc.model.diverter_fault = True
                while 1 not in plc.model.decisions:
                    await asyncio.sleep(0.01)
                plc.model.diverter_fault = False
                # Item 2: committed, sent, the PC dies before recording the ack (row stays pending).
                log.record_decision(record(2, "hazard"))
                await plc.send_decision(2, "hazard", timeout_s=10)
            resume = recover_audit(db)
            assert resume.pending_marked == 1
            with AuditLog(db) as log:
                found = reconcile(log, await plc.read_counters(), await plc.read_mailbox(), resume.pending)
            assert found is not None
            assert dict(found.lane_gaps) == {"li_ion": -1, "hazard": 1}
            text = " ".join(found.lines())
            assert "did not carry out" in text and "latched after the PC died" in text
            assert any("left pending by the crash" in m for m in found.mailbox)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_restart_reports_a_gap_in_the_summary_and_the_audit_events(tmp_path: Path) -> None:
    """Two controller runs on one PLC; between them the last rows and the end snapshot are deleted,
    as a power cut during the first run would have lost them."""
    from sorter.line.controller import Controller
    from sorter.line.scoring_pool import ScoringPool
    from sorter.line.sources import generate_pool
    from tests.line.line_run import SIM_CFG, make_config, sim_source

    pool = generate_pool(SIM_CFG, 10, workers=1)
    cfg = make_config(tmp_path)

    async def scenario() -> None:
        scorer = ScoringPool(None, workers=1, kind="thread")
        plc = MemoryPlc(scan_ms=2)
        try:
            first = await Controller(
                cfg, link=plc, source=sim_source(cfg, pool, items=20, rate_hz=40), scorer=scorer
            ).run()
            assert not first.reconciliation  # a new log: nothing to compare yet
            with sqlite3.connect(cfg.audit.path) as con:
                gone = [
                    r[0]
                    for r in con.execute(
                        "SELECT item_id FROM decisions WHERE delivery = 'acked' ORDER BY id DESC LIMIT 3"
                    )
                ]
                con.execute(f"DELETE FROM decisions WHERE item_id IN ({','.join('?' * len(gone))})", gone)
                con.execute(
                    "DELETE FROM events WHERE kind = ? AND id = (SELECT MAX(id) FROM events)", (SNAPSHOT_EVENT,)
                )
            second = await Controller(
                cfg, link=plc, source=sim_source(cfg, pool, items=2, rate_hz=40), scorer=scorer
            ).run()
        finally:
            await scorer.close()
        assert second.reconciliation_gap_items >= 3
        assert "RECONCILE" in second.format()
        with AuditLog(cfg.audit.path) as log:
            gaps = log.events(GAP_EVENT)
            snaps = log.events(SNAPSHOT_EVENT)
        assert len(gaps) == 1 and gaps[0][2]["items_without_row"] == 3
        assert sum(gaps[0][2]["lane_gaps"].values()) == 3
        assert [s[2]["why"] for s in snaps] == ["start", "start", "end"]

    asyncio.run(asyncio.wait_for(scenario(), 240))


def test_max_lag_holds_decisions_back_while_the_disk_is_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """audit.max_lag_ms: the operator's hard bound on what a power cut may lose."""
    from sorter.line.controller import Controller
    from sorter.line.scoring_pool import ScoringPool
    from sorter.line.sources import generate_pool
    from tests.line.line_run import SIM_CFG, make_config, sim_source

    release = threading.Event()
    real = audit_module.os.fdatasync
    monkeypatch.setattr(audit_module.os, "fdatasync", lambda fd: (release.wait(60), real(fd)))
    pool = generate_pool(SIM_CFG, 3, workers=1)
    cfg = make_config(tmp_path, "audit.max_lag_ms=20")

    async def scenario() -> None:
        scorer = ScoringPool(None, workers=1, kind="thread")
        plc = MemoryPlc(scan_ms=2)
        try:
            await scorer.start()
            asyncio.get_running_loop().call_later(3.0, release.set)  # the disk catches up after a while
            summary = await Controller(
                cfg, link=plc, source=sim_source(cfg, pool, items=3, rate_hz=5), scorer=scorer, settle=False
            ).run()
        finally:
            release.set()
            await scorer.close()
        assert summary.audit_ok
        assert summary.delivery.get("undelivered", 0) >= 1
        with AuditLog(cfg.audit.path) as log:
            held = [r for r in log.rows() if r.delivery == "undelivered"]
        assert held and all(r.plc_status.startswith("not sent: durability lag") for r in held)
        assert not plc.model.decisions.keys() & {plc_item_id(r.item_id) for r in held}

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_a_steady_stream_of_commits_still_lets_the_wal_start_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint beside a writer that never pauses never copies everything; the flusher holds the
    writer for the short tail now and then (on a quick disk), so the WAL starts over and stays bounded."""
    monkeypatch.setattr(audit_module, "_WAL_RESET_FRAMES", 50)
    monkeypatch.setattr(audit_module.os, "fdatasync", lambda fd: None)  # a quick disk
    db = tmp_path / "audit.sqlite"
    wal = Path(f"{db}-wal")
    with AuditWriter(db, sync_interval_s=0.005, checkpoint_interval_s=0.02) as writer:
        for n in range(1, 1501):
            assert writer.submit(record(n, "manual")).result(timeout=30)
        size = wal.stat().st_size
    # Without the WAL starting over, 1500 commits of about five pages each (the row, its indexes and
    # the row count) would make it about 30 MB; a loaded machine delays the reset now and then.
    assert size < 12 << 20, f"WAL grew to {size >> 20} MB"
    with AuditLog(db) as log:
        assert log.count() == 1500
