"""The daemon's HTTP endpoint: the dashboard at ``/`` (see :mod:`hashflex.web.app`), ``/healthz``,
``/status`` (JSON), ``/metrics`` (Prometheus), served by uvicorn (Starlette) on one port.

Default port 9108 (``--http-port``), bound to 127.0.0.1 unless told otherwise. Reads are open on
loopback; bound elsewhere they need a manager token, and writes (``POST /api/limits``) always do. ``/healthz`` answers 503 when the loop has not completed a tick within
its staleness window or runs on no known price, and 503 with a JSON body
``{"healthy": false, "unhealthy_causes": [...]}`` when the status names causes (a non-empty list
``unhealthy_causes``, e.g. ``["store_unavailable: disk I/O error"]``). Metrics use
prometheus_client's exposition so scrapers get the standard text format.

Input rejections: ``hashflex_input_rejections_total{kind, reason}`` (a counter) sums the status
entries ``input_rejections`` (MQTT ingest, ``MqttIngest.rejection_stats()``),
``price_feed.rejections`` (HTTP price feed rows), ``load_forecast_feed.rejections`` (HTTP load forecast
rows) and ``command_rejections`` (commands the loop refused
as implausible), all ``{kind: {reason_class: n}}``.

Available for curtailment: ``hashflex_available_for_curtailment_kw{means}`` (a gauge, kW) is what
the site can shed now from fresh miner telemetry, ``means="sleep"`` (a firmware command) and
``means="power_off"`` (a PDU outlet: the idle draw too, cold restart); their sum is the total. It is
the dashboard's ``now.curtailment`` (:func:`hashflex.web.curtailment.curtailment_section`).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

log = logging.getLogger(__name__)
DEFAULT_HTTP_PORT = 9108


def input_rejections(status: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """Rejection counts by kind and reason, from the status.

    Sums ingest's ``input_rejections``, the price feed's ``price_feed.rejections``, the load forecast
    feed's ``load_forecast_feed.rejections`` (issue 14) and the loop's
    ``command_rejections`` (DR, limits and AS commands out of bounds); malformed entries are skipped
    (the endpoint must answer).

    Parameters
    ----------
    status : Mapping[str, Any]
        The status document.

    Returns
    -------
    dict[tuple[str, str], int]
        ``(kind, reason) -> count``.
    """
    totals: dict[tuple[str, str], int] = {}
    feed, load_feed = status.get("price_feed"), status.get("load_forecast_feed")
    sources = (status.get("input_rejections"), feed.get("rejections") if isinstance(feed, Mapping) else None,
               load_feed.get("rejections") if isinstance(load_feed, Mapping) else None,
               status.get("command_rejections"))
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
                                     "inputs refused: MQTT messages, HTTP price and load forecast rows, commands out of bounds; by kind and "
                                     "reason class",
                                     labels=["kind", "reason"])
        for (kind, reason), count in sorted(self.counts.items()):
            family.add_metric([kind, reason], count)
        yield family


from hashflex.web.view import unhealthy_causes  # noqa: E402,F401 - re-exported: the one definition lives in web


class StatusMetrics:
    """Prometheus gauges filled from the loop's status and the dashboard document at scrape time.

    Every name here is listed in :data:`METRIC_NAMES` (the Grafana dashboard in deploy/grafana/ uses
    only these; a test checks it). Labelled gauges are cleared on every render, so a label that went
    away (a feed, a limit source) leaves no stale series, and a figure that is unknown has no series
    rather than a false 0.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()  # one render at a time: the collectors hold the status being rendered
        self.rejections = _RejectionCollector()
        self.registry.register(self.rejections)  # type: ignore[arg-type]
        r = self.registry
        self.healthy = Gauge("hashflex_healthy", "1 when /healthz answers ok (the loop ticks, prices known, state durable, broker up, no "
                             "ingest backlog), else 0", registry=r)
        self.tick_age = Gauge("hashflex_last_tick_age_seconds", "seconds since the last completed tick (-1: none yet)", registry=r)
        self.units = Gauge("hashflex_units_running", "miners hashing now, in any mode", registry=r)
        self.solve_seconds = Gauge("hashflex_last_solve_seconds", "wall time of the last optimisation, s (0 before the first)", registry=r)
        self.dr_active = Gauge("hashflex_dr_events_active", "demand-response events in force now", registry=r)
        self.counter = Gauge("hashflex_events_total", "counts since the daemon started, by counter (ticks, fallback_schedules, dr_accepted, "
                             "limits_rejected, price_model_fits, ...)", ["counter"], registry=r)
        self.grid_import = Gauge("hashflex_grid_import_kw", "grid import now (kW)", registry=r)
        self.limit = Gauge("hashflex_import_limit_kw", "the import limit binding now (kW); source: interconnection, DR:<event>, "
                           "limits:<manager>, ...", ["source"], registry=r)
        self.load = Gauge("hashflex_site_load_kw", "site load now (kW)", registry=r)
        self.renewable = Gauge("hashflex_renewable_kw", "on-site renewable output now (kW)", registry=r)
        self.price = Gauge("hashflex_price_usd_mwh", "energy price of the current interval at the site's settlement point ($/MWh)", registry=r)
        self.breakeven = Gauge("hashflex_breakeven_usd_mwh", "energy price above which a miner group loses money ($/MWh), by group", ["group"],
                               registry=r)
        self.noise_measured = Gauge("hashflex_noise_measured_dba", "last level measured at each receptor (dB(A))",
                                    ["receptor"], registry=r)
        self.noise_modelled = Gauge("hashflex_noise_modelled_dba", "level the noise model predicts at each receptor now (dB(A))",
                                    ["receptor"], registry=r)
        self.noise_cap = Gauge("hashflex_noise_cap_dba", "noise cap in force at each receptor now (dB(A))", ["receptor"], registry=r)
        self.carbon_used = Gauge("hashflex_carbon_used_kg", "CO2 emitted this local day/month (kg)", ["period"],
                                 registry=r)
        self.carbon_left = Gauge("hashflex_carbon_left_kg", "carbon budget left this local day/month (kg)", ["period"],
                                 registry=r)
        self.feed_age = Gauge("hashflex_feed_age_seconds", "seconds since each input feed was last heard", ["feed"],
                              registry=r)
        self.curtailable = Gauge("hashflex_available_for_curtailment_kw",
                                 "kW the site can shed now, from fresh miner telemetry, by means (sleep: a firmware "
                                 "command; power_off: a PDU outlet, cold restart)", ["means"], registry=r)
        self.ingest_lag = Gauge("hashflex_ingest_lag_seconds",
                                "how late the ingest handles messages: the smallest (handled - measured) of the "
                                "last few seconds of miner telemetry (s); high means the broker is queueing",
                                ["connection"], registry=r)
        self.store_queue = Gauge("hashflex_store_queue_depth", "writes waiting for the store's writer thread",
                                 registry=r)
        self.store_wait = Gauge("hashflex_store_queue_oldest_seconds",
                                "how long the oldest waiting store write has waited (s; 0 when none waits)", registry=r)
        self._labelled = (self.ingest_lag, self.limit, self.breakeven, self.noise_measured, self.noise_modelled, self.noise_cap,
                          self.carbon_used, self.carbon_left, self.feed_age, self.curtailable)

    def render(self, status: dict[str, Any], state: Mapping[str, Any] | None = None) -> bytes:
        """The exposition text of one scrape (one render at a time).

        Parameters
        ----------
        status : dict[str, Any]
            The loop's status document.
        state : Mapping[str, Any], optional
            The dashboard document (:func:`hashflex.web.view.dashboard_state`); None: no loop yet, so
            only the status gauges.

        Returns
        -------
        bytes
            Prometheus text format (prometheus_client ``generate_latest``).
        """
        with self._lock:
            return self._render(status, state)

    def _render(self, status: dict[str, Any], state: Mapping[str, Any] | None) -> bytes:
        self.rejections.counts = input_rejections(status)
        self.healthy.set(1.0 if status.get("healthy") else 0.0)
        self.tick_age.set(status.get("last_tick_age_s") or -1.0)
        self.units.set(status.get("units_running", 0))
        self.solve_seconds.set((status.get("last_solve") or {}).get("seconds") or 0.0)
        self.dr_active.set(len(status.get("active_dr_events", [])))
        for name, value in status.get("counters", {}).items():
            self.counter.labels(counter=name).set(value)
        for gauge in self._labelled:  # labels come and go (sources, feeds): no stale series
            gauge.clear()
        backlog = status.get("ingest_backlog") or {}
        if isinstance(backlog.get("telemetry_lag_s"), (int, float)):
            self.ingest_lag.labels(connection="telemetry").set(backlog["telemetry_lag_s"])
        if isinstance(backlog.get("store_queued"), (int, float)):
            self.store_queue.set(backlog["store_queued"])
            self.store_wait.set(backlog.get("store_oldest_queued_s") or 0.0)
        if state:
            self._render_state(state)
        return generate_latest(self.registry)

    def _render_state(self, state: Mapping[str, Any]) -> None:
        def put(gauge: Any, value: Any) -> None:
            if isinstance(value, (int, float)):
                gauge.set(value)

        now = state.get("now") or {}
        put(self.grid_import, now.get("grid_import_kw"))
        put(self.load, now.get("load_kw"))
        put(self.renewable, now.get("renewable_kw"))
        put(self.price, now.get("price_usd_mwh"))
        put(self.limit.labels(source=str(now.get("import_limit_source") or "interconnection")), now.get("import_limit_kw"))
        curtailment = now.get("curtailment") or {}
        for means in ("sleep", "power_off"):  # no section (no loop yet): no series, rather than a false 0
            if isinstance(curtailment.get(f"{means}_kw"), (int, float)):
                self.curtailable.labels(means=means).set(curtailment[f"{means}_kw"])
        for group, value in (now.get("breakeven_usd_mwh") or {}).items():
            put(self.breakeven.labels(group=group), value)
        for row in (state.get("noise") or {}).get("receptors", []):
            put(self.noise_measured.labels(receptor=row["receptor_id"]), row.get("measured_dba"))
            put(self.noise_modelled.labels(receptor=row["receptor_id"]), row.get("modelled_dba"))
            put(self.noise_cap.labels(receptor=row["receptor_id"]), row.get("cap_dba"))
        for period in ("day", "month"):
            carbon = (state.get("carbon") or {}).get(period) or {}
            put(self.carbon_used.labels(period=period), carbon.get("used_kg"))
            if carbon.get("left_kg") is not None:
                put(self.carbon_left.labels(period=period), carbon.get("left_kg"))
        for feed, age in ((state.get("inputs") or {}).get("feed_ages_s") or {}).items():
            put(self.feed_age.labels(feed=feed), age)


