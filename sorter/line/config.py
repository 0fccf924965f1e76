"""Configuration of the line controller: typed, frozen, and strict about unknown keys.

A :class:`LineConfig` has one frozen dataclass per section of the TOML file
(``[line]``, ``[plc]``, ``[audit]``, ``[metrics]``, ``[simulated]``, ``[status]``).
:func:`load_config` builds it from four layers, later layers winning:

1. the defaults written in the dataclasses below,
2. the TOML file (``--config line.toml``),
3. the environment: ``SORTER_<SECTION>_<KEY>``, e.g. ``SORTER_PLC_PORT=502``,
4. the command line: ``--set section.key=value`` (repeatable).

So the precedence is **command line > environment > file > defaults**.  Every
key and its default is listed in ``docs/configuration.md``.

Unknown sections and keys are refused (a misspelt key would otherwise silently
keep its default), with a message naming the file (or variable, or option),
the section and the key, and listing the valid keys.  Values are checked for
type and range once, here, and then trusted by the controller.

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

import dataclasses
import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sorter.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "AuditSection",
    "LineConfig",
    "LineSection",
    "MetricsSection",
    "PlcSection",
    "SimulatedSection",
    "StatusSection",
    "load_config",
    "parse_override",
]

ENV_PREFIX: Final = "SORTER_"


@dataclass(frozen=True)
class LineSection:
    """``[line]``: where items come from, how the belt moves, how scoring runs."""

    name: str = "line-1"
    """Name of the line, used in logs and metrics labels."""
    model: str = ""
    """Model directory; ``""`` loads the model shipped with sorter."""
    allow_line_mismatch: bool = False
    """Score items of a log whose declared line (``meta.json``) differs from the model's as if it
    matched. Without it, lead_acid is closed for them (they go to manual) until the model is
    calibrated for this line (``sorter calibrate``) or retrained. Dangerous; never the default."""
    source: str = "log"
    """``"log"``: follow a ``sorter-log/1`` directory; ``"simulated"``: an in-process conveyor."""
    log_dir: str = ""
    """The log directory to follow (``source = "log"``)."""
    follow: bool = True
    """Keep waiting for new lines at the end of the log (``false``: stop at its end)."""
    log_poll_ms: float = 5.0
    """How often a caught-up follower looks for new lines."""
    distance_m: float = 0.3
    """Belt distance from the sensor bridge to the diverter."""
    belt_speed_m_s: float = 3.0
    """Belt speed."""
    actuator_lead_ms: float = 10.0
    """How long before the item reaches the diverter the PLC needs the decision."""
    deadline_from: str = "bridge"
    """Start of the deadline clock: ``"bridge"`` (the item's bridge time ``t``) or ``"arrival"``."""
    max_in_flight: int = 64
    """Most items being scored, recorded or delivered at once (bounds memory)."""
    scorer_workers: int = 2
    """Scoring workers (processes or threads)."""
    scorer_pool: str = "process"
    """``"process"`` (spawned worker processes) or ``"thread"``."""
    max_batch: int = 16
    """Most items one worker scores in one model call (micro-batching under load)."""

    @property
    def deadline_ms(self) -> float:
        """Decision budget per item: transit time minus actuator lead (90 ms by default)."""
        return 1000.0 * self.distance_m / self.belt_speed_m_s - self.actuator_lead_ms


@dataclass(frozen=True)
class PlcSection:
    """``[plc]``: the link to the PLC (see ``docs/plc-interface.md``)."""

    kind: str = "modbus"
    """``"modbus"`` (Modbus TCP) or ``"memory"`` (in-process simulated PLC, for dry runs)."""
    host: str = "127.0.0.1"
    """IP address of the PLC (no host names)."""
    port: int = 5020
    """Modbus TCP port (a real PLC normally uses 502; ``sorter plc-sim`` defaults to 5020)."""
    device_id: int = 1
    """Modbus unit id, 1..255."""
    base: int = 100
    """PDU address of the register map."""
    slots: int = 8
    """Mailbox ring size N (must match the PLC)."""
    heartbeat_ms: float = 200.0
    """PC heartbeat period."""
    heartbeat_timeout_ms: float = 1500.0
    """The PLC heartbeat must change within this time, else the link is faulted."""
    request_timeout_ms: float = 250.0
    """Timeout of one Modbus request."""
    reconnect_min_ms: float = 100.0
    """First reconnection delay."""
    reconnect_max_ms: float = 5000.0
    """Longest reconnection delay (exponential backoff)."""
    poll_interval_ms: float = 1.0
    """Pause between acknowledgement reads while decisions wait and the PLC scan is due (reads follow the scan)."""
    rewrite_interval_ms: float = 50.0
    """Rewrite an unacknowledged slot (same seq) after this long."""
    ack_grace_ms: float = 50.0
    """How long after an item's deadline to keep waiting for the ack of a decision already sent;
    the PLC's answer (accepted or late) is the truth about whether it was in time."""
    memory_scan_ms: float = 10.0
    """Scan period of the in-process PLC (``kind = "memory"``)."""

    @property
    def register_map_args(self) -> dict[str, int]:
        return {"base": self.base, "slots": self.slots}


@dataclass(frozen=True)
class AuditSection:
    """``[audit]``: the durable decision log (SQLite)."""

    path: str = "audit.sqlite"
    """The audit database file (its directory must exist)."""
    delivery_flush_ms: float = 50.0
    """Longest a delivery outcome waits to share a transaction with the next decision (0: commit at once).
    Decisions themselves are always committed at once, before they are sent."""
    sync: str = "interval"
    """``"interval"``: commits do not wait for the disk; a flusher thread makes them durable every
    ``sync_interval_ms`` (a power cut loses at most that window).  ``"full"``: every commit waits for
    fsync before its decision is sent (for disks with power-loss protection)."""
    sync_interval_ms: float = 20.0
    """Cadence of the flusher with ``sync = "interval"`` (1..1000 ms; at most 50 ms is advised)."""
    max_lag_ms: float = 0.0
    """With ``sync = "interval"``: send no decision while committed rows have waited longer than this to
    reach the disk (the item goes to the safe lane), so a power cut can never lose more than this window.
    0 (the default) never holds a decision back for the disk; the restart's reconciliation flags what a
    power cut lost."""


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: Prometheus endpoint."""

    enabled: bool = False
    """Serve ``/metrics`` over HTTP."""
    address: str = "127.0.0.1"
    """Address to listen on; loopback by default (pass an interface address to expose it)."""
    port: int = 9108
    """TCP port of the endpoint."""


@dataclass(frozen=True)
class SimulatedSection:
    """``[simulated]``: the in-process conveyor (``line.source = "simulated"``)."""

    items: int = 600
    """Items to emit; 0 runs until stopped."""
    rate_hz: float = 20.0
    """Items per second on the belt."""
    seed: int = 0
    """Random seed of the simulated items."""
    mix: str = "recycler"
    """Intake mix (see ``sorter simulate --mix``)."""
    line: str = "a"
    """Sensor set-up preset (see ``sorter simulate --line``)."""
    pool: int = 300
    """Distinct items simulated up front and cycled with fresh ids."""
    faults: float = 0.002
    """Per-sensor dropout probability of the simulated items."""


@dataclass(frozen=True)
class StatusSection:
    """``[status]``: the one-line live status on stderr."""

    enabled: bool = True
    """Show the status line."""
    interval_s: float = 1.0
    """Refresh period."""


_SECTIONS: Final[dict[str, type]] = {
    "line": LineSection,
    "plc": PlcSection,
    "audit": AuditSection,
    "metrics": MetricsSection,
    "simulated": SimulatedSection,
    "status": StatusSection,
}
_PATH_KEYS: Final = {("line", "log_dir"), ("line", "model"), ("audit", "path")}
_CHOICES: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("line", "source"): ("log", "simulated"),
    ("line", "deadline_from"): ("bridge", "arrival"),
    ("line", "scorer_pool"): ("process", "thread"),
    ("plc", "kind"): ("modbus", "memory"),
    ("audit", "sync"): ("interval", "full"),
}
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class LineConfig:
    """The whole configuration of ``sorter run``.

    Attributes
    ----------
    origins : mapping
        Where each key's value came from (``"default"``, the file, the
        environment variable or the ``--set`` option), for messages and
        ``sorter run --print-config``.
    """

    line: LineSection = field(default_factory=LineSection)
    plc: PlcSection = field(default_factory=PlcSection)
    audit: AuditSection = field(default_factory=AuditSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    simulated: SimulatedSection = field(default_factory=SimulatedSection)
    status: StatusSection = field(default_factory=StatusSection)
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_toml(self) -> str:
        """The effective configuration as TOML, each value commented with its origin."""
        out: list[str] = []
        for name in _SECTIONS:
            section = getattr(self, name)
            out.append(f"[{name}]")
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                origin = self.origins.get(f"{name}.{f.name}", "default")
                out.append(f"{f.name} = {_toml_value(value)}  # {origin}")
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
        values = _current_values(self)
        origins = dict(self.origins)
        for section, changes in sections.items():
            _check_section_name(section, "LineConfig.replace")
            for key, value in changes.items():
                where = f"LineConfig.replace({section}={{{key!r}: ...}})"
                _check_key(section, key, where)
                values[section][key] = _coerce(section, key, value, where, from_text=False)
                origins[f"{section}.{key}"] = where
        return _build(values, origins)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _fields(section: str) -> dict[str, type]:
    cls = _SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _valid_keys(section: str) -> str:
    return ", ".join(_fields(section))


def _check_section_name(section: str, where: str) -> None:
    if section not in _SECTIONS:
        raise ConfigError(
            f"{where}: unknown section [{section}]; valid sections: "
            + ", ".join(f"[{s}]" for s in _SECTIONS)
        )


def _check_key(section: str, key: str, where: str) -> None:
    if key not in _fields(section):
        raise ConfigError(
            f"{where}: unknown key '{key}' in section [{section}]; valid keys of [{section}]: "
            f"{_valid_keys(section)} (see docs/configuration.md)"
        )


def _coerce(section: str, key: str, value: Any, where: str, *, from_text: bool) -> Any:
    """Check (file values) or parse (environment and --set text) one value."""
    kind = _fields(section)[key]
    name = f"{section}.{key}"
    if from_text:
        text = str(value).strip()
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
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be a whole number, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {name} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f'{where}: {name} must be a string (in quotes), got {value!r}')
    return value


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
        raise ConfigError(
            f"{where}: expected section.key=value, e.g. --set plc.host=192.168.10.20"
        )
    _check_section_name(section, where)
    _check_key(section, key, where)
    return section, key, value


def _resolve_path(value: str, base: Path | None) -> str:
    if not value or base is None:
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
    values: dict[str, dict[str, Any]] = {
        s: {k: getattr(cls(), k) for k in _fields(s)} for s, cls in _SECTIONS.items()
    }
    origins: dict[str, str] = {}

    if path is not None:
        file = Path(path)
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist; pass --config with a TOML file "
                              "(see docs/configuration.md for an example)") from None
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
                where = f"{file} [{section}] {key}"
                _check_key(section, key, f"{file} [{section}]")
                value = _coerce(section, key, value, where, from_text=False)
                if (section, key) in _PATH_KEYS:
                    value = _resolve_path(value, base)
                values[section][key] = value
                origins[f"{section}.{key}"] = where

    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        section, _, key = var[len(ENV_PREFIX):].partition("_")
        section = section.lower()
        if section not in _SECTIONS:
            continue  # SORTER_HOME and the like are not ours
        key = key.lower()
        where = f"environment variable {var}"
        _check_key(section, key, where)
        values[section][key] = _coerce(section, key, env[var], where, from_text=True)
        origins[f"{section}.{key}"] = where

    for text in overrides:
        section, key, raw = parse_override(text)
        where = f"--set {text}"
        values[section][key] = _coerce(section, key, raw, where, from_text=True)
        origins[f"{section}.{key}"] = where

    return _build(values, origins, validate=validate)


def _current_values(cfg: LineConfig) -> dict[str, dict[str, Any]]:
    return {s: dataclasses.asdict(getattr(cfg, s)) for s in _SECTIONS}


def _build(values: dict[str, dict[str, Any]], origins: dict[str, str], *, validate: bool = True) -> LineConfig:
    cfg = LineConfig(
        **{s: cls(**values[s]) for s, cls in _SECTIONS.items()},
        origins=dict(origins),
    )
    if validate:
        _validate(cfg)
    return cfg


def _validate(cfg: LineConfig) -> None:
    def where(section: str, key: str) -> str:
        return cfg.origins.get(f"{section}.{key}", f"default {section}.{key}")

    def need(ok: bool, section: str, key: str, rule: str) -> None:
        if not ok:
            value = getattr(getattr(cfg, section), key)
            raise ConfigError(f"{where(section, key)}: {section}.{key} = {value!r} {rule}")

    for (section, key), choices in _CHOICES.items():
        need(getattr(getattr(cfg, section), key) in choices, section, key,
             "is not valid; choose one of " + ", ".join(repr(c) for c in choices))

    ln = cfg.line
    need(bool(ln.name.strip()), "line", "name", "must not be empty")
    need(ln.source != "log" or bool(ln.log_dir), "line", "log_dir",
         'must name the log directory to follow when line.source = "log"')
    need(ln.log_poll_ms > 0, "line", "log_poll_ms", "must be > 0 (5 ms keeps the delay small)")
    need(ln.distance_m > 0, "line", "distance_m", "must be > 0 (metres from the sensor bridge to the diverter)")
    need(ln.belt_speed_m_s > 0, "line", "belt_speed_m_s", "must be > 0 (metres per second)")
    need(ln.actuator_lead_ms >= 0, "line", "actuator_lead_ms", "must be >= 0")
    if not ln.deadline_ms > 0:
        raise ConfigError(
            f"the decision deadline distance_m / belt_speed_m_s - actuator_lead_ms = "
            f"{ln.deadline_ms:.1f} ms is not positive ({where('line', 'distance_m')}, "
            f"{where('line', 'belt_speed_m_s')}, {where('line', 'actuator_lead_ms')}); "
            "check the units: metres, metres per second, milliseconds"
        )
    need(1 <= ln.max_in_flight <= 100_000, "line", "max_in_flight", "must be in 1..100000")
    need(1 <= ln.scorer_workers <= 64, "line", "scorer_workers", "must be in 1..64")
    need(1 <= ln.max_batch <= 1024, "line", "max_batch", "must be in 1..1024")

    p = cfg.plc
    try:
        ip = ipaddress.ip_address(p.host)
    except ValueError:
        ip = None
    need(ip is not None and not ip.is_unspecified and not ip.is_multicast, "plc", "host",
         "must be the PLC's IP address (no host names, no 0.0.0.0), e.g. 192.168.10.20")
    need(1 <= p.port <= 65535, "plc", "port", "must be in 1..65535 (Modbus TCP normally uses 502)")
    need(1 <= p.device_id <= 255, "plc", "device_id", "must be in 1..255 (0 is broadcast)")
    need(1 <= p.slots <= 32, "plc", "slots", "must be in 1..32 and match the PLC")
    need(0 <= p.base <= 0xFFFF - (21 + 7 * p.slots) + 1, "plc", "base",
         "does not leave room for the register map below 65536")
    need(10 <= p.heartbeat_ms <= 10_000, "plc", "heartbeat_ms", "must be in 10..10000 (100-500 ms is usual)")
    need(p.heartbeat_timeout_ms > p.heartbeat_ms, "plc", "heartbeat_timeout_ms",
         "must be longer than plc.heartbeat_ms (1000-2000 ms is usual)")
    for key in ("request_timeout_ms", "reconnect_min_ms", "poll_interval_ms", "rewrite_interval_ms",
                "memory_scan_ms"):
        need(getattr(p, key) > 0, "plc", key, "must be > 0")
    need(p.reconnect_max_ms >= p.reconnect_min_ms, "plc", "reconnect_max_ms",
         "must be at least plc.reconnect_min_ms")
    need(p.ack_grace_ms >= 0, "plc", "ack_grace_ms", "must be >= 0")

    if ln.source == "simulated" and p.kind == "modbus" and ip is not None and not ip.is_loopback:
        raise ConfigError(
            f"{where('line', 'source')}: line.source = 'simulated' with plc.host = {p.host!r} "
            f"({where('plc', 'host')}): simulated items would be sent to a real PLC and could "
            "collide with the ids of real items; use a loopback PLC (sorter plc-sim) or plc.kind = 'memory'"
        )

    need(bool(cfg.audit.path), "audit", "path", "must name the audit database file")
    need(0 <= cfg.audit.delivery_flush_ms <= 10_000, "audit", "delivery_flush_ms", "must be in 0..10000")
    need(cfg.audit.max_lag_ms == 0 or cfg.audit.max_lag_ms >= cfg.audit.sync_interval_ms, "audit", "max_lag_ms",
         "must be 0 (off) or at least audit.sync_interval_ms")
    need(1 <= cfg.audit.sync_interval_ms <= 1000, "audit", "sync_interval_ms",
         "must be in 1..1000 (a power cut loses at most this window of rows; 20 ms is the default)")

    m = cfg.metrics
    try:
        mip = ipaddress.ip_address(m.address)
    except ValueError:
        mip = None
    need(mip is not None, "metrics", "address", "must be an IP address to listen on (127.0.0.1 keeps it local)")
    need(1 <= m.port <= 65535, "metrics", "port", "must be in 1..65535")

    from sorter.simulate.run import MIXES
    from sorter.simulate.sensors import LINES

    s = cfg.simulated
    need(s.items >= 0, "simulated", "items", "must be >= 0 (0 runs until stopped)")
    need(s.rate_hz > 0, "simulated", "rate_hz", "must be > 0 items per second")
    need(s.seed >= 0, "simulated", "seed", "must be >= 0")
    need(s.mix in MIXES, "simulated", "mix", "is not a mix; choose one of " + ", ".join(sorted(MIXES)))
    need(s.line in LINES, "simulated", "line", "is not a line preset; choose one of " + ", ".join(sorted(LINES)))
    need(1 <= s.pool <= 100_000, "simulated", "pool", "must be in 1..100000")
    need(0 <= s.faults <= 1, "simulated", "faults", "must be a probability in [0, 1]")

    need(cfg.status.interval_s > 0, "status", "interval_s", "must be > 0 seconds")
