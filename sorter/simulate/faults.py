"""Fault injection: a log holding every kind of bad input a recorder or a disk can produce.

For drills and tests of everything that reads logs (batch scoring, the line controller):
each bad line or image is one of :data:`BAD_KINDS`, next to good items, and the function
returns what it wrote at each line, so a check can assert that every line got its row and a
safe lane.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..logformat import LogWriter, encode_png
from .run import SimConfig, simulate_item

BAD_KINDS: tuple[str, ...] = (
    "truncated_json",
    "invalid_json",
    "not_an_object",
    "non_utf8",
    "missing_item_id",
    "missing_t",
    "duplicate_item_id",
    "wrong_types",
    "nan_and_infinity",
    "negative_readings",
    "absurd_readings",
    "missing_png",
    "empty_png",
    "truncated_png",
    "corrupt_png",
    "xray_8bit",
    "rgb_16bit",
    "decompression_bomb",
    "path_dotdot",
    "path_absolute",
    "path_symlink_out",
    "xray_size_mismatch",
)


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares an enormous image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_bad_log(out_dir: str | os.PathLike, *, good_items: int = 20, seed: int = 0) -> dict[int, str]:
    """Write a log of good simulated items with one line of every bad kind among them.

    Returns ``{line_no: kind}`` (``"good"`` for good lines). Images that are bad sit inside
    ``images/``; the symlink points outside the log directory.
    """
    out = Path(out_dir)
    cfg = SimConfig(items=good_items + len(BAD_KINDS), seed=seed, faults=0.0)
    raw_lines: list[bytes] = []
    img_dir = out / "images"
    with LogWriter(out, cfg.meta()) as w:
        for i in range(good_items):
            s = simulate_item(cfg, i)
            w.append(s.record, s.images)
    lines = (out / "items.jsonl").read_bytes().splitlines()
    template = json.loads(lines[0])
    good = list(lines)
    outside = out.parent / f"{out.name}-outside.png"
    s0 = simulate_item(cfg, good_items)
    outside.write_bytes(encode_png(s0.images["rgb"]))

    def item(i: int, **over: object) -> bytes:
        obj = dict(template)
        obj.update({"item_id": f"bad-{i:03d}"})
        obj.update(over)
        return json.dumps(obj).encode()

    xl = template["xray_low"]
    for i, kind in enumerate(BAD_KINDS):
        if kind == "truncated_json":
            line = item(i)[:40]
        elif kind == "invalid_json":
            line = b'{"item_id": "bad", t: 1}'
        elif kind == "not_an_object":
            line = b"[1, 2, 3]"
        elif kind == "non_utf8":
            line = b'{"item_id": "bad-\xff\xfe", "t": 1.0}'
        elif kind == "missing_item_id":
            line = json.dumps({"t": 1.0, "weight_g": 100.0}).encode()
        elif kind == "missing_t":
            line = json.dumps({"item_id": f"bad-{i:03d}", "weight_g": 100.0}).encode()
        elif kind == "duplicate_item_id":
            line = item(i, item_id=template["item_id"])
        elif kind == "wrong_types":
            line = item(i, weight_g="heavy", length_mm=[1], surface_temp_c=True, rgb=7)
        elif kind == "nan_and_infinity":
            line = (
                item(i)
                .replace(b'"weight_g":', b'"weight_g": NaN, "x_weight_g":')
                .replace(b'"height_mm":', b'"height_mm": Infinity, "x_height_mm":')
            )
        elif kind == "negative_readings":
            line = item(i, weight_g=-5.0, length_mm=-1.0)
        elif kind == "absurd_readings":
            line = item(i, weight_g=9e12, height_mm=1e9, surface_temp_c=5000.0)
        else:
            name = f"images/bad-{i:03d}.png"
            p = out / name
            if kind == "missing_png":
                line = item(i, rgb=name)
            elif kind == "empty_png":
                p.write_bytes(b"")
                line = item(i, xray_low=name)
            elif kind == "truncated_png":
                p.write_bytes((out / xl).read_bytes()[:200])
                line = item(i, xray_low=name)
            elif kind == "corrupt_png":
                data = bytearray((out / xl).read_bytes())
                data[60:400] = os.urandom(340)
                p.write_bytes(bytes(data))
                line = item(i, xray_low=name)
            elif kind == "xray_8bit":
                p.write_bytes(encode_png(np.full((40, 40), 200, np.uint8)))
                line = item(i, xray_high=name)
            elif kind == "rgb_16bit":
                p.write_bytes(encode_png(np.full((40, 40, 3), 20000, np.uint16)))
                line = item(i, rgb=name)
            elif kind == "decompression_bomb":
                p.write_bytes(_bomb_png())
                line = item(i, xray_low=name)
            elif kind == "path_dotdot":
                line = item(i, rgb=f"../{outside.name}")
            elif kind == "path_absolute":
                line = item(i, rgb=str(outside))
            elif kind == "path_symlink_out":
                link = img_dir / f"bad-{i:03d}-link.png"
                link.symlink_to(outside)
                line = item(i, rgb=f"images/{link.name}")
            elif kind == "xray_size_mismatch":
                p.write_bytes(encode_png(np.full((30, 30), 30000, np.uint16)))
                line = item(i, xray_high=name)
            else:  # pragma: no cover - BAD_KINDS and this function move together
                raise AssertionError(kind)
        raw_lines.append(line)
    # interleave: a bad line after every good one
    merged: list[bytes] = []
    result: dict[int, str] = {}
    bad_iter = iter(raw_lines)
    kind_list = list(BAD_KINDS)
    for g in good:
        merged.append(g)
        result[len(merged)] = "good"
        if kind_list:
            merged.append(next(bad_iter))
            result[len(merged)] = kind_list.pop(0)
    for rest in bad_iter:
        merged.append(rest)
        result[len(merged)] = kind_list.pop(0)
    (out / "items.jsonl").write_bytes(b"\n".join(merged) + b"\n")
    return result


__all__ = ["BAD_KINDS", "write_bad_log"]
