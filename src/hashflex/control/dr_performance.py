"""Measured performance of DR events: metered import per interval against the event's limit, and compliance
the way a utility settles it. A mixin of :class:`~hashflex.control.dr.DRBook`, split from
:mod:`hashflex.control.dr` along its seam; pure.
"""

from __future__ import annotations

import math
from datetime import datetime


from hashflex.control.dr_values import Compliance, DRRecord




class PerformanceMixin:
    """Measured performance of DR events (a mixin of :class:`~hashflex.control.dr.DRBook`)."""

    # ------------------------------------------------------------------ performance

    def record(self, event_id: str, interval_start: datetime, measured_kw: float,
               baseline_kw: float | None = None) -> DRRecord:
        """Record one interval of an event: the measured import against the event's limit. The
        baseline defaults to the event's own ``baseline_kw`` (shed events).

        A second record for the same interval replaces the first.

        Parameters
        ----------
        event_id : str
            A known event.
        interval_start : datetime
            The interval's start, timezone-aware.
        measured_kw : float
            The site's measured import over the interval, kW.
        baseline_kw : float, optional
            The import the reduction is measured from, kW (default: the message's ``baseline_kw``,
            None for events without one).

        Returns
        -------
        DRRecord
            The record stored, with the event's limit.

        Raises
        ------
        KeyError
            If the book does not know the event.
        """
        event = self._events[event_id]
        baseline = baseline_kw if baseline_kw is not None else event.message.baseline_kw
        rec = DRRecord(interval_start, baseline, event.limit_kw, float(measured_kw))
        event.records = [r for r in event.records if r.interval_start != interval_start] + [rec]
        event.records.sort(key=lambda r: r.interval_start)
        return rec

    def records(self, event_id: str) -> list[DRRecord]:
        """The event's performance records.

        Parameters
        ----------
        event_id : str
            A known event.

        Returns
        -------
        list of DRRecord
            A copy, sorted by ``interval_start``.

        Raises
        ------
        KeyError
            If the book does not know the event.
        """
        return list(self._events[event_id].records)

    def compliance(self, event_id: str, tolerance_kw: float = 0.0) -> Compliance:
        """How well the site delivered the event over the intervals recorded so far.

        Parameters
        ----------
        event_id : str
            A known event.
        tolerance_kw : float, default 0.0
            An interval complies when measured ≤ limit + ``tolerance_kw``, kW.

        Returns
        -------
        Compliance
            Shares and mean reductions; NaN where there is nothing to average (see its fields).

        Raises
        ------
        KeyError
            If the book does not know the event.
        """
        records = self._events[event_id].records
        n = len(records)
        ok = sum(r.measured_kw <= r.limit_kw + tolerance_kw for r in records)
        with_base = [r for r in records if r.baseline_kw is not None and math.isfinite(r.limit_kw)]
        requested = (sum(max(r.baseline_kw - r.limit_kw, 0.0) for r in with_base) / len(with_base)
                     if with_base else math.nan)
        delivered = (sum(r.baseline_kw - r.measured_kw for r in with_base) / len(with_base)
                     if with_base else math.nan)
        return Compliance(
            event_id=event_id,
            intervals=n,
            compliant_intervals=ok,
            compliant_pct=100.0 * ok / n if n else math.nan,
            requested_reduction_kw=requested,
            delivered_reduction_kw=delivered,
            delivered_pct=100.0 * delivered / requested if with_base and requested > 0 else math.nan,
            worst_excess_kw=max([max(r.measured_kw - r.limit_kw, 0.0) for r in records], default=0.0),
        )
