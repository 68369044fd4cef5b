"""Plausibility of ERCOT's system load forecast (issue 14): one set of rules for every door it comes
through — the MQTT ingest (``in/load_forecast``, through :func:`hashflex.plausibility.check_plausible`)
and the HTTP poll (``feeds.load_forecast.LoadForecastFeed``, row by row).

Rules: the load within [``MIN_MW``, ``MAX_MW``] (ERCOT's system load has stayed within ~30-86 GW;
the bounds leave room either side), not published more than 5 minutes after now (clocks differ a
little), each interval ending after it starts, and no interval starting more than ``max_lead_days``
(9) after publication (ERCOT's seven-day forecast covers the day and 7 more).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

__all__ = ["MAX_MW", "MIN_MW", "check_load_forecast", "load_forecast_fault", "message_frame"]

MIN_MW, MAX_MW = 10_000.0, 150_000.0
_FUTURE_SKEW = pd.Timedelta(minutes=5)  # clocks differ a little; a posting from further ahead is not believed


def message_frame(message: Any) -> pd.DataFrame:
    """A :class:`~hashflex.messages.inbound.LoadForecastMessage` as ``interval_start, interval_end, load_forecast_mw, published_at`` (one row a point).

    Parameters
    ----------
    message : LoadForecastMessage

    Returns
    -------
    pandas.DataFrame
    """
    starts = pd.to_datetime([p.interval_start for p in message.points], utc=True)
    return pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=message.interval_minutes),
                         "load_forecast_mw": [float(p.load_forecast_mw) for p in message.points],
                         "published_at": pd.Timestamp(message.published_at).tz_convert("UTC")})


def check_load_forecast(frame: pd.DataFrame, now: datetime, *, min_mw: float = MIN_MW, max_mw: float = MAX_MW,
                        max_lead_days: float = 9.0) -> tuple[pd.DataFrame, dict[str, int], list[str], list[int]]:
    """Split load forecast rows into plausible and not (see the module docstring).

    Parameters
    ----------
    frame : pandas.DataFrame
        ``interval_start, interval_end, load_forecast_mw, published_at``.
    now : datetime
        Aware; a posting published after ``now`` + 5 min is refused.
    min_mw, max_mw : float
        Plausible system load, MW.
    max_lead_days : float
        Latest interval start after ``published_at``, days (ERCOT's forecast covers the day and 7 more).

    Returns
    -------
    (kept, dropped, reasons, bad_rows)
        ``kept``: the plausible rows; ``dropped``: rows per reason class (``out_of_bounds:load_forecast_mw``,
        ``future:published_at``, ``order:interval_end``, ``out_of_bounds:interval_start``); ``reasons``:
        up to three readable reasons naming the field and the value; ``bad_rows``: positions of the
        refused rows in ``frame``.
    """
    now_ts = pd.Timestamp(now).tz_convert("UTC")
    mw = frame["load_forecast_mw"].astype(float)
    checks = (
        ("out_of_bounds:load_forecast_mw", ~mw.between(min_mw, max_mw),
         lambda r: f"load_forecast_mw {r['load_forecast_mw']:,.0f} MW outside [{min_mw:,.0f}, {max_mw:,.0f}] MW"),
        ("future:published_at", frame["published_at"] > now_ts + _FUTURE_SKEW,
         lambda r: f"published_at {r['published_at'].isoformat()} is after now ({now_ts.isoformat()})"),
        ("order:interval_end", frame["interval_end"] <= frame["interval_start"],
         lambda r: "interval_end: not after interval_start"),
        ("out_of_bounds:interval_start",
         frame["interval_start"] > frame["published_at"] + pd.Timedelta(days=max_lead_days),
         lambda r: f"interval_start {r['interval_start'].isoformat()} is more than {max_lead_days:g} days after "
                   f"published_at"),
    )
    refused = pd.Series(False, index=frame.index)
    dropped: dict[str, int] = {}
    reasons: list[str] = []
    for rule, mask, say in checks:
        new = mask & ~refused  # one reason per row: the first that applies
        if new.any():
            dropped[rule] = int(new.sum())
            if len(reasons) < 3:
                position = int(new.to_numpy().argmax())
                reasons.append(f"row {position}: {say(frame.iloc[position])}")
            refused |= new
    bad_rows = [int(i) for i in refused.to_numpy().nonzero()[0]]
    return frame[~refused], dropped, reasons, bad_rows


def load_forecast_fault(message: Any, now: datetime, *, min_mw: float = MIN_MW,
                        max_mw: float = MAX_MW) -> tuple[str, str, str] | None:
    """The plausibility fault of one ``in/load_forecast`` message, all points or none (the form
    :func:`hashflex.plausibility.check_plausible` reports): None when plausible, else ``(rule, field,
    reason)`` with the reason naming the point's field (``points.3.load_forecast_mw: row 3:
    load_forecast_mw 250,000 MW outside [...]``).

    Parameters
    ----------
    message : LoadForecastMessage
    now : datetime
        Aware.
    min_mw, max_mw : float
        Plausible system load, MW.
    """
    frame = message_frame(message)
    _, dropped, reasons, bad = check_load_forecast(frame, now, min_mw=min_mw, max_mw=max_mw)
    if not bad:
        return None
    rule, field = next(iter(dropped)).split(":", 1)
    where = "published_at" if field == "published_at" else f"points.{bad[0]}.{field}"
    return rule, field, f"{where}: {reasons[0].split(': ', 1)[1]}"
