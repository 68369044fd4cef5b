"""`hashflex run` end to end: a real Mosquitto, MQTT-simulated miners, the daemon as a process.

A DR event sent on in/dr is acknowledged on out/dr/ack and the miners' measured power falls under
the limit; after kill -9 and a restart the event is still in force; after a broker restart a
modification of the event still lands; /healthz, /status and
/metrics answer; an unknown issuer is refused with a reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd
import pytest

from conftest import free_port, poll_until
from hashflex.messages import DREventMessage, NoiseMessage, Topics
from hashflex.profile import load_profile
from hashflex.sim.miners import MqttSimulatedMiners
from hashflex.store import Store

PROFILE = """
site: {id: e2e, name: E2E test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 4, managers: [manager]}
grid: {import_limit_kw: 100}
dr: {issuers: [utility], level_import_limit_kw: {1: 40, 2: 20, 3: 0}}
miner_groups:
  - id: air
    model: Antminer S21
    units: 10
    modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]
  - id: hyd
    model: Antminer S21 XP Hyd
    units: 5
    cooling: hydro
    modes: [{name: stock, power_kw: 6.4, hashrate_th_s: 473, sound_power_dba: 64}]
receptors:
  - id: porch
    distance_m: {air: 120, hyd: 120}
    background_dba: 30
    caps: [{name: always, start: "00:00", end: "23:59", cap_dba: 60}]
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test placeholder}
economics: {hashprice_usd_per_ph_day: 49.0, pool_fee_pct: 2.0}
"""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class AckListener:
    def __init__(self, host: str, port: int, topic: str) -> None:
        self.acks: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-acks", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload))
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), ready.set())
        self.client.connect(host, port)
        self.client.loop_start()
        assert ready.wait(5)

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_daemon(profile_path: Path, store: Path, port: int, http_port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hashflex.cli", "--log-level", "INFO", "run", "--profile", str(profile_path),
         "--store", str(store), "--mqtt-port", str(port), "--http-port", str(http_port), "--time-limit", "5"],
        stdout=log.open("a"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM, then kill if it has not stopped within 15 s."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(15)
    except subprocess.TimeoutExpired:
        daemon.kill()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


@pytest.fixture()
def site(tmp_path: Path, mosquitto):  # noqa: ANN001 - conftest fixture
    profile_path = tmp_path / "e2e.yaml"
    profile_path.write_text(PROFILE)
    profile = load_profile(profile_path)
    store_path = tmp_path / "hashflex.db"
    now = pd.Timestamp(utc_now()).floor("h")
    index = pd.date_range(now - pd.Timedelta(hours=1), periods=8, freq="h")
    with Store(str(store_path)) as store:  # day-ahead prices already published: cheap power
        store.put_price_frame(pd.DataFrame({"interval_start": index, "interval_end": index + pd.Timedelta(hours=1),
                                            "settlement_point": "LZ_WEST", "market": "DA", "price_usd_mwh": 20.0}),
                              published_at=(now - pd.Timedelta(hours=12)).to_pydatetime())
        store.flush()
    groups = {g.id: g for g in profile.miner_groups}
    miners = {f"air-{i:02d}": groups["air"] for i in range(1, 11)} | {f"hyd-{i}": groups["hyd"] for i in range(1, 6)}
    sim = MqttSimulatedMiners("e2e", mosquitto.host, mosquitto.port, miners)
    sim.start()
    assert sim.wait_ready(10)
    yield profile_path, store_path, sim, mosquitto, tmp_path
    sim.stop()


def test_dr_event_is_obeyed_and_survives_kill_9(site) -> None:  # noqa: ANN001
    profile_path, store_path, sim, broker, tmp_path = site
    topics = Topics("e2e")
    http_port = free_port()
    log = tmp_path / "daemon.log"
    daemon = start_daemon(profile_path, store_path, broker.port, http_port, log)
    listener = AckListener(broker.host, broker.port, topics.dr_ack)
    try:
        try:
            poll_until(lambda: sim.total_power_kw() > 60, 60, message="miners running")
        except BaseException:
            print(log.read_text()[-3000:])
            raise
        poll_until(lambda: http_get(http_port, "/healthz")[0] == 200, 20, message="healthz 200")
        code, body = http_get(http_port, "/metrics")
        assert code == 200 and b"hashflex_units_running 15.0" in body

        # A noise meter reads 4 dB over the cap: the fast path steps the loudest units down at once.
        before = sim.total_power_kw()
        reading = NoiseMessage(receptor_id="porch", laeq_dba=64.0, averaging_s=60, timestamp=utc_now(), meter_class=1)
        listener.publish(topics.noise("porch"), reading.model_dump_json())
        poll_until(lambda: sim.total_power_kw() < before - 10, 10, message="noise fast path cut")
        assert json.loads(http_get(http_port, "/status")[1])["counters"]["fast_path_actions"] >= 1

        now = utc_now()
        event = DREventMessage(event_id="ers-e2e", modification_number=0, program="ERS-10", start=now,
                               end=now + timedelta(hours=2), import_limit_kw=20.0, issuer="utility")
        listener.publish(topics.dr, event.model_dump_json())
        poll_until(lambda: any(a["event_id"] == "ers-e2e" for a in listener.acks), 10, message="DR ack")
        ack = next(a for a in listener.acks if a["event_id"] == "ers-e2e")
        assert ack["status"] == "accepted"
        poll_until(lambda: sim.total_power_kw() <= 20.0, 10, message="load under the DR limit")

        rogue = DREventMessage(event_id="rogue", modification_number=0, program="utility", start=now,
                               end=now + timedelta(hours=1), import_limit_kw=0.0, issuer="mallory")
        listener.publish(topics.dr, rogue.model_dump_json())
        poll_until(lambda: any(a["event_id"] == "rogue" for a in listener.acks), 10, message="rogue ack")
        assert next(a for a in listener.acks if a["event_id"] == "rogue")["status"] == "rejected"

        status = json.loads(http_get(http_port, "/status")[1])
        assert status["active_dr_events"] == ["ers-e2e"]

        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        daemon = start_daemon(profile_path, store_path, broker.port, http_port, log)
        poll_until(lambda: http_get(http_port, "/status")[0] == 200, 30, message="restarted daemon status")
        poll_until(lambda: json.loads(http_get(http_port, "/status")[1]).get("last_solve") is not None, 60,
                   message="first tick after restart")
        status = json.loads(http_get(http_port, "/status")[1])
        assert status["active_dr_events"] == ["ers-e2e"], "the accepted event survived kill -9"
        assert sim.total_power_kw() <= 20.0

        # Broker down: /healthz says so (no DR can arrive). Then back: every client reconnects and a
        # modification of the event still lands.
        broker.stop()
        poll_until(lambda: http_get(http_port, "/healthz")[0] == 503, 30, message="healthz 503 with the broker down")
        assert b"MQTT broker disconnected" in http_get(http_port, "/healthz")[1]
        broker.start()
        tighter = event.model_copy(update={"modification_number": 1, "import_limit_kw": 8.0})
        poll_until(lambda: listener.client.is_connected(), 30, message="listener reconnected")
        # The test broker keeps no sessions across a restart: wait until the daemon has resubscribed.
        poll_until(lambda: json.loads(http_get(http_port, "/status")[1] or b"{}").get("mqtt_connected"), 60,
                   message="daemon reconnected to the broker")
        deadline_acks = len(listener.acks)
        listener.publish(topics.dr, tighter.model_dump_json())
        poll_until(lambda: any(a["event_id"] == "ers-e2e" and a["modification_number"] == 1
                               for a in listener.acks[deadline_acks:]), 30, message="ack after broker restart")
        poll_until(lambda: sim.total_power_kw() <= 8.0, 30, message="load under the modified limit")
    finally:
        listener.close()
        stop_daemon(daemon)
