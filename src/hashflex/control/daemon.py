"""`hashflex run`: the control loop wired to the wall clock, Mosquitto, the store and real miners.

Inputs arrive on ``hashflex/<site>/in/#`` (validated by ``feeds.mqtt.MqttIngest``, stored, and
routed to the loop's fast path); prices come from ``in/price`` messages and from the HTTP price feed
the environment configures (``feeds.poll``: a generic JSON endpoint or the ERCOT public API). Setpoints go out through the MQTT
driver (``out/setpoint/<miner>``, MQTT v5 message expiry) or LuxOS miners; the schedule, the
status and DR acknowledgements are published on ``out/schedule``, ``out/status``, ``out/dr/ack``.

Degraded modes (each visible in ``/status`` and ``/healthz``):
- broker down: the ingest and driver reconnect with backoff; setpoints already sent expire and
  the miners fall back to sleep; the loop keeps ticking on what the store holds; SIGTERM still exits in
  a few seconds (task H3: the clients are stopped together, each network thread awaited at most
  :data:`~hashflex.feeds.mqtt.STOP_TIMEOUT_S`; the store and the audit trail are closed last);
- no price known for an interval: it is planned at $5,000/MWh (ERCOT's offer cap), i.e. curtailed,
  and /healthz answers 503 (the forecast module documents every fallback);
- solver timeout or failure: the greedy fallback schedule (every hard limit respected);
- restart (even kill -9): the limits book (every accepted DR event and limits change) and the
  commitment state are reloaded from the store and enforced through the fast path before the
  first solve;
- store unavailable (disk full, I/O error): DR and limits messages are answered
  ``rejected: store_unavailable``, a more restrictive limit is held in memory anyway, and /healthz
  answers 503 naming the cause until a commit succeeds again;
- ingest behind (telemetry handled more than 30 s after it was measured, or a store write waiting more
  than 10 s): /healthz answers 503 naming the backlog (:func:`with_ingest_backlog`), /metrics has the
  gauges (``hashflex_ingest_lag_seconds``, ``hashflex_store_queue_depth``, ``hashflex_store_queue_oldest_seconds``);
- ERCOT's system load forecast (issue 14): polled when the environment names a source
  (:func:`hashflex.feeds.load_forecast.load_forecast_feed_from_env`) or received on ``in/load_forecast``,
  stored with its publication time; its rejected rows are counted on /metrics with the other inputs;
- learned price model (issue 14; ``--price-model``, :func:`price_model_for`): fitted in a background thread
  on the prices the store holds (only those published by the fit's time), daily after the DAM publishes;
  until it has a fit (two days of real-time history), when its fit is too old, and on any model error the
  rules plan (DA, yesterday, the scarcity floor). ``/status`` says which (``forecast_source``, and
  ``price_model`` with the reason), the stored schedule records it, and ``/metrics`` counts fits, failed fits
  and failed predictions (``hashflex_events_total{counter="price_model_..."}``).

One daemon per store (issue 15, auditor review finding 3): :func:`run_daemon` takes the store's exclusive
lock (:func:`hashflex.store.lock.lock_store`) and binds its HTTP port before it opens the store, connects
to the broker or writes a record; a second daemon on the same store stops there with
:class:`~hashflex.store.lock.StoreLockedError` (``hashflex run`` exits 2 naming the store), and the first
carries on (no false ``restart`` record, no MQTT session taken over).

Inputs as evidence (issue 15, auditor review findings 1 and 2): commands reach the loop through the
ingest's command handler (:func:`answer_command`), so ``/status`` ``inputs`` counts as ``accepted`` only what
the site accepted durably (``inputs_refused``: the site's refusals by field); every refused input is in the
audit trail (``input_rejected``, bounded per kind and minute: :mod:`hashflex.audit.rejections`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any


from hashflex.control.fleet import FleetState
from hashflex.control.limits import LimitsBook
from hashflex.control.http import DEFAULT_HTTP_PORT, StatusServer
from hashflex.control.loop import ControlLoop, LoopConfig
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.feeds.load_forecast import load_forecast_feed_from_env
from hashflex.feeds.mqtt import COMMAND_KINDS, MqttIngest, mqtt_client, stop_clients
from hashflex.feeds.poll import price_feed_from_env
from hashflex.frames import utc_now
from hashflex.messages import ASAwardMessage, ASDeployMessage, DREventMessage, LimitsChangeMessage, Topics
from hashflex.profile import SiteProfile
from hashflex.forecast import store_forecaster
from hashflex.store import Store
from hashflex.store.lock import lock_store

log = logging.getLogger(__name__)

PRICE_MODEL_MODES = ("auto", "learned", "rules")
"""``--price-model``: ``auto`` (the learned model when scikit-learn is installed, else the rules, said in the
log and /status), ``learned`` (refuse to start without scikit-learn), ``rules`` (the rules alone)."""


class MqttPublisher:
    """Publishes the loop's JSON documents under the site prefix (QoS 1, retained status).

    Connects asynchronously (paho's network loop reconnects); QoS 1 is at-least-once delivery (MQTT
    v5 §4.3.2) and ``out/status`` is published with the RETAIN flag (MQTT v5 §3.3.1.3), so a new
    subscriber gets the latest status at once.

    Parameters
    ----------
    site : str
        The site id: topics are ``hashflex/<site>/...`` (:class:`hashflex.messages.Topics`).
    host : str
        The broker's host name or address.
    port : int
        The broker's TCP port.
    username, password : str, optional
        Broker credentials.
    tls_ca_file : str, optional
        CA certificate file; TLS is used when given.
    """

    def __init__(self, site: str, host: str, port: int, username: str | None = None,
                 password: str | None = None, tls_ca_file: str | None = None) -> None:
        self.topics = Topics(site)
        self._client = mqtt_client(f"hashflex-publisher-{site}", username=username, password=password,
                                   tls_ca_file=tls_ca_file)
        self._client.connect_async(host, port)
        self._client.loop_start()

    def publish_json(self, topic_suffix: str, payload: dict[str, Any]) -> None:
        """Publish one JSON document, QoS 1 (retained on ``out/status`` only); does not wait.

        Parameters
        ----------
        topic_suffix : str
            The topic under the site prefix, e.g. ``out/schedule``, ``out/dr/ack``.
        payload : dict
            The document; values JSON cannot encode are written with ``str``.
        """
        topic = f"{self.topics.prefix}{topic_suffix}"
        self._client.publish(topic, json.dumps(payload, default=str), qos=1, retain=topic_suffix == "out/status")

    def close(self) -> None:
        """Disconnect and stop the network thread, waiting at most
        :data:`~hashflex.feeds.mqtt.STOP_TIMEOUT_S` for it (the broker may be gone: :func:`stop_clients`)."""
        stop_clients([self._client], what="publisher")


_MISSING_WORDS = {"new": "new", "modes_changed": "(modes changed)", "dropped": "dropped (not in the profile)",
                  "group_gone": "dropped (group not in the profile)"}


def load_control_state(store: Store, profile: SiteProfile) -> tuple[LimitsBook, FleetState | None]:
    """What a restart resumes: the limits book as last committed (only accepted DR events and
    limits changes are in it) and the commitment state (which miners ran, last start/stop, run hours,
    health), restored onto the profile's fleet by :meth:`FleetState.restored` (issue 18, task H10):
    after a profile change, each saved group still in the profile with the same mode names keeps the
    state of every miner the profile still has (``<group>-<n>`` ids matched by n, so a zero-padding
    change keeps them; a saved mode renamed or removed: its units run in the group's lowest-power
    mode with their times, so min on/off holds); new miners start asleep with no history (never
    assumed running), and one warning names the counts per group.

    Parameters
    ----------
    store : Store
        The store; reads its ``limits_book`` and ``fleet`` meta entries.
    profile : SiteProfile
        The profile now in force.

    Returns
    -------
    book : LimitsBook
        The committed limits book (empty when none was saved).
    fleet : FleetState or None
        The restored commitment state, or None when there is none or it does not load (a damaged
        group: then every miner starts asleep; a warning is logged).

    Raises
    ------
    KeyError, ValueError
        If the saved limits book cannot be read (:meth:`LimitsBook.from_dict`); unlike a fleet that
        does not load, it is not skipped.
    """
    book = LimitsBook.from_dict(store.get_meta("limits_book"), profile)
    fleet = None
    saved = store.get_meta("fleet")
    if saved:
        try:
            fleet, missing = FleetState.restored(saved, profile)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("saved commitment state not used: %s", exc)
        else:
            if missing:  # a profile change: what starts asleep with no history, and saved state left unused
                log.warning("saved commitment state partly for another fleet; not restored as saved (new: asleep, "
                            "no history; mapped; dropped), per group: %s", "; ".join(
                                f"{g}: " + ", ".join(f"{n} {_MISSING_WORDS.get(k, k)}" for k, n in counts.items())
                                for g, counts in missing.items()))
    return book, fleet


def price_model_for(profile: SiteProfile, mode: str = "auto", *, store: Store | None = None,
                    prices: Any = None, background: bool = True) -> Any:
    """The learned price model of ``hashflex run`` (over its store) or ``run --simulate`` (over the recorded
    prices, each from its publication time): :class:`hashflex.price_model.OnlinePriceModel`, or None when the
    rules alone plan.

    Parameters
    ----------
    profile : SiteProfile
        The site (settlement point and time zone).
    mode : str, default "auto"
        One of :data:`PRICE_MODEL_MODES`.
    store : Store, optional
        The daemon's store: the model fits on the prices it holds, each as of its ``published_at``, with the
        system load forecast it holds (each hour's day-ahead vintage, :meth:`Store.load_forecast`).
    prices : pandas.DataFrame, optional
        Instead of a store: recorded prices (canonical frame, optional ``published_at``; default ERCOT's
        publication times), as ``run --simulate`` replays them.
    background : bool, default True
        Fit in a background thread (False: inside the tick that finds a fit due; tests).

    Returns
    -------
    OnlinePriceModel or None
        None for ``rules``, and for ``auto`` without scikit-learn (a warning is logged).

    Raises
    ------
    ValueError
        ``mode`` is not one of :data:`PRICE_MODEL_MODES` (named ``price_model``), or neither ``store`` nor
        ``prices`` is given.
    ImportError
        ``learned`` without scikit-learn (``pip install 'hashflex[forecast]'``).
    """
    if mode not in PRICE_MODEL_MODES:
        raise ValueError(f"price_model {mode!r}: expected one of {', '.join(PRICE_MODEL_MODES)}")
    if mode == "rules":
        return None
    if (store is None) == (prices is None):
        raise ValueError("price_model_for: give exactly one of store, prices")
    try:
        from hashflex.price_model import OnlinePriceModel, recorded_price_history, store_price_history

        from hashflex.feeds.load_forecast import store_load_forecast_history

        point = profile.site.settlement_point
        history = store_price_history(store, point) if store is not None else recorded_price_history(prices)
        # ERCOT's system load forecast as stored (issue 14: the feature the backtest has); none with recorded prices
        load = store_load_forecast_history(store) if store is not None else None
        return OnlinePriceModel(history, point, profile.site.timezone, background=background, load_forecast=load)
    except ImportError as exc:
        if mode == "learned":
            raise
        log.warning("learned price model off (%s): the forecast rules plan", exc)
        return None


def with_price_model(status: dict[str, Any], model: Any) -> dict[str, Any]:
    """The daemon's status with the price model's part: ``forecast_source`` (``learned`` or ``rules``, of the
    last tick), ``price_model`` (its state and the reason, None without a model) and its counters among the
    status counters (``/metrics``: ``hashflex_events_total{counter="price_model_failures"}`` and the others).

    Parameters
    ----------
    status : dict
        The status document (``counters``, ...).
    model : OnlinePriceModel or None
        From :func:`price_model_for`.

    Returns
    -------
    dict
        A copy of ``status`` with the three added; with no model the source is ``rules``.
    """
    if model is None:
        return {**status, "forecast_source": "rules", "price_model": None}
    state = model.status()
    return {**status, "forecast_source": state["forecast_source"], "price_model": state,
            "counters": {**status.get("counters", {}), **state["counters"]}}


def with_openadr_counters(status: dict[str, Any], ven_status: dict[str, Any] | None) -> dict[str, Any]:
    """The daemon's status with the OpenADR VEN's counters among the status counters, each as
    ``openadr_<name>`` (``/metrics``: ``hashflex_events_total{counter="openadr_as_late"}``, ``openadr_polls``,
    ...), so that what the VEN counts (late, above-award and missed AS deployments, poll failures) reaches
    the metrics as the loop's own counters do; the prefix keeps the two paths apart (the loop counts MQTT
    deployments under the same plain names).

    Parameters
    ----------
    status : dict
        The status document (``counters``, ...).
    ven_status : dict or None
        ``VEN.status()`` (its ``counters``: name -> int); None without a VEN.

    Returns
    -------
    dict
        A copy of ``status`` with ``openadr`` set to ``ven_status`` and the prefixed counters added.
    """
    counters = dict(status.get("counters", {}))
    for name, value in ((ven_status or {}).get("counters") or {}).items():
        counters[f"openadr_{name}"] = value
    return {**status, "openadr": ven_status, "counters": counters}


def answer_command(loop: ControlLoop, message: Any, now: datetime) -> Any:
    """The site's answer to one command from the MQTT ingest: the loop decides, commits and acknowledges
    it (:meth:`ControlLoop.handle_dr`, ``handle_limits``, ``handle_as_award``, ``handle_as_deploy``) and the
    answer goes back to the ingest, which counts it (``accepted`` only when committed) and audits a refusal.

    Parameters
    ----------
    loop : ControlLoop
        The control loop.
    message : DREventMessage, LimitsChangeMessage, ASAwardMessage or ASDeployMessage
        The command (schema-checked by the ingest).
    now : datetime
        The decision time, UTC.

    Returns
    -------
    DRAckMessage, LimitsAck or ASAckMessage
        The answer (``status``, ``reason``).

    Raises
    ------
    TypeError
        ``message`` is not a command (the ingest counts it under ``errors``).
    """
    if isinstance(message, DREventMessage):
        return loop.handle_dr(message, now)
    if isinstance(message, LimitsChangeMessage):
        return loop.handle_limits(message, now)
    if isinstance(message, ASAwardMessage):
        return loop.handle_as_award(message, now)
    if isinstance(message, ASDeployMessage):
        return loop.handle_as_deploy(message, now)
    raise TypeError(f"not a command: {type(message).__name__}")


def wire_ingest(ingest: MqttIngest, loop: ControlLoop, clock: Any = utc_now) -> None:
    """Connect the MQTT ingest to the loop as the daemon does: commands through :func:`answer_command`
    (answered, counted by their answer), every other accepted message to ``loop.on_message``, and
    rejections to ``loop.on_rejection`` (a malformed DR or AS message gets its ``rejected`` ack).

    Parameters
    ----------
    ingest : MqttIngest
        The ingest (not started yet).
    loop : ControlLoop
        The control loop.
    clock : callable, default ``utc_now``
        ``clock() -> datetime``: the decision time of each message.
    """
    ingest.set_command_handler(lambda message: answer_command(loop, message, clock()))
    ingest.add_callback(lambda message: None if message.kind in COMMAND_KINDS else loop.on_message(message, clock()))
    ingest.add_rejection_callback(lambda rejection: loop.on_rejection(rejection, clock()))


def _reload(loop: ControlLoop, profile_path: str) -> None:
    """SIGHUP: re-read the profile; an invalid file is refused with its errors, the old one stays."""
    from hashflex.profile import ProfileError, load_profile

    try:
        profile = load_profile(profile_path)
    except ProfileError as exc:
        log.error("profile reload refused, keeping the running profile: %s", exc)
        return
    log.warning("profile reload (%s): %s", profile_path, loop.reload_profile(profile, utc_now()))


def _start_openadr(loop: ControlLoop) -> Any:
    """The OpenADR 3 VEN, when HASHFLEX_OPENADR_VTN_URL is set: its events take the same DR path."""
    if not os.environ.get("HASHFLEX_OPENADR_VTN_URL"):
        return None
    from hashflex.openadr.client import OpenADRClient, OpenADRConfig
    from hashflex.openadr.ven import VEN, VENConfig

    ven = VEN(OpenADRClient(OpenADRConfig.from_env()), VENConfig.from_env(), loop,
              measurements=loop.mean_import_kw, clock=utc_now)
    ven.start()
    log.info("OpenADR VEN started for %s", os.environ["HASHFLEX_OPENADR_VTN_URL"])
    return ven


def with_broker_health(status: dict[str, Any], broker_connected: bool) -> dict[str, Any]:
    """The daemon's status with the broker's state among the health causes: with the ingest
    disconnected no DR event, limits change or telemetry can arrive, so /healthz must not say ok.

    Parameters
    ----------
    status : dict
        The status document (``healthy``, ``unhealthy_causes``, ...).
    broker_connected : bool
        Whether the ingest's MQTT connection is up.

    Returns
    -------
    dict
        ``status`` itself when connected; else a copy with ``healthy`` False and the broker cause
        appended to ``unhealthy_causes``.
    """
    if broker_connected:
        return status
    causes = [*status.get("unhealthy_causes", []), "MQTT broker disconnected: no DR, limits or telemetry can arrive"]
    return {**status, "unhealthy_causes": causes, "healthy": False}


MAX_TELEMETRY_LAG_S = 30.0
"""Telemetry handled more than this after it was measured (s): the ingest is behind (``/healthz`` says so)."""
MAX_STORE_WAIT_S = 10.0
"""A write waiting longer than this for the store's writer (s): the store is behind (``/healthz`` says so)."""


