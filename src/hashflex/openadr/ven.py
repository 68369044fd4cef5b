"""The OpenADR 3 VEN: enrolment, events by polling and webhook, reports through VTN outages.

Every DR request goes through ``ControlLoop.handle_dr`` — the same path as MQTT DR — so the DR
lifecycle, the guard fast path, the ack, the audit and performance accounting are shared. Prices,
carbon intensity and export limits go to injected callbacks.

Flow
----
1. :meth:`VEN.enrol`: find the ven object by ``venName`` (create it if the VTN lets a VEN do so),
   make sure each configured resource exists, learn the targets the utility granted, list the
   programs visible to those targets (optionally only ``program_names``).
2. :meth:`VEN.poll` reads every enrolled program's events; :meth:`VEN.process_event` maps an event
   (``mapping.map_event``) and sends new, modified and cancelled interval messages. An event that
   disappears from the VTN is cancelled. A failed poll changes nothing (events already accepted stay
   in force: a VTN outage must not lift a limit).
3. With a webhook (:class:`WebhookConfig`), :meth:`VEN.subscribe` registers a subscription with a
   random bearer token; the callback server answers the VTN's ``?echo=`` challenge and accepts
   notifications only with that token. Polling continues (slower) as the fallback; if the VTN does
   not support subscriptions the VEN polls at the normal interval.
4. Reports: for every event ``reportDescriptor`` (USAGE in kWh, DEMAND in kW) the VEN generates the
   report when due (see :func:`report_schedule`) from ``measurements(start, end) -> kW``, puts it
   in the :class:`ReportOutbox` (memory + optional JSON file) and delivers it in order, retrying with
   exponential backoff; a report the VTN rejects with 4xx is kept in the file's ``rejected`` list.
   Nothing is dropped.

Time is injected: every method takes ``now``; the background thread uses ``clock``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from hashflex.messages import DRAckMessage, DREventMessage, DRProgram
from hashflex.openadr.client import OpenADRClient, VTNError, VTNUnavailable
from hashflex.openadr.mapping import (
    ExportLimit,
    ResolvedInterval,
    limit_windows,
    map_event,
    modification_number,
    parse_duration,
    targets_match,
)

__all__ = ["Enrolment", "ReportOutbox", "VEN", "VENConfig", "WebhookConfig", "report_schedule"]

log = logging.getLogger(__name__)
UTC = timezone.utc
Signal = list[tuple[datetime, datetime | None, float]]
_METADATA = ("id", "createdDateTime", "modificationDateTime", "objectType")
_OADR_MESSAGE_ID = re.compile(r"^([A-Za-z0-9_-]+):[A-Za-z0-9_.-]+$")  # mapping.to_message_id


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WebhookConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    public_url: str | None = None  # what the VTN calls; default http://host:port/openadr/callback
    bearer_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ssl_context: Any = None  # an ssl.SSLContext for HTTPS (the spec requires HTTPS in production)


@dataclass(frozen=True)
class VENConfig:
    ven_name: str
    resource_names: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # extra target strings agreed with the utility
    program_names: tuple[str, ...] | None = None  # None: every program the VTN shows this VEN
    issuer: str | None = None  # hashflex issuer name (must be in profile.dr.issuers); None: the program id
    dr_program: DRProgram = DRProgram.UTILITY
    poll_interval_s: float = 30.0
    poll_interval_with_webhook_s: float = 300.0
    reenrol_interval_s: float = 3600.0
    horizon: timedelta = timedelta(days=2)  # how far looping events are unrolled
    report_resource_name: str | None = None  # default: the first resource name, else the ven name
    outbox_path: Path | None = None
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    honour_randomize_start: bool = True
    webhook: WebhookConfig | None = None
    seed: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> VENConfig:
        """``HASHFLEX_OPENADR_VEN_NAME`` (required), ``_RESOURCES``, ``_TARGETS``, ``_PROGRAMS`` (comma
        lists), ``_ISSUER``, ``_POLL_S``, ``_OUTBOX`` (JSON file), ``_WEBHOOK_PORT`` (turns the webhook
        on), ``_WEBHOOK_HOST``, ``_WEBHOOK_URL`` (public callback URL), ``_WEBHOOK_TOKEN``."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(f"HASHFLEX_OPENADR_{name}") or None

        def names(name: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in (get(name) or "").split(",") if x.strip())

        values: dict[str, Any] = {"ven_name": get("VEN_NAME"), "resource_names": names("RESOURCES"),
                                  "targets": names("TARGETS"), "program_names": names("PROGRAMS") or None,
                                  "issuer": get("ISSUER")}
        if get("POLL_S"):
            values["poll_interval_s"] = float(get("POLL_S") or 0)
        if get("OUTBOX"):
            values["outbox_path"] = Path(get("OUTBOX") or "")
        if get("WEBHOOK_PORT"):
            hook: dict[str, Any] = {"host": get("WEBHOOK_HOST") or "0.0.0.0", "port": int(get("WEBHOOK_PORT") or 0),
                                    "public_url": get("WEBHOOK_URL")}
            if get("WEBHOOK_TOKEN"):
                hook["bearer_token"] = get("WEBHOOK_TOKEN")
            values["webhook"] = WebhookConfig(**hook)
        values.update(overrides)
        if not values.get("ven_name"):
            raise ValueError("HASHFLEX_OPENADR_VEN_NAME: required (the venName the utility provisioned)")
        return cls(**values)


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


