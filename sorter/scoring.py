"""Scoring: one item (the line) or many rows (batch), through the same code.

:class:`Scorer` measures an item (features), asks the model for probabilities, and
applies the divert policy.  The line controller calls :meth:`Scorer.score_items` with the
items that queued up for a scoring worker (one or many; :meth:`Scorer.score_item` is the
one-item form); batch scoring measures many items in worker processes and calls
:meth:`Scorer.decide_rows` on the stacked rows.  Both end in :func:`sorter.policy.decide`
with the same thresholds, so a log scored in batch gives the lanes the line gave.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ErrorKind
from .features.measure import RAW_COLUMNS, measure_item
from .lanes import Lane
from .logformat.expiry import EXPIRED_PROBLEM
from .model import SorterModel
from .novelty import overall
from .policy import decide
from .readings import Item, ItemRecord, LogMeta

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = (
    "line_no",
    "item_id",
    "chemistry",
    "p_lead_acid",
    "p_li_ion",
    "p_other",
    "p_damaged",
    "novelty",
    "lane",
    "reason",
    "problems",
    "weight_g",
    "energy_wh",
    "energy_wh_upper",
)
ENERGY_LANES = (Lane.LI_ION, Lane.HAZARD)  # the lanes of likely Li-ion items, whose rated energy is estimated


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one item (one output row)."""

    line_no: int
    item_id: str | None
    chemistry: str | None
    p_lead_acid: float
    p_li_ion: float
    p_other: float
    p_damaged: float
    lane: str
    reason: str
    problems: str = ""
    novelty: float = math.nan  # distance from the training data (sorter.novelty; NaN: not scored)
    weight_g: float = math.nan  # the scale's reading
    energy_wh: float = math.nan  # rated energy estimate, for items in ENERGY_LANES (sorter.energy)
    energy_wh_upper: float = math.nan  # its upper bound (the hazard lane's cases are packed by it)
    # why it could not be scored (an ErrorKind code; "" when it was scored): not an output
    # column, and not part of equality (it is the reason's code, not more of the outcome)
    error_kind: str = field(default="", compare=False)

    def as_row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in OUTPUT_COLUMNS}


_WARNED: set[tuple[str, str, bool]] = set()
_WEIGHT = RAW_COLUMNS.index("weight_g")


def error_decision(line_no: int, item_id: str | None, error: str, kind: ErrorKind = ErrorKind.OTHER) -> Decision:
    """The row of an item that cannot be scored: lane ``manual``, the reason, and ``kind``, the
    reason's code (:class:`~sorter.errors.ErrorKind`) that summaries count."""
    nan = math.nan
    return Decision(
        line_no, item_id, None, nan, nan, nan, nan, Lane.MANUAL, f"cannot score: {error}", error, error_kind=kind
    )


def warm_up_batch() -> list[tuple[Item, float | None]]:
    """One empty item of no log: runs every step of scoring once (imports, the model's first
    call) without a line to check, so a warm-up never warns about a line mismatch."""
    return [(Item(ItemRecord("warm-up", 0.0), meta=None), None)]  # type: ignore[arg-type]


