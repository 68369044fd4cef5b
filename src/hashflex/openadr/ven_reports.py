"""The VEN's reports: plan them from each event's ``reportDescriptors``, generate them when due
(measured then), record DR performance, deliver the outbox. A mixin of
:class:`hashflex.openadr.ven.VEN`, split from ``ven.py`` (pure move); the report rules are in
:mod:`hashflex.openadr.reports`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hashflex.openadr.mapping import ResolvedInterval
from hashflex.openadr.reports import report_body, report_schedule, report_units

if TYPE_CHECKING:
    from hashflex.openadr.ven_events import _Tracked

__all__ = ["ReportingMixin"]

log = logging.getLogger(__name__)


class ReportingMixin:
    """Reports of :class:`~hashflex.openadr.ven.VEN` (``generate_reports``, ``flush_reports``)."""

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
                tracked = self._events.get(event_id) or self._as_events.get(event_id)
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
        """Deliver the outbox (:meth:`ReportOutbox.flush`); returns reports delivered."""
        return self.outbox.flush(self.client, now)
