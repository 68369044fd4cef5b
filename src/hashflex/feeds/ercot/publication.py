"""When ERCOT publishes each price: :func:`publication_times` and :data:`DAM_PUBLISHED_LOCAL_HOUR`,
so a forecast or backtest sees a price only from the moment it was public (no look-ahead).

Seam: ERCOT's publication schedule, independent of any file format; split from
``feeds/ercot.py`` (issue 11).
"""

from __future__ import annotations

import pandas as pd

from hashflex.feeds.ercot.cells import CENTRAL_TZ

__all__ = ["DAM_PUBLISHED_LOCAL_HOUR", "publication_times"]


DAM_PUBLISHED_LOCAL_HOUR = 13
"""ERCOT posts Day-Ahead Market results around 13:00 Central the day before the operating day
(Nodal Protocols §4.5.3, "Communicating DAM Results"; the DAM closes at 10:00)."""


def publication_times(prices: pd.DataFrame) -> pd.Series:
    """When each price of a canonical frame became known, as ERCOT publishes them.

    Real-time settlement point prices: at the end of their interval (posted within minutes of the
    interval's last SCED run; Nodal Protocols §6.3.2). Day-ahead prices: at 13:00 Central
    prevailing time the day before the operating day (:data:`DAM_PUBLISHED_LOCAL_HOUR`).

    Parameters
    ----------
    prices : canonical price frame (``interval_start``, ``interval_end``, ``market`` …), n rows

    Returns
    -------
    pd.Series, n rows, tz-aware UTC, aligned with ``prices``.
    """
    local_day = prices["interval_start"].dt.tz_convert(CENTRAL_TZ).dt.normalize()
    da_time = (local_day - pd.Timedelta(days=1) + pd.Timedelta(hours=DAM_PUBLISHED_LOCAL_HOUR)).dt.tz_convert("UTC")
    return prices["interval_end"].where(prices["market"] == "RT", da_time)
