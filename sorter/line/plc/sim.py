"""A simulated PLC that implements the register contract of ``docs/plc-interface.md``.

Two layers:

- :class:`PlcModel` is the PLC program itself, written as a PLC would run it:
  once per scan it reads the PC-written registers (heartbeat, mailbox), latches
  new sequence numbers, validates and acknowledges them, tracks the items on
  the belt, and returns the PLC-written registers (status, counters,
  acknowledgements).  It does no I/O, so it is shared by
  :class:`sorter.line.plc.memory.MemoryPlc` and :class:`PlcSimulator`.
- :class:`PlcSimulator` serves that model over Modbus TCP with pymodbus's
  asynchronous server, on the loopback interface, for integration tests and
  for commissioning the PC side without a PLC (``sorter plc-sim``).

Item tracking: the real PLC learns about an item at the sensor bridge and
shifts it along with the belt encoder.  Here :meth:`PlcModel.expect` announces
an item and the monotonic time it reaches the diverter.  An announced item with
no accepted decision by then goes to the safe lane (``manual``) and counts as
``defaulted``; a decision arriving later is acknowledged ``late``.  A decision
for an item the PLC does not track is answered ``late`` by the contract (rule 9);
a rig without a sensor bridge (``untracked="apply"``, the default of
:class:`PlcSimulator` and :class:`~sorter.line.plc.memory.MemoryPlc`) applies it at once instead.

Program start (power-on, and STOP -> RUN: rule 8) latches every standing seq,
clears the pending table and the latched fault bits, and sets
``pc_heartbeat_lost`` until the PC heartbeat first changes.

Fault injection for tests: ``acking``, ``diverter_fault``, ``answer_status``
(acknowledge with a raw status while carrying out the real one),
:meth:`PlcModel.force_ack`, and the header attributes ``protocol_version``,
``slot_count``, ``safe_lane_code`` and ``scan_ms``.

Why this module is long (about 670 lines): the PLC program and the server that scans
it belong together (the server is the program's only host besides
:class:`~sorter.line.plc.memory.MemoryPlc`), and the program alone is half of it.
The command line (``sorter plc-sim``) lives in :mod:`sorter.line.cli`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sorter.errors import ConfigError, PlcError
from sorter.lanes import Lane
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.protocol import (
    ACK_WORDS,
    COUNTER_NAMES,
    LANE_NAMES,
    PROTOCOL_VERSION,
    SAFE_LANE_CODE,
    SLOT_WORDS,
    STATUS_WORDS,
    AckStatus,
    CaseBlockMap,
    PlcFault,
    RegisterMap,
    case_position_of,
    decode_slot,
)

logger = logging.getLogger(__name__)

# Diverted items remembered (late detection, `decisions`): a window, not the whole run.  100,000 entries
# (about 17 MB) made the demo's process grow by ~230 bytes an item for its first 100,000 items (issue 19);
# 10,000 are 100 s at 100 items/s, far longer than any decision can be late.
_HISTORY = 10_000


class PlcModel:
    """The PLC program of the divert mailbox, one :meth:`scan` at a time.

    Parameters
    ----------
    register_map : RegisterMap
        Addresses and ring size.
    scan_ms : float
        Nominal scan period (reported in the status block; the host runs the
        scans).
    pc_heartbeat_timeout_s : float
        Set :attr:`PlcFault.PC_HEARTBEAT_LOST` when the PC heartbeat has not
        changed for this long.
    decision_capacity : int
        Pending decisions the PLC can hold (announced items not yet at the
        diverter); beyond that a decision is refused with ``REJECTED_FULL``.

    Attributes
    ----------
    acking : bool
        ``False`` makes the program ignore the mailbox (nothing latched, no
        acknowledgements), e.g. to fill the PC's ring.
    diverter_fault : bool
        ``True`` raises :attr:`PlcFault.DIVERTER_FAULT`: decisions are refused
        and every item goes to the safe lane.
    untracked : {"late", "apply"}
        What a decision for an item never announced gets: ``"late"`` (the
        contract, rule 9: nothing is carried out) or ``"apply"`` (a rig without
        a sensor bridge: diverted at once).
    answer_status : int or None
        Fault injection: acknowledge every latched decision with this raw
        status word (e.g. 9), while carrying out the real outcome.
    protocol_version, slot_count, safe_lane_code : int
        The header words published (fault injection: change them mid-run).
    extra_faults : int
        Fault injection: bits OR-ed into the fault word (e.g. a reserved bit).
    case_station : CaseStationProgram or None
        The optional case-station block's program (``docs/plc-interface.md``): with it the
        program accepts lane code 5 (into the case; with N positions codes 5..4+N, into the case
        at position 1..N) and hands every item of the station's lane to it at the chute; its
        registers are scanned by the host (:meth:`scan_case`).

    Examples
    --------
    >>> from sorter.line.plc.protocol import RegisterMap, encode_slot
    >>> m = RegisterMap()
    >>> plc = PlcModel(m)
    >>> image = [0] * m.size
    >>> image[: m.plc_words] = plc.power_on(image, now=0.0)
    >>> image[m.pc_heartbeat_address - m.base] = 1  # a PC's heartbeat: without one, the safe lane
    >>> plc.expect(42, 0.5)  # item 42 is on the belt, at the diverter at t = 0.5 s
    >>> slot = m.slot_address(1) - m.base
    >>> image[slot : slot + 5] = encode_slot(1, 42, "li_ion")
    >>> out = plc.scan(image, now=0.01)
    >>> ack = m.ack_address(1) - m.base
    >>> out[ack : ack + 2]  # slot 1's sequence number, status 1: accepted
    [1, 1]
    >>> _ = plc.scan(image, now=0.6)  # the item reaches the diverter
    >>> str(plc.decisions[42])
    'li_ion'
    """

    def __init__(
        self,
        register_map: RegisterMap | None = None,
        *,
        scan_ms: float = 10.0,
        pc_heartbeat_timeout_s: float = 1.5,
        decision_capacity: int = 256,
        untracked: str = "late",
        case_station: CaseStationProgram | None = None,
    ) -> None:
        if untracked not in ("late", "apply"):
            raise ConfigError(f"untracked={untracked!r}: use 'late' (the contract) or 'apply' (no sensor bridge)")
        if not scan_ms > 0:
            raise ConfigError(f"scan_ms={scan_ms!r} must be > 0 (a PLC scans every 1-20 ms)")
        if not pc_heartbeat_timeout_s > 0:
            raise ConfigError(f"pc_heartbeat_timeout_s={pc_heartbeat_timeout_s!r} must be > 0 (1-2 s is usual)")
        if decision_capacity < 1:
            raise ConfigError(f"decision_capacity={decision_capacity!r} must be >= 1")
        self.register_map = register_map or RegisterMap()
        self.scan_ms = float(scan_ms)
        self.pc_heartbeat_timeout_s = pc_heartbeat_timeout_s
        self.decision_capacity = decision_capacity
        self.acking = True
        self.diverter_fault = False
        self.untracked = untracked
        self.answer_status: int | None = None
        self.protocol_version = PROTOCOL_VERSION
        self.slot_count = self.register_map.slots
        self.safe_lane_code = int(SAFE_LANE_CODE)
        self.extra_faults = 0
        self.case_station = case_station
        self.case_lane = case_station.lane if case_station is not None else Lane.HAZARD
        self.program_starts = 0
        self.scans = 0
        n = self.register_map.slots
        self._latched = [0] * n
        self._acks = [(0, 0)] * n
        self._heartbeat = 0
        self._pc_heartbeat: int | None = None
        self._pc_heartbeat_changed_at = 0.0
        self._pc_seen = False  # a PC heartbeat has counted at least once since the start
        self._told_waiting = False  # "no PC heartbeat yet" logged since the start
        self._latched_faults = PlcFault(0)
        self._live_faults = PlcFault(0)
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._tracked: dict[int, float] = {}  # item id -> due (monotonic s), not yet at the diverter
        self._pending: dict[int, int] = {}  # tracked item id -> accepted lane code
        self._resolved: OrderedDict[int, tuple[str, bool]] = OrderedDict()  # item -> (lane, defaulted)

    # -- what tests and the CLI look at --------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Items per lane actually diverted, plus ``defaulted``, ``late``, ``rejected``.

        ``manual`` includes the ``defaulted`` items (those sent to the safe
        lane for want of a valid decision in time).
        """
        return dict(self._counters)

    @property
    def decisions(self) -> dict[int, str]:
        """Lane actually applied per item id (most recent 10 000 items)."""
        return {item: lane for item, (lane, _) in self._resolved.items()}

    @property
    def faults(self) -> PlcFault:
        """Current fault word."""
        return self._latched_faults | self._live_faults

    def clear_faults(self) -> None:
        """Clear the latched fault bits (what the operator's reset on the HMI does)."""
        self._latched_faults = PlcFault(0)

    def force_ack(self, slot: int, seq: int, status: int) -> None:
        """Fault injection: make ``ACK[slot]`` read ``[seq, status]`` from the next scan on."""
        self._acks[slot] = (seq, status)

    def expect(self, item_id: int, due_monotonic: float) -> None:
        """Announce an item on the belt that reaches the diverter at ``due_monotonic``.

        Parameters
        ----------
        item_id : int
            Item id from the sensor bridge (uint32).
        due_monotonic : float
            :func:`time.monotonic` time at which the item reaches the diverter.
        """
        if not 0 <= item_id <= 0xFFFF_FFFF:
            raise ValueError(f"item_id {item_id!r} is not a uint32")
        if item_id in self._resolved or item_id in self._tracked:
            raise ValueError(f"item {item_id} is already on the belt or diverted; item ids must be unique")
        self._tracked[item_id] = due_monotonic

    # -- the program -----------------------------------------------------------

    def power_on(self, image: Sequence[int], now: float) -> list[int]:
        """Start (or restart) the program on a register image; return the PLC registers.

        The seq standing in each slot is taken as already latched, so a stale
        mailbox is never applied twice after a restart.  Pending decisions are
        lost with the rest of the volatile memory: those items will default to
        the safe lane.  Counters are retentive.
        """
        self._check_image(image)
        m = self.register_map
        for i in range(m.slots):
            seq = image[m.slot_address(i) - m.base]
            self._latched[i] = seq
            self._acks[i] = (seq, AckStatus.NONE)
        self._pending.clear()
        if self.case_station is not None:
            self.case_station.power_on()  # the pending decisions are lost with the volatile memory
        self._pc_heartbeat = image[m.pc_heartbeat_address - m.base]
        self._pc_heartbeat_changed_at = now
        # No PC heartbeat seen since the start: bit 0 stays set until PC_HEARTBEAT changes.
        self._pc_seen = False
        self._told_waiting = False
        self._live_faults = PlcFault.PC_HEARTBEAT_LOST
        self._latched_faults = PlcFault(0)  # a program start resets the latched bits, as the HMI reset does
        self.program_starts += 1
        return self._outputs()

    def scan(self, image: Sequence[int], now: float) -> list[int]:
        """One PLC scan over the register image; return the new PLC-written registers.

        Parameters
        ----------
        image : sequence of int
            All registers of the map, index 0 being ``register_map.base``.
        now : float
            Monotonic time of the scan, in seconds.

        Returns
        -------
        list of int
            ``register_map.plc_words`` registers to write at ``register_map.base``.
        """
        self._check_image(image)
        m = self.register_map
        self.scans += 1
        self._heartbeat = (self._heartbeat + 1) & 0xFFFF

        pc_heartbeat = image[m.pc_heartbeat_address - m.base]
        if pc_heartbeat != self._pc_heartbeat:
            # the first value read is where the register stands, not a count: a PC is seen once it changes
            self._pc_seen = self._pc_seen or self._pc_heartbeat is not None
            self._pc_heartbeat, self._pc_heartbeat_changed_at = pc_heartbeat, now
        if not self._pc_seen:
            self._live_faults |= PlcFault.PC_HEARTBEAT_LOST  # since the program start, no PC heartbeat yet
            if now - self._pc_heartbeat_changed_at > self.pc_heartbeat_timeout_s and not self._told_waiting:
                # nothing was lost: no PC has connected yet (the fault bit is set all the same)
                logger.info("simulated PLC: no PC heartbeat yet; waiting for a PC (items go to the safe lane)")
                self._told_waiting = True
        elif now - self._pc_heartbeat_changed_at > self.pc_heartbeat_timeout_s:
            if not self._live_faults & PlcFault.PC_HEARTBEAT_LOST:
                logger.warning("simulated PLC: PC heartbeat lost")
            self._live_faults |= PlcFault.PC_HEARTBEAT_LOST
        else:
            self._live_faults &= ~PlcFault.PC_HEARTBEAT_LOST
        if self.diverter_fault:
            self._live_faults |= PlcFault.DIVERTER_FAULT
        else:
            self._live_faults &= ~PlcFault.DIVERTER_FAULT

        if self.acking:
            for i in range(m.slots):
                offset = m.slot_address(i) - m.base
                words = image[offset : offset + SLOT_WORDS]
                seq = words[0]
                if seq != 0 and seq != self._latched[i]:
                    self._latched[i] = seq
                    status = self._latch(list(words), now)
                    self._acks[i] = (seq, status if self.answer_status is None else self.answer_status)

        # Items reach the diverter after this scan's mailbox: a decision latched
        # in the same scan is in time.
        for item_id, due in list(self._tracked.items()):
            if due <= now:
                del self._tracked[item_id]
                code = self._pending.pop(item_id, None)
                if code is None or self._live_faults & PlcFault.DIVERTER_FAULT:
                    position = self._case_position(code)
                    if position is not None:
                        assert self.case_station is not None
                        self.case_station.lost_in_transit(position)
                    self._divert(item_id, Lane.MANUAL, defaulted=True)
                else:
                    self._divert(item_id, self._lane_of(code), defaulted=False, code=code, now=now)
        return self._outputs()

    def _latch(self, words: list[int], now: float) -> AckStatus:
        slot = decode_slot(words)
        if not slot.check_ok:
            self._latched_faults |= PlcFault.CHECK_ERROR
            return self._reject(AckStatus.REJECTED_BAD_CHECK, slot.item_id)
        position = self._case_position(slot.lane_code)
        if slot.lane is None and position is None:
            return self._reject(AckStatus.REJECTED_BAD_LANE, slot.item_id)
        if self._live_faults:
            return self._reject(AckStatus.REJECTED_FAULT, slot.item_id)
        item_id = slot.item_id
        if item_id in self._resolved:
            _lane, defaulted = self._resolved[item_id]
            if defaulted:
                self._counters["late"] += 1
                logger.info("simulated PLC: decision for item %d arrived after it was diverted", item_id)
                return AckStatus.LATE
            return self._reject(AckStatus.REJECTED_DUPLICATE, item_id)
        if item_id in self._pending:
            return self._reject(AckStatus.REJECTED_DUPLICATE, item_id)
        if item_id not in self._tracked:
            if self.untracked == "late":  # rule 9: an item the PLC does not track cannot be diverted
                self._counters["late"] += 1
                logger.info("simulated PLC: decision for item %d, which it does not track: late", item_id)
                return AckStatus.LATE
            # a rig without a bridge: divert now
            self._divert(item_id, self._lane_of(slot.lane_code), defaulted=False, code=slot.lane_code, now=now)
            return AckStatus.ACCEPTED
        if len(self._pending) >= self.decision_capacity:
            self._latched_faults |= PlcFault.DECISION_OVERRUN
            return self._reject(AckStatus.REJECTED_FULL, item_id)
        self._pending[item_id] = slot.lane_code
        if position is not None:
            assert self.case_station is not None
            self.case_station.accept_into_case(position)
        return AckStatus.ACCEPTED

    def _case_position(self, code: int | None) -> int | None:
        """The case position a lane code sends its item into (codes 5.. with the case block), else None."""
        if self.case_station is None or code is None:
            return None
        return case_position_of(code, len(self.case_station.positions))

    def _lane_of(self, code: int) -> str:
        return self.case_lane if self._case_position(code) is not None else LANE_NAMES[code]

    def scan_case(self, pc_words: Sequence[int], now: float) -> list[int]:
        """One scan of the case-station block: the PC's words in, the PLC's words out."""
        assert self.case_station is not None
        return self.case_station.scan(pc_words, now)

    def _reject(self, status: AckStatus, item_id: int) -> AckStatus:
        self._counters["rejected"] += 1
        logger.info("simulated PLC: %s for item %d", status.name.lower(), item_id)
        return status

    def _divert(self, item_id: int, lane: str, *, defaulted: bool, code: int = 0, now: float = 0.0) -> None:
        if self.case_station is not None and lane == self.case_lane and not defaulted:
            self.case_station.arrive(item_id, into_case=self._case_position(code) or False, now=now)
        self._counters[lane] += 1
        if defaulted:
            self._counters["defaulted"] += 1
        self._resolved[item_id] = (lane, defaulted)
        while len(self._resolved) > _HISTORY:
            self._resolved.popitem(last=False)

    def _outputs(self) -> list[int]:
        words = [
            self.protocol_version,
            self.slot_count,
            self._heartbeat,
            int(self.faults) | self.extra_faults,
            self.safe_lane_code,
            min(0xFFFF, round(self.scan_ms)),
        ]
        for name in COUNTER_NAMES:
            value = self._counters[name] & 0xFFFF_FFFF
            words += [value >> 16, value & 0xFFFF]
        assert len(words) == STATUS_WORDS
        for seq, status in self._acks:
            words += [seq, int(status)]
        assert len(words) == STATUS_WORDS + ACK_WORDS * self.register_map.slots
        return words

    def _check_image(self, image: Sequence[int]) -> None:
        if len(image) != self.register_map.size:
            raise ValueError(f"register image has {len(image)} registers, the map needs {self.register_map.size}")


