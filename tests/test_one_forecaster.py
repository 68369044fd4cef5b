"""One forecaster (issue 11): `run --simulate`, the daemon and the backtest plan the same schedule
from the same published data at the same time. Before, `run --simulate` planned with its own rules
(last RT price held, $10,000 for unknowns) and disagreed with the daemon's forecast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.runner import SnapshotForecaster, build_actuals
from hashflex.control.loop import ControlLoop, first_interval_counts
from hashflex.control.solver import SolveRunner
from hashflex.data import bundled_path
from hashflex.feeds.ercot import publication_times, read_price_file
from hashflex.forecast import store_forecaster
from hashflex.profile import load_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

PROFILE = load_profile("quiet_hollow")  # no on-site renewables: prices are the whole forecast


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    point = PROFILE.site.settlement_point
    rt = read_price_file(bundled_path("ercot/RTM-2020-02.csv"), settlement_point=point,
                         settlement_point_type=PROFILE.site.settlement_point_type)
    da = read_price_file(bundled_path("ercot/DAM-2020-02.csv"), settlement_point=point)
    return pd.concat([rt, da], ignore_index=True).sort_values(["interval_start", "market"]).reset_index(drop=True)


def plan_with(forecaster, now: pd.Timestamp):  # noqa: ANN001, ANN201
    loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE), solver=SolveRunner(inline=True))
    report = loop.tick(now.to_pydatetime())
    return forecaster(now.to_pydatetime(), report.interval_start, loop.periods), report


@pytest.mark.parametrize("local", ["2020-02-10T12:00", "2020-02-11T23:00", "2020-02-12T06:15"])
def test_simulate_daemon_and_backtest_plan_alike(tmp_path, prices: pd.DataFrame, local: str) -> None:  # noqa: ANN001
    now = pd.Timestamp(local, tz=PROFILE.tz).tz_convert("UTC")
    published = publication_times(prices)
    with Store(tmp_path / "daemon.db") as store:  # what the daemon would have stored, row by row as published
        for when, rows in prices.groupby(published):
            store.put_price_frame(rows.reset_index(drop=True), published_at=when.to_pydatetime(),
                                  received_at=when.to_pydatetime())
        store.flush()
        daemon_forecast, daemon = plan_with(store_forecaster(PROFILE, store), now)
    simulate_forecast, simulate = plan_with(ReplayForecaster(PROFILE, prices), now)
    actuals = build_actuals(PROFILE, prices, "2020-02-09", "2020-02-14")
    backtest_forecast, backtest = plan_with(SnapshotForecaster(PROFILE, actuals), now)

    np.testing.assert_array_equal(daemon_forecast.price_usd_mwh, simulate_forecast.price_usd_mwh)
    np.testing.assert_array_equal(daemon_forecast.price_usd_mwh, backtest_forecast.price_usd_mwh)
    assert list(daemon_forecast.price_source) == list(simulate_forecast.price_source)
    counts = first_interval_counts(daemon.schedule)
    assert first_interval_counts(simulate.schedule) == counts == first_interval_counts(backtest.schedule)
    pd.testing.assert_frame_equal(daemon.schedule.frame, simulate.schedule.frame)
    pd.testing.assert_frame_equal(daemon.schedule.frame, backtest.schedule.frame)


def test_measurements_are_valued_at_the_hashprice_the_plan_used() -> None:
    """Issue 11: the audit record priced revenue at the profile's static hashprice while the
    optimizer used the feed's value."""
    from hashflex.control.loop import HorizonForecast

    class Recorder:
        def __init__(self) -> None:
            self.records: list[tuple[str, dict]] = []

        def record(self, kind: str, payload: dict, at) -> None:  # noqa: ANN001
            self.records.append((kind, payload))

    def forecaster(now, start, periods):  # noqa: ANN001, ANN202
        index = pd.date_range(start, periods=periods, freq="15min")
        return HorizonForecast(index, np.full(periods, 20.0), hashprice_usd_per_ph_day=np.full(periods, 61.5))

    recorder = Recorder()
    loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE), solver=SolveRunner(inline=True),
                       recorder=recorder)
    now = pd.Timestamp("2020-02-10T12:00", tz=PROFILE.tz).tz_convert("UTC").to_pydatetime()
    loop.tick(now)
    loop.record_measurement(now, 0.25, load_kw=100.0, renewable_kw=0.0, hashrate_th_s=1000.0, noise={},
                            price_usd_mwh=20.0)
    (payload,) = [p for k, p in recorder.records if k == "measurement"]
    assert payload["hashprice_usd_per_ph_day"] == 61.5 != PROFILE.economics.hashprice_usd_per_ph_day
    fee = 1 - PROFILE.economics.pool_fee_pct / 100
    assert payload["revenue_usd"] == pytest.approx(1000.0 * 0.25 * 61.5 / 1000 / 24 * fee)
