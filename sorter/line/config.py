"""Configuration of the line controller: typed, frozen, and strict about unknown keys.

A :class:`LineConfig` has one frozen pydantic model per section of the TOML file
(``[line]``, ``[plc]``, ``[audit]``, ``[metrics]``, ``[simulated]``, ``[status]``): strict
types, ``Literal`` choices, ``Field`` ranges, ``extra="forbid"``.
:func:`load_config` builds it from four layers, later layers winning:

1. the defaults written in the models below,
2. the TOML file (``--config line.toml``),
3. the environment: ``SORTER_<SECTION>_<KEY>``, e.g. ``SORTER_PLC_PORT=502``,
4. the command line: ``--set section.key=value`` (repeatable).

So the precedence is **command line > environment > file > defaults**.  Every
key and its default is listed in ``docs/configuration.md``.

Unknown sections and keys are refused (a misspelt key would otherwise silently
keep its default), with a message naming the file (or variable, or option),
the section and the key, and listing the valid keys.  Values are checked for
type and range once, here (pydantic's errors are turned into messages that say where the
value came from and how to fix it), and then trusted by the controller.  Checks across keys
ask the code that owns the rule: the register map's fit (:class:`~sorter.line.plc.protocol.RegisterMap`),
the PLC address (:func:`~sorter.line.plc.modbus.check_target`), the simulator's mixes and lines.

Why this module is long (about 770 lines): every key carries its meaning beside its
type, default and range (``docs/configuration.md`` is checked against them), and the
messages for each way a value can be wrong are written out here.

Relative paths (``line.log_dir``, ``line.model``, ``audit.path``) given in the
file are relative to the file's directory; given in the environment or on the
command line, to the current directory.

Examples
--------
>>> cfg = load_config(None, env={}, overrides=["line.source=simulated", "plc.port=1502"])
>>> cfg.plc.port, cfg.line.source, round(cfg.line.deadline_ms, 3)
(1502, 'simulated', 90.0)
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sorter.errors import ConfigError
from sorter.line.disks import DiskSettings

__all__ = [
    "ENV_PREFIX",
    "AuditSection",
    "CasesSection",
    "LineConfig",
    "LineSection",
    "MetricsSection",
    "DisksSection",
    "PlcSection",
    "RetentionSection",
    "SimulatedSection",
    "StatusSection",
    "load_config",
    "parse_override",
]

ENV_PREFIX: Final = "SORTER_"


def _num(
    default: float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    rule: str = "",
    hint: str = "",
) -> Any:
    """A number field with its range, and the words an error message uses for it."""
    if not rule:
        if ge is not None and le is not None:
            rule = f"must be in {ge}..{le}"
        elif gt is not None:
            rule = f"must be > {gt}"
        elif ge is not None:
            rule = f"must be >= {ge}"
    return Field(default, gt=gt, ge=ge, le=le, json_schema_extra={"rule": rule + (f" ({hint})" if hint else "")})


class _Section(BaseModel):
    """A section of the configuration file: strict types, no unknown keys, frozen."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class LineSection(_Section):
    """``[line]``: where items come from, how the belt moves, how scoring runs."""

    name: str = "line-1"
    """Name of the line, used in logs and metrics labels."""
    model: str = ""
    """Model directory; ``""`` loads the model shipped with sorter."""
    allow_line_mismatch: bool = False
    """Score items of a log whose declared line (``meta.json``) differs from the model's as if it
    matched. Without it, lead_acid is closed for them (they go to manual) until the model is
    calibrated for this line (``sorter calibrate``) or retrained. Dangerous; never the default."""
    source: Literal["log", "simulated"] = "log"
    """``"log"``: follow a ``sorter-log/1`` directory; ``"simulated"``: an in-process conveyor."""
    log_dir: str = ""
    """The log directory to follow (``source = "log"``)."""
    follow: bool = True
    """Keep waiting for new lines at the end of the log (``false``: stop at its end)."""
    log_poll_ms: float = _num(5.0, gt=0, hint="5 ms keeps the delay small")
    """How often a caught-up follower looks for new lines."""
    distance_m: float = _num(0.3, gt=0, hint="metres from the sensor bridge to the diverter")
    """Belt distance from the sensor bridge to the diverter."""
    belt_speed_m_s: float = _num(3.0, gt=0, hint="metres per second")
    """Belt speed."""
    actuator_lead_ms: float = _num(10.0, ge=0)
    """How long before the item reaches the diverter the PLC needs the decision."""
    deadline_from: Literal["bridge", "arrival"] = "bridge"
    """Start of the deadline clock: ``"bridge"`` (the item's bridge time ``t``) or ``"arrival"``."""
    max_in_flight: int = _num(64, ge=1, le=100_000)
    """Most items being scored, recorded or delivered at once (bounds memory)."""
    scorer_workers: int = _num(2, ge=1, le=64)
    """Scoring workers (processes or threads)."""
    scorer_pool: Literal["process", "thread"] = "process"
    """``"process"`` (spawned worker processes) or ``"thread"``."""
    max_batch: int = _num(16, ge=1, le=1024)
    """Most items one worker scores in one model call (micro-batching under load)."""

    @property
    def deadline_ms(self) -> float:
        """Decision budget per item: transit time minus actuator lead (90 ms by default)."""
        return 1000.0 * self.distance_m / self.belt_speed_m_s - self.actuator_lead_ms


