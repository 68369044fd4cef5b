"""Plan stability per unit moved (issue 14): a re-plan must gain K intervals of gross revenue of each unit it
switches. Values by hand on the site of tests/test_plan_stability.py: 10 miners of 3 kW / 100 TH/s at
50 $/PH/day, one unit earns 0.1 PH/s × 50 / 96 = $0.05208 per 15 minutes."""

from __future__ import annotations

import pytest

from hashflex.control.stability import hold_previous_counts, moved_units_revenue_usd
from test_plan_stability import FRACTION_208, UNIT, solved


def test_moved_units_revenue_by_hand() -> None:
    problem, _ = solved(60.0)
    assert moved_units_revenue_usd(problem, {("air", "stock"): 10}, {("air", "stock"): 0}) == pytest.approx(10 * UNIT)
    assert moved_units_revenue_usd(problem, {("air", "stock"): 7}, {("air", "stock"): 10}) == pytest.approx(3 * UNIT)
    assert moved_units_revenue_usd(problem, {("air", "stock"): 4}, {}) == pytest.approx(4 * UNIT)


@pytest.mark.parametrize("unit_intervals, held", [(0.1, False), (0.2, True)])
def test_the_threshold_scales_with_the_units_moved(unit_intervals: float, held: bool) -> None:
    problem, schedule = solved(60.0)  # under breakeven: all ten run
    gain = 10 * (UNIT - 0.00075 * 60.0)  # $0.0708 for switching ten units on for the first interval
    # threshold = K × 10 × $0.05208: $0.052 at K = 0.1 (follow), $0.104 at K = 0.2 (keep what runs)
    decision = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_unit_intervals=unit_intervals,
                                    hold_span="first")
    assert decision.held is held
    assert decision.gain_usd == pytest.approx(gain, rel=1e-6)
    assert decision.counts == {("air", "stock"): 0 if held else 10}


def test_the_largest_threshold_applies_and_a_tightened_limit_still_wins() -> None:
    problem, schedule = solved(60.0)
    # per unit alone would follow (K = 0.1: $0.052 < $0.0708); the fleet fraction ($0.208) keeps
    kept = hold_previous_counts(problem, schedule, {("air", "stock"): 0}, min_gain_fraction=FRACTION_208,
                                min_gain_unit_intervals=0.1, hold_span="first")
    assert kept.held
    limited, schedule = solved(60.0, limit_kw=15.0)
    decision = hold_previous_counts(limited, schedule, {("air", "stock"): 10}, min_gain_unit_intervals=1e6)
    assert not decision.held and decision.counts == {("air", "stock"): 5}
