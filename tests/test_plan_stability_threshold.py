"""The plan-stability rule's material gain does not depend on the horizon length (issue 14, H5).

It was a fraction of the whole fleet's revenue over the *horizon*, so a 48 h horizon held twice as hard as
24 h (gap_decompose.py ``perfect+hor48`` fell to 0.9948). Now it is a fraction of the fleet's revenue over one
day at the horizon's mean rate: the same at 24 h as before (the default does not move), the same at any horizon.

Values by hand on the site of tests/test_plan_stability.py: 10 miners of 3 kW / 100 TH/s at 50 $/PH/day,
one unit earns $0.05208 per 15 minutes (the fleet $50 a day) and pays $0.00075·p.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.control.stability import fleet_revenue_per_day_usd, full_fleet_revenue_usd, hold_previous_counts
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.solve import solve
from test_plan_stability import PROFILE, T0, UNIT

RUN_AT_60 = 10 * (UNIT - 0.00075 * 60.0)  # ten units running one interval at 60 $/MWh earn $0.0708


def four_cheap_intervals(hours: int):  # noqa: ANN201
    """60 $/MWh for the first hour, 200 $/MWh after: the plan runs the ten for four intervals."""
    periods = hours * 4
    index = pd.date_range(T0, periods=periods, freq="15min")
    price = np.full(periods, 200.0)
    price[:4] = 60.0
    problem = problem_from_profile(PROFILE, index, price)
    schedule = solve(problem)
    assert schedule.frame["units_air_stock"].tolist() == [10] * 4 + [0] * (periods - 4)
    return problem, schedule


@pytest.mark.parametrize("hours", [2, 24, 48])
def test_the_fleets_revenue_per_day_is_the_same_at_any_horizon(hours: int) -> None:
    problem, _ = four_cheap_intervals(hours)
    assert full_fleet_revenue_usd(problem) == pytest.approx(hours * 4 * 10 * UNIT)  # over the horizon
    assert fleet_revenue_per_day_usd(problem) == pytest.approx(96 * 10 * UNIT)  # $50 whatever the horizon


def test_at_24_hours_the_threshold_is_todays_exactly() -> None:
    """The default horizon: the same float as the horizon's revenue, so the default rule does not move."""
    problem, _ = four_cheap_intervals(24)
    assert fleet_revenue_per_day_usd(problem) == full_fleet_revenue_usd(problem)


@pytest.mark.parametrize("hours", [24, 48])
def test_the_same_change_is_followed_at_24_and_48_hours(hours: int) -> None:
    """Starting the ten for the cheap hour gains 4 × $0.0708 = $0.283 over its block; the material gain at
    fraction 0.005 is $0.25 at both horizons: followed at both (before: $0.50 at 48 h, held)."""
    problem, schedule = four_cheap_intervals(hours)
    decision = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_fraction=0.005)
    assert decision.gain_usd == pytest.approx(4 * RUN_AT_60, rel=1e-6)
    assert not decision.held and decision.counts == {("air", "stock"): 10}
    assert "(>= $0.25)" in decision.reason
