"""QoS 1 publishing on paho-mqtt 2.x with one deadline for all PUBACKs (issue 18: no protocol code of
our own on the hot path; the framing, keep-alive, TLS and authentication are paho's).

:class:`PahoPublisher` owns a paho client of its own (a connection separate from the telemetry
subscription, so 100,000 telemetry messages do not queue behind setpoints or the other way round),
connected on demand: the first batch connects, later batches reuse the connection while paho keeps it
alive. Each item is published at QoS 1 with the MQTT v5 Message Expiry Interval; the broker's PUBACK
reason code comes back through paho's ``on_publish``. paho sends at most the broker's Receive Maximum
(CONNACK; Mosquitto: ``max_inflight_messages``, default 20) unacknowledged messages and queues the
rest; this class keeps at most ``max_outstanding`` items handed to paho (so packet identifiers, which
wrap at 65,535, never collide) and waits for all PUBACKs while the broker keeps answering: a batch
times out only when no PUBACK has come for ``timeout_s`` (a stalled or hung broker), not when a large
batch simply takes longer than ``timeout_s`` to go out (issue 18 newcomer finding: 100,000 per-miner
setpoints take ~18 s on one connection, and a fixed 5 s deadline left 82 % of them unsent).

No session state is kept and nothing is resent: after a timeout or a broken connection the client is
thrown away (paho must not resend stale setpoints on its own reconnect) and the next batch connects
afresh; unacknowledged items are reported (``timeout``, ``lost``), and the caller issues fresh
setpoints with fresh deadlines. Not thread-safe: the driver serialises calls.

API: ``PahoPublisher(host, port, client_id, *, username=None, password=None, tls_ca_file=None,
connect_timeout_s=5.0, keepalive_s=30, max_outstanding=10_000)``; ``publish(items, timeout_s) ->
list[PublishOutcome]`` with items ``(topic, payload, expiry_s)``; ``close()``; ``connects`` (successful
connections so far), ``receive_maximum`` (the broker's, from the last CONNACK).
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hashflex.feeds.mqtt import mqtt_client, stop_clients

__all__ = ["PahoPublisher", "PublishOutcome"]


@dataclass(frozen=True)
class PublishOutcome:
    """What became of one published item.

    Parameters
    ----------
    kind : {"acked", "timeout", "lost", "refused"}
        ``acked``: the broker answered with a PUBACK (``code`` its reason code, ``detail`` its name);
        ``timeout``: no PUBACK before the deadline; ``lost``: no connection, or it broke before the
        PUBACK (``detail`` says why); ``refused``: not sent (larger than the broker accepts).
    code : int
        The MQTT v5 PUBACK reason code (0 success, 0x10 no matching subscribers, >= 0x80 failure).
    detail : str
        Human-readable reason.
    """

    kind: Literal["acked", "timeout", "lost", "refused"]
    code: int = 0
    detail: str = ""


class PahoPublisher:
    """QoS 1 publishing with a deadline on a paho client of its own; see the module docstring.

    Parameters
    ----------
    host, port : str, int
        The broker.
    client_id : str
        MQTT client id of the publishing connection.
    username, password : str, optional
        Broker credentials.
    tls_ca_file : str, optional
        CA file that verifies the broker's certificate (TLS on when given).
    connect_timeout_s : float
        Deadline for the TCP (and TLS) connection and the CONNACK, s.
    keepalive_s : int
        MQTT keep alive, s (paho pings while idle).
    max_outstanding : int
        Most items handed to paho and not yet acknowledged (< 65,535, the packet-identifier space).
    """

    def __init__(self, host: str, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, tls_ca_file: str | None = None, connect_timeout_s: float = 5.0,
                 keepalive_s: int = 30, max_outstanding: int = 10_000) -> None:
        if not 1 <= max_outstanding < 65_535:
            raise ValueError(f"max_outstanding: must be in [1, 65534], not {max_outstanding}")
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password, self.tls_ca_file = username, password, tls_ca_file
        self.connect_timeout_s, self.keepalive_s = connect_timeout_s, keepalive_s
        self.max_outstanding = max_outstanding
        self.receive_maximum = 20  # paho's default window until a CONNACK says otherwise
        self.maximum_packet_size = 0  # 0: none announced
        self.connects = 0
        self._client: mqtt.Client | None = None
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._broken: str | None = None  # why the current connection is unusable
        self._waiting: dict[int, int] = {}  # packet id -> item index
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() returning its packet id
        self._progress_at = 0.0  # monotonic time of the last PUBACK (or of the batch's start)
        self._outcomes: list[PublishOutcome | None] = []
        self._properties: dict[int, Properties] = {}

    # ------------------------------------------------------------------ connection
    def close(self) -> None:
        """Disconnect (normal DISCONNECT) and stop the client's network thread."""
        self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            stop_clients([client], what="setpoint publisher")  # bounded: a gone broker host hangs a connect

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        with self._cond:
            if client is not self._client:  # a dropped client whose connect outlived _drop's bound
                client.disconnect()
                return
            self._connack = reason_code
            if not reason_code.is_failure and properties is not None:
                self.receive_maximum = int(getattr(properties, "ReceiveMaximum", 65_535))
                self.maximum_packet_size = int(getattr(properties, "MaximumPacketSize", 0))
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        with self._cond:
            if client is self._client:
                self._broken = f"broker disconnected: {reason_code}"
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        with self._cond:
            index = self._waiting.pop(mid, None)
            self._progress_at = time.monotonic()  # the broker is answering: the stall clock restarts
            if index is None:
                self._early[mid] = reason_code
            else:
                self._outcomes[index] = _acked(reason_code)
            self._cond.notify_all()

    def _usable(self) -> bool:
        return self._client is not None and self._broken is None and self._client.is_connected()

    def _connect(self, deadline: float) -> None:
        """A fresh connected client, or ConnectionError / OSError saying why not."""
        self._drop()
        for _ in range(2):  # a second time only to take the Receive Maximum the broker announced
            window = min(self.receive_maximum, self.max_outstanding)
            # no reconnect in the background: a broken client is dropped and the next publish connects afresh
            # (a background reconnect to a gone broker host also held the daemon's exit, task H3)
            client = mqtt_client(self.client_id, username=self.username, password=self.password,
                                 tls_ca_file=self.tls_ca_file, reconnect=False)
            client.max_inflight_messages_set(window)
            client.max_queued_messages_set(0)
            client.connect_timeout = max(0.001, min(self.connect_timeout_s, deadline - time.monotonic()))
            client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
            client.on_publish = self._on_publish
            with self._cond:
                self._connack, self._broken = None, None
            self._client = client
            try:
                client.connect(self.host, self.port, keepalive=self.keepalive_s)
            except (OSError, ssl.SSLError, ValueError):
                self._client = None
                raise
            client.loop_start()
            with self._cond:
                while self._connack is None and self._broken is None:
                    remaining = min(deadline, time.monotonic() + self.connect_timeout_s) - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                connack, broken = self._connack, self._broken
            if connack is None or connack.is_failure:
                self._drop()
                if connack is not None:
                    raise ConnectionError(f"connection refused: {connack}")
                raise ConnectionError(broken or f"no CONNACK within {self.connect_timeout_s} s")
            self.connects += 1
            if min(self.receive_maximum, self.max_outstanding) == window:
                return
            self._drop()  # reconnect with the broker's window (paho cannot change it while connected)
        raise ConnectionError("the broker's Receive Maximum changed between two connections")

    # ------------------------------------------------------------------ publishing
    def _expiry(self, expiry_s: int) -> Properties:
        props = self._properties.get(expiry_s)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
            if len(self._properties) > 4096:
                self._properties.clear()
            self._properties[expiry_s] = props
        return props

    def publish(self, items: list[tuple[str, bytes, int]], timeout_s: float) -> list[PublishOutcome]:
        """Publish ``(topic, payload, expiry_s)`` items at QoS 1 and wait for their PUBACKs.

        Parameters
        ----------
        items : list of (str, bytes, int)
            Topic, payload and Message Expiry Interval (whole seconds, >= 1) of each message.
        timeout_s : float
            The deadline for connecting, and the longest the broker may go without a PUBACK while
            items are outstanding (a stall), s: a batch that keeps being acknowledged is never cut
            short, however long it takes.

        Returns
        -------
        list of PublishOutcome
            One per item, same order; never raises for a transport fault.
        """
        deadline = time.monotonic() + timeout_s
        if not items:
            return []
        try:
            if not self._usable():
                self._connect(deadline)
        except (OSError, ConnectionError, ssl.SSLError, ValueError) as exc:
            detail = f"cannot connect: {getattr(exc, 'strerror', None) or exc}"
            return [PublishOutcome("lost", detail=detail)] * len(items)
        client = self._client
        assert client is not None
        with self._cond:
            self._outcomes = [None] * len(items)
            self._waiting, self._early = {}, {}
            self._progress_at = time.monotonic()

        def live_deadline() -> float:  # call with self._cond held
            return max(deadline, self._progress_at + timeout_s)

        stop: str | None = None
        for index, (topic, payload, expiry_s) in enumerate(items):
            if self.maximum_packet_size and len(payload) + len(topic) + 16 > self.maximum_packet_size:
                self._outcomes[index] = PublishOutcome(
                    "refused", detail=f"{len(payload)} bytes exceed the broker's maximum packet size "
                                      f"{self.maximum_packet_size}")
                continue
            with self._cond:  # flow control: at most max_outstanding items in paho's hands
                while (len(self._waiting) >= self.max_outstanding and self._broken is None
                       and time.monotonic() < live_deadline()):
                    self._cond.wait(max(0.0, live_deadline() - time.monotonic()))
                if self._broken is not None or time.monotonic() >= live_deadline():
                    stop = "lost" if self._broken is not None else "timeout"
                    break
            info = client.publish(topic, payload, qos=1, properties=self._expiry(expiry_s))
            with self._cond:
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self._broken = self._broken or f"publish failed: {mqtt.error_string(info.rc)}"
                    stop = "lost"
                    break
                early = self._early.pop(info.mid, None)
                if early is not None:
                    self._outcomes[index] = _acked(early)
                else:
                    self._waiting[info.mid] = index
        with self._cond:
            while self._waiting and self._broken is None:
                remaining = live_deadline() - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            broken = self._broken
            outcomes, self._outcomes, self._waiting = self._outcomes, [], {}
        if broken is not None or stop is not None or any(o is None for o in outcomes):
            self._drop()  # the broker still owes PUBACKs: the next batch starts on a clean connection
        if broken is not None:
            lost = PublishOutcome("lost", detail=f"connection lost before PUBACK: {broken}")
            return [o or lost for o in outcomes]
        return [o or PublishOutcome("timeout") for o in outcomes]


def _acked(reason_code: ReasonCode) -> PublishOutcome:
    code = int(reason_code.value)
    return PublishOutcome("acked", code, "Success" if code == 0 else str(reason_code))
