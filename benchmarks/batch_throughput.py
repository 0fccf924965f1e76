"""Batch scoring: throughput against the PNG decode limit, scaling, memory, and the Dask engine.

``python -m benchmarks.batch_throughput [--data bench-data] [--items 20000] [--log DIR] [--no-write]``

On a simulated log (``--items`` items, seed 9100, recycler mix, generated into
``--data`` if missing; or ``--log`` to reuse one), measures in one run:

- the **decode limit**: items/s at which the same items' PNGs are merely read and
  decoded (:func:`sorter.logformat.load_item`, ``cv2.imdecode(IMREAD_UNCHANGED)``) by
  1 and by 2 worker processes fed like ``sorter score`` feeds its workers (measured
  before and after the scoring passes; the mean is used, both are shown);
- ``sorter score`` (the real command, in a subprocess) with ``--workers 1`` and ``2``:
  items/s as the command reports it (from the start of scoring, worker start-up
  included, model loading excluded), the ratio to the decode limit (target ≥ 0.6) and
  the 2-vs-1 speed-up (target ≥ 1.8);
- peak memory (RSS summed over the command's process tree, sampled every 0.2 s) for
  the log (20,000 lines) and for the same log passed five times (100,000 lines,
  a legitimate 5-log input): target within 10 %;
- ``--engine dask`` on a 2-worker ``LocalCluster`` against the local engine with 2
  workers (target ≥ 0.8), and that both wrote the same rows;
- a one-process breakdown of the per-item cost (decode, measure, client side), which
  explains the ratios.

The page cache is warmed first, so the figures are CPU, not disk.  The machine may be
shared: the load average before and after is printed, and a busy machine lowers every
figure, the speed-up most.  Results go to ``docs/performance.md`` (section "batch").
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import psutil
import pyarrow.parquet as pq

from sorter.batch import CHUNK, _assemble, _chunks, _init_worker
from sorter.features.measure import RAW_COLUMNS, measure_item
from sorter.logformat import load_item
from sorter.model import load_model
from sorter.score import count_lines, decisions_for_chunk
from sorter.scoring import Scorer
from sorter.simulate import SimConfig, simulate_log

from ._report import write_section

SEED = 9100
MIX = "recycler"


# ------------------------------------------------------------------------ the log


def ensure_log(data: Path, items: int) -> Path:
    """The benchmark log, generated (into a temporary name, then renamed) if missing."""
    log = data / f"log-{items}-seed{SEED}"
    if (log / "items.jsonl").exists() and count_lines(log) == items:
        return log
    tmp = data / f"{log.name}.partial"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    print(f"generating {items} items into {log} (seed {SEED}, {MIX} mix) ...", flush=True)
    t0 = time.perf_counter()
    simulate_log(SimConfig(items=items, seed=SEED, mix=MIX), tmp, workers=os.cpu_count() or 1)
    tmp.rename(log)
    print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return log


def warm_page_cache(log: Path) -> float:
    """Read every file of the log once, so no pass pays for the disk; returns GB read."""
    n = 0
    for root, _, files in os.walk(log):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while block := fh.read(1 << 22):
                    n += len(block)
    return n / 1e9


# ------------------------------------------------------------------ decode limit


def _decode_records(log_dir: str, meta, recs) -> int:
    """Worker side of the decode limit: read and decode the PNGs, nothing else."""
    for rec, _ in recs:
        load_item(rec, log_dir, meta)
    return len(recs)


def _noop() -> None:
    return None


def decode_rate(log: Path, workers: int) -> float:
    """Items/s at which ``workers`` processes read and decode the log's PNGs (warm pool)."""
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
        for f in [pool.submit(_noop) for _ in range(2 * workers)]:
            f.result()
        t0 = time.perf_counter()
        done = 0
        pending: deque = deque()
        for d, meta, _, recs in _chunks([log], CHUNK):  # the lines are read as `sorter score` reads them
            pending.append(pool.submit(_decode_records, d, meta, recs))
            if len(pending) >= 2 * workers:
                done += pending.popleft().result()
        while pending:
            done += pending.popleft().result()
        return done / (time.perf_counter() - t0)


