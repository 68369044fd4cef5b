"""Hand-checkable cases, one per constraint family, on real HiGHS solves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize.fallback import greedy_schedule
from hashflex.optimize.solve import solve, solve_multiresolution
from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor
from hashflex.optimize.schedule import Schedule, SolveStatus

HASHPRICE = 48.0  # $/PH/day; with no pool fee one 100 TH/s, 3 kW unit earns $0.2/h
ECO = Mode("eco", 2.5, 90.0, 80.0)
STOCK = Mode("stock", 3.0, 100.0, 83.0)


def breakeven_usd_mwh(mode: Mode) -> float:
    return mode.hashrate_th_s * HASHPRICE / 1000 / 24 / mode.power_kw * 1000


def make_problem(
    T: int = 4,
    *,
    price: float | list[float] = 20.0,
    units: int = 10,
    modes: tuple[Mode, ...] = (STOCK,),
    import_limit_kw: float | list[float] = 1e6,
    limit_source: str = "import limit",
    receptors: tuple[Receptor, ...] = (),
    renewable_kw: float | list[float] = 0.0,
    intensity: float = 400.0,
    carbon_budgets: tuple[CarbonBudget, ...] = (),
    min_on_h: float = 0.0,
    initial: GroupState = GroupState(),
    ramp_kw_per_h: float | None = None,
    idle_kw: float = 0.0,
    initial_load_kw: float | None = None,
) -> Problem:
    index = pd.date_range("2024-06-01T00:00Z", periods=T, freq="15min")
    limit = np.broadcast_to(np.asarray(import_limit_kw, dtype=float), (T,)).copy()
    return Problem(
        interval_start=index,
        duration_h=np.full(T, 0.25),
        price_usd_mwh=np.broadcast_to(np.asarray(price, dtype=float), (T,)).copy(),
        price_adder_usd_mwh=0.0,
        hashprice_usd_per_ph_day=np.full(T, HASHPRICE),
        pool_fee=0.0,
        groups=(Group("air", units, modes, np.full(T, units), idle_power_kw=idle_kw, min_on_h=min_on_h,
                      initial=initial),),
        renewable_kw=np.broadcast_to(np.asarray(renewable_kw, dtype=float), (T,)).copy(),
        import_limit_kw=limit,
        import_limit_source=tuple(limit_source if v < 1e6 else "import limit" for v in limit),
        export_limit_kw=0.0,
        receptors=receptors,
        intensity_kg_per_mwh=np.full(T, intensity),
        carbon_budgets=carbon_budgets,
        ramp_limit_kw_per_h=ramp_kw_per_h,
        initial_load_kw=initial_load_kw,
    )


def units_on(schedule: Schedule) -> np.ndarray:
    columns = [c for c in schedule.frame.columns if c.startswith("units_")]
    return schedule.frame[columns].sum(axis=1).to_numpy()


def assert_hard_limits(problem: Problem, schedule: Schedule) -> None:
    """Recompute every hard limit from the schedule's integer counts."""
    frame = schedule.frame
    for group in problem.groups:
        columns = [f"units_{group.id}_{m.name}" for m in group.modes]
        counts = frame[columns].to_numpy()
        assert np.all(counts == np.round(counts)), "counts must be integral"
        assert np.all(counts.sum(axis=1) <= group.units_available), "more units than available"
    # A limit below the standby draw of sleeping units can only be met at the PDU: plan all asleep.
    assert np.all(frame["grid_import_kw"] <= problem.effective_import_limit_kw + 1e-6)
    below_floor = problem.import_limit_kw < problem.standby_floor_kw
    assert np.all(units_on(schedule)[below_floor] == 0)
    assert np.all(frame["grid_import_kw"] >= -1e-9)
    np.testing.assert_allclose(frame["load_kw"], frame["grid_import_kw"] + frame["renewable_used_kw"], atol=1e-6)
    for receptor in problem.receptors:
        energy = np.zeros(problem.T)
        for group in problem.groups:
            for mode in group.modes:
                energy += frame[f"units_{group.id}_{mode.name}"].to_numpy() * 10 ** (
                    (mode.sound_power_dba - receptor.attenuation_db[group.id]) / 10)
        if receptor.cap_applies_to == "total":
            energy += 10 ** (receptor.background_dba / 10)
        with np.errstate(divide="ignore"):
            level = 10 * np.log10(energy)
        cap = receptor.cap_dba - receptor.margin_db
        quiet_enough = level <= cap + 1e-9
        background_only = np.isclose(energy, 10 ** (receptor.background_dba / 10)) if receptor.cap_applies_to == "total" else energy == 0
        assert np.all(quiet_enough | background_only), f"noise cap broken at {receptor.id}"
    for budget in problem.carbon_budgets:
        # Sleeping units' standby draw emits too; a budget below that is met by planning all asleep.
        assert frame["emissions_kg"].to_numpy()[budget.mask].sum() <= problem.effective_carbon_budget_kg(budget) + 1e-6


