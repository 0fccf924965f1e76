"""Rotated logs (sorter-log/1 segments): read as one, followed across rotations, resumed, damaged."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorter.errors import LogFormatError
from sorter.logformat import (
    ITEMS_FILE,
    LogPosition,
    LogWriter,
    check_log_dir,
    item_files,
    iter_log,
    load_item,
    locate_line,
    read_meta,
    segment_file,
)
from sorter.readings import ItemRecord


def _rec(i: int, **kw) -> ItemRecord:
    return ItemRecord(item_id=f"A{i:05d}", t=1.7e9 + i, weight_g=100.0 + i, **kw)


def _write(d, n, rotate=None, start=0):
    with LogWriter(d, rotate_items=rotate) as w:
        for i in range(start, start + n):
            w.append(_rec(i))


def _view(lines):
    """What a consumer of the lines relies on: numbering, the records and the errors' kinds."""
    return [(ln.line_no, ln.item_id, ln.record and ln.record.to_json(), ln.kind) for ln in lines]


weights = st.one_of(st.none(), st.floats(min_value=0.1, max_value=1e5, allow_nan=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    weights=st.lists(weights, min_size=0, max_size=40),
    rotate=st.integers(1, 9),
    reopen=st.lists(st.integers(0, 40), max_size=3),
)
def test_a_rotated_log_reads_exactly_as_the_same_items_in_one_file(tmp_path_factory, weights, rotate, reopen):
    one, rot = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("rot")
    recs = [ItemRecord(item_id=f"id-{k}", t=1.7e9 + k, weight_g=w) for k, w in enumerate(weights)]
    with LogWriter(one) as w:
        for r in recs:
            w.append(r)
    cuts = sorted(set(reopen)) + [len(recs)]  # the recorder restarts at these items (a new segment each time)
    k = 0
    for cut in cuts:
        with LogWriter(rot, rotate_items=rotate) as w:
            for r in recs[k:cut]:
                w.append(r)
        k = max(k, cut)
    assert _view(iter_log(rot)) == _view(iter_log(one))
    if recs:
        assert (rot / segment_file(1)).is_file() and not (rot / ITEMS_FILE).exists()


def test_line_numbers_run_across_segments_and_positions_resume_mid_segment(tmp_path):
    _write(tmp_path, 17, rotate=5)
    lines = list(iter_log(tmp_path))
    assert [ln.line_no for ln in lines] == list(range(1, 18))
    assert [ln.segment for ln in lines] == [1] * 5 + [2] * 5 + [3] * 5 + [4] * 2
    assert len(item_files(tmp_path)) == 4
    # a restart in the middle of segment 2
    k = 7
    rest = list(iter_log(tmp_path, start=lines[k - 1].next_position))
    assert _view(rest) == _view(lines[k:])
    # from a line number alone (what the audit keeps): the segment holding it, from the headers
    pos = locate_line(tmp_path, 8)
    assert pos.segment == 2 and pos.line_no == 6
    assert [ln.line_no for ln in iter_log(tmp_path, start=pos)] == list(range(6, 18))


def test_images_of_each_segment_are_stored_and_read_back(tmp_path):
    low = np.full((8, 8), 30000, np.uint16)
    with LogWriter(tmp_path, rotate_items=2) as w:
        for i in range(5):
            w.append(_rec(i), {"xray_low": low})
    lines = list(iter_log(tmp_path))
    assert lines[3].record.xray_low.startswith("images-000002/")
    item = load_item(lines[3].record, tmp_path, read_meta(tmp_path))
    assert np.array_equal(item.xray_low, low) and not item.problems


def test_following_across_rotations_while_the_writer_writes(tmp_path):
    n, done = 40, threading.Event()

    def writer():
        with LogWriter(tmp_path, rotate_items=6) as w:
            for i in range(n):
                w.append(_rec(i))
                if i % 3 == 0:
                    time.sleep(0.002)
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    got = [ln for ln in iter_log(tmp_path, follow=True, poll_s=0.001, should_stop=done.is_set)]
    th.join()
    assert [ln.item_id for ln in got] == [f"A{i:05d}" for i in range(n)]  # no gap, no duplicate, in order
    assert all(ln.record is not None for ln in got)
    assert max(ln.segment for ln in got) >= 4  # at least 3 rotations were crossed


def test_a_torn_line_in_an_old_segment_is_one_error_line_and_reading_goes_on(tmp_path):
    _write(tmp_path, 3, rotate=10)
    with open(tmp_path / segment_file(1), "ab") as fh:
        fh.write(b'{"item_id":"A99999","t":1')  # the recorder died mid-line
    _write(tmp_path, 3, rotate=10, start=3)  # restarted: a new segment, the fragment left as it is
    lines = list(iter_log(tmp_path))
    assert [ln.line_no for ln in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert lines[3].record is None and lines[3].kind == "torn" and lines[3].segment == 1
    assert [ln.item_id for ln in lines[4:]] == ["A00003", "A00004", "A00005"]
    # a follower treats it the same once the next segment exists
    stop = threading.Event()
    stop.set()
    followed = list(iter_log(tmp_path, follow=True, poll_s=0.001, should_stop=stop.is_set))
    assert _view(followed) == _view(lines)


def test_a_follower_does_not_consume_the_partial_line_of_the_current_segment(tmp_path):
    _write(tmp_path, 2, rotate=10)
    with open(tmp_path / segment_file(1), "ab") as fh:
        fh.write(b'{"item_id":"B1","t":1')
    stop = threading.Event()
    stop.set()
    got = list(iter_log(tmp_path, follow=True, poll_s=0.001, should_stop=stop.is_set))
    assert [ln.item_id for ln in got] == ["A00000", "A00001"]


def test_a_missing_segment_is_a_clear_error(tmp_path):
    _write(tmp_path, 12, rotate=3)
    (tmp_path / segment_file(2)).unlink()
    for read in (lambda: list(iter_log(tmp_path)), lambda: check_log_dir(tmp_path), lambda: locate_line(tmp_path, 9)):
        with pytest.raises(LogFormatError, match=r"items-000002\.jsonl is missing.*restore"):
            read()


def test_a_follower_stops_with_a_clear_error_when_the_next_segment_is_missing(tmp_path):
    _write(tmp_path, 6, rotate=3)  # segments 1 and 2
    with LogWriter(tmp_path, rotate_items=3) as w:  # segment 3 ...
        w.append(_rec(50))
    lines = list(iter_log(tmp_path))
    (tmp_path / segment_file(2)).unlink()  # ... and segment 2 lost while a follower is in segment 1
    with pytest.raises(LogFormatError, match="items-000002.jsonl is missing"):
        list(iter_log(tmp_path, start=lines[0].next_position, follow=True, poll_s=0.001))


def test_a_log_with_both_layouts_or_a_bad_position_is_refused(tmp_path):
    _write(tmp_path, 4, rotate=2)
    with pytest.raises(LogFormatError, match="needs its segment"):
        list(iter_log(tmp_path, start_offset=40, start_line=2))
    with pytest.raises(LogFormatError, match="no such segment"):
        list(iter_log(tmp_path, start=LogPosition(9, 0, 1)))
    (tmp_path / ITEMS_FILE).write_text("")
    with pytest.raises(LogFormatError, match="both items.jsonl and segment files"):
        list(iter_log(tmp_path))


def test_writer_refuses_to_rotate_a_single_file_log_and_bad_rotate_items(tmp_path):
    _write(tmp_path, 2)
    with pytest.raises(LogFormatError, match="new log directory"):
        LogWriter(tmp_path, rotate_items=5)
    with pytest.raises(LogFormatError, match="rotate_items"):
        LogWriter(tmp_path / "x", rotate_items=0)


def test_duplicates_are_caught_across_a_segment_boundary(tmp_path):
    with LogWriter(tmp_path, rotate_items=2) as w:
        w.append(_rec(1))
        w.append(_rec(2))
        with pytest.raises(LogFormatError, match="duplicate"):
            w.append(_rec(2))  # the first id of segment 2 repeats one of segment 1


def test_simulate_writes_a_rotated_log_that_batch_tools_count_as_one(tmp_path, capsys):
    from sorter.batch import count_lines
    from sorter.cli import main
    from sorter.score import fingerprint

    out = tmp_path / "sim"
    assert main(["simulate", "--items", "12", "--out", str(out), "--rotate-items", "5", "--workers", "1"]) == 0
    assert [p.name for p in item_files(out)] == [segment_file(k) for k in (1, 2, 3)]
    assert count_lines(out) == 12 and len(list(iter_log(out))) == 12
    fp = fingerprint(out)
    assert (
        main(["simulate", "--items", "12", "--out", str(out), "--rotate-items", "5", "--workers", "1", "--force"]) == 0
    )
    assert fingerprint(out) == fp  # the same seed: the same log
    with pytest.raises(SystemExit):
        main(["simulate", "--items", "3", "--out", str(out), "--rotate-items", "0"])


line_kinds = st.lists(st.sampled_from(["item", "item", "item", "bad json", "no id", "repeat"]), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=line_kinds, cuts=st.lists(st.integers(0, 30), max_size=4), torn=st.booleans())
def test_bad_lines_read_the_same_in_segments_as_in_one_file(tmp_path_factory, kinds, cuts, torn):
    """Raw lines (bad JSON, no id, a repeated id) split into hand-made segments read as in one file.

    Duplicates are detected within a segment and its neighbour (bounded memory), so a repeat here
    repeats the line just before it."""
    from sorter.logformat.segments import header_line

    raw, last = [], None
    for k, kind in enumerate(kinds):
        if kind == "item" or (kind == "repeat" and last is None):
            last = f"X{k}"
            raw.append(f'{{"item_id":"{last}","t":{k}}}\n'.encode())
        elif kind == "repeat":
            raw.append(f'{{"item_id":"{last}","t":{k}}}\n'.encode())
        elif kind == "bad json":
            raw.append(b'{"item_id": oops}\n')
            last = None  # a repeat only of the line just before: in the same or the adjacent segment
        else:
            raw.append(b'{"t": 1}\n')
            last = None
    tail = b'{"item_id":"Z","t"' if torn else b""
    one, rot = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("rot")
    (one / ITEMS_FILE).write_bytes(b"".join(raw) + tail)
    bounds = sorted({0, len(raw), *[c for c in cuts if c <= len(raw)]})
    for seg, (a, b) in enumerate(zip(bounds, bounds[1:] or [len(raw)]), start=1):
        body = b"".join(raw[a:b]) + (tail if b == len(raw) else b"")
        (rot / segment_file(seg)).write_bytes(header_line(seg, a + 1) + body)
    assert _view(iter_log(rot)) == _view(iter_log(one))


def test_dask_workers_check_that_they_can_read_a_rotated_log(tmp_path):
    from sorter.distributed import _readable

    _write(tmp_path / "rot", 3, rotate=2)
    _write(tmp_path / "one", 3)
    assert _readable(str(tmp_path / "rot")) and _readable(str(tmp_path / "one"))
    assert not _readable(str(tmp_path / "nothing"))


def test_a_followed_single_file_log_keeps_a_bounded_window_of_ids():
    """Following one items.jsonl for weeks must not keep every id: the window rolls, and a
    duplicate inside it is still caught."""
    from sorter.logformat.reader import _IdRing

    ring = _IdRing(every=3)
    for n, item in enumerate(["a", "b", "c", "d", "e", "f", "g"], start=1):
        ring.add(item, n)
    assert ring.first_line("g") == 7 and ring.first_line("d") == 4  # the current and previous halves
    assert ring.first_line("a") is None  # rolled out: memory stays bounded
    assert len(ring._first) + len(ring._prev) <= 6
