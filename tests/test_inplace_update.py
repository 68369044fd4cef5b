"""Re-plans update the kept HiGHS model in place (issue 18); the Pyomo model stays the reference.

On random changes of prices, limits, availability, renewables, intensity and initial state, the LP
updated in place (`update_in_place`) must equal a fresh Pyomo build + compile of the changed
problem number for number, solve to the same LP optimum and round to the same counts; and
`solve()` with a cache must give the schedule of a cold `solve()`.
"""

from __future__ import annotations

import dataclasses

import highspy
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize.highs_compile import LpBasisCache, compile_to_highs, template_key, update_in_place
from hashflex.optimize.milp import DEFAULT_REL_GAP, build_model
from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor, ReserveProduct
from hashflex.optimize.rounding import round_lp_counts
from hashflex.optimize.solve import solve, solve_lp_round_mip

T = 16
MODES_AIR = (Mode("eco", 2.9, 175.0, 81.0), Mode("stock", 3.5, 200.0, 84.0))
MODES_HYDRO = (Mode("eco", 5.3, 410.0, 62.0), Mode("stock", 6.4, 473.0, 64.0), Mode("turbo", 7.8, 540.0, 66.0))
UNITS = (40, 25, 30)


def base_problem(seed: int = 0) -> Problem:
    """A small site with every constraint family: 3 groups (min on/off, start cost, initial
    batches), a total-level and a site-level noise cap, a carbon budget, a ramp limit."""
    rng = np.random.default_rng(seed)
    groups = []
    for g, units in enumerate(UNITS):
        modes = MODES_HYDRO if g == 1 else MODES_AIR
        groups.append(Group(
            id=f"g{g}", units=units, modes=modes, units_available=np.full(T, units),
            idle_power_kw=0.02 if g == 1 else 0.01, min_on_h=0.5 if g != 2 else 0.0, min_off_h=0.25,
            start_cost_usd=0.05 if g != 0 else 0.0,
            initial=GroupState(units_on=units // 2, must_stay_on=((0.5, 3),) if g == 0 else ()),
        ))
    hour = np.arange(T) * 0.25
    receptors = (
        Receptor("ranch", {"g0": 55.0, "g1": 70.0, "g2": 58.0}, np.where(hour < 2, 45.0, 55.0), 36.0, "total", 1.0),
        Receptor("school", {"g0": 60.0, "g2": 62.0}, np.full(T, 50.0), 36.0, "site"),
    )
    full_kw = sum(u * m[-1].power_kw for u, m in zip(UNITS, (MODES_AIR, MODES_HYDRO, MODES_AIR)))
    return Problem(
        interval_start=pd.date_range("2025-07-15T05:00Z", periods=T, freq="15min"),
        duration_h=np.full(T, 0.25),
        price_usd_mwh=30 + rng.normal(0, 20, T),
        price_adder_usd_mwh=4.6,
        hashprice_usd_per_ph_day=np.full(T, 49.0),
        pool_fee=0.02,
        groups=tuple(groups),
        renewable_kw=np.linspace(0, 0.2 * full_kw, T),
        import_limit_kw=np.full(T, 0.8 * full_kw),
        import_limit_source=("import limit",) * T,
        export_limit_kw=10.0,
        receptors=receptors,
        intensity_kg_per_mwh=380 + rng.normal(0, 10, T),
        carbon_price_usd_per_t=10.0,
        carbon_budgets=(CarbonBudget("daily", np.ones(T, dtype=bool), 0.5 * full_kw * T * 0.25 * 0.38),),
        ramp_limit_kw_per_h=2.0 * full_kw,
        initial_load_kw=0.4 * full_kw,
    )


@st.composite
def changed_problems(draw: st.DrawFn) -> Problem:
    """The base problem with what a re-plan changes drawn at random (same template)."""
    base = base_problem()
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    groups = []
    for group in base.groups:
        available = rng.integers(group.units // 2, group.units + 1, T)
        must_on = ((float(rng.uniform(0, 1.5)), int(rng.integers(0, 5))),) if group.initial.must_stay_on else ()
        groups.append(dataclasses.replace(group, units_available=available, initial=GroupState(
            units_on=int(rng.integers(0, group.units + 1)), must_stay_on=must_on)))
    full_kw = float(base.import_limit_kw[0]) / 0.8
    limit = np.where(rng.random(T) < draw(st.sampled_from([0.0, 0.3, 1.0])), rng.uniform(0, 0.5, T),
                     rng.uniform(0.5, 1.0, T)) * full_kw
    return dataclasses.replace(
        base,
        price_usd_mwh=rng.normal(40, draw(st.sampled_from([5.0, 50.0, 400.0])), T),
        price_adder_usd_mwh=float(rng.uniform(0, 10)),
        hashprice_usd_per_ph_day=rng.uniform(30, 70, T),
        pool_fee=float(rng.uniform(0, 0.05)),
        groups=tuple(groups),
        renewable_kw=rng.uniform(0, 0.3, T) * full_kw,
        import_limit_kw=limit,
        export_limit_kw=float(rng.uniform(0, 50)),
        intensity_kg_per_mwh=rng.uniform(100, 600, T),
        carbon_price_usd_per_t=float(rng.uniform(0, 50)),
        carbon_budgets=(dataclasses.replace(base.carbon_budgets[0],
                                            remaining_kg=float(rng.uniform(0.1, 1.0)) * base.carbon_budgets[0].remaining_kg),),
        ramp_limit_kw_per_h=float(rng.uniform(0.2, 3.0)) * full_kw,
        initial_load_kw=float(rng.uniform(0, 0.8)) * full_kw,
    )


def lp_numbers(highs) -> dict[str, np.ndarray]:
    """Every number of a HiGHS LP: costs, bounds, and the matrix as sorted (row, col, value)."""
    lp = highs.getLp()
    matrix = lp.a_matrix_
    start, index, value = (np.asarray(a) for a in (matrix.start_, matrix.index_, matrix.value_))
    outer = np.repeat(np.arange(len(start) - 1), np.diff(start))
    rowwise = int(matrix.format_) == 2  # MatrixFormat.kRowwise
    rows, cols = (outer, index) if rowwise else (index, outer)
    order = np.lexsort((cols, rows))
    return {"cost": np.asarray(lp.col_cost_), "col_lower": np.asarray(lp.col_lower_),
            "col_upper": np.asarray(lp.col_upper_), "row_lower": np.asarray(lp.row_lower_),
            "row_upper": np.asarray(lp.row_upper_), "rows": rows[order], "cols": cols[order],
            "values": value[order], "offset": np.array([lp.offset_])}


def fresh_compiled(problem: Problem):
    compiled = compile_to_highs(build_model(problem), problem)
    if compiled.deferred is not None:  # as a solved model has them: same rows, same order
        compiled.deferred.add_to(compiled.highs)
        compiled.deferred = None
    return compiled


def kept_after_a_solve():
    """A model as the cache keeps it: compiled from the base problem and solved once (its count
    columns fixed or integer, a MIP incumbent set, the carbon rows added)."""
    base = base_problem()
    compiled = compile_to_highs(build_model(base), base)
    outcome = solve_lp_round_mip(compiled, base, time_limit_s=10.0, rel_gap=DEFAULT_REL_GAP)
    assert outcome.status is not None
    return compiled


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changed=changed_problems())
def test_lp_updated_in_place_equals_a_fresh_build(changed: Problem) -> None:
    assert template_key(changed) == template_key(base_problem())
    kept = kept_after_a_solve()
    update_in_place(kept, changed)
    fresh = fresh_compiled(changed)
    got, want = lp_numbers(kept.highs), lp_numbers(fresh.highs)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
    # Same LP from a clean slate: the same LP optimum and vertex, hence the same rounded counts.
    lp = {}
    for name, compiled in (("kept", kept), ("fresh", fresh)):
        compiled.highs.clearSolver()
        compiled.highs.run()
        assert compiled.highs.getModelStatus() == highspy.HighsModelStatus.kOptimal, name
        x = np.array(compiled.highs.getSolution().col_value)
        counts = round_lp_counts(changed, {key: x[cols] for key, cols in compiled.count_columns.items()})
        lp[name] = (compiled.highs.getInfo().objective_function_value, counts)
    assert lp["kept"][0] == pytest.approx(lp["fresh"][0], rel=1e-9, abs=1e-9)
    for key, counts in lp["fresh"][1].items():
        np.testing.assert_array_equal(lp["kept"][1][key], counts, err_msg=str(key))


def test_solve_with_a_cache_updates_in_place_and_matches_a_cold_solve() -> None:
    base = base_problem()
    cache = LpBasisCache()
    solve(base, time_limit_s=30.0, basis_cache=cache)
    kept = cache.take_model(template_key(base))
    assert kept is not None, "a solved model is kept for the next re-plan"
    cache.put_model(template_key(base), kept)
    replans = [dataclasses.replace(base, price_usd_mwh=np.roll(base.price_usd_mwh, -k) * 1.1,
                                   import_limit_kw=base.import_limit_kw * (0.5 if k == 2 else 1.0))
               for k in (1, 2, 3)]
    for problem in replans:
        warm = solve(problem, time_limit_s=30.0, basis_cache=cache)
        cold = solve(problem, time_limit_s=30.0)
        assert cache.take_model(template_key(problem)) is kept, "the same HiGHS model, updated"
        cache.put_model(template_key(problem), kept)
        assert warm.status.value != "failed_fallback"
        gap = max(warm.info.gap or 0.0, cold.info.gap or 0.0, 5e-3)
        assert warm.info.objective_usd == pytest.approx(cold.info.objective_usd, rel=2 * gap)
        assert (warm.frame["grid_import_kw"].to_numpy() <= problem.effective_import_limit_kw + 1e-6).all()


def test_a_changed_structure_is_rebuilt_not_updated() -> None:
    base = base_problem()
    cache = LpBasisCache()
    solve(base, time_limit_s=30.0, basis_cache=cache)
    kept = cache.take_model(template_key(base))
    cache.put_model(template_key(base), kept)
    shorter_night = dataclasses.replace(base.receptors[0], cap_dba=np.where(np.arange(T) < 4, np.inf, 55.0))
    changed = dataclasses.replace(base, receptors=(shorter_night, base.receptors[1]))
    assert template_key(changed) != template_key(base)
    schedule = solve(changed, time_limit_s=30.0, basis_cache=cache)
    assert schedule.status.value != "failed_fallback"
    rebuilt = cache.take_model(template_key(changed))
    assert rebuilt is not None and rebuilt is not kept


def test_update_refuses_a_model_without_slot_maps() -> None:
    base = base_problem()
    compiled = fresh_compiled(base)
    compiled.col_at = None
    with pytest.raises(ValueError, match="cannot be updated in place"):
        update_in_place(compiled, base)


def test_a_problem_with_families_update_does_not_handle_is_always_rebuilt() -> None:
    """Compute, or any field `update_in_place` does not write: no template, no reuse."""
    base = base_problem()
    assert template_key(base) is not None
    assert template_key(dataclasses.replace(base, compute=("g1",))) is None


def with_reserves(problem: Problem, rng: np.random.Generator, cap_pattern: np.ndarray) -> Problem:
    """RRS on groups g0 and g1 and ECRS on g1 (issue 15), with random prices, caps and awards; the
    intervals with a finite cap follow ``cap_pattern`` (that shapes the rows: part of the template)."""
    reserves = []
    for name, groups in (("RRS", {"g0": 60.0, "g1": 120.0}), ("ECRS", {"g1": 80.0})):
        cap = np.where(cap_pattern, rng.uniform(0, 150, T), np.inf)
        reserves.append(ReserveProduct(name, price_usd_mw_h=rng.uniform(0, 300, T), max_kw=cap,
                                       obligation_kw=np.where(rng.random(T) < 0.4, rng.uniform(0, 90, T), 0.0),
                                       group_max_kw={g: v * float(rng.uniform(0.5, 1.0)) for g, v in groups.items()},
                                       deployed_fraction=float(rng.uniform(0, 0.2))))
    return dataclasses.replace(problem, reserves=tuple(reserves))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changed=changed_problems(), seed=st.integers(0, 2**32 - 1))
