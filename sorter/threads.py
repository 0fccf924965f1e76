"""Worker processes' thread set-up: one OpenCV thread and one BLAS/OpenMP thread each.

Where processes are the parallelism (the batch workers, the Dask tasks, the simulator's
writers), OpenCV's own thread pool and the BLAS threads of numpy/scikit-learn would fight
them for the cores, and OpenCV's pool is not fork-safe.  Every such process calls
:func:`single_threaded` once, at its start.  Code that does the same work in the calling
process for a while (one worker: no processes started; a benchmark timing one core) runs it
under :func:`one_thread`, which restores the limits afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["default_workers", "one_thread", "single_threaded", "start_pool"]


def single_threaded() -> None:
    """Limit this process to one OpenCV thread and one BLAS/OpenMP thread, for good.

    Meant for worker processes (a pool's ``initializer``, the first call of a task); the
    limits stay until the process ends.
    """
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)  # OpenCV's own pool fights the processes and is not fork-safe
    threadpool_limits(1)  # and so would BLAS threads: the processes are the parallelism


@contextmanager
def one_thread() -> Iterator[None]:
    """:func:`single_threaded` for the ``with`` block only: OpenCV and BLAS/OpenMP get their
    thread counts back when it ends."""
    import cv2
    from threadpoolctl import threadpool_limits

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        cv2.setNumThreads(before)


def default_workers() -> int:
    """Worker processes when none are asked for: one per core, at most 8."""
    import os

    return max(1, min(os.cpu_count() or 1, 8))


def _init_worker(preload: str | None) -> None:
    single_threaded()
    if preload:
        import importlib

        importlib.import_module(preload)  # at once, while the parent is busy with its own start


def _ready() -> None:
    return None


def start_pool(workers: int, preload: str | None = None):  # -> concurrent.futures.ProcessPoolExecutor
    """A pool of ``workers`` spawned worker processes, started now, each :func:`single_threaded`
    and importing the module ``preload`` as it boots.

    Its own module imports nothing heavy, so a command can start its workers first and let them
    boot (Python, numpy, OpenCV, the measuring code) while it imports and loads the rest: on a
    2-core machine that takes a few tenths of a second off ``sorter score``'s start.  Shut it
    down when done.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(preload,)
    )
    for _ in range(workers):
        pool.submit(_ready)  # each submit to a pool without an idle worker starts one
    return pool