def test_price_above_every_breakeven_switches_everything_off() -> None:
    price = breakeven_usd_mwh(STOCK) + 1.0
    problem = make_problem(price=price, idle_kw=0.01)
    schedule = solve(problem)
    assert schedule.status == SolveStatus.OPTIMAL
    assert units_on(schedule).sum() == 0
    np.testing.assert_allclose(schedule.frame["load_kw"], 10 * 0.01)  # only standby draw
    assert set(schedule.frame["reason"]) == {"price"}


def test_price_below_breakeven_runs_everything_and_profit_matches_hand_calculation() -> None:
    schedule = solve(make_problem(price=20.0))
    assert units_on(schedule).tolist() == [10, 10, 10, 10]
    revenue_per_interval = 10 * 100 * HASHPRICE / 1000 / 24 * 0.25
    cost_per_interval = 10 * 3.0 * 0.25 * 20.0 / 1000
    assert schedule.frame["profit_usd"].sum() == pytest.approx(4 * (revenue_per_interval - cost_per_interval))
    assert set(schedule.frame["reason"]) == {""}


def test_night_cap_admits_exactly_k_units() -> None:
    # One unit at the receptor: 83 − 60 = 23 dB(A). Cap 45 over background 30 leaves
    # 10^4.5 − 10^3 = 30,622.8 energy units; each unit adds 10^2.3 = 199.5, so k = 153.
    receptor = Receptor("house", {"air": 60.0}, np.array([55.0, 45.0, 45.0, 55.0]), background_dba=30.0)
    budget = 10 ** 4.5 - 10 ** 3.0
    k = math.floor(budget / 10 ** 2.3)
    assert k == 153
    problem = make_problem(units=400, receptors=(receptor,))
    schedule = solve(problem)
    assert_hard_limits(problem, schedule)
    assert units_on(schedule)[1] == k and units_on(schedule)[2] == k
    assert schedule.frame["reason"].iloc[1] == "noise:house"
    assert schedule.frame["noise_dba_house"].iloc[1] <= 45.0


def test_quieter_mode_lets_more_units_run_under_a_noise_cap() -> None:
    receptor = Receptor("house", {"air": 60.0}, np.full(4, 45.0), background_dba=30.0)
    problem = make_problem(units=400, modes=(ECO, STOCK), receptors=(receptor,))
    schedule = solve(problem)
    assert_hard_limits(problem, schedule)
    eco = schedule.frame["units_air_eco"].to_numpy()
    assert np.all(eco > 153), "eco units are 3 dB quieter, so more than the stock-only 153 fit"


def test_background_at_the_cap_keeps_the_schedule_feasible_and_says_why() -> None:
    receptor = Receptor("house", {"air": 60.0}, np.full(4, 45.0), background_dba=46.0)
    problem = make_problem(receptors=(receptor,))
    schedule = solve(problem)
    assert schedule.status == SolveStatus.OPTIMAL
    assert units_on(schedule).sum() == 0
    assert set(schedule.frame["reason"]) == {"noise:house"}


def test_carbon_budget_binds() -> None:
    # Ten 3 kW units for four 15-min intervals import 30 kWh = 12 kg at 400 kg/MWh; allow 6 kg.
    budget = CarbonBudget("day", np.ones(4, dtype=bool), 6.0)
    problem = make_problem(carbon_budgets=(budget,))
    schedule = solve(problem)
    assert_hard_limits(problem, schedule)
    assert schedule.frame["emissions_kg"].sum() == pytest.approx(6.0, abs=0.3 * 0.4 + 1e-9)
    assert units_on(schedule).sum() == 20  # 6 kg / (3 kW · 0.25 h · 0.4 kg/kWh) = 20 unit-intervals
    assert "carbon" in set(schedule.frame["reason"])


def test_renewable_output_is_used_before_the_grid_and_emits_nothing() -> None:
    problem = make_problem(renewable_kw=12.0)
    schedule = solve(problem)
    np.testing.assert_allclose(schedule.frame["renewable_used_kw"], 12.0)
    np.testing.assert_allclose(schedule.frame["grid_import_kw"], 18.0)
    np.testing.assert_allclose(schedule.frame["emissions_kg"], 18.0 * 0.25 * 0.4)


def test_dr_window_caps_import_and_is_named_as_the_reason() -> None:
    problem = make_problem(import_limit_kw=[1e6, 10.0, 10.0, 1e6], limit_source="DR:event-7")
    schedule = solve(problem)
    assert_hard_limits(problem, schedule)
    assert units_on(schedule).tolist() == [10, 3, 3, 10]
    assert schedule.frame["reason"].tolist() == ["", "DR:event-7", "DR:event-7", ""]


