"""The real daily hashprice (issue 14, part 1): values by hand from the raw bundled rows, the Aug 2024
hole filled from the other bundled series and labelled, and the series used where the profile's
constant was: the forecast (day D's value only after D), the backtest's settlement per UTC day, and
the threshold's breakeven."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.runner import RuleForecaster, SnapshotForecaster, account, build_actuals, load_prices
from hashflex.backtest.policies import SiteMemory
from hashflex.data import bundled_path
from hashflex.feeds.hashprice import bundled_hashprice, hashprice_by_day
from hashflex.forecast import FallbackCode, has_fallback
from hashflex.profile import load_profile


def raw_row(name: str, day: str) -> list[str]:
    """The bundled chart CSV's row for one UTC day, as text (BOM header skipped)."""
    with bundled_path(f"bitcoin/{name}").open(encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if row[0].startswith(day):
                return row
    raise AssertionError(f"{name} has no row for {day}")


def raw_chart(key: str, day: str) -> float | None:
    data = json.loads(bundled_path("bitcoin/transaction-fees.json").read_text())
    ms = int(pd.Timestamp(day, tz="UTC").timestamp() * 1000)
    return next((p["y"] for p in data[key] if p["x"] == ms), None)


@pytest.fixture(scope="module")
def series() -> pd.DataFrame:
    return bundled_hashprice().set_index("timestamp", drop=False)


def test_feb_2020_day_by_hand_subsidy_only(series: pd.DataFrame) -> None:
    # (subsidy BTC × BTC price) / (hash rate H/s / 1e15); no fee series for 2020 in the bundle.
    _, btc, usd = raw_row("blockreward.csv", "2020-02-12")
    _, price, _ = raw_row("price.csv", "2020-02-12")
    _, rate = raw_row("hashrate.csv", "2020-02-12")
    assert float(btc) * float(price) == pytest.approx(float(usd))  # blockreward USD is BTC × price.csv
    expected = float(btc) * float(price) / (float(rate) / 1e15)
    row = series.loc[pd.Timestamp("2020-02-12", tz="UTC")]
    assert row["hashprice_usd_per_ph_day"] == pytest.approx(expected)
    assert not row["fees_known"] and "subsidy only" in row["source"]


def test_june_2024_day_by_hand_with_fees(series: pd.DataFrame) -> None:
    day = "2024-06-01"
    _, btc, _ = raw_row("blockreward.csv", day)
    _, price, _ = raw_row("price.csv", day)
    _, rate = raw_row("hashrate.csv", day)
    fees_usd = raw_chart("transaction-fees", day) * raw_chart("market-price", day)
    expected = (float(btc) * float(price) + fees_usd) / (float(rate) / 1e15)
    row = series.loc[pd.Timestamp(day, tz="UTC")]
    assert row["hashprice_usd_per_ph_day"] == pytest.approx(expected)
    assert row["fees_known"]


def test_august_2024_hole_filled_from_the_fee_charts_price(series: pd.DataFrame) -> None:
    # price.csv has no row for 2024-08-15 (blockreward.csv's USD is empty): the subsidy in BTC is
    # priced at transaction-fees.json's market price of that day, and the row says so.
    day = "2024-08-15"
    _, btc, usd = raw_row("blockreward.csv", day)
    assert usd == ""
    with pytest.raises(AssertionError):
        raw_row("price.csv", day)
    _, rate = raw_row("hashrate.csv", day)
    chart_price = raw_chart("market-price", day)
    expected = (float(btc) + raw_chart("transaction-fees", day)) * chart_price / (float(rate) / 1e15)
    row = series.loc[pd.Timestamp(day, tz="UTC")]
    assert row["hashprice_usd_per_ph_day"] == pytest.approx(expected)
    assert "transaction-fees.json market-price" in row["source"]
    august = series[(series["timestamp"] >= pd.Timestamp("2024-08-01", tz="UTC"))
                    & (series["timestamp"] < pd.Timestamp("2024-09-01", tz="UTC"))]
    assert len(august) == 31  # was 16 of 31
    assert august["source"].str.contains("market-price").sum() == 15


def test_every_day_present_and_the_one_carried_day_labelled(series: pd.DataFrame) -> None:
    days = pd.date_range("2020-01-01", "2025-03-08", freq="D", tz="UTC")
    assert len(series) == len(days) and (series.index == days).all()
    carried = series[series["source"].str.contains("carried")]
    assert list(carried.index.strftime("%Y-%m-%d")) == ["2021-10-26"]
    _, btc, _ = raw_row("blockreward.csv", "2021-10-26")
    _, prev_price, _ = raw_row("price.csv", "2021-10-25")
    _, rate = raw_row("hashrate.csv", "2021-10-26")
    assert carried["hashprice_usd_per_ph_day"].iloc[0] == pytest.approx(float(btc) * float(prev_price) / (float(rate) / 1e15))
    assert "price.csv 2021-10-25" in carried["source"].iloc[0]


def test_hashprice_by_day_is_each_utc_days_value_and_refuses_unknown_days(series: pd.DataFrame) -> None:
    times = pd.DatetimeIndex(["2020-02-11 23:45", "2020-02-12 00:00"], tz="UTC")
    values = hashprice_by_day(series.reset_index(drop=True), times)
    assert values[0] == pytest.approx(series.loc[pd.Timestamp("2020-02-11", tz="UTC"), "hashprice_usd_per_ph_day"])
    assert values[1] == pytest.approx(series.loc[pd.Timestamp("2020-02-12", tz="UTC"), "hashprice_usd_per_ph_day"])
    with pytest.raises(ValueError, match="2030-01-01"):
        hashprice_by_day(series.reset_index(drop=True), pd.DatetimeIndex(["2030-01-01"], tz="UTC"))


# ----------------------------------------------------------------------- used where the constant was
PROFILE = load_profile("west_texas")


@pytest.fixture(scope="module")
def actuals(series: pd.DataFrame):  # noqa: ANN201
    prices = load_prices(PROFILE, [bundled_path("ercot/RTM-2020-02.csv")])
    return build_actuals(PROFILE, prices, "2020-02-10", "2020-02-12", hashprice=series.reset_index(drop=True))


def test_backtest_settles_each_interval_at_its_utc_days_hashprice(actuals, series: pd.DataFrame) -> None:  # noqa: ANN001
    hp = actuals.hashprice_usd_per_ph_day
    days = actuals.index.floor("D")
    for day in days.unique():
        assert np.all(hp[days == day] == series.loc[day, "hashprice_usd_per_ph_day"])
    assert len(set(hp)) == 3  # 10 Feb 06:00 UTC .. 12 Feb 06:00 UTC spans three UTC days
    assert not np.any(np.isclose(hp, PROFILE.economics.hashprice_usd_per_ph_day))
    # Always-on accounted by hand: every unit's hashrate × that day's hashprice × (1 − pool fee).
    counts = {}
    for g, group in enumerate(PROFILE.miner_groups):
        for m, mode in enumerate(group.modes):
            counts[g, m] = np.full(len(actuals.index), group.units if mode.name == "stock" else 0)
    schedule = account(PROFILE, actuals, counts)
    dt_h = 0.25
    th_s = sum(group.units * next(m.hashrate_th_s for m in group.modes if m.name == "stock")
               for group in PROFILE.miner_groups)
    expected = sum(th_s * dt_h * h / 1000.0 / 24.0 * (1 - PROFILE.economics.pool_fee_pct / 100) for h in hp)
    assert schedule.frame["revenue_usd"].sum() == pytest.approx(expected, rel=1e-9)


def test_mpc_forecast_knows_day_d_only_after_d_ends(actuals, series: pd.DataFrame) -> None:  # noqa: ANN001
    forecaster = SnapshotForecaster(PROFILE, actuals)
    noon = pd.Timestamp("2020-02-11 12:00", tz="UTC")
    out = forecaster(noon, noon, 4)
    yesterday = series.loc[pd.Timestamp("2020-02-10", tz="UTC"), "hashprice_usd_per_ph_day"]
    assert out.hashprice_usd_per_ph_day == pytest.approx(np.full(4, yesterday))
    assert out.hashprice_source == "feed (2020-02-10)"
    assert not has_fallback(out.fallbacks, FallbackCode.HASHPRICE_PROFILE)
    midnight = pd.Timestamp("2020-02-12 00:00", tz="UTC")
    assert forecaster(midnight, midnight, 1).hashprice_source == "feed (2020-02-11)"


def test_threshold_breakeven_uses_the_published_hashprice(actuals, series: pd.DataFrame) -> None:  # noqa: ANN001
    memory = SiteMemory(last_rt_price_usd_mwh=20.0)
    noon = pd.Timestamp("2020-02-11 12:00", tz="UTC")
    out = RuleForecaster(PROFILE, actuals, memory)(noon, noon, 4)
    yesterday = series.loc[pd.Timestamp("2020-02-10", tz="UTC"), "hashprice_usd_per_ph_day"]
    assert out.hashprice_usd_per_ph_day == pytest.approx(yesterday)
    assert not math.isclose(yesterday, PROFILE.economics.hashprice_usd_per_ph_day)


def test_backtest_cli_settles_at_the_real_hashprice_by_default(tmp_path) -> None:  # noqa: ANN001
    from hashflex.backtest.cli import main as backtest_main

    common = ["backtest", "--profile", "west_texas", "--prices", str(bundled_path("ercot/RTM-2020-02.csv")),
              "--from", "2020-02-10T08:00-06:00", "--to", "2020-02-10T10:00-06:00", "--policy", "oracle", "--quiet"]
    assert backtest_main([*common, "--out", str(tmp_path / "real")]) == 0
    assert backtest_main([*common, "--hashprice", "profile", "--out", str(tmp_path / "constant")]) == 0
    real = json.loads((tmp_path / "real" / "summary.json").read_text())
    constant = json.loads((tmp_path / "constant" / "summary.json").read_text())
    assert any(n.startswith("hashprice: each UTC day's own value") for n in real["notes"])
    assert not any(n.startswith("hashprice:") for n in constant["notes"])
    # Feb 2020's ~160 $/PH/day against the profile's 49: the same hashrate earns about 3x as much.
    ratio = real["policies"]["oracle"]["revenue_usd"] / constant["policies"]["oracle"]["revenue_usd"]
    assert ratio > 2.5
