"""Demand-response baselines: what the site would have drawn without the event (pure functions).

Sources
-------
ERCOT, *Demand Response Baseline Methodologies* (ERCOT Procedure; e.g. Version 19.0, September
2019), Section 2 "Baselines", which ERCOT applies to Emergency Response Service (ERS) Loads through
the *ERS Technical Requirements & Scope of Work*, section "Baselines for ERS Loads". ERCOT's default
baseline types are the Statistical Regression Model, the *Middle 8-of-10 Preceding Like Days* model
and the Matching Day Pair model, each with an *event-day adjustment*. ERCOT picks the type per
resource and fits the regression on its own data; only the middle-8-of-10 type (and the simple
meter-before-event type below, which ERCOT's EILS baseline analyses also evaluated as "average
load for the hour before notification") can be reproduced from the site's own audit trail, so
those two are implemented here. A figure from them is the site's own estimate, not ERCOT's
settlement value.

Middle 8-of-10 like days (:func:`middle_8_of_10`)
    Like days: the days before the event day (site-local) of the same type — weekday (Mon–Fri) or
    weekend — that had no DR event in force and whose metered import covers every interval of the
    event window at the same local clock times. The 10 most recent like days are taken (none older
    than ``search_days``); they are ranked by their mean import over the event window, the highest
    and the lowest are dropped (ties broken by date, the older one dropped first), and the baseline
    of each event interval is the mean of the 8 remaining days' import in the same local interval.
    Fewer than 10 like days: no baseline (None, with the reason). Holidays are not excluded (the
    trail holds no holiday calendar); the result names the days used and dropped so a reviewer can.
    Event-day adjustment (scalar, as ERCOT's default types apply one): factor = Σ metered import /
    Σ unadjusted baseline over the ``adjust_hours`` before the adjustment anchor (the earlier of
    the notification and the event start, so the response is not in it), computed the same way for
    those intervals; the adjusted baseline is the unadjusted one × factor. Without complete data for
    the adjustment window the factor is None and the unadjusted baseline is used.

Meter before event (:func:`meter_before_event`)
    The time-weighted mean metered import of the intervals that lie wholly in the ``hours`` before
    the anchor (the earlier of notification and start): one flat kW for every event interval.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

__all__ = ["BaselineResult", "like_day_type", "meter_before_event", "middle_8_of_10"]

LIKE_DAYS = 10
KEEP_DAYS = 8


@dataclass(frozen=True)
class BaselineResult:
    """``per_interval_kw`` aligned with the event intervals given (None where not computable);
    ``method``; ``note`` says why a baseline is missing or how it was built."""

    method: str
    per_interval_kw: list[float | None]
    note: str = ""
    days_used: list[str] = field(default_factory=list)
    days_dropped: list[str] = field(default_factory=list)
    adjustment_factor: float | None = None

    @property
    def ok(self) -> bool:
        """True when there is a baseline for every event interval."""
        return bool(self.per_interval_kw) and all(v is not None for v in self.per_interval_kw)

    def to_json(self) -> dict[str, Any]:
        """The baseline's method, note, like days used and dropped, and adjustment factor (per-interval
        values are reported with the settlement rows).

        Returns
        -------
        dict
        """
        return {"method": self.method, "note": self.note, "days_used": self.days_used,
                "days_dropped": self.days_dropped, "adjustment_factor": self.adjustment_factor}


def like_day_type(day: dt.date) -> str:
    """``weekday`` (Mon–Fri) or ``weekend``.

    Parameters
    ----------
    day : datetime.date
        A site-local date.

    Returns
    -------
    str
    """
    return "weekday" if day.weekday() < 5 else "weekend"


def _import_by_start(history: pd.DataFrame) -> dict[pd.Timestamp, float]:
    out = {}
    for start, kw in zip(history["interval_start"], history["import_kw"], strict=True):
        if kw is not None and math.isfinite(float(kw)):
            out[pd.Timestamp(start).tz_convert("UTC")] = float(kw)
    return out


def _same_clock(moment: pd.Timestamp, day: dt.date, tz: ZoneInfo) -> pd.Timestamp | None:
    """The instant at ``moment``'s local clock time on ``day`` (None if that time does not exist
    or is ambiguous there: DST changes)."""
    local = moment.tz_convert(tz)
    naive = pd.Timestamp(dt.datetime.combine(day, local.time()))
    try:
        return naive.tz_localize(tz, ambiguous="raise", nonexistent="raise").tz_convert("UTC")
    except Exception:  # noqa: BLE001 - pytz/zoneinfo raise different types for DST gaps and folds
        return None


def middle_8_of_10(history: pd.DataFrame, event_starts: Sequence[pd.Timestamp], tz: str, *,
                   excluded_days: Collection[dt.date] = (), adjust_anchor: pd.Timestamp | None = None,
                   adjust_hours: float = 2.0, interval_h: float | None = None,
                   search_days: int = 60) -> BaselineResult:
    """ERCOT middle-8-of-10 preceding like days baseline for the event intervals starting at
    ``event_starts`` (UTC). ``history``: measurement frame with ``interval_start`` (UTC) and
    ``import_kw``; ``excluded_days``: site-local dates with a DR event in force (never like days).
    See the module docstring for the definition; never raises for missing data.

    Parameters
    ----------
    history : pd.DataFrame
        Every measured interval: ``interval_start`` (UTC), ``import_kw`` (kW).
    event_starts : sequence of pd.Timestamp
        The event's interval starts, UTC.
    tz : str
        The site's time zone (like days are site-local days).
    excluded_days : collection of datetime.date
        Site-local days that are never like days.
    adjust_anchor : pd.Timestamp, optional
        The adjustment anchor (module docstring); without it (or ``interval_h``) no event-day
        adjustment is made.
    adjust_hours : float
        Hours before the anchor used for the adjustment.
    interval_h : float, optional
        Interval length in hours, needed for the adjustment window.
    search_days : int
        How many days back like days are searched for.

    Returns
    -------
    BaselineResult
        kW per event interval (None where not computable) and how it was built.
    """
    zone = ZoneInfo(tz)
    method = "ERCOT middle 8-of-10 like days"
    if not event_starts:
        return BaselineResult(method, [], "no event intervals")
    imports = _import_by_start(history)
    event_day = pd.Timestamp(event_starts[0]).tz_convert(zone).date()
    kind = like_day_type(event_day)
    adjust_starts: list[pd.Timestamp] = []
    if adjust_anchor is not None and interval_h:
        step = pd.Timedelta(hours=interval_h)
        n = int(round(adjust_hours / interval_h))
        first = pd.Timestamp(adjust_anchor).tz_convert("UTC").floor(step) - n * step
        adjust_starts = [first + k * step for k in range(n)]
        adjust_starts = [s for s in adjust_starts if s + step <= pd.Timestamp(adjust_anchor)]
    candidates: list[tuple[dt.date, list[float], list[float] | None]] = []
    day = event_day
    for _ in range(search_days):
        day = day - dt.timedelta(days=1)
        if like_day_type(day) != kind or day in excluded_days:
            continue
        moments = [_same_clock(pd.Timestamp(s), day, zone) for s in event_starts]
        if any(m is None or m not in imports for m in moments):
            continue
        adjust = [_same_clock(pd.Timestamp(s), day - (event_day - pd.Timestamp(s).tz_convert(zone).date()), zone)
                  for s in adjust_starts]
        complete = bool(adjust) and all(m is not None and m in imports for m in adjust)
        adjust_kw = [imports[m] for m in adjust] if complete else None  # type: ignore[index]
        candidates.append((day, [imports[m] for m in moments], adjust_kw))
        if len(candidates) == LIKE_DAYS:
            break
    if len(candidates) < LIKE_DAYS:
        return BaselineResult(method, [None] * len(event_starts),
                              f"needs {LIKE_DAYS} like {kind}s with complete meter data in the {search_days} days "
                              f"before {event_day}; found {len(candidates)}")
    ranked = sorted(candidates, key=lambda c: (sum(c[1]) / len(c[1]), c[0]))
    dropped, kept = [ranked[0], ranked[-1]], ranked[1:-1]
    unadjusted = [sum(c[1][i] for c in kept) / KEEP_DAYS for i in range(len(event_starts))]
    factor = None
    note = f"mean of {KEEP_DAYS} like {kind}s (highest and lowest of {LIKE_DAYS} dropped)"
    actual = [imports.get(s) for s in adjust_starts]
    if adjust_starts and all(c[2] is not None for c in kept) and all(a is not None for a in actual):
        base = [sum(c[2][i] for c in kept) / KEEP_DAYS for i in range(len(adjust_starts))]  # type: ignore[index]
        if sum(base) > 0:
            factor = sum(actual) / sum(base)  # type: ignore[arg-type]
    if factor is None:
        note += "; no event-day adjustment (no complete meter data before the event)"
        values = unadjusted
    else:
        note += f"; event-day adjustment × {factor:.4f} over the {adjust_hours:g} h before notification"
        values = [v * factor for v in unadjusted]
    return BaselineResult(method, values, note, [str(c[0]) for c in sorted(kept)], [str(c[0]) for c in dropped],
                          factor)


def meter_before_event(history: pd.DataFrame, anchor: pd.Timestamp, n_intervals: int, *,
                       hours: float = 1.0) -> BaselineResult:
    """Mean metered import over the intervals wholly inside the ``hours`` before ``anchor`` (UTC),
    the same kW for each of the ``n_intervals`` event intervals.

    Parameters
    ----------
    history : pd.DataFrame
        Every measured interval: ``interval_start`` (UTC), ``import_kw`` (kW).
    anchor : pd.Timestamp
        The event's notification (or start), UTC.
    n_intervals : int
        Number of event intervals.
    hours : float
        Length of the window before ``anchor``.

    Returns
    -------
    BaselineResult
    """
    method = "meter before event"
    anchor = pd.Timestamp(anchor).tz_convert("UTC")
    begin = anchor - pd.Timedelta(hours=hours)
    if history.empty:
        return BaselineResult(method, [None] * n_intervals, "no meter data before the event")
    ends = history["interval_start"] + pd.to_timedelta(history["interval_h"], unit="h")
    sel = history[(history["interval_start"] >= begin) & (ends <= anchor) & history["import_kw"].notna()]
    if sel.empty:
        return BaselineResult(method, [None] * n_intervals,
                              f"no metered interval wholly in the {hours:g} h before {anchor.isoformat()}")
    kw = float((sel["import_kw"] * sel["interval_h"]).sum() / sel["interval_h"].sum())
    return BaselineResult(method, [kw] * n_intervals,
                          f"mean metered import of {len(sel)} interval(s) in the {hours:g} h before notification "
                          f"or start, whichever is earlier")
