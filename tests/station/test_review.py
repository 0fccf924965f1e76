"""The review queue: which items wait, verdicts and their history, images served safely."""

from __future__ import annotations

import json
import os
import re
import sqlite3

from sorter.line.audit import AuditLog, AuditRecord
from sorter.station.linedata import spot_checked

from .conftest import make_station


def _audit_rows(line):
    conn = sqlite3.connect(line.audit)
    return conn.execute("SELECT item_id, lane, delivery FROM decisions ORDER BY id").fetchall()


def test_queue_holds_every_item_that_went_to_manual_and_a_spot_check_sample(logged_in, line):
    app, client, _ = logged_in
    store = app.state.station.store
    rows = _audit_rows(line)
    manual = {i for i, lane, d in rows if lane == "manual" or d != "acked"}
    assert manual, "the sample line must send some items to manual"
    queued = {q.item_id: q for q in (store.queue_item(i) for i, _, _ in rows) if q is not None}
    assert manual <= set(queued)
    assert all(queued[i].kind == "manual" for i in manual)
    spot = [i for i in queued if i not in manual]
    assert all(queued[i].kind == "spot" for i in spot)
    others = len(rows) - len(manual)
    assert 0.1 * others < len(spot) < 0.45 * others  # 25 % asked
    salt = store.get_setting("spot_salt")
    assert all(spot_checked(i, 0.25, salt) for i in spot)


def test_pending_items_wait_until_their_delivery_is_known(line):
    with AuditLog(line.audit) as log:
        log.record_decision(
            AuditRecord(
                "P-1",
                None,
                1.7e9,
                1.7e9,
                1.7e9,
                "lead_acid",
                0.99,
                0.0,
                0.01,
                "lead_acid",
                "confident",
                "m",
                4.0,
                90.0,
                "pending",
            )
        )
    app = make_station(line, spot_check=0.0)
    st = app.state.station
    st.watcher.refresh()
    assert st.store.queue_item("P-1") is None
    with AuditLog(line.audit) as log:
        log.record_delivery("P-1", "undelivered")
    st.watcher.refresh()
    assert st.store.queue_item("P-1").kind == "manual"  # the PLC defaulted it to the manual lane


def test_review_page_shows_the_item_and_a_verdict_brings_the_next(logged_in):
    app, client, token = logged_in
    page = client.get("/review").text
    first = re.search(r'data-item-id="([^"]+)"', page).group(1)
    assert f"/image/{first}/material.png" in page and "P(li_ion)" in page and "reason" in page
    r = client.post(
        "/review/verdict",
        data={"item_id": first, "label": "li_ion", "damaged": "yes", "note": "swollen", "csrf": token},
        follow_redirects=False,
    )
    assert r.status_code == 303
    second = re.search(r'data-item-id="([^"]+)"', client.get("/review").text).group(1)
    assert second != first
    v = app.state.station.store.latest_verdict(first)
    assert (v.label, v.damaged, v.note, v.user) == ("li_ion", True, "swollen", "ana")


def test_prefetch_returns_the_item_after_the_cursor(logged_in):
    app, client, _ = logged_in
    store = app.state.station.store
    first = store.next_open(order="belt")
    r = client.get(f"/review/next?order=belt&cursor={first.audit_id}&exclude={first.item_id}")
    nxt = re.search(r'data-item-id="([^"]+)"', r.text).group(1)
    assert nxt == store.next_open(order="belt", after=first.audit_id).item_id != first.item_id


def test_a_correction_is_appended_never_overwritten(logged_in):
    app, client, token = logged_in
    store = app.state.station.store
    item = store.next_open().item_id
    for label in ("lead_acid", "li_ion"):
        r = client.post(
            "/review/verdict",
            data={"item_id": item, "label": label, "csrf": token},
            headers={"accept": "application/json"},
        )
        assert r.json()["ok"]
    hist = store.history(item)
    assert [v.label for v in hist] == ["lead_acid", "li_ion"]
    assert hist[1].corrects == hist[0].id
    page = client.get(f"/review/item/{item}").text
    assert "corrects #" in page and "lead_acid" in page
    assert "xr_al_eq_low_p50" in page  # the measurements


def test_bad_verdicts_are_refused(logged_in):
    app, client, token = logged_in
    item = app.state.station.store.next_open().item_id
    for data in (
        {"item_id": item, "label": "nimh"},
        {"item_id": "not-queued", "label": "li_ion"},
        {"item_id": item, "label": "li_ion", "note": "x" * 600},
    ):
        r = client.post("/review/verdict", data={**data, "csrf": token}, headers={"accept": "application/json"})
        assert r.status_code == 400 and not r.json()["ok"]
    assert app.state.station.store.verdict_count() == 0


