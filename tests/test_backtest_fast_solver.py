"""The solve worker started ahead of the first plan (issue 18, backtest speed): the same plans,
the same deadline and fallback, and a worker that keeps its model between re-plans.

Real worker processes (spawn) and real HiGHS; no timings asserted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hashflex.control.solver import SolveRunner
from hashflex.optimize.build import problem_from_profile
from hashflex.optimize.schedule import SolveStatus
from hashflex.profile import load_profile


def west_texas_problem(shift: int = 0, price: float = 20.0):
    profile = load_profile("west_texas")
    index = pd.date_range("2020-02-10T06:00Z", periods=96, freq="15min") + pd.Timedelta(minutes=15 * shift)
    prices = price + 15.0 * np.sin(np.arange(96) / 8.0 + shift)
    return problem_from_profile(profile, index, prices)


def units(schedule) -> np.ndarray:
    return schedule.frame.filter(like="units_").to_numpy()


def test_a_started_worker_exists_before_the_first_solve_and_plans_as_inline() -> None:
    problem = west_texas_problem()
    runner = SolveRunner(time_limit_s=20.0)
    try:
        assert runner.worker_pids() == []
        runner.start()
        assert len(runner.worker_pids()) == 1, "started now, not at the first solve"
        started = runner.worker_pids()
        schedule = runner.run(problem, fine_intervals=96)
        assert runner.worker_pids() == started, "the first plan ran in the started worker"
    finally:
        runner.close()
    inline = SolveRunner(time_limit_s=20.0, inline=True).run(problem, fine_intervals=96)
    assert schedule.status == inline.status == SolveStatus.OPTIMAL
    np.testing.assert_array_equal(units(schedule), units(inline))


def test_start_inline_starts_nothing() -> None:
    runner = SolveRunner(inline=True)
    runner.start()
    assert runner.worker_pids() == []


def test_a_started_worker_still_gets_killed_at_the_deadline() -> None:
    """The daemon's semantics are kept: past its deadline the worker is killed and the greedy
    fallback used, counted; the next solve gets a fresh worker."""
    runner = SolveRunner(time_limit_s=20.0, deadline_s=0.05)
    try:
        runner.start()
        first = runner.worker_pids()
        schedule = runner.run(west_texas_problem(), fine_intervals=96)
        assert schedule.status == SolveStatus.FALLBACK and "timeout" in schedule.info.message
        assert runner.timeouts == 1
        assert runner.worker_pids() == [], "the worker was killed"
        assert (schedule.frame["grid_import_kw"] <= schedule.frame["import_limit_kw"] + 1e-6).all()
        runner.deadline_s = 60.0
        again = runner.run(west_texas_problem(1), fine_intervals=96)
        assert again.status == SolveStatus.OPTIMAL and runner.worker_pids() not in ([], first)
    finally:
        runner.close()


def test_rolling_replans_in_the_worker_match_inline_solves() -> None:
    """A rolling horizon across the local midnight (the daily carbon budget's mask slides: the
    worker's kept model is updated in place) gives the plans of the in-process solve."""
    worker = SolveRunner(time_limit_s=20.0)
    inline = SolveRunner(time_limit_s=20.0, inline=True)
    try:
        worker.start()
        for shift in range(20, 28):  # 11:00 .. 12:45 local: every horizon crosses 00:00
            problem = west_texas_problem(shift)
            a, b = worker.run(problem, fine_intervals=96), inline.run(problem, fine_intervals=96)
            assert a.status == b.status == SolveStatus.OPTIMAL
            gap = max(a.info.gap or 0.0, b.info.gap or 0.0, 1e-3)
            assert a.info.objective_usd == np.float64(b.info.objective_usd) or (
                abs(a.info.objective_usd - b.info.objective_usd) <= 2 * gap * abs(b.info.objective_usd))
    finally:
        worker.close()