METRIC_NAMES = ("hashflex_healthy", "hashflex_last_tick_age_seconds", "hashflex_units_running",
                "hashflex_last_solve_seconds", "hashflex_dr_events_active", "hashflex_events_total",
                "hashflex_grid_import_kw", "hashflex_import_limit_kw", "hashflex_site_load_kw", "hashflex_renewable_kw",
                "hashflex_price_usd_mwh", "hashflex_breakeven_usd_mwh", "hashflex_noise_measured_dba",
                "hashflex_noise_modelled_dba", "hashflex_noise_cap_dba", "hashflex_carbon_used_kg",
                "hashflex_carbon_left_kg", "hashflex_feed_age_seconds", "hashflex_input_rejections_total",
                "hashflex_available_for_curtailment_kw", "hashflex_ingest_lag_seconds", "hashflex_store_queue_depth",
                "hashflex_store_queue_oldest_seconds")
"""Every metric /metrics exposes (counters with their ``_total`` name)."""


class HttpBindError(OSError):
    """The HTTP address cannot be bound (``errno`` as the OS said, e.g. ``EADDRINUSE``); the message names
    host and port. ``hashflex run`` turns it into a one-line error (exit 2) before anything is written."""


class StatusServer:
    """Serve the daemon's web site on a thread (uvicorn): dashboard, /healthz, /status, /metrics.

    Parameters
    ----------
    status_fn : Callable[[datetime], dict]
        The status document at a time.
    clock : Callable[[], datetime]
        Site time.
    host : str, default "127.0.0.1"
        Bind address; off loopback, reads need a manager token.
    port : int, default 9108
        0 picks a free port (see :attr:`port`, :attr:`url`); bound at construction, so a taken port
        fails here.
    loop : ControlLoop, optional
        Turns on the dashboard and manager writes (:meth:`attach`); without it only /healthz,
        /status and /metrics answer with data.
    ingest : MqttIngest, optional
        Its messages go to the feed ages and the miners' latest telemetry, its rejections to the
        event log.
    auth : ManagerAuth, optional
        Default :meth:`ManagerAuth.from_env`.
    simulated, measured_fn, submit_limits, period_s
        Passed to :class:`hashflex.web.app.Dashboard`.

    Raises
    ------
    HttpBindError
        The port is taken or the address cannot be bound (an ``OSError`` with its ``errno``).
    """

    def __init__(self, status_fn: Callable[[datetime], dict[str, Any]], clock: Callable[[], datetime],
                 host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT, *, loop: Any = None, ingest: Any = None,
                 auth: Any = None, simulated: bool = False, measured_fn: Callable[[], dict[str, float]] | None = None,
                 submit_limits: Callable[[Any], Any] | None = None, period_s: float = 5.0) -> None:
        import uvicorn

        from hashflex.web.app import create_app, is_loopback
        from hashflex.web.manager import ManagerAuth

        self._clock, self._status_fn = clock, status_fn
        self._dashboard_options = {"simulated": simulated, "measured_fn": measured_fn,
                                   "submit_limits": submit_limits, "period_s": period_s}
        self.dashboard: Any = None
        self._stopping = threading.Event()
        app = create_app(status_fn=lambda now: self._status_fn(now), clock=clock, metrics=StatusMetrics(),
                         dashboard=lambda: self.dashboard,
                         auth=auth if auth is not None else ManagerAuth.from_env(), reads_open=is_loopback(host),
                         stopping=self._stopping)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))  # bound now: a taken port fails here, in the caller
        except OSError as exc:
            self._socket.close()
            raise HttpBindError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror} (another hashflex "
                                           "daemon or another program serves there)") from None
        self.host = host
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="hashflex-http", daemon=True)
        if loop is not None:
            self.attach(loop, ingest)

    def attach(self, loop: Any, ingest: Any = None, status_fn: Callable[[datetime], dict[str, Any]] | None = None) -> None:
        """Serve ``loop``'s dashboard from now on.

        A server may start before its loop exists (``run --simulate`` prints its URL at once).

        Parameters
        ----------
        loop : ControlLoop
        ingest : MqttIngest, optional
            Wire its messages and rejections to the dashboard.
        status_fn : Callable[[datetime], dict], optional
            Replaces the status source.
        """
        from hashflex.web.app import Dashboard

        if status_fn is not None:
            self._status_fn = status_fn
        clock = self._clock
        dashboard = Dashboard(loop, lambda now: self._status_fn(now), clock, **self._dashboard_options)
        if ingest is not None:
            def seen(message: Any) -> None:
                dashboard.feeds.seen(message, clock())
                if getattr(message, "kind", None) != "telemetry":  # 10,000 miners' telemetry: no rebuild storm
                    dashboard.notify()

            ingest.add_callback(seen)
            ingest.add_rejection_callback(lambda rejection: (dashboard.log.on_rejection(rejection, clock()),
                                                             dashboard.notify()))
        if self._thread.ident is not None:
            dashboard.start()
        self.dashboard = dashboard

    @property
    def url(self) -> str:
        """The base URL (``http://host:port/``; a wildcard bind is shown as 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:  # noqa: BLE001
            log.exception("HTTP server stopped")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns once the server accepts connections.

        Parameters
        ----------
        timeout_s : float, default 10.0
            Longest wait for uvicorn to start (s).
        """
        import time

        if self.dashboard is not None:
            self.dashboard.start()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving: end the event streams, shut uvicorn down, stop the dashboard, close the socket.
        Idempotent (a daemon that failed to start closes the socket it bound)."""
        if self._socket.fileno() < 0:
            return
        self._stopping.set()  # ends the event streams, so shutdown does not wait on them
        self._server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join(10)
        if self.dashboard is not None:
            self.dashboard.stop()
        self._socket.close()
