"""`optimize.fast_build.compile_fast` is the Pyomo compile of `milp.build_model`, entry by entry:
on random SYNTHETIC problems (commitment, initial batches, ramp, receptors with and without caps,
inaudible groups, carbon budgets over part of the horizon, uneven intervals) both give the same
columns, rows, slot maps, bounds, costs and coefficients, and the same LP optimum; `solve()` uses it
for such problems, and the Pyomo build for the others."""

from __future__ import annotations

import math

import highspy
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize.fast_build import compile_fast, fast_buildable
from hashflex.optimize.highs_compile import LpBasisCache, compile_to_highs
from hashflex.optimize.milp import DEFAULT_REL_GAP, build_model
from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor
from hashflex.optimize.solve import _compiled_for, solve


@st.composite
def core_problems(draw: st.DrawFn) -> Problem:
    """SYNTHETIC problems using every core family."""
    T = draw(st.integers(2, 7))
    duration = np.array([draw(st.sampled_from([0.25, 0.25, 1.0])) for _ in range(T)])
    groups = []
    for g in range(draw(st.integers(1, 3))):
        modes = tuple(Mode(f"m{m}", draw(st.floats(1.0, 8.0)), draw(st.floats(50.0, 500.0)), draw(st.floats(55.0, 90.0)))
                      for m in range(draw(st.integers(1, 3))))
        units = draw(st.integers(1, 40))
        on0 = draw(st.integers(0, units))
        groups.append(Group(
            f"g{g}", units, modes, np.array([draw(st.integers(0, units)) for _ in range(T)]),
            idle_power_kw=draw(st.sampled_from([0.0, 0.02])), min_on_h=draw(st.sampled_from([0.0, 0.5, 1.0])),
            min_off_h=draw(st.sampled_from([0.0, 0.25])), start_cost_usd=draw(st.sampled_from([0.0, 0.05])),
            initial=GroupState(units_on=on0,
                               must_stay_on=((draw(st.floats(0.1, 2.0)), min(on0, 3)),) if draw(st.booleans()) else (),
                               must_stay_off=((0.3, min(units - on0, 2)),) if draw(st.booleans()) else ())))
    receptors = tuple(
        Receptor(f"r{r}", {grp.id: draw(st.sampled_from([45.0, 60.0, 75.0, math.inf])) for grp in groups},
                 np.array([draw(st.sampled_from([40.0, 50.0, math.inf])) for _ in range(T)]),
                 background_dba=draw(st.floats(20.0, 45.0)), cap_applies_to=draw(st.sampled_from(["total", "site"])))
        for r in range(draw(st.integers(0, 2))))
    budgets = tuple(CarbonBudget(f"b{b}", np.array([draw(st.booleans()) for _ in range(T)]), draw(st.floats(0.0, 80.0)))
                    for b in range(draw(st.integers(0, 2))))
    ramp = draw(st.none() | st.floats(10.0, 500.0))
    return Problem(
        interval_start=pd.date_range("2024-01-01T00:00Z", periods=T, freq="15min"), duration_h=duration,
        price_usd_mwh=np.array([draw(st.floats(-50.0, 500.0)) for _ in range(T)]),
        price_adder_usd_mwh=draw(st.floats(0.0, 10.0)), hashprice_usd_per_ph_day=np.full(T, draw(st.floats(20.0, 100.0))),
        pool_fee=0.02, groups=tuple(groups), renewable_kw=np.array([draw(st.floats(0.0, 100.0)) for _ in range(T)]),
        import_limit_kw=np.array([draw(st.floats(0.0, 400.0)) for _ in range(T)]),
        import_limit_source=("import limit",) * T, export_limit_kw=draw(st.sampled_from([0.0, 50.0])),
        receptors=receptors, intensity_kg_per_mwh=np.array([draw(st.sampled_from([0.0, 350.0, 420.0])) for _ in range(T)]),
        carbon_price_usd_per_t=draw(st.sampled_from([0.0, 12.0])), carbon_budgets=budgets,
        ramp_limit_kw_per_h=ramp, initial_load_kw=draw(st.none() | st.floats(0.0, 300.0)) if ramp else None)


