"""Planning on the conditional MEAN price (issue 14, hypothesis: a risk-neutral plan maximises expected
profit, which is linear in the price, so it needs E[price]; the P50 of a right-skewed price drops its spikes).

- the squared-error model recovers a mean the median misses (SYNTHETIC right-skewed series, known answer);
- the hook plans on it (``plan_estimate="mean"``), through a fit handed to another forecaster (the daemon's way);
- no look-ahead (real Feb 2020 LZ_WEST prices): perturb every row published after t, and the mean, the
  forecast and the loop's decision at t do not change; changing rows published before t does change the mean;
- a bad setting names its field; the benchmark settles 2025 windows (past the bundled bitcoin data) at the
  profile's constant rather than inventing a hashprice.
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
from hashflex.price_model import LearnedPriceForecaster, PriceModelConfig  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.sim.site import SimulatedFleet  # noqa: E402

PROFILE = load_profile("quiet_hollow")  # no on-site renewables: prices are the whole forecast
NOW = pd.Timestamp("2020-02-12 18:07", tz="UTC")
MEAN = PriceModelConfig(max_iter=40, train_days=8, plan_estimate="mean")


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    frame = load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv")])
    frame["published_at"] = publication_times(frame)
    return frame


def skewed_prices(days: int = 20, spike_share: float = 0.1, spike_usd_mwh: float = 500.0) -> pd.DataFrame:
    """SYNTHETIC: DA flat at 30 $/MWh; RT = DA, plus ``spike_usd_mwh`` in a random ``spike_share`` of
    intervals that no feature can foresee (i.i.d., seed 7). Conditional mean 30 + 0.1·500 = 80; median 30."""
    rng = np.random.default_rng(7)
    point = PROFILE.site.settlement_point
    rt_start = pd.date_range("2022-06-01", periods=days * 96, freq="15min", tz="UTC")
    rt = 30.0 + spike_usd_mwh * (rng.random(len(rt_start)) < spike_share)
    da_start = pd.date_range("2022-06-01", periods=(days + 2) * 24, freq="h", tz="UTC")
    frames = [pd.DataFrame({"interval_start": rt_start, "interval_end": rt_start + pd.Timedelta(minutes=15),
                            "settlement_point": point, "market": "RT", "price_usd_mwh": rt}),
              pd.DataFrame({"interval_start": da_start, "interval_end": da_start + pd.Timedelta(hours=1),
                            "settlement_point": point, "market": "DA", "price_usd_mwh": 30.0})]
    frame = pd.concat(frames, ignore_index=True)
    frame["published_at"] = publication_times(frame)
    return frame


def test_the_mean_model_recovers_the_mean_the_median_misses() -> None:
    frame = skewed_prices()
    now = pd.Timestamp("2022-06-19 12:00", tz="UTC")
    times = pd.date_range(now, periods=96, freq="15min")
    config = PriceModelConfig(train_days=14, plan_estimate="mean")
    hook = LearnedPriceForecaster(frame, PROFILE.site.settlement_point, PROFILE.site.timezone, config=config)
    mean, q = hook.mean(times, now), hook.quantiles(times, now)
    assert mean is not None and q is not None
    assert 30.0 - 3.0 <= float(np.median(q[0.5])) <= 30.0 + 3.0  # the median ignores 10 % spikes
    assert 80.0 - 20.0 <= float(np.mean(mean)) <= 80.0 + 20.0  # the mean carries them: 30 + 0.1 x 500
    planned = hook(times, None, now)
    np.testing.assert_allclose(planned, mean)  # plan_estimate="mean" plans on it, not on the P50
    median_hook = LearnedPriceForecaster(frame, PROFILE.site.settlement_point, PROFILE.site.timezone,
                                         config=PriceModelConfig(train_days=14))
    assert median_hook.mean(times, now) is None  # only fitted when asked for
    np.testing.assert_allclose(median_hook(times, None, now), median_hook.quantiles(times, now)[0.5])


def test_an_adopted_fit_plans_on_the_same_mean(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    trainer = LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=MEAN)
    assert trainer.fit(NOW)
    fitted = trainer.fitted()
    assert fitted is not None and fitted.mean_model is not None
    predictor = LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=MEAN)
    predictor.adopt(fitted)
    np.testing.assert_array_equal(predictor(times, None, NOW), trainer(times, None, NOW))
    assert predictor.fits == 0


def perturbed_after(prices: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    """Every row published after t changed wildly (x7 + 900 $/MWh), plus a bogus later row."""
    out = prices.copy()
    later = out["published_at"] > t
    out.loc[later, "price_usd_mwh"] = out.loc[later, "price_usd_mwh"] * 7 + 900
    extra = out[later].tail(1).copy()
    for column in ("interval_start", "interval_end", "published_at"):
        extra[column] += pd.Timedelta(days=1)
    return pd.concat([out, extra], ignore_index=True)


def mean_model(prices: pd.DataFrame) -> LearnedPriceForecaster:
    return LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=MEAN)


def test_no_look_ahead_for_the_mean_model_forecast_and_decision(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    dirty_prices = perturbed_after(prices, NOW)
    clean, dirty = mean_model(prices).mean(times, NOW), mean_model(dirty_prices).mean(times, NOW)
    assert clean is not None and dirty is not None
    np.testing.assert_array_equal(clean, dirty)
    reports, forecasts = [], []
    for frame in (prices, dirty_prices):
        forecaster = RecordedForecaster(PROFILE, frame, price_forecaster=mean_model(frame))
        loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE),
                           solver=SolveRunner(inline=True))
        reports.append(loop.tick(NOW.to_pydatetime()))
        forecasts.append(forecaster(NOW, reports[-1].interval_start, loop.periods))
    np.testing.assert_array_equal(forecasts[0].price_usd_mwh, forecasts[1].price_usd_mwh)
    assert "learned" in forecasts[0].price_source[2]
    assert reports[0].schedule is not None and reports[1].schedule is not None
    assert first_interval_counts(reports[0].schedule) == first_interval_counts(reports[1].schedule)
    pd.testing.assert_frame_equal(reports[0].schedule.frame, reports[1].schedule.frame)


def test_the_check_can_fail_rows_published_before_t_change_the_mean(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    changed = prices.copy()
    rows = (changed["published_at"] > NOW - pd.Timedelta(hours=6)) & (changed["published_at"] <= NOW)
    changed.loc[rows, "price_usd_mwh"] += 500.0
    a, b = mean_model(prices).mean(times, NOW), mean_model(changed).mean(times, NOW)
    assert a is not None and b is not None and not np.array_equal(a, b)


def test_a_bad_plan_estimate_names_the_field() -> None:
    with pytest.raises(ValueError, match="plan_estimate"):
        PriceModelConfig(plan_estimate="median")


def test_the_benchmark_settles_2025_windows_at_the_constant_not_an_invented_hashprice() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimization" / "benchmarks"))
    import backtest_ratios as br
    from hashflex.feeds.hashprice import bundled_hashprice

    series = bundled_hashprice()
    assert br.settlement_hashprice(series, pd.Timestamp("2020-02-10"), 3) is series
    assert br.settlement_hashprice(series, pd.Timestamp("2025-03-07"), 3) is None  # the series ends 2025-03-08
    assert br.settlement_hashprice(series, pd.Timestamp("2025-06-15"), 3) is None
    assert {br.CASES[f"2025-{m:02d}"][0] for m in range(4, 12)} == {"dev2-2025"}
    profile, frame, load = br.case_inputs("2025-06", PROFILE)
    assert profile.site.settlement_point == "HB_HUBAVG" and load is not None
    starts = frame.loc[frame["market"] == "RT", "interval_start"]
    assert starts.max() >= pd.Timestamp("2025-11-30", tz="UTC") and set(frame["settlement_point"]) == {"HB_HUBAVG"}
