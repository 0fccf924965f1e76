"""The line on an audit disk that fills up and frees again (issue 19, "disks fill up").

``python -m benchmarks.disk_full [--rate 40] [--before-s 10] [--full-s 20] [--after-s 10] [--no-write]``

The audit log lives on a 2 MB tmpfs mounted for the run (root only: exit status 2 with the reason
otherwise).  The line runs in this process: a simulated conveyor at ``--rate`` items/s, the controller
scoring in a thread pool, the PLC simulator over Modbus TCP (10 ms scan), told about every item so it
defaults those without a decision.  After ``--before-s`` the disk is filled to the last byte, held full
for ``--full-s``, then freed; the run goes on ``--after-s``.  Reported: items, rows, items refused for
want of a committed row, decisions the PLC acted on without a row (target 0), whether anything crashed
(target: nothing), when the ALARMs came, and how long after the space returned the first decision was
committed again (recovery without a restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from sorter.line.app import build_link
from sorter.line.audit import AuditLog
from sorter.line.config import load_config
from sorter.line.controller import Controller, ScoringPool
from sorter.line.plc.sim import PlcSimulator
from sorter.line.sources import BeltTiming, SimulatedSource, generate_pool
from sorter.simulate.run import SimConfig

from ._report import write_section

SIM = SimConfig(items=30, seed=19, mix="recycler")


class Notes(logging.Handler):
    """Keeps (monotonic time, logger, message) of every WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((time.monotonic(), record.name, record.getMessage()))


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


