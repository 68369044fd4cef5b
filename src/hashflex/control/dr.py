"""Demand-response lifecycle: which events are accepted, what import limit they impose, and how well
the site delivered. Pure: no network, no clock (``now`` is passed in).

Acceptance (:meth:`DRBook.apply`), checked in this order; the first failure is the rejection reason:

- the issuer is in ``profile.dr.issuers`` (an empty list accepts nobody);
- ``end`` is after ``start``;
- a known event: the modification number is higher than the one held (equal: a duplicate; lower:
  stale), the issuer is the original one, and the event has not ended or been cancelled;
- an unknown event: it is not a cancellation (nothing to cancel) and has not already ended at ``now``;
- a ``level`` has an import limit in ``profile.dr.level_import_limit_kw`` (level 0, "normal
  operation" in OpenADR simple levels, means no limit).

Limit of one event: ``import_limit_kw``; or ``baseline_kw − shed_kw``; or the profile's limit for
its level (resolved when the event is accepted). An event is in force on ``[start, end)``; an
open-ended event (``end`` None) until it is cancelled. The site limit at a time is the minimum over
events in force; an interval is bound by every event in force at any moment inside it.

Status per event (the values of ``store.DR_STATUSES``): ``pending`` → ``active`` → ``completed``, or
``cancelled``. A modification supersedes the event's terms (reported as a ``modified`` transition);
its status follows from the new times. :meth:`DRBook.transitions` reports every change since the
last call (the loop records the status in the store, re-plans, and on ``activated`` runs the guard's
fast path).

Performance: :meth:`DRBook.record` stores per event per interval the baseline, the requested limit
and the measured import; :meth:`DRBook.compliance` gives the share of intervals with measured ≤
limit + tolerance and the delivered reduction (baseline − measured) against the requested one
(baseline − limit).

Persistence: ``to_dict()`` / ``from_dict()`` (JSON-ready), inside the limits book
(:mod:`hashflex.control.limits`), which the loop commits before it acknowledges an event; a restart
resumes every accepted event with the limit it was accepted with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from hashflex.frames import in_force
from hashflex.messages import DREventMessage
from hashflex.control.dr_performance import PerformanceMixin
from hashflex.control.dr_values import (  # noqa: F401 - re-exported: the DR book's public values
    Compliance,
    DRDecision,
    DRRecord,
    DRTransition,
    source_label,
)
from hashflex.profile import SiteProfile

__all__ = ["Compliance", "DRBook", "DRDecision", "DRRecord", "DRTransition", "event_limit_kw", "source_label"]

PENDING, ACTIVE, COMPLETED, CANCELLED = "pending", "active", "completed", "cancelled"


@dataclass
class _Event:
    message: DREventMessage
    status: str
    limit_kw: float
    records: list[DRRecord] = field(default_factory=list)

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start`` (or at any moment in ``[start, end)``)."""
        if self.message.cancelled:
            return False
        msg = self.message
        return in_force(msg.start, msg.end, start, end)


def event_limit_kw(message: DREventMessage, profile: SiteProfile) -> float | None:
    """The import limit an event asks for; ``None`` when a level has no mapping (inf: no limit).

    In order: ``import_limit_kw``; else ``baseline_kw − shed_kw``; else the profile's limit for the
    ``level`` (level 0, "normal operation" in OpenADR simple levels, is no limit); a bare
    cancellation asks no limit.

    Parameters
    ----------
    message : DREventMessage
        The event message.
    profile : SiteProfile
        The site; ``dr.level_import_limit_kw`` maps levels 1–3 to import limits, kW.

    Returns
    -------
    float or None
        The import limit, kW; ``math.inf`` for no limit; None for a level the profile does not map
        (the event is then rejected).
    """
    if message.import_limit_kw is not None:
        return float(message.import_limit_kw)
    if message.shed_kw is not None and message.baseline_kw is not None:
        return float(message.baseline_kw - message.shed_kw)
    if message.level is not None:
        if message.level == 0:
            return math.inf
        limit = profile.dr.level_import_limit_kw.get(message.level)
        return None if limit is None else float(limit)
    return math.inf  # a bare cancellation


