"""Fixtures of the station's tests: a recorded sample line (simulated log + audit log), a station on it."""

from __future__ import annotations

import re
import shutil
import warnings

import pytest

pytest.importorskip("starlette")
pytest.importorskip("argon2")

with warnings.catch_warnings():  # starlette suggests httpx2, not yet released everywhere
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from sorter.station.app import create_app  # noqa: E402
from sorter.station.auth import hash_password  # noqa: E402
from sorter.station.cli import settings_from_config  # noqa: E402
from sorter.station.sample import make_sample_line  # noqa: E402

PASSWORDS = {"ana": "ana's long password", "eng": "engineer's long password"}


@pytest.fixture(scope="session")
def sample_line_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("line")
    # 240 items over the last 40 minutes: the line page has an hour to show
    return make_sample_line(root / "line", items=240, base_items=80, seed=3, rate_hz=0.1)


@pytest.fixture
def line(sample_line_master, tmp_path):
    """A private copy of the sample line (tests may change its log or audit)."""
    dst = tmp_path / "line"
    shutil.copytree(sample_line_master.root, dst, symlinks=True)
    return type(sample_line_master)(dst, dst / "log", dst / "audit.sqlite", dst / "line.toml", sample_line_master.items)


def make_station(line, *, spot_check=0.25, watch=False, overrides=(), **kw):
    settings = settings_from_config(str(line.config), list(overrides), None, spot_check=spot_check, **kw)
    app = create_app(settings, watch=watch)
    store = app.state.station.store
    store.set_user("ana", "operator", hash_password(PASSWORDS["ana"]))
    store.set_user("eng", "engineer", hash_password(PASSWORDS["eng"]))
    return app


def csrf_of(html: str) -> str:
    m = re.search(r'data-csrf="([^"]+)"', html) or re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(client, user="ana", password=None):
    tok = csrf_of(client.get("/login").text)
    r = client.post(
        "/login",
        data={"user": user, "password": password or PASSWORDS[user], "csrf": tok, "next": "/review"},
        follow_redirects=False,
    )
    return r


@pytest.fixture
def station(line):
    app = make_station(line)
    with TestClient(app) as client:
        yield app, client


@pytest.fixture
def logged_in(station):
    app, client = station
    assert login(client).status_code == 303
    return app, client, csrf_of(client.get("/review").text)
