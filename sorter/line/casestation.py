"""The case station on the line: its open cases, kept by the controller (``docs/cases.md``).

The controller offers every item it routes to the station's lane to :meth:`CaseStation.offer`
(the packing core's :func:`~sorter.cases.packing.offer`, the same code as ``sorter pack``), in
belt order, and records the outcome in the item's audit row; a case closed by the offer is
recorded as a ``case_close`` event *in the same transaction*.  The PLC's case-station block
(``docs/plc-interface.md``) is read every heartbeat: :meth:`CaseStation.on_plc` opens a case
at a position when the PLC confirms a new one in place there (``CASE_PLACED`` changed,
``CASE_READY`` = 1) and closes a position's open case when it is taken away; these are
recorded as ``case_open`` / ``case_close`` events before any item can be assigned to the new
case.

A station has ``[cases] positions`` case positions (1 to 8), each holding at most one open case;
each case knows its position, and an item assigned to it is sent with that position's lane
code.  With one position everything (registers, events, codes) is as before positions existed;
with several, each event also names its ``position`` and lists every position's case
(``positions``), so that a restart knows which case stands where.

Restart: :meth:`CaseStation.restore` rebuilds the station from the audit log alone: the last
case event gives the station's state (``sorter-case-station/1``) and where each open case
stands, and each open case's items are the rows assigned to it, in ``case_seq`` order
(:meth:`Case.rebuild`).  Only committed rows count, and a decision is sent only after its row
is committed, so a kill -9 never leaves an item in a case that the restarted station does not
count.

Examples
--------
>>> from sorter.line.config import CasesSection
>>> from sorter.line.plc.protocol import CasePlcWords
>>> st = CaseStation(CasesSection(enabled=True), "L1")
>>> events = st.on_plc([CasePlcWords(1, True, 1, 0)], now=1.7e9)
>>> [kind for kind, _ in events], st.open_case_id
(['case_open'], 'L1-20231114-0001')
>>> r, _ = st.offer(PackItem("A", energy_wh_upper=2000.0), now=1.7e9)
>>> r.kind, st.pc_words()[0].fill_wh
('assigned', 2000)
>>> st.answered(r.case_id)  # the PLC acknowledged A
True
>>> r, events = st.offer(PackItem("B", energy_wh_upper=200.0), now=1.7e9)
>>> r.kind, [kind for kind, _ in events], st.pc_words()[0].full
('no_case_ready', ['case_close'], True)

Two positions: each confirmed case opens at its own position, and an item goes into the
fullest case it fits.

>>> two = CaseStation(CasesSection(enabled=True, positions=2), "L1")
>>> _ = two.on_plc([CasePlcWords(2, True, 1, 0), CasePlcWords(2, True, 1, 0)], now=1.7e9)
>>> r, _ = two.offer(PackItem("C", energy_wh_upper=1500.0), now=1.7e9)
>>> r, _ = two.offer(PackItem("D", energy_wh_upper=1500.0), now=1.7e9)
>>> two.position_of(r.case_id), [w.fill_wh for w in two.pc_words()]
(2, [1500, 1500])
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass
class _Position:
    """One case position as the PC sees it."""

    number: int
    opened_for: int | None = None
    """The ``CASE_PLACED`` value the open (or last) case here was opened for."""
    case_id: str | None = None
    """The open case at this position (None: no case open here)."""
    last: Case | None = None
    """The last case closed here (for the PC words while no case is open)."""


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
        With one position: the ``CASE_PLACED`` value the open (or last) case was opened for.
    layout : list of dict, optional
        Where the resumed state's cases stand: ``{"position", "case_id", "placed"}`` per
        position, as the events of a station with several positions record it.
    """

    def __init__(
        self,
        section: CasesSection,
        line: str,
        *,
        state: StationState | None = None,
        opened_for: int | None = None,
        layout: list[dict[str, Any]] | None = None,
    ) -> None:
        try:
            cfg = section.station_config(line)
            self.state = StationState.new(cfg, section.first_case) if state is None else state.reconfigure(cfg)
        except CaseStateError as err:
            raise ConfigError(f"[cases]: {err}") from err
        self.section = section
        self.positions = [_Position(p) for p in range(1, cfg.positions + 1)]
        if layout is None:
            first = self.state.open_case
            layout = [{"position": 1, "case_id": None if first is None else first.case_id, "placed": opened_for}]
        open_ids = {c.case_id for c in self.state.open_cases}
        for entry in layout:
            p = entry.get("position")
            if isinstance(p, int) and 1 <= p <= len(self.positions):
                pos = self.positions[p - 1]
                pos.opened_for = entry.get("placed")
                pos.case_id = entry.get("case_id") if entry.get("case_id") in open_ids else None
        for c in self.state.open_cases:
            if self.position_of(c.case_id) is None:
                # Its position is not known (or not configured any more): the first free one, opened
                # for no CASE_PLACED value, so the first PLC read closes it ("another case was confirmed").
                pos = next(q for q in self.positions if q.case_id is None)
                logger.warning("case %s: its position is unknown; it closes at the first PLC read", c.case_id)
                pos.case_id, pos.opened_for = c.case_id, None
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
            rebuilt = []
            for case in state.open_cases:
                rows = log.case_items(case.case_id)
                items = [pack_item(r.item_id, r.energy_wh_upper, r.energy_wh, r.weight_g, r.t_item) for r in rows]
                seqs = [r.case_seq for r in rows]
                if seqs != list(range(1, len(rows) + 1)):
                    raise CaseStateError(
                        f"{where}: case {case.case_id}'s items have positions {seqs[:20]}, not "
                        "1..n; the audit log is damaged: close the case by hand"
                    )
                rebuilt.append(Case.rebuild(case.case_id, case.n, case.opened_t, items))
            if rebuilt:
                state = StationState(state.config, rebuilt[0], state.next_n, tuple(rebuilt[1:]))
        layout = detail.get("positions")
        if not isinstance(layout, list) or not all(isinstance(e, dict) for e in layout):
            layout = None
        station = cls(section, line, state=state, opened_for=detail.get("placed"), layout=layout)
        for c in station.state.open_cases:
            logger.info(
                "case station resumed: case %s open at position %s with %d item(s), %.1f Wh of %g",
                c.case_id,
                station.position_of(c.case_id),
                len(c.items),
                c.upper_wh,
                station.state.config.limit_wh,
            )
        return station

    # -- the line ----------------------------------------------------------------

    @property
    def lane(self) -> str:
        return self.state.config.lane

    @property
    def open_case_id(self) -> str | None:
        """The first open case (with one position: the open case)."""
        return None if self.state.open_case is None else self.state.open_case.case_id

    def position_of(self, case_id: str | None) -> int | None:
        """The position (1-based) where open case ``case_id`` stands, or None."""
        for pos in self.positions:
            if case_id is not None and pos.case_id == case_id:
                return pos.number
        return None

    def offer(self, item: PackItem, now: float) -> tuple[Offer, list[Event]]:
        """Offer one item (belt order); adopt the new state; return the outcome and the events
        to commit with the item's row.  An assigned item goes to :meth:`position_of` its case."""
        r = self.state.offer(item, now)
        self.state = r.state
        if r.kind == "assigned" and r.case_id is not None:
            self.unanswered[r.case_id] = self.unanswered.get(r.case_id, 0) + 1
        self.offers[r.kind] += 1
        events: list[Event] = []
        if r.closed is not None:
            events.append(self._closed_at(self._where(r.closed.case_id), r.closed))
        return r, events

    def on_plc(self, words: CasePlcWords | Sequence[CasePlcWords], now: float) -> list[Event]:
        """The PLC's case words as just read (one per position): open or close cases; return the
        events to record."""
        per_position = (words,) if isinstance(words, CasePlcWords) else tuple(words)
        if len(per_position) != len(self.positions):
            raise ValueError(f"expected the case words of {len(self.positions)} position(s), got {len(per_position)}")
        one = len(self.positions) == 1
        events: list[Event] = []
        for pos, w in zip(self.positions, per_position):
            at = "the station" if one else f"position {pos.number}"
            if pos.case_id is not None:
                why = None
                if not w.ready:
                    why = f"case removed at {at} (CASE_READY = 0)"
                elif w.placed != pos.opened_for:
                    why = f"another case was confirmed at {at} (CASE_PLACED {pos.opened_for} -> {w.placed})"
                if why is not None:
                    self.state, closed = self.state.close(now, why, case_id=pos.case_id)
                    assert closed is not None
                    logger.warning("case %s closed: %s", closed.case_id, why)
                    events.append(self._closed_at(pos, closed))
            if pos.case_id is None and w.ready and w.placed != pos.opened_for:
                self.state, case = self.state.open(now)
                assert self.position_of(case.case_id) is None, "a position without a case, but every case placed"
                pos.case_id, pos.opened_for = case.case_id, w.placed
                logger.info("case %s open at %s (CASE_PLACED %d)", case.case_id, at, w.placed)
                detail = {"case_id": case.case_id, "n": case.n, "placed": w.placed, "state": self.state.to_dict()}
                events.append(("case_open", self._with_layout(detail, pos)))
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

    def pc_words(self) -> tuple[CasePcWords, ...]:
        """What the PC publishes in the case block now, one :class:`CasePcWords` per position.

        A position's ``CASE_FULL`` is 1 once its case is closed *and* every decision into it has
        been answered by the PLC, so that the PLC never swaps a case an item is still being sent to."""
        limit = self.state.config.limit_mwh // 1000
        open_cases = {c.case_id: c for c in self.state.open_cases}
        out = []
        for pos in self.positions:
            case = open_cases.get(pos.case_id) if pos.case_id is not None else pos.last
            if case is None:
                out.append(CasePcWords(0, 0, limit, 0, True, pos.opened_for or 0))
                continue
            full = pos.case_id is None and not self.unanswered.get(case.case_id)
            out.append(
                CasePcWords(case.n, -(-case.upper_mwh // 1000), limit, len(case.items), full, pos.opened_for or 0)
            )
        return tuple(out)

    def _where(self, case_id: str) -> _Position:
        for pos in self.positions:
            if pos.case_id == case_id:
                return pos
        raise AssertionError(f"open case {case_id} stands at no position")

    def _closed_at(self, pos: _Position, closed: Case) -> Event:
        pos.case_id, pos.last = None, closed
        self.closed += 1
        logger.info(
            "case %s closed (%s): %d item(s), %.1f Wh of %g",
            closed.case_id,
            closed.close_reason,
            len(closed.items),
            closed.upper_wh,
            self.state.config.limit_wh,
        )
        detail = {
            "case_id": closed.case_id,
            "n": closed.n,
            "reason": closed.close_reason,
            "items": len(closed.items),
            "upper_wh": closed.upper_wh,
            "closed_t": closed.closed_t,
            "placed": pos.opened_for,
            "state": self.state.to_dict(),
        }
        return ("case_close", self._with_layout(detail, pos))

    def _with_layout(self, detail: dict[str, Any], pos: _Position) -> dict[str, Any]:
        """With several positions: the event's position, and where every open case stands."""
        if len(self.positions) == 1:
            return detail
        detail["position"] = pos.number
        detail["positions"] = [
            {"position": q.number, "case_id": q.case_id, "placed": q.opened_for} for q in self.positions
        ]
        return detail

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
