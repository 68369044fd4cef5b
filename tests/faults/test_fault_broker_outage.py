"""Issue 10 item 3: a broker outage is a transport fault, never a miner fault.

Before the fix every publish during an outage came back ``unreachable`` and counted towards
``MinerRegistry.max_failures``: after a few send rounds every miner was "unavailable", the first
re-plan after the broker came back planned zero units and the whole site was put to sleep.

Real Mosquitto (a private broker we stop and start on the same port), simulated MQTT miners, the
real driver and registry, send rounds as the loop does them (apply, record, verify, record).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from hashflex.drivers.base import MinerRegistry, Setpoint, SetpointResult, SetpointStatus
from hashflex.drivers.mqtt import MqttDriver
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim import MqttSimulatedMiners, ScaledClock

AIR = MinerGroup(id="air", model="S21", units=10, idle_power_kw=0.01, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
])
MINERS = {f"air-{i}": AIR for i in range(4)}
OUTAGE_ROUNDS = 6  # more than max_failures (3) and max_mismatches (2) of the loop's registry


def batch(clock: ScaledClock) -> list[Setpoint]:
    now = clock()
    return [Setpoint(m, "eco", 2.9, now, now + timedelta(minutes=15)) for m in MINERS]


def send_round(driver: MqttDriver, registry: MinerRegistry, clock: ScaledClock,
               verify_s: float = 0.5) -> tuple[list[SetpointResult], list[SetpointResult]]:
    """One round the way ControlLoop does it: apply and record, then verify and record."""
    sent = driver.apply(batch(clock))
    registry.record(sent)
    verified = driver.verify(verify_s)
    registry.record(verified, verification=True)
    return sent, verified


def test_outage_spanning_several_rounds_marks_no_miner_unavailable(mosquitto_factory, wait_for) -> None:
    broker = mosquitto_factory()
    clock = ScaledClock(600.0)  # boot (1 min) takes 0.1 s: verification confirms within a round
    registry = MinerRegistry({m: "air" for m in MINERS}, max_failures=3, max_mismatches=2)
    with MqttSimulatedMiners("outage", broker.host, broker.port, MINERS, clock=clock,
                             telemetry_interval_s=0.05) as sim, \
            MqttDriver("outage", broker.host, broker.port, clock=clock, puback_timeout_s=1.0) as driver:
        sent, verified = send_round(driver, registry, clock, verify_s=5.0)
        assert [r.status for r in sent] == [SetpointStatus.APPLIED] * len(MINERS), sent
        assert {r.status for r in verified} == {SetpointStatus.APPLIED}, verified

        broker.stop()
        during = []
        for _ in range(OUTAGE_ROUNDS):
            sent, _ = send_round(driver, registry, clock)
            during.extend(sent)
            assert registry.unavailable() == {}, registry.unavailable()
            time.sleep(0.3)
        assert all(not r.ok for r in during), "nothing can be applied while the broker is down"
        assert {r.status for r in during} == {SetpointStatus.NOT_SENT}, {r.reason for r in during}
        assert all(f"{broker.port}" in r.reason for r in during), during[0].reason

        received_before = {m: len(sim.received[m]) for m in MINERS}
        broker.start()  # same port; paho clients (driver telemetry, miners) reconnect on their own
        rounds_after = []

        def setpoints_flow_again() -> bool:
            sent, verified = send_round(driver, registry, clock)
            rounds_after.append((sent, verified))
            assert registry.unavailable() == {}, (registry.unavailable(), sent, verified)
            return (all(r.status is SetpointStatus.APPLIED for r in sent)
                    and {r.miner_id for r in verified if r.ok} == set(MINERS))

        wait_for(setpoints_flow_again, timeout_s=60, interval_s=0.2, message="setpoints applied and verified")
        assert all(len(sim.received[m]) > received_before[m] for m in MINERS), "miners got new setpoints"
        assert all(registry.is_available(m) for m in MINERS)
        # the window before the miners re-subscribed is the broker's doing, not the miners'
        for sent, _ in rounds_after:
            assert all(r.status in (SetpointStatus.APPLIED, SetpointStatus.NOT_SENT) for r in sent), sent


def test_verification_interrupted_by_an_outage_is_not_a_mismatch(mosquitto_factory) -> None:
    """A setpoint the broker acknowledged just before it died cannot be confirmed by telemetry:
    the driver says so (transport), and the registry does not count it against the miner."""
    broker = mosquitto_factory()
    clock = ScaledClock(600.0)
    silent = {"air-9": AIR}  # the simulated miners' wildcard subscription takes it, no telemetry comes back
    registry = MinerRegistry({m: "air" for m in [*MINERS, *silent]}, max_mismatches=1)
    with MqttSimulatedMiners("verify-outage", broker.host, broker.port, MINERS, clock=clock,
                             telemetry_interval_s=0.05), \
            MqttDriver("verify-outage", broker.host, broker.port, clock=clock, puback_timeout_s=1.0) as driver:
        now = clock()
        sent = driver.apply([Setpoint("air-9", "eco", 2.9, now, now + timedelta(minutes=15))])
        assert sent[0].status is SetpointStatus.APPLIED, sent
        registry.record(sent)
        broker.stop()
        verified = driver.verify(0.3)
    registry.record(verified, verification=True)
    assert registry.is_available("air-9"), registry.unavailable()
    assert [r.status for r in verified] == [SetpointStatus.NOT_SENT], verified
    assert "telemetry connection" in verified[0].reason


def test_silent_miner_with_the_broker_up_is_still_unverified(mosquitto_factory) -> None:
    """The transport rule must not hide real miner faults: with the broker up, no telemetry is a mismatch."""
    broker = mosquitto_factory()
    clock = ScaledClock(600.0)
    registry = MinerRegistry({"air-9": "air"}, max_mismatches=1)
    with MqttSimulatedMiners("silent", broker.host, broker.port, MINERS, clock=clock, telemetry_interval_s=0.05), \
            MqttDriver("silent", broker.host, broker.port, clock=clock, puback_timeout_s=1.0) as driver:
        now = clock()
        registry.record(driver.apply([Setpoint("air-9", "eco", 2.9, now, now + timedelta(minutes=15))]))
        verified = driver.verify(0.3)
    registry.record(verified, verification=True)
    assert [r.status for r in verified] == [SetpointStatus.UNVERIFIED], verified
    assert not registry.is_available("air-9")


def test_registry_ignores_not_sent_results() -> None:
    registry = MinerRegistry({"m": "g"}, max_failures=1, max_mismatches=1)
    for _ in range(5):
        registry.record([SetpointResult("m", SetpointStatus.NOT_SENT, "broker down")])
        registry.record([SetpointResult("m", SetpointStatus.NOT_SENT, "broker down")], verification=True)
    assert registry.is_available("m")
    registry.record([SetpointResult("m", SetpointStatus.TIMEOUT, "miner hung")])
    assert not registry.is_available("m"), "a miner's own failure still counts"


@pytest.mark.parametrize("status", list(SetpointStatus))
def test_only_applied_is_ok(status: SetpointStatus) -> None:
    assert SetpointResult("m", status, "x").ok is (status is SetpointStatus.APPLIED)