class PlcSection(_Section):
    """``[plc]``: the link to the PLC (see ``docs/plc-interface.md``)."""

    kind: Literal["modbus", "memory"] = "modbus"
    """``"modbus"`` (Modbus TCP) or ``"memory"`` (in-process simulated PLC, for dry runs)."""
    host: str = "127.0.0.1"
    """IP address of the PLC (no host names)."""
    port: int = _num(5020, ge=1, le=65535, hint="Modbus TCP normally uses 502")
    """Modbus TCP port (a real PLC normally uses 502; ``sorter plc-sim`` defaults to 5020)."""
    device_id: int = _num(1, ge=1, le=255, hint="0 is broadcast")
    """Modbus unit id, 1..255."""
    base: int = 100
    """PDU address of the register map."""
    slots: int = 8
    """Mailbox ring size N (must match the PLC)."""
    heartbeat_ms: float = _num(200.0, ge=10, le=10_000, hint="100-500 ms is usual")
    """PC heartbeat period."""
    heartbeat_timeout_ms: float = 1500.0
    """The PLC heartbeat must change within this time, else the link is faulted."""
    request_timeout_ms: float = _num(250.0, gt=0)
    """Timeout of one Modbus request."""
    reconnect_min_ms: float = _num(100.0, gt=0)
    """First reconnection delay."""
    reconnect_max_ms: float = 5000.0
    """Longest reconnection delay (exponential backoff)."""
    poll_interval_ms: float = _num(1.0, gt=0)
    """Pause between acknowledgement reads while decisions wait and the PLC scan is due (reads follow the scan)."""
    rewrite_interval_ms: float = _num(50.0, gt=0)
    """Rewrite an unacknowledged slot (same seq) after this long."""
    ack_grace_ms: float = _num(50.0, ge=0)
    """How long after an item's deadline to keep waiting for the ack of a decision already sent;
    the PLC's answer (accepted or late) is the truth about whether it was in time."""
    memory_scan_ms: float = _num(10.0, gt=0)
    """Scan period of the in-process PLC (``kind = "memory"``)."""

    @property
    def register_map_args(self) -> dict[str, int]:
        return {"base": self.base, "slots": self.slots}


class AuditSection(_Section):
    """``[audit]``: the durable decision log (SQLite)."""

    path: str = "audit.sqlite"
    """The audit database file (its directory must exist)."""
    delivery_flush_ms: float = _num(50.0, ge=0, le=10_000)
    """Longest a delivery outcome waits to share a transaction with the next decision (0: commit at once).
    Decisions themselves are always committed at once, before they are sent."""
    sync: Literal["interval", "full"] = "interval"
    """``"interval"``: commits do not wait for the disk; a flusher thread makes them durable every
    ``sync_interval_ms`` (a power cut loses at most that window).  ``"full"``: every commit waits for
    fsync before its decision is sent (for disks with power-loss protection)."""
    sync_interval_ms: float = _num(
        20.0, ge=1, le=1000, hint="a power cut loses at most this window of rows; 20 ms is the default"
    )
    """Cadence of the flusher with ``sync = "interval"`` (1..1000 ms; at most 50 ms is advised)."""
    max_lag_ms: float = 0.0
    """With ``sync = "interval"``: send no decision while committed rows have waited longer than this to
    reach the disk (the item goes to the safe lane), so a power cut can never lose more than this window.
    0 (the default) never holds a decision back for the disk; the restart's reconciliation flags what a
    power cut lost."""
    journal: str = "auto"
    """With ``sync = "interval"``: where each decision is journaled before it is sent, so its SQLite commit
    (which writes to the audit disk, and can wait there while another process flushes a large file) is off
    the deadline path.  ``"auto"``: a directory under ``/dev/shm`` (tmpfs, in memory) named after the audit
    path; ``"off"``: no journal, each decision waits for its commit; or a directory, which should be on
    tmpfs.  A process crash loses nothing either way: the next start writes the journal into the log."""


