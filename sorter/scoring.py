"""Scoring: one item (the line) or many rows (batch), through the same code.

:class:`Scorer` measures an item (features), asks the model for probabilities, and
applies the divert policy.  The line controller calls :meth:`Scorer.score_item` one
item at a time; batch scoring measures many items in worker processes and calls
:meth:`Scorer.decide_rows` on the stacked rows.  Both end in :func:`sorter.policy.decide`
with the same thresholds, so a log scored in batch gives the lanes the line gave.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .features.measure import measure_item
from .model import SorterModel
from .policy import decide
from .readings import Item

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = (
    "line_no", "item_id", "chemistry", "p_lead_acid", "p_li_ion", "p_other", "p_damaged", "lane", "reason", "problems",
)


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

    def as_row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in OUTPUT_COLUMNS}


def error_decision(line_no: int, item_id: str | None, error: str) -> Decision:
    """The row of an item that cannot be scored: lane ``manual`` and the reason."""
    nan = math.nan
    return Decision(line_no, item_id, None, nan, nan, nan, nan, "manual", f"cannot score: {error}", error)


class Scorer:
    """Features, model and policy for one item or many.

    The running ambient temperature is the caller's state (an
    :class:`~sorter.features.measure.AmbientTracker` fed in item order), passed in per
    item, so a scorer can run in any thread or process.

    Parameters
    ----------
    model : a loaded :class:`~sorter.model.SorterModel`.

    Examples
    --------
    >>> from sorter.model import load_model
    >>> from sorter.readings import Item, ItemRecord
    >>> from sorter.scoring import Scorer
    >>> d = Scorer(load_model()).score_item(Item(ItemRecord("x1", 0.0)))   # no readings at all
    >>> d.lane
    'manual'
    """

    def __init__(self, model: SorterModel):
        self.model = model

    def score_item(self, item: Item, ambient_c: float | None = None) -> Decision:
        """Score one item (the line's path). Never raises for bad readings."""
        try:
            raw = measure_item(item, ambient_c)
        except Exception as err:  # noqa: BLE001 - an item that breaks measurement goes to manual
            log.exception("item %s: measurement failed", item.item_id)
            return error_decision(item.record.line_no, item.item_id, f"measurement failed: {err}")
        return self.decide_rows(raw[None, :], [item.record.line_no], [item.item_id], ["; ".join(item.problems)])[0]

    def decide_rows(self, raw: np.ndarray, line_nos, item_ids, problems) -> list[Decision]:
        """Decisions for stacked raw rows (the array path)."""
        if raw.shape[0] == 0:
            return []
        try:
            proba, p_dmg = self.model.predict(raw)
        except Exception as err:  # noqa: BLE001 - a model failure must not lose the items
            log.exception("model failed on %d rows", raw.shape[0])
            return [error_decision(n, i, f"model failed: {err}") for n, i in zip(line_nos, item_ids)]
        t = self.model.thresholds
        out = []
        for k in range(raw.shape[0]):
            v = decide(proba[k], float(p_dmg[k]), raw[k], t, self.model.classes)
            lane, reason = v.lane, v.reason
            if lane == "lead_acid" and problems[k]:
                # Bad input (a field that failed validation, an image that would not load) is a
                # fault upstream: the item goes to a safe lane, whatever the rest says.
                lane, reason = "manual", f"bad input ({problems[k][:200]}); {reason}"
            out.append(Decision(int(line_nos[k]), item_ids[k], v.chemistry, float(proba[k, 0]), float(proba[k, 1]),
                                float(proba[k, 2]), float(p_dmg[k]), lane, reason, problems[k]))
        return out
