"""``sorter demo``: the whole line on one machine, in under a minute.

A simulated PLC (:class:`~sorter.line.plc.sim.PlcSimulator`: pymodbus's Modbus
TCP server on 127.0.0.1, a free port, 10 ms scan) and a simulated conveyor
(:class:`~sorter.line.sources.SimulatedSource`) run in this process; the line
controller scores every item with the shipped model in worker processes and
sends each lane to the PLC over real Modbus TCP on loopback.  The simulated
PLC is told about each item as it passes the bridge (as the real PLC's shift
register would be), so it sends every item without an accepted decision in
time to ``manual`` by itself.

At the end the demo prints the run summary: lanes, where items went against
the simulator's truth (Li-ion in lead_acid, lead_acid purity, hazard),
latency, deadline misses, audit rows against items, and the PLC's own lane
counters against the controller's.

Examples
--------
>>> # result = run_demo(items=60, rate_hz=20.0)  # ~10 s; see ``sorter demo --help``
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sorter.errors import ConfigError
from sorter.line.app import build_source, run_line
from sorter.line.config import LineConfig, load_config
from sorter.line.controller import Resume
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.sim import PlcSimulator
from sorter.line.scoring_pool import ScoringPool
from sorter.line.summary import RunSummary

logger = logging.getLogger(__name__)

__all__ = ["DemoResult", "demo_config", "run_demo", "run_demo_async"]


@dataclass(frozen=True)
class DemoResult:
    """The outcome of a demo run."""

    summary: RunSummary
    plc_counters: dict[str, int]
    """The simulated PLC's own counters at the end (read in-process)."""
    out_dir: Path
    plc_port: int
    kept: bool = True
    """Whether ``out_dir`` (the audit log) still exists: a demo without ``out`` deletes its temporary folder."""
    station: CaseStationProgram | None = None
    """The simulated PLC's case station (``None`` with ``cases=False``): what went into each case and the buffer."""

    @property
    def ok(self) -> bool:
        """Audit rows equal items, and the PLC's lane counters equal where the controller sent items."""
        return self.summary.audit_ok and bool(self.summary.plc_agrees)


def demo_config(
    *,
    items: int,
    rate_hz: float,
    seed: int,
    mix: str,
    pool: int,
    audit_path: Path,
    plc_port: int,
    workers: int = 2,
    status: bool = True,
    cases: bool = False,
    case_limit_wh: float = 2100.0,
    case_positions: int = 1,
) -> LineConfig:
    """The configuration of a demo run (the environment is ignored: the demo is the same everywhere)."""
    return load_config(
        None,
        env={},
        overrides=[
            "line.name=demo",
            "line.source=simulated",
            f"line.scorer_workers={workers}",
            "plc.kind=modbus",
            "plc.host=127.0.0.1",
            f"plc.port={plc_port}",
            f"audit.path={audit_path}",
            f"simulated.items={items}",
            f"simulated.rate_hz={rate_hz}",
            f"simulated.seed={seed}",
            f"simulated.mix={mix}",
            f"simulated.pool={pool}",
            f"status.enabled={'true' if status else 'false'}",
            f"cases.enabled={'true' if cases else 'false'}",
            f"cases.limit_wh={case_limit_wh}",
            f"cases.positions={case_positions}",
        ],
    )


