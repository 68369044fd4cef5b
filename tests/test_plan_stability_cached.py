"""Plan stability on a tick that reuses the cached plan (issue 14, H5).

The backtest's MPC (``backtest.policies.ReplanningPlanner``) re-solves every ``replan_minutes``; in between it
returns the last plan from the current interval on, a frame shorter than the tick's problem. The rule skipped
those ticks ("not valued ... coarse grid"), so with a re-plan every hour the cached plan's next interval went
out whatever it moved, while the daemon, which re-solves every tick, holds the same change when its gain is
small (gap_decompose.py ``perfect+replan60`` 0.9997 of the oracle: the rule not running, not the cadence).
Now the cached plan's remaining intervals are valued on the leading part of the tick's problem (this tick's
prices, limits and state), as a fresh plan is.

Values by hand on the site of tests/test_plan_stability.py: 10 miners of 3 kW / 100 TH/s at 50 $/PH/day,
one unit earns $0.05208 per 15 minutes and pays $0.00075·p (breakeven 69.44 $/MWh).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.policies import ReplanningPlanner
from hashflex.control.loop import ControlLoop, HorizonForecast, LoopConfig
from hashflex.control.solver import SolveRunner
from hashflex.control.stability import hold_previous_counts
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.solve import solve
from hashflex.sim.site import SimulatedFleet
from test_plan_stability import PROFILE, T0, UNIT

STEP = pd.Timedelta(minutes=15)
LOSS_AT_75 = 10 * (0.00075 * 75.0 - UNIT)  # ten units running one interval at 75 $/MWh lose $0.0417
LOSS_AT_200 = 10 * (0.00075 * 200.0 - UNIT)  # and $0.979 at 200 $/MWh
TEN, OFF = {("air", "stock"): 10}, {("air", "stock"): 0}


def price_at(stamps: pd.DatetimeIndex, spikes: dict[pd.Timestamp, float]) -> np.ndarray:
    """60 $/MWh, or the spike's price in the intervals listed."""
    return np.array([spikes.get(s, 60.0) for s in stamps])


def cached_slice(spike_now: float):  # noqa: ANN201
    """The plan solved at T0 (75 $/MWh forecast at T0+15 only) as the planner returns it at T0+15, and the
    problem of the tick at T0+15 whose first interval is priced ``spike_now``."""
    at_t0 = pd.date_range(T0, periods=8, freq="15min")
    plan = solve(problem_from_profile(PROFILE, at_t0, price_at(at_t0, {at_t0[1]: 75.0})))
    assert plan.frame["units_air_stock"].tolist() == [10, 0] + [10] * 6
    start = at_t0[1]
    cached = dataclasses.replace(plan, frame=plan.frame.loc[start:])  # as ReplanningPlanner.run returns it
    now_index = pd.date_range(start, periods=8, freq="15min")
    return problem_from_profile(PROFILE, now_index, price_at(now_index, {start: spike_now})), cached


def test_a_cached_plan_is_valued_against_holding_what_runs() -> None:
    """Its next interval stops the ten for one interval at 75 $/MWh: $0.0417 < $0.1, held (before: not
    valued, the ten stopped)."""
    problem, cached = cached_slice(75.0)
    assert len(cached.frame) == 7 and problem.T == 8
    decision = hold_previous_counts(problem, cached, TEN, min_gain_usd=0.1)
    assert decision.held and decision.counts == TEN
    assert decision.gain_usd == pytest.approx(LOSS_AT_75, rel=1e-6)


def test_the_cached_plan_is_valued_at_this_ticks_prices() -> None:
    """The tick's forecast now says 200 $/MWh for that interval: the gain is valued on the new problem,
    $0.979 >= $0.5, followed (the cached frame's own figures, at 75 $/MWh, would give $0.0417 and hold)."""
    problem, cached = cached_slice(200.0)
    decision = hold_previous_counts(problem, cached, TEN, min_gain_usd=0.5)
    assert not decision.held and decision.counts == OFF
    assert decision.gain_usd == pytest.approx(LOSS_AT_200, rel=1e-6)


