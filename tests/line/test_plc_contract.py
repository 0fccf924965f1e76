"""The open points of the PLC contract (docs/plc-interface.md), each with its fault injected into
the simulator: over pymodbus's real server (``modbus``) and the in-memory PLC (``memory``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from pathlib import Path

import pytest

from sorter.errors import PlcError, PlcTimeoutError
from sorter.line.plc import AckStatus, PlcFault, PlcProtocolError, encode_slot
from sorter.line.sources import plc_item_id
from tests.line.plc_rig import BACKENDS, WAIT_S, Rig, eventually, eventually_async, run

REPO = Path(__file__).resolve().parents[2]


async def refreshed(rig: Rig) -> None:
    with contextlib.suppress(PlcError):
        await rig.link.read_counters()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_header_change_mid_run_stops_sending_alarms_and_reruns_the_handshake(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            assert (await rig.link.send_decision(1, "li_ion", timeout_s=WAIT_S)).accepted
            faults: list[tuple[str, dict]] = []
            rig.link.on_protocol_fault = lambda kind, detail: faults.append((kind, detail))
            rig.model.scan_ms = 7.0  # SCAN_MS changes under a running link
            await eventually(lambda: faults, "the header change to be seen on a poll")
            assert faults[0][0] == "header_changed" and "SCAN_MS" in faults[0][1]["changed"]
            # The handshake accepts the new scan time: the link comes back by itself.
            await eventually(lambda: rig.link.state == "connected", "the handshake to run again")
            assert (await rig.link.send_decision(2, "li_ion", timeout_s=WAIT_S)).accepted

            rig.model.protocol_version = 2  # a header the handshake refuses: the link stays down
            await eventually(lambda: len(faults) == 2, "the version change to be seen")
            assert faults[1][1]["changed"]["PROTOCOL_VERSION"] == {"at_connect": 1, "now": 2}
            await asyncio.sleep(0.2)
            assert rig.link.state in ("down", "connecting")
            assert "protocol version 2" in rig.link.last_error
            with pytest.raises(PlcError, match="not delivered"):
                await rig.link.send_decision(3, "li_ion", timeout_s=WAIT_S)
            assert 3 not in rig.model.decisions
            rig.model.protocol_version = 1
            await eventually(lambda: rig.link.state == "connected", "the link to come back")

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_undefined_ack_status_is_a_protocol_fault_with_the_raw_value(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            rig.model.answer_status = 9  # the PLC accepts the item but writes status 9
            with pytest.raises(PlcProtocolError) as err:
                await rig.link.send_decision(5, "hazard", timeout_s=WAIT_S)
            assert (err.value.kind, err.value.raw_status) == ("undefined_ack_status", 9)
            assert err.value.seq is not None
            assert rig.model.decisions[5] == "hazard"  # what the PLC did: the counters are the truth
            assert rig.link.protocol_faults == 1
            rig.model.answer_status = None
            await eventually(lambda: rig.link.state == "connected", "the handshake to run again")
            assert (await rig.link.send_decision(6, "li_ion", timeout_s=WAIT_S)).accepted

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_ack_for_a_seq_the_pc_never_wrote_is_a_protocol_fault(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            rig.model.force_ack(4, 4321, AckStatus.ACCEPTED)
            await eventually(lambda: rig.link.protocol_faults == 1, "the foreign ack to be flagged")
            await eventually(lambda: rig.link.state == "connected", "the handshake to run again")
            # Standing since before the new connection: not a fault again.
            await asyncio.sleep(0.2)
            assert rig.link.protocol_faults == 1

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fault_word_policy_blocking_live_and_reserved_bits_latched_bits_only_alarm(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend, scan_ms=2.0) as rig:
            rig.model.diverter_fault = True
            await eventually_async(lambda: _has_fault(rig, "diverter_fault"), "the diverter fault")
            with pytest.raises(PlcError, match="diverter_fault") as err:
                await rig.link.send_decision(10, "li_ion", timeout_s=WAIT_S)
            assert not isinstance(err.value, PlcTimeoutError)  # refused at once
            rig.model.diverter_fault = False
            await eventually_async(lambda: _no_fault(rig), "the fault to clear")
            assert (await rig.link.send_decision(11, "li_ion", timeout_s=WAIT_S)).accepted

            faults: list[str] = []
            rig.link.on_protocol_fault = lambda kind, detail: faults.append(kind)
            rig.model.extra_faults = 0x0100  # a reserved bit: a fault this PC does not know
            await eventually_async(lambda: _has_fault(rig, "bit8"), "the reserved bit")
            assert faults == ["reserved_fault_bits"]
            with pytest.raises(PlcError, match="bit8"):
                await rig.link.send_decision(12, "li_ion", timeout_s=WAIT_S)
            rig.model.extra_faults = 0
            await eventually_async(lambda: _no_fault(rig), "the reserved bit to clear")

            # A latched bit (check_error) raises an alarm but does not stop sending.
            bad = encode_slot(13, 77, "li_ion")
            bad[-1] ^= 1
            assert await rig.write(rig.map.slot_address(5), bad)
            await eventually_async(lambda: _has_fault(rig, "check_error"), "the latched check error")
            await eventually(lambda: rig.link.state == "connected", "the link after the foreign write")
            assert (await rig.link.send_decision(14, "hazard", timeout_s=WAIT_S)).accepted
            rig.model.clear_faults()  # the operator's reset on the HMI
            await eventually_async(lambda: _no_fault(rig), "the latched bit to reset")

    run(scenario())


async def _has_fault(rig: Rig, name: str) -> bool:
    await refreshed(rig)
    return name in rig.link.plc_faults


async def _no_fault(rig: Rig) -> bool:
    await refreshed(rig)
    return not rig.link.plc_faults


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_to_run_is_a_program_start_in_the_plc_and_the_pc(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            assert (await rig.link.send_decision(20, "li_ion", timeout_s=WAIT_S)).accepted
            starts = rig.model.program_starts
            rig.pause_scan()
            # Sent during STOP: refused at once once the link sees the frozen heartbeat, or written
            # and never acknowledged; either way the PC records it as not delivered / late.
            await eventually(lambda: rig.link.state == "faulted", "the link to see the PLC in STOP")
            with pytest.raises(PlcError):
                await rig.link.send_decision(21, "lead_acid", timeout_s=0.3)
            # A stale decision written into the mailbox while in STOP (e.g. by a PC that then gave up):
            assert await rig.write(rig.map.slot_address(6), encode_slot(6, 22, "lead_acid"))
            with caplog.at_level(logging.WARNING, logger="sorter.line.plc"):
                rig.resume_scan()
                await eventually(lambda: rig.model.program_starts == starts + 1, "the program start")
                await eventually(lambda: "heartbeat restored" in caplog.text, "the heartbeat restored log")
                await eventually(lambda: rig.link.state == "connected", "the handshake after the start")
            await rig.wait_scans(5)
            # Rule 8: the standing seq was latched at the start, never applied.
            assert 22 not in rig.model.decisions and 21 not in rig.model.decisions
            assert await rig.ack_of(6) == (6, 0)
            assert (await rig.link.send_decision(23, "hazard", timeout_s=WAIT_S)).accepted

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decision_for_an_untracked_item_is_late_and_changes_nothing(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            rig.model.untracked = "late"
            before = rig.model.counters
            ack = await rig.link.send_decision(30, "lead_acid", timeout_s=WAIT_S)
            assert (ack.status, ack.accepted) == ("late", False)
            after = rig.model.counters
            assert after["late"] == before["late"] + 1 and after["lead_acid"] == before["lead_acid"]
            assert 30 not in rig.model.decisions

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_pending_table_refuses_with_rejected_full_and_a_latched_bit(backend: str) -> None:
    async def scenario() -> None:
        async with Rig(backend) as rig:
            rig.model.decision_capacity = 2
            due = time.monotonic() + 30
            for item in (40, 41, 42):
                rig.model.expect(item, due)
            assert (await rig.link.send_decision(40, "li_ion", timeout_s=WAIT_S)).accepted
            assert (await rig.link.send_decision(41, "li_ion", timeout_s=WAIT_S)).accepted
            full = await rig.link.send_decision(42, "li_ion", timeout_s=WAIT_S)
            assert full.status == "rejected_full"
            await refreshed(rig)
            assert "decision_overrun" in rig.link.plc_faults
            assert rig.model.faults & PlcFault.DECISION_OVERRUN

    run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fault_word_is_set_before_the_first_pc_heartbeat_and_the_link_up_is_quiet(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        rig = Rig(backend, heartbeat=False)
        if rig.sim is not None:
            await rig.sim.start()
            assert rig.model.faults & PlcFault.PC_HEARTBEAT_LOST  # since power-on, no PC yet
            await rig.sim.stop()
        with caplog.at_level(logging.INFO, logger="sorter.line.plc"):
            async with rig:
                # The handshake bumps the PC heartbeat and waits for the bit to clear.
                assert "pc_heartbeat_lost" not in rig.link.plc_faults
                assert not rig.model.faults & PlcFault.PC_HEARTBEAT_LOST
                assert (await rig.link.send_decision(50, "li_ion", timeout_s=WAIT_S)).accepted
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "fault word" in r.message]

    run(scenario())


def test_the_id_hash_vectors_in_the_document_are_what_the_pc_sends() -> None:
    doc = (REPO / "docs" / "plc-interface.md").read_text(encoding="utf-8")
    section = doc.split("### Item id test vectors")[1].split("\n## ")[0]
    vectors = re.findall(r"^\| `([^`]+)` \| `(\d+)` \| `0x([0-9A-F]{8})` \|", section, re.M)
    assert len(vectors) >= 6
    for item_id, decimal, hexa in vectors:
        assert plc_item_id(item_id) == int(decimal) == int(hexa, 16), item_id


def test_a_protocol_fault_is_recorded_in_the_audit_log_and_its_items_are_not_acked(tmp_path: Path) -> None:
    from sorter.line.audit import AuditLog
    from sorter.line.controller import Controller
    from sorter.line.plc import MemoryPlc
    from sorter.line.scoring_pool import ScoringPool
    from sorter.line.sources import generate_pool
    from tests.line.line_run import SIM_CFG, make_config, sim_source

    pool = generate_pool(SIM_CFG, 4, workers=1)
    cfg = make_config(tmp_path)

    async def scenario() -> None:
        scorer = ScoringPool(None, workers=1, kind="thread")
        plc = MemoryPlc(scan_ms=2, reconnect_min_s=0.02)
        plc.model.answer_status = 9
        try:
            summary = await Controller(
                cfg, link=plc, source=sim_source(cfg, pool, items=3, rate_hz=20), scorer=scorer, settle=False
            ).run()
        finally:
            await scorer.close()
        assert summary.delivery.get("acked", 0) == 0
        with AuditLog(cfg.audit.path) as log:
            rows = list(log.rows())
            events = log.events("plc_protocol_fault")
        assert any(r.plc_status == "protocol_fault:undefined_ack_status:status=9" for r in rows)
        assert all(r.delivery != "acked" for r in rows)
        assert events and events[0][2]["raw_status"] == 9

    asyncio.run(asyncio.wait_for(scenario(), 120))
