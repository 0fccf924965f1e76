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


# --------------------------------------------------------------------------
# The case-station block (optional; docs/plc-interface.md, "Case station block")
# --------------------------------------------------------------------------

CASE_BLOCK_VERSION: Final = 1
"""Version of the one-position case-station block, in its first register (0: the PLC has no block)."""

CASE_BLOCK_VERSION_POSITIONS: Final = 2
"""Version of the case-station block with several case positions (``CASE_POSITIONS`` in its second
register, then one sub-block per position).  One position is always version 1."""

CASE_POSITIONS_MAX: Final = 8
"""Most case positions a station may have: lane codes 5..12 name them."""

CASE_LANE_CODE: Final = 5
"""Mailbox lane code "the case station's lane, *into the open case*" (with several positions: into
the case at position 1; code ``4 + p`` is position ``p``, :func:`case_lane_code`), written only when
the case block is enabled.  A PLC without the block rejects it (``REJECTED_BAD_LANE``): the item
goes to the safe lane, never the breaker.  Lane code 3 (``hazard``) with the block enabled
means "the hazard lane, into the quarantine buffer"."""

CASE_PLC_WORDS: Final = 4
"""PLC-written registers of the one-position block: ``CASE_BLOCK_VERSION, CASE_READY, CASE_PLACED, CASE_BUFFERED``."""
CASE_PC_WORDS: Final = 6
"""PC-written registers per case position: ``CASE_NUMBER, CASE_FILL_WH, CASE_LIMIT_WH, CASE_ITEMS, CASE_FULL,
CASE_OPEN_FOR``."""
CASE_HEADER_WORDS: Final = 2
"""With several positions (block version 2): the PLC's header ``CASE_BLOCK_VERSION, CASE_POSITIONS``."""
CASE_POSITION_PLC_WORDS: Final = 3
"""With several positions: PLC-written registers per position, ``CASE_READY, CASE_PLACED, CASE_BUFFERED``."""


def case_lane_code(position: int) -> int:
    """The mailbox lane code "into the case at ``position``" (1-based): 5 for position 1, ... 12 for 8.

    Examples
    --------
    >>> case_lane_code(1), case_lane_code(3)
    (5, 7)
    """
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= CASE_POSITIONS_MAX:
        raise ValueError(f"case position {position!r} is outside 1..{CASE_POSITIONS_MAX}")
    return CASE_LANE_CODE + position - 1


def case_position_of(code: int, positions: int = CASE_POSITIONS_MAX) -> int | None:
    """The case position (1-based) a lane code names, or ``None`` when it names none of ``positions``.

    Examples
    --------
    >>> case_position_of(5), case_position_of(7, positions=3), case_position_of(8, positions=3)
    (1, 3, None)
    """
    p = code - CASE_LANE_CODE + 1
    return p if 1 <= p <= min(positions, CASE_POSITIONS_MAX) else None


