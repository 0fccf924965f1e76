"""Batch work on recorded logs: measure items in parallel, score them, write results.

Lines are read in order in the main process (cheap), the running ambient estimate is
computed there in log order, and chunks of lines go to worker processes that decode
the PNGs and measure the items (the expensive part).  Results come back in order, so
output rows follow the input lines one for one, bad lines included.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ErrorKind, SorterError
from .features.ambient import AmbientTracker
from .features.measure import RAW_COLUMNS, measure_item
from .logformat import ITEMS_FILE, LogLine, item_files, iter_log, load_item, read_meta
from .progress import Progress
from .readings import ItemRecord, LogMeta
from .scoring import Decision, Scorer, error_decision
from .threads import default_workers, start_pool

logger = logging.getLogger(__name__)

CHUNK = 256  # lines per task: large enough that inter-process traffic is a small share of a task


@dataclass
class MeasuredChunk:
    """Measured lines of one chunk, in log order."""

    log_dir: str
    lines: list[LogLine]
    raw: np.ndarray  # (n, len(RAW_COLUMNS)); rows of bad lines are NaN
    problems: list[str]
    ok: np.ndarray  # bool (n,): the line held a usable record
    meta: LogMeta | None = None  # the log's meta (its line's declared settings)

    @property
    def records(self) -> list[ItemRecord | None]:
        return [ln.record for ln in self.lines]


def start_workers(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` measuring processes, started now: they boot (Python, numpy,
    OpenCV, this module) while the caller does other work, such as loading the model, instead
    of after it. Pass it to :func:`iter_measured` as ``executor`` and shut it down when done.
    (:func:`sorter.threads.start_pool` with this module preloaded: a caller that has not
    imported this module yet can start the same pool sooner.)"""
    return start_pool(workers, preload=__name__)


LOAD_GROUP = 32  # items a worker loads before measuring them (about 11 MB of images)


def measure_records(
    log_dir: str, meta: LogMeta, recs: Sequence[tuple[ItemRecord, float | None]]
) -> tuple[np.ndarray, list[str]]:
    """Load and measure records (runs in a worker). Never raises for one bad item.

    Items are loaded :data:`LOAD_GROUP` at a time, then measured: decoding PNGs and measuring
    images each run in a stretch instead of taking turns item by item, which costs about 8 %
    less CPU per item on the benchmark log (the results are the same).
    """
    raw = np.full((len(recs), len(RAW_COLUMNS)), np.nan)
    problems = [""] * len(recs)

    def failed(k: int, err: Exception) -> None:
        logger.exception("%s line %d: measurement failed", log_dir, recs[k][0].line_no)
        problems[k] = f"measurement failed: {err}"

    for first in range(0, len(recs), LOAD_GROUP):
        loaded = []
        for k in range(first, min(first + LOAD_GROUP, len(recs))):
            try:
                loaded.append((k, load_item(recs[k][0], log_dir, meta)))
            except Exception as err:  # noqa: BLE001 - one item must not sink the chunk
                failed(k, err)
        for k, item in loaded:
            try:
                raw[k] = measure_item(item, recs[k][1])
                problems[k] = "; ".join(item.problems)
            except Exception as err:  # noqa: BLE001
                failed(k, err)
    return raw, problems


def iter_chunks(
    log_dirs: Sequence[str | os.PathLike], chunk: int, start: dict[str, tuple[int, int]] | None = None
) -> Iterator[tuple[str, LogMeta, list[LogLine], list[tuple[ItemRecord, float | None]]]]:
    """The lines of the logs in chunks of ``chunk``, in order: ``(log_dir, meta, lines, records)``,
    the records being the usable ones of ``lines`` with their running ambient estimates.

    Read in one process (cheap), so that the ambient estimate runs in log order whoever
    measures the chunk; ``start`` maps a log to the ``(offset, line_no)`` it resumes at.
    """
    for d in log_dirs:
        d = str(d)
        meta = read_meta(d)
        ambient = AmbientTracker()
        _, first = (start or {}).get(d, (0, 1))
        buf: list[LogLine] = []
        # Resuming still reads from the top (records only, no images), so that the running
        # ambient estimate and the duplicate-id check are exactly those of a full run.
        for ln in iter_log(d):
            if ln.line_no < first:
                if ln.record is not None:
                    ambient.observe(ln.record.surface_temp_c)
                continue
            buf.append(ln)
            if len(buf) >= chunk:
                yield d, meta, buf, _with_ambient(buf, ambient)
                buf = []
        if buf:
            yield d, meta, buf, _with_ambient(buf, ambient)


