"""The time-series contract (issue 11): time-weighted aggregation, gaps, naive times, strictest
limit in an interval, ISO dates — values worked out by hand in each test, plus a property over
interval lengths, DST days and gap patterns."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashflex.frames import (
    TimeFrameError,
    gap_runs,
    interval_grid,
    parse_iso_date,
    require_aware,
    strictest_in_interval,
    time_weighted_mean,
)
from hashflex.optimize.problem import noise_caps_dba
from hashflex.profile import SiteProfile

FIVE, FIFTEEN = pd.Timedelta(minutes=5), pd.Timedelta(minutes=15)


def test_five_minute_prices_average_into_the_fifteen_minute_interval() -> None:
    # 20, 20, 2,000 $/MWh in one 15-min interval: the settlement price is (20+20+2000)/3 = 680,
    # not the first value (20), which once ran the site at full load through a spike.
    starts = pd.date_range("2025-04-01T05:00Z", periods=6, freq="5min")
    grid = interval_grid(pd.Timestamp("2025-04-01T05:00Z"), FIFTEEN, 2)
    prices = time_weighted_mean(starts, starts + FIVE, [20, 20, 2000, 10, 13, 16], grid, FIFTEEN)
    assert prices.tolist() == [680.0, 13.0]


def test_an_hourly_price_covers_each_quarter_and_a_missing_quarter_is_unknown() -> None:
    starts = pd.DatetimeIndex(["2025-04-01T05:00Z", "2025-04-01T07:00Z"])
    grid = interval_grid(pd.Timestamp("2025-04-01T05:00Z"), FIFTEEN, 12)
    prices = time_weighted_mean(starts, starts + pd.Timedelta(hours=1), [30.0, 50.0], grid, FIFTEEN)
    assert prices[:4].tolist() == [30.0] * 4 and np.isnan(prices[4:8]).all() and prices[8:].tolist() == [50.0] * 4
    gaps = gap_runs(grid, prices, FIFTEEN)
    assert len(gaps) == 1 and gaps[0].intervals == 4
    assert gaps[0].start == pd.Timestamp("2025-04-01T06:00Z") and gaps[0].end == pd.Timestamp("2025-04-01T07:00Z")


def test_a_partly_covered_interval_is_unknown_not_its_first_value() -> None:
    starts = pd.DatetimeIndex(["2025-04-01T05:00Z", "2025-04-01T05:05Z"])  # 05:10-05:15 missing
    grid = interval_grid(pd.Timestamp("2025-04-01T05:00Z"), FIFTEEN, 1)
    assert np.isnan(time_weighted_mean(starts, starts + FIVE, [20.0, 20.0], grid, FIFTEEN)).all()


def test_overlapping_rows_are_refused() -> None:
    starts = pd.DatetimeIndex(["2025-04-01T05:00Z", "2025-04-01T05:10Z"])
    with pytest.raises(TimeFrameError, match="overlap"):
        time_weighted_mean(starts, starts + FIFTEEN, [1.0, 2.0], starts, FIFTEEN)


def test_interval_ends_are_exact() -> None:
    grid = interval_grid(pd.Timestamp("2025-04-01T05:00Z"), FIVE, 300)
    ends = grid + FIVE
    assert (ends.second == 0).all() and (ends.microsecond == 0).all() and (ends.nanosecond == 0).all()


def test_naive_times_are_refused_with_their_line() -> None:
    with pytest.raises(TimeFrameError, match=r"solar.csv line 3: interval_start '2025-04-01 04:00' has no UTC offset"):
        require_aware(["2025-04-01T03:00Z", "2025-04-01 04:00"], source="solar.csv", field="interval_start")
    assert require_aware(["2025-04-01T04:00-05:00"], source="x", field="t")[0] == pd.Timestamp("2025-04-01T09:00Z")


@pytest.mark.parametrize("text", ["10/02/2020", "2020-2-10", "Feb 10 2020", "2020-02-10 6pm"])
def test_command_line_dates_are_iso_8601_only(text: str) -> None:
    with pytest.raises(ValueError, match="--from"):
        parse_iso_date(text, option="--from")


def test_iso_dates_parse() -> None:
    assert parse_iso_date("2020-02-10", option="--from") == pd.Timestamp("2020-02-10")
    assert parse_iso_date("2020-02-10T06:00-06:00", option="--from") == pd.Timestamp("2020-02-10T12:00Z")


def test_a_limit_starting_mid_interval_binds_the_whole_interval() -> None:
    grid = interval_grid(pd.Timestamp("2025-04-01T02:00Z"), FIFTEEN, 4)
    limits = strictest_in_interval([pd.Timestamp("2025-04-01T02:10Z")], [pd.Timestamp("2025-04-01T02:31Z")], [40.0],
                                   grid, FIFTEEN)
    assert limits.tolist() == [40.0, 40.0, 40.0, math.inf]


def test_a_noise_cap_window_starting_at_2110_binds_the_2100_interval() -> None:
    profile = SiteProfile.model_validate({
        "site": {"name": "cap", "settlement_point": "LZ_WEST"},
        "grid": {"import_limit_kw": 100},
        "miner_groups": [{"id": "air", "model": "S19", "units": 1,
                          "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 90}]}],
        "receptors": [{"id": "porch", "distance_m": {"air": 100}, "background_dba": 30,
                       "caps": [{"name": "day", "start": "07:00", "end": "21:10", "cap_dba": 55},
                                {"name": "night", "start": "21:10", "end": "07:00", "cap_dba": 45}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })
    # 2025-07-01 20:45, 21:00, 21:15 CDT (UTC−5)
    grid = pd.date_range("2025-07-02T01:45Z", periods=3, freq="15min")
    assert noise_caps_dba(profile, grid, FIFTEEN)["porch"].tolist() == [55.0, 45.0, 45.0]


@settings(max_examples=60, deadline=None)
@given(minutes=st.sampled_from([5, 15, 60]),
       day=st.sampled_from(["2021-03-14", "2021-11-07", "2020-02-10"]),
       values=st.lists(st.floats(-250, 9000, allow_nan=False), min_size=48, max_size=48),
       holes=st.sets(st.integers(0, 47), max_size=10))
def test_property_time_weighted_values_on_any_grid(minutes: int, day: str, values: list[float], holes: set[int]) -> None:
    """5-min rows with holes, aggregated onto a 5/15/60-min grid on a DST day (in UTC, local
    clock changes do not matter): each known interval is the plain mean of its rows; an interval
    with a hole is unknown; gaps list exactly the unknown intervals."""
    start = pd.Timestamp(f"{day}T00:00", tz="America/Chicago").tz_convert("UTC")
    rows = pd.date_range(start, periods=48, freq="5min")
    keep = [k for k in range(48) if k not in holes]
    interval = pd.Timedelta(minutes=minutes)
    periods = 48 * 5 // minutes
    grid = interval_grid(start, interval, periods)
    out = time_weighted_mean(rows[keep], rows[keep] + FIVE, [values[k] for k in keep], grid, interval)
    per = minutes // 5
    for i in range(periods):
        block = range(i * per, (i + 1) * per)
        if any(k in holes for k in block):
            assert np.isnan(out[i])
        else:
            assert out[i] == pytest.approx(sum(values[k] for k in block) / per, rel=1e-12, abs=1e-9)
    assert sum(g.intervals for g in gap_runs(grid, out, interval)) == int(np.isnan(out).sum())


def test_plan_holds_the_monthly_carbon_budget_too() -> None:
    """Issue 11: `hashflex plan` built its problem without the profile's monthly budget."""
    from hashflex.optimize.problem import problem_from_profile
    from hashflex.profile import load_profile

    profile = load_profile("panhandle_120mw")
    assert profile.carbon.monthly_budget_kg is not None
    index = pd.date_range("2025-04-30T20:00Z", periods=24, freq="5min")
    problem = problem_from_profile(profile, index, np.full(24, 20.0))
    names = [b.name for b in problem.carbon_budgets]
    assert any(n.startswith("monthly") for n in names), names


