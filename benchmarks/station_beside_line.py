"""Does the operator station, running and refreshed beside the line, cost the line deadline misses?

    python -m benchmarks.station_beside_line [--rate 100] [--seconds 12] [--pairs 3]

Runs the line benchmark's run (``benchmarks.line_latency.one_run``: PLC simulator over Modbus
TCP on loopback, simulated conveyor, controller with the shipped model in worker processes,
audit log with fsync) at ``--rate`` items/s, alternately without and with the station:
a ``sorter station`` process watching that run's audit log (its refresh every second) and a
client polling it as the screens would (``/status.json`` every second, the review page every
two seconds, each fetch of the review page followed by its images). Reports deadline misses,
undelivered decisions and latency per run, and the station's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import line_latency as ll
from benchmarks._report import write_section

POLLER = r"""
import re, sys, time, httpx
base = sys.argv[1]
with httpx.Client(base_url=base, timeout=5) as c:
    tok = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    c.post("/login", data={"user": "screen", "password": "screen password", "csrf": tok})
    k = 0
    while True:
        c.get("/status.json")
        if k % 2 == 0:
            page = c.get("/review").text
            for src in re.findall(r'src="(/image/[^"]+)"', page):
                c.get(src)
        k += 1
        time.sleep(1.0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_station(audit: Path, store: Path) -> tuple[subprocess.Popen, subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    station = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sorter",
            "station",
            "--set",
            f"audit.path={audit}",
            "--set",
            "line.source=simulated",
            "--store",
            str(store),
            "--port",
            str(port),
            "--spot-check",
            "0.05",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(300):
        try:
            httpx.get(base + "/login", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, base], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return station, poller, base


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def bench(args: argparse.Namespace) -> list[tuple[bool, ll.Result, float | None]]:
    from sorter.line.scoring_pool import ScoringPool
    from sorter.line.sources import generate_pool
    from sorter.station.auth import hash_password
    from sorter.station.store import StationStore

    pool = await asyncio.to_thread(generate_pool, ll.SIM, 300, workers=2)
    scorer = ScoringPool(None, workers=2, kind="process", max_batch=16)
    await scorer.start()
    out = []
    try:
        with tempfile.TemporaryDirectory(prefix="station-beside-") as d:
            d = Path(d)
            for k in range(args.pairs):
                for with_station in (False, True):
                    audit = d / f"audit-{len(list(d.glob('audit-*.sqlite'))) + 1:02d}-{args.rate:g}.sqlite"
                    procs = ()
                    cpu0 = None
                    if with_station:
                        store = d / f"station-{k}.sqlite"
                        StationStore(store).set_user("screen", "operator", hash_password("screen password"))
                        station, poller, _ = _start_station(audit, store)
                        procs = (poller, station)
                        cpu0 = ll._cpu_s([station.pid, poller.pid])
                    try:
                        r = await ll.one_run(args.rate, args.seconds, pool, scorer, 10.0, d)
                        cpu = (ll._cpu_s([p.pid for p in procs]) - cpu0) if procs else None
                    finally:
                        _stop(*procs)
                    out.append((with_station, r, cpu))
                    print(
                        f"{'with' if with_station else 'without'} station: items {r.items} misses {r.misses} "
                        f"undelivered {r.undelivered} p99 {ll._ms(r.p99_ms)} ms"
                        + (f" station+client CPU {cpu:.2f} s" if cpu is not None else ""),
                        flush=True,
                    )
    finally:
        await scorer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    runs = asyncio.run(bench(args))
    load_after = os.getloadavg()
    rows = [
        "| run | station | items | deadline misses | undelivered | p50 ms | p99 ms | station + client CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (with_station, r, cpu) in enumerate(runs, 1):
        rows.append(
            f"| {i} | {'yes' if with_station else 'no'} | {r.items} | {r.misses} | {r.undelivered} | "
            f"{ll._ms(r.p50_ms)} | {ll._ms(r.p99_ms)} | {'' if cpu is None else f'{cpu:.2f}'} |"
        )
    without = sum(r.misses for w, r, _ in runs if not w)
    with_ = sum(r.misses for w, r, _ in runs if w)
    cpus = [c for w, _, c in runs if w and c is not None]
    cpu_share = sum(cpus) / len(cpus) / args.seconds if cpus else 0.0
    if without == 0 and with_ == 0:
        verdict = "The station added no deadline misses."
    elif without > 0:
        verdict = (
            "The line missed deadlines without the station too, so the machine was already short of CPU: "
            "these runs cannot show whether the station adds misses."
        )
    else:
        verdict = "Misses appeared only with the station."
    md = f"""## Operator station beside the line (issue 16)

`python -m benchmarks.station_beside_line --rate {args.rate:g} --seconds {args.seconds:g} --pairs {args.pairs}`: the line
benchmark's run at {args.rate:g} items/s, alternately without and with a `sorter station` process watching
that run's audit log and a client refreshing it like the line's screens (status every second, the review
page with its images every two seconds).

{chr(10).join(rows)}

Deadline misses: {without} without the station, {with_} with it (target: the station adds none). {verdict}
The station and its client used {cpu_share:.1%} of one core during a run.
Machine: {os.cpu_count()} cores, `uname -m` {platform.machine()}, load average {load_before[0]:.2f} before and
{load_after[0]:.2f} after (shared with other jobs).
"""
    print(md)
    if not args.no_write:
        write_section("station_beside_line", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
