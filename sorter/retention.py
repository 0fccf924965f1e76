"""Image retention: delete old images of a line log by the plant's policy, leaving "expired" tombstones.

A line at 100 items/s records about 36 GB of images an hour.  The item lines are small and
stay; the images of items the line sorted with confidence are worth little after a few days,
while those of items a person looked at (or should) are the labels of tomorrow.  So:

- **sorted**: the line sent the item to ``lead_acid`` or ``li_ion`` (the audit log says so) and
  it is neither queued for review at the station nor given an operator verdict — its images
  are deleted ``keep_sorted_days`` after the item passed the bridge;
- **labelled**: the line sent the item to ``manual`` or ``hazard``, or the station queued it
  (manual review or spot check), or an operator gave it a verdict — kept ``keep_labelled_days``
  (default: forever);
- **unknown**: no audit row (an item the line did not decide, or a log scored elsewhere) —
  kept like a labelled item: nothing is deleted on a guess.

Before an image is deleted its file name is appended to ``EXPIRED`` in its folder
(:func:`sorter.logformat.record_expired`), so every reader says "image expired" rather than
"missing" (scoring sends the item to a safe lane, the station and the case manifests show
"expired"); a missing image without a tombstone stays an error.  The audit log and the
station store are only read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import ConfigError, ImageError, LogFormatError, SorterError
from .lanes import Lane
from .logformat import (
    LogLine,
    LogPosition,
    check_log_dir,
    is_expired,
    iter_log,
    record_expired,
    resolve_image_path,
)
from .readings import IMAGE_FIELDS, ItemRecord

logger = logging.getLogger(__name__)

DAY_S = 86400.0
SORTED_LANES = frozenset({Lane.LEAD_ACID.value, Lane.LI_ION.value})
LABELLED_LANES = frozenset({Lane.MANUAL.value, Lane.HAZARD.value})
_CHUNK = 500  # item ids per SQL query (below SQLite's variable limit)
STATE_FILE = "retention.json"
"""In the log directory: where the lines end whose images are settled (older than every finite keep
time, so deleted or kept for good), and the policy that settled them.  The next run with a policy
that keeps at least as long starts there instead of at the first line."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long images are kept, in days after the item passed the bridge (``None``: forever).

    Examples
    --------
    >>> RetentionPolicy.from_mapping({"keep_sorted_days": 3}).keep_labelled_days is None
    True
    """

    keep_sorted_days: float | None = 7.0
    keep_labelled_days: float | None = None

    def __post_init__(self) -> None:
        for name in ("keep_sorted_days", "keep_labelled_days"):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
            ):
                raise ConfigError(
                    f"retention {name} is {v!r}; give a number of days >= 0, or leave it out to keep "
                    "those images forever"
                )
        s, lab = self.keep_sorted_days, self.keep_labelled_days
        if lab is not None and (s is None or lab < s):
            raise ConfigError(
                f"retention keep_labelled_days ({lab}) is shorter than keep_sorted_days ({s}); "
                "labelled images (manual, hazard, spot checks, verdicts) are the labels of tomorrow: "
                "keep them at least as long"
            )

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> RetentionPolicy:
        """From a configuration table (e.g. ``[retention]`` of ``line.toml``); unknown keys are refused."""
        known = {"keep_sorted_days", "keep_labelled_days"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown retention keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: (None if d[k] in ("forever", None) else d[k]) for k in d})

    def keep_s(self, klass: str) -> float | None:
        days = self.keep_sorted_days if klass == "sorted" else self.keep_labelled_days
        return None if days is None else days * DAY_S


@dataclass
class RetentionReport:
    """What a retention run found and deleted (or, dry, would delete)."""

    log_dir: str
    dry_run: bool
    items: int = 0
    items_with_images: int = 0
    classes: Counter = field(default_factory=Counter)  # items with images, by class
    expired_items: Counter = field(default_factory=Counter)  # by class
    images_deleted: int = 0
    bytes_deleted: int = 0
    already_expired: int = 0
    skipped_lines: int = 0  # settled by earlier runs, not read again
    sample: list[str] = field(default_factory=list)  # the first paths deleted, for a dry run's listing
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [
            f"log: {self.log_dir}",
            f"items: {self.items} ({self.items_with_images} with images: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.classes.items()))
            + ")",
            f"{verb}: {self.images_deleted} images, {self.bytes_deleted} bytes "
            f"({self.bytes_deleted / 1e6:.1f} MB) of {sum(self.expired_items.values())} items ("
            + (", ".join(f"{k}={v}" for k, v in sorted(self.expired_items.items())) or "none")
            + ")",
            f"expired by earlier runs: {self.already_expired} images"
            + (f" (and {self.skipped_lines} settled lines not read again)" if self.skipped_lines else ""),
        ]
        if self.dry_run and self.sample:
            lines.append("first images it would delete:")
            lines += [f"  {p}" for p in self.sample]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _connect_ro(path: str | os.PathLike, what: str) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise SorterError(f"{what} {p} not found; pass the {what} file (sqlite) the line or station writes")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as err:
        raise SorterError(f"{what} {p} cannot be read as SQLite ({err}); pass the right file") from err
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


class _Lookup:
    """Lanes from the audit log and labelled items from the station store, by item id (read-only)."""

    def __init__(self, audit: str | os.PathLike, station: str | os.PathLike | None) -> None:
        self.audit = _connect_ro(audit, "audit log")
        if "decisions" not in _tables(self.audit):
            raise SorterError(f"audit log {audit} has no decisions table; pass the audit.sqlite of the line")
        self.station = _connect_ro(station, "station store") if station else None
        self.station_tables = _tables(self.station) & {"queue", "verdicts"} if self.station else set()

    def classify(self, ids: Sequence[str]) -> dict[str, str]:
        """``{item_id: "sorted" | "labelled" | "unknown"}``."""
        lanes: dict[str, str] = {}
        labelled: set[str] = set()
        for k in range(0, len(ids), _CHUNK):
            part = list(ids[k : k + _CHUNK])
            marks = ",".join("?" * len(part))
            lanes.update(self.audit.execute(f"SELECT item_id, lane FROM decisions WHERE item_id IN ({marks})", part))
            if self.station is not None:
                for table in self.station_tables:
                    labelled.update(
                        r[0]
                        for r in self.station.execute(f"SELECT item_id FROM {table} WHERE item_id IN ({marks})", part)
                    )
        out = {}
        for i in ids:
            lane = lanes.get(i)
            if lane is None:
                out[i] = "unknown"
            elif i in labelled or lane not in SORTED_LANES:
                out[i] = "labelled"
            else:
                out[i] = "sorted"
        return out

    def close(self) -> None:
        self.audit.close()
        if self.station is not None:
            self.station.close()


def run_retention(
    log_dir: str | os.PathLike,
    audit: str | os.PathLike,
    *,
    policy: RetentionPolicy = RetentionPolicy(),  # noqa: B008 - frozen, so a shared default is safe
    station: str | os.PathLike | None = None,
    dry_run: bool = False,
    now: float | None = None,
    sample: int = 20,
) -> RetentionReport:
    """Delete (or, with ``dry_run``, list) the images the policy no longer keeps.

    Parameters
    ----------
    log_dir : str or path-like
        The log (single-file or rotated).
    audit : str or path-like
        The line's audit log (``audit.path`` of ``line.toml``), read only: the lane of each item.
    policy : RetentionPolicy
        How long to keep sorted and labelled images.
    station : str or path-like, optional
        The station's store, read only: items queued for review (manual, spot checks) and
        items with an operator verdict are labelled.  Without it only the audit's lanes count,
        so a spot-checked ``li_ion`` item would be "sorted": pass it when a station runs.
    dry_run : bool
        Delete nothing; report what would go and how many bytes.
    now : float, optional
        Epoch seconds to measure ages from (default: the clock).
    sample : int
        How many deleted paths to keep in the report.

    Returns
    -------
    RetentionReport
    """
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    check_log_dir(log_dir)
    report = RetentionReport(str(log_dir), dry_run)
    ages = [s for s in (policy.keep_s("sorted"), policy.keep_s("labelled")) if s is not None]
    final_age = max(ages, default=0.0)  # older than this, an item's images are as deleted as they will ever be
    lookup = _Lookup(audit, station)
    next_start: LogPosition | None = None
    settled = True
    try:
        batch: list[ItemRecord] = []
        for ln in _lines_from(log_dir, _load_state(Path(log_dir), policy), report):
            if settled:
                if ln.record is not None and now - ln.record.t < final_age:
                    settled = False
                    next_start = LogPosition(ln.segment, ln.offset, ln.line_no)
                else:
                    next_start = ln.next_position
            if ln.record is None:
                continue
            report.items += 1
            rec = ln.record
            if not any(getattr(rec, f) for f in IMAGE_FIELDS):
                continue
            report.items_with_images += 1
            if not ages or now - rec.t < min(ages):
                report.classes["young"] += 1
                continue
            batch.append(rec)
            if len(batch) >= _CHUNK:
                _expire_batch(batch, lookup, policy, now, Path(log_dir), report, dry_run, sample)
                batch = []
        if batch:
            _expire_batch(batch, lookup, policy, now, Path(log_dir), report, dry_run, sample)
    finally:
        lookup.close()
    if not dry_run and next_start is not None:
        _save_state(Path(log_dir), policy, next_start)
    report.seconds = time.perf_counter() - t0
    logger.info(
        "retention of %s: %s %d images, %d bytes",
        log_dir,
        "would delete" if dry_run else "deleted",
        report.images_deleted,
        report.bytes_deleted,
    )
    return report


def _lines_from(log_dir: str | os.PathLike, start: LogPosition | None, report: RetentionReport) -> Iterator[LogLine]:
    """The log's lines from ``start`` (where the last run's settled lines end), or from the top
    if that position no longer fits the log."""
    it = iter_log(log_dir, start=start)
    try:
        first = next(it, None)
    except LogFormatError as err:
        report.problems.append(f"{Path(log_dir) / STATE_FILE} does not fit the log ({err}); read it from the top")
        it = iter_log(log_dir)
        first = next(it, None)
    if first is None:
        return
    report.skipped_lines = first.line_no - 1
    yield first
    yield from it


def _at_least(current: float | None, recorded: float | None) -> bool:
    """Whether ``current`` keeps images at least as long as ``recorded`` (None: forever)."""
    return current is None or (recorded is not None and current >= recorded)


def _load_state(log_dir: Path, policy: RetentionPolicy) -> LogPosition | None:
    """Where the lines settled by earlier runs end, if the policy keeps at least as long as theirs."""
    try:
        obj = json.loads((log_dir / STATE_FILE).read_text(encoding="utf-8"))
        pos = LogPosition(int(obj["segment"]), int(obj["offset"]), int(obj["line_no"]))
        rec_sorted, rec_labelled = obj["keep_sorted_days"], obj["keep_labelled_days"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("%s is unusable (%s); reading the log from the top", log_dir / STATE_FILE, err)
        return None
    if _at_least(policy.keep_sorted_days, rec_sorted) and _at_least(policy.keep_labelled_days, rec_labelled):
        return pos
    return None  # a stricter policy than last time: every line may have images to delete


def _save_state(log_dir: Path, policy: RetentionPolicy, pos: LogPosition) -> None:
    obj = {
        "keep_sorted_days": policy.keep_sorted_days,
        "keep_labelled_days": policy.keep_labelled_days,
        "segment": pos.segment,
        "offset": pos.offset,
        "line_no": pos.line_no,
    }
    tmp = log_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    os.replace(tmp, log_dir / STATE_FILE)


def _image_file(log_dir: Path, rel: str, folders: dict[str, Path]) -> Path:
    """The image's file, its folder checked to lie inside the log (once per folder: resolving every
    path costs more than the deletion).  A symlinked image file is deleted as a link, never its target."""
    head, sep, name = rel.rpartition("/")
    if not sep or not head or name in ("", ".", "..") or "\\" in name:
        return resolve_image_path(log_dir, rel)
    folder = folders.get(head)
    if folder is None:
        folder = folders[head] = resolve_image_path(log_dir, head)
    return folder / name


def _expire_batch(
    batch: list[ItemRecord],
    lookup: _Lookup,
    policy: RetentionPolicy,
    now: float,
    log_dir: Path,
    report: RetentionReport,
    dry_run: bool,
    sample: int,
) -> None:
    classes = lookup.classify([r.item_id for r in batch])
    folders: dict[str, Path] = {}
    doomed: dict[Path, list[tuple[str, int]]] = defaultdict(list)  # folder -> [(file name, bytes)]
    for rec in batch:
        klass = classes[rec.item_id]
        report.classes[klass] += 1
        keep = policy.keep_s("labelled" if klass == "unknown" else klass)
        if keep is None or now - rec.t < keep:
            continue
        hit = False
        for name in IMAGE_FIELDS:
            rel = getattr(rec, name)
            if not rel:
                continue
            try:
                path = _image_file(log_dir, rel, folders)
            except ImageError as err:
                report.problems.append(f"item {rec.item_id} {name}: {err} (left alone)")
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                if is_expired(path):
                    report.already_expired += 1
                else:
                    report.problems.append(
                        f"item {rec.item_id} {name}: {rel} is missing and was not expired by a retention run"
                    )
                continue
            doomed[path.parent].append((path.name, size))
            hit = True
            report.images_deleted += 1
            report.bytes_deleted += size
            if len(report.sample) < sample:
                report.sample.append(f"{rel} ({klass}, {size} bytes)")
        if hit:
            report.expired_items[klass] += 1
    if dry_run:
        return
    for folder, files in doomed.items():
        record_expired(folder, [n for n, _ in files])  # the tombstones first: a crash leaves no unexplained gap
        for n, _ in files:
            try:
                os.unlink(folder / n)
            except FileNotFoundError:
                pass
