"""The line controller: score each item as it passes and tell the PLC its lane, before its deadline.

Per item, in this order:

1. **Ambient** — the running ambient temperature is updated in item order, in
   the controller (it is state shared by all items).
2. **Score** off the event loop, in a small pool of worker processes
   (:class:`~sorter.line.scoring_pool.ScoringPool`; the model is loaded once per worker).  When items
   queue up, a free worker takes all of them in one model call: the model's cost
   is per call, not per row, so the line keeps up under load.  An item whose
   deadline passed while it waited for a worker is not scored (*overload*).
3. **Pack** (``[cases] enabled``) — an item to be sent to the case station's lane is
   offered to its open case (:mod:`sorter.line.casestation`) in belt order: *into the case*
   or *the quarantine buffer*.
4. **Audit** — the decision is committed to the audit log (SQLite, fsync)
   *before* it is sent: a decision the PLC may act on is always on disk.  Its case outcome,
   and the closing of a case it caused, are in the same transaction.
5. **Send** — ``send_decision(plc_id, lane, timeout_s=...)`` with the time left to
   the deadline (plus ``plc.ack_grace_ms``: once sent, the PLC's own answer,
   ``accepted`` or ``late``, says whether it was in time).
6. **Record the delivery**: ``acked`` (accepted by the PLC), ``late`` (not
   confirmed in time; the PLC sent the item to ``manual``), ``undelivered``
   (the link was down or faulted), ``rejected`` (the PLC refused it).

Every item gets exactly one audit row, whatever happens: an unreadable line
(lane ``manual``), an item whose deadline passed before scoring could start
(*overload*: lane ``manual``, reason ``overload``, delivery ``late``, not
scored), a scoring failure, a PLC that is down.  Only an acknowledged
``accepted`` decision sends an item anywhere but the safe lane, so a Li-ion
item can reach ``lead_acid`` only through a confident score delivered in time.

Bounded work: at most ``line.max_in_flight`` items are between admission and
their final audit row; a source that outruns the controller is held back (log)
or its items age into overload (simulated belt).  A PLC that is down never
blocks scoring.

Restart: rows left ``pending`` by a crash are marked ``undelivered`` (their
deadline is gone; the PLC defaulted them) and a log source continues after
:meth:`~sorter.line.audit.AuditLog.resume_point`, re-checking the lines just
before it for items a crash left unrecorded.

Examples
--------
>>> # See docs/line.md; the controller is normally run by ``sorter run`` / ``sorter demo``
>>> # (:func:`sorter.line.app.run_line` builds it from the configuration).

Where the rest lives: the scoring workers in :mod:`sorter.line.scoring_pool`, the run's
totals and report in :mod:`sorter.line.summary`, the wiring (configuration to link, source
and signals) in :mod:`sorter.line.app`.

Why this module is long (about 1,070 lines): :class:`Controller` is one asyncio service whose
start-up order (audit recovery, link, reconciliation, scorer), admission, per-item steps
(decide, audit, send, count) and shutdown share the same in-flight state; each step is a
method of its own, and splitting the class would hand that state around instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sorter import LANES
from sorter.errors import ConfigError, PlcError, PlcTimeoutError, SorterError
from sorter.features.ambient import AmbientTracker
from sorter.lanes import Lane
from sorter.line.audit import AuditError, AuditLog, AuditRecord, AuditWriter
from sorter.line.audit.journal import journal_dir_for
from sorter.line.audit.journal import replay as replay_journal
from sorter.line.casestation import CaseStation, case_columns, pack_item
from sorter.line.config import LineConfig
from sorter.line.health import SensorHealth
from sorter.line.metrics import LineMetrics, StatusLine
from sorter.line.plc.link import CaseBlockMissingError, PlcLink, PlcProtocolError
from sorter.line.reconcile import GAP_EVENT, SNAPSHOT_EVENT, Reconciliation, reconcile, snapshot_detail
from sorter.line.scoring_pool import ScoringPool
from sorter.line.sources import ItemSource, SourceItem
from sorter.line.summary import RunStats, RunSummary
from sorter.scoring import Decision, error_decision

logger = logging.getLogger(__name__)

__all__ = [
    "Controller",
    "Resume",
    "RunSummary",
    "ScoringPool",
    "SourceFactory",
    "recover_audit",
]


# --------------------------------------------------------------------------- start-up


@dataclass(frozen=True)
class Resume:
    """What :func:`recover_audit` found in the audit log at start-up."""

    resume_point: int
    """Highest source line recorded (0: start of the log)."""
    rows_before: int
    """Rows in the audit log before this run."""
    pending_marked: int
    """Rows left ``pending`` by a crash, now marked ``undelivered``."""
    pending: tuple[AuditRecord, ...] = ()
    """Those rows, as they were (the reconciliation with the PLC looks at them)."""


def recover_audit(path: str | os.PathLike[str], journal_dir: str | os.PathLike[str] | None = None) -> Resume:
    """Prepare the audit log for a run: replay a killed run's crash journal, then mark a crash's
    ``pending`` rows ``undelivered``.

    A ``pending`` row is a decision committed before the process died, whose
    delivery was never recorded.  Its deadline is long gone: the PLC defaulted
    the item to the safe lane, or acted on the decision if it had arrived; the
    PLC counters are the truth.

    Raises
    ------
    AuditError
        If the audit log cannot be opened or written.
    """
    replay_journal(path, journal_dir)
    with AuditLog(path) as log:
        pending = log.pending()
        for rec in pending:
            log.record_delivery(rec.item_id, "undelivered", plc_seq=rec.plc_seq, plc_status=rec.plc_status)
        if pending:
            logger.warning(
                "audit log %s: %d decision(s) left pending by a crash marked undelivered "
                "(their items defaulted to the safe lane unless the PLC had latched them)",
                path,
                len(pending),
            )
        return Resume(log.resume_point(), log.count(), len(pending), tuple(pending))


# --------------------------------------------------------------------------- controller


SourceFactory = Callable[[Resume, Callable[[str], bool]], ItemSource]
"""``factory(resume, is_recorded) -> ItemSource``: builds the source once the audit log is recovered."""


@dataclass(frozen=True)
class _Verdict:
    """What :meth:`Controller._decide` made of one item."""

    lane: str
    reason: str
    chemistry: str | None
    probs: tuple[float | None, float | None, float | None]
    overload: bool  # not scored: its deadline passed before a worker could start on it
    send: bool  # still time, and a PLC id to send it under
    delivery: str  # "pending" when it is to be sent, else why not ("late", "undelivered")
    t_decided: float
    decided_mono: float
    energy: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None)
    """``(energy_wh, energy_wh_upper, novelty, weight_g)`` of the decision (``None``: unknown)."""
    into_case: bool = False
    """Sent with the case-station block's lane code "into the open case" (the offer assigned it)."""
    case_position: int = 1
    """With ``into_case``: the case position (1-based) whose case the offer assigned it to."""