class CasesSection(_Section):
    """``[cases]``: packing the hazard lane into fire-safe cases at the case station (``docs/cases.md``).

    Off by default: a PLC without the case-station block keeps working unchanged.  On, the PLC
    must have the block (``docs/plc-interface.md``, "Case station block"); the link refuses to
    connect otherwise.  The station's state (the open case) lives in the audit log, committed
    with the decision that changed it, so a restart resumes the open case exactly."""

    enabled: bool = False
    """Pack the station's lane into cases (needs the PLC's case-station block)."""
    lane: Literal["hazard", "li_ion"] = "hazard"
    """The lane whose chute ends at the case station."""
    limit_wh: float = _num(2100.0, gt=0, hint="the permit's 2.1 kWh is 2100")
    """Most summed ``energy_wh_upper`` per case, Wh."""
    mass_limit_kg: float = _num(0.0, ge=0, hint="0: no mass limit")
    """Most gross item mass per case, kg (0: none)."""
    case_id: str = "{line}-{date:%Y%m%d}-{n:04d}"
    """Case id scheme: ``str.format`` with ``{line}``, ``{date}`` (opening time, UTC) and ``{n}`` (required)."""
    first_case: int = _num(1, ge=1, le=10**9)
    """Number of the first case of a new audit log (later cases continue from the audit log)."""
    base: int = _num(300, ge=0, le=0xFFFF - 9, hint="outside the mailbox's registers")
    """PDU address of the PLC's case-station block."""
    positions: int = _num(1, ge=1, le=8, hint="case positions side by side under the station's chute")
    """Case positions at the station, each holding one case (1: block version 1; 2..8: block version 2,
    ``docs/plc-interface.md``); the PLC's block must report the same number."""
    state_file: str = ""
    """Also write the station's state (``sorter-case-station/1``) to this file at every case opening and
    closing, for ``sorter pack --state``; ``""``: only in the audit log (which is what a restart reads)."""

    def station_config(self, line: str) -> Any:
        """The packing core's :class:`~sorter.cases.packing.StationConfig` for line ``line``."""
        from sorter.cases.packing import StationConfig

        return StationConfig(
            lane=self.lane,
            limit_wh=self.limit_wh,
            mass_limit_g=self.mass_limit_kg * 1000.0 if self.mass_limit_kg > 0 else None,
            case_id_scheme=self.case_id,
            line=line,
            auto_open=False,
            positions=self.positions,
        )

    def case_block(self) -> Any:
        """The :class:`~sorter.line.plc.protocol.CaseBlockMap` of the station's PLC block."""
        from sorter.line.plc.protocol import CaseBlockMap

        return CaseBlockMap(self.base, positions=self.positions)


class MetricsSection(_Section):
    """``[metrics]``: Prometheus endpoint."""

    enabled: bool = False
    """Serve ``/metrics`` over HTTP."""
    address: str = "127.0.0.1"
    """Address to listen on; loopback by default (pass an interface address to expose it)."""
    port: int = _num(9108, ge=1, le=65535)
    """TCP port of the endpoint."""

    @field_validator("address")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address to listen on (127.0.0.1 keeps it local)") from None
        return value


