"""Scoring recorded logs: one row per line, in order, bad lines included; resume; same as the line path."""

from __future__ import annotations

import csv
import json
import math

import pyarrow.parquet as pq
import pytest

from sorter import score as score_mod
from sorter.cli import main
from sorter.errors import SorterError
from sorter.features.measure import AmbientTracker
from sorter.logformat import iter_log, load_item, read_meta
from sorter.scoring import Scorer
from sorter.simulate import SimConfig, simulate_log


def _read_csv(p):
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def test_one_row_per_line_in_order_bad_lines_manual(tmp_path, log_with_bad_lines, model):
    out = tmp_path / "scores.csv"
    summary = score_mod.score_logs([log_with_bad_lines], out, model=model, workers=1)
    rows = _read_csv(out)
    n_lines = len((log_with_bad_lines / "items.jsonl").read_text().splitlines())
    assert len(rows) == n_lines == summary.items
    assert [int(r["line_no"]) for r in rows] == list(range(1, n_lines + 1))
    for r in rows[10:13]:
        assert r["lane"] == "manual" and r["reason"].startswith("cannot score")
    img = rows[13]
    assert img["item_id"] == "x-bad-image" and img["lane"] != "lead_acid" and "rgb" in img["problems"]
    assert {"item_id", "chemistry", "p_lead_acid", "p_li_ion", "p_other", "lane", "reason"} <= set(rows[0])
    assert summary.errors and sum(summary.lanes.values()) == n_lines


def test_parquet_equals_csv_and_workers_do_not_change_results(tmp_path, log_with_bad_lines, model):
    score_mod.score_logs([log_with_bad_lines], tmp_path / "a.csv", model=model, workers=1)
    score_mod.score_logs([log_with_bad_lines], tmp_path / "b.parquet", model=model, workers=2)
    a = _read_csv(tmp_path / "a.csv")
    b = pq.read_table(tmp_path / "b.parquet").to_pylist()
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra["item_id"] == (rb["item_id"] or "") and ra["lane"] == rb["lane"] and ra["reason"] == rb["reason"]
        if rb["p_lead_acid"] is not None and not math.isnan(rb["p_lead_acid"]):
            assert float(ra["p_lead_acid"]) == pytest.approx(rb["p_lead_acid"], rel=1e-12)


def test_batch_equals_the_one_item_line_path(tmp_path, log_with_bad_lines, model):
    out = tmp_path / "s.parquet"
    score_mod.score_logs([log_with_bad_lines], out, model=model, workers=2)
    batch = {r["line_no"]: r for r in pq.read_table(out).to_pylist()}
    scorer, ambient, meta = Scorer(model), AmbientTracker(), read_meta(log_with_bad_lines)
    n = 0
    for ln in iter_log(log_with_bad_lines):
        if ln.record is None:
            continue
        amb = ambient.observe(ln.record.surface_temp_c)
        d = scorer.score_item(load_item(ln.record, log_with_bad_lines, meta), amb)
        b = batch[ln.line_no]
        assert d.lane == b["lane"] and d.reason == b["reason"]
        for c in ("p_lead_acid", "p_li_ion", "p_other"):
            assert getattr(d, c) == pytest.approx(b[c], rel=1e-9, abs=1e-12)
        n += 1
    assert n >= 40


