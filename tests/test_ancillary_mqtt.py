"""AS awards and deployments over a real Mosquitto (issue 15): ``in/as/award`` and ``in/as/deploy``
pass plausibility, reach the control loop as commands (never stored by the ingest), are decided in
the limits book, and a deployment cuts at once; a QoS 1 redelivery is answered once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import Topics
from hashflex.store import Store
from test_ancillary_control import NOW, award, make_loop, running


def test_award_and_deployment_over_mqtt_reach_the_book_and_cut(mosquitto, tmp_path: Path,
                                                               wait_for: Callable[..., None]) -> None:
    loop, fleet = make_loop()
    loop.handle_as_award(award(), NOW)
    loop.tick(NOW)
    assert running(fleet) == 5
    topics = Topics(loop.profile.site_id)
    with Store(tmp_path / "ingest.db") as store:
        ingest = MqttIngest(store, loop.profile.site_id, mosquitto.host, mosquitto.port, client_id="as-ingest",
                            session_expiry_s=0, clock=lambda: NOW, plausibility=loop.profile)
        ingest.add_callback(lambda message: loop.on_message(message, NOW))
        ingest.start()
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="as-publisher", protocol=mqtt.MQTTv5)
        try:
            assert ingest.wait_connected(10)
            publisher.connect(mosquitto.host, mosquitto.port)
            publisher.loop_start()
            deploy = {"deployment_id": "d-mqtt", "product": "RRS", "issued_at": NOW.isoformat(),
                      "deployed_kw": 4950.0, "issuer": "qse-test"}
            for _ in range(2):  # the second copy is a redelivery
                publisher.publish(f"{topics.prefix}in/as/deploy", json.dumps(deploy), qos=1).wait_for_publish(5)
            wait_for(lambda: loop.counters.get("as_duplicates", 0) == 1, message="both copies answered")
            assert ingest.totals()["accepted"] == 2 and ingest.totals()["rejected"] == 0
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            ingest.stop()
    assert running(fleet) == 0
    assert loop.book.import_limits_at(NOW) == {"AS:RRS:d-mqtt": 100.0}
    assert loop.as_performance["d-mqtt"]["shortfall_kw"] == 0.0
    assert loop.counters["as_accepted"] == 2  # the award, then the deployment once


def test_a_malformed_as_message_gets_a_rejected_ack_naming_the_field(mosquitto, wait_for: Callable[..., None]) -> None:
    """Newcomer finding: an AS award with a naive ``start`` or an unknown product was refused in the
    logs only; the QSE heard nothing. It now gets ``rejected`` on ``out/as/ack`` naming the field,
    as a malformed DR event does, and nothing reaches the limits book."""
    loop, _ = make_loop()
    topics = Topics(loop.profile.site_id)
    published: list[tuple[str, dict]] = []

    class Capture:
        def publish_json(self, topic_suffix: str, payload: dict) -> None:
            published.append((topic_suffix, payload))

    loop.publisher = Capture()
    ingest = MqttIngest(None, loop.profile.site_id, mosquitto.host, mosquitto.port, client_id="as-bad-ingest",
                        session_expiry_s=0, clock=lambda: NOW, plausibility=loop.profile)
    ingest.add_callback(lambda message: loop.on_message(message, NOW))
    ingest.add_rejection_callback(lambda rejection: loop.on_rejection(rejection, NOW))
    ingest.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="as-bad-publisher", protocol=mqtt.MQTTv5)
    try:
        assert ingest.wait_connected(10)
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        good = award()
        bad_start = {**json.loads(good.model_dump_json()), "award_id": "a-naive", "start": "2026-07-14T20:00:00"}
        bad_product = {**json.loads(good.model_dump_json()), "award_id": "a-regup", "product": "REGUP"}
        for payload in (bad_start, bad_product):
            publisher.publish(f"{topics.prefix}in/as/award", json.dumps(payload), qos=1).wait_for_publish(5)
        wait_for(lambda: len(published) == 2, message="both refused on out/as/ack")
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        ingest.stop()
    acks = {payload["message_id"]: payload for topic, payload in published if topic == "out/as/ack"}
    assert acks["a-naive"]["status"] == "rejected" and "start" in acks["a-naive"]["reason"]
    assert acks["a-regup"]["status"] == "rejected" and "product" in acks["a-regup"]["reason"]
    assert loop.counters["as_rejected"] == 2 and not loop.book.as_awards
