"""The line's commands: ``sorter run``, ``sorter plc-sim``, ``sorter demo`` and ``sorter audit``.

:func:`add_commands` is called by :mod:`sorter.cli`, which owns logging set-up
and turns :class:`~sorter.errors.SorterError` into exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Add ``run``, ``plc-sim``, ``demo`` and ``audit`` to the ``sorter`` sub-command parser."""
    _add_run(sub)
    _add_plc_sim(sub)
    _add_demo(sub)
    _add_audit(sub)


# ---------------------------------------------------------------------------- run


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the line controller (score items, send lanes to the PLC)",
        description=(
            "Run the line controller: follow the sensor bridge's log (or a simulated conveyor), score each item, "
            "record the decision in the audit log, and send the lane to the PLC over Modbus TCP before the item's "
            "deadline. Ctrl-C (SIGINT) or SIGTERM finishes the items in flight and prints a summary; a second "
            "signal stops at once. Settings: --config file < SORTER_SECTION_KEY environment variables < --set "
            "options (see docs/configuration.md; examples/line.toml is a commented example). Exit status: 0 when "
            "every item has its audit row, the PLC's lane counters agree with the controller and no item missed "
            "its deadline; 1 otherwise (the summary says why); 2 for a configuration error."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file (e.g. line.toml)")
    p.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one setting, e.g. --set plc.host=192.168.10.20 (repeatable; wins over "
        "the file and the environment)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration with where each value came from, and exit (without "
        "--config: the defaults)",
    )
    p.add_argument(
        "--replay-rate",
        type=float,
        default=None,
        metavar="R",
        help='replay a recorded log (line.source = "log") at R times the speed it was recorded at: '
        "each item is handed over when its bridge time comes round, and its deadline runs from "
        "then (1 = belt speed as recorded)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    from sorter.errors import ConfigError
    from sorter.line.app import run_line
    from sorter.line.config import load_config

    if args.print_config:
        cfg = load_config(args.config, overrides=args.overrides, validate=False)
        print(cfg.to_toml(), end="")
        try:
            load_config(args.config, overrides=args.overrides)
        except ConfigError as err:
            print(f"# not runnable as it stands: {err}", file=sys.stderr)
        return 0
    if args.replay_rate is not None and not args.replay_rate > 0:
        raise ConfigError(f"--replay-rate {args.replay_rate} must be > 0 (1 replays at the recorded speed)")
    try:
        cfg = load_config(args.config, overrides=args.overrides)
    except ConfigError as err:
        if args.config is None and not args.overrides and "log_dir" in str(err):
            raise ConfigError(
                "no --config given: a line needs at least line.log_dir (the sensor bridge's log) and the PLC's "
                "address; start from examples/line.toml in the source tree (every key is in "
                "docs/configuration.md), or write the defaults with `sorter run --print-config > line.toml`; "
                "`sorter demo` runs a whole simulated line"
            ) from err
        raise
    source = None
    if cfg.line.source == "log":
        _check_log_dir(cfg)
        if args.replay_rate is not None:
            source = _paced(cfg, args.replay_rate)
    elif args.replay_rate is not None:
        raise ConfigError('--replay-rate paces a recorded log; it needs line.source = "log"')
    summary = asyncio.run(run_line(cfg, source=source, handle_signals=True))
    if args.json:
        print(json.dumps(summary.to_json(), indent=2, default=str))
    else:
        print(summary.format())
    problems = run_problems(summary)
    if not args.json:
        print(f"result         {'PROBLEM: ' + '; '.join(problems) if problems else 'OK'}")
    return 1 if problems else 0


def run_problems(summary: Any) -> list[str]:
    """Why a run's exit status is 1: what the summary shows went wrong (empty: all is well)."""
    out = []
    if summary.error:
        out.append(str(summary.error))
    if not summary.audit_ok:
        out.append(f"{summary.audit_rows} audit rows for {summary.items} items")
    if summary.plc_agrees is False:
        out.append("the PLC's lane counters differ from the controller's")
    if summary.overload:
        out.append(
            f"{_items(summary.overload)} past the deadline before scoring (overload; replaying a "
            "recorded log? pace it with --replay-rate)"
        )
    late = max(0, summary.deadline_misses - summary.overload)  # deadline_misses counts the overload too
    if late > 0:
        out.append(f"{late} decision{'s' if late != 1 else ''} missed the deadline")
    if summary.undelivered:
        out.append(f"{summary.undelivered} decision{'s' if summary.undelivered != 1 else ''} not delivered to the PLC")
    return out


def _items(n: int) -> str:
    return f"{n} item{'s' if n != 1 else ''}"


def _check_log_dir(cfg: Any) -> None:
    """A log the controller cannot read is a configuration error, said before anything starts."""
    from pathlib import Path

    from sorter.errors import ConfigError
    from sorter.logformat import check_log_dir

    where = cfg.origins.get("line.log_dir", "line.log_dir")
    p = Path(cfg.line.log_dir)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{where}: line.log_dir = {str(p)!r} is a file; name the log directory")
    if not cfg.line.follow:  # a replay: the log must be there (a live log may appear later)
        try:
            check_log_dir(p)
        except Exception as err:
            raise ConfigError(f"{where}: {err}") from err


def _paced(cfg: Any, rate: float) -> Any:
    """The configured log source, paced for a replay (``--replay-rate``)."""
    from sorter.line.app import build_source

    inner = build_source(cfg)

    def factory(resume: Any, is_recorded: Any) -> Any:
        src = inner(resume, is_recorded)
        src.pace(rate)
        return src

    return factory


# ---------------------------------------------------------------------------- plc-sim


def _add_plc_sim(sub: Any) -> None:
    p = sub.add_parser(
        "plc-sim",
        help="run a simulated divert PLC (Modbus TCP on loopback)",
        description=(
            "Serve the divert PLC's register contract (docs/plc-interface.md) over Modbus TCP, for commissioning "
            "and tests without a PLC. Listens on loopback only. Ctrl-C stops it."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback only; default %(default)s)")
    p.add_argument("--port", type=int, default=5020, help="TCP port, 0 for a free one (default %(default)s)")
    p.add_argument("--scan-ms", type=float, default=10.0, help="PLC scan period in ms (default %(default)s)")
    p.add_argument("--device-id", type=int, default=1, help="Modbus unit id (default %(default)s)")
    p.add_argument("--base", type=int, default=100, help="PDU address of the map (default %(default)s)")
    p.add_argument("--slots", type=int, default=8, help="mailbox ring size N (default %(default)s)")
    p.add_argument("--pc-timeout-s", type=float, default=1.5, help="PC heartbeat timeout in s (default %(default)s)")
    p.add_argument(
        "--untracked",
        choices=["apply", "late"],
        default="apply",
        help="answer to a decision for an item the PLC was never told about: apply it at once (a simulator has "
        "no sensor bridge) or 'late' as the contract says for a real PLC (default %(default)s)",
    )
    p.add_argument(
        "--report-s", type=float, default=5.0, help="print counters every this many seconds (default %(default)s)"
    )
    p.add_argument(
        "--cases",
        action="store_true",
        help="also serve the case-station block (docs/plc-interface.md), with a simulated operator who "
        "swaps a full case in --case-swap-s seconds; a case is in place at the start",
    )
    p.add_argument("--case-base", type=int, default=300, help="PDU address of the case block (default %(default)s)")
    p.add_argument(
        "--case-lane",
        choices=["hazard", "li_ion"],
        default="hazard",
        help="the lane whose chute ends at the case station (default %(default)s)",
    )
    p.add_argument(
        "--case-swap-s",
        type=float,
        default=5.0,
        help="seconds the simulated operator takes to swap a full case (default %(default)s)",
    )
    p.add_argument(
        "--case-positions",
        type=int,
        default=1,
        help="case positions at the station, 1..8 (default %(default)s; 2..8: block version 2)",
    )
    p.set_defaults(func=_cmd_plc_sim)


def _cmd_plc_sim(args: argparse.Namespace) -> int:
    """Run the simulated PLC until Ctrl-C, printing its counters periodically.

    Returns 0 after Ctrl-C, 2 for a bad option or address.
    """
    from sorter.errors import ConfigError, PlcError
    from sorter.line.plc.casesim import CaseStationProgram
    from sorter.line.plc.protocol import RegisterMap
    from sorter.line.plc.sim import PlcSimulator

    try:
        station = (
            CaseStationProgram(
                swap_s=args.case_swap_s, ready_at_start=True, lane=args.case_lane, positions=args.case_positions
            )
            if args.cases
            else None
        )
        sim = PlcSimulator(
            args.host,
            args.port,
            scan_ms=args.scan_ms,
            device_id=args.device_id,
            register_map=RegisterMap(base=args.base, slots=args.slots),
            pc_heartbeat_timeout_s=args.pc_timeout_s,
            untracked=args.untracked,
            case_station=station,
            case_base=args.case_base,
        )
    except ConfigError as err:
        print(f"sorter plc-sim: {err}")
        return 2
    if not args.report_s > 0:
        print(f"sorter plc-sim: --report-s {args.report_s} must be > 0")
        return 2

    async def serve() -> None:
        await sim.start()
        m = sim.register_map
        print(
            f"simulated PLC on {sim.host}:{sim.port} device {sim.device_id}, scan {args.scan_ms} ms, "
            f"map base {m.base} ({m.size} registers, {m.slots} slots); Ctrl-C to stop",
            flush=True,
        )
        try:
            while True:
                await asyncio.sleep(args.report_s)
                counts = " ".join(f"{k}={v}" for k, v in sim.counters.items())
                if station is not None:
                    for q in station.positions:
                        tag = "" if len(station.positions) == 1 else str(q.number)
                        counts += (
                            f" case_placed{tag}={q.placed} case_ready{tag}={int(q.ready)} "
                            f"in_case{tag}={len(q.cases.get(q.placed, []))}"
                        )
                    counts += f" buffer={len(station.buffer)}"
                print(f"faults=0x{int(sim.model.faults):04x} {counts}", flush=True)
        finally:
            await sim.stop()

    try:
        asyncio.run(serve())
    except PlcError as err:
        print(f"sorter plc-sim: {err}")
        return 2
    except KeyboardInterrupt:
        print(f"stopped; final counters: {sim.counters}")
    return 0


# ---------------------------------------------------------------------------- demo


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole line on this machine: simulated PLC + conveyor + controller",
        description=(
            "Start a simulated PLC (real Modbus TCP server on 127.0.0.1, a free port) and a simulated conveyor in "
            "this process, run the line controller with the shipped model over Modbus TCP, show live progress, and "
            "end with a summary: lanes, what went where against the simulator's truth, latency, deadline misses, "
            "audit rows against items, and the PLC's counters against the controller's. Needs nothing else "
            "running; about 40 s with the defaults."
        ),
    )
    p.add_argument("--items", type=int, default=600, help="items on the belt (default %(default)s)")
    p.add_argument("--rate", type=float, default=20.0, help="items per second (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default %(default)s)")
    p.add_argument("--mix", default="recycler", help="intake mix: recycler or balanced (default %(default)s)")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="directory for the audit log, kept after the run (default: a temporary directory, deleted at the end)",
    )
    p.add_argument("--force", action="store_true", help="replace an audit log already in --out")
    p.add_argument(
        "--pool",
        type=int,
        default=300,
        help="distinct items simulated up front, cycled with fresh ids (default %(default)s)",
    )
    p.add_argument("--workers", type=int, default=2, help="scoring worker processes (default %(default)s)")
    p.add_argument("--scan-ms", type=float, default=10.0, help="simulated PLC scan period (default %(default)s)")
    p.add_argument("--no-status", action="store_true", help="no live status line")
    p.add_argument(
        "--no-cases",
        action="store_true",
        help="no case station: the hazard lane ends at its chute as before (default: packing on)",
    )
    p.add_argument(
        "--case-limit-wh",
        type=float,
        default=2100.0,
        help="case limit in Wh (default %(default)s, the permit's; a small one shows swaps in a short demo)",
    )
    p.add_argument(
        "--case-swap-s",
        type=float,
        default=3.0,
        help="seconds the simulated operator takes to confirm a new case (default %(default)s)",
    )
    p.add_argument(
        "--case-positions",
        type=int,
        default=1,
        help="case positions side by side at the simulated station, 1..8 (default %(default)s)",
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from sorter.line.demo import format_result, run_demo

    if not getattr(args, "verbose", 0):
        # The status line and the summary count late and refused decisions; one warning per item from the
        # PLC link would drown them on a busy machine (-v shows them).
        logging.getLogger("sorter.line.plc").setLevel(logging.ERROR)

    result = run_demo(
        items=args.items,
        rate_hz=args.rate,
        seed=args.seed,
        mix=args.mix,
        out=args.out,
        pool=args.pool,
        workers=args.workers,
        scan_ms=args.scan_ms,
        status=not args.no_status,
        handle_signals=True,
        force=args.force,
        cases=not args.no_cases,
        case_limit_wh=args.case_limit_wh,
        case_swap_s=args.case_swap_s,
        case_positions=args.case_positions,
    )
    print(format_result(result))
    sys.stdout.flush()
    return 0 if result.ok else 1


# ---------------------------------------------------------------------------- audit


def _add_audit(sub: Any) -> None:
    p = sub.add_parser(
        "audit",
        help="look after the audit log (archive old rows to Parquet)",
        description=(
            "Maintenance of the line's audit log (SQLite). `sorter audit export` copies the decisions made before a "
            "date to a Parquet file and, with --delete, removes them from the log, which then stays the size of its "
            "retention window. Safe while the line runs (see docs/operations.md)."
        ),
    )
    asub = p.add_subparsers(dest="audit_command", metavar="COMMAND")
    e = asub.add_parser(
        "export",
        help="archive decisions made before a date to Parquet",
        description=(
            "Copy every decision decided before --before (rows still pending excepted, and the newest row, which the "
            "controller resumes from) to a Parquet file (schema: docs/operations.md), flushed to disk before "
            "anything is deleted; with --delete, then remove the copied rows from the audit log, in short "
            "transactions beside the running line."
        ),
    )
    e.add_argument("--audit", required=True, metavar="PATH", help="the audit log (the line's audit.path)")
    e.add_argument(
        "--before", required=True, metavar="DATE", help="YYYY-MM-DD (midnight UTC) or an ISO 8601 time with a zone"
    )
    e.add_argument("--out", required=True, metavar="FILE", help="the Parquet file to write (must not exist)")
    e.add_argument("--delete", action="store_true", help="delete the archived rows from the audit log")
    e.set_defaults(func=_cmd_audit_export)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])


def _cmd_audit_export(args: argparse.Namespace) -> int:
    from sorter.errors import ConfigError
    from sorter.line.audit.archive import export_before, parse_date

    try:
        before = parse_date(args.before)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    res = export_before(args.audit, before, args.out, delete=args.delete)
    if res.out is None:
        print(f"no decision before {before.isoformat()} to archive in {args.audit}; nothing written")
    else:
        print(
            f"{res.rows} decisions ({_when(res.first_t)} .. {_when(res.last_t)}) archived to {res.out}"
            + (f"; {res.deleted} deleted from {args.audit}" if args.delete else "")
        )
    if res.kept_pending:
        print(
            f"{res.kept_pending} decisions before the date are still pending and were left in the log "
            "(the next start of the line reconciles them)"
        )
    return 0


def _when(t: float | None) -> str:
    import datetime as dt

    return "?" if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
