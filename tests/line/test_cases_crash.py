"""kill -9 while a case is open (issue 15): after each restart the open case resumes exactly, so
nothing is lost and the case is never over-filled: every case's items are at positions 1..n with
no gap or repeat, each case's summed bound stays within the limit, and an item counted in the open
case at a kill is still counted after it.  Copied from ``test_crash.py``'s kill cycles.  The same
with a station of three case positions (``[cases] positions = 3``): several cases open at a kill."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from sorter.line.audit.journal import journal_dir_for, replay
from sorter.line.sources import generate_pool
from sorter.logformat import LogWriter
from sorter.simulate.run import SimConfig

pytestmark = pytest.mark.e2e  # sorter run in subprocesses, killed with kill -9

N_ITEMS = 120
PACE = ("--replay-rate", "1")  # at the recorded 15 items/s: cases open and close while the kills come
LIMIT_WH = 1500.0


def case_snapshot(path: Path) -> tuple[int, dict[str, list[tuple[int, float, str]]], set[str]]:
    """(rows, case_id -> [(seq, bound, item)], the open cases at the end of the events) read-only."""
    if not path.exists():
        return 0, {}, set()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        cases: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
        for case_id, seq, upper, item in con.execute(
            "SELECT case_id, case_seq, energy_wh_upper, item_id FROM decisions "
            "WHERE case_status = 'assigned' ORDER BY case_seq"
        ):
            cases[case_id].append((seq, upper, item))
        last = con.execute(
            "SELECT kind, detail FROM events WHERE kind LIKE 'case_%' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    except sqlite3.OperationalError:  # schema not created yet
        return 0, {}, set()
    finally:
        con.close()
    import json

    if not last:
        return rows, dict(cases), set()
    detail = json.loads(last[1])
    if "positions" in detail:  # several positions: every event says where each open case stands
        return rows, dict(cases), {e["case_id"] for e in detail["positions"] if e["case_id"]}
    return rows, dict(cases), {detail["case_id"]} if last[0] == "case_open" else set()


def check(cases: dict[str, list[tuple[int, float, str]]]) -> None:
    for case_id, items in cases.items():
        assert [s for s, _, _ in items] == list(range(1, len(items) + 1)), f"{case_id}: positions {items}"
        assert math.fsum(u for _, u, _ in items) <= LIMIT_WH, f"{case_id} over the limit"


@pytest.fixture(scope="module")
def li_log(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("casecrash") / "log"
    pool = generate_pool(SimConfig(items=40, seed=11, mix="balanced"), 40, workers=1)
    t0 = time.time()
    with LogWriter(d, meta=SimConfig().meta()) as w:
        for k in range(N_ITEMS):
            s = pool[k % len(pool)]
            w.append(dataclasses.replace(s.record, item_id=f"{k + 1:08d}", t=t0 + k / 15), s.images)
    return d


@pytest.mark.parametrize("positions", [1, 3])
def test_kill_9_while_a_case_is_open_loses_nothing_and_never_overfills(
    tmp_path: Path, li_log: Path, positions: int
) -> None:
    cfg = tmp_path / "line.toml"
    audit = tmp_path / "audit.sqlite"
    cfg.write_text(f"""
[line]
source = "log"
log_dir = "{li_log}"
follow = false
deadline_from = "arrival"
belt_speed_m_s = 0.03
scorer_pool = "thread"
scorer_workers = 1
[plc]
kind = "memory"
[audit]
path = "{audit}"
[cases]
enabled = true
lane = "li_ion"
limit_wh = {LIMIT_WH}
positions = {positions}
[metrics]
enabled = false
[status]
enabled = false
""")
    rng = random.Random(4321)
    kills_with_open_case = several_open = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sorter", "run", "--config", str(cfg), *PACE],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        before = case_snapshot(audit)[0]
        deadline = time.monotonic() + 60
        while case_snapshot(audit)[0] < before + 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # What the killed run had sent is in the audit log or in its crash journal on tmpfs: write the
        # journal in, as the restart's first step does, and look at what the restart will see.
        replay(audit, journal_dir_for(audit, "auto"))
        _, at_kill, open_cases = case_snapshot(audit)
        check(at_kill)
        # Restart and finish; the open cases' items at the kill are all still counted after it.
        if any(at_kill.get(c) for c in open_cases):
            kills_with_open_case += 1
            several_open += sum(1 for c in open_cases if at_kill.get(c)) > 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "sorter", "run", "--config", str(cfg), *PACE],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(rng.uniform(1.0, 3.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        replay(audit, journal_dir_for(audit, "auto"))
        _, after, _ = case_snapshot(audit)
        check(after)
        for case_id, items in at_kill.items():
            assert after[case_id][: len(items)] == items, f"{case_id} changed across a restart"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sorter", "run", "--config", str(cfg), *PACE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out.decode()[-1500:] + err.decode()[-1500:]
    rows, final, _ = case_snapshot(audit)
    assert rows == N_ITEMS
    check(final)
    assert kills_with_open_case >= 1, "no kill hit an open case with items; the test proved nothing"
    if positions > 1:
        assert several_open >= 1, "no kill hit several open cases with items"
    # Each case was opened once: a restart never opened a second case for the same placement.
    con = sqlite3.connect(f"file:{audit}?mode=ro", uri=True)
    try:
        opened = [
            r[0] for r in con.execute("SELECT json_extract(detail, '$.case_id') FROM events WHERE kind = 'case_open'")
        ]
    finally:
        con.close()
    assert len(opened) == len(set(opened))
