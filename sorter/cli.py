"""The ``sorter`` command line. Only this module configures logging.

Why this module is long (about 630 lines): one parser and one small handler per command
(simulate, train, calibrate, score, evaluate, model, retention, and the line, cases and
station groups, which live in their own packages); each handler only turns arguments into
one library call, and the shared argument types sit beside them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import SorterError

logger = logging.getLogger("sorter")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _positive_int(text: str) -> int:
    """A whole number, at least 1 (``--rotate-items``)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n})")
    return n


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up when asked (importlib.metadata scans the installed
    packages: a few hundredths of a second that every start of the line would otherwise pay)."""

    def __init__(
        self,
        option_strings,
        dest=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
        help="show program's version number and exit",
    ):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"sorter {__version__}")
        parser.exit()


def _workers(text: str) -> int:
    """``--workers``: a whole number of processes, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of worker processes") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n}); leave it out to use the cores, at most 8")
    return n


WORKERS_HELP = "worker processes (default: one per core, at most 8)"
FORCE_HELP = "replace --out if it exists (without it, an existing --out is refused)"


def _check_out_dir(path: str, what: str, marker: str, force: bool) -> None:
    """The output rule every command follows: a new or empty --out folder is used; an
    existing one is refused unless --force, and --force replaces only a folder that
    holds what the command writes (``marker``), never an unrelated one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SorterError(f"--out {p} is a file; {what} is a folder: choose a folder name")
    if not p.is_dir() or not any(p.iterdir()):
        return
    if not (p / marker).exists():
        raise SorterError(
            f"--out {p} is not empty and does not hold {what}; choose a new or empty folder"
            + (" (--force only replaces an earlier output)" if force else "")
        )
    if not force:
        raise SorterError(f"--out {p} already holds {what}; pass --force to replace it, or choose another folder")


def _num(v: object) -> str:
    """A figure for a printed summary: 4 decimals for a fraction, as is otherwise."""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------- simulate


class _LazyChoices:
    """``choices`` of an option, read from ``module.attr`` when first needed (the option is given,
    or the help is shown): building the parser then imports nothing of the simulator, which
    would add about 0.2 s to every command's start."""

    def __init__(self, module: str, attr: str) -> None:
        self.module, self.attr = module, attr

    def _values(self) -> list[str]:
        import importlib

        return sorted(getattr(importlib.import_module(self.module), self.attr))

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self):
        return iter(self._values())


