"""Monitoring of the line controller: Prometheus metrics and the live status line.

:class:`LineMetrics` holds the controller's metrics in a *private*
:class:`~prometheus_client.CollectorRegistry` (one per controller, so tests and
several controllers in one process never share counters).  :meth:`LineMetrics.serve`
exposes them over HTTP, bound to loopback unless the configuration names
another address: ``prometheus_client.start_http_server`` would otherwise listen
on every interface.

:class:`StatusLine` writes a one-line live status to stderr: rewritten in place
when stderr is a terminal, one line per interval otherwise (logs, CI).

Metric names
------------
``sorter_line_items_total{lane, delivery}``
    Items decided, by the lane sent to the PLC and the delivery outcome
    (``acked``, ``late``, ``undelivered``, ``rejected``).  An item reaches its
    lane only when ``delivery="acked"``; every other item goes to ``manual``.
``sorter_line_decision_latency_seconds``
    Histogram of item available -> lane acknowledged by the PLC.
``sorter_line_deadline_misses_total``
    Items whose decision was not confirmed by the PLC in time (overload included).
``sorter_line_overload_total``
    Items whose deadline had passed before scoring could start.
``sorter_line_undelivered_total``
    Decisions that never reached the PLC (link down or faulted).
``sorter_line_plc_link_state{state}``
    1 for the current link state (connected, connecting, down, faulted), 0 otherwise.
``sorter_line_in_flight``
    Items being scored, recorded or delivered.
``sorter_line_hazard_energy_wh_total``
    Known rated energy of the items that went to the hazard lane (from the
    source's truth; 0 where unknown).
``sorter_line_audit_commit_seconds``
    Histogram of audit-log transactions (write, plus fsync with ``audit.sync = "full"``).
    A decision is sent only after its commit, so commits that take tens of
    milliseconds show up here before they show up as deadline misses.
``sorter_line_audit_durability_lag_seconds``
    Histogram, one per flush (``audit.sync = "interval"``): how long the oldest
    row the flush made durable had waited.  A power cut loses at most this
    window; alert when it passes a few hundred milliseconds.
``sorter_line_reconciliation_gaps``
    Items in a gap between the audit log and the PLC's counters or mailbox,
    found at start-up (see :mod:`sorter.line.reconcile`).
``sorter_line_plc_protocol_faults_total{kind}``
    PLC protocol faults: header registers changed, undefined ack status, ack
    for a seq not written (see ``docs/plc-interface.md``).
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sorter.errors import ConfigError
from sorter.lanes import Lane

logger = logging.getLogger(__name__)

__all__ = ["LINK_STATES", "LineMetrics", "StatusLine", "format_status"]

LINK_STATES = ("connected", "connecting", "down", "faulted")

_LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.09, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_COMMIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class LineMetrics:
    """The controller's Prometheus metrics, in their own registry.

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Where to register; a new private registry by default.

    Examples
    --------
    >>> m = LineMetrics()
    >>> m.record_item(lane="li_ion", delivery="acked", latency_s=0.012, overload=False, hazard_wh=None)
    >>> m.registry.get_sample_value("sorter_line_items_total", {"lane": "li_ion", "delivery": "acked"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.items = Counter(
            "sorter_line_items", "Items decided, by lane sent and delivery outcome", ["lane", "delivery"], registry=r
        )
        self.latency = Histogram(
            "sorter_line_decision_latency_seconds",
            "Item available to lane acknowledged by the PLC",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.deadline_misses = Counter(
            "sorter_line_deadline_misses", "Items not confirmed by the PLC before their deadline", registry=r
        )
        self.overload = Counter(
            "sorter_line_overload", "Items whose deadline passed before scoring started", registry=r
        )
        self.undelivered = Counter("sorter_line_undelivered", "Decisions that never reached the PLC", registry=r)
        self.link_state = Gauge("sorter_line_plc_link_state", "1 for the current PLC link state", ["state"], registry=r)
        self.model_swaps = Counter(
            "sorter_line_model_swaps", "Model swaps on the running line, by outcome", ["outcome"], registry=r
        )
        self.sensor_alarm = Gauge(
            "sorter_line_sensor_status", "1 for each sensor's current health status", ["sensor", "status"], registry=r
        )
        self.in_flight = Gauge("sorter_line_in_flight", "Items being scored, recorded or delivered", registry=r)
        self.audit_commit = Histogram(
            "sorter_line_audit_commit_seconds",
            "Audit-log transactions (write and fsync), one per group commit",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.audit_durability_lag = Histogram(
            "sorter_line_audit_durability_lag_seconds",
            "How long committed audit rows waited to be flushed to disk, one per flush (audit.sync = interval)",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.reconciliation_gaps = Gauge(
            "sorter_line_reconciliation_gaps",
            "Items in a gap between the audit log and the PLC counters at start-up",
            registry=r,
        )
        self.plc_protocol_faults = Counter(
            "sorter_line_plc_protocol_faults",
            "PLC protocol faults (header change, undefined ack status, ...)",
            ["kind"],
            registry=r,
        )
        self.hazard_energy = Counter(
            "sorter_line_hazard_energy_wh", "Known rated energy of items sent to the hazard lane (Wh)", registry=r
        )
        for state in LINK_STATES:
            self.link_state.labels(state=state).set(0)
        self._server: Any = None
        self._thread: Any = None

    def record_item(
        self, *, lane: str, delivery: str, latency_s: float | None, overload: bool, hazard_wh: float | None
    ) -> None:
        """Count one finished item."""
        self.items.labels(lane=lane, delivery=delivery).inc()
        if delivery == "acked" and latency_s is not None:
            self.latency.observe(latency_s)
        if delivery == "late":
            self.deadline_misses.inc()
        if overload:
            self.overload.inc()
        if delivery == "undelivered":
            self.undelivered.inc()
        if delivery == "acked" and lane == Lane.HAZARD and hazard_wh:
            self.hazard_energy.inc(hazard_wh)

    def set_sensor_alarm(self, sensor: str, status: str) -> None:
        """1 for the sensor's current health status (ok, not_reporting, stuck, saturated)."""
        for st in ("ok", "not_reporting", "stuck", "saturated"):
            self.sensor_alarm.labels(sensor=sensor, status=st).set(1.0 if st == status else 0.0)

    def set_link_state(self, state: str) -> None:
        for s in LINK_STATES:
            self.link_state.labels(state=s).set(1 if s == state else 0)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``address:port`` in a daemon thread (loopback by default)."""
        if self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as err:
            raise ConfigError(
                f"metrics: cannot listen on {address}:{port} ({err}); set metrics.port to a free "
                "port, or metrics.enabled = false"
            ) from err
        logger.info("metrics on http://%s:%d/metrics", address, port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if serving."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def format_status(s: Mapping[str, Any]) -> str:
    """One status line from a controller snapshot (see ``Controller.snapshot``).

    Examples
    --------
    >>> format_status({"items": 3, "rate_hz": 2.0, "lanes": {"manual": 3}, "in_flight": 0,
    ...                "p99_ms": None, "misses": 0, "undelivered": 0, "link": "down"})
    'items 3 (2.0/s) | manual 3 | in flight 0 | p99 - | late 0 | undelivered 0 | PLC down'
    """
    lanes = " ".join(f"{k} {v}" for k, v in sorted(s.get("lanes", {}).items())) or "-"
    p99 = s.get("p99_ms")
    p99_text = "-" if p99 is None else f"{p99:.0f} ms"
    return (
        f"items {s.get('items', 0)} ({s.get('rate_hz', 0.0):.1f}/s) | {lanes} | in flight {s.get('in_flight', 0)}"
        f" | p99 {p99_text} | late {s.get('misses', 0)} | undelivered {s.get('undelivered', 0)}"
        f" | PLC {s.get('link', '?')}"
    )


class StatusLine:
    """A one-line live status on a terminal stream.

    Parameters
    ----------
    snapshot : callable
        Returns the mapping that :func:`format_status` renders.
    stream : text stream
        Default ``sys.stderr``.
    interval_s : float
        Refresh period.
    tty : bool, optional
        Rewrite in place (default: whether ``stream`` is a terminal).
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        stream: TextIO | None = None,
        interval_s: float = 1.0,
        tty: bool | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError, io.UnsupportedOperation):
                tty = False
        self.tty = tty
        self._shown = False
        self._last = 0.0

    def update(self, force: bool = False) -> None:
        """Show the status now if ``interval_s`` has passed (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        text = format_status(self.snapshot())
        try:
            if self.tty:
                self.stream.write("\r\x1b[2K" + text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not stop the line
            return
        self._shown = True

    def finish(self) -> None:
        """Show the final status and end the line on a terminal."""
        self.update(force=True)
        if self.tty and self._shown:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