# --------------------------------------------------------------------------- reports


def report_schedule(descriptor: Mapping[str, Any], intervals: Sequence[ResolvedInterval]
                    ) -> list[tuple[datetime, list[ResolvedInterval]]]:
    """(due time, intervals covered) for each report a ``reportDescriptor`` asks for (historical).

    Report r is generated at the end of interval ``s + r·f`` and covers the ``n`` intervals ending
    there, where s = startInterval (-1: the last interval), n = numIntervals (-1: all since the
    previous report, or since the first), f = frequency (-1: n, or one report when n is -1), for
    ``repeat`` reports (-1: while intervals last). Open-ended intervals cannot be reported and are
    left out. Forecast reports (historical false) are not produced."""
    finite = [i for i in intervals if i.end is not None]
    if not finite or descriptor.get("historical", True) is False:
        return []
    start = int(descriptor.get("startInterval", -1))
    count = int(descriptor.get("numIntervals", -1))
    frequency = int(descriptor.get("frequency", -1))
    repeat = int(descriptor.get("repeat", 1))
    last = len(finite) - 1
    first_end = last if start < 0 else min(start, last)
    step = frequency if frequency > 0 else (count if count > 0 else 0)
    out: list[tuple[datetime, list[ResolvedInterval]]] = []
    previous = -1
    r = 0
    while repeat < 0 or r < repeat:
        at = first_end + r * step
        if at > last or (r > 0 and step == 0):
            break
        lo = previous + 1 if count < 0 else max(0, at - count + 1)
        covered = finite[lo:at + 1]
        end = covered[-1].end
        assert end is not None
        out.append((end, covered))
        previous = at
        r += 1
    return out


