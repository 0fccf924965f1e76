"""Operator verdicts out as a labelled ``sorter-log/1`` log that ``sorter train`` reads as is.

Each exported line is the item's record from the line's log, with

- ``label``: the operator's current verdict (the latest of its history);
- ``damaged``: the operator's damaged yes/no (the field ``sorter train`` reads for the
  damage detector);
- ``verdict``: who decided, when, the note, how many corrections, whether the item came
  from the manual lane or a spot check, and the lane the line chose;
- ``source_log`` / ``source_line``: where the item came from.

Images are copied (or hard-linked with ``link=True``: no extra disk, but the export then
shares files with the line's log, which is append-only and never rewrites an image) into
``images/`` under new names.  Every image path is resolved inside the line's log
directory first; one that leaves it is dropped (and counted), never followed.

The export is written to a temporary directory beside ``out`` and renamed into place at
the end, so ``out`` is either absent or complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sorter.errors import ImageError, SorterError
from sorter.logformat import ITEMS_FILE, is_expired, iter_log, write_meta

from .linedata import LineLog
from .store import StationStore

__all__ = ["ExportSummary", "export_labels", "parse_since"]

IMAGE_FIELDS = ("xray_low", "xray_high", "rgb")


@dataclass
class ExportSummary:
    out: str
    items: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    damaged: int = 0
    images: int = 0
    no_record: int = 0
    images_refused: list[str] = field(default_factory=list)

    def format(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())) or "none"
        text = (
            f"exported {self.items} labelled items to {self.out} ({counts}; damaged {self.damaged}; "
            f"{self.images} images)"
        )
        if self.no_record:
            text += f"\n{self.no_record} verdicts skipped: their item has no record in the line's log"
        if self.images_refused:
            text += f"\n{len(self.images_refused)} images dropped: " + "; ".join(self.images_refused[:5])
        return text


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``--since``: an ISO 8601 time (UTC if no zone), epoch seconds, or an age like ``24h``, ``7d``, ``90m``.

    Examples
    --------
    >>> parse_since("2026-01-01T00:00:00Z")
    1767225600.0
    >>> parse_since("2h", now=10_000.0)
    2800.0
    """
    if text is None or text == "":
        return None
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) > 1 and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        now = datetime.now(timezone.utc).timestamp() if now is None else now
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise SorterError(
            f"--since {text!r} is not a time; give an ISO time (2026-11-30T08:00, UTC unless a zone is given), "
            "epoch seconds, or an age such as 24h or 7d"
        ) from err
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(src, dst)


def export_labels(
    store: StationStore, log: LineLog, out: str | Path, *, since: float | None = None, link: bool = False
) -> ExportSummary:
    """Write the current verdicts as a labelled log in ``out`` (which must not exist, or be empty).

    Raises
    ------
    SorterError
        ``out`` exists and is not empty, the line has no log directory, or nothing is labelled.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SorterError(f"{out} exists and is not an empty directory; choose a new --out directory")
    if log.log_dir is None:
        raise SorterError(
            "the line has no log directory (line.log_dir is empty): the verdicts have no readings "
            'to export; run the line with source = "log"'
        )
    log.index_new()
    labelled = store.labelled(since)
    if not labelled:
        raise SorterError(
            "no verdicts to export"
            + (" since the given time" if since is not None else "")
            + "; record verdicts at the station's review page first"
        )
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    summary = ExportSummary(str(out))
    try:
        write_meta(tmp, log.meta)
        n = 0
        with open(tmp / ITEMS_FILE, "wb") as fh:
            for verdict, qitem in labelled:
                rec = log.record(verdict.item_id)
                if rec is None:
                    summary.no_record += 1
                    continue
                n += 1
                obj = rec.to_json()
                for name in IMAGE_FIELDS:
                    if obj.get(name) is None:
                        continue
                    try:
                        src = log.image_path(rec, name)
                        if not src.is_file():
                            raise ImageError(
                                f"{src.name} "
                                + ("expired (deleted by the retention policy)" if is_expired(src) else "is missing")
                            )
                    except ImageError as err:
                        summary.images_refused.append(f"item {rec.item_id} {name}: {err}")
                        obj[name] = None
                        continue
                    rel = f"images/{n:07d}_{name}.png"
                    _place(src, tmp / rel, link)
                    obj[name] = rel
                    summary.images += 1
                history = store.history(verdict.item_id)
                obj["label"] = verdict.label
                obj["damaged"] = verdict.damaged
                obj["verdict"] = {
                    "by": verdict.user,
                    "at": datetime.fromtimestamp(verdict.at, timezone.utc).isoformat(timespec="seconds"),
                    "note": verdict.note,
                    "corrections": len(history) - 1,
                    "queue": qitem.kind,
                    "line_lane": qitem.lane,
                }
                obj["source_log"] = log.log_dir.name
                obj["source_line"] = rec.line_no
                fh.write(json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n")
                summary.items += 1
                summary.labels[verdict.label] = summary.labels.get(verdict.label, 0) + 1
                summary.damaged += int(verdict.damaged)
            fh.flush()
            os.fsync(fh.fileno())
        # read it back as `sorter train` will: every line must be a good record
        bad = [ln.error for ln in iter_log(tmp) if ln.record is None]
        if bad:
            raise SorterError(f"the export would hold unreadable lines ({bad[0]}); nothing was written")
        if out.exists():
            out.rmdir()  # empty: checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
