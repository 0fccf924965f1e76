"""Score logs on a Dask cluster: the ``--engine dask`` of ``sorter score``.

The client (the process running ``sorter score``) reads the lines of each log in
order and computes the running ambient temperature, exactly as the local engine
does, and submits one task per chunk of lines.  A task loads the chunk's images,
measures the items and scores them (features, model, policy) with the very
functions the local engine uses, and returns the decisions, so both engines give
the same rows.  The model travels from the client to every worker once
(``Client.scatter(..., broadcast=True)``) and the tasks refer to it.  At most
``window`` tasks are in flight and results are taken in submission order, so memory
stays flat whatever the size of the logs and output rows follow the input lines.

The workers need ``sorter[dask]`` installed with the client's library versions and
read access to the logs at the same absolute paths; ``docs/scaling.md`` has the
commands.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from . import batch
from .batch import MeasuredChunk, assemble_chunk, decisions_for_chunk, iter_chunks, measure_records
from .errors import SorterError
from .logformat import LogLine
from .model import SorterModel, _versions_compatible, library_versions
from .readings import ItemRecord, LogMeta
from .scoring import Decision, Scorer
from .threads import single_threaded

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"

__all__ = ["SCHEDULER_ENV", "connect", "iter_decisions", "iter_decisions_dask", "score_chunk"]


def connect(scheduler: str | None = None) -> Client:
    """A client of the Dask scheduler at ``scheduler``, else at ``$DASK_SCHEDULER_ADDRESS``.

    The connection timeout is Dask's ``distributed.comm.timeouts.connect`` (30 s unless
    configured, e.g. ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``).

    Raises
    ------
    SorterError
        If no address is given, dask.distributed is not installed, or the scheduler
        cannot be reached; the message names the address and the fix.
    """
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise SorterError(
            f"--engine dask needs a Dask scheduler: pass --scheduler tcp://HOST:8786 or set {SCHEDULER_ENV} "
            "(start one with `dask scheduler` and workers with `dask worker tcp://HOST:8786`; see docs/scaling.md), "
            "or use --engine local"
        )
    try:
        from distributed import Client
    except ImportError as err:
        raise SorterError("--engine dask needs dask.distributed: pip install 'sorter[dask]'") from err
    try:
        return Client(address, set_as_default=False)
    except (OSError, ValueError, TypeError) as err:  # TimeoutError is an OSError
        raise SorterError(
            f"cannot reach the Dask scheduler at {address!r} ({err}); check that `dask scheduler` is running "
            "there and that the address and port are right (tcp://HOST:8786 by default), or use --engine local"
        ) from err


def _worker_facts(log_dirs: Sequence[str]) -> dict[str, Any]:
    """What a worker has (runs on each worker): library versions and which logs it can read."""
    from . import __version__

    return {
        "sorter": __version__,
        "libraries": library_versions(),
        "unreadable": [d for d in log_dirs if not _readable(d)],
    }


def _readable(log_dir: str) -> bool:
    """Whether this process can read the log's items (``items.jsonl`` or its first segment)."""
    from .logformat import ITEMS_FILE, segment_file

    return any(os.access(os.path.join(log_dir, name), os.R_OK) for name in (ITEMS_FILE, segment_file(1)))


def _check_workers(client: Client, address: str, model: SorterModel, log_dirs: Sequence[str], timeout: float) -> None:
    """Refuse a cluster whose workers would score differently or could not read the logs."""
    from . import __version__

    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as err:
        raise SorterError(
            f"the Dask scheduler at {address} has no workers; start some with `dask worker {address}`"
        ) from err
    try:
        facts = client.run(_worker_facts, list(log_dirs))
    except Exception as err:  # noqa: BLE001 - typically ModuleNotFoundError raised on a worker
        raise SorterError(
            f"the Dask workers of {address} cannot run sorter ({err!r}); install the same sorter with "
            "`pip install 'sorter[dask]'` in every worker's environment"
        ) from err
    saved = model.manifest.get("libraries") or library_versions()  # an unsaved model: this process's
    for worker, f in sorted(facts.items()):
        diff = _versions_compatible(saved, f["libraries"])
        if f["sorter"] != __version__:
            diff.insert(0, f"sorter {f['sorter']} is installed, {__version__} on the client")
        if diff:
            raise SorterError(
                f"Dask worker {worker} would score differently ({'; '.join(diff)}); install the client's versions "
                "on every worker"
            )
        if f["unreadable"]:
            raise SorterError(
                f"Dask worker {worker} cannot read the items of {f['unreadable'][0]}; the workers need the logs "
                "at the same absolute paths as the client (a shared or copied file system)"
            )


def _connect_timeout() -> float:
    import dask.config
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s"))


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_KEEP_FREED = 32 << 20


