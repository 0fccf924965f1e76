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
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import pickle
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ScoringProcess", "WorkerLost"]

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")


class WorkerLost(RuntimeError):
    """The worker process exited, or its connection broke, during a call."""


def _serve(conn: Connection, init: Callable[..., None], init_args: tuple[Any, ...],
           handlers: dict[str, Callable[..., Any]]) -> None:
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

    def __init__(self, init: Callable[..., None], init_args: tuple[Any, ...],
                 handlers: dict[str, Callable[..., Any]], *, name: str = "sorter-score") -> None:
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
