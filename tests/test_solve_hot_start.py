"""The cold solve's second LP (the first LP's optimal basis with the interval-coupling rows added)
runs with Devex dual edge weights (issue 18: SYNTHETIC 288 × 48 CPU 0.90 → 0.60 s, panhandle-like
4.08 → 1.88 s for that LP). These tests hold what the speed must not change: the LP optimum is the
one-shot LP's, every other run (first LP, the valuing LP with the counts fixed, the MIP, a re-plan
from a cached basis) keeps HiGHS's own choice, and the option never leaks into a kept model."""

from __future__ import annotations

import highspy
import pytest
from hypothesis import HealthCheck, given, settings
from test_inplace_update import base_problem, changed_problems

from hashflex.optimize import fast_build
from hashflex.optimize import solve as solve_module
from hashflex.optimize.fast_build import compile_fast
from hashflex.optimize.highs_compile import LpBasisCache, template_key
from hashflex.optimize.milp import DEFAULT_REL_GAP
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
        self.runs.append({"edge_weights": option, "rows": rows, "status": self.getModelStatus(),
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


@pytest.mark.usefixtures("recording")
def test_only_the_second_lp_of_a_cold_solve_runs_with_devex() -> None:
    problem = base_problem()
    compiled = compile_fast(problem)
    n_main = compiled.highs.getNumRow()
    assert compiled.deferred is not None  # the coupling rows are held back for the second LP
    outcome = solve_lp_round_mip(compiled, problem, time_limit_s=10.0, rel_gap=1e-9)  # MIP runs too
    runs = compiled.highs.runs
    assert outcome.status is not None and len(runs) >= 3
    first, second, *rest = runs
    assert first["rows"] == n_main and first["edge_weights"] == HIGHS_CHOOSES
    assert second["rows"] > n_main and second["edge_weights"] == HOT_START_DUAL_EDGE_WEIGHTS
    assert all(run["edge_weights"] == HIGHS_CHOOSES for run in rest)  # valuing LP, MIP
    assert edge_weights(compiled.highs) == HIGHS_CHOOSES  # nothing leaks into a kept model


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(problem=changed_problems())
def test_the_two_stage_lp_reaches_the_one_shot_lp_optimum(recording: None, problem) -> None:
    compiled = compile_fast(problem)
    solve_lp_round_mip(compiled, problem, time_limit_s=10.0, rel_gap=DEFAULT_REL_GAP)
    second = compiled.highs.runs[1]
    assert second["status"] == highspy.HighsModelStatus.kOptimal
    assert second["objective"] == pytest.approx(one_shot_lp_objective(problem), rel=1e-7, abs=1e-6)


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
