"""MQTT driver against the real Mosquitto fixture and simulated MQTT miners (no mocks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from hashflex.drivers.base import MinerRegistry, Setpoint, SetpointStatus, utc_now
from hashflex.drivers.mqtt import MqttDriver
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim import MinerState, MqttSimulatedMiners, ScaledClock

AIR = MinerGroup(id="air", model="S21", units=10, idle_power_kw=0.01, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
    MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
])
MINERS = {f"air-{i}": AIR for i in range(3)}


def sp(clock, miner_id: str, mode: str, power_kw: float, seconds: float = 900.0) -> Setpoint:
    now = clock()
    return Setpoint(miner_id, mode, power_kw, now, now + timedelta(seconds=seconds))


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("_", "-")[:60]


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(600.0)  # 1 simulated minute = 0.1 s


@pytest.fixture
def miners(mosquitto, site, clock) -> Iterator[MqttSimulatedMiners]:
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=clock,
                             telemetry_interval_s=0.05) as sim:
        yield sim


@pytest.fixture
def driver(mosquitto, site, clock) -> Iterator[MqttDriver]:
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock, puback_timeout_s=5.0) as drv:
        yield drv


def test_setpoints_arrive_with_expiry_property_and_payload_deadline(mosquitto, site, wait_for) -> None:
    real = ScaledClock(1.0)
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=real) as sim, \
            MqttDriver(site, mosquitto.host, mosquitto.port, clock=real) as drv:
        batch = [sp(real, "air-0", "eco", 2.9, seconds=90.5), sp(real, "air-1", "sleep", 0.0, seconds=30)]
        results = drv.apply(batch)
        assert [r.status for r in results] == [SetpointStatus.APPLIED] * 2, results
        assert "PUBACK" in results[0].reason
        wait_for(lambda: sim.received["air-0"] and sim.received["air-1"], 5, message="setpoints at miners")
        message, expiry = sim.received["air-0"][-1]
        assert message.expires_at == batch[0].expires_at and message.mode == "eco"
        assert expiry in (89, 90)  # whole seconds left, rounded down
        assert sim.received["air-1"][-1][1] in (29, 30)
        assert len(sim.received["air-2"]) == 0


def test_telemetry_verifies_setpoints_after_boot(miners, driver, clock) -> None:
    batch = [sp(clock, "air-0", "eco", 2.9), sp(clock, "air-1", "stock", 3.5), sp(clock, "air-2", "sleep", 0.0)]
    assert all(r.ok for r in driver.apply(batch))
    assert driver.pending() == ["air-0", "air-1", "air-2"]

    verified = {r.miner_id: r for r in driver.verify(timeout_s=5.0)}

    assert {m: r.status for m, r in verified.items()} == {m: SetpointStatus.APPLIED for m in MINERS}, verified
    assert "telemetry confirms eco" in verified["air-0"].reason
    assert driver.pending() == []
    states = miners.states()
    assert states["air-1"].state is MinerState.HASHING and states["air-1"].mode == "stock"
    assert miners.total_power_kw() == pytest.approx(2.9 + 3.5 + 0.01)
    assert driver.telemetry("air-0").mode == "eco"


def test_booting_miner_is_unverified_before_its_boot_time(mosquitto, site) -> None:
    slow = ScaledClock(1.0)  # 1-minute boot in real time: cannot be confirmed within 0.3 s
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=slow,
                             telemetry_interval_s=0.05) as sim, \
            MqttDriver(site, mosquitto.host, mosquitto.port, clock=slow) as drv:
        drv.apply([sp(slow, "air-0", "eco", 2.9)])
        result = drv.verify(timeout_s=0.3)[0]
        assert result.status is SetpointStatus.UNVERIFIED
        assert "telemetry says booting" in result.reason and "(still booting)" in result.reason
        assert sim.miner("air-0").snapshot().state is MinerState.BOOTING


def test_expired_setpoint_makes_miner_fall_back_to_sleep(miners, driver, clock, wait_for) -> None:
    batch = [sp(clock, "air-0", "stock", 3.5, seconds=120), sp(clock, "air-1", "stock", 3.5, seconds=3600)]
    driver.apply(batch)
    assert {r.status for r in driver.verify(timeout_s=5.0)} == {SetpointStatus.APPLIED}
    # 120 simulated seconds = 0.2 s real: air-0 is not renewed and must go to sleep on its own
    wait_for(lambda: miners.miner("air-0").snapshot().state is MinerState.SLEEPING, 5, message="fallback")
    assert miners.miner("air-0").snapshot().fallbacks == 1
    assert miners.miner("air-1").snapshot().state is MinerState.HASHING
    wait_for(lambda: driver.telemetry("air-0").mode == "sleep", 5, message="telemetry shows sleep")
    assert miners.total_power_kw() == pytest.approx(0.01 + 3.5 + 0.01)


def test_renewed_setpoint_keeps_miner_running(miners, driver, clock) -> None:
    for _ in range(6):  # each lives 60 sim s (0.1 s real) and is renewed every 0.05 s
        driver.apply([sp(clock, "air-2", "eco", 2.9, seconds=60)])
        time.sleep(0.05)
    snap = miners.miner("air-2").snapshot()
    assert snap.state is not MinerState.SLEEPING and snap.fallbacks == 0


def test_registry_marks_miner_that_ignores_setpoints_unavailable(miners, driver, clock) -> None:
    registry = MinerRegistry({m: "air" for m in MINERS})
    miners.set_follows("air-1", False)
    registry.record(driver.apply([sp(clock, m, "eco", 2.9) for m in MINERS]))
    assert all(registry.is_available(m) for m in MINERS)

    verified = {r.miner_id: r for r in driver.verify(timeout_s=1.0)}
    registry.record(verified.values(), verification=True)

    assert verified["air-1"].status is SetpointStatus.UNVERIFIED
    assert "telemetry says sleep" in verified["air-1"].reason
    assert not registry.is_available("air-1")
    assert registry.is_available("air-0") and registry.is_available("air-2")
    group = registry.availability_by_group()["air"]
    assert (group.available, group.total) == (2, 3)
    assert "does not follow setpoints" in group.unavailable["air-1"].reason

    miners.set_follows("air-1", True)  # repaired: a confirmed setpoint makes it available again
    driver.apply([sp(clock, "air-1", "eco", 2.9)])
    registry.record(driver.verify(timeout_s=5.0), verification=True)
    assert registry.is_available("air-1")


def test_setpoint_without_a_listening_miner_is_unreachable(driver, clock) -> None:
    result = driver.apply([sp(clock, "nobody-home", "eco", 2.9)])[0]
    assert result.status is SetpointStatus.UNREACHABLE
    assert "no subscriber" in result.reason
    assert driver.pending() == []


def test_expired_and_invalid_setpoints_are_rejected_without_publishing(miners, driver, clock) -> None:
    now = clock()
    expired = Setpoint("air-0", "eco", 2.9, now - timedelta(minutes=30), now - timedelta(minutes=15))
    bad_id = sp(clock, "air/1", "eco", 2.9)  # '/' would change the topic
    results = driver.apply([expired, bad_id])
    assert [r.status for r in results] == [SetpointStatus.REJECTED] * 2
    assert "expired" in results[0].reason and "miner_id" in results[1].reason
    time.sleep(0.2)
    assert len(miners.received["air-0"]) == 0 and len(miners.received["air-1"]) == 0


def test_driver_without_broker_reports_not_sent(mosquitto_factory) -> None:
    broker = mosquitto_factory()
    port = broker.port
    broker.stop()
    drv = MqttDriver("nobroker", "127.0.0.1", port).start()
    try:
        assert not drv.wait_connected(0.3)
        result = drv.apply([sp(utc_now, "air-0", "eco", 2.9)])[0]
    finally:
        drv.close()
    assert result.status is SetpointStatus.NOT_SENT  # a transport fault, not the miner's (issue 10)
    assert "cannot connect" in result.reason and str(port) in result.reason


def test_publisher_reconnects_after_broker_restart(mosquitto_factory) -> None:
    broker = mosquitto_factory()
    real = ScaledClock(1.0)
    with MqttSimulatedMiners("restart", broker.host, broker.port, MINERS, clock=real), \
            MqttDriver("restart", broker.host, broker.port, clock=real) as drv:
        assert drv.apply([sp(real, "air-0", "eco", 2.9)])[0].ok
        broker.restart()  # drops both connections; the sim's paho client re-subscribes on reconnect
        deadline = time.monotonic() + 10
        result = drv.apply([sp(real, "air-0", "stock", 3.5)])[0]
        while result.status is not SetpointStatus.APPLIED and time.monotonic() < deadline:
            assert result.status is SetpointStatus.NOT_SENT, result  # miners not re-subscribed yet: transport
            time.sleep(0.1)
            result = drv.apply([sp(real, "air-0", "stock", 3.5)])[0]
        assert result.ok, result
        assert drv.publisher.connects == 2


SUBSCRIBER = """
import sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_subscribe = lambda *a: print("ready", flush=True)
c.connect(sys.argv[1], int(sys.argv[2]))
c.subscribe([(t, 1) for t in sys.argv[3:]])
c.loop_forever()
"""


def test_1000_setpoints_per_miner_and_per_group_are_all_acknowledged(mosquitto, site) -> None:
    # the miners' side runs in another process, as on a real site, so it does not share our GIL.
    # How fast: optimization/benchmarks/mqtt_batch.py (no timed assertions in tests).
    topics = [f"hashflex/{site}/out/setpoint/+", f"hashflex/{site}/out/setpoints/+"]
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, mosquitto.host, str(mosquitto.port), *topics],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        with MqttDriver(site, mosquitto.host, mosquitto.port) as drv:
            published = {}
            for group_id in ("", "air"):  # no group: per-miner topics; a group: one message per 1000 rows
                now = utc_now()
                batch = [Setpoint(f"m{i:04d}", "eco", 2.9, now, now + timedelta(minutes=15), group_id=group_id)
                         for i in range(1000)]
                results = drv.apply(batch)
                assert [r.status for r in results] == [SetpointStatus.APPLIED] * 1000
                assert [r.miner_id for r in results] == [sp.miner_id for sp in batch]
                published[group_id] = drv.messages_published
        assert published == {"": 1000, "air": 1}
    finally:
        sub.terminate()
        sub.wait(5)


def custom_broker(tmp_path, config: str):
    """A private mosquitto with extra configuration (auth, ACL, TLS); stopped by the caller."""
    from conftest import MosquittoBroker, find_mosquitto

    binary = find_mosquitto()
    assert binary is not None, "mosquitto is required"
    broker = MosquittoBroker(binary, tmp_path)
    # started as root, mosquitto would drop to the "mosquitto" user, which cannot read tmp_path
    stay = "user root\n" if os.geteuid() == 0 else ""
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\npersistence false\n{stay}"
                           f"log_dest file {broker.log}\n{config}")
    broker.start()
    return broker


def test_acl_denial_is_rejected_and_bad_password_not_sent(tmp_path) -> None:
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(passwd, os.X_OK):
        pytest.fail("mosquitto_passwd not installed (it comes with the mosquitto package the test command installs)")
    subprocess.run([passwd, "-b", "-c", str(tmp_path / "passwd"), "dispatcher", "s3cret"], check=True)
    (tmp_path / "acl").write_text("user dispatcher\ntopic write hashflex/auth/out/#\n"
                                  "topic read hashflex/auth/in/telemetry/+\n")
    broker = custom_broker(tmp_path, f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
                                     f"acl_file {tmp_path / 'acl'}\n")
    clock = ScaledClock(1.0)
    try:
        with MqttDriver("auth", broker.host, broker.port, username="dispatcher", password="s3cret") as ok:
            allowed = ok.apply([sp(clock, "air-0", "eco", 2.9)])[0]
        with MqttDriver("other", broker.host, broker.port, username="dispatcher", password="s3cret") as other:
            denied = other.apply([sp(clock, "air-0", "eco", 2.9)])[0]
        wrong = MqttDriver("auth", broker.host, broker.port, username="dispatcher", password="guess").start()
        try:
            refused = wrong.apply([sp(clock, "air-0", "eco", 2.9)])[0]
        finally:
            wrong.close()
    finally:
        broker.stop()
    # authenticated and allowed: acknowledged, but nobody listens for this miner
    assert allowed.status is SetpointStatus.UNREACHABLE and "no subscriber" in allowed.reason
    assert denied.status is SetpointStatus.REJECTED and "Not authorized" in denied.reason
    assert refused.status is SetpointStatus.NOT_SENT and "cannot connect" in refused.reason
    assert "connection refused" in refused.reason


def test_setpoints_over_tls(tmp_path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    if shutil.which("openssl") is None:
        pytest.fail("openssl not installed (the test command installs it)")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    broker = custom_broker(tmp_path, f"allow_anonymous true\ncafile {tmp_path / 'ca.crt'}\n"
                                     f"certfile {tmp_path / 'server.crt'}\nkeyfile {tmp_path / 'server.key'}\n")
    clock = ScaledClock(600.0)
    try:
        with MqttDriver("tls", broker.host, broker.port, tls_ca_file=str(tmp_path / "ca.crt"), clock=clock) as drv:
            sim = _tls_miners(broker, tmp_path, clock)
            try:
                result = drv.apply([sp(clock, "air-0", "eco", 2.9)])[0]
                verified = drv.verify(timeout_s=5.0)
            finally:
                sim.stop()
        plain = MqttDriver("tls", broker.host, broker.port, clock=clock)  # no TLS: the handshake fails
        refused = plain.apply([sp(clock, "air-0", "eco", 2.9)])[0]
        plain.close()
    finally:
        broker.stop()
    assert result.status is SetpointStatus.APPLIED, result
    assert [v.status for v in verified] == [SetpointStatus.APPLIED]
    assert refused.status is SetpointStatus.NOT_SENT


def _tls_miners(broker, tmp_path, clock) -> MqttSimulatedMiners:
    sim = MqttSimulatedMiners("tls", broker.host, broker.port, MINERS, clock=clock, telemetry_interval_s=0.05,
                              tls_ca_file=str(tmp_path / "ca.crt"))
    sim.start()
    assert sim.wait_ready(10)
    return sim
