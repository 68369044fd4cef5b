"""`hashflex sim` on a real broker: noise meters publish levels computed from the miners running."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt

from conftest import poll_until
from hashflex.messages import SetpointMessage, Topics
from hashflex.profile import parse_profile
from hashflex.sim.live import run_live_sim
from hashflex.acoustics import modelled_laeq_dba

PROFILE = """
site: {id: simlive, name: sim live, settlement_point: LZ_WEST}
grid: {import_limit_kw: 100}
miner_groups:
  - {id: air, model: S21, units: 4, modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
receptors:
  - {id: porch, distance_m: {air: 100}, background_dba: 35, caps: [{name: all, start: "00:00", end: "23:59", cap_dba: 60}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 49}
"""


def test_noise_meters_follow_the_running_miners(mosquitto) -> None:  # noqa: ANN001 - conftest fixture
    profile = parse_profile(PROFILE)
    topics = Topics("simlive")
    readings: list[float] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="simlive-test", protocol=mqtt.MQTTv5)
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topics.noise("+"), qos=1), ready.set())
    client.on_message = lambda c, u, m: readings.append(json.loads(m.payload)["laeq_dba"])
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    assert ready.wait(5)
    stop = threading.Event()
    thread = threading.Thread(target=run_live_sim, args=(profile, mosquitto.host, mosquitto.port, stop),
                              kwargs={"noise_period_s": 0.2, "telemetry_interval_s": 0.2}, daemon=True)
    thread.start()
    try:
        poll_until(lambda: len(readings) >= 3, 10, message="noise readings")
        asleep = modelled_laeq_dba(profile, {}, "porch")
        assert all(abs(r - asleep) < 2.5 for r in readings[:3])  # background only, ±5σ of the meter scatter
        now = datetime.now(timezone.utc)
        for i in range(1, 5):
            setpoint = SetpointMessage(miner_id=f"air-{i}", mode="stock", power_target_kw=3.5, issued_at=now,
                                       expires_at=now + timedelta(minutes=10))
            client.publish(topics.setpoint(f"air-{i}"), setpoint.model_dump_json(), qos=1)
        running = modelled_laeq_dba(profile, {("air", "stock"): 4}, "porch")
        poll_until(lambda: readings and abs(readings[-1] - running) < 2.5, 10, message="louder readings with 4 running")
    finally:
        stop.set()
        thread.join(10)
        client.loop_stop()
