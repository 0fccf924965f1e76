"""Item sources of the line controller: where items come from, one at a time, in belt order.

Every source is an async iterator of :class:`SourceItem`: an item with its
readings (or the error that kept it from being read), its line number in the
source log, its item id for the audit trail and its id for the PLC, its bridge
time, when the controller had it, and by when the PLC needs its decision.

- :class:`LogFollowSource` follows a ``sorter-log/1`` directory that a recorder
  is still appending to (the live line), or replays a finished one.  The file
  is read and the images decoded in a thread, so the event loop never waits on
  the disk; a bounded queue hands items over, so a controller that falls behind
  holds the reader back instead of filling memory.  Unusable lines become
  error items: they still get an audit row and the safe lane.
- :class:`SimulatedSource` is an in-process conveyor: it emits simulated items
  at a fixed rate from a pool simulated up front (cycled with fresh ids for
  long runs), and knows the truth of each item for the run summary.

PLC item ids
------------
The PLC tracks items by a uint32 id (``docs/plc-interface.md``).
:func:`plc_item_id` (:mod:`sorter.line.plc.protocol`, re-exported here) maps the bridge's
item id to it: an id written as a decimal number that fits
in 32 bits (``"00012345"``) is that number; any other id is hashed
(BLAKE2b, 31 bits, with the top bit set), so a hashed id never equals a
numeric id below 2**31.  Two different non-numeric ids collide with
probability about n²/2³² among the n items on the belt at once
(about 1e-7 for 30 items); a real line should give the bridge numeric ids.

Deadlines
---------
An item must have its decision at the PLC ``line.deadline_ms`` after it passed
the bridge (:class:`BeltTiming`).  With ``deadline_from = "bridge"`` the clock
starts at the item's bridge time ``t`` (so time spent in the recorder and in a
backlog counts, as it does on the belt); a bridge time more than a second in the
future (clocks out of step) falls back to the arrival time.  With ``"arrival"``
it starts when the controller reads the item (replaying an old log).

Why this module is long (about 650 lines): the two sources share the item hand-over
(:class:`SourceItem`, :class:`BeltTiming`, the bounded queue), and the log follower's
reader thread, resume and re-check logic is most of it.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sorter.errors import LogFormatError, SorterError
from sorter.line.plc.protocol import plc_item_id
from sorter.logformat import LogLine, LogPosition, iter_log, layout, load_item, locate_line, read_meta
from sorter.readings import Item, LogMeta
from sorter.threads import one_thread

if TYPE_CHECKING:  # the simulator is imported where a simulated source runs: the live line needs none of it
    from sorter.simulate.run import SimConfig, SimItem

logger = logging.getLogger(__name__)

__all__ = [
    "BeltTiming",
    "ItemSource",
    "LogFollowSource",
    "SimulatedSource",
    "SourceItem",
    "Truth",
    "generate_pool",
    "plc_item_id",
]

Announce = Callable[[int, float], None]
"""``announce(plc_id, due_monotonic)``: tell an in-process simulated PLC that an item is on the
belt, as the real PLC's shift register knows from the bridge."""