@pytest.mark.parametrize("argv", [["backtest", "--from", "10/02/2020"], ["run", "--simulate", "--from", "10/02/2020"],
                                  ["backtest", "--to", "2020-2-10"], ["report", "--from", "02/01/2020"],
                                  ["report", "--to", "Feb 2 2020"]])
def test_the_command_line_refuses_ambiguous_dates(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from hashflex.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_a_measured_zero_initial_load_keeps_the_first_ramp_row() -> None:
    """Issue 11: an initial load of 0 kW (all asleep) was read as "unknown" and the ramp row at
    t = 0 was dropped, so a cold site could jump to full load in the first interval."""
    from hashflex.optimize.problem import GroupState, problem_from_profile
    from hashflex.profile import load_profile

    profile = load_profile("west_texas")
    data = json.loads(profile.model_dump_json())
    data["grid"]["ramp_limit_kw_per_min"] = 10.0
    profile = SiteProfile.model_validate_json(json.dumps(data))
    index = pd.date_range("2020-02-10T18:00Z", periods=4, freq="15min")
    cold = {g.id: GroupState(units_on=0, load_kw=0.0) for g in profile.miner_groups}
    problem = problem_from_profile(profile, index, np.full(4, 10.0), initial=cold)
    assert problem.initial_load_kw == 0.0
    unknown = problem_from_profile(profile, index, np.full(4, 10.0), initial={g.id: GroupState() for g in
                                                                                profile.miner_groups})
    assert unknown.initial_load_kw is None
