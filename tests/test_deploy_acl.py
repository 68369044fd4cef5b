"""The deploy/ files, tested for real where this machine allows it.

Broker: a real mosquitto runs ``deploy/mosquitto/mosquitto.conf`` with only the listener port, the
persistence directory and the file paths changed, the ``deploy/mosquitto/acl`` file byte for byte, and
a password file made by ``mosquitto_passwd -b``. paho clients (VERSION2 callbacks, MQTT v5) then prove
who may publish and read what. Mosquitto 2.0 answers an unauthorised QoS 1 publish with PUBACK reason
0x87 "Not authorized" and drops it; an unauthorised *subscription* is still granted, but messages the
client may not read are never delivered. So the tests assert on delivery, and on the reason code.

Non-delivery is proven with a sentinel: after the refused message, the same publisher sends one it may
send, to a topic the same subscriber reads; once the sentinel has arrived (the broker handles a client's
packets in order) a short bounded wait follows, then the refused payload must be absent.

systemd: ``systemd-analyze verify`` and ``security --offline`` when available (skipped, not faked, if
not); the unit is also parsed and its required keys checked everywhere.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from conftest import find_mosquitto, free_port, poll_until
from hashflex.messages import Topics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
ACL = DEPLOY / "mosquitto" / "acl"
UNIT = DEPLOY / "hashflex.service"
ENV_EXAMPLE = DEPLOY / "hashflex.env.example"
CONTAINERFILE = DEPLOY / "Containerfile"
SRC = ROOT / "src"

SITE = "quiet_hollow"
T = Topics(SITE)
PASSWORDS = {
    "hashflex": "daemon-secret",
    "utility": "utility-secret",
    "noise-maple_lane": "sensor-secret",
    "site_manager": "manager-secret",
    "feed-price": "price-secret",
    "feed-hashprice": "hashprice-secret",
    "feed-renewable": "renewable-secret",
    "feed-carbon": "carbon-secret",
    "m1": "miner1-secret",  # miners: username = miner id
    "m2": "miner2-secret",
    "rack_a": "rack-a-secret",  # a rack/group agent: username = group id
}
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
NON_DELIVERY_WAIT_S = 0.5
TIMEOUT_S = 10.0


# ------------------------------------------------------------------------------------------------
# A broker running the deploy config


def adapt_broker_config(text: str, port: int, workdir: Path) -> str:
    """The deploy config with only the listener port, persistence directory and file paths changed."""
    replacements = [
        (r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1"),
        (r"^password_file \S+$", f"password_file {workdir / 'passwd'}"),
        (r"^acl_file \S+$", f"acl_file {workdir / 'acl'}"),
        (r"^persistence_location \S+$", f"persistence_location {workdir}/"),
        (r"^log_dest file \S+$", f"log_dest file {workdir / 'mosquitto.log'}"),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"deploy mosquitto.conf: expected exactly one line matching {pattern!r}"
    return text


def active_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class AuthBroker:
    def __init__(self, binary: str, passwd_binary: str) -> None:
        self.binary, self.passwd_binary = binary, passwd_binary
        self.host = "127.0.0.1"
        self.workdir = Path(tempfile.mkdtemp(prefix="hashflex-acl-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_files()

    def _write_files(self) -> None:
        passwd = self.workdir / "passwd"
        for i, (user, password) in enumerate(PASSWORDS.items()):
            args = [self.passwd_binary, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password]
            subprocess.run(args, check=True, capture_output=True, timeout=30)
        shutil.copyfile(ACL, self.workdir / "acl")
        for path in (self.workdir, *self.workdir.iterdir()):
            _give_to_broker_user(path)

    def log_text(self) -> str:
        log = self.workdir / "mosquitto.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self) -> None:
        last = ""
        for _ in range(3):  # the free port can be taken between probing and binding
            self.port = free_port()
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(adapt_broker_config(CONF.read_text(), self.port, self.workdir))
            _give_to_broker_user(conf)
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None and not self.accepts_connections():
                time.sleep(0.02)
            if self.proc.poll() is None and self.accepts_connections():
                return
            self.stop()
            last = self.log_text()
        pytest.fail(f"mosquitto with the deploy config did not start: {last}", pytrace=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _give_to_broker_user(path: Path) -> None:
    """Started as root, mosquitto drops to the "mosquitto" user, which must reach its files (as in production)."""
    if os.geteuid() != 0:
        return
    try:
        account = pwd.getpwnam("mosquitto")
    except KeyError:
        return  # mosquitto then stays root or uses "nobody"; nothing to hand over
    os.chown(path, account.pw_uid, account.pw_gid)


@pytest.fixture(scope="module")
def broker() -> Iterator[AuthBroker]:
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto binary not found (apt-get install -y mosquitto, or set HASHFLEX_MOSQUITTO)",
                    pytrace=False)
    passwd_binary = shutil.which("mosquitto_passwd") or str(Path(binary).with_name("mosquitto_passwd"))
    if not os.access(passwd_binary, os.X_OK):
        pytest.fail("mosquitto_passwd not found (it ships with the mosquitto package)", pytrace=False)
    instance = AuthBroker(binary, passwd_binary)
    instance.start()
    yield instance
    instance.cleanup()


# ------------------------------------------------------------------------------------------------
# MQTT peers


class Peer:
    """One paho client (VERSION2, MQTT v5) recording CONNACK, SUBACK, PUBACK and messages."""

    def __init__(self, broker: AuthBroker, username: str | None, password: str | None = None) -> None:
        self.name = username or "anonymous"
        self._lock = threading.Lock()
        self.connack: ReasonCode | None = None
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.pubacks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{self.name}-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, PASSWORDS.get(username) if password is None else password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        poll_until(lambda: self.connack is not None, TIMEOUT_S, message=f"CONNACK for {self.name}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connack = reason_code
        if reason_code.is_failure:
            client.disconnect()  # no reconnect loop against a broker that refused us

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        with self._lock:
            self.subacks[mid] = list(reason_codes)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with self._lock:
            self.pubacks[mid] = reason_code

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> list[ReasonCode]:
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        poll_until(lambda: mid in self.subacks, TIMEOUT_S, message=f"SUBACK for {self.name} on {topic}")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> ReasonCode | None:
        """Publish; for QoS 1 wait for the PUBACK and return its reason code."""
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        if qos == 0:
            info.wait_for_publish(TIMEOUT_S)
            return None
        poll_until(lambda: info.mid in self.pubacks, TIMEOUT_S, message=f"PUBACK for {self.name} on {topic}")
        return self.pubacks[info.mid]

    def got(self, payload: bytes, topic: str | None = None) -> bool:
        with self._lock:
            return any(p == payload and (topic is None or t == topic) for t, p in self.messages)

    def wait_for(self, payload: bytes, topic: str | None = None) -> None:
        poll_until(lambda: self.got(payload, topic), TIMEOUT_S,
                   message=f"{self.name} to receive {payload!r} on {topic or 'any topic'}")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


@pytest.fixture
def connect(broker: AuthBroker) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(username: str | None, password: str | None = None) -> Peer:
        peer = Peer(broker, username, password)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def token(label: str) -> bytes:
    return f"{label}-{uuid.uuid4().hex}".encode()


def assert_authorized(rc: ReasonCode | None, what: str) -> None:
    assert rc is not None and not rc.is_failure, f"{what}: PUBACK {rc}"


def assert_refused(rc: ReasonCode | None, what: str) -> None:
    # Mosquitto 2.0 drops it and says 0x87; a broker that only drops silently would answer 0x00 or
    # 0x10 "No matching subscribers" - then the non-delivery checks below are what counts.
    assert rc is not None and rc.value == NOT_AUTHORIZED, f"{what}: expected PUBACK 0x87 Not authorized, got {rc}"


def assert_not_delivered(receiver: Peer, payload: bytes, sender: Peer, sentinel_topic: str) -> None:
    """``payload`` never reaches ``receiver``: ``sender`` sends a permitted sentinel after it."""
    sentinel = token("sentinel")
    assert_authorized(sender.publish(sentinel_topic, sentinel), f"sentinel {sentinel_topic}")
    receiver.wait_for(sentinel)
    time.sleep(NON_DELIVERY_WAIT_S)
    assert not receiver.got(payload), f"{payload!r} reached {receiver.name}"


# ------------------------------------------------------------------------------------------------
# Authentication


def test_anonymous_connection_is_refused(connect: Callable[..., Peer]) -> None:
    peer = connect(None)
    assert peer.connack is not None and peer.connack.is_failure
    assert peer.connack.value in (NOT_AUTHORIZED, BAD_CREDENTIALS)


@pytest.mark.parametrize(("username", "password"), [("utility", "wrong"), ("hashflex", ""), ("nobody", "x")])
def test_wrong_password_or_unknown_user_is_refused(connect: Callable[..., Peer], username: str,
                                                   password: str) -> None:
    peer = connect(username, password)
    assert peer.connack is not None and peer.connack.is_failure
    assert peer.connack.value in (NOT_AUTHORIZED, BAD_CREDENTIALS)


def test_every_identity_connects_with_its_password(connect: Callable[..., Peer]) -> None:
    for username in PASSWORDS:
        assert connect(username).connected, username


# ------------------------------------------------------------------------------------------------
# Authorisation


def test_utility_dr_reaches_daemon_but_not_limits_or_setpoints(connect: Callable[..., Peer]) -> None:
    daemon, miner, utility = connect("hashflex"), connect("m1"), connect("utility")
    assert not daemon.subscribe(T.inbound_filter)[0].is_failure
    miner.subscribe(T.setpoint("m1"))

    dr = token("dr")
    assert_authorized(utility.publish(T.dr, dr), "utility -> in/dr")
    daemon.wait_for(dr, T.dr)

    limits, limits_qos0 = token("limits"), token("limits-qos0")
    assert_refused(utility.publish(T.limits, limits), "utility -> in/limits")
    utility.publish(T.limits, limits_qos0, qos=0)  # no PUBACK at QoS 0: only delivery can tell
    forged = token("setpoint")
    assert_refused(utility.publish(T.setpoint("m1"), forged), "utility -> out/setpoint/m1")
    assert_refused(utility.publish(T.setpoint("x"), token("setpoint-x")), "utility -> out/setpoint/x")
    telemetry = token("telemetry")  # the miner pattern matches every username; the deny must win
    assert_refused(utility.publish(T.telemetry("utility"), telemetry), "utility -> in/telemetry/utility")

    assert_not_delivered(daemon, limits, utility, T.dr)
    assert not daemon.got(limits_qos0) and not daemon.got(telemetry)
    # The miner never saw the forged setpoint; the daemon's own arrives.
    real = token("real-setpoint")
    assert_authorized(daemon.publish(T.setpoint("m1"), real), "daemon -> out/setpoint/m1")
    miner.wait_for(real)
    assert not miner.got(forged)


def test_utility_reads_dr_ack_only(connect: Callable[..., Peer]) -> None:
    daemon, utility = connect("hashflex"), connect("utility")
    utility.subscribe(T.dr_ack)
    utility.subscribe(T.status)       # granted by mosquitto 2.0, but nothing is delivered
    utility.subscribe(T.inbound_filter)
    status, ack = token("status"), token("ack")
    assert_authorized(daemon.publish(T.status, status), "daemon -> out/status")
    assert_authorized(daemon.publish(T.dr_ack, ack), "daemon -> out/dr/ack")
    utility.wait_for(ack, T.dr_ack)
    # ... nor other inputs, its own included.
    sensor = connect("noise-maple_lane")
    noise, dr = token("noise"), token("dr")
    assert_authorized(sensor.publish(T.noise("maple_lane"), noise), "sensor -> own noise")
    assert_authorized(utility.publish(T.dr, dr), "utility -> in/dr")
    assert_not_delivered(utility, status, daemon, T.dr_ack)
    assert not utility.got(noise) and not utility.got(dr)


def test_sensor_publishes_only_its_own_receptor(connect: Callable[..., Peer]) -> None:
    daemon, sensor = connect("hashflex"), connect("noise-maple_lane")
    daemon.subscribe(T.inbound_filter)
    own = token("noise")
    assert_authorized(sensor.publish(T.noise("maple_lane"), own), "sensor -> in/noise/maple_lane")
    daemon.wait_for(own, T.noise("maple_lane"))

    refused = {
        "dr": (T.dr, token("dr")),
        "other receptor": (T.noise("school_yard"), token("other-noise")),
        "limits": (T.limits, token("limits")),
        "telemetry": (T.telemetry("noise-maple_lane"), token("telemetry")),
    }
    for what, (topic, payload) in refused.items():
        assert_refused(sensor.publish(topic, payload), f"sensor -> {what}")
    assert_not_delivered(daemon, refused["dr"][1], sensor, T.noise("maple_lane"))
    assert not any(daemon.got(payload) for _, payload in refused.values())


def test_miner_reads_only_its_own_setpoint_and_writes_only_its_own_telemetry(
        connect: Callable[..., Peer]) -> None:
    daemon, m1, m2 = connect("hashflex"), connect("m1"), connect("m2")
    daemon.subscribe(T.inbound_filter)
    m1.subscribe(f"{T.prefix}out/setpoint/+")  # a wildcard is granted, delivery is still filtered
    m1.subscribe(T.setpoint("m2"))
    m1.subscribe(f"{T.prefix}out/#")
    m1.subscribe(T.inbound_filter)
    m2.subscribe(T.setpoint("m2"))

    sp1, sp2, schedule = token("sp1"), token("sp2"), token("schedule")
    assert_authorized(daemon.publish(T.setpoint("m2"), sp2), "daemon -> out/setpoint/m2")
    assert_authorized(daemon.publish(T.schedule, schedule), "daemon -> out/schedule")
    assert_authorized(daemon.publish(T.setpoint("m1"), sp1), "daemon -> out/setpoint/m1")
    m1.wait_for(sp1, T.setpoint("m1"))
    m2.wait_for(sp2, T.setpoint("m2"))

    tel1, tel2 = token("tel1"), token("tel2")
    assert_refused(m1.publish(T.telemetry("m2"), tel2), "m1 -> in/telemetry/m2")
    assert_refused(m1.publish(T.dr, token("dr")), "m1 -> in/dr")
    assert_refused(m1.publish(T.setpoint("m2"), token("sp")), "m1 -> out/setpoint/m2")
    assert_authorized(m1.publish(T.telemetry("m1"), tel1), "m1 -> in/telemetry/m1")
    daemon.wait_for(tel1, T.telemetry("m1"))
    time.sleep(NON_DELIVERY_WAIT_S)
    assert not daemon.got(tel2)
    assert not m1.got(sp2) and not m1.got(schedule) and not m1.got(tel1)
    assert [topic for topic, _ in m1.messages] == [T.setpoint("m1")] * len(m1.messages)


def test_daemon_reads_every_input_and_publishes_outputs_only(connect: Callable[..., Peer]) -> None:
    daemon = connect("hashflex")
    assert not daemon.subscribe(T.inbound_filter)[0].is_failure
    inputs = {
        "utility": T.dr,
        "noise-maple_lane": T.noise("maple_lane"),
        "site_manager": T.limits,
        "feed-price": T.price,
        "feed-hashprice": T.hashprice,
        "feed-renewable": T.renewable("wind_farm_tap"),
        "feed-carbon": T.carbon,
        "m1": T.telemetry("m1"),
        "m2": T.telemetry("m2"),
    }
    sent = {}
    for username, topic in inputs.items():
        payload = token(username)
        assert_authorized(connect(username).publish(topic, payload), f"{username} -> {topic}")
        sent[topic] = payload
    for topic, payload in sent.items():
        daemon.wait_for(payload, topic)

    # It writes out/, never in/ (it must not be able to forge its own inputs).
    manager = connect("site_manager")
    manager.subscribe(T.status)
    for topic in (T.status, T.schedule, T.dr_ack, T.setpoint("m1")):
        assert_authorized(daemon.publish(topic, token("out")), f"daemon -> {topic}")
    forged = token("forged-dr")
    assert_refused(daemon.publish(T.dr, forged), "daemon -> in/dr")
    assert_not_delivered(daemon, forged, connect("utility"), T.dr)


def test_site_manager_sets_limits_and_watches_status(connect: Callable[..., Peer]) -> None:
    daemon, manager = connect("hashflex"), connect("site_manager")
    daemon.subscribe(T.inbound_filter)
    manager.subscribe(f"{T.prefix}out/#")
    limits = token("limits")
    assert_authorized(manager.publish(T.limits, limits), "manager -> in/limits")
    daemon.wait_for(limits, T.limits)
    dr = token("dr")
    assert_refused(manager.publish(T.dr, dr), "manager -> in/dr")
    assert_refused(manager.publish(T.setpoint("m1"), token("sp")), "manager -> out/setpoint/m1")
    status, setpoint, limits_ack = token("status"), token("setpoint"), token("limits-ack")
    daemon.publish(T.setpoint("m1"), setpoint)
    daemon.publish(T.status, status)
    daemon.publish(f"{T.prefix}out/limits/ack", limits_ack)
    manager.wait_for(status, T.status)
    manager.wait_for(limits_ack, f"{T.prefix}out/limits/ack")
    assert_not_delivered(daemon, dr, manager, T.limits)
    assert not manager.got(setpoint)


def test_feeds_publish_only_their_own_input(connect: Callable[..., Peer]) -> None:
    own = {"feed-price": T.price, "feed-hashprice": T.hashprice,
           "feed-renewable": T.renewable("solar_1"), "feed-carbon": T.carbon}
    for username, topic in own.items():
        feed = connect(username)
        for other in set(own.values()) - {topic}:
            assert_refused(feed.publish(other, token("x")), f"{username} -> {other}")
        for other in (T.dr, T.limits, T.telemetry(username)):
            assert_refused(feed.publish(other, token("x")), f"{username} -> {other}")


def test_new_miner_added_with_mosquitto_passwd_and_sighup(broker: AuthBroker,
                                                          connect: Callable[..., Peer]) -> None:
    """Adding a miner needs a password line and a reload, no ACL edit and no broker restart."""
    assert connect("m3", "miner3-secret").connack.value in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    subprocess.run([broker.passwd_binary, "-b", str(broker.workdir / "passwd"), "m3", "miner3-secret"],
                   check=True, capture_output=True, timeout=30)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    poll_until(lambda: "Reloading config" in broker.log_text(), TIMEOUT_S, message="mosquitto to reload")
    miner, daemon = connect("m3", "miner3-secret"), connect("hashflex")
    assert miner.connected
    daemon.subscribe(T.telemetry("m3"))
    miner.subscribe(T.setpoint("m3"))
    telemetry, setpoint = token("tel3"), token("sp3")
    assert_authorized(miner.publish(T.telemetry("m3"), telemetry), "m3 -> own telemetry")
    daemon.wait_for(telemetry)
    assert_authorized(daemon.publish(T.setpoint("m3"), setpoint), "daemon -> out/setpoint/m3")
    miner.wait_for(setpoint)
    assert_refused(miner.publish(T.telemetry("m1"), token("x")), "m3 -> in/telemetry/m1")


def test_the_real_daemon_works_within_its_acl(broker: AuthBroker, connect: Callable[..., Peer],
                                             tmp_path: Path) -> None:
    """``hashflex run`` as identity ``hashflex``, configured by the env-file variables: its status reaches a
    site manager, a sensor's reading reaches its ingest, and it stops cleanly on SIGTERM."""
    site = "quiet_hollow"  # the bundled profile's site id, as used in its topics
    http_port = free_port()
    env = {**os.environ, "HASHFLEX_MQTT_HOST": broker.host, "HASHFLEX_MQTT_PORT": str(broker.port),
           "HASHFLEX_MQTT_USERNAME": "hashflex", "HASHFLEX_MQTT_PASSWORD": PASSWORDS["hashflex"],
           "HASHFLEX_STORE": str(tmp_path / "hashflex.sqlite"), "HASHFLEX_HTTP_HOST": "127.0.0.1",
           "HASHFLEX_HTTP_PORT": str(http_port)}
    manager, sensor = connect("site_manager"), connect("noise-maple_lane")
    topics = Topics(site)
    manager.subscribe(topics.status)
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "hashflex.cli", "--log-level", "INFO", "run",
                                   "--profile", site], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def daemon_log() -> str:
            return log_path.read_text(errors="replace")

        def status() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=2) as response:
                    return json.loads(response.read())
            except (OSError, ValueError):
                return None

        poll_until(lambda: daemon.poll() is not None or manager.messages, 60,
                   message="the daemon's out/status at the site manager")
        assert daemon.poll() is None, daemon_log()
        assert manager.messages[0][0] == topics.status
        poll_until(lambda: daemon.poll() is not None or "ingest: connected" in daemon_log(), 30,
                   message="the daemon's ingest to connect")
        reading = {"receptor_id": "maple_lane", "laeq_dba": 41.5, "averaging_s": 60, "meter_class": 1,
                   "timestamp": datetime.now(timezone.utc).isoformat()}
        assert_authorized(sensor.publish(topics.noise("maple_lane"), json.dumps(reading).encode()), "noise")

        def noise_accepted() -> bool:
            current = status()
            return bool(current) and current.get("inputs", {}).get("noise", {}).get("accepted", 0) >= 1

        poll_until(lambda: daemon.poll() is not None or noise_accepted(), 30,
                   message="the sensor's reading to be accepted by the daemon")
        assert daemon.poll() is None, daemon_log()
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
    assert daemon.returncode == 0, daemon_log()
    assert "Not authorized" not in daemon_log() and "not authorised" not in daemon_log()