_FUTURE_TOLERANCE_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Truth:
    """What an item really is, when the source knows (simulated or labelled items)."""

    label: str | None
    damaged: bool | None = None
    energy_wh: float | None = None


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One item as a source hands it to the controller.

    Attributes
    ----------
    item_id : str
        Id in the audit trail (unique): the bridge's id, or for an unreadable
        line ``<log>@line<n>`` (prefixed with the id when one could be read).
    plc_id : int or None
        Id for the PLC (:func:`plc_item_id`); ``None`` when the line carried no
        id, so no decision can be addressed to the item (the PLC defaults it).
    source_line : int or None
        1-based line of the log (counted across the segments of a rotated log); ``None``
        for a simulated item.
    t_item : float
        Bridge time (epoch s).
    t_available : float
        When the controller had the readings (epoch s).
    available_mono : float
        The same instant on :func:`time.monotonic`.
    due_mono : float
        Monotonic time by which the PLC must have the decision.
    item : Item or None
        The readings; ``None`` for an error item.
    error : str or None
        Why the item could not be read (then it goes to ``manual``).
    truth : Truth or None
        The truth, when known.
    """

    item_id: str
    plc_id: int | None
    source_line: int | None
    t_item: float
    t_available: float
    available_mono: float
    due_mono: float
    item: Item | None
    error: str | None = None
    truth: Truth | None = None


@dataclass(frozen=True)
class BeltTiming:
    """When each item's decision is due.

    Parameters
    ----------
    deadline_s : float
        Budget from the bridge to the decision (transit time minus actuator lead).
    deadline_from : str
        ``"bridge"`` or ``"arrival"`` (see the module notes).

    Examples
    --------
    >>> BeltTiming(0.09, "arrival").due(t_item=0.0, now_epoch=100.0, now_mono=5.0)
    5.09
    >>> round(BeltTiming(0.09, "bridge").due(t_item=99.95, now_epoch=100.0, now_mono=5.0), 3)
    5.04
    """

    deadline_s: float
    deadline_from: str = "bridge"

    def due(self, t_item: float | None, now_epoch: float, now_mono: float) -> float:
        if self.deadline_from == "bridge" and t_item is not None and t_item <= now_epoch + _FUTURE_TOLERANCE_S:
            return now_mono + (t_item - now_epoch) + self.deadline_s
        return now_mono + self.deadline_s


def _truth_of(record: object) -> Truth | None:
    label = getattr(record, "label", None)
    if label is None:
        return None
    extra = getattr(record, "extra", {}) or {}
    damaged = extra.get("damaged")
    energy = extra.get("energy_wh")
    return Truth(
        label=label,
        damaged=damaged if isinstance(damaged, bool) else None,
        energy_wh=float(energy) if isinstance(energy, (int, float)) and not isinstance(energy, bool) else None,
    )


class ItemSource(abc.ABC):
    """Items in belt order, as an async iterator of :class:`SourceItem`.

    Use ``await source.start()``, then ``async for item in source``; call
    :meth:`stop` to end the iteration early (items already handed over stay
    handed over) and ``await source.close()`` at the end.
    """

    truth_known: bool = False
    """Whether items carry :class:`Truth` (for the run summary)."""

    async def start(self) -> None:  # noqa: B027 - optional hook, most sources need it
        """Prepare (generate a pool, start a reader thread)."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[SourceItem]:
        """The items."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Produce no more items (safe to call from any thread, and twice)."""

    async def close(self) -> None:
        """Stop and release threads and processes."""
        self.stop()


# --------------------------------------------------------------------------- log


_DONE: Final = object()


