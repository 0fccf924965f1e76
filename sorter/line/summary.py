"""What a line run did: the running totals (:class:`RunStats`) and the report (:class:`RunSummary`).

The controller records every item once (:meth:`RunStats.record`) in constant memory;
at the end :meth:`RunStats.summary` turns the totals into the :class:`RunSummary` that
``sorter run`` and ``sorter demo`` print and the tests check (rows == items, counters agree).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from sorter import LANES
from sorter.lanes import Lane

__all__ = ["LatencyHistogram", "RunStats", "RunSummary"]


class LatencyHistogram:
    """Latencies at 0.1 ms resolution up to 10 s, in constant memory.

    Examples
    --------
    >>> h = LatencyHistogram()
    >>> for ms in (10.0, 11.0, 12.0, 50.0):
    ...     h.add(ms / 1000)
    >>> h.percentile_ms(50), h.count
    (11.0, 4)
    """

    RESOLUTION_MS: Final = 0.1
    MAX_MS: Final = 10_000.0

    def __init__(self) -> None:
        self._bins = np.zeros(int(self.MAX_MS / self.RESOLUTION_MS) + 2, dtype=np.int64)
        self.count = 0
        self.max_ms = 0.0

    def add(self, seconds: float) -> None:
        ms = max(0.0, seconds * 1000.0)
        self._bins[min(len(self._bins) - 1, int(round(ms / self.RESOLUTION_MS)))] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, ms)

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (nearest rank), ``None`` when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        k = int(np.searchsorted(np.cumsum(self._bins), rank))
        return round(k * self.RESOLUTION_MS, 1)


@dataclass
class RunStats:
    """Running totals of a run (constant memory)."""

    items: int = 0
    lanes: Counter[str] = field(default_factory=Counter)
    effective: Counter[str] = field(default_factory=Counter)
    delivery: Counter[str] = field(default_factory=Counter)
    overload: int = 0
    errors: int = 0
    duplicates: int = 0
    unrecorded: int = 0
    truth: Counter[tuple[str, str]] = field(default_factory=Counter)
    damaged: Counter[str] = field(default_factory=Counter)
    hazard_wh: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    peak_in_flight: int = 0

    def record(self, lane: str, delivery: str, latency_s: float | None, overload: bool, truth: Any = None) -> str:
        """Count one item: the lane decided, its delivery, and (``truth``: a
        :class:`~sorter.line.sources.Truth` or ``None``) what it really was.  Returns where it went:
        the decided lane when the PLC accepted it, else ``manual``."""
        self.items += 1
        self.lanes[lane] += 1
        went = lane if delivery == "acked" else Lane.MANUAL
        self.effective[went] += 1
        self.delivery[delivery] += 1
        if overload:
            self.overload += 1
        if latency_s is not None:
            self.latency.add(latency_s)
        if truth is not None and truth.label is not None:
            self.truth[(truth.label, went)] += 1
            if truth.label == "li_ion" and truth.damaged:
                self.damaged[went] += 1
            if went == Lane.HAZARD and truth.energy_wh:
                self.hazard_wh += truth.energy_wh
        return went

    def truth_figures(self) -> dict[str, Any]:
        """The :class:`RunSummary` fields that need the truth (empty when no item's truth was known)."""
        if not self.truth:
            return {}
        t = self.truth

        def tsum(label: str | None = None, lane: str | None = None) -> int:
            return sum(
                v for (lab, ln), v in t.items() if (label is None or lab == label) and (lane is None or ln == lane)
            )

        return dict(
            li_ion_total=tsum("li_ion"),
            li_ion_in_lead_acid=tsum("li_ion", Lane.LEAD_ACID),
            non_lead_in_lead_acid=tsum(lane=Lane.LEAD_ACID) - tsum("lead_acid", Lane.LEAD_ACID),
            lead_acid_total=tsum("lead_acid"),
            lead_acid_to_lead_acid=tsum("lead_acid", Lane.LEAD_ACID),
            lead_acid_lane_items=tsum(lane=Lane.LEAD_ACID),
            damaged_total=sum(self.damaged.values()),
            damaged_to_hazard=self.damaged.get(Lane.HAZARD, 0),
            hazard_energy_wh=round(self.hazard_wh, 1),
        )

    @property
    def labelled(self) -> int:
        """Items whose truth was known."""
        return sum(self.truth.values())


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for the operator and for tests.

    ``lanes`` counts the lane *decided* per item; ``effective_lanes`` where
    items went: the decided lane when the PLC accepted it, else ``manual``.
    Truth figures are ``None`` when the source did not know the truth.
    Latencies are item available -> lane acknowledged, over acknowledged items.
    """

    items: int
    lanes: Mapping[str, int]
    effective_lanes: Mapping[str, int]
    delivery: Mapping[str, int]
    overload: int
    errors: int
    duplicates: int
    unrecorded: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    deadline_ms: float
    audit_rows: int
    audit_total: int
    pending_marked: int
    resume_point: int
    duration_s: float
    model_id: str
    peak_in_flight: int
    li_ion_total: int | None = None
    li_ion_in_lead_acid: int | None = None
    non_lead_in_lead_acid: int | None = None
    lead_acid_total: int | None = None
    lead_acid_to_lead_acid: int | None = None
    lead_acid_lane_items: int | None = None
    damaged_total: int | None = None
    damaged_to_hazard: int | None = None
    hazard_energy_wh: float | None = None
    plc_counters: Mapping[str, int] | None = None
    scoring_batches: int = 0
    largest_batch: int = 0
    error: str | None = None
    reconciliation: tuple[str, ...] = ()
    """What the start-up reconciliation with the PLC found (empty: everything agreed or nothing to compare)."""
    reconciliation_gap_items: int = 0
    """Items in a lane gap or mailbox mismatch found at start-up (an alarm)."""
    audit_sync: str = "full"
    max_durability_lag_ms: float | None = None
    """Worst time a committed row waited to be flushed to disk (``audit.sync = "interval"``)."""
    startup_s: Mapping[str, float] = field(default_factory=dict)
    """Seconds from :meth:`Controller.run` to: ``link_up``, ``scorer_ready``, ``first_ack``."""

    @property
    def deadline_misses(self) -> int:
        """Items not confirmed by the PLC in time (overload included)."""
        return int(self.delivery.get("late", 0))

    @property
    def undelivered(self) -> int:
        return int(self.delivery.get("undelivered", 0))

    @property
    def rejected(self) -> int:
        return int(self.delivery.get("rejected", 0))

    @property
    def lead_acid_purity(self) -> float | None:
        """Share of the items that went to ``lead_acid`` that are lead-acid (truth known)."""
        if self.lead_acid_lane_items is None or self.lead_acid_to_lead_acid is None:
            return None
        return self.lead_acid_to_lead_acid / self.lead_acid_lane_items if self.lead_acid_lane_items else 1.0

    @property
    def audit_ok(self) -> bool:
        """Every item of the run has exactly one new audit row."""
        return self.audit_rows == self.items

    @property
    def plc_agrees(self) -> bool | None:
        """Whether the PLC's lane counters for this run equal where the controller says items went.

        Meaningful when the PLC tracks every item (it was told about them at
        the bridge); ``None`` without PLC counters.
        """
        if self.plc_counters is None:
            return None
        return all(int(self.plc_counters.get(lane, 0)) == int(self.effective_lanes.get(lane, 0)) for lane in LANES)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(
            deadline_misses=self.deadline_misses,
            undelivered=self.undelivered,
            rejected=self.rejected,
            lead_acid_purity=self.lead_acid_purity,
            audit_ok=self.audit_ok,
            plc_agrees=self.plc_agrees,
        )
        return out

    def format(self) -> str:
        """A human-readable report (several lines)."""
        rate = self.items / self.duration_s if self.duration_s > 0 else 0.0

        def counts(m: Mapping[str, int]) -> str:
            return ", ".join(f"{k} {m.get(k, 0)}" for k in LANES) if m else "-"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} ms"

        lines = [
            f"items          {self.items} in {self.duration_s:.1f} s ({rate:.1f}/s), model {self.model_id}",
            f"lanes decided  {counts(self.lanes)}",
            f"items went to  {counts(self.effective_lanes)}   (only PLC-accepted decisions leave manual)",
            "delivery       "
            + ", ".join(f"{k} {self.delivery.get(k, 0)}" for k in ("acked", "late", "undelivered", "rejected")),
            f"latency        p50 {ms(self.latency_p50_ms)}, p99 {ms(self.latency_p99_ms)}, "
            f"max {ms(self.latency_max_ms)} (available -> PLC ack; deadline {self.deadline_ms:.0f} ms)",
            f"deadline       {self.deadline_misses} missed (of which {self.overload} overload, not scored), "
            f"{self.undelivered} undelivered, {self.rejected} rejected",
        ]
        if self.li_ion_total is not None:
            purity = self.lead_acid_purity
            lines += [
                f"truth          Li-ion in lead_acid: {self.li_ion_in_lead_acid} of {self.li_ion_total} Li-ion; "
                f"non-lead in lead_acid: {self.non_lead_in_lead_acid}",
                f"               lead_acid lane purity: "
                f"{'-' if purity is None else f'{100 * purity:.2f} %'} ({self.lead_acid_to_lead_acid} of "
                f"{self.lead_acid_lane_items}); lead-acid recovered: {self.lead_acid_to_lead_acid} of "
                f"{self.lead_acid_total}",
                f"               hazard: {self.effective_lanes.get('hazard', 0)} items, "
                f"{self.hazard_energy_wh or 0.0:.0f} Wh known rated energy; damaged Li-ion to hazard: "
                f"{self.damaged_to_hazard} of {self.damaged_total}",
            ]
        lines.append(
            f"audit          {self.audit_rows} new rows for {self.items} items "
            f"({'OK' if self.audit_ok else 'MISMATCH'}); {self.audit_total} rows in the log"
            + (f"; {self.pending_marked} pending rows from a crash marked undelivered" if self.pending_marked else "")
            + (f"; resumed after line {self.resume_point}" if self.resume_point else "")
        )
        if self.audit_sync == "interval" and self.max_durability_lag_ms is not None:
            lines.append(
                f"durability     audit rows flushed to disk on a cadence; worst lag "
                f"{self.max_durability_lag_ms:.0f} ms (a power cut loses at most that window)"
            )
        if self.reconciliation:
            head = "RECONCILE      " if self.reconciliation_gap_items else "reconcile      "
            lines += [(head if k == 0 else "               ") + text for k, text in enumerate(self.reconciliation)]
        if self.plc_counters is not None:
            pc = self.plc_counters
            agree = self.plc_agrees
            lines.append(
                f"PLC counters   {counts(pc)}; defaulted {pc.get('defaulted', 0)}, late {pc.get('late', 0)}, "
                f"rejected {pc.get('rejected', 0)} (this run) -> "
                + ("agree with the controller" if agree else "DIFFER from the controller")
            )
        if self.error:
            lines.append(f"error          {self.error}")
        return "\n".join(lines)