def keep_freed_memory() -> bool:
    """Let glibc keep up to 32 MB of freed memory in this process (trim and mmap thresholds).

    A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which also
    freezes glibc's mmap threshold at 128 kB: every image-sized temporary array of an
    item is then mapped, faulted in page by page and unmapped again, a fifth of the
    CPU an item costs.  Resetting both thresholds in the worker restores the default
    behaviour for arrays up to 32 MB.  A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED))
    except (OSError, AttributeError):
        return False


@functools.cache
def _single_threaded() -> None:
    """Once per worker process: one OpenCV/BLAS thread (the workers are the parallelism),
    and glibc's default handling of freed memory (:func:`keep_freed_memory`)."""
    single_threaded()
    keep_freed_memory()


def score_chunk(
    model: SorterModel,
    log_dir: str,
    meta: LogMeta,
    lines: list[LogLine],
    recs: list[tuple[ItemRecord, float | None]],
    allow_line_mismatch: bool = False,
) -> tuple[np.ndarray, list[str], list[Decision]]:
    """Measure and score one chunk of lines (runs on a worker).

    ``recs`` are the usable records of ``lines`` with their ambient estimates, as the
    client computed them in log order.  Returns the measurements and problems of the
    usable records and one decision per line (bad lines get their ``manual`` row).
    """
    _single_threaded()
    raw, problems = measure_records(log_dir, meta, recs)
    scorer = Scorer(model, allow_line_mismatch=allow_line_mismatch)
    decisions = decisions_for_chunk(scorer, assemble_chunk(log_dir, lines, raw, problems, meta))
    return raw, problems, decisions


def iter_decisions_dask(
    logs: Sequence[str],
    model: SorterModel,
    *,
    scheduler: str | None = None,
    start: dict[str, tuple[int, int]] | None = None,
    chunk: int | None = None,
    window: int | None = None,
    client: Client | None = None,
    allow_line_mismatch: bool = False,
) -> Iterator[tuple[MeasuredChunk, list[Decision]]]:
    """Measured chunks of ``logs`` and their decisions, in order, computed on a Dask cluster.

    Parameters
    ----------
    logs : log directories; the workers must read them at the same absolute paths.
    model : the model to score with; sent to every worker once.
    scheduler : the scheduler's address; default ``$DASK_SCHEDULER_ADDRESS``.
    start : where each log resumes, as in :func:`sorter.batch.iter_measured`.
    chunk : lines per task (default :data:`sorter.batch.CHUNK`).
    window : tasks in flight (default twice the cluster's worker threads).
    client : an already connected client (from :func:`connect`) to use instead of
        connecting to ``scheduler``; it stays the caller's to close (a client this
        function connected itself is closed when the iteration ends).
    allow_line_mismatch : as :class:`sorter.scoring.Scorer`'s.

    Examples
    --------
    >>> from distributed import LocalCluster                       # doctest: +SKIP
    >>> from sorter.model import load_model                        # doctest: +SKIP
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster:  # doctest: +SKIP
    ...     for ch, decisions in iter_decisions_dask(["log"], load_model(), scheduler=cluster.scheduler_address):
    ...         print(ch.lines[0].line_no, decisions[0].lane)
    """
    chunk = chunk or batch.CHUNK
    own = client is None
    client = connect(scheduler) if client is None else client
    address = client.scheduler.address
    # Workers resolve paths against their own working directory: send them absolute ones.
    paths = {d: os.path.abspath(d) for d in logs}
    pending: deque[tuple[str, list[LogLine], Any, LogMeta]] = deque()
    try:
        _check_workers(client, address, model, list(paths.values()), _connect_timeout())
        window = window or 2 * max(1, sum(client.nthreads().values()))
        model_ref = client.scatter(model, broadcast=True, hash=False)
        for d, meta, lines, recs in iter_chunks(logs, chunk, start):
            pending.append(
                (
                    d,
                    lines,
                    client.submit(score_chunk, model_ref, paths[d], meta, lines, recs, allow_line_mismatch, pure=False),
                    meta,
                )
            )
            if len(pending) >= window:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())
    finally:
        if pending:
            client.cancel([fut for _, _, fut, _ in pending])
        if own:
            client.close()


def iter_decisions(
    logs: Sequence[str],
    scorer: Scorer,
    start: dict[str, tuple[int, int]] | None = None,
    *,
    workers: int = 1,
    executor: Any = None,
    client: Client | None = None,
) -> Iterator[tuple[MeasuredChunk, list[Decision]]]:
    """The Dask engine, with the engines' common signature (:data:`sorter.score.ENGINES`): the
    workers measure and score, the model goes to them once.  ``workers`` and ``executor`` are
    the local engine's and unused here."""
    yield from iter_decisions_dask(
        logs, scorer.model, start=start, client=client, allow_line_mismatch=scorer.allow_line_mismatch
    )


def _collect(log_dir: str, lines: list[LogLine], fut: Any, meta: LogMeta) -> tuple[MeasuredChunk, list[Decision]]:
    try:
        raw, problems, decisions = fut.result()
    except Exception as err:  # noqa: BLE001 - a lost worker, a cancelled task, a bug on the worker
        raise SorterError(
            f"{log_dir} lines {lines[0].line_no}-{lines[-1].line_no}: the Dask task failed ({err!r}); see the "
            "worker logs, then rerun the same command: scoring resumes after the last written segment"
        ) from err
    return assemble_chunk(log_dir, lines, raw, problems, meta), decisions
