"""forecast.build_forecast: each rule on tiny hand-made snapshots, no look-ahead, staleness, DST."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from hashflex.data import bundled_path
from hashflex.feeds.fuelmix import intensity_from_fuel_mix_file
from hashflex.feeds.hashprice import bundled_hashprice
from hashflex.forecast import (
    SNAPSHOT_COLUMNS,
    ForecastConfig,
    Snapshot,
    build_forecast,
    snapshot_from_store,
    store_forecaster,
)
from hashflex.messages import (
    DREventMessage,
    ForecastPoint,
    HashpriceMessage,
    NoiseMessage,
    PriceMessage,
    RenewableMessage,
)
from hashflex.profile import parse_profile
from hashflex.store import Store

PROFILE_YAML = """
site: {name: test, settlement_point: LZ_WEST, interval_minutes: 15, horizon_hours: 2}
grid: {import_limit_kw: 1000}
dr: {issuers: [utility], level_import_limit_kw: {1: 500}}
miner_groups:
  - id: g
    model: m
    units: 100
    modes: [{name: stock, power_kw: 3.0, hashrate_th_s: 200, sound_power_dba: 80}]
renewables:
  - {id: pv, kind: solar, capacity_kw: 400}
  - {id: wt, kind: wind, capacity_kw: 300}
