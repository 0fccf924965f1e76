"""The PC side of the PLC link: tell the PLC which lane each item goes to.

The PLC owns timing: it tracks every item from the sensor bridge to the
diverter and fires the diverter itself.  The PC only posts a *decision* per
item id into a mailbox of holding registers and waits for the PLC to
acknowledge it.  An item without a valid, acknowledged decision by the time it
reaches the diverter goes to the safe lane (``manual``), never to
``lead_acid``.  The register map and the handshake are specified in
``docs/plc-interface.md``; this module is the reference implementation of the
PC side of that document.

Contents
--------
- :class:`Lane`, :data:`LANE_CODES`, :class:`AckStatus`, :class:`PlcFault`:
  the codes on the wire.
- :class:`RegisterMap`: where everything lives (base address and ring size).
- :func:`encode_slot`, :func:`decode_slot`, :func:`crc16_modbus`: the mailbox
  slot format, as pure functions.
- :class:`Ack`: what :meth:`PlcLink.send_decision` returns.
- :class:`PlcLink`: the interface the line controller programs against.
- :class:`ModbusPlcLink`: the link over Modbus TCP (pymodbus).
- :class:`MemoryPlc`: an in-process PLC behind the same register contract, for
  tests.

Every link is asyncio-native and never blocks the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from sorter.errors import ConfigError, PlcError, PlcTimeoutError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymodbus.client import AsyncModbusTcpClient

    from sorter.line.plcsim import PlcModel

logger = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
"""Version of the register contract in ``docs/plc-interface.md``."""

SAFE_LANE: Final = "manual"
"""Where the PLC sends any item without a valid acknowledged decision."""

LinkState = Literal["connected", "connecting", "down", "faulted"]


class Lane(enum.IntEnum):
    """Lane codes written into a mailbox slot (0 means no lane)."""

    NONE = 0
    LEAD_ACID = 1
    LI_ION = 2
    HAZARD = 3
    MANUAL = 4


LANE_CODES: Final[Mapping[str, int]] = MappingProxyType(
    {"lead_acid": Lane.LEAD_ACID, "li_ion": Lane.LI_ION, "hazard": Lane.HAZARD, "manual": Lane.MANUAL}
)
"""Lane name (as in :data:`sorter.LANES`) to wire code."""

LANE_NAMES: Final[Mapping[int, str]] = MappingProxyType({code: name for name, code in LANE_CODES.items()})
"""Wire code to lane name."""


class AckStatus(enum.IntEnum):
    """Status word the PLC writes next to ``ack_seq`` for a mailbox slot."""

    NONE = 0
    """Not acknowledged (slot never latched, or left over from a PLC restart)."""
    ACCEPTED = 1
    """Decision stored; the PLC will divert the item to the lane given."""
    REJECTED_BAD_LANE = 2
    """Lane code outside 1..4; the item goes to the safe lane."""
    REJECTED_BAD_CHECK = 3
    """Check word does not match; the item goes to the safe lane."""
    LATE = 4
    """The item had already reached the diverter; it went to the safe lane."""
    REJECTED_FAULT = 5
    """The PLC is faulted (PC heartbeat lost or diverter fault); safe lane."""
    REJECTED_FULL = 6
    """The PLC's table of pending decisions is full; safe lane."""
    REJECTED_DUPLICATE = 7
    """The item already has a decision; the first one stands."""


class PlcFault(enum.IntFlag):
    """Bits of the PLC fault word."""

    PC_HEARTBEAT_LOST = 0x0001
    """Live: the PC heartbeat counter has not changed for the PLC's timeout."""
    DECISION_OVERRUN = 0x0002
    """Latched: a decision was refused because the pending table was full."""
    CHECK_ERROR = 0x0004
    """Latched: a mailbox slot failed its check word."""
    DIVERTER_FAULT = 0x0008
    """Live: the diverter cannot act; every item goes to the safe lane."""


RESERVED_FAULT_BITS: Final = 0xFFF0
"""Bits 4-15 of the fault word: reserved (0).  The PC treats any of them as a fault it does not know."""

BLOCKING_FAULTS: Final = int(PlcFault.PC_HEARTBEAT_LOST | PlcFault.DIVERTER_FAULT) | RESERVED_FAULT_BITS
"""Fault-word bits during which the PC sends no decision (the items go to the safe lane by the PLC's default).

``pc_heartbeat_lost`` and ``diverter_fault``: the PLC would refuse the decision (``rejected_fault``)
or could not act on it.  A reserved bit: a fault this PC does not know, so it does not assume the
PLC can act.  The latched bits (``decision_overrun``, ``check_error``) raise an alarm and do not
stop sending: each decision still gets its own answer."""

COUNTER_NAMES: Final = ("lead_acid", "li_ion", "hazard", "manual", "defaulted", "late", "rejected")
"""PLC counters, in register order (each a uint32, high word first)."""

SLOT_WORDS: Final = 5
"""Registers per mailbox slot: ``seq, item_id_hi, item_id_lo, lane, check``."""

STATUS_WORDS: Final = 6 + 2 * len(COUNTER_NAMES)
"""Registers in the PLC status block (header words + counters)."""

ACK_WORDS: Final = 2
"""Registers per acknowledgement slot: ``ack_seq, status``."""

SEQ_MAX: Final = 0xFFFF
ITEM_ID_MAX: Final = 0xFFFF_FFFF
_MAX_READ: Final = 125  # Modbus FC3 limit per request


# --------------------------------------------------------------------------
# Register map and slot codec (pure)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterMap:
    """Addresses of the PLC interface, as Modbus PDU addresses (0-based).

    The whole interface is one contiguous block of holding registers starting
    at ``base``; the Modicon reference of PDU address *a* is ``400001 + a``.

    Parameters
    ----------
    base : int
        PDU address of the first register (protocol version).  Default 100,
        i.e. references 400101 and up.
    slots : int
        Number of mailbox slots ``N`` (and acknowledgement slots), 1..32.

    Examples
    --------
    >>> m = RegisterMap()
    >>> m.ack_address(0), m.pc_heartbeat_address, m.slot_address(0), m.size
    (120, 136, 137, 77)
    """

    base: int = 100
    slots: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 32:
            raise ConfigError(f"RegisterMap slots={self.slots} is out of range; pass 1..32 (default 8)")
        if not 0 <= self.base <= 0xFFFF - self.size + 1:
            raise ConfigError(
                f"RegisterMap base={self.base} does not leave room for {self.size} registers; "
                f"pass 0..{0xFFFF - self.size + 1}"
            )

    @property
    def status_address(self) -> int:
        """PDU address of the PLC status block (``STATUS_WORDS`` registers)."""
        return self.base

    @property
    def plc_words(self) -> int:
        """Number of PLC-written registers (status block plus acknowledgements)."""
        return STATUS_WORDS + ACK_WORDS * self.slots

    def ack_address(self, slot: int) -> int:
        """PDU address of ``[ack_seq, status]`` for mailbox slot ``slot``."""
        self._check_slot(slot)
        return self.base + STATUS_WORDS + ACK_WORDS * slot

    @property
    def pc_heartbeat_address(self) -> int:
        """PDU address of the PC heartbeat counter."""
        return self.base + self.plc_words

    def slot_address(self, slot: int) -> int:
        """PDU address of mailbox slot ``slot`` (``SLOT_WORDS`` registers)."""
        self._check_slot(slot)
        return self.pc_heartbeat_address + 1 + SLOT_WORDS * slot

    @property
    def size(self) -> int:
        """Total number of registers of the interface."""
        return self.plc_words + 1 + SLOT_WORDS * self.slots

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside the ring of {self.slots} slots; pass 0..{self.slots - 1}")