def _add_simulate(sub) -> None:
    mixes = _LazyChoices("sorter.simulate.run", "MIXES")
    lines = _LazyChoices("sorter.simulate.run", "ALL_LINES")

    p = sub.add_parser(
        "simulate",
        help="write a simulated, labelled sensor log",
        description=("Simulate items passing the sensor bridge and write a sorter-log/1 log directory."),
    )
    p.add_argument("--items", type=int, default=1000, help="number of items (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same log")
    p.add_argument("--out", required=True, help="output log directory (new or empty; see --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it holds a log (an earlier simulation)")
    p.add_argument(
        "--mix", default="balanced", choices=mixes, metavar="MIX", help="intake mix: %(choices)s (default %(default)s)"
    )
    p.add_argument(
        "--line",
        default="a",
        choices=lines,
        metavar="LINE",
        help="sensor set-up preset: %(choices)s (default a; c is a line rendered by a separate route)",
    )
    p.add_argument(
        "--line-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field of the line preset, e.g. kvp=120 or xray_gain=1.05,0.97 (repeatable)",
    )
    p.add_argument("--line-name", default=None, help="line name declared in meta.json (default sim-LINE+KEY=VALUE...)")
    p.add_argument(
        "--exclude-family",
        action="append",
        default=[],
        metavar="FAMILY",
        help="leave a product family out of the intake (repeatable; see docs/simulator.md)",
    )
    p.add_argument(
        "--only-family",
        action="append",
        default=[],
        metavar="FAMILY",
        help="draw only these product families (repeatable)",
    )
    p.add_argument("--faults", type=float, default=0.002, help="per-sensor dropout probability (default 0.002)")
    p.add_argument(
        "--damaged-rate",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of Li-ion items damaged (default: the mix's, 0.05 recycler, 0.08 balanced); "
        "e.g. 1 for a log to calibrate the hazard lane's energy bound on",
    )
    p.add_argument("--unlabelled", action="store_true", help="omit the 'label' field")
    p.add_argument("--catalog", action="append", default=[], help="extra product catalogue CSV (repeatable)")
    p.add_argument("--workers", type=_workers, default=None, help=WORKERS_HELP)
    p.add_argument("--rate", type=float, default=2.0, help="items per second on the belt (timestamps)")
    p.add_argument(
        "--rotate-items",
        type=_positive_int,
        default=None,
        metavar="N",
        help="write a rotated log: a new segment file (items-000001.jsonl, ...) every N items "
        "(docs/log-format.md, 'Rotation'); default one items.jsonl",
    )
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args) -> int:
    from .batch import count_lines, default_workers
    from .logformat import INCOMPLETE_FILE, ITEMS_FILE, incomplete_note, segment_file
    from .simulate import SimConfig, simulate_log

    from .errors import SimulationError

    overrides: dict[str, str] = {}
    for item in args.line_param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SimulationError(f"--line-param {item!r}: expected KEY=VALUE, e.g. kvp=120 or xray_gain=1.05,0.97")
        overrides[key.strip()] = value.strip()
    cfg = SimConfig(
        items=args.items,
        seed=args.seed,
        mix=args.mix,
        line=args.line,
        faults=args.faults,
        labelled=not args.unlabelled,
        extra_catalogs=tuple(args.catalog),
        rate_hz=args.rate,
        line_overrides=overrides,
        line_name=args.line_name,
        exclude_families=tuple(args.exclude_family),
        only_families=tuple(args.only_family),
        damaged_rate=args.damaged_rate,
    )
    if not args.force and Path(args.out).is_dir() and incomplete_note(args.out) is not None:
        raise SorterError(
            f"--out {args.out} holds an incomplete log (an earlier simulation was interrupted); "
            "pass --force to replace it, or choose another folder"
        )
    marker = segment_file(1) if (Path(args.out) / segment_file(1)).exists() else ITEMS_FILE
    _check_out_dir(args.out, "a log", marker, args.force)
    if args.force and Path(args.out).is_dir():
        shutil.rmtree(args.out)
    try:
        summary = simulate_log(
            cfg,
            args.out,
            workers=args.workers or default_workers(),
            progress=sys.stderr.isatty(),
            rotate_items=args.rotate_items,
        )
    except KeyboardInterrupt:
        print(
            f"sorter simulate: interrupted; {args.out} holds an incomplete log of {count_lines(args.out)} items "
            f"(marked by its {INCOMPLETE_FILE} file); rerun with --force to replace it",
            file=sys.stderr,
        )
        return 130
    print(f"wrote {args.out}")
    print(summary.format())
    return 0


# ---------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from labelled logs",
        description=(
            "Train the chemistry classifier, the damage detector and the policy thresholds from labelled logs, "
            "and write a model directory (skops files + manifest)."
        ),
    )
    p.add_argument("logs", nargs="+", help="labelled log directories")
    p.add_argument("--out", required=True, help="model directory to write (new or empty; see --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it holds a model")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for the split and the trees; the same seed and logs give the same model (default 0)",
    )
    p.add_argument("--name", default="sorter", help="model name in the manifest")
    p.add_argument("--workers", type=_workers, default=None, help=WORKERS_HELP + ", for measuring the items")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.3,
        help="held-out share for the damage and novelty thresholds and the held-out metrics (default 0.3)",
    )
    p.add_argument(
        "--threshold-folds",
        type=_threshold_folds,
        default=None,
        help=(
            "cross-fit the chemistry classifier in this many folds and choose the lead_acid threshold on every "
            "item's out-of-fold probability; 0: on the held-out share only, the classifier fitted on the rest "
            "(default 5)"
        ),
    )
    p.add_argument(
        "--features",
        choices=("envelope", "material"),
        default="envelope",
        help=(
            "the classifier's features: 'envelope' (default) includes the envelope density; 'material' leaves it "
            "to the policy's density gate and adds the X-ray per gram weighed, which carries over to product "
            "families the logs lack (see models/README.md)"
        ),
    )
    p.set_defaults(func=_cmd_train)


