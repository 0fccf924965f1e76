"""The ``sorter`` command line. Only this module configures logging."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from . import __version__
from .errors import SorterError

log = logging.getLogger("sorter")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------- simulate


def _add_simulate(sub) -> None:
    from .simulate.run import MIXES
    from .simulate.sensors import LINES

    p = sub.add_parser("simulate", help="write a simulated, labelled sensor log", description=(
        "Simulate items passing the sensor bridge and write a sorter-log/1 log directory."))
    p.add_argument("--items", type=int, default=1000, help="number of items (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same log")
    p.add_argument("--out", required=True, help="output log directory (must be empty or new)")
    p.add_argument("--mix", default="balanced", choices=sorted(MIXES), help="intake mix (default balanced)")
    p.add_argument("--line", default="a", choices=sorted(LINES), help="sensor set-up preset (default a)")
    p.add_argument("--faults", type=float, default=0.002, help="per-sensor dropout probability (default 0.002)")
    p.add_argument("--unlabelled", action="store_true", help="omit the 'label' field")
    p.add_argument("--catalog", action="append", default=[], help="extra product catalogue CSV (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--rate", type=float, default=2.0, help="items per second on the belt (timestamps)")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args) -> int:
    from .batch import default_workers
    from .simulate import SimConfig, simulate_log

    cfg = SimConfig(items=args.items, seed=args.seed, mix=args.mix, line=args.line, faults=args.faults,
                    labelled=not args.unlabelled, extra_catalogs=tuple(args.catalog), rate_hz=args.rate)
    summary = simulate_log(cfg, args.out, workers=args.workers or default_workers(), progress=sys.stderr.isatty())
    print(f"wrote {args.out}")
    print(summary.format())
    return 0


# ---------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from labelled logs", description=(
        "Train the chemistry classifier, the damage detector and the policy thresholds from labelled logs, "
        "and write a model directory (skops files + manifest)."))
    p.add_argument("logs", nargs="+", help="labelled log directories")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="sorter", help="model name in the manifest")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.3, help="held-out share for thresholds (default 0.3)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .batch import default_workers
    from .train import TrainConfig, train_and_save

    cfg = TrainConfig(seed=args.seed, val_fraction=args.val_fraction, workers=args.workers or default_workers())
    model, report = train_and_save(args.logs, args.out, cfg, name=args.name, progress=sys.stderr.isatty())
    m = report["heldout_metrics"]
    print(f"wrote {args.out} ({model.model_id})")
    print("held-out: " + ", ".join(f"{k}={v}" for k, v in m.items()))
    t = model.thresholds
    print(f"thresholds: lead_acid_min={t.lead_acid_min:.6f} not_lead_max={t.not_lead_max:.4f} "
          f"damage_min={t.damage_min:.3f} hot_excess_c={t.hot_excess_c}")
    return 0


# ---------------------------------------------------------------------------- score / evaluate


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score recorded logs to CSV or Parquet", description=(
        "Score every line of one or more logs; one output row per input line, in order."))
    p.add_argument("logs", nargs="+", help="log directories")
    p.add_argument("--out", required=True, help="output file, .csv or .parquet")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--engine", default="local", choices=["local", "dask"], help="local processes or a Dask cluster")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: $DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a partial output exists")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    from .batch import default_workers
    from .score import score_logs

    summary = score_logs(args.logs, args.out, model_dir=args.model, workers=args.workers or default_workers(),
                         engine=args.engine, scheduler=args.scheduler, resume=not args.no_resume,
                         progress=sys.stderr.isatty())
    print(summary.format())
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on a labelled log", description=(
        "Score a labelled log and write metrics.json, report.md and PNG plots."))
    p.add_argument("log", help="labelled log directory")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .batch import default_workers
    from .report import evaluate_log

    metrics = evaluate_log(args.log, args.out, model_dir=args.model, workers=args.workers or default_workers(),
                           progress=sys.stderr.isatty())
    a = metrics["all_sensors"]
    print(f"wrote {args.out}/report.md")
    print(f"items={metrics['items']} li_ion_in_lead_acid={a['li_ion_in_lead_acid']}/{a['li_ion_total']} "
          f"non_lead_in_lead_acid={a['non_lead_in_lead_acid']} lead_acid_to_lead_acid={a['lead_acid_recall']:.4f} "
          f"manual={a['manual_rate']:.4f} damaged_to_hazard={a['damaged_to_hazard']}")
    return 0


# ---------------------------------------------------------------------------- line


def _add_line(sub) -> None:
    try:
        from .line import cli as line_cli
    except ImportError:  # the line controller is optional until built
        return
    line_cli.add_commands(sub)


def _add_station(sub) -> None:
    try:
        from .station import cli as station_cli
    except ImportError:  # like the line's commands: left out if its package is missing
        return
    station_cli.add_commands(sub)


COMMANDS: list[Callable] = [_add_simulate, _add_train, _add_score, _add_evaluate, _add_line, _add_station]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sorter",
        description="Tell lithium-ion from lead-acid batteries on a recycling conveyor and drive the divert.",
    )
    parser.add_argument("--version", action="version", version=f"sorter {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SorterError as err:
        print(f"sorter {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sorter {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
