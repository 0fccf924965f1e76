"""``sorter pack``: plan cases for a scored file's hazard items, in belt order.

The rows of a ``sorter score`` output (CSV or Parquet) whose lane is the
station's are offered, in the file's row order (the belt order: ``sorter score``
writes one row per log line, in order), to the same packing core the line uses
(:mod:`sorter.cases.packing`), with a new case ready as soon as one closes.

What the scores file does not hold comes from the logs it names (its ``log``
column): the time each item passed the bridge, its X-ray image for the
manifest's thumbnail, the product where the log records one, and the scale's
weight when the scores have no ``weight_g`` column.  A log that cannot be read
only leaves those blank.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import LogFormatError, SorterError
from ..logformat import ITEMS_FILE, iter_log, layout, read_meta
from .packing import Case, Offer, PackItem, StationConfig, StationState

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("log", "line_no", "item_id", "lane", "energy_wh", "energy_wh_upper")
FLOAT_COLUMNS = ("energy_wh", "energy_wh_upper", "weight_g")
CASES_FILE = "cases.csv"
SUMMARY_FILE = "summary.json"
STATE_FILE = "station.json"
CASES_COLUMNS = (
    "case_id",
    "seq",
    "status",
    "reason",
    "item_id",
    "log",
    "line_no",
    "lane",
    "t",
    "energy_wh",
    "energy_wh_upper",
    "weight_g",
    "product",
)
MANIFEST_COLUMNS = (
    "case_id",
    "seq",
    "item_id",
    "log",
    "line_no",
    "product",
    "energy_wh",
    "energy_wh_upper",
    "weight_g",
    "passed_bridge_utc",
)


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What the log says of an item beyond the scores."""

    t: float = math.nan
    weight_g: float = math.nan
    product: str | None = None
    xray: str | None = None  # image path relative to the log directory
    log_dir: str | None = None


@dataclass
class PlannedItem:
    """One item of the station's lane: its row in the scores, what the log adds, its outcome."""

    log: str
    line_no: int | None
    item_id: str
    lane: str
    item: PackItem
    info: ItemInfo
    product: str | None
    status: str = ""
    reason: str = ""
    case_id: str | None = None
    seq: int | None = None


@dataclass
class PackPlan:
    """The outcome of planning: every lane item, the cases, the station's final state."""

    config: StationConfig
    items: list[PlannedItem]
    cases: list[Case]
    state: StationState
    scores: str = ""
    lines: list[str] = field(default_factory=list)

    def by_case(self) -> dict[str, list[PlannedItem]]:
        out: dict[str, list[PlannedItem]] = {c.case_id: [] for c in self.cases}
        for it in self.items:
            if it.case_id is not None:
                out.setdefault(it.case_id, []).append(it)
        return out


# ------------------------------------------------------------------------------ reading


def read_scores(path: str | os.PathLike) -> pa.Table:
    """The scores file as a table, its columns checked; a clear error otherwise."""
    p = Path(path)
    if not p.is_file():
        raise SorterError(f"{p}: no such scores file; pass the .csv or .parquet that 'sorter score' wrote")
    try:
        if p.suffix == ".parquet":
            table = pq.read_table(p)
        elif p.suffix == ".csv":
            with open(p, newline="", encoding="utf-8") as fh:
                names = next(csv.reader(fh), [])
            types = {c: pa.float64() for c in FLOAT_COLUMNS if c in names}
            types.update({c: pa.string() for c in ("log", "item_id", "lane", "product") if c in names})
            types["line_no"] = pa.int64()
            table = pacsv.read_csv(
                p,
                convert_options=pacsv.ConvertOptions(
                    column_types={k: v for k, v in types.items() if k in names}, strings_can_be_null=True
                ),
            )
        else:
            raise SorterError(f"{p}: use the .csv or .parquet file 'sorter score' wrote")
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error) as err:
        raise SorterError(f"{p}: cannot read the scores ({err}); pass the file 'sorter score' wrote") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        hint = (
            " (the energy columns come from a model that estimates each item's energy; rescore the logs with it)"
            if {"energy_wh", "energy_wh_upper"} & set(missing)
            else ""
        )
        raise SorterError(f"{p}: missing column(s) {', '.join(missing)}{hint}")
    return table


def _float(x: Any) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