def test_min_on_time_stops_a_start_that_would_not_pay() -> None:
    # Cheap in the first interval only; a start must then run 1 h through three expensive intervals.
    expensive = breakeven_usd_mwh(STOCK) + 50.0
    prices = [20.0, expensive, expensive, expensive]
    free = solve(make_problem(price=prices))
    assert units_on(free).tolist() == [10, 0, 0, 0]
    held = solve(make_problem(price=prices, min_on_h=1.0))
    assert units_on(held).tolist() == [0, 0, 0, 0]
    assert not held.info.penalties


def test_min_on_yields_to_a_dr_limit() -> None:
    """Units started just before the horizon must stay on, but a DR limit of zero wins."""
    initial = GroupState(units_on=10, must_stay_on=((1.0, 10),))
    problem = make_problem(import_limit_kw=[0.0, 0.0, 1e6, 1e6], limit_source="DR:e1", min_on_h=1.0, initial=initial)
    schedule = solve(problem)
    assert_hard_limits(problem, schedule)
    assert units_on(schedule)[:2].tolist() == [0, 0]
    assert schedule.info.penalties.get("min_on_units_short", 0) > 0  # reported, not hidden


def test_ramp_limit_is_respected_when_it_costs_nothing_to() -> None:
    problem = make_problem(units=10, ramp_kw_per_h=24.0, initial_load_kw=0.0)  # 6 kW per 15 min = two units
    schedule = solve(problem)
    assert units_on(schedule).tolist() == [2, 4, 6, 8]


def test_negative_price_runs_everything_and_earns_on_energy() -> None:
    schedule = solve(make_problem(price=-30.0))
    assert units_on(schedule).tolist() == [10] * 4
    assert (schedule.frame["energy_cost_usd"] < 0).all()


def test_multiresolution_expands_to_base_intervals_and_keeps_limits() -> None:
    T = 16
    problem = make_problem(T=T, price=[20.0] * 8 + [20.0, 500.0, 20.0, 20.0] + [20.0] * 4,
                           import_limit_kw=[1e6] * 12 + [15.0, 1e6, 1e6, 1e6], limit_source="DR:x")
    schedule = solve_multiresolution(problem, fine_intervals=4, block_h=1.0)
    assert len(schedule.frame) == T
    assert_hard_limits(problem, schedule)
    # The DR interval sits in the last hourly block, so the whole hour is held to 15 kW.
    assert units_on(schedule)[12:].tolist() == [5, 5, 5, 5]


def test_fallback_is_used_when_the_solver_cannot_finish() -> None:
    problem = make_problem(T=8)
    schedule = solve(problem, time_limit_s=-1.0)  # HiGHS rejects a negative time limit
    assert schedule.status == SolveStatus.FALLBACK
    assert "solver" in schedule.info.message or "LP" in schedule.info.message
    assert_hard_limits(problem, schedule)


@st.composite
def random_problems(draw: st.DrawFn) -> Problem:
    T = draw(st.integers(2, 6))
    n_groups = draw(st.integers(1, 3))
    groups = []
    for g in range(n_groups):
        modes = tuple(
            Mode(f"m{m}", draw(st.floats(1.0, 8.0)), draw(st.floats(50.0, 500.0)), draw(st.floats(55.0, 90.0)))
            for m in range(draw(st.integers(1, 3)))
        )
        units = draw(st.integers(1, 50))
        available = np.array([draw(st.integers(0, units)) for _ in range(T)])
        groups.append(Group(f"g{g}", units, modes, available, idle_power_kw=draw(st.sampled_from([0.0, 0.02]))))
    receptors = tuple(
        Receptor(f"r{r}", {g.id: draw(st.floats(40.0, 80.0)) for g in groups},
                 np.array([draw(st.sampled_from([40.0, 45.0, 55.0, math.inf])) for _ in range(T)]),
                 background_dba=draw(st.floats(20.0, 50.0)),
                 cap_applies_to=draw(st.sampled_from(["total", "site"])))
        for r in range(draw(st.integers(0, 2)))
    )
    budget = draw(st.none() | st.floats(0.0, 50.0))
    return Problem(
        interval_start=pd.date_range("2024-01-01T00:00Z", periods=T, freq="15min"),
        duration_h=np.full(T, 0.25),
        price_usd_mwh=np.array([draw(st.floats(-50.0, 3000.0)) for _ in range(T)]),
        price_adder_usd_mwh=draw(st.floats(0.0, 10.0)),
        hashprice_usd_per_ph_day=np.full(T, draw(st.floats(20.0, 300.0))),
        pool_fee=0.02,
        groups=tuple(groups),
        renewable_kw=np.array([draw(st.floats(0.0, 100.0)) for _ in range(T)]),
        import_limit_kw=np.array([draw(st.floats(0.0, 400.0)) for _ in range(T)]),
        import_limit_source=("import limit",) * T,
        export_limit_kw=0.0,
        receptors=receptors,
        intensity_kg_per_mwh=np.full(T, 400.0),
        carbon_budgets=() if budget is None else (CarbonBudget("b", np.ones(T, dtype=bool), budget),),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_problems())