class PlcSimulator:
    """:class:`PlcModel` served over Modbus TCP by pymodbus's ``ModbusTcpServer``.

    The simulator holds one Modbus device (``device_id``) whose holding
    registers are exactly the interface map; other addresses answer
    ``ILLEGAL_ADDRESS``, other device ids ``GATEWAY_NO_RESPONSE``, and writes
    into the PLC-written registers are refused (``ILLEGAL_ADDRESS``).

    Parameters
    ----------
    host : str
        Address to listen on.  Must be a loopback address unless
        ``allow_remote`` is set: a fake PLC on the plant network could be
        mistaken for the real one.
    port : int
        TCP port; 0 picks a free port (read :attr:`port` after :meth:`start`).
    scan_ms : float
        Scan period of the simulated PLC.
    device_id : int
        Modbus unit id served.
    register_map : RegisterMap, optional
        Base address and ring size.
    pc_heartbeat_timeout_s : float
        PC heartbeat timeout of the simulated PLC.
    decision_capacity : int
        Pending decisions the simulated PLC can hold.
    allow_remote : bool
        Permit a non-loopback ``host``.
    untracked : {"apply", "late"}
        What a decision for an item never announced gets (see :class:`PlcModel`);
        ``"apply"`` by default, since a stand-alone simulator has no sensor bridge.
    case_station : CaseStationProgram or None
        Serve the case-station block too (at ``case_base``) and run this program.
    case_base : int
        PDU address of the case-station block.

    Examples
    --------
    >>> import asyncio
    >>> from sorter.line.plc import ModbusPlcLink
    >>> async def demo():
    ...     sim = PlcSimulator(port=0, scan_ms=5)
    ...     await sim.start()
    ...     try:
    ...         async with ModbusPlcLink("127.0.0.1", sim.port) as link:
    ...             ack = await link.send_decision(9, "hazard", timeout_s=5.0)
    ...     finally:
    ...         await sim.stop()
    ...     return ack.status, str(sim.decisions[9])
    >>> asyncio.run(demo())
    ('accepted', 'hazard')
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        scan_ms: float = 10.0,
        device_id: int = 1,
        register_map: RegisterMap | None = None,
        pc_heartbeat_timeout_s: float = 1.5,
        decision_capacity: int = 256,
        allow_remote: bool = False,
        untracked: str = "apply",
        case_station: CaseStationProgram | None = None,
        case_base: int = 300,
    ) -> None:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"simulator host {host!r} is not an IP address; pass 127.0.0.1") from None
        if not ip.is_loopback and not allow_remote:
            raise ConfigError(
                f"refusing to serve a simulated PLC on {host}: only loopback addresses are allowed, so that "
                "nothing on the plant network mistakes it for the real PLC (pass allow_remote=True to override)"
            )
        if not 0 <= port <= 65535:
            raise ConfigError(f"port {port!r} is out of range; pass 0 for a free port or 1..65535")
        if not 1 <= device_id <= 255:
            raise ConfigError(f"device_id {device_id!r} is out of range; pass 1..255")
        self.host = host
        self.device_id = device_id
        self.model = PlcModel(
            register_map,
            scan_ms=scan_ms,
            pc_heartbeat_timeout_s=pc_heartbeat_timeout_s,
            decision_capacity=decision_capacity,
            untracked=untracked,
            case_station=case_station,
        )
        self.register_map = self.model.register_map
        self.case_block = (
            CaseBlockMap(case_base, positions=len(case_station.positions)) if case_station is not None else None
        )
        if self.case_block is not None and self.case_block.overlaps(self.register_map):
            raise ConfigError(f"case block at {case_base} overlaps the mailbox registers; pass another case_base")
        self._requested_port = port
        self._port = 0
        self._server: Any = None
        self._scan_task: asyncio.Task[None] | None = None
        self._scanning = True
        self._restart = False
        self._scan_writing = False

    @property
    def port(self) -> int:
        """The TCP port listened on (the one picked when constructed with 0)."""
        return self._port or self._requested_port

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._server is not None

    @property
    def counters(self) -> dict[str, int]:
        """See :attr:`PlcModel.counters`."""
        return self.model.counters

    @property
    def decisions(self) -> dict[int, str]:
        """See :attr:`PlcModel.decisions`."""
        return self.model.decisions

    def expect(self, item_id: int, due_monotonic: float) -> None:
        """See :meth:`PlcModel.expect`."""
        self.model.expect(item_id, due_monotonic)

    def pause_scan(self) -> None:
        """Put the PLC in STOP: the server still answers, but the heartbeat freezes."""
        self._scanning = False

    def resume_scan(self) -> None:
        """Put the PLC back in RUN: a program start (rule 8) before the next scan."""
        if not self._scanning:
            self._restart = True
        self._scanning = True

    async def start(self) -> None:
        """Power on: fresh registers, listen, start scanning.

        Raises
        ------
        PlcError
            If the address cannot be listened on (port in use?).
        """
        if self._server is not None:
            return
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        m = self.register_map
        image = [0] * m.size
        image[: m.plc_words] = self.model.power_on(image, time.monotonic())
        blocks = [SimData(address=m.base, values=image, datatype=DataType.REGISTERS)]
        if self.case_block is not None and self.model.case_station is not None:
            case_image = self.model.case_station.outputs() + [0] * self.case_block.pc_words
            blocks.append(SimData(address=self.case_block.base, values=case_image, datatype=DataType.REGISTERS))
            blocks.sort(key=lambda b: b.address)
        device = SimDevice(id=self.device_id, simdata=blocks, action=self._guard)
        # id 0 stands for "any other unit id": answer with an exception instead of failing.
        other = SimDevice(
            id=0,
            simdata=[SimData(address=m.base, count=m.size, datatype=DataType.REGISTERS)],
            action=self._wrong_device,
        )
        port = self._port or self._requested_port  # a restart reuses the port picked the first time
        server = ModbusTcpServer([device, other], address=(self.host, port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:
            raise PlcError(
                f"simulated PLC cannot listen on {self.host}:{port} ({err}); is the port in use? pass port 0"
            ) from err
        self._server = server
        self._port = server.transport.sockets[0].getsockname()[1]
        self._scan_task = asyncio.get_running_loop().create_task(self._scan_loop(), name="plc-sim scan")
        logger.info("simulated PLC listening on %s:%d (device %d)", self.host, self._port, self.device_id)

    async def stop(self) -> None:
        """Power off: stop scanning and close the server and its connections."""
        task, self._scan_task = self._scan_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            logger.info("simulated PLC on %s:%d stopped", self.host, self._port)

    async def __aenter__(self) -> PlcSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _scan_loop(self) -> None:
        m = self.register_map
        period = self.model.scan_ms / 1000.0
        next_at = time.monotonic()
        while True:
            if self._scanning:
                try:
                    await self._scan_once(m)
                except Exception:
                    # Like a PLC program fault: the scan stops, so the heartbeat freezes.
                    logger.exception("simulated PLC scan failed; the PLC stops scanning")
                    raise
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: skip, do not burst
                next_at, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)

    async def _scan_once(self, m: RegisterMap) -> None:
        server = self._server
        image = await server.async_getValues(self.device_id, 3, m.base, m.size)
        if self._restart:  # STOP -> RUN is a program start
            self._restart = False
            out = self.model.power_on(image, time.monotonic())
        else:
            out = self.model.scan(image, time.monotonic())
        # Only the scan may write the PLC area; _guard checks this flag.  The
        # datastore call does not yield to the loop, so no client request
        # can slip in while the flag is set.
        self._scan_writing = True
        try:
            await server.async_setValues(self.device_id, 16, m.base, out)
            cb = self.case_block
            if cb is not None:
                pc_words = await server.async_getValues(self.device_id, 3, cb.pc_address, cb.pc_words)
                await server.async_setValues(
                    self.device_id, 16, cb.plc_address, self.model.scan_case(pc_words, time.monotonic())
                )
        finally:
            self._scan_writing = False

    async def _guard(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> Any:
        from pymodbus.constants import ExcCodes

        if values is not None and not self._scan_writing:
            if self.register_map.base <= address < self.register_map.base + self.register_map.plc_words:
                return ExcCodes.ILLEGAL_ADDRESS
            cb = self.case_block
            if cb is not None and cb.plc_address <= address < cb.pc_address:
                return ExcCodes.ILLEGAL_ADDRESS
        return None

    async def _wrong_device(self, *_args: object) -> Any:
        from pymodbus.constants import ExcCodes

        return ExcCodes.GATEWAY_NO_RESPONSE