def _dense(highs: highspy.Highs) -> np.ndarray:
    lp = highs.getLp()
    matrix = np.zeros((lp.num_row_, lp.num_col_))
    a = lp.a_matrix_
    start, index, value = np.array(a.start_), np.array(a.index_), np.array(a.value_)
    rowwise = a.format_ == highspy.MatrixFormat.kRowwise
    for k in range(lp.num_row_ if rowwise else lp.num_col_):
        entries = slice(start[k], start[k + 1])
        if rowwise:
            matrix[k, index[entries]] = value[entries]
        else:
            matrix[index[entries], k] = value[entries]
    return matrix


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_problems())
def test_fast_build_is_the_pyomo_compile_entry_by_entry(problem: Problem) -> None:
    assert fast_buildable(problem)
    reference = compile_to_highs(build_model(problem), problem)
    fast = compile_fast(problem)
    assert fast.col_at == reference.col_at
    assert fast.row_at == reference.row_at
    assert fast.count_columns.keys() == reference.count_columns.keys()
    for key in fast.count_columns:
        np.testing.assert_array_equal(fast.count_columns[key], reference.count_columns[key])
    np.testing.assert_array_equal(fast.lower, reference.lower)
    np.testing.assert_array_equal(fast.upper, reference.upper)
    assert (fast.deferred is None) == (reference.deferred is None)
    for compiled in (fast, reference):
        if compiled.deferred is not None:
            compiled.deferred.add_to(compiled.highs)
    lp_fast, lp_ref = fast.highs.getLp(), reference.highs.getLp()
    np.testing.assert_allclose(lp_fast.col_cost_, lp_ref.col_cost_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(lp_fast.row_lower_, lp_ref.row_lower_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lp_fast.row_upper_, lp_ref.row_upper_, rtol=1e-12, atol=1e-12)
    dense_fast, dense_ref = _dense(fast.highs), _dense(reference.highs)
    np.testing.assert_array_equal(dense_fast != 0, dense_ref != 0)
    np.testing.assert_allclose(dense_fast, dense_ref, rtol=1e-12, atol=0)
    for compiled in (fast, reference):
        compiled.highs.run()
    assert fast.highs.getModelStatus() == reference.highs.getModelStatus()
    if reference.highs.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        a, b = (c.highs.getInfo().objective_function_value for c in (fast, reference))
        assert abs(a - b) <= 1e-7 * max(1.0, abs(b))


def test_solve_uses_the_fast_build_for_core_problems_and_keeps_it_for_replans() -> None:
    problem = _core_example()
    cache = LpBasisCache()
    compiled, model, template = _compiled_for(problem, cache)
    assert model is None and compiled.col_at is not None and template is not None
    first = solve(problem, basis_cache=cache)
    again = solve(problem, basis_cache=cache)  # the kept (fast-built) model, updated in place
    assert first.status.value == again.status.value == "optimal"
    assert abs(first.total_profit_usd - again.total_profit_usd) <= 5e-3 * abs(first.total_profit_usd) + 1e-9


def _core_example() -> Problem:
    T = 6
    groups = (Group("a", 20, (Mode("eco", 3.0, 150.0, 80.0), Mode("turbo", 4.0, 180.0, 84.0)), np.full(T, 20),
                    min_on_h=0.5, start_cost_usd=0.05, initial=GroupState(units_on=5)),
              Group("b", 10, (Mode("stock", 6.4, 473.0, 64.0),), np.full(T, 10), min_off_h=0.25))
    return Problem(
        interval_start=pd.date_range("2024-01-01T00:00Z", periods=T, freq="15min"), duration_h=np.full(T, 0.25),
        price_usd_mwh=np.array([20.0, 30.0, 400.0, 25.0, 20.0, 15.0]), price_adder_usd_mwh=2.0,
        hashprice_usd_per_ph_day=np.full(T, 50.0), pool_fee=0.02, groups=groups, renewable_kw=np.zeros(T),
        import_limit_kw=np.full(T, 100.0), import_limit_source=("import limit",) * T, export_limit_kw=0.0,
        receptors=(Receptor("house", {"a": 55.0, "b": 70.0}, np.full(T, 45.0), background_dba=30.0),),
        intensity_kg_per_mwh=np.full(T, 400.0), carbon_price_usd_per_t=10.0,
        carbon_budgets=(CarbonBudget("day", np.ones(T, dtype=bool), 40.0),), ramp_limit_kw_per_h=200.0,
        initial_load_kw=15.0)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(core_problems())
def test_solve_with_the_fast_build_and_deferred_coupling_rows_is_worth_the_pyomo_route_within_the_gap(
        monkeypatch: pytest.MonkeyPatch, problem: Problem) -> None:
    """The new path (numpy build, interval-coupling rows added after a first LP) against the Pyomo
    build solved with every row at once: the same LP, so the objectives agree within the MIP gap."""
    import hashflex.optimize.highs_compile as highs_compile
    import hashflex.optimize.solve as solve_module

    new = solve(problem)
    with monkeypatch.context() as patch:
        patch.setattr(solve_module, "fast_buildable", lambda _problem: False)
        patch.setattr(highs_compile, "DEFERRED_ROW_FAMILIES", frozenset())
        reference = solve(problem)
    assert new.status.value != "failed_fallback" and reference.status.value != "failed_fallback"
    tolerance = DEFAULT_REL_GAP * max(abs(new.info.objective_usd), abs(reference.info.objective_usd)) + 1e-6
    assert abs(new.info.objective_usd - reference.info.objective_usd) <= 2 * tolerance
    assert (new.frame["grid_import_kw"] <= problem.effective_import_limit_kw + 1e-6).all()
