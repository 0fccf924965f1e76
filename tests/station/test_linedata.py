"""The station's start-up reads of the audit log (issue 19): flat forms, same answers as the old queries.

At station start :class:`~sorter.station.linedata.LineWatcher` finds the first row of the last hour
(a binary search between the lowest and highest row id) and counts the rows before it.  The old
queries (``SELECT MIN(id), MAX(id)``; ``COUNT(*) ... WHERE id <= ?``) scan the whole log; the new ones
read two ends of the row id's b-tree and the controller's row count less the last hour's rows.  These
tests run a watcher with the old queries beside one with the new on the same audit logs (several days
of rows, an empty log, archived rows, rows left pending, a log of an older controller, restarts) and
compare what the station shows.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from sorter.line.audit import AuditLog, AuditRecord
from sorter.line.audit.archive import export_before
from sorter.station.linedata import AuditReader, LineLog, LineWatcher
from sorter.station.store import StationStore

DAY = 86400.0
NOW = dt.datetime(2026, 11, 6, 12, 0, 30, tzinfo=dt.timezone.utc).timestamp()
LANES = ("lead_acid", "li_ion", "manual", "hazard")


class OldWatcher(LineWatcher):
    """The watcher as it was before issue 19: the two start-up queries that scan the whole log."""

    def _start_id(self, since: float) -> int:
        rows = self.audit.query("SELECT MIN(id), MAX(id) FROM decisions")
        if not rows or rows[0][0] is None:
            return 0
        lo, hi = int(rows[0][0]), int(rows[0][1])
        while lo < hi:
            mid = (lo + hi) // 2
            r = self.audit.query("SELECT id, t_decided FROM decisions WHERE id >= ? ORDER BY id LIMIT 1", (mid,))
            if not r:
                hi = mid
            elif r[0][1] < since:
                lo = int(r[0][0]) + 1
            else:
                hi = mid
        return lo - 1

    def _rows_up_to(self, last_id: int) -> int:
        r = self.audit.query("SELECT COUNT(*) FROM decisions WHERE id <= ?", (last_id,))
        return int(r[0][0]) if r else 0


def rec(k: int, t: float, delivery: str = "acked") -> AuditRecord:
    lane = LANES[k % 4]
    return AuditRecord(
        f"it-{k:06d}",
        k,
        t - 0.05,
        t - 0.01,
        t,
        None if lane == "manual" else lane,
        0.01,
        0.98,
        0.01,
        lane,
        "confident",
        f"m{k // 500}",
        4.0,
        90.0,
        delivery,
        plc_seq=k if delivery == "acked" else None,
        plc_status="ok" if delivery == "acked" else None,
        t_acked=t + 0.01 if delivery == "acked" else None,
    )


def days_of_rows(start_k: int, t0: float, t1: float, step_s: float) -> list[AuditRecord]:
    """A row every ``step_s`` seconds from ``t0`` up to (not including) ``t1``; every 37th late, every 11th manual."""
    out, k, t = [], start_k, t0
    while t < t1:
        out.append(rec(k, t, "late" if k % 37 == 0 else "acked"))
        k += 1
        t += step_s
    return out


def write(path: Path, recs: list[AuditRecord]) -> None:
    with AuditLog(path) as log:
        log.record_decisions(recs)


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])


def watchers(audit: Path, tmp: Path, now: float) -> tuple[LineWatcher, LineWatcher]:
    """An old and a new watcher on the same audit log, each with its own station store."""
    out = []
    for cls in (OldWatcher, LineWatcher):
        store = StationStore(tmp / f"{cls.__name__}-{len(list(tmp.iterdir()))}.sqlite")
        store.set_setting("spot_salt", "same spot checks for both")
        out.append(cls(AuditReader(audit), LineLog(None, store), store, spot_check=0.1, clock=lambda: now))
    return out[0], out[1]


def shown(w: LineWatcher) -> dict:
    s = w.refresh()
    return {
        k: getattr(s, k)
        for k in (
            "items_total",
            "rate_per_s",
            "last_item_age_s",
            "lanes_hour",
            "deliveries_hour",
            "minutes",
            "pending",
            "model_in_charge",
            "queue",
            "alarms",
        )
    }


def assert_same(audit: Path, tmp: Path, now: float = NOW) -> dict:
    old, new = watchers(audit, tmp, now)
    assert new._start_id(now - 3600.0) == old._start_id(now - 3600.0)
    a, b = shown(old), shown(new)
    assert b == a
    return b


# ---- audit logs the station may find at start ------------------------------------------------------


def several_days(path: Path) -> list[AuditRecord]:
    """Five days of rows (one every 10 min) then the last hour busy (one every 3 s), the newest two pending."""
    recs = days_of_rows(1, NOW - 5 * DAY, NOW - 3600.0, 600.0)
    recs += days_of_rows(len(recs) + 1, NOW - 3600.0, NOW - 10.0, 3.0)
    recs[-1] = rec(len(recs), recs[-1].t_decided, "pending")
    recs[-2] = rec(len(recs) - 1, recs[-2].t_decided, "pending")
    write(path, recs)
    return recs


def test_several_days_of_rows_read_the_same_as_before(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = several_days(audit)
    snap = assert_same(audit, tmp_path)
    assert snap["items_total"] == len(recs) == count_rows(audit)
    this_minute = int(NOW // 60)
    assert sum(snap["lanes_hour"].values()) == sum(int(r.t_decided // 60) > this_minute - 60 for r in recs) > 1100
    assert snap["pending"] == 2


def test_an_empty_or_missing_audit_log_reads_as_no_items(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    snap = assert_same(audit, tmp_path)  # no file yet: the controller has not started
    assert snap["items_total"] == 0 and "no audit log" in snap["alarms"][0]
    AuditLog(audit).close()  # the schema, no row
    snap = assert_same(audit, tmp_path)
    assert snap["items_total"] == 0 and snap["lanes_hour"] == {} and snap["alarms"] == []


@pytest.mark.parametrize(
    "times",
    [
        pytest.param([NOW - 60.0], id="one row, in the last hour"),
        pytest.param([NOW - 3 * DAY], id="one row, days old"),
        pytest.param([NOW - 3 * DAY + k * 900.0 for k in range(50)], id="only rows older than an hour"),
        pytest.param([NOW - 3599.0 + k for k in range(40)], id="only rows of the last hour"),
        pytest.param([NOW - 3600.0, NOW - 3600.0, NOW - 1.0], id="rows on the hour's edge"),
        pytest.param([NOW - 100.0, NOW - 7200.0, NOW - 50.0, NOW - 90000.0, NOW - 5.0], id="clock stepped back"),
    ],
)
def test_edge_cases_read_the_same_as_before(tmp_path: Path, times: list[float]) -> None:
    audit = tmp_path / "audit.sqlite"
    write(audit, [rec(k + 1, t) for k, t in enumerate(times)])
    assert assert_same(audit, tmp_path)["items_total"] == len(times)


def test_archived_rows_and_the_pending_rows_left_among_them_read_the_same(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = days_of_rows(1, NOW - 5 * DAY, NOW - 30.0, 300.0)
    for k in (10, 11, 400, 1000):  # rows whose fate is unknown: the export keeps them (holes around them)
        recs[k] = rec(k + 1, recs[k].t_decided, "pending")
    write(audit, recs)
    cut = dt.datetime.fromtimestamp(NOW - 2 * DAY, dt.timezone.utc)
    res = export_before(audit, cut, tmp_path / "old.parquet", delete=True)
    assert res.deleted > 0 and res.kept_pending == 3
    snap = assert_same(audit, tmp_path)
    assert snap["items_total"] == len(recs) - res.deleted == count_rows(audit)


def test_a_log_archived_but_for_its_newest_row_reads_the_same(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = days_of_rows(1, NOW - 4 * DAY, NOW - 2 * DAY, 1800.0)
    write(audit, recs)
    res = export_before(audit, dt.datetime.fromtimestamp(NOW, dt.timezone.utc), tmp_path / "a.parquet", delete=True)
    assert res.deleted == len(recs) - 1  # the export always keeps the newest row
    assert assert_same(audit, tmp_path)["items_total"] == 1


def test_a_log_of_an_older_controller_without_the_row_count_reads_the_same(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = several_days(audit)
    with sqlite3.connect(audit) as conn:  # as an older controller left it
        conn.execute("DROP TRIGGER decision_count_insert")
        conn.execute("DROP TRIGGER decision_count_delete")
        conn.execute("DROP TABLE decision_count")
    assert assert_same(audit, tmp_path)["items_total"] == len(recs)


def test_a_restarted_station_and_a_running_one_agree_as_rows_come_and_go(tmp_path: Path) -> None:
    audit = tmp_path / "audit.sqlite"
    recs = several_days(audit)
    old, new = watchers(audit, tmp_path, NOW)
    assert shown(new) == shown(old)
    # more rows, then an archive of the oldest days while both stations run
    more = days_of_rows(len(recs) + 1, NOW - 9.0, NOW, 1.0)
    write(audit, more)
    assert shown(new) == shown(old)
    assert shown(new)["items_total"] == len(recs) + len(more)
    export_before(audit, dt.datetime.fromtimestamp(NOW - 3 * DAY, dt.timezone.utc), tmp_path / "o.parquet", delete=True)
    # restarted stations read the log as it is now; old and new queries still agree
    snap = assert_same(audit, tmp_path)
    assert snap["items_total"] == count_rows(audit) < len(recs) + len(more)


def test_neither_the_station_start_nor_a_refresh_scans_the_decisions_table(tmp_path: Path) -> None:
    """Every statement the watcher runs searches an index or the row id (or scans the pending rows'
    partial index): its cost does not grow with the days of rows in the log."""
    audit = tmp_path / "audit.sqlite"
    several_days(audit)
    store = StationStore(tmp_path / "station.sqlite")
    reader = AuditReader(audit)
    assert reader.available
    seen: list[str] = []
    reader._conn.set_trace_callback(seen.append)  # type: ignore[union-attr]
    w = LineWatcher(reader, LineLog(None, store), store, clock=lambda: NOW)
    w.refresh()
    write(audit, days_of_rows(10**5, NOW - 5.0, NOW, 1.0))
    w.refresh()
    reader._conn.set_trace_callback(None)  # type: ignore[union-attr]
    scans = []
    with sqlite3.connect(audit) as conn:
        for sql in seen:
            if "decisions" not in sql or not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            if any(step.startswith("SCAN decisions") and "decisions_pending" not in step for step in plan):
                scans.append((sql, plan))
    assert len(seen) > 20 and scans == []
