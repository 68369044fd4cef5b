"""The MQTT driver takes a columnar batch whole (issue 18): against the real Mosquitto fixture,
``apply_batch`` publishes the same messages (topics and payloads) and gives the same results and
pending verifications as ``apply`` of the same setpoints one by one, with group messages, chunks,
per-miner groups, a group nobody follows (the per-miner fallback), an invalid row, an expired batch
and no broker at all."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from hashflex.drivers.base import SetpointStatus, utc_now
from hashflex.drivers.batch import GroupBatch, SetpointBatch
from hashflex.drivers.mqtt import MqttDriver
from hashflex.drivers.setpoint_messages import group_setpoints_topic
from hashflex.messages import Topics


def _batch(seconds: float = 900.5) -> SetpointBatch:
    now = utc_now()
    air = GroupBatch("air", np.array(["air-0", "air-1", "air-2", "air-9/x", "air-4"], dtype=object),
                     np.array([0, 1, -1, 0, 1], dtype=np.int16), ("eco", "stock"), np.array([0.0, 0.01, 2.9, 3.5]))
    hydro = GroupBatch("hydro", np.array(["hydro-0", "hydro-1"], dtype=object), np.array([0, -1], dtype=np.int16),
                       ("eco",), np.array([0.0, 0.02, 5.0]), sorted_ids=True)
    solo = GroupBatch("solo", np.array(["solo-0"], dtype=object), np.array([0], dtype=np.int16), ("eco",),
                      np.array([0.0, 0.0, 1.0]))
    return SetpointBatch([air, hydro, solo], now, now + timedelta(seconds=seconds))


class _Spy:
    """Keeps what the driver hands its (real) publisher: (topic, payload) per message."""

    def __init__(self, driver: MqttDriver) -> None:
        self.items: list[tuple[str, bytes]] = []
        real = driver.publisher.publish

        def publish(items, timeout_s):
            self.items += [(topic, payload) for topic, payload, _ in items]
            return real(items, timeout_s)

        driver.publisher.publish = publish


@pytest.fixture
def listeners(mosquitto, request):
    """Subscribers standing in for the miners: air's group topic and every per-miner topic, not hydro's
    or solo's group topic (their group messages find nobody and fall back per miner)."""
    site = request.node.name.replace("_", "-")[:40].strip("-[]")
    topics = Topics(site)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site}-miners", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    result = client.subscribe([(group_setpoints_topic(site, "air"), 1), (topics.setpoint("+"), 1)])
    assert result[0] == mqtt.MQTT_ERR_SUCCESS
    assert subscribed.wait(10), "no SUBACK"  # the fallback needs the subscriptions in place
    yield site
    client.loop_stop()
    client.disconnect()


def _answers(results) -> list[tuple[str, SetpointStatus, str]]:
    return [(r.miner_id, r.status, r.reason) for r in results]


@pytest.mark.parametrize("options", [{}, {"max_setpoints_per_message": 2}, {"per_miner_groups": ["air"]},
                                     {"setpoint_topics": "miner"}])
def test_apply_batch_publishes_and_answers_as_apply(listeners, mosquitto, options) -> None:
    """Same messages, results, message count and pending verifications as ``apply``, for each design."""
    site = listeners
    batch = _batch()
    with MqttDriver(site, mosquitto.host, mosquitto.port, **options) as one, \
            MqttDriver(site, mosquitto.host, mosquitto.port, **options) as whole:
        spy_one, spy_whole = _Spy(one), _Spy(whole)
        want = one.apply(batch.setpoints())
        got = whole.apply_batch(batch)
        assert _answers(got) == _answers(want)
        assert spy_whole.items == spy_one.items
        assert whole.messages_published == one.messages_published
        assert whole.pending() == one.pending()
        assert {m: (p.mode, p.power_target_kw) for m, p in whole._pending.items()} == {
            m: (p.mode, p.power_target_kw) for m, p in one._pending.items()}
    statuses = {r.miner_id: r.status for r in got}
    assert statuses["air-9/x"] is SetpointStatus.REJECTED and "miner_id" in got[3].reason
    assert statuses["air-0"] is SetpointStatus.APPLIED and statuses["hydro-0"] is SetpointStatus.APPLIED
    assert got.tally() == {"applied": 7, "rejected": 1}


def test_an_expired_batch_is_refused_whole_and_not_published(listeners, mosquitto) -> None:
    """Every row rejected as expired (as ``apply`` does), nothing handed to the broker."""
    site = listeners
    batch = _batch(seconds=0.001)
    with MqttDriver(site, mosquitto.host, mosquitto.port) as one, \
            MqttDriver(site, mosquitto.host, mosquitto.port) as whole:
        spy = _Spy(whole)
        want = one.apply(batch.setpoints())
        got = whole.apply_batch(batch)
    assert _answers(got) == _answers(want)
    assert {r.status for r in got} == {SetpointStatus.REJECTED} and "expired" in got[0].reason
    assert spy.items == [] and whole.messages_published == 0


def test_a_batch_without_a_broker_is_not_sent(mosquitto_factory) -> None:
    """No broker: ``not_sent`` for every valid row (a transport fault), nothing left pending."""
    broker = mosquitto_factory()
    port = broker.port
    broker.stop()
    batch = _batch()
    drivers = [MqttDriver("nobroker", "127.0.0.1", port, puback_timeout_s=1.0).start() for _ in range(2)]
    try:
        want = drivers[0].apply(batch.setpoints())
        got = drivers[1].apply_batch(batch)
    finally:
        for driver in drivers:
            driver.close()
    assert _answers(got) == _answers(want)
    assert got.tally() == {"not_sent": 7, "rejected": 1}  # the transport's fault, not the miners'
    assert drivers[1].pending() == []
