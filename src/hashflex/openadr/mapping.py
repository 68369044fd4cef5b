"""OpenADR 3 objects → hashflex inputs. Pure: no network, no clock (``now`` is passed in).

Decisions (the README's "How a utility connects over OpenADR 3" summarises them)
--------------------------------------------------------------------------------
- **One DREventMessage per event interval.** An IMPORT_CAPACITY_LIMIT or SIMPLE event with N
  intervals becomes N messages with ``event_id = f"{oadr_event_id}:{interval_id}"``. (``#`` is not
  allowed in a hashflex Identifier, which must stay a safe MQTT topic level; OpenADR object ids never
  contain ``:``, so the split is unambiguous.) Each interval has its own limit, start and end, so the
  DR book, the guard fast path at each interval's start and the per-interval compliance records work
  unchanged.
- **Timing** (User Guide 7.3/7.4): ``event.intervalPeriod`` gives defaults; an interval's own
  ``intervalPeriod`` overrides them. A start of ``0001-01-01`` means "now" at the event level; on the
  first interval it means the event's start (or now); on later intervals, and when absent, an interval
  follows the previous one. A duration of ``P9999Y`` (or any duration past year 9000) is open-ended
  (``end=None``). ``event.duration`` truncates the intervals, or, when longer, loops them; loops are
  unrolled up to ``horizon`` and repeated intervals get ids ``"<id>.<k>"``.
- **randomizeStart**: the caller passes the offset it drew (``random_offset``, seconds, within
  ±randomizeStart); it shifts every start derived from the first interval, as the guide says. The VEN
  draws it once per event and keeps it, so re-reads of an event do not move it.
- **Priorities**: a lower number wins. A limit interval wholly covered by a conflicting (limit or
  SIMPLE) interval of a strictly higher-priority event is dropped; partial overlaps are kept, and the
  DR book then takes the lower of the two limits over the overlap (conservative). The VEN re-maps
  lower-priority events when a higher-priority one arrives, changes or goes. No priority counts as
  the lowest.
- **Modifications**: ``modificationDateTime`` → ``modification_number`` = whole seconds since
  2020-01-01Z (monotone, fits 31 bits until 2088). The VEN bumps the number when content changes
  within the same second.
- **Cancellations**: an event whose window is empty (``PT0S`` duration, or start ``0001-01-01`` with
  PT0S) is cancelled (User Guide 7.9); so is a deleted event (the VEN decides that).
- **Units**: IMPORT/EXPORT_CAPACITY_LIMIT in KW (default), W or MW; PRICE in currency per KWH
  (default) or MWH, USD only, → USD/MWh; GHG is g/kWh by definition, numerically kg/MWh.
  Multi-valued PRICE/GHG payloads split their interval into equal sub-intervals.
- **Unknown payload types** and unusable descriptors are returned in ``MappedEvent.unsupported``
  (the VEN logs and counts them); never fatal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from hashflex.messages import DREventMessage, DRProgram

__all__ = [
    "ExportLimit",
    "MappedEvent",
    "ResolvedInterval",
    "SignalPoint",
    "event_targets",
    "map_event",
    "modification_number",
    "parse_datetime",
    "parse_duration",
    "resolve_intervals",
    "targets_match",
    "to_message_id",
]

UTC = timezone.utc
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
OPEN_ENDED_AFTER = datetime(9000, 1, 1, tzinfo=UTC)  # P9999Y from any real start lands past this
LIMIT_TYPES = ("IMPORT_CAPACITY_LIMIT", "SIMPLE")  # payloads that become DR events (and conflict)
_DURATION_RE = re.compile(
    r"^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_POWER_KW = {"KW": 1.0, "W": 0.001, "MW": 1000.0}
_PRICE_PER_MWH = {"KWH": 1000.0, "MWH": 1.0, "WH": 1_000_000.0}
_ID_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


# --------------------------------------------------------------------------- time


def parse_duration(text: str | None) -> timedelta | None:
    """ISO 8601 duration → timedelta; ``None`` for 'infinity' (P9999Y, i.e. ≥ 9000 years).

    Years count 365 days and months 30 (the guide discourages months). Missing → PT0S."""
    if text is None or text == "":
        return timedelta(0)
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"duration {text!r}: not ISO 8601")
    sign, years, months, days, unit, hours, minutes, seconds = match.groups()
    years_n = int(years or 0)
    if years_n >= 9000:
        return None
    total = timedelta(days=365 * years_n + 30 * int(months or 0)
                      + int(days or 0) * (7 if unit == "W" else 1),
                      hours=int(hours or 0), minutes=int(minutes or 0), seconds=float(seconds or 0))
    return -total if sign == "-" else total


def parse_datetime(text: str | None) -> datetime | None:
    """RFC 3339 → aware UTC datetime; ``None`` for absent or '0001-01-01…' ('now' / 'follow on').

    A timestamp without an offset is taken as UTC (the spec requires RFC 3339, which has one)."""
    if text is None or text == "" or text.startswith("0001-01-01"):
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def modification_number(modification_dt: str | None) -> int:
    """``modificationDateTime`` → whole seconds since 2020-01-01Z (0 when absent or earlier)."""
    when = parse_datetime(modification_dt)
    if when is None:
        return 0
    return max(0, min(int((when - EPOCH).total_seconds()), 2**31 - 1))


def to_message_id(oadr_event_id: str, interval_id: int | str) -> str:
    """The hashflex event id of one interval of an OpenADR event."""
    base = oadr_event_id if _ID_SAFE.match(oadr_event_id) else f"oadr-{oadr_event_id}"
    return f"{base}:{interval_id}"


# --------------------------------------------------------------------------- targets


def event_targets(obj: Mapping[str, Any]) -> set[str]:
    """The target strings of a program or event: 3.1 lists strings; 3.0 lists valuesMaps."""
    out: set[str] = set()
    for target in obj.get("targets") or []:
        if isinstance(target, str):
            out.add(target)
        elif isinstance(target, Mapping):
            out.update(str(v) for v in target.get("values") or [])
    return out


def targets_match(obj: Mapping[str, Any], mine: Iterable[str]) -> bool:
    """An object without targets is for everyone; otherwise one of its targets must be ours."""
    targets = event_targets(obj)
    return not targets or bool(targets & set(mine))


# --------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class ResolvedInterval:
    """One event interval with absolute times (``end`` None: open-ended)."""

    interval_id: str
    index: int  # position in the event (0-based; loops continue counting)
    start: datetime
    end: datetime | None
    payloads: dict[str, list[Any]]


def resolve_intervals(event: Mapping[str, Any], now: datetime, *, random_offset: timedelta = timedelta(0),
                      horizon: timedelta = timedelta(days=2)) -> list[ResolvedInterval]:
    """Absolute start and end of every interval of ``event`` (see module docstring: timing)."""
    default = event.get("intervalPeriod") or {}
    raw_start = default.get("start")
    default_start = now if raw_start and raw_start.startswith("0001-01-01") else parse_datetime(raw_start)
    default_duration = default.get("duration")
    out: list[ResolvedInterval] = []
    previous_end: datetime | None = None
    for k, interval in enumerate(event.get("intervals") or []):
        period = interval.get("intervalPeriod") or {}
        start = parse_datetime(period.get("start"))
        if start is None:
            if k == 0:
                start = default_start if default_start is not None else now
            else:
                start = previous_end if previous_end is not None else default_start or now
            if k == 0:
                start = start + random_offset
        else:
            start = start + random_offset
        duration = parse_duration(period.get("duration", default_duration))
        end = None if duration is None else start + duration
        if end is not None and end >= OPEN_ENDED_AFTER:
            end = None
        payloads = {str(p.get("type")): list(p.get("values") or []) for p in interval.get("payloads") or []}
        out.append(ResolvedInterval(str(interval.get("id", k)), k, start, end, payloads))
        previous_end = end
        if end is None:
            break  # nothing can follow an open-ended interval
    return _apply_event_duration(out, event.get("duration"), now, horizon)


def _apply_event_duration(intervals: list[ResolvedInterval], duration_text: str | None, now: datetime,
                          horizon: timedelta) -> list[ResolvedInterval]:
    """``event.duration`` truncates (shorter than the intervals) or loops them (longer)."""
    if not intervals or not duration_text:
        return intervals
    span = parse_duration(duration_text)
    first = intervals[0].start
    event_end = None if span is None else first + span
    if intervals[-1].end is None:
        return [_clip(i, event_end) for i in intervals if event_end is None or i.start < event_end]
    cycle = intervals[-1].end - first
    if cycle <= timedelta(0):
        return intervals
    limit = now + horizon if event_end is None else min(event_end, now + horizon)
    out: list[ResolvedInterval] = []
    k, index = 0, 0
    while True:
        shift = cycle * k
        for interval in intervals:
            start = interval.start + shift
            if event_end is not None and start >= event_end or (k > 0 and start >= limit):
                return out
            end = interval.end + shift if interval.end is not None else None
            ident = interval.interval_id if k == 0 else f"{interval.interval_id}.{k}"
            out.append(_clip(ResolvedInterval(ident, index, start, end, interval.payloads), event_end))
            index += 1
        k += 1
        if event_end is not None and first + cycle * k >= event_end:
            return out
        if first + cycle * k >= limit:
            return out


def _clip(interval: ResolvedInterval, end: datetime | None) -> ResolvedInterval:
    if end is None or (interval.end is not None and interval.end <= end):
        return interval
    return ResolvedInterval(interval.interval_id, interval.index, interval.start, end, interval.payloads)


def is_cancelled(event: Mapping[str, Any]) -> bool:
    """User Guide 7.9: an event set to start 0001-01-01 with PT0S, or whose every interval is empty."""
    default = event.get("intervalPeriod") or {}
    if event.get("duration") is not None and parse_duration(event["duration"]) == timedelta(0):
        return True
    durations = []
    for interval in event.get("intervals") or []:
        period = interval.get("intervalPeriod") or {}
        durations.append(parse_duration(period.get("duration", default.get("duration"))))
    if not durations:
        return parse_duration(default.get("duration")) == timedelta(0) and "duration" in default
    return all(d == timedelta(0) for d in durations)


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class SignalPoint:
    """One value of a price or carbon signal over ``[interval_start, interval_end)``."""

    interval_start: datetime
    interval_end: datetime | None
    value: float


@dataclass(frozen=True)
class ExportLimit:
    interval_start: datetime
    interval_end: datetime | None
    export_limit_kw: float


@dataclass
class MappedEvent:
    """What one OpenADR event means for hashflex."""

    oadr_event_id: str
    dr_messages: list[DREventMessage] = field(default_factory=list)
    prices_usd_mwh: list[tuple[datetime, datetime | None, float]] = field(default_factory=list)
    carbon_kg_per_mwh: list[tuple[datetime, datetime | None, float]] = field(default_factory=list)
    export_limits: list[ExportLimit] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # reasons, e.g. "payload type FOO"
    intervals: list[ResolvedInterval] = field(default_factory=list)
    cancelled: bool = False


def _descriptors(event: Mapping[str, Any], program: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Payload descriptors by type: the event's, else the program's (event wins)."""
    out: dict[str, Mapping[str, Any]] = {}
    for source in ((program or {}).get("payloadDescriptors") or [], event.get("payloadDescriptors") or []):
        for descriptor in source:
            if descriptor.get("objectType", "EVENT_PAYLOAD_DESCRIPTOR") == "EVENT_PAYLOAD_DESCRIPTOR":
                out[str(descriptor.get("payloadType"))] = descriptor
    return out


