"""The line's log follower across a controller restart: every line handed over exactly once (issue 19).

A restarted controller resumes after the highest source line in its audit log and re-checks the lines
just before it (a crash can commit item k + 1 before item k).  A line handed over again is refused by
the audit log (its item is recorded), so nothing is lost, but it must not happen.  These tests play the
controller: they record what the follower hands over, stop it (a kill), resume it the way
:mod:`sorter.line.app` does, and check that no line is handed over twice — at a segment boundary, with a
partially written last line, with the id window of a single-file log, and with a backlog after the
restart, where the follower waits for room in its queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path

import pytest

from sorter.line.app import RECHECK_LINES
from sorter.line.sources import BeltTiming, LogFollowSource, SourceItem
from sorter.logformat import ITEMS_FILE, LogWriter, segment_file
from sorter.logformat.reader import _IdRing
from sorter.readings import ItemRecord


def rec(i: int) -> ItemRecord:
    return ItemRecord(item_id=f"{i:08d}", t=1.7e9 + i, weight_g=500.0)


class Audit:
    """What the controller keeps of the follower's items: one row per audit id, refusing repeats."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.refused: list[tuple[str, int | None]] = []

    def record(self, it: SourceItem) -> None:
        if it.item_id in self.rows:
            self.refused.append((it.item_id, it.source_line))
        else:
            assert it.source_line is not None
            self.rows[it.item_id] = it.source_line

    def source(self, log: Path, **kw: object) -> LogFollowSource:
        """A follower resumed as ``sorter.line.app`` resumes it, from this audit."""
        resume = max(self.rows.values(), default=0)
        start = resume + 1
        return LogFollowSource(
            log,
            BeltTiming(10.0, "arrival"),
            start_line=start,
            recheck_from=max(1, start - RECHECK_LINES) if resume else None,
            is_recorded=self.rows.__contains__,
            **kw,  # type: ignore[arg-type]
        )


async def consume(
    src: LogFollowSource, audit: Audit, n: int, *, delay_s: float = 0.0, lose: int = 0, until_line: int = 0
) -> None:
    """Record ``n`` items (or until the log ends, or line ``until_line``), then stop as a kill would.

    ``lose``: the item before the last one has no row (its commit came after the last one's).
    """
    await src.start()
    got: list[SourceItem] = []
    try:
        async for it in src:
            if delay_s:
                await asyncio.sleep(delay_s)
            got.append(it)
            audit.record(it)
            if len(got) == n or it.source_line == until_line:
                break
    finally:
        await src.close()
    if lose and len(got) >= 2:
        audit.rows.pop(got[-2].item_id, None)


def write(log: Path, lines: range, rotate: int | None = None) -> None:
    with LogWriter(log, rotate_items=rotate) as w:
        for i in lines:
            w.append(rec(i))


def ids(lines: range) -> dict[str, int]:
    return {f"{i:08d}": i for i in lines}


# ---- the cause: a hand-over that timed out while the item was in fact queued -----------------------


class _LateCompletion:
    """A ``run_coroutine_threadsafe`` future whose wait ends, by the clock, the moment the put completes.

    This is the interleaving seen once: the follower's queue is full (a backlog after a restart, the
    controller still loading its model), the follower waits 0.1 s for room, the controller takes an
    item, the put completes on the event loop, and the follower's timeout fires before that completion
    has reached its future.  ``cancel()`` then succeeds on the follower's side, but the item is in the
    queue: a follower that puts it again hands the line over twice.
    """

    races: list[int] = []  # the hand-overs that raced (once per test is enough)

    def __init__(self, fut: concurrent.futures.Future) -> None:
        self._fut = fut
        self._first = True

    def result(self, timeout: float | None = None) -> object:
        if self._first:
            self._first = False
            try:
                return self._fut.result(timeout=0.005)  # room in the queue: no race
            except TimeoutError:
                if len(self.races) >= 1:
                    return self._fut.result(timeout)
                self._fut.result()  # the put completes (the consumer took an item) ...
                self.races.append(1)
                raise TimeoutError from None  # ... as the wait times out
        return self._fut.result(timeout)

    def cancel(self) -> bool:
        return True  # cancelled on this side; the put on the loop is already done

    def done(self) -> bool:
        return self._fut.done()


@pytest.fixture
def late_completions(monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.run_coroutine_threadsafe
    monkeypatch.setattr(_LateCompletion, "races", [])
    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", lambda coro, loop: _LateCompletion(real(coro, loop)))


@pytest.mark.parametrize("rotate", [None, 7], ids=["one file", "rotated"])
def test_a_backlog_after_a_restart_is_handed_over_once_when_a_wait_for_room_times_out(
    tmp_path: Path, rotate: int | None, late_completions: None
) -> None:
    write(tmp_path, range(1, 31), rotate)
    audit = Audit()
    audit.rows = ids(range(1, 11))  # the controller was killed after line 10
    audit.rows.pop("00000009")  # ... with line 9's row not yet committed
    asyncio.run(consume(audit.source(tmp_path, follow=False, queue_size=2), audit, 10**6, delay_s=0.02))
    assert _LateCompletion.races == [1]  # the race happened
    assert audit.refused == []
    assert audit.rows == ids(range(1, 31))


# ---- the resume logic's boundary cases ------------------------------------------------------------


def test_a_restart_exactly_at_a_segment_boundary_before_the_next_segment_exists(tmp_path: Path) -> None:
    write(tmp_path, range(1, 11), rotate=10)  # segment 1 full; segment 2 comes with the next item
    audit = Audit()
    asyncio.run(consume(LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=False), audit, 10))
    assert audit.rows == ids(range(1, 11))
    assert not (tmp_path / segment_file(2)).exists()

    def recorder() -> None:
        time.sleep(0.05)
        write(tmp_path, range(11, 26), rotate=10)  # reopened: a new segment 2, then 3

    th = threading.Thread(target=recorder)
    th.start()
    asyncio.run(consume(audit.source(tmp_path, follow=True, poll_s=0.002), audit, 15))
    th.join()
    assert audit.refused == [] and audit.rows == ids(range(1, 26))


