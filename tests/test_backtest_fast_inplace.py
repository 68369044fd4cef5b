"""A rolling horizon's re-plans reuse the kept HiGHS model (issue 18, backtest speed).

Across a local day boundary the daily carbon budgets' masks slide by one interval per re-plan, and
the groups' initial min-on/off batches come and go. Before, both were part of `template_key`, so
every 15-minute re-plan of west_texas (a daily budget, min on/off times) rebuilt the model: 96 of
96 solves of a simulated day. Here: those changes keep the template, and the LP updated in place
equals a fresh Pyomo build + compile of the changed problem number for number (so the MPC is the
same model); a change that does shape the rows (batches on a group without a min on time of its
own) still changes the template.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_inplace_update import (
    T,
    base_problem,
    fresh_compiled,
    kept_after_a_solve,
    lp_numbers,
)

from hashflex.optimize.highs_compile import LpBasisCache, template_key, update_in_place
from hashflex.optimize.problem import CarbonBudget, GroupState
from hashflex.optimize.solve import solve


def two_day_budgets(problem, boundary: int, fraction: float) -> tuple[CarbonBudget, CarbonBudget]:
    """Today's budget over intervals before ``boundary`` and tomorrow's from it on (both non-empty)."""
    mask = np.arange(problem.T) < boundary
    total = problem.carbon_budgets[0].remaining_kg
    return (CarbonBudget("daily today", mask, fraction * total), CarbonBudget("daily tomorrow", ~mask, total))


def test_a_sliding_day_boundary_keeps_the_template() -> None:
    base = base_problem()
    keys = {template_key(dataclasses.replace(base, carbon_budgets=two_day_budgets(base, k, 0.5)))
            for k in range(1, T)}
    assert len(keys) == 1


def test_initial_batches_on_a_group_with_its_own_min_on_time_keep_the_template() -> None:
    base = base_problem()
    g0 = base.groups[0]  # min_on_h 0.5 and batches in the base problem
    assert g0.min_on_h and g0.initial.must_stay_on
    without = dataclasses.replace(g0, initial=GroupState(units_on=g0.initial.units_on))
    assert template_key(dataclasses.replace(base, groups=(without, *base.groups[1:]))) == template_key(base)
    # g2 has no min on time: batches there add min_on rows, so the template must change.
    g2 = base.groups[2]
    assert not g2.min_on_h
    held = dataclasses.replace(g2, initial=GroupState(units_on=5, must_stay_on=((0.5, 5),)))
    assert template_key(dataclasses.replace(base, groups=(*base.groups[:2], held))) != template_key(base)


@st.composite
def rolled_problems(draw: st.DrawFn):
    """The base problem with two daily budgets split at a drawn interval, some zero-intensity
    intervals, and g0's batches present or not (what a rolling horizon changes)."""
    base = base_problem()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    boundary = draw(st.integers(1, T - 1))
    intensity = rng.uniform(100, 600, T)
    intensity[rng.random(T) < draw(st.sampled_from([0.0, 0.3]))] = 0.0
    g0 = base.groups[0]
    batches = ((float(rng.uniform(0, 1.5)), int(rng.integers(0, 5))),) if draw(st.booleans()) else ()
    g0 = dataclasses.replace(g0, initial=GroupState(units_on=int(rng.integers(0, g0.units + 1)),
                                                     must_stay_on=batches))
    return dataclasses.replace(base, intensity_kg_per_mwh=intensity, groups=(g0, *base.groups[1:]),
                               price_usd_mwh=np.roll(base.price_usd_mwh, -boundary),
                               carbon_budgets=two_day_budgets(base, boundary, float(rng.uniform(0.1, 1.0))))


def kept_two_day_model():
    """A kept model as after a solve, of the base problem with two daily budgets split mid-horizon."""
    base = base_problem()
    first = dataclasses.replace(base, carbon_budgets=two_day_budgets(base, T // 2, 0.5))
    return first, kept_after_a_solve_of(first)


def kept_after_a_solve_of(problem):
    from hashflex.optimize.highs_compile import compile_to_highs
    from hashflex.optimize.milp import DEFAULT_REL_GAP, build_model
    from hashflex.optimize.solve import solve_lp_round_mip

    compiled = compile_to_highs(build_model(problem), problem)
    assert solve_lp_round_mip(compiled, problem, time_limit_s=10.0, rel_gap=DEFAULT_REL_GAP).status is not None
    return compiled


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changed=rolled_problems())
def test_lp_updated_in_place_across_a_day_boundary_equals_a_fresh_build(changed) -> None:
    first, kept = kept_two_day_model()
    assert template_key(changed) == template_key(first)
    update_in_place(kept, changed)
    got, want = lp_numbers(kept.highs), lp_numbers(fresh_compiled(changed).highs)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_one_budget_model_is_not_reused_for_two_budgets() -> None:
    """One daily budget → two (the horizon crosses midnight): another row, another template."""
    base = base_problem()
    kept = kept_after_a_solve()
    two = dataclasses.replace(base, carbon_budgets=two_day_budgets(base, T // 2, 0.5))
    assert template_key(two) != template_key(base)
    update_in_place(kept, base)  # the same template: fine
    with pytest.raises(KeyError):
        update_in_place(kept, two)  # the second budget has no row in the kept model


def test_rolling_replans_reuse_the_model_and_match_cold_solves() -> None:
    """A day of re-plans shifted one interval each across the boundary: every re-plan after the
    first updates the kept model, and each plan's objective equals a cold solve's within the gap."""
    base = base_problem()
    cache = LpBasisCache()
    rebuilt = 0
    for k in range(1, T):
        problem = dataclasses.replace(base, price_usd_mwh=np.roll(base.price_usd_mwh, -k),
                                      carbon_budgets=two_day_budgets(base, T - k, 0.6))
        kept = cache._models.get(template_key(problem))
        rebuilt += kept is None
        warm = solve(problem, time_limit_s=30.0, basis_cache=cache)
        if kept is not None:
            assert cache._models.get(template_key(problem)) is kept, "the same HiGHS model, updated"
        cold = solve(problem, time_limit_s=30.0)
        assert warm.status.value != "failed_fallback" and cold.status.value != "failed_fallback"
        gap = max(warm.info.gap or 0.0, cold.info.gap or 0.0, 1e-3)
        assert warm.info.objective_usd == pytest.approx(cold.info.objective_usd, rel=2 * gap)
        for budget in problem.carbon_budgets:  # the hard limit holds in the updated model's plan
            assert (warm.frame["emissions_kg"].to_numpy()[budget.mask].sum()
                    <= problem.effective_carbon_budget_kg(budget) * (1 + 1e-9) + 1e-6)
    assert rebuilt == 1
