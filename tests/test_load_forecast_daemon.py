"""`hashflex run` takes ERCOT's system load forecast from both doors (issue 14): the HTTP poll the environment
names (a real relay server on 127.0.0.1, HASHFLEX_LOAD_FORECAST_URL) and MQTT ``in/load_forecast`` (a real
Mosquitto); both postings land in the daemon's store with their publication times, and /status and /metrics
say so. Payload values are SYNTHETIC (a relay's shape; no captured posting is bundled)."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pandas as pd

from conftest import free_port, json_server, poll_until
from hashflex.control.daemon import run_daemon
from hashflex.profile import parse_profile
from hashflex.sim.site import SimulatedFleet

PROFILE = """
site: {id: lfsite, name: Load forecast test site, timezone: America/Chicago, settlement_point: LZ_WEST,
       interval_minutes: 15, horizon_hours: 2, managers: [site_manager]}
grid: {import_limit_kw: 100}
miner_groups:
  - {id: air, model: S21, units: 4, modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
receptors:
  - {id: porch, distance_m: {air: 150}, background_dba: 30, caps: [{name: all, start: "00:00", end: "23:59", cap_dba: 60}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 49}
"""


def _posting(published: datetime, mw: float) -> dict[str, object]:
    start = (published + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return {"region": "ERCOT", "published_at": published.isoformat(), "source": "relay (SYNTHETIC)",
            "points": [{"interval_start": (start + timedelta(hours=h)).isoformat(), "load_forecast_mw": mw}
                       for h in range(24)]}


def test_the_daemon_stores_load_forecasts_from_http_and_mqtt(mosquitto, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    now = datetime.now(timezone.utc)
    polled = _posting(now - timedelta(hours=2), 45_000.0)
    with json_server(polled, path="/load_forecast") as url:
        monkeypatch.setenv("HASHFLEX_LOAD_FORECAST_URL", url)
        profile = parse_profile(PROFILE)
        http_port, stop, db = free_port(), threading.Event(), tmp_path / "hashflex.db"
        thread = threading.Thread(target=run_daemon, args=(profile,), daemon=True, kwargs={
            "store_path": str(db), "mqtt_host": mosquitto.host, "mqtt_port": mosquitto.port, "http_port": http_port,
            "driver": SimulatedFleet(profile), "stop": stop, "time_limit_s": 5.0, "price_model": "rules"})
        thread.start()

        def get(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=5) as response:
                return response.read().decode()

        def status() -> dict:
            try:
                return json.loads(get("/status"))
            except OSError:
                return {}

        try:
            poll_until(lambda: (status().get("load_forecast_feed") or {}).get("rows") == 24, 60, interval_s=0.2,
                       message="the polled posting stored")
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lf-daemon-pub", protocol=mqtt.MQTTv5)
            publisher.connect(mosquitto.host, mosquitto.port)
            publisher.loop_start()
            pushed = _posting(now - timedelta(hours=1), 47_000.0)
            publisher.publish("hashflex/lfsite/in/load_forecast", json.dumps(pushed), qos=1).wait_for_publish(5)
            publisher.publish("hashflex/lfsite/in/load_forecast",
                              json.dumps({**pushed, "points": [{**pushed["points"][0], "load_forecast_mw": -5}]}),
                              qos=1).wait_for_publish(5)
            publisher.disconnect()
            publisher.loop_stop()
            poll_until(lambda: ((status().get("inputs") or {}).get("load_forecast") or {}).get("rejected") == 1
                       and status()["inputs"]["load_forecast"]["accepted"] == 1, 30, interval_s=0.2,
                       message="the MQTT posting accepted, the bad one refused")
            body = status()
            assert body["load_forecast_feed"]["feed"] == f"load forecast JSON {url}"
            assert body["load_forecast_feed"]["last_published_at"] == pd.Timestamp(polled["published_at"]).isoformat()
            metrics = get("/metrics")
            assert 'hashflex_input_rejections_total{kind="load_forecast",reason="schema:greater_than"} 1.0' in metrics
            # the MQTT door's age, once the dashboard document is rebuilt (it is on messages and every 5 s)
            poll_until(lambda: 'hashflex_feed_age_seconds{feed="load_forecast"}' in get("/metrics"), 30,
                       interval_s=0.2, message="the load forecast feed's age on /metrics")
        finally:
            stop.set()
            thread.join(30)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT published_at_us, count(*), min(load_forecast_mw) FROM load_forecasts "
                            "GROUP BY published_at_us ORDER BY published_at_us").fetchall()
    assert [(n, mw) for _, n, mw in rows] == [(24, 45_000.0), (24, 47_000.0)]