class LogIndex:
    """Per log directory, what its items.jsonl says of each item (read once, lazily)."""

    def __init__(self) -> None:
        self._logs: dict[str, dict[str, ItemInfo]] = {}
        self.problems: list[str] = []

    def get(self, log_dir: str, item_id: str) -> ItemInfo:
        if log_dir not in self._logs:
            self._logs[log_dir] = self._read(log_dir)
        return self._logs[log_dir].get(item_id, ItemInfo(log_dir=log_dir))

    def _read(self, log_dir: str) -> dict[str, ItemInfo]:
        out: dict[str, ItemInfo] = {}
        try:
            kind = layout(log_dir)
        except LogFormatError:
            kind = None
        if kind is None:
            self.problems.append(f"{log_dir}: no {ITEMS_FILE}; times, X-ray thumbnails and products left blank")
            return out
        try:
            for ln in iter_log(log_dir):
                r = ln.record
                if r is None:
                    continue
                prod = r.extra.get("product")
                out[r.item_id] = ItemInfo(
                    t=r.t,
                    weight_g=_float(r.weight_g),
                    product=prod if isinstance(prod, str) and prod else None,
                    xray=r.xray_low or r.xray_high,
                    log_dir=log_dir,
                )
        except (LogFormatError, OSError) as err:
            self.problems.append(f"{log_dir}: {err}")
        return out

    def line_name(self, log_dir: str) -> str | None:
        try:
            return read_meta(log_dir).line
        except (SorterError, OSError):
            return None


def lane_items(table: pa.Table, lane: str, logs: LogIndex) -> Iterator[PlannedItem]:
    """The rows of ``lane`` in row order, as items to pack (what the log adds looked up)."""
    cols = {
        c: table.column(c).to_pylist() for c in (*REQUIRED_COLUMNS, "weight_g", "product") if c in table.column_names
    }
    for k, row_lane in enumerate(cols["lane"]):
        if row_lane != lane:
            continue
        log_dir = cols["log"][k] or ""
        item_id = cols["item_id"][k]
        if item_id is None:  # an unreadable log line has no id: nothing to pack, it went to manual
            continue
        info = logs.get(log_dir, item_id)
        weight = _float(cols["weight_g"][k]) if "weight_g" in cols else info.weight_g
        product = (cols["product"][k] if "product" in cols else None) or info.product
        line_no = cols["line_no"][k]
        yield PlannedItem(
            log_dir,
            None if line_no is None else int(line_no),
            str(item_id),
            lane,
            PackItem(str(item_id), _float(cols["energy_wh_upper"][k]), _float(cols["energy_wh"][k]), weight, info.t),
            info,
            product,
        )


# ------------------------------------------------------------------------------ planning


def plan_items(
    items: Iterable[PlannedItem],
    config: StationConfig,
    *,
    state: StationState | None = None,
    close_last: bool = True,
    run_t: float | None = None,
) -> PackPlan:
    """Offer ``items`` in order to a station (``state``, or a new one) and record each outcome.

    An item without a bridge time opens or closes cases at ``run_t`` (default: now)."""
    run_t = time.time() if run_t is None else run_t
    st = state or StationState.new(config)
    cases: list[Case] = []
    planned: list[PlannedItem] = []
    last_t = run_t
    for resumed in st.open_cases:  # items of a resumed open case: listed, not offered again
        for k, pi in enumerate(resumed.items, start=1):
            planned.append(
                PlannedItem(
                    "",
                    None,
                    pi.item_id,
                    config.lane,
                    pi,
                    ItemInfo(t=pi.t),
                    None,
                    "assigned",
                    "carried over in the open case of --state",
                    resumed.case_id,
                    k,
                )
            )
    for it in items:
        now = it.item.t if math.isfinite(it.item.t) else run_t
        last_t = now
        r: Offer = st.offer(it.item, now=now)
        if r.closed is not None:
            cases.append(r.closed)
        it.status, it.reason, it.case_id, it.seq = r.kind, r.reason, r.case_id, r.seq
        st = r.state
        planned.append(it)
    if close_last:
        st, closed_all = st.close_all(last_t, "end of input")
        cases.extend(sorted(closed_all, key=lambda c: c.n))
    else:
        cases.extend(sorted(st.open_cases, key=lambda c: c.n))
    return PackPlan(config, planned, cases, st)


def plan_scores(
    scores: str | os.PathLike,
    config: StationConfig,
    *,
    close_last: bool = True,
    state: StationState | None = None,
    run_t: float | None = None,
    table: pa.Table | None = None,
) -> tuple[PackPlan, LogIndex]:
    """Plan cases for a scores file (see the module docstring); ``table``: the file, if read already."""
    table = read_scores(scores) if table is None else table
    logs = LogIndex()
    plan = plan_items(lane_items(table, config.lane, logs), config, state=state, close_last=close_last, run_t=run_t)
    plan.scores = str(scores)
    plan.lines = sorted({n for d in {i.log for i in plan.items} if (n := logs.line_name(d))})
    return plan, logs


def default_line(table: pa.Table) -> str:
    """The line named in the first log of a scores table (``meta.json``), else ``"unknown"``."""
    for d in table.column("log").to_pylist():
        if d:
            try:
                return read_meta(d).line
            except (SorterError, OSError):
                return "unknown"
    return "unknown"


