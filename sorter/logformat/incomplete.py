"""The ``INCOMPLETE`` marker: present while a writer that means to finish a log is writing it."""

from __future__ import annotations

from pathlib import Path

from sorter.logformat.constants import INCOMPLETE_FILE, StrPath


def incomplete_note(log_dir: StrPath) -> str | None:
    """What the log's ``INCOMPLETE`` marker says, or ``None`` when the log is complete.

    A writer that means to finish a log (``sorter simulate``) creates the marker before
    the first item and removes it after the last: a marker left behind means the log
    ends early (the writer was interrupted), although every line in it is valid.
    """
    p = Path(log_dir) / INCOMPLETE_FILE
    try:
        text = p.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{p} cannot be read ({err})"
    return text or "its writer did not finish"
