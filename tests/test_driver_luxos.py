"""LuxOS driver against the simulated fleet: real TCP sockets on 127.0.0.1, no mocks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from hashflex.drivers.base import MinerRegistry, Setpoint, SetpointResult, SetpointStatus
from hashflex.drivers.luxos import LuxosDriver, LuxosEndpoint
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim import MinerState, ScaledClock, SimulatedMinerFleet

SCALE = 600.0  # 1 simulated minute = 0.1 s

AIR = MinerGroup(id="air", model="S21", units=100, idle_power_kw=0.01, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
    MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
])
HYDRO = MinerGroup(id="hydro", model="S21 XP Hyd", units=100, idle_power_kw=0.02, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=5.3, hashrate_th_s=410, sound_power_dba=62),
    MinerMode(name="turbo", power_kw=7.8, hashrate_th_s=540, sound_power_dba=66),
])
# LuxOS profile names differ per group: the driver must translate modes.
PROFILES = {"air": {"eco": "415MHz", "stock": "default"}, "hydro": {"eco": "hyd_eco", "turbo": "hyd_oc"}}


def make_fleet(n_air: int = 2, n_hydro: int = 2, **kwargs: object) -> SimulatedMinerFleet:
    miners = {f"air-{i}": AIR for i in range(n_air)} | {f"hydro-{i}": HYDRO for i in range(n_hydro)}
    clock = kwargs.pop("clock", None) or ScaledClock(SCALE)
    return SimulatedMinerFleet(miners, clock=clock, profile_names=PROFILES, **kwargs).start()  # type: ignore[arg-type]


def make_driver(fleet: SimulatedMinerFleet, **kwargs: object) -> LuxosDriver:
    endpoints = [LuxosEndpoint(mid, fleet.miner(mid).group.id, host, port)
                 for mid, (host, port) in fleet.endpoints().items()]
    options: dict = {"timeout_s": 1.0, "attempts": 2, "backoff_s": 0.01, "clock": fleet.clock} | kwargs
    return LuxosDriver(endpoints, PROFILES, **options)


def setpoint(fleet: SimulatedMinerFleet, miner_id: str, mode: str, power_kw: float,
             minutes: float = 15.0) -> Setpoint:
    now = fleet.clock()
    return Setpoint(miner_id, mode, power_kw, now, now + timedelta(minutes=minutes))


@pytest.fixture
def fleet() -> Iterator[SimulatedMinerFleet]:
    fleet = make_fleet()
    yield fleet
    fleet.stop()


@pytest.fixture
def driver(fleet: SimulatedMinerFleet) -> Iterator[LuxosDriver]:
    driver = make_driver(fleet)
    yield driver
    driver.close()


def test_modes_map_to_group_profiles_and_wake_the_miner(fleet, driver, wait_for) -> None:
    batch = [setpoint(fleet, "air-0", "eco", 2.9), setpoint(fleet, "hydro-0", "turbo", 7.8)]
    results = driver.apply(batch)

    assert [r.status for r in results] == [SetpointStatus.APPLIED] * 2, results
    assert "profileset 415MHz" in results[0].reason and "curtail wakeup" in results[0].reason
    commands = [c for c, _ in fleet.commands["air-0"]]
    assert commands == ["logon", "profileset", "curtail"]
    sid_param = dict(fleet.commands["hydro-0"])["profileset"]
    assert sid_param.endswith(",hyd_oc") and len(sid_param.split(",")[0]) > 0
    assert fleet.miner("air-0").snapshot().state is MinerState.BOOTING

    wait_for(lambda: fleet.miner("air-0").snapshot().state is MinerState.HASHING, 5, message="boot")
    wait_for(lambda: fleet.miner("hydro-0").snapshot().state is MinerState.HASHING, 5, message="boot")
    assert fleet.miner("hydro-0").snapshot().mode == "turbo"
    verified = driver.verify(batch=batch)
    assert [r.status for r in verified] == [SetpointStatus.APPLIED] * 2, verified
    assert fleet.total_power_kw() == pytest.approx(2.9 + 7.8 + 0.01 + 0.02)  # + two sleeping miners


def test_sleep_curtails_and_verifies(fleet, driver, wait_for) -> None:
    driver.apply([setpoint(fleet, "air-1", "stock", 3.5)])
    wait_for(lambda: fleet.miner("air-1").snapshot().state is MinerState.HASHING, 5, message="boot")
    sleep = [setpoint(fleet, "air-1", "sleep", 0.0)]

    results = driver.apply(sleep)

    assert results[0].status is SetpointStatus.APPLIED and "curtail sleep" in results[0].reason
    assert fleet.commands["air-1"][-1][1].endswith(",sleep")
    assert fleet.miner("air-1").snapshot().state is MinerState.SLEEPING
    assert driver.verify(batch=sleep)[0].status is SetpointStatus.APPLIED


def test_verify_reports_booting_miner_as_unverified(fleet, driver) -> None:
    batch = [setpoint(fleet, "hydro-1", "eco", 5.3)]
    driver.apply(batch)
    result = driver.verify(batch=batch)[0]  # boot takes 0.1 s real; read back at once
    assert result.status is SetpointStatus.UNVERIFIED
    assert "not hashing" in result.reason and "expected eco" in result.reason


def test_driver_options_are_checked(fleet) -> None:
    endpoints = [LuxosEndpoint("air-0", "air", *fleet.endpoints()["air-0"])]
    for bad in ({"attempts": 0}, {"timeout_s": 0}, {"deadline_s": -1}, {"max_connections": 0}):
        with pytest.raises(ValueError):
            LuxosDriver(endpoints, PROFILES, **bad)  # type: ignore[arg-type]
    driver = LuxosDriver(endpoints, PROFILES, max_connections=1)
    driver.close()
    driver.close()  # idempotent
    closed = driver.apply([setpoint(fleet, "air-0", "sleep", 0.0)])[0]
    assert closed.status is SetpointStatus.UNREACHABLE and "closed" in closed.reason


def test_call_checks_values_and_returns_the_answer(fleet, driver) -> None:
    assert driver.call("air-0", "version")["VERSION"][0]["LUXminer"].endswith("-sim")
    with pytest.raises(ValueError, match="safe LuxOS parameter"):
        driver.call("air-0", "profileset", "x,y")


def test_session_is_cached_then_renewed_after_expiry(fleet, driver) -> None:
    driver.apply([setpoint(fleet, "air-0", "eco", 2.9)])
    driver.apply([setpoint(fleet, "air-0", "stock", 3.5)])
    assert driver.logons == 1
    assert [c for c, _ in fleet.commands["air-0"]].count("logon") == 1

    fleet.expire_sessions("air-0")
    results = driver.apply([setpoint(fleet, "air-0", "eco", 2.9)])

    assert results[0].status is SetpointStatus.APPLIED, results[0].reason
    assert driver.logons == 2
    tail = [c for c, _ in fleet.commands["air-0"]][-5:]
    assert tail[-4:] == ["profileset", "logon", "profileset", "curtail"]


def test_session_times_out_on_the_miner_and_driver_logs_on_again() -> None:
    clock = ScaledClock(SCALE)
    fleet = make_fleet(1, 0, clock=clock, session_timeout_s=30.0)  # 30 sim s = 0.05 s real
    driver = make_driver(fleet)
    try:
        assert driver.apply([setpoint(fleet, "air-0", "eco", 2.9)])[0].ok
        time.sleep(0.1)
        result = driver.apply([setpoint(fleet, "air-0", "stock", 3.5)])[0]
        assert result.ok, result.reason
        assert driver.logons == 2
    finally:
        driver.close()
        fleet.stop()


def test_existing_session_is_reused_instead_of_logon(fleet) -> None:
    first = make_driver(fleet)
    second = make_driver(fleet)
    try:
        assert first.apply([setpoint(fleet, "air-0", "eco", 2.9)])[0].ok
        result = second.apply([setpoint(fleet, "air-0", "stock", 3.5)])[0]
        assert result.ok, result.reason
        assert (first.logons, second.logons) == (1, 0)
    finally:
        first.close()
        second.close()


def test_silent_miner_times_out_with_reason(fleet) -> None:
    driver = make_driver(fleet, timeout_s=0.2, attempts=2)
    fleet.set_silent("hydro-0")
    try:
        results = driver.apply([setpoint(fleet, "hydro-0", "eco", 5.3), setpoint(fleet, "air-0", "eco", 2.9)])
    finally:
        driver.close()
    silent, healthy = results
    assert silent.status is SetpointStatus.TIMEOUT
    assert "no answer within 0.2 s" in silent.reason and "2 attempts" in silent.reason
    assert "logon" in silent.reason  # the first call of the sequence is the one that hung
    assert [c for c, _ in fleet.commands["hydro-0"]] == ["logon", "logon"]  # both attempts, nothing else
    assert healthy.status is SetpointStatus.APPLIED


def test_offline_miner_is_unreachable(fleet, driver) -> None:
    fleet.take_offline("air-1")
    result = driver.apply([setpoint(fleet, "air-1", "eco", 2.9)])[0]
    assert result.status is SetpointStatus.UNREACHABLE
    assert "connection refused" in result.reason


def test_error_status_is_rejected_with_the_miners_message_and_the_miner_sleeps(fleet, driver, wait_for) -> None:
    assert driver.apply([setpoint(fleet, "air-0", "stock", 3.5)])[0].ok
    wait_for(lambda: fleet.miner("air-0").snapshot().state is MinerState.HASHING, 5, message="boot")
    fleet.set_error("air-0", "profileset", "Cannot change profile while overheated")
    result = driver.apply([setpoint(fleet, "air-0", "eco", 2.9)])[0]
    assert result.status is SetpointStatus.REJECTED
    assert "Cannot change profile while overheated" in result.reason
    assert "fell back to curtail sleep" in result.reason  # stock would draw more than the plan's eco
    assert fleet.miner("air-0").snapshot().state is MinerState.SLEEPING
    assert [p.split(",")[1] for c, p in fleet.commands["air-0"] if c == "curtail"] == ["wakeup", "sleep"]


def test_unknown_mode_expired_setpoint_and_unknown_miner_are_rejected_without_sending(fleet, driver) -> None:
    now = fleet.clock()
    expired = Setpoint("air-1", "eco", 2.9, now - timedelta(minutes=20), now - timedelta(minutes=5))
    results = driver.apply([setpoint(fleet, "air-0", "turbo", 4.2), expired, setpoint(fleet, "ghost", "eco", 1)])
    assert [r.status for r in results] == [SetpointStatus.REJECTED] * 3
    assert "no LuxOS profile for mode 'turbo'" in results[0].reason
    assert "expired" in results[1].reason
    assert "unknown miner" in results[2].reason
    assert len(fleet.commands["air-0"]) == 0 and len(fleet.commands["air-1"]) == 0


def test_fifty_miners_are_driven_concurrently() -> None:
    fleet = make_fleet(25, 25, response_delay_s=0.2)
    driver = make_driver(fleet)
    try:
        batch = [setpoint(fleet, mid, "eco", AIR.mode("eco").power_kw if mid.startswith("air") else 5.3)
                 for mid in fleet.miners]
        results = driver.apply(batch)
    finally:
        driver.close()
        fleet.stop()
    assert [r.miner_id for r in results] == [s.miner_id for s in batch]
    assert all(r.status is SetpointStatus.APPLIED for r in results), [r for r in results if not r.ok]
    # Every miner's first request was read before any miner got its first answer (0.2 s later): all at once.
    first_requests = [fleet.received_at[mid][0][0] for mid in fleet.miners]
    second_requests = [fleet.received_at[mid][1][0] for mid in fleet.miners]
    assert max(first_requests) < min(second_requests)


def test_registry_marks_miner_that_does_not_follow_unavailable(fleet, driver, wait_for) -> None:
    registry = MinerRegistry({mid: m.group.id for mid, m in fleet.miners.items()}, max_failures=2)
    fleet.set_follows("air-1", False)  # answers S but keeps sleeping
    batch = [setpoint(fleet, "air-0", "eco", 2.9), setpoint(fleet, "air-1", "eco", 2.9)]
    registry.record(driver.apply(batch))
    assert registry.is_available("air-1")  # the commands succeeded
    wait_for(lambda: fleet.miner("air-0").snapshot().state is MinerState.HASHING, 5, message="boot")
    time.sleep(0.05)

    registry.record(driver.verify(batch=batch), verification=True)

    assert registry.is_available("air-0")
    assert not registry.is_available("air-1")
    down = registry.unavailable()["air-1"]
    assert "does not follow" in down.reason and "expected eco" in down.reason
    air = registry.availability_by_group()["air"]
    assert (air.total, air.available, list(air.unavailable)) == (2, 1, ["air-1"])


def test_registry_marks_miner_unavailable_after_consecutive_timeouts(fleet) -> None:
    driver = make_driver(fleet, timeout_s=0.1, attempts=1)
    registry = MinerRegistry({mid: m.group.id for mid, m in fleet.miners.items()}, max_failures=2)
    fleet.set_silent("hydro-1")
    try:
        registry.record(driver.apply([setpoint(fleet, "hydro-1", "eco", 5.3)]))
        assert registry.is_available("hydro-1")
        registry.record(driver.apply([setpoint(fleet, "hydro-1", "eco", 5.3)]))
    finally:
        driver.close()
    assert not registry.is_available("hydro-1")
    assert "2 consecutive setpoints failed; last timeout" in registry.unavailable()["hydro-1"].reason
    assert registry.availability_by_group()["hydro"].available == 1


def test_registry_restore_and_setpoint_validation() -> None:
    registry = MinerRegistry({"m1": "g", "m2": "g"}, max_failures=1)
    registry.record([SetpointResult("m1", SetpointStatus.UNREACHABLE, "connection refused"),
                     SetpointResult("ghost", SetpointStatus.TIMEOUT, "not tracked")])
    assert registry.availability_by_group()["g"].available == 1
    assert registry.unavailable()["m1"].reason.endswith("last unreachable: connection refused")
    registry.restore("m1")
    assert registry.is_available("m1") and not registry.is_available("ghost")
    now = datetime.now(timezone.utc)
    with pytest.raises(ValueError, match="expires_at"):
        Setpoint("m1", "eco", 1.0, now, now)
    with pytest.raises(ValueError, match="timezone"):
        Setpoint("m1", "eco", 1.0, now.replace(tzinfo=None), now.replace(tzinfo=None) + timedelta(seconds=1))
    assert SetpointResult("m1", SetpointStatus.UNVERIFIED, "booting").ok is False