class DRBook(PerformanceMixin):
    """Every DR event the site knows, by id, with its status and performance records."""

    def __init__(self) -> None:
        self._events: dict[str, _Event] = {}
        self._queued: list[DRTransition] = []

    # ------------------------------------------------------------------ intake

    def apply(self, msg: DREventMessage, now: datetime, profile: SiteProfile) -> DRDecision:
        """Accept or reject one event message (see module docstring for the rules, in order).

        An accepted cancellation or modification queues a transition for :meth:`transitions`; a new
        event starts ``pending``.

        Parameters
        ----------
        msg : DREventMessage
            The event message (already schema-checked).
        now : datetime
            The decision time, timezone-aware.
        profile : SiteProfile
            The site: ``dr.issuers`` (who may send events) and ``dr.level_import_limit_kw``.

        Returns
        -------
        DRDecision
            Accepted with the event's limit (kW), or rejected with the first failed rule as reason.
        """
        def reject(reason: str) -> DRDecision:
            return DRDecision(msg.event_id, msg.modification_number, False, reason)

        if msg.issuer not in profile.dr.issuers:
            return reject(f"unknown issuer {msg.issuer!r} (site accepts {sorted(profile.dr.issuers)})")
        if msg.end is not None and msg.end <= msg.start:
            return reject(f"end {msg.end.isoformat()} is not after start {msg.start.isoformat()}")
        held = self._events.get(msg.event_id)
        if held is not None:
            number = held.message.modification_number
            if msg.modification_number == number:
                return reject(f"duplicate: modification {number} already applied")
            if msg.modification_number < number:
                return reject(f"stale: modification {msg.modification_number} is older than {number}")
            if msg.issuer != held.message.issuer:
                return reject(f"issuer {msg.issuer!r} differs from the event's issuer {held.message.issuer!r}")
            if held.status == CANCELLED:
                return reject("event already cancelled")
            if held.status == COMPLETED or (held.message.end is not None and held.message.end <= now):
                return reject(f"event already ended at {held.message.end}")
        else:
            if msg.cancelled:
                return reject("cancellation of an unknown event")
            if msg.end is not None and msg.end <= now:
                return reject(f"event already ended at {msg.end.isoformat()}")
        limit = event_limit_kw(msg, profile)
        if limit is None:
            return reject(f"level {msg.level} has no import limit in the site profile "
                          f"(mapped levels: {sorted(profile.dr.level_import_limit_kw)})")

        if held is None:
            self._events[msg.event_id] = _Event(msg, PENDING, limit)
            return DRDecision(msg.event_id, msg.modification_number, True,
                              f"accepted: new event, limit {limit:.1f} kW from {msg.start.isoformat()}"
                              f"{' until ' + msg.end.isoformat() if msg.end else ' until cancelled'}", limit)
        if msg.cancelled:
            held.message, held.status = msg, CANCELLED
            self._queued.append(DRTransition(msg.event_id, "cancelled", CANCELLED, now, math.inf))
            return DRDecision(msg.event_id, msg.modification_number, True, "accepted: event cancelled", math.inf)
        held.message, held.limit_kw = msg, limit
        self._queued.append(DRTransition(msg.event_id, "modified", held.status, now, limit))
        return DRDecision(msg.event_id, msg.modification_number, True,
                          f"accepted: modification {msg.modification_number} supersedes, limit {limit:.1f} kW",
                          limit)

    def transitions(self, now: datetime) -> list[DRTransition]:
        """Status changes since the last call (cancellations and modifications first, then times).

        Parameters
        ----------
        now : datetime
            The time the statuses are evaluated at, timezone-aware: an event is ``active`` on
            ``[start, end)``, ``completed`` from ``end``.

        Returns
        -------
        list of DRTransition
            Every change since the last call, in order; empty when nothing changed.
        """
        out, self._queued = self._queued, []
        for event_id, event in self._events.items():
            if event.status in (CANCELLED, COMPLETED):
                continue
            msg = event.message
            if msg.end is not None and msg.end <= now:
                new, kind = COMPLETED, "completed"
            elif msg.start <= now:
                new, kind = ACTIVE, "activated"
            else:
                new, kind = PENDING, "deferred"
            if new != event.status:
                event.status = new
                out.append(DRTransition(event_id, kind, new, now, event.limit_kw))
        return out

    # ------------------------------------------------------------------ limits

    def limit_at(self, t: datetime) -> tuple[float, str]:
        """(site import limit from DR, label of the binding event) at ``t``; (inf, "") if none.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        tuple of (float, str)
            The lowest limit of the events in force at ``t``, kW, and its source label
            (:func:`source_label`).
        """
        limit, label = math.inf, ""
        for event_id, event in self._events.items():
            if event.limit_kw < limit and event.in_force(t):
                limit, label = event.limit_kw, source_label(event_id)
        return limit, label

    def limit_kw_at(self, t: datetime) -> float:
        """The site import limit from DR at ``t``, kW (inf: none); see :meth:`limit_at`.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        float
            The lowest limit of the events in force at ``t``, kW.
        """
        return self.limit_at(t)[0]

    def limits_over(self, interval_starts: Sequence[datetime] | pd.DatetimeIndex,
                    interval: timedelta | None = None) -> tuple[np.ndarray, list[str]]:
        """Per interval: the lowest limit of any event in force at any moment of the interval, and its
        label (inf and "" where none). ``interval`` defaults to the spacing of ``interval_starts``.

        Parameters
        ----------
        interval_starts : sequence of datetime or pandas.DatetimeIndex
            The intervals' starts, shape (T,), timezone-aware.
        interval : datetime.timedelta, optional
            The intervals' length (default: ``interval_starts[1] - interval_starts[0]``; zero for a
            single start, which then reads the limit at that moment).

        Returns
        -------
        limits : numpy.ndarray
            Shape (T,), the binding import limit per interval, kW (inf where none).
        labels : list of str
            Length T, the binding event's source label per interval ("" where none).

        Raises
        ------
        ValueError
            If a start is timezone-naive.
        """
        if isinstance(interval_starts, pd.DatetimeIndex) and len(interval_starts) and not interval_starts.hasnans:
            # Issue 18: events that cannot touch the horizon are skipped before any stamp is converted
            # (in the backtest's usual case, none: no per-interval Python at all).
            if interval_starts.tz is None:
                raise ValueError("interval_starts must be tz-aware")
            if interval is None:
                interval = ((interval_starts[1] - interval_starts[0]).to_pytimedelta() if len(interval_starts) > 1
                            else timedelta(0))
            events = self._events_touching(interval_starts.min().to_pydatetime(),
                                           interval_starts.max().to_pydatetime(), interval)
            if not events:
                return np.full(len(interval_starts), math.inf), [""] * len(interval_starts)
            starts = list(interval_starts.to_pydatetime())
        else:
            starts = [pd.Timestamp(t).to_pydatetime() for t in interval_starts]
            if any(t.tzinfo is None for t in starts):
                raise ValueError("interval_starts must be tz-aware")
            if interval is None:
                interval = (starts[1] - starts[0]) if len(starts) > 1 else timedelta(0)
            events = list(self._events.items())
        limits = np.full(len(starts), math.inf)
        labels = [""] * len(starts)
        for event_id, event in events:
            for k, start in enumerate(starts):
                if event.limit_kw < limits[k] and event.in_force(start, start + interval):
                    limits[k], labels[k] = event.limit_kw, source_label(event_id)
        return limits, labels

    def _events_touching(self, first: datetime, last: datetime, interval: timedelta) -> list[tuple[str, _Event]]:
        """The events in force at some moment of the hull ``[first, last + interval)`` (``[first, last]``
        when ``interval`` is not positive), in book order: exactly those :meth:`limits_over` can find
        in force in an interval starting between ``first`` and ``last`` (``frames.in_force`` is an
        overlap test, and every such interval lies inside the hull).

        Parameters
        ----------
        first, last : datetime
            The earliest and latest interval start, timezone-aware.
        interval : datetime.timedelta
            The intervals' length.

        Returns
        -------
        list of (str, _Event)
        """
        until = last + interval if interval > timedelta(0) else last + timedelta(microseconds=1)
        return [(event_id, event) for event_id, event in self._events.items() if event.in_force(first, until)]

    # ------------------------------------------------------------------ queries

    def status(self, event_id: str) -> str:
        """The event's status.

        Parameters
        ----------
        event_id : str
            A known event.

        Returns
        -------
        str
            ``pending``, ``active``, ``completed`` or ``cancelled``.

        Raises
        ------
        KeyError
            If the book does not know the event.
        """
        return self._events[event_id].status

    def message(self, event_id: str) -> DREventMessage:
        """The event's message in force (the latest accepted modification).

        Parameters
        ----------
        event_id : str
            A known event.

        Returns
        -------
        DREventMessage
            The message whose terms apply.

        Raises
        ------
        KeyError
            If the book does not know the event.
        """
        return self._events[event_id].message

    def limit_kw(self, event_id: str) -> float:
        """The import limit the event was accepted with (inf: none), kW.

        Parameters
        ----------
        event_id : str
            A known event.

        Returns
        -------
        float
            The limit, kW; kept even if the profile's level mapping changed since.

        Raises
        ------
        KeyError
            If the book does not know the event.
        """
        return self._events[event_id].limit_kw

    def event_ids(self) -> list[str]:
        """Every event the book knows, in the order first accepted, whatever its status."""
        return list(self._events)

    def active_ids(self, now: datetime) -> list[str]:
        """The events in force at ``now`` (not cancelled, ``start <= now < end``).

        Parameters
        ----------
        now : datetime
            The moment, timezone-aware.

        Returns
        -------
        list of str
            Their ids, in the order first accepted.
        """
        return [i for i, e in self._events.items() if e.in_force(now)]

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: inf limits as None, timestamps ISO."""
        def num(x: float | None) -> float | None:
            return None if x is None or math.isinf(x) else x

        return {"events": [
            {"message": e.message.model_dump(mode="json"), "status": e.status, "limit_kw": num(e.limit_kw),
             "records": [{"interval_start": r.interval_start.isoformat(), "baseline_kw": r.baseline_kw,
                          "limit_kw": num(r.limit_kw), "measured_kw": r.measured_kw} for r in e.records]}
            for e in self._events.values()
        ]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DRBook:
        """The book from :meth:`to_dict`: every event with its status, limit and records.

        Queued transitions are not part of the durable state; the next :meth:`transitions` call
        derives statuses from the times again.

        Parameters
        ----------
        data : dict
            ``{"events": [...]}`` as written by :meth:`to_dict` (None limits read as inf).

        Returns
        -------
        DRBook
            The restored book.

        Raises
        ------
        KeyError
            If a required key is missing.
        pydantic.ValidationError
            If a stored message no longer validates.
        """
        def num(x: float | None) -> float:
            return math.inf if x is None else float(x)

        book = cls()
        for row in data["events"]:
            msg = DREventMessage.model_validate(row["message"])
            records = [DRRecord(datetime.fromisoformat(r["interval_start"]), r["baseline_kw"],
                                num(r["limit_kw"]), float(r["measured_kw"])) for r in row["records"]]
            book._events[msg.event_id] = _Event(msg, row["status"], num(row["limit_kw"]), records)
        return book