class ReportOutbox:
    """Reports waiting for the VTN: in order, persisted (if ``path``), retried with backoff."""

    def __init__(self, path: Path | None = None, retry_base_s: float = 2.0, retry_max_s: float = 300.0) -> None:
        self.path = Path(path) if path is not None else None
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.pending: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.generated: set[str] = set()
        self.delivered = 0
        self.failures = 0
        self.retry_at: datetime | None = None
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            data = json.loads(self.path.read_text())
            self.pending, self.rejected = data.get("pending", []), data.get("rejected", [])
            self.generated = set(data.get("generated", []))

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, key: str, body: dict[str, Any], now: datetime) -> None:
        with self._lock:
            if key in self.generated:
                return
            self.generated.add(key)
            self.pending.append({"key": key, "body": body, "queued_at": now.isoformat(), "attempts": 0})
            self._save()

    def flush(self, client: OpenADRClient, now: datetime) -> int:
        """Deliver what is due, oldest first; stop at the first failure that may pass."""
        sent = 0
        with self._lock:
            if self.retry_at is not None and now < self.retry_at:
                return 0
            while self.pending:
                item = self.pending[0]
                item["attempts"] += 1
                try:
                    if item.get("outcome_unknown") and _already_delivered(client, item["body"]):
                        log.info("report %s had reached the VTN before the answer was lost", item["key"])
                    else:
                        client.create_report(item["body"])
                except VTNUnavailable as exc:
                    self.failures += 1
                    # No answer (timeout, dropped connection): the VTN may have stored it after all.
                    item["outcome_unknown"] = item.get("outcome_unknown") or exc.status == 0
                    delay = min(self.retry_max_s, self.retry_base_s * 2 ** min(item["attempts"] - 1, 20))
                    self.retry_at = now + timedelta(seconds=delay)
                    item["last_error"] = str(exc)
                    log.warning("report %s not delivered (%s); retry in %.0f s, %d queued",
                                item["key"], exc, delay, len(self.pending))
                    self._save()
                    return sent
                except VTNError as exc:
                    item["last_error"] = str(exc)
                    self.rejected.append(self.pending.pop(0))
                    log.error("report %s rejected by the VTN, kept in the outbox's rejected list: %s",
                              item["key"], exc)
                    self._save()
                    continue
                self.pending.pop(0)
                self.delivered += 1
                sent += 1
                self.retry_at = None
                self._save()
        return sent

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"pending": self.pending, "rejected": self.rejected,
                                   "generated": sorted(self.generated)}))
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- the VEN


