"""The cold solve's later LPs (the first LP's optimal basis with the interval-coupling rows added:
the transition rows, then the rest) run with Devex dual edge weights (issue 18). These tests hold
what the speed must not change: the LP optimum is the one-shot LP's, the rows end up in the fresh
build's order, every other run (first LP, the valuing LP with the counts fixed, the MIP, a re-plan
from a cached basis) keeps HiGHS's own choice, and the option never leaks into a kept model."""

from __future__ import annotations

import highspy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_inplace_update import base_problem, changed_problems, lp_numbers

from hashflex.optimize import fast_build
from hashflex.optimize import solve as solve_module
from hashflex.optimize.fast_build import compile_fast
from hashflex.optimize.highs_compile import (
    FIRST_DEFERRED_FAMILY,
    LpBasisCache,
    compile_to_highs,
    deferred_stages,
    template_key,
)
from hashflex.optimize.milp import DEFAULT_REL_GAP, build_model
from hashflex.optimize.solve import (
    HOT_START_DUAL_EDGE_WEIGHTS,
    solve,
    solve_lp_round_mip,
)

OPTION = "simplex_dual_edge_weight_strategy"
HIGHS_CHOOSES = -1


def edge_weights(highs: highspy.Highs) -> int:
    """The option's value (highspy returns (status, value))."""
    status, value = highs.getOptionValue(OPTION)
    assert status == highspy.HighsStatus.kOk
    return value


class RecordingHighs(highspy.Highs):
    """A real HiGHS instance that records, at every run, the edge-weight option, the number of
    rows and, after it, the model status and objective."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[dict] = []

    def run(self):
        option = edge_weights(self)
        rows = self.getNumRow()
        status = super().run()
        self.runs.append({"edge_weights": option, "rows": rows, "presolve": self.getOptionValue("presolve")[1],
                          "status": self.getModelStatus(),
                          "objective": self.getInfo().objective_function_value})
        return status


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile_fast` builds its models on `RecordingHighs`."""
    def new_highs() -> highspy.Highs:
        highs = RecordingHighs()
        highs.setOptionValue("output_flag", False)
        return highs

    monkeypatch.setattr(fast_build, "_new_highs", new_highs)


def one_shot_lp_objective(problem) -> float:
    """The LP relaxation with every row at once, HiGHS's defaults, cold."""
    compiled = compile_fast(problem)
    compiled.deferred.add_to(compiled.highs)
    compiled.highs.run()
    assert compiled.highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return compiled.highs.getInfo().objective_function_value


def test_devex_is_the_hot_start_setting_and_not_highs_default() -> None:
    assert HOT_START_DUAL_EDGE_WEIGHTS == 1 != HIGHS_CHOOSES