def test_fallback_respects_every_hard_limit_on_random_problems(problem: Problem) -> None:
    schedule = greedy_schedule(problem, reason="test")
    assert schedule.status == SolveStatus.FALLBACK
    assert_hard_limits(problem, schedule)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_problems())
def test_milp_respects_every_hard_limit_and_beats_the_fallback(problem: Problem) -> None:
    schedule = solve(problem)
    assert_hard_limits(problem, schedule)
    fallback = greedy_schedule(problem)
    assert schedule.total_profit_usd >= fallback.total_profit_usd - 0.006 * abs(fallback.total_profit_usd) - 1e-6


def test_pyomo_appsi_interface_reaches_the_same_schedule_value() -> None:
    """The default route hands the Pyomo model to HiGHS directly; Pyomo's own persistent HiGHS
    interface must agree on the same model (within the MIP gap)."""
    receptor = Receptor("house", {"air": 60.0}, np.array([55.0, 45.0, 45.0, 55.0] * 2), background_dba=30.0)
    problem = make_problem(T=8, units=300, modes=(ECO, STOCK), receptors=(receptor,),
                           price=[20, 20, 400, 20, 20, 30, 30, 20], min_on_h=0.5,
                           carbon_budgets=(CarbonBudget("day", np.ones(8, dtype=bool), 150.0),))
    direct = solve(problem)
    appsi = solve(problem, interface="appsi")
    assert appsi.status == SolveStatus.OPTIMAL and direct.status == SolveStatus.OPTIMAL
    assert appsi.info.message.startswith("appsi")
    assert_hard_limits(problem, appsi)
    assert appsi.total_profit_usd == pytest.approx(direct.total_profit_usd, rel=0.006)
    with pytest.raises(ValueError, match="interface"):
        solve(problem, interface="cplex")


def test_the_schedule_is_the_solution_the_solver_valued() -> None:
    """Found by the hypothesis test above: given the rounded start, HiGHS (1.16) solved the MIP in
    presolve, reported the better objective (5 unit-intervals) and handed back the start's values
    (4): the schedule earned less than the solver said and less than the greedy fallback."""
    from hashflex.optimize.fallback import greedy_schedule
    from hashflex.optimize.problem import Group, GroupState, Mode, Receptor

    index = pd.date_range("2024-01-01", periods=5, freq="15min", tz="UTC")
    groups = (Group(id="g0", units=3, modes=(Mode("m0", 2.0, 50.0, 55.0), Mode("m1", 1.0, 50.0, 83.0)),
                    units_available=np.array([2, 0, 0, 3, 0]), idle_power_kw=0.0, min_on_h=0.0, min_off_h=0.0,
                    start_cost_usd=0.0, initial=GroupState()),
              Group(id="g1", units=1, modes=(Mode("m0", 1.0, 50.0, 55.0),), units_available=np.zeros(5, dtype=int),
                    idle_power_kw=0.0, min_on_h=0.0, min_off_h=0.0, start_cost_usd=0.0, initial=GroupState()))
    receptor = Receptor(id="r0", attenuation_db={"g0": 47.0, "g1": 40.0}, cap_dba=np.full(5, 40.0),
                        background_dba=20.0, cap_applies_to="total", margin_db=0.0)
    problem = Problem(interval_start=index, duration_h=np.full(5, 0.25), price_usd_mwh=np.zeros(5),
                      price_adder_usd_mwh=0.0, hashprice_usd_per_ph_day=np.full(5, 20.0), pool_fee=0.02,
                      groups=groups, renewable_kw=np.array([4.0, 0, 0, 4.0, 0]), import_limit_kw=np.zeros(5),
                      import_limit_source=("import limit",) * 5, export_limit_kw=0.0, receptors=(receptor,),
                      intensity_kg_per_mwh=np.full(5, 400.0), carbon_price_usd_per_t=0.0, carbon_budgets=())
    schedule = solve(problem)
    # t = 3: 4 kW of solar, 2 quiet-enough m1 units (1 kW) and one m0 (2 kW) fit the cap: 39.0 dB(A).
    assert schedule.frame["units_g0_m0"].iloc[3] + schedule.frame["units_g0_m1"].iloc[3] == 3
    assert schedule.total_profit_usd == pytest.approx(schedule.info.objective_usd)
    assert schedule.total_profit_usd >= greedy_schedule(problem).total_profit_usd - 1e-12
