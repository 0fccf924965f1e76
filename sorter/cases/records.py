"""Reading cases back: a small interface, and its implementation on a ``sorter pack`` directory.

``sorter cases`` reads through :class:`CaseSource`.  Today the one source is the
directory a ``sorter pack`` run wrote (:class:`PackDirSource`: ``summary.json``
for the cases' totals, ``cases.csv`` for their items).  A source reading the line's
audit log implements the same two methods.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import SorterError
from .plan import CASES_COLUMNS, CASES_FILE, SUMMARY_FILE

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
        known = [c["case_id"] for c in self.summary["cases"]]
        shown = ", ".join(known[:8]) + (" …" if len(known) > 8 else "")
        raise SorterError(f"no case {case_id!r} in {self.dir}; known: {shown or 'none'} ('sorter cases list')")

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
