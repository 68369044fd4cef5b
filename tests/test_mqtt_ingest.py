"""MqttIngest against a real Mosquitto: valid messages reach the store, bad ones are counted with their
reason and do not stop ingest, duplicates are stored once, out-of-order data lands by timestamp, and
ingest resumes after a broker restart."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import InboundMessage, NoiseMessage, Topics
from hashflex.store import Store

SITE = "west"
TOPICS = Topics(SITE)
T0 = datetime(2025, 7, 1, 12, tzinfo=timezone.utc)


def iso(minute: int) -> str:
    return (T0 + timedelta(minutes=minute)).isoformat()


def noise_payload(minute: int, laeq_dba: float = 42.0, receptor_id: str = "r1") -> dict:
    return {"receptor_id": receptor_id, "laeq_dba": laeq_dba, "averaging_s": 60, "timestamp": iso(minute),
            "meter_class": 1}


VALID = [
    (TOPICS.price, {"settlement_point": "HB_WEST", "market": "RT", "interval_start": iso(0),
                    "interval_end": iso(15), "price_usd_mwh": -12.5}),
    (TOPICS.renewable("pv1"), {"source_id": "pv1", "power_kw": 1500, "timestamp": iso(0)}),
    (TOPICS.noise("r1"), noise_payload(0)),
    (TOPICS.carbon, {"intensity_kg_per_mwh": 380, "kind": "marginal", "timestamp": iso(0), "source": "wt"}),
    (TOPICS.hashprice, {"hashprice_usd_per_ph_day": 51.2, "timestamp": iso(0), "source": "luxor"}),
    (TOPICS.telemetry("m1"), {"miner_id": "m1", "power_kw": 3.5, "hashrate_th_s": 200, "mode": "stock",
                              "temperature_c": 61, "errors": [], "timestamp": iso(0)}),
    (TOPICS.dr, {"event_id": "ev1", "modification_number": 0, "program": "ERS-10", "start": iso(5),
                 "import_limit_kw": 400, "issuer": "ercot"}),
    (TOPICS.limits, {"issuer": "ops", "reason": "night", "issued_at": iso(0), "import_limit_kw": 900}),
]


class Publisher:
    """A separate QoS 1 client that waits for each PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher",
                                  protocol=mqtt.MQTTv5)
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, topic: str, payload: dict | bytes | str) -> None:
        raw = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        self.client.publish(topic, raw, qos=1).wait_for_publish(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "ingest.db") as s:
        yield s


@pytest.fixture
def ingest(mosquitto, store: Store, request: pytest.FixtureRequest) -> Iterator[MqttIngest]:
    client_id = f"ingest-{request.node.name}"[:60]
    ing = MqttIngest(store, SITE, mosquitto.host, mosquitto.port, client_id=client_id, session_expiry_s=0)
    ing.start()
    assert ing.wait_connected(10), "ingest did not connect to the broker"
    yield ing
    ing.stop()


@pytest.fixture
def publisher(mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.host, mosquitto.port)
    yield pub
    pub.close()


def total(ingest: MqttIngest, counter: str) -> int:
    return ingest.totals()[counter]


