"""Setpoint confirmation, alert channels (real HTTP server, real Mosquitto), repair-or-replace."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import paho.mqtt.client as mqtt
import pytest

from hashflex.drivers.base import Setpoint
from hashflex.drivers.confirm import SetpointConfirmer
from hashflex.health.alerts import MqttAlerter, WebhookAlerter, alert_topic, fan_out
from hashflex.health.detectors import Finding
from hashflex.health.economics import UnitEconomics, repair_or_replace
from hashflex.health.reading import MinerReading, reading_from_telemetry
from hashflex.messages import TelemetryMessage

T0 = datetime(2026, 7, 1, 12, tzinfo=timezone.utc)
FINDING = Finding("m1", "overheating", "critical", "chip 101 °C (limit 100 °C)", T0, 101.0)


def test_confirmer_waits_resends_then_marks():
    confirmer = SetpointConfirmer(mark_after=2, settle_s=30.0)
    sp = Setpoint("m1", "stock", 3.0, T0, T0 + timedelta(minutes=10))
    drifting = MinerReading("m1", T0 + timedelta(seconds=10), power_kw=3.6, hashrate_th_s=100.0)
    assert confirmer.check(sp, drifting, T0, T0 + timedelta(seconds=10)).action == "wait"  # settling
    later = lambda s: MinerReading("m1", T0 + timedelta(seconds=s), power_kw=3.6, hashrate_th_s=100.0)  # noqa: E731
    assert confirmer.check(sp, later(40), T0, T0 + timedelta(seconds=40)).action == "resend"
    marked = confirmer.check(sp, later(70), T0, T0 + timedelta(seconds=70))
    assert marked.action == "mark" and marked.drifts == 2 and "over its 3.000 kW target" in marked.reason
    good = MinerReading("m1", T0 + timedelta(seconds=80), power_kw=3.0, hashrate_th_s=100.0)
    assert confirmer.check(sp, good, T0, T0 + timedelta(seconds=80)).action == "ok"
    assert confirmer.check(sp, later(90), T0, T0 + timedelta(seconds=90)).action == "resend"  # counting again
    assert confirmer.check(sp, later(0), T0, T0 + timedelta(seconds=500)).action == "stale"
    assert confirmer.check(sp, None, T0, T0).action == "stale"
    boot = Setpoint("m2", "stock", 3.0, T0, T0 + timedelta(minutes=10))
    asleep = MinerReading("m2", T0 + timedelta(seconds=100), power_kw=0.02, hashrate_th_s=0.0)
    assert confirmer.check(boot, asleep, T0, T0 + timedelta(seconds=100), boot_s=300).action == "wait"


def test_mqtt_telemetry_becomes_a_reading():
    msg = TelemetryMessage(miner_id="m1", power_kw=3.1, hashrate_th_s=120.0, mode="stock", temperature_c=71.0,
                           errors=["fan 2 slow"], timestamp=T0)
    reading = reading_from_telemetry(msg, setpoint_power_kw=3.0)
    assert reading.max_chip_temp_c == 71.0 and reading.setpoint_power_kw == 3.0 and reading.extra["errors"] == 1


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict, str | None]] = []
    status = 204

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append((json.loads(body), self.headers.get("Authorization")))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_posts_the_finding_and_survives_a_dead_endpoint(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HASHFLEX_ALERT_TOKEN", "t0k")
        hook = WebhookAlerter(f"http://127.0.0.1:{server.server_port}/alerts", timeout_s=2.0)
        hook(FINDING)
        assert _Hook.received[-1] == (FINDING.as_alert(), "Bearer t0k") and hook.sent == 1
        _Hook.status = 500
        hook(FINDING)
        assert hook.failures == 1 and hook.last_error == "HTTP 500"
    finally:
        server.shutdown()
        server.server_close()
    hook(FINDING)  # nobody listening: counted, not raised
    assert hook.failures == 2 and "ConnectionError" in hook.last_error
    with pytest.raises(ValueError, match="https"):
        WebhookAlerter("http://alerts.example.com/x")


def test_mqtt_alert_on_out_alert(mosquitto, wait_for):
    got: list[tuple[str, dict]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(alert_topic("west"), qos=1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        assert subscribed.wait(10)
        seen: list[Finding] = []
        both = fan_out([MqttAlerter(pub, "west"), seen.append])
        both(FINDING)
        wait_for(lambda: got, message="alert on out/alert")
        assert got[0] == ("hashflex/west/out/alert", FINDING.as_alert()) and seen == [FINDING]
    finally:
        for client in (sub, pub):
            client.loop_stop()
            client.disconnect()


def test_repair_or_replace():
    old = UnitEconomics(hashrate_th_s=95.0, power_kw=3.25)  # S19-class, 34 J/TH
    new = UnitEconomics(hashrate_th_s=200.0, power_kw=3.5)  # S21-class, 17.5 J/TH
    common = dict(repair_downtime_days=5, replace_lead_days=30, salvage_usd=150.0, remaining_life_days=540,
                  horizon_days=540, hashprice_usd_th_day=0.05, energy_usd_mwh=35.0)
    cheap_board = repair_or_replace(old, new, repair_cost_usd=300.0, new_price_usd=3500.0, tariff_rate=0.25,
                                    **common)
    assert cheap_board.choice == "repair" and cheap_board.repair_net_usd > cheap_board.replace_net_usd
    rich_hashprice = repair_or_replace(old, new, repair_cost_usd=300.0, new_price_usd=3500.0, tariff_rate=0.0,
                                       **{**common, "hashprice_usd_th_day": 0.12})
    assert rich_hashprice.choice == "replace" and "tariff" in rich_hashprice.detail
    with pytest.raises(ValueError, match="tariff_rate"):
        repair_or_replace(old, new, repair_cost_usd=1, new_price_usd=1, tariff_rate=-0.1, **common)
