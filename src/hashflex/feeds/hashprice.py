"""Daily hashprice (USD per PH/s per day) from public bitcoin network statistics.

Why: the planner's revenue term is hashrate × hashprice. Pools quote hashprice, but a backtest needs
what it was on each past day, and the daemon needs a value without a paid API.

Formula (Luxor's hashprice: "the expected value of 1 PH/s of hashrate per day", a function of block
subsidy, transaction fees, network difficulty and bitcoin price; https://docs.luxor.tech/hashrateindex/hashprice)::

    hashprice [USD/PH/day] = (subsidy BTC/day + fees BTC/day) × BTC price [USD]
                             / (network hash rate [H/s] / 1e15)

which is (subsidy + fees per block) × blocks per day × price / hash rate: a hash rate share h/H
earns that share of every block found that day. Luxor smooths fees over 144 blocks and averages
three exchanges' spot prices; here every input is the day's value from one public chart, so values
differ from Luxor's index by those choices (a few %).

Inputs (bundled under ``hashflex/data/bitcoin``, see its PROVENANCE.md): ``blockreward.csv`` (block
subsidy per UTC day, BTC and USD = BTC × that day's price.csv price, fees excluded),
``hashrate.csv`` (H/s, daily estimate), ``price.csv`` (BTC/USD daily), ``transaction-fees.json``
(fees BTC/day and market price USD/day, blockchain.com chart format, only 2024-02-06 .. 2025-02-02).
Where fees are unknown the value is subsidy-only (``fees_known`` False), which *understates*
revenue by the fee share (a few % in 2024), i.e. errs toward curtailing.

Holes: ``price.csv`` (and so the subsidy in USD) lacks 2021-10-26 and 2024-08-12 .. 2024-08-26.
:func:`bundled_hashprice` fills them from another bundled series where one exists — the subsidy in
BTC × ``transaction-fees.json``'s market price for Aug 2024 — and otherwise with the subsidy in BTC
× the last earlier day's price (2021-10-26; carried, labelled so). Every row's ``source`` says where
its numbers came from.

The daily hash rate is estimated from the day's block count, as is the daily subsidy, so both are
noisy but the noise largely cancels in the ratio. A day's statistic exists only once the day is over:
``published_at`` is the end of the UTC day (the forecast must not use a day's value during that day).
Pure functions; only reading the given files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from hashflex.data import bundled_path

__all__ = [
    "H_PER_PH",
    "HASHPRICE_COLUMNS",
    "read_chart_csv",
    "read_fees_json",
    "daily_hashprice",
    "bundled_hashprice",
    "hashprice_by_day",
]

H_PER_PH = 1e15
DAY = pd.Timedelta(days=1)
HASHPRICE_COLUMNS: tuple[str, ...] = (
    "timestamp", "published_at", "subsidy_usd_per_day", "fees_usd_per_day", "hashrate_ph_s",
    "hashprice_usd_per_ph_day", "fees_known", "source",
)


def read_chart_csv(path: str | os.PathLike[str], columns: dict[str, str]) -> pd.DataFrame:
    """Read a chart CSV (``"DateTime", ...``, UTF-8 BOM, quoted) into a frame indexed by UTC day.

    ``columns`` maps file column → output column (e.g. ``{"Hash Rate": "hashrate_h_s"}``); values
    become floats, empty cells NaN. The DateTime stamps are read as UTC midnights.

    Parameters
    ----------
    path : str or path
        The chart CSV.
    columns : dict of str to str
        File column → output column.

    Returns
    -------
    pd.DataFrame
        Indexed by UTC day, one float column per entry of ``columns``.
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

    Parameters
    ----------
    path : str or path
        The JSON file.

    Returns
    -------
    pd.DataFrame
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
    source: pd.Series | None = None,
) -> pd.DataFrame:
    """Hashprice per UTC day: (subsidy + fees where known) USD/day ÷ network hash rate in PH/s.

    Inputs are Series indexed by UTC day (USD/day, H/s, USD/day; ``source`` a text per day saying
    where the subsidy's USD came from). Days without both subsidy and a positive hash rate are
    dropped. Returns :data:`HASHPRICE_COLUMNS` with ``timestamp`` = start of the day and
    ``published_at`` = its end (when the statistic becomes known).

    Parameters
    ----------
    subsidy_usd_per_day : pd.Series
        Block subsidy paid per day, USD/day.
    hashrate_h_s : pd.Series
        Network hash rate, H/s.
    fees_usd_per_day : pd.Series, optional
        Transaction fees per day, USD/day (added where known).
    source : pd.Series, optional
        Where each day's subsidy in USD came from.

    Returns
    -------
    pd.DataFrame
        :data:`HASHPRICE_COLUMNS`, hashprice in $/PH/day.
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
    subsidy_from = (source.reindex(frame.index).fillna("subsidy USD given") if source is not None
                    else pd.Series("subsidy USD given", index=frame.index))
    out["source"] = (subsidy_from + np.where(known, "; fees: transaction-fees.json (BTC × market price)",
                                             "; fees: unknown (subsidy only)")
                     + "; hash rate: hashrate.csv")
    return out.reset_index(drop=True)


def bundled_hashprice(*, include_fees: bool = True) -> pd.DataFrame:
    """Daily hashprice from the bundled bitcoin data (2020-01-01 .. 2025-03-08), every day present.

    The subsidy in USD is ``blockreward.csv``'s USD column (= its BTC × ``price.csv``); on days
    without a price there it is the subsidy in BTC × ``transaction-fees.json``'s market price where
    that series has the day (Aug 2024), else × the last earlier ``price.csv`` price (carried; one day,
    2021-10-26). The ``source`` column says which, per day. Columns: :data:`HASHPRICE_COLUMNS`.

    Parameters
    ----------
    include_fees : bool
        Add transaction fees to the subsidy where the fees series has the day.

    Returns
    -------
    pd.DataFrame
        :data:`HASHPRICE_COLUMNS`, one row per UTC day, $/PH/day.
    """
    reward = read_chart_csv(bundled_path("bitcoin/blockreward.csv"), {"BTC": "subsidy_btc_per_day",
                                                                       "USD": "subsidy_usd_per_day"})
    hashrate = read_chart_csv(bundled_path("bitcoin/hashrate.csv"), {"Hash Rate": "hashrate_h_s"})
    price = read_chart_csv(bundled_path("bitcoin/price.csv"), {"Price": "price_usd"})["price_usd"]
    chart = read_fees_json(bundled_path("bitcoin/transaction-fees.json"))
    subsidy = reward["subsidy_usd_per_day"].copy()
    source = pd.Series("subsidy: blockreward.csv USD", index=reward.index, dtype=object)
    hole = subsidy.isna()
    other = chart["price_usd"].reindex(reward.index)
    use = hole & other.notna()
    subsidy[use] = reward["subsidy_btc_per_day"][use] * other[use]
    source[use] = "subsidy: blockreward.csv BTC × transaction-fees.json market-price (price.csv has no price that day)"
    carried = price.reindex(price.index.union(reward.index)).ffill().reindex(reward.index)
    last = subsidy.isna() & carried.notna()
    subsidy[last] = reward["subsidy_btc_per_day"][last] * carried[last]
    carried_from = price.index.to_series().reindex(price.index.union(reward.index)).ffill().reindex(reward.index)
    for day in np.flatnonzero(last.to_numpy()):
        source.iloc[day] = (f"subsidy: blockreward.csv BTC × price.csv {carried_from.iloc[day]:%Y-%m-%d} "
                            "(carried: no bundled price that day)")
    fees = chart["fees_usd_per_day"] if include_fees else None
    return daily_hashprice(subsidy, hashrate["hashrate_h_s"], fees, source)


def hashprice_by_day(series: pd.DataFrame, times: pd.DatetimeIndex,
                     default_usd_per_ph_day: float | None = None) -> np.ndarray:
    """Each time's UTC day's hashprice ($/PH/day) from a :func:`bundled_hashprice`-shaped frame:
    what a day's hash rate earned that day (settlement, not forecasting: the value of day D is
    *published* only after D). Days the series lacks take ``default_usd_per_ph_day``; without one a
    missing day raises ``ValueError`` naming it.

    Parameters
    ----------
    series : pd.DataFrame
        :data:`HASHPRICE_COLUMNS` rows.
    times : pd.DatetimeIndex
        n tz-aware times.
    default_usd_per_ph_day : float, optional
        Hashprice for days the series lacks, $/PH/day.

    Returns
    -------
    np.ndarray
        Shape (n,), $/PH/day.

    Raises
    ------
    ValueError
        A day is missing and no default is given.
    """
    table = series.set_index(pd.DatetimeIndex(pd.to_datetime(series["timestamp"], utc=True)).as_unit("us"))
    table = table[~table.index.duplicated(keep="last")]["hashprice_usd_per_ph_day"]
    days = pd.DatetimeIndex(times).tz_convert("UTC").floor("D").as_unit("us")
    values = table.reindex(days).to_numpy(dtype=float)
    missing = np.isnan(values)
    if missing.any():
        if default_usd_per_ph_day is None:
            raise ValueError(f"hashprice: no value for UTC day(s) {sorted({f'{d:%Y-%m-%d}' for d in days[missing]})}")
        values[missing] = default_usd_per_ph_day
    return values
