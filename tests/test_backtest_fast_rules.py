"""The rule baselines' hashprice (the newest value published by the tick) by one searchsorted per
tick (issue 18: a filter and a sort per tick took a tenth of a threshold month) is the value the
filter and sort gave: on random SYNTHETIC hashprice series (publication out of order, late, NaT) and
on the bundled series at every tick of a month."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.backtest.closed_loop import _published_newest_index
from hashflex.feeds.hashprice import bundled_hashprice


def known_reference(hashprice: pd.DataFrame, now: pd.Timestamp) -> float | None:
    """The rule as written before: rows published by ``now``, sorted by timestamp, the last one's value."""
    known = hashprice[pd.to_datetime(hashprice["published_at"], utc=True) <= now.tz_convert("UTC")]
    return None if known.empty else float(known.sort_values("timestamp")["hashprice_usd_per_ph_day"].iloc[-1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(days=st.lists(st.integers(0, 60), min_size=1, max_size=25, unique=True),
       delays_h=st.lists(st.one_of(st.integers(-30, 200), st.none()), min_size=25, max_size=25),
       asks_h=st.lists(st.integers(-48, 24 * 70), min_size=1, max_size=30))
def test_the_newest_published_hashprice_is_the_filtered_and_sorted_one(days, delays_h, asks_h) -> None:
    base = pd.Timestamp("2020-01-01", tz="UTC")
    stamps = [base + pd.Timedelta(days=d) for d in days]  # SYNTHETIC, in no particular order
    published = [pd.NaT if delay is None else stamp + pd.Timedelta(hours=delay)
                 for stamp, delay in zip(stamps, delays_h)]
    frame = pd.DataFrame({"timestamp": pd.DatetimeIndex(stamps), "published_at": pd.to_datetime(published, utc=True),
                          "hashprice_usd_per_ph_day": np.arange(len(stamps), dtype=float) + 100.0})
    lookup = _published_newest_index(frame)
    assert lookup is not None
    for hours in asks_h:
        now = base + pd.Timedelta(hours=hours)
        assert lookup(now) == known_reference(frame, now), now
    assert lookup(base.tz_convert("America/Chicago") + pd.Timedelta(days=90)) == known_reference(
        frame, base + pd.Timedelta(days=90))  # a local time is asked in UTC


def test_ambiguous_series_keep_the_filter_and_sort() -> None:
    frame = pd.DataFrame({"timestamp": pd.to_datetime(["2020-01-01", "2020-01-01"], utc=True),
                          "published_at": pd.to_datetime(["2020-01-01", "2020-01-02"], utc=True),
                          "hashprice_usd_per_ph_day": [1.0, 2.0]})
    assert _published_newest_index(frame) is None  # a repeated timestamp: no single newest row
    assert _published_newest_index(None) is None


def test_the_bundled_series_at_every_tick_of_a_month() -> None:
    hashprice = bundled_hashprice()
    lookup = _published_newest_index(hashprice)
    ticks = pd.date_range("2020-02-01T06:00Z", "2020-03-01T06:00Z", freq="15min")
    got = [lookup(t) for t in ticks]
    assert got == [known_reference(hashprice, t) for t in ticks]
    assert len(set(got)) > 20  # the value moved day by day