def _threshold_folds(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k != 0 and not 2 <= k <= 20:
        raise argparse.ArgumentTypeError(f"--threshold-folds must be 0 or a whole number from 2 to 20, got {text!r}")
    return k


def _cmd_train(args) -> int:
    from .batch import default_workers
    from .logformat import check_log_dir
    from .model import MANIFEST
    from .train import TrainConfig, train_and_save

    for d in args.logs:
        check_log_dir(d)
    _check_out_dir(args.out, "a model", MANIFEST, args.force)
    folds = {} if args.threshold_folds is None else {"threshold_folds": args.threshold_folds}
    cfg = TrainConfig(
        seed=args.seed,
        val_fraction=args.val_fraction,
        workers=args.workers or default_workers(),
        features=args.features,
        **folds,
    )
    model, report = train_and_save(args.logs, args.out, cfg, name=args.name, progress=True)
    m = report["heldout_metrics"]
    print(f"wrote {args.out} ({model.model_id})")
    print("held-out: " + ", ".join(f"{k}={_num(v)}" for k, v in m.items()))
    t = model.thresholds
    print(
        f"thresholds: lead_acid_min={t.lead_acid_min:.6f} not_lead_max={t.not_lead_max:.4f} "
        f"damage_min={t.damage_min:.3f} hot_excess_c={t.hot_excess_c}"
    )
    return 0


# ---------------------------------------------------------------------------- score / evaluate


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score recorded logs to CSV or Parquet",
        description=("Score every line of one or more logs; one output row per input line, in order."),
    )
    p.add_argument("logs", nargs="+", help="log directories")
    p.add_argument(
        "--out", required=True, help="output file, .csv or .parquet (an existing file is refused; see --force)"
    )
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--workers", type=_workers, default=None, help=WORKERS_HELP)
    p.add_argument("--engine", default="local", choices=["local", "dask"], help="local processes or a Dask cluster")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: $DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a partial output exists")
    _add_line_mismatch(p)
    p.set_defaults(func=_cmd_score)