def _rewrite_record(line, item_id, **fields):
    path = line.log_dir / "items.jsonl"
    lines = path.read_text().splitlines()
    out = []
    for ln in lines:
        obj = json.loads(ln)
        if obj["item_id"] == item_id:
            obj.update(fields)
        out.append(json.dumps(obj, separators=(",", ":")))
    path.write_text("\n".join(out) + "\n")


def test_image_paths_cannot_leave_the_log_directory(line):
    secret = line.root / "secret.png"
    secret.write_bytes((line.log_dir / "images" / os.listdir(line.log_dir / "images")[0]).read_bytes())
    rows = _audit_rows(line)
    manual = [i for i, lane, d in rows if lane == "manual" or d != "acked"]
    a, b = manual[0], manual[1]
    _rewrite_record(line, a, rgb="../secret.png", xray_low="/etc/passwd")
    (line.log_dir / "images" / "link.png").symlink_to(secret)
    _rewrite_record(line, b, rgb="images/link.png")
    from starlette.testclient import TestClient

    from .conftest import login

    app = make_station(line, spot_check=1.0)
    with TestClient(app) as client:
        login(client)
        good = next(i for i, _, _ in rows if i not in (a, b))
        for url in (
            f"/image/{a}/rgb.png",
            f"/image/{a}/xray_low.png",
            f"/image/{b}/rgb.png",
            "/image/..%2F..%2Fsecret/rgb.png",
            "/image/%2E%2E/rgb.png",
            f"/image/{a}/..%2F..%2Fsecret.png",
            "/static/..%2F..%2F..%2Fsecret.png",
        ):
            r = client.get(url)
            assert r.status_code == 404, url
            assert r.content[:4] != b"\x89PNG", url
        assert client.get(f"/image/{good}/rgb.png").content[:4] == b"\x89PNG"


def test_optional_audit_columns_are_shown_when_present(line):
    conn = sqlite3.connect(line.audit)
    if "novelty" not in {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}:  # an older audit log
        conn.execute("ALTER TABLE decisions ADD COLUMN novelty REAL")
    item = conn.execute("SELECT item_id FROM decisions WHERE lane = 'manual' OR delivery != 'acked'").fetchone()[0]
    conn.execute("UPDATE decisions SET novelty = 0.8125 WHERE item_id = ?", (item,))
    conn.commit()
    conn.close()
    from starlette.testclient import TestClient

    from .conftest import login

    with TestClient(make_station(line)) as client:
        login(client)
        page = client.get(f"/review/item/{item}").text
        assert "novelty" in page and "0.812" in page


def test_without_novelty_column_the_page_says_nothing_of_it(logged_in):
    app, client, _ = logged_in
    item = app.state.station.store.next_open().item_id
    assert "novelty" not in client.get(f"/review/item/{item}").text


def test_the_audit_log_is_opened_read_only(logged_in, line):
    app, client, _ = logged_in
    reader = app.state.station.audit
    import pytest

    from sorter.errors import SorterError

    with pytest.raises(SorterError):
        reader.query("DELETE FROM decisions")
    assert len(_audit_rows(line)) == line.items


def test_status_counts_follow_the_audit_log(logged_in, line):
    app, client, _ = logged_in
    st = app.state.station
    before = client.get("/status.json").json()
    assert before["items_total"] == line.items
    with AuditLog(line.audit) as log:
        for k in range(5):
            log.record_decision(
                AuditRecord(
                    f"N-{k}",
                    None,
                    st.watcher.clock(),
                    st.watcher.clock(),
                    st.watcher.clock(),
                    "li_ion",
                    0.0,
                    1.0,
                    0.0,
                    "li_ion",
                    "confident",
                    "m2",
                    4.0,
                    90.0,
                    "acked",
                )
            )
    st.watcher.refresh()
    after = client.get("/status.json").json()
    assert after["items_total"] == line.items + 5
    assert after["lanes_hour"]["li_ion"] == before["lanes_hour"].get("li_ion", 0) + 5
    assert after["model_in_charge"] == "m2"
    assert "<svg" in after["chart"]
    assert "items/s" in client.get("/status").text


