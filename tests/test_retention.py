"""Image retention: what is deleted, what is kept, and that a deleted image reads as expired."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from sorter.cases.manifest import THUMB_EXPIRED, xray_thumbnail
from sorter.cli import main
from sorter.errors import ConfigError, ImageError, ImageExpiredError
from sorter.line.audit import AuditLog, AuditRecord
from sorter.logformat import EXPIRED_FILE, LogWriter, iter_log, load_item, load_png, read_meta, record_expired
from sorter.readings import ItemRecord
from sorter.retention import RetentionPolicy, run_retention

DAY = 86400.0
NOW = 1.79e9  # in the past: the CLI measures ages from the clock
LOW = np.full((8, 8), 20000, np.uint16)
RGB = np.zeros((6, 6, 3), np.uint8)


def _line(tmp_path, lanes_ages, rotate=3):
    """A rotated log with an audit row per item: ``[(lane or None, age in days), ...]``."""
    log, audit = tmp_path / "log", tmp_path / "audit.sqlite"
    with LogWriter(log, rotate_items=rotate) as w, AuditLog(audit) as a:
        for k, (lane, age) in enumerate(lanes_ages):
            t = NOW - age * DAY
            rec = w.append(
                ItemRecord(item_id=f"I{k}", t=t, weight_g=50.0), {"xray_low": LOW, "xray_high": LOW, "rgb": RGB}
            )
            if lane is not None:
                a.record_decision(
                    AuditRecord(
                        rec.item_id, rec.line_no, t, t, t, lane, 0.5, 0.5, 0.0, lane, "r", "m", 5.0, 90.0, "acked"
                    )
                )
    return log, audit


def _station(tmp_path, queued=(), verdicts=()):
    p = tmp_path / "station.sqlite"
    c = sqlite3.connect(p)
    c.execute(
        "CREATE TABLE queue (audit_id INTEGER PRIMARY KEY, item_id TEXT, kind TEXT, lane TEXT, t_item REAL, "
        "source_line INTEGER)"
    )
    c.execute("CREATE TABLE verdicts (id INTEGER PRIMARY KEY, item_id TEXT, label TEXT)")
    c.executemany(
        "INSERT INTO queue (item_id, kind, lane, t_item) VALUES (?, 'spot', 'li_ion', 0)", [(i,) for i in queued]
    )
    c.executemany("INSERT INTO verdicts (item_id, label) VALUES (?, 'li_ion')", [(i,) for i in verdicts])
    c.commit()
    c.close()
    return p


def _present(log):
    return {ln.record.item_id: ln.record for ln in iter_log(log)}


def _has_images(log, rec):
    return all((log / getattr(rec, f)).exists() for f in ("xray_low", "xray_high", "rgb"))


def test_old_sorted_images_go_labelled_and_young_ones_stay(tmp_path):
    log, audit = _line(
        tmp_path,
        [
            ("lead_acid", 10),
            ("li_ion", 10),
            ("manual", 10),
            ("hazard", 10),
            ("li_ion", 10),
            ("lead_acid", 1),
            (None, 10),
            ("li_ion", 10),
        ],
    )
    station = _station(tmp_path, queued=["I4"], verdicts=["I7"])
    r = run_retention(log, audit, station=station, policy=RetentionPolicy(keep_sorted_days=7), now=NOW)
    recs = _present(log)
    gone = {i for i, rec in recs.items() if not _has_images(log, rec)}
    # I0/I1 sorted and old; I2/I3 manual/hazard; I4 spot-checked; I5 young; I6 no audit row; I7 has a verdict
    assert gone == {"I0", "I1"}
    assert r.images_deleted == 6 and r.bytes_deleted > 0 and r.expired_items == {"sorted": 2}
    assert len(recs) == 8  # the item lines stay
    # the labelled time applies to the labelled ones
    r2 = run_retention(
        log, audit, station=station, now=NOW, policy=RetentionPolicy(keep_sorted_days=7, keep_labelled_days=9)
    )
    gone = {i for i, rec in _present(log).items() if not _has_images(log, rec)}
    assert gone == {"I0", "I1", "I2", "I3", "I4", "I6", "I7"} and r2.already_expired == 6
    assert r2.skipped_lines == 0  # a stricter policy than the first run's: every line is read again
    # the next run with the same policy starts after the lines settled for good (older than 9 days)
    r3 = run_retention(
        log, audit, station=station, now=NOW, policy=RetentionPolicy(keep_sorted_days=7, keep_labelled_days=9)
    )
    assert r3.skipped_lines == 5 and r3.items == 3 and r3.images_deleted == 0
    # a day later item I5 (sorted, then 2 days old) is still kept; 6 days later it goes
    r4 = run_retention(
        log, audit, station=station, now=NOW + 6 * DAY, policy=RetentionPolicy(keep_sorted_days=7, keep_labelled_days=9)
    )
    assert r4.skipped_lines == 5 and r4.expired_items == {"sorted": 1}


def test_dry_run_deletes_nothing_and_says_what_and_how_many_bytes(tmp_path, capsys):
    log, audit = _line(tmp_path, [("li_ion", 30), ("li_ion", 30), ("manual", 30)])
    files = sorted(p for p in log.rglob("*.png"))
    size = sum(p.stat().st_size for p in files[:6])
    r = run_retention(log, audit, dry_run=True, now=NOW)
    assert all(p.exists() for p in files) and not list(log.rglob(EXPIRED_FILE))
    assert r.images_deleted == 6 and r.bytes_deleted == size
    rc = main(["retention", str(log), "--audit", str(audit), "--dry-run", "--keep-sorted-days", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "would delete: 6 images" in out and f"{size} bytes" in out and "xray_low.png" in out
    assert all(p.exists() for p in files)


def test_cli_refuses_a_missing_audit_and_bad_days(tmp_path, capsys):
    log, audit = _line(tmp_path, [("li_ion", 30)])
    assert main(["retention", str(log), "--audit", str(tmp_path / "nope.sqlite")]) == 2
    assert "audit log" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["retention", str(log), "--audit", str(audit), "--keep-sorted-days", "-1"])
    assert e.value.code == 2
    with pytest.raises(ConfigError, match="at least as long"):
        RetentionPolicy(keep_sorted_days=7, keep_labelled_days=3)
    with pytest.raises(ConfigError, match="unknown retention keys"):
        RetentionPolicy.from_mapping({"keep_sorted_day": 3})


def test_an_expired_image_reads_as_expired_and_a_missing_one_stays_an_error(tmp_path):
    log, audit = _line(tmp_path, [("li_ion", 30), ("li_ion", 30)])
    run_retention(log, audit, now=NOW, policy=RetentionPolicy(keep_sorted_days=0))
    recs = list(_present(log).values())
    with pytest.raises(ImageExpiredError, match="image expired"):
        load_png(log / recs[0].xray_low, kind="xray")
    item = load_item(recs[0], log, read_meta(log))
    assert item.xray_low is None and all("image expired" in p for p in item.problems)
    # the same file name deleted by hand in a folder without a tombstone for it: an error, not "expired"
    (log / recs[1].xray_low).parent.joinpath(EXPIRED_FILE).write_text("")
    with pytest.raises(ImageError, match="not found") as err:
        load_png(log / recs[1].xray_low, kind="xray")
    assert not isinstance(err.value, ImageExpiredError)


def test_an_expired_image_sends_the_item_to_a_safe_lane_with_the_reason(tmp_path, model):
    from sorter.scoring import Scorer
    from sorter.simulate import SimConfig, simulate_log

    log = tmp_path / "sim"
    simulate_log(SimConfig(items=40, seed=5, mix="balanced"), log, rotate_items=15)
    meta = read_meta(log)
    scorer = Scorer(model)
    recs = [ln.record for ln in iter_log(log)]
    before = [scorer.score_item(load_item(r, log, meta)) for r in recs]
    lead = [r for r, d in zip(recs, before) if d.lane == "lead_acid"]
    assert lead, "the simulated log must have lead-acid items"
    for r in lead:
        p = log / r.xray_low
        record_expired(p.parent, [p.name])
        p.unlink()
    after = {d.item_id: d for d in (scorer.score_item(load_item(r, log, meta)) for r in lead)}
    assert all(d.lane == "manual" and d.reason.startswith("image expired") for d in after.values())
    # batch scoring (the rotated log read as one) says the same
    from sorter.batch import iter_decisions

    batch = {d.item_id: d for _, ds in iter_decisions([str(log)], scorer, workers=1) for d in ds}
    assert len(batch) == 40
    assert all(batch[i].lane == "manual" and batch[i].reason.startswith("image expired") for i in after)
    assert all(batch[d.item_id].lane == d.lane for d in before if d.item_id not in after)


def test_case_manifest_thumbnail_of_an_expired_image_says_expired(tmp_path):
    log, audit = _line(tmp_path, [("li_ion", 30)])
    rec = next(iter(_present(log).values()))
    assert xray_thumbnail(str(log), rec.xray_low).startswith("data:image/png")
    run_retention(log, audit, now=NOW, policy=RetentionPolicy(keep_sorted_days=0))
    assert xray_thumbnail(str(log), rec.xray_low) == THUMB_EXPIRED
    (log / rec.xray_low).parent.joinpath(EXPIRED_FILE).unlink()
    assert xray_thumbnail(str(log), rec.xray_low) is None  # missing without a tombstone: no image, no "expired"
