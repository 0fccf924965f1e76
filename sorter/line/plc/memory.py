"""An in-process PLC behind the same register contract: the PLC link for tests.

python-can's ``VirtualBus`` to :class:`~sorter.line.plc.modbus.ModbusPlcLink`'s real bus:
the PC side is the same handshake code (:class:`~sorter.line.plc.mailbox.MailboxLink`),
the PLC side is the reference program (:class:`~sorter.line.plc.sim.PlcModel`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from sorter.errors import ConfigError, PlcError
from sorter.line.plc.mailbox import LinkLost, MailboxLink
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.protocol import CaseBlockMap, RegisterMap
from sorter.line.plc.sim import PlcModel

__all__ = ["MemoryPlc"]


class MemoryPlc(MailboxLink):
    """A PLC link to an in-process PLC that runs the same register contract.

    The PLC side is :class:`sorter.line.plc.sim.PlcModel` scanning an in-memory
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
        :class:`sorter.line.plc.sim.PlcModel`); ``"apply"``: diverted at once.
    case_block : CaseBlockMap or None
        The PC side expects the case-station block there (``[cases] enabled``).
    case_station : CaseStationProgram or None
        The PLC side has the block (at ``case_station_base``, by default ``case_block``'s
        base or 300) and runs this program; ``None``: a PLC without the block.
    case_station_base : int or None
        Where the PLC's block is (to test a mismatch).
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
    ...     return str(plc.model.decisions[7]), plc.model.counters["defaulted"]
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
        case_block: CaseBlockMap | None = None,
        case_station: CaseStationProgram | None = None,
        case_station_base: int | None = None,
        **link_options: Any,
    ) -> None:
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
        super().__init__(register_map=register_map, case_block=case_block, **options)
        if latency_s < 0:
            raise ConfigError(f"latency_s={latency_s} must be >= 0")
        self.latency_s = latency_s
        self.model: PlcModel = PlcModel(
            self.register_map,
            scan_ms=scan_ms,
            pc_heartbeat_timeout_s=pc_heartbeat_timeout_s,
            decision_capacity=decision_capacity,
            untracked=untracked,
            case_station=case_station,
        )
        self._image = [0] * self.register_map.size
        self.plc_case_block: CaseBlockMap | None = None
        if case_station is not None:
            base = (
                case_station_base
                if case_station_base is not None
                else (case_block.base if case_block is not None else CaseBlockMap().base)
            )
            self.plc_case_block = CaseBlockMap(base, positions=len(case_station.positions))
        self._case_image = [0] * (self.plc_case_block or CaseBlockMap()).size
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
        cb = self.plc_case_block
        if cb is not None and cb.pc_address <= address and address + len(values) <= cb.base + cb.size:
            offset = address - cb.base
            self._case_image[offset : offset + len(values)] = [int(v) & 0xFFFF for v in values]
            return
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
            if self.model.case_station is not None:
                out = self.model.case_station.outputs()
                self._case_image[: len(out)] = out
            self._scan_task = asyncio.get_running_loop().create_task(self._scan_loop(), name="memory-plc scan")
        self._open_session = self._session

    def _drop_transport(self) -> None:
        return None

    async def _scan_loop(self) -> None:
        period = self.model.scan_ms / 1000.0
        next_at = time.monotonic()
        while True:
            if self._scanning:
                now = time.monotonic()
                out = self.model.scan(self._image, now)
                self._image[: len(out)] = out
                cb = self.plc_case_block
                if cb is not None:
                    self._case_image[: cb.plc_words] = self.model.scan_case(self._case_image[cb.plc_words :], now)
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (busy loop): do not try to catch up with a burst of scans
                next_at, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)

    def _check_session(self) -> None:
        if not self._reachable or self._open_session != self._session:
            raise LinkLost("in-memory PLC unreachable")

    async def _read(self, address: int, count: int) -> list[int]:
        self._check_session()
        await asyncio.sleep(self.latency_s)
        self._check_session()
        m = self.register_map
        cb = self.plc_case_block
        if cb is not None and cb.base <= address and address + count <= cb.base + cb.size:
            return self._case_image[address - cb.base : address - cb.base + count]
        if address < m.base or address + count > m.base + m.size:
            raise PlcError(f"registers {address}..{address + count - 1} outside the map: Modbus exception 2")
        return self._image[address - m.base : address - m.base + count]

    async def _write(self, address: int, values: Sequence[int]) -> None:
        self._check_session()
        await asyncio.sleep(self.latency_s)
        self._check_session()
        self.write_registers(address, values)