def test_valid_message_of_every_kind_is_stored(ingest: MqttIngest, publisher: Publisher, store: Store,
                                               wait_for: Callable[..., None]) -> None:
    received: list[InboundMessage] = []
    ingest.add_callback(received.append)
    for topic, payload in VALID:
        publisher.send(topic, payload)
    wait_for(lambda: total(ingest, "accepted") == len(VALID), message="all valid messages accepted")
    store.flush()
    assert sorted(m.kind for m in received) == sorted(
        ["price", "renewable", "noise", "carbon", "hashprice", "telemetry", "dr", "limits"])
    assert store.prices()["price_usd_mwh"].tolist() == [-12.5]
    for kind in ("renewable", "noise", "carbon", "hashprice", "telemetry"):
        assert len(store.observations(kind)) == 1, kind
    # Commands bind only through the control loop's limits book, never from the ingest's store.
    assert store.observations("limits").empty and store.dr_event("ev1") is None
    assert total(ingest, "rejected") == 0


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPICS.noise("r1"), b'{"receptor_id": "r1", "laeq_dba": ', "noise: payload: Invalid JSON"),
        (TOPICS.noise("r1"), {**noise_payload(1), "laeq_dba": "loud"},
         "noise: laeq_dba: Input should be a valid number"),
        (TOPICS.noise("r1"), {**noise_payload(1), "timestamp": "2025-07-01T12:01:00"},
         "noise: timestamp: Input should have timezone info"),
        (TOPICS.noise("r1"), {**noise_payload(1), "wind_mps": 3}, "noise: wind_mps: Extra inputs are not permitted"),
        (TOPICS.dr, {**VALID[6][1], "level": 2}, "dr: import_limit_kw, level: conflict"),
        ("hashflex/west/in/weather", b"{}", "topic: unknown kind 'weather'"),
    ],
    ids=["bad-json", "wrong-type", "naive-timestamp", "extra-field", "dr-limit-and-level", "unknown-topic"],
)
def test_invalid_message_is_counted_logged_and_ingest_continues(
    ingest: MqttIngest, publisher: Publisher, store: Store, wait_for: Callable[..., None],
    caplog: pytest.LogCaptureFixture, topic: str, payload: dict | bytes, reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="hashflex.feeds.mqtt")
    publisher.send(topic, payload)
    publisher.send(TOPICS.noise("r1"), noise_payload(2, 47.0))  # the next valid one
    wait_for(lambda: total(ingest, "accepted") == 1, message="the valid message after the bad one")
    assert total(ingest, "rejected") == 1
    assert total(ingest, "errors") == 0
    store.flush()
    rejections = store.rejections()
    assert rejections["reason"].tolist()[0].startswith(reason)
    assert rejections["count"].tolist() == [1]
    assert any(reason in record.getMessage() for record in caplog.records)
    assert store.observations("noise")["laeq_dba"].tolist() == [47.0]
    assert ingest.connected


def test_duplicates_are_counted_and_stored_once(ingest: MqttIngest, publisher: Publisher, store: Store,
                                                wait_for: Callable[..., None]) -> None:
    calls: list[InboundMessage] = []
    ingest.add_callback(calls.append)
    for _ in range(3):
        publisher.send(TOPICS.noise("r1"), noise_payload(0))
    publisher.send(TOPICS.noise("r1"), noise_payload(0, laeq_dba=60.0))  # same identity, other value
    publisher.send(TOPICS.noise("r1"), noise_payload(1))
    wait_for(lambda: sum(ingest.stats().get("noise", {}).values()) == 5, message="five noise messages handled")
    assert ingest.stats()["noise"] == {"accepted": 2, "rejected": 0, "duplicate": 3, "errors": 0}
    assert len(calls) == 2
    store.flush()
    frame = store.observations("noise")
    assert frame["laeq_dba"].tolist() == [42.0, 42.0] and len(frame) == 2


def test_dr_messages_are_all_passed_on_and_never_stored(ingest: MqttIngest, publisher: Publisher,
                                                         store: Store, wait_for: Callable[..., None]) -> None:
    """Issue 10 item 1: the ingest used to store every well-formed DR message (accepted by the DR
    book or not) and a restart read it back. Now every copy, a redelivery too, goes to the loop,
    whose limits book decides and answers it; nothing is stored here."""
    received: list[InboundMessage] = []
    ingest.add_callback(received.append)
    base = VALID[6][1]
    publisher.send(TOPICS.dr, base)
    publisher.send(TOPICS.dr, {**base, "modification_number": 1, "import_limit_kw": 250})
    publisher.send(TOPICS.dr, base)  # a redelivery of modification 0: the loop answers it again
    wait_for(lambda: len(received) == 3, message="three DR messages passed on")
    assert ingest.stats()["dr"]["accepted"] == 3 and ingest.stats()["dr"]["duplicate"] == 0
    assert [m.modification_number for m in received] == [0, 1, 0]
    store.flush()
    assert store.dr_event("ev1") is None and store.dr_events().empty


def test_out_of_order_messages_are_stored_by_timestamp(ingest: MqttIngest, publisher: Publisher, store: Store,
                                                       wait_for: Callable[..., None]) -> None:
    for minute in (10, 5, 0, 15):
        publisher.send(TOPICS.noise("r1"), noise_payload(minute, 40.0 + minute))
    wait_for(lambda: total(ingest, "accepted") == 4, message="four messages accepted")
    store.flush()
    frame = store.observations("noise")
    assert frame["timestamp"].tolist() == [T0 + timedelta(minutes=m) for m in (0, 5, 10, 15)]
    assert frame["laeq_dba"].tolist() == [40.0, 45.0, 50.0, 55.0]
    assert store.latest("noise", "r1").laeq_dba == 55.0


