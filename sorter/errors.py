"""The exception tree of sorter.

Every error sorter raises on purpose is a :class:`SorterError`, and also the
builtin it resembles, so callers may catch either.  Messages say what was
wrong, where, and how to fix it.  What kind of problem it is, where a program needs to
know (``sorter score``'s error summary), is the error's :attr:`SorterError.kind` code, never
matched from the message text.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Why an item could not be scored: the codes ``sorter score``'s summary counts (by value)."""

    DUPLICATE = "duplicate"  # a duplicate item id in a log
    TORN = "torn"  # a last line cut short (the log is being written, or its writer stopped)
    JSON = "json"  # not one JSON object (invalid JSON, a blank line, an array ...)
    UTF8 = "utf-8"  # bytes that are not UTF-8
    ITEM_ID = "item_id"  # no usable item id
    TIME = "field 't'"  # no usable time stamp
    TOO_LONG = "too long"  # a line over the reader's length limit
    MEASUREMENT = "measurement failed"  # an item whose measuring raised
    MODEL = "model failed"  # rows the model could not score
    OTHER = "other"


class SorterError(Exception):
    """Root of every error sorter raises on purpose.

    ``kind`` is a code for programs (:class:`ErrorKind`); it defaults to ``other`` and is
    given as a keyword: ``LogFormatError(message, kind=ErrorKind.ITEM_ID)``.
    """

    kind: ErrorKind = ErrorKind.OTHER

    def __init__(self, *args: object, kind: ErrorKind | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            self.kind = kind


class ConfigError(SorterError, ValueError):
    """A configuration file or option is invalid."""


class LogFormatError(SorterError, ValueError):
    """A line-log (``sorter-log/1``) is malformed: bad line, field or meta."""


class ImageError(SorterError, ValueError):
    """An image referenced by a log is missing, corrupt, unsafe or of the wrong kind."""


class UnsafePathError(ImageError):
    """An image path resolves outside the log directory."""


class ImageExpiredError(ImageError):
    """An image was deleted on purpose by the retention policy (``sorter retention``).

    Not a fault: readers treat the image as absent and say "expired".  A missing image
    that no retention run recorded is an :class:`ImageError` as before.
    """


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


class CaseStateError(SorterError, ValueError):
    """A case station's configuration or saved state is invalid."""


class StationError(SorterError, ValueError):
    """A request to the station store is invalid (unknown user, bad verdict ...)."""


class PromotionError(SorterError, PermissionError):
    """A promotion was refused (failed safety table, wrong role, unusable target)."""
