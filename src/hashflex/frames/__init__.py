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

The contract is split along its seam: interval arithmetic and resampling in
:mod:`hashflex.frames.intervals`, the canonical price frame in :mod:`hashflex.frames.prices`; every
name is importable from ``hashflex.frames`` as before.

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

from hashflex.frames.intervals import (  # noqa: F401 - TIME_UNIT importable as before, not in __all__
    TIME_UNIT,
    Gap,
    TimeFrameError,
    gap_runs,
    in_force,
    interval_grid,
    iso_date_argument,
    parse_iso_date,
    require_aware,
    strictest_in_interval,
    time_weighted_mean,
    utc_now,
)
from hashflex.frames.prices import (
    KEY_COLUMNS,
    MARKETS,
    PRICE_COLUMNS,
    DuplicateConflict,
    DuplicateReport,
    PriceFileError,
    check_price_frame,
    empty_price_frame,
    finalize_price_frame,
)

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
