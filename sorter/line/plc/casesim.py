"""The PLC side of the case-station block (``docs/plc-interface.md``, "Case station block").

:class:`CaseStationProgram` is the reference program of the block, as a PLC would run
it once per scan beside :class:`~sorter.line.plc.sim.PlcModel`: it publishes, per case
position, ``CASE_READY`` / ``CASE_PLACED`` / ``CASE_BUFFERED``, reads the PC's ``CASE_FULL``
and ``CASE_OPEN_FOR``, and decides, for each item of the station's lane reaching the chute,
whether it drops into the case at the position its decision names or into the quarantine
buffer.  One position is block version 1; several (``positions`` = N, up to 8) block
version 2, with lane code ``4 + p`` meaning "into the case at position p".

The operator is simulated too: :meth:`confirm` (an empty case is in place, confirmed on
the HMI) and :meth:`remove`, per position; with ``swap_s`` set, the program asks for a
swap when the PC marks a position's case full and every item decided into it has
arrived, and the simulated operator confirms the new case there ``swap_s`` seconds later
(``sorter demo``).

Like the mailbox program it does no I/O and imports only :mod:`sorter.line.plc.protocol`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sorter.errors import ConfigError
from sorter.line.plc.protocol import CASE_POSITIONS_MAX, CaseBlockMap, CasePcWords, CasePlcWords

logger = logging.getLogger(__name__)

__all__ = ["CasePosition", "CaseStationProgram"]


class CasePosition:
    """One case position of the station: what the PLC keeps for it.

    ``ready``, ``placed`` and ``buffered`` are the position's PLC words; ``cases`` maps each
    ``CASE_PLACED`` value to the item ids dropped into that case, in arrival order;
    ``in_transit`` counts accepted decisions into this position whose items have not reached
    the chute yet.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.ready = False
        self.placed = 0  # retentive on a real PLC
        self.buffered = 0
        self.cases: dict[int, list[int]] = {}
        self.in_transit = 0
        self.pc = CasePcWords()
        self.swaps = 0
        self.confirm_at: float | None = None


