"""The PLC link: the register contract, the PC side's links, and a simulated PLC.

- :mod:`~sorter.line.plc.protocol`: the contract both sides share (lane codes, ack
  codes, fault bits, register map, slot codec, CRC, the PLC item id).
- :mod:`~sorter.line.plc.caseblock`: the optional case-station block's registers and codes
  (re-exported by ``protocol``).
- :mod:`~sorter.line.plc.link`: :class:`PlcLink`, the interface the controller uses,
  with :class:`Ack` and the link's errors.
- :mod:`~sorter.line.plc.mailbox`: the PC side of the mailbox handshake, shared by
- :mod:`~sorter.line.plc.modbus` (:class:`ModbusPlcLink`, the real line) and
- :mod:`~sorter.line.plc.memory` (:class:`MemoryPlc`, an in-process PLC for tests).
- :mod:`~sorter.line.plc.casesim`: the reference program of the optional case-station block
  (:class:`~sorter.line.plc.casesim.CaseStationProgram`), run beside the mailbox program.
- :mod:`~sorter.line.plc.sim`: the reference PLC program (:class:`~sorter.line.plc.sim.PlcModel`)
  and its Modbus TCP server (:class:`~sorter.line.plc.sim.PlcSimulator`, ``sorter plc-sim``).

The contract is specified in ``docs/plc-interface.md``.  The names below are the
package's public surface; the PLC side (``sim``) imports only ``protocol``.
"""

from __future__ import annotations

from sorter.line.plc.link import Ack, AckTimeoutError, LinkState, PlcLink, PlcProtocolError
from sorter.line.plc.memory import MemoryPlc
from sorter.line.plc.modbus import ModbusPlcLink
from sorter.line.plc.protocol import (
    LANE_CODES,
    LANE_NAMES,
    PROTOCOL_VERSION,
    SLOT_WORDS,
    AckStatus,
    LaneCode,
    MailboxEntry,
    PlcFault,
    RegisterMap,
    crc16_modbus,
    decode_slot,
    encode_slot,
    plc_item_id,
)

__all__ = [
    "LANE_CODES",
    "LANE_NAMES",
    "PROTOCOL_VERSION",
    "SLOT_WORDS",
    "Ack",
    "AckStatus",
    "AckTimeoutError",
    "LaneCode",
    "LinkState",
    "MailboxEntry",
    "MemoryPlc",
    "ModbusPlcLink",
    "PlcFault",
    "PlcLink",
    "PlcProtocolError",
    "RegisterMap",
    "crc16_modbus",
    "decode_slot",
    "encode_slot",
    "plc_item_id",
]
