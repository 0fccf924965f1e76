"""The register contract of the optional case-station block (``docs/plc-interface.md``, "Case station block").

Part of the contract both sides of the wire share, like :mod:`sorter.line.plc.protocol` (which
re-exports every name here): the block's version, its lane codes ("into the case at position p"),
where its registers are (:class:`CaseBlockMap`: one position is block version 1, several are
version 2) and its words (:class:`CasePlcWords`, :class:`CasePcWords`).  It imports nothing of
either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from sorter.errors import ConfigError

__all__ = [
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
    "case_lane_code",
    "case_position_of",
]


class _Span(Protocol):
    """Any register area with a first address and a size (the mailbox's :class:`RegisterMap`)."""

    @property
    def base(self) -> int: ...

    @property
    def size(self) -> int: ...


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

    def overlaps(self, m: _Span) -> bool:
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