def with_ingest_backlog(status: dict[str, Any], backlog: dict[str, Any] | None, *,
                        max_lag_s: float = MAX_TELEMETRY_LAG_S, max_store_wait_s: float = MAX_STORE_WAIT_S,
                        stale_window_s: float = 60.0) -> dict[str, Any]:
    """The daemon's status with the ingest backlog (``ingest_backlog``) and, when the ingest is behind, a
    health cause: ``/healthz`` answers 503 naming it, because the site's view of its miners (and the
    curtailment it can offer) is as old as the lag. The newcomer review saw telemetry outrun the ingest
    on a 7,200-miner demo with nothing on /healthz.

    Parameters
    ----------
    status : dict
        The status document.
    backlog : dict or None
        :meth:`hashflex.feeds.mqtt.MqttIngest.backlog` (None: no ingest).
    max_lag_s : float
        Telemetry lag above which the ingest is behind, s.
    max_store_wait_s : float
        Oldest waiting store write above which the store is behind, s.
    stale_window_s : float
        A lag measured longer ago than this is not current (telemetry stopped: that is the feed
        ages' business, not a backlog).

    Returns
    -------
    dict
        A copy with ``ingest_backlog`` (the backlog document) and, when behind, ``healthy`` False and
        the cause(s) appended to ``unhealthy_causes``.
    """
    out = {**status, "ingest_backlog": backlog}
    if not backlog:
        return out
    causes = []
    lag, age = backlog.get("telemetry_lag_s"), backlog.get("lag_window_age_s")
    if isinstance(lag, (int, float)) and lag > max_lag_s and isinstance(age, (int, float)) and age <= stale_window_s:
        causes.append(f"ingest backlog: telemetry handled {lag:.0f} s after it was measured (more than "
                      f"{max_lag_s:.0f} s): the broker is queueing messages faster than the ingest takes them")
    wait = backlog.get("store_oldest_queued_s")
    if isinstance(wait, (int, float)) and wait > max_store_wait_s:
        causes.append(f"ingest backlog: {backlog.get('store_queued', 0):,} write(s) waiting for the store, the "
                      f"oldest for {wait:.0f} s (more than {max_store_wait_s:.0f} s)")
    if causes:
        out["unhealthy_causes"] = [*status.get("unhealthy_causes", []), *causes]
        out["healthy"] = False
    return out


