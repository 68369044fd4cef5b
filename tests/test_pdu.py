"""PDU driver over real Modbus TCP (simulated PDU on loopback) and the powered-off state."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from hashflex.drivers.base import Setpoint, SetpointStatus, utc_now
from hashflex.drivers.luxos import LuxosDriver, LuxosEndpoint
from hashflex.drivers.pdu import (
    POWERED_OFF,
    PduDriver,
    PduOutlet,
    PoweredOffDriver,
    PoweredOffModel,
    standby_cost_usd,
    worth_powering_off,
)
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim.miners import ScaledClock, SimulatedMinerFleet
from hashflex.sim.modbus_devices import SimulatedPdu

GROUP = MinerGroup(id="s19", model="Antminer S19", units=2, idle_power_kw=0.05, boot_minutes=0.0,
                   modes=[MinerMode(name="stock", power_kw=3.0, hashrate_th_s=95.0, sound_power_dba=95.0)])


def sp(miner_id: str, mode: str) -> Setpoint:
    now = utc_now()
    return Setpoint(miner_id, mode, 0.0, now, now + timedelta(minutes=5))


class FakeMonotonic:
    """Seconds we can move forward (cycle budgets are over 24 h)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def site():
    fleet = SimulatedMinerFleet({"m1": GROUP, "m2": GROUP}, clock=ScaledClock(600)).start()
    pdu = SimulatedPdu({3: "m1", 4: "m2"}, lambda m: fleet.miner(m).snapshot().power_kw).start()
    clock = FakeMonotonic()
    driver = PduDriver([PduOutlet("m1", pdu.host, pdu.port, 3), PduOutlet("m2", pdu.host, pdu.port, 4)],
                       model=PoweredOffModel(max_cycles_per_day=2, min_off_s=30.0), timeout_s=0.3, monotonic=clock)
    yield fleet, pdu, driver, clock
    driver.close()
    pdu.stop()
    fleet.stop()


def test_power_off_opens_the_outlet_and_zeroes_the_draw(site):
    fleet, pdu, driver, clock = site
    assert driver.outlet_power_kw(["m1"])["m1"] == pytest.approx(0.05)  # asleep: standby draw
    [result] = driver.apply([sp("m1", POWERED_OFF)])
    assert result.status is SetpointStatus.APPLIED and "powered off" in result.reason
    assert pdu.closed[3] is False and driver.is_on(["m1", "m2"]) == {"m1": False, "m2": True}
    assert driver.outlet_power_kw(["m1"])["m1"] == 0.0
    assert driver.apply([sp("m1", POWERED_OFF)])[0].reason.endswith("already off")


def test_power_on_is_budgeted_and_waits_for_min_off(site):
    fleet, pdu, driver, clock = site
    driver.power_off(["m1"])
    refused = driver.power_on(["m1"])[0]
    assert refused.status is SetpointStatus.REJECTED and "min_off_s" in refused.reason and pdu.closed[3] is False
    for _ in range(2):
        clock.t += 60
        assert driver.power_on(["m1"])[0].ok
        driver.power_off(["m1"])
    clock.t += 60
    over = driver.power_on(["m1"])[0]
    assert over.status is SetpointStatus.REJECTED and "2 cycles in the last 24 h" in over.reason
    assert pdu.cycles[3] == 2 and driver.cycles_last_24h("m1") == 2
    clock.t += 86400
    assert driver.power_on(["m1"])[0].ok  # the budget is per 24 h


def test_pdu_faults_are_results_not_exceptions(site):
    fleet, pdu, driver, clock = site
    assert driver.apply([sp("zz", POWERED_OFF)])[0].status is SetpointStatus.REJECTED
    pdu.fault = "exception"
    assert "exception 4" in driver.apply([sp("m1", POWERED_OFF)])[0].reason
    pdu.fault = "silent"
    assert driver.apply([sp("m1", POWERED_OFF)])[0].status is SetpointStatus.TIMEOUT
    assert driver.is_on(["m1"]) == {"m1": None}
    pdu.fault = None
    assert driver.apply([sp("m1", POWERED_OFF)])[0].ok  # reconnects
    pdu.stop()
    assert driver.apply([sp("m2", POWERED_OFF)])[0].status is SetpointStatus.UNREACHABLE


def test_capabilities_declare_power_off(site):
    fleet, pdu, driver, clock = site
    cap = driver.capabilities("m1")
    assert cap.power_off and not cap.sleep_wake and cap.family == "pdu"
    assert driver.capabilities("zz") is None


def test_powered_off_driver_sleeps_first_then_opens_and_cold_boots_on_wake(site):
    fleet, pdu, pdu_driver, clock = site
    firmware = LuxosDriver([LuxosEndpoint(m, "s19", h, p) for m, (h, p) in fleet.endpoints().items()],
                           {"s19": {"stock": "stock"}})
    driver = PoweredOffDriver(firmware, pdu_driver, lambda s, mode: replace(s, mode=mode))
    fleet.miner("m1").command_mode("stock", None)
    off, run = driver.apply([sp("m1", POWERED_OFF), sp("m2", "stock")])
    assert off.ok and "firmware sleep first: applied" in off.reason
    assert ("curtail", next(p for c, p in fleet.commands["m1"] if c == "curtail")) in list(fleet.commands["m1"])
    assert pdu.closed[3] is False and run.ok
    clock.t += 60
    [wake] = driver.apply([sp("m1", "stock")])
    assert wake.status is SetpointStatus.UNVERIFIED and "cold boot" in wake.reason and pdu.closed[3] is True
    firmware.close()


def test_the_combined_driver_declares_power_off_for_miners_with_an_outlet(site):
    """Found by the curtailment work: the combined driver declared nothing, so the dashboard and /metrics
    counted no miner as able to be powered off."""
    fleet, pdu, pdu_driver, clock = site
    firmware = LuxosDriver([LuxosEndpoint(m, "s19", h, p) for m, (h, p) in fleet.endpoints().items()],
                           {"s19": {"stock": "stock"}})
    driver = PoweredOffDriver(firmware, pdu_driver, lambda s, mode: replace(s, mode=mode))
    cap = driver.capabilities("m1")
    assert cap.power_off and cap.sleep_wake and "cold restart" in cap.notes
    assert driver.capabilities("zz") is None
    firmware.close()


def test_standby_cost_and_the_power_off_decision():
    # 1,000 sleeping miners at 50 W for 72 h at $9,000/MWh: 3.6 MWh -> $32,400
    assert standby_cost_usd(0.05, 1000, 9000.0, 72.0) == pytest.approx(32_400.0)
    model = PoweredOffModel(restart_minutes=10, max_cycles_per_day=4)
    assert worth_powering_off(0.05, 9000.0, 2.0, model, cycles_last_24h=0)  # $0.90 > $0.50
    assert not worth_powering_off(0.05, 30.0, 2.0, model, cycles_last_24h=0)  # cheap power: keep standby
    assert not worth_powering_off(0.05, 9000.0, 0.1, model, cycles_last_24h=0)  # off shorter than a restart
    assert not worth_powering_off(0.05, 9000.0, 2.0, model, cycles_last_24h=4)  # budget spent
