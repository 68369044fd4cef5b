"""Hashprice from the bundled bitcoin data, checked against hand computations."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hashflex.data import bundled_path
from hashflex.feeds.hashprice import (
    HASHPRICE_COLUMNS,
    bundled_hashprice,
    daily_hashprice,
    read_chart_csv,
    read_fees_json,
)


@pytest.fixture(scope="module")
def hashprice() -> pd.DataFrame:
    return bundled_hashprice().set_index("timestamp", drop=False)


def test_columns_and_span(hashprice: pd.DataFrame) -> None:
    assert tuple(hashprice.columns) == HASHPRICE_COLUMNS
    assert hashprice["timestamp"].min() == pd.Timestamp("2020-01-01", tz="UTC")
    assert hashprice["timestamp"].max() == pd.Timestamp("2025-03-08", tz="UTC")
    assert (hashprice["published_at"] - hashprice["timestamp"] == pd.Timedelta(days=1)).all()
    assert hashprice["hashprice_usd_per_ph_day"].between(20, 600).all()


def test_2025_03_08_subsidy_only_by_hand(hashprice: pd.DataFrame) -> None:
    # blockreward.csv: 428.125 BTC = 36,895,645.53125 USD; hashrate.csv: 7.53004934520968e20 H/s
    row = hashprice.loc[pd.Timestamp("2025-03-08", tz="UTC")]
    assert not row["fees_known"]
    assert row["subsidy_usd_per_day"] == pytest.approx(36_895_645.53125)
    assert row["hashrate_ph_s"] == pytest.approx(753_004.934520968)
    assert row["hashprice_usd_per_ph_day"] == pytest.approx(36_895_645.53125 / 753_004.934520968)
    assert row["hashprice_usd_per_ph_day"] == pytest.approx(49.0, abs=0.01)


def test_fees_are_added_where_known(hashprice: pd.DataFrame) -> None:
    fees = json.loads(bundled_path("bitcoin/transaction-fees.json").read_text())
    day_ms = int(pd.Timestamp("2024-06-01", tz="UTC").timestamp() * 1000)
    fee_btc = next(p["y"] for p in fees["transaction-fees"] if p["x"] == day_ms)
    price = next(p["y"] for p in fees["market-price"] if p["x"] == day_ms)
    row = hashprice.loc[pd.Timestamp("2024-06-01", tz="UTC")]
    assert row["fees_known"]
    assert row["fees_usd_per_day"] == pytest.approx(fee_btc * price)
    expected = (row["subsidy_usd_per_day"] + fee_btc * price) / row["hashrate_ph_s"]
    assert row["hashprice_usd_per_ph_day"] == pytest.approx(expected)
    subsidy_only = bundled_hashprice(include_fees=False).set_index("timestamp")
    assert subsidy_only.loc[pd.Timestamp("2024-06-01", tz="UTC"), "hashprice_usd_per_ph_day"] < expected


def test_fee_series_covers_its_year(hashprice: pd.DataFrame) -> None:
    known = hashprice[hashprice["fees_known"]]
    assert known["timestamp"].min() == pd.Timestamp("2024-02-06", tz="UTC")
    assert known["timestamp"].max() == pd.Timestamp("2025-02-02", tz="UTC")
    assert 300 < len(known) <= 363


def test_readers_on_real_files() -> None:
    rate = read_chart_csv(bundled_path("bitcoin/hashrate.csv"), {"Hash Rate": "hashrate_h_s"})
    assert rate.index.tz is not None and rate.index.is_monotonic_increasing
    fees = read_fees_json(bundled_path("bitcoin/transaction-fees.json"))
    assert {"fees_btc_per_day", "price_usd", "fees_usd_per_day"} <= set(fees.columns)
    with pytest.raises(ValueError, match="missing column"):
        read_chart_csv(bundled_path("bitcoin/hashrate.csv"), {"Nope": "x"})


def test_days_without_hash_rate_are_dropped() -> None:
    days = pd.DatetimeIndex(["2024-01-01", "2024-01-02"], tz="UTC")
    out = daily_hashprice(pd.Series([1e6, 2e6], index=days), pd.Series([0.0, 2e20], index=days))
    assert list(out["timestamp"]) == [days[1]]
    assert out["hashprice_usd_per_ph_day"].iloc[0] == pytest.approx(2e6 / 2e5)
