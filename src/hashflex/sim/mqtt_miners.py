"""Simulated MQTT miners (:class:`MqttSimulatedMiners`): one MQTT v5 connection multiplexes many.

The miners follow both setpoint designs of :mod:`hashflex.drivers.mqtt` (``setpoint_topics="both"``,
the default; ``"group"`` or ``"miner"`` for one only, e.g. to test a site whose miners speak only the
per-miner topic):

- their group's topic ``hashflex/<site>/out/setpoints/<group>`` (a subscription per group of the
  simulated miners): a :class:`~hashflex.drivers.setpoint_messages.GroupSetpointsMessage`, whose rows
  for this group's simulated miners are applied, each like a per-miner setpoint; rows for miners not
  simulated here are ignored (a real site's other racks), rows for a miner of another group are refused;
- ``hashflex/<site>/out/setpoint/<miner>`` (a wildcard subscription): a
  :class:`~hashflex.messages.SetpointMessage`.

Each miner publishes a ``TelemetryMessage`` (``simulated=True``) on ``in/telemetry/<miner>`` every
``telemetry_interval_s`` (real seconds) and right after a setpoint. The miner takes the deadline from
the payload's ``expires_at`` (and the broker drops undelivered messages via the v5 Message Expiry
Interval). What arrived is recorded per miner in ``received`` (the per-miner form of the setpoint and
the Message Expiry Interval it arrived with), whole group messages in ``group_messages`` (count) and
refusals in ``rejected``. SIMULATED. Moved out of :mod:`hashflex.sim.miners` (which re-exports it).
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Mapping
from typing import Any, Literal

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from hashflex.drivers.setpoint_messages import GroupSetpointsMessage, group_setpoints_topic
from hashflex.feeds.mqtt import mqtt_client
from hashflex.messages import SLEEP, SetpointMessage, TelemetryMessage, Topics
from hashflex.profile import MinerGroup
from hashflex.sim.miner_model import Clock, MinerState, ScaledClock, SimMiner, _Fleet

__all__ = ["MqttSimulatedMiners"]


class MqttSimulatedMiners(_Fleet):
    """Miners following their group's and their own setpoint topics and publishing telemetry.

    Parameters
    ----------
    site : str
        Site id (topic prefix ``hashflex/<site>/``).
    host, port : str, int
        The broker.
    miners : mapping of str to MinerGroup
        Miner id → its group (``miners_from_profile`` gives the controller's ids).
    clock : callable, optional
        Simulated time (``ScaledClock()`` by default).
    telemetry_interval_s : float
        Real seconds between telemetry rounds.
    client_id, username, password, tls_ca_file : str, optional
        The MQTT connection's id, credentials and CA file (TLS on when given).
    setpoint_topics : {"both", "group", "miner"}
        Which setpoint topics to follow.

    Raises
    ------
    ValueError
        No miners, or an unknown ``setpoint_topics``.
    """

    _ids = itertools.count()

    def __init__(self, site: str, host: str, port: int, miners: Mapping[str, MinerGroup], *,
                 clock: Clock | None = None, telemetry_interval_s: float = 0.5,
                 client_id: str | None = None, username: str | None = None, password: str | None = None,
                 tls_ca_file: str | None = None,
                 setpoint_topics: Literal["both", "group", "miner"] = "both") -> None:
        if setpoint_topics not in ("both", "group", "miner"):
            raise ValueError(f"setpoint_topics: must be 'both', 'group' or 'miner', not {setpoint_topics!r}")
        super().__init__(miners, clock or ScaledClock())
        self.topics = Topics(site)
        self.site, self.setpoint_topics = site, setpoint_topics
        self.host, self.port, self.telemetry_interval_s = host, port, telemetry_interval_s
        # the last setpoints each miner received, with the Message Expiry Interval it arrived with
        self.received: dict[str, collections.deque[tuple[SetpointMessage, int | None]]] = {
            m: collections.deque(maxlen=1000) for m in self.miners}
        self.group_messages = 0  # group messages received
        self.rejected: collections.deque[str] = collections.deque(maxlen=1000)
        self._group_topics = {group_setpoints_topic(site, g): g for g in sorted({m.group.id for m in
                                                                                 self.miners.values()})}
        self._client = mqtt_client(client_id or f"hashflex-sim-{site}-{next(self._ids)}", username=username,
                                   password=password, tls_ca_file=tls_ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> MqttSimulatedMiners:
        """Connect, subscribe and start the telemetry thread; returns ``self``."""
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._ticker = threading.Thread(target=self._tick_loop, name="sim-mqtt-telemetry", daemon=True)
        self._ticker.start()
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """True once connected and subscribed."""
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        """Stop the telemetry thread and disconnect."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttSimulatedMiners:
        self.start()
        if not self.wait_ready():
            raise RuntimeError("simulated miners could not connect to the broker")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            return
        topics = []
        if self.setpoint_topics in ("both", "miner"):
            topics.append((self.topics.setpoint("+"), 1))
        if self.setpoint_topics in ("both", "group"):
            topics.extend((topic, 1) for topic in self._group_topics)
        result, _mid = client.subscribe(topics)
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        expiry = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
        group_id = self._group_topics.get(message.topic)
        if group_id is not None:
            self._on_group_message(message, group_id, expiry)
            return
        miner_id = message.topic.rsplit("/", 1)[-1]
        miner = self.miners.get(miner_id)
        if miner is None:
            return
        try:
            setpoint = SetpointMessage.model_validate_json(message.payload)
        except ValidationError as exc:
            self.rejected.append(f"{message.topic}: {exc.error_count()} validation error(s)")
            return
        self._follow(miner, setpoint, expiry, message.topic)

    def _on_group_message(self, message: mqtt.MQTTMessage, group_id: str, expiry: int | None) -> None:
        try:
            group = GroupSetpointsMessage.model_validate_json(message.payload)
        except ValidationError as exc:
            self.rejected.append(f"{message.topic}: {exc.error_count()} validation error(s)")
            return
        self.group_messages += 1
        if group.group_id != group_id:
            self.rejected.append(f"{message.topic}: message for group {group.group_id!r}")
            return
        for setpoint in group.setpoint_messages():
            miner = self.miners.get(setpoint.miner_id)
            if miner is None:
                continue  # a miner simulated elsewhere (another rack's agent)
            if miner.group.id != group_id:
                self.rejected.append(f"{message.topic}: {setpoint.miner_id} is in group {miner.group.id}")
                continue
            self._follow(miner, setpoint, expiry, message.topic)

    def _follow(self, miner: SimMiner, setpoint: SetpointMessage, expiry: int | None, topic: str) -> None:
        """Apply one miner's setpoint (from either design) and answer with telemetry."""
        self.received[miner.miner_id].append((setpoint, expiry))
        if setpoint.miner_id != miner.miner_id or setpoint.expires_at <= self.clock():
            self.rejected.append(f"{topic}: wrong miner or already expired")
            return
        try:
            if setpoint.mode == SLEEP:
                miner.command_sleep()
            else:
                miner.command_mode(setpoint.mode, setpoint.expires_at)
        except KeyError as exc:
            self.rejected.append(f"{topic}: {exc}")
        self._publish_telemetry(miner)

    def _publish_telemetry(self, miner: SimMiner) -> None:
        snap = miner.snapshot()
        telemetry = TelemetryMessage(miner_id=snap.miner_id, power_kw=snap.power_kw,
                                     hashrate_th_s=snap.hashrate_th_s, mode=snap.reported_mode,
                                     temperature_c=60.0 if snap.state is MinerState.HASHING else 30.0,
                                     timestamp=self.clock(), simulated=True)
        self._client.publish(self.topics.telemetry(snap.miner_id), telemetry.model_dump_json(), qos=0)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.telemetry_interval_s):
            if not self._connected.is_set():
                continue
            for miner in self.miners.values():
                self._publish_telemetry(miner)