def crc16_modbus(words: Sequence[int]) -> int:
    """CRC-16/MODBUS of 16-bit words sent big-endian (high byte first).

    Polynomial 0xA001 (reflected 0x8005), initial value 0xFFFF, no final XOR:
    the same CRC as Modbus RTU frames, so PLC libraries usually provide it.

    Parameters
    ----------
    words : sequence of int
        Register values, each 0..65535.

    Returns
    -------
    int
        The CRC as a register value.

    Examples
    --------
    >>> hex(crc16_modbus([0x3132, 0x3334, 0x3536, 0x3738]))  # the bytes b"12345678"
    '0x37dd'
    """
    crc = 0xFFFF
    for word in words:
        for byte in (word >> 8 & 0xFF, word & 0xFF):
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _lane_code(lane: str | int) -> int:
    """Wire code of a lane given by name (``"li_ion"``) or :class:`Lane`."""
    if isinstance(lane, str):
        try:
            return int(LANE_CODES[lane])
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}; pass one of {sorted(LANE_CODES)}") from None
    if isinstance(lane, int) and lane in LANE_NAMES:
        return int(lane)
    raise ValueError(f"lane code {lane!r} is not a lane; pass a name from {sorted(LANE_CODES)} or Lane.*")


def encode_slot(seq: int, item_id: int, lane: str | int) -> list[int]:
    """Registers of one mailbox slot: ``[seq, item_id_hi, item_id_lo, lane, check]``.

    Parameters
    ----------
    seq : int
        Sequence number 1..65535 (0 marks an empty slot and is refused).
    item_id : int
        Item id assigned at the sensor bridge, uint32.
    lane : str or Lane
        Lane name from :data:`LANE_CODES` or a :class:`Lane` other than ``NONE``.

    Returns
    -------
    list of int
        Five register values, to be written in one FC16 request.

    Raises
    ------
    ValueError
        If an argument is out of range.

    Examples
    --------
    >>> encode_slot(1, 0x0001_0002, "li_ion")[:4]
    [1, 1, 2, 2]
    """
    if not isinstance(seq, int) or not 1 <= seq <= SEQ_MAX:
        raise ValueError(f"seq {seq!r} is outside 1..{SEQ_MAX} (0 marks an empty slot)")
    if not isinstance(item_id, int) or not 0 <= item_id <= ITEM_ID_MAX:
        raise ValueError(f"item_id {item_id!r} is not a uint32; item ids must be 0..{ITEM_ID_MAX}")
    code = _lane_code(lane)
    words = [seq, item_id >> 16, item_id & 0xFFFF, code]
    return [*words, crc16_modbus(words)]


@dataclass(frozen=True)
class MailboxSlot:
    """A decoded mailbox slot, as the PLC sees it.

    ``lane_code`` is returned as written, even when it is not a valid lane:
    the PLC must acknowledge such a slot with ``REJECTED_BAD_LANE``.
    """

    seq: int
    item_id: int
    lane_code: int
    check: int
    check_ok: bool

    @property
    def lane(self) -> str | None:
        """Lane name, or ``None`` when ``lane_code`` is not a lane."""
        return LANE_NAMES.get(self.lane_code)


def decode_slot(words: Sequence[int]) -> MailboxSlot:
    """Decode the five registers of a mailbox slot.

    Parameters
    ----------
    words : sequence of int
        ``[seq, item_id_hi, item_id_lo, lane, check]``.

    Returns
    -------
    MailboxSlot
        With ``check_ok`` telling whether the check word matches.

    Raises
    ------
    ValueError
        If ``words`` does not hold exactly five register values.

    Examples
    --------
    >>> decode_slot(encode_slot(7, 123456, "hazard"))
    MailboxSlot(seq=7, item_id=123456, lane_code=3, check=..., check_ok=True)
    """
    if len(words) != SLOT_WORDS or any(not 0 <= w <= 0xFFFF for w in words):
        raise ValueError(f"a mailbox slot is {SLOT_WORDS} register values 0..65535, got {list(words)!r}")
    seq, hi, lo, lane_code, check = (int(w) for w in words)
    return MailboxSlot(seq, hi << 16 | lo, lane_code, check, crc16_modbus([seq, hi, lo, lane_code]) == check)


def status_name(code: int) -> str:
    """Name of an acknowledgement status code, e.g. ``"accepted"``."""
    try:
        return AckStatus(code).name.lower()
    except ValueError:
        return f"unknown_{code}"


def fault_names(word: int) -> frozenset[str]:
    """Names of the bits set in a PLC fault word (unknown bits as ``bit<n>``)."""
    names = {f.name.lower() for f in PlcFault if f.name and word & f}
    known = sum(f.value for f in PlcFault)
    names.update(f"bit{n}" for n in range(16) if word & ~known & (1 << n))
    return frozenset(names)


def decode_counters(status_words: Sequence[int]) -> dict[str, int]:
    """PLC counters from the status block registers (uint32, high word first)."""
    return {
        name: status_words[6 + 2 * i] << 16 | status_words[7 + 2 * i] for i, name in enumerate(COUNTER_NAMES)
    }


@dataclass(frozen=True)
class MailboxEntry:
    """One mailbox slot as it stands, with its acknowledgement (read at a restart to reconcile)."""

    slot: int
    ack_seq: int
    status: int
    slot_seq: int
    item_id: int
    lane_code: int