def test_slow_or_failing_callback_does_not_stop_ingest(ingest: MqttIngest, publisher: Publisher, store: Store,
                                                       wait_for: Callable[..., None]) -> None:
    def explode(message: InboundMessage) -> None:
        raise RuntimeError("guard bug")

    seen: list[InboundMessage] = []
    ingest.add_callback(explode)
    ingest.add_callback(seen.append)
    publisher.send(TOPICS.noise("r1"), noise_payload(0))
    publisher.send(TOPICS.noise("r1"), noise_payload(1))
    wait_for(lambda: len(seen) == 2, message="later callbacks still called")
    assert ingest.stats()["noise"]["errors"] == 2 and ingest.stats()["noise"]["accepted"] == 2
    store.flush()
    assert store.count("observations") == 2


def test_messages_for_another_site_are_not_received(ingest: MqttIngest, publisher: Publisher,
                                                    wait_for: Callable[..., None]) -> None:
    publisher.send(Topics("east").noise("r1"), noise_payload(0))
    publisher.send(TOPICS.noise("r1"), noise_payload(1))
    wait_for(lambda: total(ingest, "accepted") == 1, message="own site's message")
    assert total(ingest, "rejected") == 0 and ingest.stats().keys() == {"noise"}


def test_ingest_survives_a_broker_restart(mosquitto_factory, store: Store, wait_for: Callable[..., None]) -> None:
    broker = mosquitto_factory()
    ingest = MqttIngest(store, SITE, broker.host, broker.port, client_id="ingest-restart",
                        reconnect_min_s=0.1, reconnect_max_s=0.5)
    ingest.start()
    try:
        assert ingest.wait_connected(10)
        pub = Publisher(broker.host, broker.port)
        pub.send(TOPICS.noise("r1"), noise_payload(0))
        wait_for(lambda: total(ingest, "accepted") == 1, message="message before the restart")
        pub.close()

        broker.stop()
        wait_for(lambda: not ingest.connected, message="ingest to notice the broker is gone")
        broker.start()  # same port
        wait_for(lambda: ingest.connected, timeout_s=20, message="ingest to reconnect and resubscribe")
        assert ingest.connects == 2

        pub = Publisher(broker.host, broker.port)
        pub.send(TOPICS.noise("r1"), noise_payload(1))
        wait_for(lambda: total(ingest, "accepted") == 2, message="message after the restart")
        pub.close()
    finally:
        ingest.stop()
    store.flush()
    assert store.observations("noise")["timestamp"].tolist() == [T0, T0 + timedelta(minutes=1)]


def test_persistent_session_receives_qos1_sent_while_ingest_was_offline(
    mosquitto, tmp_path: Path, wait_for: Callable[..., None]
) -> None:
    with Store(tmp_path / "offline.db") as store:
        first = MqttIngest(store, SITE, mosquitto.host, mosquitto.port, client_id="ingest-persistent")
        first.start()
        assert first.wait_connected(10)
        first.stop()  # the broker keeps the session (clean_start False, session expiry 3600 s)

        pub = Publisher(mosquitto.host, mosquitto.port)
        pub.send(TOPICS.noise("r1"), noise_payload(7))
        pub.close()

        second = MqttIngest(store, SITE, mosquitto.host, mosquitto.port, client_id="ingest-persistent",
                            session_expiry_s=0)
        second.start()
        try:
            wait_for(lambda: total(second, "accepted") == 1, message="queued message delivered on reconnect")
        finally:
            second.stop()
        store.flush()
        assert store.observations("noise")["timestamp"].tolist() == [T0 + timedelta(minutes=7)]


def test_message_not_yet_committed_is_not_acknowledged_and_is_redelivered(
    mosquitto, tmp_path: Path, wait_for: Callable[..., None]
) -> None:
    """A crash between receipt and commit must not lose a QoS 1 message: it is acked only after commit."""
    release = threading.Event()
    with Store(tmp_path / "stuck.db") as stuck, Store(tmp_path / "fresh.db") as fresh:
        stuck._queue.put(_block_writer(release))  # the writer hangs: nothing commits
        first = MqttIngest(stuck, SITE, mosquitto.host, mosquitto.port, client_id="ingest-ack")
        first.start()
        assert first.wait_connected(10)
        pub = Publisher(mosquitto.host, mosquitto.port)
        pub.send(TOPICS.noise("r1"), noise_payload(3))
        pub.close()
        wait_for(lambda: total(first, "accepted") == 1, message="first ingest received it")
        first.stop()  # "crash": received, enqueued, never committed, never acknowledged

        second = MqttIngest(fresh, SITE, mosquitto.host, mosquitto.port, client_id="ingest-ack",
                            session_expiry_s=0)
        second.start()
        try:
            wait_for(lambda: total(second, "accepted") == 1, message="broker to redeliver the unacked message")
        finally:
            second.stop()
            release.set()
        fresh.flush()
        assert fresh.observations("noise")["timestamp"].tolist() == [T0 + timedelta(minutes=3)]