@dataclass(frozen=True)
class CaseBlockMap:
    """Where the case-station block lives: its own base address, apart from the mailbox.

    One position (the default) is block version 1: four PLC words, then six PC words.  With
    ``positions`` = N > 1 (block version 2): the PLC's header (version, N), N PLC sub-blocks of
    three words (``CASE_READY``, ``CASE_PLACED``, ``CASE_BUFFERED``), then N PC sub-blocks of six
    words, so that the PC reads the PLC's words with one request and writes its own with one.

    Examples
    --------
    >>> b = CaseBlockMap(300)
    >>> b.plc_address, b.pc_address, b.size, b.version
    (300, 304, 10, 1)
    >>> b3 = CaseBlockMap(300, positions=3)
    >>> b3.plc_words, b3.pc_address, b3.position_plc_address(2), b3.position_pc_address(2), b3.size
    (11, 311, 305, 317, 29)
    """

    base: int = 300
    positions: int = 1

    def __post_init__(self) -> None:
        if (
            isinstance(self.positions, bool)
            or not isinstance(self.positions, int)
            or not 1 <= self.positions <= CASE_POSITIONS_MAX
        ):
            raise ConfigError(f"case positions={self.positions!r} is out of range; pass 1..{CASE_POSITIONS_MAX}")
        if not 0 <= self.base <= 0xFFFF - self.size + 1:
            raise ConfigError(
                f"case block base={self.base} does not leave room for {self.size} registers; "
                f"pass 0..{0xFFFF - self.size + 1}"
            )

    @property
    def version(self) -> int:
        """The block version the PLC must publish: 1 for one position, 2 for several."""
        return CASE_BLOCK_VERSION if self.positions == 1 else CASE_BLOCK_VERSION_POSITIONS

    @property
    def plc_words(self) -> int:
        """Number of PLC-written registers."""
        if self.positions == 1:
            return CASE_PLC_WORDS
        return CASE_HEADER_WORDS + CASE_POSITION_PLC_WORDS * self.positions

    @property
    def pc_words(self) -> int:
        """Number of PC-written registers."""
        return CASE_PC_WORDS * self.positions

    @property
    def plc_address(self) -> int:
        """PDU address of the PLC-written words."""
        return self.base

    @property
    def pc_address(self) -> int:
        """PDU address of the PC-written words."""
        return self.base + self.plc_words

    def position_plc_address(self, position: int) -> int:
        """PDU address of ``CASE_READY`` of ``position`` (1-based)."""
        self._check(position)
        if self.positions == 1:
            return self.base + 1
        return self.base + CASE_HEADER_WORDS + CASE_POSITION_PLC_WORDS * (position - 1)

    def position_pc_address(self, position: int) -> int:
        """PDU address of ``CASE_NUMBER`` of ``position`` (1-based)."""
        self._check(position)
        return self.pc_address + CASE_PC_WORDS * (position - 1)

    @property
    def size(self) -> int:
        return self.plc_words + self.pc_words

    def overlaps(self, m: RegisterMap) -> bool:
        """Whether this block shares an address with the mailbox map ``m``."""
        return self.base < m.base + m.size and m.base < self.base + self.size

    def decode_plc(self, words: Sequence[int]) -> tuple[CasePlcWords, ...]:
        """The PLC's words (``plc_words`` registers from ``plc_address``), one :class:`CasePlcWords` per
        position (each with the block's version word).  Raises ``ValueError`` when the count is wrong,
        or when a version-2 block reports another number of positions than this map's."""
        if len(words) != self.plc_words:
            raise ValueError(f"the case block's PLC words are {self.plc_words} registers, got {list(words)!r}")
        if self.positions == 1:
            return (CasePlcWords.decode(words),)
        version, n = int(words[0]), int(words[1])
        if version == CASE_BLOCK_VERSION_POSITIONS and n != self.positions:
            raise ValueError(f"the PLC's case block has CASE_POSITIONS = {n}, the PC expects {self.positions}")
        out = []
        for k in range(self.positions):
            o = CASE_HEADER_WORDS + CASE_POSITION_PLC_WORDS * k
            out.append(CasePlcWords(version, words[o] == 1, int(words[o + 1]), int(words[o + 2])))
        return tuple(out)

    def encode_plc(self, words: Sequence[CasePlcWords]) -> list[int]:
        """The PLC's registers from one :class:`CasePlcWords` per position (the PLC side)."""
        if len(words) != self.positions:
            raise ValueError(f"expected the PLC words of {self.positions} position(s), got {len(words)}")
        if self.positions == 1:
            w = words[0]
            return [w.version, int(w.ready), w.placed & 0xFFFF, w.buffered & 0xFFFF]
        out = [self.version, self.positions]
        for w in words:
            out += [int(w.ready), w.placed & 0xFFFF, w.buffered & 0xFFFF]
        return out

    def encode_pc(self, words: Sequence[CasePcWords]) -> list[int]:
        """The PC's registers (``pc_words`` of them) from one :class:`CasePcWords` per position."""
        if len(words) != self.positions:
            raise ValueError(f"expected the PC words of {self.positions} position(s), got {len(words)}")
        return [v for w in words for v in w.encode()]

    def decode_pc(self, words: Sequence[int]) -> tuple[CasePcWords, ...]:
        """The PC's registers as one :class:`CasePcWords` per position (the PLC side)."""
        if len(words) != self.pc_words:
            raise ValueError(f"the case block's PC words are {self.pc_words} registers, got {list(words)!r}")
        return tuple(
            CasePcWords.decode(words[CASE_PC_WORDS * k : CASE_PC_WORDS * (k + 1)]) for k in range(self.positions)
        )

    def _check(self, position: int) -> None:
        if not 1 <= position <= self.positions:
            raise ValueError(f"case position {position} is outside 1..{self.positions}")


@dataclass(frozen=True)
class CasePlcWords:
    """The PLC-written words of one case position, decoded.

    ``version``: the block version (1: one position; 2: several).
    ``ready``: an empty (or the confirmed) case is in place under the chute (at this position).
    ``placed``: counts every newly confirmed case at this position (uint16, wraps; retentive).
    ``buffered``: counts items sent to the quarantine buffer although their lane code
    said "into the case" at this position (no case in place when they arrived; uint16, wraps).
    """

    version: int
    ready: bool
    placed: int
    buffered: int

    @classmethod
    def decode(cls, words: Sequence[int]) -> CasePlcWords:
        if len(words) != CASE_PLC_WORDS:
            raise ValueError(f"the case block's PLC words are {CASE_PLC_WORDS} registers, got {list(words)!r}")
        return cls(int(words[0]), words[1] == 1, int(words[2]), int(words[3]))


@dataclass(frozen=True)
class CasePcWords:
    """The PC-written words of one case position.

    ``number``: the case number (low 16 bits) of the open case, or of the last one closed.
    ``fill_wh``: its summed upper bound, Wh, rounded up.  ``limit_wh``: the limit, rounded down.
    ``items``: items assigned to it.  ``full``: the PC takes no more items into the case in
    place: swap it.  ``open_for``: the ``CASE_PLACED`` value the PC opened that case for
    (the PLC swaps only when ``full`` and ``open_for == CASE_PLACED``).
    """

    number: int = 0
    fill_wh: int = 0
    limit_wh: int = 0
    items: int = 0
    full: bool = False
    open_for: int = 0

    def encode(self) -> list[int]:
        return [
            self.number & 0xFFFF,
            min(0xFFFF, self.fill_wh),
            min(0xFFFF, self.limit_wh),
            min(0xFFFF, self.items),
            int(self.full),
            self.open_for & 0xFFFF,
        ]

    @classmethod
    def decode(cls, words: Sequence[int]) -> CasePcWords:
        if len(words) != CASE_PC_WORDS:
            raise ValueError(f"the case block's PC words are {CASE_PC_WORDS} registers, got {list(words)!r}")
        return cls(int(words[0]), int(words[1]), int(words[2]), int(words[3]), words[4] == 1, int(words[5]))


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
