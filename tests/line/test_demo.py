"""``sorter demo`` and the line's command-line surface."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sorter import LANES
from sorter.cli import build_parser, main
from sorter.errors import ConfigError
from sorter.line.demo import format_result, run_demo


def test_demo_smoke_runs_the_whole_line_over_modbus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_demo(items=24, rate_hz=24.0, pool=12, workers=1, out=tmp_path, status=False)
    s = result.summary
    assert s.items == 24
    assert s.audit_ok and s.audit_rows == 24
    with sqlite3.connect(tmp_path / "audit.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 24
        assert db.execute("SELECT COUNT(*) FROM decisions WHERE delivery = 'pending'").fetchone()[0] == 0
    # The simulated PLC's own counters, read in-process, agree with where the controller says items went.
    assert sum(result.plc_counters[lane] for lane in LANES) == 24
    assert all(result.plc_counters[lane] == s.effective_lanes.get(lane, 0) for lane in LANES)
    assert s.plc_agrees and result.ok
    assert s.li_ion_total is not None  # the simulator's truth reached the summary
    report = format_result(result)
    assert "OK: audit rows == items" in report and "Li-ion in lead_acid" in report
    assert "simulated PLC on 127.0.0.1:" in capsys.readouterr().out


def test_demo_refuses_an_out_dir_with_an_audit_log(tmp_path: Path) -> None:
    (tmp_path / "audit.sqlite").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds an audit log"):
        run_demo(items=5, out=tmp_path, status=False)


@pytest.mark.parametrize("command", ["run", "plc-sim", "demo"])
def test_every_line_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert f"sorter {command}" in capsys.readouterr().out


def test_run_print_config_shows_values_and_their_origin(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
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