# ------------------------------------------------------------------ sorter score


class PeakRss:
    """Peak of the summed RSS of some processes, sampled every 0.2 s in a thread."""

    def __init__(self, processes: Callable[[], Sequence[psutil.Process]]):
        self.processes = processes
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in self.processes():
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


@dataclass
class ScoreRun:
    label: str
    lines: int
    rate: float  # items/s as `sorter score` reports it
    wall_s: float  # the whole command, Python start-up and model loading included
    peak_rss_mb: float
    out: Path


def score_run(label: str, logs: list[Path], out: Path, args: list[str],
              more_processes: Callable[[], list[psutil.Process]] = list) -> ScoreRun:
    cmd = [sys.executable, "-m", "sorter", "score", *map(str, logs), "--out", str(out), "--no-resume", *args]
    print(f"{label}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    with PeakRss(lambda: tree(ps) + more_processes()) as rss:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{stderr}")
    m = re.search(r"scored (\d+) items into .* \((\d+) items/s", stdout)
    if not m:
        raise RuntimeError(f"{label}: unexpected output:\n{stdout}")
    r = ScoreRun(label, int(m.group(1)), float(m.group(2)), wall, rss.peak / 2**20, out)
    print(f"  {r.lines} lines, {r.rate:.0f} items/s (wall {r.wall_s:.0f} s), peak RSS {r.peak_rss_mb:.0f} MB",
          flush=True)
    return r


def same_rows(a: Path, b: Path) -> bool:
    def rows(p):
        return [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r.values())
                for r in pq.read_table(p).to_pylist()]

    return rows(a) == rows(b)


# ------------------------------------------------------------ per-item breakdown


