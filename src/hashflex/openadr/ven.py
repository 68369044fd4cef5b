"""The OpenADR 3 VEN: enrolment, events by polling and webhook, reports through VTN outages.

Every DR request goes through ``ControlLoop.handle_dr`` — the same path as MQTT DR — so the DR
lifecycle, the guard fast path, the ack, the audit and performance accounting are shared. Prices,
carbon intensity and export limits go to injected callbacks.

Modules: :mod:`.config` (VENConfig, WebhookConfig, env), :mod:`.reports` (schedule, body, outbox),
:mod:`.webhook` (the hardened listener), :mod:`.models` (spec schemas), :mod:`.mapping` and
:mod:`.timing` (pure rules). The VEN itself is assembled from mixins, one per seam:
:mod:`.ven_enrolment` (step 1), :mod:`.ven_events` (step 2), :mod:`.ven_webhook` (step 3),
:mod:`.ven_reports` (step 4); this module keeps its state, status and the running thread.

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
import logging
import random
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from hashflex.messages import DRAckMessage
from hashflex.openadr.client import OpenADRClient, VTNError
from hashflex.openadr.config import VENConfig, WebhookConfig
from hashflex.openadr.mapping import ExportLimit, ResolvedInterval
from hashflex.openadr.reports import ReportOutbox, report_schedule
from hashflex.openadr.ven_ancillary import AncillaryMixin, as_programs
from hashflex.openadr.ven_enrolment import Enrolment, EnrolmentMixin
from hashflex.openadr.ven_events import EventsMixin, _Tracked
from hashflex.openadr.ven_reports import ReportingMixin
from hashflex.openadr.ven_webhook import WebhookMixin
from hashflex.openadr.webhook import WebhookServer

# Enrolment, ReportOutbox, VENConfig, WebhookConfig and report_schedule are re-exported (import paths kept).
__all__ = ["Enrolment", "ReportOutbox", "VEN", "VENConfig", "WebhookConfig", "report_schedule"]

log = logging.getLogger(__name__)
UTC = timezone.utc
Signal = list[tuple[datetime, datetime | None, float]]


def utcnow() -> datetime:
    return datetime.now(UTC)


class VEN(EnrolmentMixin, EventsMixin, AncillaryMixin, ReportingMixin, WebhookMixin):
    """One site's OpenADR 3 VEN. ``loop`` needs ``handle_dr(message, now)`` (a ControlLoop).

    ``recorder``: anything with ``record(kind, payload, at)`` (the daemon's AuditRecorder); default:
    ``loop.recorder`` if the loop has one. Rejected events and intervals are recorded there.

    Parameters
    ----------
    client : OpenADRClient
        The VTN's REST client.
    config : VENConfig
        Who this VEN is, its programs (DR and, ``as_program_names``, the QSE's AS programs).
    loop : ControlLoop
        ``handle_dr``, and ``handle_as_award`` / ``handle_as_deploy`` when AS programs are
        configured; its ``profile``, ``dr_book`` and ``book`` are read.
    measurements : callable (start, end) -> float, optional
        Mean measured site import over ``[start, end)``, kW (reports and DR performance).
    clock : callable () -> datetime
        UTC now, for the background thread.
    on_prices, on_carbon, on_export_limits : callable, optional
        Receivers of PRICE (USD/MWh), GHG (kg/MWh) and EXPORT_CAPACITY_LIMIT (kW) signals.
    recorder : object, optional
        The audit recorder.

    Raises
    ------
    ValueError
        ``config.issuer`` not in ``profile.dr.issuers``; AS programs without an ``ancillary`` section
        in the profile, or differing from ``ancillary.openadr_programs``.
    """

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
                                         "tick_failures": 0, "listings_incomplete": 0, "as_awards": 0,
                                         "as_deployments": 0, "as_recalls": 0, "as_refused": 0}
        self.subscription_ids: list[str] = []
        self._events: dict[str, _Tracked] = {}
        # AS (issue 15): the QSE's programs and issuer, their events, the site's answers (.ven_ancillary)
        self.as_program_names, self.issuer_as = as_programs(config, loop)
        self._as_events: dict[str, Any] = {}
        self.as_acks: list[Any] = []
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
                    "events": sorted(self._events), "as_events": sorted(self._as_events),
                    "as_programs": sorted(self.as_program_names), "counters": dict(self.counters),
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

    # ------------------------------------------------------------------ running

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
        for step in (self.dispatch_as, self.generate_reports, self.flush_reports):
            try:
                step(now)
            except Exception as exc:  # noqa: BLE001
                self.counters["tick_failures"] += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("OpenADR reports failed")

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
        """Stop the background thread and the webhook listener (waits up to 5 s for the thread)."""
        self._stop.set()
        self._wake.set()
        if self._webhook is not None:
            self._webhook.stop()
            self._webhook = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