class SimulatedSection(_Section):
    """``[simulated]``: the in-process conveyor (``line.source = "simulated"``)."""

    items: int = _num(600, ge=0, hint="0 runs until stopped")
    """Items to emit; 0 runs until stopped."""
    rate_hz: float = _num(20.0, gt=0, rule="must be > 0 items per second")
    """Items per second on the belt."""
    seed: int = _num(0, ge=0)
    """Random seed of the simulated items."""
    mix: str = "recycler"
    """Intake mix (see ``sorter simulate --mix``)."""
    line: str = "a"
    """Sensor set-up preset (see ``sorter simulate --line``)."""
    pool: int = _num(300, ge=1, le=100_000)
    """Distinct items simulated up front and cycled with fresh ids."""
    faults: float = _num(0.002, ge=0, le=1, rule="must be a probability in [0, 1]")
    """Per-sensor dropout probability of the simulated items."""

    @field_validator("mix")
    @classmethod
    def _a_mix(cls, value: str) -> str:
        from sorter.simulate.run import MIXES

        if value not in MIXES:
            raise ValueError("is not a mix; choose one of " + ", ".join(sorted(MIXES)))
        return value

    @field_validator("line")
    @classmethod
    def _a_line(cls, value: str) -> str:
        from sorter.simulate.sensors import LINES

        if value not in LINES:
            raise ValueError("is not a line preset; choose one of " + ", ".join(sorted(LINES)))
        return value


class StatusSection(_Section):
    """``[status]``: the one-line live status on stderr."""

    enabled: bool = True
    """Show the status line."""
    interval_s: float = _num(1.0, gt=0, rule="must be > 0 seconds")
    """Refresh period."""


class DisksSection(_Section):
    """``[disks]``: free-space alarms on the log and audit disks (:mod:`sorter.line.disks`); the defaults
    are :class:`~sorter.line.disks.DiskSettings`'s, which also checks the values."""

    enabled: bool = DiskSettings.enabled
    """Watch the disks' free space at all."""
    interval_s: float = _num(DiskSettings.interval_s, gt=0, le=3600, rule="must be in (0, 3600] seconds")
    """How often free space is read (one ``statvfs`` per disk, off the event loop)."""
    warn_free_pct: float = _num(DiskSettings.warn_free_pct, ge=0, le=100)
    """Free space, in % of the disk, under which the level is ``warn``."""
    alarm_free_pct: float = _num(DiskSettings.alarm_free_pct, ge=0, le=100)
    """Free space, in % of the disk, under which the level is ``alarm`` (not above ``warn_free_pct``)."""
    warn_free_mb: float = _num(DiskSettings.warn_free_mb, ge=0)
    """Free space in MB under which the level is ``warn``, whatever the percentage."""
    alarm_free_mb: float = _num(DiskSettings.alarm_free_mb, ge=0)
    """Free space in MB under which the level is ``alarm`` (not above ``warn_free_mb``)."""


class RetentionSection(_Section):
    """``[retention]``: the controller deletes old images of the log it follows by the plant's policy
    (:mod:`sorter.retention`; ``docs/operations.md``)."""

    enabled: bool = False
    """Run retention from the controller (``line.source = "log"`` only), in a thread off the event loop."""
    keep_sorted_days: float = _num(7.0, ge=0)
    """Days to keep the images of items sorted to lead_acid or li_ion."""
    keep_labelled_days: float = _num(0.0, ge=0, rule="must be >= 0 (0 keeps them forever)")
    """Days to keep the images of labelled items (manual, hazard, spot checks, verdicts); 0 keeps them
    forever (the default: they are the labels of tomorrow)."""
    every_hours: float = _num(6.0, gt=0, le=24 * 7, rule="must be in (0, 168] hours")
    """How often retention runs; the first run is at the controller's start."""
    station_store: str = ""
    """The operator station's store (``station.sqlite``), read only: its queued and verdict items count
    as labelled. Empty: none."""

    def policy(self):  # -> sorter.retention.RetentionPolicy
        from sorter.retention import RetentionPolicy

        return RetentionPolicy.from_mapping(
            {"keep_sorted_days": self.keep_sorted_days, "keep_labelled_days": self.keep_labelled_days or None}
        )


_SECTIONS: Final[dict[str, type[_Section]]] = {
    "line": LineSection,
    "plc": PlcSection,
    "audit": AuditSection,
    "cases": CasesSection,
    "metrics": MetricsSection,
    "simulated": SimulatedSection,
    "status": StatusSection,
    "disks": DisksSection,
    "retention": RetentionSection,
}
_PATH_KEYS: Final = {
    ("line", "log_dir"),
    ("line", "model"),
    ("audit", "path"),
    ("retention", "station_store"),
    ("cases", "state_file"),
}
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


