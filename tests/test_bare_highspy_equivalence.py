"""The bare-highspy build in optimization/benchmarks is the same model as the Pyomo build, so the
timing comparison in solve_scaling.py is honest: same shape, same LP optimum, same MIP objective."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from hashflex.optimize import solve as milp  # the model is built in milp, solved in solve (re-exports build_model, compile_to_highs)
from hashflex.optimize.problem import GroupState

BENCHMARKS = Path(__file__).resolve().parents[1] / "optimization" / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bare_highspy import build_bare, solve_bare  # noqa: E402
from solve_scaling import synthetic_problem  # noqa: E402

GAP = 1e-3  # tighter than the default 0.5 %, so the MIP usually has to run


def _variants():
    base = synthetic_problem(96, 3, 15)
    yield "synthetic 96x3", base
    # Export paid, a negative-price hour, min-off held from before the horizon, no initial load
    # (no ramp row at t = 0), and a group without commitment.
    price = base.price_usd_mwh.copy()
    price[8:12] = -25.0
    groups = list(base.groups)
    groups[1] = dataclasses.replace(groups[1], initial=GroupState(units_on=50, must_stay_off=((0.5, 30),)))
    groups[2] = dataclasses.replace(groups[2], min_on_h=0.0, min_off_h=0.0, start_cost_usd=0.0, idle_power_kw=0.0)
    yield "variant", dataclasses.replace(base, price_usd_mwh=price, export_limit_kw=500.0, groups=tuple(groups),
                                         initial_load_kw=None)
    yield "synthetic 5-min 48x2", synthetic_problem(48, 2, 5, seed=3)


@pytest.mark.parametrize("name,problem", list(_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_bare_and_pyomo_builds_are_the_same_model(name: str, problem) -> None:
    bare = build_bare(problem)
    compiled = milp.compile_to_highs(milp.build_model(problem), problem)
    for model in (bare.compiled, compiled):  # the carbon rows both builds hold back for a first LP
        if model.deferred is not None:
            model.deferred.add_to(model.highs)
    assert (bare.n_cols, bare.n_rows, bare.nnz) == (
        compiled.highs.getNumCol(), compiled.highs.getNumRow(), compiled.highs.getNumNz())
    objectives = []
    for highs in (bare.compiled.highs, compiled.highs):
        highs.run()
        assert highs.modelStatusToString(highs.getModelStatus()) == "Optimal"
        objectives.append(highs.getInfo().objective_function_value)
    assert objectives[0] == pytest.approx(objectives[1], rel=1e-7, abs=1e-6)


@pytest.mark.parametrize("name,problem", list(_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_bare_and_pyomo_reach_the_same_objective_within_the_gap(name: str, problem) -> None:
    schedule = milp.solve(problem, rel_gap=GAP)
    bare = solve_bare(problem, rel_gap=GAP)
    assert bare.outcome.objective is not None and schedule.info.objective_usd is not None
    tolerance = 2 * GAP * abs(schedule.info.objective_usd) + 1e-6
    assert abs(bare.outcome.objective - schedule.info.objective_usd) <= tolerance
    for key, counts in bare.counts.items():
        assert np.all(counts >= 0)
