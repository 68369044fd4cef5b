"""The daemon's small HTTP endpoint: ``/healthz``, ``/status`` (JSON), ``/metrics`` (Prometheus).

Default port 9108 (``--http-port``), bound to 127.0.0.1 unless told otherwise: it reports on the
site, it controls nothing. ``/healthz`` answers 503 when the loop has not completed a tick within
its staleness window or runs on no known price, and 503 with a JSON body
``{"healthy": false, "unhealthy_causes": [...]}`` when the status names causes (a non-empty list
``unhealthy_causes``, e.g. ``["store_unavailable: disk I/O error"]``). Metrics use
prometheus_client's exposition so scrapers get the standard text format.

Input rejections: ``hashflex_input_rejections_total{kind, reason}`` (a counter) sums the status
entries ``input_rejections`` (MQTT ingest, ``MqttIngest.rejection_stats()``) and
``price_feed.rejections`` (HTTP price feed rows), both ``{kind: {reason_class: n}}``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)
DEFAULT_HTTP_PORT = 9108


def input_rejections(status: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """``(kind, reason) -> count`` from the status: ingest's ``input_rejections`` plus the price
    feed's ``price_feed.rejections``. Malformed entries are skipped (the endpoint must answer)."""
    totals: dict[tuple[str, str], int] = {}
    feed = status.get("price_feed")
    sources = (status.get("input_rejections"), feed.get("rejections") if isinstance(feed, Mapping) else None)
    for source in sources:
        if not isinstance(source, Mapping):
            continue
        for kind, reasons in source.items():
            if not isinstance(reasons, Mapping):
                continue
            for reason, count in reasons.items():
                if isinstance(count, (int, float)):
                    key = (str(kind), str(reason))
                    totals[key] = totals.get(key, 0) + int(count)
    return totals


class _RejectionCollector:
    """Exposes the rejection counts of the status being rendered as one counter family (the counts
    live in ingest and the price feed; a collector mirrors them, as prometheus_client advises)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("hashflex_input_rejections",
                                     "inbound messages and price rows rejected, by kind and reason class",
                                     labels=["kind", "reason"])
        for (kind, reason), count in sorted(self.counts.items()):
            family.add_metric([kind, reason], count)
        yield family


def unhealthy_causes(status: Mapping[str, Any]) -> list[str]:
    """The status's ``unhealthy_causes`` as a list of strings ([] if absent or malformed)."""
    causes = status.get("unhealthy_causes")
    if isinstance(causes, (list, tuple)):
        return [str(c) for c in causes]
    return []


class StatusMetrics:
    """Prometheus gauges filled from the loop's status dictionary at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()  # one render at a time: the collectors hold the status being rendered
        self.rejections = _RejectionCollector()
        self.registry.register(self.rejections)  # type: ignore[arg-type]
        self.healthy = Gauge("hashflex_healthy", "1 when inputs are fresh and the loop ticks", registry=self.registry)
        self.tick_age = Gauge("hashflex_last_tick_age_seconds", "seconds since the last completed tick", registry=self.registry)
        self.units = Gauge("hashflex_units_running", "miners running (any mode)", registry=self.registry)
        self.solve_seconds = Gauge("hashflex_last_solve_seconds", "wall time of the last solve", registry=self.registry)
        self.dr_active = Gauge("hashflex_dr_events_active", "DR events in force", registry=self.registry)
        self.counter = Gauge("hashflex_events_total", "loop counters", ["counter"], registry=self.registry)

    def render(self, status: dict[str, Any]) -> bytes:
        with self._lock:
            return self._render(status)

    def _render(self, status: dict[str, Any]) -> bytes:
        self.rejections.counts = input_rejections(status)
        self.healthy.set(1.0 if status.get("healthy") else 0.0)
        self.tick_age.set(status.get("last_tick_age_s") or -1.0)
        self.units.set(status.get("units_running", 0))
        self.solve_seconds.set((status.get("last_solve") or {}).get("seconds") or 0.0)
        self.dr_active.set(len(status.get("active_dr_events", [])))
        for name, value in status.get("counters", {}).items():
            self.counter.labels(counter=name).set(value)
        return generate_latest(self.registry)


class StatusServer:
    """Serve ``status_fn(now)`` on a thread; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(self, status_fn: Callable[[datetime], dict[str, Any]], clock: Callable[[], datetime],
                 host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT) -> None:
        metrics = StatusMetrics()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    status = status_fn(clock())
                except Exception as exc:  # the endpoint must answer even if the loop is broken
                    log.exception("status failed")
                    status = {"healthy": False, "error": repr(exc)}
                if self.path == "/healthz":
                    causes = unhealthy_causes(status)
                    if causes:  # a named fault (e.g. the store cannot commit): say which
                        body = json.dumps({"healthy": False, "unhealthy_causes": causes}).encode()
                        self._send(503, body, "application/json")
                        return
                    code = 200 if status.get("healthy") else 503
                    self._send(code, b"ok\n" if code == 200 else b"unhealthy\n", "text/plain")
                elif self.path == "/status":
                    self._send(200, json.dumps(status, default=str).encode(), "application/json")
                elif self.path == "/metrics":
                    self._send(200, metrics.render(status), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="hashflex-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
