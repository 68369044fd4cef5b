"""The learned price model in the daemon (issue 14): `hashflex run` fits it on the prices its store holds
(only rows published by the fit's time, daily after the DAM, in a background thread), plans on the rules
until it has a fit and on any model error (counted in /metrics), and says which in /status and the stored
schedule (``forecast_source``). Real Feb 2020 ERCOT prices (LZ_NORTH RT and DA, bundled), written to a
real store with ERCOT's publication times; real HiGHS solves; /metrics over real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from hashflex.backtest.runner import load_prices  # noqa: E402
from hashflex.control.daemon import price_model_for, with_price_model  # noqa: E402
from hashflex.control.http import StatusServer  # noqa: E402
from hashflex.control.loop import ControlLoop  # noqa: E402
from hashflex.control.solver import SolveRunner  # noqa: E402
from hashflex.data import bundled_path  # noqa: E402
from hashflex.feeds.ercot import publication_times  # noqa: E402
from hashflex.forecast import FallbackCode, has_fallback, store_forecaster  # noqa: E402
from hashflex.price_model import OnlinePriceModel, RetrainSchedule, recorded_price_history  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.sim.site import SimulatedFleet, run_simulation  # noqa: E402
from hashflex.store import Store  # noqa: E402

PROFILE = load_profile("quiet_hollow")  # no on-site renewables: prices are the whole forecast
POINT = PROFILE.site.settlement_point
EARLY = pd.Timestamp("2020-02-02 15:07", tz="UTC")  # ~1.4 days of published RT: too little (< 2 days)
LATER = pd.Timestamp("2020-02-04 18:07", tz="UTC")  # ~3.5 days: enough


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    frame = load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv"), bundled_path("ercot/DAM-2020-02.csv")])
    frame = frame[frame["interval_start"] < pd.Timestamp("2020-02-08", tz="UTC")].reset_index(drop=True)
    frame["published_at"] = publication_times(frame)
    return frame


def stored(path: Path, frame: pd.DataFrame) -> Store:
    """A real store holding ``frame`` as a live site would have received it (each row at its publication)."""
    store = Store(str(path))
    store.put_price_history(frame)
    store.flush()
    return store


def daemon_loop(store: Store, model: OnlinePriceModel | None) -> ControlLoop:
    """The daemon's loop wiring (control.daemon.run_daemon): the store's forecaster with the model as its hook."""
    return ControlLoop(PROFILE, forecaster=store_forecaster(PROFILE, store, price_forecaster=model),
                       driver=SimulatedFleet(PROFILE), store=store, solver=SolveRunner(inline=True))


def at(ts: pd.Timestamp) -> datetime:
    return ts.to_pydatetime()


def test_the_daemon_plans_on_the_rules_until_enough_history_then_on_the_learned_model(tmp_path: Path,
                                                                                      prices: pd.DataFrame) -> None:
    store = stored(tmp_path / "site.db", prices)
    model = price_model_for(PROFILE, "learned", store=store, background=False)
    loop = daemon_loop(store, model)
    try:
        report = loop.tick(at(EARLY))
        assert has_fallback(report.fallbacks, FallbackCode.PRICE_MODEL_UNTRAINED)
        assert loop.status(at(EARLY))["forecast_source"] == "rules"
        store.flush()
        assert store.latest_schedule()["forecast_source"] == "rules"
        status = with_price_model(loop.status(at(EARLY)), model)
        assert status["forecast_source"] == "rules" and "day(s) of real-time history" in status["price_model"]["reason"]
        assert model.counters["price_model_fits"] == 0 and model.fitted is None

        report = loop.tick(at(LATER))  # a retry is due (1 h later): the fit now finds 3.5 days
        assert not has_fallback(report.fallbacks, FallbackCode.PRICE_MODEL_UNTRAINED)
        assert loop.status(at(LATER))["forecast_source"] == "learned"
        store.flush()
        assert store.latest_schedule()["forecast_source"] == "learned"
        assert model.fitted is not None and model.fitted.trained_at == LATER  # fitted on what it knew then
        assert model.counters["price_model_fits"] == 1
        status = with_price_model(loop.status(at(LATER)), model)
        assert status["forecast_source"] == "learned" and status["counters"]["price_model_learned_ticks"] == 1

        # It refits after the DAM publishes (13:30 Central = 19:30 UTC), not before.
        loop.tick(at(pd.Timestamp("2020-02-04 19:20", tz="UTC")))
        assert model.counters["price_model_fits"] == 1
        loop.tick(at(pd.Timestamp("2020-02-04 19:35", tz="UTC")))
        assert model.counters["price_model_fits"] == 2
        assert model.fitted.trained_at == pd.Timestamp("2020-02-04 19:35", tz="UTC")
        loop.tick(at(pd.Timestamp("2020-02-05 19:20", tz="UTC")))  # a day later, before that day's refit
        assert model.counters["price_model_fits"] == 2
    finally:
        loop.close()
        store.close()


def test_a_model_failure_falls_back_to_the_rules_and_is_counted_on_metrics(tmp_path: Path,
                                                                           prices: pd.DataFrame) -> None:
    store = stored(tmp_path / "site.db", prices)
    model = price_model_for(PROFILE, "learned", store=store, background=False)
    loop = daemon_loop(store, model)
    server = StatusServer(lambda now: with_price_model(loop.status(now), model),
                          lambda: at(LATER), "127.0.0.1", 0)
    server.start()
    try:
        loop.tick(at(LATER))
        assert loop.status(at(LATER))["forecast_source"] == "learned"

        class Broken:  # a fault inside the fitted model (the fit object stays real; one regressor replaced)
            def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
                raise RuntimeError("corrupt regressor")

        model.fitted.models[0.5] = Broken()
        then = LATER + pd.Timedelta(minutes=15)
        report = loop.tick(at(then))
        assert has_fallback(report.fallbacks, FallbackCode.PRICE_MODEL_FAILED)
        assert any("corrupt regressor" in f for f in report.fallbacks)
        assert report.schedule is not None and np.isfinite(report.schedule.frame["price_usd_mwh"]).all()
        assert loop.status(at(LATER))["forecast_source"] == "rules"
        store.flush()
        assert store.latest_schedule()["forecast_source"] == "rules"
        assert model.counters["price_model_failures"] == 1
        # The plan is the rules' own (the same forecast without a model), not the learned one's.
        rules = store_forecaster(PROFILE, store)(at(then), then.floor("15min"), loop.periods)
        np.testing.assert_array_equal(report.schedule.frame["price_usd_mwh"].to_numpy(), rules.price_usd_mwh)
        with urllib.request.urlopen(f"{server.url}metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'hashflex_events_total{counter="price_model_failures"} 1.0' in metrics
        assert 'hashflex_events_total{counter="price_model_fits"} 1.0' in metrics
    finally:
        server.stop()
        loop.close()
        store.close()


def test_a_failed_fit_keeps_the_rules_and_is_counted() -> None:
    def history(as_of: pd.Timestamp, lookback: pd.Timedelta) -> pd.DataFrame:
        raise OSError("disk I/O error")

    model = OnlinePriceModel(history, POINT, PROFILE.site.timezone, background=False)
    price = model(pd.date_range(LATER.floor("15min"), periods=4, freq="15min"), None, LATER)
    assert np.isnan(price).all() and model.last_source == "rules"
    assert model.counters["price_model_fit_failures"] == 1
    assert "disk I/O error" in model.status()["last_fit_error"]
    assert has_fallback(model.last_fallbacks, FallbackCode.PRICE_MODEL_UNTRAINED)
    model(pd.date_range(LATER.floor("15min"), periods=4, freq="15min"), None, LATER + pd.Timedelta(minutes=5))
    assert model.counters["price_model_fit_failures"] == 1  # retried only after retry_h, not every tick


def perturbed_after(frame: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    """Every row published after t changed wildly (×7 + 900 $/MWh), plus a bogus later row."""
    out = frame.copy()
    later = out["published_at"] > t
    out.loc[later, "price_usd_mwh"] = out.loc[later, "price_usd_mwh"] * 7 + 900
    extra = out[later & (out["market"] == "RT")].tail(1).copy()
    extra["interval_start"] += pd.Timedelta(days=1)
    extra["interval_end"] += pd.Timedelta(days=1)
    extra["published_at"] += pd.Timedelta(days=1)
    return pd.concat([out, extra], ignore_index=True)


def forecast_at(path: Path, frame: pd.DataFrame, t: pd.Timestamp):  # noqa: ANN201
    store = stored(path, frame)
    try:
        model = price_model_for(PROFILE, "learned", store=store, background=False)
        forecaster = store_forecaster(PROFILE, store, price_forecaster=model)
        return forecaster(at(t), t.floor("15min"), 96)
    finally:
        store.close()


def test_no_look_ahead_in_the_daemon_path(tmp_path: Path, prices: pd.DataFrame) -> None:
    clean = forecast_at(tmp_path / "clean.db", prices, LATER)
    dirty = forecast_at(tmp_path / "dirty.db", perturbed_after(prices, LATER), LATER)
    assert clean.forecast_source == "learned" and dirty.forecast_source == "learned"
    np.testing.assert_array_equal(clean.price_usd_mwh, dirty.price_usd_mwh)
    assert clean.price_source == dirty.price_source


def test_the_check_can_fail_data_published_before_t_does_change_it(tmp_path: Path, prices: pd.DataFrame) -> None:
    changed = prices.copy()
    rows = (changed["published_at"] > LATER - pd.Timedelta(hours=6)) & (changed["published_at"] <= LATER)
    changed.loc[rows, "price_usd_mwh"] += 500.0
    a = forecast_at(tmp_path / "a.db", prices, LATER)
    b = forecast_at(tmp_path / "b.db", changed, LATER)
    assert not np.array_equal(a.price_usd_mwh, b.price_usd_mwh)


def test_training_runs_in_the_background_and_a_tick_never_waits_for_it(prices: pd.DataFrame) -> None:
    release, entered = threading.Event(), threading.Event()
    recorded = recorded_price_history(prices)

    def slow_history(as_of: pd.Timestamp, lookback: pd.Timedelta) -> pd.DataFrame:
        if lookback > pd.Timedelta(days=3):  # the fit's read (the tick's own read is the 3-day one)
            entered.set()
            assert release.wait(60), "the test never released the fit"
        return recorded(as_of, lookback)

    model = OnlinePriceModel(slow_history, POINT, PROFILE.site.timezone, background=True)
    times = pd.date_range(LATER.floor("15min"), periods=8, freq="15min")
    first = model(times, None, LATER)  # starts the fit and answers at once, while the fit is blocked
    assert entered.wait(30) and model.training
    assert np.isnan(first).all() and model.last_source == "rules" and "first fit running" in model.last_reason
    release.set()
    assert model.wait(120) and model.counters["price_model_fits"] == 1
    later = LATER + pd.Timedelta(minutes=15)
    second = model(pd.date_range(later.floor("15min"), periods=8, freq="15min"), None, later)
    assert np.isfinite(second).all() and model.last_source == "learned"


def test_the_retrain_schedule_by_hand() -> None:
    schedule = RetrainSchedule()  # 13:30 America/Chicago; CST = UTC-6 in February
    assert schedule.last_due(pd.Timestamp("2020-02-05 19:00", tz="UTC")) == pd.Timestamp("2020-02-04 19:30", tz="UTC")
    assert schedule.last_due(pd.Timestamp("2020-02-05 19:30", tz="UTC")) == pd.Timestamp("2020-02-05 19:30", tz="UTC")
    # CDT (UTC-5) in July
    assert schedule.last_due(pd.Timestamp("2024-07-02 20:00", tz="UTC")) == pd.Timestamp("2024-07-02 18:30", tz="UTC")
    with pytest.raises(ValueError, match="local_time"):
        RetrainSchedule(local_time="25:99")
    with pytest.raises(ValueError, match="retry_h"):
        RetrainSchedule(retry_h=0)


def test_the_option_turns_it_off_and_bad_modes_are_named(tmp_path: Path, prices: pd.DataFrame) -> None:
    from hashflex.cli import build_parser

    assert price_model_for(PROFILE, "rules", prices=prices) is None
    with pytest.raises(ValueError, match="price_model 'magic'"):
        price_model_for(PROFILE, "magic", prices=prices)
    assert build_parser().parse_args(["run", "--price-model", "rules"]).price_model == "rules"
    assert build_parser().parse_args(["run"]).price_model in ("auto", "learned", "rules")
    assert with_price_model({"counters": {"ticks": 3}}, None) == {"counters": {"ticks": 3}, "forecast_source": "rules",
                                                                 "price_model": None}


def test_run_simulate_uses_the_learned_model_once_fitted(tmp_path: Path, prices: pd.DataFrame) -> None:
    model = price_model_for(PROFILE, "learned", prices=prices, background=False)
    result = run_simulation(PROFILE, prices, LATER.floor("15min"), 2, store_path=str(tmp_path / "sim.db"),
                            price_forecaster=model)
    assert result.loop.status(result.reports[-1].at)["forecast_source"] == "learned"
    assert all(not has_fallback(r.fallbacks, FallbackCode.PRICE_MODEL_UNTRAINED) for r in result.reports)
    assert model.counters["price_model_learned_ticks"] == 2
