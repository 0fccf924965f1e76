"""Full disks (issue 19): free-space alarms, and the line on an audit disk that fills up and frees again.

The disk-full tests run on a real, size-limited file system: a 2 MB tmpfs mounted for the test (root only;
skipped with the reason otherwise), so SQLite meets the real ENOSPC / SQLITE_FULL, not a simulated error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from sorter.errors import ConfigError
from sorter.line.audit import AuditError, AuditLog, AuditRecord, AuditWriter
from sorter.line.config import load_config
from sorter.line.controller import Controller, ScoringPool
from sorter.line.disks import DiskSettings, DiskWatch, line_disks, settings_of
from sorter.line.plc import MemoryPlc
from sorter.line.sources import BeltTiming, SimulatedSource, generate_pool
from sorter.simulate.run import SimConfig

WAIT_S = 60.0


def statvfs_of(free_mb: float, total_mb: float = 1000.0):
    return lambda _path: SimpleNamespace(
        f_bavail=int(free_mb * 1e6 / 4096), f_blocks=int(total_mb * 1e6 / 4096), f_frsize=4096
    )


def test_levels_follow_the_thresholds_and_each_change_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = DiskSettings(warn_free_pct=10, alarm_free_pct=5, warn_free_mb=30, alarm_free_mb=10)
    registry = CollectorRegistry()
    free = {"mb": 500.0}
    failing = {"now": False}
    watch = DiskWatch(
        {"audit": tmp_path},
        settings,
        registry=registry,
        audit_failing=lambda: failing["now"],
        statvfs=lambda p: statvfs_of(free["mb"])(p),
    )
    caplog.set_level(logging.INFO, logger="sorter.line.disks")
    seen = []
    for mb in (500, 90, 80, 40, 20, 5, 5, 500):
        free["mb"] = mb
        seen.append(watch.check()["audit"].level)
    assert seen == ["ok", "warn", "warn", "alarm", "alarm", "alarm", "alarm", "ok"]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3  # warn, alarm, back to normal: one line per change, not per check
    assert msgs[1].startswith("ALARM disk audit") and "free space now" in msgs[1]
    assert registry.get_sample_value("sorter_line_disk_level", {"disk": "audit"}) == 0
    assert registry.get_sample_value("sorter_line_disk_free_bytes", {"disk": "audit"}) == pytest.approx(500e6, rel=1e-3)
    failing["now"] = True
    watch.check()
    assert registry.get_sample_value("sorter_line_audit_writable") == 0


def test_settings_refuse_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="disks.alarm_free_pct"):
        DiskSettings(alarm_free_pct=-1)
    with pytest.raises(ConfigError, match="not be above the warn"):
        DiskSettings(warn_free_pct=5, alarm_free_pct=10)
    with pytest.raises(ConfigError, match="unknown key.*free_gb"):
        DiskSettings.from_mapping({"free_gb": 3})
    assert DiskSettings.from_mapping({"warn_free_mb": 100, "alarm_free_mb": 50}).warn_free_mb == 100


def test_the_line_watches_its_log_and_audit_disks(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        env={},
        overrides=[
            "line.source=log",
            f"line.log_dir={tmp_path / 'log'}",
            f"audit.path={tmp_path / 'a' / 'audit.sqlite'}",
        ],
        validate=False,
    )
    assert line_disks(cfg) == {"log": tmp_path / "log", "audit": tmp_path / "a"}
    assert settings_of(cfg) == DiskSettings()  # no [disks] table yet: the defaults
    # a directory not created yet is looked up through its parent
    assert DiskWatch(line_disks(cfg)).check()["log"].free_bytes > 0


# ------------------------------------------------------------------------------------ a real full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs; skipped where mounting is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MB tmpfs for the disk-full test needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte with one file; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):  # big blocks, then the tail byte by byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def rec(k: int) -> AuditRecord:
    t = time.time()
    return AuditRecord(
        f"it-{k:06d}", k + 1, t, t, t, "li_ion", 0.0, 1.0, 0.0, "li_ion", "confident", "m1", 4.0, 90.0, "pending"
    )


def test_the_audit_writer_survives_a_full_disk_and_resumes_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sorter.line.audit")
    path = small_disk / "audit.sqlite"
    with AuditWriter(path) as writer:
        assert writer.submit(rec(0)).result(timeout=WAIT_S)
        filler = fill(small_disk)
        failed: AuditError | None = None
        k = 1
        while failed is None and k < 20_000:  # rows fit in the WAL's free pages for a while
            try:
                writer.submit(rec(k)).result(timeout=WAIT_S)
            except AuditError as err:
                failed = err
            k += 1
        assert failed is not None and "free disk space" in str(failed)
        assert writer.failing
        alarms = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALARM")]
        assert len(alarms) == 1 and "the disk is full" in alarms[0]
        for j in range(5):  # still full: refused again, no crash, no second alarm
            with pytest.raises(AuditError):
                writer.submit(rec(100_000 + j)).result(timeout=WAIT_S)
        filler.unlink()
        assert writer.submit(rec(200_000)).result(timeout=WAIT_S)  # resumes by itself
        assert not writer.failing
        assert any("writes resumed" in r.getMessage() for r in caplog.records)
    with AuditLog(path) as log:
        ids = {r.item_id for r in log.rows()}
    assert "it-200000" in ids and not any(i.startswith("it-1000") for i in ids)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_line_sends_nothing_it_could_not_record_and_recovers_without_a_restart(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim_cfg = SimConfig(items=20, seed=19, mix="balanced")
    pool = generate_pool(sim_cfg, 20, workers=1)
    cfg = load_config(
        None,
        env={},
        overrides=[
            "line.source=simulated",
            f"audit.path={small_disk / 'audit.sqlite'}",
            "line.belt_speed_m_s=0.3",
            "status.enabled=false",
        ],
    )
    plc = MemoryPlc()
    n_items = 400
    source = SimulatedSource(sim_cfg, BeltTiming(cfg.line.deadline_ms / 1000), items=n_items, rate_hz=40.0, pool=pool)
    caplog.set_level(logging.WARNING)
    phases: dict[str, int] = {}

    async def run() -> object:
        scorer = ScoringPool(None, workers=1, kind="thread", max_batch=16)
        await scorer.start()
        controller = Controller(cfg, link=plc, source=source, scorer=scorer)
        task = asyncio.create_task(controller.run())

        async def until(pred, what: str) -> None:
            deadline = time.monotonic() + WAIT_S
            while not pred():
                if task.done() or time.monotonic() > deadline:
                    raise AssertionError(f"the run ended or timed out before {what}")
                await asyncio.sleep(0.01)

        await until(lambda: controller._stats.items >= 20, "20 items")
        filler = await asyncio.to_thread(fill, small_disk)
        phases["full_at"] = controller._stats.items
        await until(lambda: controller._stats.unrecorded >= 20, "20 decisions refused by the full disk")
        filler.unlink()
        phases["freed_at"] = controller._stats.items
        summary = await task
        await scorer.close()
        return summary

    summary = asyncio.run(run())
    assert summary.error is None, summary.error
    # nothing crashed: every item went through the controller, recorded and counted, or refused unrecorded
    assert summary.items + summary.unrecorded == n_items
    assert summary.unrecorded >= 20
    assert summary.audit_ok  # one row for every item counted
    with AuditLog(cfg.audit.path) as log:
        rows = {r.item_id: r for r in log.rows()}
    sent = plc.model.decisions
    # no decision reached the PLC without its committed row
    for plc_id in sent:
        assert f"{plc_id:08d}" in rows
    # and the line came back by itself: decisions recorded and acked after the space returned
    later = [r for r in rows.values() if r.source_line is None and int(r.item_id) > phases["freed_at"] + 5]
    assert any(r.delivery == "acked" for r in later)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("ALARM audit log") and "the disk is full" in m for m in msgs) >= 1
    assert any("writes resumed" in m for m in msgs)
    # one ERROR for the outage's refused decisions, not one an item (a full disk must not flood the log)
    refused = [
        r
        for r in caplog.records
        if "audit write failed, decision not sent" in r.getMessage() and r.levelno >= logging.ERROR
    ]
    assert 1 <= len(refused) < summary.unrecorded
    assert any("audit writes resumed: decisions are sent again" in m for m in msgs)
