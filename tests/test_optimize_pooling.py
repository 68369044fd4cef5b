"""Identical groups pooled in `solve()` (`optimize.symmetry`): the plan of the pooled problem, split
back per group, keeps every hard limit of the original groups and is worth at least a fresh unpooled
`solve()` within the MIP gap, on seeded random SYNTHETIC problems; and groups that differ are not
pooled."""

from __future__ import annotations

import dataclasses

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize.fallback import greedy_schedule
from hashflex.optimize.milp import DEFAULT_REL_GAP
from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor
from hashflex.optimize.schedule import Schedule, SolveStatus
from hashflex.optimize.solve import solve
from hashflex.optimize.symmetry import pool_identical_groups, poolable, split_counts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimization" / "benchmarks"))


def assert_hard_limits(problem: Problem, schedule: Schedule) -> None:
    """Every hard limit of the original problem, recomputed from the schedule's integer counts."""
    frame = schedule.frame
    for group in problem.groups:
        counts = frame[[f"units_{group.id}_{m.name}" for m in group.modes]].to_numpy()
        assert (counts >= 0).all() and (counts.sum(axis=1) <= group.units_available).all(), group.id
    assert (frame["grid_import_kw"] <= problem.effective_import_limit_kw + 1e-6).all()
    np.testing.assert_allclose(frame["load_kw"], frame["grid_import_kw"] + frame["renewable_used_kw"], atol=1e-6)
    for receptor in problem.receptors:
        energy = sum(frame[f"units_{g.id}_{m.name}"].to_numpy() * receptor.unit_energy(g.id, m)
                     for g in problem.groups for m in g.modes)
        budget = receptor.energy_budget()
        assert (energy <= budget * (1 + 1e-9) + 1e-12).all(), receptor.id
    for budget in problem.carbon_budgets:
        assert frame["emissions_kg"].to_numpy()[budget.mask].sum() <= problem.effective_carbon_budget_kg(budget) + 1e-6


KINDS = (
    (Mode("eco", 2.9, 175.0, 81.0), Mode("stock", 3.5, 200.0, 84.0)),
    (Mode("eco", 5.3, 410.0, 62.0), Mode("stock", 6.4, 473.0, 64.0), Mode("turbo", 7.8, 540.0, 66.0)),
)


@st.composite
def pooled_problems(draw: st.DrawFn) -> Problem:
    """SYNTHETIC: 1-2 kinds of container, 1-3 alike copies each (own size, availability and initial
    state; same modes, commitment and distance), an odd one out at its own distance, a receptor
    with a night cap, an import limit and maybe a carbon budget."""
    T = draw(st.integers(3, 8))
    groups, attenuation = [], {}
    for kind in range(draw(st.integers(1, 2))):
        modes = KINDS[draw(st.integers(0, 1))]
        # Only groups without commitment parameters pool (symmetry.poolable); a committed kind is
        # drawn beside them and must stay unpooled.
        min_on_h, start_cost = (0.0, 0.0) if kind == 0 else draw(st.sampled_from([(0.0, 0.0), (0.5, 0.05)]))
        band = draw(st.floats(40.0, 70.0))
        for copy in range(draw(st.integers(1, 3)) + (1 if kind == 0 else 0)):
            units = draw(st.integers(1, 30))
            available = np.array([draw(st.integers(0, units)) for _ in range(T)])
            on0 = draw(st.integers(0, units))
            held = ((0.4, min(on0, draw(st.integers(0, 3)))),) if min_on_h and on0 else ()
            gid = f"k{kind}_{copy}"
            groups.append(Group(gid, units, modes, available, idle_power_kw=0.01, min_on_h=min_on_h,
                                start_cost_usd=start_cost,
                                initial=GroupState(units_on=on0, must_stay_on=held)))
            attenuation[gid] = band
    odd = Group("odd", 10, KINDS[0], np.full(T, 10), idle_power_kw=0.01)
    groups.append(odd)
    attenuation["odd"] = draw(st.floats(40.0, 70.0))
    receptor = Receptor("house", attenuation, np.array([draw(st.sampled_from([40.0, 50.0, math.inf])) for _ in range(T)]),
                        background_dba=30.0)
    budget = draw(st.none() | st.floats(1.0, 100.0))
    return Problem(
        interval_start=pd.date_range("2024-06-01T00:00Z", periods=T, freq="15min"), duration_h=np.full(T, 0.25),
        price_usd_mwh=np.array([draw(st.floats(-20.0, 400.0)) for _ in range(T)]), price_adder_usd_mwh=2.0,
        hashprice_usd_per_ph_day=np.full(T, 50.0), pool_fee=0.02, groups=tuple(groups),
        renewable_kw=np.array([draw(st.floats(0.0, 50.0)) for _ in range(T)]),
        import_limit_kw=np.array([draw(st.floats(5.0, 600.0)) for _ in range(T)]),
        import_limit_source=("import limit",) * T, export_limit_kw=0.0, receptors=(receptor,),
        intensity_kg_per_mwh=np.full(T, 400.0), carbon_price_usd_per_t=10.0,
        carbon_budgets=() if budget is None else (CarbonBudget("day", np.ones(T, dtype=bool), budget),))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pooled_problems())
