"""RecordedForecaster's array path (issue 18): the no-look-ahead filter applied from arrays built once
per history gives, to the bit, the forecast of the frame path (``build_forecast`` on
:meth:`RecordedForecaster.snapshot`, filtered by ``Snapshot.known_at``), and sees nothing published
after ``now``.

Real bundled prices (ERCOT RTM/DAM Feb 2020, LZ_WEST) with SYNTHETIC changes on top: later revisions,
ties, rows never published (NaT), prices in a non-UTC zone, SYNTHETIC renewables and hashprice.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.runner import load_prices
from hashflex.data import bundled_path
from hashflex.forecast import Forecast, RecordedForecaster, Snapshot, build_forecast
from hashflex.profile import SiteProfile, load_profile
from hashflex.sim.site import published_at


def _flat(forecast: Forecast) -> dict:
    out = {}
    for f in dataclasses.fields(forecast):
        value = getattr(forecast, f.name)
        if isinstance(value, pd.DatetimeIndex):
            value = (str(value.dtype), value.asi8.tobytes())
        elif isinstance(value, np.ndarray):
            value = (value.dtype.str, value.tobytes())  # to the bit
        elif f.name == "fallbacks":
            value = [(str(x), str(getattr(x, "code", ""))) for x in value]
        out[f.name] = value
    return out


@pytest.fixture(scope="module")
def profile() -> SiteProfile:
    data = load_profile("west_texas").model_dump()
    data["renewables"].append({"id": "wind_1", "kind": "wind", "capacity_kw": 5000.0})
    return SiteProfile.model_validate(data)


@pytest.fixture(scope="module")
def history(profile: SiteProfile) -> dict[str, pd.DataFrame]:
    """Bundled prices with SYNTHETIC revisions, ties and never-published rows; SYNTHETIC renewables and hashprice."""
    rng = np.random.default_rng(18)
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")]).copy()
    prices["published_at"] = published_at(prices)
    prices = prices[(prices["interval_start"] >= pd.Timestamp("2020-02-07", tz="UTC"))
                    & (prices["interval_start"] < pd.Timestamp("2020-02-13", tz="UTC"))].reset_index(drop=True)
    spike = ((prices["market"] == "RT") & (prices["interval_start"] >= pd.Timestamp("2020-02-10T18:00Z"))
             & (prices["interval_start"] < pd.Timestamp("2020-02-10T19:30Z")))
    prices.loc[spike, "price_usd_mwh"] = 2500.0 + 100.0 * np.arange(int(spike.sum()))
    revised = prices[prices["market"] == "RT"].sample(40, random_state=1).copy()
    revised["price_usd_mwh"] += 3.0
    revised["published_at"] += pd.Timedelta(minutes=30)
    tied = prices[prices["market"] == "DA"].sample(30, random_state=3).copy()
    tied["price_usd_mwh"] += 1.0
    never = prices[prices["market"] == "RT"].sample(20, random_state=4).copy()
    never["price_usd_mwh"] = 9999.0
    never["published_at"] = pd.Series(pd.NaT, index=never.index, dtype=prices["published_at"].dtype)  # never known
    prices = pd.concat([prices, revised, tied, never], ignore_index=True)
    t = pd.date_range("2020-02-06", "2020-02-13", freq="15min", tz="UTC", inclusive="left")
    obs = pd.concat([pd.DataFrame({"source_id": sid, "timestamp": t, "power_kw": rng.uniform(0, cap, len(t)),
                                   "published_at": t + pd.Timedelta(minutes=1)})
                     for sid, cap in (("solar_pv", 10000.0), ("wind_1", 5000.0))], ignore_index=True)
    obs = obs.sort_values("published_at", kind="stable").reset_index(drop=True)
    hd = pd.date_range("2020-02-01", "2020-02-13", freq="1D", tz="UTC")
    hashprice = pd.DataFrame({"timestamp": hd, "hashprice_usd_per_ph_day": rng.uniform(90, 160, len(hd)),
                              "published_at": hd + pd.Timedelta(days=1)})
    return {"prices": prices, "renewables": obs, "hashprice": hashprice}


def _nows() -> pd.DatetimeIndex:
    return pd.date_range("2020-02-10T00:00Z", "2020-02-11T06:00Z", freq="53min")


@pytest.mark.parametrize("zone", ["UTC", "America/Chicago"])
def test_array_path_is_the_frame_path_to_the_bit(profile, history, zone) -> None:
    prices = history["prices"].copy()
    for col in ("interval_start", "interval_end", "published_at"):
        prices[col] = prices[col].dt.tz_convert(zone)  # converted to UTC once, as known_at converts per call
    forecaster = RecordedForecaster(profile, prices, history["renewables"], hashprice=history["hashprice"])
    assert forecaster._known is not None, "the array path must be the one under test"
    for now in _nows():
        fast = forecaster(now, now.ceil("15min"), 96)
        slow = build_forecast(profile, forecaster.snapshot(now), now, now.ceil("15min"), 96)
        assert _flat(fast) == _flat(slow), now


def test_array_path_sees_nothing_published_after_now(profile, history) -> None:
    base = RecordedForecaster(profile, history["prices"], history["renewables"], hashprice=history["hashprice"])
    for now in _nows()[::4]:
        prices, obs, hp = (history[k].copy() for k in ("prices", "renewables", "hashprice"))
        for frame, col in ((prices, "price_usd_mwh"), (obs, "power_kw"), (hp, "hashprice_usd_per_ph_day")):
            later = frame["published_at"].isna() | (frame["published_at"] > now)
            assert later.any(), "the perturbation must have rows to change"
            frame.loc[later, col] = frame.loc[later, col] * 10 + 500
        perturbed = RecordedForecaster(profile, prices, obs, hashprice=hp)
        assert _flat(perturbed(now, now.ceil("15min"), 96)) == _flat(base(now, now.ceil("15min"), 96)), now
        # ... and what was published by now does matter (or the test proves nothing)
        earlier = history["prices"].copy()
        known = earlier["published_at"] <= now
        earlier.loc[known, "price_usd_mwh"] += 50.0
        changed = RecordedForecaster(profile, earlier, history["renewables"], hashprice=history["hashprice"])
        assert _flat(changed(now, now.ceil("15min"), 96)) != _flat(base(now, now.ceil("15min"), 96))


def test_known_snapshot_filters_again_for_an_earlier_time(profile, history) -> None:
    forecaster = RecordedForecaster(profile, history["prices"], history["renewables"], hashprice=history["hashprice"])
    now = pd.Timestamp("2020-02-10T18:00Z")
    known = forecaster._known_snapshot(now)
    earlier = now - pd.Timedelta(hours=19)  # before the last daily hashprice too
    for name in ("prices", "renewable_observations", "hashprice"):
        frame = getattr(known.known_at(earlier), name)
        assert (frame["published_at"] <= earlier).all() and len(frame) < len(getattr(known, name)), name
        pd.testing.assert_frame_equal(getattr(known.known_at(now), name), getattr(known, name))
    assert type(known.known_at(now)) is Snapshot


def test_naive_times_still_raise_at_the_call_naming_the_field(profile, history) -> None:
    prices = history["prices"].copy()
    prices["published_at"] = prices["published_at"].dt.tz_localize(None)
    forecaster = RecordedForecaster(profile, prices)
    assert forecaster._known is None
    with pytest.raises(ValueError, match=r"snapshot\.prices\.published_at"):
        forecaster(pd.Timestamp("2020-02-10T12:00Z"), pd.Timestamp("2020-02-10T12:00Z"), 4)


@pytest.mark.parametrize("tied", [False, True])
def test_wind_persistence_reads_the_latest_row_as_the_frame_sort_did(profile, history, tied) -> None:
    """SYNTHETIC wind rows; with ``tied`` the two latest share a timestamp (the frame sort's order decides)."""
    now = pd.Timestamp("2020-02-10T12:07Z")
    obs = history["renewables"].copy()
    if tied:
        extra = obs[(obs["source_id"] == "wind_1") & (obs["timestamp"] <= now)].iloc[[-1]].copy()
        extra["power_kw"] = 1234.5
        obs = pd.concat([obs, extra], ignore_index=True).sort_values("published_at", kind="stable")
        obs = obs.reset_index(drop=True)
    forecaster = RecordedForecaster(profile, history["prices"], obs, hashprice=history["hashprice"])
    forecast = forecaster(now, now.ceil("15min"), 8)
    mine = obs[(obs["source_id"] == "wind_1") & (obs["timestamp"] <= now)
               & ((now - obs["published_at"]).dt.total_seconds() <= 1800.0)]
    want = float(mine.sort_values("timestamp")["power_kw"].iloc[-1])  # the rule as the frame path wrote it
    assert forecast.renewable_source["wind_1"][0] == "persistence"
    assert 0.0 <= forecast.renewable_kw[0] - want <= 10000.0  # plus the solar source's diurnal share
    # The wind share alone: the same forecast without the solar source's rows.
    only_wind = RecordedForecaster(profile, history["prices"], obs[obs["source_id"] == "wind_1"].reset_index(drop=True),
                                   hashprice=history["hashprice"])
    got = only_wind(now, now.ceil("15min"), 8)
    assert got.renewable_source["solar_pv"][0] == "no data: 0 kW"
    assert got.renewable_kw[0] == want
