"""The station's command line, and inputs from the outside world (hypothesis)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorter.errors import SorterError
from sorter.station.app import _safe_next
from sorter.station.export import parse_since
from sorter.station.linedata import spot_checked

from .browserkit import free_port


@pytest.mark.e2e
def test_sorter_station_serves_the_login_page_on_loopback(line):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sorter", "station", "--config", str(line.config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        r = None
        for _ in range(300):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/review", timeout=2, follow_redirects=True)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r is not None, "the station did not start"
        assert r.status_code == 200 and "Log in" in r.text  # redirected to the login page
        assert "server" not in r.headers  # no server banner
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "no users yet" in err and f"http://127.0.0.1:{port}/" in err


def test_sample_command_writes_a_line_the_station_reads(tmp_path, capsys):
    from sorter.cli import main
    from sorter.station.app import create_app
    from sorter.station.cli import settings_from_config

    out = tmp_path / "sample"
    assert main(["station", "sample", "--out", str(out), "--items", "30", "--line", "a"]) == 0
    assert "sorter station --config" in capsys.readouterr().out
    st = create_app(settings_from_config(str(out / "line.toml"), [], None, spot_check=1.0), watch=False).state.station
    snap = st.watcher.refresh()
    assert snap.items_total == 30 and st.store.queue_counts()["total"] == 30
    assert st.log.record("00000030") is not None
    assert main(["station", "sample", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


@given(st.text(max_size=80))
def test_login_redirect_target_is_always_a_local_path(target):
    out = _safe_next(target)
    assert out.startswith("/") and not out.startswith("//") and "\\" not in out


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_since_is_a_time_or_a_clear_error(text):
    try:
        v = parse_since(text, now=1.8e9)
    except SorterError as err:
        assert "--since" in str(err)
    else:
        assert v is None or isinstance(v, float)


def test_spot_check_draw_is_fixed_per_item_and_near_the_share():
    ids = [f"{i:08d}" for i in range(4000)]
    drawn = [i for i in ids if spot_checked(i, 0.1, "salt")]
    assert 300 < len(drawn) < 500
    assert drawn == [i for i in ids if spot_checked(i, 0.1, "salt")]
    assert drawn != [i for i in ids if spot_checked(i, 0.1, "other salt")]
    assert not any(spot_checked(i, 0.0, "salt") for i in ids[:100])
