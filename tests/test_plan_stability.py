"""Plan stability (issue 14): a re-plan changes the interval about to start only for a material gain, and
never keeps a previous plan that a tightened limit forbids. Values worked by hand below.

Site: 10 miners of 3 kW / 100 TH/s at 50 $/PH/day. One unit earns 0.1 PH/s × 50 / 96 = $0.05208 per
15 minutes and pays 3 kW × 0.25 h × p / 1000 = $0.00075·p: breakeven 69.44 $/MWh."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from hashflex.control.loop import ControlLoop, HorizonForecast, LoopConfig
from hashflex.control.solver import SolveRunner
from hashflex.control.stability import full_fleet_revenue_usd, hold_previous_counts
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.solve import solve
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet

T0 = datetime(2024, 3, 5, 18, 0, tzinfo=timezone.utc)
PROFILE = SiteProfile.model_validate({
    "site": {"name": "stable", "settlement_point": "LZ_WEST", "horizon_hours": 2},
    "grid": {"import_limit_kw": 100},
    "miner_groups": [{"id": "air", "model": "S19", "units": 10, "idle_power_kw": 0.0,
                      "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 90}]}],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
    "economics": {"hashprice_usd_per_ph_day": 50, "pool_fee_pct": 0.0},
})
INDEX = pd.date_range(T0, periods=8, freq="15min")
UNIT = 0.1 * 50 / 96  # $ per unit per interval
# The fleet fraction is of the fleet's revenue over a day ($50 here; issue 14 H5, before: over the horizon):
# this one makes the material gain $0.208, 5 % of the 2 h horizon's $4.17, the value these tests were worked at.
FRACTION_208 = 0.05 * 2 / 24


def solved(price: float, limit_kw: float | None = None):
    problem = problem_from_profile(PROFILE, INDEX, np.full(8, price),
                                   import_limit_kw=None if limit_kw is None else np.full(8, limit_kw))
    return problem, solve(problem)


def test_a_small_gain_keeps_the_previous_plan_a_material_one_does_not() -> None:
    problem, schedule = solved(60.0)  # under breakeven: all ten run
    assert full_fleet_revenue_usd(problem) == pytest.approx(8 * 10 * UNIT)  # over the horizon (× 24 h / 2 h: the
    # scale of min_gain_fraction, stability.fleet_revenue_per_day_usd)
    assert int(schedule.frame["units_air_stock"].iloc[0]) == 10
    gain = 10 * (UNIT - 0.00075 * 60.0)  # what running the first interval earns over all off: $0.0708
    kept = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_usd=1.0, hold_span="first")
    assert kept.held and kept.counts == {("air", "stock"): 0}
    assert kept.gain_usd == pytest.approx(gain, rel=1e-6)
    followed = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_usd=0.05, hold_span="first")
    assert not followed.held and followed.counts == {("air", "stock"): 10}


def test_a_tightened_limit_always_wins() -> None:
    problem, schedule = solved(60.0, limit_kw=15.0)  # five units fit
    assert int(schedule.frame["units_air_stock"].iloc[0]) == 5
    decision = hold_previous_counts(problem, schedule, {("air", "stock"): 10}, min_gain_usd=1e9)
    assert not decision.held and decision.counts == {("air", "stock"): 5}
    assert "import limit" in decision.reason


class Prices:
    def __init__(self) -> None:
        self.price = 60.0
        self.first = None  # the first interval's price when it differs (a transient), else None

    def __call__(self, now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
        price = np.full(periods, self.price)
        if self.first is not None:
            price[0] = self.first
        return HorizonForecast(pd.date_range(horizon_start, periods=periods, freq="15min"), price)


@pytest.mark.parametrize("fraction, expect_running_at_75", [(FRACTION_208, 10), (0.0, 0)])
def test_the_loop_does_not_churn_for_a_small_gain(fraction: float, expect_running_at_75: int) -> None:
    prices = Prices()
    fleet = SimulatedFleet(PROFILE)
    loop = ControlLoop(PROFILE, forecaster=prices, driver=fleet, solver=SolveRunner(inline=True),
                       config=LoopConfig(replan_min_gain_fraction=fraction))
    loop.tick(T0)
    assert fleet.running() == {("air", "stock"): 10}
    # 75 $/MWh for the interval about to start, 60 after (a transient): each unit loses $0.0042 in that
    # quarter hour, $0.042 for the ten. With the rule at 5 % of the horizon's revenue (8 × 10 × $0.0521 × 5 % =
    # $0.208, FRACTION_208 of the fleet's day) the re-plan is not worth the churn. (A lasting change is followed: test_plan_stability_block.py.)
    prices.first = 75.0
    report = loop.tick(T0 + timedelta(minutes=1), trigger="price")
    assert sum(fleet.running().values()) == expect_running_at_75
    if fraction:
        assert loop.counters["plan_holds"] == 1 and "kept what runs" in report.stability
    # 200 $/MWh: $0.98 lost per interval; every setting follows.
    prices.first, prices.price = None, 200.0
    loop.tick(T0 + timedelta(minutes=2), trigger="price")
    assert sum(fleet.running().values()) == 0
    loop.close()
