"""Tests for sorter.logformat: the sorter-log/1 reader and writer."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sorter.logformat.images as lf_images
import sorter.logformat.reader as lf_reader
from sorter.errors import ImageError, LogFormatError, SorterError, UnsafePathError
from sorter.logformat import (
    ITEMS_FILE,
    META_FILE,
    LogLine,
    LogWriter,
    encode_png,
    iter_log,
    load_item,
    load_png,
    parse_record,
    read_meta,
    resolve_image_path,
    write_meta,
)
from sorter.readings import IMAGE_FIELDS, KNOWN_FIELDS, LABELS, NUMERIC_FIELDS, ItemRecord, LogMeta

EXAMPLE = Path(__file__).parent / "data" / "logformat" / "example"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------- helpers


def write_lines(log_dir: Path, *lines: str | bytes, newline_at_end: bool = True) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    raw = b"\n".join(x.encode() if isinstance(x, str) else x for x in lines)
    if newline_at_end:
        raw += b"\n"
    path = log_dir / ITEMS_FILE
    path.write_bytes(raw)
    return path


def good(item_id: str = "A1", **fields: object) -> str:
    return json.dumps({"item_id": item_id, "t": 1767225600.5, **fields})


def png_bytes(
    width: int, height: int, depth: int, colour: int, rows: bytes | None = None, plte: bytes | None = None
) -> bytes:
    """A PNG built by hand, so tests can declare any header they like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if rows is not None:
        out += chunk(b"IDAT", zlib.compress(rows))
    return out + chunk(b"IEND", b"")


def rng_images(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 65536, size=(30, 41), dtype=np.uint16)
    low[0, 0], low[0, 1] = 0, 65535  # the extremes must survive
    high = rng.integers(0, 65536, size=(30, 41), dtype=np.uint16)
    rgb = rng.integers(0, 256, size=(25, 33, 3), dtype=np.uint8)
    return {"xray_low": low, "xray_high": high, "rgb": rgb}


# ------------------------------------------------------- writer round trip


def test_writer_round_trip_records_images_and_meta(tmp_path: Path) -> None:
    meta = LogMeta(line="L7", xray_mm_per_px=1.6, xray_energies_kev=(80.0, 150.0), camera_mm_per_px=0.8)
    images = rng_images()
    inputs = [
        ItemRecord(
            item_id="A1",
            t=1767225600.125,
            weight_g=46.5,
            length_mm=65.2,
            width_mm=18.4,
            height_mm=18.3,
            surface_temp_c=24.5,
            label="li_ion",
        ),
        ItemRecord(
            item_id="A2",
            t=1767225601.0,
            weight_g=14210.0,
            label="lead_acid",
            extra={"product": "car-60Ah", "pose": {"yaw_deg": 12.5}},
        ),
        ItemRecord(item_id="A3", t=1767225602.0),
    ]
    with LogWriter(tmp_path, meta) as writer:
        written = [
            writer.append(inputs[0], images),
            writer.append(inputs[1], {"rgb": images["rgb"]}),
            writer.append(inputs[2]),
        ]

    assert read_meta(tmp_path) == meta
    lines = list(iter_log(tmp_path))
    assert [ln.error for ln in lines] == [None, None, None]
    read = [ln.record for ln in lines]
    assert read == written
    assert written[0] == dataclasses.replace(
        inputs[0],
        line_no=1,
        xray_low="images/A1_xray_low.png",
        xray_high="images/A1_xray_high.png",
        rgb="images/A1_rgb.png",
    )
    assert written[2] == dataclasses.replace(inputs[2], line_no=3)
    assert dict(read[1].extra) == {"product": "car-60Ah", "pose": {"yaw_deg": 12.5}}

    item = load_item(read[0], tmp_path, read_meta(tmp_path))
    assert item.problems == ()
    for key, img in images.items():
        got = getattr(item, key)
        assert got.dtype == img.dtype and got.shape == img.shape
        np.testing.assert_array_equal(got, img)  # bit-identical, 16-bit included
    assert item.meta == meta


def test_each_appended_item_is_readable_before_the_writer_closes(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path, fsync=True)
    try:
        for n in range(3):
            rec = writer.append(ItemRecord(item_id=f"A{n}", t=float(n)), {"rgb": rng_images(n)["rgb"]})
            assert [ln.record for ln in iter_log(tmp_path)][-1] == rec  # flushed, not buffered
            assert load_item(rec, tmp_path, writer.meta).problems == ()
    finally:
        writer.close()
    writer.close()  # closing twice is harmless


