"""Accounts and sessions: what keeps the station's pages and verdicts to the people allowed."""

from __future__ import annotations

import io
import sqlite3

import pytest

from sorter.cli import main
from sorter.station.auth import LoginThrottle, hash_password
from sorter.station.store import StationError, StationStore

from .conftest import PASSWORDS, csrf_of, login


@pytest.mark.parametrize(
    "path", ["/review", "/status", "/models", "/status.json", "/review/next", "/image/00000001/rgb.png"]
)
def test_no_session_is_redirected_to_login(station, path):
    _, client = station
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


def test_no_session_cannot_post_a_verdict(station):
    app, client = station
    r = client.post("/review/verdict", data={"item_id": "00000001", "label": "li_ion"}, follow_redirects=False)
    assert r.status_code == 401
    assert app.state.station.store.verdict_count() == 0


def test_login_sets_a_httponly_samesite_cookie_and_a_new_session(station):
    _, client = station
    client.get("/login")
    before = client.cookies.get("sorter_station")
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.cookies.get("sorter_station") != before
    assert client.get("/review").status_code == 200


def test_login_without_csrf_token_is_refused(station):
    _, client = station
    client.get("/login")
    r = client.post("/login", data={"user": "ana", "password": PASSWORDS["ana"]}, follow_redirects=False)
    assert r.status_code == 403


def test_verdict_without_csrf_token_is_refused(logged_in):
    app, client, token = logged_in
    item = app.state.station.store.next_open().item_id
    for data in ({"item_id": item, "label": "li_ion"}, {"item_id": item, "label": "li_ion", "csrf": "x" * 43}):
        r = client.post("/review/verdict", data=data, headers={"accept": "application/json"})
        assert r.status_code == 403
    assert app.state.station.store.verdict_count() == 0
    r = client.post(
        "/review/verdict",
        data={"item_id": item, "label": "li_ion", "csrf": token},
        headers={"accept": "application/json"},
    )
    assert r.status_code == 200 and r.json()["ok"]


def test_five_wrong_passwords_slow_down_the_next_attempt(station):
    _, client = station
    for _ in range(5):
        assert login(client, "ana", "wrong password!").status_code == 401
    r = login(client, "ana")  # even the right password waits now
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert client.get("/review", follow_redirects=False).status_code == 303


def test_throttle_forgets_after_the_window_and_a_success_clears_the_user():
    now = [1000.0]
    t = LoginThrottle(clock=lambda: now[0])
    for _ in range(4):
        t.failed("ana", "10.0.0.1")
    assert t.retry_after("ana", "10.0.0.1") == 0.0
    t.failed("ana", "10.0.0.1")
    assert t.retry_after("ana", "10.0.0.1") == 30.0
    t.failed("ana", "10.0.0.1")
    assert t.retry_after("ana", "10.0.0.2") == 60.0  # the name is throttled from any address
    now[0] += 2000
    assert t.retry_after("ana", "10.0.0.1") == 0.0


def test_wrong_user_and_wrong_password_look_the_same(station):
    _, client = station
    a = login(client, "nobody", "some password here")
    b = login(client, "ana", "some password here")
    assert a.status_code == b.status_code == 401
    assert "Wrong user name or password" in a.text and "Wrong user name or password" in b.text


def test_login_redirect_stays_on_this_site(station):
    _, client = station
    tok = csrf_of(client.get("/login").text)
    r = client.post(
        "/login",
        data={"user": "ana", "password": PASSWORDS["ana"], "csrf": tok, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/review"


def test_passwords_are_stored_as_argon2id_hashes(station):
    app, _ = station
    user = app.state.station.store.user("ana")
    assert user.pw_hash.startswith("$argon2id$")
    assert PASSWORDS["ana"] not in user.pw_hash
    with pytest.raises(StationError, match="at least 10"):
        hash_password("short")


def test_pages_carry_security_headers(logged_in):
    _, client, _ = logged_in
    r = client.get("/review")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_logout_ends_the_session(logged_in):
    _, client, token = logged_in
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    assert client.get("/review", follow_redirects=False).status_code == 303


def test_add_user_command(line, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert (
        main(["station", "--config", str(line.config), "add-user", "bo", "--role", "engineer", "--password-stdin"]) == 0
    )
    assert "added engineer bo" in capsys.readouterr().out
    store = StationStore(line.root / "station.sqlite")
    assert store.user("bo").role == "engineer"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["station", "--config", str(line.config), "add-user", "cy", "--password-stdin"]) == 2
    assert "at least 10" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["station", "add-user", "bad name!", "--config", str(line.config), "--password-stdin"]) == 2
    assert store.user("cy") is None


def test_station_refuses_a_plain_http_network_address(line, capsys):
    assert main(["station", "--config", str(line.config), "--host", "0.0.0.0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_a_removed_user_loses_the_session(logged_in):
    app, client, _ = logged_in
    conn = sqlite3.connect(app.state.station.store.path)
    conn.execute("DELETE FROM users WHERE name = 'ana'")
    conn.commit()
    assert client.get("/review", follow_redirects=False).status_code == 303
