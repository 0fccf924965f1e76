"""Safe cases for the hazard lane: packing items into fire-safe cases up to the permit's
limit (:mod:`sorter.cases.packing`), planning cases for scored logs
(:mod:`sorter.cases.plan`), and the manifests that go with each case
(:mod:`sorter.cases.manifest`).  See ``docs/cases.md``.

Only the packing core is imported here; it needs nothing beyond the standard library.
"""

from .packing import (
    DEFAULT_LIMIT_WH,
    Case,
    CaseStateError,
    Offer,
    PackItem,
    StationConfig,
    StationState,
    offer,
)

__all__ = ["DEFAULT_LIMIT_WH", "Case", "CaseStateError", "Offer", "PackItem", "StationConfig", "StationState", "offer"]