def test_writer_resumes_an_existing_log_and_refuses_duplicate_ids(tmp_path: Path) -> None:
    with LogWriter(tmp_path) as writer:
        writer.append(ItemRecord(item_id="A1", t=1.0))
    with LogWriter(tmp_path) as writer:
        rec = writer.append(ItemRecord(item_id="A2", t=2.0))
        assert rec.line_no == 2
        with pytest.raises(LogFormatError, match="duplicate item_id.*line 1"):
            writer.append(ItemRecord(item_id="A1", t=3.0))
        with pytest.raises(LogFormatError, match="duplicate item_id.*line 2"):
            writer.append(ItemRecord(item_id="A2", t=3.0))
    assert [ln.item_id for ln in iter_log(tmp_path)] == ["A1", "A2"]
    with pytest.raises(LogFormatError, match="closed"):
        writer.append(ItemRecord(item_id="A3", t=4.0))


def test_writer_isolates_a_torn_line_left_by_a_crash(tmp_path: Path) -> None:
    with LogWriter(tmp_path) as writer:
        writer.append(ItemRecord(item_id="A1", t=1.0))
    with open(tmp_path / ITEMS_FILE, "ab") as fh:
        fh.write(b'{"item_id":"A2","t":2.0,"wei')  # the recorder died here
    with LogWriter(tmp_path) as writer:
        rec = writer.append(ItemRecord(item_id="A3", t=3.0, weight_g=5.0))
    lines = list(iter_log(tmp_path))
    assert [ln.line_no for ln in lines] == [1, 2, 3]
    assert lines[1].record is None and "not valid JSON" in lines[1].error
    assert lines[2].record == rec and rec.line_no == 3 and rec.weight_g == 5.0


def test_writer_refuses_a_new_calibration_for_a_log_with_items(tmp_path: Path) -> None:
    with LogWriter(tmp_path, LogMeta(xray_mm_per_px=2.0)) as writer:
        writer.append(ItemRecord(item_id="A1", t=1.0))
    with pytest.raises(LogFormatError, match="different meta"):
        LogWriter(tmp_path, LogMeta(xray_mm_per_px=1.0))
    with LogWriter(tmp_path) as writer:  # no meta given: keeps the log's own
        assert writer.meta.xray_mm_per_px == 2.0


def test_writer_file_names_are_safe_and_distinct(tmp_path: Path) -> None:
    img = {"rgb": np.zeros((2, 2, 3), np.uint8)}
    with LogWriter(tmp_path) as writer:
        a = writer.append(ItemRecord(item_id="../a/b", t=1.0), img)
        b = writer.append(ItemRecord(item_id="../a:b", t=2.0), img)
        c = writer.append(ItemRecord(item_id="x" * 300, t=3.0), img)
    names = {a.rgb, b.rgb, c.rgb}
    assert len(names) == 3
    for rel in names:
        assert rel.startswith("images/") and "/" not in rel[len("images/") :]
        assert len(Path(rel).name) < 255
        assert resolve_image_path(tmp_path, rel).parent == (tmp_path / "images").resolve()
    assert all(ln.error is None for ln in iter_log(tmp_path))


def test_writer_writes_non_finite_readings_as_null_and_refuses_bad_items(tmp_path: Path) -> None:
    with LogWriter(tmp_path) as writer:
        rec = writer.append(
            ItemRecord(item_id="A1", t=np.float64(1.0), weight_g=float("nan"), height_mm=np.float32(12.5))
        )
        assert rec.weight_g is None and rec.height_mm == 12.5
        with pytest.raises(LogFormatError, match="finite"):
            writer.append(ItemRecord(item_id="A2", t=float("inf")))
        with pytest.raises(LogFormatError, match="non-empty"):
            writer.append(ItemRecord(item_id="", t=1.0))
        with pytest.raises(ImageError, match="uint16"):
            writer.append(ItemRecord(item_id="A3", t=1.0), {"xray_low": np.zeros((4, 4), np.uint8)})
        with pytest.raises(ImageError, match="unknown image key"):
            writer.append(ItemRecord(item_id="A4", t=1.0), {"thermal": np.zeros((4, 4), np.uint16)})
    assert json.loads((tmp_path / ITEMS_FILE).read_text())["weight_g"] is None
    assert [ln.item_id for ln in iter_log(tmp_path)] == ["A1"]


# ------------------------------------------------------------------- meta


