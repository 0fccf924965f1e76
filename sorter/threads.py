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

__all__ = ["one_thread", "single_threaded"]


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