def test_a_frame_that_is_not_the_problems_leading_part_is_not_valued() -> None:
    problem, cached = cached_slice(75.0)
    shifted = dataclasses.replace(cached, frame=cached.frame.iloc[1:])  # starts an interval after the problem
    decision = hold_previous_counts(problem, shifted, OFF, min_gain_usd=0.1)
    assert not decision.held and "not valued" in decision.reason


class TimedPrices:
    """60 $/MWh, 75 $/MWh in the interval T0+15 only (known from T0: a planned transient)."""

    def __call__(self, now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
        index = pd.date_range(horizon_start, periods=periods, freq="15min")
        return HorizonForecast(index, price_at(index, {pd.Timestamp(T0) + STEP: 75.0}))


@pytest.mark.parametrize("replan_minutes", [None, 60])
def test_the_loop_holds_the_same_change_with_or_without_a_cached_plan(replan_minutes: int | None) -> None:
    """The daemon (a solve every tick) and the backtest's planner re-solving hourly dispatch the same:
    the ten keep running through the transient. 24 h horizon: the fleet earns 96 × 10 × $0.05208 = $50 a day;
    the fraction 0.005 makes the material gain $0.25, and stopping for the transient gains $0.0417: held.
    Before, the hourly planner's cached tick was not valued and the ten stopped for the transient."""
    profile = PROFILE.model_copy(update={"site": PROFILE.site.model_copy(update={"horizon_hours": 24})})
    fleet = SimulatedFleet(profile)
    runner = SolveRunner(inline=True)
    solver = runner if replan_minutes is None else ReplanningPlanner(runner, replan_minutes)
    loop = ControlLoop(profile, forecaster=TimedPrices(), driver=fleet, solver=solver,
                       config=LoopConfig(replan_min_gain_fraction=0.005))
    try:
        loop.tick(T0)
        assert fleet.running() == TEN
        report = loop.tick(T0 + timedelta(minutes=15))
        if replan_minutes is not None:
            assert solver.solves == 1  # the tick reused the plan solved at T0
        assert fleet.running() == TEN, report.stability
        assert "kept what runs" in report.stability
        assert loop.counters["plan_holds"] == 1 and loop.counters["plan_changes"] == 0
        loop.tick(T0 + timedelta(minutes=30))
        assert fleet.running() == TEN
    finally:
        loop.close()


@pytest.mark.parametrize("planner", ["threshold", "always-on"])
def test_the_baselines_plans_are_not_held(planner: str) -> None:
    """The backtest's baselines (a rule on the first interval, a one-row plan) are not the MPC: the stability
    rule is not applied to them, as before H5, when their one-row plans were skipped as "not valued". The
    threshold operator stops the ten when the last RT price (75 $/MWh) passes breakeven (69.44), though the
    gain, one interval at a 24 h horizon ($0.0417), is under the material gain ($0.25); always-on keeps all
    ten running while a unit is away and back (the rule would not move them either way)."""
    from hashflex.backtest.policies import AlwaysOnPlanner, SiteMemory, ThresholdPlanner

    profile = PROFILE.model_copy(update={"site": PROFILE.site.model_copy(update={"horizon_hours": 24})})
    memory = SiteMemory(last_rt_price_usd_mwh=60.0)
    solver = ThresholdPlanner(profile, memory) if planner == "threshold" else AlwaysOnPlanner()
    assert solver.plan_stability is False
    fleet = SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=TimedPrices(), driver=fleet, solver=solver,
                       config=LoopConfig(replan_min_gain_fraction=0.005))
    try:
        loop.tick(T0)
        assert fleet.running() == TEN
        memory.last_rt_price_usd_mwh = 75.0
        report = loop.tick(T0 + timedelta(minutes=15))
        assert sum(fleet.running().values()) == (10 if planner == "always-on" else 0), report.stability
        assert report.stability == "off"
        assert loop.counters["plan_holds"] == 0
    finally:
        loop.close()