def _with_ambient(lines: list[LogLine], ambient: AmbientTracker) -> list[tuple[ItemRecord, float | None]]:
    out = []
    for ln in lines:
        if ln.record is not None:
            out.append((ln.record, ambient.observe(ln.record.surface_temp_c)))
    return out


def assemble_chunk(
    d: str, lines: list[LogLine], raw_ok: np.ndarray, probs_ok: list[str], meta: LogMeta | None = None
) -> MeasuredChunk:
    """A :class:`MeasuredChunk` of all ``lines`` from the measurements of their usable records
    (bad lines get NaN rows and their error as the problem)."""
    n = len(lines)
    raw = np.full((n, len(RAW_COLUMNS)), np.nan)
    ok = np.array([ln.record is not None for ln in lines], bool)
    raw[ok] = raw_ok
    problems = []
    it = iter(probs_ok)
    for ln in lines:
        problems.append(next(it) if ln.record is not None else (ln.error or "unusable line"))
    return MeasuredChunk(d, lines, raw, problems, ok, meta)


def iter_measured(
    log_dirs: Sequence[str | os.PathLike],
    *,
    workers: int = 1,
    chunk: int | None = None,
    executor: Executor | None = None,
    start: dict[str, tuple[int, int]] | None = None,
) -> Iterator[MeasuredChunk]:
    """Measured chunks of the given logs, in order, with at most ``2 * workers`` chunks in flight.

    ``workers`` processes read, decode and measure the items (one OpenCV and BLAS thread each)
    while this process reads the lines and takes the results: with one worker, what this
    process does with them (the model, the output) overlaps the measuring instead of adding to
    it.  ``workers=0`` measures in this process, on one OpenCV thread (no processes started).
    """
    chunk = chunk or CHUNK
    if workers < 1 and executor is None:
        # In this process, on one core: OpenCV would otherwise spread each call over its own
        # threads, spending more CPU per item for little speed.
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for d, meta, lines, recs in iter_chunks(log_dirs, chunk, start):
                raw, probs = measure_records(d, meta, recs)
                yield assemble_chunk(d, lines, raw, probs, meta)
        finally:
            cv2.setNumThreads(threads)
        return
    own = executor is None
    if executor is None:
        executor = start_workers(workers)
    try:
        pending: list[tuple[str, LogMeta, list[LogLine], Any]] = []
        for d, meta, lines, recs in iter_chunks(log_dirs, chunk, start):
            pending.append((d, meta, lines, executor.submit(measure_records, d, meta, recs)))
            while len(pending) >= 2 * max(workers, 1):
                pd, pm, pl, fut = pending.pop(0)
                raw, probs = fut.result()
                yield assemble_chunk(pd, pl, raw, probs, pm)
        for pd, pm, pl, fut in pending:
            raw, probs = fut.result()
            yield assemble_chunk(pd, pl, raw, probs, pm)
    finally:
        if own:
            executor.shutdown(cancel_futures=True)


def decisions_for_chunk(scorer: Scorer, ch: MeasuredChunk) -> list[Decision]:
    """Decisions for a measured chunk, in line order (bad lines get a manual row)."""
    ok = np.flatnonzero(ch.ok)
    good = scorer.decide_rows(
        ch.raw[ok],
        [ch.lines[k].line_no for k in ok],
        [ch.lines[k].record.item_id for k in ok],  # type: ignore[union-attr]
        [ch.problems[k] for k in ok],
        ch.meta,
    )
    out: list[Decision] = []
    it = iter(good)
    for k, ln in enumerate(ch.lines):
        out.append(
            next(it) if ch.ok[k] else error_decision(ln.line_no, ln.item_id, ch.problems[k], ln.kind or ErrorKind.OTHER)
        )
    return out