class LogFollowSource(ItemSource):
    """Follow (or replay) a ``sorter-log/1`` directory.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory; it may not exist yet when following.
    timing : BeltTiming
        Deadlines.
    start_line : int
        First line to hand over (``audit.resume_point() + 1`` after a restart).  Lines are
        numbered across the whole log, so in a rotated log (``docs/log-format.md``) this
        names a segment and an offset in it: reading starts in the segment holding
        ``recheck_from`` (found from the segment headers, :func:`~sorter.logformat.locate_line`),
        not at the first segment.
    recheck_from : int, optional
        Lines from here up to ``start_line - 1`` are handed over again if
        ``is_recorded`` says their item has no audit row (a crash can commit
        item *k + 1* before item *k*); default: no recheck.
    is_recorded : callable, optional
        ``is_recorded(item_id) -> bool``, called from the reader thread.
    follow : bool
        Wait for new lines at the end of the log until :meth:`stop`.
    poll_s : float
        Pause between looks for new lines once caught up.
    queue_size : int
        Items read ahead of the controller at most.
    announce : callable, optional
        Tell an in-process PLC simulator about each item (tests).

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from sorter.logformat import LogWriter
    >>> from sorter.readings import ItemRecord
    >>> d = tempfile.mkdtemp()
    >>> with LogWriter(d) as w:
    ...     _ = w.append(ItemRecord(item_id="17", t=0.0, weight_g=900.0))
    >>> async def ids():
    ...     src = LogFollowSource(d, BeltTiming(0.09, "arrival"), follow=False)
    ...     await src.start()
    ...     try:
    ...         return [(i.item_id, i.plc_id, i.source_line) async for i in src]
    ...     finally:
    ...         await src.close()
    >>> asyncio.run(ids())
    [('17', 17, 1)]
    """

    def __init__(
        self,
        log_dir: str | Path,
        timing: BeltTiming,
        *,
        start_line: int = 1,
        recheck_from: int | None = None,
        is_recorded: Callable[[str], bool] | None = None,
        follow: bool = True,
        poll_s: float = 0.005,
        queue_size: int = 64,
        announce: Announce | None = None,
    ) -> None:
        if start_line < 1:
            raise ValueError(f"start_line={start_line} must be >= 1 (lines are 1-based)")
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size} must be >= 1")
        self.log_dir = Path(log_dir)
        self.timing = timing
        self.start_line = start_line
        self.recheck_from = start_line if recheck_from is None or is_recorded is None else max(1, recheck_from)
        self._is_recorded = is_recorded
        self.follow = follow
        self.poll_s = poll_s
        self.queue_size = queue_size
        self._announce = announce
        self._stop = threading.Event()
        self._queue: asyncio.Queue[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._warned_future = False
        self.lines_read = 0
        self.rechecked = 0
        self.position: LogPosition | None = None
        """Where the line after the last one handed over starts (segment, offset, line)."""
        self.truth_known = True  # labelled logs carry it; items without a label have truth None
        self.replay_rate: float | None = None
        self._replay_origin: tuple[float, float] | None = None  # (first item's t, monotonic time it was read)
        self._consuming = threading.Event()  # set when the controller starts taking items

    def pace(self, rate: float) -> None:
        """Replay a recorded log at ``rate`` times the speed it was recorded at (``sorter run
        --replay-rate``): each item is handed over when its bridge time ``t``, counted from the
        first item's, comes round; deadlines run from that moment (the recorded bridge times
        are in the past).  Call before :meth:`start`."""
        if not rate > 0:
            raise ValueError(f"replay rate {rate} must be > 0 (1 replays at the recorded speed)")
        self.replay_rate = float(rate)
        self.timing = BeltTiming(self.timing.deadline_s, "arrival")

    def _wait_for_turn(self, line: LogLine) -> bool:
        """Sleep until a paced replay reaches ``line``; False if stopped meanwhile."""
        if self.replay_rate is None or line.record is None:
            return True
        if self._replay_origin is None:
            # The clock starts when the controller takes its first item, not while its scorer
            # still loads the model: items released meanwhile would age past their deadlines.
            while not self._consuming.wait(0.05):
                if self._stop.is_set():
                    return False
        t, now = line.record.t, time.monotonic()
        if self._replay_origin is None:
            self._replay_origin = (t, now)
            return True
        wait = self._replay_origin[1] + (t - self._replay_origin[0]) / self.replay_rate - now
        return wait <= 0 or not self._stop.wait(wait)

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.queue_size)
        self._thread = threading.Thread(target=self._run, name=f"sorter-log-follow[{self.log_dir}]", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        self.stop()
        thread = self._thread
        if thread is not None:
            # Unblock a reader waiting for room in the queue.
            while thread.is_alive():
                if self._queue is not None:
                    while not self._queue.empty():
                        self._queue.get_nowait()
                await asyncio.sleep(0.01)
            self._thread = None

    async def __aiter__(self) -> AsyncIterator[SourceItem]:  # type: ignore[override]
        if self._queue is None:
            raise SorterError("call `await source.start()` before iterating a LogFollowSource")
        self._consuming.set()
        while True:
            got = await self._queue.get()
            if got is _DONE:
                break
            assert isinstance(got, SourceItem)
            yield got
        if self._error is not None:
            raise self._error

    # -- the reader thread ---------------------------------------------------------

    def _run(self) -> None:
        meta: LogMeta | None = None
        meta_error: str | None = None
        try:
            for line in iter_log(
                self.log_dir,
                start=self._start_position(),
                follow=self.follow,
                poll_s=self.poll_s,
                should_stop=self._stop.is_set,
            ):
                if self._stop.is_set():
                    break
                self.lines_read += 1
                if line.line_no < self.start_line:
                    if line.line_no < self.recheck_from or self._recorded(line):
                        continue
                    self.rechecked += 1
                    logger.warning(
                        "log line %d (%s) has no audit row although later lines do "
                        "(a crash committed them out of order); recording it now",
                        line.line_no,
                        self._audit_id(line),
                    )
                if meta is None and meta_error is None:
                    try:
                        meta = read_meta(self.log_dir)
                    except LogFormatError as err:
                        meta_error = str(err)
                        logger.error("%s; every item of this log goes to the safe lane", err)
                if not self._wait_for_turn(line):
                    break
                item = self._make(line, meta, meta_error)
                if not self._put(item):
                    break
                self.position = line.next_position
        except BaseException as err:  # noqa: BLE001 - reported to the consumer, never lost
            logger.error("log reader for %s stopped: %s", self.log_dir, err)
            self._error = err
        finally:
            self._put(_DONE, always=True)

    def _start_position(self) -> LogPosition | None:
        """Where reading starts: the segment holding ``recheck_from`` in a rotated log, else the top."""
        first = min(self.recheck_from, self.start_line)
        if first <= 1 or layout(self.log_dir) != "rotated":
            return None  # a single file is read from the top (its prefix is skipped quickly)
        return locate_line(self.log_dir, first)

    def _recorded(self, line: LogLine) -> bool:
        assert self._is_recorded is not None
        return self._is_recorded(self._audit_id(line))

    def _audit_id(self, line: LogLine) -> str:
        if line.record is not None:
            return line.record.item_id
        prefix = line.item_id if line.item_id else self.log_dir.name
        return f"{prefix}@line{line.line_no}"

    def _make(self, line: LogLine, meta: LogMeta | None, meta_error: str | None) -> SourceItem:
        record = line.record
        error = line.error
        t_item = record.t if record is not None else None
        due = self.timing.due(t_item, time.time(), time.monotonic())
        item: Item | None = None
        if record is not None:
            if meta is None:
                error = f"meta.json of {self.log_dir} is unusable: {meta_error}"
            elif due <= time.monotonic():
                # Already past its deadline (a backlog after a restart): it will not be scored, so its
                # images are not decoded either, and catching up is fast.
                item = Item(record=record, meta=meta, problems=record.problems)
            else:
                item = load_item(record, self.log_dir, meta)
        raw_id = record.item_id if record is not None else line.item_id
        plc_id = plc_item_id(raw_id) if raw_id else None
        t_available, now_mono = time.time(), time.monotonic()
        if (
            self.timing.deadline_from == "bridge"
            and t_item is not None
            and t_item > t_available + _FUTURE_TOLERANCE_S
            and not self._warned_future
        ):
            self._warned_future = True
            logger.warning(
                "item %s has a bridge time %.1f s in the future: the bridge and this PC's clocks "
                "disagree; timing deadlines from arrival for such items (synchronise the clocks)",
                raw_id,
                t_item - t_available,
            )
        if self.timing.deadline_from == "arrival" or t_item is None:
            due = self.timing.due(t_item, t_available, now_mono)  # the clock starts now, with the images loaded
        if plc_id is not None and self._announce is not None and self._loop is not None:
            # On the loop's thread: the simulated PLC's scan runs there and is not thread-safe.
            self._loop.call_soon_threadsafe(self._announce_now, plc_id, due)
        return SourceItem(
            item_id=self._audit_id(line),
            plc_id=plc_id,
            source_line=line.line_no,
            t_item=t_item if t_item is not None else t_available,
            t_available=t_available,
            available_mono=now_mono,
            due_mono=due,
            item=item,
            error=None if item is not None else (error or "unreadable line"),
            truth=_truth_of(record) if record is not None else None,
        )

    def _announce_now(self, plc_id: int, due: float) -> None:
        assert self._announce is not None
        try:
            self._announce(plc_id, due)
        except ValueError as err:  # a duplicate id: the simulated PLC already tracks it
            logger.warning("PLC simulator refused item %d: %s", plc_id, err)

    def _put(self, obj: object, *, always: bool = False) -> bool:
        """Hand ``obj`` to the loop, waiting for room; False if stopped meanwhile."""
        assert self._loop is not None and self._queue is not None
        if self._stop.is_set() and not always:
            return False
        try:
            fut = asyncio.run_coroutine_threadsafe(self._queue.put(obj), self._loop)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        # One put per object, waited for in slices.  Never a second put after a timeout: the first
        # may have completed on the loop just as the wait timed out (its completion not yet passed
        # to `fut`, so `fut.cancel()` still "succeeds"), and putting again handed that line over
        # twice -- once, after a restart, with the queue full of the backlog (issue 19).
        while True:
            try:
                fut.result(timeout=0.1)
                return True
            except TimeoutError:
                if not self._stop.is_set():
                    continue
                if not always:
                    fut.cancel()  # a put that completed anyway hands the item over once, to a stopping consumer
                    return False
                if self._loop.is_closed() or not self._loop.is_running():
                    return False
                # Make room: the consumer is stopping and only needs the end marker.
                self._loop.call_soon_threadsafe(self._drop_one)
            except Exception:  # noqa: BLE001 - cancelled or loop gone
                return False

    def _drop_one(self) -> None:
        assert self._queue is not None
        if not self._queue.empty():
            self._queue.get_nowait()


# --------------------------------------------------------------------------- simulated


def _simulate_chunk(cfg: SimConfig, start: int, stop: int) -> list[SimItem]:
    from sorter.simulate.run import simulate_item

    with one_thread():  # processes are the parallelism (and OpenCV's pool is not fork-safe)
        return [simulate_item(cfg, i) for i in range(start, stop)]


def generate_pool(cfg: SimConfig, size: int, *, workers: int = 2, chunk: int = 16) -> list[SimItem]:
    """Simulate items ``0 .. size - 1`` of ``cfg`` in ``workers`` spawned processes.

    Deterministic for ``cfg.seed`` whatever ``workers`` is.
    """
    if size < 1:
        raise ValueError(f"pool size {size} must be >= 1")
    if workers <= 1:
        return _simulate_chunk(cfg, 0, size)
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_simulate_chunk, cfg, s, min(s + chunk, size)) for s in range(0, size, chunk)]
        return [item for fut in futures for item in fut.result()]


