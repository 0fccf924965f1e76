"""The PLC register contract, against pymodbus's real server and the in-memory PLC.

Every contract test runs twice: ``modbus`` drives :class:`PlcSimulator`
(pymodbus ``ModbusTcpServer`` on 127.0.0.1, free port) through
:class:`ModbusPlcLink`; ``memory`` drives :class:`MemoryPlc`.  Tests run their
coroutines with :func:`asyncio.run`; waits use generous timeouts only to
avoid hangs, never to assert speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorter import LANES
from sorter.cli import main as sorter_main
from sorter.errors import ConfigError, PlcError, PlcTimeoutError
from sorter.lanes import Lane
from sorter.line.plc import (
    LANE_CODES,
    SLOT_WORDS,
    Ack,
    AckTimeoutError,
    LaneCode,
    MemoryPlc,
    ModbusPlcLink,
    PlcFault,
    RegisterMap,
    crc16_modbus,
    decode_slot,
    encode_slot,
)
from sorter.line.plc.sim import PlcSimulator
from tests.line.plc_rig import BACKENDS, LINK_OPTIONS, WAIT_S, Rig, eventually, eventually_async, run

# --------------------------------------------------------------------------
# Slot codec and register map (pure)
# --------------------------------------------------------------------------


def test_lane_codes_cover_the_package_lanes_and_manual_is_safe() -> None:
    assert tuple(LANE_CODES) == LANES
    assert dict(LANE_CODES) == {"lead_acid": 1, "li_ion": 2, "hazard": 3, "manual": 4}
    assert LaneCode.NONE == 0
    assert LANE_CODES[Lane.MANUAL] == LaneCode.MANUAL == 4


def test_crc_matches_modbus_rtu_reference_frame() -> None:
    # Modbus RTU "read 1 holding register at 0 from unit 1" is 01 03 00 00 00 01, CRC bytes 84 0A.
    assert crc16_modbus([0x0103, 0x0000, 0x0001]) == 0x0A84


@given(
    seq=st.integers(1, 0xFFFF),
    item_id=st.integers(0, 0xFFFF_FFFF),
    lane=st.sampled_from(LANES),
)
def test_slot_round_trips(seq: int, item_id: int, lane: str) -> None:
    words = encode_slot(seq, item_id, lane)
    assert len(words) == SLOT_WORDS and all(0 <= w <= 0xFFFF for w in words)
    slot = decode_slot(words)
    assert (slot.seq, slot.item_id, slot.lane, slot.check_ok) == (seq, item_id, lane, True)


@given(
    item_id=st.integers(0, 0xFFFF_FFFF),
    index=st.integers(0, SLOT_WORDS - 1),
    flip=st.integers(1, 0xFFFF),
)
def test_check_word_catches_any_change_to_one_register(item_id: int, index: int, flip: int) -> None:
    words = encode_slot(3, item_id, "li_ion")
    words[index] ^= flip
    assert not decode_slot(words).check_ok


@pytest.mark.parametrize(
    "seq, item_id, lane",
    [
        (0, 1, "li_ion"),
        (0x10000, 1, "li_ion"),
        (1, -1, "li_ion"),
        (1, 2**32, "li_ion"),
        (1, 1, "lead-acid"),
        (1, 1, LaneCode.NONE),
        (1, 1, 9),
    ],
)
def test_encode_refuses_out_of_range_values(seq: int, item_id: int, lane: Any) -> None:
    with pytest.raises(ValueError):
        encode_slot(seq, item_id, lane)


def test_decode_refuses_wrong_length() -> None:
    with pytest.raises(ValueError, match="5 register values"):
        decode_slot([1, 2, 3])


def test_register_map_is_the_documented_one() -> None:
    m = RegisterMap()
    assert (m.status_address, m.ack_address(0), m.ack_address(7), m.pc_heartbeat_address) == (100, 120, 134, 136)
    assert [m.slot_address(i) for i in range(8)] == [137 + 5 * i for i in range(8)]
    assert m.size == 77 and m.base + m.size - 1 == 176
    assert m.plc_words <= 125  # status and acks fit one FC3 read
    with pytest.raises(ConfigError):
        RegisterMap(slots=0)
    with pytest.raises(ConfigError):
        RegisterMap(base=65500)


# --------------------------------------------------------------------------
# The contract, on both backends
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_decision_is_acked_and_applied_to_its_lane(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            assert rig.link.state == "connected"
            acks = [await rig.link.send_decision(100 + i, lane, timeout_s=WAIT_S) for i, lane in enumerate(LANES)]
            for i, (ack, lane) in enumerate(zip(acks, LANES)):
                assert isinstance(ack, Ack)
                assert (ack.item_id, ack.lane, ack.status, ack.accepted) == (100 + i, lane, "accepted", True)
                assert ack.rtt_s > 0
                assert rig.model.decisions[100 + i] == lane
            counters = await rig.link.read_counters()
            assert counters == rig.model.counters
            assert {lane: counters[lane] for lane in LANES} == dict.fromkeys(LANES, 1)
            assert counters["defaulted"] == counters["late"] == counters["rejected"] == 0
            with pytest.raises(ValueError, match="unknown lane"):
                await rig.link.send_decision(1, "lead-acid", timeout_s=1.0)

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_rewriting_the_same_seq_does_not_count_twice(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            ack = await rig.link.send_decision(7, "li_ion", timeout_s=WAIT_S)
            slot = ack.seq % rig.map.slots
            before = rig.model.counters
            # Another copy of exactly the same write (a retry whose first answer got lost).
            assert await rig.write(rig.map.slot_address(slot), encode_slot(ack.seq, 7, "li_ion"))
            await rig.wait_scans(5)
            assert rig.model.counters == before
            assert await rig.ack_of(slot) == (ack.seq, 1)

            # The link's own retries: the PLC ignores the mailbox for a while, the link keeps
            # rewriting the same seq, then the PLC latches it exactly once.
            rig.model.acking = False
            task = asyncio.create_task(rig.link.send_decision(8, "hazard", timeout_s=WAIT_S))
            await rig.wait_written({8})
            await asyncio.sleep(5 * LINK_OPTIONS["rewrite_interval_s"])
            rig.model.acking = True
            second = await task
            assert second.accepted
            await rig.wait_scans(5)
            after = rig.model.counters
            assert (after["hazard"], after["li_ion"], after["rejected"]) == (1, 1, 0)

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_decisions_in_flight_use_distinct_slots(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            n = rig.map.slots
            rig.model.acking = False
            items = {200 + i: LANES[i % len(LANES)] for i in range(n)}
            tasks = [
                asyncio.create_task(rig.link.send_decision(i, lane, timeout_s=WAIT_S)) for i, lane in items.items()
            ]
            await rig.wait_written(set(items))  # all n in the ring at once, none overwritten
            rig.model.acking = True
            acks = await asyncio.gather(*tasks)
            assert all(a.accepted for a in acks)
            assert len({a.seq for a in acks}) == n
            assert {a.seq % n for a in acks} == set(range(n))
            assert {i: rig.model.decisions[i] for i in items} == items

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_ring_waits_for_a_free_slot_or_times_out_clearly(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            n = rig.map.slots
            rig.model.acking = False
            # One more than the ring holds: the extra decision waits for a slot.
            tasks = [
                asyncio.create_task(rig.link.send_decision(300 + i, "li_ion", timeout_s=WAIT_S)) for i in range(n + 1)
            ]
            await rig.wait_written({300 + i for i in range(n)} - {300 + n})
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in tasks)
            rig.model.acking = True
            acks = await asyncio.gather(*tasks)
            assert all(a.accepted for a in acks) and rig.model.counters["li_ion"] == n + 1

            rig.model.acking = False
            results = await asyncio.gather(
                *(rig.link.send_decision(400 + i, "li_ion", timeout_s=0.3) for i in range(n + 1)),
                return_exceptions=True,
            )
            assert all(isinstance(r, PlcTimeoutError) for r in results), results
            assert any("mailbox slots are busy" in str(r) for r in results)
            assert sum("no acknowledgement" in str(r) for r in results) == n

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timed_out_decision_names_the_seq_it_was_written_with(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            rig.model.acking = False
            with pytest.raises(AckTimeoutError) as err:
                await rig.link.send_decision(500, "li_ion", timeout_s=0.2)
            assert err.value.seq is not None
            slot = err.value.seq % rig.map.slots
            words = await rig.read(rig.map.slot_address(slot), SLOT_WORDS)
            # The PLC may still latch it: the seq in the error is the one standing in the mailbox.
            assert decode_slot(words).seq == err.value.seq and decode_slot(words).item_id == 500

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_ack_that_arrives_between_polls_is_read_before_giving_up(backend: str) -> None:
    """The PLC's answer is the truth: a decision it accepted is never reported as timed out."""

    async def scenario() -> None:
        slow_poll = {**LINK_OPTIONS, "poll_interval_s": 5.0, "rewrite_interval_s": 5.0, "heartbeat_timeout_s": 5.0}
        sim: PlcSimulator | None = None
        link: ModbusPlcLink | MemoryPlc
        if backend == "modbus":
            sim = PlcSimulator(port=0, scan_ms=100, pc_heartbeat_timeout_s=10.0)
            await sim.start()
            link = ModbusPlcLink("127.0.0.1", sim.port, **slow_poll)
        else:
            link = MemoryPlc(scan_ms=100, pc_heartbeat_timeout_s=10.0, **slow_poll)
        try:
            await link.connect()
            # Written at once, polled once at once (before the 100 ms scan latches it), then
            # the poller sleeps 5 s: only the last read at the deadline can see the ack.
            ack = await link.send_decision(600, "hazard", timeout_s=0.35)
            assert ack.accepted and ack.seq > 0
        finally:
            await link.close()
            if sim is not None:
                await sim.stop()

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ack_polls_follow_the_plc_scan_instead_of_spinning(backend: str) -> None:
    """While decisions wait, the link reads about twice per PLC scan (just before the next scan
    can come, then until it has come), not once per poll interval; acks are still seen at once."""

    async def scenario() -> None:
        async with Rig(backend, scan_ms=20.0) as rig:
            reads = 0
            read = rig.link._read

            async def counting(address: int, count: int) -> list[int]:
                nonlocal reads
                reads += 1
                return await read(address, count)

            rig.link._read = counting  # type: ignore[method-assign]
            rig.model.acking = False  # decisions wait: the poller runs for the whole window
            t0 = time.monotonic()
            waiting = asyncio.create_task(rig.link.send_decision(700, "li_ion", timeout_s=WAIT_S))
            await asyncio.sleep(0.4)
            scans = (time.monotonic() - t0) / 0.020
            rig.model.acking = True
            t_on = time.monotonic()
            ack = await waiting
            assert ack.accepted
            # poll_interval is 1 ms: spinning would be ~20 reads per scan; following the scan is
            # about 2 (up to 6 seen on a loaded CI machine, where scans and wake-ups jitter).
            assert reads <= 10 * scans, (reads, scans)
            # The next scan latches it and the poller sees it then (generous bound: timing in CI).
            assert time.monotonic() - t_on < 0.25

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_link_sees_plc_heartbeat_and_faults_when_it_stops(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            first = rig.link.plc_heartbeat
            await eventually(lambda: rig.link.plc_heartbeat != first, "the PLC heartbeat to advance")
            assert rig.link.state == "connected"

            rig.pause_scan()  # PLC in STOP: it still answers, its counter freezes
            await eventually(lambda: rig.link.state == "faulted", "the link to fault")
            with pytest.raises(PlcError, match="heartbeat") as err:
                await asyncio.wait_for(rig.link.send_decision(1, "li_ion", timeout_s=WAIT_S), WAIT_S)
            assert not isinstance(err.value, PlcTimeoutError)  # refused at once, not after timeout_s

            rig.resume_scan()
            await eventually(lambda: rig.link.state == "connected", "the link to recover")
            assert (await rig.link.send_decision(2, "li_ion", timeout_s=WAIT_S)).accepted

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_stale_pc_heartbeat_sets_the_plc_fault_bit(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend, pc_heartbeat_timeout_s=0.3, heartbeat=False) as rig:

            async def pc_heartbeat_lost() -> bool:
                await rig.link.read_counters()  # any read refreshes the fault word
                return "pc_heartbeat_lost" in rig.link.plc_faults

            await eventually_async(pc_heartbeat_lost, "the PLC to flag the PC heartbeat")
            assert rig.model.faults & PlcFault.PC_HEARTBEAT_LOST
            # The PC sends nothing while the PLC reports a blocking fault bit: refused at once.
            with pytest.raises(PlcError, match="pc_heartbeat_lost") as err:
                await rig.link.send_decision(10, "li_ion", timeout_s=WAIT_S)
            assert not isinstance(err.value, PlcTimeoutError)
            # The PLC side of the contract: a decision written anyway (here by another master) is refused.
            assert await rig.write(rig.map.slot_address(3), encode_slot(3, 10, "li_ion"))
            await rig.wait_scans(3)
            assert await rig.ack_of(3) == (3, 5)  # rejected_fault
            assert 10 not in rig.model.decisions

            # ... and the link took that ack of a seq it never wrote as a protocol fault, then reconnected.
            async def flagged_and_back() -> bool:
                with contextlib.suppress(PlcError):
                    await rig.link.read_counters()
                return rig.link.protocol_faults == 1 and rig.link.state == "connected"

            await eventually_async(flagged_and_back, "the link to flag the foreign ack and reconnect")

            async def healthy() -> bool:
                await rig.link.heartbeat()
                return "pc_heartbeat_lost" not in rig.link.plc_faults

            await eventually_async(healthy, "the fault bit to clear once the PC heartbeat moves")
            assert (await rig.link.send_decision(11, "li_ion", timeout_s=WAIT_S)).accepted

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_plc_stopping_mid_run_fails_fast_and_the_link_reconnects(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            rig.model.acking = False
            waiting = asyncio.create_task(rig.link.send_decision(20, "li_ion", timeout_s=60.0))
            await rig.wait_written({20})
            await rig.plc_down()
            with pytest.raises(PlcError) as err:
                await asyncio.wait_for(waiting, WAIT_S)
            assert not isinstance(err.value, PlcTimeoutError)  # failed because the link dropped
            assert rig.link.state in ("down", "connecting")
            with pytest.raises(PlcError, match="not delivered"):  # refused at once while down
                await asyncio.wait_for(rig.link.send_decision(21, "li_ion", timeout_s=60.0), WAIT_S)
            with pytest.raises(PlcError):
                await rig.link.read_counters()

            await rig.plc_up()
            rig.model.acking = True
            await eventually(lambda: rig.link.state == "connected", "the link to reconnect by itself")
            ack = await rig.link.send_decision(22, "hazard", timeout_s=WAIT_S)
            assert ack.accepted and rig.model.decisions[22] == "hazard"

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_undecided_and_late_items_default_to_manual(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            now = time.monotonic()
            rig.model.expect(30, now + 0.05)  # never decided
            rig.model.expect(31, now + 0.05)  # decided after it passed the diverter
            rig.model.expect(32, now + 0.5)  # decided in time
            ack = await rig.link.send_decision(32, "hazard", timeout_s=WAIT_S)
            assert ack.accepted and 32 not in rig.model.decisions  # diverted when it arrives
            await eventually(lambda: 31 in rig.model.decisions, "item 31 to reach the diverter")
            late = await rig.link.send_decision(31, "lead_acid", timeout_s=WAIT_S)
            assert (late.status, late.accepted) == ("late", False)
            await eventually(lambda: 32 in rig.model.decisions, "item 32 to reach the diverter")

            decisions = rig.model.decisions
            assert (decisions[30], decisions[31], decisions[32]) == ("manual", "manual", "hazard")
            counters = await rig.link.read_counters()
            assert counters == rig.model.counters
            assert (counters["defaulted"], counters["late"], counters["manual"]) == (2, 1, 2)
            assert (counters["hazard"], counters["lead_acid"]) == (1, 0)

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_plc_rejects_bad_lane_and_bad_check_word(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            m = rig.map
            bad_lane = [40, 0, 41, 9]
            assert await rig.write(m.slot_address(0), [*bad_lane, crc16_modbus(bad_lane)])
            bad_check = encode_slot(42, 0, "lead_acid")
            bad_check[-1] ^= 1
            assert await rig.write(m.slot_address(2), bad_check)
            await rig.wait_scans(3)
            assert await rig.ack_of(0) == (40, 2)  # rejected_bad_lane
            assert await rig.ack_of(2) == (42, 3)  # rejected_bad_check
            assert rig.model.counters["rejected"] == 2 and rig.model.counters["lead_acid"] == 0

            # These acks answer seqs the link never wrote (the test wrote as another master): the link
            # may take them as a protocol fault and reconnect; either way it then sees the latched bit.
            async def check_error_seen() -> bool:
                with contextlib.suppress(PlcError):
                    await rig.link.read_counters()
                return "check_error" in rig.link.plc_faults

            await eventually_async(check_error_seen, "the latched check_error bit")

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_pc_cannot_write_the_plc_registers(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            m = rig.map
            assert not await rig.write(m.status_address + 2, [0])  # PLC heartbeat
            assert not await rig.write(m.ack_address(1), [5, 1])
            assert await rig.write(m.pc_heartbeat_address, [123])

    run(scenario())


def test_restarted_pc_does_not_reuse_a_seq_standing_in_the_mailbox() -> None:
    async def scenario() -> None:
        async with Rig("modbus") as rig:
            assert rig.sim is not None
            first = await rig.link.send_decision(50, "li_ion", timeout_s=WAIT_S)
            # A fresh process starts its seq counter over; seq 1 still stands in slot 1.
            async with ModbusPlcLink("127.0.0.1", rig.sim.port, **LINK_OPTIONS) as fresh:
                second = await fresh.send_decision(51, "hazard", timeout_s=WAIT_S)
            assert second.accepted and second.seq != first.seq
            assert rig.model.decisions[51] == "hazard"

    run(scenario())


# --------------------------------------------------------------------------
# Targeting: one configured device, nothing else
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, port, device_id",
    [
        ("localhost", 502, 1),
        ("plc.example.com", 502, 1),
        ("0.0.0.0", 502, 1),
        ("::", 502, 1),
        ("224.0.0.1", 502, 1),
        ("255.255.255.255", 502, 1),
        ("127.0.0.1", 0, 1),
        ("127.0.0.1", 502, 0),
        ("127.0.0.1", 502, 256),
    ],
)
def test_link_refuses_anything_but_one_device_by_ip(host: str, port: int, device_id: int) -> None:
    with pytest.raises(ConfigError):
        ModbusPlcLink(host, port, device_id=device_id)


def test_link_target_cannot_be_changed() -> None:
    link = ModbusPlcLink("127.0.0.1", 5020, device_id=3)
    assert link.address == ("127.0.0.1", 5020, 3)
    for name in ("host", "port", "device_id", "address"):
        with pytest.raises(AttributeError):
            setattr(link, name, "10.0.0.1")


def test_link_refuses_wrong_device_id_and_mismatched_map() -> None:
    async def scenario() -> None:
        async with PlcSimulator(port=0, scan_ms=2) as sim:
            wrong_id = ModbusPlcLink("127.0.0.1", sim.port, device_id=2, **LINK_OPTIONS)
            with pytest.raises(PlcError, match="device_id"):
                await wrong_id.connect()
            assert wrong_id.state in ("down", "connecting")
            await wrong_id.close()

            ring = ModbusPlcLink("127.0.0.1", sim.port, register_map=RegisterMap(slots=4), **LINK_OPTIONS)
            with pytest.raises(PlcError, match="mailbox slots"):
                await ring.connect()
            await ring.close()

            base = ModbusPlcLink("127.0.0.1", sim.port, register_map=RegisterMap(base=200), **LINK_OPTIONS)
            with pytest.raises(PlcError, match="register base"):
                await base.connect()
            await base.close()
            assert sim.counters == dict.fromkeys(sim.counters, 0)

    run(scenario())


def test_link_to_an_absent_plc_keeps_retrying_until_closed() -> None:
    async def scenario() -> None:
        sim = PlcSimulator(port=0, scan_ms=2)
        await sim.start()
        port = sim.port
        await sim.stop()  # nothing listens on that port now
        link = ModbusPlcLink("127.0.0.1", port, **LINK_OPTIONS)
        with pytest.raises(PlcError, match="retrying in the background"):
            await link.connect()
        with pytest.raises(PlcError, match="not delivered"):
            await link.send_decision(1, "li_ion", timeout_s=1.0)
        await sim.start()  # the same port again
        try:
            await eventually(lambda: link.state == "connected", "the link to connect once the PLC is up")
        finally:
            await link.close()
            await sim.stop()
        assert link.state == "down"

    run(scenario())


def test_simulator_serves_loopback_only() -> None:
    for host in ("0.0.0.0", "192.168.10.20", "localhost"):
        with pytest.raises(ConfigError):
            PlcSimulator(host, 5020)
    assert sorter_main(["plc-sim", "--host", "0.0.0.0", "--port", "0"]) == 2


def test_memory_plc_refuses_unknown_options() -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        MemoryPlc(heartbeat_timeout=1.0)