# --------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------


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
    async def send_decision(self, item_id: int, lane: str, *, timeout_s: float) -> Ack:
        """Post a decision and wait for the PLC to acknowledge it.

        Parameters
        ----------
        item_id : int
            Item id from the sensor bridge (uint32).
        lane : str
            One of :data:`sorter.LANES`.
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


# --------------------------------------------------------------------------
# Shared implementation of the mailbox handshake
# --------------------------------------------------------------------------


class _LinkLost(PlcError):
    """The transport is gone (connection refused, reset or closed)."""


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

    def __init__(self, message: str, *, kind: str, detail: Mapping[str, Any], seq: int | None = None,
                 raw_status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = dict(detail)
        self.seq = seq
        self.raw_status = raw_status


@dataclass
class _Pending:
    seq: int
    item_id: int
    lane: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0
    acked_at: float = 0.0
    error: PlcError | None = None


class _MailboxLink(PlcLink):
    """The PC side of the mailbox contract over an abstract register transport.

    Subclasses provide ``_open``, ``_drop_transport``, ``_read`` and
    ``_write``; everything protocol-related (sequence numbers, slot guarding,
    acknowledgements, heartbeats, reconnection) lives here so that the fake and
    the real link behave alike.
    """

    def __init__(
        self,
        *,
        register_map: RegisterMap | None,
        heartbeat_timeout_s: float,
        request_timeout_s: float,
        reconnect_min_s: float,
        reconnect_max_s: float,
        poll_interval_s: float,
        rewrite_interval_s: float,
        max_consecutive_failures: int,
    ) -> None:
        for name, value in (
            ("heartbeat_timeout_s", heartbeat_timeout_s),
            ("request_timeout_s", request_timeout_s),
            ("reconnect_min_s", reconnect_min_s),
            ("poll_interval_s", poll_interval_s),
            ("rewrite_interval_s", rewrite_interval_s),
        ):
            if not value > 0:
                raise ConfigError(f"{name}={value!r} must be a positive number of seconds")
        if reconnect_max_s < reconnect_min_s:
            raise ConfigError(
                f"reconnect_max_s={reconnect_max_s} is below reconnect_min_s={reconnect_min_s}; "
                "pass a maximum backoff at least as long as the minimum"
            )
        if max_consecutive_failures < 1:
            raise ConfigError(f"max_consecutive_failures={max_consecutive_failures} must be >= 1")
        self.register_map = register_map or RegisterMap()
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.request_timeout_s = request_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.poll_interval_s = poll_interval_s
        self.rewrite_interval_s = rewrite_interval_s
        self.max_consecutive_failures = max_consecutive_failures

        n = self.register_map.slots
        self._connected = False
        self._connecting = False
        self._closed = True
        self._failures = 0
        self._reconnect_task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._next_seq = 1
        self._slot_seq = [0] * n  # seq last seen or written in each mailbox slot
        self._busy = [False] * n
        self._pending: dict[int, _Pending] = {}
        self._pc_heartbeat = 0
        self._plc_heartbeat: int | None = None
        self._plc_heartbeat_seen_at = 0.0
        # When the PLC last scanned, as far as our reads tell: in (_scan_lo, _scan_hi], and its
        # nominal period (SCAN_MS).  The ack poller sleeps until just before the next scan.
        self._scan_s = 0.0
        self._scan_lo: float | None = None
        self._scan_hi = 0.0
        self._last_read_start: float | None = None
        self._fault_word = 0
        self._counters: dict[str, int] = {}
        self._last_error = ""
        self._header: tuple[int, int, int, int] | None = None  # version, slots, safe lane, scan ms at connect
        self._acks_seen: list[tuple[int, int]] = [(0, 0)] * n
        self._written: list[dict[int, None]] = [{} for _ in range(n)]  # seqs this PC wrote (or found) per slot
        self._stale_seen = False  # a read saw the PLC heartbeat unchanged for longer than the timeout
        self.protocol_faults = 0
        self.on_protocol_fault: Callable[[str, dict[str, Any]], None] | None = None
        """Called with ``(kind, detail)`` for every protocol fault (the controller records it)."""

    # -- transport hooks ---------------------------------------------------

    @abc.abstractmethod
    def _describe(self) -> str:
        """Where the PLC is, for messages."""

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open the transport; raise PlcError on failure."""

    @abc.abstractmethod
    def _drop_transport(self) -> None:
        """Close the transport, if any; never raises."""

    @abc.abstractmethod
    async def _read(self, address: int, count: int) -> list[int]:
        """Read holding registers; raise _LinkLost or PlcError."""

    @abc.abstractmethod
    async def _write(self, address: int, values: Sequence[int]) -> None:
        """Write holding registers in one request; raise _LinkLost or PlcError."""

    # -- public surface ----------------------------------------------------

    @property
    def state(self) -> LinkState:
        if self._connected:
            if time.monotonic() - self._plc_heartbeat_seen_at > self.heartbeat_timeout_s:
                return "faulted"
            return "connected"
        return "connecting" if self._connecting else "down"

    @property
    def plc_heartbeat(self) -> int | None:
        """Last PLC heartbeat counter read, or ``None`` before the first read."""
        return self._plc_heartbeat

    @property
    def plc_faults(self) -> frozenset[str]:
        """Names of the PLC fault bits at the last read (see :class:`PlcFault`)."""
        return fault_names(self._fault_word)

    @property
    def last_error(self) -> str:
        """Why the link last went down or failed to connect (empty if never)."""
        return self._last_error

    async def connect(self) -> None:
        if self._connected:
            return
        self._closed = False
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None and not task.done():
            task.cancel()  # and let it finish, so it cannot drop the connection we are about to open
            with suppress(asyncio.CancelledError):
                await task
        self._connecting = True
        try:
            await self._establish()
        except PlcError as err:
            self._last_error = str(err)
            self._start_reconnect()
            raise PlcError(
                f"cannot connect to the PLC at {self._describe()}: {err}; "
                f"the link keeps retrying in the background ({self.reconnect_min_s}-{self.reconnect_max_s} s backoff)"
            ) from err
        finally:
            self._connecting = False

    async def close(self) -> None:
        self._closed = True
        for task in (self._reconnect_task, self._poller):
            if task is not None and not task.done():
                task.cancel()
        self._reconnect_task = self._poller = None
        self._fail_pending(PlcError(f"PLC link to {self._describe()} closed"))
        self._connected = False
        self._connecting = False
        self._drop_transport()

    async def send_decision(self, item_id: int, lane: str, *, timeout_s: float) -> Ack:
        encode_slot(1, item_id, lane)  # refuse a bad lane or item id before touching the link
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be > 0 (the time left before the diverter)")
        start = time.monotonic()
        deadline = start + timeout_s
        await self._require_usable(f"decision for item {item_id} ({lane}) not delivered")
        slot, seq = await self._claim_slot(deadline, item_id)
        pending = _Pending(seq, item_id, lane)
        self._pending[slot] = pending
        words = encode_slot(seq, item_id, lane)
        address = self.register_map.slot_address(slot)
        first_write: float | None = None
        try:
            while not pending.done.is_set():
                if time.monotonic() >= deadline:
                    if first_write is not None and self._connected:
                        # One last look before giving up: the PLC may have acknowledged while this
                        # task waited for the loop (the poller only reads every poll_interval).
                        # Its answer is the truth for where the item goes, so report it.
                        with suppress(PlcError):
                            await self._refresh()
                        if pending.done.is_set():
                            break
                    raise AckTimeoutError(
                        f"no acknowledgement from the PLC at {self._describe()} for item {item_id} "
                        f"(seq {seq}, slot {slot}) within {timeout_s:.3f} s; the item goes to the safe lane "
                        f"unless the PLC latches it in time. Check the PLC scan and its fault word",
                        seq=seq if first_write is not None else None,
                    )
                wait = self.rewrite_interval_s
                # Noted before the write: a write whose answer is lost may still have reached the PLC,
                # and its ack must not look like an ack for a seq this PC never wrote.
                written = self._written[slot]  # insertion-ordered: the last few seqs of the slot
                if seq not in written:
                    written[seq] = None
                    if len(written) > 8:  # a PLC may still ack one of the last few seqs of a slot late
                        del written[next(iter(written))]
                try:
                    # Same seq every time: the PLC latches a seq once, so a rewrite is harmless.
                    write_start = time.monotonic()
                    await self._write_regs(address, words)
                except PlcError as err:
                    if not self._connected:
                        raise PlcError(
                            f"decision for item {item_id} (seq {seq}) not delivered: PLC link to "
                            f"{self._describe()} went down ({err})"
                        ) from err
                    logger.warning("mailbox write for item %d seq %d failed, retrying: %s", item_id, seq, err)
                    wait = min(self.rewrite_interval_s, 5 * self.poll_interval_s)
                else:
                    if first_write is None:
                        first_write = write_start
                    self._slot_seq[slot] = seq
                    self._ensure_poller()
                try:
                    timeout = max(0.001, min(wait, deadline - time.monotonic()))
                    await asyncio.wait_for(pending.done.wait(), timeout=timeout)
                except TimeoutError:
                    pass
            if pending.error is not None:
                raise pending.error
            status = status_name(pending.status)
            if status != "accepted":
                logger.warning("PLC answered %s for item %d (lane %s, seq %d)", status, item_id, lane, seq)
            return Ack(seq, item_id, lane, status, pending.acked_at - (first_write or start))
        finally:
            self._pending.pop(slot, None)
            self._busy[slot] = False

    async def heartbeat(self) -> None:
        await self._require_connected("heartbeat not sent")
        self._pc_heartbeat = (self._pc_heartbeat + 1) & 0xFFFF
        await self._write_regs(self.register_map.pc_heartbeat_address, [self._pc_heartbeat])
        await self._refresh()

    async def read_counters(self) -> dict[str, int]:
        await self._require_connected("counters not read")
        await self._refresh()
        return dict(self._counters)

    async def read_mailbox(self) -> list[MailboxEntry]:
        await self._require_connected("mailbox not read")
        m = self.register_map
        plc = await self._read_range(m.status_address, m.plc_words)
        pc = await self._read_range(m.pc_heartbeat_address, 1 + SLOT_WORDS * m.slots)
        out = []
        for k in range(m.slots):
            ack_seq, status = plc[STATUS_WORDS + ACK_WORDS * k : STATUS_WORDS + ACK_WORDS * k + 2]
            seq, hi, lo, lane = pc[1 + SLOT_WORDS * k : 1 + SLOT_WORDS * k + 4]
            out.append(MailboxEntry(k, ack_seq, status, seq, hi << 16 | lo, lane))
        return out

    # -- internals ---------------------------------------------------------

    async def _require_connected(self, consequence: str) -> None:
        if not self._connected:
            raise PlcError(
                f"PLC link to {self._describe()} is {self.state}: {consequence}"
                + (f" (last error: {self._last_error})" if self._last_error else "")
            )

    async def _require_usable(self, consequence: str) -> None:
        await self._require_connected(consequence)
        if self.state == "faulted":
            # Our view may just be old (nobody called heartbeat lately): look again.
            try:
                await self._refresh()
            except PlcError as err:
                raise PlcError(f"PLC at {self._describe()} does not answer: {consequence}") from err
            if self.state == "faulted":
                raise PlcError(
                    f"PLC heartbeat at {self._describe()} has not changed for more than "
                    f"{self.heartbeat_timeout_s} s (PLC in STOP or its scan is hung): {consequence}"
                )
        if self._fault_word & BLOCKING_FAULTS:
            # Our view may be a heartbeat old (up to heartbeat_ms): look again before refusing.
            try:
                await self._refresh()
            except PlcError as err:
                raise PlcError(f"PLC at {self._describe()} does not answer: {consequence}") from err
            if self._fault_word & BLOCKING_FAULTS:
                raise PlcError(
                    f"PLC at {self._describe()} reports fault word 0x{self._fault_word:04x} "
                    f"{sorted(fault_names(self._fault_word & BLOCKING_FAULTS))}: {consequence} "
                    "(the PLC sends the item to the safe lane; see docs/plc-interface.md, fault word)"
                )

    async def _establish(self) -> None:
        """Open the transport and check that the PLC speaks our contract."""
        self._drop_transport()
        await self._open()
        m = self.register_map
        try:
            status = await self._read_range(m.status_address, m.plc_words)
            version, slots, safe_lane = status[0], status[1], status[4]
            if version != PROTOCOL_VERSION:
                raise PlcError(
                    f"PLC reports protocol version {version} at register {m.status_address}, expected "
                    f"{PROTOCOL_VERSION}: its program is not running, or the register base is wrong "
                    f"(this link uses base {m.base}; see docs/plc-interface.md)"
                )
            if slots != m.slots:
                raise PlcError(
                    f"PLC has {slots} mailbox slots, this link is configured for {m.slots}; "
                    "configure the same ring size on both sides"
                )
            if safe_lane != LANE_CODES[SAFE_LANE]:
                raise PlcError(
                    f"PLC reports safe lane code {safe_lane}, expected {LANE_CODES[SAFE_LANE]} ({SAFE_LANE}); "
                    "fix the PLC program: only manual is safe for unknown chemistry"
                )
            pc_area = await self._read_range(m.pc_heartbeat_address, 1 + SLOT_WORDS * m.slots)
        except BaseException:
            self._drop_transport()
            raise
        self._pc_heartbeat = pc_area[0]
        # A PC restart must not reuse the seq still standing in a slot: the PLC would ignore it.
        self._slot_seq = [pc_area[1 + SLOT_WORDS * i] for i in range(m.slots)]
        self._written = [{q: None} if q else {} for q in self._slot_seq]
        self._header = (version, slots, safe_lane, status[5])
        # Acknowledgements standing now were written before this connection: only changes are checked.
        self._acks_seen = [
            (status[STATUS_WORDS + ACK_WORDS * k], status[STATUS_WORDS + ACK_WORDS * k + 1]) for k in range(m.slots)
        ]
        for k, (ack_seq, _st) in enumerate(self._acks_seen):
            if ack_seq:
                self._written[k][ack_seq] = None
        self._failures = 0
        self._plc_heartbeat = None
        self._stale_seen = False
        self._fault_word = status[3]
        self._absorb_status(status)
        self._plc_heartbeat_seen_at = time.monotonic()
        if status[3] & PlcFault.PC_HEARTBEAT_LOST:
            # The PLC sets bit 0 from its program start until the PC heartbeat first changes
            # (docs/plc-interface.md): expected at every link-up.  Bump it now, and give the PLC a
            # few scans to see it, so the first decision is not refused for a stale view.
            await self._handshake_heartbeat(status[5])
        self._connected = True
        self._last_error = ""
        logger.info("PLC link up: %s (protocol %d, %d slots, scan %d ms, fault word 0x%04x)", self._describe(),
                    version, slots, status[5], self._fault_word)

    async def _handshake_heartbeat(self, scan_ms: int) -> None:
        try:
            self._pc_heartbeat = (self._pc_heartbeat + 1) & 0xFFFF
            await self._write_regs(self.register_map.pc_heartbeat_address, [self._pc_heartbeat])
            wait_until = time.monotonic() + max(0.05, 3 * min(max(scan_ms, 1), 1000) / 1000.0)
            while True:
                await self._refresh()
                if not self._fault_word & PlcFault.PC_HEARTBEAT_LOST or time.monotonic() >= wait_until:
                    return
                await asyncio.sleep(max(self.poll_interval_s, 0.002))
        except PlcError as err:  # the link handles its own failures; the handshake itself has succeeded
            logger.debug("PC heartbeat during the handshake failed: %s", err)

    def _lost(self, reason: str) -> None:
        """The transport failed: fail waiting decisions, reconnect in the background."""
        if not self._connected:
            return
        self._connected = False
        self._last_error = reason
        logger.warning("PLC link to %s down: %s", self._describe(), reason)
        self._fail_pending(PlcError(f"PLC link to {self._describe()} went down: {reason}"))
        self._drop_transport()
        self._start_reconnect()

    def _fail_pending(self, error: PlcError) -> None:
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()

    def _start_reconnect(self) -> None:
        if self._closed or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(
            self._reconnect_loop(), name=f"plc-reconnect {self._describe()}"
        )

    async def _reconnect_loop(self) -> None:
        delay = self.reconnect_min_s
        attempts = 0
        while not self._closed and not self._connected:
            await asyncio.sleep(delay)
            attempts += 1
            self._connecting = True
            try:
                await self._establish()
            except Exception as err:  # noqa: BLE001 - this loop must outlive any single failure
                if not isinstance(err, PlcError):
                    logger.exception("unexpected error while reconnecting to %s", self._describe())
                self._last_error = str(err)
                loud = attempts == 1 or (delay >= self.reconnect_max_s and attempts % 10 == 0)
                log = logger.warning if loud else logger.debug
                log("PLC reconnect attempt %d to %s failed: %s", attempts, self._describe(), err)
                delay = min(delay * 2, self.reconnect_max_s)
            finally:
                self._connecting = False

    async def _read_regs(self, address: int, count: int) -> list[int]:
        try:
            values = await self._read(address, count)
        except _LinkLost as err:
            self._lost(str(err))
            raise
        except PlcError as err:
            self._count_failure(err)
            raise
        self._failures = 0
        return values

    async def _read_range(self, address: int, count: int) -> list[int]:
        values: list[int] = []
        for offset in range(0, count, _MAX_READ):
            values += await self._read_regs(address + offset, min(_MAX_READ, count - offset))
        return values

    async def _write_regs(self, address: int, values: Sequence[int]) -> None:
        try:
            await self._write(address, values)
        except _LinkLost as err:
            self._lost(str(err))
            raise
        except PlcError as err:
            self._count_failure(err)
            raise
        self._failures = 0

    def _count_failure(self, err: PlcError) -> None:
        self._failures += 1
        if self._failures >= self.max_consecutive_failures:
            self._lost(f"{self._failures} requests in a row failed, last: {err}")

    async def _refresh(self) -> None:
        """Read the status block and acknowledgements in one request."""
        start = time.monotonic()
        before = self._plc_heartbeat
        words = await self._read_regs(self.register_map.status_address, self.register_map.plc_words)
        self._absorb_status(words)
        end = time.monotonic()
        previous, self._last_read_start = self._last_read_start, start
        scan_s = words[5] / 1000.0
        self._scan_s = scan_s if 0.001 <= scan_s <= 1.0 else 0.0
        if before is not None and words[2] != before and previous is not None:
            # The heartbeat moved: the PLC scanned after the previous read reached it and
            # before this one returned.
            self._scan_lo, self._scan_hi = previous, end

    def _poll_delay(self, now: float) -> float:
        """How long the ack poller may wait before its next read.

        The PLC only latches and acknowledges in its scan, and it counts every scan on
        its heartbeat.  Once a read has seen the heartbeat move, the next scan cannot come
        before one period after the read before it; reading earlier finds nothing new.  So
        the poller sleeps until just before that, then reads every ``poll_interval``
        until it sees the scan.  Without a recent, precise view of the scan phase (or a
        plausible ``SCAN_MS``) it reads every ``poll_interval``.
        """
        lo, scan = self._scan_lo, self._scan_s
        if lo is None or not scan or now - lo > 1.0 or self._scan_hi - lo > scan / 2:
            return self.poll_interval_s
        margin = max(0.0005, 0.05 * scan)  # PLC scan jitter
        earliest = lo + scan - margin  # only one period ahead: no extrapolation over a drifting clock
        return max(self.poll_interval_s, earliest - now)

    def _absorb_status(self, words: Sequence[int]) -> None:
        now = time.monotonic()
        header = (words[0], words[1], words[4], words[5])
        if self._connected and self._header is not None and header != self._header:
            names = ("PROTOCOL_VERSION", "SLOT_COUNT", "SAFE_LANE", "SCAN_MS")
            changed = {n: {"at_connect": a, "now": b} for n, a, b in zip(names, self._header, header) if a != b}
            self._protocol_fault(
                "header_changed", f"PLC header registers changed mid-run ({', '.join(changed)}: "
                + ", ".join(f"{v['at_connect']} -> {v['now']}" for v in changed.values())
                + "); stopped sending, re-running the connect handshake", {"changed": changed})
            return
        heartbeat = words[2]
        if heartbeat != self._plc_heartbeat:
            if self._stale_seen and self._connected:
                gap = now - self._plc_heartbeat_seen_at
                self._stale_seen = False
                self._plc_heartbeat, self._plc_heartbeat_seen_at = heartbeat, now
                logger.warning("PLC heartbeat restored at %s after %.1f s without change: treated as a PLC program "
                               "start (STOP -> RUN, docs/plc-interface.md rule 8); re-running the connect handshake",
                               self._describe(), gap)
                self._lost("PLC program start (heartbeat restored after STOP)")
                return
            self._plc_heartbeat = heartbeat
            self._plc_heartbeat_seen_at = now
        elif now - self._plc_heartbeat_seen_at > self.heartbeat_timeout_s and not self._stale_seen:
            self._stale_seen = True
            logger.warning("PLC heartbeat at %s unchanged for %.1f s: link faulted (PLC in STOP or its scan hung)",
                           self._describe(), now - self._plc_heartbeat_seen_at)
        if words[3] != self._fault_word:
            level = logging.WARNING if words[3] & ~PlcFault.PC_HEARTBEAT_LOST or (
                words[3] and self._connected) else logging.INFO
            logger.log(level, "PLC fault word now 0x%04x %s", words[3], sorted(fault_names(words[3])))
            if words[3] & RESERVED_FAULT_BITS and not self._fault_word & RESERVED_FAULT_BITS & words[3]:
                self._report_fault("reserved_fault_bits", {"fault_word": words[3]},
                                   f"PLC set reserved fault-word bits 0x{words[3] & RESERVED_FAULT_BITS:04x}; "
                                   "no decision is sent while they are set")
            self._fault_word = words[3]
        self._counters = decode_counters(words)
        for slot in range(self.register_map.slots):
            ack = (words[STATUS_WORDS + ACK_WORDS * slot], words[STATUS_WORDS + ACK_WORDS * slot + 1])
            if ack == self._acks_seen[slot]:
                continue
            self._acks_seen[slot] = ack
            ack_seq, status = ack
            pending = self._pending.get(slot)
            if status > max(AckStatus):
                self._protocol_fault(
                    "undefined_ack_status", f"PLC acknowledged seq {ack_seq} in slot {slot} with status {status}, "
                    f"which the contract does not define (0..{int(max(AckStatus))}); stopped sending, re-running the "
                    "connect handshake", {"slot": slot, "ack_seq": ack_seq, "raw_status": status},
                    seq=ack_seq, raw_status=status)
                return
            # Status 0 answers nothing (a program start writes [standing seq, 0] into every slot).
            if ack_seq and status != AckStatus.NONE and ack_seq not in self._written[slot]:
                self._protocol_fault(
                    "ack_for_unwritten_seq", f"PLC acknowledged seq {ack_seq} in slot {slot} (status {status}), a "
                    "seq this PC never wrote there; stopped sending, re-running the connect handshake",
                    {"slot": slot, "ack_seq": ack_seq, "raw_status": status})
                return
            if pending is not None and ack_seq == pending.seq and status != AckStatus.NONE \
                    and not pending.done.is_set():
                pending.status = status
                pending.acked_at = now
                pending.done.set()

    def _report_fault(self, kind: str, detail: dict[str, Any], message: str) -> None:
        self.protocol_faults += 1
        logger.error("PLC protocol fault at %s: %s", self._describe(), message,
                     extra={"plc_fault": kind, "detail": detail})
        if self.on_protocol_fault is not None:
            try:
                self.on_protocol_fault(kind, {"message": message, **detail})
            except Exception:  # noqa: BLE001 - an observer must not break the link
                logger.exception("protocol fault observer failed")

    def _protocol_fault(self, kind: str, message: str, detail: dict[str, Any], *, seq: int | None = None,
                        raw_status: int | None = None) -> None:
        """The PLC broke the contract: alarm, record, stop sending, and re-run the handshake."""
        self._report_fault(kind, detail, message)
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = PlcProtocolError(
                    f"decision for item {pending.item_id} (seq {pending.seq}) not confirmed: {message}", kind=kind,
                    detail=detail, seq=pending.seq,
                    raw_status=raw_status if seq == pending.seq else None)
                pending.done.set()
        self._lost(f"protocol fault: {kind}")

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_acks(), name=f"plc-acks {self._describe()}"
            )

    async def _poll_acks(self) -> None:
        """Read acknowledgements while decisions are waiting (one read serves all).

        Reads are timed to the PLC's scan (:meth:`_poll_delay`): about one read
        per scan when the scan phase is known, instead of one per poll interval.
        """
        while self._connected and any(not p.done.is_set() for p in self._pending.values()):
            try:
                await self._refresh()
            except PlcError as err:
                logger.debug("acknowledgement poll failed: %s", err)
            await asyncio.sleep(self._poll_delay(time.monotonic()))

    async def _claim_slot(self, deadline: float, item_id: int) -> tuple[int, int]:
        """Reserve a free ring slot and a fresh seq for it, waiting until ``deadline``."""
        n = self.register_map.slots
        waited = False
        while True:
            if time.monotonic() >= deadline:  # a slot freed after the deadline is no use
                if waited:
                    raise PlcTimeoutError(
                        f"all {n} mailbox slots are busy with decisions awaiting acknowledgement, so the decision "
                        f"for item {item_id} was not sent: the PLC is not acknowledging (check its scan and fault "
                        f"word) or decisions arrive faster than it acknowledges them (enlarge the ring on both sides)"
                    )
                raise PlcTimeoutError(f"timeout_s ran out before the decision for item {item_id} could be sent")
            if not all(self._busy):
                for _ in range(2 * n):
                    seq = self._next_seq
                    self._next_seq = seq % SEQ_MAX + 1
                    slot = seq % n
                    if not self._busy[slot] and seq != self._slot_seq[slot]:
                        self._busy[slot] = True
                        return slot, seq
            waited = True
            await asyncio.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))
            await self._require_connected(f"decision for item {item_id} not delivered")


