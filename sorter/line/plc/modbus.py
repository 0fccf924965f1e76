"""The PLC link over Modbus TCP (pymodbus ``AsyncModbusTcpClient``)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from sorter.errors import ConfigError, PlcError
from sorter.line.plc.mailbox import LinkLost, MailboxLink
from sorter.line.plc.protocol import CaseBlockMap, RegisterMap

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymodbus.client import AsyncModbusTcpClient

__all__ = ["ModbusPlcLink", "check_target"]


def check_target(host: str, port: int, device_id: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The PLC's address; :class:`ConfigError` for a host name, a broadcast, or a port or id out of range."""
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


class ModbusPlcLink(MailboxLink):
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
    case_block : CaseBlockMap, optional
        The case-station block's address, when packing is on (``[cases] enabled``):
        :meth:`connect` then refuses a PLC without the block.
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
        case_block: CaseBlockMap | None = None,
    ) -> None:
        self._ip = check_target(host, port, device_id)
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
            case_block=case_block,
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
                raise LinkLost(f"{what}: not connected to {self._describe()}")
            # pymodbus enforces request_timeout_s itself; this outer bound only guards against a hang.
            response = await asyncio.wait_for(make_call(client), timeout=2 * self.request_timeout_s + 0.5)
        except ConnectionException as err:
            raise LinkLost(f"{what}: {err}") from err
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