class LineConfig(BaseModel):
    """The whole configuration of ``sorter run``.

    Attributes
    ----------
    origins : mapping
        Where each key's value came from (``"default"``, the file, the
        environment variable or the ``--set`` option), for messages and
        ``sorter run --print-config``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: LineSection = Field(default_factory=LineSection)
    plc: PlcSection = Field(default_factory=PlcSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    cases: CasesSection = Field(default_factory=CasesSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    simulated: SimulatedSection = Field(default_factory=SimulatedSection)
    status: StatusSection = Field(default_factory=StatusSection)
    disks: DisksSection = Field(default_factory=DisksSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    origins: Mapping[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    def to_toml(self) -> str:
        """The effective configuration as TOML, each value commented with its origin."""
        out: list[str] = []
        for name in _SECTIONS:
            section = getattr(self, name)
            out.append(f"[{name}]")
            for key in type(section).model_fields:
                value = getattr(section, key)
                origin = self.origins.get(f"{name}.{key}", "default")
                out.append(f"{key} = {_toml_value(value)}  # {origin}")
            out.append("")
        return "\n".join(out)

    def replace(self, **sections: Mapping[str, Any]) -> LineConfig:
        """A copy with some keys changed, validated like any other layer.

        Examples
        --------
        >>> cfg = load_config(None, env={}, overrides=["line.source=simulated"])
        >>> cfg.replace(plc={"port": 1502}).plc.port
        1502
        """
        values = {s: getattr(self, s).model_dump() for s in _SECTIONS}
        origins = dict(self.origins)
        for section, changes in sections.items():
            _check_section_name(section, "LineConfig.replace")
            for key, value in changes.items():
                _check_key(section, key, f"LineConfig.replace({section}={{{key!r}: ...}})")
                values[section][key] = value
                origins[f"{section}.{key}"] = f"LineConfig.replace({section}={{{key!r}: ...}})"
        return _build(values, origins)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _fields(section: str) -> dict[str, Any]:
    """Each key of a section and its type."""
    cls = _SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {key: hints[key] for key in cls.model_fields}


def _check_section_name(section: str, where: str) -> None:
    if section not in _SECTIONS:
        raise ConfigError(
            f"{where}: unknown section [{section}]; valid sections: " + ", ".join(f"[{s}]" for s in _SECTIONS)
        )


def _check_key(section: str, key: str, where: str) -> None:
    if key not in _SECTIONS[section].model_fields:
        raise ConfigError(
            f"{where}: unknown key '{key}' in section [{section}]; valid keys of [{section}]: "
            f"{', '.join(_SECTIONS[section].model_fields)} (see docs/configuration.md)"
        )


def _parse_text(section: str, key: str, text: str, where: str) -> Any:
    """The value of an environment variable or ``--set`` option, parsed as the key's type."""
    kind = _fields(section)[key]
    name = f"{section}.{key}"
    text = str(text).strip()
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{where}: {name} must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text, 10)
        except ValueError:
            raise ConfigError(f"{where}: {name} must be a whole number, got {text!r}") from None
    if kind is float:
        try:
            num = float(text)
        except ValueError:
            raise ConfigError(f"{where}: {name} must be a number, got {text!r}") from None
        if not math.isfinite(num):
            raise ConfigError(f"{where}: {name} must be a finite number, got {text!r}")
        return num
    # Strings may be quoted on the command line as in TOML; the quotes are not part of the value.
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


_TYPE_ERRORS: Final = {
    "int": "must be a whole number",
    "bool": "must be true or false",
    "float": "must be a number",
    "string": "must be a string (in quotes)",
}
_RANGE_ERRORS: Final = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _message(section: str, err: dict[str, Any], origins: Mapping[str, str]) -> str:
    """A pydantic error on one key as this module's message: where, what, how to fix."""
    key = str(err["loc"][0]) if err["loc"] else ""
    name = f"{section}.{key}"
    where = origins.get(name, f"default {name}")
    kind, value = err["type"], err.get("input")
    field = _SECTIONS[section].model_fields.get(key)
    if kind == "extra_forbidden":
        _check_key(section, key, where)
    if kind == "finite_number":
        return f"{where}: {name} must be a finite number, got {value!r}"
    for prefix, words in _TYPE_ERRORS.items():
        if kind.startswith(prefix):
            return f"{where}: {name} {words}, got {value!r}"
    if kind in _RANGE_ERRORS and field is not None:
        rule = (field.json_schema_extra or {}).get("rule") or err["msg"]  # type: ignore[union-attr]
        return f"{where}: {name} = {value!r} {rule}"
    if kind == "literal_error" and field is not None:
        choices = typing.get_args(field.annotation)
        return f"{where}: {name} = {value!r} is not valid; choose one of " + ", ".join(repr(c) for c in choices)
    if kind == "value_error":
        return f"{where}: {name} = {value!r} {err['ctx']['error']}"
    return f"{where}: {name} = {value!r}: {err['msg']}"


