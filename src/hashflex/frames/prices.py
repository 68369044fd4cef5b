"""The canonical price frame every price feed returns, and the one check that enforces it.

Part of the frame contract (:mod:`hashflex.frames`, which describes the columns and the duplicate
reporting, and re-exports every name here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hashflex.frames.intervals import TIME_UNIT

__all__ = ["KEY_COLUMNS", "MARKETS", "PRICE_COLUMNS", "DuplicateConflict", "DuplicateReport", "PriceFileError",
           "check_price_frame", "empty_price_frame", "finalize_price_frame"]

log = logging.getLogger("hashflex.frames")  # the name warnings were logged under before the split


PRICE_COLUMNS: tuple[str, ...] = (
    "interval_start",
    "interval_end",
    "settlement_point",
    "market",
    "price_usd_mwh",
)
KEY_COLUMNS: tuple[str, ...] = ("interval_start", "settlement_point", "market")
MARKETS: frozenset[str] = frozenset({"RT", "DA"})


class PriceFileError(ValueError):
    """Malformed price input, naming where.

    E.g. ``"RTM-2020-02.csv line 17: Settlement Point Price 'abc' is not a number"``.

    Parameters
    ----------
    source : str
        The file (or a label for in-memory input).
    reason : str
        What is wrong.
    location : str, optional
        E.g. ``"line 17"`` or ``"page 2 row 5"`` (None when the whole input is at fault).
    field : str, optional
        The column involved.
    """

    def __init__(
        self, source: str, reason: str, *, location: str | None = None, field: str | None = None
    ) -> None:
        self.source = source
        self.location = location
        self.field = field
        self.reason = reason
        where = f"{source} {location}" if location else source
        what = f"{field} {reason}" if field else reason
        super().__init__(f"{where}: {what}")


@dataclass(frozen=True)
class DuplicateConflict:
    """One (interval, point, market) key that appeared with different prices.

    Attributes
    ----------
    interval_start : pandas.Timestamp
    settlement_point, market : str
    prices_usd_mwh : tuple[float, ...]
        Every price seen, in input order ($/MWh).
    kept_price_usd_mwh : float
        The last one, which is kept.
    """

    interval_start: pd.Timestamp
    settlement_point: str
    market: str
    prices_usd_mwh: tuple[float, ...]  # every price seen, in input order
    kept_price_usd_mwh: float  # the last one


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`finalize_price_frame` removed; empty (falsy) when the input had no repeats.

    Attributes
    ----------
    source : str
    identical_rows_dropped, conflicting_rows_dropped : int
    conflicts : tuple[DuplicateConflict, ...]
    """

    source: str
    identical_rows_dropped: int = 0
    conflicting_rows_dropped: int = 0
    conflicts: tuple[DuplicateConflict, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.identical_rows_dropped or self.conflicting_rows_dropped)


def empty_price_frame() -> pd.DataFrame:
    """A zero-row frame that passes :func:`check_price_frame` (for 'no data' without None).

    Returns
    -------
    pandas.DataFrame
        The canonical columns, no rows.
    """
    t = pd.Series([], dtype=f"datetime64[{TIME_UNIT}, UTC]")
    return pd.DataFrame(
        {
            "interval_start": t,
            "interval_end": t.copy(),
            "settlement_point": pd.Series([], dtype=object),
            "market": pd.Series([], dtype=object),
            "price_usd_mwh": pd.Series([], dtype="float64"),
        }
    )


