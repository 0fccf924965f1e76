"""The line scores through the batch engines' code: the same decisions, bit for bit."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from sorter.batch import iter_decisions
from sorter.features.ambient import AmbientTracker
from sorter.line.scoring_pool import ScoringPool, ThreadScoringPool
from sorter.logformat import iter_log, load_item, read_meta
from sorter.scoring import OUTPUT_COLUMNS, Decision, Scorer
from sorter.simulate import SimConfig, simulate_log


@pytest.fixture(scope="module")
def line_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of the model's own line (so lead_acid is open), with sensor faults."""
    d = tmp_path_factory.mktemp("line-log") / "log"
    simulate_log(SimConfig(items=48, seed=5, mix="recycler", faults=0.05), d)
    return d


def _same(a: object, b: object) -> bool:
    """Equal, or both NaN (a float column with no value)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b) or (isinstance(a, str) and a == b)


@pytest.mark.parametrize("which", ["line_log", "log_with_bad_lines"])
def test_the_line_pool_decides_bit_identically_to_the_batch_engine(
    which: str, request: pytest.FixtureRequest, model
) -> None:
    """Items scored by the line's pool (queued together, so in micro-batches of up to 4 rows) get
    exactly the batch engine's decisions for the same log lines: every output column, floats
    compared bit for bit (NaN with NaN).  On a log of the model's line (every lane open) and on
    one with bad lines and missing images."""
    log = request.getfixturevalue(which)
    batch: dict[int, Decision] = {}
    for _chunk, decisions in iter_decisions([str(log)], Scorer(model), workers=0):
        batch.update((d.line_no, d) for d in decisions)

    meta, ambient = read_meta(log), AmbientTracker()
    items = []
    for ln in iter_log(log):
        if ln.record is not None:
            items.append((load_item(ln.record, log, meta), ambient.observe(ln.record.surface_temp_c)))

    pool = ScoringPool(None, workers=2, kind="thread", max_batch=4)
    assert isinstance(pool, ThreadScoringPool)

    async def score_all() -> list[Decision | None]:
        await pool.start()
        try:
            return list(await asyncio.gather(*(pool.score(item, amb) for item, amb in items)))
        finally:
            await pool.close()

    line = asyncio.run(score_all())
    assert pool.largest_batch > 1  # the comparison covers stacked rows, not only single ones
    assert len(line) == len(items) >= 40
    if which == "line_log":
        assert {d.lane for d in line if d is not None} >= {"lead_acid", "li_ion", "manual"}
    for (item, _amb), d in zip(items, line, strict=True):
        assert d is not None
        b = batch[item.record.line_no]
        diff = [c for c in OUTPUT_COLUMNS if not _same(getattr(d, c), getattr(b, c))]
        assert not diff, (item.item_id, {c: (getattr(d, c), getattr(b, c)) for c in diff})


def test_starting_the_pool_warns_about_no_line(caplog: pytest.LogCaptureFixture) -> None:
    """The warm-up item belongs to no log: starting the line must not warn that 'the log's line
    differs from the model's' (an operator reading the start-up log would hunt a fault that is
    not there)."""
    import logging

    from sorter import scoring

    scoring._WARNED.clear()
    pool = ScoringPool(None, workers=1, kind="thread", max_batch=1)

    async def start_stop() -> None:
        await pool.start()
        await pool.close()

    with caplog.at_level(logging.DEBUG, logger="sorter"):
        asyncio.run(start_stop())
    assert not [r for r in caplog.records if "line differs" in r.getMessage() and r.levelno >= logging.WARNING]