def test_meta_defaults_when_file_or_keys_are_missing(tmp_path: Path) -> None:
    assert read_meta(tmp_path) == LogMeta()
    (tmp_path / META_FILE).write_text('{"line": "L2", "xray": {"mm_per_px": 1.5}, "site": {"plant": 3}}')
    meta = read_meta(tmp_path)
    assert meta.line == "L2" and meta.xray_mm_per_px == 1.5
    assert meta.xray_energies_kev == (60.0, 140.0) and meta.camera_mm_per_px == 1.0
    assert meta.format == "sorter-log/1"
    assert dict(meta.extra) == {"site": {"plant": 3}}


def test_meta_round_trips_through_write_meta(tmp_path: Path) -> None:
    meta = LogMeta(line="L3", xray_energies_kev=(70.0, 160.0), extra={"site": "north"})
    write_meta(tmp_path, meta)
    back = read_meta(tmp_path)
    assert back == meta and dict(back.extra) == {"site": "north"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"format": "sorter-log/2"}', "'format'"),
        ('{"line": 7}', "'line'"),
        ('{"xray": {"mm_per_px": "2"}}', "'xray.mm_per_px'"),
        ('{"xray": {"mm_per_px": -1}}', "'xray.mm_per_px'"),
        ('{"xray": {"mm_per_px": NaN}}', "'xray.mm_per_px'"),
        ('{"xray": {"energies_kev": [140, 60]}}', "'xray.energies_kev'"),
        ('{"xray": {"energies_kev": [60]}}', "'xray.energies_kev'"),
        ('{"xray": {"mm_per_pix": 1.0}}', "'xray.mm_per_pix'"),
        ('{"camera": {"mm_per_px": true}}', "'camera.mm_per_px'"),
        ('{"camera": 1.0}', "'camera'"),
        ("[1, 2]", "object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_meta_is_refused_naming_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / META_FILE).write_text(text)
    with pytest.raises(LogFormatError) as info:
        read_meta(tmp_path)
    msg = str(info.value)
    assert META_FILE in msg and key in msg
    assert any(word in msg for word in ("fix", "write", "use", "convert", "delete"))


# ----------------------------------------------------------- reading lines


def test_example_log_from_the_docs_reads_as_documented() -> None:
    meta = read_meta(EXAMPLE)
    assert (meta.line, meta.xray_mm_per_px, dict(meta.extra)) == ("L1", 2.0, {"site": "example-plant"})
    lines = list(iter_log(EXAMPLE))
    assert [ln.error for ln in lines] == [None, None, None]
    first, second, third = (ln.record for ln in lines)
    item = load_item(first, EXAMPLE, meta)
    assert item.problems == () and first.label == "li_ion"
    assert item.xray_low.dtype == np.uint16 and item.xray_low.max() == 65535
    assert item.rgb.shape == (28, 80, 3) and tuple(item.rgb[0, 0]) == (40, 90, 40)
    assert dict(second.extra) == {"operator_note": "x-ray off for service"}
    assert third.weight_g is None and "weight_g" in third.problems[0]


def test_a_byte_order_mark_from_an_editor_is_ignored(tmp_path: Path) -> None:
    write_lines(tmp_path, b"\xef\xbb\xbf" + good("A1").encode(), good("A2"))
    assert [ln.item_id for ln in iter_log(tmp_path)] == ["A1", "A2"]


def test_unknown_fields_are_kept_and_written_back(tmp_path: Path) -> None:
    write_lines(tmp_path, good(product="18650", damaged=True, pose={"yaw_deg": 3.5}, weight_g=45.0))
    (line,) = iter_log(tmp_path)
    assert dict(line.record.extra) == {"product": "18650", "damaged": True, "pose": {"yaw_deg": 3.5}}
    assert line.record.problems == ()
    assert line.record.to_json()["pose"] == {"yaw_deg": 3.5}


def test_offsets_are_contiguous_and_crlf_is_tolerated(tmp_path: Path) -> None:
    path = write_lines(tmp_path, good("A1") + "\r", good("A2"), "garbage", good("A3"))
    lines = list(iter_log(tmp_path))
    assert [ln.line_no for ln in lines] == [1, 2, 3, 4]
    assert lines[0].offset == 0 and lines[-1].end_offset == path.stat().st_size
    assert all(a.end_offset == b.offset for a, b in zip(lines, lines[1:]))
    assert lines[0].record is not None and lines[0].record.item_id == "A1"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b'{"item_id": "A1", "t": 1', "not valid JSON"),
        (b'{"item_id": "A\xff\xfe", "t": 1}', "UTF-8"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"just a string"', "JSON object"),
        (b"", "blank"),
        (b'{"t": 1.0}', "'item_id' is missing"),
        (b'{"item_id": "", "t": 1.0}', "'item_id'"),
        (b'{"item_id": "  ", "t": 1.0}', "'item_id'"),
        (b'{"item_id": 17, "t": 1.0}', "'item_id'"),
        (b'{"item_id": "A1"}', "'t' is missing"),
        (b'{"item_id": "A1", "t": NaN}', "'t'"),
        (b'{"item_id": "A1", "t": -Infinity}', "'t'"),
        (b'{"item_id": "A1", "t": 1e999}', "'t'"),
        (b'{"item_id": "A1", "t": "1767225600"}', "'t'"),
        (b'{"item_id": "A1", "t": true}', "'t'"),
    ],
)
def test_bad_lines_become_error_lines_not_exceptions(tmp_path: Path, line: bytes, needle: str) -> None:
    path = write_lines(tmp_path, good("A0"), line, good("A2"))
    lines = list(iter_log(tmp_path))
    assert [ln.line_no for ln in lines] == [1, 2, 3]
    bad = lines[1]
    assert bad.record is None
    assert needle in bad.error
    assert bad.error.startswith(f"{path} line 2:")
    assert lines[0].record.item_id == "A0" and lines[2].record.item_id == "A2"