def test_reserves_are_updated_in_place_too(changed: Problem, seed: int) -> None:
    """Issue 15: a re-plan with reserves (new MCPCs, caps, awards, group maxima) updates the kept model
    number for number like a fresh build, instead of rebuilding it."""
    pattern = np.arange(T) % 3 != 0
    base = with_reserves(base_problem(), np.random.default_rng(1), pattern)
    changed = with_reserves(changed, np.random.default_rng(seed), pattern)
    assert template_key(base) is not None and template_key(changed) == template_key(base)
    assert template_key(with_reserves(changed, np.random.default_rng(seed), ~pattern)) != template_key(base)
    kept = compile_to_highs(build_model(base), base)
    assert solve_lp_round_mip(kept, base, time_limit_s=10.0, rel_gap=DEFAULT_REL_GAP).status is not None
    update_in_place(kept, changed)
    got, want = lp_numbers(kept.highs), lp_numbers(fresh_compiled(changed).highs)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_solve_with_reserves_reuses_the_model_and_matches_a_cold_solve() -> None:
    pattern = np.arange(T) % 3 != 0
    base = with_reserves(base_problem(), np.random.default_rng(3), pattern)
    cache = LpBasisCache()
    solve(base, time_limit_s=30.0, basis_cache=cache)
    kept = cache.take_model(template_key(base))
    assert kept is not None
    cache.put_model(template_key(base), kept)
    for k in (1, 2):
        problem = with_reserves(dataclasses.replace(base, price_usd_mwh=np.roll(base.price_usd_mwh, -k) * 1.2),
                                np.random.default_rng(10 + k), pattern)
        warm = solve(problem, time_limit_s=30.0, basis_cache=cache)
        cold = solve(problem, time_limit_s=30.0)
        assert cache.take_model(template_key(problem)) is kept, "the same HiGHS model, updated"
        cache.put_model(template_key(problem), kept)
        gap = max(warm.info.gap or 0.0, cold.info.gap or 0.0, 5e-3)
        assert warm.info.objective_usd == pytest.approx(cold.info.objective_usd, rel=2 * gap)
