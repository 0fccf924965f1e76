"""Free space on the line's disks: alarms before they fill, and what the line does when one is full.

A line that runs for weeks fills its disks unless something stops it: the recorder's log and images, the
audit log.  :class:`DiskWatch` looks at the free space of each disk the line writes to (the source log's
and the audit log's) every ``interval_s`` and raises an alarm, as a log line and a metric, when it falls
under a threshold:

- ``warn``: free space under ``warn_free_pct`` % of the disk or under ``warn_free_mb`` MB (WARNING);
- ``alarm``: under ``alarm_free_pct`` % or ``alarm_free_mb`` MB (ERROR, with "ALARM" in the message).

Each change of level is logged once (and its return to normal); the metrics carry the current state:

``sorter_line_disk_free_bytes{disk}``
    Free bytes for an unprivileged writer (``statvfs`` ``f_bavail``).
``sorter_line_disk_level{disk}``
    0 ok, 1 warn, 2 alarm.
``sorter_line_audit_writable``
    1 while the audit log's commits succeed, 0 while they fail (a full disk, an unwritable file).

When the audit disk is full nevertheless, the audit writer's commits fail with ``SQLITE_FULL``; the
controller does not send a decision it could not record, so the PLC sends those items to its safe lane
by itself, and the writer logs one ALARM naming the cause (:class:`~sorter.line.audit.AuditWriter`).
Nothing stops: as soon as space returns the next commit succeeds and decisions flow again.

Settings (:class:`DiskSettings`) come from the ``[disks]`` table of the line's configuration when it has
one, else the defaults.

Examples
--------
>>> import tempfile
>>> watch = DiskWatch({"audit": tempfile.gettempdir()}, DiskSettings(warn_free_pct=0.0, alarm_free_pct=0.0,
...                   warn_free_mb=0, alarm_free_mb=0))
>>> [r.level for r in watch.check().values()]
['ok']
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from sorter.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DiskReading", "DiskSettings", "DiskWatch", "line_disks"]

Level = Literal["ok", "warn", "alarm"]
_LEVEL_CODE: dict[str, int] = {"ok": 0, "warn": 1, "alarm": 2}


@dataclass(frozen=True)
class DiskSettings:
    """Thresholds of the free-space alarms (the ``[disks]`` table of the line's configuration).

    Parameters
    ----------
    enabled : bool, default True
        Watch the disks at all.
    interval_s : float, default 10.0
        How often free space is read (one ``statvfs`` per disk, off the event loop).
    warn_free_pct, alarm_free_pct : float, default 10.0 and 5.0
        Free space, in % of the disk, under which the level is ``warn`` / ``alarm``.
    warn_free_mb, alarm_free_mb : float, default 2048 and 512
        Free space in MB under which the level is ``warn`` / ``alarm``, whatever the percentage (on a big
        disk 5 % is a lot; at 100 items/s the recorder writes about 10 MB a second).
    """

    enabled: bool = True
    interval_s: float = 10.0
    warn_free_pct: float = 10.0
    alarm_free_pct: float = 5.0
    warn_free_mb: float = 2048.0
    alarm_free_mb: float = 512.0

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "enabled":
                if not isinstance(v, bool):
                    problems.append(f"disks.enabled must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                problems.append(f"disks.{f.name} must be a number >= 0, got {v!r}")
        if not problems:
            if not 0 < self.interval_s <= 3600:
                problems.append(f"disks.interval_s must be in (0, 3600], got {self.interval_s!r}")
            if self.warn_free_pct > 100 or self.alarm_free_pct > 100:
                problems.append("disks.warn_free_pct and disks.alarm_free_pct are percentages (0..100)")
            if self.alarm_free_pct > self.warn_free_pct or self.alarm_free_mb > self.warn_free_mb:
                problems.append(
                    "the alarm thresholds must not be above the warn thresholds "
                    f"(alarm {self.alarm_free_pct} % / {self.alarm_free_mb} MB, "
                    f"warn {self.warn_free_pct} % / {self.warn_free_mb} MB)"
                )
        if problems:
            raise ConfigError("; ".join(problems) + " (see docs/operations.md, free disk space)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | Any) -> DiskSettings:
        """From a ``[disks]`` table (a mapping or an object with the same attributes); unknown keys refused."""
        if not isinstance(values, Mapping):
            values = {f.name: getattr(values, f.name) for f in fields(cls) if hasattr(values, f.name)}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"[disks]: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def level(self, free: int, total: int) -> Level:
        """The level for ``free`` of ``total`` bytes."""
        pct = 100.0 * free / total if total else 0.0
        mb = free / 1e6
        if pct < self.alarm_free_pct or mb < self.alarm_free_mb:
            return "alarm"
        if pct < self.warn_free_pct or mb < self.warn_free_mb:
            return "warn"
        return "ok"


@dataclass(frozen=True)
class DiskReading:
    """Free space of one disk at one time."""

    name: str
    path: str
    free_bytes: int
    total_bytes: int
    level: Level

    @property
    def free_pct(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent (a log directory the recorder has not created yet)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path


class DiskWatch:
    """Reads the free space of named disks and raises alarms on their levels.

    Parameters
    ----------
    paths : mapping of name to path
        E.g. ``{"log": "/data/line-a/log", "audit": "/var/lib/sorter"}``; a path that does not exist yet
        is looked up through its nearest existing parent.
    settings : DiskSettings
    registry : prometheus_client.CollectorRegistry, optional
        Where to register the metrics (none without it).
    audit_failing : callable, optional
        ``() -> bool``, whether the audit log's commits are failing; published as
        ``sorter_line_audit_writable``.
    statvfs : callable
        ``os.statvfs`` (tests replace it).
    """

    def __init__(
        self,
        paths: Mapping[str, str | os.PathLike[str]],
        settings: DiskSettings | None = None,
        *,
        registry: Any = None,
        audit_failing: Callable[[], bool] | None = None,
        statvfs: Callable[[str], Any] = os.statvfs,
    ) -> None:
        self.paths = {name: Path(p) for name, p in paths.items()}
        self.settings = settings or DiskSettings()
        self._statvfs = statvfs
        self._audit_failing = audit_failing
        self.levels: dict[str, Level] = {}
        self._free = self._level = self._writable = None
        if registry is not None:
            from prometheus_client import Gauge

            self._free = Gauge(
                "sorter_line_disk_free_bytes", "Free bytes on each disk the line writes to", ["disk"], registry=registry
            )
            self._level = Gauge(
                "sorter_line_disk_level",
                "Free-space level of each disk: 0 ok, 1 warn, 2 alarm",
                ["disk"],
                registry=registry,
            )
            self._writable = Gauge(
                "sorter_line_audit_writable",
                "1 while the audit log's commits succeed, 0 while they fail",
                registry=registry,
            )
            self._writable.set(1)

    def check(self) -> dict[str, DiskReading]:
        """Read every disk once; log each change of level; update the metrics."""
        out: dict[str, DiskReading] = {}
        for name, path in self.paths.items():
            where = _existing(path)
            try:
                st = self._statvfs(str(where))
            except OSError as err:
                logger.warning("disk %s (%s): free space not readable: %s", name, path, err)
                continue
            free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
            reading = DiskReading(name, str(path), free, total, self.settings.level(free, total))
            out[name] = reading
            self._publish(reading)
        if self._writable is not None and self._audit_failing is not None:
            self._writable.set(0 if self._audit_failing() else 1)
        return out

    def _publish(self, r: DiskReading) -> None:
        before = self.levels.get(r.name, "ok")
        self.levels[r.name] = r.level
        if self._free is not None and self._level is not None:
            self._free.labels(disk=r.name).set(r.free_bytes)
            self._level.labels(disk=r.name).set(_LEVEL_CODE[r.level])
        if r.level == before:
            return
        s = self.settings
        what = (
            f"disk {r.name} ({r.path}): {r.free_bytes / 1e6:.0f} MB free ({r.free_pct:.1f} % of "
            f"{r.total_bytes / 1e9:.1f} GB)"
        )
        if r.level == "alarm":
            logger.error(
                "ALARM %s, under %g %% or %g MB; free space now (image retention, `sorter audit export "
                "--delete`): a full %s disk stops %s",
                what,
                s.alarm_free_pct,
                s.alarm_free_mb,
                r.name,
                "the decisions (the PLC defaults every item)" if r.name == "audit" else "the recording",
            )
        elif r.level == "warn":
            logger.warning("%s, under %g %% or %g MB", what, s.warn_free_pct, s.warn_free_mb)
        else:
            logger.info("%s: back to normal", what)

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled (``statvfs`` off the event loop)."""
        if not self.settings.enabled:
            return
        while True:
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # noqa: BLE001 - a watcher must never take the line down
                logger.exception("disk watch failed; retrying")
            await asyncio.sleep(self.settings.interval_s)


def line_disks(config: Any) -> dict[str, Path]:
    """The disks a line writes to: its source log's directory (a log source) and its audit log's."""
    out: dict[str, Path] = {}
    line = getattr(config, "line", None)
    if line is not None and getattr(line, "source", None) == "log" and getattr(line, "log_dir", None):
        out["log"] = Path(line.log_dir)
    audit = getattr(getattr(config, "audit", None), "path", None)
    if audit:
        out["audit"] = Path(audit).parent
    return out


def settings_of(config: Any) -> DiskSettings:
    """The ``[disks]`` settings of a line configuration, or the defaults when it has none."""
    table = getattr(config, "disks", None)
    return DiskSettings() if table is None else DiskSettings.from_mapping(table)
