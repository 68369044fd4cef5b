"""Available for curtailment, live (issue 17): the figure of :mod:`hashflex.health.curtailable`
reaches ``/metrics`` (``hashflex_available_for_curtailment_kw{means}``) and the dashboard document
(``now.curtailment``) over a real HTTP server on 127.0.0.1, from telemetry that arrives over a real
Mosquitto through the ingest, exactly as in the daemon. Every expected number is worked out by hand
below from the fleet state the test publishes."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest

from hashflex.control.http import StatusServer
from hashflex.control.loop import ControlLoop
from hashflex.drivers.pdu import PduDriver, PduOutlet
from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import TelemetryMessage, Topics
from hashflex.profile import parse_profile
from hashflex.sim.site import SimulatedFleet
from hashflex.web.curtailment import LatestTelemetry

PROFILE = """
site: {id: curt, name: Curtailment test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 2}
grid: {import_limit_kw: 100}
miner_groups:
  - {id: air, model: Antminer S21, units: 5, idle_power_kw: 0.05,
     modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
  - {id: hyd, model: Antminer S21 XP Hyd, units: 3, cooling: hydro, idle_power_kw: 0.1,
     modes: [{name: stock, power_kw: 6.4, hashrate_th_s: 473, sound_power_dba: 64}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test placeholder}
economics: {hashprice_usd_per_ph_day: 49.0}
"""
NOW = datetime(2026, 2, 3, 18, 0, tzinfo=timezone.utc)


class _NoForecast:
    """The loop is never ticked here: a forecaster that says so if it is."""

    def __call__(self, *args: object) -> object:
        raise AssertionError("no tick in this test")


def telemetry(miner_id: str, power_kw: float, hashrate_th_s: float, age_s: float = 10.0) -> TelemetryMessage:
    return TelemetryMessage(miner_id=miner_id, power_kw=power_kw, hashrate_th_s=hashrate_th_s,
                            mode="stock" if hashrate_th_s else "sleep", temperature_c=60.0,
                            timestamp=NOW - timedelta(seconds=age_s))


# The fleet state, as the miners report it (sleep power is each group's idle draw):
FLEET = [
    telemetry("air-1", 3.5, 200.0),  # hashing: 3.5 - 0.05 = 3.45 kW by sleep
    telemetry("air-2", 3.5, 200.0),  # 3.45
    telemetry("air-3", 3.5, 200.0),  # 3.45
    telemetry("air-4", 0.05, 0.0),  # asleep: nothing more to shed by sleep; reporting
    telemetry("air-5", 3.5, 200.0, age_s=300.0),  # 5 min old: the ingest takes it (600 s window), we promise nothing
    telemetry("hyd-1", 6.2, 430.0),  # hashing below stock: 6.2 - 0.1 = 6.1
    # hyd-2 and hyd-3 never report: nothing
]
SLEEP_KW = 3 * (3.5 - 0.05) + (6.2 - 0.1)  # 16.45 kW
REPORTING = 5  # air-1..air-4 and hyd-1 (fresh); air-5 is stale
COUNTED = 4  # air-1..air-3 and hyd-1


def gauge(text: str, means: str) -> float | None:
    match = re.search(rf'^hashflex_available_for_curtailment_kw\{{means="{means}"\}} (\S+)$', text, re.M)
    return None if match is None else float(match.group(1))


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


@pytest.fixture
def served() -> Iterator[Callable[..., StatusServer]]:
    servers: list[StatusServer] = []

    def serve(loop: ControlLoop, ingest: MqttIngest | None = None) -> StatusServer:
        server = StatusServer(loop.status, lambda: NOW, host="127.0.0.1", port=0, loop=loop, ingest=ingest)
        server.start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


def test_metrics_show_the_hand_worked_kw_for_telemetry_over_mqtt(mosquitto, served,  # noqa: ANN001
                                                                  wait_for: Callable[..., None]) -> None:
    profile = parse_profile(PROFILE)
    # A driver that declares no capabilities (as the MQTT and LuxOS drivers): its miners sleep on command.
    loop = ControlLoop(profile, forecaster=_NoForecast(), driver=SimulatedFleet(profile))  # type: ignore[arg-type]
    ingest = MqttIngest(None, profile.site_id, mosquitto.host, mosquitto.port, client_id="curt-ingest",
                        session_expiry_s=0, clock=lambda: NOW, plausibility=profile)
    server = served(loop, ingest)
    ingest.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="curt-miners", protocol=mqtt.MQTTv5)
    try:
        assert ingest.wait_connected(10)
        before = get(server.url + "metrics")
        assert gauge(before, "sleep") == 0.0 and gauge(before, "power_off") == 0.0  # nothing heard: nothing promised
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        topics = Topics(profile.site_id)
        for message in FLEET:
            publisher.publish(topics.telemetry(message.miner_id), message.model_dump_json(), qos=1).wait_for_publish(5)
        wait_for(lambda: len(server.dashboard.telemetry) == len(FLEET), message="every reading at the dashboard")
        server.dashboard.refresh()
        text = get(server.url + "metrics")
    finally:
        publisher.loop_stop()
        ingest.stop()
    assert gauge(text, "sleep") == pytest.approx(SLEEP_KW, abs=1e-9)
    assert gauge(text, "power_off") == 0.0  # no PDU declared
    assert "# TYPE hashflex_available_for_curtailment_kw gauge" in text
    state = json.loads(get(server.url + "api/state"))["now"]["curtailment"]
    assert state["available_kw"] == pytest.approx(16.45, abs=1e-9)
    assert (state["miners_reporting"], state["miners_counted"], state["basis"]) == (REPORTING, COUNTED, "miner telemetry")
    assert state["modelled_kw"] == 0.0  # the loop has commanded nothing yet: every unit asleep in its model


def test_a_pdu_driver_counts_whole_draws_by_power_off_and_only_its_outlets(served) -> None:  # noqa: ANN001
    profile = parse_profile(PROFILE)
    # Outlets for air-1, air-2 and air-4 only; this PDU cannot sleep a miner (firmware is not its business).
    pdu = PduDriver([PduOutlet(m, "127.0.0.1", 1, n) for n, m in enumerate(("air-1", "air-2", "air-4"), start=1)])
    loop = ControlLoop(profile, forecaster=_NoForecast(), driver=pdu)  # type: ignore[arg-type]
    server = served(loop)
    for message in FLEET:  # the path `run --simulate` uses: the observer hands messages to the feed ages
        server.dashboard.feeds.seen(message, NOW)
    server.dashboard.refresh()
    text = get(server.url + "metrics")
    # air-1, air-2: whole draw 3.5 each by opening the outlet; air-4 asleep: its idle 0.05; others: no outlet.
    assert gauge(text, "power_off") == pytest.approx(3.5 + 3.5 + 0.05, abs=1e-9)
    assert gauge(text, "sleep") == 0.0
    state = json.loads(get(server.url + "api/state"))["now"]["curtailment"]
    assert (state["miners_reporting"], state["miners_counted"]) == (REPORTING, 3)


def test_no_dashboard_no_series() -> None:
    server = StatusServer(lambda now: {"healthy": True}, lambda: NOW, host="127.0.0.1", port=0)
    server.start()
    try:
        text = get(server.url + "metrics")
    finally:
        server.stop()
    assert "# TYPE hashflex_available_for_curtailment_kw gauge" in text
    assert gauge(text, "sleep") is None and gauge(text, "power_off") is None  # unknown is not 0


def test_latest_telemetry_keeps_the_newest_reading_per_miner() -> None:
    kept = LatestTelemetry()
    kept.add(telemetry("air-1", 3.5, 200.0, age_s=5.0))
    kept.add(telemetry("air-1", 0.05, 0.0, age_s=50.0))  # an older redelivery: ignored
    kept.add(object())  # not telemetry: ignored
    assert len(kept) == 1 and kept.snapshot()["air-1"].power_kw == 3.5