def iter_decisions(
    logs: Sequence[str],
    scorer: Scorer,
    start: dict[str, tuple[int, int]] | None = None,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    client: Any = None,
) -> Iterator[tuple[MeasuredChunk, list[Decision]]]:
    """The local engine: measured chunks and their decisions, in order; worker processes
    measure (:func:`iter_measured`), this process scores.  ``client`` is for the engines'
    common signature (:data:`sorter.score.ENGINES`) and unused here."""
    for ch in iter_measured(logs, workers=workers, start=start, executor=executor):
        yield ch, decisions_for_chunk(scorer, ch)


@dataclass
class MeasuredLog:
    """Everything measured from labelled logs, for training and evaluation."""

    raw: np.ndarray
    labels: list[str | None]
    item_ids: list[str | None]
    line_nos: list[int]
    log_dirs: list[str]
    problems: list[str]
    extras: list[dict[str, Any]] = field(default_factory=list)
    ok: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def measure_logs(log_dirs: Sequence[str | os.PathLike], *, workers: int = 1, progress: bool = False) -> MeasuredLog:
    """Measure whole logs into memory (training and evaluation sizes)."""
    raws, labels, ids, nos, dirs, probs, extras, oks = [], [], [], [], [], [], [], []
    bar = Progress("measure", total=sum(count_lines(d) for d in log_dirs), enabled=progress)
    for ch in iter_measured(log_dirs, workers=workers):
        raws.append(ch.raw)
        oks.append(ch.ok)
        for ln in ch.lines:
            r = ln.record
            labels.append(None if r is None else r.label)
            ids.append(ln.item_id if r is None else r.item_id)
            nos.append(ln.line_no)
            dirs.append(ch.log_dir)
            extras.append({} if r is None else dict(r.extra))
        probs += ch.problems
        bar.update(len(ch.lines))
    bar.close()
    raw = np.vstack(raws) if raws else np.zeros((0, len(RAW_COLUMNS)))
    ok = np.concatenate(oks) if oks else np.zeros(0, bool)
    return MeasuredLog(raw, labels, ids, nos, dirs, probs, extras, ok)


def count_lines(log_dir: str | os.PathLike) -> int:
    """Item lines in a log (``items.jsonl`` or all segments of a rotated log; a torn last
    line counts, a segment's header does not), for progress totals."""
    try:
        files = item_files(log_dir)
    except SorterError:
        return 0
    total = 0
    for p in files:
        n = 0
        last = b"\n"
        try:
            with open(p, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    n += block.count(b"\n")
                    last = block[-1:]
        except FileNotFoundError:
            continue
        total += n + (last != b"\n") - (p.name != ITEMS_FILE)  # a segment's first line is its header
    return total


__all__ = [
    "MeasuredChunk",
    "MeasuredLog",
    "assemble_chunk",
    "count_lines",
    "decisions_for_chunk",
    "default_workers",
    "iter_chunks",
    "iter_decisions",
    "iter_measured",
    "measure_logs",
    "measure_records",
    "start_workers",
]


def data_digest(m: MeasuredLog) -> str:
    """sha256 over measured rows and labels: what a model was fitted on (the manifest keeps it,
    and ``sorter evaluate`` recognises its training data by it)."""
    return _digest(m.raw, m.labels)


def _digest(raw: np.ndarray, labels: Sequence[str | None]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.nan_to_num(raw, nan=-1e300)).tobytes())
    h.update("\x00".join(str(x) for x in labels).encode())
    return h.hexdigest()


def log_digests(m: MeasuredLog, log_dirs: Sequence[str]) -> list[str]:
    """:func:`data_digest` of each log's own rows, in order (``sorter evaluate`` warns when
    it is given one of a model's training logs)."""
    out = []
    for d in log_dirs:
        sel = [i for i, x in enumerate(m.log_dirs) if x == str(d)]
        out.append(_digest(m.raw[sel], [m.labels[i] for i in sel]))
    return out