# --------------------------------------------------------------------------
# Modbus TCP
# --------------------------------------------------------------------------


def _check_target(host: str, port: int, device_id: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"PLC host {host!r} is not an IP address; pass the PLC's static IP (e.g. 192.168.10.20) so that "
            "no name lookup can ever redirect divert commands to another device"
        ) from None
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        raise ConfigError(f"PLC host {host!r} is not a single device; pass the PLC's own IP address")
    if not 1 <= port <= 65535:
        raise ConfigError(f"PLC port {port!r} is out of range; Modbus TCP normally uses 502")
    if not 1 <= device_id <= 255:
        raise ConfigError(
            f"PLC device_id {device_id!r} is out of range; pass 1..255 (0 is broadcast and is never used)"
        )
    return ip


class ModbusPlcLink(_MailboxLink):
    """The PLC link over Modbus TCP (pymodbus ``AsyncModbusTcpClient``).

    Talks to exactly one configured device: ``host`` must be an IP address,
    fixed at construction, and every request carries ``device_id``.  The link
    reconnects by itself with exponential backoff; while it is down,
    :meth:`send_decision` raises :class:`PlcError` at once.

    Parameters
    ----------
    host : str
        IP address of the PLC (no host names: a name lookup could redirect
        divert commands).
    port : int
        Modbus TCP port, default 502.
    device_id : int
        Modbus unit id, 1..255.
    register_map : RegisterMap, optional
        Base address and ring size; must match the PLC.
    heartbeat_timeout_s : float
        The PLC heartbeat counter must change within this time, else the link
        is ``"faulted"`` (1-2 s on a real line).
    request_timeout_s : float
        Timeout per Modbus request (and per connection attempt).
    reconnect_min_s, reconnect_max_s : float
        Exponential backoff between reconnection attempts.
    poll_interval_s : float
        Pause between acknowledgement reads while decisions are waiting.
    rewrite_interval_s : float
        Rewrite the same slot (same seq) if no acknowledgement came within
        this time; harmless, the PLC latches a seq once.
    max_consecutive_failures : int
        Requests failing in a row (timeouts, exception responses) before the
        link drops the connection and reconnects.

    Examples
    --------
    >>> link = ModbusPlcLink("192.168.10.20", 502, device_id=1)
    >>> link.address
    ('192.168.10.20', 502, 1)
    """

    def __init__(
        self,
        host: str,
        port: int = 502,
        *,
        device_id: int = 1,
        register_map: RegisterMap | None = None,
        heartbeat_timeout_s: float = 1.5,
        request_timeout_s: float = 0.25,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        poll_interval_s: float = 0.001,
        rewrite_interval_s: float = 0.05,
        max_consecutive_failures: int = 3,
    ) -> None:
        self._ip = _check_target(host, port, device_id)
        self._host = str(self._ip)
        self._port = port
        self._device_id = device_id
        super().__init__(
            register_map=register_map,
            heartbeat_timeout_s=heartbeat_timeout_s,
            request_timeout_s=request_timeout_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            poll_interval_s=poll_interval_s,
            rewrite_interval_s=rewrite_interval_s,
            max_consecutive_failures=max_consecutive_failures,
        )
        self._client: AsyncModbusTcpClient | None = None
        self._client_token: object | None = None

    @property
    def host(self) -> str:
        """IP address of the PLC (read-only)."""
        return self._host

    @property
    def port(self) -> int:
        """TCP port of the PLC (read-only)."""
        return self._port

    @property
    def device_id(self) -> int:
        """Modbus unit id of the PLC (read-only)."""
        return self._device_id

    @property
    def address(self) -> tuple[str, int, int]:
        """``(host, port, device_id)``: the one device this link talks to."""
        return (self._host, self._port, self._device_id)

    def _describe(self) -> str:
        return f"{self._host}:{self._port} device {self._device_id}"

    async def _open(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        token = object()
        # reconnect_delay=0: pymodbus must not reconnect on its own, this class does
        # (with its own backoff and state).  retries=0: a retry is our decision.
        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            name=f"plc {self._describe()}",
            reconnect_delay=0,
            timeout=self.request_timeout_s,
            retries=0,
            trace_connect=functools.partial(self._on_connection_event, token),
        )
        self._client, self._client_token = client, token
        if not await client.connect():
            self._drop_transport()
            raise PlcError(f"no Modbus TCP connection to {self._host}:{self._port} (refused or timed out)")

    def _on_connection_event(self, token: object, connected: bool) -> None:
        if not connected and token is self._client_token:
            self._lost("connection closed by the PLC or the network")

    def _drop_transport(self) -> None:
        client, self._client, self._client_token = self._client, None, None
        if client is not None:
            client.close()

    async def _request(self, what: str, make_call: Callable[[AsyncModbusTcpClient], Awaitable[Any]]) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusException

        try:
            client = self._client
            if client is None or not client.connected:
                raise _LinkLost(f"{what}: not connected to {self._describe()}")
            # pymodbus enforces request_timeout_s itself; this outer bound only guards against a hang.
            response = await asyncio.wait_for(make_call(client), timeout=2 * self.request_timeout_s + 0.5)
        except ConnectionException as err:
            raise _LinkLost(f"{what}: {err}") from err
        except (ModbusException, TimeoutError) as err:
            raise PlcError(
                f"{what}: no valid answer from {self._describe()} within {self.request_timeout_s} s ({err})"
            ) from err
        if response.isError():
            code = getattr(response, "exception_code", None)
            hint = {
                2: "illegal data address: check the register base on both sides",
                4: "device failure: the PLC's Modbus server failed the request",
                11: "gateway target did not respond: check device_id",
            }.get(code, "see the Modbus exception code list")
            raise PlcError(f"{what}: {self._describe()} answered Modbus exception {code} ({hint})")
        return response

    async def _read(self, address: int, count: int) -> list[int]:
        response = await self._request(
            f"reading registers {address}..{address + count - 1}",
            lambda client: client.read_holding_registers(address, count=count, device_id=self._device_id),
        )
        return list(response.registers)

    async def _write(self, address: int, values: Sequence[int]) -> None:
        await self._request(
            f"writing registers {address}..{address + len(values) - 1}",
            lambda client: client.write_registers(address, list(values), device_id=self._device_id),
        )


