"""The exception tree of sorter.

Every error sorter raises on purpose is a :class:`SorterError`, and also the
builtin it resembles, so callers may catch either.  Messages say what was
wrong, where, and how to fix it.
"""

from __future__ import annotations


class SorterError(Exception):
    """Root of every error sorter raises on purpose."""


class ConfigError(SorterError, ValueError):
    """A configuration file or option is invalid."""


class LogFormatError(SorterError, ValueError):
    """A line-log (``sorter-log/1``) is malformed: bad line, field or meta."""


class ImageError(SorterError, ValueError):
    """An image referenced by a log is missing, corrupt, unsafe or of the wrong kind."""


class UnsafePathError(ImageError):
    """An image path resolves outside the log directory."""


class ModelError(SorterError, RuntimeError):
    """A model directory cannot be used."""


class ModelIntegrityError(ModelError):
    """A model file's hash, format or library versions do not match its manifest."""


class ModelNotFittedError(ModelError):
    """A model was used before training."""


class PlcError(SorterError, ConnectionError):
    """The PLC link failed."""


class PlcTimeoutError(PlcError, TimeoutError):
    """The PLC did not answer in time."""


class SimulationError(SorterError, ValueError):
    """The simulator was asked for something it cannot make."""
