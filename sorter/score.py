"""``sorter score``: score recorded logs to CSV or Parquet, in order, resumably.

Output rows follow the input lines one for one (bad lines included, lane ``manual``
with the reason).  Work is journalled in ``OUT.partial/``: scored rows go to numbered
Parquet segments, and ``progress.json`` (replaced atomically after each segment)
records where each log stands.  A rerun after an interruption continues from the last
segment; when every log is done the segments are streamed into ``OUT`` and the
journal is removed, so the output equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .batch import MeasuredChunk, iter_measured, start_workers
from .errors import SorterError
from .logformat import ITEMS_FILE, read_meta
from .model import SorterModel, load_model
from .scoring import OUTPUT_COLUMNS, Decision, Scorer, error_decision

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("log", pa.string()),
        ("line_no", pa.int64()),
        ("item_id", pa.string()),
        ("chemistry", pa.string()),
        ("p_lead_acid", pa.float64()),
        ("p_li_ion", pa.float64()),
        ("p_other", pa.float64()),
        ("p_damaged", pa.float64()),
        ("novelty", pa.float64()),
        ("lane", pa.string()),
        ("reason", pa.string()),
        ("problems", pa.string()),
        ("weight_g", pa.float64()),
        ("energy_wh", pa.float64()),
        ("energy_wh_upper", pa.float64()),
    ]
)
SEGMENT_ROWS = 2048
JOURNAL_VERSION = 1


@dataclass
class ScoreSummary:
    items: int = 0
    lanes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    resumed_from: int = 0
    out: str = ""

    def add(self, d: Decision) -> None:
        self.items += 1
        self.lanes[d.lane] += 1
        if d.reason.startswith("cannot score"):
            self.errors[_error_kind(d.reason)] += 1
        elif d.problems:
            self.errors["reading problem (scored)"] += 1

    def format(self) -> str:
        rate = (self.items - self.resumed_from) / self.seconds if self.seconds > 0 else float("nan")
        lines = [f"scored {self.items} items into {self.out} ({rate:.0f} items/s"
                 + (f", resumed after {self.resumed_from}" if self.resumed_from else "") + ")",
                 "lanes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.lanes.items())),
                 "errors: " + (", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none")]
        return "\n".join(lines)


def _error_kind(reason: str) -> str:
    r = reason.lower()
    for key in ("duplicate", "torn", "json", "utf-8", "item_id", "field 't'", "measurement failed", "model failed"):
        if key in r:
            return key
    return "other"


def decisions_for_chunk(scorer: Scorer, ch: MeasuredChunk) -> list[Decision]:
    """Decisions for a measured chunk, in line order (bad lines get a manual row)."""
    ok = np.flatnonzero(ch.ok)
    good = scorer.decide_rows(
        ch.raw[ok], [ch.lines[k].line_no for k in ok], [ch.lines[k].record.item_id for k in ok],  # type: ignore[union-attr]
        [ch.problems[k] for k in ok], ch.meta,
    )
    out: list[Decision] = []
    it = iter(good)
    for k, ln in enumerate(ch.lines):
        out.append(next(it) if ch.ok[k] else error_decision(ln.line_no, ln.item_id, ch.problems[k]))
    return out


def _table(rows: list[tuple[str, Decision]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for log_dir, d in rows:
        cols["log"].append(log_dir)
        for c in OUTPUT_COLUMNS:
            cols[c].append(getattr(d, c))
    return pa.table(cols, schema=SCHEMA)


def count_lines(log_dir: str | os.PathLike) -> int:
    p = Path(log_dir) / ITEMS_FILE
    if not p.exists():
        return 0
    n = 0
    last = b"\n"
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


class _Journal:
    """The ``OUT.partial`` directory: segments and progress."""

    def __init__(self, out: Path, logs: list[str], model_id: str, resume: bool):
        self.dir = out.with_name(out.name + ".partial")
        self.progress_path = self.dir / "progress.json"
        key = {"version": JOURNAL_VERSION, "logs": logs, "model": model_id}
        self.state: dict[str, Any] = {**key, "segments": 0, "rows": 0, "positions": {}}
        if resume and self.progress_path.exists():
            try:
                old = json.loads(self.progress_path.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if old and all(old.get(k) == v for k, v in key.items()):
                self.state = old
                # segments written after the last progress update are incomplete: drop them
                for seg in self.dir.glob("segment-*.parquet"):
                    if int(seg.stem.split("-")[1]) >= self.state["segments"]:
                        seg.unlink()
                return
            log.warning("%s belongs to another run (logs or model differ); starting over", self.dir)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self._save()

    def start_positions(self) -> dict[str, tuple[int, int]]:
        return {k: (int(v[0]), int(v[1])) for k, v in self.state["positions"].items()}

    def add_segment(self, table: pa.Table, positions: dict[str, tuple[int, int]]) -> None:
        seg = self.dir / f"segment-{self.state['segments']:06d}.parquet"
        tmp = seg.with_suffix(".tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, seg)
        self.state["segments"] += 1
        self.state["rows"] += table.num_rows
        self.state["positions"].update({k: list(v) for k, v in positions.items()})
        self._save()

    def _save(self) -> None:
        tmp = self.progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.progress_path)

    def segments(self) -> list[Path]:
        return [self.dir / f"segment-{i:06d}.parquet" for i in range(self.state["segments"])]

    def finish(self, out: Path) -> None:
        tmp = out.with_name(out.name + ".tmp")
        if out.suffix == ".parquet":
            with pq.ParquetWriter(tmp, SCHEMA) as w:
                for seg in self.segments():
                    w.write_table(pq.read_table(seg, schema=SCHEMA))
        else:
            with pacsv.CSVWriter(tmp, SCHEMA) as w:
                for seg in self.segments():
                    w.write_table(pq.read_table(seg, schema=SCHEMA))
        os.replace(tmp, out)
        shutil.rmtree(self.dir)


def iter_decisions(logs: Sequence[str], scorer: Scorer, *, workers: int, start: dict[str, tuple[int, int]] | None = None,
                   engine: str = "local", client: Any = None, executor: Executor | None = None
                   ) -> Iterator[tuple[MeasuredChunk, list[Decision]]]:
    """Measured chunks and their decisions, in order (``client``: a connected Dask client for
    ``engine="dask"``; ``executor``: the local engine's worker pool, if started already)."""
    if engine == "dask":
        from .distributed import iter_decisions_dask

        # The workers measure and score; the model goes to them once.
        yield from iter_decisions_dask(logs, scorer.model, start=start, client=client,
                                       allow_line_mismatch=scorer.allow_line_mismatch)
        return
    for ch in iter_measured(logs, workers=workers, start=start, executor=executor):
        yield ch, decisions_for_chunk(scorer, ch)


def score_logs(logs: Sequence[str | os.PathLike], out: str | os.PathLike, *, model_dir: str | None = None,
               model: SorterModel | None = None, workers: int = 1, engine: str = "local",
               scheduler: str | None = None, resume: bool = True, progress: bool = False,
               allow_line_mismatch: bool = False) -> ScoreSummary:
    """Score logs into ``out`` (.csv or .parquet). See the module docstring for resuming.

    A log whose declared line differs from the model's has its lead_acid lane closed (its
    items go to manual), unless ``allow_line_mismatch`` (see :class:`sorter.scoring.Scorer`)."""
    outp = Path(out)
    if outp.suffix not in (".csv", ".parquet"):
        raise SorterError(f"--out {out}: use a .csv or .parquet file name")
    logs = [str(Path(d)) for d in logs]
    for d in logs:
        if not Path(d).is_dir():
            raise SorterError(f"{d}: not a log directory; pass directories holding {ITEMS_FILE}")
    # The local engine's workers start first and boot while this process loads the model.
    pool = start_workers(workers) if engine == "local" and workers >= 1 else None
    client = None
    try:
        model = model or load_model(model_dir)
        if engine == "dask":
            from .distributed import connect

            client = connect(scheduler)  # before anything is written: no address or no answer leaves no OUT.partial
        return _score_logs(logs, outp, model, workers=workers, engine=engine, client=client, resume=resume,
                           progress=progress, executor=pool, allow_line_mismatch=allow_line_mismatch)
    finally:
        if client is not None:
            client.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _score_logs(logs: list[str], outp: Path, model: SorterModel, *, workers: int, engine: str, client: Any,
                resume: bool, progress: bool, executor: Executor | None = None,
                allow_line_mismatch: bool = False) -> ScoreSummary:
    journal = _Journal(outp, logs, model.model_id, resume)
    summary = ScoreSummary(out=str(outp), resumed_from=journal.state["rows"])
    for seg in journal.segments():  # count what earlier runs scored
        t = pq.read_table(seg, columns=["lane", "reason", "problems"])
        for lane in t.column("lane").to_pylist():
            summary.lanes[lane] += 1
        summary.items += t.num_rows
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(count_lines(d) for d in logs), initial=summary.items, unit="item", desc="score")
    scorer = Scorer(model, allow_line_mismatch=allow_line_mismatch)
    for d in logs:  # the line check, once per log, here (its warning once, whichever engine scores)
        scorer.line_closed(read_meta(d))
    t0 = time.perf_counter()
    pending: list[tuple[str, Decision]] = []
    positions: dict[str, tuple[int, int]] = {}
    for ch, decisions in iter_decisions(logs, scorer, workers=workers, start=journal.start_positions(),
                                        engine=engine, client=client, executor=executor):
        for d in decisions:
            pending.append((ch.log_dir, d))
            summary.add(d)
        last = ch.lines[-1]
        positions[ch.log_dir] = (last.end_offset, last.line_no + 1)
        if len(pending) >= SEGMENT_ROWS:
            journal.add_segment(_table(pending), positions)
            pending = []
        if bar is not None:
            bar.update(len(decisions))
    if pending:
        journal.add_segment(_table(pending), positions)
    journal.finish(outp)
    if bar is not None:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
