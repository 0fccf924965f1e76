"""``sorter score``: score recorded logs to CSV or Parquet, in order, resumably.

Output rows follow the input lines one for one (bad lines included, lane ``manual``
with the reason).  Work is journalled in ``OUT.partial/``: scored rows go to numbered
Parquet segments, and ``progress.json`` (replaced atomically after each segment)
records where each log stands.  A rerun after an interruption continues from the last
segment; when every log is done the segments are streamed into ``OUT`` and the
journal is removed, so the output equals an uninterrupted run's.

The journal is keyed by the logs in the order given, a fingerprint of each (its
``meta.json`` and the start of its ``items.jsonl``) and the model: a rerun with the
logs reordered, renamed or replaced starts over instead of resuming.  The same log
given twice is refused (each log is scored once).  A run that fails before scoring
anything leaves no journal behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import batch, distributed
from .batch import MeasuredChunk, count_lines, start_workers
from .errors import SorterError
from .logformat import ITEMS_FILE, META_FILE, check_log_dir, item_files, read_meta
from .model import SorterModel, load_model
from .progress import Progress
from .scoring import OUTPUT_COLUMNS, Decision, Scorer

logger = logging.getLogger(__name__)

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
JOURNAL_VERSION = 2
FINGERPRINT_BYTES = 1 << 16  # the start of items.jsonl that identifies a log (item ids, times)


class ScoreInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`score_logs`: ``rows`` rows are saved in ``partial`` for a rerun to resume."""

    def __init__(self, rows: int, partial: Path):
        super().__init__(f"{rows} rows saved in {partial}")
        self.rows = rows
        self.partial = partial


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
        if d.error_kind:  # could not be scored: counted by its code (sorter.errors.ErrorKind)
            self.errors[str(d.error_kind)] += 1
        elif d.problems:
            self.errors["reading problem (scored)"] += 1

    def format(self) -> str:
        rate = (self.items - self.resumed_from) / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"scored {self.items} items into {self.out} ({rate:.0f} items/s"
            + (f", resumed after {self.resumed_from}" if self.resumed_from else "")
            + ")",
            "lanes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.lanes.items())),
            "errors: " + (", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"),
        ]
        return "\n".join(lines)


