"""Scoring worker processes driven straight from the event loop.

The line controller scores items in spawned worker processes (scoring is
CPU-bound Python; threads would serialise on the GIL).  Each worker is one
process and one socket pair: the event loop pickles a request, writes it with
:meth:`asyncio.AbstractEventLoop.sock_sendall`, and reads the answer with
``sock_recv_into`` — no helper threads in the controller process.

Why not :class:`concurrent.futures.ProcessPoolExecutor`: per call it wakes a
manager thread (through a pipe), which hands the work to a queue feeder thread
that pickles and writes it, and the manager thread reads and unpickles the
result and hands it back to the loop (``call_soon_threadsafe``).  At 100 items/s
that was about 0.5 ms of controller CPU per item in those two threads, and four
GIL hand-overs per call, each of which can wait for the interpreter's switch
interval while the loop is busy — latency the items could not afford.

The wire format is that of :class:`multiprocessing.connection.Connection`
(a 4-byte big-endian length, then the pickle), so the worker side simply uses
``recv_bytes`` / ``send_bytes``.  A request is ``(kind, payload)``; an answer is
``("ok", value)`` or ``("err", exception)``.

The scoring worker's own side (:func:`init_scoring_worker`, :data:`SCORING_HANDLERS`; a batch
is scored by :meth:`sorter.scoring.Scorer.score_items`) lives here too, not in
:mod:`sorter.line.scoring_pool`: a spawned worker imports only the module of the functions it
runs, so it skips the controller's imports (audit log, metrics, PLC link, sources, simulator)
and is ready sooner after a restart.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final

from sorter.errors import SorterError
from sorter.readings import Item
from sorter.scoring import Decision, Scorer, warm_up_batch
from sorter.threads import single_threaded

if TYPE_CHECKING:  # the controller's side only: a worker process need not import asyncio (it starts sooner)
    import asyncio

logger = logging.getLogger(__name__)

__all__ = ["SCORING_HANDLERS", "ScoringProcess", "WorkerLost", "init_scoring_worker"]

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")


class WorkerLost(SorterError, RuntimeError):
    """The worker process exited, or its connection broke, during a call.

    The pool replaces the worker; the items of the call go to the safe lane."""


def _serve(
    conn: Connection, init: Callable[..., None], init_args: tuple[Any, ...], handlers: dict[str, Callable[..., Any]]
) -> None:
    """The worker's main loop: one request at a time until the controller closes the socket."""
    init(*init_args)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the controller closed its end (or died): nothing more to do
        kind, payload = pickle.loads(data)
        try:
            out: tuple[str, Any] = ("ok", handlers[kind](payload))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the caller
            out = ("err", err)
        try:
            answer = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - an unpicklable result or exception
            answer = pickle.dumps(("err", RuntimeError(f"worker answer could not be pickled: {err!r}")))
        try:
            conn.send_bytes(answer)
        except OSError:
            return


