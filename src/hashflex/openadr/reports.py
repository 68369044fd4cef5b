"""Reports a VTN asks for in ``event.reportDescriptors``: when they are due, what they contain,
and the outbox that delivers them in order through VTN outages.

- :func:`report_schedule`: (due time, intervals) for each report of a descriptor.
- :func:`report_body`: the report object, honouring the descriptor's ``units`` (USAGE: KWH, WH,
  MWH; DEMAND: KW, W, MW; anything else is refused with a reason), ``readingType``, ``aggregate``
  (true: one resource named ``AGGREGATED_REPORT``, UG 7.7: "set the resourceName to
  AGGREGATED_REPORT"; the site meter is the sum of its resources) and ``reportIntervals``
  (INTERVALS: the event's interval ids; a looped event repeats its ids, and a report must not, so
  such a report numbers intervals by their position in the unrolled event; SUB_INTERVALS and
  OPEN_INTERVALS: "Interval ids of report intervals are determined by VEN" (UG 7.5): 0..n-1, one per
  event interval, which the User Guide allows for both).
- :class:`ReportOutbox`: memory + optional JSON file; delivered oldest first, retried with
  exponential backoff; a report the VTN refuses (4xx) is kept in ``rejected``. Nothing is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hashflex.openadr.client import OpenADRClient, VTNError, VTNUnavailable
from hashflex.openadr.mapping import ResolvedInterval

__all__ = ["REPORT_UNITS", "ReportOutbox", "report_body", "report_schedule", "report_units"]

log = logging.getLogger(__name__)
UTC = timezone.utc
# payloadType → {units: factor from the measured kW (DEMAND) or kWh (USAGE)}; first = default.
REPORT_UNITS: dict[str, dict[str, float]] = {"USAGE": {"KWH": 1.0, "WH": 1000.0, "MWH": 0.001},
                                             "DEMAND": {"KW": 1.0, "W": 1000.0, "MW": 0.001}}
AGGREGATED = "AGGREGATED_REPORT"


def report_units(descriptor: Mapping[str, Any]) -> tuple[str, float]:
    """(units, factor) for a USAGE/DEMAND descriptor. Raises ``ValueError`` with the reason for an
    unsupported payload type or units.

    Parameters
    ----------
    descriptor : Mapping
        A reportDescriptor (``payloadType``, optional ``units``).

    Returns
    -------
    (str, float)
        The units and the factor from the measured kW (DEMAND) or kWh (USAGE).

    Raises
    ------
    ValueError
        A payload type other than USAGE or DEMAND, or units not in ``REPORT_UNITS``.
    """
    kind = str(descriptor.get("payloadType"))
    table = REPORT_UNITS.get(kind)
    if table is None:
        raise ValueError(f"payloadType {kind}: only USAGE and DEMAND reports are produced")
    units = str(descriptor.get("units") or next(iter(table))).upper()
    if units not in table:
        raise ValueError(f"{kind} units {units!r}: expected one of {', '.join(table)}")
    return units, table[units]


def report_body(descriptor: Mapping[str, Any], covered: Sequence[ResolvedInterval], *, event_id: str,
                client_name: str, resource_name: str, report_name: str,
                measured_kw: Callable[[datetime, datetime], float], program_id: str | None = None) -> dict[str, Any]:
    """The report object for ``covered`` (finite intervals), measured through ``measured_kw(start,
    end)`` (mean kW). ``program_id``: 3.0.1 reports carry it. Raises ``ValueError`` (units).

    Parameters
    ----------
    descriptor : Mapping
        The reportDescriptor asked in the event.
    covered : sequence of ResolvedInterval
        The finite intervals this report covers.
    event_id, client_name, resource_name, report_name : str
        The report's ``eventID``, ``clientName``, resource and ``reportName``.
    measured_kw : callable (start, end) -> float
        Mean measured site import over ``[start, end)``, kW.
    program_id : str, optional
        ``programID`` (3.0.1 only).

    Returns
    -------
    dict
        The report object (YAML components/schemas/report).

    Raises
    ------
    ValueError
        Unsupported payload type or units (:func:`report_units`).
    """
    kind = str(descriptor["payloadType"])
    units, factor = report_units(descriptor)
    mode = str(descriptor.get("reportIntervals") or "INTERVALS")
    ids = _interval_ids(covered, mode)
    intervals = []
    for ident, interval in zip(ids, covered):
        assert interval.end is not None
        kw = float(measured_kw(interval.start, interval.end))
        hours = (interval.end - interval.start).total_seconds() / 3600.0
        value = (kw * hours if kind == "USAGE" else kw) * factor
        intervals.append({"id": ident, "intervalPeriod": {"start": _iso(interval.start),
                                                          "duration": _iso_duration(interval.end - interval.start)},
                          "payloads": [{"type": kind, "values": [round(value, 6)]}]})
    body: dict[str, Any] = {
        "eventID": event_id, "clientName": client_name, "reportName": report_name,
        "payloadDescriptors": [{"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": kind,
                                "readingType": descriptor.get("readingType") or
                                ("DIRECT_READ" if kind == "USAGE" else "MEAN"), "units": units}],
        "resources": [{"resourceName": AGGREGATED if descriptor.get("aggregate") is True else resource_name,
                       "intervals": intervals}],
    }
    if program_id is not None:
        body["programID"] = program_id
    return body


def _interval_ids(covered: Sequence[ResolvedInterval], mode: str) -> list[int]:
    if mode != "INTERVALS":
        return list(range(len(covered)))  # VEN-determined ids
    heads = []
    for interval in covered:
        try:
            heads.append(int(interval.interval_id.split(".")[0]))
        except ValueError:
            heads.append(None)
    if None not in heads and len(set(heads)) == len(heads):
        return [h for h in heads if h is not None]
    return [interval.index for interval in covered]  # looped: unique positions in the unrolled event


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds == int(seconds):
        return f"PT{int(seconds)}S"
    return f"PT{seconds}S"


def report_schedule(descriptor: Mapping[str, Any], intervals: Sequence[ResolvedInterval]
                    ) -> list[tuple[datetime, list[ResolvedInterval]]]:
    """(due time, intervals covered) for each report a ``reportDescriptor`` asks for (historical).

    Report r is generated at the end of interval ``s + r·f`` and covers the ``n`` intervals ending
    there, where s = startInterval (-1: the last interval), n = numIntervals (-1: all since the
    previous report, or since the first), f = frequency (-1: n, or one report when n is -1), for
    ``repeat`` reports (-1: while intervals last). Open-ended intervals cannot be reported and are
    left out. Forecast reports (historical false) are not produced.

    Parameters
    ----------
    descriptor : Mapping
        A reportDescriptor (UG 7.5: startInterval, numIntervals, frequency, repeat, historical).
    intervals : sequence of ResolvedInterval
        The event's intervals.

    Returns
    -------
    list of (datetime, list of ResolvedInterval)
        When each report is due (the end of its last interval) and what it covers.
    """
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
        """Queue a report once (a key already generated is ignored) and persist the outbox.

        Parameters
        ----------
        key : str
            ``<event id>/<descriptor>/<report number>``: the report's identity.
        body : dict
            The report object.
        now : datetime
            When it was queued (UTC).
        """
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




def _already_delivered(client: OpenADRClient, body: Mapping[str, Any]) -> bool:
    """Is a report with this body's reportName already on the VTN (a POST whose answer was lost)?"""
    found = client.reports(event_id=str(body.get("eventID")), client_name=str(body.get("clientName")))
    return any(isinstance(r, Mapping) and r.get("reportName") == body.get("reportName") for r in found)