def _table(rows: list[tuple[str, Decision]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for log_dir, d in rows:
        cols["log"].append(log_dir)
        for c in OUTPUT_COLUMNS:
            cols[c].append(getattr(d, c))
    return pa.table(cols, schema=SCHEMA)


def fingerprint(log_dir: str | os.PathLike) -> str:
    """sha256 of a log's ``meta.json`` and the first :data:`FINGERPRINT_BYTES` of its
    ``items.jsonl`` (of its first segment, when rotated): the same log (even renamed, or grown
    since) has the same fingerprint; another log put in its place has another."""
    h = hashlib.sha256()
    try:
        files = item_files(log_dir)
    except SorterError:
        files = []
    first = files[0].name if files else ITEMS_FILE  # a rotated log: its first segment
    for name, limit in ((META_FILE, None), (first, FINGERPRINT_BYTES)):
        try:
            with open(Path(log_dir) / name, "rb") as fh:
                h.update(fh.read(limit if limit is not None else -1))
        except FileNotFoundError:
            h.update(b"\x00missing")
        h.update(b"\x00")
    return h.hexdigest()


def check_logs(logs: Sequence[str]) -> None:
    """Refuse what cannot be scored as asked, before anything is written: a path that
    is not a log, an unreadable ``meta.json``, the same log given twice."""
    seen: dict[tuple[int, int], int] = {}
    for k, d in enumerate(logs):
        check_log_dir(d)
        read_meta(d)
        st = os.stat(d)
        first = seen.setdefault((st.st_dev, st.st_ino), k)
        if first != k:
            raise SorterError(
                f"{d} is given twice (as logs {first + 1} and {k + 1}"
                + ("" if logs[first] == d else f", the first time as {logs[first]}")
                + "); each log is scored once, so its rows are not repeated: pass it once"
            )


class _Journal:
    """The ``OUT.partial`` directory: segments and progress."""

    def __init__(self, out: Path, logs: list[str], model_id: str, resume: bool):
        self.dir = out.with_name(out.name + ".partial")
        self.progress_path = self.dir / "progress.json"
        key = {
            "version": JOURNAL_VERSION,
            "logs": logs,
            "fingerprints": [fingerprint(d) for d in logs],
            "model": model_id,
        }
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
            logger.warning(
                "%s belongs to another run (the logs, their order or content, or the model differ); starting over",
                self.dir,
            )
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self._save()

    def start_positions(self) -> dict[str, tuple[int, int]]:
        return {k: (int(v[0]), int(v[1])) for k, v in self.state["positions"].items()}

    def add_segment(self, table: pa.Table, positions: dict[str, tuple[int, int]]) -> None:
        seg = self.dir / f"segment-{self.state['segments']:06d}.parquet"
        logger.debug("saving %s (%d rows; %d saved before)", seg.name, table.num_rows, self.state["rows"])
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

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

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


ENGINES: dict[str, Callable[..., Iterator[tuple[MeasuredChunk, list[Decision]]]]] = {
    "local": batch.iter_decisions,  # worker processes measure, this process scores
    "dask": distributed.iter_decisions,  # the Dask workers measure and score
}
"""The scoring engines, by ``--engine`` name.  Each is called as ``engine(logs, scorer, start, *,
workers=, executor=, client=)`` and yields ``(MeasuredChunk, decisions)`` in line order."""


def iter_decisions(
    logs: Sequence[str],
    scorer: Scorer,
    *,
    workers: int,
    start: dict[str, tuple[int, int]] | None = None,
    engine: str = "local",
    client: Any = None,
    executor: Executor | None = None,
) -> Iterator[tuple[MeasuredChunk, list[Decision]]]:
    """Measured chunks and their decisions, in order, from the :data:`ENGINES` entry ``engine``
    (``client``: a connected Dask client for ``engine="dask"``; ``executor``: the local engine's
    worker pool, if started already)."""
    try:
        run = ENGINES[engine]
    except KeyError:
        raise SorterError(f"unknown engine {engine!r}; use one of {', '.join(sorted(ENGINES))}") from None
    yield from run(logs, scorer, start, workers=workers, executor=executor, client=client)


def score_logs(
    logs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model_dir: str | None = None,
    model: SorterModel | None = None,
    workers: int = 1,
    engine: str = "local",
    scheduler: str | None = None,
    resume: bool = True,
    progress: bool = False,
    allow_line_mismatch: bool = False,
    executor: Executor | None = None,
) -> ScoreSummary:
    """Score logs into ``out`` (.csv or .parquet). See the module docstring for resuming.

    ``executor``: the local engine's measuring pool, if the caller started it already
    (:func:`sorter.batch.start_workers`, or :func:`sorter.threads.start_pool` preloading
    ``sorter.batch``, as the CLI does before its own imports); the caller shuts it down.

    A log whose declared line differs from the model's has its lead_acid lane closed (its
    items go to manual), unless ``allow_line_mismatch`` (see :class:`sorter.scoring.Scorer`)."""
    outp = Path(out)
    if outp.suffix not in (".csv", ".parquet"):
        raise SorterError(f"--out {out}: use a .csv or .parquet file name")
    if outp.is_dir():
        raise SorterError(f"--out {out} is a directory; name the output file, e.g. {outp / ('scores' + outp.suffix)}")
    if not outp.parent.is_dir():
        raise SorterError(f"--out {out}: the folder {outp.parent} does not exist; create it first")
    if not os.access(outp.parent, os.W_OK):
        raise SorterError(f"--out {out}: the folder {outp.parent} is not writable; choose another --out")
    logs = [str(Path(d)) for d in logs]
    check_logs(logs)
    # The local engine's workers start first and boot while this process loads the model.
    own_pool = executor is None and engine == "local" and workers >= 1
    pool = start_workers(workers) if own_pool else executor if engine == "local" else None
    client = None
    try:
        model = model or load_model(model_dir, estimators=False)
        if engine == "dask":
            # before anything is written: no address or no answer leaves no OUT.partial
            client = distributed.connect(scheduler)
        return _score_logs(
            logs,
            outp,
            model,
            workers=workers,
            engine=engine,
            client=client,
            resume=resume,
            progress=progress,
            executor=pool,
            allow_line_mismatch=allow_line_mismatch,
        )
    finally:
        if client is not None:
            client.close()
        if own_pool and pool is not None:
            pool.shutdown(cancel_futures=True)


def _score_logs(
    logs: list[str],
    outp: Path,
    model: SorterModel,
    *,
    workers: int,
    engine: str,
    client: Any,
    resume: bool,
    progress: bool,
    executor: Executor | None = None,
    allow_line_mismatch: bool = False,
) -> ScoreSummary:
    try:
        journal = _Journal(outp, logs, model.model_id, resume)
    except OSError as err:
        raise SorterError(
            f"--out {outp}: cannot write its journal {outp.name}.partial ({err}); choose a writable --out"
        ) from err
    try:
        return _run(
            journal,
            logs,
            outp,
            model,
            workers=workers,
            engine=engine,
            client=client,
            progress=progress,
            executor=executor,
            allow_line_mismatch=allow_line_mismatch,
        )
    except KeyboardInterrupt as err:
        rows = journal.state["rows"]
        if rows == 0:
            journal.discard()
        raise ScoreInterrupted(rows, journal.dir) from err
    except BaseException:
        if journal.state["rows"] == 0:
            journal.discard()  # nothing to resume: leave nothing behind
        raise


def _run(
    journal: _Journal,
    logs: list[str],
    outp: Path,
    model: SorterModel,
    *,
    workers: int,
    engine: str,
    client: Any,
    progress: bool,
    executor: Executor | None,
    allow_line_mismatch: bool = False,
) -> ScoreSummary:
    summary = ScoreSummary(out=str(outp), resumed_from=journal.state["rows"])
    for seg in journal.segments():  # count what earlier runs scored
        t = pq.read_table(seg, columns=["lane", "reason", "problems"])
        for lane in t.column("lane").to_pylist():
            summary.lanes[lane] += 1
        summary.items += t.num_rows
    if summary.items:
        logger.info("resuming after %d rows scored by an earlier run (%s)", summary.items, journal.dir)
    logger.info("model %s; %d log(s), %d workers, engine %s", model.model_id, len(logs), workers, engine)
    bar = Progress("score", total=sum(count_lines(d) for d in logs), initial=summary.items, enabled=progress)
    scorer = Scorer(model, allow_line_mismatch=allow_line_mismatch)
    for d in logs:  # the line check, once per log, here (its warning once, whichever engine scores)
        scorer.line_closed(read_meta(d))
    t0 = time.perf_counter()
    pending: list[tuple[str, Decision]] = []
    positions: dict[str, tuple[int, int]] = {}
    for ch, decisions in iter_decisions(
        logs, scorer, workers=workers, start=journal.start_positions(), engine=engine, client=client, executor=executor
    ):
        for d in decisions:
            pending.append((ch.log_dir, d))
            summary.add(d)
        last = ch.lines[-1]
        positions[ch.log_dir] = (last.end_offset, last.line_no + 1)
        if len(pending) >= SEGMENT_ROWS:
            journal.add_segment(_table(pending), positions)
            pending = []
        bar.update(len(decisions))
    if pending:
        journal.add_segment(_table(pending), positions)
    bar.close()
    logger.info("writing %s from %d segments", outp, journal.state["segments"])
    journal.finish(outp)
    summary.seconds = time.perf_counter() - t0
    return summary
