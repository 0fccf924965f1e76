"""The line controller: score each item as it passes and tell the PLC its lane, before its deadline.

Per item, in this order:

1. **Ambient** — the running ambient temperature is updated in item order, in
   the controller (it is state shared by all items).
2. **Score** off the event loop, in a small pool of worker processes
   (:class:`ScoringPool`; the model is loaded once per worker).  When items
   queue up, a free worker takes all of them in one model call: the model's cost
   is per call, not per row, so the line keeps up under load.  An item whose
   deadline passed while it waited for a worker is not scored (*overload*).
3. **Audit** — the decision is committed to the audit log (SQLite, fsync)
   *before* it is sent: a decision the PLC may act on is always on disk.
4. **Send** — ``send_decision(plc_id, lane, timeout_s=...)`` with the time left to
   the deadline (plus ``plc.ack_grace_ms``: once sent, the PLC's own answer,
   ``accepted`` or ``late``, says whether it was in time).
5. **Record the delivery**: ``acked`` (accepted by the PLC), ``late`` (not
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
>>> # See docs/line.md; the controller is normally run by ``sorter run`` / ``sorter demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import numpy as np

from sorter import LANES
from sorter.errors import PlcError, PlcTimeoutError, SorterError
from sorter.features.measure import AmbientTracker
from sorter.line.audit import AuditError, AuditLog, AuditRecord, AuditWriter
from sorter.line.health import SensorHealth
from sorter.line.config import LineConfig
from sorter.line.metrics import LineMetrics, StatusLine
from sorter.line.plc import SAFE_LANE, MemoryPlc, ModbusPlcLink, PlcLink, PlcProtocolError, RegisterMap
from sorter.line.reconcile import GAP_EVENT, SNAPSHOT_EVENT, Reconciliation, reconcile, snapshot_detail
from sorter.line.sources import BeltTiming, ItemSource, LogFollowSource, SimulatedSource, SourceItem
from sorter.line.workers import (
    SCORING_HANDLERS,
    ScoringProcess,
    WorkerLost,
    init_scoring_worker,
    limit_threads,
    score_batch,
)
from sorter.readings import Item, ItemRecord
from sorter.scoring import Decision, Scorer, error_decision

logger = logging.getLogger(__name__)

__all__ = [
    "Controller",
    "LatencyHistogram",
    "Resume",
    "RunSummary",
    "ScoringPool",
    "build_link",
    "build_source",
    "recover_audit",
    "run_line",
    "score_batch",
]

RECHECK_LINES: Final = 1024
"""Lines before the resume point re-checked for rows a crash left out (more than can be in flight)."""


# --------------------------------------------------------------------------- scoring


_RESPAWN_DELAY_S: Final = 1.0


@dataclass
class _Job:
    item: Item
    ambient_c: float | None
    future: asyncio.Future[Decision | None]
    due_mono: float | None = None


class ScoringPool:
    """Scores items off the event loop, micro-batching when items queue up.

    Parameters
    ----------
    model_dir : str or None
        Model directory; ``None`` or ``""`` for the shipped model.
    workers : int
        Worker processes (or threads).
    kind : str
        ``"process"``: spawned worker processes, each loading the model once
        (the default: scoring is CPU-bound Python, which threads would
        serialise on the GIL), each spoken to directly from the event loop
        over a socket pair (:mod:`sorter.line.workers`: no helper threads in
        the controller process); ``"thread"``: threads sharing one model.
    max_batch : int
        Most items in one model call.

    Notes
    -----
    While a worker is free, an item is scored alone at once.  When all are
    busy, items wait, and the next free worker takes up to ``max_batch`` of
    them in one call to :func:`score_batch`: the model costs about the same for
    16 rows as for one.  :meth:`score` never raises: a failed worker gives the
    item an error decision (``manual``); a worker process that died is
    replaced (its items go to ``manual``; the others keep scoring meanwhile).

    The pool may be used from several event loops one after another (tests);
    one loop at a time.
    """

    def __init__(self, model_dir: str | None = None, *, workers: int = 2, kind: str = "process",
                 max_batch: int = 16, allow_line_mismatch: bool = False) -> None:
        if kind not in ("process", "thread"):
            raise ValueError(f"kind={kind!r}: use 'process' or 'thread'")
        if workers < 1 or max_batch < 1:
            raise ValueError(f"workers={workers} and max_batch={max_batch} must be >= 1")
        self.model_dir = model_dir or None
        self.allow_line_mismatch = allow_line_mismatch
        self.workers = workers
        self.kind = kind
        self.max_batch = max_batch
        self.model_id = "unknown"
        self._executor: Executor | None = None  # thread kind
        self._scorer: Scorer | None = None  # thread kind
        self._procs: list[ScoringProcess] = []  # process kind: all live workers
        self._free: deque[ScoringProcess] = deque()  # process kind: workers waiting for a batch
        self._tasks: set[asyncio.Task[Any]] = set()  # process kind: batches running, workers respawning
        self._started = False
        self._queue: deque[_Job] = deque()
        self._idle = workers
        self.worker_pids: list[int] = []
        """Process ids of the workers (process pools), e.g. to read their CPU time."""
        self.batches = 0
        self.items_scored = 0
        self.shed = 0
        """Items not scored because they could no longer make their deadline."""
        self.busy_s = 0.0
        """Wall time batches spent in the workers, summed."""
        self.largest_batch = 0
        self.respawned = 0
        """Worker processes replaced after one died."""
        self._respawning = 0

    @property
    def started(self) -> bool:
        return self._started

    def _new_process(self) -> ScoringProcess:
        return ScoringProcess(init_scoring_worker, (self.model_dir, self.allow_line_mismatch), SCORING_HANDLERS)

    async def start(self, *, wait_all: bool = True) -> None:
        """Start the workers and load the model in each (seconds); idempotent.

        Parameters
        ----------
        wait_all : bool
            ``False``: return as soon as the first worker process is ready (the
            others join as they finish loading), so a restarted line scores its
            first item as early as it can.  Process pools only.

        Raises
        ------
        Exception
            What loading the model raised (e.g. :class:`~sorter.errors.ModelError`).
        """
        if self._started:
            return
        if not wait_all and self.kind == "process" and self.workers > 1:
            await self._start_first_ready()
            return
        t0 = time.monotonic()
        if self.kind == "thread":
            from sorter.model import load_model

            limit_threads()
            model = await asyncio.to_thread(load_model, self.model_dir)
            self._scorer = Scorer(model, allow_line_mismatch=self.allow_line_mismatch)
            self.model_id = model.model_id
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sorter-score")
            await asyncio.get_running_loop().run_in_executor(
                self._executor, score_batch, self._scorer, [(Item(ItemRecord("warm-up", 0.0)), None)])
        else:
            procs = [self._new_process() for _ in range(self.workers)]
            try:
                warm = await asyncio.gather(*(p.call("warm", None) for p in procs))
            except BaseException:
                await asyncio.to_thread(_close_all, procs)
                raise
            self._procs = procs
            self._free = deque(procs)
            self.model_id = warm[0][1]
            self.worker_pids = sorted(pid for pid, _ in warm)
            logger.debug("scoring workers %s", self.worker_pids)
        self._started = True
        logger.info("scoring pool: %d %s worker(s), model %s, ready in %.1f s", self.workers, self.kind,
                    self.model_id, time.monotonic() - t0)

    async def _start_first_ready(self) -> None:
        """Start one worker, wait for its model, then start the others in the background.

        One at a time: a worker's start-up is CPU-bound (imports, model load), so on a
        machine with few cores the first worker is ready sooner alone than sharing the
        CPU with the others.
        """
        t0 = time.monotonic()
        proc = self._new_process()
        try:
            pid, model_id = await proc.call("warm", None)
        except BaseException:
            await asyncio.to_thread(_close_all, [proc])
            raise
        self._procs = [proc]
        self._free = deque([proc])
        self.model_id = model_id
        self.worker_pids = [pid]
        self._started = True
        logger.info("scoring pool: first of %d process worker(s) ready in %.1f s, model %s", self.workers,
                    time.monotonic() - t0, model_id)
        for _ in range(self.workers - 1):
            self._respawning += 1
            other = self._new_process()
            self._spawn_task(self._join_when_warm(other, asyncio.ensure_future(other.call("warm", None))),
                             "scoring worker warming")

    async def _join_when_warm(self, proc: ScoringProcess, fut: asyncio.Future[tuple[int, str]]) -> None:
        try:
            pid, _model_id = await fut
        except asyncio.CancelledError:
            proc.kill()
            raise
        except Exception as err:  # noqa: BLE001 - the pool works on with the workers it has; respawned later
            logger.error("scoring worker %s failed to start: %s", proc.pid, err)
            proc.kill()
            self._respawning -= 1
            if self._started:
                self._kick()
            return
        self._respawning -= 1
        if not self._started:
            proc.kill()
            return
        self._procs.append(proc)
        self._free.append(proc)
        self.worker_pids = sorted(set(self.worker_pids) | {pid})
        self._kick()

    async def score(self, item: Item, ambient_c: float | None, *, due_mono: float | None = None) -> Decision | None:
        """The decision for one item; never raises.

        Parameters
        ----------
        item : Item
        ambient_c : float or None
            Ambient estimate for this item (the caller tracks it in item order).
        due_mono : float, optional
            :func:`time.monotonic` time by which the decision is of use.  If it
            has passed when a worker would start on the item, the item is not
            scored and ``None`` is returned (load shedding: under overload the
            CPU goes to items that can still make their deadline).  Items that
            merely *might* miss are scored: queued items are what lets a worker
            batch them, which is what keeps the pool's throughput up.
        """
        if not self._started:
            await self.start()
        fut: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(item, ambient_c, fut, due_mono))
        self._kick()
        return await fut

    @property
    def waiting(self) -> int:
        """Items queued for a free worker."""
        return len(self._queue)

    def _take(self, now: float) -> list[_Job]:
        """Up to ``max_batch`` queued jobs still worth scoring; sheds the hopeless ones."""
        jobs: list[_Job] = []
        while self._queue and len(jobs) < self.max_batch:
            job = self._queue.popleft()
            if job.future.done():  # a cancelled waiter needs no score
                continue
            if job.due_mono is not None and now >= job.due_mono:
                self.shed += 1
                job.future.set_result(None)
                continue
            jobs.append(job)
        return jobs

    def _kick(self) -> None:
        if not self._started:
            return
        if self.kind == "process":
            self._replenish()
            while self._free and self._queue:
                now = time.monotonic()
                jobs = self._take(now)
                if not jobs:
                    continue
                proc = self._free.pop()
                self._spawn_task(self._run_batch(proc, jobs, now), "score batch")
            return
        loop = asyncio.get_running_loop()
        while self._idle > 0 and self._queue:
            now = time.monotonic()
            jobs = self._take(now)
            if not jobs:
                continue
            self._idle -= 1
            batch = [(j.item, j.ambient_c) for j in jobs]
            assert self._executor is not None and self._scorer is not None
            try:
                fut = loop.run_in_executor(self._executor, score_batch, self._scorer, batch)
            except RuntimeError as err:  # executor shut down
                self._idle += 1
                self._fail(jobs, err)
                continue
            fut.add_done_callback(partial(self._done, jobs, now))

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _deliver(self, jobs: list[_Job], started: float, decisions: list[Decision]) -> None:
        self.busy_s += time.monotonic() - started
        self.batches += 1
        self.items_scored += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        for job, decision in zip(jobs, decisions, strict=True):
            if not job.future.done():
                job.future.set_result(decision)

    async def _run_batch(self, proc: ScoringProcess, jobs: list[_Job], started: float) -> None:
        try:
            decisions = await proc.call("score", [(j.item, j.ambient_c) for j in jobs])
        except asyncio.CancelledError:
            # The loop is going away mid-call: this worker's stream is out of step. Drop it now;
            # the next _kick (on whatever loop uses the pool next) starts a replacement.
            self._fail(jobs, RuntimeError("scoring cancelled (pool closing)"))
            if proc in self._procs:
                self._procs.remove(proc)
            proc.kill()
            raise
        except Exception as err:  # noqa: BLE001 - a failed batch goes to the safe lane, never up
            self._fail(jobs, err)
        else:
            self._deliver(jobs, started, decisions)
        if proc.broken:
            self._replace(proc)
        elif self._started:
            self._free.append(proc)
        self._kick()

    def _replace(self, proc: ScoringProcess) -> None:
        logger.error("scoring worker %s died (exit code %s); starting a new one (the model loads again)",
                     proc.pid, proc.process.exitcode)
        if proc in self._procs:
            self._procs.remove(proc)
        self.worker_pids = [p for p in self.worker_pids if p != proc.pid]
        self._spawn_task(asyncio.to_thread(proc.close, 1.0), "reap scoring worker")
        self._replenish()

    def _replenish(self) -> None:
        """Start replacements until the pool has ``workers`` processes (alive or starting)."""
        while self._started and len(self._procs) + self._respawning < self.workers:
            self._respawning += 1
            self._spawn_task(self._respawn(), "respawn scoring worker")

    async def _respawn(self) -> None:
        proc: ScoringProcess | None = None
        cancelled = False
        try:
            while self._started:
                try:
                    proc = self._new_process()
                    pid, _model_id = await proc.call("warm", None)
                except WorkerLost as err:
                    logger.error("replacement scoring worker failed to start: %s; retrying in %.0f s", err,
                                 _RESPAWN_DELAY_S)
                    if proc is not None:
                        proc.kill()
                    proc = None
                    await asyncio.sleep(_RESPAWN_DELAY_S)
                    continue
                except Exception as err:  # noqa: BLE001 - e.g. the model no longer loads: its calls fail alike
                    logger.error("replacement scoring worker cannot score: %s; its items go to the safe lane",
                                 err)
                    pid = proc.pid or 0
                if not self._started:
                    break
                self.respawned += 1
                self.worker_pids = sorted(set(self.worker_pids) | {pid})
                self._procs.append(proc)
                self._free.append(proc)
                proc = None
                return
        except asyncio.CancelledError:  # the loop is closing: the next _kick (next loop) replenishes
            cancelled = True
            raise
        finally:
            self._respawning -= 1
            if proc is not None:  # not taken into the pool (closing, or cancelled while starting)
                proc.kill()
            if self._started and not cancelled:
                self._kick()

    def _done(self, jobs: list[_Job], started: float, fut: asyncio.Future[list[Decision]]) -> None:
        self._idle += 1
        err = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if err is None:
            self._deliver(jobs, started, fut.result())
        else:
            self._fail(jobs, err)
        self._kick()

    def _fail(self, jobs: list[_Job], err: BaseException) -> None:
        logger.error("scoring %d item(s) failed: %r; they go to the safe lane", len(jobs), err)
        for job in jobs:
            if not job.future.done():
                job.future.set_result(error_decision(job.item.record.line_no, job.item.item_id,
                                                     f"scorer failed: {err!r}"))

    async def close(self) -> None:
        """Stop the workers (waits for running batches)."""
        if not self._started:
            return
        self._started = False
        if self.kind == "thread":
            executor, self._executor = self._executor, None
            if executor is not None:
                await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
            return
        # Running batches finish (their items are decided); respawns see _started False and stop.
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        procs, self._procs, self._free = self._procs, [], deque()
        await asyncio.to_thread(_close_all, procs)
        for job in self._queue:  # nothing is left to score them
            if not job.future.done():
                job.future.set_result(error_decision(job.item.record.line_no, job.item.item_id,
                                                     "scorer closed"))
        self._queue.clear()


def _close_all(procs: list[ScoringProcess]) -> None:
    for proc in procs:
        proc.close()


# --------------------------------------------------------------------------- results


class LatencyHistogram:
    """Latencies at 0.1 ms resolution up to 10 s, in constant memory.

    Examples
    --------
    >>> h = LatencyHistogram()
    >>> for ms in (10.0, 11.0, 12.0, 50.0):
    ...     h.add(ms / 1000)
    >>> h.percentile_ms(50), h.count
    (11.0, 4)
    """

    RESOLUTION_MS: Final = 0.1
    MAX_MS: Final = 10_000.0

    def __init__(self) -> None:
        self._bins = np.zeros(int(self.MAX_MS / self.RESOLUTION_MS) + 2, dtype=np.int64)
        self.count = 0
        self.max_ms = 0.0

    def add(self, seconds: float) -> None:
        ms = max(0.0, seconds * 1000.0)
        self._bins[min(len(self._bins) - 1, int(round(ms / self.RESOLUTION_MS)))] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, ms)

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (nearest rank), ``None`` when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.count))
        k = int(np.searchsorted(np.cumsum(self._bins), rank))
        return round(k * self.RESOLUTION_MS, 1)


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


def recover_audit(path: str | os.PathLike[str]) -> Resume:
    """Prepare the audit log for a run: mark a crash's ``pending`` rows ``undelivered``.

    A ``pending`` row is a decision committed before the process died, whose
    delivery was never recorded.  Its deadline is long gone: the PLC defaulted
    the item to the safe lane, or acted on the decision if it had arrived; the
    PLC counters are the truth.

    Raises
    ------
    AuditError
        If the audit log cannot be opened or written.
    """
    with AuditLog(path) as log:
        pending = log.pending()
        for rec in pending:
            log.record_delivery(rec.item_id, "undelivered", plc_seq=rec.plc_seq, plc_status=rec.plc_status)
        if pending:
            logger.warning("audit log %s: %d decision(s) left pending by a crash marked undelivered "
                           "(their items defaulted to the safe lane unless the PLC had latched them)",
                           path, len(pending))
        return Resume(log.resume_point(), log.count(), len(pending), tuple(pending))


@dataclass
class _Stats:
    """Running totals of a run (constant memory)."""

    items: int = 0
    lanes: Counter[str] = field(default_factory=Counter)
    effective: Counter[str] = field(default_factory=Counter)
    delivery: Counter[str] = field(default_factory=Counter)
    overload: int = 0
    errors: int = 0
    duplicates: int = 0
    unrecorded: int = 0
    truth: Counter[tuple[str, str]] = field(default_factory=Counter)
    damaged: Counter[str] = field(default_factory=Counter)
    hazard_wh: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    peak_in_flight: int = 0


@dataclass(frozen=True)
class RunSummary:
    """What a run did, for the operator and for tests.

    ``lanes`` counts the lane *decided* per item; ``effective_lanes`` where
    items went: the decided lane when the PLC accepted it, else ``manual``.
    Truth figures are ``None`` when the source did not know the truth.
    Latencies are item available -> lane acknowledged, over acknowledged items.
    """

    items: int
    lanes: Mapping[str, int]
    effective_lanes: Mapping[str, int]
    delivery: Mapping[str, int]
    overload: int
    errors: int
    duplicates: int
    unrecorded: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    deadline_ms: float
    audit_rows: int
    audit_total: int
    pending_marked: int
    resume_point: int
    duration_s: float
    model_id: str
    peak_in_flight: int
    li_ion_total: int | None = None
    li_ion_in_lead_acid: int | None = None
    non_lead_in_lead_acid: int | None = None
    lead_acid_total: int | None = None
    lead_acid_to_lead_acid: int | None = None
    lead_acid_lane_items: int | None = None
    damaged_total: int | None = None
    damaged_to_hazard: int | None = None
    hazard_energy_wh: float | None = None
    plc_counters: Mapping[str, int] | None = None
    scoring_batches: int = 0
    largest_batch: int = 0
    error: str | None = None
    reconciliation: tuple[str, ...] = ()
    """What the start-up reconciliation with the PLC found (empty: everything agreed or nothing to compare)."""
    reconciliation_gap_items: int = 0
    """Items in a lane gap or mailbox mismatch found at start-up (an alarm)."""
    audit_sync: str = "full"
    max_durability_lag_ms: float | None = None
    """Worst time a committed row waited to be flushed to disk (``audit.sync = "interval"``)."""
    startup_s: Mapping[str, float] = field(default_factory=dict)
    """Seconds from :meth:`Controller.run` to: ``link_up``, ``scorer_ready``, ``first_ack``."""

    @property
    def deadline_misses(self) -> int:
        """Items not confirmed by the PLC in time (overload included)."""
        return int(self.delivery.get("late", 0))

    @property
    def undelivered(self) -> int:
        return int(self.delivery.get("undelivered", 0))

    @property
    def rejected(self) -> int:
        return int(self.delivery.get("rejected", 0))

    @property
    def lead_acid_purity(self) -> float | None:
        """Share of the items that went to ``lead_acid`` that are lead-acid (truth known)."""
        if self.lead_acid_lane_items is None or self.lead_acid_to_lead_acid is None:
            return None
        return self.lead_acid_to_lead_acid / self.lead_acid_lane_items if self.lead_acid_lane_items else 1.0

    @property
    def audit_ok(self) -> bool:
        """Every item of the run has exactly one new audit row."""
        return self.audit_rows == self.items

    @property
    def plc_agrees(self) -> bool | None:
        """Whether the PLC's lane counters for this run equal where the controller says items went.

        Meaningful when the PLC tracks every item (it was told about them at
        the bridge); ``None`` without PLC counters.
        """
        if self.plc_counters is None:
            return None
        return all(int(self.plc_counters.get(lane, 0)) == int(self.effective_lanes.get(lane, 0)) for lane in LANES)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(deadline_misses=self.deadline_misses, undelivered=self.undelivered, rejected=self.rejected,
                   lead_acid_purity=self.lead_acid_purity, audit_ok=self.audit_ok, plc_agrees=self.plc_agrees)
        return out

    def format(self) -> str:
        """A human-readable report (several lines)."""
        rate = self.items / self.duration_s if self.duration_s > 0 else 0.0

        def counts(m: Mapping[str, int]) -> str:
            return ", ".join(f"{k} {m.get(k, 0)}" for k in LANES) if m else "-"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} ms"

        lines = [
            f"items          {self.items} in {self.duration_s:.1f} s ({rate:.1f}/s), model {self.model_id}",
            f"lanes decided  {counts(self.lanes)}",
            f"items went to  {counts(self.effective_lanes)}   (only PLC-accepted decisions leave manual)",
            "delivery       " + ", ".join(f"{k} {self.delivery.get(k, 0)}" for k in
                                          ("acked", "late", "undelivered", "rejected")),
            f"latency        p50 {ms(self.latency_p50_ms)}, p99 {ms(self.latency_p99_ms)}, "
            f"max {ms(self.latency_max_ms)} (available -> PLC ack; deadline {self.deadline_ms:.0f} ms)",
            f"deadline       {self.deadline_misses} missed (of which {self.overload} overload, not scored), "
            f"{self.undelivered} undelivered, {self.rejected} rejected",
        ]
        if self.li_ion_total is not None:
            purity = self.lead_acid_purity
            lines += [
                f"truth          Li-ion in lead_acid: {self.li_ion_in_lead_acid} of {self.li_ion_total} Li-ion; "
                f"non-lead in lead_acid: {self.non_lead_in_lead_acid}",
                f"               lead_acid lane purity: "
                f"{'-' if purity is None else f'{100 * purity:.2f} %'} ({self.lead_acid_to_lead_acid} of "
                f"{self.lead_acid_lane_items}); lead-acid recovered: {self.lead_acid_to_lead_acid} of "
                f"{self.lead_acid_total}",
                f"               hazard: {self.effective_lanes.get('hazard', 0)} items, "
                f"{self.hazard_energy_wh or 0.0:.0f} Wh known rated energy; damaged Li-ion to hazard: "
                f"{self.damaged_to_hazard} of {self.damaged_total}",
            ]
        lines.append(
            f"audit          {self.audit_rows} new rows for {self.items} items "
            f"({'OK' if self.audit_ok else 'MISMATCH'}); {self.audit_total} rows in the log"
            + (f"; {self.pending_marked} pending rows from a crash marked undelivered" if self.pending_marked else "")
            + (f"; resumed after line {self.resume_point}" if self.resume_point else "")
        )
        if self.audit_sync == "interval" and self.max_durability_lag_ms is not None:
            lines.append(f"durability     audit rows flushed to disk on a cadence; worst lag "
                         f"{self.max_durability_lag_ms:.0f} ms (a power cut loses at most that window)")
        if self.reconciliation:
            head = "RECONCILE      " if self.reconciliation_gap_items else "reconcile      "
            lines += [(head if k == 0 else "               ") + text for k, text in enumerate(self.reconciliation)]
        if self.plc_counters is not None:
            pc = self.plc_counters
            agree = self.plc_agrees
            lines.append(
                f"PLC counters   {counts(pc)}; defaulted {pc.get('defaulted', 0)}, late {pc.get('late', 0)}, "
                f"rejected {pc.get('rejected', 0)} (this run) -> "
                + ("agree with the controller" if agree else "DIFFER from the controller")
            )
        if self.error:
            lines.append(f"error          {self.error}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- controller


SourceFactory = Callable[[Resume, Callable[[str], bool]], ItemSource]


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
        self.scorer = scorer or ScoringPool(config.line.model, workers=config.line.scorer_workers,
                                            kind=config.line.scorer_pool, max_batch=config.line.max_batch,
                                            allow_line_mismatch=config.line.allow_line_mismatch)
        self.metrics = metrics or LineMetrics()
        self.status = status
        self.settle = settle
        self.deadline_s = config.line.deadline_ms / 1000.0
        self.grace_s = config.plc.ack_grace_ms / 1000.0
        self._ambient = AmbientTracker()
        self.health = SensorHealth(on_change=self._sensor_changed)
        self._stats = _Stats()
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
        self._early_events: list[tuple[str, dict[str, Any], float]] = []  # before the audit writer is open
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
            await asyncio.to_thread(load_model, model_dir or None)
            new = ScoringPool(model_dir, workers=self.scorer.workers, kind=self.scorer.kind,
                              allow_line_mismatch=getattr(self.scorer, "allow_line_mismatch", False),
                              max_batch=self.scorer.max_batch)
            await new.start()
        except Exception as err:  # noqa: BLE001 - any failure: keep the model that works
            logger.error("model swap to %s refused, %s stays in charge: %s", model_dir or "the shipped model",
                         self.scorer.model_id, err)
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
            self.resume = await asyncio.to_thread(recover_audit, cfg.audit.path)
        except BaseException:
            scorer_ready.cancel()
            await asyncio.gather(scorer_ready, return_exceptions=True)
            if self._own_scorer:
                await self.scorer.close()
            raise
        background: list[asyncio.Task[Any]] = []
        try:
            await self.link.connect()
        except PlcError as err:
            logger.warning("%s; scoring goes on, decisions are undelivered until it connects", err)
        background.append(asyncio.create_task(self.link.run_heartbeat(cfg.plc.heartbeat_ms / 1000.0),
                                              name="plc-heartbeat"))
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
            self._writer = AuditWriter(cfg.audit.path, max_queue=max(10_000, 2 * cfg.line.max_in_flight + 16),
                                       delivery_delay_s=cfg.audit.delivery_flush_ms / 1000.0,
                                       on_commit=self.metrics.audit_commit.observe,
                                       sync=cfg.audit.sync, sync_interval_s=cfg.audit.sync_interval_ms / 1000.0,
                                       on_durable=self.metrics.audit_durability_lag.observe)
            for kind, detail, t in self._early_events:
                self._writer.submit_event("plc_protocol_fault", {"kind": kind, **detail}, t=t)
            self._early_events.clear()
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

            background.append(asyncio.create_task(DiskWatch(
                line_disks(cfg), settings_of(cfg), registry=self.metrics.registry,
                audit_failing=lambda: self._writer is not None and self._writer.failing).run(), name="disk-watch"))
            # --- end issue 19
            self._started_mono = time.monotonic()
            logger.info("line %s running: deadline %.1f ms, up to %d items in flight, model %s",
                        cfg.line.name, cfg.line.deadline_ms, cfg.line.max_in_flight, self.scorer.model_id)
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
            await asyncio.wrap_future(self._writer.submit_event(
                SNAPSHOT_EVENT, snapshot_detail(counters, last_id, why, mailbox)))
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
            logger.info("reconciliation with the PLC: the audit log agrees with its counters since the %s "
                        "snapshot (%d rows)", found.since, found.audit_rows)
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
        logger.log(logging.WARNING if new != "ok" else logging.INFO, "sensor=%s alarm %s -> %s at item=%s",
                   sensor, old, new, item_id, extra={"sensor": sensor, "alarm": new, "item_id": item_id})
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
        task = asyncio.create_task(self._handle(si, ambient, overload, scorer), name=f"item {si.item_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, si: SourceItem, ambient: float | None, overload: bool,
                      scorer: ScoringPool | None = None) -> None:
        try:
            await self._decide_and_deliver(si, ambient, overload, scorer or self.scorer)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one item's bug must not stop the line
            logger.exception("item %s: unexpected error; it goes to the safe lane by the PLC's default",
                             si.item_id)
            self._stats.unrecorded += 1
        finally:
            pool = scorer or self.scorer
            self._pool_users[id(pool)] = self._pool_users.get(id(pool), 1) - 1
            self._active -= 1
            self._sem.release()

    async def _decide_and_deliver(self, si: SourceItem, ambient: float | None, overload: bool,
                                  scorer: ScoringPool) -> None:
        assert self._writer is not None
        overload = overload or time.monotonic() >= si.due_mono
        decision: Decision | None = None
        model_id = scorer.model_id
        if overload:
            lane, reason, chemistry = SAFE_LANE, "overload", None
            probs: tuple[float | None, float | None, float | None] = (None, None, None)
        else:
            if si.item is None:
                decision = error_decision(si.source_line or 0, si.item_id, si.error or "unreadable item")
                self._stats.errors += 1
            else:
                decision = await scorer.score(si.item, ambient, due_mono=si.due_mono)
            if decision is None:  # shed by the scoring pool: it could no longer make its deadline
                overload = True
                lane, reason, chemistry = SAFE_LANE, "overload", None
                probs = (None, None, None)
            else:
                lane, reason, chemistry = decision.lane, decision.reason, decision.chemistry
                probs = (_prob(decision.p_lead_acid), _prob(decision.p_li_ion), _prob(decision.p_other))
        now_mono, now = time.monotonic(), time.time()
        left = si.due_mono - now_mono
        send = not overload and left > 0 and si.plc_id is not None
        if not overload and left <= 0:
            reason = f"deadline_missed: decided {lane} ({reason}) {-left * 1000:.1f} ms after the deadline"
            lane = SAFE_LANE
        if lane not in LANES:  # the policy only knows LANES; anything else is a bug, and unsafe to send
            reason, lane = f"unknown lane {lane!r} from the policy", SAFE_LANE
        delivery = "pending" if send else ("undelivered" if si.plc_id is None and not overload and left > 0
                                           else "late")
        rec = AuditRecord(
            item_id=si.item_id,
            source_line=si.source_line,
            t_item=si.t_item,
            t_available=si.t_available,
            t_decided=now,
            chemistry=chemistry,
            p_lead_acid=probs[0],
            p_li_ion=probs[1],
            p_other=probs[2],
            lane=lane,
            reason=reason[:500],
            model_id=model_id,
            latency_ms=max(0.0, (now_mono - si.available_mono) * 1000.0),
            deadline_ms=self.config.line.deadline_ms,
            delivery=delivery,
        )
        try:
            inserted = await asyncio.wrap_future(self._writer.submit(rec))
        except AuditError as err:
            # Not on disk, so not sent: the PLC defaults the item to the safe lane.
            logger.error("item=%s audit write failed, decision not sent: %s", si.item_id, err)
            self._stats.unrecorded += 1
            return
        if not inserted:
            logger.warning("item=%s already in the audit log (re-read after a restart?); not sent again", si.item_id)
            self._stats.duplicates += 1
            return

        plc_seq: int | None = None
        plc_status: str | None = None
        acked_mono: float | None = None
        if send and time.monotonic() >= si.due_mono:
            # The commit took the rest of the budget: a decision is never *started* after the deadline.
            send = False
            delivery = "late"
            logger.info("item=%s lane=%s delivery=late: the deadline passed while the decision was being "
                        "recorded; not sent", si.item_id, lane)
            await self._record_delivery(si.item_id, delivery, None, None, None)
        max_lag_s = self.config.audit.max_lag_ms / 1000.0
        if send and max_lag_s > 0 and self._writer.durability_lag_s() > max_lag_s:
            # The operator chose a hard bound on what a power cut may lose: the disk is behind it.
            send = False
            delivery = "undelivered"
            lag_ms = 1000 * self._writer.durability_lag_s()
            self._note_undelivered(si, lane, PlcError(
                f"not sent: audit rows have waited {lag_ms:.0f} ms for the disk, more than audit.max_lag_ms"))
            await self._record_delivery(si.item_id, delivery, None, f"not sent: durability lag {lag_ms:.0f} ms",
                                        None)
        if send:
            assert si.plc_id is not None
            try:
                ack = await self.link.send_decision(si.plc_id, lane,
                                                    timeout_s=si.due_mono - time.monotonic() + self.grace_s)
            except PlcProtocolError as err:
                # The PLC broke the contract: its answer cannot be trusted. Not acked, not refused:
                # where the item went is for the PLC counters (reconciliation) to say.
                delivery = "undelivered"
                plc_seq = err.seq
                plc_status = f"protocol_fault:{err.kind}" + (
                    f":status={err.raw_status}" if err.raw_status is not None else "")
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
                    logger.info("item=%s plc_id=%d lane=%s delivery=%s plc_status=%s", si.item_id, si.plc_id,
                                lane, delivery, ack.status)
            t_acked = time.time() - (time.monotonic() - acked_mono) if acked_mono is not None else None
            await self._record_delivery(si.item_id, delivery, plc_seq, plc_status, t_acked)
        latency = acked_mono - si.available_mono if acked_mono is not None else None
        self._count(si, lane, delivery, latency, overload)
        logger.debug("item=%s plc_id=%s lane=%s reason=%r delivery=%s latency_ms=%s", si.item_id, si.plc_id,
                     lane, reason, delivery, None if latency is None else round(latency * 1000, 2),
                     extra={"item_id": si.item_id, "lane": lane, "delivery": delivery})

    async def _record_delivery(self, item_id: str, delivery: str, plc_seq: int | None, plc_status: str | None,
                               t_acked: float | None) -> None:
        assert self._writer is not None
        try:
            await asyncio.wrap_future(self._writer.submit_delivery(
                item_id, delivery, plc_seq=plc_seq, plc_status=plc_status, t_acked=t_acked))
        except AuditError as err:
            logger.error("item=%s delivery %s not recorded (row stays pending): %s", item_id, delivery, err)

    def _note_undelivered(self, si: SourceItem, lane: str, err: Exception) -> None:
        logger.info("item=%s plc_id=%s lane=%s delivery=undelivered: %s", si.item_id, si.plc_id, lane, err)
        self._outage_undelivered += 1
        now = time.monotonic()
        if now - self._last_outage_log >= 5.0:
            logger.warning("PLC link %s: %d decision(s) undelivered so far (recorded in the audit log; "
                           "the items go to the safe lane): %s", self.link.state, self._outage_undelivered, err)
            self._last_outage_log = now

    def _count(self, si: SourceItem, lane: str, delivery: str, latency: float | None, overload: bool) -> None:
        s = self._stats
        s.items += 1
        s.lanes[lane] += 1
        went = lane if delivery == "acked" else SAFE_LANE
        s.effective[went] += 1
        s.delivery[delivery] += 1
        if overload:
            s.overload += 1
        if latency is not None:
            s.latency.add(latency)
        hazard_wh = None
        if si.truth is not None and si.truth.label is not None:
            s.truth[(si.truth.label, went)] += 1
            if si.truth.label == "li_ion" and si.truth.damaged:
                s.damaged[went] += 1
            if went == "hazard" and si.truth.energy_wh:
                hazard_wh = si.truth.energy_wh
                s.hazard_wh += hazard_wh
            if went == "lead_acid" and si.truth.label == "li_ion":
                logger.error("item=%s: Li-ion (truth) went to lead_acid", si.item_id)
        self.metrics.record_item(lane=lane, delivery=delivery, latency_s=latency, overload=overload,
                                 hazard_wh=hazard_wh)

    def _summary(self, duration: float, total: int, plc: dict[str, int] | None, error: str | None) -> RunSummary:
        s = self._stats
        assert self.resume is not None
        truth: dict[str, Any] = {}
        if s.truth:
            t = s.truth
            labelled = sum(t.values())

            def tsum(label: str | None = None, lane: str | None = None) -> int:
                return sum(v for (lab, ln), v in t.items()
                           if (label is None or lab == label) and (lane is None or ln == lane))

            truth = dict(
                li_ion_total=tsum("li_ion"),
                li_ion_in_lead_acid=tsum("li_ion", "lead_acid"),
                non_lead_in_lead_acid=tsum(lane="lead_acid") - tsum("lead_acid", "lead_acid"),
                lead_acid_total=tsum("lead_acid"),
                lead_acid_to_lead_acid=tsum("lead_acid", "lead_acid"),
                lead_acid_lane_items=tsum(lane="lead_acid"),
                damaged_total=sum(s.damaged.values()),
                damaged_to_hazard=s.damaged.get("hazard", 0),
                hazard_energy_wh=round(s.hazard_wh, 1),
            )
            if labelled < s.items:
                logger.info("truth known for %d of %d items", labelled, s.items)
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


def _prob(p: float) -> float | None:
    return None if p is None or not math.isfinite(p) else min(1.0, max(0.0, float(p)))


def _last_id(path: str) -> int:
    with AuditLog(path) as log:
        return log.last_id()


def _count_rows(path: str) -> int:
    with AuditLog(path) as log:
        return log.count()


# --------------------------------------------------------------------------- wiring


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
    if p.kind == "memory":
        return MemoryPlc(scan_ms=p.memory_scan_ms, **options)  # type: ignore[arg-type]
    return ModbusPlcLink(p.host, p.port, device_id=p.device_id, **options)  # type: ignore[arg-type]


def build_source(config: LineConfig, *, announce: Callable[[int, float], None] | None = None,
                 pool: Sequence[Any] | None = None) -> SourceFactory:
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
            return SimulatedSource(sim, timing, items=s.items, rate_hz=s.rate_hz, pool_size=s.pool, pool=pool,
                                   announce=announce, workers=min(2, os.cpu_count() or 1))
        start = resume.resume_point + 1
        if resume.resume_point:
            logger.info("resuming %s after line %d (from the audit log)", ln.log_dir, resume.resume_point)
        return LogFollowSource(Path(ln.log_dir), timing, start_line=start,
                               recheck_from=max(1, start - RECHECK_LINES) if resume.resume_point else None,
                               is_recorded=is_recorded, follow=ln.follow, poll_s=ln.log_poll_ms / 1000.0,
                               queue_size=max(4, min(ln.max_in_flight, 256)), announce=announce)

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
    controller = Controller(config, link=link, source=source or build_source(config, announce=announce),
                            scorer=scorer, metrics=metrics, status=status_line, settle=settle)
    if status is True:
        controller.status = StatusLine(controller.snapshot, interval_s=config.status.interval_s)
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []
    if handle_signals:
        def on_signal(signum: int) -> None:
            if controller._stop_requested:
                logger.warning("second %s: stopping now", signal.Signals(signum).name)
                controller.abort()
            else:
                logger.warning("%s: finishing the items in flight, then stopping (again to stop now)",
                               signal.Signals(signum).name)
                controller.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
            signals.append(sig)

        def on_hangup() -> None:
            logger.warning("SIGHUP: reloading the model from %s", config.line.model or "the shipped model")
            task = loop.create_task(controller.swap_model(config.line.model or None))
            controller._retiring.add(task)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        signals.append(signal.SIGHUP)
    try:
        return await controller.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        metrics.close()
