"""MQTT driver: setpoints as ``SetpointMessage`` JSON on ``hashflex/<site>/out/setpoint/<miner>``.

Each setpoint is published at QoS 1 with the MQTT v5 Message Expiry Interval set to the whole
seconds left until ``expires_at`` (rounded down, at least 1), so a broker never delivers it late; the
deadline is also in the payload, which is what the miner enforces (falling back to sleep when it
passes without renewal). Intervals are in the seconds of the injected ``clock``.

``apply(batch)`` publishes the whole batch without waiting per message (paho keeps up to
``max_inflight`` unacknowledged, which must not exceed the broker's Receive Maximum: Mosquitto's
default is 20), then waits once for all PUBACKs. Results: ``applied`` when the broker acknowledged;
``unreachable`` when not connected, or when the broker answers "No matching subscribers" (no miner
listens on that topic); ``rejected`` for a failure reason code (e.g. "Not authorized" from an ACL),
an expired setpoint or an invalid one; ``timeout`` when no PUBACK came within ``puback_timeout_s``.

PUBACK only means the broker has it. Verification follows telemetry on ``in/telemetry/+``: a
setpoint is confirmed by the first telemetry *received after it was published* (ordering by arrival,
so miner clock skew does not matter) whose mode equals the setpoint's and whose power is within
``max(tolerance_kw, tolerance × target)``. ``verify(timeout_s)`` waits for the outstanding setpoints
and returns ``applied`` for confirmed ones and ``unverified`` (with the last telemetry seen) for the
rest; a newer setpoint for a miner replaces the outstanding one. Feed both to a
:class:`~hashflex.drivers.base.MinerRegistry`.

API: ``MqttDriver(site, host="127.0.0.1", port=1883, *, client_id=None, username=None, password=None,
tls_ca_file=None, keepalive_s=30, max_inflight=20, puback_timeout_s=5.0, tolerance=0.1,
tolerance_kw=0.05, clock=utc_now)``; ``start()``, ``wait_connected(timeout_s) -> bool``, ``connected``,
``apply(batch)``, ``verify(timeout_s) -> list[SetpointResult]``, ``pending() -> list[str]``,
``telemetry(miner_id) -> TelemetryMessage | None``, ``close()``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from hashflex.drivers.base import SLEEP, Clock, SetpointResult, SetpointStatus, utc_now
from hashflex.messages import SetpointMessage, TelemetryMessage, Topics, parse_message

__all__ = ["MqttDriver"]

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason code 0x10


class _SetpointLike(Protocol):
    miner_id: str
    mode: str
    power_target_kw: float
    issued_at: Any
    expires_at: Any


@dataclass
class _Pending:
    setpoint: _SetpointLike
    after_seq: int  # telemetry with a higher arrival number counts
    confirmed: str | None = None


class MqttDriver:
    """Publishes setpoints and verifies them against telemetry; see the module docstring."""

    _ids = itertools.count()

    def __init__(self, site: str, host: str = "127.0.0.1", port: int = 1883, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, tls_ca_file: str | None = None,
                 keepalive_s: int = 30, max_inflight: int = 20, puback_timeout_s: float = 5.0,
                 tolerance: float = 0.1, tolerance_kw: float = 0.05, clock: Clock = utc_now) -> None:
        self.topics = Topics(site)
        self.site, self.host, self.port, self.keepalive_s = site, host, port, keepalive_s
        self.puback_timeout_s, self.tolerance, self.tolerance_kw = puback_timeout_s, tolerance, tolerance_kw
        self.clock = clock
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"hashflex-driver-{site}-{next(self._ids)}",
                                   protocol=mqtt.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls_ca_file is not None:
            self._client.tls_set(ca_certs=tls_ca_file)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._max_inflight = max_inflight
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.message_callback_add(self.topics.telemetry("+"), self._on_telemetry)
        self._connected = threading.Event()
        self._acks: dict[int, ReasonCode] = {}  # mid → PUBACK reason; written in the network thread only
        self._expiry_props: dict[int, Properties] = {}
        self._cond = threading.Condition()
        self._seq = 0
        self._latest: dict[str, tuple[int, TelemetryMessage]] = {}
        self._pending: dict[str, _Pending] = {}
        self.rejected_telemetry = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> MqttDriver:
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client.loop_start()
        return self

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def __enter__(self) -> MqttDriver:
        self.start()
        if not self.wait_connected():
            self.close()
            raise ConnectionError(f"MQTT broker {self.host}:{self.port} not reachable")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect to %s:%s refused: %s", self.host, self.port, reason_code)
            return
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if receive_max is not None and receive_max < self._max_inflight:
            log.warning("broker Receive Maximum %s is below max_inflight %s: lower max_inflight",
                        receive_max, self._max_inflight)
        client.subscribe(self.topics.telemetry("+"), qos=0)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        # Runs under paho's message lock: take no lock of ours here (apply() publishes under it).
        self._acks[mid] = reason_code

    def _on_telemetry(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_message(message.topic, message.payload, site=self.site)
        if not isinstance(parsed, TelemetryMessage):
            self.rejected_telemetry += 1
            return
        with self._cond:
            self._seq += 1
            self._latest[parsed.miner_id] = (self._seq, parsed)
            pending = self._pending.get(parsed.miner_id)
            if pending is not None and pending.confirmed is None:
                verdict = self._judge(pending.setpoint, parsed)
                if verdict is not None:
                    pending.confirmed = verdict
                    self._cond.notify_all()

    # ------------------------------------------------------------------ setpoints
    def apply(self, batch: list[_SetpointLike]) -> list[SetpointResult]:
        """Publish every setpoint, then wait once for all PUBACKs; one result per setpoint, same order."""
        start = time.monotonic()
        results: list[SetpointResult | None] = [None] * len(batch)
        if not self._connected.is_set():
            reason = f"not connected to MQTT broker {self.host}:{self.port}; nothing published"
            return [SetpointResult(s.miner_id, SetpointStatus.UNREACHABLE, reason, 0.0) for s in batch]
        now = self.clock()
        with self._cond:
            seq = self._seq
        sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        for i, sp in enumerate(batch):
            remaining_s = (sp.expires_at - now).total_seconds()
            if remaining_s <= 0:
                results[i] = SetpointResult(sp.miner_id, SetpointStatus.REJECTED,
                                            f"setpoint expired at {sp.expires_at.isoformat()}; not published", 0.0)
                continue
            try:
                payload = SetpointMessage(miner_id=sp.miner_id, mode=sp.mode, power_target_kw=sp.power_target_kw,
                                          issued_at=sp.issued_at, expires_at=sp.expires_at).model_dump_json()
            except ValidationError as exc:
                reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                results[i] = SetpointResult(sp.miner_id, SetpointStatus.REJECTED, f"invalid setpoint: {reason}", 0.0)
                continue
            info = self._client.publish(self.topics.setpoint(sp.miner_id), payload, qos=1,
                                        properties=self._expiry(remaining_s))
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                status = SetpointStatus.UNREACHABLE if info.rc == mqtt.MQTT_ERR_NO_CONN else SetpointStatus.REJECTED
                results[i] = SetpointResult(sp.miner_id, status, f"publish failed: {mqtt.error_string(info.rc)}",
                                            time.monotonic() - start)
                continue
            sent.append((i, info))
        deadline = start + self.puback_timeout_s
        for i, info in sent:
            sp = batch[i]
            if not info.is_published():
                try:
                    info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                except (RuntimeError, ValueError) as exc:
                    results[i] = SetpointResult(sp.miner_id, SetpointStatus.UNREACHABLE, f"publish failed: {exc}",
                                                time.monotonic() - start)
                    continue
            results[i] = self._acked(sp, info, start, seq)
        return [r for r in results if r is not None]

    def _acked(self, sp: _SetpointLike, info: mqtt.MQTTMessageInfo, start: float, seq: int) -> SetpointResult:
        latency = time.monotonic() - start
        if not info.is_published():
            return SetpointResult(sp.miner_id, SetpointStatus.TIMEOUT,
                                  f"no PUBACK from {self.host}:{self.port} within {self.puback_timeout_s} s", latency)
        code = self._acks.pop(info.mid, None)
        if code is not None and code.is_failure:
            return SetpointResult(sp.miner_id, SetpointStatus.REJECTED, f"broker refused: {code}", latency)
        if code is not None and code.value == _NO_MATCHING_SUBSCRIBERS:
            return SetpointResult(sp.miner_id, SetpointStatus.UNREACHABLE,
                                  "broker has no subscriber for the setpoint topic (miner offline?)", latency)
        with self._cond:
            self._pending[sp.miner_id] = _Pending(sp, seq)
        return SetpointResult(sp.miner_id, SetpointStatus.APPLIED, "broker acknowledged (PUBACK); "
                              "awaiting telemetry to verify", latency)

    def _expiry(self, remaining_s: float) -> Properties:
        seconds = max(1, int(remaining_s))
        props = self._expiry_props.get(seconds)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = seconds
            if len(self._expiry_props) > 10_000:
                self._expiry_props.clear()
            self._expiry_props[seconds] = props
        return props

    # ------------------------------------------------------------------ verification
    def _judge(self, sp: _SetpointLike, telemetry: TelemetryMessage) -> str | None:
        band = max(self.tolerance_kw, self.tolerance * sp.power_target_kw)
        if telemetry.mode == sp.mode and abs(telemetry.power_kw - sp.power_target_kw) <= band:
            return f"telemetry confirms {sp.mode} at {telemetry.power_kw:.3f} kW"
        return None

    def verify(self, timeout_s: float = 0.0) -> list[SetpointResult]:
        """Wait up to ``timeout_s`` for telemetry to confirm the outstanding setpoints; resolve them all."""
        start = time.monotonic()
        deadline = start + timeout_s
        with self._cond:
            # telemetry that arrived before the wait began may already confirm
            for miner_id, pending in self._pending.items():
                latest = self._latest.get(miner_id)
                if pending.confirmed is None and latest is not None and latest[0] > pending.after_seq:
                    pending.confirmed = self._judge(pending.setpoint, latest[1])
            while any(p.confirmed is None for p in self._pending.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            pending_now, self._pending = self._pending, {}
            latest_now = dict(self._latest)
        latency = time.monotonic() - start
        results = []
        for miner_id, pending in pending_now.items():
            if pending.confirmed is not None:
                results.append(SetpointResult(miner_id, SetpointStatus.APPLIED, pending.confirmed, latency))
                continue
            results.append(SetpointResult(miner_id, SetpointStatus.UNVERIFIED,
                                          self._mismatch(pending, latest_now.get(miner_id)), latency))
        return results

    def _mismatch(self, pending: _Pending, latest: tuple[int, TelemetryMessage] | None) -> str:
        sp = pending.setpoint
        band = max(self.tolerance_kw, self.tolerance * sp.power_target_kw)
        want = f"expected {sp.mode} at {sp.power_target_kw:.3f} ± {band:.3f} kW"
        if latest is None or latest[0] <= pending.after_seq:
            return f"no telemetry since the setpoint was published; {want}"
        tel = latest[1]
        hint = " (still booting)" if tel.mode == "booting" and sp.mode != SLEEP else ""
        return f"telemetry says {tel.mode} at {tel.power_kw:.3f} kW{hint}; {want}"

    def pending(self) -> list[str]:
        """Miners with a published setpoint not yet resolved by :meth:`verify`."""
        with self._cond:
            return sorted(self._pending)

    def telemetry(self, miner_id: str) -> TelemetryMessage | None:
        with self._cond:
            latest = self._latest.get(miner_id)
        return latest[1] if latest else None