async def run_demo_async(
    *,
    items: int = 600,
    rate_hz: float = 20.0,
    seed: int = 0,
    mix: str = "recycler",
    out: str | Path | None = None,
    pool: int = 300,
    workers: int = 2,
    scan_ms: float = 10.0,
    status: bool = True,
    stream: TextIO | None = None,
    handle_signals: bool = False,
    force: bool = False,
    cases: bool = True,
    case_limit_wh: float = 2100.0,
    case_swap_s: float = 3.0,
    case_positions: int = 1,
) -> DemoResult:
    """Run the demo inside a running event loop (see :func:`run_demo`)."""
    stream = stream or sys.stdout
    if items < 1:
        raise ConfigError(f"--items {items}: the demo needs at least one item")
    if out is None:
        out_dir = Path(tempfile.mkdtemp(prefix="sorter-demo-"))
    else:
        out_dir = Path(out)
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(
                f"--out {out_dir} is a file; the demo writes its audit log into a folder: choose a folder name"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = await _run_demo(
            items=items,
            rate_hz=rate_hz,
            seed=seed,
            mix=mix,
            out_dir=out_dir,
            pool=pool,
            workers=workers,
            scan_ms=scan_ms,
            status=status,
            stream=stream,
            handle_signals=handle_signals,
            keep=out is not None,
            force=force,
            cases=cases,
            case_limit_wh=case_limit_wh,
            case_swap_s=case_swap_s,
            case_positions=case_positions,
        )
    finally:
        if out is None:  # a temporary folder the user never asked for: leave nothing behind
            shutil.rmtree(out_dir, ignore_errors=True)
    return result


async def _run_demo(
    *,
    items: int,
    rate_hz: float,
    seed: int,
    mix: str,
    out_dir: Path,
    pool: int,
    workers: int,
    scan_ms: float,
    status: bool,
    stream: TextIO,
    handle_signals: bool,
    keep: bool,
    force: bool = False,
    cases: bool = True,
    case_limit_wh: float = 2100.0,
    case_swap_s: float = 3.0,
    case_positions: int = 1,
) -> DemoResult:
    audit_path = out_dir / "audit.sqlite"
    if audit_path.exists() and force:  # --force: this demo's audit log replaces the earlier one's
        for extra in ("", "-wal", "-shm", "-journal"):
            audit_path.with_name(audit_path.name + extra).unlink(missing_ok=True)
    if audit_path.exists():
        raise ConfigError(
            f"--out {out_dir} already holds an audit log ({audit_path.name}); "
            "pass --force to replace it, or a new or empty directory"
        )
    # The PLC simulator starts last, just before the controller connects: a PLC that runs without a PC
    # heartbeat (during the pool generation and model loading) would rightly report it lost.
    # The case station's simulated operator confirms a new case case_swap_s after the PLC asks for a swap.
    station = CaseStationProgram(swap_s=case_swap_s, ready_at_start=True, positions=case_positions) if cases else None
    sim = PlcSimulator("127.0.0.1", 0, scan_ms=scan_ms, case_station=station)
    cfg = demo_config(
        items=items,
        rate_hz=rate_hz,
        seed=seed,
        mix=mix,
        pool=min(pool, items),
        audit_path=audit_path,
        plc_port=1,
        workers=workers,
        status=status,
        cases=cases,
        case_limit_wh=case_limit_wh,
        case_positions=case_positions,
    )
    print(
        f"sorter demo: {items} items at {rate_hz:g}/s from a pool of {cfg.simulated.pool} ({mix} mix, seed {seed}); "
        f"deadline {cfg.line.deadline_ms:.0f} ms; audit log "
        f"{audit_path if keep else 'in a temporary folder, deleted at the end (--out DIR keeps it)'}",
        file=stream,
        flush=True,
    )
    print("sorter demo: simulating the pool and loading the model in the scoring workers ...", file=stream, flush=True)
    scorer = ScoringPool(None, workers=workers, kind=cfg.line.scorer_pool, max_batch=cfg.line.max_batch)
    source = build_source(cfg, announce=sim.expect)(Resume(0, 0, 0), lambda _id: False)
    try:
        await asyncio.gather(scorer.start(), source.start())
        await sim.start()
        try:
            cfg = cfg.replace(plc={"port": sim.port})
            print(
                f"sorter demo: simulated PLC on 127.0.0.1:{sim.port} (Modbus TCP, scan {scan_ms:g} ms); "
                "the belt starts",
                file=stream,
                flush=True,
            )
            summary = await run_line(cfg, source=source, scorer=scorer, handle_signals=handle_signals)
            counters = sim.counters
        finally:
            await sim.stop()
    finally:
        await scorer.close()
        await source.close()
    return DemoResult(
        summary=summary, plc_counters=counters, out_dir=out_dir, plc_port=sim.port, kept=keep, station=station
    )


def run_demo(**kwargs: object) -> DemoResult:
    """Run the demo: simulated PLC + simulated conveyor + the controller, over Modbus TCP on loopback.

    Parameters
    ----------
    items : int
        Items on the belt (default 600).
    rate_hz : float
        Items per second (default 20).
    seed : int
        Simulation seed.
    mix : str
        Intake mix (default ``"recycler"``).
    out : path, optional
        Directory for the audit log (default: a new temporary directory).
    pool : int
        Distinct items simulated up front (default 300).
    workers : int
        Scoring worker processes (default 2).
    scan_ms : float
        Scan period of the simulated PLC (default 10 ms).
    status : bool
        Show the live status line on stderr.
    handle_signals : bool
        Ctrl-C / SIGTERM finish the items in flight and still print the summary.
    force : bool
        Replace an audit log already in ``out`` (else it is refused).
    cases : bool
        Pack the hazard lane at a simulated case station (default on).
    case_limit_wh : float
        The case limit (default 2100 Wh; a small one shows case swaps in a short demo).
    case_swap_s : float
        Seconds the simulated operator takes to confirm a new case after the PLC asks for a swap.
    case_positions : int
        Case positions at the simulated station (default 1; 2..8 use the block's version 2).
    """
    return asyncio.run(run_demo_async(**kwargs))  # type: ignore[arg-type]


def format_result(result: DemoResult) -> str:
    """The demo's closing report."""
    s = result.summary
    c = result.plc_counters
    lines = [
        s.format(),
        f"simulated PLC  {', '.join(f'{k} {v}' for k, v in c.items())} (read in-process at the end)",
        *_station_lines(result.station),
        f"result         {'OK' if result.ok else 'PROBLEM'}: audit rows {'==' if s.audit_ok else '!='} items; "
        f"PLC lane counters {'agree' if s.plc_agrees else 'DO NOT agree'} with the controller",
        f"audit log      {result.out_dir / 'audit.sqlite'}"
        if result.kept
        else "audit log      not kept (it was in a temporary folder; pass --out DIR to keep it)",
    ]
    return "\n".join(lines)


def _station_lines(station: CaseStationProgram | None) -> list[str]:
    if station is None:
        return []
    if len(station.positions) == 1:
        filled = ", ".join(f"#{placed} {len(ids)}" for placed, ids in station.cases.items())
        placed = f"cases placed {station.placed} (items per case: {filled or 'none'})"
    else:
        placed = "; ".join(
            f"position {q.number}: cases placed {q.placed} (items per case: "
            + (", ".join(f"#{n} {len(ids)}" for n, ids in q.cases.items()) or "none")
            + ")"
            for q in station.positions
        )
    return [
        f"case station   {placed}, swaps {station.swaps}, "
        f"quarantine buffer {len(station.buffer)} item(s), decided into a case but buffered {station.buffered}"
    ]
