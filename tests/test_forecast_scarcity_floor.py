"""The scarcity floor falls with the price once a spike ends (issue 14): the next ``scarcity_hold_h`` hours are
planned at no less than the lower of the recent RT mean and the last published RT price. Reproduced first on
7-9 May 2024 (HB_HUBAVG, optimization/benchmarks/gap_decompose.py): after a 2-hour evening spike the 2-hour
mean (> 1,000 $/MWh) held the fleet off while RT was back at 35-83 $/MWh.

Prices SYNTHETIC, on the quiet_hollow site of tests/test_scarcity_rules.py: flat 30 $/MWh; 2 h of RT at 3,000
ending with one interval at 50 (the spike is over); DA 30 throughout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.control.loop import ControlLoop, first_interval_counts
from hashflex.control.solver import SolveRunner
from hashflex.forecast import FallbackCode, ForecastConfig, RecordedForecaster, detect_scarcity, has_fallback
from hashflex.price_model import PriceModelConfig
from hashflex.price_model import detect_scarcity as model_detect_scarcity
from hashflex.sim.site import SimulatedFleet
from test_scarcity_rules import NOW, PROFILE, prices


def spike_then_calm() -> pd.DataFrame:
    frame = prices(3000.0)
    last = (frame["market"] == "RT") & (frame["interval_start"] == NOW - pd.Timedelta(minutes=15))
    frame.loc[last, "price_usd_mwh"] = 50.0
    return frame


def test_the_floor_is_the_lower_of_the_mean_and_the_last_price() -> None:
    rt = np.array([3000.0] * 7 + [50.0])
    state = detect_scarcity(rt, np.full(8, 30.0), rt_threshold_usd_mwh=1000.0, spread_threshold_usd_mwh=np.inf)
    assert state.active and state.rt_mean_usd_mwh == pytest.approx(2631.25) and state.rt_last_usd_mwh == 50.0
    assert state.floor_usd_mwh() == 50.0
    assert state.floor_usd_mwh(follow_last=False) == pytest.approx(2631.25)  # the rule before
    storm = detect_scarcity(np.full(8, 9000.0), np.full(8, 30.0), rt_threshold_usd_mwh=1000.0,
                            spread_threshold_usd_mwh=np.inf)
    assert storm.floor_usd_mwh() == storm.floor_usd_mwh(follow_last=False) == 9000.0  # Uri: unchanged
    # The learned model's test is the same one.
    assert model_detect_scarcity(rt, np.full(8, 30.0), PriceModelConfig()).floor_usd_mwh() == 50.0


def test_the_rules_plan_at_the_last_price_after_a_spike_ends() -> None:
    now = NOW.to_pydatetime()
    after = RecordedForecaster(PROFILE, spike_then_calm())(now, NOW, 48)
    assert has_fallback(after.fallbacks, FallbackCode.PRICE_SCARCITY)
    hours_ahead = (after.interval_start - NOW).total_seconds().to_numpy() / 3600.0
    hold = ForecastConfig().scarcity_hold_h
    # first interval: the RT blend (the last price, 50); then DA 30 floored at 50 within the hold
    np.testing.assert_allclose(after.price_usd_mwh[hours_ahead < hold], 50.0)
    np.testing.assert_allclose(after.price_usd_mwh[hours_ahead >= hold + 1], 30.0)
    before = RecordedForecaster(PROFILE, spike_then_calm(), config=ForecastConfig(scarcity_floor_follows_last=False))(
        now, NOW, 48)
    assert np.all(before.price_usd_mwh[hours_ahead < hold] >= 2631.0)  # the old floor: the 2-hour mean


def test_no_look_ahead_in_the_floor() -> None:
    now = NOW.to_pydatetime()
    base = RecordedForecaster(PROFILE, spike_then_calm())(now, NOW, 48)
    changed = spike_then_calm()
    later = (changed["market"] == "RT") & (changed["interval_start"] >= NOW)
    changed.loc[later, "price_usd_mwh"] = 9000.0  # everything published after now
    np.testing.assert_array_equal(RecordedForecaster(PROFILE, changed)(now, NOW, 48).price_usd_mwh,
                                  base.price_usd_mwh)


def test_the_loop_runs_again_once_the_spike_has_ended() -> None:
    running = {}
    for name, follow in (("before", False), ("now", True)):
        config = ForecastConfig(scarcity_floor_follows_last=follow)
        loop = ControlLoop(PROFILE, forecaster=RecordedForecaster(PROFILE, spike_then_calm(), config=config),
                           driver=SimulatedFleet(PROFILE), solver=SolveRunner(inline=True))
        running[name] = sum(first_interval_counts(loop.tick(NOW.to_pydatetime()).schedule).values())
        loop.close()
    assert running["before"] == 0 and running["now"] > 0
