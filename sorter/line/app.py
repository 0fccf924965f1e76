"""The line's wiring: from a :class:`~sorter.line.config.LineConfig` to a running controller.

:func:`run_line` is what ``sorter run`` (and ``sorter demo``) do: build the PLC link
(:func:`build_link`), the item source (:func:`build_source`), the metrics and the status
line, start a :class:`~sorter.line.controller.Controller`, and map signals to its public
controls (SIGINT/SIGTERM: :meth:`~sorter.line.controller.Controller.request_stop`, then
:meth:`~sorter.line.controller.Controller.abort`; SIGHUP:
:meth:`~sorter.line.controller.Controller.swap_model_soon`).

Examples
--------
>>> # summary = asyncio.run(run_line(load_config("line.toml"), handle_signals=True))
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from sorter.line.config import LineConfig
from sorter.line.controller import Controller, Resume, SourceFactory
from sorter.line.metrics import LineMetrics, StatusLine
from sorter.line.plc.casesim import CaseStationProgram
from sorter.line.plc.link import PlcLink
from sorter.line.plc.memory import MemoryPlc
from sorter.line.plc.modbus import ModbusPlcLink
from sorter.line.plc.protocol import RegisterMap
from sorter.line.scoring_pool import ScoringPool
from sorter.line.sources import BeltTiming, ItemSource, LogFollowSource, SimulatedSource
from sorter.line.summary import RunSummary

logger = logging.getLogger(__name__)

__all__ = ["RECHECK_LINES", "build_link", "build_source", "run_line"]

RECHECK_LINES: Final = 1024
"""Lines before the resume point re-checked for rows a crash left out (more than can be in flight)."""


def build_link(config: LineConfig) -> PlcLink:
    """The PLC link the configuration asks for (not connected yet)."""
    p = config.plc
    options = dict(
        register_map=RegisterMap(**p.register_map_args),
        heartbeat_timeout_s=p.heartbeat_timeout_ms / 1000.0,
        request_timeout_s=p.request_timeout_ms / 1000.0,
        reconnect_min_s=p.reconnect_min_ms / 1000.0,
        reconnect_max_s=p.reconnect_max_ms / 1000.0,
        poll_interval_s=p.poll_interval_ms / 1000.0,
        rewrite_interval_s=p.rewrite_interval_ms / 1000.0,
    )
    case_block = config.cases.case_block() if config.cases.enabled else None
    if p.kind == "memory":
        # A dry run's in-process PLC has the case block when packing is on, with an operator who
        # swaps a full case in 5 s.
        station = (
            CaseStationProgram(
                swap_s=5.0, ready_at_start=True, lane=config.cases.lane, positions=config.cases.positions
            )
            if case_block is not None
            else None
        )
        return MemoryPlc(scan_ms=p.memory_scan_ms, case_block=case_block, case_station=station, **options)  # type: ignore[arg-type]
    return ModbusPlcLink(p.host, p.port, device_id=p.device_id, case_block=case_block, **options)  # type: ignore[arg-type]


def build_source(
    config: LineConfig, *, announce: Callable[[int, float], None] | None = None, pool: Sequence[Any] | None = None
) -> SourceFactory:
    """A source factory for :class:`Controller` from the configuration.

    A log source resumes after the audit log's resume point; ``announce`` tells
    an in-process PLC simulator about every item.
    """
    ln = config.line
    timing = BeltTiming(ln.deadline_ms / 1000.0, ln.deadline_from)

    def factory(resume: Resume, is_recorded: Callable[[str], bool]) -> ItemSource:
        if ln.source == "simulated":
            from sorter.simulate.run import SimConfig

            s = config.simulated
            sim = SimConfig(items=max(1, s.pool), seed=s.seed, mix=s.mix, line=s.line, faults=s.faults)
            return SimulatedSource(
                sim,
                timing,
                items=s.items,
                rate_hz=s.rate_hz,
                pool_size=s.pool,
                pool=pool,
                announce=announce,
                workers=min(2, os.cpu_count() or 1),
            )
        start = resume.resume_point + 1
        if resume.resume_point:
            logger.info("resuming %s after line %d (from the audit log)", ln.log_dir, resume.resume_point)
        return LogFollowSource(
            Path(ln.log_dir),
            timing,
            start_line=start,
            recheck_from=max(1, start - RECHECK_LINES) if resume.resume_point else None,
            is_recorded=is_recorded,
            follow=ln.follow,
            poll_s=ln.log_poll_ms / 1000.0,
            queue_size=max(4, min(ln.max_in_flight, 256)),
            announce=announce,
        )

    return factory


async def run_line(
    config: LineConfig,
    *,
    link: PlcLink | None = None,
    source: ItemSource | SourceFactory | None = None,
    scorer: ScoringPool | None = None,
    announce: Callable[[int, float], None] | None = None,
    status: StatusLine | None | bool = None,
    handle_signals: bool = False,
    settle: bool = True,
) -> RunSummary:
    """Run the line controller as the configuration says; what ``sorter run`` does.

    Parameters
    ----------
    config : LineConfig
    link, source, scorer : optional
        Replace what the configuration would build (tests, the demo).
    announce : callable, optional
        Tell an in-process PLC simulator about each item.  With
        ``plc.kind = "memory"`` the in-memory PLC is told automatically.
    status : StatusLine, bool or None
        The live status line: ``None`` follows ``status.enabled``, ``False``
        shows none.
    handle_signals : bool
        SIGINT/SIGTERM stop gracefully (drain in flight, then summary); a
        second signal stops at once.  Only from the main thread.
    """
    link = link or build_link(config)
    if announce is None and isinstance(link, MemoryPlc):
        announce = link.model.expect
    metrics = LineMetrics()
    if config.metrics.enabled:
        metrics.serve(config.metrics.port, config.metrics.address)
    if status is None:
        status = config.status.enabled
    status_line: StatusLine | None
    if isinstance(status, StatusLine):
        status_line = status
    elif status:
        status_line = None  # set below, needs the controller's snapshot
    else:
        status_line = None
    controller = Controller(
        config,
        link=link,
        source=source or build_source(config, announce=announce),
        scorer=scorer,
        metrics=metrics,
        status=status_line,
        settle=settle,
    )
    if status is True:
        controller.status = StatusLine(controller.snapshot, interval_s=config.status.interval_s)
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []
    if handle_signals:

        def on_signal(signum: int) -> None:
            if controller.stop_requested:
                logger.warning("second %s: stopping now", signal.Signals(signum).name)
                controller.abort()
            else:
                logger.warning(
                    "%s: finishing the items in flight, then stopping (again to stop now)", signal.Signals(signum).name
                )
                controller.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
            signals.append(sig)

        def on_hangup() -> None:
            logger.warning("SIGHUP: reloading the model from %s", config.line.model or "the shipped model")
            controller.swap_model_soon(config.line.model or None)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        signals.append(signal.SIGHUP)
    try:
        return await controller.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        metrics.close()
