"""``sorter demo`` and the line's command-line surface."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sorter import LANES
from sorter.cli import build_parser, main
from sorter.errors import ConfigError
from sorter.line.demo import format_result, run_demo
from sorter.line.plc.protocol import PlcFault

pytestmark = pytest.mark.e2e  # the Modbus demo: a PLC server, scoring worker processes


def test_demo_smoke_runs_the_whole_line_over_modbus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_demo(items=24, rate_hz=24.0, pool=12, workers=1, out=tmp_path, status=False)
    s = result.summary
    assert s.items == 24
    assert s.audit_ok and s.audit_rows == 24
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 24
        assert db.execute("SELECT COUNT(*) FROM decisions WHERE delivery = 'pending'").fetchone()[0] == 0
        # Packing is on in the demo: every hazard item the PLC acknowledged has its case outcome.
        assert (
            db.execute(
                "SELECT COUNT(*) FROM decisions WHERE lane = 'hazard' AND delivery = 'acked' AND case_status IS NULL"
            ).fetchone()[0]
            == 0
        )
        assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'case_open'").fetchone()[0] >= 1
    # The simulated PLC's own counters, read in-process, agree with where the controller says items went.
    assert sum(result.plc_counters[lane] for lane in LANES) == 24
    assert all(result.plc_counters[lane] == s.effective_lanes.get(lane, 0) for lane in LANES)
    assert s.plc_agrees and result.ok
    assert s.li_ion_total is not None  # the simulator's truth reached the summary
    report = format_result(result)
    assert "OK: audit rows == items" in report and "Li-ion in lead_acid" in report
    assert result.station is not None and "case station   cases placed" in report
    assert "simulated PLC on 127.0.0.1:" in capsys.readouterr().out


def test_demo_refuses_an_out_dir_with_an_audit_log(tmp_path: Path) -> None:
    (tmp_path / "audit.sqlite").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds an audit log.*--force"):
        run_demo(items=5, out=tmp_path, status=False)
    result = run_demo(items=5, rate_hz=30.0, pool=5, workers=1, out=tmp_path, status=False, force=True)
    assert result.kept and result.summary.audit_rows == 5


@pytest.mark.parametrize("command", ["run", "plc-sim", "demo"])
def test_every_line_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert f"sorter {command}" in capsys.readouterr().out


def test_run_print_config_shows_values_and_their_origin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SORTER_PLC_PORT", "1502")
    assert main(["run", "--print-config", "--set", "line.source=simulated", "--set", "plc.device_id=7"]) == 0
    out = capsys.readouterr().out
    assert "port = 1502  # environment variable SORTER_PLC_PORT" in out
    assert "device_id = 7  # --set plc.device_id=7" in out
    assert "[metrics]" in out and 'address = "127.0.0.1"' in out


def test_run_with_a_bad_config_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "line.toml"
    path.write_text("[plc]\nhots = '1.2.3.4'\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'hots'" in err and str(path) in err


def test_demo_without_out_leaves_no_temporary_folder(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_demo(items=6, rate_hz=30.0, pool=6, workers=1, status=False)
    assert result.summary.items == 6
    assert not result.kept and not result.out_dir.exists()
    assert "not kept" in format_result(result) and "--out DIR" in format_result(result)


def test_plc_sim_does_not_call_a_pc_that_never_connected_lost(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from sorter.line.plc.sim import PlcModel

    model = PlcModel(pc_heartbeat_timeout_s=1.0)
    m = model.register_map
    image = [0] * m.size
    with caplog.at_level(logging.INFO, logger="sorter.line.plc.sim"):
        model.scan(image, 0.0)
        model.scan(image, 2.0)  # no PC yet
        assert "no PC heartbeat yet" in caplog.text and "lost" not in caplog.text
        assert model.faults & PlcFault.PC_HEARTBEAT_LOST  # items still go to the safe lane
        image[m.pc_heartbeat_address - m.base] = 1  # a PC connects and counts
        model.scan(image, 2.5)
        assert not model.faults & PlcFault.PC_HEARTBEAT_LOST
        model.scan(image, 4.0)  # and stops counting
    assert "PC heartbeat lost" in caplog.text


def test_run_exit_status_tells_the_truth() -> None:
    from types import SimpleNamespace

    from sorter.line.cli import run_problems

    ok = SimpleNamespace(
        error=None, audit_ok=True, audit_rows=5, items=5, plc_agrees=True, overload=0, deadline_misses=0, undelivered=0
    )
    assert run_problems(ok) == []
    assert run_problems(SimpleNamespace(**{**vars(ok), "plc_agrees": None})) == []  # no counters to compare
    differ = run_problems(SimpleNamespace(**{**vars(ok), "plc_agrees": False}))
    assert differ and "PLC" in differ[0]
    late = run_problems(SimpleNamespace(**{**vars(ok), "overload": 65, "deadline_misses": 70}))
    assert "65 items past the deadline" in late[0] and "--replay-rate" in late[0]
    assert "5 decisions missed the deadline" in late[1]


def test_a_paced_replay_hands_items_over_at_their_recorded_spacing(tmp_path: Path) -> None:
    import asyncio

    from sorter.line.sources import BeltTiming, LogFollowSource
    from sorter.logformat import LogWriter
    from sorter.readings import ItemRecord

    with LogWriter(tmp_path) as w:
        for k in range(5):
            w.append(ItemRecord(item_id=f"A{k}", t=1000.0 + 0.5 * k, weight_g=900.0))

    async def replay() -> list:
        src = LogFollowSource(tmp_path, BeltTiming(0.09, "bridge"), follow=False)
        src.pace(10.0)  # 0.5 s apart as recorded -> 0.05 s apart
        await src.start()
        try:
            return [i async for i in src]
        finally:
            await src.close()

    items = asyncio.run(replay())
    assert [i.item_id for i in items] == [f"A{k}" for k in range(5)]
    first = items[0].available_mono
    for k, item in enumerate(items):
        assert item.available_mono - first >= 0.05 * k - 1e-3  # never ahead of the recorded spacing
        assert item.due_mono == pytest.approx(item.available_mono + 0.09, abs=1e-9)  # deadline from arrival
