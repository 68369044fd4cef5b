"""The scarcity regime (issue 14, part 2; Winter Storm Uri): recognised from recent real-time prices
and not planned into. A crafted series (SYNTHETIC: a flat 30 $/MWh week, then RT at 9,000 for two
hours while DA stays at 30) and the real Uri month."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from hashflex.backtest.runner import load_prices  # noqa: E402
from hashflex.control.loop import ControlLoop, first_interval_counts  # noqa: E402
from hashflex.control.solver import SolveRunner  # noqa: E402
from hashflex.data import bundled_path  # noqa: E402
from hashflex.forecast import FallbackCode, RecordedForecaster, has_fallback  # noqa: E402
from hashflex.price_model import LearnedPriceForecaster, PriceModelConfig, detect_scarcity  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.sim.site import SimulatedFleet  # noqa: E402

PROFILE = load_profile("quiet_hollow")
CONFIG = PriceModelConfig(max_iter=30, train_days=6)
NOW = pd.Timestamp("2020-02-08 18:00", tz="UTC")


def crafted(spike: bool) -> pd.DataFrame:
    """SYNTHETIC prices at the profile's point: RT and DA 30 $/MWh (+ a small daily shape) for a week;
    with ``spike`` the last two hours of RT before NOW are 9,000 (DA unchanged)."""
    point = PROFILE.site.settlement_point
    rt_start = pd.date_range(pd.Timestamp("2020-02-01 06:00", tz="UTC"), NOW + pd.Timedelta(days=2), freq="15min",
                             inclusive="left")
    shape = 30.0 + 5.0 * np.sin(2 * np.pi * rt_start.hour.to_numpy() / 24)
    rt_price = shape.copy()
    if spike:
        rt_price[(rt_start >= NOW - pd.Timedelta(hours=2)) & (rt_start < NOW)] = 9000.0
    rt = pd.DataFrame({"interval_start": rt_start, "interval_end": rt_start + pd.Timedelta(minutes=15),
                       "settlement_point": point, "market": "RT", "price_usd_mwh": rt_price})
    da_start = rt_start[rt_start.minute == 0]
    da = pd.DataFrame({"interval_start": da_start, "interval_end": da_start + pd.Timedelta(hours=1),
                       "settlement_point": point, "market": "DA",
                       "price_usd_mwh": 30.0 + 5.0 * np.sin(2 * np.pi * da_start.hour.to_numpy() / 24)})
    return pd.concat([rt, da], ignore_index=True)


def test_detector_on_its_own() -> None:
    assert not detect_scarcity(np.full(8, 40.0), np.full(8, 30.0)).active
    assert detect_scarcity(np.full(8, 2000.0), np.full(8, 1800.0)).active  # RT mean >= 1,000
    spread = detect_scarcity(np.full(8, 600.0), np.full(8, 50.0))  # RT 550 above DA
    assert spread.active and "above day-ahead" in spread.reason
    assert not detect_scarcity(np.array([]), np.array([])).active


def test_crafted_spike_switches_to_the_risk_averse_price_and_the_plan_curtails() -> None:
    calm, storm = crafted(False), crafted(True)
    results = {}
    for name, prices in (("calm", calm), ("storm", storm)):
        hook = LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=CONFIG)
        forecaster = RecordedForecaster(PROFILE, prices, price_forecaster=hook)
        loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE),
                           solver=SolveRunner(inline=True))
        report = loop.tick(NOW.to_pydatetime())
        results[name] = (forecaster(NOW, report.interval_start, loop.periods), report, hook)
    calm_f, calm_r, calm_hook = results["calm"]
    storm_f, storm_r, storm_hook = results["storm"]
    assert not calm_hook.last_scarcity.active and storm_hook.last_scarcity.active
    assert not has_fallback(calm_f.fallbacks, FallbackCode.PRICE_SCARCITY)
    assert has_fallback(storm_f.fallbacks, FallbackCode.PRICE_SCARCITY)
    # The next 6 h are planned at least at the recent RT mean (9,000), never at DA's 30.
    near = storm_f.interval_start < NOW + pd.Timedelta(hours=6)
    assert np.all(storm_f.price_usd_mwh[near] >= 9000.0 - 1e-6)
    assert np.all(storm_f.price_usd_mwh >= calm_f.price_usd_mwh - 1e-6)
    # Calm: the site runs; storm: the first interval is planned curtailed (every unit off).
    assert sum(first_interval_counts(calm_r.schedule).values()) > 0
    assert sum(first_interval_counts(storm_r.schedule).values()) == 0


def test_scarcity_works_without_a_trained_model() -> None:
    # Only 2.5 h of history: the model cannot train, the switch still holds the recent RT price.
    prices = crafted(True)
    prices = prices[prices["interval_start"] >= NOW - pd.Timedelta(hours=2, minutes=30)]
    hook = LearnedPriceForecaster(prices, PROFILE.site.settlement_point, PROFILE.site.timezone, config=CONFIG)
    times = pd.date_range(NOW, periods=4, freq="15min")
    price = hook(times, None, NOW)
    codes = {f.code for f in hook.last_fallbacks}
    assert codes == {FallbackCode.PRICE_MODEL_UNTRAINED, FallbackCode.PRICE_SCARCITY}
    assert np.all(price >= 7000.0)


def test_uri_is_recognised_on_the_real_month() -> None:
    profile = load_profile("west_texas")
    prices = load_prices(profile, [bundled_path("ercot/RTM-2021-02.csv")])
    hook = LearnedPriceForecaster(prices, profile.site.settlement_point, profile.site.timezone, config=CONFIG)
    assert hook.scarcity(pd.Timestamp("2021-02-15 12:00", tz="UTC")).active  # load shed, RT at the cap
    assert not hook.scarcity(pd.Timestamp("2021-02-05 12:00", tz="UTC")).active  # an ordinary day
