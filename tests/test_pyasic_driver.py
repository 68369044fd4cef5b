"""PyasicDriver against our LuxOS and VNish simulators on real loopback sockets (pyasic does the talking)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hashflex.drivers.base import MinerCapabilities, Setpoint, SetpointStatus, utc_now
from hashflex.drivers.pyasic_driver import (
    PyasicDriver,
    PyasicEndpoint,
    setpoint_confirmed,
)
from hashflex.health.reading import MinerReading
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim.firmware import AntminerStockFleet, VnishFleet, WhatsminerFleet
from hashflex.sim.miners import MinerState, ScaledClock, SimulatedMinerFleet

GROUP = MinerGroup(id="s19xp", model="Antminer S19 XP", units=3, idle_power_kw=0.02, boot_minutes=0.0,
                   modes=[MinerMode(name="eco", power_kw=2.4, hashrate_th_s=110.0, sound_power_dba=95.0),
                          MinerMode(name="stock", power_kw=3.0, hashrate_th_s=134.0, sound_power_dba=97.0)])
MODES = {"s19xp": {"eco": 2.4, "stock": 3.0, "half": 1.2}}  # "half": no preset fits under 1.2 kW
# stock Antminer: normal = the highest-power mode (stock), low = the lowest (eco); "mid" has no match
STOCK_MODES = {"s19xp": {"eco": 2.4, "stock": 3.0, "mid": 2.7}}
UNFIT = {"luxos": "half", "vnish": "half", "antminer": "mid", "whatsminer": "half"}
WHATSMINER = GROUP.model_copy(update={"model": "Whatsminer M50VH80"})


def sp(miner_id: str, mode: str, kw: float = 0.0) -> Setpoint:
    now = utc_now()
    return Setpoint(miner_id, mode, kw, now, now + timedelta(minutes=10))


@pytest.fixture(params=["luxos", "vnish", "antminer", "whatsminer"])
def rig(request):
    miners = {"a": GROUP, "b": GROUP, "c": GROUP}
    clock = ScaledClock(600)
    if request.param in ("luxos", "whatsminer"):
        if request.param == "luxos":
            fleet = SimulatedMinerFleet(miners, clock=clock)
        else:
            fleet = WhatsminerFleet({m: WHATSMINER for m in miners}, clock=clock)
        fleet.start()
        endpoints = [PyasicEndpoint(m, "s19xp", h, request.param, rpc_port=p)
                     for m, (h, p) in fleet.endpoints().items()]
    else:
        fleet = (VnishFleet if request.param == "vnish" else AntminerStockFleet)(miners, clock=clock)
        fleet.start()
        rpc = fleet.rpc_endpoints()
        endpoints = [PyasicEndpoint(m, "s19xp", h, request.param, web_port=p, rpc_port=rpc[m][1])
                     for m, (h, p) in fleet.endpoints().items()]
    driver = PyasicDriver(endpoints, STOCK_MODES if request.param == "antminer" else MODES, deadline_s=3.0)
    yield request.param, fleet, driver
    driver.close()
    fleet.stop()


def test_capabilities_are_declared_from_pyasic_and_the_presets(rig):
    family, fleet, driver = rig
    caps = driver.discover()
    assert set(caps) == {"a", "b", "c"}
    cap = caps["a"]
    assert isinstance(cap, MinerCapabilities) and cap.family == family
    assert cap.sleep_wake and cap.verify
    if family == "antminer":
        assert not cap.power_target and cap.power_targets_w == () and cap.modes == ("stock", "eco")
        assert "stock firmware" in cap.notes
        return
    if family == "whatsminer":  # any power limit: every mode is reachable
        assert cap.power_target and cap.power_targets_w == () and cap.modes == ("eco", "stock", "half")
        return
    assert cap.power_target and cap.power_targets_w == (2400, 3000)
    assert cap.modes == ("eco", "stock")  # "half" has no preset at or under 1.2 kW
    assert driver.capabilities("nope") is None


def test_modes_and_sleep_reach_the_miner_and_verify(rig, wait_for):
    family, fleet, driver = rig
    results = driver.apply([sp("a", "eco", 2.4), sp("b", "stock", 3.0), sp("c", "sleep")])
    assert [r.status for r in results] == [SetpointStatus.APPLIED] * 3, results
    assert fleet.miner("a").mode == "eco" and fleet.miner("b").mode == "stock"
    assert fleet.miner("c").snapshot().state is MinerState.SLEEPING
    wait_for(lambda: fleet.miner("a").snapshot().state is MinerState.HASHING, message="a hashing")
    verified = {r.miner_id: r for r in driver.verify()}
    assert verified["a"].status is SetpointStatus.APPLIED, verified["a"]
    assert verified["c"].status is SetpointStatus.APPLIED, verified["c"]
    reading = driver.read(["a"])["a"]
    # stock Antminer firmware does not report power
    assert reading.power_kw is None if family == "antminer" else reading.power_kw == pytest.approx(2.4, rel=0.01)
    assert reading.hashrate_th_s == pytest.approx(110, rel=0.01)
    assert len(reading.fan_rpm) == (2 if family == "whatsminer" else 4) and reading.hashboards == 3


def test_a_lost_hashboard_shows_in_the_reading(rig, wait_for):
    family, fleet, driver = rig
    fleet.hardware["a"].boards_alive = 2
    assert driver.apply([sp("a", "stock", 3.0)])[0].ok
    wait_for(lambda: fleet.miner("a").snapshot().state is MinerState.HASHING, message="a hashing")
    reading = driver.read(["a"])["a"]
    assert reading.hashboards == 2 and reading.expected_hashboards == 3


def test_no_preset_under_the_target_falls_back_to_sleep(rig):
    family, fleet, driver = rig
    fleet.miner("a").command_mode("stock", None)
    result = driver.apply([sp("a", UNFIT[family], 1.2)])[0]
    assert result.status is SetpointStatus.REJECTED and "fell back to sleep" in result.reason
    assert fleet.miner("a").snapshot().state is MinerState.SLEEPING


def test_unknown_mode_expired_and_unknown_miner_are_rejected(rig):
    family, fleet, driver = rig
    now = utc_now()
    expired = Setpoint("a", "eco", 2.4, now - timedelta(minutes=2), now - timedelta(minutes=1))
    results = driver.apply([sp("a", "warp", 9.0), expired, sp("zz", "sleep")])
    assert [r.status for r in results] == [SetpointStatus.REJECTED] * 3
    assert "unknown mode" in results[0].reason and "expired" in results[1].reason


def test_unreachable_miner_is_reported_and_others_still_apply(rig):
    family, fleet, driver = rig
    if family == "luxos":
        fleet.take_offline("b")
    else:
        fleet.stop()
    results = {r.miner_id: r for r in driver.apply([sp("a", "sleep"), sp("b", "sleep")])}
    assert results["b"].status is SetpointStatus.UNREACHABLE, results["b"]
    if family == "luxos":
        assert results["a"].ok


def test_a_hung_miner_costs_only_its_own_deadline(wait_for):
    miners = {"a": GROUP, "b": GROUP}
    with SimulatedMinerFleet(miners, clock=ScaledClock(600)) as fleet:
        fleet.set_fault("b", "hang")
        endpoints = [PyasicEndpoint(m, "s19xp", h, "luxos", rpc_port=p) for m, (h, p) in fleet.endpoints().items()]
        driver = PyasicDriver(endpoints, MODES, deadline_s=1.0)
        try:
            results = {r.miner_id: r for r in driver.apply([sp("a", "stock", 3.0), sp("b", "sleep")])}
        finally:
            driver.close()
    assert results["a"].ok, results["a"]
    assert results["b"].status is SetpointStatus.TIMEOUT


def test_setpoint_confirmed_rules():
    now = utc_now()
    asleep = MinerReading("m", now, power_kw=0.02, hashrate_th_s=0.0)
    running = MinerReading("m", now, power_kw=2.4, hashrate_th_s=110.0)
    assert setpoint_confirmed("sleep", 0.0, asleep)[0]
    assert not setpoint_confirmed("sleep", 0.0, running)[0]
    assert setpoint_confirmed("eco", 2.4, running)[0]
    assert not setpoint_confirmed("eco", 2.0, running)[0]  # over target + 10 %
    assert not setpoint_confirmed("stock", 6.0, running)[0]  # under half: not following
    assert not setpoint_confirmed("eco", 2.4, MinerReading("m", now, power_kw=None, hashrate_th_s=None))[0]
    # firmware without a power reading: hashing or not
    assert setpoint_confirmed("eco", 2.4, MinerReading("m", now, power_kw=None, hashrate_th_s=100.0))[0]
    assert not setpoint_confirmed("sleep", 0.0, MinerReading("m", now, power_kw=None, hashrate_th_s=100.0))[0]
    assert setpoint_confirmed("sleep", 0.0, MinerReading("m", now, power_kw=None, hashrate_th_s=0.0))[0]