def _cmd_score(args) -> int:
    from .threads import default_workers, start_pool

    out = Path(args.out)
    if out.exists() and not out.is_dir() and not args.force:
        raise SorterError(f"--out {out} already exists; pass --force to replace it, or choose another file name")
    workers = args.workers or default_workers()
    # The measuring workers start before this process imports the batch engine, pyarrow and the
    # model (about 0.3 CPU-s): they boot meanwhile, on the other core.
    pool = start_pool(workers, preload="sorter.batch") if args.engine == "local" else None
    try:
        from .score import ScoreInterrupted, score_logs

        try:
            summary = score_logs(
                args.logs,
                args.out,
                model_dir=args.model,
                workers=workers,
                engine=args.engine,
                scheduler=args.scheduler,
                resume=not args.no_resume,
                progress=True,
                allow_line_mismatch=args.allow_line_mismatch,
                executor=pool,
            )
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    except ScoreInterrupted as err:
        if err.rows:
            print(
                f"sorter score: interrupted; {err.rows} rows saved in {err.partial}: rerun the same command to resume",
                file=sys.stderr,
            )
        else:
            print("sorter score: interrupted before any row was saved", file=sys.stderr)
        return 130
    print(summary.format())
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a labelled log",
        description=("Score a labelled log and write metrics.json, report.md and PNG plots."),
    )
    p.add_argument("log", help="labelled log directory")
    p.add_argument("--out", required=True, help="report directory (new or empty; see --force)")
    p.add_argument("--force", action="store_true", help="replace the report in --out if it holds one")
    p.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--workers", type=_workers, default=None, help=WORKERS_HELP + ", for measuring the items")
    _add_line_mismatch(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .batch import default_workers
    from .report import evaluate_log

    _check_out_dir(args.out, "a report", "report.md", args.force)
    metrics = evaluate_log(
        args.log,
        args.out,
        model_dir=args.model,
        workers=args.workers or default_workers(),
        progress=True,
        allow_line_mismatch=args.allow_line_mismatch,
    )
    a = metrics["all_sensors"]
    print(f"wrote {Path(args.out) / 'report.md'}")
    print(
        f"items={metrics['items']} li_ion_in_lead_acid={a['li_ion_in_lead_acid']}/{a['li_ion_total']} "
        f"non_lead_in_lead_acid={a['non_lead_in_lead_acid']} lead_acid_to_lead_acid={_num(a['lead_acid_recall'])} "
        f"manual={_num(a['manual_rate'])} damaged_to_hazard={_num(a['damaged_to_hazard'])}"
    )
    return 0


def _add_line_mismatch(p) -> None:
    p.add_argument(
        "--allow-line-mismatch",
        action="store_true",
        help=(
            "score a log whose declared line (meta.json: X-ray energies and pitch, camera pitch, line name) differs from "
            "the model's as if it matched. Without it, lead_acid is closed for such a log (its items go to manual). "
            "Dangerous: Li-ion may reach the breaker if the model does not transfer; calibrate or retrain instead"
        ),
    )


# ---------------------------------------------------------------------------- calibrate


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a trained model to a new line from a short labelled log",
        description=(
            "Re-fit what depends on the line (the X-ray measurements' normalisation, the policy and novelty thresholds, "
            "the line the model is valid for) from a short labelled log of the new line (about 500 items), without "
            "retraining. Writes a new model directory and OUT/calibration-report/ with the plant's safety table."
        ),
    )
    p.add_argument("logs", nargs="+", help="labelled log directories of the new line (about 500 items in all)")
    p.add_argument("--model", default=None, help="model to calibrate (default: the shipped model)")
    p.add_argument("--out", required=True, help="new model directory (new or empty; see --force)")
    p.add_argument("--force", action="store_true", help="replace the model in --out if it holds one")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the base name and the line)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=_workers, default=None, help=WORKERS_HELP + ", for measuring the items")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args) -> int:
    from .batch import default_workers
    from .calibrate import calibrate_and_save

    out = Path(args.out)
    _check_out_dir(args.out, "a model", "manifest.json", args.force)
    if args.force and out.is_dir():
        shutil.rmtree(out)
    model, report = calibrate_and_save(
        args.logs,
        args.model,
        args.out,
        name=args.name,
        seed=args.seed,
        workers=args.workers or default_workers(),
        progress=True,
    )
    m = report["metrics_on_calibration_items"]
    print(
        f"wrote {out} ({model.model_id}) for line {report['line']['line']!r}, calibrated from {report['usable']} items"
    )
    print(
        f"on the calibration items (in-sample): Li-ion in lead_acid {m['li_ion_in_lead_acid_lane']}, "
        f"lead-acid to lead_acid {_num(m['lead_acid_to_lead_acid'])}, manual {_num(m['manual_rate'])}"
    )
    print(
        f"report: {out / 'calibration-report' / 'report.md'}; evaluate on a fresh labelled log of the line before "
        "deploying ('sorter evaluate LOG --model DIR')"
    )
    return 0


# ---------------------------------------------------------------------------- model


