"""The ``sorter pack`` and ``sorter cases`` commands (registered by :mod:`sorter.cli`)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import SorterError
from .packing import DEFAULT_ID_SCHEME, DEFAULT_LIMIT_WH, StationConfig, StationState


def add_commands(sub: Any) -> None:
    _add_pack(sub)
    _add_cases(sub)


# ------------------------------------------------------------------------------ pack


def _add_pack(sub: Any) -> None:
    p = sub.add_parser(
        "pack",
        help="plan fire-safe cases for a scored file's hazard items, with manifests",
        description=(
            "Offer the items of a station's lane (default hazard) from a 'sorter score' output, in belt order, to the "
            "same packing code the line uses: each case's summed energy upper bound stays within the limit. Writes "
            "cases.csv, and per closed case a manifest CSV and a printable HTML page (see docs/cases.md)."
        ),
    )
    p.add_argument("scores", help="scores file (.csv or .parquet) with energy_wh and energy_wh_upper columns")
    p.add_argument("--out", required=True, help="output directory (must be new or empty, unless --force)")
    p.add_argument(
        "--limit-wh",
        type=float,
        default=DEFAULT_LIMIT_WH,
        help=f"most summed energy bound per case, Wh (default {DEFAULT_LIMIT_WH:g}: the special permit)",
    )
    p.add_argument("--mass-limit-kg", type=float, default=None, help="most gross item mass per case, kg (default none)")
    p.add_argument("--line", default=None, help="line name for case ids and manifests (default: the logs' meta.json)")
    p.add_argument("--lane", default="hazard", help="the lane the case station packs (default hazard)")
    p.add_argument(
        "--case-id",
        default=DEFAULT_ID_SCHEME,
        dest="case_id_scheme",
        help="case id scheme with {line}, {date} and {n} (default " + repr(DEFAULT_ID_SCHEME).replace("%", "%%") + ")",
    )
    p.add_argument("--first-case", type=int, default=1, help="number n of the first case (default 1)")
    p.add_argument(
        "--positions",
        type=int,
        default=1,
        help="cases open side by side at the station (default 1); each item goes into the fullest it fits",
    )
    p.add_argument(
        "--state",
        default=None,
        help=(
            "continue from a station state (station.json of an earlier run with --keep-open): its open case fills first"
        ),
    )
    p.add_argument(
        "--keep-open",
        action="store_true",
        help=("leave the last case open (no manifest; station.json keeps it for the next run) instead of closing it"),
    )
    p.add_argument("--consignor", default=None, help="consignor/permit block for the manifests, a TOML or JSON file")
    p.add_argument("--no-thumbnails", action="store_true", help="leave the X-ray thumbnails out of the manifests")
    p.add_argument(
        "--force", action="store_true", help="write into a non-empty --out, replacing an earlier run's files"
    )
    p.set_defaults(func=_cmd_pack)


def _cmd_pack(args: Any) -> int:
    from .manifest import load_consignor, manifest_renderer
    from .plan import default_line, plan_scores, prepare_out, read_scores, write_plan

    if not (math.isfinite(args.limit_wh) and args.limit_wh > 0):
        raise SorterError(f"--limit-wh must be a positive number of Wh, got {args.limit_wh}")
    if args.mass_limit_kg is not None and not (math.isfinite(args.mass_limit_kg) and args.mass_limit_kg > 0):
        raise SorterError(f"--mass-limit-kg must be a positive number of kg, got {args.mass_limit_kg}")
    if not 1 <= args.positions <= 16:
        raise SorterError(f"--positions must be 1 to 16 case positions, got {args.positions}")
    if args.first_case < 1:
        raise SorterError(f"--first-case must be 1 or more, got {args.first_case}")
    consignor = load_consignor(args.consignor)
    state = None
    if args.state:
        try:
            text = Path(args.state).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SorterError(f"--state {args.state}: cannot read it ({err})") from err
        state = StationState.from_json(text, where=f"--state {args.state}")
    table = read_scores(args.scores)
    line = args.line or (state.config.line if state else None) or default_line(table)
    config = StationConfig(
        lane=args.lane,
        limit_wh=args.limit_wh,
        mass_limit_g=None if args.mass_limit_kg is None else args.mass_limit_kg * 1000.0,
        case_id_scheme=args.case_id_scheme,
        line=line,
        auto_open=True,
        positions=args.positions,
    )
    if state is not None:
        state = state.reconfigure(config)
        if not state.open_cases and args.first_case > state.next_n:
            state = StationState(config, None, args.first_case)
    else:
        state = StationState.new(config, args.first_case)
    render = manifest_renderer(config, consignor, scores=args.scores, thumbnails=not args.no_thumbnails)
    out = Path(args.out)
    plan, logs = plan_scores(
        args.scores, config, close_last=not args.keep_open, state=state, table=table
    )  # everything read and checked before anything is written
    prepare_out(out, args.force)
    summary = write_plan(plan, out, render=render)
    for msg in logs.problems:
        print(f"sorter pack: warning: {msg}", file=sys.stderr)
    closed = [c for c in summary["cases"] if c["status"] == "closed"]
    refused = summary["refused"]
    print(
        f"wrote {out}: {len(summary['cases'])} case(s) for {summary['items']} {config.lane} item(s), "
        f"{len(closed)} closed with manifests" + (", 1 left open" if len(closed) < len(summary["cases"]) else "")
    )
    if closed:
        fills = [c["upper_wh"] / c["limit_wh"] for c in closed]
        print(
            f"summed bound per case: mean {100 * sum(fills) / len(fills):.1f} % of {config.limit_wh:g} Wh, "
            f"max {max(c['upper_wh'] for c in closed):.1f} Wh"
        )
    print(
        "refused: "
        + (", ".join(f"{k}={v}" for k, v in sorted(refused.items())) or "none")
        + ("  (see the reason column of cases.csv; these items go to the safe place, docs/cases.md)" if refused else "")
    )
    return 0


# ------------------------------------------------------------------------------ cases


def _add_cases(sub: Any) -> None:
    p = sub.add_parser(
        "cases",
        help="list, show or export cases: the line's (from its audit log) or a pack run's",
        description=(
            "Read the cases the line packed, from its audit log (--audit PATH, the line's audit.path; add --log DIR, "
            "the log the line followed, for products and X-ray thumbnails), or the cases a 'sorter pack' run "
            "planned (--from DIR). 'manifest' writes a closed case's manifest (CSV and printable HTML)."
        ),
    )
    csub = p.add_subparsers(dest="cases_command", metavar="ACTION")

    def source_args(q: Any) -> None:
        g = q.add_mutually_exclusive_group(required=True)
        g.add_argument("--from", dest="source", help="the --out directory of a 'sorter pack' run")
        g.add_argument("--audit", default=None, help="the line's audit log (audit.path in its configuration)")
        q.add_argument(
            "--log",
            default=None,
            help="with --audit: the log the line followed (line.log_dir), for products and X-rays",
        )

    a = csub.add_parser("list", help="one line per case: id, items, summed bound, fill, mass")
    source_args(a)
    a.set_defaults(func=_cmd_list)
    b = csub.add_parser("show", help="a case's totals and items")
    b.add_argument("case_id", metavar="ID")
    source_args(b)
    b.add_argument("--json", action="store_true", help="print JSON instead of text")
    b.set_defaults(func=_cmd_show)
    c = csub.add_parser("export", help="the cases' totals (or, with --items, their items) as CSV or JSON")
    source_args(c)
    c.add_argument("--out", default="-", help="output file (.csv or .json; default: CSV to standard output)")
    c.add_argument("--items", action="store_true", help="one row per item instead of one per case")
    c.set_defaults(func=_cmd_export)
    m = csub.add_parser("manifest", help="write a closed case's manifest: case-ID.csv and a printable case-ID.html")
    m.add_argument("case_id", metavar="ID")
    source_args(m)
    m.add_argument("--out", required=True, help="directory to write the two files into (created if missing)")
    m.add_argument("--consignor", default=None, help="consignor/permit block for the manifest, a TOML or JSON file")
    m.add_argument("--no-thumbnails", action="store_true", help="leave the X-ray thumbnails out")
    m.add_argument("--force", action="store_true", help="replace the case's manifest files if they exist")
    m.set_defaults(func=_cmd_manifest)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _source(args: Any) -> Any:
    from .records import AuditSource, PackDirSource

    if getattr(args, "audit", None):
        return AuditSource(args.audit, args.log)
    if getattr(args, "log", None):
        raise SorterError("--log goes with --audit (a pack run's items name their logs already)")
    return PackDirSource(args.source)


def _cmd_manifest(args: Any) -> int:
    from .manifest import load_consignor, manifest_renderer
    from .plan import safe_file_id, write_manifest

    consignor = load_consignor(args.consignor)
    src = _source(args)
    case, items, config = src.manifest_inputs(args.case_id)
    if case.is_open:
        raise SorterError(f"case {case.case_id} is still open: its manifest is written once it is closed")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SorterError(f"--out {out} is a file; pass a directory")
    fid = safe_file_id(case.case_id)
    existing = [f for f in (out / f"case-{fid}.csv", out / f"case-{fid}.html") if f.exists()]
    if existing and not args.force:
        raise SorterError(f"{existing[0]} exists; pass --force to replace it, or choose another --out")
    origin = f"the line's audit log {Path(args.audit).name}" if args.audit else str(src.summary.get("scores") or "")
    render = manifest_renderer(config, consignor, scores=origin, thumbnails=not args.no_thumbnails)
    out.mkdir(parents=True, exist_ok=True)
    s = write_manifest(case, items, config, out, render=render)
    print(
        f"wrote {out / s['manifest_csv']} and {out / s['manifest_html']} ({s['items']} item(s), {s['upper_wh']:.1f} Wh)"
    )
    return 0


def _cmd_list(args: Any) -> int:
    cases = _source(args).list_cases()
    print(f"{'case':<28} {'status':<7} {'items':>5} {'bound Wh':>9} {'fill':>6} {'est. Wh':>8} {'mass kg':>8}  closed")
    for c in cases:
        est = "—" if c["energy_wh"] is None else f"{c['energy_wh']:.1f}"
        print(
            f"{c['case_id']:<28} {c['status']:<7} {c['items']:>5} {c['upper_wh']:>9.1f} "
            f"{100 * c['upper_wh'] / c['limit_wh']:>5.1f}% {est:>8} {c['mass_g'] / 1000:>8.2f}  "
            f"{c['closed_utc'] or '-'} {c['close_reason']}"
        )
    print(f"{len(cases)} case(s)")
    return 0


def _cmd_show(args: Any) -> int:
    rec = _source(args).get_case(args.case_id)
    if args.json:
        print(json.dumps({"case": rec.summary, "items": rec.items}, indent=1))
        return 0
    s = rec.summary
    print(
        f"case {s['case_id']} ({s['status']}{', ' + s['close_reason'] if s['close_reason'] else ''}) "
        f"line {s['line']}, lane {s['lane']}"
    )
    print(f"opened {s['opened_utc'] or '-'}, closed {s['closed_utc'] or '-'}")
    print(
        f"items {s['items']}; summed bound {s['upper_wh']:.1f} Wh of {s['limit_wh']:g} Wh; estimate "
        f"{'—' if s['energy_wh'] is None else format(s['energy_wh'], '.1f')} Wh; gross mass {s['mass_g'] / 1000:.2f} kg"
        + (f" + {s['mass_unknown']} without a weight" if s["mass_unknown"] else "")
    )
    if s.get("manifest_html") and args.source:
        print(f"manifest: {Path(args.source) / s['manifest_html']}")
    elif s["status"] == "closed":
        print(f"manifest: sorter cases manifest {s['case_id']} --audit {args.audit} --out DIR")
    print(f"{'#':>3} {'item':<14} {'est. Wh':>8} {'bound Wh':>9} {'weight g':>9}  product")
    for r in rec.items:
        print(
            f"{r['seq']:>3} {r['item_id']:<14} {r['energy_wh'] or '—':>8} {r['energy_wh_upper'] or '—':>9} "
            f"{r['weight_g'] or '—':>9}  {r['product'] or ''}"
        )
    return 0


def _cmd_export(args: Any) -> int:
    src = _source(args)
    if args.items:
        rows: list[dict[str, Any]] = [r for r in src.item_rows() if r["case_id"]]
    else:
        rows = src.list_cases()
    out = args.out
    if out != "-" and Path(out).suffix not in (".csv", ".json"):
        raise SorterError(f"--out {out}: use a .csv or .json file name, or - for standard output")
    if out.endswith(".json"):
        Path(out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    else:
        fh = sys.stdout if out == "-" else open(out, "w", newline="", encoding="utf-8")
        try:
            if rows:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        finally:
            if fh is not sys.stdout:
                fh.close()
    if out != "-":
        print(f"wrote {len(rows)} row(s) to {out}")
    return 0
