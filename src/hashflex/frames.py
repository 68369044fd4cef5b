"""The time-series contract at every boundary: UTC intervals, exact arithmetic, one resampling
rule per quantity, gaps and duplicates reported. Ground floor: imports nothing of hashflex.

Every series that enters hashflex (prices, renewables, fuel mix, hashprice, noise, telemetry) is
reduced to rows of ``interval_start`` / ``interval_end`` (tz-aware UTC, ``datetime64[us]``), a
value column and, where it applies, ``settlement_point`` and ``market``. Interval arithmetic is in
integer nanoseconds (``pd.Timedelta``), never float hours, so a 5-minute interval ends at exactly
``05:05:00``, not ``05:04:59.999999998``.

Times without an offset are refused with their line (:func:`require_aware`): one rule for every
reader of a file a person wrote (CSV, JSON). ERCOT's own report formats are the exception: they are
defined in Central prevailing time with hour-ending and a DST flag, and their readers in
:mod:`hashflex.feeds.ercot` convert them by that definition.

Resampling onto a site's interval grid (one rule per quantity):

- **prices** — :func:`time_weighted_mean`: ERCOT's 15-minute real-time settlement point price is
  the time-weighted average of the SCED (≈5-minute) locational marginal prices in the interval
  (ERCOT Nodal Protocols §6.6.1, "Real-Time Settlement Point Prices"), so finer prices are averaged
  by overlap; a coarser price (an hourly day-ahead price) covers every interval inside it. An
  interval not fully covered is **unknown** (NaN), never the first or last sub-value, and never
  "the end of the data".
- **power** (renewables, telemetry, load) — :func:`time_weighted_mean` too: the mean of a
  piecewise-constant power over the interval conserves its energy (kWh = mean kW × hours).
- **limits and caps** — :func:`strictest_in_interval`: the lowest value in force at any moment of
  the interval (a noise cap whose window starts at 21:10 binds the 21:00–21:15 interval).

:func:`gap_runs` lists the unknown stretches so a caller can say which intervals it priced as
unknown. Duplicates are resolved by the readers (the last row in input order wins, as ERCOT
correction files supersede earlier postings) and reported, see the canonical price frame below.

The canonical price frame
-------------------------
The canonical price frame every price feed returns, and the one check that enforces it.

Why one shape: the planner, the backtester and the reports must not care whether prices came from
an ERCOT report, the ERCOT public API or a retail provider's JSON. Every parser in
:mod:`hashflex.feeds` returns a frame with exactly these columns, in this order:

=================  ==========================================================================
``interval_start``  tz-aware UTC ``datetime64`` (microsecond unit); start of the delivery interval
``interval_end``    tz-aware UTC; end of the interval (exclusive), always after the start
``settlement_point`` ``str``; e.g. ``"LZ_WEST"``, ``"HB_NORTH"``
``market``          ``"RT"`` (real time) or ``"DA"`` (day ahead)
``price_usd_mwh``   ``float``; $/MWh, finite, never clipped (negative and > $5,000 are real)
=================  ==========================================================================

Rows are sorted by (interval_start, settlement_point, market), the index is a plain
``RangeIndex``, and (interval_start, settlement_point, market) is unique.

Duplicate reporting (one design for every parser): duplicates are resolved by
:func:`finalize_price_frame` and described by a :class:`DuplicateReport` attached to the returned
frame as ``df.attrs["duplicates"]`` (also ``df.attrs["source"]``). Identical repeats are dropped;
conflicting repeats keep the **last row in input order** (ERCOT correction/retry files supersede
earlier postings, and concatenating files in posting order therefore keeps the newest price).
Conflicts are also logged as a warning. ``attrs`` survive ``copy()`` and slicing but not every
pandas operation, so read the report right after parsing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "KEY_COLUMNS",
    "MARKETS",
    "PRICE_COLUMNS",
    "DuplicateConflict",
    "DuplicateReport",
    "Gap",
    "PriceFileError",
    "TimeFrameError",
    "check_price_frame",
    "empty_price_frame",
    "finalize_price_frame",
    "gap_runs",
    "interval_grid",
    "iso_date_argument",
    "parse_iso_date",
    "require_aware",
    "strictest_in_interval",
    "time_weighted_mean",
    "utc_now",
]

TIME_UNIT = "us"


def utc_now() -> datetime:
    """The wall clock, tz-aware UTC: the one clock of hashflex (everything else takes ``now``)."""
    return datetime.now(timezone.utc)


class TimeFrameError(ValueError):
    """A time series breaks the contract; the message names the source, the line and the field."""


def require_aware(values: Sequence[object] | pd.Series, *, source: str, field: str,
                  first_line: int = 2) -> pd.DatetimeIndex:
    """Parse ISO 8601 times that carry an offset (or ``Z``) into a UTC index.

    Parameters
    ----------
    values : sequence of str or datetime-like, length n
    source : file name or label, used in errors
    field : the column name, used in errors
    first_line : the file line of ``values[0]`` (2 for a CSV with a header)

    Returns
    -------
    pd.DatetimeIndex, length n, tz UTC, unit microseconds

    Raises
    ------
    TimeFrameError
        A value is not a time, or has no UTC offset: ``"solar.csv line 5: interval_start
        '2025-04-01 04:00' has no UTC offset (write 2025-04-01T04:00-05:00 or ...Z)"``.
    """
    items = list(values)
    out = []
    for k, raw in enumerate(items):
        line = first_line + k
        try:
            stamp = pd.Timestamp(raw)
        except (TypeError, ValueError) as exc:
            raise TimeFrameError(f"{source} line {line}: {field} {raw!r} is not a time ({exc})") from exc
        if stamp is pd.NaT or pd.isna(stamp):
            raise TimeFrameError(f"{source} line {line}: {field} is empty")
        if stamp.tzinfo is None:
            raise TimeFrameError(f"{source} line {line}: {field} {raw!r} has no UTC offset "
                                 f"(write e.g. {stamp.isoformat()}-05:00 or {stamp.isoformat()}Z)")
        out.append(stamp.tz_convert("UTC"))
    return pd.DatetimeIndex(out, dtype=f"datetime64[{TIME_UNIT}, UTC]")


def interval_grid(start: pd.Timestamp, interval: pd.Timedelta, periods: int) -> pd.DatetimeIndex:
    """``periods`` interval starts from ``start`` (tz-aware) in steps of ``interval``, exactly."""
    start = pd.Timestamp(start)
    if start.tzinfo is None:
        raise TimeFrameError(f"grid start {start} has no timezone")
    return pd.date_range(start.tz_convert("UTC"), periods=periods, freq=pd.Timedelta(interval)).as_unit(TIME_UNIT)


def _ns(values: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    index = pd.DatetimeIndex(values)
    if index.tz is None:
        raise TimeFrameError("times must be tz-aware")
    return index.tz_convert("UTC").as_unit("ns").asi8


def time_weighted_mean(starts: Sequence[object], ends: Sequence[object], values: Sequence[float],
                       grid: pd.DatetimeIndex, interval: pd.Timedelta) -> np.ndarray:
    """Mean of a piecewise-constant series over each grid interval, weighted by overlap.

    Parameters
    ----------
    starts, ends : length n, tz-aware; the rows' ``[start, end)``; rows must not overlap
    values : length n, the value on each row (e.g. $/MWh or kW); NaN rows count as missing
    grid : length m, tz-aware interval starts
    interval : the grid's interval length

    Returns
    -------
    np.ndarray, length m: the time-weighted mean where the rows cover the whole interval, NaN
    where any part of it is uncovered (an unknown interval).

    Raises
    ------
    TimeFrameError
        Overlapping rows (two values for one moment), or naive times.
    """
    s, e = _ns(pd.DatetimeIndex(starts)), _ns(pd.DatetimeIndex(ends))
    v = np.asarray(values, dtype=float)
    keep = ~np.isnan(v)
    s, e, v = s[keep], e[keep], v[keep]
    order = np.argsort(s, kind="stable")
    s, e, v = s[order], e[order], v[order]
    if len(s) > 1 and (s[1:] < e[:-1]).any():
        k = int(np.argmax(s[1:] < e[:-1]))
        raise TimeFrameError(f"rows overlap: [{pd.Timestamp(s[k], tz='UTC')}, {pd.Timestamp(e[k], tz='UTC')}) and "
                             f"the row starting {pd.Timestamp(s[k + 1], tz='UTC')}")
    g0 = _ns(grid)
    width = pd.Timedelta(interval).value
    g1 = g0 + width
    out = np.full(len(g0), np.nan)
    lo = np.searchsorted(e, g0, side="right")  # first row ending after the interval starts
    hi = np.searchsorted(s, g1, side="left")  # rows starting before the interval ends
    for k in range(len(g0)):
        if hi[k] <= lo[k]:
            continue
        a = np.maximum(s[lo[k]:hi[k]], g0[k])
        b = np.minimum(e[lo[k]:hi[k]], g1[k])
        overlap = (b - a).astype(float)
        if overlap.sum() == float(width):  # exact integer nanoseconds: fully covered
            out[k] = float(np.dot(overlap, v[lo[k]:hi[k]]) / width)
    return out


def strictest_in_interval(starts: Sequence[object], ends: Sequence[object | None], values: Sequence[float],
                          grid: pd.DatetimeIndex, interval: pd.Timedelta) -> np.ndarray:
    """Lowest value of any window overlapping each grid interval (inf where none).

    ``ends`` may hold None (open-ended). Used for import limits and noise caps: an interval is held
    to the strictest limit in force at any moment inside it.
    """
    g0 = pd.DatetimeIndex(grid).tz_convert("UTC")
    g1 = g0 + pd.Timedelta(interval)
    out = np.full(len(g0), np.inf)
    for start, end, value in zip(starts, ends, values, strict=True):
        lo = pd.Timestamp(start)
        inside = g1 > lo
        if end is not None:
            inside &= g0 < pd.Timestamp(end)
        out[inside] = np.minimum(out[inside], float(value))
    return out


@dataclass(frozen=True)
class Gap:
    """A run of unknown intervals ``[start, end)`` (``intervals`` of them)."""

    start: pd.Timestamp
    end: pd.Timestamp
    intervals: int

    def describe(self) -> str:
        return f"{self.start.isoformat()} to {self.end.isoformat()} ({self.intervals} interval(s))"


def gap_runs(grid: pd.DatetimeIndex, values: np.ndarray, interval: pd.Timedelta) -> list[Gap]:
    """Runs of NaN in ``values`` over ``grid`` as :class:`Gap` records (empty: no gap)."""
    missing = np.isnan(np.asarray(values, dtype=float))
    gaps: list[Gap] = []
    k = 0
    while k < len(missing):
        if not missing[k]:
            k += 1
            continue
        j = k
        while j < len(missing) and missing[j]:
            j += 1
        gaps.append(Gap(grid[k], grid[j - 1] + pd.Timedelta(interval), j - k))
        k = j
    return gaps


def parse_iso_date(text: str, *, option: str) -> pd.Timestamp:
    """A command-line date or time in ISO 8601 only (``2020-02-10``, ``2020-02-10T06:00-06:00``).

    Raises
    ------
    ValueError
        Anything else (``10/02/2020`` is ambiguous: 10 February or 2 October), naming the option.
    """
    import re

    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?", text.strip()):
        raise ValueError(f"{option} {text!r}: use an ISO 8601 date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM±HH:MM)")
    return pd.Timestamp(text.strip())


def iso_date_argument(option: str):  # noqa: ANN201 - an argparse ``type=`` callable
    """An argparse ``type=`` that accepts only ISO 8601 dates/times (:func:`parse_iso_date`) and
    returns the text unchanged (the command decides what a date means: local midnight, etc.)."""
    import argparse

    def check(text: str) -> str:
        try:
            parse_iso_date(text, option=option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text.strip()

    return check


# ------------------------------------------------------------------ the canonical price frame

log = logging.getLogger(__name__)

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
    """Malformed price input, naming where: ``"RTM-2020-02.csv line 17: Settlement Point Price
    'abc' is not a number"``.

    ``source`` is the file (or a label for in-memory input), ``location`` e.g. ``"line 17"`` or
    ``"page 2 row 5"`` (None when the whole input is at fault), ``field`` the column involved.
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
    """One (interval, point, market) key that appeared with different prices."""

    interval_start: pd.Timestamp
    settlement_point: str
    market: str
    prices_usd_mwh: tuple[float, ...]  # every price seen, in input order
    kept_price_usd_mwh: float  # the last one


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`finalize_price_frame` removed. Empty (falsy) when the input had no repeats."""

    source: str
    identical_rows_dropped: int = 0
    conflicting_rows_dropped: int = 0
    conflicts: tuple[DuplicateConflict, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.identical_rows_dropped or self.conflicting_rows_dropped)


def empty_price_frame() -> pd.DataFrame:
    """A zero-row frame that passes :func:`check_price_frame` (for 'no data' without None)."""
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
    """Raise ``ValueError`` naming the first way ``df`` breaks the canonical contract.

    Run on every parser's output so a broken feed fails where it is read, not in the optimizer.
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
    """Turn parsed rows (canonical columns, in input order) into a checked canonical frame.

    Resolves duplicates (see module docstring), sorts, attaches ``attrs["duplicates"]`` and
    ``attrs["source"]``, then runs :func:`check_price_frame`.
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
