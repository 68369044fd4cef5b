"""Planning on the breakeven probability (issue 14, H6): a group runs in an interval when the forecast
probability of a price below its breakeven is at least p* (``PriceModelConfig.plan_estimate="breakeven"``).

- the one planning price, the p* quantile interpolated between P10/P50/P90, gives every group's rule at
  once: b >= Q(p*) exactly when F(b) >= p* for the piecewise-linear CDF through the fitted quantiles
  (random SYNTHETIC quantiles and breakevens);
- the hook plans on it, with the first hour's own p* (real Feb 2020 LZ_WEST prices), and a higher p* plans
  a price at least as high;
- no look-ahead: perturb every row published after t, and the price, the forecast and the loop's decision
  at t do not change; changing rows published before t does change the price (the check can fail);
- bad settings name their field; the benchmark's ``--estimates breakeven:P:N`` entries parse to rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from hashflex.backtest.runner import load_prices  # noqa: E402
from hashflex.control.loop import ControlLoop, first_interval_counts  # noqa: E402
from hashflex.control.solver import SolveRunner  # noqa: E402
from hashflex.data import bundled_path  # noqa: E402
from hashflex.feeds.ercot import publication_times  # noqa: E402
from hashflex.forecast import RecordedForecaster  # noqa: E402
from hashflex.price_model import LearnedPriceForecaster, PriceModelConfig, quantile_at  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.sim.site import SimulatedFleet  # noqa: E402

PROFILE = load_profile("quiet_hollow")  # no on-site renewables: prices are the whole forecast
NOW = pd.Timestamp("2020-02-12 18:07", tz="UTC")  # mid-interval, the evening peak ahead
BREAKEVEN = PriceModelConfig(max_iter=40, train_days=8, plan_estimate="breakeven", breakeven_probability=0.6,
                             breakeven_probability_near=0.9, near_h=1.0)


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    frame = load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv")])
    frame["published_at"] = publication_times(frame)
    return frame


def hook(prices: pd.DataFrame, config: PriceModelConfig = BREAKEVEN) -> LearnedPriceForecaster:
    return LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=config)


def test_quantile_at_interpolates_between_fitted_levels_by_hand() -> None:
    q = {0.1: np.array([10.0, -5.0]), 0.5: np.array([30.0, 20.0]), 0.9: np.array([130.0, 20.0])}
    np.testing.assert_allclose(quantile_at(q, 0.5), [30.0, 20.0])  # a fitted level: exactly that quantile
    np.testing.assert_allclose(quantile_at(q, 0.3), [20.0, 7.5])  # halfway between P10 and P50
    np.testing.assert_allclose(quantile_at(q, 0.8), [105.0, 20.0])  # 3/4 of the way from P50 to P90
    np.testing.assert_allclose(quantile_at(q, 0.9), [130.0, 20.0])
    np.testing.assert_allclose(quantile_at(q, np.array([0.1, 0.7])), [10.0, 20.0])  # one p per interval
    with pytest.raises(ValueError, match="probability"):
        quantile_at(q, 0.95)
    with pytest.raises(ValueError, match="quantiles"):
        quantile_at({}, 0.5)


def test_one_planning_price_applies_every_groups_breakeven_rule() -> None:
    """SYNTHETIC: random non-crossing quantiles and breakevens; run (b >= Q(p*)) iff F(b) >= p*."""
    rng = np.random.default_rng(11)
    n = 500
    q10 = rng.normal(40.0, 30.0, n)
    q50 = q10 + rng.gamma(2.0, 10.0, n)
    q90 = q50 + rng.gamma(1.5, 80.0, n)
    q = {0.1: q10, 0.5: q50, 0.9: q90}
    for p_star in (0.1, 0.25, 0.5, 0.6, 0.85, 0.9):
        plan = quantile_at(q, p_star)
        for _ in range(5):  # several groups' breakevens per interval
            breakeven = rng.uniform(q10 - 20.0, q90 + 20.0)
            cdf = np.array([np.interp(b, [a, m, c], [0.1, 0.5, 0.9], left=0.0, right=1.0)
                            for b, a, m, c in zip(breakeven, q10, q50, q90, strict=True)])
            runs_by_price = breakeven >= plan - 1e-9
            runs_by_probability = cdf >= p_star - 1e-9
            # The two rules can only differ on the boundary (b == Q(p*)), within float rounding.
            differ = runs_by_price != runs_by_probability
            assert np.allclose(breakeven[differ], plan[differ], atol=1e-6)


def test_the_hook_plans_at_the_p_star_quantile_with_the_first_hours_own(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    model = hook(prices)
    q = model.quantiles(times, NOW)
    assert q is not None
    planned = model(times, None, NOW)
    assert not model.last_scarcity.active  # the normal-times estimate is what is checked
    near = (times - NOW) < pd.Timedelta(hours=1)
    assert near.sum() == 5  # 18:00 .. 19:00 start within the hour of 18:07
    np.testing.assert_allclose(planned[near], quantile_at(q, 0.9)[near])
    np.testing.assert_allclose(planned[~near], quantile_at(q, 0.6)[~near])
    median = hook(prices, PriceModelConfig(max_iter=40, train_days=8, plan_estimate="breakeven",
                                           breakeven_probability=0.5))
    lower = median(times, None, NOW)
    np.testing.assert_allclose(lower, q[0.5])  # p* = 0.5 is the P50 (same fit: same data, seed, settings)
    assert np.all(planned >= lower - 1e-9) and np.any(planned > lower + 1.0)


def perturbed_after(prices: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    """Every row published after t changed wildly (x7 + 900 $/MWh), plus a bogus later row."""
    out = prices.copy()
    later = out["published_at"] > t
    out.loc[later, "price_usd_mwh"] = out.loc[later, "price_usd_mwh"] * 7 + 900
    extra = out[later].tail(1).copy()
    for column in ("interval_start", "interval_end", "published_at"):
        extra[column] += pd.Timedelta(days=1)
    return pd.concat([out, extra], ignore_index=True)


def test_no_look_ahead_for_the_breakeven_estimate_forecast_and_decision(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    dirty_prices = perturbed_after(prices, NOW)
    assert (dirty_prices["published_at"] > NOW).sum() > 100  # the perturbation touches later rows
    np.testing.assert_array_equal(hook(prices)(times, None, NOW), hook(dirty_prices)(times, None, NOW))
    reports, forecasts = [], []
    for frame in (prices, dirty_prices):
        forecaster = RecordedForecaster(PROFILE, frame, price_forecaster=hook(frame))
        loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE),
                           solver=SolveRunner(inline=True))
        reports.append(loop.tick(NOW.to_pydatetime()))
        forecasts.append(forecaster(NOW, reports[-1].interval_start, loop.periods))
    np.testing.assert_array_equal(forecasts[0].price_usd_mwh, forecasts[1].price_usd_mwh)
    assert "learned" in forecasts[0].price_source[6]
    assert reports[0].schedule is not None and reports[1].schedule is not None
    assert first_interval_counts(reports[0].schedule) == first_interval_counts(reports[1].schedule)
    pd.testing.assert_frame_equal(reports[0].schedule.frame, reports[1].schedule.frame)


def test_the_check_can_fail_rows_published_before_t_change_the_price(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    changed = prices.copy()
    rows = (changed["published_at"] > NOW - pd.Timedelta(hours=6)) & (changed["published_at"] <= NOW)
    changed.loc[rows, "price_usd_mwh"] += 500.0
    assert not np.array_equal(hook(prices)(times, None, NOW), hook(changed)(times, None, NOW))


@pytest.mark.parametrize(("field", "settings"), [
    ("breakeven_probability", {"breakeven_probability": 0.95}),
    ("breakeven_probability", {"breakeven_probability": float("nan")}),
    ("breakeven_probability_near", {"breakeven_probability_near": 0.0}),
    ("near_h", {"near_h": -1.0}),
    ("plan_estimate", {"plan_estimate": "probability"}),
])
def test_bad_breakeven_settings_name_their_field(field: str, settings: dict) -> None:
    with pytest.raises(ValueError, match=field):
        PriceModelConfig(**settings)


def test_the_benchmark_parses_breakeven_rows() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimization" / "benchmarks"))
    import backtest_ratios as br

    base = PriceModelConfig()
    row, config = br.estimate_config("breakeven:0.6:0.9", base)
    assert row == "mpc learned be0.6/0.9"
    assert (config.plan_estimate, config.breakeven_probability, config.breakeven_probability_near) == (
        "breakeven", 0.6, 0.9)
    assert br.estimate_config("breakeven", base)[0] == "mpc learned be0.5"
    assert br.estimate_config("quantile", base) == ("mpc learned", base)
    for bad, match in (("breakeven:0.99", "breakeven_probability"), ("mean:0.5", "only breakeven"),
                       ("median", "not one of"), ("breakeven:x", "not a number")):
        with pytest.raises(ValueError, match=match):
            br.estimate_config(bad, base)