def test_error_line_keeps_the_item_id_when_it_can(tmp_path: Path) -> None:
    write_lines(tmp_path, '{"item_id": "A7", "t": "soon"}', '{"item_id": "A8"')
    first, second = iter_log(tmp_path)
    assert first.item_id == "A7" and first.record is None
    assert second.item_id is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"weight_g": "abc"}, "weight_g"),
        ({"weight_g": True}, "weight_g"),
        ({"weight_g": [1]}, "weight_g"),
        ({"weight_g": -3}, "weight_g"),
        ({"weight_g": 0}, "weight_g"),
        ({"weight_g": 2_000_001}, "weight_g"),
        ({"length_mm": 5000.5}, "length_mm"),
        ({"width_mm": -1.0}, "width_mm"),
        ({"height_mm": 0.0}, "height_mm"),
        ({"surface_temp_c": -61}, "surface_temp_c"),
        ({"surface_temp_c": 1200.5}, "surface_temp_c"),
        ({"label": "lithium"}, "label"),
        ({"label": 1}, "label"),
        ({"xray_low": 5}, "xray_low"),
        ({"rgb": ""}, "rgb"),
    ],
)
def test_bad_fields_become_missing_with_a_problem(tmp_path: Path, fields: dict, field: str) -> None:
    base = {
        "weight_g": 45.0,
        "length_mm": 65.0,
        "width_mm": 18.0,
        "height_mm": 18.0,
        "surface_temp_c": 25.0,
        "label": "li_ion",
        "rgb": "images/a.png",
        "xray_low": "images/b.png",
    }
    path = write_lines(tmp_path, good("A1", **{**base, **fields}))
    (line,) = iter_log(tmp_path)
    rec = line.record
    assert line.error is None and rec is not None
    assert getattr(rec, field) is None
    assert len(rec.problems) == 1
    assert f"'{field}'" in rec.problems[0] and rec.problems[0].startswith(f"{path} line 1:")
    for other in set(base) - {field}:  # the rest of the item is still usable
        assert getattr(rec, other) == base[other]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_readings_are_treated_as_missing(tmp_path: Path, constant: bytes) -> None:
    write_lines(tmp_path, b'{"item_id":"A1","t":1,"weight_g":%s,"height_mm":20,"note":[%s]}' % (constant, constant))
    (line,) = iter_log(tmp_path)
    assert line.record.weight_g is None and line.record.height_mm == 20.0
    assert "'weight_g'" in line.record.problems[0]
    assert line.record.extra["note"] == [None]  # kept, and still writable as strict JSON
    json.dumps(line.record.to_json(), allow_nan=False)


def test_length_shorter_than_width_is_swapped_and_reported() -> None:
    rec = parse_record({"item_id": "A1", "t": 1, "length_mm": 18.0, "width_mm": 65.0})
    assert (rec.length_mm, rec.width_mm) == (65.0, 18.0)
    assert "swapped" in rec.problems[0]


def test_duplicate_item_ids_are_error_lines(tmp_path: Path) -> None:
    write_lines(tmp_path, good("A1"), good("A2"), good("A1"), good("A3"))
    lines = list(iter_log(tmp_path))
    assert [ln.record is not None for ln in lines] == [True, True, False, True]
    assert "duplicate item_id 'A1' (first seen at line 1)" in lines[2].error
    assert lines[2].item_id == "A1"


