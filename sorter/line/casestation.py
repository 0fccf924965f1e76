"""The case station on the line: the open case, kept by the controller (``docs/cases.md``).

The controller offers every item it routes to the station's lane to :meth:`CaseStation.offer`
(the packing core's :func:`~sorter.cases.packing.offer`, the same code as ``sorter pack``), in
belt order, and records the outcome in the item's audit row; a case closed by the offer is
recorded as a ``case_close`` event *in the same transaction*.  The PLC's case-station block
(``docs/plc-interface.md``) is read every heartbeat: :meth:`CaseStation.on_plc` opens a case
when the PLC confirms a new one in place (``CASE_PLACED`` changed, ``CASE_READY`` = 1) and
closes the open case when it is taken away; these are recorded as ``case_open`` /
``case_close`` events before any item can be assigned to the new case.

Restart: :meth:`CaseStation.restore` rebuilds the station from the audit log alone: the last
case event gives the station's state (``sorter-case-station/1``) and, when a case is open, its
items are the rows assigned to it, in ``case_seq`` order (:meth:`Case.rebuild`).  Only
committed rows count, and a decision is sent only after its row is committed, so a kill -9
never leaves an item in the case that the restarted station does not count.

Examples
--------
>>> from sorter.line.config import CasesSection
>>> from sorter.line.plc.protocol import CasePlcWords
>>> st = CaseStation(CasesSection(enabled=True), "L1")
>>> events = st.on_plc(CasePlcWords(1, True, 1, 0), now=1.7e9)
>>> [kind for kind, _ in events], st.open_case_id
(['case_open'], 'L1-20231114-0001')
>>> r, _ = st.offer(PackItem("A", energy_wh_upper=2000.0), now=1.7e9)
>>> r.kind, st.pc_words().fill_wh
('assigned', 2000)
>>> st.answered(r.case_id)  # the PLC acknowledged A
True
>>> r, events = st.offer(PackItem("B", energy_wh_upper=200.0), now=1.7e9)
>>> r.kind, [kind for kind, _ in events], st.pc_words().full
('no_case_ready', ['case_close'], True)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sorter.cases.packing import Case, Offer, PackItem, StationState
from sorter.errors import CaseStateError, ConfigError
from sorter.line.audit import AuditLog
from sorter.line.config import CasesSection
from sorter.line.plc.protocol import CasePcWords, CasePlcWords

logger = logging.getLogger(__name__)

__all__ = ["CASE_EVENTS", "CaseStation", "PackItem", "case_columns", "pack_item"]

CASE_EVENTS = ("case_open", "case_close")
"""Audit event kinds of the station; each ``detail`` holds the station's state after it."""

Event = tuple[str, dict[str, Any]]


def pack_item(
    item_id: str, energy_wh_upper: float | None, energy_wh: float | None, weight_g: float | None, t: float
) -> PackItem:
    """A :class:`PackItem` from a decision's (or audit row's) values, ``None`` as NaN."""

    def num(x: float | None) -> float:
        return math.nan if x is None else float(x)

    return PackItem(item_id, num(energy_wh_upper), num(energy_wh), num(weight_g), float(t))


