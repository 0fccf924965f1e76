"""The Dask engine: the local engine's rows, in order, resumable, and clear errors without a scheduler."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.e2e  # a local Dask cluster in other processes

import dask  # noqa: E402

from sorter import score as score_mod  # noqa: E402
from sorter.distributed import iter_decisions_dask  # noqa: E402
from sorter.errors import SorterError  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    environ = dict(os.environ)  # a Nanny also sets its workers' variables (MALLOC_TRIM_THRESHOLD_) in this process
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True) as c:
        yield c
    os.environ.clear()
    os.environ.update(environ)


def _rows(path):
    """Output rows with NaN made comparable."""
    return [
        {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in pq.read_table(path).to_pylist()
    ]


def test_dask_engine_gives_the_local_engines_rows(
    tmp_path, cluster, model, log_with_bad_lines, bad_log_layout, monkeypatch
):
    import shutil

    copy = tmp_path / "copy"  # the same log twice is refused: a copy of it is another log
    shutil.copytree(log_with_bad_lines, copy)
    logs = [log_with_bad_lines, copy]  # two logs: rows follow the logs, then the lines
    score_mod.score_logs(logs, tmp_path / "local.parquet", model=model, workers=1)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)  # no --scheduler: the environment's
    summary = score_mod.score_logs(logs, tmp_path / "dask.parquet", model=model, engine="dask")
    local, dask_rows = _rows(tmp_path / "local.parquet"), _rows(tmp_path / "dask.parquet")
    n = bad_log_layout["lines"]
    assert summary.items == len(dask_rows) == 2 * n
    assert dask_rows == local  # every column of every row
    assert [r["line_no"] for r in dask_rows] == list(range(1, n + 1)) * 2
    bad = [r for r in dask_rows[:n] if r["reason"].startswith("cannot score")]
    assert [r["line_no"] for r in bad] == sorted(bad_log_layout["bad"]) and all(r["lane"] == "manual" for r in bad)
    gone = dask_rows[bad_log_layout["gone_xray_low"] - 1]
    assert gone["line_no"] == bad_log_layout["gone_xray_low"] and "xray_low" in gone["problems"]
    assert gone["lane"] != "lead_acid"


def test_results_come_in_order_with_many_small_tasks(cluster, model, log_with_bad_lines, bad_log_layout):
    seen = []
    for ch, decisions in iter_decisions_dask(
        [str(log_with_bad_lines)], model, scheduler=cluster.scheduler_address, chunk=3, window=5
    ):
        assert [d.line_no for d in decisions] == [ln.line_no for ln in ch.lines]
        assert [d.item_id for d in decisions] == [ln.item_id for ln in ch.lines]
        seen += [ln.line_no for ln in ch.lines]
    assert seen == list(range(1, bad_log_layout["lines"] + 1))


def test_resume_with_the_dask_engine(tmp_path, cluster, model, log_with_bad_lines, monkeypatch):
    full = tmp_path / "full.csv"
    score_mod.score_logs([log_with_bad_lines], full, model=model, workers=1)
    monkeypatch.setattr(score_mod, "SEGMENT_ROWS", 8)
    monkeypatch.setattr("sorter.batch.CHUNK", 8)
    real_add = score_mod._Journal.add_segment
    calls = {"n": 0}

    def crash_after_two(self, table, positions):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real_add(self, table, positions)

    out = tmp_path / "resumed.csv"
    run = dict(model=model, engine="dask", scheduler=cluster.scheduler_address)
    monkeypatch.setattr(score_mod._Journal, "add_segment", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        score_mod.score_logs([log_with_bad_lines], out, **run)
    assert not out.exists()
    monkeypatch.setattr(score_mod._Journal, "add_segment", real_add)
    summary = score_mod.score_logs([log_with_bad_lines], out, **run)
    assert summary.resumed_from == 16
    assert out.read_text() == full.read_text()


def test_no_scheduler_is_a_clear_error(tmp_path, model, log_with_bad_lines, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(SorterError, match=r"--scheduler tcp://HOST:8786 or set DASK_SCHEDULER_ADDRESS"):
        score_mod.score_logs([log_with_bad_lines], tmp_path / "o.csv", model=model, engine="dask")
    assert not (tmp_path / "o.csv.partial").exists()  # nothing written before the cluster answers


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # dask's half-made Client
def test_unreachable_scheduler_is_a_clear_error(tmp_path, model, log_with_bad_lines):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(SorterError, match=rf"cannot reach the Dask scheduler at '{address}'.*dask scheduler"):
            score_mod.score_logs(
                [log_with_bad_lines], tmp_path / "o.csv", model=model, engine="dask", scheduler=address
            )
    assert not (tmp_path / "o.csv.partial").exists()


def test_workers_that_cannot_read_the_log_are_refused(tmp_path, cluster, model):
    with pytest.raises(SorterError, match="cannot read .*same absolute paths"):
        next(iter_decisions_dask([str(tmp_path / "elsewhere")], model, scheduler=cluster.scheduler_address))


def test_workers_that_would_score_differently_are_refused(cluster, model, log_with_bad_lines):
    libraries = {**model.manifest["libraries"], "scikit-learn": "1.0.0"}
    other = dataclasses.replace(model, manifest={**model.manifest, "libraries": libraries})
    with pytest.raises(SorterError, match=r"would score differently \(scikit-learn 1.0.0 saved it"):
        next(iter_decisions_dask([str(log_with_bad_lines)], other, scheduler=cluster.scheduler_address))


_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from sorter.distributed import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # warm up
    np.ones(400_000 // 8).sum()
f0 = faults()
for _ in range(500):
    np.ones(400_000 // 8).sum()  # an image-sized temporary, freed at once
print(faults() - f0)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning")
def test_workers_keep_freed_memory_under_dasks_trim_threshold():
    """Under a Dask nanny's MALLOC_TRIM_THRESHOLD_, every freed image-sized array is handed
    back to the system and faulted in again; the scoring tasks undo that once per worker."""
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode], env=env, capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    plain, kept = faults("plain"), faults("keep")
    assert plain > 500 * 50  # ~100 pages faulted per array
    assert kept < plain / 20
