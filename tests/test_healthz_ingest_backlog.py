"""/healthz and /metrics say when the ingest is behind (newcomer finding: telemetry outran the ingest on the
7,200-miner demo and /healthz said ok). Two backlogs, both reproduced with real parts: telemetry handled long
after it was measured (a real Mosquitto, the real ingest, messages whose measurement is 45 s old: what a
broker queue of 45 s looks like from the ingest), and writes waiting for the store's writer (a real SQLite
store whose writer is held busy). /healthz and /metrics over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hashflex.control.daemon import with_ingest_backlog
from hashflex.control.http import StatusServer
from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import Topics
from hashflex.store import Store

UTC = timezone.utc
NOW = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
SITE = "west"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "backlog.db") as s:
        yield s


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _serve(status_fn: Callable[[datetime], dict]) -> StatusServer:
    server = StatusServer(status_fn, lambda: NOW, host="127.0.0.1", port=0)
    server.start()
    return server


def _telemetry(miner: str, measured: datetime) -> str:
    return json.dumps({"miner_id": miner, "power_kw": 3.5, "hashrate_th_s": 200, "mode": "stock",
                       "temperature_c": 61, "errors": [], "timestamp": measured.isoformat()})


def test_late_telemetry_makes_healthz_name_the_backlog_and_metrics_show_the_lag(
        mosquitto, store: Store, wait_for: Callable[..., None]) -> None:
    ingest = MqttIngest(store, SITE, mosquitto.host, mosquitto.port, client_id="backlog-ingest", session_expiry_s=0,
                        clock=lambda: NOW, lag_window_s=0.0)
    ingest.start()
    assert ingest.wait_connected(10)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="backlog-publisher", protocol=mqtt.MQTTv5)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    topics = Topics(SITE)
    server = _serve(lambda now: with_ingest_backlog({"healthy": True, "unhealthy_causes": []}, ingest.backlog()))
    try:
        # in time: measured 2 s before it is handled
        for i in range(5):
            publisher.publish(topics.telemetry(f"m{i}"), _telemetry(f"m{i}", NOW - timedelta(seconds=2)),
                              qos=1).wait_for_publish(5)
        wait_for(lambda: ingest.stats().get("telemetry", {}).get("accepted") == 5, message="5 on time")
        status, body = _get(server.url + "healthz")
        assert (status, body) == (200, "ok\n")
        assert ingest.backlog()["telemetry_lag_s"] == 2.0
        # behind: every message handled 45 s after it was measured (each message is its own window here)
        for i in range(5):
            publisher.publish(topics.telemetry(f"m{i}"), _telemetry(f"m{i}", NOW - timedelta(seconds=45)),
                              qos=1).wait_for_publish(5)
        wait_for(lambda: ingest.stats()["telemetry"]["accepted"] == 10, message="5 late")
        status, body = _get(server.url + "healthz")
        assert status == 503
        causes = json.loads(body)["unhealthy_causes"]
        assert causes == ["ingest backlog: telemetry handled 45 s after it was measured (more than 30 s): the broker "
                          "is queueing messages faster than the ingest takes them"]
        _, metrics = _get(server.url + "metrics")
        assert 'hashflex_ingest_lag_seconds{connection="telemetry"} 45.0' in metrics
        assert "hashflex_store_queue_depth " in metrics
    finally:
        server.stop()
        publisher.disconnect()
        publisher.loop_stop()
        ingest.stop()


def test_the_lag_is_the_smallest_of_its_window_so_one_slow_clock_cannot_fake_a_backlog(store: Store) -> None:
    ingest = MqttIngest(store, SITE, client_id="window-ingest", clock=lambda: NOW, lag_window_s=3600.0)
    topic = Topics(SITE).telemetry("m1")
    ingest.handle(topic, _telemetry("m1", NOW - timedelta(seconds=300)).encode())  # a miner whose clock is 5 min slow
    ingest.handle(topic, _telemetry("m1", NOW - timedelta(seconds=1)).encode())
    assert ingest.backlog()["telemetry_lag_s"] is None  # the window has not closed yet
    ingest._lag_window_s = 0.0  # close it now (the window is a duration; no waiting in a test)
    ingest.handle(topic, _telemetry("m1", NOW - timedelta(seconds=2)).encode())
    assert ingest.backlog()["telemetry_lag_s"] == 1.0
    assert with_ingest_backlog({"healthy": True}, ingest.backlog())["healthy"] is True


def test_writes_waiting_for_a_busy_store_make_healthz_name_the_backlog(store: Store,
                                                                       wait_for: Callable[..., None]) -> None:
    release, busy = threading.Event(), threading.Event()

    def hold(conn: object) -> None:  # the writer thread is busy (as with a slow disk) until released
        busy.set()
        release.wait(30)

    holder = threading.Thread(target=lambda: store._call(hold, 60), daemon=True)
    holder.start()
    assert busy.wait(10)
    ingest = MqttIngest(store, SITE, client_id="store-ingest", clock=lambda: NOW)
    topic = Topics(SITE).telemetry("m1")
    for i in range(50):
        ingest.handle(topic, _telemetry("m1", NOW - timedelta(seconds=i)).encode())
    server = _serve(lambda now: with_ingest_backlog({"healthy": True, "unhealthy_causes": []}, ingest.backlog(),
                                                    max_store_wait_s=0.2))
    try:
        wait_for(lambda: (ingest.backlog()["store_oldest_queued_s"] or 0) > 0.2, message="a write waits > 0.2 s")
        backlog = ingest.backlog()
        assert backlog["store_queued"] == 50
        status, body = _get(server.url + "healthz")
        assert status == 503
        (cause,) = json.loads(body)["unhealthy_causes"]
        assert cause.startswith("ingest backlog: 50 write(s) waiting for the store, the oldest for ")
        _, metrics = _get(server.url + "metrics")
        assert "hashflex_store_queue_depth 50.0" in metrics
        release.set()
        holder.join(10)
        store.flush()
        assert ingest.backlog()["store_oldest_queued_s"] is None and ingest.backlog()["store_queued"] == 0
        status, body = _get(server.url + "healthz")
        assert (status, body) == (200, "ok\n")
    finally:
        release.set()
        server.stop()
