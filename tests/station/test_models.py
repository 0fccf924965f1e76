"""The models page: candidates evaluated on the operators' labels; promotion by engineers only, safe ones only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from sorter.model import default_model_dir, load_model

from .conftest import csrf_of, login, make_station
from .test_export import _play_operator


def _model_line(line, tmp_path):
    """The sample line with line.model a symlink, a good and a bad candidate, and a labelled queue."""
    models = line.root / "models"
    models.mkdir()
    shutil.copytree(default_model_dir(), models / "v1")
    (models / "current").symlink_to("v1")
    text = line.config.read_text().replace("[line]\n", '[line]\nmodel = "models/current"\n')
    line.config.write_text(text)
    cands = tmp_path / "candidates"
    cands.mkdir()
    shutil.copytree(default_model_dir(), cands / "good")
    shutil.copytree(default_model_dir(), cands / "reckless")
    m = json.loads((cands / "reckless" / "manifest.json").read_text())
    # a policy that sends anything faintly lead-like to lead_acid
    m["policy"].update(lead_acid_min=1e-7, not_lead_max=0.0, lead_acid_min_missing={})
    (cands / "reckless" / "manifest.json").write_text(json.dumps(m))
    load_model(cands / "reckless")  # still a loadable model: only the table can stop it
    return models, cands


@pytest.fixture
def models_station(line, tmp_path):
    models, cands = _model_line(line, tmp_path)
    flag = tmp_path / "hup"
    # a stand-in for `sorter run`: it reports the SIGHUP it receives
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import signal, sys, time, pathlib\n"
                f"signal.signal(signal.SIGHUP,\n"
                f"              lambda *a: (pathlib.Path({str(flag)!r}).write_text('hup'), sys.exit(0)))\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    pidfile = tmp_path / "run.pid"
    pidfile.write_text(str(proc.pid))
    app = make_station(line, spot_check=0.3, candidates_dir=str(cands), controller_pidfile=str(pidfile))
    assert _play_operator(app) >= 20
    with TestClient(app) as client:
        yield app, client, models, flag
    proc.kill()
    proc.wait()


def test_operator_sees_the_tables_but_cannot_promote(models_station):
    app, client, models, _ = models_station
    login(client, "ana")
    token = csrf_of(client.get("/models").text)
    r = client.post("/models/evaluate", data={"candidate": "good", "csrf": token})
    assert r.status_code == 200
    assert "passes the safety table" in r.text and "Only an engineer can promote" in r.text
    r = client.post("/models/promote", data={"candidate": "good", "csrf": token})
    assert r.status_code == 403
    assert os.readlink(models / "current") == "v1"


def test_engineer_cannot_promote_a_candidate_that_fails_the_table(models_station):
    app, client, models, flag = models_station
    login(client, "eng")
    token = csrf_of(client.get("/models").text)
    page = client.post("/models/evaluate", data={"candidate": "reckless", "csrf": token}).text
    assert "fails:" in page and "would go to the lead_acid lane" in page
    r = client.post("/models/promote", data={"candidate": "reckless", "csrf": token})
    assert r.status_code == 409 and "fails the safety table" in r.text
    assert os.readlink(models / "current") == "v1"
    assert not flag.exists()
    assert app.state.station.store.promotions()[0]["outcome"].startswith("refused")


def test_engineer_promotes_a_safe_candidate_atomically_and_the_controller_is_told(models_station):
    app, client, models, flag = models_station
    login(client, "eng")
    token = csrf_of(client.get("/models").text)
    r = client.post("/models/promote", data={"candidate": "good", "csrf": token})
    assert r.status_code == 200 and "promoted good" in r.text
    target = os.readlink(models / "current")
    assert target.startswith("current.sorter-default_") and (models / target).is_dir()
    load_model(models / "current")  # the link points at a verified, complete model
    for _ in range(100):
        if flag.exists():
            break
        time.sleep(0.05)
    assert flag.read_text() == "hup"
    assert "promoted to" in app.state.station.store.promotions()[0]["outcome"]


def test_promotion_needs_line_model_to_be_a_symlink(line, tmp_path):
    from sorter.station.promotion import PromotionError, promote

    real = tmp_path / "model"
    shutil.copytree(default_model_dir(), real)
    with pytest.raises(PromotionError, match="not a symbolic link"):
        promote(Path(default_model_dir()), real)
    with pytest.raises(PromotionError, match="line.model is empty"):
        promote(Path(default_model_dir()), "")


def test_promote_without_csrf_is_refused(models_station):
    _, client, models, _ = models_station
    login(client, "eng")
    assert client.post("/models/promote", data={"candidate": "good"}).status_code == 403
    assert os.readlink(models / "current") == "v1"