def parse_override(text: str) -> tuple[str, str, str]:
    """Split a ``--set section.key=value`` option into its parts.

    Raises
    ------
    ConfigError
        If the option is not of that form or names an unknown section or key.

    Examples
    --------
    >>> parse_override("plc.port=502")
    ('plc', 'port', '502')
    """
    where = f"--set {text}"
    lhs, eq, value = text.partition("=")
    section, dot, key = lhs.strip().partition(".")
    if not eq or not dot or not section or not key:
        raise ConfigError(f"{where}: expected section.key=value, e.g. --set plc.host=192.168.10.20")
    _check_section_name(section, where)
    _check_key(section, key, where)
    return section, key, value


def _resolve_path(value: Any, base: Path | None) -> Any:
    if not isinstance(value, str) or not value or base is None:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    validate: bool = True,
) -> LineConfig:
    """Build the configuration: defaults < file < environment < ``--set`` options.

    Parameters
    ----------
    path : str, path-like or None
        The TOML file; ``None`` for defaults, environment and options only.
    env : mapping, optional
        The environment to read ``SORTER_<SECTION>_<KEY>`` variables from
        (default :data:`os.environ`).  Variables whose section part is not a
        section (``SORTER_HOME``) are ignored; an unknown key in a known
        section is refused.
    overrides : sequence of str
        ``section.key=value`` strings, applied last, in order.
    validate : bool
        Check the whole configuration (``False``: only each value's type, for
        ``sorter run --print-config`` to show an unfinished configuration).

    Returns
    -------
    LineConfig

    Raises
    ------
    ConfigError
        For a missing or malformed file, an unknown section or key, a value of
        the wrong type, or a value out of range; the message names where the
        value came from and how to fix it.
    """
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    origins: dict[str, str] = {}

    if path is not None:
        file = Path(path)
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                f"config file {file} does not exist; pass --config with a TOML file "
                "(see docs/configuration.md for an example)"
            ) from None
        except OSError as err:
            raise ConfigError(f"config file {file} cannot be read: {err}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {file} is not valid TOML: {err}") from err
        base = file.resolve().parent
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{file}: top-level key '{section}' is not a section; put keys under one of "
                    + ", ".join(f"[{s}]" for s in _SECTIONS)
                )
            _check_section_name(section, str(file))
            for key, value in table.items():
                _check_key(section, key, f"{file} [{section}]")
                values[section][key] = _resolve_path(value, base) if (section, key) in _PATH_KEYS else value
                origins[f"{section}.{key}"] = f"{file} [{section}] {key}"

    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        section, _, key = var[len(ENV_PREFIX) :].partition("_")
        section = section.lower()
        if section not in _SECTIONS:
            continue  # SORTER_HOME and the like are not ours
        key = key.lower()
        where = f"environment variable {var}"
        _check_key(section, key, where)
        values[section][key] = _parse_text(section, key, env[var], where)
        origins[f"{section}.{key}"] = where

    for text in overrides:
        section, key, raw = parse_override(text)
        where = f"--set {text}"
        values[section][key] = _parse_text(section, key, raw, where)
        origins[f"{section}.{key}"] = where

    return _build(values, origins, validate=validate)


_CONSTRAINTS: Final = _RANGE_ERRORS | {"literal_error", "value_error"}


def _section(section: str, values: dict[str, Any], origins: Mapping[str, str], validate: bool) -> _Section:
    cls = _SECTIONS[section]
    kinds = _fields(section)
    # A whole number where a number is wanted (TOML's 2 for 2.0) is that number, as a float.
    values = {k: float(v) if kinds.get(k) is float and type(v) is int else v for k, v in values.items()}
    try:
        return cls(**values)
    except ValidationError as err:
        errors = err.errors()
        if not validate and all(e["type"] in _CONSTRAINTS for e in errors):
            return cls.model_construct(**values)  # types are right; ranges are checked when it runs
        raise ConfigError(_message(section, errors[0], origins)) from None


