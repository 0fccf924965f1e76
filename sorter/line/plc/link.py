"""The PC side's interface to the PLC: :class:`PlcLink`, what it returns and what it raises.

The line controller programs against :class:`PlcLink` only (python-can's ``BusABC``
shape).  Implementations: :class:`~sorter.line.plc.modbus.ModbusPlcLink` (the real
line, Modbus TCP) and :class:`~sorter.line.plc.memory.MemoryPlc` (an in-process
PLC for tests), both on the shared handshake of :mod:`sorter.line.plc.mailbox`.
Every link is asyncio-native and never blocks the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from sorter.errors import PlcError, PlcTimeoutError
from sorter.line.plc.protocol import CasePcWords, CasePlcWords, MailboxEntry

logger = logging.getLogger(__name__)

__all__ = ["Ack", "AckTimeoutError", "CaseBlockMissingError", "LinkState", "PlcLink", "PlcProtocolError"]

LinkState = Literal["connected", "connecting", "down", "faulted"]


@dataclass(frozen=True)
class Ack:
    """The PLC's acknowledgement of one decision.

    Attributes
    ----------
    seq : int
        Sequence number of the mailbox write (slot is ``seq % N``).
    item_id : int
        Item the decision is for.
    lane : str
        Lane that was requested.
    status : str
        :class:`AckStatus` name in lower case: ``"accepted"``, ``"late"``,
        ``"rejected_bad_lane"``, ...  Only ``"accepted"`` means the PLC will
        divert the item to ``lane``; otherwise it goes to the safe lane.
    rtt_s : float
        Seconds from the first mailbox write to seeing the acknowledgement.
    """

    seq: int
    item_id: int
    lane: str
    status: str
    rtt_s: float

    @property
    def accepted(self) -> bool:
        """Whether the PLC will divert the item to :attr:`lane`."""
        return self.status == "accepted"


class PlcLink(abc.ABC):
    """Async link from the line controller to the PLC.

    Implementations: :class:`ModbusPlcLink` (the real line),
    :class:`MemoryPlc` (in-process, for tests).  A link owns its reconnection:
    after :meth:`connect` it keeps (re)connecting in the background until
    :meth:`close`.

    Examples
    --------
    >>> import asyncio
    >>> from sorter.line.plc import MemoryPlc
    >>> async def demo():
    ...     async with MemoryPlc(scan_ms=1) as link:
    ...         return (await link.send_decision(42, "li_ion", timeout_s=5.0)).status
    >>> asyncio.run(demo())
    'accepted'
    """

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect to the PLC; on failure keep retrying in the background.

        Raises
        ------
        PlcError
            If the first attempt fails (the link keeps retrying; watch
            :attr:`state`) or the PLC does not speak this protocol.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect and stop reconnecting; pending decisions fail with PlcError."""

    @abc.abstractmethod
    async def send_decision(
        self, item_id: int, lane: str, *, timeout_s: float, into_case: bool = False, case_position: int = 1
    ) -> Ack:
        """Post a decision and wait for the PLC to acknowledge it.

        Parameters
        ----------
        item_id : int
            Item id from the sensor bridge (uint32).
        lane : str
            One of :data:`sorter.LANES`.
        into_case : bool
            The item goes *into the open case* of the case station (lane code 5 of
            the case-station block); ``False`` for the station's lane means its
            quarantine buffer.  Only with the case block enabled.
        case_position : int
            With ``into_case``: the case position (1-based) whose case the item goes into,
            lane code ``4 + case_position`` (a station with several positions; 1: code 5).
        timeout_s : float
            How long to keep trying (usually the time left before the item
            reaches the diverter).  The same sequence number is rewritten on
            transient errors and while no acknowledgement has arrived.

        Returns
        -------
        Ack
            Check :attr:`Ack.accepted`: a rejected or late decision is
            acknowledged too, and that item goes to the safe lane.

        Raises
        ------
        PlcError
            At once if the link is down or the PLC heartbeat is stale, or when
            the link drops while waiting.  The decision was not delivered.
        PlcTimeoutError
            If no acknowledgement arrived within ``timeout_s``.  The PLC may
            still latch it if the item has not reached the diverter; its
            counters are the truth.
        ValueError
            For an unknown lane or an item id that is not a uint32.
        """

    @abc.abstractmethod
    async def heartbeat(self) -> None:
        """One heartbeat tick: bump the PC counter, read the PLC's counter and status.

        Call it every ``heartbeat_ms`` (100-500 ms), or run :meth:`run_heartbeat`.

        Raises
        ------
        PlcError
            If the link is down or the exchange fails.
        """

    @property
    @abc.abstractmethod
    def state(self) -> LinkState:
        """``"connected"``, ``"connecting"``, ``"down"``, or ``"faulted"`` (PLC heartbeat stale)."""

    async def read_mailbox(self) -> list[MailboxEntry]:
        """Read every mailbox slot and its standing acknowledgement.

        Raises
        ------
        PlcError
            If the link is down or the read fails (links without a mailbox).
        """
        raise PlcError(f"{type(self).__name__} has no mailbox to read")

    async def read_case_station(self) -> tuple[CasePlcWords, ...]:
        """Read the PLC's words of the case-station block (``CASE_READY``, ``CASE_PLACED``, ...),
        one :class:`CasePlcWords` per case position (one with a one-position block).

        Raises
        ------
        PlcError
            If the link is down, the read fails, or the link has no case block.
        """
        raise PlcError(f"{type(self).__name__} has no case-station block")

    async def write_case_station(self, words: Sequence[CasePcWords]) -> None:
        """Write the PC's words of the case-station block (per position, in position order: the
        case's number, fill, ``CASE_FULL``), with one request.

        Raises
        ------
        PlcError
            If the link is down, the write fails, or the link has no case block.
        """
        raise PlcError(f"{type(self).__name__} has no case-station block")

    @abc.abstractmethod
    async def read_counters(self) -> dict[str, int]:
        """Read the PLC's counters: items per lane, ``defaulted``, ``late``, ``rejected``.

        Raises
        ------
        PlcError
            If the link is down or the read fails.
        """

    async def run_heartbeat(self, interval_s: float = 0.2) -> None:
        """Call :meth:`heartbeat` every ``interval_s`` until cancelled.

        Errors while the link is down are logged once per outage, not per tick.
        """
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s} must be > 0 (100-500 ms is usual)")
        failing = False
        while True:
            try:
                await self.heartbeat()
            except PlcError as err:
                if not failing:
                    logger.warning("PLC heartbeat failing: %s", err)
                failing = True
            else:
                if failing:
                    logger.info("PLC heartbeat restored")
                failing = False
            await asyncio.sleep(interval_s)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AckTimeoutError(PlcTimeoutError):
    """A decision was not acknowledged within its ``timeout_s``.

    ``seq`` is the mailbox sequence number it was written with (``None`` if no
    write went through): the PLC may still latch it, and answer ``late`` or
    ``accepted`` under that seq; the audit log records it so the PLC's own log
    can be matched.
    """

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class PlcProtocolError(PlcError):
    """The PLC broke the register contract: a header register changed mid-run, an
    acknowledgement carries an undefined status, or acknowledges a seq the PC never wrote.

    The PC stops sending, records the raw values, and re-runs the connect handshake.
    ``seq`` and ``raw_status`` are those of the decision concerned, when there is one: the
    PLC's answer for it cannot be trusted, so where the item went is the PLC's counters' business.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        detail: Mapping[str, Any],
        seq: int | None = None,
        raw_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = dict(detail)
        self.seq = seq
        self.raw_status = raw_status


class CaseBlockMissingError(PlcError):
    """Packing is enabled (``[cases] enabled``) but the PLC has no case-station block where
    configured.  Not retried: the message says what to change (the PLC program, ``cases.base``
    or ``cases.enabled``)."""