def test_a_bad_first_occurrence_does_not_block_the_id(tmp_path: Path) -> None:
    write_lines(tmp_path, '{"item_id":"A1","t":"x"}', good("A1"))
    lines = list(iter_log(tmp_path))
    assert lines[0].record is None and lines[1].record is not None


def test_over_long_line_is_reported_without_losing_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lf_reader, "MAX_LINE_BYTES", 64)  # the streaming reader's limit
    write_lines(tmp_path, good("A1"), good("A2", note="x" * 500), good("A3"))
    lines = list(iter_log(tmp_path))
    assert [ln.item_id for ln in lines] == ["A1", None, "A3"]
    assert "longer than the 64-byte limit" in lines[1].error
    assert lines[1].end_offset == lines[2].offset


def test_missing_items_file_is_a_log_format_error(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="holds no items.jsonl") as err:
        list(iter_log(tmp_path))
    assert "follow" not in str(err.value)  # the CLI's words, not a Python argument
    with pytest.raises(LogFormatError, match="no such log directory"):
        list(iter_log(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(LogFormatError, match="is a file, not a log directory"):
        list(iter_log(tmp_path / "file"))
    with pytest.raises(LogFormatError, match="is a file, not a log directory"):
        read_meta(tmp_path / "file")


# ------------------------------------------------------------- torn lines


def test_torn_last_line_without_follow(tmp_path: Path) -> None:
    write_lines(tmp_path, good("A1"), good("A2"), newline_at_end=False)
    lines = list(iter_log(tmp_path))
    assert [ln.record.item_id for ln in lines] == ["A1", "A2"]  # complete JSON: parsed

    path = write_lines(tmp_path, good("A1"), good("A2")[:-9], newline_at_end=False)
    lines = list(iter_log(tmp_path))
    assert lines[0].record is not None
    assert lines[1].record is None and "torn" in lines[1].error
    assert lines[1].end_offset == path.stat().st_size


def test_follow_waits_for_the_rest_of_a_torn_line(tmp_path: Path) -> None:
    full = good("A2", weight_g=45.0)
    path = write_lines(tmp_path, good("A1"), full[:12], newline_at_end=False)
    done = threading.Event()

    def recorder() -> None:
        time.sleep(0.15)
        with open(path, "ab") as fh:
            fh.write(full[12:].encode())  # the rest of the line, still no newline
            fh.flush()
            time.sleep(0.1)
            fh.write(b"\n" + good("A3").encode() + b"\n")
        time.sleep(0.1)
        done.set()

    thread = threading.Thread(target=recorder)
    thread.start()
    lines = list(iter_log(tmp_path, follow=True, poll_s=0.01, should_stop=done.is_set))
    thread.join()
    assert [ln.error for ln in lines] == [None, None, None]
    assert [ln.record.item_id for ln in lines] == ["A1", "A2", "A3"]
    assert lines[1].record.weight_g == 45.0
    assert lines[-1].end_offset == path.stat().st_size


def test_follow_waits_for_the_log_to_exist_and_leaves_a_torn_tail_unconsumed(tmp_path: Path) -> None:
    log = tmp_path / "log"
    stop = threading.Event()

    def recorder() -> None:
        time.sleep(0.1)
        write_lines(log, good("A1"), good("A2")[:10], newline_at_end=False)
        time.sleep(0.15)
        stop.set()

    thread = threading.Thread(target=recorder)
    thread.start()
    lines = list(iter_log(log, follow=True, poll_s=0.01, should_stop=stop.is_set))
    thread.join()
    assert [ln.item_id for ln in lines] == ["A1"]  # the partial line is left for later
    assert lines[0].end_offset == len(good("A1")) + 1


def test_follow_stops_when_the_log_is_truncated(tmp_path: Path) -> None:
    path = write_lines(tmp_path, good("A1"), good("A2"))
    deadline = time.monotonic() + 5.0  # a regression ends the test instead of hanging it
    gen = iter_log(tmp_path, follow=True, poll_s=0.01, should_stop=lambda: time.monotonic() > deadline)
    assert next(gen).item_id == "A1"
    assert next(gen).item_id == "A2"
    path.write_bytes(b"")
    with pytest.raises(LogFormatError, match="shrank"):
        next(gen)


# ---------------------------------------------------------------- resuming


def test_resume_from_an_offset_gives_the_rest_with_correct_numbers(tmp_path: Path) -> None:
    write_lines(tmp_path, good("A1"), "oops", good("A2"), good("A1"), good("A3"))
    full = list(iter_log(tmp_path))
    for k in range(len(full)):
        start = full[k - 1].end_offset if k else 0
        rest = list(iter_log(tmp_path, start_offset=start, start_line=k + 1))
        assert rest == full[k:]  # ids seen before the offset still count as duplicates
    assert "duplicate item_id 'A1'" in full[3].error


def test_resume_refuses_an_offset_that_is_not_a_line_start(tmp_path: Path) -> None:
    write_lines(tmp_path, good("A1"), good("A2"))
    first = next(iter_log(tmp_path))
    with pytest.raises(LogFormatError, match="not at the start of a line"):
        list(iter_log(tmp_path, start_offset=first.end_offset - 3, start_line=2))
    with pytest.raises(LogFormatError, match="not line 5"):
        list(iter_log(tmp_path, start_offset=first.end_offset, start_line=5))
    with pytest.raises(LogFormatError, match="beyond the end"):
        list(iter_log(tmp_path, start_offset=10_000, start_line=3))


# ------------------------------------------------------------------- images


@pytest.fixture
def xray_png(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(rng_images()["xray_low"]))
    return path


def test_missing_and_empty_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found") as info:
        load_png(tmp_path / "nope.png", kind="xray")
    assert "nope.png" in str(info.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes"):
        load_png(tmp_path / "empty.png", kind="rgb")
    (tmp_path / "text.png").write_bytes(b"GIF89a not a png at all, at least 33 bytes long")
    with pytest.raises(ImageError, match="not a PNG"):
        load_png(tmp_path / "text.png", kind="rgb")


@pytest.mark.parametrize("cut", [4, 20, 40, 100, -12])
def test_truncated_png_is_refused(xray_png: Path, cut: int) -> None:
    data = xray_png.read_bytes()
    xray_png.write_bytes(data[:cut])
    with pytest.raises(ImageError) as info:
        load_png(xray_png, kind="xray")
    assert str(xray_png) in str(info.value)


def test_corrupt_png_is_refused(xray_png: Path) -> None:
    data = bytearray(xray_png.read_bytes())
    data[60:200] = bytes(140)  # zeroes over the compressed pixels
    xray_png.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt"):
        load_png(xray_png, kind="xray")
    data = bytearray(encode_png(np.zeros((4, 4), np.uint16)))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    xray_png.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="IHDR"):
        load_png(xray_png, kind="xray")


@pytest.mark.parametrize(
    ("img", "kind", "needle"),
    [
        (np.zeros((4, 5), np.uint8), "xray", "8-bit grayscale"),
        (np.zeros((4, 5, 3), np.uint16), "xray", "16-bit RGB"),
        (np.zeros((4, 5, 3), np.uint16), "rgb", "16-bit RGB"),
        (np.zeros((4, 5), np.uint8), "rgb", "8-bit grayscale"),
        (np.zeros((4, 5), np.uint16), "rgb", "16-bit grayscale"),
    ],
)
def test_images_of_the_wrong_kind_are_refused(tmp_path: Path, img: np.ndarray, kind: str, needle: str) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(encode_png(img))
    with pytest.raises(ImageError) as info:
        load_png(path, kind=kind)
    msg = str(info.value)
    assert needle in msg and str(path) in msg
    assert ("16-bit grayscale" if kind == "xray" else "8-bit colour") in msg


def test_rgba_and_palette_images_load_as_rgb(tmp_path: Path) -> None:
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    (tmp_path / "a.png").write_bytes(encode_png(rgba))
    got = load_png(tmp_path / "a.png", kind="rgb")
    assert got.shape == (3, 4, 3) and tuple(got[0, 0]) == (200, 0, 0)

    rows = b"".join(b"\x00" + bytes([0, 1, 1]) for _ in range(2))  # filter byte + 3 indices
    (tmp_path / "p.png").write_bytes(png_bytes(3, 2, 8, 3, rows, plte=bytes([10, 20, 30, 200, 100, 50])))
    got = load_png(tmp_path / "p.png", kind="rgb")
    assert got.shape == (2, 3, 3)
    assert tuple(got[0, 0]) == (10, 20, 30) and tuple(got[1, 2]) == (200, 100, 50)


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*args: object) -> None:
        raise AssertionError("decoded an image whose header is over the limit")

    monkeypatch.setattr(lf_images.cv2, "imdecode", must_not_decode)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100_000, 100_000, 16, 0, rows=b"\x00" * 1000))
    for kind in ("xray", "rgb"):
        with pytest.raises(ImageError, match="decompression bomb") as info:
            load_png(path, kind=kind)
        assert "100000x100000" in str(info.value)
    path.write_bytes(encode_png(np.zeros((10, 10), np.uint16)))
    with pytest.raises(ImageError, match="limit of 50"):
        load_png(path, kind="xray", max_pixels=50)