def _block_writer(release: threading.Event) -> object:
    from concurrent.futures import Future

    from hashflex.store import _Control

    return _Control(lambda conn: release.wait(30), Future())


def test_handle_never_raises_even_if_the_store_is_closed(tmp_path: Path) -> None:
    store = Store(tmp_path / "closed.db")
    ingest = MqttIngest(store, SITE)
    store.close()  # put() now raises
    raw = json.dumps(noise_payload(0)).encode()
    assert ingest.handle(TOPICS.noise("r1"), raw) is None
    assert ingest.handle(TOPICS.noise("r1"), raw) is None  # a redelivery is not a "duplicate": never stored
    assert ingest.stats()["unknown"]["errors"] == 2
    assert ingest.stats().get("noise", {}).get("duplicate", 0) == 0


def test_handle_without_store_counts_and_dispatches() -> None:
    ingest = MqttIngest(None, SITE)
    got: list[InboundMessage] = []
    ingest.add_callback(got.append)
    message = ingest.handle(TOPICS.noise("r1"), json.dumps(noise_payload(0)).encode())
    assert isinstance(message, NoiseMessage) and got == [message]
    assert ingest.handle(TOPICS.noise("r1"), json.dumps(noise_payload(0)).encode()) is None  # duplicate
    lock_free = threading.Thread(target=ingest.handle, args=(TOPICS.noise("r1"), b"{"))
    lock_free.start()
    lock_free.join(5)
    assert ingest.stats()["noise"] == {"accepted": 1, "rejected": 1, "duplicate": 1, "errors": 0}


@pytest.mark.parametrize("split", [True, False], ids=["split", "one-connection"])
def test_a_dr_event_does_not_wait_behind_a_telemetry_backlog(mosquitto, wait_for: Callable[..., None],
                                                             split: bool) -> None:
    """The newcomer review lost a DR event on a 7,200-miner demo: telemetry arrived faster than the
    ingest took it in, and the event queued behind it. Telemetry now has its own connection (and
    broker queue): a DR event sent after 1,000 telemetry messages reaches the loop while most of
    them are still waiting (1,000 messages at 10 ms each: a 10 s backlog, far longer than sending
    them takes even on a loaded machine). With one connection (``split_telemetry=False``) MQTT's in-order delivery
    puts it behind every one of them."""
    ingest = MqttIngest(None, SITE, mosquitto.host, mosquitto.port, client_id=f"ingest-backlog-{split}",
                        split_telemetry=split)
    telemetry_seen = [0]
    dr_seen_after: list[int] = []

    def on_message(message: InboundMessage) -> None:
        if message.kind == "telemetry":
            time.sleep(0.010)  # a slow consumer: 1,000 messages take >= 10 s
            telemetry_seen[0] += 1
        elif message.kind == "dr":
            dr_seen_after.append(telemetry_seen[0])

    ingest.add_callback(on_message)
    ingest.start()
    try:
        assert ingest.wait_connected(10)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{split}", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(1000)
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        sent = [client.publish(TOPICS.telemetry(f"m{k}"), json.dumps({**VALID[5][1], "miner_id": f"m{k}",
                                                                       "timestamp": iso(k % 50)}), qos=1)
                for k in range(1000)]
        for info in sent:
            info.wait_for_publish(timeout=30)
        client.publish(TOPICS.dr, json.dumps(VALID[6][1]), qos=1).wait_for_publish(timeout=10)
        wait_for(lambda: bool(dr_seen_after), timeout_s=60, message="the DR event reached the loop")
        client.loop_stop()
        client.disconnect()
    finally:
        ingest.stop()
    if split:
        assert dr_seen_after[0] < 1000, "the DR event waited behind the whole telemetry backlog"
    else:
        assert dr_seen_after[0] == 1000  # the fault the split removes: strictly behind every message sent before