class SimulatedSource(ItemSource):
    """An in-process conveyor: simulated items at a fixed rate.

    Item ``i`` (0-based) passes the bridge at ``start + i / rate_hz``, carries
    pool item ``i % pool`` with the fresh id ``f"{i + 1:08d}"`` (its PLC id is
    ``i + 1``), and is announced to ``announce`` with its due time.  If the
    consumer is late to take an item, the item still passed the bridge on
    time: its times are the scheduled ones, so the lateness shows as latency
    (and, past the deadline, as overload), as it would on the belt.

    Parameters
    ----------
    cfg : SimConfig
        Seed, mix, line preset and fault rate of the simulated items.
    timing : BeltTiming
        Deadlines (always counted from the bridge time here).
    items : int
        Items to emit; 0 runs until :meth:`stop`.
    rate_hz : float
        Items per second.
    pool_size : int
        Distinct items simulated by :meth:`start`.
    pool : sequence of SimItem, optional
        A pool simulated already (skips the generation).
    announce : callable, optional
        Tell an in-process PLC simulator about each item.
    workers : int
        Processes used to simulate the pool.
    """

    def __init__(
        self,
        cfg: SimConfig,
        timing: BeltTiming,
        *,
        items: int,
        rate_hz: float,
        pool_size: int = 300,
        pool: Sequence[SimItem] | None = None,
        announce: Announce | None = None,
        workers: int = 2,
    ) -> None:
        if items < 0:
            raise ValueError(f"items={items} must be >= 0 (0 runs until stopped)")
        if not rate_hz > 0:
            raise ValueError(f"rate_hz={rate_hz} must be > 0")
        self.cfg = cfg
        self.timing = BeltTiming(timing.deadline_s, "bridge")
        self.items = items
        self.rate_hz = rate_hz
        self.pool_size = pool_size if pool is None else len(pool)
        self.pool: list[SimItem] | None = list(pool) if pool is not None else None
        self._announce = announce
        self._workers = workers
        self._meta = cfg.meta()
        self._stopped = asyncio.Event()
        self.emitted = 0
        self.truth_known = True

    async def start(self) -> None:
        if self.pool is None:
            t0 = time.monotonic()
            self.pool = await asyncio.to_thread(generate_pool, self.cfg, self.pool_size, workers=self._workers)
            logger.info("simulated %d pool items in %.1f s", len(self.pool), time.monotonic() - t0)

    def stop(self) -> None:
        self._stopped.set()

    async def __aiter__(self) -> AsyncIterator[SourceItem]:  # type: ignore[override]
        if self.pool is None:
            raise SorterError("call `await source.start()` before iterating a SimulatedSource")
        pool = self.pool
        period = 1.0 / self.rate_hz
        start_mono = time.monotonic()
        start_epoch = time.time()
        i = 0
        while not self._stopped.is_set() and (self.items == 0 or i < self.items):
            at = start_mono + i * period
            delay = at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopped.wait(), timeout=delay)
                    break
                except TimeoutError:
                    pass
            sim = pool[i % len(pool)]
            plc_id = i + 1
            t_item = start_epoch + (at - start_mono)
            record = dataclasses.replace(sim.record, item_id=f"{plc_id:08d}", t=round(t_item, 6))
            item = Item(
                record=record,
                xray_low=sim.images.get("xray_low"),
                xray_high=sim.images.get("xray_high"),
                rgb=sim.images.get("rgb"),
                meta=self._meta,
                problems=record.problems,
            )
            due = self.timing.due(t_item, t_item, at)
            if self._announce is not None:
                self._announce(plc_id, due)
            self.emitted += 1
            yield SourceItem(
                item_id=record.item_id,
                plc_id=plc_id,
                source_line=None,
                t_item=t_item,
                t_available=t_item,
                available_mono=at,
                due_mono=due,
                item=item,
                truth=_truth_of(record),
            )
            i += 1