# ------------------------------------------------------------------------------ writing


def iso(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return ""
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(x: Any) -> Any:
    if x is None:
        return ""
    if isinstance(x, float):
        return "" if not math.isfinite(x) else repr(round(x, 3))
    return x


def safe_file_id(case_id: str) -> str:
    """A case id as a file-name part (characters other than A-Z a-z 0-9 . _ - become _)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in case_id) or "_"


def case_summary(case: Case, config: StationConfig) -> dict[str, Any]:
    """The totals of one case, as written to summary.json and shown by ``sorter cases``."""
    fid = safe_file_id(case.case_id)
    return {
        "case_id": case.case_id,
        "n": case.n,
        "line": config.line,
        "lane": config.lane,
        "status": "open" if case.is_open else "closed",
        "close_reason": case.close_reason,
        "opened_utc": iso(case.opened_t),
        "closed_utc": iso(case.closed_t),
        "items": len(case.items),
        "energy_wh": round(case.energy_wh, 3) if math.isfinite(case.energy_wh) else None,
        "upper_wh": case.upper_wh,
        "limit_wh": config.limit_wh,
        "mass_g": case.mass_g,
        "mass_unknown": case.mass_unknown,
        "mass_limit_g": config.mass_limit_g,
        "manifest_csv": f"case-{fid}.csv" if not case.is_open else None,
        "manifest_html": f"case-{fid}.html" if not case.is_open else None,
    }


def write_manifest(
    case: Case, items: list[PlannedItem], config: StationConfig, out: Path, *, render: Any = None
) -> dict[str, Any]:
    """Write a closed case's manifest CSV (and, with ``render(case, items) -> str``, its HTML
    page) into ``out``; return the case's totals (:func:`case_summary`, with the file names)."""
    s = case_summary(case, config)
    if case.is_open:
        raise SorterError(f"case {case.case_id} is still open: a manifest is written once the case is closed")
    with open(out / s["manifest_csv"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        for it in items:
            w.writerow(
                [
                    _cell(x)
                    for x in (
                        case.case_id,
                        it.seq,
                        it.item_id,
                        it.log,
                        it.line_no,
                        it.product,
                        it.item.energy_wh,
                        it.item.energy_wh_upper,
                        it.item.weight_g,
                        iso(it.item.t),
                    )
                ]
            )
    if render is not None:
        (out / s["manifest_html"]).write_text(render(case, items), encoding="utf-8")
    return s


OWNED_PATTERNS = (CASES_FILE, SUMMARY_FILE, STATE_FILE, "case-*.csv", "case-*.html")


def prepare_out(out: Path, force: bool) -> None:
    """Refuse an existing non-empty ``out`` unless ``force``; with it, remove only what a
    pack run writes there (so an earlier run's manifests cannot mix with this run's)."""
    if out.exists() and not out.is_dir():
        raise SorterError(f"--out {out} is a file; pass a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SorterError(
                f"--out {out} exists and is not empty; choose a new directory or pass --force "
                "to replace an earlier pack run's files there"
            )
        for pat in OWNED_PATTERNS:
            for f in out.glob(pat):
                if f.is_file():
                    f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def item_cells(it: PlannedItem) -> list[Any]:
    """An item's cells of ``cases.csv``, in :data:`CASES_COLUMNS` order."""
    return [
        _cell(x)
        for x in (
            it.case_id,
            it.seq,
            it.status,
            it.reason,
            it.item_id,
            it.log,
            it.line_no,
            it.lane,
            iso(it.item.t),
            it.item.energy_wh,
            it.item.energy_wh_upper,
            it.item.weight_g,
            it.product,
        )
    ]


def write_plan(
    plan: PackPlan, out: Path, *, render: Any = None, extra_summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``cases.csv``, a manifest CSV per closed case, ``summary.json`` and ``station.json``;
    ``render(case, items) -> str`` writes each closed case's HTML page when given."""
    with open(out / CASES_FILE, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CASES_COLUMNS)
        for it in plan.items:
            w.writerow(item_cells(it))
    groups = plan.by_case()
    summaries = []
    for case in plan.cases:
        s = case_summary(case, plan.config)
        summaries.append(s)
        if case.is_open:
            continue
        write_manifest(case, groups.get(case.case_id, []), plan.config, out, render=render)
    refused: dict[str, int] = {}
    for it in plan.items:
        if it.status != "assigned":
            refused[it.status] = refused.get(it.status, 0) + 1
    summary = {
        "format": "sorter-cases/1",
        "scores": plan.scores,
        "station": plan.config.to_dict(),
        "lines": plan.lines,
        "items": len(plan.items),
        "refused": refused,
        "cases": summaries,
        **(extra_summary or {}),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    (out / STATE_FILE).write_text(plan.state.to_json() + "\n", encoding="utf-8")
    return summary
