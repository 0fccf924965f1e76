"""Restart time of the line controller, and where loading the model goes (issue 14, section 3).

``python -m benchmarks.line_restart [--cycles 3] [--rate 50] [--run-s 2] [--audit-dir DIR] [--quick]
[--no-write]``

1. **Restart after kill -9.** A sensor bridge (a thread of this process) appends items to a log at
   ``--rate`` items/s with the current time as their bridge time; the PLC simulator (pymodbus Modbus
   TCP server on 127.0.0.1, 10 ms scan) runs in this process.  ``sorter run`` is launched as its own
   process (a cold start: a new interpreter, its scoring workers spawned), follows the log, runs
   ``--run-s`` seconds after its first acknowledged decision, and is killed with SIGKILL; then again,
   ``--cycles`` times.  Each restart is measured from ``Popen`` to: the PLC seeing the PC heartbeat
   move (**link up**), and the first decision the PLC acknowledged (the audit row's ``t_acked``:
   **first acked decision**).  The first launch starts on an empty audit log; the others are
   restarts after a kill.
2. **Where loading the model goes**, in a fresh interpreter: importing the controller; loading the
   model as the scoring workers do (``load_model(estimators=False)``: through ``predictor.npz``,
   without scikit-learn); then, for comparison, what loading through the skops files costs
   (importing skops, which imports all of scikit-learn to list its estimators; hashing; skops's
   type scan and load; the fast predictor's self-check against scikit-learn); and a scoring
   worker's start (spawn, imports, model, one warm-up item).
3. **``sorter score`` start-up**: launch to the end of scoring a 20-item log with one worker (its
   output is written at the end, so this bounds "launch to first row").

Every figure depends on the machine's other load (2 shared cores here): the load average is
printed and written with the results.  ``--quick`` runs 2 cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sorter.line.audit.journal import journal_dir_for
from sorter.line.audit.journal import replay as replay_journal
from sorter.line.plc.sim import PlcSimulator
from sorter.line.sources import generate_pool
from sorter.logformat import LogWriter
from sorter.simulate.run import SimConfig

from ._report import write_section

SIM = SimConfig(items=30, seed=14, mix="recycler")

_LOAD_PROFILE = r"""
import json, time
t0 = time.perf_counter()
import sorter.line.app  # what `sorter run` imports: the controller, the PLC link, the sources
t1 = time.perf_counter()
import sorter.model as sm
c = time.process_time()
sm.load_model(estimators=False)  # as a scoring worker loads it: predictor.npz, no scikit-learn
fast_s, fast_cpu = time.perf_counter() - t1, time.process_time() - c
t1 = time.perf_counter()
import skops.io as sio
t2 = time.perf_counter()
import sorter.model as sm
d = sm.default_model_dir()
out = {"import_controller_s": t1 - t0, "import_skops_sklearn_s": t2 - t1, "fast_load_s": fast_s,
       "fast_load_cpu_s": fast_cpu}
a = time.perf_counter()
for f in ("classifier.skops", "damage.skops"):
    sm.sha256_file(d / f)
out["sha256_s"] = time.perf_counter() - a
scan = load = 0.0
for f in ("classifier.skops", "damage.skops"):
    a = time.perf_counter(); u = sio.get_untrusted_types(file=d / f); b = time.perf_counter()
    sio.load(d / f, trusted=sorted(u)); c = time.perf_counter()
    scan += b - a; load += c - b
out["skops_type_scan_s"] = scan
out["skops_load_s"] = load
a = time.perf_counter(); m = sm.load_model(); out["load_model_warm_s"] = time.perf_counter() - a  # skops
m._fast = None
a = time.perf_counter(); m.prepare(); out["predictor_self_check_s"] = time.perf_counter() - a
import asyncio
from sorter.line.scoring_pool import ScoringPool
async def first_worker():
    pool = ScoringPool(None, workers=1)
    a = time.perf_counter(); await pool.start(); b = time.perf_counter()
    await pool.close()
    return b - a
out["first_worker_ready_s"] = asyncio.run(first_worker())
print(json.dumps(out))
"""


def write_config(tmp: Path, log_dir: Path, audit: Path, port: int, workers: int = 2, model: Path | None = None) -> Path:
    cfg = tmp / "line.toml"
    cfg.write_text(f"""
[line]
{f'model = "{model}"' if model else ""}
source = "log"
log_dir = "{log_dir}"
follow = true
log_poll_ms = 2.0
deadline_from = "bridge"
scorer_workers = {workers}
[plc]
kind = "modbus"
host = "127.0.0.1"
port = {port}
[audit]
path = "{audit}"
[metrics]
enabled = false
[status]
enabled = false
""")
    return cfg


class Bridge(threading.Thread):
    """Appends items to the log at a fixed rate, stamped with the current time."""

    def __init__(self, log_dir: Path, rate_hz: float) -> None:
        super().__init__(daemon=True, name="bridge")
        self.log_dir, self.period = log_dir, 1.0 / rate_hz
        self.pool = generate_pool(SIM, SIM.items, workers=1)
        self.stop = threading.Event()
        self.count = 0

    def run(self) -> None:
        with LogWriter(self.log_dir, meta=SIM.meta()) as w:
            nxt = time.monotonic()
            while not self.stop.is_set():
                self.count += 1
                s = self.pool[self.count % len(self.pool)]
                w.append(dataclasses.replace(s.record, item_id=f"{self.count:08d}", t=time.time()), s.images)
                nxt += self.period
                time.sleep(max(0.0, nxt - time.monotonic()))


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group (the
    controller and its scoring workers), from /proc; NaN where /proc is not there."""
    total, tick, seen = 0.0, os.sysconf("SC_CLK_TCK"), False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return float("nan")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
            seen = True
    return total if seen else float("nan")


