"""The PC side of the mailbox handshake, over an abstract register transport.

:class:`MailboxLink` holds everything protocol-related of ``docs/plc-interface.md``
(sequence numbers, slot guarding, acknowledgements, heartbeats, the connect
handshake, protocol-fault detection, reconnection), so that the Modbus link
(:mod:`sorter.line.plc.modbus`) and the in-memory one (:mod:`sorter.line.plc.memory`)
behave alike; they only move registers.

Why this module is long (about 760 lines): it is one state machine (the handshake,
the ack poller timed to the PLC scan, reconnection and the contract checks share the
same slot and sequence state), and splitting it would spread that state over modules.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from sorter.errors import ConfigError, PlcError, PlcTimeoutError
from sorter.line.plc.link import Ack, AckTimeoutError, CaseBlockMissingError, LinkState, PlcLink, PlcProtocolError
from sorter.line.plc.protocol import (
    ACK_WORDS,
    BLOCKING_FAULTS,
    CASE_BLOCK_VERSION,
    CASE_BLOCK_VERSION_POSITIONS,
    CASE_HEADER_WORDS,
    CASE_PLC_WORDS,
    MAX_READ,
    PROTOCOL_VERSION,
    RESERVED_FAULT_BITS,
    SAFE_LANE_CODE,
    SEQ_MAX,
    SLOT_WORDS,
    STATUS_WORDS,
    AckStatus,
    CaseBlockMap,
    CasePcWords,
    CasePlcWords,
    MailboxEntry,
    PlcFault,
    RegisterMap,
    decode_counters,
    encode_case_slot,
    encode_slot,
    fault_names,
    status_name,
)

logger = logging.getLogger(__name__)

__all__ = ["LinkLost", "MailboxLink"]


class LinkLost(PlcError):
    """The transport is gone (connection refused, reset or closed)."""


@dataclass
class _Pending:
    seq: int
    item_id: int
    lane: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0
    acked_at: float = 0.0
    error: PlcError | None = None


class MailboxLink(PlcLink):
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
        case_block: CaseBlockMap | None = None,
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
        if case_block is not None and case_block.overlaps(self.register_map):
            raise ConfigError(
                f"the case block at {case_block.base}..{case_block.base + case_block.size - 1} overlaps "
                f"the mailbox at {self.register_map.base}..{self.register_map.base + self.register_map.size - 1}; "
                "give cases.base an address outside it (default 300)"
            )
        self.case_block = case_block
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
        """Read holding registers; raise LinkLost or PlcError."""

    @abc.abstractmethod
    async def _write(self, address: int, values: Sequence[int]) -> None:
        """Write holding registers in one request; raise LinkLost or PlcError."""

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
        except CaseBlockMissingError as err:
            self._last_error = str(err)
            self._closed = True  # a configuration mismatch: retrying cannot help
            raise CaseBlockMissingError(f"PLC at {self._describe()}: {err}") from err
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

    async def send_decision(
        self, item_id: int, lane: str, *, timeout_s: float, into_case: bool = False, case_position: int = 1
    ) -> Ack:
        encode_slot(1, item_id, lane)  # refuse a bad lane or item id before touching the link
        cb = self.case_block
        if into_case and cb is None:
            raise ValueError("into_case needs the case-station block: build the link with case_block=")
        if into_case and cb is not None and not 1 <= case_position <= cb.positions:
            raise ValueError(f"case_position={case_position!r} is outside the station's positions 1..{cb.positions}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be > 0 (the time left before the diverter)")
        start = time.monotonic()
        deadline = start + timeout_s
        await self._require_usable(f"decision for item {item_id} ({lane}) not delivered")
        slot, seq = await self._claim_slot(deadline, item_id)
        pending = _Pending(seq, item_id, lane)
        self._pending[slot] = pending
        words = encode_case_slot(seq, item_id, case_position) if into_case else encode_slot(seq, item_id, lane)
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

    async def read_case_station(self) -> tuple[CasePlcWords, ...]:
        cb = self.case_block
        if cb is None:
            raise PlcError("this link has no case-station block (cases disabled)")
        await self._require_connected("case station not read")
        words = await self._read_regs(cb.plc_address, cb.plc_words)
        try:
            return cb.decode_plc(words)
        except ValueError as err:
            raise PlcError(f"case station block at register {cb.base}: {err}") from err

    async def write_case_station(self, words: Sequence[CasePcWords]) -> None:
        cb = self.case_block
        if cb is None:
            raise PlcError("this link has no case-station block (cases disabled)")
        await self._require_connected("case station not written")
        await self._write_regs(cb.pc_address, cb.encode_pc(words))

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
            if safe_lane != SAFE_LANE_CODE:
                raise PlcError(
                    f"PLC reports safe lane code {safe_lane}, expected {int(SAFE_LANE_CODE)} (manual); "
                    "fix the PLC program: only manual is safe for unknown chemistry"
                )
            pc_area = await self._read_range(m.pc_heartbeat_address, 1 + SLOT_WORDS * m.slots)
            if self.case_block is not None:
                await self._check_case_block()
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
        logger.info(
            "PLC link up: %s (protocol %d, %d slots, scan %d ms, fault word 0x%04x)",
            self._describe(),
            version,
            slots,
            status[5],
            self._fault_word,
        )

    async def _check_case_block(self) -> None:
        """Packing is on: the PLC must have the case-station block, or no hazard item could reach a case."""
        cb = self.case_block
        assert cb is not None
        how = (
            "implement the case-station block of docs/plc-interface.md in the PLC program (block version "
            f"{cb.version} at register {cb.base}"
            + (f", {cb.positions} case positions" if cb.positions > 1 else "")
            + "), or set cases.base to where it is, or turn packing off "
            "with cases.enabled = false (the hazard lane then works as before)"
        )
        try:
            words = await self._read(cb.plc_address, CASE_PLC_WORDS if cb.positions == 1 else CASE_HEADER_WORDS)
        except LinkLost:
            raise
        except PlcError as err:
            raise CaseBlockMissingError(
                f"cases are enabled but the PLC has no case-station block at register {cb.base} "
                f"(reading it failed: {err}); {how}"
            ) from err
        version = words[0]
        if cb.positions == 1 and version == CASE_BLOCK_VERSION_POSITIONS:
            raise CaseBlockMissingError(
                f"the PLC's case block at register {cb.base} has {words[1]} case positions (block version "
                f"{CASE_BLOCK_VERSION_POSITIONS}) and cases.positions is 1; set cases.positions = {words[1]}"
            )
        if cb.positions > 1 and version == CASE_BLOCK_VERSION:
            raise CaseBlockMissingError(
                f"cases.positions = {cb.positions} but the PLC's case block at register {cb.base} has one case "
                f"position (block version {CASE_BLOCK_VERSION}); set cases.positions = 1, or give the PLC program "
                f"the {cb.positions}-position block (version {cb.version}, docs/plc-interface.md)"
            )
        if version != cb.version:
            raise CaseBlockMissingError(
                f"cases are enabled but the PLC reports case block version {version} at register "
                f"{cb.base}, expected {cb.version} (0: no block); {how}"
            )
        if cb.positions > 1 and words[1] != cb.positions:
            raise CaseBlockMissingError(
                f"cases.positions = {cb.positions} but the PLC's case block at register {cb.base} reports "
                f"CASE_POSITIONS = {words[1]}; set cases.positions = {words[1]} if the station has that many case "
                "positions, or correct the PLC program"
            )

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
        except LinkLost as err:
            self._lost(str(err))
            raise
        except PlcError as err:
            self._count_failure(err)
            raise
        self._failures = 0
        return values

    async def _read_range(self, address: int, count: int) -> list[int]:
        values: list[int] = []
        for offset in range(0, count, MAX_READ):
            values += await self._read_regs(address + offset, min(MAX_READ, count - offset))
        return values

    async def _write_regs(self, address: int, values: Sequence[int]) -> None:
        try:
            await self._write(address, values)
        except LinkLost as err:
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
                "header_changed",
                f"PLC header registers changed mid-run ({', '.join(changed)}: "
                + ", ".join(f"{v['at_connect']} -> {v['now']}" for v in changed.values())
                + "); stopped sending, re-running the connect handshake",
                {"changed": changed},
            )
            return
        heartbeat = words[2]
        if heartbeat != self._plc_heartbeat:
            if self._stale_seen and self._connected:
                gap = now - self._plc_heartbeat_seen_at
                self._stale_seen = False
                self._plc_heartbeat, self._plc_heartbeat_seen_at = heartbeat, now
                logger.warning(
                    "PLC heartbeat restored at %s after %.1f s without change: treated as a PLC program "
                    "start (STOP -> RUN, docs/plc-interface.md rule 8); re-running the connect handshake",
                    self._describe(),
                    gap,
                )
                self._lost("PLC program start (heartbeat restored after STOP)")
                return
            self._plc_heartbeat = heartbeat
            self._plc_heartbeat_seen_at = now
        elif now - self._plc_heartbeat_seen_at > self.heartbeat_timeout_s and not self._stale_seen:
            self._stale_seen = True
            logger.warning(
                "PLC heartbeat at %s unchanged for %.1f s: link faulted (PLC in STOP or its scan hung)",
                self._describe(),
                now - self._plc_heartbeat_seen_at,
            )
        if words[3] != self._fault_word:
            level = (
                logging.WARNING
                if words[3] & ~PlcFault.PC_HEARTBEAT_LOST or (words[3] and self._connected)
                else logging.INFO
            )
            logger.log(level, "PLC fault word now 0x%04x %s", words[3], sorted(fault_names(words[3])))
            if words[3] & RESERVED_FAULT_BITS and not self._fault_word & RESERVED_FAULT_BITS & words[3]:
                self._report_fault(
                    "reserved_fault_bits",
                    {"fault_word": words[3]},
                    f"PLC set reserved fault-word bits 0x{words[3] & RESERVED_FAULT_BITS:04x}; "
                    "no decision is sent while they are set",
                )
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
                    "undefined_ack_status",
                    f"PLC acknowledged seq {ack_seq} in slot {slot} with status {status}, "
                    f"which the contract does not define (0..{int(max(AckStatus))}); stopped sending, re-running the "
                    "connect handshake",
                    {"slot": slot, "ack_seq": ack_seq, "raw_status": status},
                    seq=ack_seq,
                    raw_status=status,
                )
                return
            # Status 0 answers nothing (a program start writes [standing seq, 0] into every slot).
            if ack_seq and status != AckStatus.NONE and ack_seq not in self._written[slot]:
                self._protocol_fault(
                    "ack_for_unwritten_seq",
                    f"PLC acknowledged seq {ack_seq} in slot {slot} (status {status}), a "
                    "seq this PC never wrote there; stopped sending, re-running the connect handshake",
                    {"slot": slot, "ack_seq": ack_seq, "raw_status": status},
                )
                return
            if (
                pending is not None
                and ack_seq == pending.seq
                and status != AckStatus.NONE
                and not pending.done.is_set()
            ):
                pending.status = status
                pending.acked_at = now
                pending.done.set()

    def _report_fault(self, kind: str, detail: dict[str, Any], message: str) -> None:
        self.protocol_faults += 1
        logger.error(
            "PLC protocol fault at %s: %s", self._describe(), message, extra={"plc_fault": kind, "detail": detail}
        )
        if self.on_protocol_fault is not None:
            try:
                self.on_protocol_fault(kind, {"message": message, **detail})
            except Exception:  # noqa: BLE001 - an observer must not break the link
                logger.exception("protocol fault observer failed")

    def _protocol_fault(
        self, kind: str, message: str, detail: dict[str, Any], *, seq: int | None = None, raw_status: int | None = None
    ) -> None:
        """The PLC broke the contract: alarm, record, stop sending, and re-run the handshake."""
        self._report_fault(kind, detail, message)
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = PlcProtocolError(
                    f"decision for item {pending.item_id} (seq {pending.seq}) not confirmed: {message}",
                    kind=kind,
                    detail=detail,
                    seq=pending.seq,
                    raw_status=raw_status if seq == pending.seq else None,
                )
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
