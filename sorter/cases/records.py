"""Reading cases back: a small interface, and its two implementations.

``sorter cases`` reads through :class:`CaseSource`:

- :class:`PackDirSource`: the directory a ``sorter pack`` run wrote (``summary.json`` for the
  cases' totals, ``cases.csv`` for their items);
- :class:`AuditSource`: the line's audit log (SQLite): the ``case_open`` / ``case_close``
  events give each case's header and the station's configuration, the decision rows
  assigned to a case (``case_id``, ``case_seq``) its items.  The line's log (``line.log_dir``),
  when given, adds each item's product and X-ray image for the manifest.

Both give the same totals (:func:`sorter.cases.plan.case_summary`) and the same item rows
(``cases.csv``'s columns), and :meth:`CaseSource.manifest_inputs` the case, its items and
the station's configuration that the manifest (CSV and HTML) is written from, so a case's
manifest carries the same content whichever source it is read from.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..errors import CaseStateError, SorterError
from .packing import Case, PackItem, StationConfig
from .plan import (
    CASES_COLUMNS,
    CASES_FILE,
    SUMMARY_FILE,
    ItemInfo,
    LogIndex,
    PlannedItem,
    _float,
    case_summary,
    item_cells,
)

# The totals of a case, as summary.json holds them (see sorter.cases.plan.case_summary).
SUMMARY_KEYS = (
    "case_id",
    "n",
    "line",
    "lane",
    "status",
    "close_reason",
    "opened_utc",
    "closed_utc",
    "items",
    "energy_wh",
    "upper_wh",
    "limit_wh",
    "mass_g",
    "mass_unknown",
    "mass_limit_g",
    "manifest_csv",
    "manifest_html",
)


@dataclass(frozen=True)
class CaseRecord:
    """One case read back: its totals and its item rows (``cases.csv``'s columns)."""

    summary: dict[str, Any]
    items: list[dict[str, str]]


class CaseSource(Protocol):
    """Where ``sorter cases`` reads cases from."""

    def list_cases(self) -> list[dict[str, Any]]:
        """Every case's totals, in case order."""
        ...

    def get_case(self, case_id: str) -> CaseRecord:
        """One case; :class:`~sorter.errors.SorterError` naming the known ids if there is none."""
        ...

    def item_rows(self) -> list[dict[str, str]]:
        """Every item row (``cases.csv``'s columns), packed and refused."""
        ...

    def manifest_inputs(self, case_id: str) -> tuple[Case, list[PlannedItem], StationConfig]:
        """What a case's manifest is written from: the case, its items in case order, the station."""
        ...


def _unknown_case(case_id: str, known: list[str], where: Any) -> SorterError:
    shown = ", ".join(known[:8]) + (" …" if len(known) > 8 else "")
    return SorterError(f"no case {case_id!r} in {where}; known: {shown or 'none'} ('sorter cases list')")


class PackDirSource:
    """The cases a ``sorter pack`` run wrote to ``directory``."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        sp = self.dir / SUMMARY_FILE
        if not sp.is_file():
            raise SorterError(f"--from {self.dir}: no {SUMMARY_FILE}; pass the --out directory of a 'sorter pack' run")
        try:
            self.summary = json.loads(sp.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SorterError(f"{sp}: cannot read it ({err}); rerun 'sorter pack'") from err
        if (
            not isinstance(self.summary, dict)
            or self.summary.get("format") != "sorter-cases/1"
            or not isinstance(self.summary.get("cases"), list)
        ):
            raise SorterError(f"{sp}: not a sorter-cases/1 summary; rerun 'sorter pack'")
        for k, c in enumerate(self.summary["cases"]):
            if not isinstance(c, dict) or set(SUMMARY_KEYS) - set(c):
                raise SorterError(
                    f"{sp}: case {k} lacks keys {sorted(set(SUMMARY_KEYS) - set(c or {}))}; rerun 'sorter pack'"
                )

    def list_cases(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.summary["cases"]]

    def get_case(self, case_id: str) -> CaseRecord:
        for c in self.summary["cases"]:
            if c["case_id"] == case_id:
                return CaseRecord(dict(c), [r for r in self.item_rows() if r["case_id"] == case_id])
        raise _unknown_case(case_id, [c["case_id"] for c in self.summary["cases"]], self.dir)

    def manifest_inputs(self, case_id: str) -> tuple[Case, list[PlannedItem], StationConfig]:
        rec = self.get_case(case_id)
        try:
            config = StationConfig.from_dict(self.summary["station"], f"{self.dir / SUMMARY_FILE} station")
        except (KeyError, CaseStateError) as err:
            raise SorterError(
                f"{self.dir / SUMMARY_FILE}: no usable station block ({err}); rerun 'sorter pack'"
            ) from err
        logs = LogIndex()
        items = []
        for r in rec.items:
            info = logs.get(r["log"], r["item_id"]) if r["log"] else ItemInfo()
            t = info.t if math.isfinite(info.t) else _parse_iso(r["t"])
            pi = PackItem(r["item_id"], _float(r["energy_wh_upper"]), _float(r["energy_wh"]), _float(r["weight_g"]), t)
            line_no = int(r["line_no"]) if r["line_no"] else None
            items.append(
                PlannedItem(
                    r["log"],
                    line_no,
                    r["item_id"],
                    r["lane"],
                    pi,
                    info,
                    r["product"] or None,
                    "assigned",
                    "",
                    case_id,
                    int(r["seq"]),
                )
            )
        return _case_of(rec.summary, items), items, config

    def item_rows(self) -> list[dict[str, str]]:
        """Every row of ``cases.csv`` (packed and refused items)."""
        p = self.dir / CASES_FILE
        try:
            with open(p, newline="", encoding="utf-8") as fh:
                rd = csv.DictReader(fh)
                if rd.fieldnames is None or set(CASES_COLUMNS) - set(rd.fieldnames):
                    raise SorterError(f"{p}: not the cases.csv of a 'sorter pack' run (columns {rd.fieldnames})")
                return list(rd)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise SorterError(f"{p}: cannot read it ({err}); rerun 'sorter pack'") from err


def _parse_iso(text: str) -> float:
    import datetime as dt

    if not text:
        return math.nan
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return math.nan


def _case_of(summary: dict[str, Any], items: list[PlannedItem]) -> Case:
    """A case from its totals and items (the sums recomputed from the items, as packed)."""
    case = Case.rebuild(
        summary["case_id"], int(summary["n"]), _parse_iso(summary["opened_utc"]), [i.item for i in items]
    )
    if summary["status"] == "closed":
        case = replace(case, closed_t=_parse_iso(summary["closed_utc"]), close_reason=summary["close_reason"])
    return case


CASE_EVENTS = ("case_open", "case_close")


class AuditSource:
    """The cases the line recorded in its audit log ``path`` (``audit.path``).

    ``log_dir``: the log the line followed (``line.log_dir``), for each item's product and X-ray
    thumbnail; without it those are left blank.  Rows moved to the audit archive
    (``sorter audit archive``) are no longer in the database: their cases list without items.
    """

    def __init__(self, path: str | os.PathLike, log_dir: str | os.PathLike | None = None):
        from ..line.audit import AuditLog  # the line's package: only needed for this source

        self.path = Path(path)
        if not self.path.is_file():
            raise SorterError(
                f"--audit {self.path}: no such file; pass the line's audit log (audit.path in its config)"
            )
        if log_dir is not None and not Path(log_dir).is_dir():
            raise SorterError(f"--log {log_dir}: no such directory; pass the log the line followed (line.log_dir)")
        self.log_dir = None if log_dir is None else str(log_dir)
        self._logs = LogIndex()
        try:
            self._log = AuditLog(self.path)
            events = self._log.events()
        except SorterError as err:
            raise SorterError(f"--audit {self.path}: {err}") from err
        self._cases: dict[str, dict[str, Any]] = {}  # case id -> header, in case order
        for t, kind, d in events:
            if kind not in CASE_EVENTS:
                continue
            where = f"--audit {self.path}: {kind} event of case {d.get('case_id')!r}"
            try:
                cfg = StationConfig.from_dict(d["state"]["config"], where)
                case_id, n = str(d["case_id"]), int(d["n"])
            except (KeyError, TypeError, ValueError, CaseStateError) as err:
                raise SorterError(f"{where}: not a case station event ({err}); the audit log is damaged") from err
            h = self._cases.setdefault(
                case_id, {"n": n, "opened_t": math.nan, "closed_t": None, "reason": "", "config": cfg}
            )
            if kind == "case_open":
                # With several positions the new case is among other_cases (open_case is the first opened).
                st = d["state"]
                opened = [c for c in [st.get("open_case"), *st.get("other_cases", [])] if isinstance(c, dict)]
                oc = next((c for c in opened if c.get("case_id") == case_id), {})
                h["opened_t"] = _float(oc.get("opened_t", t))
                h["config"] = cfg
            else:
                h["closed_t"] = _float(d.get("closed_t", t))
                h["reason"] = str(d.get("reason", ""))

    def close(self) -> None:
        self._log.close()

    def _rows(self, case_id: str) -> list[Any]:
        return self._log.case_items(case_id)

    def _planned_item(self, r: Any, status: str, case_id: str | None) -> PlannedItem:
        """An audit row as an item of the packing plan (product and thumbnail from the followed log, if given)."""
        info = self._logs.get(self.log_dir, r.item_id) if self.log_dir else ItemInfo()
        pi = PackItem(r.item_id, _float(r.energy_wh_upper), _float(r.energy_wh), _float(r.weight_g), r.t_item)
        return PlannedItem(
            self.log_dir or "",
            r.source_line,
            r.item_id,
            r.lane,
            pi,
            info,
            info.product,
            status,
            r.case_reason or "",
            case_id,
            r.case_seq,
        )

    def _planned(self, case_id: str) -> list[PlannedItem]:
        return [self._planned_item(r, "assigned", case_id) for r in self._rows(case_id)]

    def _case(self, case_id: str, items: list[PlannedItem]) -> Case:
        h = self._cases[case_id]
        case = Case.rebuild(case_id, h["n"], h["opened_t"], [i.item for i in items])
        if h["closed_t"] is not None:
            case = replace(case, closed_t=h["closed_t"], close_reason=h["reason"])
        return case

    def list_cases(self) -> list[dict[str, Any]]:
        out = []
        for case_id, h in self._cases.items():
            out.append(case_summary(self._case(case_id, self._planned(case_id)), h["config"]))
        return out

    def manifest_inputs(self, case_id: str) -> tuple[Case, list[PlannedItem], StationConfig]:
        if case_id not in self._cases:
            raise _unknown_case(case_id, list(self._cases), f"--audit {self.path}")
        cfg = self._cases[case_id]["config"]
        items = self._planned(case_id)
        return self._case(case_id, items), items, cfg

    def get_case(self, case_id: str) -> CaseRecord:
        case, items, cfg = self.manifest_inputs(case_id)
        return CaseRecord(case_summary(case, cfg), [item_row(i) for i in items])

    def item_rows(self) -> list[dict[str, str]]:
        """The rows of every item the station was offered (packed and refused), in belt order."""
        return [
            item_row(self._planned_item(r, r.case_status, r.case_id))
            for r in self._log.rows()
            if r.case_status is not None
        ]


def item_row(it: PlannedItem) -> dict[str, str]:
    """An item as a row of ``cases.csv`` (the same text ``sorter pack`` writes)."""
    return {k: str(v) for k, v in zip(CASES_COLUMNS, item_cells(it))}