def test_pooled_plan_keeps_every_hard_limit_and_is_worth_a_fresh_solve_within_the_gap(problem: Problem) -> None:
    assert poolable(problem)
    pooled = solve(problem)
    fresh = solve(problem, pool_identical=False)
    assert pooled.status != SolveStatus.FALLBACK and fresh.status != SolveStatus.FALLBACK
    assert "classes of identical groups" in pooled.info.message
    assert_hard_limits(problem, pooled)
    assert {c for c in pooled.frame if c.startswith("units_")} == {c for c in fresh.frame if c.startswith("units_")}
    # The pooled optimum bounds the unpooled one; the split plan pays at most a few start costs more.
    tolerance = DEFAULT_REL_GAP * max(abs(fresh.total_profit_usd), abs(pooled.total_profit_usd)) + 0.05 * 4 * problem.T
    assert pooled.total_profit_usd >= fresh.total_profit_usd - tolerance
    assert pooled.info.bound_usd is None or fresh.info.objective_usd <= pooled.info.bound_usd + 1e-6 * abs(pooled.info.bound_usd) + 1e-6


def test_split_counts_add_up_per_mode_and_respect_each_members_availability() -> None:
    rng = np.random.default_rng(5)
    T = 12
    groups = tuple(Group(f"c{i}", 20, KINDS[1], rng.integers(5, 21, T),
                         initial=GroupState(units_on=int(rng.integers(0, 6)))) for i in range(3))
    receptor = Receptor("house", {g.id: 55.0 for g in groups}, np.full(T, math.inf), background_dba=30.0)
    problem = Problem(
        interval_start=pd.date_range("2024-06-01T00:00Z", periods=T, freq="15min"), duration_h=np.full(T, 0.25),
        price_usd_mwh=np.full(T, 20.0), price_adder_usd_mwh=0.0, hashprice_usd_per_ph_day=np.full(T, 50.0),
        pool_fee=0.0, groups=groups, renewable_kw=np.zeros(T), import_limit_kw=np.full(T, 1e6),
        import_limit_source=("import limit",) * T, export_limit_kw=0.0, receptors=(receptor,),
        intensity_kg_per_mwh=np.full(T, 400.0), carbon_budgets=())
    pooled, members = pool_identical_groups(problem)
    assert members == [[0, 1, 2]] and pooled.groups[0].units == 60
    np.testing.assert_array_equal(pooled.groups[0].units_available, sum(g.units_available for g in groups))
    total = pooled.groups[0].units_available
    class_counts = {(0, 0): total // 4, (0, 1): total // 4, (0, 2): total - 2 * (total // 4) - rng.integers(0, 3, T)}
    split = split_counts(problem, members, class_counts)
    for m in range(3):
        np.testing.assert_array_equal(sum(split[g, m] for g in range(3)), class_counts[0, m])
    for g, group in enumerate(groups):
        on = sum(split[g, m] for m in range(3))
        assert (on <= group.units_available).all() and all((split[g, m] >= 0).all() for m in range(3))


def test_groups_that_differ_are_not_pooled() -> None:
    from solve_scaling import synthetic_problem

    problem = synthetic_problem(8, 6, 15)
    assert not poolable(problem)
    schedule = solve(problem)
    assert "classes of identical groups" not in schedule.info.message


def test_a_pooled_solve_that_fails_falls_back_on_the_original_groups() -> None:
    problem = _two_alike()
    schedule = solve(problem, time_limit_s=-1.0)  # HiGHS rejects a negative time limit
    assert schedule.status == SolveStatus.FALLBACK
    assert {c for c in schedule.frame if c.startswith("units_")} == \
        {c for c in greedy_schedule(problem).frame if c.startswith("units_")}
    assert_hard_limits(problem, schedule)


def _two_alike() -> Problem:
    T = 4
    groups = tuple(Group(f"c{i}", 10, KINDS[0], np.full(T, 10)) for i in range(2))
    return Problem(
        interval_start=pd.date_range("2024-06-01T00:00Z", periods=T, freq="15min"), duration_h=np.full(T, 0.25),
        price_usd_mwh=np.full(T, 20.0), price_adder_usd_mwh=0.0, hashprice_usd_per_ph_day=np.full(T, 50.0),
        pool_fee=0.0, groups=groups, renewable_kw=np.zeros(T), import_limit_kw=np.full(T, 40.0),
        import_limit_source=("import limit",) * T, export_limit_kw=0.0, receptors=(),
        intensity_kg_per_mwh=np.full(T, 400.0), carbon_budgets=())


@pytest.mark.parametrize("pool", [True, False])
def test_two_alike_groups_share_the_import_limit_either_way(pool: bool) -> None:
    problem = _two_alike()
    schedule = solve(problem, pool_identical=pool)
    assert schedule.status == SolveStatus.OPTIMAL
    assert_hard_limits(problem, schedule)
    # 40 kW of import: 13 stock units (3.5 kW) or more eco ones; the two groups together, not each.
    assert (schedule.frame["load_kw"] <= 40.0 + 1e-6).all() and (schedule.frame["load_kw"] > 35.0).all()


def test_multiresolution_pools_identical_groups_and_keeps_the_original_groups_limits() -> None:
    from solve_scale import panhandle_like_problem

    from hashflex.optimize.solve import solve_multiresolution

    committed = panhandle_like_problem(T=48, n_groups=12)
    assert not poolable(committed)  # its containers have min on/off and start costs: never pooled
    problem = dataclasses.replace(committed, groups=tuple(
        dataclasses.replace(g, min_on_h=0.0, min_off_h=0.0, start_cost_usd=0.0,
                            initial=GroupState(units_on=g.initial.units_on)) for g in committed.groups))
    assert poolable(problem)
    schedule = solve_multiresolution(problem, fine_intervals=12, time_limit_s=60.0)
    assert schedule.status == SolveStatus.OPTIMAL
    assert_hard_limits(problem, schedule)
    assert {c for c in schedule.frame if c.startswith("units_")} == \
        {f"units_{g.id}_{m.name}" for g in problem.groups for m in g.modes}


def test_split_stops_units_past_their_min_on_time_before_units_just_started() -> None:
    """Member 0 runs all 10 of its units, member 1 none; the class starts 5 (only member 1 has
    room), then stops 5 a quarter hour later: with a 1 h min-on, they come from member 0's old
    units, not member 1's new ones."""
    T = 3
    groups = (Group("old", 10, KINDS[0], np.full(T, 10), min_on_h=1.0, initial=GroupState(units_on=10)),
              Group("new", 10, KINDS[0], np.full(T, 10), min_on_h=1.0, initial=GroupState(units_on=0)))
    problem = Problem(
        interval_start=pd.date_range("2024-06-01T00:00Z", periods=T, freq="15min"), duration_h=np.full(T, 0.25),
        price_usd_mwh=np.full(T, 20.0), price_adder_usd_mwh=0.0, hashprice_usd_per_ph_day=np.full(T, 50.0),
        pool_fee=0.0, groups=groups, renewable_kw=np.zeros(T), import_limit_kw=np.full(T, 1e6),
        import_limit_source=("import limit",) * T, export_limit_kw=0.0, receptors=(),
        intensity_kg_per_mwh=np.full(T, 400.0), carbon_budgets=())
    members = [[0, 1]]  # split_counts on its own: committed groups are not pooled by solve()
    split = split_counts(problem, members, {(0, 0): np.array([15, 10, 10]), (0, 1): np.zeros(T, dtype=int)})
    assert split[1, 0].tolist() == [5, 5, 5]
    assert split[0, 0].tolist() == [10, 5, 5]


def test_identical_groups_with_commitment_parameters_are_not_pooled() -> None:
    """Min on/off or a start cost make a group's units differ by history: pooling them was only a
    relaxation, and hypothesis found a split-back plan worth less than an unpooled solve by more
    than the gap. Such groups stay apart; identical groups without them still pool."""
    base = _two_alike()
    for change in ({"min_on_h": 0.5}, {"min_off_h": 0.25}, {"start_cost_usd": 0.05}):
        problem = dataclasses.replace(base, groups=tuple(dataclasses.replace(g, **change) for g in base.groups))
        assert not poolable(problem), change
        schedule = solve(problem)
        assert "classes of identical groups" not in schedule.info.message
        assert_hard_limits(problem, schedule)
    assert poolable(base)
