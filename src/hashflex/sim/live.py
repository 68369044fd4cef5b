"""`hashflex sim`: a simulated site on a real broker, for a live `hashflex run` to control.

MQTT-simulated miners (every unit of the profile, under the controller's ids) follow
``out/setpoint/<miner>`` and publish telemetry; simulated noise meters publish ``in/noise/<receptor>``
every ``noise_period_s`` from the units actually running (same acoustics as the optimizer, plus the
configured model bias and meter scatter, SYNTHETIC).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

import paho.mqtt.client as mqtt

from hashflex.messages import Topics
from hashflex.profile import SiteProfile
from hashflex.sim.miners import MqttSimulatedMiners, miners_from_profile
from hashflex.sim.noise import NoiseSensorSim

log = logging.getLogger(__name__)


def running_counts(miners: MqttSimulatedMiners) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for state in miners.states().values():
        if state.mode != "sleep" and state.hashrate_th_s > 0:  # hashing, so its fans are loud
            counts[state.group_id, state.mode] = counts.get((state.group_id, state.mode), 0) + 1
    return counts


def run_live_sim(profile: SiteProfile, host: str, port: int, stop: threading.Event, *,
                 noise_period_s: float = 10.0, noise_bias_db: dict[str, float] | None = None,
                 telemetry_interval_s: float = 5.0) -> None:
    topics = Topics(profile.site_id)
    miners = MqttSimulatedMiners(profile.site_id, host, port, miners_from_profile(profile),
                                 telemetry_interval_s=telemetry_interval_s)
    sensors = NoiseSensorSim(profile, bias_db=noise_bias_db or {})
    meter = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hashflex-sim-noise-{profile.site_id}",
                        protocol=mqtt.MQTTv5)
    meter.connect_async(host, port)
    meter.loop_start()
    with miners:
        log.warning("simulating %d miners and %d noise meters for site %s on %s:%d",
                    len(miners.miners), len(profile.receptors), profile.site_id, host, port)
        while not stop.wait(noise_period_s):
            for reading in sensors.measure(running_counts(miners), datetime.now(timezone.utc)):
                meter.publish(topics.noise(reading.receptor_id), reading.model_dump_json(), qos=1)
    meter.disconnect()
    meter.loop_stop()