def first_acked(audit: Path, after: float) -> float | None:
    """The earliest t_acked of an acked row recorded after ``after`` (epoch s)."""
    if not audit.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{audit}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute(
                "SELECT MIN(t_acked) FROM decisions WHERE delivery = 'acked' AND t_acked > ?", (after,)
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return None if row is None or row[0] is None else float(row[0])


async def cycles(args: argparse.Namespace, tmp: Path, model: Path | None = None) -> list[dict[str, float]]:
    sim = PlcSimulator(port=0, scan_ms=10.0)
    await sim.start()
    tag = "skops" if model else "npz"
    log_dir, audit = tmp / f"log-{tag}", Path(args.audit_dir or tmp) / f"restart-{os.getpid()}-{tag}.sqlite"
    bridge = Bridge(log_dir, args.rate)
    bridge.start()
    cfg = write_config(tmp, log_dir, audit, sim.port, args.workers, model)
    out: list[dict[str, float]] = []
    try:
        while bridge.count < 5:
            await asyncio.sleep(0.05)
        for k in range(args.cycles):
            hb = sim.model._pc_heartbeat
            t_launch = time.time()
            mono0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "sorter", "run", "--config", str(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            link_up = ack = None
            cpu = float("nan")
            try:
                while time.monotonic() - mono0 < 120:
                    if link_up is None and sim.model._pc_heartbeat != hb:
                        link_up = time.monotonic() - mono0
                    if ack is None:
                        t = await asyncio.to_thread(first_acked, audit, t_launch)
                        if t is not None:
                            ack = t - t_launch
                            cpu = group_cpu_s(proc.pid)  # the controller and its workers, to first ack
                    if ack is not None and link_up is not None:
                        break
                    if proc.poll() is not None:
                        raise RuntimeError(f"sorter run exited: {proc.stderr.read().decode()[-2000:]}")
                    await asyncio.sleep(0.01)
                await asyncio.sleep(args.run_s)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            # Let the simulator serve what the killed controller had sent: a heartbeat write still in
            # its queue would otherwise count as the next launch's link coming up (0.03 s once).
            await asyncio.sleep(0.5)
            out.append(
                {"cycle": k + 1, "link_up_s": link_up or float("nan"), "first_ack_s": ack or float("nan"), "cpu_s": cpu}
            )
            print(
                f"launch {k + 1}{' (empty audit log)' if k == 0 else ' (after kill -9)'}: link up "
                f"{out[-1]['link_up_s']:.2f} s, first acked decision {out[-1]['first_ack_s']:.2f} s "
                f"({cpu:.2f} CPU-s)",
                flush=True,
            )
    finally:
        bridge.stop.set()
        bridge.join(10)
        await sim.stop()
        # The last launch was killed: write its crash journal (on tmpfs) into its audit log, as the
        # next start would, so that no journal is left behind in /dev/shm.
        replay_journal(audit, journal_dir_for(audit, "auto"))
    return out


def load_profile() -> dict[str, float]:
    res = subprocess.run(
        [sys.executable, "-c", _LOAD_PROFILE],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def score_startup(tmp: Path) -> float:
    log_dir = tmp / "score-log"
    pool = generate_pool(SIM, 20, workers=1)
    with LogWriter(log_dir, meta=SIM.meta()) as w:
        for k, s in enumerate(pool[:20], 1):
            w.append(dataclasses.replace(s.record, item_id=f"{k:08d}", t=time.time()), s.images)
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "sorter", "score", str(log_dir), "--out", str(tmp / "scores.csv"), "--workers", "1"],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=3, help="launches (the first on an empty log; default %(default)s)")
    ap.add_argument("--rate", type=float, default=50.0, help="items per second from the bridge (default %(default)s)")
    ap.add_argument("--run-s", type=float, default=2.0, help="run this long after the first ack before the kill")
    ap.add_argument("--audit-dir", default=None, help="directory of the audit log (default: a temporary directory)")
    ap.add_argument("--workers", type=int, default=2, help="scoring worker processes (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="2 cycles")
    ap.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the comparison run with a copy of the model without predictor.npz (skops loading)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the simulator's dropped connections at each kill
    if args.quick:
        args.cycles = 2
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sorter-restart-") as d:
        tmp = Path(d)
        runs = asyncio.run(cycles(args, tmp))
        before: list[dict[str, float]] = []
        if not args.no_compare:
            # the same model without predictor.npz: its workers load through skops, as every worker did before
            from sorter.model import FAST_FILE, MANIFEST, default_model_dir

            old = tmp / "model-without-npz"
            shutil.copytree(default_model_dir(), old)
            (old / FAST_FILE).unlink()
            man = json.loads((old / MANIFEST).read_text())
            del man["files"][FAST_FILE]
            (old / MANIFEST).write_text(json.dumps(man, indent=2))
            print("the same with a model directory without predictor.npz (skops, scikit-learn):", flush=True)
            before = asyncio.run(cycles(args, tmp, old))
        prof = load_profile()
        score_s = score_startup(tmp)
    load1 = os.getloadavg()[0]
    print(json.dumps(prof, indent=1))
    print(f"sorter score, 20 items, 1 worker: {score_s:.2f} s")
    restarts = [r for r in runs if r["cycle"] > 1] or runs
    worst = max(r["first_ack_s"] for r in restarts)
    rows = "\n".join(
        f"| {r['cycle']} | {'empty audit log' if r['cycle'] == 1 else 'after kill -9'} | "
        f"{r['link_up_s']:.2f} | {r['first_ack_s']:.2f} | {r['cpu_s']:.2f} |"
        for r in runs
    )
    cpu_med = statistics.median(r["cpu_s"] for r in restarts)
    compare = ""
    if before:
        b_restarts = [r for r in before if r["cycle"] > 1] or before
        b_rows = "\n".join(
            f"| {r['cycle']} | {'empty audit log' if r['cycle'] == 1 else 'after kill -9'} | "
            f"{r['link_up_s']:.2f} | {r['first_ack_s']:.2f} | {r['cpu_s']:.2f} |"
            for r in before
        )
        compare = f"""

The same, run right after with a copy of the model without `predictor.npz` (its workers load the skops
files and import scikit-learn, as every worker did before):

| launch | audit log | link up | first decision acknowledged | CPU-s to first ack |
|---|---|---|---|---|
{b_rows}

Without `predictor.npz`: restart to first acked decision worst {max(r["first_ack_s"] for r in b_restarts):.2f} s, median
{statistics.median(r["first_ack_s"] for r in b_restarts):.2f} s, {statistics.median(r["cpu_s"] for r in b_restarts):.2f} CPU-s."""
    p = {k: v for k, v in prof.items()}
    md = f"""## Line restart (issue 14)

`python -m benchmarks.line_restart{" --quick" if args.quick else ""}` ({args.cycles} launches, items at
{args.rate:g}/s, each run {args.run_s:g} s past its first ack, then SIGKILL). `sorter run` as its own process,
a cold interpreter, {args.workers} spawned scoring worker(s) (the first loads alone, the others once it is ready), Modbus TCP to the PLC simulator (10 ms scan), seconds from
launch:

| launch | audit log | link up (PLC sees the PC heartbeat) | first decision acknowledged by the PLC | CPU-s to first ack (controller + workers) |
|---|---|---|---|---|
{rows}

**Restart after kill -9 to first acked decision: worst {worst:.2f} s, median
{statistics.median(r["first_ack_s"] for r in restarts):.2f} s, {cpu_med:.2f} CPU-s** (target 2 s: {"met" if worst <= 2 else "NOT met"}).{compare}
The link and the PC heartbeat come up before the model has loaded; items meanwhile go to the PLC's safe lane.

Where loading the model goes (fresh interpreter, seconds): importing the controller {p["import_controller_s"]:.2f};
loading the model as the scoring workers do, through `predictor.npz` without scikit-learn (hashes, the
fast predictor's import and self-check): {p["fast_load_s"]:.2f} ({p["fast_load_cpu_s"]:.2f} CPU-s). For comparison,
through the skops files (what a worker did before): importing skops {p["import_skops_sklearn_s"]:.2f} (skops lists
scikit-learn's estimators at import, which imports every scikit-learn module, and through them scipy, pytest
and dask.array when installed); sha256 of the files {p["sha256_s"]:.3f}; skops's type scan
{p["skops_type_scan_s"]:.2f} and load {p["skops_load_s"]:.2f}; the fast predictor's self-check against
scikit-learn {p["predictor_self_check_s"]:.2f}; `load_model` through skops with the imports done
{p["load_model_warm_s"]:.2f}. A scoring worker, from its spawn to ready (a new interpreter, its imports, the
model, one warm-up item): {p["first_worker_ready_s"]:.2f}. The rest of launch -> first ack is the controller's own
start (interpreter, imports, when the link comes up) and the first items after the worker is ready
(those that arrived while it loaded are recorded as overload first, in belt order).

`sorter score` on a 20-item log with one worker, launch to done: {score_s:.2f} s (target: first row within 1 s; the
median of 5 and the CPU-seconds are in *Start-up*, `python -m benchmarks.startup`).

Load average (other work shares the 2 cores): {load0:.1f} at the start, {load1:.1f} at the end."""
    print(md)
    if not args.no_write:
        write_section("line_restart", md)
        print("written to docs/performance.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
