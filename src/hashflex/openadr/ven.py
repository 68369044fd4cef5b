"""The OpenADR 3 VEN: enrolment, events by polling and webhook, reports through VTN outages.

Every DR request goes through ``ControlLoop.handle_dr`` — the same path as MQTT DR — so the DR
lifecycle, the guard fast path, the ack, the audit and performance accounting are shared. Prices,
carbon intensity and export limits go to injected callbacks.

Modules: :mod:`.config` (VENConfig, WebhookConfig, env), :mod:`.reports` (schedule, body, outbox),
:mod:`.webhook` (the hardened listener), :mod:`.models` (spec schemas), :mod:`.mapping` (pure rules).

Flow
----
1. :meth:`VEN.enrol`: find the ven object by ``venName`` (create it if the VTN lets a VEN do so),
   make sure each configured resource exists, learn the targets the utility granted, list the
   programs visible to those targets (optionally only ``program_names``). Every object read is
   validated (:mod:`.models`); an invalid ven object fails the enrolment (retried with backoff), an
   invalid program or resource is skipped with its reason.
2. :meth:`VEN.poll` reads every enrolled program's events; :meth:`VEN.process_event` validates and
   maps each event **on its own**: an event that does not validate or cannot be mapped is counted
   (``events_rejected``), kept with its reason in :meth:`status` (``rejections``) and given to the
   audit recorder (kind ``openadr_rejected``); the other events proceed. An event the VEN had
   accepted and that now arrives invalid keeps its last accepted version in force (safety first: a
   limit is not lifted on an unreadable answer). An event that disappears from a *complete* listing
   is cancelled; a listing that may be incomplete (page cap, repeated page) cancels nothing.
   A failed poll changes nothing (events already accepted stay in force).
3. With a webhook (:class:`WebhookConfig`), :meth:`VEN.subscribe` registers a subscription with a
   random bearer token and an ``https://`` callback URL; polling continues (slower) as the fallback.
4. Reports: for every event ``reportDescriptor`` the VEN generates the report when due, puts it in
   the :class:`ReportOutbox` and delivers it in order (see :mod:`.reports`).

:meth:`VEN.tick` never raises for a VTN's answer: whatever one poll throws is counted
(``tick_failures``) and logged, and reports are still generated and sent.

Time is injected: every method takes ``now``; the background thread uses ``clock``.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import random
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from hashflex.messages import DRAckMessage, DREventMessage
from hashflex.openadr.client import OpenADRClient, VTNError, VTNUnavailable
from hashflex.openadr.config import VENConfig, WebhookConfig
from hashflex.openadr.mapping import (
    ExportLimit,
    MappedEvent,
    ResolvedInterval,
    limit_windows,
    map_event,
    message_base,
    modification_number,
    randomize_spreads,
    targets_match,
)
from hashflex.openadr.models import (
    Notification,
    ObjectRejected,
    Program,
    Resource,
    Ven,
    validate_event,
    validate_object,
)
from hashflex.openadr.reports import ReportOutbox, report_body, report_schedule, report_units
from hashflex.openadr.webhook import NotificationRefused, WebhookServer

__all__ = ["Enrolment", "ReportOutbox", "VEN", "VENConfig", "WebhookConfig", "report_schedule"]

log = logging.getLogger(__name__)
UTC = timezone.utc
Signal = list[tuple[datetime, datetime | None, float]]
_METADATA = ("id", "createdDateTime", "modificationDateTime", "objectType")
_OADR_MESSAGE_ID = re.compile(r"^([A-Za-z0-9_-]+):[A-Za-z0-9_.-]+$")  # mapping.to_message_id


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Enrolment:
    ven_id: str
    targets: list[str]
    programs: dict[str, dict[str, Any]]  # by program id
    resource_ids: dict[str, str]


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


class VEN:
    """One site's OpenADR 3 VEN. ``loop`` needs ``handle_dr(message, now)`` (a ControlLoop).

    ``recorder``: anything with ``record(kind, payload, at)`` (the daemon's AuditRecorder); default:
    ``loop.recorder`` if the loop has one. Rejected events and intervals are recorded there."""

    def __init__(self, client: OpenADRClient, config: VENConfig, loop: Any, *,
                 measurements: Callable[[datetime, datetime], float] | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 on_prices: Callable[[str, Signal], None] | None = None,
                 on_carbon: Callable[[str, Signal], None] | None = None,
                 on_export_limits: Callable[[str, list[ExportLimit]], None] | None = None,
                 recorder: Any = None) -> None:
        self.client, self.config, self.loop = client, config, loop
        issuers = getattr(getattr(getattr(loop, "profile", None), "dr", None), "issuers", None)
        if issuers is not None and config.issuer is not None and config.issuer not in issuers:
            raise ValueError(f"issuer {config.issuer!r}: not in the site profile's dr.issuers {sorted(issuers)}; "
                             "every OpenADR event would be refused")
        if issuers is not None and config.issuer is None:
            log.warning("OpenADR issuer not configured: events carry the VTN's program id as issuer, which must "
                        "be listed in dr.issuers (%s) or they are refused", sorted(issuers))
        self.measurements, self.clock = measurements, clock
        self.recorder = recorder if recorder is not None else getattr(loop, "recorder", None)
        self.on_prices, self.on_carbon, self.on_export_limits = on_prices, on_carbon, on_export_limits
        self.enrolment: Enrolment | None = None
        self.outbox = ReportOutbox(config.outbox_path, config.retry_base_s, config.retry_max_s)
        self.prices: dict[str, Signal] = {}
        self.carbon: dict[str, Signal] = {}
        self.export_limits: dict[str, list[ExportLimit]] = {}
        self.acks: list[DRAckMessage] = []
        self.unsupported: list[str] = []
        self.rejections: collections.deque[dict[str, Any]] = collections.deque(maxlen=config.max_rejections_kept)
        self.counters: dict[str, int] = {"polls": 0, "poll_failures": 0, "events_seen": 0, "notifications": 0,
                                         "notifications_refused": 0, "dr_messages": 0, "unsupported_payloads": 0,
                                         "reports_generated": 0, "reports_unsupported": 0, "events_rejected": 0,
                                         "intervals_rejected": 0, "objects_rejected": 0, "timestamp_warnings": 0,
                                         "tick_failures": 0, "listings_incomplete": 0}
        self.subscription_ids: list[str] = []
        self._events: dict[str, _Tracked] = {}
        self._plans: dict[str, list[tuple[str, datetime, dict[str, Any], list[ResolvedInterval]]]] = {}
        self._recorded: set[tuple[str, datetime]] = set()
        self._lock = threading.RLock()
        self._random = random.Random(config.seed)
        self._webhook: WebhookServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_poll: datetime | None = None
        self._enrolled_at: datetime | None = None
        self._enrol_retry_at: datetime | None = None
        self._enrol_failures = 0
        self._reconciled = False
        self._last_error: str | None = None

    # ------------------------------------------------------------------ status and rejections

    def status(self) -> dict[str, Any]:
        """What /status shows of the VEN: counters, enrolment, events held, the newest rejections
        (event id, reason, time), the outbox and the webhook."""
        with self._lock:
            return {"enrolled": self.enrolment is not None,
                    "ven_id": self.enrolment.ven_id if self.enrolment else None,
                    "programs": sorted(self.enrolment.programs) if self.enrolment else [],
                    "events": sorted(self._events), "counters": dict(self.counters),
                    "rejections": list(self.rejections), "last_error": self._last_error,
                    "push_active": self.push_active,
                    "webhook_url": self._webhook.url if self._webhook is not None else None,
                    "outbox": {"pending": len(self.outbox), "rejected": len(self.outbox.rejected),
                               "delivered": self.outbox.delivered, "failures": self.outbox.failures}}

    def _reject(self, kind: str, object_id: str, reason: str, now: datetime, counter: str = "events_rejected") -> None:
        """Count, keep for /status, log and audit one rejected object (event, interval, program...)."""
        self.counters[counter] = self.counters.get(counter, 0) + 1
        entry = {"kind": kind, "id": object_id, "reason": reason[:500], "at": now.isoformat()}
        self.rejections.append(entry)
        log.warning("OpenADR %s %s rejected: %s", kind, object_id, reason)
        if self.recorder is not None:
            try:
                self.recorder.record("openadr_rejected", entry, now)
            except Exception:  # the audit must never stop the VEN
                log.exception("audit of an OpenADR rejection failed")

    # ------------------------------------------------------------------ enrolment

    @property
    def my_targets(self) -> list[str]:
        names = {self.config.ven_name, *self.config.resource_names, *self.config.targets}
        if self.enrolment is not None:
            names.update(self.enrolment.targets)
        return sorted(names)

    def enrol(self, now: datetime | None = None) -> Enrolment:
        """Find (or create) the ven object and resources; list the programs this VEN is in."""
        now = now or self.clock()
        config = self.config
        found = [v for v in self.client.vens(config.ven_name)
                 if isinstance(v, dict) and v.get("venName") == config.ven_name]
        if found:
            ven = found[0]
        else:
            try:
                ven = self.client.create_ven(config.ven_name)
            except VTNError as exc:
                if isinstance(exc, VTNUnavailable):
                    raise
                raise VTNError(exc.status, f"no ven object named {config.ven_name!r} and the VTN refused to "
                                           f"create one ({exc}); ask the utility to provision it") from exc
            log.info("created ven object %s for %s", ven.get("id") if isinstance(ven, dict) else ven, config.ven_name)
        try:
            ven_object = validate_object(Ven, ven)
        except ObjectRejected as exc:
            self._reject("ven", str(config.ven_name), exc.reason, now, "objects_rejected")
            raise VTNError(200, f"ven object {config.ven_name!r} does not validate: {exc.reason}") from exc
        ven_id = ven_object.id
        granted = {t if isinstance(t, str) else str(v) for t in ven.get("targets") or []
                   for v in ([t] if isinstance(t, str) else t.get("values") or [])}
        resources: dict[str, dict[str, Any]] = {}
        for r in self.client.resources(ven_id):
            try:
                resources[validate_object(Resource, r).resourceName] = r
            except ObjectRejected as exc:
                self._reject("resource", str(r.get("id") if isinstance(r, dict) else r), exc.reason, now,
                             "objects_rejected")
        for name in config.resource_names:
            if name not in resources:
                try:
                    resources[name] = self.client.create_resource(ven_id, name)
                except VTNError as exc:
                    if isinstance(exc, VTNUnavailable):
                        raise
                    log.warning("resource %s not created: %s", name, exc)
        for resource in resources.values():
            targets = resource.get("targets") if isinstance(resource, dict) else None
            granted.update(t for t in (targets if isinstance(targets, list) else []) if isinstance(t, str))
        self.enrolment = Enrolment(ven_id, sorted(granted), {},
                                   {n: str(r.get("id")) for n, r in resources.items() if isinstance(r, dict)})
        wanted = config.program_names
        programs: dict[str, dict[str, Any]] = {}
        for p in self.client.programs(targets=self.my_targets):
            try:
                program = validate_object(Program, p)
            except ObjectRejected as exc:
                self._reject("program", str(p.get("id") if isinstance(p, dict) else p), exc.reason, now,
                             "objects_rejected")
                continue
            if (wanted is None or program.programName in wanted) and targets_match(p, self.my_targets):
                programs[program.id] = p
        self.enrolment.programs = programs
        log.info("OpenADR VEN %s enrolled in %s", config.ven_name,
                 sorted(p.get("programName") for p in self.enrolment.programs.values()))
        return self.enrolment

    def issuer_for(self, program_id: str) -> str:
        return self.config.issuer or program_id

    # ------------------------------------------------------------------ events

    def poll(self, now: datetime) -> int:
        """Read every enrolled program's events and act on changes. Returns messages sent. A VTN
        failure is counted, logged and raised (VTNError), and changes nothing. Each event is
        processed on its own (module docstring)."""
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
                    if isinstance(event, dict) and event.get("programID") not in (None, pid):
                        continue  # another program's event (a VTN ignoring programID): its own listing has it
                    seen.add(event_id)
                    sent += self._process_isolated(event, now)
            if complete:
                for event_id in [e for e in self._events if e not in seen]:
                    log.info("OpenADR event %s no longer on the VTN: cancelled", event_id)
                    sent += self.cancel_event(event_id, now)
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
        messages sent. An invalid event is rejected (counted, audited) and changes nothing."""
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
                return self.cancel_event(event_id, now)  # no longer for this site (0 if never was)
            fingerprint = json.dumps({k: v for k, v in event.items() if k not in _METADATA}, sort_keys=True)
            held = self._events.get(event_id)
            if held is not None and held.fingerprint == fingerprint:
                return 0
            self.counters["events_seen"] += 1
            number = modification_number(event.get("modificationDateTime"))
            if held is not None and number <= held.number:
                number = held.number + 1  # changed within the same second (or the VTN's clock went back)
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
        issued under this VEN's issuer names are touched."""
        book = getattr(self.loop, "dr_book", None)
        if book is None or self.enrolment is None:
            return 0
        issuers = {self.issuer_for(pid) for pid in self.enrolment.programs}
        listed_bases = {message_base(e) for e in listed}
        sent = 0
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

    def cancel_event(self, event_id: str, now: datetime, forget: bool = True) -> int:
        """Cancel every interval message of an event that is not over yet."""
        with self._lock:
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

    # ------------------------------------------------------------------ reports

    def _plan_reports(self, event: Mapping[str, Any], intervals: list[ResolvedInterval], now: datetime) -> None:
        plans = []
        for d, descriptor in enumerate(event.get("reportDescriptors") or []):
            try:
                report_units(descriptor)
            except ValueError as exc:
                self.counters["reports_unsupported"] += 1
                self.unsupported.append(f"event {event.get('id')}: report {d}: {exc}")
                log.warning("OpenADR event %s asks for a report hashflex cannot give: %s", event.get("id"), exc)
                continue
            for r, (due, covered) in enumerate(report_schedule(descriptor, intervals)):
                plans.append((f"{event.get('id')}/{d}/{r}", due, dict(descriptor), covered))
        if plans:
            self._plans[str(event.get("id"))] = plans
        else:
            self._plans.pop(str(event.get("id")), None)

    def generate_reports(self, now: datetime) -> int:
        """Queue every report that has come due (measured now, so readings do not change later)."""
        if self.measurements is None:
            return 0
        made = 0
        with self._lock:
            self._record_performance(now)
            for event_id, plans in self._plans.items():
                tracked = self._events.get(event_id)
                for key, due, descriptor, covered in plans:
                    if due > now or key in self.outbox.generated or tracked is None:
                        continue
                    try:
                        body = self._report_body(tracked, descriptor, covered, key)
                    except Exception as exc:  # noqa: BLE001 - one report never stops the others
                        self._reject("report", key, f"{type(exc).__name__}: {exc}", now, "reports_unsupported")
                        self.outbox.generated.add(key)
                        continue
                    self.outbox.add(key, body, now)
                    self.counters["reports_generated"] += 1
                    made += 1
        return made

    def _report_body(self, tracked: _Tracked, descriptor: Mapping[str, Any], covered: list[ResolvedInterval],
                     key: str) -> dict[str, Any]:
        assert self.measurements is not None
        resource = self.config.report_resource_name or (self.config.resource_names[0] if self.config.resource_names
                                                        else self.config.ven_name)
        program_id = tracked.program_id if self.client.config.api_version.startswith("3.0") else None
        return report_body(descriptor, covered, event_id=str(tracked.raw.get("id")), client_name=self.config.ven_name,
                           resource_name=resource, report_name=f"{self.config.ven_name}:{key}",
                           measured_kw=self.measurements, program_id=program_id)

    def _record_performance(self, now: datetime) -> None:
        """Record measured import per ended DR interval in the DR book (compliance accounting)."""
        book = getattr(self.loop, "dr_book", None)
        if book is None or self.measurements is None:
            return
        for tracked in self._events.values():
            for message in tracked.sent.values():
                key = (message.event_id, message.start)
                if message.cancelled or message.end is None or message.end > now or key in self._recorded:
                    continue
                self._recorded.add(key)
                try:
                    book.record(message.event_id, message.start, float(self.measurements(message.start, message.end)))
                except KeyError:
                    pass

    def flush_reports(self, now: datetime) -> int:
        return self.outbox.flush(self.client, now)

    # ------------------------------------------------------------------ webhook

    def start_webhook(self) -> str:
        """Start the callback listener (:mod:`.webhook`); returns the callback URL."""
        hook = self.config.webhook
        if hook is None:
            raise ValueError("webhook: not configured")
        if self._webhook is None:
            self._webhook = WebhookServer(hook, self._on_webhook, self.counters)
            self._webhook.start()
        return self.callback_url

    def _on_webhook(self, body: Any) -> None:
        now = self.clock()
        try:
            notification = validate_object(Notification, body)
        except ObjectRejected as exc:
            self._reject("notification", "?", exc.reason, now, "objects_rejected")
            raise NotificationRefused(exc.reason) from exc
        self.on_notification(notification.model_dump(mode="python", exclude_unset=True), now)

    @property
    def callback_url(self) -> str:
        assert self._webhook is not None, "webhook not started"
        return self._webhook.url

    def subscribe(self) -> bool:
        """Subscribe to event changes of every enrolled program. False (polling only) if the VTN
        does not support subscriptions or refuses them, or the callback URL is not HTTPS."""
        assert self.enrolment is not None and self.config.webhook is not None
        url = self.callback_url
        if not url.startswith("https://") and not self.config.webhook.allow_http_callback:
            self._last_error = f"webhook callback {url}: not HTTPS (the spec requires it); polling only"
            log.error("OpenADR %s", self._last_error)
            self.subscription_ids = []
            return False
        try:
            for old in self.client.subscriptions(self.config.ven_name):
                if not isinstance(old, dict):
                    continue
                if any(isinstance(op, dict) and op.get("callbackUrl") == url for op in old.get("objectOperations") or []):
                    self.client.delete_subscription(str(old["id"]))
            self.subscription_ids = []
            for program_id in self.enrolment.programs:
                created = self.client.create_subscription({
                    "clientName": self.config.ven_name, "programID": program_id,
                    "objectOperations": [{"objects": ["EVENT"], "operations": ["CREATE", "UPDATE", "DELETE"],
                                          "callbackUrl": url, "bearerToken": self.config.webhook.bearer_token}],
                    **({} if self.client.config.api_version.startswith("3.0") else {"targets": self.my_targets})})
                self.subscription_ids.append(str(created.get("id")) if isinstance(created, dict) else "?")
        except VTNError as exc:
            log.warning("OpenADR subscription failed (%s): polling every %.0f s", exc, self.config.poll_interval_s)
            self.subscription_ids = []
            return False
        return True

    def on_notification(self, notification: Mapping[str, Any], now: datetime) -> int:
        """One VTN notification: an EVENT create/update is processed, a DELETE cancels."""
        self.counters["notifications"] += 1
        if notification.get("objectType") != "EVENT" or not isinstance(notification.get("object"), dict):
            return 0
        event = notification["object"]
        if notification.get("operation") == "DELETE":
            return self.cancel_event(str(event.get("id")), now)
        if self.enrolment is None:
            return 0
        return self._process_isolated(event, now)

    # ------------------------------------------------------------------ running

    @property
    def push_active(self) -> bool:
        return bool(self.subscription_ids)

    def tick(self, now: datetime) -> None:
        """One round: enrol (again every ``reenrol_interval_s``, to learn new programs), poll when
        due, queue due reports, deliver the outbox. Never raises: a VTN failure defers the next try
        by the poll interval (enrolment: exponential backoff up to ``retry_max_s``); anything else a
        VTN's answer provokes is counted (``tick_failures``); reports go on regardless."""
        try:
            due_enrol = self.enrolment is None or (
                self._enrolled_at is not None
                and (now - self._enrolled_at).total_seconds() >= self.config.reenrol_interval_s)
            if due_enrol and (self._enrol_retry_at is None or now >= self._enrol_retry_at):
                self._enrol_and_subscribe(now)
            interval = self.config.poll_interval_with_webhook_s if self.push_active else self.config.poll_interval_s
            if self.enrolment is not None and (
                    self._last_poll is None or (now - self._last_poll).total_seconds() >= interval):
                self._last_poll = now
                self.poll(now)
        except VTNError as exc:
            self._last_error = str(exc)
            log.warning("OpenADR: %s", exc)
        except Exception as exc:  # noqa: BLE001 - the VEN outlives any one bad answer
            self.counters["tick_failures"] += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.exception("OpenADR tick failed")
        for step in (self.generate_reports, self.flush_reports):
            try:
                step(now)
            except Exception as exc:  # noqa: BLE001
                self.counters["tick_failures"] += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("OpenADR reports failed")

    def _enrol_and_subscribe(self, now: datetime) -> None:
        before = set(self.enrolment.programs) if self.enrolment is not None else None
        try:
            self.enrol(now)
        except Exception:
            self._enrol_failures += 1
            delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** min(self._enrol_failures - 1, 20))
            self._enrol_retry_at = now + timedelta(seconds=delay)
            raise
        self._enrol_failures, self._enrol_retry_at, self._enrolled_at = 0, None, now
        assert self.enrolment is not None
        if self.config.webhook is not None and (before != set(self.enrolment.programs) or not self.push_active):
            if self._webhook is None:
                self.start_webhook()
            self.subscribe()

    def start(self, tick_s: float = 1.0) -> None:
        """Run ``tick`` in a background thread every ``tick_s`` (polls at the configured interval)."""
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.tick(self.clock())
                except Exception:  # the VEN must outlive any one bad answer
                    log.exception("OpenADR VEN tick failed")
                self._wake.wait(tick_s)
                self._wake.clear()

        thread = threading.Thread(target=run, name="openadr-ven", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._webhook is not None:
            self._webhook.stop()
            self._webhook = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []


def _same_terms(a: DREventMessage, b: DREventMessage) -> bool:
    keys = ("start", "end", "import_limit_kw", "level", "issuer", "program", "cancelled")
    return all(getattr(a, k) == getattr(b, k) for k in keys)

