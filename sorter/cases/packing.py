"""The packing core: a case station's open case, and where each hazard item goes.

Why this module is long (about 630 lines): the rules of :func:`offer` and the state they act on
(configuration, item, case, station state, each with the JSON round trip that re-checks every
invariant a restart relies on) are one unit; apart, the state's checks would drift from the rules.

One code path for the line and for recorded logs.  The line controller keeps a
:class:`StationState` per case station and offers each item routed to the
station's lane as it is decided; ``sorter pack`` offers a scored log's items in
belt order.  :func:`offer` is pure: it returns the outcome and the *new* state
and changes nothing, so the caller can record both in one audit transaction and
then adopt the new state (a restart resumes from the last recorded state).

The rules of :func:`offer`, in order (the first that applies decides):

1. The item's upper bound ``energy_wh_upper`` is missing, not finite or
   negative: **not packable** (nothing proves the case stays within the limit).
2. The bound alone exceeds the case limit: **not packable** (a large module).
3. A mass limit is set and the item's weight is missing, or alone exceeds it:
   **not packable**.
4. No case is open: with ``auto_open`` a new case opens and takes the item;
   otherwise **no case ready**.
5. The item fits an open case (its summed bound plus the item's stays within
   the limit, and its gross mass within the mass limit): **assigned** to it; with
   several open cases, to the fullest it fits (best fit).
6. Otherwise, while the station has a free case position (``positions``, default
   1), a new case opens there and takes the item (``auto_open``).  Else the
   fullest open case **closes** (reason ``full``); with ``auto_open`` a new case
   opens in its position and takes the item, otherwise the item is **no case
   ready**.

With one position (the default) rules 5 and 6 are: into the open case if it
fits, else the case closes and the next one takes the item.  Several positions
(``sorter pack --positions N``, or ``[cases] positions = N`` on the line: a
station with N cases open side by side, each item dropped into the one the
offer names) keep a case open while later, smaller items can still fill it.  On
the line (no ``auto_open``) a position without a confirmed case is free: an item
that fits no open case then finds no case ready and no case closes.

An item that is not packable or finds no case ready goes to the station's safe
place (``docs/cases.md``), never the breaker; the outcome's ``reason`` says why.

Sums are kept in whole milliwatt-hours and milligrams, each item's bound and
weight rounded *up*, and the limits rounded *down*: the comparison is exact
integer arithmetic and can only err on the safe side (by under 1 mWh per item).
So no case's summed ``energy_wh_upper`` ever exceeds the limit, whatever the
floating-point values.

Examples
--------
>>> cfg = StationConfig(line="L1", limit_wh=2100.0, auto_open=True)
>>> st = StationState.new(cfg)
>>> r = st.offer(PackItem("A1", energy_wh_upper=1500.0, energy_wh=1100.0), now=1.7e9)
>>> r.kind, r.case_id
('assigned', 'L1-20231114-0001')
>>> r = r.state.offer(PackItem("A2", energy_wh_upper=700.0), now=1.7e9)
>>> r.kind, r.case_id, r.closed.case_id, r.closed.upper_wh
('assigned', 'L1-20231114-0002', 'L1-20231114-0001', 1500.0)
>>> r.state.offer(PackItem("M1", energy_wh_upper=2500.0), now=1.7e9).kind
'not_packable'
>>> StationState.from_json(r.state.to_json()) == r.state
True
"""

from __future__ import annotations

import datetime as dt
import json
import math
import string
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Literal, Sequence

from ..errors import CaseStateError

__all__ = [
    "DEFAULT_ID_SCHEME",
    "DEFAULT_LIMIT_WH",
    "STATE_FORMAT",
    "Case",
    "CaseStateError",
    "Offer",
    "OfferKind",
    "PackItem",
    "StationConfig",
    "StationState",
    "offer",
]

DEFAULT_LIMIT_WH = 2100.0
"""The DoT special permit's limit: 2.1 kWh of rated Li-ion energy per fire-safe case."""
DEFAULT_ID_SCHEME = "{line}-{date:%Y%m%d}-{n:04d}"
STATE_FORMAT = "sorter-case-station/1"

