"""Promotion against the real controller: `sorter run` follows a log, the station promotes, the line swaps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from sorter.model import default_model_dir

from .conftest import csrf_of, login, make_station
from .test_export import _play_operator


def _rows(audit, where="1"):
    if not audit.exists():
        return []
    conn = sqlite3.connect(f"file:{audit}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT item_id, model_id FROM decisions WHERE {where} ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _wait(cond, timeout_s, what):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.e2e
def test_engineer_promotion_reaches_the_running_controller(line, tmp_path):
    root = line.root
    models = root / "models"
    models.mkdir()
    shutil.copytree(default_model_dir(), models / "v1")
    (models / "current").symlink_to("v1")
    cands = tmp_path / "candidates"
    shutil.copytree(default_model_dir(), cands / "renamed")
    man = json.loads((cands / "renamed" / "manifest.json").read_text())
    man["name"] = "renamed"  # the same classifier under another name: another model id
    (cands / "renamed" / "manifest.json").write_text(json.dumps(man))
    audit = root / "line-audit.sqlite"
    (root / "run.toml").write_text(
        '[line]\nname = "sample"\nsource = "log"\nlog_dir = "log"\nfollow = true\ndeadline_from = "arrival"\n'
        'model = "models/current"\nscorer_workers = 1\n\n[plc]\nkind = "memory"\n\n'
        '[audit]\npath = "line-audit.sqlite"\n\n[status]\nenabled = false\n'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sorter", "run", "--config", str(root / "run.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: len(_rows(audit)) == line.items, 180, "the controller to decide the log")
        assert len({m for _, m in _rows(audit)}) == 1
        (tmp_path / "run.pid").write_text(str(proc.pid))
        line.config.write_text((root / "run.toml").read_text())  # the station reads the same line.toml
        app = make_station(
            line, spot_check=0.3, candidates_dir=str(cands), controller_pidfile=str(tmp_path / "run.pid")
        )
        assert _play_operator(app) >= 20
        with TestClient(app) as client:
            login(client, "eng")
            token = csrf_of(client.get("/models").text)
            r = client.post("/models/promote", data={"candidate": "renamed", "csrf": token})
            assert r.status_code == 200 and "sent SIGHUP" in r.text
        # new items on the belt: decided by the promoted model once the controller has swapped
        items = line.log_dir / "items.jsonl"
        base = [json.loads(x) for x in items.read_text().splitlines()[:40]]
        deadline = time.monotonic() + 120
        k = 0
        while time.monotonic() < deadline and not _rows(audit, "model_id LIKE 'renamed@%'"):
            with open(items, "a") as fh:
                for obj in base[k % 40 : k % 40 + 5]:
                    fh.write(json.dumps({**obj, "item_id": f"new-{k}-{obj['item_id']}", "t": time.time()}) + "\n")
            k += 5
            time.sleep(0.5)
        ids = [m for _, m in _rows(audit)]
        first_new = next(i for i, m in enumerate(ids) if m.startswith("renamed@"))
        assert all(m.startswith("renamed@") for m in ids[first_new:])  # one switch-over point
        assert all(not m.startswith("renamed@") for m in ids[:first_new])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