class VEN:
    """One site's OpenADR 3 VEN. ``loop`` needs ``handle_dr(message, now)`` (a ControlLoop)."""

    def __init__(self, client: OpenADRClient, config: VENConfig, loop: Any, *,
                 measurements: Callable[[datetime, datetime], float] | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 on_prices: Callable[[str, Signal], None] | None = None,
                 on_carbon: Callable[[str, Signal], None] | None = None,
                 on_export_limits: Callable[[str, list[ExportLimit]], None] | None = None) -> None:
        self.client, self.config, self.loop = client, config, loop
        issuers = getattr(getattr(getattr(loop, "profile", None), "dr", None), "issuers", None)
        if issuers is not None and config.issuer is not None and config.issuer not in issuers:
            raise ValueError(f"issuer {config.issuer!r}: not in the site profile's dr.issuers {sorted(issuers)}; "
                             "every OpenADR event would be refused")
        if issuers is not None and config.issuer is None:
            log.warning("OpenADR issuer not configured: events carry the VTN's program id as issuer, which must "
                        "be listed in dr.issuers (%s) or they are refused", sorted(issuers))
        self.measurements, self.clock = measurements, clock
        self.on_prices, self.on_carbon, self.on_export_limits = on_prices, on_carbon, on_export_limits
        self.enrolment: Enrolment | None = None
        self.outbox = ReportOutbox(config.outbox_path, config.retry_base_s, config.retry_max_s)
        self.prices: dict[str, Signal] = {}
        self.carbon: dict[str, Signal] = {}
        self.export_limits: dict[str, list[ExportLimit]] = {}
        self.acks: list[DRAckMessage] = []
        self.unsupported: list[str] = []
        self.counters: dict[str, int] = {"polls": 0, "poll_failures": 0, "events_seen": 0, "notifications": 0,
                                         "notifications_refused": 0, "dr_messages": 0, "unsupported_payloads": 0,
                                         "reports_generated": 0, "reports_unsupported": 0}
        self.subscription_ids: list[str] = []
        self._events: dict[str, _Tracked] = {}
        self._plans: dict[str, list[tuple[str, datetime, dict[str, Any], list[ResolvedInterval]]]] = {}
        self._recorded: set[tuple[str, datetime]] = set()
        self._lock = threading.RLock()
        self._random = random.Random(config.seed)
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_poll: datetime | None = None
        self._enrolled_at: datetime | None = None
        self._enrol_retry_at: datetime | None = None
        self._enrol_failures = 0
        self._reconciled = False

    # ------------------------------------------------------------------ enrolment

    @property
    def my_targets(self) -> list[str]:
        names = {self.config.ven_name, *self.config.resource_names, *self.config.targets}
        if self.enrolment is not None:
            names.update(self.enrolment.targets)
        return sorted(names)

    def enrol(self) -> Enrolment:
        """Find (or create) the ven object and resources; list the programs this VEN is in."""
        config = self.config
        found = [v for v in self.client.vens(config.ven_name) if v.get("venName") == config.ven_name]
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
            log.info("created ven object %s for %s", ven.get("id"), config.ven_name)
        ven_id = str(ven["id"])
        granted = {t if isinstance(t, str) else str(v) for t in ven.get("targets") or []
                   for v in ([t] if isinstance(t, str) else t.get("values") or [])}
        resources = {str(r.get("resourceName")): r for r in self.client.resources(ven_id)}
        for name in config.resource_names:
            if name not in resources:
                try:
                    resources[name] = self.client.create_resource(ven_id, name)
                except VTNError as exc:
                    if isinstance(exc, VTNUnavailable):
                        raise
                    log.warning("resource %s not created: %s", name, exc)
        for resource in resources.values():
            granted.update(t for t in resource.get("targets") or [] if isinstance(t, str))
        self.enrolment = Enrolment(ven_id, sorted(granted), {}, {n: str(r.get("id")) for n, r in resources.items()})
        programs = self.client.programs(targets=self.my_targets)
        wanted = config.program_names
        self.enrolment.programs = {str(p["id"]): p for p in programs
                                   if (wanted is None or p.get("programName") in wanted)
                                   and targets_match(p, self.my_targets)}
        log.info("OpenADR VEN %s enrolled in %s", config.ven_name,
                 sorted(p.get("programName") for p in self.enrolment.programs.values()))
        return self.enrolment

    def issuer_for(self, program_id: str) -> str:
        return self.config.issuer or program_id

    # ------------------------------------------------------------------ events

    def poll(self, now: datetime) -> int:
        """Read every enrolled program's events and act on changes. Returns messages sent. A VTN
        failure is counted, logged and raised (VTNError), and changes nothing."""
        if self.enrolment is None:
            self.enrol()
        assert self.enrolment is not None
        try:
            listings = {pid: self.client.events(program_id=pid, targets=self.my_targets)
                        for pid in self.enrolment.programs}
        except VTNError as exc:
            self.counters["poll_failures"] += 1
            log.warning("OpenADR poll failed, events already accepted stay in force: %s", exc)
            raise
        self.counters["polls"] += 1
        self._last_poll = now
        sent = 0
        with self._lock:
            seen: set[str] = set()
            for pid, events in listings.items():
                for event in events:
                    if str(event.get("programID")) == pid:
                        seen.add(str(event.get("id")))
                        sent += self.process_event(event, now)
            for event_id in [e for e, t in self._events.items() if e not in seen]:
                log.info("OpenADR event %s no longer on the VTN: cancelled", event_id)
                sent += self.cancel_event(event_id, now)
            if not self._reconciled:
                sent += self._reconcile(seen, now)
                self._reconciled = True
        return sent

    def process_event(self, event: dict[str, Any], now: datetime) -> int:
        """Map one event and send what changed through ``loop.handle_dr``. Returns messages sent."""
        with self._lock:
            assert self.enrolment is not None
            event_id, program_id = str(event.get("id")), str(event.get("programID"))
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
            offset = held.random_offset if held is not None else self._draw_offset(event)
            tracked = _Tracked(dict(event), program_id, fingerprint, number, offset,
                               dict(held.sent) if held is not None else {},
                               revivals=dict(held.revivals) if held is not None else {})
            self._events[event_id] = tracked
            sent = self._apply(tracked, now, first=True)
            return sent + self._reapply_below(tracked.raw, now)

    def _apply(self, tracked: _Tracked, now: datetime, first: bool = False) -> int:
        """Send the difference between what the event asks now and what was sent for it."""
        event = tracked.raw
        event_id = str(event.get("id"))
        assert self.enrolment is not None
        mapped = map_event(event, now, issuer=self.issuer_for(tracked.program_id),
                           program=self.enrolment.programs.get(tracked.program_id),
                           dr_program=self.config.dr_program, random_offset=tracked.random_offset,
                           horizon=self.config.horizon, modification=tracked.number,
                           higher_priority=self._higher_priority_windows(event, now))
        tracked.intervals = mapped.intervals
        for reason in mapped.unsupported if first else ():
            self.counters["unsupported_payloads"] += 1
            self.unsupported.append(f"event {event_id}: {reason}")
            log.warning("OpenADR event %s: %s (ignored)", event_id, reason)
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
        for base, before in list(tracked.sent.items()):
            if base not in wanted and not before.cancelled:
                sent += self._send_cancel(tracked, base, now)
        if first:
            self._signals(event_id, mapped)
            self._plan_reports(event, mapped.intervals)
        return sent

    def _held_by_book(self, event_id: str) -> DREventMessage | None:
        book = getattr(self.loop, "dr_book", None)
        if book is None or event_id not in book.event_ids():
            return None
        return book.message(event_id)

    def _reconcile(self, listed: set[str], now: datetime) -> int:
        """After a restart: cancel OpenADR intervals the DR book still holds for events the VTN no
        longer lists (deleted while the VEN was down). Only ids of the form ``<objectID>:<interval>``
        issued under this VEN's issuer names are touched."""
        book = getattr(self.loop, "dr_book", None)
        if book is None or self.enrolment is None:
            return 0
        issuers = {self.issuer_for(pid) for pid in self.enrolment.programs}
        sent = 0
        for event_id in book.event_ids():
            match = _OADR_MESSAGE_ID.match(event_id)
            if match is None or match.group(1) in listed or book.status(event_id) not in ("pending", "active"):
                continue
            message = book.message(event_id)
            if message.issuer not in issuers or message.cancelled or (message.end is not None and message.end <= now):
                continue
            log.info("OpenADR interval %s: its event is gone from the VTN, cancelled", event_id)
            tracked = _Tracked({"id": match.group(1)}, "", "", message.modification_number, timedelta(0),
                               {event_id: message})
            sent += self._send_cancel(tracked, event_id, now)
        return sent

    def _signals(self, event_id: str, mapped: Any) -> None:
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
        if ack.status == "accepted":
            tracked.sent[base] = message
        else:
            log.warning("OpenADR interval %s refused by the site: %s", message.event_id, ack.reason)
        return 1

    def _send_cancel(self, tracked: _Tracked, base: str, now: datetime) -> int:
        before = tracked.sent[base]
        if before.end is not None and before.end <= now:
            return 0  # already completed
        cancel = before.model_copy(update={"modification_number": before.modification_number + 1,
                                           "cancelled": True})
        return self._send(tracked, base, cancel, now)

    def _draw_offset(self, event: Mapping[str, Any]) -> timedelta:
        if not self.config.honour_randomize_start:
            return timedelta(0)
        spread = parse_duration((event.get("intervalPeriod") or {}).get("randomizeStart"))
        if not spread:
            return timedelta(0)
        seconds = abs(spread.total_seconds())
        return timedelta(seconds=self._random.uniform(-seconds, seconds))

    def _higher_priority_windows(self, event: Mapping[str, Any], now: datetime
                                 ) -> list[tuple[datetime, datetime | None]]:
        mine = event.get("priority")
        if mine is None:
            mine = math.inf
        windows: list[tuple[datetime, datetime | None]] = []
        for other_id, other in self._events.items():
            theirs = other.raw.get("priority")
            if other_id != str(event.get("id")) and theirs is not None and theirs < mine:
                windows.extend(limit_windows(other.raw, now, other.random_offset, self.config.horizon))
        return windows

    # ------------------------------------------------------------------ reports

    def _plan_reports(self, event: Mapping[str, Any], intervals: list[ResolvedInterval]) -> None:
        plans = []
        for d, descriptor in enumerate(event.get("reportDescriptors") or []):
            kind = str(descriptor.get("payloadType"))
            if kind not in ("USAGE", "DEMAND"):
                self.counters["reports_unsupported"] += 1
                log.warning("OpenADR event %s asks for a %s report: not supported", event.get("id"), kind)
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
                    self.outbox.add(key, self._report_body(tracked, descriptor, covered, key), now)
                    self.counters["reports_generated"] += 1
                    made += 1
        return made

    def _report_body(self, tracked: _Tracked, descriptor: Mapping[str, Any], covered: list[ResolvedInterval],
                     key: str) -> dict[str, Any]:
        assert self.measurements is not None
        kind = str(descriptor["payloadType"])
        units = "KWH" if kind == "USAGE" else "KW"
        resource = self.config.report_resource_name or (self.config.resource_names[0] if self.config.resource_names
                                                        else self.config.ven_name)
        intervals = []
        for k, interval in enumerate(covered):
            assert interval.end is not None
            kw = float(self.measurements(interval.start, interval.end))
            hours = (interval.end - interval.start).total_seconds() / 3600.0
            value = kw * hours if kind == "USAGE" else kw
            intervals.append({"id": _report_interval_id(interval, k),
                              "intervalPeriod": {"start": _iso(interval.start),
                                                 "duration": _iso_duration(interval.end - interval.start)},
                              "payloads": [{"type": kind, "values": [round(value, 6)]}]})
        body: dict[str, Any] = {
            "eventID": str(tracked.raw.get("id")), "clientName": self.config.ven_name,
            "reportName": f"{self.config.ven_name}:{key}",
            "payloadDescriptors": [{"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": kind,
                                    "readingType": descriptor.get("readingType") or
                                    ("DIRECT_READ" if kind == "USAGE" else "MEAN"), "units": units}],
            "resources": [{"resourceName": resource, "intervals": intervals}],
        }
        if self.client.config.api_version.startswith("3.0"):
            body["programID"] = tracked.program_id
        return body

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
        """Start the callback server; returns the callback URL."""
        hook = self.config.webhook
        if hook is None:
            raise ValueError("webhook: not configured")
        ven = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("webhook: " + fmt, *args)

            def do_GET(self) -> None:  # the VTN's challenge when a subscription is created
                echo = parse_qs(urlparse(self.path).query).get("echo")
                self._answer(200 if echo else 400, (echo[0] if echo else "echo parameter required").encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {hook.bearer_token}".encode()):
                    ven.counters["notifications_refused"] += 1
                    self._answer(401, b"bad bearer token")
                    return
                try:
                    notification = json.loads(raw)
                except ValueError:
                    self._answer(400, b"not JSON")
                    return
                try:
                    ven.on_notification(notification, ven.clock())
                except Exception:  # never fail the VTN for our own trouble; polling will catch up
                    log.exception("webhook notification failed")
                self._answer(200, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((hook.host, hook.port), Handler)
        self._server.daemon_threads = True
        if hook.ssl_context is not None:
            self._server.socket = hook.ssl_context.wrap_socket(self._server.socket, server_side=True)
        thread = threading.Thread(target=self._server.serve_forever, name="openadr-webhook", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self.callback_url

    @property
    def callback_url(self) -> str:
        hook = self.config.webhook
        assert hook is not None and self._server is not None
        if hook.public_url:
            return hook.public_url
        scheme = "https" if hook.ssl_context is not None else "http"
        return f"{scheme}://{hook.host}:{self._server.server_address[1]}/openadr/callback"

    def subscribe(self) -> bool:
        """Subscribe to event changes of every enrolled program. False (polling only) if the VTN
        does not support subscriptions or refuses them."""
        assert self.enrolment is not None and self.config.webhook is not None
        url = self.callback_url
        try:
            for old in self.client.subscriptions(self.config.ven_name):
                if any(op.get("callbackUrl") == url for op in old.get("objectOperations") or []):
                    self.client.delete_subscription(str(old["id"]))
            self.subscription_ids = []
            for program_id in self.enrolment.programs:
                created = self.client.create_subscription({
                    "clientName": self.config.ven_name, "programID": program_id,
                    "objectOperations": [{"objects": ["EVENT"], "operations": ["CREATE", "UPDATE", "DELETE"],
                                          "callbackUrl": url, "bearerToken": self.config.webhook.bearer_token}],
                    **({} if self.client.config.api_version.startswith("3.0") else {"targets": self.my_targets})})
                self.subscription_ids.append(str(created.get("id")))
        except VTNError as exc:
            log.warning("OpenADR subscription failed (%s): polling every %.0f s", exc, self.config.poll_interval_s)
            self.subscription_ids = []
            return False
        return True

    def on_notification(self, notification: Mapping[str, Any], now: datetime) -> int:
        self.counters["notifications"] += 1
        if notification.get("objectType") != "EVENT" or not isinstance(notification.get("object"), dict):
            return 0
        event = notification["object"]
        if notification.get("operation") == "DELETE":
            return self.cancel_event(str(event.get("id")), now)
        return self.process_event(event, now)

    # ------------------------------------------------------------------ running

    @property
    def push_active(self) -> bool:
        return bool(self.subscription_ids)

    def tick(self, now: datetime) -> None:
        """One round: enrol (again every ``reenrol_interval_s``, to learn new programs), poll when
        due, queue due reports, deliver the outbox. A VTN failure defers the next try by the poll
        interval (enrolment: exponential backoff up to ``retry_max_s``); reports go on regardless."""
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
            log.warning("OpenADR: %s", exc)
        self.generate_reports(now)
        self.flush_reports(now)

    def _enrol_and_subscribe(self, now: datetime) -> None:
        before = set(self.enrolment.programs) if self.enrolment is not None else None
        try:
            self.enrol()
        except VTNError:
            self._enrol_failures += 1
            delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** min(self._enrol_failures - 1, 20))
            self._enrol_retry_at = now + timedelta(seconds=delay)
            raise
        self._enrol_failures, self._enrol_retry_at, self._enrolled_at = 0, None, now
        assert self.enrolment is not None
        if self.config.webhook is not None and (before != set(self.enrolment.programs) or not self.push_active):
            if self._server is None:
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
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []


def _already_delivered(client: OpenADRClient, body: Mapping[str, Any]) -> bool:
    """Is a report with this body's reportName already on the VTN (a POST whose answer was lost)?"""
    found = client.reports(event_id=str(body.get("eventID")), client_name=str(body.get("clientName")))
    return any(r.get("reportName") == body.get("reportName") for r in found)


def _same_terms(a: DREventMessage, b: DREventMessage) -> bool:
    keys = ("start", "end", "import_limit_kw", "level", "issuer", "program", "cancelled")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _report_interval_id(interval: ResolvedInterval, position: int) -> int:
    head = interval.interval_id.split(".")[0]
    try:
        return int(head)
    except ValueError:
        return position


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds == int(seconds):
        return f"PT{int(seconds)}S"
    return f"PT{seconds}S"
