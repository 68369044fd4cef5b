"""Issue 17 leftovers in the optimizer: units powered off at the PDU (0 kW instead of standby, a
cold boot to wake) and derated (hot) units that may not run their high modes. Hand-checkable.

Site: one group "pdu" of 100 units, 3.25 kW / 100 TH/s each, 0.05 kW asleep (5 kW standby for the
group), earning $0.208/h per unit at $50/PH/day: every unit runs at $20/MWh.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from hashflex.optimize.fallback import greedy_schedule
from hashflex.optimize.problem import Derate, Group, Mode, PowerOff, Problem, problem_from_profile
from hashflex.optimize.schedule import SolveStatus
from hashflex.optimize.solve import solve
from hashflex.profile import ProfileError, load_profile, parse_profile

T = 8


def make_problem(limit_kw: np.ndarray, *, power_off: bool = True, cold_boot_h: float = 0.1,
                 modes: tuple[Mode, ...] = (Mode("stock", 3.25, 100.0, 90.0),), units: int = 100,
                 idle_kw: float = 0.05, derates: tuple[Derate, ...] = ()) -> Problem:
    return Problem(
        interval_start=pd.date_range("2021-02-15 06:00", periods=T, freq="15min", tz="UTC"),
        duration_h=np.full(T, 0.25), price_usd_mwh=np.full(T, 20.0), price_adder_usd_mwh=0.0,
        hashprice_usd_per_ph_day=np.full(T, 50.0), pool_fee=0.0,
        groups=(Group(id="pdu", units=units, modes=modes, units_available=np.full(T, units), idle_power_kw=idle_kw),),
        renewable_kw=np.zeros(T), import_limit_kw=np.asarray(limit_kw, dtype=float),
        import_limit_source=tuple("DR:uri" if v < 1e6 else "import limit" for v in limit_kw),
        export_limit_kw=0.0, receptors=(), intensity_kg_per_mwh=np.full(T, 400.0),
        power_off=(PowerOff("pdu", cold_boot_h=cold_boot_h, cold_start_cost_usd=0.02),) if power_off else (),
        derates=derates,
    )


def dr_limit() -> np.ndarray:
    limit = np.full(T, 1e6)
    limit[2:4] = 2.0  # kW: below the 5 kW the group draws with every unit asleep
    return limit


def test_below_the_standby_draw_a_pdu_group_plans_units_off_and_stays_within_the_limit() -> None:
    # Today (no PDU control) the plan can only put every unit to sleep: 5 kW against a 2 kW limit.
    asleep = solve(make_problem(dr_limit(), power_off=False)).frame
    assert np.all(asleep["grid_import_kw"].to_numpy()[2:4] == pytest.approx(5.0))
    assert "units_pdu_off" not in asleep
    problem = make_problem(dr_limit())
    schedule = solve(problem)
    frame = schedule.frame
    assert schedule.status != SolveStatus.FALLBACK
    off = frame["units_pdu_off"].to_numpy()
    # 2 kW allows at most 40 units asleep at 0.05 kW: at least 60 powered off, none running.
    assert np.all(off[2:4] >= 60) and np.all(frame["units_pdu_stock"].to_numpy()[2:4] == 0)
    assert np.all(frame["grid_import_kw"].to_numpy()[2:4] <= 2.0 + 1e-6)
    np.testing.assert_allclose(frame["load_kw"].to_numpy()[2:4], (100 - off[2:4]) * 0.05)
    # No unit is off where it is not needed, and every unit is off or asleep or running.
    assert np.all(off[:2] == 0)
    assert np.all(frame["units_pdu_stock"].to_numpy() + off <= 100)


def test_a_unit_woken_from_off_cannot_hash_during_its_cold_boot() -> None:
    frame = solve(make_problem(dr_limit(), cold_boot_h=0.1)).frame  # 6 min: the whole waking interval
    off, on = frame["units_pdu_off"].to_numpy(), frame["units_pdu_stock"].to_numpy()
    assert off[3] >= 60 and off[4] == 0
    assert on[4] <= 100 - off[3]  # only the units that were merely asleep run at once
    assert on[5] == 100  # the woken units hash one interval later
    assert frame["reason_detail"].iloc[4] == f"equipment: {off[3]} units of pdu cold-booting after a power-off at the PDU"
    # Cold starts are paid: 0.02 $ per unit woken, in start_cost_usd of the waking interval.
    assert frame["start_cost_usd"].iloc[4] >= 0.02 * off[3] - 1e-9
    # With no boot time they run at once.
    quick = solve(make_problem(dr_limit(), cold_boot_h=0.0)).frame
    assert quick["units_pdu_stock"].iloc[4] == 100


def test_the_greedy_fallback_powers_off_what_the_limit_needs() -> None:
    problem = make_problem(dr_limit())
    frame = greedy_schedule(problem, reason="test").frame
    assert np.all(frame["grid_import_kw"].to_numpy() <= problem.import_limit_kw + 1e-6)
    assert frame["units_pdu_off"].tolist()[2:4] == [60, 60]  # ceil((5 − 2) / 0.05)
    assert np.all(frame["units_pdu_off"].to_numpy()[[0, 1, 4, 5, 6, 7]] == 0)


def test_the_profile_field_gives_the_builder_a_power_off_group() -> None:
    data = load_profile("quiet_hollow").model_dump(mode="json", exclude_none=True)
    data["miner_groups"][0].update(pdu_power_off=True, cold_boot_s=300, cold_start_cost_usd=0.05)
    profile = parse_profile(yaml.safe_dump(data))
    start = pd.date_range("2024-03-05 06:00", periods=4, freq="15min", tz="UTC")
    problem = problem_from_profile(profile, start, np.full(4, 25.0))
    assert problem.power_off == (PowerOff("air_s21", cold_boot_h=300 / 3600, cold_start_cost_usd=0.05),)
    # The standby floor no longer counts the group that can be powered off.
    assert problem.standby_floor_kw[0] == pytest.approx(160 * 0.01)
    data["miner_groups"][1]["cold_boot_s"] = 300  # without pdu_power_off
    with pytest.raises(ProfileError, match="miner_groups.1.*cold_boot_s and cold_start_cost_usd need pdu_power_off"):
        parse_profile(yaml.safe_dump(data))


# --- derated (hot) units --------------------------------------------------------------------------
MODES = (Mode("eco", 2.9, 175.0, 81.0), Mode("stock", 3.5, 200.0, 84.0))


def test_derated_units_run_only_modes_under_their_cap() -> None:
    # 10 units, every one profitable in stock at $20/MWh; 4 are hot and may run at most 3.0 kW.
    derate = Derate("pdu", units=np.full(T, 4), max_power_kw=3.0)
    healthy = solve(make_problem(np.full(T, 1e6), power_off=False, modes=MODES, units=10)).frame
    assert healthy["units_pdu_stock"].tolist() == [10] * T
    frame = solve(make_problem(np.full(T, 1e6), power_off=False, modes=MODES, units=10, derates=(derate,))).frame
    assert frame["units_pdu_stock"].tolist() == [6] * T  # only the healthy six at full power
    assert frame["units_pdu_eco"].tolist() == [4] * T  # the hot four still hash, capped
    greedy = greedy_schedule(make_problem(np.full(T, 1e6), power_off=False, modes=MODES, units=10,
                                          derates=(derate,))).frame
    assert np.all(greedy["units_pdu_stock"].to_numpy() <= 6)
    # A cap below every mode: the hot units sleep.
    cold = dataclasses.replace(derate, max_power_kw=0.0)
    frame = solve(make_problem(np.full(T, 1e6), power_off=False, modes=MODES, units=10, derates=(cold,))).frame
    assert (frame["units_pdu_stock"] + frame["units_pdu_eco"]).tolist() == [6] * T


def test_the_builder_takes_derates_as_a_pure_input_and_names_bad_fields() -> None:
    profile = load_profile("quiet_hollow")
    start = pd.date_range("2024-03-05 18:00", periods=4, freq="15min", tz="UTC")
    problem = problem_from_profile(profile, start, np.full(4, 25.0), derated_units={"air_s21": 50},
                                   derated_max_power_kw={"air_s21": 3.0})
    (derate,) = problem.derates
    assert derate.group == "air_s21" and derate.units.tolist() == [50] * 4 and derate.max_power_kw == 3.0
    with pytest.raises(ValueError, match="derated_max_power_kw: no cap for derated groups"):
        problem_from_profile(profile, start, np.full(4, 25.0), derated_units={"air_s21": 5})
    with pytest.raises(ValueError, match="derated_units names unknown miner groups"):
        problem_from_profile(profile, start, np.full(4, 25.0), derated_units={"nope": 5},
                             derated_max_power_kw={"nope": 1.0})
