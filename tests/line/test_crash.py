"""Crash safety with real process kills: kill -9 the controller at random points, restart it;
every item of the source is decided and in the audit log exactly once, and nothing the audit
log held at a kill is lost or changed.

A few iterations run here; ``python -m benchmarks.fault_injection`` runs more.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sorter.line.sources import generate_pool
from sorter.logformat import LogWriter
from sorter.simulate.run import SimConfig

pytestmark = pytest.mark.e2e  # sorter run in subprocesses, killed with kill -9

N_ITEMS = 120


def audit_snapshot(path: Path) -> dict[str, tuple[str, str]]:
    """item_id -> (lane, delivery) as the database holds it (read-only)."""
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r[0]: (r[1], r[2]) for r in con.execute("SELECT item_id, lane, delivery FROM decisions")}
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        con.close()


def write_config(tmp: Path, log_dir: Path) -> Path:
    cfg = tmp / "line.toml"
    cfg.write_text(f"""
[line]
source = "log"
log_dir = "{log_dir}"
follow = false
deadline_from = "arrival"
belt_speed_m_s = 0.03
scorer_pool = "thread"
scorer_workers = 1
[plc]
kind = "memory"
[audit]
path = "{tmp / "audit.sqlite"}"
[metrics]
enabled = false
[status]
enabled = false
""")
    return cfg


@pytest.fixture(scope="module")
def recorded_log(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crash") / "log"
    pool = generate_pool(SimConfig(items=40, seed=5, mix="recycler"), 40, workers=1)
    with LogWriter(d, meta=SimConfig().meta()) as w:
        for k in range(N_ITEMS):
            s = pool[k % len(pool)]
            w.append(dataclasses.replace(s.record, item_id=f"{k + 1:08d}", t=time.time()), s.images)
    return d


def _start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sorter", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill_cycles(
    cfg: Path, audit: Path, rng: random.Random, cycles: int, *, min_new: int, max_wait_s: float
) -> tuple[int, dict[str, tuple[str, str]]]:
    """Start the controller, let it record ``min_new`` more items, kill -9 it at a random moment;
    ``cycles`` times. After each kill, nothing the audit log held before may be lost or changed."""
    seen: dict[str, tuple[str, str]] = {}
    kills = 0
    for _ in range(cycles):
        proc = _start(cfg)
        before = len(audit_snapshot(audit))
        deadline = time.monotonic() + 60
        while len(audit_snapshot(audit)) < before + min_new and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_wait_s))
        if proc.poll() is not None:
            break  # it finished the whole log before the kill
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        snap = audit_snapshot(audit)
        for item_id, (lane, _) in seen.items():
            assert item_id in snap, f"{item_id} was in the audit log before a kill and is gone"
            assert snap[item_id][0] == lane, f"{item_id} changed lane across a restart"
        seen = snap
    return kills, seen


def finish_and_check(cfg: Path, audit: Path, seen: dict[str, tuple[str, str]]) -> None:
    proc = _start(cfg)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()[-2000:]
    final = audit_snapshot(audit)
    assert len(final) == N_ITEMS, f"{len(final)} audit rows for {N_ITEMS} items"
    assert set(final) == {f"{k + 1:08d}" for k in range(N_ITEMS)}
    for item_id, (lane, _) in seen.items():
        assert final[item_id][0] == lane
    assert all(delivery != "pending" for _, delivery in final.values())


def test_kill_9_at_random_points_loses_nothing_and_decides_everything_once(tmp_path, recorded_log):
    cfg = write_config(tmp_path, recorded_log)
    audit = tmp_path / "audit.sqlite"
    kills, seen = kill_cycles(cfg, audit, random.Random(1234), 3, min_new=5, max_wait_s=0.6)
    assert kills >= 1
    finish_and_check(cfg, audit, seen)


@pytest.mark.slow
def test_many_kills_in_a_row(tmp_path, recorded_log):
    """The same guarantee with more kills (slow job)."""
    cfg = write_config(tmp_path, recorded_log)
    audit = tmp_path / "audit.sqlite"
    kills, seen = kill_cycles(cfg, audit, random.Random(99), 6, min_new=2, max_wait_s=0.3)
    assert kills >= 2
    finish_and_check(cfg, audit, seen)
