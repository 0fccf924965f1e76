"""The register contract of the divert mailbox: what both sides of the wire share.

The PC side (:mod:`sorter.line.plc.link` and its implementations) and the PLC side
(:mod:`sorter.line.plc.sim`, the reference PLC program) both import this module and
nothing else of each other.  ``docs/plc-interface.md`` specifies the same contract in
words; this module is its executable form.

Contents
--------
- :class:`LaneCode`, :data:`LANE_CODES`, :data:`LANE_NAMES`, :class:`AckStatus`,
  :class:`PlcFault`: the codes on the wire (lane names are :class:`sorter.lanes.Lane`).
- :class:`RegisterMap`: where everything lives (base address and ring size).
- :func:`encode_slot`, :func:`decode_slot`, :func:`crc16_modbus`: the mailbox
  slot format, as pure functions; :func:`decode_counters`, :func:`status_name`,
  :func:`fault_names`.
- :func:`plc_item_id`: the uint32 id the PLC knows an item by.
- the optional case-station block's names, from :mod:`sorter.line.plc.caseblock`
  (re-exported here), and :func:`encode_case_slot`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from sorter.errors import ConfigError
from sorter.lanes import Lane
from sorter.line.plc.caseblock import (
    CASE_BLOCK_VERSION,
    CASE_BLOCK_VERSION_POSITIONS,
    CASE_HEADER_WORDS,
    CASE_LANE_CODE,
    CASE_PC_WORDS,
    CASE_PLC_WORDS,
    CASE_POSITION_PLC_WORDS,
    CASE_POSITIONS_MAX,
    CaseBlockMap,
    CasePcWords,
    CasePlcWords,
    case_lane_code,
    case_position_of,
)

__all__ = [
    "ACK_WORDS",
    "CASE_BLOCK_VERSION",
    "CASE_BLOCK_VERSION_POSITIONS",
    "CASE_HEADER_WORDS",
    "CASE_LANE_CODE",
    "CASE_PC_WORDS",
    "CASE_PLC_WORDS",
    "CASE_POSITION_PLC_WORDS",
    "CASE_POSITIONS_MAX",
    "CaseBlockMap",
    "CasePcWords",
    "CasePlcWords",
    "BLOCKING_FAULTS",
    "COUNTER_NAMES",
    "ITEM_ID_MAX",
    "LANE_CODES",
    "LANE_NAMES",
    "MAX_READ",
    "PROTOCOL_VERSION",
    "RESERVED_FAULT_BITS",
    "SAFE_LANE_CODE",
    "SEQ_MAX",
    "SLOT_WORDS",
    "STATUS_WORDS",
    "AckStatus",
    "LaneCode",
    "MailboxEntry",
    "MailboxSlot",
    "PlcFault",
    "RegisterMap",
    "case_lane_code",
    "case_position_of",
    "crc16_modbus",
    "encode_case_slot",
    "decode_counters",
    "decode_slot",
    "encode_slot",
    "fault_names",
    "plc_item_id",
    "status_name",
]

PROTOCOL_VERSION: Final = 1
"""Version of the register contract in ``docs/plc-interface.md``."""


class LaneCode(enum.IntEnum):
    """Lane codes written into a mailbox slot (0 means no lane); lane *names* are :class:`sorter.lanes.Lane`."""

    NONE = 0
    LEAD_ACID = 1
    LI_ION = 2
    HAZARD = 3
    MANUAL = 4


LANE_CODES: Final[Mapping[Lane, LaneCode]] = MappingProxyType(
    {
        Lane.LEAD_ACID: LaneCode.LEAD_ACID,
        Lane.LI_ION: LaneCode.LI_ION,
        Lane.HAZARD: LaneCode.HAZARD,
        Lane.MANUAL: LaneCode.MANUAL,
    }
)
"""Lane (:class:`sorter.lanes.Lane`, or its name as a string) to wire code."""

LANE_NAMES: Final[Mapping[int, Lane]] = MappingProxyType({code: name for name, code in LANE_CODES.items()})
"""Wire code to lane."""

SAFE_LANE_CODE: Final = LaneCode.MANUAL
"""Code of the lane where the PLC sends any item without a valid acknowledged decision (``manual``):
the ``SAFE_LANE`` header register must hold it."""


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
MAX_READ: Final = 125
"""Most registers one Modbus FC3 request may read."""


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
    """Wire code of a lane given by name (``"li_ion"``, :class:`~sorter.lanes.Lane`) or :class:`LaneCode`."""
    if isinstance(lane, str):
        try:
            return int(LANE_CODES[lane])
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}; pass one of {sorted(LANE_CODES)}") from None
    if isinstance(lane, int) and (lane in LANE_NAMES or lane == CASE_LANE_CODE):
        return int(lane)
    raise ValueError(f"lane code {lane!r} is not a lane; pass a name from {sorted(LANE_CODES)} or LaneCode.*")


def encode_slot(seq: int, item_id: int, lane: str | int) -> list[int]:
    """Registers of one mailbox slot: ``[seq, item_id_hi, item_id_lo, lane, check]``.

    Parameters
    ----------
    seq : int
        Sequence number 1..65535 (0 marks an empty slot and is refused).
    item_id : int
        Item id assigned at the sensor bridge, uint32.
    lane : str, Lane or LaneCode
        Lane name from :data:`LANE_CODES` or a :class:`LaneCode` other than ``NONE``.

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
    return _slot_words(seq, item_id, code)


def encode_case_slot(seq: int, item_id: int, position: int) -> list[int]:
    """Registers of a mailbox slot that sends the item *into the case at* ``position`` (1-based):
    lane code ``4 + position`` (:func:`case_lane_code`; 5 for position 1, as :func:`encode_slot`
    with :data:`CASE_LANE_CODE`).

    Examples
    --------
    >>> encode_case_slot(1, 42, 1) == encode_slot(1, 42, CASE_LANE_CODE), encode_case_slot(1, 42, 3)[3]
    (True, 7)
    """
    code = case_lane_code(position)
    encode_slot(seq, item_id, "hazard")  # the same checks of seq and item id
    return _slot_words(seq, item_id, code)


def _slot_words(seq: int, item_id: int, code: int) -> list[int]:
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
    def lane(self) -> Lane | None:
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
    return {name: status_words[6 + 2 * i] << 16 | status_words[7 + 2 * i] for i, name in enumerate(COUNTER_NAMES)}


@dataclass(frozen=True)
class MailboxEntry:
    """One mailbox slot as it stands, with its acknowledgement (read at a restart to reconcile)."""

    slot: int
    ack_seq: int
    status: int
    slot_seq: int
    item_id: int
    lane_code: int


_UINT32_MAX: Final = 0xFFFF_FFFF
_HASH_BIT: Final = 0x8000_0000


def plc_item_id(item_id: str) -> int:
    """The uint32 id the PLC knows an item by.

    Decimal ids that fit in 32 bits are used as they are; any other id is
    hashed (BLAKE2b, 31 bits, with the top bit set) into ``2**31 .. 2**32 - 1``,
    so a hashed id never equals a numeric id below 2**31.  Two different
    non-numeric ids collide with probability about n²/2³² among the n items on
    the belt at once (about 1e-7 for 30 items); a real line should give the
    bridge numeric ids.

    Examples
    --------
    >>> plc_item_id("00012345"), plc_item_id("4294967295")
    (12345, 4294967295)
    >>> plc_item_id("L1-000001") >= 2**31
    True
    """
    if item_id.isascii() and item_id.isdecimal():
        value = int(item_id)
        if value <= _UINT32_MAX:
            return value
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big") | _HASH_BIT