class Scorer:
    """Features, model and policy for one item or many.

    The running ambient temperature is the caller's state (an
    :class:`~sorter.features.ambient.AmbientTracker` fed in item order), passed in per
    item, so a scorer can run in any thread or process.

    Parameters
    ----------
    model : a loaded :class:`~sorter.model.SorterModel`.
    allow_line_mismatch : score logs whose declared line settings differ from the model's
        (:mod:`sorter.domain`) as if they matched, with a warning, instead of closing their
        lead_acid lane.  For a line whose model is known to transfer; never the default.

    Examples
    --------
    >>> from sorter.model import load_model
    >>> from sorter.readings import Item, ItemRecord
    >>> from sorter.scoring import Scorer
    >>> d = Scorer(load_model()).score_item(Item(ItemRecord("x1", 0.0)))   # no readings at all
    >>> d.lane
    'manual'
    """

    def __init__(self, model: SorterModel, *, allow_line_mismatch: bool = False):
        self.model = model
        self.allow_line_mismatch = allow_line_mismatch
        self._line_checks: dict[LogMeta, str | None] = {}

    def line_closed(self, meta: LogMeta | None) -> str | None:
        """Why the lead_acid lane is closed for items of a log with this meta (its declared
        line is not the model's), or None.  Warns once per distinct meta."""
        if meta is None or self.model.domain is None:
            return None
        try:
            return self._line_checks[meta]
        except KeyError:
            pass
        diffs = self.model.domain.differences(meta)
        closed = None
        if diffs:
            what = "; ".join(diffs)
            key = (self.model.model_id, what, self.allow_line_mismatch)
            warn = logger.warning if key not in _WARNED else logger.debug  # once per process, however many scorers
            _WARNED.add(key)
            if self.allow_line_mismatch:
                warn(
                    "LINE MISMATCH ALLOWED: the log's line differs from model %s's (%s); lead_acid stays OPEN "
                    "because --allow-line-mismatch was given. Li-ion may reach the breaker if the model does "
                    "not transfer: calibrate it ('sorter calibrate') or retrain it for this line",
                    self.model.model_id,
                    what,
                )
            else:
                closed = f"line mismatch: {what}"
                warn(
                    "the log's line differs from model %s's (%s): lead_acid is closed for its items (they go "
                    "to manual). Fix: calibrate the model for this line ('sorter calibrate LOG --model DIR "
                    "--out NEW_DIR' with about 500 labelled items of it) or retrain it ('sorter train'); "
                    "--allow-line-mismatch reopens lead_acid at your own risk",
                    self.model.model_id,
                    what,
                )
        self._line_checks[meta] = closed
        return closed

    def score_item(self, item: Item, ambient_c: float | None = None) -> Decision:
        """Score one item (the line's path for one item). Never raises for bad readings."""
        return self.score_items([(item, ambient_c)])[0]

    def score_items(self, batch: Sequence[tuple[Item, float | None]]) -> list[Decision]:
        """Score several items in one model call: measure each, stack the rows, :meth:`decide_rows`.

        ``batch`` holds ``(item, ambient_c)`` pairs, the ambient estimate for each item from the
        caller's :class:`~sorter.features.ambient.AmbientTracker`.  An item whose measuring raises
        gets an error decision (lane ``manual``, :attr:`ErrorKind.MEASUREMENT`); the others are
        decided together.  The line controller's scoring pool calls this with whatever items queued
        up (one or many); the batch engines measure in worker processes and call
        :meth:`decide_rows` on the same rows.  Never raises for bad readings.
        """
        out: list[Decision | None] = [None] * len(batch)
        rows: list[np.ndarray] = []
        index: list[int] = []
        for k, (item, ambient_c) in enumerate(batch):
            try:
                rows.append(measure_item(item, ambient_c))
            except Exception as err:  # noqa: BLE001 - an item that breaks measurement goes to manual
                logger.exception("item %s: measurement failed", item.item_id)
                out[k] = error_decision(
                    item.record.line_no, item.item_id, f"measurement failed: {err}", ErrorKind.MEASUREMENT
                )
            else:
                index.append(k)
        if rows:
            items = [batch[k][0] for k in index]
            decided = self.decide_rows(
                np.vstack(rows),
                [it.record.line_no for it in items],
                [it.item_id for it in items],
                ["; ".join(it.problems) for it in items],
                [it.meta for it in items],
            )
            for k, decision in zip(index, decided, strict=True):
                out[k] = decision
        return [d for d in out if d is not None]

    def decide_rows(
        self, raw: np.ndarray, line_nos, item_ids, problems, meta: LogMeta | Sequence[LogMeta | None] | None = None
    ) -> list[Decision]:
        """Decisions for stacked raw rows (the array path).

        ``meta`` is the rows' log meta (one for all, or one per row): it decides whether the
        model is valid for their line (:meth:`line_closed`)."""
        if raw.shape[0] == 0:
            return []
        try:
            proba, p_dmg = self.model.predict(raw)
            novelty = self.model.novelty_scores(raw)
        except Exception as err:  # noqa: BLE001 - a model failure must not lose the items
            logger.exception("model failed on %d rows", raw.shape[0])
            return [error_decision(n, i, f"model failed: {err}", ErrorKind.MODEL) for n, i in zip(line_nos, item_ids)]
        nearest = overall(novelty)
        lead_k = self.model.classes.index("lead_acid")
        if meta is None or isinstance(meta, LogMeta):
            closed = [self.line_closed(meta)] * raw.shape[0]
        else:
            closed = [self.line_closed(m) for m in meta]
        t = self.model.thresholds
        verdicts = [
            decide(proba[k], float(p_dmg[k]), raw[k], t, self.model.classes, float(novelty[k, lead_k]), closed[k])
            for k in range(raw.shape[0])
        ]
        energy = np.full(raw.shape[0], np.nan)
        upper = np.full(raw.shape[0], np.nan)
        li_rows = [k for k, v in enumerate(verdicts) if v.lane in ENERGY_LANES]
        if li_rows:
            try:
                e, u = self.model.energy_wh(
                    raw[li_rows],
                    novelty[li_rows, self.model.classes.index("li_ion")],
                    np.array([verdicts[k].lane == Lane.HAZARD for k in li_rows]),
                )
                energy[li_rows], upper[li_rows] = e, u
            except Exception:  # noqa: BLE001 - no estimate is a NaN bound: such an item is not packed
                logger.exception("energy estimate failed on %d rows", len(li_rows))
        weight = raw[:, _WEIGHT]
        out = []
        for k in range(raw.shape[0]):
            v = verdicts[k]
            lane, reason = v.lane, v.reason
            if problems[k] and EXPIRED_PROBLEM in problems[k]:
                # An image deleted by the retention policy: the item is judged on less than the line
                # saw, like an item with a sensor missing, and never reaches lead_acid on it.
                if lane == Lane.LEAD_ACID:
                    lane = Lane.MANUAL
                reason = f"{EXPIRED_PROBLEM}; {reason}"
            elif lane == Lane.LEAD_ACID and problems[k]:
                # Bad input (a field that failed validation, an image that would not load) is a
                # fault upstream: the item goes to a safe lane, whatever the rest says.
                lane, reason = Lane.MANUAL, f"bad input ({problems[k][:200]}); {reason}"
            out.append(
                Decision(
                    int(line_nos[k]),
                    item_ids[k],
                    v.chemistry,
                    float(proba[k, 0]),
                    float(proba[k, 1]),
                    float(proba[k, 2]),
                    float(p_dmg[k]),
                    lane,
                    reason,
                    problems[k],
                    float(nearest[k]),
                    float(weight[k]),
                    float(energy[k]),
                    float(upper[k]),
                )
            )
        return out
