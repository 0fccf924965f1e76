"""The audit's wait on the deadline path, with and without the crash journal, under disk load (issue 14).

``python -m benchmarks.audit_journal [--seconds 40] [--pairs 2] [--rate 100] [--dir DIR] [--no-write]``

What a decision waits for before it may be sent: ``AuditWriter.submit(rec).result()``, timed for
every item at ``--rate`` items/s, while another process writes and syncs 1.5 GB files in a loop on
the audit directory's file system (``dd bs=1M count=1500 conv=fdatasync``, as a recorder rotating
files or a backup would; the same load as ``line_latency --disk-load``).  Each decision's delivery
update follows, as on the line.  The runs alternate, ``audit.journal = "off"`` (the decision waits
for its SQLite commit, which does not wait for fsync but still writes to the disk) and ``"auto"``
(the decision is appended to the crash journal on tmpfs; its commit follows on the writer's
thread), ``--pairs`` times, so both see the same disk.  Both use ``audit.sync = "interval"``.

Reported per run: p50 / p99 / p99.9 / max of the wait, how many waits passed 20 and 50 ms (the
line's p99 target and a deadline's worth of slack), the worst durability lag (what a power cut
would have lost), and that every decision reached the audit log.  The line-level figures (misses,
item-to-ack p99) are ``line_latency --disk-load``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._report import write_section
from benchmarks.line_latency import DiskLoad
from sorter.line.audit import AuditRecord, AuditWriter
from sorter.line.audit.journal import journal_dir_for


def _record(n: int) -> AuditRecord:
    t = time.time()
    return AuditRecord(
        f"it-{n}", n, t, t, t, "li_ion", 0.0, 1.0, 0.0, "li_ion", "confident", "sorter-default@bench", 1.0, 90.0,
        "pending",
    )  # fmt: skip


def run(directory: Path, journal: str, seconds: float, rate: float) -> dict[str, float]:
    """One run: submit at ``rate`` for ``seconds``; the wait of each decision, in ms."""
    work = Path(tempfile.mkdtemp(prefix="audit-journal-", dir=directory))
    db = work / "audit.sqlite"
    jdir = journal_dir_for(db, journal)
    waits: list[float] = []
    writer = AuditWriter(db, journal_dir=jdir, delivery_delay_s=0.05, sync_interval_s=0.02)
    n = 0
    period = 1.0 / rate
    t_next = time.monotonic()
    t_end = t_next + seconds
    try:
        while time.monotonic() < t_end:
            n += 1
            t0 = time.monotonic()
            inserted = writer.submit(_record(n)).result()
            waits.append(1000 * (time.monotonic() - t0))
            assert inserted, f"item {n} refused"
            writer.submit_delivery(f"it-{n}", "acked", plc_seq=n, plc_status="accepted", t_acked=time.time())
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
    finally:
        writer.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM decisions WHERE delivery = 'acked'").fetchone()[0]
    lag_ms = 1000 * writer.max_durability_lag_s
    shutil.rmtree(work, ignore_errors=True)
    a = np.asarray(waits)
    return {
        "items": float(len(a)),
        "rows": float(rows),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "p999": float(np.percentile(a, 99.9)),
        "max": float(a.max()),
        "over20": float((a > 20).sum()),
        "over50": float((a > 50).sum()),
        "lag": lag_ms,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each run (default %(default)s)")
    ap.add_argument("--pairs", type=int, default=2, help="pairs of runs, journal off / on (default %(default)s)")
    ap.add_argument("--rate", type=float, default=100.0, help="decisions per second (default %(default)s)")
    ap.add_argument(
        "--dir", default=None, help="the audit directory (default: the system's temporary directory, on disk)"
    )
    ap.add_argument("--no-load", action="store_true", help="without the disk load (for comparison)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.pairs < 1 or args.rate <= 0:
        print("audit_journal: --seconds, --pairs and --rate must be positive", file=sys.stderr)
        return 2
    directory = Path(args.dir or os.environ.get("TMPDIR") or "/var/tmp")
    if not directory.is_dir():
        print(f"audit_journal: --dir {directory} is not a directory", file=sys.stderr)
        return 2
    if journal_dir_for(directory / "x.sqlite", "auto") is None:
        print("audit_journal: no /dev/shm here, so there is no journal to compare", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)  # the writer's durability-lag warnings are in the table
    load0 = os.getloadavg()[0]
    results: list[tuple[str, dict[str, float]]] = []
    with DiskLoad(str(directory)) if not args.no_load else contextlib.nullcontext():
        time.sleep(0.0 if args.no_load else 5.0)  # let the load reach the disk
        for pair in range(args.pairs):
            for journal in ("off", "auto"):
                r = run(directory, journal, args.seconds, args.rate)
                results.append((journal, r))
                print(
                    f"pair {pair + 1} journal={journal:4s} {r['items']:.0f} items: wait p50 {r['p50']:.2f} "
                    f"p99 {r['p99']:.2f} p99.9 {r['p999']:.1f} max {r['max']:.1f} ms; >20 ms {r['over20']:.0f}, "
                    f">50 ms {r['over50']:.0f}; worst durability lag {r['lag']:.0f} ms; rows {r['rows']:.0f}",
                    flush=True,
                )
    load1 = os.getloadavg()[0]
    lines = [
        "| run | `audit.journal` | decisions | wait p50 (ms) | p99 | p99.9 | max | > 20 ms | > 50 ms "
        "| worst durability lag (ms) | rows acked in the log |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (journal, r) in enumerate(results, 1):
        lines.append(
            f"| {i} | `{journal}` | {r['items']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.1f} | "
            f"{r['max']:.1f} | {r['over20']:.0f} | {r['over50']:.0f} | {r['lag']:.0f} | {r['rows']:.0f} |"
        )

    def worst(journal: str, key: str) -> float:
        return max(r[key] for j, r in results if j == journal)

    md = "\n".join(
        [
            "## The audit's wait on the deadline path under disk load: crash journal on and off (issue 14)",
            "",
            f"Command: `python -m benchmarks.audit_journal --seconds {args.seconds:g} --pairs {args.pairs} "
            f"--rate {args.rate:g}{' --no-load' if args.no_load else ''}`. What a decision waits for before it may "
            f"be sent (`AuditWriter.submit(rec).result()`), {args.rate:g} decisions/s, each followed by its delivery "
            'update, `audit.sync = "interval"`, audit directory on the ordinary disk'
            + (
                "; **another process writes and syncs 1.5 GB files in a loop on the same file system** "
                "(`dd bs=1M count=1500 conv=fdatasync`)."
                if not args.no_load
                else "; no disk load."
            )
            + ' Runs alternate `"off"` (the decision waits for its SQLite commit, which writes the WAL but does '
            'not wait for fsync) and `"auto"` (appended to the crash journal on tmpfs; the commit follows on the '
            "writer's thread).",
            "",
            *lines,
            "",
            f"Worst of the runs: journal off: p99 {worst('off', 'p99'):.1f} ms, max {worst('off', 'max'):.0f} ms, "
            f"{worst('off', 'over50'):.0f} waits over 50 ms; **journal on: p99 {worst('auto', 'p99'):.1f} ms, max "
            f"{worst('auto', 'max'):.0f} ms, {worst('auto', 'over50'):.0f} waits over 50 ms**. Without the journal a "
            "commit that does not fsync still waits on the disk (its write waits behind the other process's flush), "
            "which on the line is a deadline miss for every item behind it; with it, the wait is a write to memory. "
            "The durability lag (the window a power cut would lose, measured from the journal append) is the same "
            "disk's doing either way and is what `audit.max_lag_ms` and the restart's reconciliation are for. "
            f"Load average {load0:.1f} at the start, {load1:.1f} at the end (other work shares the machine).",
        ]
    )
    print(md)
    if not args.no_write:
        write_section("audit_journal", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