def test_png_far_larger_than_its_pixels_is_refused(tmp_path: Path) -> None:
    data = encode_png(np.zeros((2, 2), np.uint16))
    junk = b"\x00" * (2 << 20)
    chunk = struct.pack(">I", len(junk)) + b"teXt" + junk + struct.pack(">I", zlib.crc32(b"teXt" + junk))
    (tmp_path / "big.png").write_bytes(data[:33] + chunk + data[33:])
    with pytest.raises(ImageError, match="far more than"):
        load_png(tmp_path / "big.png", kind="xray")


# -------------------------------------------------------------- path safety


@pytest.mark.parametrize("rel", ["../x.png", "images/../../x.png", "/etc/passwd", "C:/x.png", "\\\\host\\x.png", ""])
def test_paths_leaving_the_log_dir_are_refused(tmp_path: Path, rel: str) -> None:
    (tmp_path / "log").mkdir()
    with pytest.raises(UnsafePathError):
        resolve_image_path(tmp_path / "log", rel)


def test_symlinks_are_followed_only_inside_the_log_dir(tmp_path: Path) -> None:
    log = tmp_path / "log"
    (log / "images").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode_png(np.zeros((2, 2), np.uint16)))
    (log / "images" / "out.png").symlink_to(secret)
    (log / "images" / "real.png").write_bytes(secret.read_bytes())
    (log / "images" / "in.png").symlink_to(log / "images" / "real.png")
    with pytest.raises(UnsafePathError, match="outside the log directory"):
        resolve_image_path(log, "images/out.png")
    assert resolve_image_path(log, "images/in.png") == (log / "images" / "real.png").resolve()
    assert resolve_image_path(log, "images/../images/real.png").name == "real.png"