def _add_model(sub) -> None:
    p = sub.add_parser(
        "model",
        help="maintain a model directory (upgrade)",
        description=("Maintain a model directory without retraining it."),
    )
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    u = msub.add_parser(
        "upgrade",
        help="add the fast predictor file (predictor.npz) to a model directory",
        description=(
            "Derive the fast predictor's arrays (predictor.npz: trees, calibration, feature steps and a probe set with "
            "scikit-learn's outputs on it) from the model's skops files, check them against scikit-learn, and add the "
            "file and its sha256 to the manifest. Nothing else changes (the model's id stays). With it, 'sorter score' "
            "and the line load the model without importing scikit-learn. Run it on a directory written before the "
            "file existed, or again after installing another numpy if loading warns that the file's probe outputs "
            "differ."
        ),
    )
    u.add_argument("model_dir", metavar="DIR", help="model directory (manifest.json and the skops files)")
    u.set_defaults(func=_cmd_model_upgrade)
    e = msub.add_parser(
        "energy-bound",
        help="calibrate a group-conditional energy bound on held-out labelled logs",
        description=(
            "Give a model's rated-energy bound (energy_wh_upper) one conformal quantile per bin of the estimate "
            "(Mondrian conformal prediction), calibrated on the labelled Li-ion items of held-out logs of the "
            "model's line (never its training logs), and write the result as a new model directory. The "
            "classifier, its thresholds and the estimate are unchanged. --adaptive makes the bound follow how well "
            "each kind of item is estimated (conformalized quantile regression), --hazard-groups gives the hazard "
            "lane's items quantiles of their own. See sorter/energy.py and docs/cases.md."
        ),
    )
    e.add_argument("logs", nargs="+", metavar="LOG", help="labelled log directories (held out from training)")
    e.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    e.add_argument("--out", required=True, help="model directory to write (new or empty; see --force)")
    e.add_argument("--force", action="store_true", help="replace --out if it holds a model")
    e.add_argument(
        "--edges-wh",
        default=None,
        help="bins of the estimate, ascending Wh, comma-separated (default 30,100,300,1100,1700)",
    )
    e.add_argument(
        "--adaptive",
        action="store_true",
        help="conformalized quantile regression: half the items fit a quantile regressor of the estimate's error, "
        "the other half calibrate its offsets (needs a few thousand Li-ion items)",
    )
    e.add_argument(
        "--hazard-groups",
        action="store_true",
        help="quantiles of their own for the items the model sends to the hazard lane (give logs with many damaged "
        "items: sorter simulate --damaged-rate 1)",
    )
    e.add_argument(
        "--coverage",
        type=float,
        default=None,
        help="conformal level of each group's quantile (default: the model's, 0.998 for a stated 99.5 %%)",
    )
    e.add_argument("--seed", type=int, default=0, help="random split of --adaptive (default 0)")
    e.add_argument("--workers", type=int, default=1, help="measuring processes (default 1)")
    e.set_defaults(func=_cmd_model_energy_bound)


def _cmd_model_upgrade(args) -> int:
    from .model import FAST_FILE
    from .model_upgrade import upgrade_model

    changed = upgrade_model(args.model_dir)
    print(f"{'wrote' if changed else 'up to date:'} {Path(args.model_dir) / FAST_FILE} (its sha256 is in the manifest)")
    return 0


def _cmd_model_energy_bound(args) -> int:
    import math

    from .energy import DEFAULT_GROUP_EDGES_WH, check_edges
    from .energy_calibration import recalibrate_bound
    from .model import MANIFEST

    edges = DEFAULT_GROUP_EDGES_WH
    if args.edges_wh is not None:
        try:
            values = [float(x) for x in args.edges_wh.split(",")]
        except ValueError as err:
            raise SorterError(
                f"--edges-wh {args.edges_wh!r}: expected ascending Wh values separated by commas, e.g. 30,100,300,1100,1700"
            ) from err
        try:
            edges = check_edges(values)
        except ValueError as err:
            raise SorterError(f"--edges-wh {args.edges_wh!r}: {err}") from err
    if args.workers < 1:
        raise SorterError(f"--workers must be at least 1, got {args.workers}")
    if args.coverage is not None and not 0.5 <= args.coverage < 1:
        raise SorterError(f"--coverage is a share in [0.5, 1), got {args.coverage}; e.g. 0.998")
    for d in args.logs:
        if not Path(d).is_dir():
            raise SorterError(
                f"{d}: no such log directory; pass labelled logs written by 'sorter simulate' or the line"
            )
    _check_out_dir(args.out, "a model", MANIFEST, args.force)
    model, report = recalibrate_bound(
        args.model,
        args.logs,
        args.out,
        edges_wh=edges,
        adaptive=args.adaptive,
        hazard_groups=args.hazard_groups,
        coverage=args.coverage,
        seed=args.seed,
        workers=args.workers,
    )
    for key, lane in (("groups", ""), ("hazard_groups", "hazard lane, ")):
        for g in report.get(key, []):
            lo, hi = g["estimate_wh"]
            f, q = g["bound_over_estimate"], g["log_q_upper"]
            how = f"= estimate x {f:.3f}" if f is not None else "= physical (too few items)"
            if args.adaptive and q is not None:
                how = f"= estimate x exp(quantile regressor {q:+.3f})"
            print(
                f"{lane}estimate {lo:g}-{'' if hi is None else f'{hi:g}'} Wh: {g['calibration_n']} items, bound {how}"
            )
    print(
        f"wrote {args.out} ({model.model_id}); global bound was estimate x {math.exp(report['global_log_q_upper']):.3f}"
    )
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