class CaseStationProgram:
    """The case station's PLC program, one :meth:`scan` at a time.

    Parameters
    ----------
    swap_s : float or None
        ``None``: the operator is driven by the test (:meth:`confirm`, :meth:`remove`).
        A number: the simulated operator removes a full case as soon as the PLC allows
        it, and confirms a new one this many seconds later.
    ready_at_start : bool
        An empty case is in place and confirmed at power-on, at every position (each
        ``CASE_PLACED`` becomes 1).
    lane : str
        The lane whose chute ends at the station (``hazard``); lane code 5 (and with several
        positions 6..) means this lane, into the case.
    positions : int
        Case positions at the station, 1..8 (1: block version 1, as before; more: version 2).

    Attributes
    ----------
    cases : dict
        Position 1's ``CASE_PLACED`` value -> item ids dropped into that case, in arrival order
        (every position: :attr:`position`).
    buffer : list
        Item ids dropped into the quarantine buffer, in arrival order.
    version : int
        The block version published (fault injection: 0 looks like a PLC without the block).

    Examples
    --------
    >>> prog = CaseStationProgram(ready_at_start=True)
    >>> prog.outputs()
    [1, 1, 1, 0]
    >>> prog.arrive(7, into_case=True, now=0.0); prog.arrive(8, into_case=False, now=0.0)
    >>> prog.cases[1], prog.buffer
    ([7], [8])
    >>> three = CaseStationProgram(ready_at_start=True, positions=3)
    >>> three.outputs()
    [2, 3, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    >>> three.arrive(9, into_case=2, now=0.0); three.position(2).cases
    {1: [9]}
    """

    def __init__(
        self, *, swap_s: float | None = None, ready_at_start: bool = False, lane: str = "hazard", positions: int = 1
    ) -> None:
        if swap_s is not None and not swap_s >= 0:
            raise ConfigError(f"swap_s={swap_s!r} must be >= 0 seconds or None")
        if isinstance(positions, bool) or not isinstance(positions, int) or not 1 <= positions <= CASE_POSITIONS_MAX:
            raise ConfigError(f"positions={positions!r} must be 1..{CASE_POSITIONS_MAX} case positions")
        self.swap_s = swap_s
        self.lane = lane
        self.block = CaseBlockMap(positions=positions)
        self.version = self.block.version
        self.positions = [CasePosition(p) for p in range(1, positions + 1)]
        self.buffer: list[int] = []
        if ready_at_start:
            for p in range(1, positions + 1):
                self.confirm(p)

    def position(self, p: int) -> CasePosition:
        """Position ``p`` (1-based)."""
        if not 1 <= p <= len(self.positions):
            raise ValueError(f"case position {p} is outside 1..{len(self.positions)}")
        return self.positions[p - 1]

    # Position 1's words, under the names of the one-position block.
    @property
    def ready(self) -> bool:
        return self.positions[0].ready

    @property
    def placed(self) -> int:
        return self.positions[0].placed

    @property
    def buffered(self) -> int:
        """Items decided into a case that found none in place, at every position."""
        return sum(q.buffered for q in self.positions)

    @property
    def cases(self) -> dict[int, list[int]]:
        return self.positions[0].cases

    @property
    def in_transit(self) -> int:
        """Accepted decisions into a case whose items have not reached the chute, every position."""
        return sum(q.in_transit for q in self.positions)

    @property
    def swaps(self) -> int:
        return sum(q.swaps for q in self.positions)

    @property
    def pc(self) -> CasePcWords:
        return self.positions[0].pc

    # -- the operator (HMI) ------------------------------------------------------

    def confirm(self, p: int = 1) -> None:
        """The operator confirms an empty case in place at position ``p``: ``CASE_READY`` = 1,
        ``CASE_PLACED`` + 1."""
        q = self.position(p)
        if q.ready:
            return
        q.placed = (q.placed + 1) & 0xFFFF
        q.ready = True
        q.cases[q.placed] = []
        logger.info("simulated PLC: case %d confirmed in place at position %d", q.placed, p)

    def remove(self, p: int = 1) -> None:
        """The case at position ``p`` is taken away (full, or by hand): ``CASE_READY`` = 0."""
        q = self.position(p)
        if q.ready:
            logger.info("simulated PLC: case %d removed from position %d", q.placed, p)
        q.ready = False

    # -- the program ------------------------------------------------------------

    def accept_into_case(self, p: int = 1) -> None:
        """A decision "into the case at position ``p``" (lane code ``4 + p``) was latched: one more
        item on its way to that case."""
        self.position(p).in_transit += 1

    def lost_in_transit(self, p: int = 1) -> None:
        """An item decided into position ``p`` was defaulted (never reaches the chute as decided)."""
        q = self.position(p)
        q.in_transit = max(0, q.in_transit - 1)

    def power_on(self) -> None:
        """Program start: the pending decisions (and so the counts in transit) are lost."""
        for q in self.positions:
            q.in_transit = 0

    def arrive(self, item_id: int, *, into_case: bool | int, now: float) -> None:
        """An item of the station's lane reaches the chute: into the case at the position its
        decision named (``into_case``: ``True`` or 1 for position 1, ``p`` for position ``p``)
        if a case is in place there, else the quarantine buffer (``into_case`` False)."""
        if into_case:
            p = 1 if into_case is True else int(into_case)
            q = self.position(p)
            q.in_transit = max(0, q.in_transit - 1)
            if q.ready:
                q.cases[q.placed].append(item_id)
                return
            q.buffered = (q.buffered + 1) & 0xFFFF
            logger.warning(
                "simulated PLC: item %d was decided into the case at position %d but no case is in place: buffer",
                item_id,
                p,
            )
        self.buffer.append(item_id)

    def scan(self, pc_words: Sequence[int], now: float) -> list[int]:
        """Read the PC's words; run the swap sequence of every position; return the PLC words."""
        for q, pc in zip(self.positions, self.block.decode_pc(pc_words)):
            q.pc = pc
            # Swap only a case the PC has closed *for the case in place*, and only once every item
            # decided into it has dropped in.
            if q.ready and pc.full and pc.open_for == q.placed and q.in_transit == 0 and self.swap_s is not None:
                self.remove(q.number)
                q.swaps += 1
                q.confirm_at = now + self.swap_s
            if q.confirm_at is not None and now >= q.confirm_at and not q.ready:
                q.confirm_at = None
                self.confirm(q.number)
        return self.outputs()

    def outputs(self) -> list[int]:
        """The PLC's registers of the block (``CaseBlockMap.plc_words`` of them)."""
        words = [CasePlcWords(self.version, q.ready, q.placed, q.buffered) for q in self.positions]
        out = self.block.encode_plc(words)
        if len(self.positions) > 1:
            out[0] = self.version  # fault injection may change it
        return out