def test_load_item_turns_image_problems_into_item_problems(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "low.png").write_bytes(encode_png(np.zeros((4, 6), np.uint16)))
    (tmp_path / "images" / "rgb8.png").write_bytes(encode_png(np.zeros((4, 6), np.uint8)))
    rec = parse_record(
        {
            "item_id": "A1",
            "t": 1,
            "weight_g": -1,
            "xray_low": "images/low.png",
            "xray_high": "../../etc/passwd",
            "rgb": "images/rgb8.png",
        }
    )
    item = load_item(rec, tmp_path, LogMeta())
    assert item.xray_low is not None and item.xray_low.shape == (4, 6)
    assert item.xray_high is None and item.rgb is None
    assert item.problems[0] == rec.problems[0]  # the record's own problem comes first
    assert len(item.problems) == 3
    assert "'xray_high'" in item.problems[1] and "outside the log directory" in item.problems[1]
    assert "'rgb'" in item.problems[2] and "8-bit colour" in item.problems[2]


def test_load_item_drops_an_xray_pair_of_different_sizes(tmp_path: Path) -> None:
    (tmp_path / "lo.png").write_bytes(encode_png(np.zeros((4, 6), np.uint16)))
    (tmp_path / "hi.png").write_bytes(encode_png(np.zeros((4, 7), np.uint16)))
    rec = ItemRecord(item_id="A1", t=1.0, xray_low="lo.png", xray_high="hi.png")
    item = load_item(rec, tmp_path, LogMeta())
    assert item.xray_low is None and item.xray_high is None
    assert "same pixel grid" in item.problems[0]


def test_records_and_items_survive_pickling_for_worker_processes() -> None:
    meta = read_meta(EXAMPLE)
    lines = list(iter_log(EXAMPLE))
    item = load_item(lines[0].record, EXAMPLE, meta)
    assert pickle.loads(pickle.dumps(lines)) == lines
    assert dict(pickle.loads(pickle.dumps(lines[1].record)).extra) == dict(lines[1].record.extra)
    back = pickle.loads(pickle.dumps(item))
    np.testing.assert_array_equal(back.xray_high, item.xray_high)
    assert dict(pickle.loads(pickle.dumps(meta)).extra) == {"site": "example-plant"}


