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