class Controller:
    """The asyncio service that decides every item and delivers the decision to the PLC.

    Parameters
    ----------
    config : LineConfig
        The configuration (deadline, in-flight bound, audit path, PLC timings).
    link : PlcLink
        The PLC link (not yet connected; the controller connects and closes it).
    source : ItemSource or callable
        The items; or ``factory(resume, is_recorded) -> ItemSource``, called
        after the audit log was recovered, to resume a log source.
    scorer : ScoringPool, optional
        A started or unstarted pool; built from ``config`` if omitted.  A pool
        passed in is not closed by the controller.
    metrics : LineMetrics, optional
        Metrics to update (a private registry by default).
    status : StatusLine or None
        Live status line; ``None`` for none.
    settle : bool
        After the last item, wait until every item's due time has passed (plus
        0.1 s) before reading the PLC counters, so they include every item.

    Examples
    --------
    >>> # controller = Controller(cfg, link=MemoryPlc(), source=src); summary = await controller.run()
    """

    def __init__(
        self,
        config: LineConfig,
        *,
        link: PlcLink,
        source: ItemSource | SourceFactory,
        scorer: ScoringPool | None = None,
        metrics: LineMetrics | None = None,
        status: StatusLine | None = None,
        settle: bool = True,
    ) -> None:
        self.config = config
        self.link = link
        self._source_arg = source
        self.source: ItemSource | None = source if isinstance(source, ItemSource) else None
        self._own_scorer = scorer is None
        self.scorer = scorer or ScoringPool(
            config.line.model,
            workers=config.line.scorer_workers,
            kind=config.line.scorer_pool,
            max_batch=config.line.max_batch,
            allow_line_mismatch=config.line.allow_line_mismatch,
        )
        self.metrics = metrics or LineMetrics()
        self.status = status
        self.settle = settle
        self.deadline_s = config.line.deadline_ms / 1000.0
        self.grace_s = config.plc.ack_grace_ms / 1000.0
        self._ambient = AmbientTracker()
        self.health = SensorHealth(on_change=self._sensor_changed)
        self._stats = RunStats()
        self._audit_outage = False  # the audit log cannot be written (e.g. a full disk): item lines at DEBUG
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0  # items holding an in-flight slot
        self._sem = asyncio.Semaphore(config.line.max_in_flight)
        self._writer: AuditWriter | None = None
        self._retiring: set[asyncio.Task[Any]] = set()
        self._pool_users: dict[int, int] = {}  # items admitted to each scoring pool and not yet finished
        self._stop_requested = False
        self._aborted = False
        self._started_mono = 0.0
        self._last_due = 0.0
        self._outage_undelivered = 0
        self._last_outage_log = 0.0
        self.resume: Resume | None = None
        self._reconciliation: Reconciliation | None = None
        self._startup: dict[str, float] = {}
        self._t_launch: float | None = None
        self._max_lag_s = 0.0
        self._journal_dir = (
            journal_dir_for(config.audit.path, config.audit.journal) if config.audit.sync == "interval" else None
        )
        self._early_events: list[tuple[str, dict[str, Any], float]] = []  # before the audit writer is open
        # The case station (``[cases] enabled``): restored from the audit log at start-up.  Offers are
        # made in belt (admission) order: each item waits for the previous item's turn (a chain of futures).
        self.cases: CaseStation | None = None
        self._pack_tail: asyncio.Future[None] | None = None
        self._case_wake = asyncio.Event()
        if config.cases.enabled and getattr(link, "case_block", None) is None:
            raise ConfigError(
                "[cases] enabled = true but the PLC link was built without the case-station block; "
                "build it with case_block=CaseBlockMap(cases.base) (sorter.line.app.build_link does)"
            )
        if hasattr(link, "on_protocol_fault"):
            link.on_protocol_fault = self._protocol_fault

    # -- control -------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking items; the items in flight are finished and recorded.  Safe from a signal handler."""
        if not self._stop_requested:
            logger.info("stop requested: finishing %d item(s) in flight", len(self._tasks))
        self._stop_requested = True
        if self.source is not None:
            self.source.stop()

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`request_stop` (or :meth:`abort`) was called."""
        return self._stop_requested

    def swap_model_soon(self, model_dir: str | None) -> asyncio.Task[bool]:
        """Start :meth:`swap_model` in the background (e.g. from a signal handler); the run waits for it."""
        task = asyncio.get_running_loop().create_task(self.swap_model(model_dir), name="swap-model")
        self._retiring.add(task)
        return task

    def abort(self) -> None:
        """Stop now: cancel items in flight (their committed rows stay ``pending`` until the next start)."""
        self._aborted = True
        self.request_stop()
        for task in list(self._tasks):
            task.cancel()

    @property
    def in_flight(self) -> int:
        """Items between admission and their final audit row."""
        return self._active

    def snapshot(self) -> dict[str, Any]:
        """Live figures for the status line."""
        s = self._stats
        elapsed = time.monotonic() - self._started_mono if self._started_mono else 0.0
        return {
            "items": s.items,
            "rate_hz": s.items / elapsed if elapsed > 0 else 0.0,
            "lanes": dict(s.effective),
            "in_flight": self._active,
            "p99_ms": s.latency.percentile_ms(99),
            "acked": s.delivery.get("acked", 0),
            "misses": s.delivery.get("late", 0),
            "undelivered": s.delivery.get("undelivered", 0),
            "link": self.link.state,
        }

    async def swap_model(self, model_dir: str | None) -> bool:
        """Put a new model in charge of the running line, atomically.

        The new model is verified first (hashes, allow-list, library versions,
        measurement columns: :func:`sorter.model.load_model`), then its scoring pool
        is started and warmed; only then do new items go to it, in one assignment.
        Items already handed to the old pool finish there and are recorded with the
        old model's id. A model that fails any check leaves the old one in charge
        and returns False.
        """
        from sorter.model import load_model

        try:
            await asyncio.to_thread(load_model, model_dir or None, estimators=False)
            new = self.scorer.like(model_dir)
            await new.start()
        except Exception as err:  # noqa: BLE001 - any failure: keep the model that works
            logger.error(
                "model swap to %s refused, %s stays in charge: %s",
                model_dir or "the shipped model",
                self.scorer.model_id,
                err,
            )
            self.metrics.model_swaps.labels(outcome="refused").inc()
            return False
        old, self.scorer = self.scorer, new
        old_owned, self._own_scorer = self._own_scorer, True
        logger.warning("model swapped: %s -> %s", old.model_id, new.model_id)
        self.metrics.model_swaps.labels(outcome="swapped").inc()
        if old_owned:
            self._retiring.add(asyncio.create_task(self._retire(old), name="retire-model"))
        return True

    async def _retire(self, pool: ScoringPool) -> None:
        """Close a replaced pool once the items it holds are decided."""
        while self._pool_users.get(id(pool), 0) > 0:
            await asyncio.sleep(0.05)
        self._pool_users.pop(id(pool), None)
        await pool.close()

    # -- the run ---------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Run until the source ends or :meth:`request_stop`; return the summary.

        Start-up order: the audit log is recovered, then the PLC link and its
        heartbeat come up (the PLC defaults every item to the safe lane until
        decisions arrive), the audit log is reconciled with the PLC's counters,
        and only then are the model (in the scoring workers) and the source
        started, in parallel.  A slow model load therefore never leaves the PLC
        without a PC heartbeat.
        """
        cfg = self.config
        t_launch = self._started_mono = time.monotonic()
        # The model loads (seconds) in the scoring workers while the audit log is recovered and the
        # PLC link, its heartbeat and the reconciliation come up.
        scorer_ready = asyncio.create_task(self._start_scorer(t_launch), name="scorer-start")
        try:
            self.resume = await asyncio.to_thread(recover_audit, cfg.audit.path, self._journal_dir)
        except BaseException:
            scorer_ready.cancel()
            await asyncio.gather(scorer_ready, return_exceptions=True)
            if self._own_scorer:
                await self.scorer.close()
            raise
        background: list[asyncio.Task[Any]] = []
        try:
            if cfg.cases.enabled:
                self.cases = await asyncio.to_thread(CaseStation.restore, cfg.cases, cfg.line.name, cfg.audit.path)
            await self.link.connect()
        except PlcError as err:
            if isinstance(err, CaseBlockMissingError):  # a configuration mismatch: say what to do, and stop
                await self._abort_start(scorer_ready)
                raise
            logger.warning("%s; scoring goes on, decisions are undelivered until it connects", err)
        except SorterError:  # the case station's state or configuration
            await self._abort_start(scorer_ready)
            raise
        background.append(
            asyncio.create_task(self.link.run_heartbeat(cfg.plc.heartbeat_ms / 1000.0), name="plc-heartbeat")
        )
        self._startup["link_up"] = time.monotonic() - t_launch
        plc_start = await self._reconcile()
        reader = AuditLog(cfg.audit.path)  # for the reader thread's re-check of lines before the resume point
        try:
            if self.source is None:
                assert callable(self._source_arg)
                self.source = self._source_arg(self.resume, reader.has)
                if self._stop_requested:
                    self.source.stop()
            # Room for every in-flight item's two entries (decision, delivery): submit() never blocks the loop.
            self._writer = AuditWriter(
                cfg.audit.path,
                max_queue=max(10_000, 2 * cfg.line.max_in_flight + 16),
                delivery_delay_s=cfg.audit.delivery_flush_ms / 1000.0,
                on_commit=self.metrics.audit_commit.observe,
                sync=cfg.audit.sync,
                sync_interval_s=cfg.audit.sync_interval_ms / 1000.0,
                on_durable=self.metrics.audit_durability_lag.observe,
                journal_dir=self._journal_dir,
            )
            for kind, detail, t in self._early_events:
                self._writer.submit_event("plc_protocol_fault", {"kind": kind, **detail}, t=t)
            self._early_events.clear()
            if self.cases is not None:
                background.append(
                    asyncio.create_task(self._case_loop(cfg.plc.heartbeat_ms / 1000.0), name="case-station")
                )
        except BaseException:
            reader.close()
            for task in background:
                task.cancel()
            await self.link.close()
            scorer_ready.cancel()
            await asyncio.gather(scorer_ready, return_exceptions=True)
            if self._own_scorer:
                await self.scorer.close()
            raise
        source = self.source
        error: str | None = None
        try:
            await asyncio.gather(scorer_ready, source.start())
            background.append(asyncio.create_task(self._monitor(), name="line-monitor"))
            # --- issue 19: free-space alarms on the log and audit disks, and whether audit commits succeed
            from sorter.line.disks import DiskWatch, line_disks, settings_of

            background.append(
                asyncio.create_task(
                    DiskWatch(
                        line_disks(cfg),
                        settings_of(cfg),
                        registry=self.metrics.registry,
                        audit_failing=lambda: self._writer is not None and self._writer.failing,
                    ).run(),
                    name="disk-watch",
                )
            )
            if cfg.retention.enabled:
                background.append(asyncio.create_task(self._retention_loop(cfg), name="retention"))
            # --- end issue 19
            self._started_mono = time.monotonic()
            logger.info(
                "line %s running: deadline %.1f ms, up to %d items in flight, model %s",
                cfg.line.name,
                cfg.line.deadline_ms,
                cfg.line.max_in_flight,
                self.scorer.model_id,
            )
            try:
                async for si in source:
                    await self._admit(si)
                    if self._stop_requested:
                        break
            except SorterError as err:
                error = f"item source failed: {err}"
                logger.error("%s; stopping", error)
            await self._drain()
            duration = time.monotonic() - self._started_mono
            plc_counters = await self._plc_counters(plc_start)
        finally:
            if self.status is not None:
                self.status.finish()
            if self._aborted:
                for task in list(self._tasks):
                    task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.gather(*self._retiring, return_exceptions=True)
            await source.close()
            if self._own_scorer:
                await self.scorer.close()
            await asyncio.to_thread(self._writer.close)
            self._max_lag_s = self._writer.max_durability_lag_s
            reader.close()
            # The heartbeat goes on until the very end, so the PLC never sees the PC vanish mid-shutdown.
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.link.close()
        total = await asyncio.to_thread(_count_rows, cfg.audit.path)
        return self._summary(duration, total, plc_counters, error)

    async def _abort_start(self, scorer_ready: asyncio.Task[None]) -> None:
        scorer_ready.cancel()
        await asyncio.gather(scorer_ready, return_exceptions=True)
        await self.link.close()
        if self._own_scorer:
            await self.scorer.close()

    async def _plc_counters(self, start: dict[str, int] | None) -> dict[str, int] | None:
        if start is None:
            return None
        if self.settle:
            wait = self._last_due - time.monotonic() + 0.1
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            end = await self.link.read_counters()
            mailbox = await self.link.read_mailbox() if self.settle and not self._aborted else None
        except PlcError as err:
            logger.warning("PLC counters not read at the end of the run: %s", err)
            return None
        if mailbox is not None and self._writer is not None:
            # Every item of the run has reached the diverter: the next start compares from here.
            await self._record_snapshot(end, mailbox, "end")
        return {k: (end[k] - start.get(k, 0)) & 0xFFFF_FFFF for k in end}

    async def _record_snapshot(self, counters: Mapping[str, int], mailbox: Sequence[Any], why: str) -> None:
        assert self._writer is not None
        try:
            # Every decision of the run is committed (their tasks are done); deliveries may still be
            # queued, and the event goes through the same queue after them.
            last_id = await asyncio.to_thread(_last_id, self.config.audit.path)
            await asyncio.wrap_future(
                self._writer.submit_event(SNAPSHOT_EVENT, snapshot_detail(counters, last_id, why, mailbox))
            )
        except AuditError as err:
            logger.error("PLC counter snapshot not recorded (the next start cannot reconcile from here): %s", err)

    async def _reconcile(self) -> dict[str, int] | None:
        """Compare the audit log with the PLC's counters and mailbox; record, alarm, and snapshot.

        Returns the PLC counters read (the run's baseline), or ``None`` when the PLC
        could not be read (then nothing is compared; the next start compares from
        the last snapshot there is).
        """
        assert self.resume is not None
        try:
            counters = await self.link.read_counters()
            mailbox = await self.link.read_mailbox()
        except PlcError as err:
            logger.warning("PLC counters not read at start-up, no reconciliation with the audit log: %s", err)
            return None
        crash_pending = self.resume.pending
        path = self.config.audit.path

        def compare() -> Reconciliation | None:
            with AuditLog(path) as log:
                found = reconcile(log, counters, mailbox, crash_pending)
                if found is not None and not found.ok:
                    log.record_event(GAP_EVENT, found.to_json())
                log.record_event(SNAPSHOT_EVENT, snapshot_detail(counters, log.last_id(), "start", mailbox))
                return found

        try:
            found = await asyncio.to_thread(compare)
        except AuditError as err:
            logger.error("reconciliation with the PLC not recorded: %s", err)
            return counters
        if found is None:
            return counters
        self._reconciliation = found
        self.metrics.reconciliation_gaps.set(found.gap_items)
        for text in found.lines():
            level = logging.ERROR if found.gap_items else logging.WARNING
            logger.log(level, "reconciliation with the PLC: %s", text, extra={"reconciliation": found.to_json()})
        if found.ok:
            logger.info(
                "reconciliation with the PLC: the audit log agrees with its counters since the %s snapshot (%d rows)",
                found.since,
                found.audit_rows,
            )
        return counters

    def _protocol_fault(self, kind: str, detail: dict[str, Any]) -> None:
        """The link found the PLC breaking the contract: count it and record it in the audit log."""
        self.metrics.plc_protocol_faults.labels(kind=kind).inc()
        if self._writer is None:
            self._early_events.append((kind, detail, time.time()))
            return
        try:
            self._writer.submit_event("plc_protocol_fault", {"kind": kind, **detail})
        except AuditError as err:
            logger.error("PLC protocol fault not recorded in the audit log: %s", err)

    async def _start_scorer(self, t_launch: float) -> None:
        self._t_launch = t_launch
        await self.scorer.start(wait_all=False)
        self._startup["scorer_ready"] = time.monotonic() - t_launch
        self._t_launch = t_launch

    async def _retention_loop(self, cfg: LineConfig) -> None:
        """Delete old images of the followed log by ``[retention]``, at start and every ``every_hours``,
        in a thread (it reads the audit log read-only and never touches the deadline path); a failure
        is logged and retried at the next period, the images staying meanwhile."""
        from sorter.retention import run_retention

        r = cfg.retention
        policy = r.policy()
        while True:
            try:
                report = await asyncio.to_thread(
                    run_retention, cfg.line.log_dir, cfg.audit.path, policy=policy, station=r.station_store or None
                )
                logger.info("retention: %s", "; ".join(report.format().splitlines()[1:3]))
            except (SorterError, OSError, sqlite3.Error) as err:
                logger.error("retention failed: %s; the images stay until the next run in %g h", err, r.every_hours)
            await asyncio.sleep(r.every_hours * 3600.0)

    async def _monitor(self) -> None:
        interval = self.config.status.interval_s
        while True:
            self.metrics.set_link_state(self.link.state)
            self.metrics.in_flight.set(self._active)
            if self.status is not None:
                self.status.update()
            await asyncio.sleep(min(interval, 0.25))

    async def _drain(self) -> None:
        if self._tasks:
            logger.info("draining %d item(s) in flight", len(self._tasks))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _sensor_changed(self, sensor: str, old: str, new: str, item_id: str) -> None:
        logger.log(
            logging.WARNING if new != "ok" else logging.INFO,
            "sensor=%s alarm %s -> %s at item=%s",
            sensor,
            old,
            new,
            item_id,
            extra={"sensor": sensor, "alarm": new, "item_id": item_id},
        )
        self.metrics.set_sensor_alarm(sensor, new)

    async def _admit(self, si: SourceItem) -> None:
        """Take one item, in belt order: sensor health, ambient, then a bounded slot, then its own task."""
        if si.item is not None:
            # A sensor in alarm has its readings removed (they count as missing) and a problem
            # noted on the item, which keeps it out of lead_acid (Scorer.decide_rows) until the
            # sensor recovers.
            si = dataclasses.replace(si, item=self.health.check(si.item))
        scorer = self.scorer  # the model in charge when the item was admitted scores it (swaps are atomic)
        self._pool_users[id(scorer)] = self._pool_users.get(id(scorer), 0) + 1
        ambient = self._ambient.observe(si.item.record.surface_temp_c) if si.item is not None else None
        self._last_due = max(self._last_due, si.due_mono)
        overload = False
        if self._sem.locked():
            left = si.due_mono - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._sem.acquire(), timeout=left)
            except TimeoutError:
                overload = True
                await self._sem.acquire()  # an overload row is cheap, but still bounded
        else:
            await self._sem.acquire()
        self._active += 1
        self._stats.peak_in_flight = max(self._stats.peak_in_flight, self._active)
        turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None = None
        if self.cases is not None:
            mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            turn, self._pack_tail = (self._pack_tail, mine), mine
        task = asyncio.create_task(self._handle(si, ambient, overload, scorer, turn), name=f"item {si.item_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(
        self,
        si: SourceItem,
        ambient: float | None,
        overload: bool,
        scorer: ScoringPool | None = None,
        turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None = None,
    ) -> None:
        try:
            await self._decide_and_deliver(si, ambient, overload, scorer or self.scorer, turn)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one item's bug must not stop the line
            logger.exception("item %s: unexpected error; it goes to the safe lane by the PLC's default", si.item_id)
            self._stats.unrecorded += 1
        finally:
            if turn is not None:
                _pass_turn(*turn)
            pool = scorer or self.scorer
            self._pool_users[id(pool)] = self._pool_users.get(id(pool), 1) - 1
            self._active -= 1
            self._sem.release()

    async def _decide_and_deliver(
        self,
        si: SourceItem,
        ambient: float | None,
        overload: bool,
        scorer: ScoringPool,
        turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None = None,
    ) -> None:
        """One item: decide its lane, commit the decision, send it, count it."""
        model_id = scorer.model_id  # the pool that scores the item names the model in its row
        verdict = await self._decide(si, ambient, overload, scorer)
        case_cols: Mapping[str, Any] = {}
        events: list[tuple[str, dict[str, Any]]] = []
        if turn is not None:
            # Nothing between the offer and the audit submission yields to the loop, so the audit
            # commits the station's changes in the order they were made.
            verdict, case_cols, events = await self._pack(si, verdict, turn)
        try:
            if not await self._audit(si, verdict, model_id, case_cols, events):
                return
            delivery, acked_mono = await self._send(si, verdict)
        finally:
            if verdict.into_case and self.cases is not None and self.cases.answered(case_cols["case_id"]):
                self._case_wake.set()  # the closed case's last decision is answered: CASE_FULL may go up
        latency = acked_mono - si.available_mono if acked_mono is not None else None
        self._count(si, verdict.lane, delivery, latency, verdict.overload)
        logger.debug(
            "item=%s plc_id=%s lane=%s reason=%r delivery=%s latency_ms=%s",
            si.item_id,
            si.plc_id,
            verdict.lane,
            verdict.reason,
            delivery,
            None if latency is None else round(latency * 1000, 2),
            extra={"item_id": si.item_id, "lane": verdict.lane, "delivery": delivery},
        )

    async def _decide(self, si: SourceItem, ambient: float | None, overload: bool, scorer: ScoringPool) -> _Verdict:
        """The lane for the item, and whether there is still time to send it.

        Not scored when the deadline has passed (*overload*); decided too late, or an
        unknown lane from the policy: ``manual``.
        """
        overload = overload or time.monotonic() >= si.due_mono
        lane: str = Lane.MANUAL
        reason, chemistry = "overload", None
        probs: tuple[float | None, float | None, float | None] = (None, None, None)
        energy: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None)
        if not overload:
            decision: Decision | None
            if si.item is None:
                decision = error_decision(si.source_line or 0, si.item_id, si.error or "unreadable item")
                self._stats.errors += 1
            else:
                decision = await scorer.score(si.item, ambient, due_mono=si.due_mono)
            if decision is None:  # shed by the scoring pool: it could no longer make its deadline
                overload = True
            else:
                lane, reason, chemistry = decision.lane, decision.reason, decision.chemistry
                probs = (_prob(decision.p_lead_acid), _prob(decision.p_li_ion), _prob(decision.p_other))
                energy = (
                    _finite(decision.energy_wh),
                    _finite(decision.energy_wh_upper),
                    _finite(decision.novelty),
                    _finite(decision.weight_g),
                )
        now_mono, now = time.monotonic(), time.time()
        left = si.due_mono - now_mono
        send = not overload and left > 0 and si.plc_id is not None
        if not overload and left <= 0:
            reason = f"deadline_missed: decided {lane} ({reason}) {-left * 1000:.1f} ms after the deadline"
            lane = Lane.MANUAL
        if lane not in LANES:  # the policy only knows LANES; anything else is a bug, and unsafe to send
            reason, lane = f"unknown lane {lane!r} from the policy", Lane.MANUAL
        delivery = "pending" if send else ("undelivered" if si.plc_id is None and not overload and left > 0 else "late")
        return _Verdict(lane, reason, chemistry, probs, overload, send, delivery, now, now_mono, energy)

    async def _pack(
        self, si: SourceItem, v: _Verdict, turn: tuple[asyncio.Future[None] | None, asyncio.Future[None]]
    ) -> tuple[_Verdict, Mapping[str, Any], list[tuple[str, dict[str, Any]]]]:
        """Offer an item routed to the case station to its open case, in belt order.

        Only an item that is to be sent to the station's lane is offered (an item that is not sent
        goes to the safe lane by the PLC's default).  ``assigned``: sent "into the case";
        ``not_packable`` / ``no_case_ready``: sent to the lane as usual, which with the case block
        means the quarantine buffer (``docs/cases.md``)."""
        station = self.cases
        assert station is not None
        prev, mine = turn
        if not (v.send and v.lane == station.lane):
            _pass_turn(prev, mine)  # not offered: the items behind need not wait for this one's delivery
            return v, {}, []
        if prev is not None and not prev.done():
            try:  # the earlier items' offers come first; never past this item's own deadline
                await asyncio.wait_for(asyncio.shield(prev), timeout=max(0.0, si.due_mono - time.monotonic()))
            except TimeoutError:
                logger.warning(
                    "item=%s offered to the case station before an earlier item (which is still "
                    "being decided at its deadline)",
                    si.item_id,
                )
        e_wh, e_up, _nov, w_g = v.energy
        r, events = station.offer(pack_item(si.item_id, e_up, e_wh, w_g, si.t_item), time.time())
        _pass_turn(prev, mine)
        if events:
            self._case_wake.set()
        position = station.position_of(r.case_id) if r.kind == "assigned" else None
        if r.kind == "assigned" and position is None:  # cannot happen; never guess a position: the buffer
            logger.error("item=%s assigned to case %s, which stands at no position: buffer", si.item_id, r.case_id)
            station.answered(r.case_id)  # nothing will be sent into it
        into = position is not None
        return dataclasses.replace(v, into_case=into, case_position=position or 1), case_columns(r), events

    async def _case_loop(self, interval_s: float) -> None:
        """Every heartbeat: read the PLC's case words, open or close cases, publish the PC's words."""
        assert self.cases is not None and self._writer is not None
        station = self.cases
        failing = False
        while True:
            try:
                words = await self.link.read_case_station()
                events = station.on_plc(words, time.time())
                for kind, detail in events:
                    # Queued before any item can be offered to the new case: committed first.
                    self._writer.submit_event(kind, detail)
                if events:
                    await asyncio.to_thread(station.write_state_file)
                # Written every time, not only on change: a PLC that restarted has them back at once.
                await self.link.write_case_station(station.pc_words())
                if failing:
                    logger.info("case station block readable again")
                failing = False
            except PlcError as err:
                if not failing:
                    logger.warning(
                        "case station block not read or written (hazard items go to the buffer "
                        "until a case is confirmed): %s",
                        err,
                    )
                failing = True
            except AuditError as err:
                logger.error("case station event not recorded: %s", err)
            self._case_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._case_wake.wait(), timeout=interval_s)

    async def _audit(
        self,
        si: SourceItem,
        v: _Verdict,
        model_id: str,
        case_cols: Mapping[str, Any] | None = None,
        events: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> bool:
        """Commit the decision to the audit log before anything is sent; False: not recorded, not sent."""
        assert self._writer is not None
        rec = AuditRecord(
            item_id=si.item_id,
            source_line=si.source_line,
            t_item=si.t_item,
            t_available=si.t_available,
            t_decided=v.t_decided,
            chemistry=v.chemistry,
            p_lead_acid=v.probs[0],
            p_li_ion=v.probs[1],
            p_other=v.probs[2],
            lane=v.lane,
            reason=v.reason[:500],
            model_id=model_id,
            latency_ms=max(0.0, (v.decided_mono - si.available_mono) * 1000.0),
            deadline_ms=self.config.line.deadline_ms,
            delivery=v.delivery,
            energy_wh=v.energy[0],
            energy_wh_upper=v.energy[1],
            novelty=v.energy[2],
            weight_g=v.energy[3],
            **(case_cols or {}),
        )
        try:
            inserted = await asyncio.wrap_future(self._writer.submit(rec, events=events))
        except AuditError as err:
            # Not on disk, so not sent: the PLC defaults the item to the safe lane.  During an outage
            # (a full disk) the writer has raised its alarm; one ERROR here, then one DEBUG line an item.
            (logger.debug if self._audit_outage else logger.error)(
                "item=%s audit write failed, decision not sent: %s%s",
                si.item_id,
                err,
                ""
                if self._audit_outage
                else " (further items while the audit log cannot be written: DEBUG "
                "lines; their count is in the summary as unrecorded)",
            )
            self._audit_outage = True
            self._stats.unrecorded += 1
            return False
        if self._audit_outage:
            logger.warning(
                "audit writes resumed: decisions are sent again (%d items went unrecorded)", self._stats.unrecorded
            )
            self._audit_outage = False
        if not inserted:
            logger.warning("item=%s already in the audit log (re-read after a restart?); not sent again", si.item_id)
            self._stats.duplicates += 1
            return False
        return True

    async def _send(self, si: SourceItem, v: _Verdict) -> tuple[str, float | None]:
        """Send a committed decision to the PLC and record its delivery; ``(delivery, acked_mono)``."""
        assert self._writer is not None
        lane, send, delivery = v.lane, v.send, v.delivery
        plc_seq: int | None = None
        plc_status: str | None = None
        acked_mono: float | None = None
        if send and time.monotonic() >= si.due_mono:
            # The commit took the rest of the budget: a decision is never *started* after the deadline.
            send = False
            delivery = "late"
            logger.info(
                "item=%s lane=%s delivery=late: the deadline passed while the decision was being recorded; not sent",
                si.item_id,
                lane,
            )
            await self._record_delivery(si.item_id, delivery, None, None, None)
        max_lag_s = self.config.audit.max_lag_ms / 1000.0
        if send and max_lag_s > 0 and self._writer.durability_lag_s() > max_lag_s:
            # The operator chose a hard bound on what a power cut may lose: the disk is behind it.
            send = False
            delivery = "undelivered"
            lag_ms = 1000 * self._writer.durability_lag_s()
            self._note_undelivered(
                si,
                lane,
                PlcError(f"not sent: audit rows have waited {lag_ms:.0f} ms for the disk, more than audit.max_lag_ms"),
            )
            await self._record_delivery(si.item_id, delivery, None, f"not sent: durability lag {lag_ms:.0f} ms", None)
        if not send:
            return delivery, None
        assert si.plc_id is not None
        try:
            ack = await self.link.send_decision(
                si.plc_id,
                lane,
                timeout_s=si.due_mono - time.monotonic() + self.grace_s,
                **_case_target(v),
            )
        except PlcProtocolError as err:
            # The PLC broke the contract: its answer cannot be trusted. Not acked, not refused:
            # where the item went is for the PLC counters (reconciliation) to say.
            delivery = "undelivered"
            plc_seq = err.seq
            plc_status = f"protocol_fault:{err.kind}" + (
                f":status={err.raw_status}" if err.raw_status is not None else ""
            )
            logger.error("item=%s plc_id=%d lane=%s delivery=undelivered: %s", si.item_id, si.plc_id, lane, err)
        except PlcTimeoutError as err:
            delivery = "late"
            plc_seq = getattr(err, "seq", None)  # written under this seq: the PLC may still answer it
            logger.info("item=%s plc_id=%d lane=%s delivery=late: %s", si.item_id, si.plc_id, lane, err)
        except PlcError as err:
            delivery = "undelivered"
            self._note_undelivered(si, lane, err)
        except ValueError as err:  # a lane or id the link refuses: a bug, never a reason to divert
            delivery = "undelivered"
            logger.error("item=%s decision refused by the link: %s", si.item_id, err)
        else:
            acked_mono = time.monotonic()
            if ack.accepted and "first_ack" not in self._startup and self._t_launch is not None:
                self._startup["first_ack"] = acked_mono - self._t_launch
            plc_seq, plc_status = ack.seq, ack.status
            delivery = "acked" if ack.accepted else ("late" if ack.status == "late" else "rejected")
            if delivery != "acked":
                logger.info(
                    "item=%s plc_id=%d lane=%s delivery=%s plc_status=%s",
                    si.item_id,
                    si.plc_id,
                    lane,
                    delivery,
                    ack.status,
                )
        t_acked = time.time() - (time.monotonic() - acked_mono) if acked_mono is not None else None
        await self._record_delivery(si.item_id, delivery, plc_seq, plc_status, t_acked)
        return delivery, acked_mono

    async def _record_delivery(
        self, item_id: str, delivery: str, plc_seq: int | None, plc_status: str | None, t_acked: float | None
    ) -> None:
        assert self._writer is not None
        try:
            await asyncio.wrap_future(
                self._writer.submit_delivery(item_id, delivery, plc_seq=plc_seq, plc_status=plc_status, t_acked=t_acked)
            )
        except AuditError as err:
            logger.error("item=%s delivery %s not recorded (row stays pending): %s", item_id, delivery, err)

    def _note_undelivered(self, si: SourceItem, lane: str, err: Exception) -> None:
        logger.info("item=%s plc_id=%s lane=%s delivery=undelivered: %s", si.item_id, si.plc_id, lane, err)
        self._outage_undelivered += 1
        now = time.monotonic()
        if now - self._last_outage_log >= 5.0:
            logger.warning(
                "PLC link %s: %d decision(s) undelivered so far (recorded in the audit log; "
                "the items go to the safe lane): %s",
                self.link.state,
                self._outage_undelivered,
                err,
            )
            self._last_outage_log = now

    def _count(self, si: SourceItem, lane: str, delivery: str, latency: float | None, overload: bool) -> None:
        went = self._stats.record(lane, delivery, latency, overload, si.truth)
        hazard_wh = None
        if si.truth is not None and si.truth.label is not None:
            if went == Lane.HAZARD and si.truth.energy_wh:
                hazard_wh = si.truth.energy_wh
            if went == Lane.LEAD_ACID and si.truth.label == "li_ion":
                logger.error("item=%s: Li-ion (truth) went to lead_acid", si.item_id)
        self.metrics.record_item(
            lane=lane, delivery=delivery, latency_s=latency, overload=overload, hazard_wh=hazard_wh
        )

    def _summary(self, duration: float, total: int, plc: dict[str, int] | None, error: str | None) -> RunSummary:
        s = self._stats
        assert self.resume is not None
        truth = s.truth_figures()
        if truth and s.labelled < s.items:
            logger.info("truth known for %d of %d items", s.labelled, s.items)
        return RunSummary(
            items=s.items,
            lanes=dict(s.lanes),
            effective_lanes=dict(s.effective),
            delivery=dict(s.delivery),
            overload=s.overload,
            errors=s.errors,
            duplicates=s.duplicates,
            unrecorded=s.unrecorded,
            latency_p50_ms=s.latency.percentile_ms(50),
            latency_p99_ms=s.latency.percentile_ms(99),
            latency_max_ms=round(s.latency.max_ms, 1) if s.latency.count else None,
            deadline_ms=self.config.line.deadline_ms,
            audit_rows=total - self.resume.rows_before,
            audit_total=total,
            pending_marked=self.resume.pending_marked,
            resume_point=self.resume.resume_point,
            duration_s=duration,
            model_id=self.scorer.model_id,
            peak_in_flight=s.peak_in_flight,
            plc_counters=plc,
            scoring_batches=self.scorer.batches,
            largest_batch=self.scorer.largest_batch,
            error=error,
            reconciliation=tuple(self._reconciliation.lines()) if self._reconciliation is not None else (),
            reconciliation_gap_items=self._reconciliation.gap_items if self._reconciliation is not None else 0,
            audit_sync=self.config.audit.sync,
            max_durability_lag_ms=round(1000 * self._max_lag_s, 1) if self.config.audit.sync == "interval" else None,
            startup_s={k: round(v, 3) for k, v in self._startup.items()},
            **truth,
        )


def _case_target(v: _Verdict) -> dict[str, Any]:
    """``send_decision``'s case arguments: none for the buffer; position 1 as before positions existed."""
    if not v.into_case:
        return {}
    return {"into_case": True, **({"case_position": v.case_position} if v.case_position != 1 else {})}


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _pass_turn(prev: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
    """This item's turn at the case station is over once the previous item's is (belt order)."""
    if mine.done():
        return
    if prev is None or prev.done():
        mine.set_result(None)
    else:
        prev.add_done_callback(lambda _f: mine.done() or mine.set_result(None))


def _prob(p: float) -> float | None:
    return None if p is None or not math.isfinite(p) else min(1.0, max(0.0, float(p)))


def _last_id(path: str) -> int:
    with AuditLog(path) as log:
        return log.last_id()


def _count_rows(path: str) -> int:
    with AuditLog(path) as log:
        return log.count()
