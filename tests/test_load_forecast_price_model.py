"""The daemon's learned price model uses the system load forecast its store holds (issue 14): before, the
live model ran without the feature the backtest has. Real ERCOT rows (optimization/data/ercot_dev2: HB_HUBAVG
RT and DA prices, ERCOT's day-ahead system load forecast, publication ASSUMED 13:00 CT the day before), written
to a real store with their publication times; the daemon's own wiring (price_model_for over the store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")

from hashflex.control.daemon import price_model_for  # noqa: E402
from hashflex.feeds.ercot import publication_times  # noqa: E402
from hashflex.feeds.load_forecast import parse_bundled_load_forecast  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402
from hashflex.store import Store  # noqa: E402

DEV2 = Path(__file__).resolve().parents[1] / "optimization/data/ercot_dev2"
BASE = load_profile("quiet_hollow")
PROFILE = BASE.model_copy(update={"site": BASE.site.model_copy(update={"settlement_point": "HB_HUBAVG"})})
NOW = pd.Timestamp("2024-02-06 20:07", tz="UTC")  # 14:07 CST: after the 13:00 cutoff for Feb 7's hours
END = pd.Timestamp("2024-02-09", tz="UTC")


def _prices() -> pd.DataFrame:
    frames = []
    for name, market, minutes in (("rt_spp_hb_hubavg_15min.csv", "RT", 15), ("dam_spp_hb_hubavg_hourly.csv", "DA", 60)):
        raw = pd.read_csv(DEV2 / name)
        starts = pd.to_datetime(raw["interval_start_utc"], utc=True)
        frames.append(pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=minutes),
                                    "settlement_point": raw["settlement_point"], "market": market,
                                    "price_usd_mwh": raw["price_usd_per_mwh"].astype(float)}))
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[frame["interval_start"] < END].reset_index(drop=True)
    frame["published_at"] = publication_times(frame)
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with Store(tmp_path_factory.mktemp("lf-model") / "hashflex.db") as s:
        s.put_price_history(_prices())
        load = parse_bundled_load_forecast(DEV2 / "system_load_forecast_da_hourly.csv")
        s.put_load_forecast(load[load["interval_start"] < END], source=load.attrs["source"])
        s.flush()
        yield s


def _load_at(model, now: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The load feature grid the daemon's predictor sees at ``now`` (value, published ns), per 15-min slot."""
    predictor = model._predictor(model.fitted, None, now)
    return predictor.load.value, predictor.load.published


def test_the_daemon_model_fits_and_predicts_with_the_stored_load_forecast(store: Store) -> None:
    model = price_model_for(PROFILE, "learned", store=store, background=False)
    assert model.train(NOW), model.short_history or model.last_fit_error
    value, published = _load_at(model, NOW)
    known = np.isfinite(value) & (published <= NOW.value)
    assert known.any(), "the load forecast reached the model"
    # Feb 7 18:00 UTC (12:00 CST): its day-ahead vintage (published Feb 6 19:00 UTC) is known at NOW ...
    stored = store.load_forecast(vintage="day_ahead")
    hour = pd.Timestamp("2024-02-07 18:00", tz="UTC")
    mw = float(stored.loc[stored["interval_start"] == hour, "load_forecast_mw"].iloc[0])
    predictor = model._predictor(model.fitted, None, NOW)
    slot = (hour.value - predictor.origin_ns) // (15 * 60 * 10**9)
    assert predictor.load.value[slot] == pytest.approx(mw) and predictor.load.published[slot] <= NOW.value
    # ... Feb 8's is not (published Feb 7 19:00 UTC): absent, never read early
    later = (pd.Timestamp("2024-02-08 18:00", tz="UTC").value - predictor.origin_ns) // (15 * 60 * 10**9)
    assert not np.isfinite(predictor.load.value[later])
    times = pd.date_range(NOW.ceil("15min"), periods=96, freq="15min")
    assert np.isfinite(model(times, None, NOW)).all() and model.last_source == "learned"


def test_a_posting_published_after_now_changes_nothing(store: Store, tmp_path: Path) -> None:
    model = price_model_for(PROFILE, "learned", store=store, background=False)
    assert model.train(NOW)
    times = pd.date_range(NOW.ceil("15min"), periods=96, freq="15min")
    before = model.quantiles(times, NOW)
    starts = pd.date_range("2024-02-07 06:00", periods=24, freq="h", tz="UTC")
    late = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(hours=1),
                         # SYNTHETIC: a wild revision of hours whose day-ahead vintage NOW knows, published after
                         # NOW (a reader giving the newest posting instead of the vintage known at NOW fails here)
                         "load_forecast_mw": 99_000.0,
                         "published_at": NOW + pd.Timedelta(minutes=30)})
    store.put_load_forecast(late, source="SYNTHETIC revision")
    store.flush()
    after = model.quantiles(times, NOW)
    for q in before:
        np.testing.assert_array_equal(before[q], after[q])