# --------------------------------------------------------------------------
# In-memory PLC
# --------------------------------------------------------------------------


class MemoryPlc(_MailboxLink):
    """A PLC link to an in-process PLC that runs the same register contract.

    The PLC side is :class:`sorter.line.plcsim.PlcModel` scanning an in-memory
    register image every ``scan_ms``; the PC side is the same code as
    :class:`ModbusPlcLink`.  Use it in tests of anything that drives the line.
    Failure injection: :meth:`set_reachable` (cable pulled),
    :meth:`pause_scan` (PLC in STOP: heartbeat freezes), and the model's
    ``acking`` and ``diverter_fault`` attributes.

    Parameters
    ----------
    scan_ms : float
        PLC scan period in milliseconds.
    register_map : RegisterMap, optional
        Base address and ring size.
    pc_heartbeat_timeout_s : float
        The PLC faults if the PC heartbeat does not change for this long.
    decision_capacity : int
        Size of the PLC's table of pending decisions.
    latency_s : float
        Simulated one-way latency of every register access.
    untracked : {"apply", "late"}
        What the PLC answers for an item never announced (see
        :class:`sorter.line.plcsim.PlcModel`); ``"apply"``: diverted at once.
    **link_options
        Passed to the link: ``heartbeat_timeout_s``, ``request_timeout_s``,
        ``reconnect_min_s``, ``reconnect_max_s``, ``poll_interval_s``,
        ``rewrite_interval_s``, ``max_consecutive_failures``.

    Examples
    --------
    >>> import asyncio, time
    >>> async def demo():
    ...     plc = MemoryPlc(scan_ms=1)
    ...     await plc.connect()
    ...     plc.model.expect(7, time.monotonic() + 0.05)  # on the belt, never decided
    ...     await asyncio.sleep(0.2)
    ...     await plc.close()
    ...     return plc.model.decisions[7], plc.model.counters["defaulted"]
    >>> asyncio.run(demo())
    ('manual', 1)
    """

    def __init__(
        self,
        *,
        scan_ms: float = 10.0,
        register_map: RegisterMap | None = None,
        pc_heartbeat_timeout_s: float = 1.5,
        decision_capacity: int = 256,
        latency_s: float = 0.0,
        untracked: str = "apply",
        **link_options: Any,
    ) -> None:
        from sorter.line.plcsim import PlcModel

        options: dict[str, Any] = {
            "heartbeat_timeout_s": 1.5,
            "request_timeout_s": 0.25,
            "reconnect_min_s": 0.02,
            "reconnect_max_s": 0.5,
            "poll_interval_s": 0.001,
            "rewrite_interval_s": 0.05,
            "max_consecutive_failures": 3,
        }
        unknown = set(link_options) - set(options)
        if unknown:
            raise ConfigError(f"MemoryPlc got unknown options {sorted(unknown)}; known: {sorted(options)}")
        options.update(link_options)
        super().__init__(register_map=register_map, **options)
        if latency_s < 0:
            raise ConfigError(f"latency_s={latency_s} must be >= 0")
        self.latency_s = latency_s
        self.model: PlcModel = PlcModel(
            self.register_map,
            scan_ms=scan_ms,
            pc_heartbeat_timeout_s=pc_heartbeat_timeout_s,
            decision_capacity=decision_capacity,
            untracked=untracked,
        )
        self._image = [0] * self.register_map.size
        self._reachable = True
        self._scanning = True
        self._scan_task: asyncio.Task[None] | None = None
        self._session = 0  # bumps when the "cable" is pulled, so stale connections stay dead
        self._open_session = -1

    @property
    def registers(self) -> list[int]:
        """A copy of the register image (index 0 is ``register_map.base``)."""
        return list(self._image)

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        """Write registers as another Modbus master would (for tests).

        Raises
        ------
        PlcError
            For an address outside the PC-writable area, like the PLC's
            ``ILLEGAL_ADDRESS`` exception.
        """
        m = self.register_map
        if address < m.pc_heartbeat_address or address + len(values) > m.base + m.size:
            raise PlcError(
                f"registers {address}..{address + len(values) - 1} are not PC-writable "
                f"(PC area is {m.pc_heartbeat_address}..{m.base + m.size - 1}): Modbus exception 2"
            )
        offset = address - m.base
        self._image[offset : offset + len(values)] = [int(v) & 0xFFFF for v in values]

    def set_reachable(self, reachable: bool) -> None:
        """Pull (``False``) or plug back (``True``) the cable; the PLC keeps scanning."""
        self._reachable = reachable
        if not reachable:
            self._session += 1
            self._lost("in-memory PLC made unreachable")

    def pause_scan(self) -> None:
        """Put the PLC in STOP: no scan, so its heartbeat freezes and nothing is acknowledged."""
        self._scanning = False

    def resume_scan(self) -> None:
        """Put the PLC back in RUN: a program start (rule 8) before the next scan."""
        if not self._scanning:
            self._image[: self.register_map.plc_words] = self.model.power_on(self._image, time.monotonic())
        self._scanning = True

    async def close(self) -> None:
        await super().close()
        if self._scan_task is not None:
            self._scan_task.cancel()
            self._scan_task = None

    def _describe(self) -> str:
        return "in-memory PLC"

    async def _open(self) -> None:
        await asyncio.sleep(self.latency_s)
        if not self._reachable:
            raise PlcError("in-memory PLC is unreachable (set_reachable(False))")
        if self._scan_task is None or self._scan_task.done():
            self._image[: self.register_map.plc_words] = self.model.power_on(self._image, time.monotonic())
            self._scan_task = asyncio.get_running_loop().create_task(self._scan_loop(), name="memory-plc scan")
        self._open_session = self._session

    def _drop_transport(self) -> None:
        return None

    async def _scan_loop(self) -> None:
        period = self.model.scan_ms / 1000.0
        next_at = time.monotonic()
        while True:
            if self._scanning:
                out = self.model.scan(self._image, time.monotonic())
                self._image[: len(out)] = out
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (busy loop): do not try to catch up with a burst of scans
                next_at, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)

    def _check_session(self) -> None:
        if not self._reachable or self._open_session != self._session:
            raise _LinkLost("in-memory PLC unreachable")

    async def _read(self, address: int, count: int) -> list[int]:
        self._check_session()
        await asyncio.sleep(self.latency_s)
        self._check_session()
        m = self.register_map
        if address < m.base or address + count > m.base + m.size:
            raise PlcError(f"registers {address}..{address + count - 1} outside the map: Modbus exception 2")
        return self._image[address - m.base : address - m.base + count]

    async def _write(self, address: int, values: Sequence[int]) -> None:
        self._check_session()
        await asyncio.sleep(self.latency_s)
        self._check_session()
        self.write_registers(address, values)
