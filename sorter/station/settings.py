"""The station's settings: built from line.toml and the command line (``sorter station``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StationSettings"]


@dataclass(frozen=True)
class StationSettings:
    """Everything the station needs to know (built from line.toml and the command line)."""

    audit_path: str
    log_dir: str | None
    store_path: str
    line_name: str = "line"
    line_model: str = ""
    metrics_url: str | None = None
    spot_check: float = 0.02
    candidates_dir: str | None = None
    controller_pidfile: str | None = None
    reload_command: str | None = None
    secure_cookies: bool = False
    refresh_s: float = 1.0
