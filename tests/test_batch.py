"""The local batch engine: every line comes out once, in order; workers and chunk size change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from sorter.batch import iter_measured


def _flatten(chunks):
    lines, raw, problems, ok = [], [], [], []
    for ch in chunks:
        assert len(ch.lines) == ch.raw.shape[0] == len(ch.problems) == ch.ok.size
        lines += ch.lines
        raw.append(ch.raw)
        problems += ch.problems
        ok.append(ch.ok)
    return lines, np.vstack(raw), problems, np.concatenate(ok)


def test_every_line_once_in_order_bad_lines_included(log_with_bad_lines, bad_log_layout):
    BAD_LOG = bad_log_layout
    lines, raw, problems, ok = _flatten(iter_measured([log_with_bad_lines], workers=1, chunk=4))
    assert [ln.line_no for ln in lines] == list(range(1, BAD_LOG["lines"] + 1))
    bad = {ln.line_no: p for ln, p, good in zip(lines, problems, ok) if not good}
    assert sorted(bad) == sorted(BAD_LOG["bad"]) == [11, 12, 13]
    assert "JSON" in bad[11] and "field 't'" in bad[12] and "duplicate" in bad[13]
    assert np.isnan(raw[~ok]).all() and np.isfinite(raw[ok]).any(axis=1).all()
    gone = next(k for k, ln in enumerate(lines) if ln.line_no == BAD_LOG["bad_image"])
    assert ok[gone] and "rgb" in problems[gone] and "not found" in problems[gone]
    gone = next(k for k, ln in enumerate(lines) if ln.line_no == BAD_LOG["gone_xray_low"])
    assert ok[gone] and "xray_low" in problems[gone] and "not found" in problems[gone]


def test_workers_and_chunk_size_do_not_change_the_measurements(log_with_bad_lines):
    """In this process (0), in one worker process or in two: the same rows."""
    ref = _flatten(iter_measured([log_with_bad_lines], workers=0, chunk=64))
    for workers, chunk in ((0, 1), (1, 5), (2, 3)):
        got = _flatten(iter_measured([log_with_bad_lines], workers=workers, chunk=chunk))
        assert got[0] == ref[0]
        np.testing.assert_array_equal(got[1], ref[1])  # NaN equals NaN here: bad lines and missing sensors
        assert got[2] == ref[2]
        np.testing.assert_array_equal(got[3], ref[3])


def test_resuming_mid_log_measures_as_the_full_run(log_with_bad_lines):
    """The ambient estimate of a resumed run is learnt from the lines before the start."""
    lines, raw, problems, _ = _flatten(iter_measured([log_with_bad_lines], workers=1, chunk=8))
    k = 19
    start = {str(log_with_bad_lines): (lines[k - 1].end_offset, lines[k].line_no)}
    tail = _flatten(iter_measured([log_with_bad_lines], workers=1, chunk=8, start=start))
    assert tail[0] == lines[k:]
    np.testing.assert_array_equal(tail[1], raw[k:])
    assert tail[2] == problems[k:]


@pytest.mark.e2e
def test_scoring_worker_does_not_import_scikit_learn():
    """What a scoring worker imports (to measure) leaves scikit-learn out: it would add about a
    second of start-up and 90 MB to every worker process."""
    import subprocess
    import sys

    code = (
        "import sys, sorter.batch, sorter.features; print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_item_that_breaks_loading_or_measuring_loses_only_its_own_row(log_with_bad_lines, monkeypatch):
    """Items are loaded a group at a time before they are measured: a failure in either step marks
    that item's row (NaN, "measurement failed") and no other, whatever its place in the group."""
    import sorter.batch as batch
    from sorter.batch import iter_chunks, measure_records

    d, meta, _, recs = next(iter_chunks([log_with_bad_lines], 64))
    good, good_problems = measure_records(d, meta, recs)
    monkeypatch.setattr(batch, "LOAD_GROUP", 4)
    bad_load, bad_measure = recs[2][0].item_id, recs[5][0].item_id
    real_load, real_measure = batch.load_item, batch.measure_item

    def load(rec, *a):
        if rec.item_id == bad_load:
            raise OSError("disk gone")
        return real_load(rec, *a)

    def measure(item, amb):
        if item.item_id == bad_measure:
            raise ValueError("odd image")
        return real_measure(item, amb)

    monkeypatch.setattr(batch, "load_item", load)
    monkeypatch.setattr(batch, "measure_item", measure)
    raw, problems = measure_records(d, meta, recs)
    assert problems[2] == "measurement failed: disk gone" and problems[5] == "measurement failed: odd image"
    assert np.isnan(raw[[2, 5]]).all()
    others = [k for k in range(len(recs)) if k not in (2, 5)]
    np.testing.assert_array_equal(raw[others], good[others])
    assert [problems[k] for k in others] == [good_problems[k] for k in others]


@pytest.mark.e2e
def test_the_engines_sit_below_the_score_driver():
    """``sorter score`` picks an engine from its table; the engines never import the driver
    (the chunk primitive lives in the batch module), so importing them loads no ``sorter.score``."""
    import subprocess
    import sys

    code = (
        "import sys, sorter.batch, sorter.distributed; "
        "assert 'sorter.score' not in sys.modules, 'an engine imports the score driver'; "
        "import sorter.score as s; "
        "assert s.ENGINES == {'local': sorter.batch.iter_decisions, 'dask': sorter.distributed.iter_decisions}"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_engine_is_refused(log_with_bad_lines):
    from sorter import score
    from sorter.errors import SorterError

    with pytest.raises(SorterError, match="unknown engine 'spark'; use one of dask, local"):
        next(score.iter_decisions([str(log_with_bad_lines)], None, workers=0, engine="spark"))