def _add_cases(sub) -> None:
    from .cases import cli as cases_cli

    cases_cli.add_commands(sub)


def _days(text: str) -> float | None:
    """``--keep-*-days``: a number of days >= 0, or ``forever``."""
    if text.strip().lower() == "forever":
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (or 'forever')") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of days >= 0 (got {text}), or 'forever'")
    return v


def _add_retention(sub) -> None:
    p = sub.add_parser(
        "retention",
        help="delete old images of a line log by the retention policy",
        description=(
            "Delete the images of items the line sorted (lead_acid, li_ion) after --keep-sorted-days, and those of "
            "labelled items (manual, hazard, station spot checks and verdicts) after --keep-labelled-days (default "
            "forever). The item lines stay; a deleted image reads as 'expired' everywhere. See docs/operations.md."
        ),
    )
    p.add_argument("log", help="the log directory (single-file or rotated)")
    p.add_argument(
        "--audit", required=True, help="the line's audit log (audit.sqlite), read only: the lane of each item"
    )
    p.add_argument(
        "--station",
        default=None,
        help="the station's store (station.sqlite), read only: queued and verdict items count as labelled",
    )
    p.add_argument(
        "--keep-sorted-days",
        type=_days,
        default=7.0,
        metavar="D",
        help="days to keep images of items sorted to lead_acid or li_ion (default 7)",
    )
    p.add_argument(
        "--keep-labelled-days",
        type=_days,
        default=None,
        metavar="D2",
        help="days to keep images of labelled items, or 'forever' (the default)",
    )
    p.add_argument("--dry-run", action="store_true", help="delete nothing; show what would go and how many bytes")
    p.set_defaults(func=_cmd_retention)


def _cmd_retention(args) -> int:
    from .retention import RetentionPolicy, run_retention

    policy = RetentionPolicy(keep_sorted_days=args.keep_sorted_days, keep_labelled_days=args.keep_labelled_days)
    report = run_retention(args.log, args.audit, policy=policy, station=args.station, dry_run=args.dry_run)
    print(report.format())
    return 0


COMMANDS: list[Callable] = [
    _add_simulate,
    _add_train,
    _add_calibrate,
    _add_score,
    _add_evaluate,
    _add_model,
    _add_line,
    _add_cases,
    _add_station,
    _add_retention,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sorter",
        description="Tell lithium-ion from lead-acid batteries on a recycling conveyor and drive the divert.",
        epilog="Outputs: a new or empty --out is written; an existing one is refused unless --force is given, "
        "and --force only replaces what the same command wrote. Mistakes end with one line saying what "
        "and how to fix it, and exit status 2.",
    )
    parser.add_argument("--version", action=_VersionAction)
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
    except OSError as err:  # a path the user gave: unreadable, unwritable, full disk
        where = f" ({err.filename})" if err.filename else ""
        print(
            f"sorter {args.command}: error: {err.strerror or err}{where}; check the path and its permissions",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
