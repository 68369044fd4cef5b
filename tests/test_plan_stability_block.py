"""Plan stability valued over the new plan's first block (issue 14): holding what runs is valued for as long
as the new plan keeps the change (and the previous counts stay feasible), not for one interval, so a lasting
change is followed and a transient one is not. Reproduced first on Feb 10-12 2020 (west_texas,
optimization/benchmarks/gap_decompose.py): the one-interval rule kept 2,700 S19j Pro in eco through two whole
days, each tick's gain ($55-65) under the $130 threshold.

Values by hand on the site of tests/test_plan_stability.py: 10 miners of 3 kW / 100 TH/s at 50 $/PH/day, one
unit earns $0.05208 per 15 minutes and pays $0.00075·p; 8 intervals."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from hashflex.control.loop import ControlLoop, LoopConfig
from hashflex.control.solver import SolveRunner
from hashflex.control.stability import hold_previous_counts
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.solve import solve
from hashflex.sim.site import SimulatedFleet
from test_plan_stability import FRACTION_208, INDEX, PROFILE, T0, UNIT, Prices, solved

RUN_AT_60 = 10 * (UNIT - 0.00075 * 60.0)  # ten units running one interval at 60 $/MWh earn $0.0708
LOSS_AT_75 = 10 * (0.00075 * 75.0 - UNIT)  # and lose $0.0417 at 75 $/MWh


def test_a_lasting_change_is_valued_over_its_block() -> None:
    problem, schedule = solved(60.0)  # all ten run in all 8 intervals: one block of 8
    block = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_usd=0.3)
    assert block.gain_usd == pytest.approx(8 * RUN_AT_60, rel=1e-6)  # $0.567
    assert not block.held and block.counts == {("air", "stock"): 10}
    first = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_usd=0.3, hold_span="first")
    assert first.gain_usd == pytest.approx(RUN_AT_60, rel=1e-6)  # $0.071: the rule before kept all off
    assert first.held and first.counts == {("air", "stock"): 0}


def test_a_transient_change_is_still_held() -> None:
    prices = np.full(8, 60.0)
    prices[0] = 75.0  # one interval above breakeven (69.44), then back
    problem = problem_from_profile(PROFILE, INDEX, prices)
    schedule = solve(problem)
    assert schedule.frame["units_air_stock"].tolist() == [0] + [10] * 7
    decision = hold_previous_counts(problem, schedule, {("air", "stock"): 10}, min_gain_usd=0.1)
    assert decision.gain_usd == pytest.approx(LOSS_AT_75, rel=1e-6)  # a block of one interval
    assert decision.held and decision.counts == {("air", "stock"): 10}


def test_the_hold_ends_where_the_previous_counts_would_break_a_limit() -> None:
    limit = np.full(8, 100.0)
    limit[3:] = 15.0  # five units fit from interval 3 on
    problem = problem_from_profile(PROFILE, INDEX, np.full(8, 75.0), import_limit_kw=limit)
    schedule = solve(problem)
    assert schedule.frame["units_air_stock"].tolist() == [0] * 8  # one block of 8 (all off)
    decision = hold_previous_counts(problem, schedule, {("air", "stock"): 10}, min_gain_usd=1.0)
    # ten units held only over intervals 0..2, where 30 kW fits: 3 × $0.0417
    assert decision.gain_usd == pytest.approx(3 * LOSS_AT_75, rel=1e-6)
    assert decision.held


def test_the_loop_follows_a_lasting_small_change() -> None:
    prices = Prices()
    fleet = SimulatedFleet(PROFILE)
    loop = ControlLoop(PROFILE, forecaster=prices, driver=fleet, solver=SolveRunner(inline=True),
                       config=LoopConfig(replan_min_gain_fraction=FRACTION_208))  # threshold $0.208
    loop.tick(T0)
    assert fleet.running() == {("air", "stock"): 10}
    prices.price = 75.0  # for the whole horizon: 8 × $0.0417 = $0.333 >= $0.208
    report = loop.tick(T0 + timedelta(minutes=1), trigger="price")
    assert sum(fleet.running().values()) == 0
    assert loop.counters["plan_holds"] == 0 and "re-plan gains" in report.stability
    loop.close()


def test_an_unknown_hold_span_is_refused() -> None:
    problem, schedule = solved(60.0)
    with pytest.raises(ValueError, match="hold_span"):
        hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_usd=1.0, hold_span="forever")