def check_price_frame(df: pd.DataFrame) -> None:
    """Check that ``df`` is a canonical price frame (see :mod:`hashflex.frames`).

    Run on every parser's output so a broken feed fails where it is read, not in the optimizer.

    Parameters
    ----------
    df : pandas.DataFrame

    Raises
    ------
    ValueError
        Naming the first way ``df`` breaks the contract (column, row).
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"price frame must be a pandas DataFrame, got {type(df).__name__}")
    if tuple(df.columns) != PRICE_COLUMNS:
        raise ValueError(f"price frame columns must be {list(PRICE_COLUMNS)} in order, got {list(df.columns)}")
    if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
        raise ValueError("price frame must have a default RangeIndex (0..n-1)")
    for col in ("interval_start", "interval_end"):
        dtype = df[col].dtype
        if not isinstance(dtype, pd.DatetimeTZDtype) or str(dtype.tz) != "UTC":
            raise ValueError(f"{col} must be tz-aware UTC datetime64, got {dtype}")
        if df[col].isna().any():
            raise ValueError(f"{col} has missing values (first at row {int(df[col].isna().to_numpy().argmax())})")
    bad_end = ~(df["interval_end"] > df["interval_start"])
    if bad_end.any():
        i = int(bad_end.to_numpy().argmax())
        raise ValueError(f"interval_end must be after interval_start (row {i}: {df['interval_start'].iloc[i]})")
    for col in ("settlement_point", "market"):
        not_str = ~df[col].map(lambda v: isinstance(v, str) and v != "").astype(bool)
        if not_str.any():
            i = int(not_str.to_numpy().argmax())
            raise ValueError(f"{col} must be a non-empty str (row {i}: {df[col].iloc[i]!r})")
    bad_market = ~df["market"].isin(MARKETS)
    if bad_market.any():
        i = int(bad_market.to_numpy().argmax())
        raise ValueError(f"market must be one of {sorted(MARKETS)} (row {i}: {df['market'].iloc[i]!r})")
    if df["price_usd_mwh"].dtype != np.float64:
        raise ValueError(f"price_usd_mwh must be float64, got {df['price_usd_mwh'].dtype}")
    not_finite = ~np.isfinite(df["price_usd_mwh"].to_numpy())
    if not_finite.any():
        raise ValueError(f"price_usd_mwh must be finite (row {int(not_finite.argmax())})")
    if df.duplicated(list(KEY_COLUMNS)).any():
        i = int(df.duplicated(list(KEY_COLUMNS)).to_numpy().argmax())
        raise ValueError(f"duplicate (interval_start, settlement_point, market) at row {i}")
    if len(df) > 1:
        key = df[list(KEY_COLUMNS)]
        ordered = key.sort_values(list(KEY_COLUMNS), kind="stable").index
        if not (ordered == df.index).all():
            raise ValueError("price frame must be sorted by interval_start, settlement_point, market")


def finalize_price_frame(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """Turn parsed rows into a checked canonical frame.

    Resolves duplicates (the last row in input order wins; see :mod:`hashflex.frames`), sorts,
    attaches ``attrs["duplicates"]`` (:class:`DuplicateReport`) and ``attrs["source"]``, then runs
    :func:`check_price_frame`.

    Parameters
    ----------
    rows : pandas.DataFrame
        Canonical columns (tz-aware times), in input order.
    source : str
        The file or label, for the report and the log.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    ValueError
        The result breaks the contract (:func:`check_price_frame`).
    """
    df = rows.loc[:, list(PRICE_COLUMNS)].copy()
    for col in ("interval_start", "interval_end"):
        df[col] = df[col].dt.tz_convert("UTC").dt.as_unit(TIME_UNIT)
    df["price_usd_mwh"] = df["price_usd_mwh"].astype("float64")
    df = df.reset_index(drop=True)
    report = _resolve_duplicates_report(df, source)
    if report:
        df = df.drop_duplicates(list(KEY_COLUMNS), keep="last")
    df = df.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
    df.attrs = {"source": source, "duplicates": report}
    check_price_frame(df)
    return df


def _resolve_duplicates_report(df: pd.DataFrame, source: str) -> DuplicateReport:
    keys = list(KEY_COLUMNS)
    repeated = df.duplicated(keys, keep=False)
    if not repeated.any():
        return DuplicateReport(source=source)
    identical = int(df.duplicated(keys + ["interval_end", "price_usd_mwh"]).sum())
    total_dropped = int(df.duplicated(keys).sum())
    conflicts: list[DuplicateConflict] = []
    for (start, point, market), grp in df[repeated].groupby(keys, sort=True):
        prices = tuple(float(p) for p in grp["price_usd_mwh"])
        if len(set(prices)) > 1 or grp["interval_end"].nunique() > 1:
            conflicts.append(DuplicateConflict(start, point, market, prices, prices[-1]))
    report = DuplicateReport(
        source=source,
        identical_rows_dropped=identical,
        conflicting_rows_dropped=total_dropped - identical,
        conflicts=tuple(conflicts),
    )
    if conflicts:
        first = conflicts[0]
        log.warning(
            "%s: %d interval(s) with conflicting prices; kept the last row of each "
            "(first: %s %s %s %s -> %s)",
            source, len(conflicts), first.interval_start, first.settlement_point, first.market,
            list(first.prices_usd_mwh), first.kept_price_usd_mwh,
        )
    return report
