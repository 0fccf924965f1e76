"""Progress of long commands: a bar on a terminal, a line every few seconds otherwise.

A command run by hand shows a tqdm bar; the same command in a CI job, a cron job or
piped to a file (stderr not a terminal) prints a plain line every ``every_s`` seconds
instead, so a log shows it is alive and how far it got.  Stages without a count
(fitting a model) are announced with :meth:`Progress.stage`.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["EVERY_S", "Progress"]

EVERY_S = 5.0
"""Seconds between plain progress lines when the stream is not a terminal."""


class Progress:
    """Count work done towards ``total`` (``None`` when unknown).

    Parameters
    ----------
    desc : str
        What is counted, e.g. ``"score"``; starts every line.
    total : int, optional
        Expected count, for the percentage.
    enabled : bool
        ``False`` shows nothing (library default; the CLI turns it on).
    stream : file, optional
        Where to write (default ``sys.stderr``).
    every_s : float, optional
        Seconds between plain lines when ``stream`` is not a terminal (default :data:`EVERY_S`).
    initial : int
        Work already done (a resumed run).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("score", total=4, stream=out, every_s=0.0)
    >>> p.update(2)
    >>> out.getvalue().startswith("score: 2/4 items (50 %)")
    True
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        every_s: float | None = None,
        initial: int = 0,
        unit: str = "item",
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = EVERY_S if every_s is None else every_s
        self.n = initial
        self._initial = initial
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar: Any = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._write(self._line(now))

    def stage(self, text: str) -> None:
        """Announce a step that has no count (e.g. ``"fitting the classifier"``)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(f"{self.desc}: {text}", file=self.stream)
        else:
            self._write(f"{self.desc}: {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, now: float) -> str:
        rate = (self.n - self._initial) / max(now - self._t0, 1e-9)
        if self.total:
            return (
                f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f} %), "
                f"{rate:.0f} {self.unit}s/s"
            )
        return f"{self.desc}: {self.n} {self.unit}s, {rate:.0f} {self.unit}s/s"

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