def _start_meter(profile: SiteProfile, loop: ControlLoop) -> Any:
    """The site meter poller, when the profile has a ``site_meter`` section: every fresh reading
    goes to the loop (the guard's truth over the model when over the limit)."""
    if not profile.site_meter:
        return None
    from hashflex.drivers.modbus_meter import MeterConfig, MeterPoller, ModbusMeter

    config = MeterConfig.from_mapping(profile.site_meter)  # ValueError names the field: refuse to start
    poller = MeterPoller(ModbusMeter(config), on_reading=lambda r: loop.handle_meter(r.import_kw, r.at, utc_now()))
    log.info("site meter %s:%d polled every %g s", config.host, config.port, config.poll_s)
    return poller.start()


SHUTDOWN_STEP_S = 12.0
"""How long :func:`close_together` waits for a group of close steps (s): above every step's own bound
(the HTTP server's 10 s join, the VEN's 5 s, an MQTT client's 1.5 s), so in practice it never cuts one."""


def close_together(steps: list[tuple[str, Callable[[], Any] | None]], timeout_s: float = SHUTDOWN_STEP_S) -> list[str]:
    """Run independent close steps on threads of their own and wait for all of them against one deadline.

    The daemon's shutdown (issue 15, task H3): stopping the ingest, the HTTP server and the VEN one after
    another added up their waits; together they take the longest one. A step that raises is logged and
    does not stop the others (the store must still be closed after them).

    Parameters
    ----------
    steps : list of (name, callable or None)
        The steps; None entries (a component the daemon does not run) are skipped.
    timeout_s : float, default :data:`SHUTDOWN_STEP_S`
        The bound on the whole wait, s; a step still running then is left on its (daemon) thread.

    Returns
    -------
    list of str
        The names of the steps still running at the deadline (logged as a warning).
    """
    threads = []
    for name, step in steps:
        if step is None:
            continue

        def run(step: Callable[[], Any] = step, name: str = name) -> None:
            try:
                step()
            except Exception:  # noqa: BLE001 - one component's failure must not keep the others open
                log.exception("shutdown: closing the %s failed", name)

        thread = threading.Thread(target=run, name=f"hashflex-close-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout_s
    for _, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [name for name, thread in threads if thread.is_alive()]
    if left:
        log.warning("shutdown: %s still closing after %.0f s; going on", ", ".join(left), timeout_s)
    return left


def run_daemon(profile: SiteProfile, *, store_path: str, profile_path: str | None = None, mqtt_host: str, mqtt_port: int,
               http_host: str = "127.0.0.1", http_port: int = DEFAULT_HTTP_PORT, driver: Any = None,
               username: str | None = None, password: str | None = None, tls_ca_file: str | None = None,
               stop: threading.Event | None = None, time_limit_s: float = 20.0,
               price_model: str = "auto") -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set).

    Wires the store, the limits book and commitment state of the last run (enforced through the fast
    path before the first solve), the MQTT ingest, driver and publisher, the HTTP server, the price
    feed the environment configures, the OpenADR 3 VEN (when ``HASHFLEX_OPENADR_VTN_URL`` is set), the
    site meter (when the profile has ``site_meter``) and the GPU compute driver (when it has
    ``compute``); everything is closed on the way out. On the main thread SIGTERM/SIGINT stop it and
    SIGHUP re-reads ``profile_path`` (an invalid file is refused and the running profile kept).

    Parameters
    ----------
    profile : SiteProfile
        The site.
    store_path : str
        The SQLite store's path.
    profile_path : str, optional
        The profile's file, re-read on SIGHUP (None: no reload).
    mqtt_host : str
        The broker's host name or address.
    mqtt_port : int
        The broker's TCP port.
    http_host : str, default "127.0.0.1"
        Address of ``/``, ``/healthz``, ``/status`` and ``/metrics``.
    http_port : int, default ``DEFAULT_HTTP_PORT`` (9108)
        Their port (0: any free port).
    driver : MinerDriver, optional
        The miner driver (default: an MQTT driver on the same broker).
    username, password : str, optional
        Broker credentials.
    tls_ca_file : str, optional
        CA certificate file; TLS to the broker is used when given.
    stop : threading.Event, optional
        Set it to stop the daemon (default: a new event, set by SIGTERM/SIGINT).
    time_limit_s : float, default 20.0
        HiGHS's time limit per solve, s; the solve is killed at this + 10 s and the greedy fallback
        used (:class:`~hashflex.control.solver.SolveRunner`).
    price_model : str, default "auto"
        The learned price model (:data:`PRICE_MODEL_MODES`, :func:`price_model_for`); ``rules`` turns it off.

    Raises
    ------
    StoreLockedError
        Another process (a daemon) holds ``store_path``'s lock: raised before anything is written or
        connected (:mod:`hashflex.store.lock`).
    ValueError
        If the profile's ``site_meter`` section is invalid (the message names the field), or
        ``price_model`` is not a known mode.
    ImportError
        ``price_model="learned"`` without scikit-learn.
    OSError
        If the HTTP port cannot be bound (also before anything is written or connected).
    """
    stop = stop or threading.Event()
    if price_model not in PRICE_MODEL_MODES:  # before anything starts
        raise ValueError(f"price_model {price_model!r}: expected one of {', '.join(PRICE_MODEL_MODES)}")
    # One daemon per store, decided before the store is opened, a broker session taken or a record written:
    # a second instance used to record a false ``restart`` and take over the first's MQTT client ids.
    store_lock = lock_store(store_path)
    try:
        server = StatusServer(lambda now: {"healthy": False, "unhealthy_causes": ["starting"]}, utc_now,
                              http_host, http_port)  # binds now: a taken port fails here, before any write
    except BaseException:
        if store_lock is not None:
            store_lock.release()
        raise
    try:
        _run_locked(profile, store_path, profile_path, mqtt_host, mqtt_port, driver, username, password, tls_ca_file,
                    stop, time_limit_s, price_model, server)
    finally:
        server.stop()  # idempotent: closes the bound socket when the server never started
        if store_lock is not None:
            store_lock.release()


def _run_locked(profile: SiteProfile, store_path: str, profile_path: str | None, mqtt_host: str, mqtt_port: int,
                driver: Any, username: str | None, password: str | None, tls_ca_file: str | None,
                stop: threading.Event, time_limit_s: float, price_model: str, server: StatusServer) -> None:
    """:func:`run_daemon` once the store's lock is held and the HTTP port bound."""
    from hashflex.drivers.mqtt import MqttDriver

    site = profile.site_id
    store = Store(store_path)
    model = price_model_for(profile, price_model, store=store)
    book, fleet = load_control_state(store, profile)
    if driver is None:
        driver = MqttDriver(site, mqtt_host, mqtt_port, username=username, password=password, tls_ca_file=tls_ca_file)
        driver.start()
    publisher = MqttPublisher(site, mqtt_host, mqtt_port, username, password, tls_ca_file)
    compute_driver = None
    if profile.compute is not None:  # GPU clusters: caps and suspend/resume on out/compute/<cluster>
        from hashflex.control.compute_commands import cap_limits
        from hashflex.drivers.compute import MqttComputeDriver

        compute_driver = MqttComputeDriver(site, cap_limits(profile), mqtt_host, mqtt_port, username=username,
                                           password=password, tls_ca_file=tls_ca_file)
    recorder = AuditRecorder(store)
    loop = ControlLoop(profile, forecaster=store_forecaster(profile, store, price_forecaster=model), driver=driver, publisher=publisher,
                       store=store, book=book, fleet=fleet, solver=SolveRunner(time_limit_s=time_limit_s),
                       config=LoopConfig(solve_time_limit_s=time_limit_s, async_sends=True), recorder=recorder,
                       meter=IntervalMeter(), compute_driver=compute_driver)
    wait_connected = getattr(driver, "wait_connected", None)
    if wait_connected is not None:
        wait_connected(5.0)  # the restart cut below needs the driver's transport
    loop.restore(utc_now())  # enforce what was in force before the restart, before any solve
    ingest = MqttIngest(store, site, mqtt_host, mqtt_port, username=username, password=password,
                        tls_ca_file=tls_ca_file, client_id=f"hashflex-ingest-{site}", plausibility=profile,
                        audit=recorder.record)
    wire_ingest(ingest, loop, utc_now)
    feed = price_feed_from_env(profile, store)
    feed_stats = (lambda: feed.stats()) if feed is not None else (lambda: None)
    load_feed = load_forecast_feed_from_env(store)  # ERCOT's system load forecast for the price model (issue 14)
    ven = _start_openadr(loop)
    meter = _start_meter(profile, loop)

    def status(now: datetime) -> dict[str, Any]:
        document = {**loop.status(now), "inputs": ingest.stats(), "mqtt_connected": ingest.connected,
                    "input_rejections": ingest.rejection_stats(), "inputs_refused": ingest.refusal_stats(),
                    "price_feed": feed_stats(),
                    "load_forecast_feed": load_feed.stats() if load_feed is not None else None}
        document = with_openadr_counters(document, ven.status() if ven is not None else None)
        document = with_ingest_backlog(document, ingest.backlog())
        return with_broker_health(with_price_model(document, model), ingest.connected)

    server.attach(loop, ingest, status_fn=status)  # dashboard + writes
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if profile_path is not None:
            signal.signal(signal.SIGHUP, lambda *_: _reload(loop, profile_path))
    if feed is not None:
        feed.start()
    if load_feed is not None:
        load_feed.start()
    ingest.start()
    server.start()
    log.info("hashflex running for %s: MQTT %s:%d, HTTP %s:%d, store %s", site, mqtt_host, mqtt_port,
             server.host, server.port, os.path.abspath(store_path))
    try:
        loop.run(utc_now, stop)
    finally:
        # SIGTERM with the broker gone (issue 15, task H3): stopped one after another, each MQTT client waited
        # for its network thread (up to paho's 5 s connect timeout) and the daemon took 11.4 s to exit. The
        # inputs stop together, then the queued batches go out (the sender's own bound), then the outputs
        # stop together; the audit trail and the store are flushed and closed last, whatever came before.
        stopped = time.monotonic()
        close_together([("openadr", ven.stop if ven is not None else None),
                        ("meter", meter.stop if meter is not None else None),
                        ("price feed", feed.stop if feed is not None else None),
                        ("load forecast feed", load_feed.stop if load_feed is not None else None),
                        ("http", server.stop), ("ingest", ingest.stop)])
        try:
            loop.close()  # the batches already queued reach the driver (SendQueue.close: bounded)
        finally:
            close_together([("publisher", publisher.close), ("driver", driver.close),
                            ("compute driver", compute_driver.close if compute_driver is not None else None),
                            ("solver", loop.solver.close), ("price model", model.close if model is not None else None)])
            try:
                recorder.flush()
                recorder.close()
            finally:
                store.close()
            log.info("hashflex stopped in %.1f s", time.monotonic() - stopped)
