"""Plan stability over the new plan's leading ramp (issue 14, H4). Values worked by hand below.

Site: 10 miners of 3 kW / 100 TH/s at 50 $/PH/day, energy at 0 $/MWh: one unit earns 0.1 PH/s × 50 / 96
= $0.05208 per 15 minutes. The import limit rises 6, 9, ..., 27 kW (solar rising under a fixed import
limit looks the same to the plan): the plan runs 2, 3, ..., 9 units. One unit runs now.

Before, the hold was valued over the plan's first *block* (its leading intervals equal to the first), here
one interval: gain = 1 unit × $0.05208, under a $0.5 threshold, so the fleet stayed at one unit while the
plan added a unit every interval (west_texas 7-9 May 2024: flat for an hour each morning under the limit).
Over the ramp (every interval >= what runs): gain = $0.05208 × (1 + 2 + ... + 8) = $1.875.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_plan_stability import (  # the 10-unit, 3 kW site (2 h horizon, 15-min intervals)
    INDEX,
    PROFILE,
    UNIT,
)

from hashflex.control.stability import hold_previous_counts
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.solve import solve

NOW_RUNNING = {("air", "stock"): 1}


@pytest.fixture(scope="module")
def ramp():
    problem = problem_from_profile(PROFILE, INDEX, np.zeros(8), import_limit_kw=6.0 + 3.0 * np.arange(8))
    schedule = solve(problem)
    assert list(schedule.frame["units_air_stock"]) == [2, 3, 4, 5, 6, 7, 8, 9]
    return problem, schedule


def test_a_ramp_is_followed_when_its_gain_over_the_ramp_is_material(ramp) -> None:
    problem, schedule = ramp
    decision = hold_previous_counts(problem, schedule, NOW_RUNNING, min_gain_usd=0.5)  # the default: ramp
    assert not decision.held and decision.counts == {("air", "stock"): 2}
    assert decision.gain_usd == pytest.approx(36 * UNIT, rel=1e-6)
    assert "over its ramp" in decision.reason


def test_the_block_rule_held_the_ramp(ramp) -> None:
    """The rule before (``hold_span='block'``) keeps the one unit: its gain is one interval of one unit."""
    problem, schedule = ramp
    decision = hold_previous_counts(problem, schedule, NOW_RUNNING, min_gain_usd=0.5, hold_span="block")
    assert decision.held and decision.counts == NOW_RUNNING
    assert decision.gain_usd == pytest.approx(UNIT, rel=1e-6)


def test_a_small_ramp_is_still_held(ramp) -> None:
    """Over the ramp the gain is $1.875: a $2 threshold still keeps what runs (the gain reported is the block's)."""
    problem, schedule = ramp
    decision = hold_previous_counts(problem, schedule, NOW_RUNNING, min_gain_usd=2.0)
    assert decision.held and decision.counts == NOW_RUNNING


def test_a_plan_crossing_what_runs_is_no_ramp() -> None:
    """The plan goes above what runs, then below it: its ramp is the leading intervals above only (two),
    gain 1 + 2 units × 1 interval = $0.156 < $0.5: held."""
    limit = np.array([6.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    problem = problem_from_profile(PROFILE, INDEX, np.zeros(8), import_limit_kw=limit)
    schedule = solve(problem)
    assert list(schedule.frame["units_air_stock"]) == [2, 3, 0, 0, 0, 0, 0, 0]
    decision = hold_previous_counts(problem, schedule, NOW_RUNNING, min_gain_usd=0.5)
    assert decision.held and decision.gain_usd == pytest.approx(UNIT, rel=1e-6)