def test_errors_belong_to_the_sorter_tree() -> None:
    assert issubclass(UnsafePathError, ImageError) and issubclass(ImageError, SorterError)
    assert issubclass(LogFormatError, ValueError)


# ------------------------------------------------------------ property tests

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
plausible = {
    "weight_g": st.floats(-10, 3e6),
    "length_mm": st.floats(-1, 6000),
    "width_mm": st.floats(-1, 6000),
    "height_mm": st.floats(-1, 6000),
    "surface_temp_c": st.floats(-100, 1500),
    "label": st.sampled_from([*LABELS, "LI_ION", ""]),
    **{name: st.text(max_size=12) for name in IMAGE_FIELDS},
}
json_objects = st.one_of(
    st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)) | st.text(max_size=6), json_values, max_size=12),
    st.fixed_dictionaries(
        {"item_id": st.text(max_size=10), "t": st.floats() | st.integers()},
        optional={**{k: v | json_values for k, v in plausible.items()}, "extra_field": json_values},
    ),
)


@FUZZ
@given(obj=json_objects | json_values)
def test_parse_record_fuzz_only_raises_log_format_error(obj: object) -> None:
    try:
        rec = parse_record(obj, line_no=3, where="fuzz.jsonl")
    except LogFormatError as err:
        assert str(err).startswith("fuzz.jsonl line 3:")
        return
    for name in NUMERIC_FIELDS:
        value = getattr(rec, name)
        assert value is None or (isinstance(value, float) and math.isfinite(value))
    assert rec.label is None or rec.label in LABELS
    assert all(getattr(rec, n) is None or isinstance(getattr(rec, n), str) for n in IMAGE_FIELDS)
    assert rec.length_mm is None or rec.width_mm is None or rec.length_mm >= rec.width_mm
    # what was accepted survives a strict-JSON round trip unchanged and without problems
    again = parse_record(json.loads(json.dumps(rec.to_json(), allow_nan=False)), line_no=3)
    assert again == dataclasses.replace(rec, problems=())
    assert dict(again.extra) == dict(rec.extra)


line_bytes = st.one_of(
    st.binary(max_size=40),
    json_objects.map(lambda o: json.dumps(o).encode()),
    st.sampled_from([good("A1"), good("A2"), good("A1", weight_g=5)]).map(str.encode),
).map(lambda b: b.replace(b"\n", b""))


@FUZZ
@given(lines=st.lists(line_bytes, max_size=8), newline_at_end=st.booleans(), data=st.data())
def test_iter_log_fuzz_one_log_line_per_input_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], newline_at_end: bool, data: st.DataObject
) -> None:
    log = tmp_path_factory.mktemp("fuzz")
    raw = b"\n".join(lines) + (b"\n" if newline_at_end and lines else b"")
    (log / ITEMS_FILE).write_bytes(raw)
    expected = len(lines) if (newline_at_end or (lines and lines[-1])) else max(len(lines) - 1, 0)
    out = list(iter_log(log))
    assert len(out) == expected
    assert [ln.line_no for ln in out] == list(range(1, expected + 1))
    assert all(isinstance(ln, LogLine) and (ln.record is None) != (ln.error is None) for ln in out)
    assert all(ln.error is None or f"line {ln.line_no}:" in ln.error for ln in out)
    assert [ln.offset for ln in out[1:]] == [ln.end_offset for ln in out[:-1]]
    assert (out[-1].end_offset if out else 0) == len(raw)
    if out:
        k = data.draw(st.integers(0, len(out) - 1))
        assert list(iter_log(log, start_offset=out[k].offset, start_line=k + 1)) == out[k:]


def _mutated_png(draw: st.DrawFn) -> bytes:
    base = draw(
        st.sampled_from(
            [
                encode_png(np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000),
                encode_png(np.arange(90, dtype=np.uint8).reshape(5, 6, 3)),
            ]
        )
    )
    data = bytearray(base)
    for pos, val in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=4)):
        data[pos] = val
    return bytes(data[: draw(st.integers(0, len(data)))])


@FUZZ
@given(blob=st.binary(max_size=300) | st.composite(_mutated_png)(), kind=st.sampled_from(["xray", "rgb"]))
def test_load_png_fuzz_only_raises_image_error(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes, kind: str
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.png"
    path.write_bytes(blob)
    try:
        img = load_png(path, kind=kind)
    except ImageError as err:
        assert str(path) in str(err)
        return
    assert img.dtype == (np.uint16 if kind == "xray" else np.uint8)
    assert img.ndim == (2 if kind == "xray" else 3)
