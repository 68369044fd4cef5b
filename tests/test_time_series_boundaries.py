"""Issue 11: the same kind of fault at every place a time series enters, each reproduced with values
worked out by hand: 5-minute prices on a 15-minute site, a missing interval, naive times, a file
passed as day-ahead, a file without a settlement point, duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.runner import load_prices
from hashflex.plan import PlanInputError, load_inputs, read_renewables_csv
from hashflex.profile import load_profile

PROFILE = load_profile("quiet_hollow")  # a 15-minute site
POINT = PROFILE.site.settlement_point


def write(path: Path, rows: list[str], header: str = "interval_start,price_usd_mwh,settlement_point") -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def five_minute_rows(start: str, values: list[float]) -> list[str]:
    times = pd.date_range(start, periods=len(values), freq="5min")
    return [f"{t.isoformat()},{v},{POINT}" for t, v in zip(times, values)]


def test_five_minute_prices_are_averaged_not_sampled(tmp_path: Path) -> None:
    # A 20 / 20 / 2,000 $/MWh pattern: each 15-min interval settles at (20+20+2000)/3 = 680 $/MWh.
    # Before, the interval took its first 5-minute value (20) and the site ran at full load.
    values = [20.0, 20.0, 2000.0] * 96 * 2
    path = write(tmp_path / "five.csv", five_minute_rows("2025-04-01T00:00-05:00", values))
    inputs = load_inputs(PROFILE, path, pd.Timestamp("2025-04-01T00:00-05:00"))
    assert inputs.price_usd_mwh[:8].tolist() == [680.0] * 8


def test_a_missing_interval_is_unknown_not_the_end_of_the_data(tmp_path: Path) -> None:
    rows = five_minute_rows("2025-04-01T00:00-05:00", [30.0] * 600)
    del rows[39:42]  # 5-min rows 39-41: the 15-minute interval 13 (03:15-03:30 local) has no price
    path = write(tmp_path / "gap.csv", rows)
    inputs = load_inputs(PROFILE, path, pd.Timestamp("2025-04-01T00:00-05:00"))
    periods = int(PROFILE.site.horizon_hours * 60 / PROFILE.site.interval_minutes)
    assert len(inputs.interval_start) == periods, "the horizon is not cut at the gap"
    assert inputs.price_usd_mwh[13] == 5000.0, "the unknown interval is priced as the daemon prices unknowns"
    assert (np.delete(inputs.price_usd_mwh, 13) == 30.0).all()
    assert any("no price for" in n and "(1 interval(s))" in n for n in inputs.notes), inputs.notes
    assert not any("prices end" in n for n in inputs.notes)


def test_naive_renewable_times_are_refused_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "solar.csv"
    path.write_text("interval_start,power_kw\n2025-04-01T03:00Z,0\n2025-04-01 04:00,120\n")
    with pytest.raises(PlanInputError, match=r"line 3: interval_start '2025-04-01 04:00' has no UTC offset"):
        read_renewables_csv(path)


def test_duplicate_renewable_times_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "solar.csv"
    path.write_text("interval_start,power_kw\n2025-04-01T03:00Z,0\n2025-04-01T03:00Z,5\n")
    with pytest.raises(PlanInputError, match="line 3: interval_start .* appears twice"):
        read_renewables_csv(path)


def test_a_file_passed_as_day_ahead_is_day_ahead(tmp_path: Path) -> None:
    # Before: the simple CSV given with --day-ahead was labelled RT and then overwrote the RT prices.
    rt = write(tmp_path / "rt.csv", five_minute_rows("2025-04-01T00:00-05:00", [30.0] * 24))
    da = write(tmp_path / "da.csv", [f"{t.isoformat()},99.0,{POINT}"
                                      for t in pd.date_range("2025-04-01T00:00-05:00", periods=2, freq="h")])
    prices = load_prices(PROFILE, [rt], [da])
    assert set(prices.loc[prices["market"] == "RT", "price_usd_mwh"]) == {30.0}
    assert set(prices.loc[prices["market"] == "DA", "price_usd_mwh"]) == {99.0}
    assert (prices["market"] == "DA").sum() == 2


def test_an_ercot_real_time_report_given_as_day_ahead_is_refused(tmp_path: Path) -> None:
    from hashflex.data import bundled_path

    with pytest.raises(ValueError, match="DA"):
        load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv")], [bundled_path("ercot/RTM-2020-02.csv")])


def test_a_file_without_settlement_point_says_which_point_it_was_taken_as(tmp_path: Path) -> None:
    times = pd.date_range("2025-04-01T00:00-05:00", periods=4, freq="15min")
    path = write(tmp_path / "plain.csv", [f"{t.isoformat()},25.0" for t in times], header="interval_start,price_usd_mwh")
    prices = load_prices(PROFILE, [path])
    assert set(prices["settlement_point"]) == {POINT}
    assert any(f"no settlement_point column: its prices are taken as {POINT}" in n for n in prices.attrs["notes"])


def test_duplicate_price_rows_are_reported(tmp_path: Path) -> None:
    rows = five_minute_rows("2025-04-01T00:00-05:00", [30.0] * 6)
    rows.append(rows[2].replace(",30.0,", ",31.0,"))  # a correction of the third interval
    prices = load_prices(PROFILE, [write(tmp_path / "dup.csv", rows)])
    assert any("1 conflicting duplicate" in n for n in prices.attrs["notes"]), prices.attrs["notes"]
    assert prices["price_usd_mwh"].tolist() == [30.0, 30.0, 31.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("price", ["50000", "-9000", "1e308"])
def test_a_price_file_is_held_to_the_same_bounds_as_mqtt(tmp_path: Path, price: str) -> None:
    """Found by a newcomer: `plan` accepted 50,000 and -9,000 $/MWh from a file, and 1e308 ended in
    an overflow warning and "non-finite values" naming no line."""
    rows = five_minute_rows("2025-04-01T00:00-05:00", [30.0] * 6)
    rows[3] = rows[3].replace(",30.0,", f",{price},")
    with pytest.raises(PlanInputError, match=r"line 5: price_usd_mwh .* outside the plausible range \[-251, 20000\]"):
        load_inputs(PROFILE, write(tmp_path / "oob.csv", rows), None)


def test_a_plan_over_a_gap_says_which_prices_were_placeholders(tmp_path: Path) -> None:
    """Found by a newcomer: the hourly table and the CSV showed the 5,000 $/MWh placeholder of an
    unknown interval as if it were the market price."""
    from hashflex.plan import output_frame, plan, summary_table

    rows = five_minute_rows("2025-04-01T00:00-05:00", [30.0] * 600)
    del rows[36:48]  # one hour (03:00-04:00 local) without prices
    inputs = load_inputs(PROFILE, write(tmp_path / "gap.csv", rows), pd.Timestamp("2025-04-01T00:00-05:00"))
    _, schedule = plan(PROFILE, inputs, time_limit_s=10.0)
    assert schedule.frame["price_known"].tolist() == [not 12 <= k < 16 for k in range(len(schedule.frame))]
    table = summary_table(schedule, PROFILE)
    assert "unknown*" in table and "no price in the file" in table
    assert output_frame(schedule)["price_known"].tolist().count(False) == 4