async def run(args: argparse.Namespace, disk: Path) -> dict[str, object]:
    sim = PlcSimulator("127.0.0.1", 0, scan_ms=10.0)
    audit = disk / "audit.sqlite"
    items = int(args.rate * (args.before_s + args.full_s + args.after_s))
    cfg = load_config(
        None,
        env={},
        overrides=[
            "line.source=simulated",
            f"audit.path={audit}",
            "plc.kind=modbus",
            "plc.host=127.0.0.1",
            "plc.port=1",
            "status.enabled=false",
            "line.belt_speed_m_s=0.3",
        ],
    )  # a 990 ms deadline: the machine is shared
    pool = generate_pool(SIM, SIM.items, workers=1)
    source = SimulatedSource(
        SIM, BeltTiming(cfg.line.deadline_ms / 1000), items=items, rate_hz=args.rate, pool=pool, announce=sim.expect
    )
    scorer = ScoringPool(None, workers=2, kind="thread", max_batch=16)
    await scorer.start()
    await sim.start()
    cfg = cfg.replace(plc={"port": sim.port})
    marks: dict[str, float] = {}
    try:
        controller = Controller(cfg, link=build_link(cfg), source=source, scorer=scorer)
        task = asyncio.create_task(controller.run())
        await asyncio.sleep(args.before_s)
        filler = await asyncio.to_thread(fill, disk)
        marks["full"] = time.monotonic()
        await asyncio.sleep(args.full_s)
        filler.unlink()
        marks["freed"] = time.monotonic()
        summary = await task
        marks["end"] = time.monotonic()
        counters = sim.counters
        # items the PLC diverted on a decision (not those it defaulted to the safe lane by itself)
        acted_on = {item for item, (_lane, defaulted) in sim.model._resolved.items() if not defaulted}
    finally:
        await sim.stop()
        await scorer.close()
    with AuditLog(audit) as log:
        rows = {r.item_id: r for r in log.rows()}
    sent_without_row = sum(1 for plc_id in acted_on if f"{plc_id:08d}" not in rows)
    return {
        "summary": summary,
        "rows": rows,
        "marks": marks,
        "items": items,
        "counters": counters,
        "sent_without_row": sent_without_row,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=40.0, help="items per second (default %(default)s)")
    ap.add_argument("--before-s", type=float, default=10.0)
    ap.add_argument(
        "--full-s",
        type=float,
        default=20.0,
        help="how long the disk stays full (the disk watch reads free space every 10 s)",
    )
    ap.add_argument("--after-s", type=float, default=10.0)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("disk_full: mounting a 2 MB tmpfs needs root; run as root (or in a container allowed to mount)")
        return 2
    notes = Notes()
    logging.getLogger().addHandler(notes)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sorter-disk-full-") as d:
        disk = Path(d) / "small"
        disk.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True
        )
        if res.returncode != 0:
            print(f"disk_full: cannot mount a tmpfs here: {res.stderr.strip()}")
            return 2
        crashed: str | None = None
        try:
            try:
                out = asyncio.run(run(args, disk))
            except Exception as err:  # noqa: BLE001 - the outcome to report
                crashed = repr(err)
                raise
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    load1 = os.getloadavg()[0]
    s = out["summary"]
    marks, rows = out["marks"], out["rows"]
    full, freed = marks["full"], marks["freed"]
    alarm_audit = next((t for t, _n, m in notes.seen if t >= full and m.startswith("ALARM audit log")), None)
    alarm_disk = next((t for t, _n, m in notes.seen if m.startswith("ALARM disk audit")), None)
    resumed = next((t for t, _n, m in notes.seen if t >= freed and "writes resumed" in m), None)
    # first row decided after the space returned (t_decided is wall time: compare with the wall clock of `freed`)
    wall_freed = time.time() - (time.monotonic() - freed)
    after = sorted(r.t_decided for r in rows.values() if r.t_decided >= wall_freed)
    first_after = after[0] - wall_freed if after else None
    acked_after = sum(1 for r in rows.values() if r.t_decided >= wall_freed and r.delivery == "acked")

    def at(t: float | None) -> str:
        if t is None:
            return "never"
        if t < full:  # a 2 MB disk is under the default alarm threshold (512 MB) from the start
            return "at the start of the run (2 MB is under the 512 MB alarm threshold), before the disk filled"
        return f"{t - full:.1f} s after the disk filled"

    crashed_text = "no" if crashed is None and s.error is None else "YES"
    defaulted = out["counters"].get("defaulted") if out["counters"] else "n/a"
    recovery = "never" if first_after is None else f"{first_after:.2f} s"
    table = (
        "| items | audit rows | refused: no committed row, not sent | decisions the PLC acted on without a row "
        "| crashed | PLC defaulted | first decision committed after the space returned | acked after it |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {out['items']} | {len(rows)} | {s.unrecorded} | **{out['sent_without_row']}** | {crashed_text} "
        f"| {defaulted} | {recovery} | {acked_after} |"
    )
    md = f"""## Disk full: the audit disk fills and frees (issue 19)

`python -m benchmarks.disk_full --rate {args.rate:g} --full-s {args.full_s:g}` — the line in one process
(simulated conveyor at {args.rate:g} items/s, controller, PLC simulator over Modbus TCP told about every
item), the audit log on a 2 MB tmpfs: filled to the last byte {args.before_s:g} s in, held full
{args.full_s:g} s, then freed; {out["items"]} items in all.

{table}

Alarms: the audit writer's `ALARM audit log ...: the disk is full` {at(alarm_audit)}; the disk watch's
`ALARM disk audit` {at(alarm_disk)} (it reads free space every 10 s); `writes resumed`
{"never" if resumed is None else f"{resumed - freed:.2f} s after the space returned"}. Every item was either
recorded and decided or refused and defaulted by the PLC ({len(rows)} + {s.unrecorded} =
{len(rows) + s.unrecorded} of {out["items"]}); no restart. Targets: 0 crashes, 0 items sent without a
committed row, recovery without a restart: {
        "met" if crashed is None and s.error is None and out["sent_without_row"] == 0 and acked_after > 0 else "NOT met"
    }. Load average
({platform.machine()}; other work shares the 2 cores): {load0:.1f} at the start, {load1:.1f} at the end."""
    print(md)
    if not args.no_write:
        write_section("disk_full", md)
        print("written to docs/performance.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