def _number(values: Sequence[Any]) -> float | None:
    if len(values) != 1 or isinstance(values[0], bool) or not isinstance(values[0], (int, float)):
        return None
    value = float(values[0])
    return value if math.isfinite(value) else None


def _subintervals(interval: ResolvedInterval, values: Sequence[Any]) -> list[tuple[datetime, datetime | None, Any]]:
    """Multi-valued payloads split the interval evenly (User Guide 7.3)."""
    if len(values) <= 1 or interval.end is None:
        return [(interval.start, interval.end, v) for v in values[:1]]
    step = (interval.end - interval.start) / len(values)
    return [(interval.start + step * k, interval.start + step * (k + 1), v) for k, v in enumerate(values)]


def map_event(event: Mapping[str, Any], now: datetime, *, issuer: str, program: Mapping[str, Any] | None = None,
              dr_program: DRProgram | str = DRProgram.UTILITY, random_offset: timedelta = timedelta(0),
              horizon: timedelta = timedelta(days=2), modification: int | None = None,
              higher_priority: Sequence[tuple[datetime, datetime | None]] = ()) -> MappedEvent:
    """Map one OpenADR event (a JSON object as the VTN returns it) to hashflex inputs.

    ``higher_priority``: windows of conflicting limit intervals of higher-priority events (the VEN
    computes them across events); a limit interval wholly inside one is dropped."""
    event_id = str(event.get("id"))
    result = MappedEvent(event_id)
    number = modification_number(event.get("modificationDateTime")) if modification is None else modification
    if is_cancelled(event):
        result.cancelled = True
        return result
    descriptors = _descriptors(event, program)
    result.intervals = resolve_intervals(event, now, random_offset=random_offset, horizon=horizon)
    for interval in result.intervals:
        if interval.end is not None and interval.end <= interval.start:
            continue  # an empty interval asks nothing
        for kind, values in interval.payloads.items():
            descriptor = descriptors.get(kind, {})
            if kind == "IMPORT_CAPACITY_LIMIT":
                kw = _power_kw(values, descriptor, kind, result)
                if kw is not None and not _covered(interval, higher_priority):
                    result.dr_messages.append(_message(event_id, interval, number, dr_program, issuer,
                                                       import_limit_kw=kw))
            elif kind == "SIMPLE":
                level = values[0] if len(values) == 1 else None
                if isinstance(level, bool) or level not in (0, 1, 2, 3):
                    result.unsupported.append(f"SIMPLE value {values!r}: not one of 0, 1, 2, 3")
                elif not _covered(interval, higher_priority):
                    result.dr_messages.append(_message(event_id, interval, number, dr_program, issuer, level=level))
            elif kind == "EXPORT_CAPACITY_LIMIT":
                kw = _power_kw(values, descriptor, kind, result)
                if kw is not None:
                    result.export_limits.append(ExportLimit(interval.start, interval.end, kw))
            elif kind == "PRICE":
                factor = _price_factor(descriptor, result)
                if factor is not None:
                    result.prices_usd_mwh.extend(_signal(interval, values, factor, kind, result))
            elif kind == "GHG":
                # Defined in g/kWh, which is numerically kg/MWh.
                result.carbon_kg_per_mwh.extend(_signal(interval, values, 1.0, kind, result))
            else:
                result.unsupported.append(f"payload type {kind}")
    return result