receptors:
  - id: house
    distance_m: {g: 500}
    background_dba: 30
    caps: [{name: all, start: "00:00", end: "23:59", cap_dba: 50}]
    sensor_topic: hashflex/test/in/noise/house
    model_margin_db: 1.0
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 50.0}
"""
PROFILE = parse_profile(PROFILE_YAML)
UTC = "UTC"
NOW = pd.Timestamp("2024-06-10 15:00", tz=UTC)  # 10:00 CDT
Q = pd.Timedelta(minutes=15)
H = pd.Timedelta(hours=1)


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


def prices(rows: list[tuple[pd.Timestamp, pd.Timedelta, str, float, pd.Timestamp]]) -> pd.DataFrame:
    """(start, length, market, price, published_at) → snapshot price frame at LZ_WEST."""
    return pd.DataFrame(
        [(s, s + n, "LZ_WEST", m, p, pub) for s, n, m, p, pub in rows],
        columns=list(SNAPSHOT_COLUMNS["prices"]),
    )


def da_day(first: pd.Timestamp, hours: int, price: float, published: pd.Timestamp) -> list[tuple]:
    return [(first + k * H, H, "DA", price + k, published) for k in range(hours)]


def frame(name: str, rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(SNAPSHOT_COLUMNS[name]))


def forecast(snapshot: Snapshot, now: pd.Timestamp = NOW, start: pd.Timestamp | None = None, T: int = 8,
             **kw):  # noqa: ANN201, N803
    return build_forecast(PROFILE, snapshot, now, start if start is not None else now, T, **kw)


# ------------------------------------------------------------------------------------ prices
def test_day_ahead_prices_cover_their_hour() -> None:
    snap = Snapshot(prices=prices(da_day(ts("2024-06-10 05:00"), 24, 30.0, ts("2024-06-09 18:00"))))
    out = forecast(snap)
    # 15:00 UTC is the 11th DA hour of the day starting 05:00 UTC → 30 + 10
    assert list(out.price_usd_mwh) == [40.0] * 4 + [41.0] * 4
    assert set(out.price_source) == {"DA"}
    assert out.input_ages_s["price_da"] == pytest.approx(21 * 3600)
    assert not [f for f in out.fallbacks if f.startswith("price")]


def test_rt_blend_decays_linearly_to_day_ahead_over_an_hour() -> None:
    rows = da_day(ts("2024-06-10 05:00"), 24, 30.0, ts("2024-06-09 18:00"))
    rows.append((NOW - Q, Q, "RT", 200.0, NOW - pd.Timedelta(minutes=1)))
    out = forecast(Snapshot(prices=prices(rows)))
    assert out.price_usd_mwh[:5] == pytest.approx([200.0, 160.0, 120.0, 80.0, 41.0])
    assert out.price_source[0] == "DA + RT blend" and out.price_source[4] == "DA"


def test_stale_rt_is_not_blended() -> None:
    rows = da_day(ts("2024-06-10 05:00"), 24, 30.0, ts("2024-06-09 18:00"))
    rows.append((NOW - 3 * H, Q, "RT", 200.0, NOW - 3 * H + Q))
    out = forecast(Snapshot(prices=prices(rows)))
    assert out.price_usd_mwh[0] == 40.0
    assert any("not blended" in f for f in out.fallbacks)


def test_beyond_day_ahead_uses_rt_of_same_time_yesterday_then_the_cap() -> None:
    rows = [(NOW, H, "DA", 40.0, NOW - 20 * H)]  # DA only for the first hour
    rows.append((NOW + H - pd.Timedelta(days=1), Q, "RT", 25.0, NOW - 20 * H))  # yesterday 11:00 CDT
    out = forecast(Snapshot(prices=prices(rows)))
    assert list(out.price_usd_mwh) == [40.0] * 4 + [25.0, 5000.0, 5000.0, 5000.0]
    assert out.price_source[4] == "RT same time yesterday"
    assert out.price_source[5] == "unknown: price cap"
    assert any("yesterday" in f for f in out.fallbacks)
    assert any("5000 $/MWh" in f for f in out.fallbacks)


def test_no_price_at_all_curtails_via_the_cap() -> None:
    out = forecast(Snapshot(), config=ForecastConfig(unknown_price_usd_mwh=9999.0))
    assert (out.price_usd_mwh == 9999.0).all()
    assert out.input_ages_s["price_da"] is None and out.input_ages_s["price_rt"] is None


def test_external_forecaster_fills_before_the_yesterday_fallback() -> None:
    rows = [(NOW, H, "DA", 40.0, NOW - 20 * H), (NOW + 2 * H, H, "DA", 99.0, NOW + H)]  # 2nd: future post
    seen = {}

    def hook(times: pd.DatetimeIndex, snap: Snapshot, now: pd.Timestamp) -> np.ndarray:
        seen["max_published"] = snap.prices["published_at"].max()
        out = np.full(len(times), np.nan)
        out[4:6] = 33.0
        return out

    result = forecast(Snapshot(prices=prices(rows)), price_forecaster=hook)
    assert seen["max_published"] <= NOW  # the hook never sees the future
    assert list(result.price_usd_mwh[:6]) == [40.0] * 4 + [33.0, 33.0]
    assert result.price_source[4] == "external"


def test_dst_fall_back_day_ahead_has_25_hours() -> None:
    # 2024-11-03 CT: 25 hours, 05:00 UTC .. 06:00 UTC next day; DA published the day before
    first = ts("2024-11-03 05:00")
    snap = Snapshot(prices=prices(da_day(first, 25, 10.0, ts("2024-11-02 18:00"))))
    out = forecast(snap, now=ts("2024-11-03 04:00"), start=first, T=100)
    assert set(out.price_source) == {"DA"}
    local = out.interval_start.tz_convert("America/Chicago")
    one_am = out.price_usd_mwh[(local.hour == 1) & (local.minute == 0)]
    assert list(one_am) == [11.0, 12.0]  # 01:00 CDT and the repeated 01:00 CST


def test_dst_yesterday_fallback_matches_wall_clock() -> None:
    # now: 2024-11-04 09:00 CST = 15:00 UTC; yesterday 09:00 was CDT... no: 11-03 09:00 is CST too.
    # Take 2024-11-04 00:30 CST (06:30 UTC): same wall time yesterday is 11-03 00:30 CDT = 05:30 UTC,
    # 25 h earlier, not 24 h.
    now = ts("2024-11-04 06:30")
    rows = [(ts("2024-11-03 05:30"), Q, "RT", 7.0, ts("2024-11-03 05:46")),
            (ts("2024-11-03 06:30"), Q, "RT", 99.0, ts("2024-11-03 06:46"))]
    out = forecast(Snapshot(prices=prices(rows)), now=now, T=1)
    assert out.price_usd_mwh[0] == 7.0


# ----------------------------------------------------------------------------- no look-ahead
def future_rows(now: pd.Timestamp) -> Snapshot:
    """Everything published one second after ``now``, with values that would change the result."""
    late = now + pd.Timedelta(seconds=1)
    return Snapshot(
        prices=prices([(now + k * Q, Q, m, 777.0, late) for k in range(8) for m in ("DA", "RT")]
                      + [(now - Q, Q, "RT", 888.0, late)]),
        renewable_observations=frame("renewable_observations", [("pv", now - Q, 399.0, late),
                                                                ("wt", now - Q, 299.0, late)]),
        renewable_forecasts=frame("renewable_forecasts", [("pv", now + k * Q, 350.0, late) for k in range(8)]),
        noise=frame("noise", [("house", now - Q, 60.0, 40.0, late)]),
        carbon=frame("carbon", [(now, 999.0, late)]),
        fuelmix_intensity=frame("fuelmix_intensity", [(now - H, 888.0, late)]),
        hashprice=frame("hashprice", [(now - H, 1.0, late)]),
        dr_limits=frame("dr_limits", [(now, now + H, 0.0, "DR:late", late)]),
    )


def concat(a: Snapshot, b: Snapshot) -> Snapshot:
    return Snapshot(**{f.name: pd.concat([getattr(a, f.name), getattr(b, f.name)], ignore_index=True)
                       for f in dataclasses.fields(Snapshot)})


def test_data_published_after_now_is_ignored() -> None:
    base = Snapshot(
        prices=prices(da_day(ts("2024-06-10 05:00"), 24, 30.0, ts("2024-06-09 18:00"))),
        renewable_forecasts=frame("renewable_forecasts", [("pv", NOW + k * H, 100.0, NOW - H) for k in range(3)]),
        hashprice=frame("hashprice", [(NOW - 30 * H, 45.0, NOW - 6 * H)]),
    )
    before = forecast(base)
    after = forecast(concat(base, future_rows(NOW)))
    for name in ("price_usd_mwh", "renewable_kw", "intensity_kg_per_mwh", "hashprice_usd_per_ph_day",
                 "import_limit_kw"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name), err_msg=name)
    assert before.noise_margin_db == after.noise_margin_db
    assert before.fallbacks == after.fallbacks
    # ... and the same rows are used once ``now`` passes their publication
    later = forecast(concat(base, future_rows(NOW)), now=NOW + pd.Timedelta(seconds=1))
    assert later.hashprice_usd_per_ph_day[0] == 1.0 and later.import_limit_kw[0] == 0.0


# -------------------------------------------------------------------------------- renewables
def test_renewable_forecast_then_diurnal_profile_solar_zero_at_night() -> None:
    now = ts("2024-06-10 23:00")  # 18:00 CDT
    history = [("pv", ts("2024-06-09 05:00") + k * H, (300.0 if 12 <= (k % 24) <= 23 else 0.0),
                ts("2024-06-09 05:00") + k * H) for k in range(42)]  # local hour = k % 24
    fc = [("pv", now + k * H, 200.0, now - H) for k in range(2)]  # 18:00, 19:00 CDT
    snap = Snapshot(renewable_observations=frame("renewable_observations", history),
                    renewable_forecasts=frame("renewable_forecasts", fc))
    out = forecast(snap, now=now, T=32)  # 8 hours, to 02:00 CDT
    src = out.renewable_source["pv"]
    assert src[:8] == ("forecast",) * 8
    assert out.renewable_kw[0] == 200.0
    local_hour = out.interval_start.tz_convert("America/Chicago").hour
    night = (local_hour >= 0) & (local_hour < 5)
    assert (out.renewable_kw[night] == 0.0).all()
    assert "diurnal profile" in src[8:]
    assert any(f.startswith("renewable pv") for f in out.fallbacks)


def test_stale_renewable_forecast_is_not_used() -> None:
    fc = [("pv", NOW + k * Q, 200.0, NOW - 7 * H) for k in range(8)]
    out = forecast(Snapshot(renewable_forecasts=frame("renewable_forecasts", fc)))
    assert (out.renewable_kw == 0.0).all()
    assert set(out.renewable_source["pv"]) == {"no data: 0 kW"}
    assert out.input_ages_s["renewable:pv:forecast"] == pytest.approx(7 * 3600)


def test_wind_persistence_for_the_first_hour_only() -> None:
    obs = [("wt", NOW - pd.Timedelta(minutes=5), 120.0, NOW - pd.Timedelta(minutes=4))]
    out = forecast(Snapshot(renewable_observations=frame("renewable_observations", obs)))
    wind = out.renewable_source["wt"]
    assert wind[:4] == ("persistence",) * 4
    assert out.renewable_kw[:4] == pytest.approx([120.0] * 4)
    # after the first hour: the diurnal profile from that one reading's hour is 10:00 CDT only
    assert out.renewable_kw[4] == 0.0


def test_forecast_is_clipped_to_capacity() -> None:
    fc = [("pv", NOW, 9999.0, NOW - H)]
    out = forecast(Snapshot(renewable_forecasts=frame("renewable_forecasts", fc)), T=1)
    assert out.renewable_kw[0] == 400.0


# ------------------------------------------------------------------------------------ carbon
def test_carbon_feed_then_fuelmix_profile_then_static() -> None:
    feed = [(NOW, 250.0, NOW - pd.Timedelta(minutes=2))]  # valid 10:00-11:00 CDT
    mix = [(NOW - pd.Timedelta(days=1) + H, 333.0, NOW - pd.Timedelta(days=1) + 2 * H)]  # 11:00 CDT yesterday
    snap = Snapshot(carbon=frame("carbon", feed), fuelmix_intensity=frame("fuelmix_intensity", mix))
    out = forecast(snap, T=12)
    assert list(out.intensity_kg_per_mwh) == [250.0] * 4 + [333.0] * 4 + [400.0] * 4
    assert out.intensity_source[0] == "feed"
    assert out.intensity_source[4] == "fuel-mix profile (recent days)"
    assert out.intensity_source[8] == "profile default"


def test_stale_carbon_feed_falls_back() -> None:
    feed = [(NOW, 250.0, NOW - 3 * H)]
    out = forecast(Snapshot(carbon=frame("carbon", feed)), T=1)
    assert out.intensity_kg_per_mwh[0] == 400.0
    assert out.input_ages_s["carbon_feed"] == pytest.approx(3 * 3600)


def test_fuelmix_climatology_from_the_real_bundled_file() -> None:
    hourly = intensity_from_fuel_mix_file(bundled_path("fuelmix/IntGenbyFuel2023-03_11.csv"))
    mix = hourly.assign(published_at=hourly["interval_end"])[list(SNAPSHOT_COLUMNS["fuelmix_intensity"])]
    # a year later there is no recent fuel-mix data: same-month, same-hour mean of November 2023
    now = ts("2024-11-20 18:00")  # 12:00 CST
    out = forecast(Snapshot(fuelmix_intensity=mix), now=now, T=4)
    local = hourly["interval_start"].dt.tz_convert("America/Chicago")
    expected = hourly.loc[(local.dt.month == 11) & (local.dt.hour == 12), "intensity_kg_per_mwh"].mean()
    assert out.intensity_kg_per_mwh == pytest.approx([expected] * 4)
    assert out.intensity_source[0] == "fuel-mix climatology (same month)"
    # during November 2023 itself, the recent-days profile is used and only past hours count
    during = forecast(Snapshot(fuelmix_intensity=mix), now=ts("2023-11-15 18:00"), T=4)
    assert during.intensity_source[0] == "fuel-mix profile (recent days)"


# --------------------------------------------------------------------------------- hashprice
def test_hashprice_feed_or_profile() -> None:
    fresh = forecast(Snapshot(hashprice=frame("hashprice", [(NOW - 30 * H, 45.0, NOW - 6 * H)])))
    assert (fresh.hashprice_usd_per_ph_day == 45.0).all()
    stale = forecast(Snapshot(hashprice=frame("hashprice", [(NOW - 30 * H, 45.0, NOW - 4 * 24 * H)])))
    assert (stale.hashprice_usd_per_ph_day == 50.0).all() and stale.hashprice_source == "profile"
    assert any(f.startswith("hashprice") for f in stale.fallbacks)


def test_hashprice_from_bundled_data_is_known_only_after_the_day() -> None:
    hp = bundled_hashprice()[list(SNAPSHOT_COLUMNS["hashprice"])]
    during = forecast(Snapshot(hashprice=hp), now=ts("2025-03-08 12:00"), T=1)
    assert during.hashprice_source == "feed (2025-03-07)"
    after = forecast(Snapshot(hashprice=hp), now=ts("2025-03-09 00:00"), T=1)
    assert after.hashprice_usd_per_ph_day[0] == pytest.approx(48.998, abs=1e-3)


# ------------------------------------------------------------------------------------- limits
def test_dr_limits_take_the_minimum_over_the_interval() -> None:
    rows = [(NOW + pd.Timedelta(minutes=20), NOW + H, 300.0, "DR:a", NOW - H),
            (NOW + 30 * pd.Timedelta(minutes=1), pd.NaT, 600.0, "DR:b", NOW - H)]
    out = forecast(Snapshot(dr_limits=frame("dr_limits", rows)))
    assert out.import_limit_kw[0] == np.inf
    assert list(out.import_limit_kw[1:6]) == [300.0, 300.0, 300.0, 600.0, 600.0]
    assert out.import_limit_source[1] == "DR:a" and out.import_limit_source[7] == "DR:b"
    problem = out.to_problem(PROFILE)
    assert problem.import_limit_kw[0] == 1000.0 and problem.import_limit_kw[1] == 300.0
    assert problem.import_limit_source[1] == "DR:a"


# -------------------------------------------------------------------------------------- noise
def test_noise_offset_is_an_ewma_and_only_tightens() -> None:
    rows = [("house", NOW - (3 - k) * Q, m, 40.0, NOW - (3 - k) * Q) for k, m in enumerate([42.0, 44.0, 43.0])]
    out = forecast(Snapshot(noise=frame("noise", rows)), config=ForecastConfig(noise_ewma_alpha=0.5))
    # EWMA (alpha 0.5, seeded with the first): 2 → 3 → 3
    assert out.noise_offset_db["house"] == pytest.approx(3.0)
    assert out.noise_margin_db["house"] == pytest.approx(3.0)
    quiet = [("house", NOW - Q, 35.0, 40.0, NOW - Q)]
    out = forecast(Snapshot(noise=frame("noise", quiet)))
    assert out.noise_offset_db["house"] == pytest.approx(-5.0)
    assert out.noise_margin_db["house"] == 1.0  # the model over-predicts: keep the profile margin


def test_no_recent_noise_reading_uses_the_profile_margin() -> None:
    old = [("house", NOW - 2 * H, 60.0, 40.0, NOW - 2 * H)]
    out = forecast(Snapshot(noise=frame("noise", old)))
    assert out.noise_margin_db["house"] == 1.0 and out.noise_offset_db["house"] is None
    assert any(f.startswith("noise house") for f in out.fallbacks)
    problem = out.to_problem(PROFILE)
    assert problem.receptors[0].margin_db == 1.0


def test_to_problem_carries_every_array() -> None:
    rows = [("house", NOW - Q, 44.0, 40.0, NOW - Q)]
    snap = Snapshot(prices=prices(da_day(ts("2024-06-10 05:00"), 24, 30.0, ts("2024-06-09 18:00"))),
                    noise=frame("noise", rows), carbon=frame("carbon", [(NOW, 250.0, NOW)]))
    out = forecast(snap)
    problem = out.to_problem(PROFILE)
    assert problem.T == 8
    np.testing.assert_array_equal(problem.price_usd_mwh, out.price_usd_mwh)
    np.testing.assert_array_equal(problem.intensity_kg_per_mwh, out.intensity_kg_per_mwh)
    assert problem.receptors[0].margin_db == pytest.approx(4.0)
    assert (problem.hashprice_usd_per_ph_day == 50.0).all()


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        build_forecast(PROFILE, Snapshot(), pd.Timestamp("2024-06-10 15:00"), NOW, 4)


def test_missing_snapshot_column_is_named() -> None:
    with pytest.raises(ValueError, match="snapshot.carbon"):
        forecast(Snapshot(carbon=pd.DataFrame({"timestamp": []})))


# ---------------------------------------------------------------------------------- the store
def test_snapshot_from_store_respects_receipt_times(tmp_path) -> None:  # noqa: ANN001
    now = NOW.to_pydatetime()
    before, after = now - timedelta(minutes=10), now + timedelta(minutes=10)
    with Store(tmp_path / "s.db") as store:
        for k in range(8):
            start = now + k * timedelta(minutes=15)
            store.put(PriceMessage(settlement_point="LZ_WEST", market="DA", interval_start=start,
                                   interval_end=start + timedelta(minutes=15), price_usd_mwh=30.0 + k,
                                   published_at=now - timedelta(hours=20)))
        store.put(PriceMessage(settlement_point="LZ_WEST", market="DA", interval_start=now + timedelta(hours=2),
                               interval_end=now + timedelta(hours=3), price_usd_mwh=1.0, published_at=after))
        store.put(RenewableMessage(source_id="pv", power_kw=100.0, timestamp=before,
                                   forecast=[ForecastPoint(interval_start=now + k * timedelta(hours=1), power_kw=150.0)
                                             for k in range(3)]), received_at=before)
        store.put(NoiseMessage(receptor_id="house", laeq_dba=45.0, averaging_s=60, timestamp=before,
                               meter_class=1), received_at=before)
        store.put(HashpriceMessage(hashprice_usd_per_ph_day=47.0, timestamp=before, source="pool"),
                  received_at=before)
        store.put(HashpriceMessage(hashprice_usd_per_ph_day=1.0, timestamp=after, source="pool"), received_at=after)
        store.put(DREventMessage(event_id="e1", modification_number=0, program="utility", start=now,
                                 end=now + timedelta(minutes=30), level=1, issuer="utility"), received_at=before)
        store.put(DREventMessage(event_id="e2", modification_number=0, program="utility", start=now,
                                 import_limit_kw=0.0, issuer="stranger"), received_at=before)
        store.flush()
        snap = snapshot_from_store(store, now, PROFILE, noise_model=lambda receptor, t: 41.0)
        via_callable = store_forecaster(PROFILE, store, noise_model=lambda receptor, t: 41.0)(now, NOW, 8)
    assert snap.prices["published_at"].max() <= NOW
    assert len(snap.renewable_forecasts) == 3
    # DR messages in the store never bind by themselves: the limits book is the only source.
    assert snap.dr_limits.empty
    out = build_forecast(PROFILE, snap, now, now, 8)
    assert list(out.price_usd_mwh) == [30.0 + k for k in range(8)]
    assert out.renewable_kw[0] == 150.0
    assert out.hashprice_usd_per_ph_day[0] == 47.0
    assert np.isinf(out.import_limit_kw).all()
    assert out.noise_offset_db["house"] == pytest.approx(4.0)
    assert out.input_ages_s["noise:house"] == pytest.approx(600.0)
    np.testing.assert_array_equal(via_callable.price_usd_mwh, out.price_usd_mwh)
    assert via_callable.noise_margin_db == out.noise_margin_db


def test_dst_spring_forward_yesterday_fallback_shifts_forward() -> None:
    # 2024-03-11 02:30 CDT (07:30 UTC); 02:30 on 03-10 did not exist → 03:00 CDT = 08:00 UTC
    now = ts("2024-03-11 07:30")
    rows = [(ts("2024-03-10 08:00"), Q, "RT", 5.0, ts("2024-03-10 08:16"))]
    out = forecast(Snapshot(prices=prices(rows)), now=now, T=1)
    assert out.price_usd_mwh[0] == 5.0


def test_naive_snapshot_times_are_refused() -> None:
    rows = frame("carbon", [(pd.Timestamp("2024-06-10 15:00"), 250.0, pd.Timestamp("2024-06-10 14:00"))])
    with pytest.raises(ValueError, match="snapshot.carbon.timestamp: naive"):
        forecast(Snapshot(carbon=rows))


def test_scaled_ercot_solar_shape_as_site_forecast() -> None:
    from hashflex.feeds.renewables import as_forecast_rows, parse_renewable_report, scale_to_site
    from test_renewables_feed import real_file

    report = parse_renewable_report(real_file("solar_gen_apr-2025.csv"))
    rows = as_forecast_rows(scale_to_site(report, 400.0, fleet_capacity_mw=30_000.0, prefer="forecast"), "pv")
    posted = report["posted_at"].iloc[0]  # 2025-04-10 23:00 UTC (18:00 CDT)
    early = forecast(Snapshot(renewable_forecasts=rows), now=posted - H, T=4)
    assert set(early.renewable_source["pv"]) == {"no data: 0 kW"}  # not yet posted
    out = forecast(Snapshot(renewable_forecasts=rows), now=posted, T=4)
    assert out.renewable_source["pv"] == ("forecast",) * 4
    # 18:00-19:00 CDT: STPPF 14,997 MW of 30,000 → 200 kW of 400
    assert out.renewable_kw[0] == pytest.approx(400.0 * 14997.0 / 30000.0)