def lp_stages(compiled, runs: list[dict], n_main: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(the first LP, the hot-started LPs up to the one with every row, the runs after it)."""
    n_all = n_main + len(compiled_deferred_rows[id(compiled)])
    last = next(i for i, run in enumerate(runs) if run["rows"] == n_all)
    return runs[:1], runs[1:last + 1], runs[last + 1:]


compiled_deferred_rows: dict[int, np.ndarray] = {}


def compile_recorded(problem):
    """`compile_fast`, remembering its deferred rows' lower bounds (to count them after the solve)."""
    compiled = compile_fast(problem)
    compiled_deferred_rows[id(compiled)] = compiled.deferred.lower.copy()
    return compiled


@pytest.mark.usefixtures("recording")
def test_only_the_hot_started_lps_of_a_cold_solve_run_with_devex() -> None:
    problem = base_problem()
    compiled = compile_recorded(problem)
    n_main = compiled.highs.getNumRow()
    assert compiled.deferred is not None  # the coupling rows are held back for later LPs
    outcome = solve_lp_round_mip(compiled, problem, time_limit_s=10.0, rel_gap=1e-9)  # MIP runs too
    assert outcome.status is not None
    (first,), hot, rest = lp_stages(compiled, compiled.highs.runs, n_main)
    assert first["rows"] == n_main and first["edge_weights"] == HIGHS_CHOOSES
    # the transition rows first, then the rest: two hot-started LPs, rows growing
    n_transition = len(compiled.row_at[FIRST_DEFERRED_FAMILY])
    assert [run["rows"] for run in hot] == [n_main + n_transition, n_main + len(compiled_deferred_rows[id(compiled)])]
    assert all(run["edge_weights"] == HOT_START_DUAL_EDGE_WEIGHTS for run in hot)
    assert rest and all(run["edge_weights"] == HIGHS_CHOOSES for run in rest)  # valuing LP, MIP
    assert edge_weights(compiled.highs) == HIGHS_CHOOSES  # nothing leaks into a kept model


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(problem=changed_problems())
def test_the_staged_lp_reaches_the_one_shot_lp_optimum(recording: None, problem) -> None:
    compiled = compile_recorded(problem)
    n_main = compiled.highs.getNumRow()
    solve_lp_round_mip(compiled, problem, time_limit_s=10.0, rel_gap=DEFAULT_REL_GAP)
    _, hot, _ = lp_stages(compiled, compiled.highs.runs, n_main)
    assert hot[-1]["status"] == highspy.HighsModelStatus.kOptimal
    assert hot[-1]["objective"] == pytest.approx(one_shot_lp_objective(problem), rel=1e-7, abs=1e-6)


@pytest.mark.parametrize("build", ["fast", "pyomo"])
def test_the_staged_rows_are_the_fresh_build_in_its_order(build: str) -> None:
    """After a staged solve the HiGHS model holds the fresh build's LP row for row (so the slot
    maps an in-place re-plan writes through still point at the right rows)."""
    problem = base_problem()
    compile_ = (compile_fast if build == "fast"
                else lambda p: compile_to_highs(build_model(p), p))
    solved = compile_(problem)
    assert len(deferred_stages(solved, solved.highs.getNumRow())) == 2
    solve_lp_round_mip(solved, problem, time_limit_s=10.0, rel_gap=DEFAULT_REL_GAP)
    fresh = compile_(problem)
    fresh.deferred.add_to(fresh.highs)
    got, want = lp_numbers(solved.highs), lp_numbers(fresh.highs)
    for key in ("row_lower", "row_upper", "rows", "cols", "values"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_block_split_and_added_in_order_is_the_block() -> None:
    problem = base_problem()
    compiled = compile_fast(problem)
    head, tail = compiled.deferred.split(7)
    assert (len(head.lower), len(tail.lower)) == (7, len(compiled.deferred.lower) - 7)
    whole, parts = compile_fast(problem), compile_fast(problem)
    whole.deferred.add_to(whole.highs)
    head.add_to(parts.highs)
    tail.add_to(parts.highs)
    for key, value in lp_numbers(whole.highs).items():
        np.testing.assert_array_equal(lp_numbers(parts.highs)[key], value, err_msg=key)
    with pytest.raises(ValueError, match="split at row"):
        compiled.deferred.split(len(compiled.deferred.lower) + 1)


@pytest.mark.usefixtures("recording")
def test_a_replan_from_a_cached_basis_keeps_highs_choice() -> None:
    problem = base_problem()
    cache = LpBasisCache()
    solve(problem, basis_cache=cache, pool_identical=False)
    kept = cache.take_model(template_key(problem))
    assert kept is not None
    cache.put_model(template_key(problem), kept)
    before = len(kept.highs.runs)
    solve(base_problem(seed=1), basis_cache=cache, pool_identical=False)
    replan = kept.highs.runs[before:]
    assert replan and all(run["edge_weights"] == HIGHS_CHOOSES for run in replan)


def test_the_option_is_put_back_when_the_second_lp_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    class Failing(RecordingHighs):
        def run(self):
            if edge_weights(self) == HOT_START_DUAL_EDGE_WEIGHTS:
                raise RuntimeError("SYNTHETIC solver crash")
            return super().run()

    highs = Failing()
    highs.setOptionValue("output_flag", False)
    with pytest.raises(RuntimeError):
        solve_module._run_lp(highs, hot_start=True)
    assert edge_weights(highs) == HIGHS_CHOOSES


@pytest.mark.usefixtures("recording")
def test_only_the_valuing_lp_runs_without_presolve() -> None:
    problem = base_problem()
    compiled = compile_recorded(problem)
    n_main = compiled.highs.getNumRow()
    solve_lp_round_mip(compiled, problem, time_limit_s=10.0, rel_gap=1e-9)  # the MIP runs after it
    first, hot, (valuing, *mip) = lp_stages(compiled, compiled.highs.runs, n_main)
    assert valuing["presolve"] == solve_module.VALUING_LP_PRESOLVE == "off"
    assert mip and all(run["presolve"] == "choose" for run in first + hot + mip)
    assert compiled.highs.getOptionValue("presolve")[1] == "choose"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=changed_problems())
def test_the_valuing_lp_without_presolve_gives_the_same_start(problem) -> None:
    """The rounded start's value, and so the proof within the gap, do not depend on presolve."""
    outcomes = {}
    for presolve in ("off", "on"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(solve_module, "VALUING_LP_PRESOLVE", presolve)
            outcomes[presolve] = solve_lp_round_mip(compile_fast(problem), problem, time_limit_s=10.0,
                                                    rel_gap=DEFAULT_REL_GAP)
    off, on = outcomes["off"], outcomes["on"]
    assert (off.status, off.message) == (on.status, on.message)
    assert off.objective == pytest.approx(on.objective, rel=1e-7, abs=1e-6)
    assert off.bound == pytest.approx(on.bound, rel=1e-7, abs=1e-6)
