"""Daily hashprice (USD per PH/s per day) from public bitcoin network statistics.

Why: the planner's revenue term is hashrate × hashprice. Pools quote hashprice, but a backtest needs
what it was on each past day, and the daemon needs a value without a paid API. Hashprice is the
network's daily miner revenue divided by the network hash rate::

    hashprice [USD/PH/day] = (subsidy USD/day + fees USD/day) / (hash rate H/s / 1e15)

Inputs (bundled under ``hashflex/data/bitcoin``, see its PROVENANCE.md): ``blockreward.csv`` (block
subsidy per UTC day, BTC and USD, fees excluded), ``hashrate.csv`` (H/s, daily estimate),
``transaction-fees.json`` (fees BTC/day and market price USD/day, blockchain.com chart format, only
2024-02 .. 2025-02). Where fees are unknown the value is subsidy-only (``fees_known`` False), which
*understates* revenue by the fee share (a few % in 2024), i.e. errs toward curtailing.

The daily hash rate is estimated from the day's block count, as is the daily subsidy, so both are
noisy but the noise largely cancels in the ratio. A day's statistic exists only once the day is over:
``published_at`` is the end of the UTC day (the forecast must not use a day's value during that day).
Pure functions; only reading the given files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from hashflex.data import bundled_path

__all__ = [
    "H_PER_PH",
    "HASHPRICE_COLUMNS",
    "read_chart_csv",
    "read_fees_json",
    "daily_hashprice",
    "bundled_hashprice",
]

H_PER_PH = 1e15
DAY = pd.Timedelta(days=1)
HASHPRICE_COLUMNS: tuple[str, ...] = (
    "timestamp", "published_at", "subsidy_usd_per_day", "fees_usd_per_day", "hashrate_ph_s",
    "hashprice_usd_per_ph_day", "fees_known",
)


def read_chart_csv(path: str | os.PathLike[str], columns: dict[str, str]) -> pd.DataFrame:
    """Read a chart CSV (``"DateTime", ...``, UTF-8 BOM, quoted) into a frame indexed by UTC day.

    ``columns`` maps file column → output column (e.g. ``{"Hash Rate": "hashrate_h_s"}``); values
    become floats, empty cells NaN. The DateTime stamps are read as UTC midnights.
    """
    frame = pd.read_csv(Path(path), encoding="utf-8-sig")
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("DateTime", *columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"{Path(path).name}: missing column(s) {missing}, got {list(frame.columns)}")
    day = pd.to_datetime(frame["DateTime"], utc=True).dt.floor("D").dt.as_unit("us")
    out = pd.DataFrame({new: pd.to_numeric(frame[old], errors="coerce").astype("float64")
                        for old, new in columns.items()})
    out.index = pd.DatetimeIndex(day, name="timestamp")
    return out[~out.index.duplicated(keep="last")].sort_index()


def read_fees_json(path: str | os.PathLike[str]) -> pd.DataFrame:
    """blockchain.com chart JSON with ``transaction-fees`` (BTC/day) and ``market-price`` (USD).

    Returns a frame indexed by UTC day with ``fees_btc_per_day``, ``price_usd`` and
    ``fees_usd_per_day`` (= fees × that day's price); days missing either series are dropped.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))

    def series(key: str) -> pd.Series:
        if key not in data:
            raise ValueError(f"{Path(path).name}: no {key!r} series (keys: {sorted(data)})")
        points = pd.DataFrame(data[key])
        index = pd.to_datetime(points["x"], unit="ms", utc=True).dt.floor("D").dt.as_unit("us")
        return pd.Series(points["y"].astype("float64").to_numpy(), index=pd.DatetimeIndex(index, name="timestamp"))

    fees, price = series("transaction-fees"), series("market-price")
    frame = pd.concat({"fees_btc_per_day": fees, "price_usd": price}, axis=1, join="inner").dropna()
    frame["fees_usd_per_day"] = frame["fees_btc_per_day"] * frame["price_usd"]
    return frame.sort_index()


def daily_hashprice(
    subsidy_usd_per_day: pd.Series,
    hashrate_h_s: pd.Series,
    fees_usd_per_day: pd.Series | None = None,
) -> pd.DataFrame:
    """Hashprice per UTC day: (subsidy + fees where known) USD/day ÷ network hash rate in PH/s.

    Inputs are Series indexed by UTC day. Days without both subsidy and a positive hash rate are
    dropped. Returns :data:`HASHPRICE_COLUMNS` with ``timestamp`` = start of the day and
    ``published_at`` = its end (when the statistic becomes known).
    """
    frame = pd.concat({"subsidy": subsidy_usd_per_day, "hashrate": hashrate_h_s}, axis=1, join="inner")
    frame = frame[frame["subsidy"].notna() & (frame["hashrate"] > 0)]
    fees = (fees_usd_per_day.reindex(frame.index) if fees_usd_per_day is not None
            else pd.Series(float("nan"), index=frame.index))
    known = fees.notna()
    hashrate_ph_s = frame["hashrate"] / H_PER_PH
    revenue = frame["subsidy"] + fees.fillna(0.0)
    start = pd.Series(frame.index, index=frame.index)
    out = pd.DataFrame({
        "timestamp": start,
        "published_at": start + DAY,
        "subsidy_usd_per_day": frame["subsidy"],
        "fees_usd_per_day": fees,
        "hashrate_ph_s": hashrate_ph_s,
        "hashprice_usd_per_ph_day": revenue / hashrate_ph_s,
        "fees_known": known,
    })
    return out.reset_index(drop=True)


def bundled_hashprice(*, include_fees: bool = True) -> pd.DataFrame:
    """Daily hashprice from the bundled bitcoin data (2020-01-01 .. 2025-03-08)."""
    subsidy = read_chart_csv(bundled_path("bitcoin/blockreward.csv"), {"USD": "subsidy_usd_per_day"})
    hashrate = read_chart_csv(bundled_path("bitcoin/hashrate.csv"), {"Hash Rate": "hashrate_h_s"})
    fees = read_fees_json(bundled_path("bitcoin/transaction-fees.json"))["fees_usd_per_day"] if include_fees else None
    return daily_hashprice(subsidy["subsidy_usd_per_day"], hashrate["hashrate_h_s"], fees)