def _build(values: dict[str, dict[str, Any]], origins: dict[str, str], *, validate: bool = True) -> LineConfig:
    cfg = LineConfig(**{s: _section(s, values[s], origins, validate) for s in _SECTIONS}, origins=dict(origins))
    if validate:
        _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: LineConfig) -> None:
    """Rules that tie keys together, asked of the code that owns each rule where there is one."""
    from sorter.line.plc.modbus import check_target
    from sorter.line.plc.protocol import RegisterMap

    def where(section: str, key: str) -> str:
        return cfg.origins.get(f"{section}.{key}", f"default {section}.{key}")

    def need(ok: bool, section: str, key: str, rule: str) -> None:
        if not ok:
            value = getattr(getattr(cfg, section), key)
            raise ConfigError(f"{where(section, key)}: {section}.{key} = {value!r} {rule}")

    ln = cfg.line
    need(bool(ln.name.strip()), "line", "name", "must not be empty")
    need(
        ln.source != "log" or bool(ln.log_dir),
        "line",
        "log_dir",
        'must name the log directory to follow when line.source = "log"',
    )
    if not ln.deadline_ms > 0:
        raise ConfigError(
            f"the decision deadline distance_m / belt_speed_m_s - actuator_lead_ms = "
            f"{ln.deadline_ms:.1f} ms is not positive ({where('line', 'distance_m')}, "
            f"{where('line', 'belt_speed_m_s')}, {where('line', 'actuator_lead_ms')}); "
            "check the units: metres, metres per second, milliseconds"
        )

    p = cfg.plc
    try:
        ip = check_target(p.host, p.port, p.device_id)
    except ConfigError:
        ip = None
    need(ip is not None, "plc", "host", "must be the PLC's IP address (no host names, no 0.0.0.0), e.g. 192.168.10.20")
    try:
        RegisterMap(**p.register_map_args)
    except ConfigError as err:
        raise ConfigError(
            f"{where('plc', 'base')}, {where('plc', 'slots')}: plc.base = {p.base}, "
            f"plc.slots = {p.slots}: {err}; the ring size must match the PLC"
        ) from None
    need(
        p.heartbeat_timeout_ms > p.heartbeat_ms,
        "plc",
        "heartbeat_timeout_ms",
        "must be longer than plc.heartbeat_ms (1000-2000 ms is usual)",
    )
    need(p.reconnect_max_ms >= p.reconnect_min_ms, "plc", "reconnect_max_ms", "must be at least plc.reconnect_min_ms")

    if ln.source == "simulated" and p.kind == "modbus" and ip is not None and not ip.is_loopback:
        raise ConfigError(
            f"{where('line', 'source')}: line.source = 'simulated' with plc.host = {p.host!r} "
            f"({where('plc', 'host')}): simulated items would be sent to a real PLC and could "
            "collide with the ids of real items; use a loopback PLC (sorter plc-sim) or plc.kind = 'memory'"
        )

    try:
        DiskSettings.from_mapping(cfg.disks.model_dump())  # its own rules: alarm levels not above warn levels
    except ConfigError as err:
        raise ConfigError(f"{where('disks', 'alarm_free_pct')}, {where('disks', 'alarm_free_mb')}: {err}") from None

    try:
        cfg.retention.policy()  # the policy's own rules: labelled kept at least as long as sorted
    except ConfigError as err:
        raise ConfigError(f"{where('retention', 'keep_labelled_days')}: {err}") from None
    need(
        not cfg.retention.enabled or ln.source == "log",
        "retention",
        "enabled",
        'needs line.source = "log" (retention deletes images of the log the line follows)',
    )

    c = cfg.cases
    if c.enabled:
        from sorter.errors import CaseStateError

        try:
            c.station_config(ln.name)
        except CaseStateError as err:
            raise ConfigError(f"{where('cases', 'case_id')}: [cases] {err}") from None
        try:
            block = c.case_block()
        except ConfigError as err:
            raise ConfigError(f"{where('cases', 'base')}: [cases] {err}") from None
        need(
            not block.overlaps(RegisterMap(**p.register_map_args)),
            "cases",
            "base",
            f"overlaps the mailbox registers {p.base}..; give the case block its own addresses (default 300)",
        )

    a = cfg.audit
    need(bool(a.path), "audit", "path", "must name the audit database file")
    need(
        a.max_lag_ms == 0 or a.max_lag_ms >= a.sync_interval_ms,
        "audit",
        "max_lag_ms",
        "must be 0 (off) or at least audit.sync_interval_ms",
    )