def test_a_pending_decision_is_counted_by_its_final_delivery(logged_in, line):
    app, client, _ = logged_in
    st = app.state.station
    now = st.watcher.clock()
    with AuditLog(line.audit) as log:
        log.record_decision(
            AuditRecord(
                "Q-1", None, now, now, now, "li_ion", 0.0, 1.0, 0.0, "li_ion", "confident", "m", 4.0, 90.0, "pending"
            )
        )
    st.watcher.refresh()
    before = client.get("/status.json").json()["deliveries_hour"]
    assert before.get("pending") == 1 and client.get("/status.json").json()["pending"] == 1
    with AuditLog(line.audit) as log:
        log.record_delivery("Q-1", "late", plc_status="late")
    st.watcher.refresh()
    after = client.get("/status.json").json()
    assert "pending" not in after["deliveries_hour"]
    assert after["deliveries_hour"]["late"] == before.get("late", 0) + 1
    assert any("deadline misses" in a for a in after["alarms"])


def test_plc_link_and_sensor_health_come_from_the_controllers_metrics(line):
    from sorter.line.metrics import LineMetrics
    from sorter.station.app import create_app
    from sorter.station.cli import settings_from_config

    from .browserkit import free_port

    port = free_port()
    metrics = LineMetrics()
    metrics.serve(port, "127.0.0.1")
    try:
        metrics.set_link_state("connected")
        for sensor in ("scale", "xray"):
            metrics.set_sensor_alarm(sensor, "ok")
        settings = settings_from_config(str(line.config), ["metrics.enabled=true", f"metrics.port={port}"], None)
        st = create_app(settings, watch=False).state.station
        snap = st.watcher.refresh()
        assert snap.plc_link == "connected" and snap.sensors == {"scale": "ok", "xray": "ok"}
        assert not any("sensor" in a or "PLC link" in a for a in snap.alarms)
        metrics.set_link_state("faulted")
        metrics.set_sensor_alarm("xray", "stuck")
        snap = st.watcher.refresh()
        assert snap.sensors["xray"] == "stuck"
        assert "PLC link faulted" in snap.alarms
        assert any(a.startswith("sensor xray: stuck") for a in snap.alarms)
    finally:
        metrics.close()
    snap = st.watcher.refresh()
    assert snap.plc_link == "unknown (controller not answering)"


def test_an_image_deleted_by_retention_shows_as_expired(logged_in):
    from sorter.logformat import record_expired

    app, client, _ = logged_in
    page = client.get("/review").text
    first = re.search(r'data-item-id="([^"]+)"', page).group(1)
    st = app.state.station
    rec = st.log.record(first)
    path = st.log.image_path(rec, "rgb")
    record_expired(path.parent, [path.name])
    path.unlink()
    page = client.get("/review").text
    assert "image expired" in page and f"/image/{first}/rgb.png" not in page
    assert f"/image/{first}/xray_low.png" in page  # the others are still shown
    r = client.get(f"/image/{first}/rgb.png")
    assert r.status_code == 404 and "expired" in r.text


def test_the_station_indexes_a_rotated_log_across_rotations(tmp_path):
    from sorter.logformat import LogWriter, segment_file
    from sorter.readings import ItemRecord
    from sorter.station.linedata import LineLog
    from sorter.station.store import StationStore

    log_dir = tmp_path / "log"
    store = StationStore(tmp_path / "station.sqlite")
    idx = LineLog(log_dir, store)
    assert idx.index_new() == 0 and "does not exist" in idx.problem
    with LogWriter(log_dir, rotate_items=4) as w:
        for i in range(10):
            w.append(ItemRecord(item_id=f"R{i}", t=1.7e9 + i, weight_g=10.0 + i))
    assert idx.index_new() == 10
    with open(log_dir / segment_file(3), "ab") as fh:
        fh.write(b'{"item_id":"torn"')  # the recorder died mid-line; it restarts in a new segment
    with LogWriter(log_dir, rotate_items=4) as w:
        for i in range(10, 15):
            w.append(ItemRecord(item_id=f"R{i}", t=1.7e9 + i, weight_g=10.0 + i))
    assert idx.index_new() == 5 and idx.problem is None
    for i in range(15):
        rec = idx.record(f"R{i}")
        assert rec is not None and rec.weight_g == 10.0 + i
    assert idx.record("R12").line_no == 14  # the torn line 11 counts, as every reader counts it
    store.close()


def test_open_cases_are_counted_from_the_line_case_events(line):
    """The line's case station records each case's opening and closing as audit events; the station
    shows how many cases stand open (here C-2: C-1 was closed full)."""
    import json
    import time

    conn = sqlite3.connect(line.audit)
    for kind, case in (("case_open", "C-1"), ("case_close", "C-1"), ("case_open", "C-2")):
        conn.execute(
            "INSERT INTO events (t, kind, detail) VALUES (?, ?, ?)", (time.time(), kind, json.dumps({"case_id": case}))
        )
    conn.commit()
    conn.close()
    app = make_station(line)
    assert app.state.station.watcher.refresh().open_cases == 1
