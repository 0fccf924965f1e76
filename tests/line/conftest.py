"""Fixtures of the line tests (helpers that are not fixtures: ``line_run.py``, ``plc_rig.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sorter.line.scoring_pool import ScoringPool
from sorter.line.sources import generate_pool
from sorter.simulate.run import SimItem
from tests.line.line_run import SIM_CFG


@pytest.fixture(scope="module")
def scorer() -> Iterator[ScoringPool]:
    """One scoring pool for the module (threads: no worker start-up per test)."""
    pool = ScoringPool(None, workers=2, kind="thread", max_batch=16)
    asyncio.run(pool.start())
    yield pool
    asyncio.run(pool.close())


@pytest.fixture(scope="module")
def sim_pool() -> list[SimItem]:
    return generate_pool(SIM_CFG, 40, workers=1)
