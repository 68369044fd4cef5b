"""The rule forecast — what the daemon, `run --simulate` and `hashflex backtest` plan with by default —
recognises a scarcity regime from recent real-time prices (issue 14; Winter Storm Uri) without the learned
model: the next ``scarcity_hold_h`` hours are planned at no less than the recent RT mean. Prices SYNTHETIC:
flat 30 $/MWh, then two hours of RT at 9,000 while DA stays at 30."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hashflex.control.loop import ControlLoop, first_interval_counts
from hashflex.control.solver import SolveRunner
from hashflex.data import bundled_path
from hashflex.backtest.runner import load_prices
from hashflex.forecast import FallbackCode, ForecastConfig, RecordedForecaster, has_fallback
from hashflex.profile import load_profile
from hashflex.sim.site import SimulatedFleet

PROFILE = load_profile("quiet_hollow")
NOW = pd.Timestamp("2020-02-08 18:00", tz="UTC")


def prices(spike_usd_mwh: float | None) -> pd.DataFrame:
    point = PROFILE.site.settlement_point
    rt_start = pd.date_range(NOW - pd.Timedelta(days=2), NOW + pd.Timedelta(days=2), freq="15min", inclusive="left")
    rt_price = np.full(len(rt_start), 30.0)
    if spike_usd_mwh is not None:
        rt_price[(rt_start >= NOW - pd.Timedelta(hours=2)) & (rt_start < NOW)] = spike_usd_mwh
    rt = pd.DataFrame({"interval_start": rt_start, "interval_end": rt_start + pd.Timedelta(minutes=15),
                       "settlement_point": point, "market": "RT", "price_usd_mwh": rt_price})
    da_start = rt_start[rt_start.minute == 0]
    da = pd.DataFrame({"interval_start": da_start, "interval_end": da_start + pd.Timedelta(hours=1),
                       "settlement_point": point, "market": "DA", "price_usd_mwh": 30.0})
    return pd.concat([rt, da], ignore_index=True)


def forecast(spike: float | None):
    return RecordedForecaster(PROFILE, prices(spike))(NOW.to_pydatetime(), NOW, 48)


def test_a_scarcity_regime_floors_the_next_hours_at_the_recent_rt_mean() -> None:
    calm, storm = forecast(None), forecast(9000.0)
    assert not has_fallback(calm.fallbacks, FallbackCode.PRICE_SCARCITY)
    assert np.all(calm.price_usd_mwh <= 31.0)
    assert has_fallback(storm.fallbacks, FallbackCode.PRICE_SCARCITY)
    hold = ForecastConfig().scarcity_hold_h
    hours_ahead = (storm.interval_start - NOW).total_seconds().to_numpy() / 3600.0
    # Within the hold: at least the mean of the last two hours of published RT (9,000); after it: DA again.
    assert np.all(storm.price_usd_mwh[hours_ahead < hold] >= 9000.0)
    np.testing.assert_allclose(storm.price_usd_mwh[hours_ahead >= hold + 1], 30.0)


def test_a_moderate_rise_is_not_scarcity() -> None:
    # 250 $/MWh for two hours: under the 1,000 mean and under DA + 300: planned as usual.
    assert not has_fallback(forecast(250.0).fallbacks, FallbackCode.PRICE_SCARCITY)


def test_the_loop_does_not_plan_into_a_storm() -> None:
    results = {}
    for name, spike in (("calm", None), ("storm", 9000.0)):
        loop = ControlLoop(PROFILE, forecaster=RecordedForecaster(PROFILE, prices(spike)),
                           driver=SimulatedFleet(PROFILE), solver=SolveRunner(inline=True))
        results[name] = sum(first_interval_counts(loop.tick(NOW.to_pydatetime()).schedule).values())
    assert results["calm"] > 0 and results["storm"] == 0


def test_uri_is_recognised_by_the_rules() -> None:
    # Feb 15 2021 10:00 Central: real RT at the profile's point had been near the 9,000 cap for hours.
    uri = load_prices(PROFILE, [bundled_path("ercot/RTM-2021-02.csv"), bundled_path("ercot/DAM-2021-02.csv")])
    now = pd.Timestamp("2021-02-15 16:00", tz="UTC")
    result = RecordedForecaster(PROFILE, uri)(now.to_pydatetime(), now, 16)
    assert has_fallback(result.fallbacks, FallbackCode.PRICE_SCARCITY)
    assert np.all(result.price_usd_mwh >= 1000.0)