class ScoringProcess:
    """One spawned worker process and the controller's end of its socket.

    Parameters
    ----------
    init : callable
        Run once in the worker before it serves (e.g. load the model); it
        must not raise (keep the error and raise it from the handlers).
    init_args : tuple
        Arguments of ``init`` (picklable).
    handlers : dict of str to callable
        Module-level functions the worker runs for each request kind.
    name : str
        Process name.

    Notes
    -----
    One call at a time per process (the caller keeps track of idle workers).
    A call that fails with :class:`WorkerLost` or is cancelled leaves the
    stream out of step: close the process and start a new one.
    """

    def __init__(
        self,
        init: Callable[..., None],
        init_args: tuple[Any, ...],
        handlers: dict[str, Callable[..., Any]],
        *,
        name: str = "sorter-score",
    ) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child, init, init_args, handlers), name=name, daemon=True)
        try:
            self.process.start()
        finally:
            child.close()
        try:
            self._sock = socket.fromfd(parent.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)  # a dup
        finally:
            parent.close()
        self._sock.setblocking(False)
        self.broken = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def call(self, kind: str, payload: Any) -> Any:
        """Run ``handlers[kind](payload)`` in the worker; its result, or its exception raised here."""
        if self.broken:
            raise WorkerLost(f"scoring process {self.pid} is out of service")
        import asyncio

        loop = asyncio.get_running_loop()
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if len(data) < 0x7FFF_FFFF:
                await loop.sock_sendall(self._sock, _HEADER.pack(len(data)))
            else:
                await loop.sock_sendall(self._sock, _HEADER.pack(-1) + _LONG_HEADER.pack(len(data)))
            await loop.sock_sendall(self._sock, data)
            (size,) = _HEADER.unpack(await self._recv_exactly(loop, _HEADER.size))
            if size == -1:
                (size,) = _LONG_HEADER.unpack(await self._recv_exactly(loop, _LONG_HEADER.size))
            status, value = pickle.loads(await self._recv_exactly(loop, size))
        except OSError as err:
            self.broken = True
            raise WorkerLost(f"scoring process {self.pid} connection failed: {err}") from err
        except BaseException:  # cancelled half-way: the stream is out of step
            self.broken = True
            raise
        if status == "err":
            raise value
        return value

    async def _recv_exactly(self, loop: asyncio.AbstractEventLoop, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = await loop.sock_recv_into(self._sock, view[got:])
            if k == 0:
                self.broken = True
                self.process.join(0.5)
                raise WorkerLost(f"scoring process {self.pid} exited (exit code {self.process.exitcode})")
            got += k
        return buf

    def kill(self) -> None:
        """Stop the worker at once (SIGKILL), without waiting; for a worker out of step."""
        self.broken = True
        self._sock.close()
        if self.process.is_alive():
            self.process.kill()

    def close(self, timeout: float = 5.0) -> None:
        """Close the socket (the worker then exits) and reap the process; blocks up to ``timeout``."""
        self.broken = True
        self._sock.close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)

    def __repr__(self) -> str:
        return f"ScoringProcess(pid={self.pid}, alive={self.process.is_alive()}, broken={self.broken})"


# --------------------------------------------------------------------------- the scoring worker's side


_WORKER_SCORER: Scorer | None = None
_WORKER_ERROR: BaseException | None = None


def init_scoring_worker(model_dir: str | None, allow_line_mismatch: bool = False) -> None:
    """A scoring worker's start: load the model once (its error, if any, is raised by each call).
    ``allow_line_mismatch``: as :class:`sorter.scoring.Scorer`'s (``line.allow_line_mismatch``)."""
    # Ctrl-C goes to the whole process group: the controller drains, so workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded()  # the pool's workers are the parallelism
    from sorter.model import load_model

    global _WORKER_SCORER, _WORKER_ERROR
    try:
        # estimators=False: the fast predictor file, without importing scikit-learn (sorter.fastmodel)
        _WORKER_SCORER = Scorer(
            load_model(model_dir or None, estimators=False), allow_line_mismatch=allow_line_mismatch
        )
    except Exception as err:  # noqa: BLE001 - reported by the first call, with its own message
        # An initializer that raises breaks the whole pool with no message; keep the error to raise it.
        _WORKER_ERROR = err


def _worker_scorer() -> Scorer:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER_SCORER is not None, "worker initializer did not run"
    return _WORKER_SCORER


def _worker_warm(_payload: object = None) -> tuple[int, str]:
    scorer = _worker_scorer()
    scorer.score_items(warm_up_batch())
    return os.getpid(), scorer.model.model_id


def _worker_score(batch: list[tuple[Item, float | None]]) -> list[Decision]:
    return _worker_scorer().score_items(batch)


SCORING_HANDLERS: Final = {"warm": _worker_warm, "score": _worker_score}
"""Request kinds a scoring worker serves."""