class CaseStation:
    """The PC side of one case station.

    Parameters
    ----------
    section : CasesSection
        ``[cases]`` of the configuration.
    line : str
        The line's name (case ids, manifests).
    state : StationState, optional
        Resumed state (see :meth:`restore`).
    opened_for : int or None
        The ``CASE_PLACED`` value the open (or last) case was opened for.
    """

    def __init__(
        self, section: CasesSection, line: str, *, state: StationState | None = None, opened_for: int | None = None
    ) -> None:
        try:
            cfg = section.station_config(line)
            self.state = StationState.new(cfg, section.first_case) if state is None else state.reconfigure(cfg)
        except CaseStateError as err:
            raise ConfigError(f"[cases]: {err}") from err
        self.section = section
        self.opened_for = opened_for
        self.last_case: Case | None = self.state.open_case
        self.offers = {"assigned": 0, "not_packable": 0, "no_case_ready": 0}
        # Decisions "into the case" not yet answered by the PLC, per case: CASE_FULL waits for them, so
        # the PLC's own count of decisions in transit includes every item of the case before it swaps.
        self.unanswered: dict[str, int] = {}
        self.closed = 0

    # -- restart --------------------------------------------------------------------

    @classmethod
    def restore(cls, section: CasesSection, line: str, audit_path: str | os.PathLike[str]) -> CaseStation:
        """The station as the audit log left it (a new station if the log has no case event)."""
        with AuditLog(audit_path) as log:
            events = [(k, d) for _, k, d in log.events() if k in CASE_EVENTS]
            if not events:
                return cls(section, line)
            kind, detail = events[-1]
            where = f"audit log {audit_path}, last {kind} event"
            try:
                state = StationState.from_dict(detail["state"], where)
            except (KeyError, TypeError) as err:
                raise CaseStateError(f"{where}: no station state in it ({err}); the audit log is damaged") from err
            case = state.open_case
            if case is not None:
                rows = log.case_items(case.case_id)
                items = [pack_item(r.item_id, r.energy_wh_upper, r.energy_wh, r.weight_g, r.t_item) for r in rows]
                seqs = [r.case_seq for r in rows]
                if seqs != list(range(1, len(rows) + 1)):
                    raise CaseStateError(
                        f"{where}: case {case.case_id}'s items have positions {seqs[:20]}, not "
                        "1..n; the audit log is damaged: close the case by hand"
                    )
                state = StationState(
                    state.config, Case.rebuild(case.case_id, case.n, case.opened_t, items), state.next_n
                )
        station = cls(section, line, state=state, opened_for=detail.get("placed"))
        if state.open_case is not None:
            c = state.open_case
            logger.info(
                "case station resumed: case %s open with %d item(s), %.1f Wh of %g",
                c.case_id,
                len(c.items),
                c.upper_wh,
                state.config.limit_wh,
            )
        return station

    # -- the line ----------------------------------------------------------------

    @property
    def lane(self) -> str:
        return self.state.config.lane

    @property
    def open_case_id(self) -> str | None:
        return None if self.state.open_case is None else self.state.open_case.case_id

    def offer(self, item: PackItem, now: float) -> tuple[Offer, list[Event]]:
        """Offer one item (belt order); adopt the new state; return the outcome and the events
        to commit with the item's row."""
        r = self.state.offer(item, now)
        self.state = r.state
        if r.kind == "assigned" and r.case_id is not None:
            self.unanswered[r.case_id] = self.unanswered.get(r.case_id, 0) + 1
        self.offers[r.kind] += 1
        events: list[Event] = []
        if r.closed is not None:
            events.append(self._close_event(r.closed))
        if self.state.open_case is not None:
            self.last_case = self.state.open_case
        return r, events

    def on_plc(self, words: CasePlcWords, now: float) -> list[Event]:
        """The PLC's case words as just read: open or close cases; return the events to record."""
        events: list[Event] = []
        open_case = self.state.open_case
        if open_case is not None:
            why = None
            if not words.ready:
                why = "case removed at the station (CASE_READY = 0)"
            elif words.placed != self.opened_for:
                why = f"another case was confirmed at the station (CASE_PLACED {self.opened_for} -> {words.placed})"
            if why is not None:
                self.state, closed = self.state.close(now, why)
                assert closed is not None
                logger.warning("case %s closed: %s", closed.case_id, why)
                events.append(self._close_event(closed))
        if self.state.open_case is None and words.ready and words.placed != self.opened_for:
            self.state, case = self.state.open(now)
            self.opened_for = words.placed
            self.last_case = case
            logger.info("case %s open (CASE_PLACED %d)", case.case_id, words.placed)
            events.append(
                (
                    "case_open",
                    {"case_id": case.case_id, "n": case.n, "placed": words.placed, "state": self.state.to_dict()},
                )
            )
        return events

    def answered(self, case_id: str) -> bool:
        """The PLC answered (or will never see) a decision into case ``case_id``; True when that
        was the case's last one outstanding."""
        left = self.unanswered.get(case_id, 0) - 1
        if left > 0:
            self.unanswered[case_id] = left
            return False
        self.unanswered.pop(case_id, None)
        return True

    def pc_words(self) -> CasePcWords:
        """What the PC publishes in the case block now.

        ``CASE_FULL`` is 1 once the case is closed *and* every decision into it has been
        answered by the PLC, so that the PLC never swaps a case an item is still being sent to."""
        case = self.state.open_case or self.last_case
        limit = self.state.config.limit_mwh // 1000
        if case is None:
            return CasePcWords(0, 0, limit, 0, True, self.opened_for or 0)
        full = self.state.open_case is None and not self.unanswered.get(case.case_id)
        return CasePcWords(case.n, -(-case.upper_mwh // 1000), limit, len(case.items), full, self.opened_for or 0)

    def _close_event(self, closed: Case) -> Event:
        self.closed += 1
        self.last_case = closed
        logger.info(
            "case %s closed (%s): %d item(s), %.1f Wh of %g",
            closed.case_id,
            closed.close_reason,
            len(closed.items),
            closed.upper_wh,
            self.state.config.limit_wh,
        )
        return (
            "case_close",
            {
                "case_id": closed.case_id,
                "n": closed.n,
                "reason": closed.close_reason,
                "items": len(closed.items),
                "upper_wh": closed.upper_wh,
                "closed_t": closed.closed_t,
                "placed": self.opened_for,
                "state": self.state.to_dict(),
            },
        )

    def write_state_file(self) -> None:
        """Write ``[cases] state_file`` (if set) atomically: a copy for ``sorter pack --state``."""
        path = self.section.state_file
        if not path:
            return
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".station-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.state.to_json() + "\n")
            os.replace(tmp, target)
        except OSError as err:
            logger.warning("case station state file %s not written: %s", path, err)
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def case_columns(r: Offer) -> Mapping[str, Any]:
    """The audit row's case columns for an offer's outcome."""
    return {"case_id": r.case_id, "case_seq": r.seq, "case_status": r.kind, "case_reason": r.reason or None}
