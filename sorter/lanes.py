"""The divert lanes: one vocabulary for the policy, the scoring, the reports and the line.

:class:`Lane` is a :class:`~enum.StrEnum`: each member *is* its name as a string
(``Lane.MANUAL == "manual"``), so lanes read from logs, CSV files or configuration
compare, hash and print as before.  Only ``lead_acid`` leads to the breaker; every other
lane is safe for a Li-ion item.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Lane"]


class Lane(StrEnum):
    """A divert lane, by the name logs, outputs and the PLC contract use."""

    LEAD_ACID = "lead_acid"
    LI_ION = "li_ion"
    HAZARD = "hazard"
    MANUAL = "manual"
