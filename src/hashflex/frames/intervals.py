"""Time-series arithmetic on UTC intervals: aware times, exact interval grids, one resampling rule per quantity.

Part of the frame contract (:mod:`hashflex.frames`, which describes the rules and re-exports every
name here): :func:`require_aware`, :func:`interval_grid`, :func:`time_weighted_mean` (prices and
power), :func:`strictest_in_interval` (limits and caps), :func:`gap_runs`, ISO 8601 dates for the
command line (:func:`parse_iso_date`, :func:`iso_date_argument`), and the one clock (:func:`utc_now`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

__all__ = ["TIME_UNIT", "Gap", "TimeFrameError", "gap_runs", "in_force", "interval_grid", "iso_date_argument",
           "parse_iso_date", "require_aware", "strictest_in_interval", "time_weighted_mean", "utc_now"]

TIME_UNIT = "us"


def in_force(window_start: datetime, window_end: datetime | None, start: datetime, end: datetime | None = None) -> bool:
    """Whether ``[window_start, window_end)`` (open-ended when ``window_end`` is None) overlaps the moment
    ``start`` or the interval ``[start, end)`` — the one rule every limit, hold, DR event and AS deployment
    is "in force" by (strictest-in-interval: any overlap binds the whole interval).

    Parameters
    ----------
    window_start, window_end : datetime
        The window, timezone-aware; ``window_end`` None: until further notice.
    start : datetime
        The moment, or the interval's start.
    end : datetime, optional
        The interval's end; None (or not after ``start``) asks about the moment ``start``.

    Returns
    -------
    bool
    """
    until = end if end is not None and end > start else start + timedelta(microseconds=1)
    return window_start < until and (window_end is None or window_end > start)


def utc_now() -> datetime:
    """The wall clock, tz-aware UTC: the one clock of hashflex (everything else takes ``now``).

    Returns
    -------
    datetime
    """
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
    """``periods`` interval starts from ``start`` in steps of ``interval``, in exact integer nanoseconds.

    Parameters
    ----------
    start : pandas.Timestamp
        The first interval start (tz-aware).
    interval : pandas.Timedelta
        The interval length.
    periods : int
        Number of intervals.

    Returns
    -------
    pandas.DatetimeIndex
        Length ``periods``, tz UTC, unit microseconds.

    Raises
    ------
    TimeFrameError
        ``start`` is naive.
    """
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

    The rule for prices (ERCOT's 15-minute real-time settlement point price is the time-weighted
    average of the SCED interval LMPs in it: ERCOT Nodal Protocols §6.6.1) and for power (the mean
    conserves energy).

    Parameters
    ----------
    starts, ends : sequence of datetime-like, length n
        The rows' ``[start, end)`` (tz-aware); rows must not overlap.
    values : sequence of float, length n
        The value on each row (e.g. $/MWh or kW); NaN rows count as missing.
    grid : pandas.DatetimeIndex, length m
        Interval starts (tz-aware).
    interval : pandas.Timedelta
        The grid's interval length.

    Returns
    -------
    numpy.ndarray
        Shape ``(m,)``: the time-weighted mean where the rows cover the whole interval, NaN where
        any part of it is uncovered (an unknown interval).

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
    """Lowest value of any window overlapping each grid interval.

    Used for import limits and noise caps: an interval is held to the strictest limit in force at
    any moment inside it.

    Parameters
    ----------
    starts : sequence of datetime-like, length n
        Window starts (tz-aware).
    ends : sequence of datetime-like or None, length n
        Window ends (exclusive); None: open-ended.
    values : sequence of float, length n
        The limit in each window (e.g. kW, dB(A)).
    grid : pandas.DatetimeIndex, length m
        Interval starts (tz-aware).
    interval : pandas.Timedelta

    Returns
    -------
    numpy.ndarray
        Shape ``(m,)``; ``inf`` where no window overlaps.
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
    """A run of unknown intervals ``[start, end)``.

    Attributes
    ----------
    start, end : pandas.Timestamp
        UTC.
    intervals : int
        How many grid intervals it spans.
    """

    start: pd.Timestamp
    end: pd.Timestamp
    intervals: int

    def describe(self) -> str:
        """``"<start> to <end> (<n> interval(s))"`` in ISO 8601, for notes and logs."""
        return f"{self.start.isoformat()} to {self.end.isoformat()} ({self.intervals} interval(s))"


def gap_runs(grid: pd.DatetimeIndex, values: np.ndarray, interval: pd.Timedelta) -> list[Gap]:
    """Runs of NaN in ``values`` over ``grid``.

    Parameters
    ----------
    grid : pandas.DatetimeIndex, length m
    values : numpy.ndarray, shape (m,)
    interval : pandas.Timedelta
        The grid's interval length.

    Returns
    -------
    list[Gap]
        In time order; empty when nothing is unknown.
    """
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

    Parameters
    ----------
    text : str
    option : str
        The option's name, for the error (e.g. ``--from``).

    Returns
    -------
    pandas.Timestamp
        Naive for a date or a time without offset (the command decides its zone).

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
    """An argparse ``type=`` that accepts only ISO 8601 dates and times (:func:`parse_iso_date`).

    Parameters
    ----------
    option : str
        The option's name, for the error.

    Returns
    -------
    Callable[[str], str]
        Returns the text unchanged (the command decides what a date means: local midnight, etc.);
        raises ``argparse.ArgumentTypeError`` for anything else.
    """
    import argparse

    def check(text: str) -> str:
        try:
            parse_iso_date(text, option=option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text.strip()

    return check
