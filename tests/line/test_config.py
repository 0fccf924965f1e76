"""Configuration of the line controller: strict keys, stated precedence, clear errors."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sorter.errors import ConfigError
from sorter.line.config import LineConfig, load_config, parse_override

SIM = ["line.source=simulated"]


def write(tmp_path: Path, text: str, name: str = "line.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_give_the_documented_deadline() -> None:
    cfg = load_config(None, env={}, overrides=SIM)
    assert cfg.line.distance_m == 0.3 and cfg.line.belt_speed_m_s == 3.0 and cfg.line.actuator_lead_ms == 10
    assert cfg.line.deadline_ms == pytest.approx(90.0)
    assert cfg.metrics.address == "127.0.0.1" and cfg.metrics.port == 9108 and not cfg.metrics.enabled
    assert (cfg.plc.host, cfg.plc.port, cfg.plc.device_id) == ("127.0.0.1", 5020, 1)


def test_file_values_are_read_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[line]
source = "log"
log_dir = "logs/today"
belt_speed_m_s = 2
[plc]
host = "192.168.10.20"
port = 502
[audit]
path = "audit.sqlite"
""",
    )
    cfg = load_config(path, env={})
    assert cfg.line.log_dir == str(tmp_path / "logs/today")
    assert cfg.audit.path == str(tmp_path / "audit.sqlite")
    assert cfg.line.belt_speed_m_s == 2.0 and isinstance(cfg.line.belt_speed_m_s, float)
    assert cfg.line.deadline_ms == pytest.approx(140.0)
    assert cfg.plc.port == 502
    assert cfg.origins["plc.port"].startswith(str(path))


def test_unknown_key_names_file_section_key_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[plc]\nhost = "127.0.0.1"\nprot = 502\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    msg = str(err.value)
    assert str(path) in msg and "[plc]" in msg and "'prot'" in msg
    assert "port" in msg and "heartbeat_ms" in msg  # lists the valid keys


def test_unknown_section_and_top_level_key_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[plcs\].*\[plc\]"):
        load_config(write(tmp_path, "[plcs]\nport = 1\n"), env={})
    with pytest.raises(ConfigError, match="not a section"):
        load_config(write(tmp_path, "port = 1\n", "b.toml"), env={})


def test_bad_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[line\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[line]\nsource = "simulated"\n[plc]\nport = 1001\nheartbeat_ms = 300\nrequest_timeout_ms = 400\n'
    )
    env = {"SORTER_PLC_PORT": "1002", "SORTER_PLC_HEARTBEAT_MS": "250"}
    cfg = load_config(path, env=env, overrides=["plc.port=1003"])
    assert cfg.plc.port == 1003  # command line beats environment and file
    assert cfg.plc.heartbeat_ms == 250.0  # environment beats file
    assert cfg.plc.request_timeout_ms == 400.0  # file beats default
    assert cfg.plc.device_id == 1  # default
    assert cfg.origins["plc.port"] == "--set plc.port=1003"
    assert cfg.origins["plc.heartbeat_ms"] == "environment variable SORTER_PLC_HEARTBEAT_MS"
    # Without the option, the environment wins over the file.
    assert load_config(path, env=env).plc.port == 1002
    assert load_config(path, env={}).plc.port == 1001


def test_environment_keys_with_underscores_and_foreign_variables() -> None:
    cfg = load_config(
        None,
        env={
            "SORTER_LINE_SOURCE": "simulated",
            "SORTER_LINE_BELT_SPEED_M_S": "1.5",
            "SORTER_HOME": "/x",
            "PATH": "/bin",
        },
    )
    assert cfg.line.belt_speed_m_s == 1.5
    with pytest.raises(ConfigError, match="SORTER_PLC_HOSTNAME.*unknown key 'hostname'"):
        load_config(None, env={"SORTER_PLC_HOSTNAME": "x"}, overrides=SIM)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("plc.port=abc", "plc.port must be a whole number"),
        ("plc.port=70000", r"plc.port = 70000 must be in 1..65535"),
        ("plc.host=plc.local", "must be the PLC's IP address"),
        ("plc.host=0.0.0.0", "must be the PLC's IP address"),
        ("line.source=camera", "choose one of 'log', 'simulated'"),
        ("line.belt_speed_m_s=0", "belt_speed_m_s = 0.0 must be > 0"),
        ("line.actuator_lead_ms=200", "deadline .* is not positive"),
        ("metrics.enabled=maybe", "metrics.enabled must be true or false"),
        ("simulated.mix=weird", "is not a mix"),
        ("plc.heartbeat_timeout_ms=100", "must be longer than plc.heartbeat_ms"),
        ("line.max_in_flight=0", "must be in 1..100000"),
        ("line.belt_speed_m_s=nan", "finite"),
        ("plcport=1", "expected section.key=value"),
        ("plc.port", "expected section.key=value"),
        ("nosuch.key=1", r"unknown section \[nosuch\]"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(None, env={}, overrides=[*SIM, override])
    assert "--set" in str(err.value) or "deadline" in str(err.value)


def test_wrong_type_in_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[line]\nsource = "simulated"\n[plc]\nport = "502"\n')
    with pytest.raises(ConfigError, match=r"\[plc\] port: plc.port must be a whole number"):
        load_config(path, env={})
    path = write(tmp_path, '[line]\nsource = "simulated"\n[metrics]\nenabled = 1\n', "c.toml")
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config(path, env={})


def test_log_source_needs_a_log_dir() -> None:
    with pytest.raises(ConfigError, match="line.log_dir"):
        load_config(None, env={})


def test_simulated_items_are_never_sent_to_a_remote_plc() -> None:
    with pytest.raises(ConfigError, match="simulated items would be sent to a real PLC"):
        load_config(None, env={}, overrides=[*SIM, "plc.host=192.168.10.20"])
    # The in-memory PLC is fine wherever host points.
    assert load_config(None, env={}, overrides=[*SIM, "plc.host=192.168.10.20", "plc.kind=memory"])


def test_quoted_strings_on_the_command_line() -> None:
    cfg = load_config(None, env={}, overrides=[*SIM, 'line.name="hall 2"'])
    assert cfg.line.name == "hall 2"


def test_replace_validates_and_config_is_frozen() -> None:
    cfg = load_config(None, env={}, overrides=SIM)
    assert cfg.replace(plc={"port": 1502}).plc.port == 1502
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.replace(plc={"prot": 1})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.plc.port = 1  # type: ignore[misc]


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        env={},
        overrides=[*SIM, "plc.port=1502", 'line.name=a "quoted" name', f"audit.path={tmp_path / 'a.sqlite'}"],
    )
    again = load_config(write(tmp_path, cfg.to_toml()), env={})
    assert again.model_dump() == cfg.model_dump()  # every section, every key (origins aside)
    assert again.origins != cfg.origins
    assert isinstance(again, LineConfig)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_set_option_is_accepted_or_refused_with_config_error(text: str) -> None:
    try:
        section, key, _ = parse_override(text)
        load_config(None, env={}, overrides=[*SIM, text])
    except ConfigError:
        return
    assert section and key


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["plc.port", "plc.heartbeat_ms", "line.follow", "line.name", "simulated.rate_hz"]),
    st.text(max_size=20),
)
def test_any_value_for_a_known_key_is_accepted_or_refused_with_config_error(key: str, value: str) -> None:
    with contextlib.suppress(ConfigError):
        load_config(None, env={}, overrides=[*SIM, f"{key}={value}"])