def test_resume_after_interruption_gives_the_uninterrupted_output(tmp_path, log_with_bad_lines, model, monkeypatch):
    full = tmp_path / "full.csv"
    score_mod.score_logs([log_with_bad_lines], full, model=model, workers=1)
    monkeypatch.setattr(score_mod, "SEGMENT_ROWS", 8)
    monkeypatch.setattr("sorter.batch.CHUNK", 8)
    out = tmp_path / "resumed.csv"
    real_add = score_mod._Journal.add_segment
    calls = {"n": 0}

    def crash_after_two(self, table, positions):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real_add(self, table, positions)

    monkeypatch.setattr(score_mod._Journal, "add_segment", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        score_mod.score_logs([log_with_bad_lines], out, model=model, workers=1)
    assert not out.exists() and (tmp_path / "resumed.csv.partial" / "progress.json").exists()
    monkeypatch.setattr(score_mod._Journal, "add_segment", real_add)
    summary = score_mod.score_logs([log_with_bad_lines], out, model=model, workers=1)
    assert summary.resumed_from == 16
    assert out.read_text() == full.read_text()
    assert not (tmp_path / "resumed.csv.partial").exists()


def test_cli_score_and_evaluate(tmp_path, log_with_bad_lines, capsys):
    assert main(["score", str(log_with_bad_lines), "--out", str(tmp_path / "o.csv"), "--workers", "1"]) == 0
    assert "scored" in capsys.readouterr().out
    rep = tmp_path / "report"
    assert main(["evaluate", str(log_with_bad_lines), "--out", str(rep), "--workers", "1"]) == 0
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["all_sensors"]["li_ion_in_lead_acid"] == 0
    assert set(metrics["sensor_missing"]) == {"scale", "profiler", "xray", "camera", "thermal"}
    for f in ("report.md", "confusion_matrix.png", "reliability.png", "lanes.png", "importances.png"):
        assert (rep / f).stat().st_size > 0
    assert "Per product" in (rep / "report.md").read_text()


def test_cli_refuses_bad_output_name(tmp_path, log_with_bad_lines, capsys):
    assert main(["score", str(log_with_bad_lines), "--out", str(tmp_path / "o.xlsx")]) == 2
    assert ".csv or .parquet" in capsys.readouterr().err


def test_workers_start_before_the_model_loads_and_none_outlive_the_run(tmp_path, log_with_bad_lines, monkeypatch):
    import multiprocessing as mp

    seen = {}
    real_load = score_mod.load_model

    def load_and_look(model_dir=None, **kw):
        seen["workers while loading"] = len(mp.active_children())
        seen["kw"] = kw
        return real_load(model_dir, **kw)

    monkeypatch.setattr(score_mod, "load_model", load_and_look)
    score_mod.score_logs([log_with_bad_lines], tmp_path / "o.csv", workers=2)
    assert seen["workers while loading"] == 2
    assert seen["kw"] == {"estimators": False}  # the fast predictor file: no scikit-learn to import
    assert mp.active_children() == []

    def broken(model_dir=None, **kw):
        raise score_mod.SorterError("no model here")

    monkeypatch.setattr(score_mod, "load_model", broken)
    with pytest.raises(score_mod.SorterError, match="no model here"):
        score_mod.score_logs([log_with_bad_lines], tmp_path / "p.csv", workers=2)
    assert mp.active_children() == [] and not (tmp_path / "p.csv.partial").exists()


# ---------------------------------------------------------------- resume with other log lists


@pytest.fixture(scope="module")
def second_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs2") / "other"
    simulate_log(SimConfig(items=20, seed=22, mix="recycler"), d)
    return d


def _interrupt_after_two_segments(logs, out, model, monkeypatch):
    """Score ``logs`` into ``out`` and stop it (Ctrl-C) after two 8-row segments are saved."""
    monkeypatch.setattr(score_mod, "SEGMENT_ROWS", 8)
    monkeypatch.setattr("sorter.batch.CHUNK", 8)
    real_add = score_mod._Journal.add_segment
    calls = {"n": 0}

    def crash_after_two(self, table, positions):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real_add(self, table, positions)

    with monkeypatch.context() as m:
        m.setattr(score_mod._Journal, "add_segment", crash_after_two)
        with pytest.raises(score_mod.ScoreInterrupted) as err:
            score_mod.score_logs(logs, out, model=model, workers=1)
    assert err.value.rows == 16 and (out.parent / (out.name + ".partial")).is_dir()


def _copy_log(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("change", ["reordered", "renamed", "swapped"])
def test_resume_after_the_logs_changed_equals_an_uninterrupted_run(
    tmp_path, log_with_bad_lines, second_log, model, monkeypatch, change
):
    a = _copy_log(log_with_bad_lines, tmp_path / "a")
    b = _copy_log(second_log, tmp_path / "b")
    out = tmp_path / "scores.csv"
    _interrupt_after_two_segments([a, b], out, model, monkeypatch)
    if change == "reordered":
        logs = [b, a]
    elif change == "renamed":
        a.rename(tmp_path / "a2")
        logs = [tmp_path / "a2", b]
    else:  # the same names now hold each other's data
        a.rename(tmp_path / "tmp")
        b.rename(a)
        (tmp_path / "tmp").rename(b)
        logs = [a, b]
    summary = score_mod.score_logs(logs, out, model=model, workers=1)
    assert summary.resumed_from == 0  # another run: started over, not resumed
    full = tmp_path / "full.csv"
    score_mod.score_logs(logs, full, model=model, workers=1)
    assert out.read_text() == full.read_text()
    assert summary.items == len(_read_csv(full))


def test_resume_of_the_same_logs_still_resumes(tmp_path, log_with_bad_lines, second_log, model, monkeypatch):
    out = tmp_path / "scores.parquet"
    _interrupt_after_two_segments([log_with_bad_lines, second_log], out, model, monkeypatch)
    summary = score_mod.score_logs([log_with_bad_lines, second_log], out, model=model, workers=1)
    assert summary.resumed_from == 16
    full = tmp_path / "full.parquet"
    score_mod.score_logs([log_with_bad_lines, second_log], full, model=model, workers=1)

    def rows(p):  # NaN != NaN: compare them as text
        return [
            {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in pq.read_table(p).to_pylist()
        ]

    assert rows(out) == rows(full) and len(rows(full)) == summary.items


def test_a_log_given_twice_is_refused_before_anything_is_written(tmp_path, log_with_bad_lines, second_log, model):
    link = tmp_path / "link"
    link.symlink_to(log_with_bad_lines, target_is_directory=True)
    out = tmp_path / "o.csv"
    for logs in (
        [log_with_bad_lines, log_with_bad_lines],
        [log_with_bad_lines, second_log, f"{log_with_bad_lines}/"],
        [log_with_bad_lines, link],
    ):
        with pytest.raises(SorterError, match="given twice"):
            score_mod.score_logs(logs, out, model=model, workers=1)
        assert not out.exists() and not (tmp_path / "o.csv.partial").exists()


def test_a_failed_run_leaves_no_journal(tmp_path, log_with_bad_lines, model, monkeypatch):
    def broken(*args, **kwargs):
        raise SorterError("the disk is full")
        yield

    monkeypatch.setattr(score_mod, "iter_decisions", broken)
    with pytest.raises(SorterError, match="disk is full"):
        score_mod.score_logs([log_with_bad_lines], tmp_path / "o.csv", model=model, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_says_how_to_resume_and_how_many_rows_are_saved(tmp_path, log_with_bad_lines, monkeypatch, capsys):
    out = tmp_path / "o.csv"
    monkeypatch.setattr(score_mod, "SEGMENT_ROWS", 8)
    monkeypatch.setattr("sorter.batch.CHUNK", 8)
    real_add = score_mod._Journal.add_segment
    calls = {"n": 0}

    def crash_after_two(self, table, positions):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_add(self, table, positions)

    monkeypatch.setattr(score_mod._Journal, "add_segment", crash_after_two)
    assert main(["score", str(log_with_bad_lines), "--out", str(out), "--workers", "1"]) == 130
    err = capsys.readouterr().err
    assert "16 rows saved" in err and "rerun the same command to resume" in err
    monkeypatch.setattr(score_mod._Journal, "add_segment", real_add)
    assert main(["score", str(log_with_bad_lines), "--out", str(out), "--workers", "1"]) == 0
    assert "resumed after 16" in capsys.readouterr().out


def test_verbose_score_says_what_it_does(tmp_path, log_with_bad_lines, caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="sorter"):
        score_mod.score_logs([log_with_bad_lines], tmp_path / "o.csv", workers=1)
    text = caplog.text
    assert "model sorter" in text and "writing" in text and "segment-000000" in text


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, log_with_bad_lines, monkeypatch, capsys):
    monkeypatch.setattr("sorter.progress.EVERY_S", 0.0)
    assert main(["score", str(log_with_bad_lines), "--out", str(tmp_path / "o.csv"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    n = len((log_with_bad_lines / "items.jsonl").read_text().splitlines())
    assert f"score: {n}/{n} items (100 %)" in err


def test_the_error_summary_counts_each_kind_by_its_code(tmp_path, model):
    """Unscorable lines are counted by the code the reader gave them (sorter.errors.ErrorKind),
    not by words found in the message: the location "items.jsonl" names no kind."""
    from sorter.errors import ErrorKind

    d = tmp_path / "log"
    d.mkdir()
    (d / "items.jsonl").write_bytes(
        b"\n".join(
            [
                b'{"t": 1}',  # no item_id
                b'{"item_id": "a"}',  # no t
                b'{"item_id": "b", "t": "noon"}',  # a bad t
                b"\xff\xfe",  # not UTF-8
                b"",  # blank
                b"[1]",  # not an object
                b"{bad",  # not JSON
                b'{"item_id": "c", "t": 1}',
                b'{"item_id": "c", "t": 2}',  # duplicate
                b'{"item_id": "d", "t"',  # torn (no newline at the end)
            ]
        )
    )
    summary = score_mod.score_logs([d], tmp_path / "o.csv", model=model, workers=0)
    assert dict(summary.errors) == {
        ErrorKind.ITEM_ID: 1,
        ErrorKind.TIME: 2,
        ErrorKind.UTF8: 1,
        ErrorKind.JSON: 3,
        ErrorKind.DUPLICATE: 1,
        ErrorKind.TORN: 1,
    }
    assert "errors: duplicate=1, field 't'=2, item_id=1, json=3, torn=1, utf-8=1" in summary.format()
