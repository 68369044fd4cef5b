"""Five-minute SCED prices (issue 14): the NP6-788-CD report shape, crafted here (no contiguous
public 5-minute series is bundled), read into SCED intervals and settled on the 15-minute
time-weighted mean, DST fall-back included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.feeds.ercot import parse_sced_lmp, read_price_file
from hashflex.frames import PriceFileError, interval_grid, time_weighted_mean

HEADER = "SCEDTimestamp,RepeatedHourFlag,SettlementPoint,LMP\n"


def test_irregular_sced_runs_settle_to_the_time_weighted_mean(tmp_path: Path) -> None:
    # Runs at :00:10, :05:10, :09:40, :15:10 local (CDT, UTC−5): the 12:00-12:15 interval holds
    # 20 for 290 s (of which 10 s are before 12:00 and do not count: the first run is at 12:00:10,
    # so the interval is not fully covered → unknown); the next interval is fully covered.
    rows = ["07/01/2025 12:00:10,N,HB_WEST,20", "07/01/2025 12:05:10,N,HB_WEST,20",
            "07/01/2025 12:09:40,N,HB_WEST,2000", "07/01/2025 12:15:10,N,HB_WEST,30",
            "07/01/2025 12:20:05,N,HB_WEST,40", "07/01/2025 12:25:00,N,HB_WEST,50",
            "07/01/2025 12:30:20,N,HB_WEST,60", "07/01/2025 12:09:40,N,HB_NORTH,99"]
    path = tmp_path / "np6-788-cd.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    frame = read_price_file(path, settlement_point="HB_WEST")
    assert set(frame["market"]) == {"RT"} and set(frame["settlement_point"]) == {"HB_WEST"}
    assert frame["interval_start"].iloc[0] == pd.Timestamp("2025-07-01T17:00:10Z")
    assert frame["interval_end"].iloc[2] == pd.Timestamp("2025-07-01T17:15:10Z")
    grid = interval_grid(pd.Timestamp("2025-07-01T17:00Z"), pd.Timedelta(minutes=15), 2)
    settled = time_weighted_mean(frame["interval_start"], frame["interval_end"], frame["price_usd_mwh"],
                                 grid, pd.Timedelta(minutes=15))
    assert np.isnan(settled[0])
    # 12:15:00-12:15:10 at 2000 (10 s), 12:15:10-12:20:05 at 30 (295 s), 12:20:05-12:25:00 at 40 (295 s),
    # 12:25:00-12:30:00 at 50 (300 s): (20000 + 8850 + 11800 + 15000) / 900
    assert settled[1] == pytest.approx((10 * 2000 + 295 * 30 + 295 * 40 + 300 * 50) / 900)


def test_fall_back_hour_and_bad_rows() -> None:
    text = HEADER + "11/02/2025 01:30:00,N,HB_WEST,10\n11/02/2025 01:30:00,Y,HB_WEST,20\n"
    frame = parse_sced_lmp(text)
    assert (frame["interval_start"].diff().dropna() == pd.Timedelta(hours=1)).all(), "the repeated hour is kept apart"
    with pytest.raises(PriceFileError, match="line 2: RepeatedHourFlag 'X'"):
        parse_sced_lmp(HEADER + "07/01/2025 12:00:10,X,HB_WEST,20\n")
    with pytest.raises(PriceFileError, match="line 2: SCEDTimestamp .* does not exist"):
        parse_sced_lmp(HEADER + "03/09/2025 02:30:00,N,HB_WEST,20\n")


def test_a_sced_file_passed_as_day_ahead_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sced.csv"
    path.write_text(HEADER + "07/01/2025 12:00:10,N,HB_WEST,20\n")
    with pytest.raises(ValueError, match="DA"):
        read_price_file(path, market="DA")


def test_the_backtest_settles_each_interval_at_the_time_weighted_mean() -> None:
    """Before, the backtest took the 5-minute price in force at each interval start (20, not 680)."""
    from hashflex.backtest.runner import build_actuals
    from hashflex.profile import load_profile

    profile = load_profile("quiet_hollow")
    starts = pd.date_range("2025-07-01T00:00", periods=3 * 96 * 2, freq="5min", tz=profile.tz).tz_convert("UTC")
    prices = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=5),
                           "settlement_point": profile.site.settlement_point, "market": "RT",
                           "price_usd_mwh": np.tile([20.0, 20.0, 2000.0], 2 * 96)})
    actuals = build_actuals(profile, prices, "2025-07-01", "2025-07-02")
    assert np.allclose(actuals.price_usd_mwh, 680.0)


def test_run_simulate_settles_five_minute_prices_at_the_interval_mean(tmp_path: Path) -> None:
    """Found by a newcomer: `run --simulate --prices five.csv` recorded the first 5-minute price of
    each interval (20) where `plan` used the 15-minute mean (50)."""
    from hashflex.profile import load_profile
    from hashflex.sim.site import run_simulation

    profile = load_profile("quiet_hollow")
    starts = pd.date_range("2025-07-01T00:00", periods=12 * 24 * 2, freq="5min", tz=profile.tz).tz_convert("UTC")
    prices = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=5),
                           "settlement_point": profile.site.settlement_point, "market": "RT",
                           "price_usd_mwh": np.tile([20.0, 50.0, 80.0], 12 * 16)})
    result = run_simulation(profile, prices, starts[12 * 24], 4, dr_events=[])
    assert np.allclose(result.intervals["price_usd_mwh"], 50.0)


def test_the_ercot_api_shape_of_np6_788_cd_reads_as_the_report_does() -> None:
    """Issue 14: the public API's ``/np6-788-cd/lmp_node_zone_hub`` pages (``fields``/``data``/``_meta``;
    ``SCEDTimestamp`` yyyy-MM-ddTHH:mm:ss Central, ``repeatHourFlag`` boolean) give the same frame as the
    report file, over two pages; a bad flag or time names its page and row."""
    from hashflex.feeds.ercot import parse_ercot_api

    fields = [{"name": "SCEDTimestamp"}, {"name": "repeatHourFlag"}, {"name": "settlementPoint"}, {"name": "LMP"}]
    page1 = {"_meta": {"totalPages": 2, "currentPage": 1}, "fields": fields,
             "data": [["2025-07-01T12:00:00", False, "HB_WEST", 20.0], ["2025-07-01T12:05:00", False, "HB_WEST", 20.0]]}
    page2 = {"_meta": {"totalPages": 2, "currentPage": 2}, "fields": fields,
             "data": [["2025-07-01T12:10:00", False, "HB_WEST", 2000.0], ["2025-07-01T12:15:00", False, "HB_WEST", 30.0]]}
    api = parse_ercot_api([page1, page2], settlement_point="HB_WEST")
    report = parse_sced_lmp(HEADER + "07/01/2025 12:00:00,N,HB_WEST,20\n07/01/2025 12:05:00,N,HB_WEST,20\n"
                            "07/01/2025 12:10:00,N,HB_WEST,2000\n07/01/2025 12:15:00,N,HB_WEST,30\n")
    pd.testing.assert_frame_equal(api.reset_index(drop=True), report.reset_index(drop=True))
    grid = interval_grid(pd.Timestamp("2025-07-01T17:00Z"), pd.Timedelta(minutes=15), 1)
    settled = time_weighted_mean(api["interval_start"], api["interval_end"], api["price_usd_mwh"], grid,
                                 pd.Timedelta(minutes=15))
    assert settled[0] == pytest.approx((20 + 20 + 2000) / 3)  # 680: the 20/20/2,000 case of issue 11
    # The fall-back hour: the repeated pass is flagged true, an hour after the first.
    fall = {"fields": fields, "data": [["2025-11-02T01:30:00", False, "HB_WEST", 10.0],
                                       ["2025-11-02T01:30:00", True, "HB_WEST", 20.0]]}
    frame = parse_ercot_api(fall)
    assert (frame["interval_start"].diff().dropna() == pd.Timedelta(hours=1)).all()
    with pytest.raises(PriceFileError, match="page 2 row 1.*repeatHourFlag"):
        parse_ercot_api([page1, {**page2, "data": [["2025-07-01T12:10:00", "maybe", "HB_WEST", 1.0]]}])
    with pytest.raises(PriceFileError, match="page 1 row 2.*SCEDTimestamp"):
        parse_ercot_api({**page1, "_meta": None, "data": [page1["data"][0], ["12:05 yesterday", False, "HB_WEST", 1.0]]})
