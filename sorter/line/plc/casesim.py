"""The PLC side of the case-station block (``docs/plc-interface.md``, "Case station block").

:class:`CaseStationProgram` is the reference program of the block, as a PLC would run
it once per scan beside :class:`~sorter.line.plc.sim.PlcModel`: it publishes
``CASE_READY`` / ``CASE_PLACED`` / ``CASE_BUFFERED``, reads the PC's ``CASE_FULL`` and
``CASE_OPEN_FOR``, and decides, for each item of the station's lane reaching the chute,
whether it drops into the case or into the quarantine buffer.

The operator is simulated too: :meth:`confirm` (an empty case is in place, confirmed on
the HMI) and :meth:`remove`; with ``swap_s`` set, the program asks for a swap when the
PC marks the case full and every item decided into it has arrived, and the simulated
operator confirms the new case ``swap_s`` seconds later (``sorter demo``).

Like the mailbox program it does no I/O and imports only :mod:`sorter.line.plc.protocol`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sorter.errors import ConfigError
from sorter.line.plc.protocol import CASE_BLOCK_VERSION, CasePcWords

logger = logging.getLogger(__name__)

__all__ = ["CaseStationProgram"]


class CaseStationProgram:
    """The case station's PLC program, one :meth:`scan` at a time.

    Parameters
    ----------
    swap_s : float or None
        ``None``: the operator is driven by the test (:meth:`confirm`, :meth:`remove`).
        A number: the simulated operator removes a full case as soon as the PLC allows
        it, and confirms a new one this many seconds later.
    lane : str
        The lane whose chute ends at the station (``hazard``); lane code 5 means this lane, into the case.
    ready_at_start : bool
        An empty case is in place and confirmed at power-on (``CASE_PLACED`` becomes 1).

    Attributes
    ----------
    cases : dict
        ``CASE_PLACED`` value -> item ids dropped into that case, in arrival order.
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
    """

    def __init__(self, *, swap_s: float | None = None, ready_at_start: bool = False, lane: str = "hazard") -> None:
        if swap_s is not None and not swap_s >= 0:
            raise ConfigError(f"swap_s={swap_s!r} must be >= 0 seconds or None")
        self.swap_s = swap_s
        self.lane = lane
        self.version = CASE_BLOCK_VERSION
        self.ready = False
        self.placed = 0  # retentive on a real PLC
        self.buffered = 0
        self.cases: dict[int, list[int]] = {}
        self.buffer: list[int] = []
        self.in_transit = 0  # accepted "into the case" decisions whose items have not reached the chute
        self.pc = CasePcWords()
        self.swaps = 0
        self._confirm_at: float | None = None
        if ready_at_start:
            self.confirm()

    # -- the operator (HMI) ------------------------------------------------------

    def confirm(self) -> None:
        """The operator confirms an empty case in place: ``CASE_READY`` = 1, ``CASE_PLACED`` + 1."""
        if self.ready:
            return
        self.placed = (self.placed + 1) & 0xFFFF
        self.ready = True
        self.cases[self.placed] = []
        logger.info("simulated PLC: case %d confirmed in place", self.placed)

    def remove(self) -> None:
        """The case is taken away (full, or by hand): ``CASE_READY`` = 0."""
        if self.ready:
            logger.info("simulated PLC: case %d removed", self.placed)
        self.ready = False

    # -- the program ------------------------------------------------------------

    def accept_into_case(self) -> None:
        """A decision "into the case" (lane code 5) was latched: one more item on its way to the case."""
        self.in_transit += 1

    def arrive(self, item_id: int, *, into_case: bool, now: float) -> None:
        """An item of the station's lane reaches the chute: the case if its decision said so and
        a case is in place, else the quarantine buffer."""
        if into_case:
            self.in_transit = max(0, self.in_transit - 1)
            if self.ready:
                self.cases[self.placed].append(item_id)
                return
            self.buffered = (self.buffered + 1) & 0xFFFF
            logger.warning("simulated PLC: item %d was decided into the case but no case is in place: buffer", item_id)
        self.buffer.append(item_id)

    def scan(self, pc_words: Sequence[int], now: float) -> list[int]:
        """Read the PC's words; run the swap sequence; return the PLC words."""
        self.pc = CasePcWords.decode(pc_words)
        # Swap only a case the PC has closed *for the case in place*, and only once every item
        # decided into it has dropped in.
        if self.ready and self.pc.full and self.pc.open_for == self.placed and self.in_transit == 0:
            if self.swap_s is not None:
                self.remove()
                self.swaps += 1
                self._confirm_at = now + self.swap_s
        if self._confirm_at is not None and now >= self._confirm_at and not self.ready:
            self._confirm_at = None
            self.confirm()
        return self.outputs()

    def outputs(self) -> list[int]:
        return [self.version, int(self.ready), self.placed, self.buffered]