def test_broker_log_shows_no_acl_or_config_errors(broker: AuthBroker) -> None:
    log = broker.log_text()
    assert "Error" not in log, log


# ------------------------------------------------------------------------------------------------
# Static checks of the broker files


def test_broker_config_requires_auth_and_keeps_bursts() -> None:
    lines = active_lines(CONF.read_text())
    settings = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines if " " in line}
    assert settings["allow_anonymous"] == "false"
    assert "password_file" in settings and "acl_file" in settings
    assert settings["persistence"] == "true"
    assert int(settings["max_queued_messages"]) >= 100_000
    listeners = [line for line in lines if line.startswith("listener ")]
    assert listeners == ["listener 1883 127.0.0.1"], "only loopback plain MQTT is on by default"
    text = CONF.read_text()
    for key in ("listener 8883", "cafile", "certfile", "keyfile"):
        assert re.search(rf"^#{key}\b", text, re.MULTILINE), f"TLS option {key} documented"


def test_acl_service_identities_cannot_use_the_miner_patterns() -> None:
    """The %u patterns apply to every user: each non-daemon user section must deny the miner topics."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in active_lines(ACL.read_text()):
        keyword, rest = line.split(None, 1)
        if keyword == "user":
            current = rest.strip()
            sections[current] = []
        elif keyword == "topic":
            assert current is not None, f"ACL line for anonymous clients: {line!r}"
            sections[current].append(rest.strip())
        else:
            assert keyword == "pattern", line
    assert set(PASSWORDS) - {"m1", "m2", "rack_a"} <= set(sections)
    for user, rules in sections.items():
        if user == "hashflex":
            assert rules == ["read hashflex/+/in/#", "write hashflex/+/out/#"]
            continue
        assert "deny hashflex/+/in/telemetry/#" in rules, user
        assert "deny hashflex/+/out/setpoint/#" in rules, user
        assert "deny hashflex/+/out/setpoints/#" in rules, user  # the group pattern applies to everyone too
        grants = [rule for rule in rules if not rule.startswith("deny ")]
        assert grants, user
        for rule in grants:  # least privilege: write one input or read one output, no "#"
            assert re.fullmatch(r"write hashflex/\+/in/[a-z]+(/[+A-Za-z0-9_.:-]+)?|read hashflex/\+/out/[a-z/]+",
                                rule), f"{user}: {rule}"


# ------------------------------------------------------------------------------------------------
# systemd unit


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_has_required_keys() -> None:
    unit = read_unit()
    service = unit["Service"]
    assert re.search(r"/hashflex( --log-level \S+)? run --profile /etc/hashflex/site\.yaml$", service["ExecStart"])
    assert service["EnvironmentFile"].lstrip("-") == "/etc/hashflex/hashflex.env"
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "", "root")
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "hashflex"
    assert service["Restart"] == "always"
    assert service["NoNewPrivileges"] == "yes"
    assert "HASHFLEX_STORE=%S/hashflex/" in service["Environment"] or any(
        "HASHFLEX_STORE=%S/hashflex/" in line for line in UNIT.read_text().splitlines())
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _unit_with_existing_executable(tmp_path: Path) -> Path:
    """systemd-analyze insists that ExecStart exists: point it at a stub, change nothing else."""
    stub = tmp_path / "hashflex"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text, count = re.subn(r"^ExecStart=\S+", f"ExecStart={stub}", UNIT.read_text(), flags=re.MULTILINE)
    assert count == 1
    unit = tmp_path / "hashflex.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not installed (the test command installs the systemd package)")
    unit = _unit_with_existing_executable(tmp_path)
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values; it prints them, naming the file.
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert unit.name not in output, output


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not installed (the test command installs the systemd package)")
    unit = _unit_with_existing_executable(tmp_path)
    result = subprocess.run([tool, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr  # overall exposure <= 2.0 ("OK")


# ------------------------------------------------------------------------------------------------
# Environment and container


_ENV_CALL = re.compile(r"""(?:environ\.get|environ\.setdefault|getenv|environ)\s*[\(\[]\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")
_ENV_NAME_DEFAULT = re.compile(
    r"""\b(?:\w+_env|[A-Z0-9_]*ENV[A-Z0-9_]*)\s*(?::[^=\n]+)?=\s*["']([A-Z][A-Z0-9_]*)["']""")
_HASHFLEX_LITERAL = re.compile(r"""["'](HASHFLEX_[A-Z0-9_]*[A-Z0-9])["']""")


def env_vars_read_by_code() -> set[str]:
    """Names in ``os.environ[...]``/``getenv(...)``, in ``*_env = "NAME"`` defaults and HASHFLEX_* literals."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in (_ENV_CALL, _ENV_NAME_DEFAULT, _HASHFLEX_LITERAL):
            names.update(pattern.findall(text))
    return names


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?([A-Z][A-Z0-9_]*)=", line.strip())
        if match:
            names.add(match.group(1))
    return names


def test_env_example_lists_every_env_var_the_code_reads() -> None:
    read = env_vars_read_by_code()
    assert {"ERCOT_API_KEY", "ERCOT_ID_TOKEN"} <= read, "the scan of src/ found nothing: fix the scanner"
    missing = read - env_example_names()
    assert not missing, f"deploy/hashflex.env.example does not list {sorted(missing)}"


def test_env_example_lists_nothing_that_is_not_used() -> None:
    """Each listed variable is read by src/ or expanded by the unit / container entrypoint."""
    used = env_vars_read_by_code()
    recipes = UNIT.read_text() + CONTAINERFILE.read_text()
    unused = {name for name in env_example_names() - used
              if not re.search(rf"\$\{{{name}(:-[^}}]*)?\}}|\${name}\b", recipes)}
    assert not unused, f"deploy/hashflex.env.example lists variables nothing reads: {sorted(unused)}"


def test_env_example_is_valid_environment_file() -> None:
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            assert re.match(r"^[A-Z][A-Z0-9_]*=[^\"' ]*$", stripped), f"line {number}: {line!r}"
    for name in ("HASHFLEX_MQTT_HOST", "HASHFLEX_MQTT_PORT", "HASHFLEX_MQTT_USERNAME", "HASHFLEX_MQTT_PASSWORD",
                 "HASHFLEX_MQTT_TLS_CA", "HASHFLEX_STORE", "HASHFLEX_HTTP_PORT", "HASHFLEX_LOG_LEVEL",
                 "ERCOT_API_KEY", "ERCOT_ID_TOKEN"):
        assert name in env_example_names(), name


def test_containerfile_runs_unprivileged_with_healthcheck() -> None:
    """Static only: no container runtime or base image is available to build it in CI here."""
    lines = active_lines(CONTAINERFILE.read_text().replace("\\\n", " "))
    assert lines[0] == "FROM python:3.11-slim AS build"
    assert any(line.startswith("RUN ") and "pip install ." in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in lines)
    assert 'CMD ["run", "--profile", "/etc/hashflex/site.yaml"]' in lines


def test_containerfile_healthcheck_command_follows_healthz() -> None:
    """Run the HEALTHCHECK's exec-form command here: exit 0 on 200, non-zero on 503 or no server."""
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    command = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE).group(1))
    answer = {"code": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(answer["code"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HASHFLEX_HTTP_PORT": str(server.server_address[1])}
        results = {}
        for code in (200, 503):
            answer["code"] = code
            results[code] = subprocess.run(command, env=env, capture_output=True, timeout=30).returncode
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(command, env={**os.environ, "HASHFLEX_HTTP_PORT": str(free_port())},
                          capture_output=True, timeout=30).returncode
    assert results[200] == 0 and results[503] != 0 and down != 0, (results, down)


def test_the_deploy_manager_identity_is_a_manager_of_every_bundled_profile() -> None:
    """Issue 10 item 4: the broker identity allowed to write in/limits was "site-manager" while the
    profiles list "site_manager", so every limits change from it was refused as a stranger's."""
    from hashflex.profile import load_profile

    acl = (DEPLOY / "mosquitto" / "acl").read_text()
    writers = {user for user, body in re.findall(r"^user (\S+)\n((?:topic .*\n?)*)", acl, re.M)
               if "topic write hashflex/+/in/limits" in body}
    assert writers == {"site_manager"}
    for name in ("west_texas", "quiet_hollow", "panhandle_120mw"):
        assert writers <= set(load_profile(name).site.managers), name


def test_a_group_agent_reads_only_its_group_and_others_never_read_group_setpoints(
        connect: Callable[..., Peer]) -> None:
    """One message per group (the daemon's default design): ``out/setpoints/<group>`` reaches the agent
    named after the group and nobody else — not another miner, not the utility."""
    daemon, rack, miner, utility = connect("hashflex"), connect("rack_a"), connect("m1"), connect("utility")
    rack.subscribe(f"{T.prefix}out/setpoints/+")
    miner.subscribe(f"{T.prefix}out/setpoints/#")
    utility.subscribe(f"{T.prefix}out/setpoints/#")
    mine, other = token("group-a"), token("group-b")
    assert_authorized(daemon.publish(f"{T.prefix}out/setpoints/rack_b", other), "daemon -> out/setpoints/rack_b")
    assert_authorized(daemon.publish(f"{T.prefix}out/setpoints/rack_a", mine), "daemon -> out/setpoints/rack_a")
    rack.wait_for(mine, f"{T.prefix}out/setpoints/rack_a")
    assert_refused(rack.publish(f"{T.prefix}out/setpoints/rack_a", token("forged")), "rack_a -> its own setpoints")
    assert_refused(utility.publish(f"{T.prefix}out/setpoints/rack_a", token("forged")), "utility -> out/setpoints")
    time.sleep(NON_DELIVERY_WAIT_S)
    assert not rack.got(other)
    assert not miner.messages and not utility.messages

