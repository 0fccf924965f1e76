"""Reconciliation at restart: the audit log against what the PLC actually did.

The PLC's lane counters are the truth about where items went.  At every start
the controller compares them with the audit log, since the last snapshot of
the counters the audit log holds (taken at the previous start, and at the end
of a clean run):

- **Lanes.** Per lane, the decisions the PLC carried out (``lead_acid``,
  ``li_ion``, ``hazard``: the counter's increase; ``manual``: the increase of
  ``manual`` minus that of ``defaulted``) against the audit rows recorded
  ``acked`` for that lane.  More at the PLC: decisions the audit does not show
  as acknowledged -- rows left ``pending`` by a crash that the PLC latched after
  the PC died, or rows lost to a power cut.  Fewer at the PLC: decisions the
  PLC accepted and then did not carry out (a diverter fault, a PLC restart
  between acceptance and the diverter: ``accepted`` does not guarantee the
  lane).
- **Items without a row.** Items the PLC diverted against audit rows since the
  snapshot: items that passed while no controller ran (defaulted to the safe
  lane; a log source records them as ``overload`` when it re-reads their
  lines), or rows lost to a power cut.
- **The mailbox.** Every slot whose standing acknowledgement is ``accepted``
  names a decision (seq, item, lane) the PLC latched last; the audit must hold
  it as ``acked`` under that seq.

A gap is recorded in the audit log's ``events`` table (``reconciliation_gap``),
logged as an ERROR (a WARNING for items without a row only), counted in the
``sorter_line_reconciliation_gaps`` metric and shown in the run summary.  It
is never absorbed silently, and no row is changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sorter.lanes import Lane
from sorter.line.audit import AuditLog, AuditRecord
from sorter.line.plc.protocol import LANE_NAMES, AckStatus, MailboxEntry, plc_item_id

logger = logging.getLogger(__name__)

__all__ = ["SNAPSHOT_EVENT", "GAP_EVENT", "Reconciliation", "reconcile", "snapshot_detail"]

SNAPSHOT_EVENT: Final = "plc_counters"
"""Event kind of a snapshot of the PLC counters (with the audit's last row id)."""
GAP_EVENT: Final = "reconciliation_gap"
"""Event kind of a reconciliation that found a gap."""
_LANES: Final = tuple(Lane)


def snapshot_detail(
    counters: Mapping[str, int], last_id: int, why: str, mailbox: Sequence[MailboxEntry] = ()
) -> dict[str, Any]:
    """The ``plc_counters`` event: the PLC counters, the audit's last row id and the acks standing then."""
    return {
        "counters": {k: int(v) for k, v in counters.items()},
        "last_id": int(last_id),
        "why": why,
        "mailbox": {str(e.slot): int(e.ack_seq) for e in mailbox},
    }


@dataclass(frozen=True)
class Reconciliation:
    """What the restart's comparison of the audit log with the PLC found."""

    since: str
    """Which snapshot the comparison starts from (``"start"`` or ``"end"`` of a run)."""
    plc_carried_out: Mapping[str, int]
    """Per lane, decisions the PLC carried out since the snapshot."""
    audit_acked: Mapping[str, int]
    """Per lane, audit rows recorded ``acked`` since the snapshot."""
    crash_pending: Mapping[str, int]
    """Per lane, rows a crash left ``pending`` (delivery unknown)."""
    lane_gaps: Mapping[str, int]
    """Per lane, PLC minus audit (only lanes that differ)."""
    plc_items: int
    """Items the PLC diverted since the snapshot (all lanes)."""
    audit_rows: int
    """Audit rows since the snapshot."""
    mailbox: Sequence[str] = field(default_factory=tuple)
    """Accepted mailbox decisions the audit does not hold as acknowledged, one text each."""

    @property
    def items_without_row(self) -> int:
        """Items the PLC diverted with no audit row (passed while no controller ran, or rows lost)."""
        return max(0, self.plc_items - self.audit_rows)

    @property
    def gap_items(self) -> int:
        """Items in a lane gap or a mailbox mismatch (what raises the alarm)."""
        return sum(abs(v) for v in self.lane_gaps.values()) + len(self.mailbox)

    @property
    def ok(self) -> bool:
        """No gap of any kind."""
        return not self.lane_gaps and not self.mailbox and self.items_without_row == 0

    def lines(self) -> list[str]:
        """The findings, one sentence each (empty when everything agrees)."""
        out: list[str] = []
        for lane, gap in self.lane_gaps.items():
            pending = self.crash_pending.get(lane, 0)
            if gap > 0:
                text = (
                    f"the PLC carried out {gap} more {lane} decision(s) than the audit log shows acknowledged "
                    f"({self.plc_carried_out.get(lane, 0)} against {self.audit_acked.get(lane, 0)})"
                )
                if pending:
                    text += (
                        f"; {min(gap, pending)} may be decisions left pending by the crash that the PLC "
                        "latched after the PC died"
                    )
                if gap > pending:
                    text += f"; {gap - pending} have no audit row at all (lost to a power cut?)"
            else:
                text = (
                    f"the audit log shows {-gap} {lane} decision(s) acknowledged that the PLC did not carry "
                    f"out ({self.audit_acked.get(lane, 0)} against {self.plc_carried_out.get(lane, 0)}): "
                    "accepted, then sent to the safe lane (diverter fault or PLC restart)"
                )
            out.append(text)
        out.extend(self.mailbox)
        if self.items_without_row:
            out.append(
                f"{self.items_without_row} item(s) diverted by the PLC have no audit row ({self.plc_items} "
                f"items at the PLC, {self.audit_rows} rows since the {self.since} snapshot): items that "
                "passed while no controller ran (safe lane), or rows lost to a power cut"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "plc_carried_out": dict(self.plc_carried_out),
            "audit_acked": dict(self.audit_acked),
            "crash_pending": dict(self.crash_pending),
            "lane_gaps": dict(self.lane_gaps),
            "plc_items": self.plc_items,
            "audit_rows": self.audit_rows,
            "items_without_row": self.items_without_row,
            "mailbox": list(self.mailbox),
        }


def _delta(now: Mapping[str, int], before: Mapping[str, int], key: str) -> int:
    return (int(now.get(key, 0)) - int(before.get(key, 0))) & 0xFFFF_FFFF


def reconcile(
    log: AuditLog, counters: Mapping[str, int], mailbox: Sequence[MailboxEntry], crash_pending: Sequence[AuditRecord]
) -> Reconciliation | None:
    """Compare the audit log with the PLC since the last counter snapshot.

    Parameters
    ----------
    log : AuditLog
        The audit log (pending rows already marked, or not: ``crash_pending`` says which were).
    counters : mapping
        The PLC counters now.
    mailbox : sequence of MailboxEntry
        The mailbox slots and their standing acknowledgements, read now.
    crash_pending : sequence of AuditRecord
        Rows a crash had left ``pending``.

    Returns
    -------
    Reconciliation or None
        ``None`` when the audit log holds no snapshot yet (a new log).
    """
    snapshots = log.events(SNAPSHOT_EVENT)
    if not snapshots:
        return None
    detail = snapshots[-1][2]
    before, last_id = detail["counters"], int(detail["last_id"])
    rows = log.rows_after(last_id)
    pending_ids = {r.item_id for r in crash_pending}
    acked: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    for _, r in rows:
        if r.delivery == "acked":
            acked[r.lane] += 1
        if r.item_id in pending_ids:
            pending[r.lane] += 1
    carried: dict[str, int] = {lane: _delta(counters, before, lane) for lane in _LANES}
    plc_items = sum(carried.values())
    carried[Lane.MANUAL] = max(0, carried[Lane.MANUAL] - _delta(counters, before, "defaulted"))
    gaps = {lane: carried[lane] - acked.get(lane, 0) for lane in _LANES if carried[lane] != acked.get(lane, 0)}

    notes: list[str] = []
    by_seq = {r.plc_seq: r for _, r in rows if r.plc_seq is not None and r.delivery == "acked"}
    pending_by_plc_id = {plc_item_id(r.item_id): r for r in crash_pending}
    standing = {int(k): int(v) for k, v in detail.get("mailbox", {}).items()}
    for entry in mailbox:
        if entry.status != AckStatus.ACCEPTED or entry.ack_seq == 0 or entry.ack_seq != entry.slot_seq:
            continue
        if standing.get(entry.slot) == entry.ack_seq:
            continue  # latched before the snapshot: not this comparison's business
        lane = LANE_NAMES.get(entry.lane_code, f"code {entry.lane_code}")
        row = by_seq.get(entry.ack_seq)
        if row is not None and plc_item_id(row.item_id) == entry.item_id and row.lane == lane:
            continue
        crashed = pending_by_plc_id.get(entry.item_id)
        if crashed is not None:
            notes.append(
                f"mailbox slot {entry.slot}: the PLC accepted seq {entry.ack_seq} for item "
                f"{crashed.item_id} ({lane}), a decision left pending by the crash (its row says "
                "undelivered; the PLC latched it after the PC died)"
            )
        elif entry.ack_seq in by_seq:
            notes.append(
                f"mailbox slot {entry.slot}: the PLC accepted seq {entry.ack_seq} for PLC id "
                f"{entry.item_id} ({lane}), but the audit row acknowledged under that seq is another "
                "decision"
            )
        elif rows or last_id:
            notes.append(
                f"mailbox slot {entry.slot}: the PLC accepted seq {entry.ack_seq} for PLC id "
                f"{entry.item_id} ({lane}), which no audit row since the {detail.get('why', '?')} "
                "snapshot holds as acknowledged"
            )
    return Reconciliation(
        since=str(detail.get("why", "?")),
        plc_carried_out=carried,
        audit_acked=dict(acked),
        crash_pending=dict(pending),
        lane_gaps=gaps,
        plc_items=plc_items,
        audit_rows=len(rows),
        mailbox=tuple(notes),
    )
