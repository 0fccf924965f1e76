"""Every kind of bad input gets a row and a safe lane, in batch scoring and on the line,
and the process keeps going."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from sorter.line.app import build_source
from sorter.line.audit import AuditLog
from sorter.line.config import load_config
from sorter.line.controller import Controller
from sorter.line.plc import MemoryPlc
from sorter.score import score_logs
from sorter.simulate.faults import BAD_KINDS, write_bad_log


@pytest.fixture(scope="module")
def bad_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad") / "log"
    kinds = write_bad_log(d, good_items=len(BAD_KINDS) + 2, seed=3)
    return d, kinds


def test_batch_scoring_gives_every_line_a_row_and_bad_lines_a_safe_lane(tmp_path, bad_log):
    d, kinds = bad_log
    out = tmp_path / "s.parquet"
    summary = score_logs([d], out, workers=2)
    rows = {r["line_no"]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == sorted(kinds) and summary.items == len(kinds)
    for line_no, kind in kinds.items():
        r = rows[line_no]
        if kind == "good":
            continue
        assert r["lane"] != "lead_acid", (kind, r)
        text = f"{r['reason']} {r['problems']}"
        assert "items.jsonl" in text or "line" in text or "field" in text, (kind, text)
    # the worst ones say why, naming what was wrong
    by_kind = {kinds[n]: rows[n] for n in rows}
    assert (
        "decompression" in by_kind["decompression_bomb"]["problems"].lower()
        or "pixels" in by_kind["decompression_bomb"]["problems"]
    )
    assert "outside" in by_kind["path_dotdot"]["problems"] or "escape" in by_kind["path_dotdot"]["problems"]
    assert "duplicate" in by_kind["duplicate_item_id"]["reason"]
    assert "16-bit" in by_kind["xray_8bit"]["problems"] or "bit" in by_kind["xray_8bit"]["problems"]


def test_the_line_controller_records_every_line_and_never_sends_a_bad_one_to_lead_acid(tmp_path, bad_log):
    d, kinds = bad_log
    cfg = load_config(
        None,
        env={},
        overrides=[
            "line.source=log",
            f"line.log_dir={d}",
            "line.follow=false",
            "line.deadline_from=arrival",
            "line.belt_speed_m_s=0.03",
            "line.scorer_pool=thread",
            "line.scorer_workers=1",
            f"audit.path={tmp_path / 'audit.sqlite'}",
            "status.enabled=false",
        ],
    )

    async def main():
        link = MemoryPlc(scan_ms=2)
        return await Controller(cfg, link=link, source=build_source(cfg), settle=False).run()

    summary = asyncio.run(main())
    with AuditLog(cfg.audit.path) as log:
        rows = {r.source_line: r for r in log.rows()}
    assert summary.audit_ok and len(rows) == len(kinds)
    for line_no, kind in kinds.items():
        if kind != "good":
            assert rows[line_no].lane != "lead_acid", (kind, rows[line_no])
