"""The line's log follower on rotated logs: across rotations, and resumed in the right segment."""

from __future__ import annotations

import asyncio
import threading
import time

from sorter.line.sources import BeltTiming, LogFollowSource
from sorter.logformat import LogWriter
from sorter.readings import ItemRecord


def _rec(i: int) -> ItemRecord:
    return ItemRecord(item_id=f"{i:08d}", t=1.7e9 + i, weight_g=500.0)


async def _collect(src: LogFollowSource, n: int) -> list:
    await src.start()
    got = []
    try:
        async for it in src:
            got.append(it)
            if len(got) == n:
                break
    finally:
        await src.close()
    return got


def test_follower_crosses_rotations_while_the_recorder_writes(tmp_path):
    n = 45

    def recorder():
        with LogWriter(tmp_path, rotate_items=8) as w:
            for i in range(1, n + 1):
                w.append(_rec(i))
                time.sleep(0.001)

    th = threading.Thread(target=recorder)
    th.start()
    src = LogFollowSource(tmp_path, BeltTiming(10.0, "arrival"), follow=True, poll_s=0.001)
    got = asyncio.run(_collect(src, n))
    th.join()
    assert [it.item_id for it in got] == [f"{i:08d}" for i in range(1, n + 1)]
    assert [it.source_line for it in got] == list(range(1, n + 1))
    assert src.position is not None and src.position.segment == 6 and src.position.line_no == n + 1


def test_restart_resumes_in_the_middle_of_segment_two(tmp_path):
    with LogWriter(tmp_path, rotate_items=10) as w:
        for i in range(1, 31):
            w.append(_rec(i))
    recorded = {f"{i:08d}" for i in range(1, 15)} - {"00000012"}  # a crash lost line 12's row
    src = LogFollowSource(
        tmp_path,
        BeltTiming(10.0, "arrival"),
        start_line=15,
        recheck_from=11,
        is_recorded=recorded.__contains__,
        follow=False,
    )
    got = asyncio.run(_collect(src, 10**6))
    assert [it.source_line for it in got] == [12, *range(15, 31)]
    assert src.rechecked == 1
    assert src.lines_read == 20  # read from segment 2 (lines 11-30), segment 1 is not read