def test_every_key_is_documented_with_its_default() -> None:
    import re

    from sorter.line import config as config_module

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name, cls in config_module._SECTIONS.items():
        section = doc.split(f"## `[{name}]`")[1].split("\n## ")[0]
        for key, f in cls.model_fields.items():
            match = re.search(rf"^\| `{key}` \| `([^`]*)` \|", section, re.M)
            assert match, f"docs/configuration.md does not document {name}.{key}"
            assert match.group(1) == config_module._toml_value(f.default), f"{name}.{key}: default differs"


def test_the_disks_table_reaches_the_free_space_watch_and_its_rules_hold(tmp_path: Path) -> None:
    from sorter.line.disks import settings_of

    cfg = load_config(write(tmp_path, "[disks]\nwarn_free_pct = 20.0\nalarm_free_pct = 8.0\n"), env={}, overrides=SIM)
    got = settings_of(cfg)
    assert (got.warn_free_pct, got.alarm_free_pct, got.alarm_free_mb) == (20.0, 8.0, 512.0)
    # an environment override reaches it like any other key
    assert settings_of(load_config(None, env={"SORTER_DISKS_ENABLED": "false"}, overrides=SIM)).enabled is False
    with pytest.raises(ConfigError, match="alarm thresholds must not be above the warn"):
        load_config(write(tmp_path, "[disks]\nwarn_free_pct = 5.0\nalarm_free_pct = 8.0\n"), env={}, overrides=SIM)
    with pytest.raises(ConfigError, match=r"unknown key 'warn_free'.*warn_free_pct"):
        load_config(write(tmp_path, "[disks]\nwarn_free = 5.0\n"), env={}, overrides=SIM)


def test_the_retention_table_is_checked_and_the_controller_runs_it_off_the_loop(tmp_path: Path, monkeypatch) -> None:
    import asyncio
    import threading

    import sorter.retention
    from sorter.line.controller import Controller

    log = ["line.source=log", f"line.log_dir={tmp_path}"]
    with pytest.raises(ConfigError, match='retention.enabled.*line.source = "log"'):
        load_config(None, env={}, overrides=[*SIM, "retention.enabled=true"])
    with pytest.raises(ConfigError, match="keep_labelled_days"):
        load_config(None, env={}, overrides=[*log, "retention.keep_sorted_days=30", "retention.keep_labelled_days=7"])
    cfg = load_config(
        write(tmp_path, '[retention]\nenabled = true\nkeep_sorted_days = 2\nstation_store = "st.sqlite"\n'),
        env={},
        overrides=log,
    )
    assert cfg.retention.policy().keep_labelled_days is None  # 0: forever
    assert cfg.retention.station_store == str(tmp_path / "st.sqlite")  # relative to the file

    calls = []

    def fake_run(log_dir, audit, *, policy, station):
        calls.append((log_dir, policy.keep_sorted_days, station, threading.current_thread() is threading.main_thread()))
        raise OSError("disk gone")  # a failure is logged, not raised: the line goes on

    async def one_period(_s: float) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(sorter.retention, "run_retention", fake_run)
    monkeypatch.setattr(asyncio, "sleep", one_period)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Controller._retention_loop(None, cfg))  # type: ignore[arg-type]
    assert calls == [(str(tmp_path), 2.0, str(tmp_path / "st.sqlite"), False)]  # in a worker thread
