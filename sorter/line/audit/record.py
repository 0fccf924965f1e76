"""The audit record: one decided item, its delivery states, and the audit's errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike
from typing import Final, Literal

from sorter.errors import SorterError

SCHEMA_VERSION: Final = 1
"""Version of the table layout this module writes; stored in ``schema_version``."""

Delivery = Literal["pending", "acked", "late", "undelivered", "rejected"]
DELIVERY_STATES: Final[tuple[str, ...]] = (
    "pending",
    "acked",
    "late",
    "undelivered",
    "rejected",
)
"""Delivery states of a decision.

``pending``: recorded, not yet confirmed by the PLC.  ``acked``: the PLC
latched it before the deadline.  ``late``: the decision or its ack came after
the deadline (the item went to the safe lane).  ``undelivered``: never reached
the PLC.  ``rejected``: the PLC refused it (see ``plc_status``).
"""

StrPath = str | PathLike[str]

SYNC_MODES: Final[tuple[str, ...]] = ("interval", "full")
"""``"interval"``: commits do not wait for fsync, a flusher syncs on a cadence;
``"full"``: every commit waits for fsync (see the module notes)."""


class AuditError(SorterError, OSError):
    """The audit database could not be opened, read or written.

    Raised for a locked database, a full disk, an I/O error or a file that is
    not a sorter audit log.  A decision whose write raised this is *not*
    recorded.
    """


class AuditRecordError(SorterError, ValueError):
    """A value given to the audit log is invalid (refused before writing)."""


# --------------------------------------------------------------------------- record


_MAX_SQL_INT: Final = 2**63 - 1  # SQLite INTEGER is signed 64-bit


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decided item, as the controller records it.

    Times ending in ``t_`` are epoch seconds; durations carry their unit.

    Parameters
    ----------
    item_id : str
        Id the sensor bridge gave the item; unique in the log.
    source_line : int or None
        1-based line number of the item in the source log (``items.jsonl``),
        so a restarted controller can resume; ``None`` for a live source
        without line numbers.
    t_item : float
        Bridge time of the item (epoch s).
    t_available : float
        When the controller had the item's readings (epoch s).
    t_decided : float
        When the decision was made (epoch s).
    chemistry : str or None
        Predicted chemistry, ``None`` when no prediction was possible.
    p_lead_acid, p_li_ion, p_other : float or None
        Class probabilities in ``[0, 1]``, ``None`` without a prediction.
    lane : str
        Lane sent to the PLC.
    reason : str
        Why this lane (e.g. ``"confident"``, ``"deadline_missed"``).
    model_id : str
        Identity of the model that scored the item.
    latency_ms : float
        Decision latency, ``>= 0``.
    deadline_ms : float
        Budget the item had, ``>= 0``.
    delivery : str
        One of :data:`DELIVERY_STATES`.
    plc_seq : int or None
        Mailbox sequence number used for the divert, ``>= 0``.
    plc_status : str or None
        Status the PLC wrote back.
    t_acked : float or None
        When the PLC acknowledged (epoch s).

    Raises
    ------
    AuditRecordError
        If a field has the wrong type or an impossible value (NaN time,
        probability outside ``[0, 1]``, unknown delivery state ...).

    Examples
    --------
    >>> rec = AuditRecord(
    ...     item_id="b-0001", source_line=1, t_item=1.7e9, t_available=1.7e9 + 0.02,
    ...     t_decided=1.7e9 + 0.025, chemistry="li_ion", p_lead_acid=0.01,
    ...     p_li_ion=0.98, p_other=0.01, lane="li_ion", reason="confident",
    ...     model_id="hgb-2026-01", latency_ms=5.0, deadline_ms=90.0,
    ...     delivery="pending")
    >>> rec.lane
    'li_ion'
    """

    item_id: str
    source_line: int | None
    t_item: float
    t_available: float
    t_decided: float
    chemistry: str | None
    p_lead_acid: float | None
    p_li_ion: float | None
    p_other: float | None
    lane: str
    reason: str
    model_id: str
    latency_ms: float
    deadline_ms: float
    delivery: str
    plc_seq: int | None = None
    plc_status: str | None = None
    t_acked: float | None = None
    # -- issue 15 (added columns, see store._ADDED_COLUMNS): energy, novelty and the case station --
    energy_wh: float | None = None
    """Rated-energy estimate, Wh (items of the energy lanes; ``None`` otherwise)."""
    energy_wh_upper: float | None = None
    """Its upper bound, Wh (what cases are packed against)."""
    novelty: float | None = None
    """Distance from the training data (``sorter.novelty``)."""
    weight_g: float | None = None
    """The scale's reading, g (a case's mass limit is checked with it)."""
    case_id: str | None = None
    """The case the item was assigned to (``case_status = "assigned"``)."""
    case_seq: int | None = None
    """Its position in that case (1 = first)."""
    case_status: str | None = None
    """``assigned``, ``not_packable`` or ``no_case_ready`` for items of the case station's lane; else ``None``."""
    case_reason: str | None = None
    """Why not packed (``not_packable``, ``no_case_ready``)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        problems.extend(_case_problems(self))
        for name in ("item_id", "lane", "reason", "model_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name} must be a non-empty str, got {value!r}")
        for name in ("chemistry", "plc_status"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a str or None, got {value!r}")
        if self.source_line is not None and (
            not _is_int(self.source_line) or not 1 <= self.source_line <= _MAX_SQL_INT
        ):
            problems.append(f"source_line must be a 1-based int below 2**63 or None, got {self.source_line!r}")
        for name in ("t_item", "t_available", "t_decided"):
            value = getattr(self, name)
            if not _is_finite(value):
                problems.append(f"{name} must be a finite number (epoch s), got {value!r}")
        for name in ("latency_ms", "deadline_ms"):
            value = getattr(self, name)
            if not _is_finite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("p_lead_acid", "p_li_ion", "p_other"):
            value = getattr(self, name)
            if value is not None and (not _is_finite(value) or not 0.0 <= value <= 1.0):
                problems.append(f"{name} must be None or in [0, 1], got {value!r}")
        problems.extend(_delivery_problems(self.delivery, self.plc_seq, self.plc_status, self.t_acked))
        if problems:
            raise AuditRecordError(f"invalid AuditRecord for item {self.item_id!r}: " + "; ".join(problems))


CASE_STATUSES: Final = ("assigned", "not_packable", "no_case_ready")


def _case_problems(rec: AuditRecord) -> list[str]:
    """The issue-15 columns: numbers finite (or None), a known case status, a case and seq when assigned."""
    problems = []
    for name in ("energy_wh", "energy_wh_upper", "novelty", "weight_g"):
        value = getattr(rec, name)
        if value is not None and not _is_finite(value):
            problems.append(f"{name} must be a finite number or None, got {value!r}")
    if rec.case_status is not None and rec.case_status not in CASE_STATUSES:
        problems.append(f"case_status must be one of {CASE_STATUSES} or None, got {rec.case_status!r}")
    if rec.case_status == "assigned" and not (
        isinstance(rec.case_id, str) and rec.case_id and _is_int(rec.case_seq) and rec.case_seq >= 1
    ):  # type: ignore[operator]
        problems.append(f"an assigned item needs a case_id and a case_seq >= 1, got {rec.case_id!r}, {rec.case_seq!r}")
    for name in ("case_id", "case_reason"):
        value = getattr(rec, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a str or None, got {value!r}")
    return problems


def _delivery_problems(delivery: object, plc_seq: object, plc_status: object, t_acked: object) -> list[str]:
    problems = []
    if delivery not in DELIVERY_STATES:
        problems.append(f"delivery must be one of {DELIVERY_STATES}, got {delivery!r}")
    if plc_seq is not None and (
        not _is_int(plc_seq) or not 0 <= plc_seq <= _MAX_SQL_INT  # type: ignore[operator]
    ):
        problems.append(f"plc_seq must be an int in [0, 2**63) or None, got {plc_seq!r}")
    if plc_status is not None and not isinstance(plc_status, str):
        problems.append(f"plc_status must be a str or None, got {plc_status!r}")
    if t_acked is not None and not _is_finite(t_acked):
        problems.append(f"t_acked must be a finite number (epoch s) or None, got {t_acked!r}")
    return problems


def _check_delivery(item_id: object, delivery: object, plc_seq: object, plc_status: object, t_acked: object) -> None:
    problems = _delivery_problems(delivery, plc_seq, plc_status, t_acked)
    if not isinstance(item_id, str) or not item_id:
        problems.insert(0, f"item_id must be a non-empty str, got {item_id!r}")
    if problems:
        raise AuditRecordError(f"invalid delivery update for item {item_id!r}: " + "; ".join(problems))
