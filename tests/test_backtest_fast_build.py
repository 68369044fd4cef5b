"""The problem builder's per-tick helpers, made cheap for the backtest (issue 18), give the same
answers as the straightforward rule they replace, on random horizons, alert days and settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize.build import four_cp_limits_kw
from hashflex.profile import load_profile


def four_cp_reference(profile, interval_start: pd.DatetimeIndex, alert_days) -> np.ndarray:
    """The rule as written before (one date lookup per interval): the alert limit inside a window
    of the months on an alert day, or on every window day with ``hold_without_alert``; inf elsewhere."""
    limits = np.full(len(interval_start), np.inf)
    cp = profile.grid.four_cp
    if cp is None or not cp.enabled:
        return limits
    local = interval_start.tz_convert(profile.tz)
    days = {pd.Timestamp(d).date() for d in (alert_days or set())}
    in_month = np.isin(local.month, cp.months)
    in_window = (local.hour >= cp.window_start_hour) & (local.hour < cp.window_end_hour)
    on_alert = np.array([ts.date() in days for ts in local]) | cp.hold_without_alert
    limits[in_month & in_window & on_alert] = cp.alert_import_limit_kw
    return limits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start_day=st.integers(0, 365 * 2), start_minute=st.integers(0, 95), periods=st.sampled_from([1, 4, 96, 288]),
       minutes=st.sampled_from([5, 15, 60]), hold=st.booleans(), enabled=st.booleans(),
       alert_offsets=st.lists(st.integers(-2, 4), max_size=4), window=st.sampled_from([(15, 19), (0, 24), (13, 14)]))
def test_four_cp_limits_match_the_rule(start_day, start_minute, periods, minutes, hold, enabled, alert_offsets,
                                       window) -> None:
    base = load_profile("west_texas")
    cp = base.grid.four_cp.model_copy(update={"hold_without_alert": hold, "enabled": enabled,
                                              "window_start_hour": window[0], "window_end_hour": window[1]})
    profile = base.model_copy(update={"grid": base.grid.model_copy(update={"four_cp": cp})})
    # Through both DST changes of 2024 and 2025 (America/Chicago), at any quarter hour.
    start = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=start_day, minutes=15 * start_minute)
    index = pd.date_range(start, periods=periods, freq=f"{minutes}min")
    first_local = index[0].tz_convert(profile.tz).normalize()
    alert_days = {(first_local + pd.Timedelta(days=k)).tz_localize(None) for k in alert_offsets}
    got = four_cp_limits_kw(profile, index, alert_days)
    np.testing.assert_array_equal(got, four_cp_reference(profile, index, alert_days))


def test_an_alert_day_in_summer_binds_its_window_only() -> None:
    profile = load_profile("west_texas")
    cp = profile.grid.four_cp
    index = pd.date_range(pd.Timestamp("2025-07-15", tz=profile.tz), periods=96, freq="15min")
    limits = four_cp_limits_kw(profile, index, {pd.Timestamp("2025-07-15")})
    local_hour = index.tz_convert(profile.tz).hour
    in_window = (local_hour >= cp.window_start_hour) & (local_hour < cp.window_end_hour)
    assert (limits[in_window] == cp.alert_import_limit_kw).all() and in_window.sum() == 16
    assert np.isinf(limits[~in_window]).all()
    assert np.isinf(four_cp_limits_kw(profile, index, set())).all()  # no alert, nothing held


def noise_caps_reference(profile, interval_start: pd.DatetimeIndex, minutes: int) -> dict[str, np.ndarray]:
    """The strictest cap at any minute of each interval, every minute converted to local time (as before)."""
    from hashflex.optimize.build import _week_of_caps

    offsets = pd.to_timedelta(np.arange(minutes), unit="min")
    moments = (interval_start.tz_convert("UTC").tz_convert(None).to_numpy()[:, None] + offsets.values[None, :]).ravel()
    local = pd.DatetimeIndex(moments).tz_localize("UTC").tz_convert(profile.tz)
    minute_of_week = np.asarray(local.day_of_week * 1440 + local.hour * 60 + local.minute)
    return {r.id: _week_of_caps(tuple((w.start, w.end, tuple(w.days), w.cap_dba) for w in r.caps))[minute_of_week]
            .reshape(len(interval_start), minutes).min(axis=1) for r in profile.receptors}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["west_texas", "panhandle_120mw", "quiet_hollow"]),
       around=st.sampled_from(["2024-03-10T07:00Z", "2024-11-03T06:00Z", "2025-03-09T08:00Z", "2025-11-02T07:00Z",
                               "2024-12-29T05:00Z", "2025-06-01T00:00Z"]),
       shift_minutes=st.integers(-600, 600), periods=st.sampled_from([1, 3, 48, 288]),
       minutes=st.sampled_from([1, 5, 7, 15, 60]))
def test_noise_caps_match_every_minute_converted(name, around, shift_minutes, periods, minutes) -> None:
    """Across both clock changes (fall back: an hour twice), at starts off the quarter hour too."""
    from hashflex.optimize.build import noise_caps_dba

    profile = load_profile(name)
    start = pd.Timestamp(around) + pd.Timedelta(minutes=shift_minutes)
    index = pd.date_range(start, periods=periods, freq=f"{minutes}min")
    got = noise_caps_dba(profile, index, pd.Timedelta(minutes=minutes))
    want = noise_caps_reference(profile, index, minutes)
    assert got.keys() == want.keys() and want
    for receptor, caps in want.items():
        np.testing.assert_array_equal(got[receptor], caps, err_msg=receptor)