def breakdown(log: Path, n: int = 640) -> dict[str, float]:
    """Milliseconds per item of each stage, in this one process (one thread)."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    scorer = Scorer(load_model())
    t = dict.fromkeys(("read", "decode", "measure", "decide"), 0.0)
    items = 0
    with threadpool_limits(1):
        chunks = itertools.islice(_chunks([log], CHUNK), n // CHUNK)
        while True:
            t0 = time.perf_counter()
            try:
                d, meta, lines, recs = next(chunks)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loaded = [load_item(rec, d, meta) for rec, _ in recs]
            t2 = time.perf_counter()
            raw = np.reshape([measure_item(it, amb) for it, (_, amb) in zip(loaded, recs)], (-1, len(RAW_COLUMNS)))
            t3 = time.perf_counter()
            decisions_for_chunk(scorer, _assemble(d, lines, raw, ["; ".join(it.problems) for it in loaded]))
            t4 = time.perf_counter()
            for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[k] += dt
            items += len(lines)
    k = 1e3 / items
    return {"read lines + ambient (client)": t["read"] * k, "read + decode PNGs (worker)": t["decode"] * k,
            "measure features (worker)": t["measure"] * k, "model + policy (client)": t["decide"] * k}


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="bench-data", help="where the simulated log lives (default %(default)s)")
    ap.add_argument("--items", type=int, default=20000, help="items in the simulated log (default %(default)s)")
    ap.add_argument("--log", default=None, help="use this log instead of the simulated one")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args(argv)
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    log = Path(args.log) if args.log else ensure_log(data, args.items)
    n = count_lines(log)
    load_before = os.getloadavg()
    print(f"log {log}: {n} lines; page cache warmed with {warm_page_cache(log):.2f} GB; "
          f"load average {load_before[0]:.1f}", flush=True)
    stages = breakdown(log)
    print("per item: " + ", ".join(f"{k} {v:.2f} ms" for k, v in stages.items()), flush=True)

    decode: dict[int, list[float]] = {1: [], 2: []}
    for w in (1, 2):
        decode[w].append(decode_rate(log, w))
        print(f"decode limit, {w} worker(s): {decode[w][-1]:.0f} items/s", flush=True)

    with tempfile.TemporaryDirectory(dir=data, prefix="batch-out-") as tmp:
        out = Path(tmp)
        s1 = score_run("local, 1 worker", [log], out / "w1.parquet", ["--workers", "1"])
        s2 = score_run("local, 2 workers", [log], out / "w2.parquet", ["--workers", "2"])
        s5 = score_run("local, 2 workers, log x5", [log] * 5, out / "x5.parquet", ["--workers", "2"])

        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True) as cluster:
            me = psutil.Process()

            def cluster_procs() -> list[psutil.Process]:  # nannies and workers are this process's children
                return [p for p in tree(me)[1:] if "sorter" not in " ".join(p.cmdline())]

            sd = score_run("dask, 2-worker LocalCluster", [log], out / "dask.parquet",
                           ["--engine", "dask", "--scheduler", cluster.scheduler_address], cluster_procs)
        dask_same = same_rows(s2.out, sd.out)
        print(f"dask rows identical to local rows: {dask_same}", flush=True)

    for w in (1, 2):
        decode[w].append(decode_rate(log, w))
        print(f"decode limit again, {w} worker(s): {decode[w][-1]:.0f} items/s", flush=True)
    load_after = os.getloadavg()
    lim = {w: sum(v) / len(v) for w, v in decode.items()}

    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    speedup = s2.rate / s1.rate
    mem = s5.peak_rss_mb / s2.peak_rss_mb
    dask_ratio = sd.rate / s2.rate
    rows = [
        ("decode limit, 1 worker", f"{lim[1]:.0f} items/s ({decode[1][0]:.0f} before, {decode[1][1]:.0f} after)",
         "", ""),
        ("decode limit, 2 workers", f"{lim[2]:.0f} items/s ({decode[2][0]:.0f} before, {decode[2][1]:.0f} after)",
         "", ""),
        ("`sorter score --workers 1`", f"{s1.rate:.0f} items/s (wall {s1.wall_s:.0f} s)", "", ""),
        ("`sorter score --workers 2`", f"{s2.rate:.0f} items/s (wall {s2.wall_s:.0f} s)", "", ""),
        ("score / decode limit, 1 worker", f"{s1.rate / lim[1]:.2f}", "≥ 0.6", ok(s1.rate / lim[1] >= 0.6)),
        ("score / decode limit, 2 workers", f"{s2.rate / lim[2]:.2f}", "≥ 0.6", ok(s2.rate / lim[2] >= 0.6)),
        ("speed-up, 2 vs 1 worker", f"{speedup:.2f}", "≥ 1.8", ok(speedup >= 1.8)),
        (f"peak RSS, {s2.lines:,} lines (2 workers)", f"{s2.peak_rss_mb:.0f} MB", "", ""),
        (f"peak RSS, {s5.lines:,} lines (same log ×5)", f"{s5.peak_rss_mb:.0f} MB ({s5.rate:.0f} items/s)", "", ""),
        (f"peak RSS ratio, {s5.lines:,} / {s2.lines:,} lines", f"{mem:.2f}", "≤ 1.10", ok(mem <= 1.10)),
        ("`--engine dask`, 2-worker LocalCluster", f"{sd.rate:.0f} items/s (wall {sd.wall_s:.0f} s, peak RSS "
         f"{sd.peak_rss_mb:.0f} MB client + cluster)", "", ""),
        ("dask / local, 2 workers", f"{dask_ratio:.2f} (rows identical: {'yes' if dask_same else '**no**'})",
         "≥ 0.8", ok(dask_ratio >= 0.8 and dask_same)),
    ]
    md = ["## Batch scoring", "",
          f"`python -m benchmarks.batch_throughput` — `sorter score` on a simulated {n:,}-item log (seed {SEED}, "
          f"{MIX} mix), page cache warm. Rates are those `sorter score` prints (worker start-up included, model "
          "loading not); the decode limit is the rate at which the same worker count merely reads and decodes the "
          "items' PNGs, fed the same way. Memory is the summed RSS of the command's process tree, sampled every "
          f"0.2 s. Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores: other jobs shared "
          "the machine).", "",
          "| measure | value | target | met |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    md += ["", "Cost per item, one process, one thread (first 640 items):", "",
           "| stage | ms per item |", "|---|---|"]
    md += [f"| {k} | {v:.2f} |" for k, v in stages.items()]
    text = "\n".join(md)
    print()
    print(text)
    if not args.no_write:
        write_section("batch", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
