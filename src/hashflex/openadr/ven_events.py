"""The VEN's events: poll, validate and map each event on its own, send the difference through
``loop.handle_dr``, cancel, priorities, restart reconciliation. A mixin of
:class:`hashflex.openadr.ven.VEN`, split from ``ven.py`` (pure move); the flow and the safety
rules are described in that module's docstring."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hashflex.messages import DREventMessage
from hashflex.messages.parse import duplicate_key_in
from hashflex.openadr.client import VTNError
from hashflex.openadr.mapping import (
    MappedEvent,
    ResolvedInterval,
    limit_windows,
    map_event,
    message_base,
    modification_number,
    randomize_spreads,
    targets_match,
)
from hashflex.openadr.models import ObjectRejected, validate_event

__all__ = ["EventVersion", "EventsMixin", "event_version"]

log = logging.getLogger(__name__)
_METADATA = ("id", "createdDateTime", "modificationDateTime", "objectType")
_OADR_MESSAGE_ID = re.compile(r"^([A-Za-z0-9_-]+):[A-Za-z0-9_.-]+$")  # mapping.to_message_id


@dataclass(frozen=True)
class EventVersion:
    """How a version of an event read from the VTN stands against the version held.

    OpenADR 3 has no modification counter on the event object (3.0.1 ``event``: ``id``,
    ``createdDateTime``, ``modificationDateTime`` "VTN provisioned on object modification", ...;
    a change is a ``PUT /events/{eventID}``, "updateEvent"): the VTN's ``modificationDateTime``
    orders the versions (:func:`hashflex.openadr.timing.modification_number`).

    Attributes
    ----------
    fingerprint : str
        The event without its metadata (id, created/modified times, objectType), JSON.
    raw : int
        ``modification_number(modificationDateTime)`` of this version.
    number : int
        The number it is sent under: ``raw``, or one above the number held when it is not higher
        (changed within the same second, or the VTN's clock went back).
    stale : bool
        Its ``modificationDateTime`` is strictly older than the held version's: an older version
        read after a newer one (a lagging VTN replica or cache, a notification overtaken by a poll).
    """

    fingerprint: str
    raw: int
    number: int
    stale: bool


def event_version(event: Mapping[str, Any], held: Any) -> EventVersion | None:
    """The version of ``event`` against the one held (DR and AS events alike), or None when unchanged.

    Parameters
    ----------
    event : Mapping
        The event as the VTN returns it.
    held : object or None
        The tracked version (``raw``, ``fingerprint``, ``number``), or None for a new event.

    Returns
    -------
    EventVersion or None
        None when the event's content is the one held (metadata aside).
    """
    fingerprint = json.dumps({k: v for k, v in event.items() if k not in _METADATA}, sort_keys=True)
    if held is not None and held.fingerprint == fingerprint:
        return None
    raw = modification_number(event.get("modificationDateTime"))
    number = raw if held is None or raw > held.number else held.number + 1
    stale = held is not None and raw < modification_number(held.raw.get("modificationDateTime"))
    return EventVersion(fingerprint, raw, number, stale)


@dataclass
class _Tracked:
    raw: dict[str, Any]
    program_id: str
    fingerprint: str
    number: int
    random_offset: timedelta
    sent: dict[str, DREventMessage] = field(default_factory=dict)  # last message sent, by interval's base id
    intervals: list[ResolvedInterval] = field(default_factory=list)
    revivals: dict[str, int] = field(default_factory=dict)
    interval_offsets: dict[int, timedelta] = field(default_factory=dict)


class EventsMixin:
    """Event handling of :class:`~hashflex.openadr.ven.VEN` (``poll``, ``process_event``,
    ``cancel_event``)."""

    def poll(self, now: datetime) -> int:
        """Read every enrolled program's events and act on changes. Returns messages sent. A VTN
        failure is counted, logged and raised (VTNError), and changes nothing. Each event is
        processed on its own (module docstring).

        Parameters
        ----------
        now : datetime
            Current time, UTC.

        Returns
        -------
        int
            Messages sent to the loop (DR messages, AS awards and deployments).

        Raises
        ------
        VTNError
            The VTN could not be read (nothing changes).
        """
        if self.enrolment is None:
            self.enrol(now)
        assert self.enrolment is not None
        try:
            listings: dict[str, list[Any]] = {pid: self.client.events(program_id=pid, targets=self.my_targets)
                                              for pid in self.enrolment.programs}
        except VTNError as exc:
            self.counters["poll_failures"] += 1
            self._last_error = str(exc)
            log.warning("OpenADR poll failed, events already accepted stay in force: %s", exc)
            raise
        self.counters["polls"] += 1
        self._last_poll = now
        complete = all(getattr(events, "complete", True) for events in listings.values())
        if not complete:
            self.counters["listings_incomplete"] += 1
            reasons = [getattr(e, "reason", "") for e in listings.values() if not getattr(e, "complete", True)]
            log.warning("OpenADR event listing may be incomplete (%s): no event is cancelled for being absent",
                        "; ".join(reasons))
        sent = 0
        with self._lock:
            seen: set[str] = set()
            for pid, events in listings.items():
                for event in events:
                    event_id = str(event.get("id")) if isinstance(event, dict) else "?"
                    if (isinstance(event, dict) and event.get("programID") not in (None, pid)
                            and duplicate_key_in(event) is None):
                        continue  # another program's event (a VTN ignoring programID): its own listing has it
                    # An event with a key given twice (programID included: its last value may name another
                    # program) is the listing's to refuse: it is processed (rejected, counted, audited) and
                    # kept as seen, so the complete listing does not cancel the version accepted before
                    # (issue 15, second newcomer review: a re-served deployment was recalled, a DR limit lifted).
                    seen.add(event_id)
                    sent += self._process_isolated(event, now)
            if complete:
                for event_id in [e for e in [*self._events, *self._as_events] if e not in seen]:
                    log.info("OpenADR event %s no longer on the VTN: cancelled", event_id)
                    sent += self.cancel_event(event_id, now, reason=f"OpenADR event {event_id} is no longer on the "
                                                                    "VTN's event list (deleted)")
                if not self._reconciled:
                    sent += self._reconcile(seen, now)
                    self._reconciled = True
        return sent

    def _process_isolated(self, event: Any, now: datetime) -> int:
        """process_event, with any failure contained to this one event (counted and audited)."""
        try:
            return self.process_event(event, now)
        except VTNError:
            raise
        except Exception as exc:  # noqa: BLE001 - one event never stops the others
            event_id = str(event.get("id")) if isinstance(event, dict) else "?"
            log.exception("OpenADR event %s could not be processed", event_id)
            self._reject("event", event_id, f"{type(exc).__name__}: {exc}", now)
            return 0

    def process_event(self, event: dict[str, Any], now: datetime) -> int:
        """Validate and map one event and send what changed through ``loop.handle_dr``. Returns
        messages sent. An invalid event is rejected (counted, audited) and changes nothing.

        Parameters
        ----------
        event : dict
            The event as the VTN returns it.
        now : datetime
            Current time, UTC.

        Returns
        -------
        int
            Messages sent to the loop. An event of an AS program goes to ``process_as_event``.
        """
        with self._lock:
            assert self.enrolment is not None
            try:
                validate_event(event)
            except ObjectRejected as exc:
                self._reject("event", str(event.get("id")) if isinstance(event, dict) else "?",
                             f"invalid event: {exc.reason}", now)
                return 0
            event_id, program_id = str(event["id"]), str(event["programID"])
            if program_id not in self.enrolment.programs or not targets_match(event, self.my_targets):
                return self.cancel_event(event_id, now, reason=f"OpenADR event {event_id} no longer targets this "
                                                               "VEN or its program")  # 0 if it never was ours
            if self.is_as_program(program_id):
                return self.process_as_event(event, now)  # the QSE's awards and deployments (.ven_ancillary)
            held = self._events.get(event_id)
            version = event_version(event, held)  # a DR event's older version is taken as a change (as before)
            if version is None:
                return 0
            self.counters["events_seen"] += 1
            fingerprint, number = version.fingerprint, version.number
            if held is not None:
                offset, interval_offsets = held.random_offset, dict(held.interval_offsets)
            else:
                offset, interval_offsets = self._draw_offsets(event)
            tracked = _Tracked(dict(event), program_id, fingerprint, number, offset,
                               dict(held.sent) if held is not None else {},
                               revivals=dict(held.revivals) if held is not None else {},
                               interval_offsets=interval_offsets)
            mapped = self._map(tracked, now)
            if mapped.rejected is not None:
                self._reject("event", event_id, mapped.rejected, now)
                return 0  # a version held before stays in force
            self._events[event_id] = tracked
            sent = self._apply(tracked, now, first=True, mapped=mapped)
            return sent + self._reapply_below(tracked.raw, now)

    def _map(self, tracked: _Tracked, now: datetime) -> MappedEvent:
        assert self.enrolment is not None
        return map_event(tracked.raw, now, issuer=self.issuer_for(tracked.program_id),
                         program=self.enrolment.programs.get(tracked.program_id),
                         dr_program=self.config.dr_program, random_offset=tracked.random_offset,
                         interval_offsets=tracked.interval_offsets, horizon=self.config.horizon,
                         modification=tracked.number,
                         higher_priority=self._higher_priority_windows(tracked.raw, now))

    def _apply(self, tracked: _Tracked, now: datetime, first: bool = False, mapped: MappedEvent | None = None) -> int:
        """Send the difference between what the event asks now and what was sent for it."""
        event = tracked.raw
        event_id = str(event.get("id"))
        mapped = mapped if mapped is not None else self._map(tracked, now)
        if mapped.rejected is not None:
            return 0  # cannot happen for an event once accepted (same text); nothing changes if it does
        tracked.intervals = mapped.intervals
        if first:
            for reason in mapped.unsupported:
                self.counters["unsupported_payloads"] += 1
                self.unsupported.append(f"event {event_id}: {reason}")
                log.warning("OpenADR event %s: %s (ignored)", event_id, reason)
            for reason in mapped.rejected_intervals:
                self._reject("interval", event_id, reason, now, "intervals_rejected")
            for warning in mapped.warnings:
                self.counters["timestamp_warnings"] += 1
                log.warning("OpenADR event %s: %s", event_id, warning)
        sent = 0
        wanted = {m.event_id for m in mapped.dr_messages}
        for message in mapped.dr_messages:
            base = message.event_id
            before = tracked.sent.get(base)
            if before is None:
                before = self._held_by_book(base)  # sent before a restart: the DR book has it
                if before is not None:
                    tracked.sent[base] = before
            if message.end is not None and message.end <= now:
                continue  # already over: nothing to do (and the book refuses it)
            if before is not None and before.cancelled:
                # Lifted earlier (e.g. a higher-priority event covered it) and wanted again: the
                # book never revives a cancelled event, so it comes back under a new id.
                tracked.revivals[base] = tracked.revivals.get(base, 0) + 1
                message = message.model_copy(update={"event_id": f"{base}.r{tracked.revivals[base]}"})
            elif before is not None:
                if _same_terms(before, message):
                    continue
                message = message.model_copy(update={"event_id": before.event_id})
            sent += self._send(tracked, base, message, now)
        rejected_ids = {r.split(":", 1)[0].removeprefix("interval ") for r in mapped.rejected_intervals}
        for base, before in list(tracked.sent.items()):
            if base not in wanted and not before.cancelled:
                if base.rsplit(":", 1)[-1].split(".")[0] in rejected_ids:
                    continue  # an interval we could not read this time keeps what it asked before
                sent += self._send_cancel(tracked, base, now)
        if first:
            self._signals(event_id, mapped)
            self._plan_reports(event, mapped.intervals, now)
        return sent

    def _held_by_book(self, event_id: str) -> DREventMessage | None:
        book = getattr(self.loop, "dr_book", None)
        if book is None or event_id not in book.event_ids():
            return None
        return book.message(event_id)

    def _reconcile(self, listed: set[str], now: datetime) -> int:
        """After a restart: cancel OpenADR intervals the DR book still holds for events the VTN no
        longer lists (deleted while the VEN was down). Only ids of the form ``<base>:<interval>``
        issued under this VEN's issuer names are touched. The same for AS awards and deployments
        in the limits book (:meth:`~hashflex.openadr.ven_ancillary.AncillaryMixin.reconcile_as`).
        Called only after a complete listing (a failed or partial poll deletes nothing)."""
        listed_bases = {message_base(e) for e in listed}
        sent = self.reconcile_as(listed_bases, now)
        book = getattr(self.loop, "dr_book", None)
        if book is None or self.enrolment is None:
            return sent
        issuers = {self.issuer_for(pid) for pid in self.enrolment.programs}
        for event_id in book.event_ids():
            match = _OADR_MESSAGE_ID.match(event_id)
            if match is None or match.group(1) in listed_bases or book.status(event_id) not in ("pending", "active"):
                continue
            message = book.message(event_id)
            if message.issuer not in issuers or message.cancelled or (message.end is not None and message.end <= now):
                continue
            log.info("OpenADR interval %s: its event is gone from the VTN, cancelled", event_id)
            tracked = _Tracked({"id": match.group(1)}, "", "", message.modification_number, timedelta(0),
                               {event_id: message})
            sent += self._send_cancel(tracked, event_id, now)
        return sent

    def _signals(self, event_id: str, mapped: MappedEvent) -> None:
        if mapped.prices_usd_mwh:
            self.prices[event_id] = mapped.prices_usd_mwh
            if self.on_prices is not None:
                self.on_prices(event_id, mapped.prices_usd_mwh)
        if mapped.carbon_kg_per_mwh:
            self.carbon[event_id] = mapped.carbon_kg_per_mwh
            if self.on_carbon is not None:
                self.on_carbon(event_id, mapped.carbon_kg_per_mwh)
        if mapped.export_limits:
            self.export_limits[event_id] = mapped.export_limits
            if self.on_export_limits is not None:
                self.on_export_limits(event_id, mapped.export_limits)

    def _reapply_below(self, changed: Mapping[str, Any], now: datetime) -> int:
        """An event with a priority changed (or went): re-map the events it may outrank."""
        mine = changed.get("priority")
        if mine is None:
            return 0
        return sum(self._apply(t, now) for e, t in list(self._events.items())
                   if e != str(changed.get("id")) and (t.raw.get("priority") is None or t.raw["priority"] > mine))

    def cancel_event(self, event_id: str, now: datetime, forget: bool = True, reason: str | None = None) -> int:
        """Cancel every interval message of an event that is not over yet.

        Parameters
        ----------
        event_id : str
            The OpenADR event id.
        now : datetime
            Current time, UTC.
        forget : bool
            Stop tracking the event.
        reason : str, optional
            Why (deleted, no longer listed, no longer targeted): kept with an AS event's recalls.

        Returns
        -------
        int
            Messages sent to the loop.
        """
        with self._lock:
            if event_id in self._as_events:
                return self.cancel_as_event(event_id, now, reason=reason)
            tracked = self._events.get(event_id)
            if tracked is None:
                return 0
            sent = sum(self._send_cancel(tracked, base, now) for base, m in list(tracked.sent.items())
                       if not m.cancelled)
            self._plans.pop(event_id, None)
            if forget:
                del self._events[event_id]
            return sent + self._reapply_below(tracked.raw, now)

    def _send(self, tracked: _Tracked, base: str, message: DREventMessage, now: datetime) -> int:
        before = tracked.sent.get(base)
        if (before is not None and before.event_id == message.event_id
                and message.modification_number <= before.modification_number):
            message = message.model_copy(update={"modification_number": before.modification_number + 1})
        ack = self.loop.handle_dr(message, now)
        self.acks.append(ack)
        self.counters["dr_messages"] += 1
        if ack is not None and ack.status == "accepted":
            tracked.sent[base] = message
        else:
            log.warning("OpenADR interval %s refused by the site: %s", message.event_id,
                        getattr(ack, "reason", "no answer"))
        return 1

    def _send_cancel(self, tracked: _Tracked, base: str, now: datetime) -> int:
        before = tracked.sent[base]
        if before.end is not None and before.end <= now:
            return 0  # already completed
        cancel = before.model_copy(update={"modification_number": before.modification_number + 1,
                                           "cancelled": True})
        return self._send(tracked, base, cancel, now)

    def _draw_offsets(self, event: Mapping[str, Any]) -> tuple[timedelta, dict[int, timedelta]]:
        """randomizeStart offsets, drawn once per event (event level, then per interval that has one)."""
        if not self.config.honour_randomize_start:
            return timedelta(0), {}
        spreads = randomize_spreads(event)
        drawn = {key: timedelta(seconds=self._random.uniform(-s.total_seconds(), s.total_seconds()))
                 for key, s in spreads.items()}
        return drawn.pop(-1, timedelta(0)), drawn

    def _higher_priority_windows(self, event: Mapping[str, Any], now: datetime
                                 ) -> list[tuple[datetime, datetime | None]]:
        mine = event.get("priority")
        if mine is None:
            mine = math.inf
        windows: list[tuple[datetime, datetime | None]] = []
        for other_id, other in self._events.items():
            theirs = other.raw.get("priority")
            if other_id != str(event.get("id")) and theirs is not None and theirs < mine:
                windows.extend(limit_windows(other.raw, now, other.random_offset, self.config.horizon,
                                             other.interval_offsets))
        return windows


def _same_terms(a: DREventMessage, b: DREventMessage) -> bool:
    keys = ("start", "end", "import_limit_kw", "level", "issuer", "program", "cancelled")
    return all(getattr(a, k) == getattr(b, k) for k in keys)
