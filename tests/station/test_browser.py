"""The station as a person uses it: a real headless Chromium on the real pages.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` Python package
(no browser download: it drives the OS's Chromium through ``executable_path``).  Skipped
when either is missing, unless ``SORTER_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which
turns a missing browser into a failure.  ``SORTER_SCREENSHOTS=DIR`` saves a screenshot of
each page there (the README's screenshots are made this way).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from sorter.cli import main
from sorter.line.audit import AuditLog, AuditRecord
from sorter.logformat import iter_log

from .browserkit import browser, browser_login, chromium_path, serve, verdict_by_key
from .conftest import PASSWORDS, make_station
from .test_models import _model_line

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

if chromium_path() is None or not __import__("importlib").util.find_spec("playwright"):
    if os.environ.get("SORTER_REQUIRE_BROWSER") == "1":
        raise RuntimeError(
            "SORTER_REQUIRE_BROWSER=1 but Chromium or playwright is missing: "
            "apt-get install chromium chromium-driver; pip install playwright"
        )
    pytest.skip("no Chromium or playwright (apt-get install chromium; pip install playwright)", allow_module_level=True)

KEYS = {"lead_acid": "l", "li_ion": "i", "other": "o"}


def _shot(page, name):
    d = os.environ.get("SORTER_SCREENSHOTS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(d) / f"station-{name}.png"), full_page=True)


def _truth(line):
    return {o["item_id"]: o for o in map(json.loads, (line.log_dir / "items.jsonl").read_text().splitlines())}


@pytest.fixture
def controller_metrics():
    """The controller's own metrics endpoint, as a running line serves it: PLC connected, sensors ok."""
    from sorter.line.health import SENSORS
    from sorter.line.metrics import LineMetrics

    from .browserkit import free_port

    port = free_port()
    m = LineMetrics()
    m.serve(port, "127.0.0.1")
    m.set_link_state("connected")
    for s in SENSORS:
        m.set_sensor_alarm(s, "ok")
    yield port
    m.close()


def test_operator_and_engineer_in_a_real_browser(line, tmp_path, controller_metrics):
    models, cands = _model_line(line, tmp_path)
    app = make_station(
        line,
        spot_check=0.3,
        candidates_dir=str(cands),
        watch=True,
        refresh_s=0.3,
        overrides=["metrics.enabled=true", f"metrics.port={controller_metrics}"],
    )
    st = app.state.station
    truth = _truth(line)
    with serve(app) as base, browser() as b:
        # ---- no session: every page sends the browser to the login page
        page = b.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/models")
        assert "/login?next=/models" in page.url
        page.fill("input[name=user]", "ana")
        page.fill("input[name=password]", "wrong password")
        page.click("button[type=submit]")
        assert "Wrong user name or password" in page.inner_text("main")
        _shot(page, "login")
        browser_login(page, base, "ana", PASSWORDS["ana"])

        # ---- label items with the keyboard; the next item is there at once
        page.wait_for_selector("#current article.item")
        _shot(page, "review")
        decided, latencies = [], []
        page.keyboard.press("d")  # the first item: damaged
        page.keyboard.press("n")
        page.keyboard.type("terminal cap missing")
        page.keyboard.press("Enter")
        for _ in range(12):
            item = page.get_attribute("#current article.item", "data-item-id")
            label = truth[item]["label"]
            old, new, ms = verdict_by_key(page, KEYS[label])
            assert old == item and new != item
            decided.append((item, label))
            if ms is not None:
                latencies.append(ms)
        for _ in range(100):  # the verdicts are posted in the background
            if st.store.verdict_count() == len(decided):
                break
            time.sleep(0.05)
        assert st.store.verdict_count() == len(decided)
        first = st.store.latest_verdict(decided[0][0])
        assert (first.damaged, first.note, first.user) == (True, "terminal cap missing", "ana")
        for item, label in decided:
            assert st.store.latest_verdict(item).label == label
        assert len(latencies) >= 10 and statistics.median(latencies) < 2000  # generous: a shared CI machine

        # ---- one item's page, a correction
        page.goto(base + f"/review/item/{decided[1][0]}")
        _shot(page, "item")
        page.click("button.other")
        page.wait_for_url(base + "/review")
        assert [v.label for v in st.store.history(decided[1][0])] == [decided[1][1], "other"]

        # ---- the status page follows the line while it runs
        page.goto(base + "/status")
        before = int(page.inner_text("[data-k=items_total]"))
        assert page.inner_text("[data-k=plc_link]") == "connected" and "xray ok" in page.inner_text("#sensors")
        model_id = st.watcher.snapshot.model_in_charge
        now = time.time()
        with AuditLog(line.audit) as log:
            log.record_decisions(
                [
                    AuditRecord(
                        f"L-{k}",
                        None,
                        now,
                        now,
                        now,
                        "lead_acid",
                        0.999,
                        0.0,
                        0.001,
                        "lead_acid",
                        "confident",
                        model_id,
                        4.0,
                        90.0,
                        "acked",
                    )
                    for k in range(25)
                ]
            )
        page.wait_for_function(
            "n => Number(document.querySelector('[data-k=items_total]').textContent) >= n",
            arg=before + 25,
            timeout=15_000,
        )
        _shot(page, "status")

        # ---- export (what `sorter train` reads)
        out = tmp_path / "labels"
        assert main(["labels", "export", "--config", str(line.config), "--out", str(out)]) == 0
        assert sum(1 for ln in iter_log(out) if ln.record is not None) == len(decided)

        # ---- models: the operator sees the table, cannot promote
        _label_rest(st, truth)
        page.goto(base + "/models")
        page.click("#eval-good button[type=submit]")
        page.wait_for_selector("#eval-good .safety-table")
        assert page.inner_text("#eval-good .safety.pass .li-in-lead") == "0"
        assert page.is_disabled("#eval-good .promote button")
        page.click("#eval-reckless button[type=submit]")
        page.wait_for_selector("#eval-reckless .safety.fail")
        assert int(page.inner_text("#eval-reckless .safety.fail .li-in-lead")) > 0
        assert page.query_selector("#eval-reckless .promote") is None  # no promote button for a failing model
        _shot(page, "models")
        page.click("header .logout button")
        page.wait_for_url("**/login")

        # ---- the engineer promotes it
        browser_login(page, base, "eng", PASSWORDS["eng"])
        page.goto(base + "/models")
        page.click("#eval-good button[type=submit]")
        page.wait_for_selector("#eval-good .promote button:not([disabled])")
        page.click("#eval-good .promote button")
        page.wait_for_selector("p.flash.shown")
        assert "promoted good" in page.inner_text("p.flash.shown")
        assert os.readlink(models / "current").startswith("current.sorter-default_")


def _label_rest(st, truth):
    """The rest of the queue labelled (quickly, not through the browser), so the table has Li-ion items."""
    while (q := st.store.next_open(order="belt")) is not None:
        o = truth.get(q.item_id, {"label": "lead_acid"})  # the rows added above have no record: not exported
        st.store.add_verdict(q.item_id, o["label"], damaged=bool(o.get("damaged")), note="", user="ana")
