"""A PLC rig for the link tests: a PLC (simulated over Modbus, or in memory) and a link to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sorter.errors import PlcError
from sorter.line.plc import SLOT_WORDS, MemoryPlc, ModbusPlcLink, RegisterMap, decode_slot
from sorter.line.plc.sim import PlcSimulator

BACKENDS = ["modbus", "memory"]
WAIT_S = 10.0  # upper bound for anything that should happen "soon"; only there to avoid hangs
LINK_OPTIONS: dict[str, Any] = {
    "heartbeat_timeout_s": 0.5,
    "request_timeout_s": 0.5,
    "reconnect_min_s": 0.02,
    "reconnect_max_s": 0.2,
    "poll_interval_s": 0.001,
    "rewrite_interval_s": 0.02,
}


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


async def eventually_async(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


class Rig:
    """A PLC (simulated over Modbus, or in memory) and a connected link to it."""

    def __init__(
        self,
        backend: str,
        *,
        scan_ms: float = 2.0,
        pc_heartbeat_timeout_s: float = 10.0,
        heartbeat: bool = True,
        register_map: RegisterMap | None = None,
    ) -> None:
        self.backend = backend
        self.map = register_map or RegisterMap()
        self.sim: PlcSimulator | None = None
        self.link: ModbusPlcLink | MemoryPlc
        if backend == "modbus":
            self.sim = PlcSimulator(
                port=0, scan_ms=scan_ms, pc_heartbeat_timeout_s=pc_heartbeat_timeout_s, register_map=self.map
            )
            self.model = self.sim.model
        else:
            self.link = MemoryPlc(
                scan_ms=scan_ms, pc_heartbeat_timeout_s=pc_heartbeat_timeout_s, register_map=self.map, **LINK_OPTIONS
            )
            self.model = self.link.model
        self._heartbeat = heartbeat
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        if self.sim is not None:
            await self.sim.start()
            self.link = ModbusPlcLink("127.0.0.1", self.sim.port, register_map=self.map, **LINK_OPTIONS)
        await self.link.connect()
        if self._heartbeat:
            self._heartbeat_task = asyncio.create_task(self.link.run_heartbeat(0.05))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        await self.link.close()
        if self.sim is not None:
            await self.sim.stop()

    async def plc_down(self) -> None:
        if self.sim is not None:
            await self.sim.stop()
        else:
            self.link.set_reachable(False)

    async def plc_up(self) -> None:
        if self.sim is not None:
            await self.sim.start()
        else:
            self.link.set_reachable(True)

    def pause_scan(self) -> None:
        (self.sim or self.link).pause_scan()

    def resume_scan(self) -> None:
        (self.sim or self.link).resume_scan()

    async def read(self, address: int, count: int) -> list[int]:
        """Read registers as another Modbus master would."""
        if self.sim is None:
            return self.link.registers[address - self.map.base : address - self.map.base + count]
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient("127.0.0.1", port=self.sim.port, reconnect_delay=0, timeout=2, retries=0)
        try:
            assert await client.connect()
            response = await client.read_holding_registers(address, count=count, device_id=1)
            assert not response.isError(), response
            return list(response.registers)
        finally:
            client.close()

    async def write(self, address: int, values: list[int]) -> bool:
        """Write registers as another Modbus master would; False if the PLC refused."""
        if self.sim is None:
            try:
                self.link.write_registers(address, values)
            except PlcError:
                return False
            return True
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient("127.0.0.1", port=self.sim.port, reconnect_delay=0, timeout=2, retries=0)
        try:
            assert await client.connect()
            response = await client.write_registers(address, values, device_id=1)
            return not response.isError()
        finally:
            client.close()

    async def ack_of(self, slot: int) -> tuple[int, int]:
        seq, status = await self.read(self.map.ack_address(slot), 2)
        return seq, status

    async def wait_scans(self, count: int) -> None:
        target = self.model.scans + count
        await eventually(lambda: self.model.scans >= target, f"{count} PLC scans")

    async def wait_written(self, item_ids: set[int]) -> None:
        """Wait until the mailbox holds decisions for all ``item_ids``."""

        async def check() -> bool:
            words = await self.read(self.map.slot_address(0), SLOT_WORDS * self.map.slots)
            seen = {decode_slot(words[i : i + SLOT_WORDS]).item_id for i in range(0, len(words), SLOT_WORDS)}
            return item_ids <= seen

        await eventually_async(check, f"decisions for {sorted(item_ids)} in the mailbox")


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=60))  # type: ignore[arg-type]
