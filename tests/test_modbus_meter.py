"""The site meter over real Modbus TCP (pymodbus server on loopback) and the cut it asks for."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hashflex.drivers.base import Setpoint, utc_now
from hashflex.drivers.luxos import LuxosDriver, LuxosEndpoint
from hashflex.drivers.modbus_meter import (
    MeterConfig,
    MeterError,
    MeterPoller,
    MeterRegisterMap,
    ModbusMeter,
    meter_cut_kw,
    select_cuts,
    unmodelled_load_kw,
)
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim.miners import MinerState, ScaledClock, SimulatedMinerFleet
from hashflex.sim.modbus_devices import SimulatedMeter


def _meter(sim: SimulatedMeter, **kw) -> ModbusMeter:
    return ModbusMeter(MeterConfig(host=sim.host, port=sim.port, registers=sim.registers, timeout_s=0.3, **kw))


@pytest.mark.parametrize("registers", [
    MeterRegisterMap(address=52),  # float32 kW, big-endian words, holding registers
    MeterRegisterMap(address=10, table="input", data_type="int32", word_order="little", scale_to_kw=0.001,
                     import_sign=-1),  # int32 W, export counted positive
    MeterRegisterMap(address=3, data_type="uint16", scale_to_kw=0.1, device_id=7),
])
def test_register_maps_read_the_import(registers):
    with SimulatedMeter(lambda: 1234.5, registers) as sim:
        meter = _meter(sim)
        try:
            assert meter.read().import_kw == pytest.approx(1234.5, abs=0.05)
        finally:
            meter.close()


def test_faults_raise_a_meter_error_naming_the_cause():
    registers = MeterRegisterMap(address=52)
    with SimulatedMeter(lambda: 1000.0, registers) as sim:
        meter = _meter(sim, max_kw=5000.0)
        try:
            sim.fault = "exception"
            with pytest.raises(MeterError, match="Modbus exception 4 reading holding register 52"):
                meter.read()
            sim.fault = "silent"
            with pytest.raises(MeterError, match="No response"):
                meter.read()
            sim.fault = None
            assert meter.read().import_kw == 1000.0  # recovers
            sim.import_kw = lambda: 9e9
            with pytest.raises(MeterError, match="implausible import"):
                meter.read()
        finally:
            meter.close()
    refused = ModbusMeter(MeterConfig(host="127.0.0.1", port=sim.port, registers=registers, timeout_s=0.3))
    with pytest.raises(MeterError, match="cannot connect|Connection"):
        refused.read()


def test_poller_keeps_the_last_good_reading_and_counts_errors():
    registers = MeterRegisterMap(address=52)
    with SimulatedMeter(lambda: 800.0, registers) as sim:
        poller = MeterPoller(_meter(sim, max_age_s=60.0))
        assert poller.poll_once().import_kw == 800.0
        sim.fault = "exception"
        assert poller.poll_once() is None
        assert poller.errors == 1 and "exception 4" in poller.last_error
        assert poller.latest().import_kw == 800.0 and poller.fresh_import_kw() == 800.0
        assert poller.fresh_import_kw(max_age_s=-1.0) is None
        poller.stop()


def test_config_from_a_profile_section_names_bad_fields():
    config = MeterConfig.from_mapping({"host": "10.0.0.9", "port": 5020, "max_age_s": 3,
                                       "registers": {"address": 3060, "data_type": "float32", "scale_to_kw": 0.001}})
    assert config.registers.address == 3060 and config.port == 5020
    for bad, field in [({"host": "h", "registers": {"address": 1, "table": "coils"}}, "registers.table"),
                       ({"host": "h", "registers": {"address": 70000}}, "registers.address"),
                       ({"host": "h", "registers": {"address": 1, "data_type": "float64"}}, "registers.data_type"),
                       ({"host": "h", "registers": {"address": 1}, "max_age_s": 0}, "max_age_s"),
                       ({"host": "h", "registers": {"address": 1}, "speed": 1}, "unknown field"),
                       ({"registers": {"address": 1}}, "host and registers are required")]:
        with pytest.raises(ValueError, match=field):
            MeterConfig.from_mapping(bad)


def test_meter_cut_is_the_excess_only_when_fresh():
    assert meter_cut_kw(1050.0, 1000.0, age_s=1.0, max_age_s=5.0) == 50.0
    assert meter_cut_kw(1050.0, 1000.0, age_s=1.0, max_age_s=5.0, margin_kw=20.0) == 70.0
    assert meter_cut_kw(950.0, 1000.0, age_s=1.0, max_age_s=5.0) == 0.0
    assert meter_cut_kw(5000.0, 1000.0, age_s=6.0, max_age_s=5.0) == 0.0  # stale: the model stays the truth
    assert meter_cut_kw(None, 1000.0, age_s=None, max_age_s=5.0) == 0.0
    assert meter_cut_kw(float("nan"), 1000.0, age_s=0.0, max_age_s=5.0) == 0.0


def test_unmodelled_load_only_adds():
    assert unmodelled_load_kw(1050.0, 1000.0, age_s=1.0, max_age_s=5.0) == 50.0
    assert unmodelled_load_kw(900.0, 1000.0, age_s=1.0, max_age_s=5.0) == 0.0  # never lets the guard allow more
    assert unmodelled_load_kw(1050.0, 1000.0, age_s=9.0, max_age_s=5.0) == 0.0
    assert unmodelled_load_kw(float("inf"), 1000.0, age_s=0.0, max_age_s=5.0) == 0.0


def test_select_cuts_least_efficient_first():
    running = {"a": (3.0, 22.0), "b": (3.0, 30.0), "c": (2.0, 30.0), "d": (3.0, 17.0)}
    assert select_cuts(running, 0.0) == []
    assert select_cuts(running, 2.5) == ["b"]
    assert select_cuts(running, 4.0) == ["b", "c"]
    assert select_cuts(running, 100.0) == ["b", "c", "a", "d"]


def test_a_meter_over_the_limit_triggers_a_further_cut_in_one_batch():
    """The model says 4 miners × 3 kW = 12 kW fits a 12.5 kW limit; the meter sees 12 kW + 2 kW of
    cooling the model does not know about. One read, one batch of sleeps, and the meter is under."""
    group = MinerGroup(id="s19", model="Antminer S19", units=4, idle_power_kw=0.02, boot_minutes=0.0,
                       modes=[MinerMode(name="stock", power_kw=3.0, hashrate_th_s=95.0, sound_power_dba=95.0)])
    with SimulatedMinerFleet({f"m{i}": group for i in range(4)}, clock=ScaledClock(600)) as fleet:
        for miner in fleet.miners.values():
            miner.command_mode("stock", None)
        assert all(s.state is MinerState.HASHING for s in fleet.states().values())
        registers = MeterRegisterMap(address=52, scale_to_kw=0.001, data_type="int32")
        with SimulatedMeter(lambda: fleet.total_power_kw() + 2.0, registers) as sim:
            poller = MeterPoller(_meter(sim))
            driver = LuxosDriver([LuxosEndpoint(m, "s19", h, p) for m, (h, p) in fleet.endpoints().items()],
                                 {"s19": {"stock": "stock"}})
            try:
                limit_kw = 12.5
                reading = poller.poll_once()
                cut = meter_cut_kw(reading.import_kw, limit_kw, reading.age_s(utc_now()), max_age_s=5.0)
                assert cut == pytest.approx(1.5)
                running = {m: (s.power_kw, 3000 / 95) for m, s in fleet.states().items()
                           if s.state is MinerState.HASHING}
                victims = select_cuts(running, cut)
                now = utc_now()
                results = driver.apply([Setpoint(m, "sleep", 0.0, now, now + timedelta(minutes=5)) for m in victims])
                assert len(victims) == 1 and all(r.ok for r in results)
                after = poller.poll_once()
                assert after.import_kw <= limit_kw
                assert meter_cut_kw(after.import_kw, limit_kw, 0.0, 5.0) == 0.0
            finally:
                driver.close()
                poller.stop()
