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

from hashflex.messages import DRAckMessage, DREventMessage
from hashflex.profile import SiteProfile

__all__ = ["Compliance", "DRBook", "DRDecision", "DRRecord", "DRTransition", "event_limit_kw", "source_label"]

PENDING, ACTIVE, COMPLETED, CANCELLED = "pending", "active", "completed", "cancelled"


def source_label(event_id: str) -> str:
    return f"DR:{event_id}"


@dataclass(frozen=True)
class DRDecision:
    event_id: str
    modification_number: int
    accepted: bool
    reason: str
    limit_kw: float | None = None  # the event's import limit when accepted (inf: none)

    def to_ack(self, acked_at: datetime) -> DRAckMessage:
        return DRAckMessage(event_id=self.event_id, modification_number=self.modification_number,
                            status="accepted" if self.accepted else "rejected", reason=self.reason,
                            acked_at=acked_at)


@dataclass(frozen=True)
class DRTransition:
    event_id: str
    kind: str  # activated, completed, cancelled, modified, deferred (active -> pending after a modification)
    status: str  # the status to record now
    at: datetime
    limit_kw: float


@dataclass(frozen=True)
class DRRecord:
    interval_start: datetime
    baseline_kw: float | None
    limit_kw: float
    measured_kw: float


@dataclass(frozen=True)
class Compliance:
    event_id: str
    intervals: int
    compliant_intervals: int
    compliant_pct: float  # nan with no intervals
    requested_reduction_kw: float  # mean over intervals with a baseline: baseline − limit (>= 0)
    delivered_reduction_kw: float  # mean over the same intervals: baseline − measured
    delivered_pct: float  # delivered / requested × 100 (nan if nothing requested)
    worst_excess_kw: float  # max(measured − limit), 0 if always under


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
        until = end if end is not None and end > start else start + timedelta(microseconds=1)
        return msg.start < until and (msg.end is None or msg.end > start)


def event_limit_kw(message: DREventMessage, profile: SiteProfile) -> float | None:
    """The import limit an event asks for; ``None`` when a level has no mapping (inf: no limit)."""
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


class DRBook:
    """Every DR event the site knows, by id, with its status and performance records."""

    def __init__(self) -> None:
        self._events: dict[str, _Event] = {}
        self._queued: list[DRTransition] = []

    # ------------------------------------------------------------------ intake

    def apply(self, msg: DREventMessage, now: datetime, profile: SiteProfile) -> DRDecision:
        """Accept or reject one event message (see module docstring for the rules, in order)."""
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
        """Status changes since the last call (cancellations and modifications first, then times)."""
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
        """(site import limit from DR, label of the binding event) at ``t``; (inf, "") if none."""
        limit, label = math.inf, ""
        for event_id, event in self._events.items():
            if event.limit_kw < limit and event.in_force(t):
                limit, label = event.limit_kw, source_label(event_id)
        return limit, label

    def limit_kw_at(self, t: datetime) -> float:
        return self.limit_at(t)[0]

    def limits_over(self, interval_starts: Sequence[datetime] | pd.DatetimeIndex,
                    interval: timedelta | None = None) -> tuple[np.ndarray, list[str]]:
        """Per interval: the lowest limit of any event in force at any moment of the interval, and its
        label (inf and "" where none). ``interval`` defaults to the spacing of ``interval_starts``."""
        starts = [pd.Timestamp(t).to_pydatetime() for t in interval_starts]
        if any(t.tzinfo is None for t in starts):
            raise ValueError("interval_starts must be tz-aware")
        if interval is None:
            interval = (starts[1] - starts[0]) if len(starts) > 1 else timedelta(0)
        limits = np.full(len(starts), math.inf)
        labels = [""] * len(starts)
        for event_id, event in self._events.items():
            for k, start in enumerate(starts):
                if event.limit_kw < limits[k] and event.in_force(start, start + interval):
                    limits[k], labels[k] = event.limit_kw, source_label(event_id)
        return limits, labels

    # ------------------------------------------------------------------ queries

    def status(self, event_id: str) -> str:
        return self._events[event_id].status

    def message(self, event_id: str) -> DREventMessage:
        return self._events[event_id].message

    def limit_kw(self, event_id: str) -> float:
        """The import limit the event was accepted with (inf: none), kW."""
        return self._events[event_id].limit_kw

    def event_ids(self) -> list[str]:
        return list(self._events)

    def active_ids(self, now: datetime) -> list[str]:
        return [i for i, e in self._events.items() if e.in_force(now)]

    # ------------------------------------------------------------------ performance

    def record(self, event_id: str, interval_start: datetime, measured_kw: float,
               baseline_kw: float | None = None) -> DRRecord:
        """Record one interval of an event: the measured import against the event's limit. The
        baseline defaults to the event's own ``baseline_kw`` (shed events)."""
        event = self._events[event_id]
        baseline = baseline_kw if baseline_kw is not None else event.message.baseline_kw
        rec = DRRecord(interval_start, baseline, event.limit_kw, float(measured_kw))
        event.records = [r for r in event.records if r.interval_start != interval_start] + [rec]
        event.records.sort(key=lambda r: r.interval_start)
        return rec

    def records(self, event_id: str) -> list[DRRecord]:
        return list(self._events[event_id].records)

    def compliance(self, event_id: str, tolerance_kw: float = 0.0) -> Compliance:
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
        def num(x: float | None) -> float:
            return math.inf if x is None else float(x)

        book = cls()
        for row in data["events"]:
            msg = DREventMessage.model_validate(row["message"])
            records = [DRRecord(datetime.fromisoformat(r["interval_start"]), r["baseline_kw"],
                                num(r["limit_kw"]), float(r["measured_kw"])) for r in row["records"]]
            book._events[msg.event_id] = _Event(msg, row["status"], num(row["limit_kw"]), records)
        return book
