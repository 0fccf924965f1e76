"""Scoring off the event loop: a small pool of workers, micro-batching when items queue up.

:class:`ScoringPool` is the interface the controller uses (python-can's ``BusABC`` shape):
:meth:`~ScoringPool.start`, :meth:`~ScoringPool.score` (never raises), :meth:`~ScoringPool.close`,
and the run's counters.  Two implementations, chosen by ``kind`` from :data:`POOL_KINDS`:

- :class:`ProcessScoringPool` (``"process"``, the default): spawned worker processes, each
  loading the model once, each spoken to directly from the event loop over a socket pair
  (:mod:`sorter.line.workers`: no helper threads in the controller process).  Scoring is
  CPU-bound Python, which threads would serialise on the GIL.
- :class:`ThreadScoringPool` (``"thread"``): threads sharing one model in this process
  (tests, and machines where a second process does not pay).

``ScoringPool(model_dir, kind="thread", ...)`` builds the implementation ``kind`` names, as
``can.Bus(interface=...)`` does.  Both score a batch with
:meth:`sorter.scoring.Scorer.score_items`, the code the batch engines share.

Examples
--------
>>> # pool = ScoringPool(None, workers=2, kind="thread"); decision = await pool.score(item, ambient_c)
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Final

from sorter.line.workers import SCORING_HANDLERS, ScoringProcess, WorkerLost, init_scoring_worker
from sorter.readings import Item
from sorter.scoring import Decision, Scorer, error_decision, warm_up_batch
from sorter.threads import single_threaded

logger = logging.getLogger(__name__)

__all__ = ["POOL_KINDS", "ProcessScoringPool", "ScoringPool", "ThreadScoringPool"]

_RESPAWN_DELAY_S: Final = 1.0


@dataclass
class _Job:
    item: Item
    ambient_c: float | None
    future: asyncio.Future[Decision | None]
    due_mono: float | None = None


class ScoringPool(abc.ABC):
    """Scores items off the event loop, micro-batching when items queue up.

    Parameters
    ----------
    model_dir : str or None
        Model directory; ``None`` or ``""`` for the shipped model.
    workers : int
        Worker processes (or threads).
    kind : str, optional
        ``"process"`` or ``"thread"`` (:data:`POOL_KINDS`): which implementation
        ``ScoringPool(...)`` builds.  An implementation class ignores it if it
        names that class's own kind.
    max_batch : int
        Most items in one model call.
    allow_line_mismatch : bool
        As :class:`sorter.scoring.Scorer`'s (``line.allow_line_mismatch``).

    Notes
    -----
    While a worker is free, an item is scored alone at once.  When all are
    busy, items wait, and the next free worker takes up to ``max_batch`` of
    them in one call to :meth:`~sorter.scoring.Scorer.score_items`: the model
    costs about the same for 16 rows as for one.  :meth:`score` never raises: a
    failed worker gives the item an error decision (``manual``).

    The pool may be used from several event loops one after another (tests);
    one loop at a time.
    """

    kind: ClassVar[str]

    def __new__(cls, *args: Any, kind: str | None = None, **kwargs: Any) -> ScoringPool:
        if cls is ScoringPool:
            kind = kind or "process"
            try:
                cls = POOL_KINDS[kind]
            except KeyError:
                raise ValueError(f"kind={kind!r}: use one of {sorted(POOL_KINDS)}") from None
        return super().__new__(cls)

    def __init__(
        self,
        model_dir: str | None = None,
        *,
        workers: int = 2,
        kind: str | None = None,
        max_batch: int = 16,
        allow_line_mismatch: bool = False,
    ) -> None:
        if kind is not None and kind != self.kind:
            raise ValueError(f"kind={kind!r} given to a {type(self).__name__} (kind {self.kind!r})")
        if workers < 1 or max_batch < 1:
            raise ValueError(f"workers={workers} and max_batch={max_batch} must be >= 1")
        self.model_dir = model_dir or None
        self.allow_line_mismatch = allow_line_mismatch
        self.workers = workers
        self.max_batch = max_batch
        self.model_id = "unknown"
        self._started = False
        self._queue: deque[_Job] = deque()
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

    def like(self, model_dir: str | None) -> ScoringPool:
        """A new, unstarted pool of the same kind and size for another model (a model swap)."""
        return ScoringPool(
            model_dir,
            kind=self.kind,
            workers=self.workers,
            max_batch=self.max_batch,
            allow_line_mismatch=self.allow_line_mismatch,
        )

    @property
    def started(self) -> bool:
        return self._started

    @property
    def waiting(self) -> int:
        """Items queued for a free worker."""
        return len(self._queue)

    async def start(self, *, wait_all: bool = True) -> None:
        """Start the workers and load the model in each (seconds); idempotent.

        Parameters
        ----------
        wait_all : bool
            ``False``: return as soon as the first worker is ready (the others
            join as they finish loading), so a restarted line scores its first
            item as early as it can.  Process pools only; a thread pool has one
            model for all its threads.

        Raises
        ------
        Exception
            What loading the model raised (e.g. :class:`~sorter.errors.ModelError`).
        """
        if self._started:
            return
        await self._start(wait_all)

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

    async def close(self) -> None:
        """Stop the workers (waits for running batches)."""
        if not self._started:
            return
        self._started = False
        await self._close()

    # -- what an implementation provides ---------------------------------------

    @abc.abstractmethod
    async def _start(self, wait_all: bool) -> None:
        """Start the workers, set :attr:`model_id` and ``_started``."""

    @abc.abstractmethod
    def _kick(self) -> None:
        """Hand queued jobs to free workers (:meth:`_take` them)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Stop the workers; ``_started`` is already False."""

    # -- shared by the implementations -----------------------------------------

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

    def _deliver(self, jobs: list[_Job], started: float, decisions: list[Decision]) -> None:
        self.busy_s += time.monotonic() - started
        self.batches += 1
        self.items_scored += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        for job, decision in zip(jobs, decisions, strict=True):
            if not job.future.done():
                job.future.set_result(decision)

    def _fail(self, jobs: list[_Job], err: BaseException) -> None:
        logger.error("scoring %d item(s) failed: %r; they go to the safe lane", len(jobs), err)
        for job in jobs:
            if not job.future.done():
                job.future.set_result(
                    error_decision(job.item.record.line_no, job.item.item_id, f"scorer failed: {err!r}")
                )

    def _ready(self, t0: float) -> None:
        self._started = True
        logger.info(
            "scoring pool: %d %s worker(s), model %s, ready in %.1f s",
            self.workers,
            self.kind,
            self.model_id,
            time.monotonic() - t0,
        )


class ThreadScoringPool(ScoringPool):
    """Threads in this process sharing one model (see :class:`ScoringPool`)."""

    kind = "thread"

    def __init__(self, model_dir: str | None = None, **options: Any) -> None:
        super().__init__(model_dir, **options)
        self._executor: ThreadPoolExecutor | None = None
        self._scorer: Scorer | None = None
        self._idle = self.workers

    async def _start(self, wait_all: bool) -> None:
        from sorter.model import load_model

        t0 = time.monotonic()
        single_threaded()
        model = await asyncio.to_thread(load_model, self.model_dir, estimators=False)
        self._scorer = Scorer(model, allow_line_mismatch=self.allow_line_mismatch)
        self.model_id = model.model_id
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sorter-score")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._scorer.score_items, warm_up_batch())
        self._ready(t0)

    def _kick(self) -> None:
        if not self._started:
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
                fut = loop.run_in_executor(self._executor, self._scorer.score_items, batch)
            except RuntimeError as err:  # executor shut down
                self._idle += 1
                self._fail(jobs, err)
                continue
            fut.add_done_callback(partial(self._done, jobs, now))

    def _done(self, jobs: list[_Job], started: float, fut: asyncio.Future[list[Decision]]) -> None:
        self._idle += 1
        err = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if err is None:
            self._deliver(jobs, started, fut.result())
        else:
            self._fail(jobs, err)
        self._kick()

    async def _close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)


class ProcessScoringPool(ScoringPool):
    """Spawned worker processes, each with the model loaded once (see :class:`ScoringPool`).

    A worker process that died is replaced (its items go to ``manual``; the
    others keep scoring meanwhile).
    """

    kind = "process"

    def __init__(self, model_dir: str | None = None, **options: Any) -> None:
        super().__init__(model_dir, **options)
        self._procs: list[ScoringProcess] = []  # all live workers
        self._free: deque[ScoringProcess] = deque()  # workers waiting for a batch
        self._tasks: set[asyncio.Task[Any]] = set()  # batches running, workers respawning
        self._respawning = 0

    def _new_process(self) -> ScoringProcess:
        return ScoringProcess(init_scoring_worker, (self.model_dir, self.allow_line_mismatch), SCORING_HANDLERS)

    async def _start(self, wait_all: bool) -> None:
        if not wait_all and self.workers > 1:
            await self._start_first_ready()
            return
        t0 = time.monotonic()
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
        self._ready(t0)

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
        logger.info(
            "scoring pool: first of %d process worker(s) ready in %.1f s, model %s",
            self.workers,
            time.monotonic() - t0,
            model_id,
        )
        for _ in range(self.workers - 1):
            self._respawning += 1
            other = self._new_process()
            self._spawn_task(
                self._join_when_warm(other, asyncio.ensure_future(other.call("warm", None))), "scoring worker warming"
            )

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

    def _kick(self) -> None:
        if not self._started:
            return
        self._replenish()
        while self._free and self._queue:
            now = time.monotonic()
            jobs = self._take(now)
            if not jobs:
                continue
            proc = self._free.pop()
            self._spawn_task(self._run_batch(proc, jobs, now), "score batch")

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        logger.error(
            "scoring worker %s died (exit code %s); starting a new one (the model loads again)",
            proc.pid,
            proc.process.exitcode,
        )
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
                    logger.error(
                        "replacement scoring worker failed to start: %s; retrying in %.0f s", err, _RESPAWN_DELAY_S
                    )
                    if proc is not None:
                        proc.kill()
                    proc = None
                    await asyncio.sleep(_RESPAWN_DELAY_S)
                    continue
                except Exception as err:  # noqa: BLE001 - e.g. the model no longer loads: its calls fail alike
                    logger.error("replacement scoring worker cannot score: %s; its items go to the safe lane", err)
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

    async def _close(self) -> None:
        # Running batches finish (their items are decided); respawns see _started False and stop.
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        procs, self._procs, self._free = self._procs, [], deque()
        await asyncio.to_thread(_close_all, procs)
        for job in self._queue:  # nothing is left to score them
            if not job.future.done():
                job.future.set_result(error_decision(job.item.record.line_no, job.item.item_id, "scorer closed"))
        self._queue.clear()


def _close_all(procs: list[ScoringProcess]) -> None:
    for proc in procs:
        proc.close()


POOL_KINDS: Final[dict[str, type[ScoringPool]]] = {"process": ProcessScoringPool, "thread": ThreadScoringPool}
"""The scoring pool implementations by ``line.scorer_pool`` name."""