def _message(event_id: str, interval: ResolvedInterval, number: int, program: DRProgram | str, issuer: str,
             **request: Any) -> DREventMessage:
    return DREventMessage(event_id=to_message_id(event_id, interval.interval_id), modification_number=number,
                          program=program, start=interval.start, end=interval.end, issuer=issuer, **request)


def _covered(interval: ResolvedInterval, windows: Sequence[tuple[datetime, datetime | None]]) -> bool:
    for start, end in windows:
        if start <= interval.start and (end is None or (interval.end is not None and interval.end <= end)):
            return True
    return False


def _power_kw(values: Sequence[Any], descriptor: Mapping[str, Any], kind: str, result: MappedEvent) -> float | None:
    value = _number(values)
    units = str(descriptor.get("units") or "KW").upper()
    if value is None or value < 0:
        result.unsupported.append(f"{kind} value {values!r}: not one non-negative number")
        return None
    if units not in _POWER_KW:
        result.unsupported.append(f"{kind} units {units!r}: expected KW, W or MW")
        return None
    return value * _POWER_KW[units]


def _price_factor(descriptor: Mapping[str, Any], result: MappedEvent) -> float | None:
    currency = str(descriptor.get("currency") or "USD").upper()
    units = str(descriptor.get("units") or "KWH").upper()
    if currency != "USD":
        result.unsupported.append(f"PRICE currency {currency!r}: only USD is converted")
        return None
    if units not in _PRICE_PER_MWH:
        result.unsupported.append(f"PRICE units {units!r}: expected KWH or MWH")
        return None
    return _PRICE_PER_MWH[units]


def _signal(interval: ResolvedInterval, values: Sequence[Any], factor: float, kind: str,
            result: MappedEvent) -> list[tuple[datetime, datetime | None, float]]:
    out = []
    for start, end, value in _subintervals(interval, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            result.unsupported.append(f"{kind} value {value!r}: not a number")
            continue
        out.append((start, end, float(value) * factor))
    return out


def limit_windows(event: Mapping[str, Any], now: datetime, random_offset: timedelta = timedelta(0),
                  horizon: timedelta = timedelta(days=2)) -> list[tuple[datetime, datetime | None]]:
    """Windows of the event's limit-type intervals (for priority conflicts between events)."""
    if is_cancelled(event):
        return []
    return [(i.start, i.end) for i in resolve_intervals(event, now, random_offset=random_offset, horizon=horizon)
            if any(k in i.payloads for k in LIMIT_TYPES)]
