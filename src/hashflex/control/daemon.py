"""`hashflex run`: the control loop wired to the wall clock, Mosquitto, the store and real miners.

Inputs arrive on ``hashflex/<site>/in/#`` (validated by ``feeds.mqtt.MqttIngest``, stored, and
routed to the loop's fast path); prices come from ``in/price`` messages and from the HTTP price feed
the environment configures (``feeds.poll``: a generic JSON endpoint or the ERCOT public API). Setpoints go out through the MQTT
driver (``out/setpoint/<miner>``, MQTT v5 message expiry) or LuxOS miners; the schedule, the
status and DR acknowledgements are published on ``out/schedule``, ``out/status``, ``out/dr/ack``.

Degraded modes (each visible in ``/status`` and ``/healthz``):
- broker down: the ingest and driver reconnect with backoff; setpoints already sent expire and
  the miners fall back to sleep; the loop keeps ticking on what the store holds;
- no price known for an interval: it is planned at $5,000/MWh (ERCOT's offer cap), i.e. curtailed,
  and /healthz answers 503 (the forecast module documents every fallback);
- solver timeout or failure: the greedy fallback schedule (every hard limit respected);
- restart (even kill -9): the limits book (every accepted DR event and limits change) and the
  commitment state are reloaded from the store and enforced through the fast path before the
  first solve;
- store unavailable (disk full, I/O error): DR and limits messages are answered
  ``rejected: store_unavailable``, a more restrictive limit is held in memory anyway, and /healthz
  answers 503 naming the cause until a commit succeeds again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import datetime
from typing import Any


from hashflex.control.fleet import FleetState
from hashflex.control.limits import LimitsBook
from hashflex.control.http import DEFAULT_HTTP_PORT, StatusServer
from hashflex.control.loop import ControlLoop, LoopConfig
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.feeds.mqtt import MqttIngest, mqtt_client
from hashflex.feeds.poll import price_feed_from_env
from hashflex.frames import utc_now
from hashflex.messages import Topics
from hashflex.profile import SiteProfile
from hashflex.forecast import store_forecaster
from hashflex.store import Store

log = logging.getLogger(__name__)


class MqttPublisher:
    """Publishes the loop's JSON documents under the site prefix (QoS 1, retained status)."""

    def __init__(self, site: str, host: str, port: int, username: str | None = None,
                 password: str | None = None, tls_ca_file: str | None = None) -> None:
        self.topics = Topics(site)
        self._client = mqtt_client(f"hashflex-publisher-{site}", username=username, password=password,
                                   tls_ca_file=tls_ca_file)
        self._client.connect_async(host, port)
        self._client.loop_start()

    def publish_json(self, topic_suffix: str, payload: dict[str, Any]) -> None:
        topic = f"{self.topics.prefix}{topic_suffix}"
        self._client.publish(topic, json.dumps(payload, default=str), qos=1, retain=topic_suffix == "out/status")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def load_control_state(store: Store, profile: SiteProfile) -> tuple[LimitsBook, FleetState | None]:
    """What a restart resumes: the limits book as last committed (only accepted DR events and
    limits changes are in it) and the commitment state (which miners ran, last start/stop) when it
    matches the profile's fleet. A fleet saved for other groups or unit counts is not used."""
    book = LimitsBook.from_dict(store.get_meta("limits_book"), profile)
    fleet = None
    saved = store.get_meta("fleet")
    if saved:
        try:
            fleet = FleetState.from_dict(saved, profile)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("saved commitment state not used: %s", exc)
        else:
            expected = FleetState.from_profile(profile)
            if sorted(fleet.miners) != sorted(expected.miners):
                log.warning("saved commitment state is for another fleet; starting with every miner asleep")
                fleet = None
    return book, fleet


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
    disconnected no DR event, limits change or telemetry can arrive, so /healthz must not say ok."""
    if broker_connected:
        return status
    causes = [*status.get("unhealthy_causes", []), "MQTT broker disconnected: no DR, limits or telemetry can arrive"]
    return {**status, "unhealthy_causes": causes, "healthy": False}


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


def run_daemon(profile: SiteProfile, *, store_path: str, profile_path: str | None = None, mqtt_host: str, mqtt_port: int,
               http_host: str = "127.0.0.1", http_port: int = DEFAULT_HTTP_PORT, driver: Any = None,
               username: str | None = None, password: str | None = None, tls_ca_file: str | None = None,
               stop: threading.Event | None = None, time_limit_s: float = 20.0) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set)."""
    from hashflex.drivers.mqtt import MqttDriver

    stop = stop or threading.Event()
    site = profile.site_id
    store = Store(store_path)
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
    loop = ControlLoop(profile, forecaster=store_forecaster(profile, store), driver=driver, publisher=publisher,
                       store=store, book=book, fleet=fleet, solver=SolveRunner(time_limit_s=time_limit_s),
                       config=LoopConfig(solve_time_limit_s=time_limit_s, async_sends=True), recorder=recorder,
                       meter=IntervalMeter(), compute_driver=compute_driver)
    wait_connected = getattr(driver, "wait_connected", None)
    if wait_connected is not None:
        wait_connected(5.0)  # the restart cut below needs the driver's transport
    loop.restore(utc_now())  # enforce what was in force before the restart, before any solve
    ingest = MqttIngest(store, site, mqtt_host, mqtt_port, username=username, password=password,
                        tls_ca_file=tls_ca_file, client_id=f"hashflex-ingest-{site}", plausibility=profile)
    ingest.add_callback(lambda message: loop.on_message(message, utc_now()))
    ingest.add_rejection_callback(lambda rejection: loop.on_rejection(rejection, utc_now()))
    feed = price_feed_from_env(profile, store)
    feed_stats = (lambda: feed.stats()) if feed is not None else (lambda: None)
    ven = _start_openadr(loop)
    meter = _start_meter(profile, loop)

    def status(now: datetime) -> dict[str, Any]:
        document = {**loop.status(now), "inputs": ingest.stats(), "mqtt_connected": ingest.connected,
                    "input_rejections": ingest.rejection_stats(), "price_feed": feed_stats(),
                    "openadr": ven.status() if ven is not None else None}
        return with_broker_health(document, ingest.connected)

    server = StatusServer(status, utc_now, http_host, http_port, loop=loop, ingest=ingest)  # dashboard + writes
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if profile_path is not None:
            signal.signal(signal.SIGHUP, lambda *_: _reload(loop, profile_path))
    if feed is not None:
        feed.start()
    ingest.start()
    server.start()
    log.info("hashflex running for %s: MQTT %s:%d, HTTP %s:%d, store %s", site, mqtt_host, mqtt_port,
             http_host, server.port, os.path.abspath(store_path))
    try:
        loop.run(utc_now, stop)
    finally:
        if ven is not None:
            ven.stop()
        if meter is not None:
            meter.stop()
        if feed is not None:
            feed.stop()
        server.stop()
        ingest.stop()
        publisher.close()
        loop.close()
        driver.close()
        if compute_driver is not None:
            compute_driver.close()
        loop.solver.close()
        recorder.flush()
        recorder.close()
        store.close()