OfferKind = Literal["assigned", "not_packable", "no_case_ready"]
_ID_FIELDS = frozenset({"line", "date", "n"})


def _milli_up(x: float) -> int:
    """``ceil(x * 1000)`` computed exactly (``x`` finite, >= 0)."""
    return math.ceil(Fraction(x) * 1000)


def _milli_down(x: float) -> int:
    return math.floor(Fraction(x) * 1000)


def _finite_nonneg(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


@dataclass(frozen=True, slots=True)
class StationConfig:
    """A case station: which lane feeds it, its limits and how cases are named.

    Parameters
    ----------
    lane : the lane whose items the station packs (``hazard``: the DDR cases).
    limit_wh : most summed ``energy_wh_upper`` per case, Wh (2100: the permit's 2.1 kWh).
    mass_limit_g : most gross item mass per case, g; ``None``: no mass limit.
    case_id_scheme : ``str.format`` pattern with the fields ``line``, ``date`` (the
        case's opening time, a UTC ``datetime``) and ``n`` (the case number, which
        must appear so that ids are unique).
    line : the line's name, for case ids and manifests.
    auto_open : a new case is ready as soon as one closes (planning recorded logs).
        ``False`` on the line: a new case takes items only after :meth:`StationState.open`,
        when the PLC confirms it is in place.
    positions : case positions side by side at the station (1..16; the line's PLC block has up to 8),
        each holding at most one open case.
    """

    lane: str = "hazard"
    limit_wh: float = DEFAULT_LIMIT_WH
    mass_limit_g: float | None = None
    case_id_scheme: str = DEFAULT_ID_SCHEME
    line: str = "line-1"
    auto_open: bool = False
    positions: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.positions, bool) or not isinstance(self.positions, int) or not 1 <= self.positions <= 16:
            raise CaseStateError(f"positions must be a whole number of case positions, 1 to 16, got {self.positions!r}")
        if not isinstance(self.lane, str) or not self.lane:
            raise CaseStateError(f'case station lane must be a lane name, got {self.lane!r}; e.g. lane = "hazard"')
        if not _finite_nonneg(self.limit_wh) or self.limit_wh <= 0 or isinstance(self.limit_wh, bool):
            raise CaseStateError(
                f"limit_wh must be a positive number of Wh, got {self.limit_wh!r}; the permit's is 2100"
            )
        if self.mass_limit_g is not None and (
            isinstance(self.mass_limit_g, bool) or not _finite_nonneg(self.mass_limit_g) or self.mass_limit_g <= 0
        ):
            raise CaseStateError(f"mass_limit_g must be a positive number of g or None, got {self.mass_limit_g!r}")
        if not isinstance(self.line, str) or not self.line:
            raise CaseStateError(f"line must be a non-empty name, got {self.line!r}")
        if not isinstance(self.case_id_scheme, str):
            raise CaseStateError(f"case_id_scheme must be a string, got {self.case_id_scheme!r}")
        try:
            names = {
                f.split(".")[0].split("[")[0]
                for _, f, _, _ in string.Formatter().parse(self.case_id_scheme)
                if f is not None
            }
        except ValueError as err:
            raise CaseStateError(
                f"case_id_scheme {self.case_id_scheme!r} is not a valid format: {err}; e.g. {DEFAULT_ID_SCHEME!r}"
            ) from err
        if not names <= _ID_FIELDS or "n" not in names:
            raise CaseStateError(
                f"case_id_scheme {self.case_id_scheme!r} may use only {{line}}, {{date}} and {{n}}, and must use {{n}} "
                f"(ids must be unique); e.g. {DEFAULT_ID_SCHEME!r}"
            )
        try:
            probe = self.case_id(1, 0.0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise CaseStateError(
                f"case_id_scheme {self.case_id_scheme!r} cannot be formatted: {err}; e.g. {DEFAULT_ID_SCHEME!r}"
            ) from err
        if not probe.strip():
            raise CaseStateError(f"case_id_scheme {self.case_id_scheme!r} gives an empty id")

    @property
    def limit_mwh(self) -> int:
        return _milli_down(self.limit_wh)

    @property
    def mass_limit_mg(self) -> int | None:
        return None if self.mass_limit_g is None else _milli_down(self.mass_limit_g)

    def case_id(self, n: int, opened_t: float) -> str:
        """The id of case number ``n`` opened at ``opened_t`` (epoch seconds, UTC)."""
        date = dt.datetime.fromtimestamp(opened_t, tz=dt.timezone.utc)
        return self.case_id_scheme.format(line=self.line, date=date, n=n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane,
            "limit_wh": self.limit_wh,
            "mass_limit_g": self.mass_limit_g,
            "case_id_scheme": self.case_id_scheme,
            "line": self.line,
            "auto_open": self.auto_open,
            # only when used: a one-position state reads the same as before positions existed
            **({"positions": self.positions} if self.positions != 1 else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "station config") -> StationConfig:
        if not isinstance(d, dict):
            raise CaseStateError(f"{where}: expected an object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CaseStateError(
                f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(cls.__dataclass_fields__)}"
            )
        try:
            return cls(**d)
        except TypeError as err:
            raise CaseStateError(f"{where}: {err}") from err


@dataclass(frozen=True, slots=True)
class PackItem:
    """What the packing needs of one item.

    ``energy_wh_upper`` is the item's rated-energy upper bound (Wh); ``energy_wh``
    the estimate (Wh; NaN when unknown); ``weight_g`` the scale's reading (NaN when
    missing); ``t`` the time the item passed the bridge (epoch s; NaN when unknown).
    """

    item_id: str
    energy_wh_upper: float
    energy_wh: float = math.nan
    weight_g: float = math.nan
    t: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "energy_wh_upper": _num_out(self.energy_wh_upper),
            "energy_wh": _num_out(self.energy_wh),
            "weight_g": _num_out(self.weight_g),
            "t": _num_out(self.t),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> PackItem:
        if not isinstance(d, dict) or set(d) != {"item_id", "energy_wh_upper", "energy_wh", "weight_g", "t"}:
            raise CaseStateError(
                f"{where}: expected an item object with item_id, energy_wh_upper, energy_wh, "
                f"weight_g and t, got {d!r:.200}"
            )
        if not isinstance(d["item_id"], str):
            raise CaseStateError(f"{where}: item_id must be a string")
        return cls(
            d["item_id"], *(_num_in(d[k], f"{where}.{k}") for k in ("energy_wh_upper", "energy_wh", "weight_g", "t"))
        )


def _num_out(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _num_in(x: Any, where: str) -> float:
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CaseStateError(f"{where}: expected a number or null, got {x!r:.60}")
    return float(x)


@dataclass(frozen=True, slots=True)
class Case:
    """One case: its items in belt order and their sums.

    ``upper_mwh`` and ``mass_mg`` are the exact integer sums the limits are
    checked against (each item rounded up); ``mass_unknown`` counts items without
    a weight (their mass is not in ``mass_mg``).
    """

    case_id: str
    n: int
    opened_t: float
    items: tuple[PackItem, ...] = ()
    upper_mwh: int = 0
    mass_mg: int = 0
    mass_unknown: int = 0
    closed_t: float | None = None
    close_reason: str = ""

    @property
    def upper_wh(self) -> float:
        """Summed upper bound, Wh (as checked against the limit)."""
        return self.upper_mwh / 1000

    @property
    def energy_wh(self) -> float:
        """Summed energy estimate, Wh (NaN if any item has none)."""
        return math.fsum(i.energy_wh for i in self.items)

    @property
    def mass_g(self) -> float:
        """Gross mass of the items with a weight, g (see ``mass_unknown``)."""
        return self.mass_mg / 1000

    @property
    def is_open(self) -> bool:
        return self.closed_t is None

    @classmethod
    def rebuild(cls, case_id: str, n: int, opened_t: float, items: Sequence[PackItem]) -> Case:
        """An open case from its header and items, e.g. as the line's audit log recorded them
        one by one (the sums are recomputed, so they cannot disagree with the items)."""
        case = cls(case_id, n, float(opened_t))
        for it in items:
            case = case.with_item(it)
        return case

    def with_item(self, item: PackItem) -> Case:
        w = item.weight_g
        known = _finite_nonneg(w)
        return replace(
            self,
            items=self.items + (item,),
            upper_mwh=self.upper_mwh + _milli_up(item.energy_wh_upper),
            mass_mg=self.mass_mg + (_milli_up(w) if known else 0),
            mass_unknown=self.mass_unknown + (not known),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "n": self.n,
            "opened_t": self.opened_t,
            "items": [i.to_dict() for i in self.items],
            "upper_mwh": self.upper_mwh,
            "mass_mg": self.mass_mg,
            "mass_unknown": self.mass_unknown,
            "closed_t": self.closed_t,
            "close_reason": self.close_reason,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Case:
        keys = set(cls.__dataclass_fields__)
        if not isinstance(d, dict) or set(d) != keys:
            raise CaseStateError(f"{where}: expected a case object with keys {sorted(keys)}")
        items = d["items"]
        if not isinstance(items, list):
            raise CaseStateError(f"{where}.items: expected a list")
        for k in ("n", "upper_mwh", "mass_mg", "mass_unknown"):
            if isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < 0:
                raise CaseStateError(f"{where}.{k}: expected a non-negative integer, got {d[k]!r:.40}")
        if not isinstance(d["case_id"], str) or not isinstance(d["close_reason"], str):
            raise CaseStateError(f"{where}: case_id and close_reason must be strings")
        opened = _num_in(d["opened_t"], f"{where}.opened_t")
        closed = None if d["closed_t"] is None else _num_in(d["closed_t"], f"{where}.closed_t")
        case = cls(
            d["case_id"],
            d["n"],
            opened,
            tuple(PackItem.from_dict(x, f"{where}.items[{k}]") for k, x in enumerate(items)),
            d["upper_mwh"],
            d["mass_mg"],
            d["mass_unknown"],
            closed,
            d["close_reason"],
        )
        # The sums must be those of the items: a hand-edited state cannot under-count.
        again = cls.rebuild(case.case_id, case.n, case.opened_t, case.items)
        if (again.upper_mwh, again.mass_mg, again.mass_unknown) != (case.upper_mwh, case.mass_mg, case.mass_unknown):
            raise CaseStateError(
                f"{where}: the sums do not match the items (upper_mwh {case.upper_mwh} vs "
                f"{again.upper_mwh}); the state file is damaged, restore it from the audit log"
            )
        return case


@dataclass(frozen=True, slots=True)
class Offer:
    """The outcome of offering one item to a station.

    ``kind``: ``assigned`` (into case ``case_id``), ``not_packable`` or
    ``no_case_ready`` (the item goes to the safe place; ``reason`` says why).
    ``closed``: the case this offer closed, if any.  ``state``: the station's
    state after the offer, to adopt once the outcome is recorded.
    """

    kind: OfferKind
    item: PackItem
    case_id: str | None
    reason: str
    state: StationState
    closed: Case | None = None

    @property
    def seq(self) -> int | None:
        """The item's position in its case (1 = first), if assigned."""
        if self.kind != "assigned":
            return None
        for case in self.state.open_cases:
            if case.case_id == self.case_id:
                return len(case.items)
        return None


@dataclass(frozen=True, slots=True)
class StationState:
    """A case station's state: its configuration, the open case, the next case number.

    ``other_cases``: with several case positions, the open cases besides ``open_case``
    (in opening order; empty with one position)."""

    config: StationConfig
    open_case: Case | None = None
    next_n: int = 1
    other_cases: tuple[Case, ...] = ()

    @property
    def open_cases(self) -> tuple[Case, ...]:
        """Every open case (``open_case`` first)."""
        return ((self.open_case,) if self.open_case is not None else ()) + self.other_cases

    def _with_open(self, cases: Sequence[Case]) -> StationState:
        cases = tuple(cases)
        return replace(self, open_case=cases[0] if cases else None, other_cases=cases[1:])

    @classmethod
    def new(cls, config: StationConfig, first_n: int = 1) -> StationState:
        if isinstance(first_n, bool) or not isinstance(first_n, int) or first_n < 1:
            raise CaseStateError(f"the first case number must be a positive integer, got {first_n!r}")
        return cls(config, None, first_n)

    # -- transitions (pure: each returns a new state) --------------------------------

    def offer(self, item: PackItem, now: float | None = None) -> Offer:
        """See :func:`offer`."""
        return offer(self, item, now)

    def open(self, now: float) -> tuple[StationState, Case]:
        """A new, empty case is in place and ready (the PLC confirmed it).

        With one position: if a case is open already, it stays open and is returned unchanged.
        With several, the new case opens beside the open ones (after them in opening order); if
        every position holds an open case already, nothing changes and the last opened is returned."""
        if len(self.open_cases) >= self.config.positions:
            return self, self.open_cases[-1]
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise CaseStateError(f"open(now={now!r}): now must be the time in epoch seconds")
        case = Case(self.config.case_id(self.next_n, now), self.next_n, float(now))
        return replace(self._with_open([*self.open_cases, case]), next_n=self.next_n + 1), case

    def close(
        self, now: float, reason: str = "closed by operator", case_id: str | None = None
    ) -> tuple[StationState, Case | None]:
        """Close the open case ``case_id`` (default: ``open_case``, the first opened), if open; with
        one position no case is ready afterwards (with several, the next open case, if any,
        becomes ``open_case``)."""
        cases = list(self.open_cases)
        k = next((j for j, c in enumerate(cases) if case_id is None or c.case_id == case_id), None)
        if k is None:
            return self, None
        closed = replace(cases.pop(k), closed_t=float(now), close_reason=reason)
        return self._with_open(cases), closed

    def close_all(self, now: float, reason: str) -> tuple[StationState, list[Case]]:
        """Close every open case, in opening order."""
        st, out = self, []
        while st.open_case is not None:
            st, closed = st.close(now, reason)
            assert closed is not None
            out.append(closed)
        return st, out

    def reconfigure(self, config: StationConfig) -> StationState:
        """The same open case under a new configuration (e.g. after a restart with an
        edited file).  Refused if the open case would exceed the new limits."""
        if len(self.open_cases) > config.positions:
            raise CaseStateError(
                f"{len(self.open_cases)} cases are open, more than the new configuration's {config.positions} "
                "position(s); close cases under the old configuration first"
            )
        for c in self.open_cases:
            if c.upper_mwh > config.limit_mwh:
                raise CaseStateError(
                    f"open case {c.case_id} holds {c.upper_wh:.3f} Wh of bounds, over the new limit {config.limit_wh} Wh;"
                    " close the case under the old configuration first"
                )
            mlim = config.mass_limit_mg
            if mlim is not None and (c.mass_mg > mlim or c.mass_unknown):
                raise CaseStateError(
                    f"open case {c.case_id} cannot be proved within the new mass limit {config.mass_limit_g} g; "
                    "close the case under the old configuration first"
                )
        return replace(self, config=config)

    # -- persistence --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "open_case": None if self.open_case is None else self.open_case.to_dict(),
            "next_n": self.next_n,
        }
        if self.other_cases:  # only with several positions: a one-position state reads as before
            d["other_cases"] = [c.to_dict() for c in self.other_cases]
        return d

    def to_json(self) -> str:
        """The state as one line of JSON (no NaN: missing numbers are ``null``)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, d: Any, where: str = "case station state") -> StationState:
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise CaseStateError(
                f"{where}: not a {STATE_FORMAT} state (format {d.get('format') if isinstance(d, dict) else None!r})"
            )
        if (
            not {"format", "config", "open_case", "next_n"}
            <= set(d)
            <= {
                "format",
                "config",
                "open_case",
                "next_n",
                "other_cases",
            }
        ):
            raise CaseStateError(
                f"{where}: expected keys format, config, open_case, next_n (and other_cases); got {sorted(d)}"
            )
        cfg = StationConfig.from_dict(d["config"], f"{where}.config")
        n = d["next_n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise CaseStateError(f"{where}.next_n: expected a positive integer, got {n!r:.40}")
        case = None if d["open_case"] is None else Case.from_dict(d["open_case"], f"{where}.open_case")
        others = d.get("other_cases", [])
        if not isinstance(others, list) or (others and case is None):
            raise CaseStateError(f"{where}.other_cases: expected a list beside an open case")
        more = tuple(Case.from_dict(x, f"{where}.other_cases[{k}]") for k, x in enumerate(others))
        for c in ((case,) if case is not None else ()) + more:
            if not c.is_open:
                raise CaseStateError(f"{where}: case {c.case_id} is marked closed")
            if c.n >= n:
                raise CaseStateError(f"{where}: open case number {c.n} is not below next_n {n}")
        if len({c.n for c in more} | ({case.n} if case is not None else set())) != len(more) + (case is not None):
            raise CaseStateError(f"{where}: two open cases have the same number")
        st = cls(cfg, case, n, more)
        if case is not None:
            try:
                st.reconfigure(cfg)  # the open case within the limits
            except CaseStateError as err:
                raise CaseStateError(f"{where}: {err}") from err
        return st

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "case station state") -> StationState:
        """The state written by :meth:`to_json`, checked (sums against items, limits)."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CaseStateError(f"{where}: not valid JSON ({err}); restore the state from the audit log") from err
        return cls.from_dict(d, where)


def _refuse(state: StationState, item: PackItem, kind: OfferKind, reason: str, closed: Case | None = None) -> Offer:
    return Offer(kind, item, None, reason, state, closed)


def offer(state: StationState, item: PackItem, now: float | None = None) -> Offer:
    """Offer one item to a station; return the outcome and the new state (pure).

    Parameters
    ----------
    state : the station's current state.
    item : the item, in belt order.
    now : the time (epoch s) used to open and close cases; default the item's ``t``.

    Returns
    -------
    Offer
        See the module docstring for the rules.
    """
    cfg = state.config
    upper = item.energy_wh_upper
    if not _finite_nonneg(upper):
        return _refuse(
            state,
            item,
            "not_packable",
            f"no valid energy bound (energy_wh_upper={upper!r}): the case limit cannot be proved",
        )
    up_mwh = _milli_up(upper)
    if up_mwh > cfg.limit_mwh:
        return _refuse(
            state, item, "not_packable", f"energy bound {upper:.1f} Wh alone exceeds the case limit {cfg.limit_wh:g} Wh"
        )
    mlim = cfg.mass_limit_mg
    if mlim is not None:
        if not _finite_nonneg(item.weight_g):
            return _refuse(state, item, "not_packable", "no weight reading: the case mass limit cannot be proved")
        if _milli_up(item.weight_g) > mlim:
            return _refuse(
                state,
                item,
                "not_packable",
                f"weight {item.weight_g:.0f} g alone exceeds the case mass limit {cfg.mass_limit_g:g} g",
            )
    t = item.t if now is None else now
    if not isinstance(t, (int, float)) or not math.isfinite(t):
        raise CaseStateError(f"item {item.item_id!r}: no time to open or close a case with; pass now=")

    def fits(case: Case) -> bool:
        if case.upper_mwh + up_mwh > cfg.limit_mwh:
            return False
        return mlim is None or case.mass_mg + _milli_up(item.weight_g) <= mlim

    closed = None
    st = state
    cases = list(st.open_cases)
    fitting = [k for k, c in enumerate(cases) if fits(c)]
    if fitting:  # rule 5: the fullest case the item fits (the only one, with one position)
        k = max(fitting, key=lambda j: (cases[j].upper_mwh, -j))
        cases[k] = cases[k].with_item(item)
        return Offer("assigned", item, cases[k].case_id, "", st._with_open(cases), None)
    if len(cases) >= cfg.positions:  # rule 6: no free position: the fullest case closes
        k = max(range(len(cases)), key=lambda j: (cases[j].upper_mwh, -j))
        closed = replace(cases.pop(k), closed_t=float(t), close_reason="full")
        st = st._with_open(cases)
    if not cfg.auto_open:
        why = f"case {closed.case_id} full ({closed.upper_wh:.1f} Wh of {cfg.limit_wh:g}); " if closed else ""
        return _refuse(st, item, "no_case_ready", why + f"no case ready at the {cfg.lane} station", closed)
    new = Case(cfg.case_id(st.next_n, t), st.next_n, float(t))
    assert fits(new)  # an empty case fits any packable item (rules 2 and 3)
    new = new.with_item(item)
    st = replace(st._with_open([*cases, new]), next_n=st.next_n + 1)
    return Offer("assigned", item, new.case_id, "", st, closed)
