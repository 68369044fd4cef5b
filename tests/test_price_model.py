"""The learned price forecaster (issue 14, part 2): P10/P50/P90 from what was published by the
decision time, plugged into the one forecast through its hook, and no look-ahead — perturb every row
published after t and the forecast and the decision at t do not change (real Feb 2020 LZ_WEST prices)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from hashflex.backtest.runner import load_prices  # noqa: E402
from hashflex.control.loop import ControlLoop, first_interval_counts  # noqa: E402
from hashflex.control.solver import SolveRunner  # noqa: E402
from hashflex.data import bundled_path  # noqa: E402
from hashflex.feeds.ercot import publication_times  # noqa: E402
from hashflex.forecast import FallbackCode, RecordedForecaster, has_fallback  # noqa: E402
from hashflex.price_model import LearnedPriceForecaster, PriceModelConfig, pinball_loss  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.sim.site import SimulatedFleet  # noqa: E402

PROFILE = load_profile("quiet_hollow")  # no on-site renewables: prices are the whole forecast
NOW = pd.Timestamp("2020-02-12 18:07", tz="UTC")  # mid-interval, the evening peak ahead
CONFIG = PriceModelConfig(max_iter=40, train_days=8)  # small and fast; the benchmark uses the defaults


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    frame = load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv")])
    frame["published_at"] = publication_times(frame)
    return frame


def perturbed_after(prices: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    """Every row published after t changed wildly (×7 + 900 $/MWh), plus a bogus later row."""
    out = prices.copy()
    later = out["published_at"] > t
    out.loc[later, "price_usd_mwh"] = out.loc[later, "price_usd_mwh"] * 7 + 900
    extra = out[later].tail(1).copy()
    extra["interval_start"] += pd.Timedelta(days=1)
    extra["interval_end"] += pd.Timedelta(days=1)
    extra["published_at"] += pd.Timedelta(days=1)
    return pd.concat([out, extra], ignore_index=True)


def model(prices: pd.DataFrame) -> LearnedPriceForecaster:
    return LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=CONFIG)


def plan(prices: pd.DataFrame, hook: LearnedPriceForecaster):  # noqa: ANN201
    forecaster = RecordedForecaster(PROFILE, prices, price_forecaster=hook)
    loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE), solver=SolveRunner(inline=True))
    report = loop.tick(NOW.to_pydatetime())
    return forecaster(NOW, report.interval_start, loop.periods), report


def test_no_look_ahead_forecast_and_decision(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    clean, dirty = model(prices), model(perturbed_after(prices, NOW))
    q_clean, q_dirty = clean.quantiles(times, NOW), dirty.quantiles(times, NOW)
    assert q_clean is not None and q_dirty is not None
    for q in (0.1, 0.5, 0.9):
        np.testing.assert_array_equal(q_clean[q], q_dirty[q])
    # ... and through the one forecast into the MILP and the loop's dispatch.
    f_clean, r_clean = plan(prices, model(prices))
    f_dirty, r_dirty = plan(perturbed_after(prices, NOW), model(perturbed_after(prices, NOW)))
    np.testing.assert_array_equal(f_clean.price_usd_mwh, f_dirty.price_usd_mwh)
    assert "learned" in f_clean.price_source[2]
    assert r_clean.schedule is not None and r_dirty.schedule is not None
    assert first_interval_counts(r_clean.schedule) == first_interval_counts(r_dirty.schedule)
    pd.testing.assert_frame_equal(r_clean.schedule.frame, r_dirty.schedule.frame)


def test_the_check_can_fail_data_published_before_t_does_change_it(prices: pd.DataFrame) -> None:
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    earlier = NOW - pd.Timedelta(hours=6)
    changed = prices.copy()
    rows = (changed["published_at"] > earlier) & (changed["published_at"] <= NOW)
    changed.loc[rows, "price_usd_mwh"] += 500.0
    a, b = model(prices).quantiles(times, NOW), model(changed).quantiles(times, NOW)
    assert not np.array_equal(a[0.5], b[0.5])


def test_quantiles_are_ordered_and_the_median_tracks_the_price(prices: pd.DataFrame) -> None:
    hook = model(prices)
    times = pd.date_range(NOW.floor("15min"), periods=96, freq="15min")
    q = hook.quantiles(times, NOW)
    assert np.all(q[0.1] <= q[0.5]) and np.all(q[0.5] <= q[0.9])
    assert np.any(q[0.1] < q[0.9])
    actual = prices[prices["market"] == "RT"].set_index("interval_start")["price_usd_mwh"].reindex(times).to_numpy()
    # The P50's pinball loss beats a constant 1,000 $/MWh guess by far (a sanity floor, not a goal).
    assert pinball_loss(actual, q[0.5], 0.5) < pinball_loss(actual, np.full(96, 1000.0), 0.5) / 5


def test_too_little_history_degrades_to_the_rules(prices: pd.DataFrame) -> None:
    start = prices["interval_start"].min()
    early = start + pd.Timedelta(hours=30)  # ~1 day of published RT (< min_train_days = 2)
    hook = model(prices)
    forecaster = RecordedForecaster(PROFILE, prices, price_forecaster=hook)
    out = forecaster(early, early.floor("15min"), 8)
    assert has_fallback(out.fallbacks, FallbackCode.PRICE_MODEL_UNTRAINED)
    assert not any("learned" in s for s in out.price_source)
    assert np.isfinite(out.price_usd_mwh).all()


def test_pinball_loss_by_hand() -> None:
    y, p = np.array([10.0, 20.0]), np.array([12.0, 15.0])
    # q=0.9: (1-0.9)*(12-10) = 0.2 ; 0.9*(20-15) = 4.5 -> mean 2.35
    assert pinball_loss(y, p, 0.9) == pytest.approx(2.35)
    assert pinball_loss(y, p, 0.5) == pytest.approx(np.mean(np.abs(y - p)) / 2)


def test_missing_columns_are_named(prices: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="market"):
        LearnedPriceForecaster(prices.drop(columns=["market"]), PROFILE.site.settlement_point, PROFILE.site.timezone)
    with pytest.raises(ValueError, match="settlement_point 'NOPE'"):
        LearnedPriceForecaster(prices, "NOPE", PROFILE.site.timezone)


def test_a_model_fault_degrades_to_the_rules_not_a_crash(prices: pd.DataFrame) -> None:
    hook = model(prices)

    def broken(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("corrupt model")

    hook.quantiles = broken  # a fault inside the learned part (real object, one method replaced)
    out = RecordedForecaster(PROFILE, prices, price_forecaster=hook)(NOW, NOW.floor("15min"), 8)
    assert has_fallback(out.fallbacks, FallbackCode.PRICE_MODEL_UNTRAINED)
    assert any("corrupt model" in f for f in out.fallbacks)
    assert np.isfinite(out.price_usd_mwh).all() and not any("learned" in s for s in out.price_source)