@pytest.mark.parametrize("boundary", ["last line of a segment", "first line of a segment"])
def test_a_restart_on_either_side_of_a_rotation_hands_each_line_once(tmp_path: Path, boundary: str) -> None:
    write(tmp_path, range(1, 31), rotate=10)
    audit = Audit()
    stop_at = 10 if boundary == "last line of a segment" else 11
    asyncio.run(consume(LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=False), audit, stop_at, lose=1))
    asyncio.run(consume(audit.source(tmp_path, follow=False), audit, 10**6))
    assert audit.refused == [] and audit.rows == ids(range(1, 31))


@pytest.mark.parametrize("rotate", [None, 5], ids=["one file", "rotated"])
def test_a_kill_during_a_partially_written_line_then_the_rest_of_it(tmp_path: Path, rotate: int | None) -> None:
    write(tmp_path, range(1, 13), rotate)
    path = tmp_path / (ITEMS_FILE if rotate is None else segment_file(3))
    line = b'{"item_id":"00000013","t":1700000013.0,"weight_g":500.0}\n'
    with open(path, "ab") as fh:
        fh.write(line[:20])  # the recorder is in the middle of line 13
    audit = Audit()

    async def first_run() -> None:
        src = LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=True, poll_s=0.002)
        task = asyncio.create_task(consume(src, audit, 10**6))
        while len(audit.rows) < 12:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the partial line is not handed over
        src.stop()
        await task

    asyncio.run(first_run())
    assert audit.rows == ids(range(1, 13))
    with open(path, "ab") as fh:
        fh.write(line[20:])  # the recorder finishes the line while the controller is down
    with LogWriter(tmp_path, rotate_items=rotate) as w:  # and goes on (a rotated log: in a new segment)
        for i in range(14, 20):
            w.append(rec(i))
    asyncio.run(consume(audit.source(tmp_path, follow=False), audit, 10**6))
    assert audit.refused == [] and audit.rows == ids(range(1, 20))


@pytest.mark.parametrize("rotate", [None, 5], ids=["one file", "rotated"])
def test_a_line_torn_by_a_crashed_recorder_is_one_error_row_across_restarts(tmp_path: Path, rotate: int | None) -> None:
    write(tmp_path, range(1, 9), rotate)
    path = tmp_path / (ITEMS_FILE if rotate is None else segment_file(2))
    with open(path, "ab") as fh:
        fh.write(b'{"item_id":"00000009","t":17')  # the recorder died here
    audit = Audit()
    asyncio.run(consume(LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=False), audit, 10**6))
    # read to its end (no follow), the torn line is item 9: an error row under the line's own id
    assert len(audit.rows) == 9 and max(audit.rows.values()) == 9
    write(tmp_path, range(10, 16), rotate)  # the recorder restarts: closes the torn line and goes on
    asyncio.run(consume(audit.source(tmp_path, follow=False), audit, 10**6))
    assert audit.refused == []
    assert sorted(audit.rows.values()) == list(range(1, 16))


def test_a_restart_of_a_single_file_log_classifies_duplicates_as_the_first_run_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rolling id window of a followed single-file log (``_IdRing``) is rebuilt from the top of the
    file, so a restarted follower calls the same lines duplicates as the first run did."""
    monkeypatch.setattr(_IdRing.__init__, "__defaults__", (4,))  # a window of 4 to 8 ids
    with open(tmp_path / ITEMS_FILE, "w") as fh:
        for i, item in enumerate([1, 2, 3, 2, 5, 6, 7, 8, 9, 10, 11, 3, 13, 14, 13, 16, 17], start=1):
            fh.write(f'{{"item_id":"{item:08d}","t":{1.7e9 + i}}}\n')
    once = Audit()
    asyncio.run(consume(LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=True, poll_s=0.002), once, 17))
    # line 4 repeats line 2's id inside the window: an error row of its own; line 12 repeats line 3's id
    # from outside the window: handed over as item 3 and refused by the audit; line 15 repeats line 13's
    assert once.rows["00000002@line4"] == 4 and once.rows["00000013@line15"] == 15
    assert once.refused == [("00000003", 12)]
    for stop_at in range(1, 17):
        audit = Audit()
        src = LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=True, poll_s=0.002)
        asyncio.run(consume(src, audit, stop_at, lose=1))
        src = audit.source(tmp_path, follow=True, poll_s=0.002)
        asyncio.run(consume(src, audit, 10**6, until_line=17))
        assert audit.rows == once.rows, f"killed after {stop_at} items"
        # nothing refused but the log's own repeat the first run refused too (twice when the restart
        # resumed before line 12: a refused line leaves no row to resume after)
        assert set(audit.refused) == {("00000003", 12)}, f"killed after {stop_at} items"
