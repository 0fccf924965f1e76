"""What the station reads from the line: the audit log and the line's log, read-only.

- :class:`AuditReader` opens the controller's audit database with a read-only
  SQLite URI (``mode=ro``); the station never writes it, never holds a write lock,
  and tolerates columns and tables it does not know (or that are missing: a
  ``novelty`` column, an open-cases table, appear only when the audit has them).
- :class:`LineLog` indexes ``items.jsonl`` incrementally (item id -> byte offset) so
  one item's record is read with one seek, whatever the log's length.
- :class:`LineWatcher` does the periodic work off the request path: new audit rows ->
  per-minute counts, the review queue (manual items and a random spot-check sample of
  the other lanes), the log index; pages only read its snapshot.

Why this module is long (about 670 lines): the three are one read side of the line —
the watcher's snapshot joins the audit reader's rows with the log index's offsets, one
segment at a time on a rotated log — and split apart they would pass each other their
private cursors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sorter.errors import ImageError, LogFormatError, SorterError
from sorter.line.audit.store import ROW_COUNT_TABLE
from sorter.logformat import ITEMS_FILE, layout, locate_line, parse_record, read_meta, resolve_image_path, segment_file
from sorter.logformat.segments import read_header
from sorter.readings import ItemRecord, LogMeta

from .store import QueueItem, StationStore

logger = logging.getLogger(__name__)

__all__ = ["AuditReader", "LineLog", "LineWatcher", "LineSnapshot", "minute_chart", "spot_checked"]

UNDELIVERED: Final = ("late", "undelivered", "rejected")
"""Deliveries after which the item went to the manual lane whatever was decided."""


class AuditReader:
    """Read-only access to the controller's audit log.

    Parameters
    ----------
    path : str or path
        The audit database (``audit.path`` of ``line.toml``).  A missing file is not an
        error: the controller may not have started yet (:attr:`available` is False).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._columns: set[str] = set()
        self._tables: set[str] = set()
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not self.path.is_file():
            return None
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=2.0)
            conn.execute("PRAGMA query_only=ON")
            self._tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "decisions" not in self._tables:
                conn.close()
                raise SorterError(
                    f"{self.path} has no 'decisions' table: it is not a sorter audit log; "
                    "point audit.path in line.toml at the controller's audit database"
                )
            self._columns = {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
        except sqlite3.Error as err:
            logger.warning("audit log %s not readable yet: %s", self.path, err)
            return None
        self._conn = conn
        return conn

    @property
    def available(self) -> bool:
        with self._lock:
            return self._connect() is not None

    @property
    def columns(self) -> set[str]:
        return set(self._columns)

    @property
    def tables(self) -> set[str]:
        return set(self._tables)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read query; [] while the audit log does not exist yet."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return []
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as err:
                # A schema change by a newer controller, a file replaced: reopen next time.
                logger.warning("audit log %s: %s; reopening", self.path, err)
                conn.close()
                self._conn = None
                raise SorterError(f"audit log {self.path}: cannot read ({err})") from err

    def optional_column(self, *candidates: str) -> str | None:
        """The first of ``candidates`` the decisions table has (columns that newer controllers add)."""
        self.available  # noqa: B018 - connects and learns the columns
        for name in candidates:
            if name in self._columns:
                return name
        return None

    def decision(self, item_id: str) -> dict[str, Any] | None:
        """The audit row of an item as a dict (every column the table has)."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            cur = conn.execute("SELECT * FROM decisions WHERE item_id = ?", (item_id,))
            row = cur.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in cur.description], row))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class LineLog:
    """The line's ``sorter-log/1`` directory, indexed in the station store.

    Parameters
    ----------
    log_dir : str or path or None
        ``line.log_dir``; ``None`` or ``""`` for a line without a log (a simulated
        source): items then show their audit row only.
    store : StationStore
        Holds the index (item id -> line, byte offsets).
    """

    MAX_READ: Final = 8 << 20  # bytes indexed per call: a long log is caught up in steps

    def __init__(self, log_dir: str | Path | None, store: StationStore) -> None:
        self.log_dir = Path(log_dir).resolve() if log_dir else None
        self.store = store
        self._meta: LogMeta | None = None
        self.problem: str | None = None

    @property
    def meta(self) -> LogMeta:
        if self._meta is None:
            self._meta = read_meta(self.log_dir) if self.log_dir else LogMeta()
        return self._meta

    def index_new(self) -> int:
        """Index lines appended since the last call; returns how many items were added."""
        if self.log_dir is None:
            return 0
        try:
            kind = layout(self.log_dir)
        except LogFormatError as err:
            self.problem = str(err)
            return 0
        if kind == "rotated":
            return self._index_segments()
        path = self.log_dir / ITEMS_FILE
        offset = int(self.store.get_setting("log_offset", "0") or 0)
        line_no = int(self.store.get_setting("log_next_line", "1") or 1)
        return self._index_file(path, offset, line_no, None)[0]

    def _index_file(self, path: Path, offset: int, line_no: int, segment: int | None) -> tuple[int, bool]:
        """Index complete lines of ``path`` from ``offset`` (at most :attr:`MAX_READ` bytes);
        (items added, whether everything up to the last newline was read)."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self.problem = f"{path} does not exist (yet)"
            return 0, False
        if size < offset:
            self.problem = (
                f"{path} is shorter than what was already read ({size} < {offset} bytes): the log "
                "was truncated or replaced; start the station with a new store for a new log"
            )
            return 0, False
        self.problem = None
        if size == offset:
            return 0, True
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(min(size - offset, self.MAX_READ))
        end = data.rfind(b"\n")
        if end < 0:
            return 0, size - offset <= self.MAX_READ  # an incomplete last line: read it once it is complete
        rows = []
        pos = 0
        for raw in data[: end + 1].split(b"\n")[:-1]:
            start = offset + pos
            pos += len(raw) + 1
            try:
                obj = json.loads(raw)
                item_id = obj.get("item_id") if isinstance(obj, dict) else None
            except (ValueError, UnicodeDecodeError):
                item_id = None
            if isinstance(item_id, str) and item_id:
                rows.append((item_id, line_no, start, offset + pos))
            line_no += 1
        self.store.add_log_index(rows, offset + end + 1, line_no, segment)
        return len(rows), offset + len(data) >= size

    def _index_segments(self, max_segments: int = 64) -> int:
        """Index a rotated log: on from the segment read last, into the next ones once they exist."""
        assert self.log_dir is not None
        seg = int(self.store.get_setting("log_segment", "1") or 1)
        added = 0
        for _ in range(max_segments):
            offset = int(self.store.get_setting("log_offset", "0") or 0)
            line_no = int(self.store.get_setting("log_next_line", "1") or 1)
            path = self.log_dir / segment_file(seg)
            try:
                hdr = read_header(path, seg)
            except FileNotFoundError:
                self.problem = f"{path} does not exist (yet)"
                return added
            except LogFormatError as err:
                self.problem = str(err)
                return added
            if offset < hdr.end:
                offset, line_no = hdr.end, hdr.first_line
            nxt = self.log_dir / segment_file(seg + 1)
            sealed = nxt.exists()  # looked at first: the segment is then complete when read below
            n, complete = self._index_file(path, offset, line_no, seg)
            added += n
            if not (complete and sealed):
                return added
            # on to the next segment, whose header says where its lines start
            nh = read_header(nxt, seg + 1)
            self.store.add_log_index([], 0, nh.first_line, seg + 1)
            seg += 1
        return added

    def record(self, item_id: str) -> ItemRecord | None:
        """The item's validated record, or ``None`` when the log has no such item."""
        if self.log_dir is None:
            return None
        pos = self.store.log_position(item_id)
        if pos is None:
            return None
        line_no, start, end = pos
        path = self.log_dir / ITEMS_FILE
        if not path.exists():  # a rotated log: the segment holding the line, from the segment headers
            try:
                path = self.log_dir / segment_file(locate_line(self.log_dir, line_no).segment)
            except LogFormatError as err:
                logger.warning("%s: %s", self.log_dir, err)
                return None
        with open(path, "rb") as fh:
            fh.seek(start)
            raw = fh.read(end - start)
        try:
            rec = parse_record(json.loads(raw), line_no=line_no, where=str(path))
        except (ValueError, LogFormatError) as err:
            logger.warning("%s line %d: %s", path, line_no, err)
            return None
        return rec if rec.item_id == item_id else None

    def image_path(self, record: ItemRecord, field_name: str) -> Path:
        """The file of one of the record's images, refused outside the log directory.

        Raises
        ------
        UnsafePathError
            The path is absolute, leaves the log directory or is a symlink pointing out.
        ImageError
            The record has no such image.
        """
        if field_name not in ("xray_low", "xray_high", "rgb") or self.log_dir is None:
            raise ImageError(f"no image {field_name!r}")
        rel = getattr(record, field_name)
        if rel is None:
            raise ImageError(f"item {record.item_id!r} has no {field_name} image")
        path = resolve_image_path(self.log_dir, rel)
        if not path.is_relative_to(self.log_dir):  # the log directory is resolved: belt and braces
            raise ImageError(f"image path {rel!r} leaves the log directory")
        return path


# ---------------------------------------------------------------- the watcher


def spot_checked(item_id: str, fraction: float, salt: str) -> bool:
    """Whether an item of another lane is drawn for a spot check.

    A keyed hash of the item id, so the draw is random across items, the same for an
    item every time it is looked at, and cannot be predicted from the id alone.
    """
    if fraction <= 0:
        return False
    h = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


@dataclass
class _Minute:
    lanes: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    items: int = 0


@dataclass
class LineSnapshot:
    """What the status page shows (plain data, JSON-ready via :meth:`to_json`)."""

    at: float = 0.0
    audit: bool = False
    items_total: int = 0
    rate_per_s: float = 0.0
    last_item_age_s: float | None = None
    lanes_hour: dict[str, int] = field(default_factory=dict)
    deliveries_hour: dict[str, int] = field(default_factory=dict)
    minutes: list[dict[str, Any]] = field(default_factory=list)
    model_in_charge: str | None = None
    plc_link: str = "unknown"
    in_flight: float | None = None
    sensors: dict[str, str] = field(default_factory=dict)  # sensor -> ok / not_reporting / stuck / saturated
    pending: int = 0
    alarms: list[str] = field(default_factory=list)
    queue: dict[str, int] = field(default_factory=dict)
    open_cases: int | None = None
    durability_lag_s: float | None = None
    log_problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LineWatcher:
    """Reads what is new in the audit log and the line's log, a little at a time.

    Parameters
    ----------
    audit : AuditReader
    log : LineLog
    store : StationStore
    spot_check : float
        Share of items decided for another lane that are put in the review queue too.
    metrics_url : str or None
        The controller's Prometheus endpoint (for the PLC link state), when enabled.
    clock : callable
        Wall-clock time (tests pass a fake).
    """

    BATCH: Final = 20_000

    def __init__(
        self,
        audit: AuditReader,
        log: LineLog,
        store: StationStore,
        *,
        spot_check: float = 0.02,
        metrics_url: str | None = None,
        clock: Any = time.time,
    ) -> None:
        if not 0.0 <= spot_check <= 1.0:
            raise SorterError(f"spot-check share {spot_check!r} must be between 0 and 1 (e.g. 0.02 for 2 %)")
        self.audit, self.log, self.store = audit, log, store
        self.spot_check = spot_check
        self.metrics_url = metrics_url
        self.clock = clock
        self._salt = store.get_setting("spot_salt") or ""
        if not self._salt:
            import secrets

            self._salt = secrets.token_hex(16)
            store.set_setting("spot_salt", self._salt)
        self._minutes: dict[int, _Minute] = {}
        self._recent: deque[float] = deque()  # t_decided of the last minute's rows
        self._pending: dict[int, int] = {}  # audit id -> minute, of rows read while still pending
        self._last_id: int | None = None
        self._model: str | None = None
        self._items_total = 0
        self._last_t: float | None = None
        self._lock = threading.Lock()
        self.snapshot = LineSnapshot()

    def _start_id(self, since: float) -> int:
        """The first audit id decided at or after ``since`` (binary search on the row id; ids follow time)."""
        # Two subqueries: SQLite reads a lone MIN or MAX off the row id's b-tree, but scans the
        # whole table for both in one SELECT (seconds at 30 days of rows).
        rows = self.audit.query("SELECT (SELECT MIN(id) FROM decisions), (SELECT MAX(id) FROM decisions)")
        if not rows or rows[0][0] is None:
            return 0
        lo, hi = int(rows[0][0]), int(rows[0][1])
        while lo < hi:
            mid = (lo + hi) // 2
            r = self.audit.query("SELECT id, t_decided FROM decisions WHERE id >= ? ORDER BY id LIMIT 1", (mid,))
            if not r:
                hi = mid
            elif r[0][1] < since:
                lo = int(r[0][0]) + 1
            else:
                hi = mid
        return lo - 1

    def _rows_up_to(self, last_id: int) -> int:
        """Rows with an id up to ``last_id``: all rows (the log's row count) less the last hour's.

        Counting the rows up to ``last_id`` would walk every page before it; the controller keeps the
        number of rows in ``decision_count`` (issue 19), so only the last hour's rows are counted.  An
        audit log written by an older controller has no count: then ``COUNT(*)`` it is.
        """
        if ROW_COUNT_TABLE in self.audit.tables:
            sql = "SELECT (SELECT n FROM decision_count) - (SELECT COUNT(*) FROM decisions WHERE id > ?)"
        else:
            sql = "SELECT COUNT(*) FROM decisions WHERE id <= ?"
        r = self.audit.query(sql, (last_id,))
        return int(r[0][0]) if r and r[0][0] is not None else 0

    def refresh(self) -> LineSnapshot:
        """Read what is new; returns (and keeps) the new snapshot.  Never raises for line trouble."""
        with self._lock:
            try:
                self._refresh()
            except SorterError as err:
                logger.warning("station refresh: %s", err)
                self.snapshot.alarms = [str(err)]
            return self.snapshot

    def _refresh(self) -> None:
        now = self.clock()
        self.log.index_new()
        snap = LineSnapshot(at=now, audit=self.audit.available, log_problem=self.log.problem)
        if snap.audit:
            self._read_audit(now)
            self._sync_queue()
            snap.pending = int(self.audit.query("SELECT COUNT(*) FROM decisions WHERE delivery = 'pending'")[0][0])
            self._optional(snap, now)
        snap.items_total = self._items_total
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()
        snap.rate_per_s = len(self._recent) / 60.0
        snap.last_item_age_s = None if self._last_t is None else max(0.0, now - self._last_t)
        snap.model_in_charge = self._model
        this_minute = int(now // 60)
        for m in [k for k in self._minutes if k <= this_minute - 60]:
            del self._minutes[m]
        lanes: dict[str, int] = {}
        deliveries: dict[str, int] = {}
        for k in range(this_minute - 59, this_minute + 1):
            b = self._minutes.get(k, _Minute())
            for lane, n in b.lanes.items():
                lanes[lane] = lanes.get(lane, 0) + n
            for d, n in b.deliveries.items():
                deliveries[d] = deliveries.get(d, 0) + n
            snap.minutes.append(
                {
                    "minute": k * 60,
                    "items": b.items,
                    "lanes": dict(b.lanes),
                    "manual_rate": (b.lanes.get("manual", 0) / b.items) if b.items else None,
                }
            )
        snap.lanes_hour, snap.deliveries_hour = lanes, deliveries
        snap.plc_link, snap.in_flight, snap.sensors = self._controller_metrics()
        snap.queue = self.store.queue_counts()
        snap.alarms = self._alarms(snap)
        self.snapshot = snap

    def _read_audit(self, now: float) -> None:
        if self._last_id is None:
            self._last_id = self._start_id(now - 3600.0)
            self._items_total = self._rows_up_to(self._last_id)
        rows = self.audit.query(
            "SELECT id, lane, delivery, t_decided, model_id FROM decisions WHERE id > ? ORDER BY id LIMIT ?",
            (self._last_id, self.BATCH),
        )
        for rid, lane, delivery, t_decided, model_id in rows:
            self._last_id = rid
            self._items_total += 1
            minute = int(t_decided // 60)
            b = self._minutes.setdefault(minute, _Minute())
            b.items += 1
            b.lanes[lane] = b.lanes.get(lane, 0) + 1
            b.deliveries[delivery] = b.deliveries.get(delivery, 0) + 1
            if delivery == "pending":
                self._pending[rid] = minute
            if t_decided >= now - 60:
                self._recent.append(t_decided)
            self._model = model_id
            self._last_t = t_decided if self._last_t is None else max(self._last_t, t_decided)
        self._settle_pending()

    def _settle_pending(self) -> None:
        """Rows read while ``pending`` have had their delivery recorded since: count its outcome instead."""
        if not self._pending:
            return
        ids = list(self._pending)[:900]  # under SQLite's parameter limit; the rest next time
        rows = self.audit.query(
            f"SELECT id, delivery FROM decisions WHERE id IN ({', '.join('?' * len(ids))})", tuple(ids)
        )
        for rid, delivery in rows:
            if delivery == "pending":
                continue
            minute = self._pending.pop(rid)
            b = self._minutes.get(minute)
            if b is not None:
                left = b.deliveries.get("pending", 1) - 1
                if left > 0:
                    b.deliveries["pending"] = left
                else:
                    b.deliveries.pop("pending", None)
                b.deliveries[delivery] = b.deliveries.get(delivery, 0) + 1

    def _sync_queue(self) -> None:
        """Queue decided items: every item that went to manual, and a spot-check sample of the rest.

        Only rows whose delivery is settled are read (an item still ``pending`` may yet go to
        manual), so the queue never misses an item that ended in the manual lane.
        """
        synced = self.store.last_audit_id()
        first_pending = self.audit.query("SELECT MIN(id) FROM decisions WHERE delivery = 'pending'")
        limit = first_pending[0][0] if first_pending and first_pending[0][0] is not None else None
        sql = "SELECT id, item_id, lane, delivery, t_item, source_line FROM decisions WHERE id > ?"
        args: tuple[Any, ...] = (synced,)
        if limit is not None:
            sql += " AND id < ?"
            args += (limit,)
        rows = self.audit.query(sql + " ORDER BY id LIMIT ?", args + (self.BATCH,))
        if not rows:
            return
        items = []
        for rid, item_id, lane, delivery, t_item, source_line in rows:
            if lane == "manual" or delivery in UNDELIVERED:
                items.append(
                    QueueItem(rid, item_id, "manual", lane if delivery == "acked" else "manual", t_item, source_line)
                )
            elif delivery == "acked" and spot_checked(item_id, self.spot_check, self._salt):
                items.append(QueueItem(rid, item_id, "spot", lane, t_item, source_line))
        self.store.sync_queue(items, rows[-1][0])

    def _optional(self, snap: LineSnapshot, now: float) -> None:
        """Facts that only some audit logs hold (newer controllers): shown when present."""
        tables = self.audit.tables
        if "cases" in tables:
            try:
                cols = {r[1] for r in self.audit.query("PRAGMA table_info(cases)")}
                if "closed_at" in cols:
                    snap.open_cases = int(self.audit.query("SELECT COUNT(*) FROM cases WHERE closed_at IS NULL")[0][0])
                elif "state" in cols:
                    snap.open_cases = int(self.audit.query("SELECT COUNT(*) FROM cases WHERE state = 'open'")[0][0])
            except SorterError:
                pass
        elif "events" in tables:  # the line's case station records its cases as events (sorter.line.casestation)
            try:
                snap.open_cases = int(
                    self.audit.query(
                        "SELECT COUNT(*) FROM (SELECT json_extract(detail, '$.case_id') FROM events "
                        "WHERE kind = 'case_open' EXCEPT SELECT json_extract(detail, '$.case_id') FROM events "
                        "WHERE kind = 'case_close')"
                    )[0][0]
                )
            except SorterError:
                pass
        col = self.audit.optional_column("t_durable", "t_synced")
        if col is not None:
            r = self.audit.query(f"SELECT MAX({col}) FROM decisions")  # noqa: S608 - a known column name
            if r and r[0][0] is not None and self._last_t is not None:
                snap.durability_lag_s = max(0.0, self._last_t - float(r[0][0]))

    def _controller_metrics(self) -> tuple[str, float | None, dict[str, str]]:
        """PLC link state, items in flight and sensor health from the controller's Prometheus endpoint."""
        if not self.metrics_url:
            return "unknown (metrics off)", None, {}
        try:
            from prometheus_client.parser import text_string_to_metric_families

            with urllib.request.urlopen(self.metrics_url, timeout=0.5) as resp:  # noqa: S310 - configured URL
                text = resp.read(2 << 20).decode("utf-8", "replace")
        except (OSError, ValueError):
            return "unknown (controller not answering)", None, {}
        state, in_flight, sensors = "unknown", None, {}
        try:
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name == "sorter_line_plc_link_state" and s.value == 1:
                        state = s.labels.get("state", "unknown")
                    elif s.name == "sorter_line_in_flight":
                        in_flight = s.value
                    elif s.name == "sorter_line_sensor_status" and s.value == 1:
                        sensors[s.labels.get("sensor", "?")] = s.labels.get("status", "?")
        except ValueError as err:
            logger.warning("controller metrics at %s unreadable: %s", self.metrics_url, err)
        return state, in_flight, sensors

    def _alarms(self, snap: LineSnapshot) -> list[str]:
        alarms = []
        if not snap.audit:
            alarms.append(f"no audit log at {self.audit.path}: is the controller running?")
        if snap.log_problem:
            alarms.append(snap.log_problem)
        last = self._minutes.get(int(snap.at // 60) - 1, _Minute())
        now_m = self._minutes.get(int(snap.at // 60), _Minute())
        for d, text in (
            ("undelivered", "decisions not delivered to the PLC"),
            ("late", "deadline misses"),
            ("rejected", "decisions refused by the PLC"),
        ):
            n = last.deliveries.get(d, 0) + now_m.deliveries.get(d, 0)
            if n:
                alarms.append(f"{n} {text} in the last two minutes (items went to manual)")
        if snap.plc_link not in ("connected",) and not snap.plc_link.startswith("unknown"):
            alarms.append(f"PLC link {snap.plc_link}")
        for sensor, status in sorted(snap.sensors.items()):
            if status != "ok":
                alarms.append(f"sensor {sensor}: {status.replace('_', ' ')} (lead_acid lane closed until it recovers)")
        if snap.last_item_age_s is not None and snap.last_item_age_s > 60 and snap.rate_per_s == 0:
            alarms.append(f"no item decided for {snap.last_item_age_s:.0f} s")
        if snap.queue.get("open", 0) > 200:
            alarms.append(f"{snap.queue['open']} items wait for a verdict")
        return alarms


def minute_chart(minutes: list[dict[str, Any]], width: int = 600, height: int = 120) -> str:
    """A small inline SVG of items per minute by lane over the last hour (no JavaScript library)."""
    colours = {"lead_acid": "#4a6fa5", "li_ion": "#d9822b", "hazard": "#c23030", "manual": "#888"}
    n = max(len(minutes), 1)
    top = max([m["items"] for m in minutes] + [1])
    bw = width / n
    parts = [
        f'<svg viewBox="0 0 {width} {height + 14}" class="chart" role="img" '
        f'aria-label="items per minute by lane, last hour">'
    ]
    for i, m in enumerate(minutes):
        y = float(height)
        for lane in ("lead_acid", "li_ion", "hazard", "manual"):
            v = m["lanes"].get(lane, 0)
            if not v:
                continue
            h = v / top * height
            y -= h
            parts.append(
                f'<rect x="{i * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                f'fill="{colours[lane]}"><title>{lane}: {v}</title></rect>'
            )
        other = m["items"] - sum(m["lanes"].get(k, 0) for k in colours)
        if other > 0:
            h = other / top * height
            y -= h
            parts.append(
                f'<rect x="{i * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" fill="#6a6"/>'
            )
    pts = [
        (i * bw + bw / 2, height - (m["manual_rate"] or 0) * height)
        for i, m in enumerate(minutes)
        if m["manual_rate"] is not None
    ]
    if len(pts) > 1:
        parts.append(
            '<polyline fill="none" stroke="#000" stroke-width="1.5" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            + '"><title>manual share</title></polyline>'
        )
    parts.append(
        f'<text x="0" y="{height + 12}" font-size="10">-60 min</text>'
        f'<text x="{width - 30}" y="{height + 12}" font-size="10">now</text>'
        f'<text x="2" y="10" font-size="10">{top}/min</text></svg>'
    )
    return "".join(parts)


def finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
