"""OpenADR 3 objects → hashflex inputs. Pure: no network, no clock (``now`` is passed in).

Decisions (the README's "How a utility connects over OpenADR 3" summarises them). Clauses of the
specification are quoted: UG = User Guide 3.1.1, DEF = Definition 3.1.1, YAML = openadr3-*.yaml.
--------------------------------------------------------------------------------------------------
- **Validation first.** Every event is validated (:mod:`hashflex.openadr.models`, written from the
  YAML schemas) before it is mapped; one that does not validate is rejected with the reason (a
  ``targets`` string instead of a list, an interval id that is not an int32, a malformed duration).
- **Isolation.** :func:`map_event` never raises: an event that cannot be mapped comes back with
  ``rejected`` set to the reason; an interval that cannot be mapped is left out with its reason in
  ``rejected_intervals`` and the others are mapped.
- **One DREventMessage per event interval.** An IMPORT_CAPACITY_LIMIT or SIMPLE event with N
  intervals becomes N messages with ``event_id = f"{base}:{interval_id}"`` where ``base`` is the
  OpenADR id (``#`` is not allowed in a hashflex Identifier, which must stay a safe MQTT topic level;
  OpenADR object ids never contain ``:``). Identifiers are at most 128 characters and an objectID
  may be 128 already, so an id longer than ``MAX_BASE_CHARS`` (96) is shortened to its first 79
  characters + ``-h`` + 15 hex digits of its SHA-256 (:func:`message_base`); the suffixes the VEN
  adds (``:<int32>``, loop ``.<k>``, revival ``.r<n>``) then still fit.
- **Timing.** YAML intervalPeriod: "A start of "0001-01-01" or "0001-01-01T00:00:00" may indicate
  'now'." UG 7.3: "if at the event level (e.g event.intervalPeriod) indicates a 'do it now' event if
  the duration extends into the future"; "if the first interval ... identical to the
  event.intervalPeriod.start if present, or 'do it now' if event.intervalPeriod is not present";
  "for subsequent intervals, the start time of the interval is immediately after the previous
  interval". So a ``0001-01-01`` start is *now* only if ``0001-01-01 + duration`` is after ``now``
  (in practice: an open-ended duration); otherwise the interval lies in the past and asks nothing.
- **Durations.** YAML duration: ``default: PT0S``, so an absent duration and an explicit ``PT0S``
  are the same. 3.0.1 YAML intervalPeriod: "A duration of default PT0S indicates instantaneous or
  infinity, depending on payloadType." Limits and levels (IMPORT_CAPACITY_LIMIT,
  EXPORT_CAPACITY_LIMIT, SIMPLE) are states: PT0S means *in force until further notice*
  (``end=None``). Prices and GHG are instantaneous: a PT0S interval of them asks nothing. UG 7.3:
  "“P9999Y” represents infinity": any duration of ``OPEN_ENDED_YEARS`` (1,000) years or more, or
  whose end would pass year 9000 (or overflow), is open-ended. Every duration the YAML pattern
  admits parses (``P8000Y``, ``PT99999999999999999999H``); years count 365 days and months 30 (UG:
  "avoid encoding duration in terms of months").
- **Timestamps.** RFC 3339 (DEF: "datetime in RFC 3339 format") requires an offset. A binding time
  without one (an interval or event ``start``) rejects the event with that reason: read as UTC it
  could move a curtailment by hours without anyone noticing. A ``modificationDateTime`` without an
  offset only orders versions: it is read as UTC and counted as a warning. A leap second
  (``23:59:60``) is read as the first instant of the next minute.
- **randomizeStart** (UG 7.3): "shift the start of the first interval by some amount ... if
  subsequent intervals use the 'follow immediately' convention ... then all starts are shifted by the
  same amount"; "if an interval includes an intervalPeriod with an absolute start time, this time is
  incremented or decremented by the same amount as the first interval unless it too included the
  randomizeStart property, in which case it (and potentially any later intervals) have a start which
  is randomized by this updated value." The caller draws the offsets (``random_offset`` for the
  event, ``interval_offsets`` by interval position) once per event and keeps them
  (:func:`randomize_spreads` lists what to draw), so re-reads do not move them.
- **event.duration** (UG 7.3) truncates the intervals, or, when longer, loops them ("event.duration
  = “P9999Y” indicates the set of intervals repeat indefinitely"); loops are unrolled up to
  ``horizon`` and repeated intervals get ids ``"<id>.<k>"``. PT0S (the default) changes nothing.
- **Cancellations** (UG 7.9): "An event’s start and duration may be set to minimal values
  (“0001-01-01” and “PT0S” respectively) to make its temporal window be of no duration and at some
  theoretical time in the past. Another approach is for a BL client to simply delete an event." Only
  that combination cancels here (a PT0S duration alone is "until further notice" for a limit); the
  VEN also cancels a deleted event and one retargeted away from this site.
- **Priorities**: a lower number wins. A limit interval wholly covered by a conflicting (limit or
  SIMPLE) interval of a strictly higher-priority event is dropped; partial overlaps are kept, and the
  DR book then takes the lower of the two limits over the overlap (conservative). No priority counts
  as the lowest.
- **Modifications**: ``modificationDateTime`` → ``modification_number`` = whole seconds since
  2020-01-01Z (monotone, fits 31 bits until 2088). The VEN bumps the number when content changes
  within the same second.
- **Units**: IMPORT/EXPORT_CAPACITY_LIMIT in KW (default), W or MW; PRICE in currency per KWH
  (default) or MWH, USD only, → USD/MWh; GHG is g/kWh by definition, numerically kg/MWh.
  Multi-valued PRICE/GHG payloads split their interval into equal sub-intervals.
- **Unknown payload types** and unusable descriptors are returned in ``MappedEvent.unsupported``
  (the VEN logs and counts them); never fatal.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from hashflex.messages import DREventMessage, DRProgram
from hashflex.openadr.models import ObjectRejected, validate_event

__all__ = [
    "ExportLimit",
    "MappedEvent",
    "NaiveTimestamp",
    "ResolvedInterval",
    "SignalPoint",
    "event_targets",
    "is_cancelled",
    "limit_windows",
    "map_event",
    "message_base",
    "modification_number",
    "parse_datetime",
    "parse_duration",
    "randomize_spreads",
    "resolve_intervals",
    "targets_match",
    "to_message_id",
]

UTC = timezone.utc
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
BEGINNING = datetime(1, 1, 1, tzinfo=UTC)  # '0001-01-01': the beginning of time
OPEN_ENDED_AFTER = datetime(9000, 1, 1, tzinfo=UTC)  # P9999Y from any real start lands past this
OPEN_ENDED_YEARS = 1_000  # a duration this long (or longer) is 'infinity'
_OPEN_ENDED_SECONDS = OPEN_ENDED_YEARS * 365 * 86_400
LIMIT_TYPES = ("IMPORT_CAPACITY_LIMIT", "SIMPLE")  # payloads that become DR events (and conflict)
STATE_TYPES = frozenset({"IMPORT_CAPACITY_LIMIT", "EXPORT_CAPACITY_LIMIT", "SIMPLE"})  # PT0S: until further notice
MAX_BASE_CHARS = 96
_DURATION_RE = re.compile(
    r"^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_POWER_KW = {"KW": 1.0, "W": 0.001, "MW": 1000.0}
_PRICE_PER_MWH = {"KWH": 1000.0, "MWH": 1.0, "WH": 1_000_000.0}
_ID_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_LEAP = re.compile(r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}):60(\.\d+)?(.*)$")


class NaiveTimestamp(ValueError):
    """A timestamp without a UTC offset where one is required (RFC 3339)."""


# --------------------------------------------------------------------------- time


def parse_duration(text: str | None) -> timedelta | None:
    """ISO 8601 duration (the YAML's pattern) → timedelta; ``None`` for 'infinity'.

    Missing or empty → PT0S (the YAML default). Any duration of ``OPEN_ENDED_YEARS`` or more → None
    (negative ones are clamped to minus that). Raises ``ValueError`` for text the pattern refuses."""
    if text is None or text == "":
        return timedelta(0)
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"duration {text!r}: not ISO 8601")
    sign, years, months, days, unit, hours, minutes, seconds = match.groups()
    whole_seconds = ((int(years or 0) * 365 + int(months or 0) * 30
                      + int(days or 0) * (7 if unit == "W" else 1)) * 86_400
                     + int(hours or 0) * 3600 + int(minutes or 0) * 60)
    fraction = float(seconds or 0)
    if whole_seconds + fraction >= _OPEN_ENDED_SECONDS:  # python ints do not overflow; timedelta would
        return -timedelta(seconds=_OPEN_ENDED_SECONDS) if sign == "-" else None
    total = timedelta(seconds=whole_seconds) + timedelta(seconds=fraction)
    return -total if sign == "-" else total


def parse_datetime(text: str | None, *, allow_naive: bool = False) -> datetime | None:
    """RFC 3339 → aware UTC datetime; ``None`` for absent or '0001-01-01…' ('now' / 'follow on').

    A leap second ``…:60`` is the first instant of the next minute. Without an offset: raises
    :class:`NaiveTimestamp` unless ``allow_naive`` (then read as UTC). Raises ``ValueError`` for text
    that is not a date-time."""
    if text is None or text == "" or text.startswith("0001-01-01"):
        return None
    if not isinstance(text, str):
        raise ValueError(f"date-time {text!r}: a string was expected")
    leap = _LEAP.match(text)
    body = f"{leap.group(1)}:59{leap.group(3)}" if leap else text
    if body.endswith(("Z", "z")):
        body = body[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(body)
    except ValueError:
        raise ValueError(f"date-time {text!r}: not RFC 3339") from None
    if value.tzinfo is None:
        if not allow_naive:
            raise NaiveTimestamp(f"date-time {text!r}: no UTC offset (RFC 3339 requires one)")
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 and the like
        return BEGINNING
    if leap:
        value = _shift(value, timedelta(seconds=1)) or OPEN_ENDED_AFTER
    return value


def _shift(moment: datetime, delta: timedelta) -> datetime | None:
    """``moment + delta``; None (open-ended) past year 9000 or on overflow; clamped at 0001-01-01."""
    try:
        value = moment + delta
    except OverflowError:
        return None if delta > timedelta(0) else BEGINNING
    return None if value >= OPEN_ENDED_AFTER else value


def modification_number(modification_dt: str | None) -> int:
    """``modificationDateTime`` → whole seconds since 2020-01-01Z (0 when absent, earlier or unreadable).

    A value without an offset is read as UTC (it only orders versions of one event)."""
    try:
        when = parse_datetime(modification_dt, allow_naive=True)
    except ValueError:
        return 0
    if when is None:
        return 0
    return max(0, min(int((when - EPOCH).total_seconds()), 2**31 - 1))


def message_base(oadr_event_id: str) -> str:
    """The hashflex id prefix of an OpenADR event: the id itself when it is a safe Identifier of at
    most ``MAX_BASE_CHARS``; else ``oadr-`` + id (ids starting with ``_``/``-``); an id still longer
    is shortened to 79 characters + ``-h`` + 15 hex digits of its SHA-256 (stable, collision-safe)."""
    base = oadr_event_id if _ID_SAFE.match(oadr_event_id) else f"oadr-{oadr_event_id}"
    if len(base) <= MAX_BASE_CHARS and _ID_SAFE.match(base):
        return base
    digest = hashlib.sha256(oadr_event_id.encode()).hexdigest()[:15]
    head = re.sub(r"[^A-Za-z0-9_-]", "-", base)[:MAX_BASE_CHARS - 17]
    return f"{head}-h{digest}"


def to_message_id(oadr_event_id: str, interval_id: int | str) -> str:
    """The hashflex event id of one interval of an OpenADR event (≤ 128 characters)."""
    return f"{message_base(oadr_event_id)}:{interval_id}"


# --------------------------------------------------------------------------- targets


def event_targets(obj: Mapping[str, Any]) -> set[str]:
    """The target strings of a program or event: 3.1 lists strings; 3.0 lists valuesMaps.

    Raises ``ValueError`` when ``targets`` is not a list (a string would grant its characters)."""
    targets = obj.get("targets")
    if targets is None:
        return set()
    if not isinstance(targets, list):
        raise ValueError(f"targets: a list was expected, got {type(targets).__name__}")
    out: set[str] = set()
    for target in targets:
        if isinstance(target, str):
            out.add(target)
        elif isinstance(target, Mapping) and isinstance(target.get("values"), list):
            out.update(str(v) for v in target["values"])
        else:
            raise ValueError(f"targets: {target!r} is neither a string nor a valuesMap")
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


def randomize_spreads(event: Mapping[str, Any]) -> dict[int, timedelta]:
    """The randomizeStart spreads an event asks for: key -1 for ``event.intervalPeriod``, k for
    interval k's own ``intervalPeriod`` (absolute values; unreadable or zero ones left out)."""
    out: dict[int, timedelta] = {}
    periods = [(-1, event.get("intervalPeriod"))]
    periods += [(k, i.get("intervalPeriod")) for k, i in enumerate(event.get("intervals") or [])
                if isinstance(i, Mapping)]
    for key, period in periods:
        if not isinstance(period, Mapping) or not period.get("randomizeStart"):
            continue
        try:
            spread = parse_duration(period["randomizeStart"])
        except ValueError:
            continue
        spread = timedelta(seconds=_OPEN_ENDED_SECONDS) if spread is None else abs(spread)
        if spread:
            out[key] = min(spread, timedelta(days=1))  # a day of jitter is already absurd
    return out


def _payload_map(interval: Mapping[str, Any]) -> dict[str, list[Any]]:
    return {str(p.get("type")): list(p.get("values") or []) for p in interval.get("payloads") or []}


def resolve_intervals(event: Mapping[str, Any], now: datetime, *, random_offset: timedelta = timedelta(0),
                      interval_offsets: Mapping[int, timedelta] | None = None,
                      horizon: timedelta = timedelta(days=2),
                      errors: list[str] | None = None) -> list[ResolvedInterval]:
    """Absolute start and end of every interval of ``event`` (module docstring: timing, durations,
    randomizeStart). An interval whose times cannot be read is left out with its reason appended to
    ``errors`` (when given; else ``ValueError`` is raised), and so are intervals that follow it."""
    default = event.get("intervalPeriod") or {}
    offsets = dict(interval_offsets or {})
    out: list[ResolvedInterval] = []
    previous_end: datetime | None = None  # unshifted
    broken: str | None = None
    offset = random_offset
    event_start = parse_datetime(default.get("start"))  # NaiveTimestamp/ValueError: the caller rejects the event
    default_duration = default.get("duration")
    for k, interval in enumerate(event.get("intervals") or []):
        ident = str(interval.get("id", k))
        offset = offsets.get(k, offset)
        try:
            if broken is not None:
                raise ValueError(f"follows interval {broken}, which could not be read")
            period = interval.get("intervalPeriod") or {}
            own = parse_datetime(period.get("start"))
            if own is not None:
                start = own
            elif k == 0:
                start = event_start if event_start is not None else BEGINNING
            elif previous_end is None:
                break  # nothing can follow an open-ended interval
            else:
                start = previous_end
            duration = parse_duration(period.get("duration", default_duration))
            payloads = _payload_map(interval)
            if duration == timedelta(0) and STATE_TYPES & payloads.keys():
                duration = None  # PT0S: "instantaneous or infinity, depending on payloadType"
            end = None if duration is None else _shift(start, duration)
            previous_end = end
            if start == BEGINNING:
                if end is not None and end <= now:
                    continue  # '0001-01-01' + a duration that ended long ago: asks nothing
                start = now  # 'do it now': the duration extends into the future (end unchanged)
            shifted_start = _shift(start, offset) or start
            shifted_end = None if end is None else _shift(end, offset)
            out.append(ResolvedInterval(ident, k, shifted_start, shifted_end, payloads))
        except ValueError as exc:
            broken = ident
            if errors is None:
                raise
            errors.append(f"interval {ident}: {exc}")
    return _apply_event_duration(out, event.get("duration"), now, horizon)


def _apply_event_duration(intervals: list[ResolvedInterval], duration_text: str | None, now: datetime,
                          horizon: timedelta) -> list[ResolvedInterval]:
    """``event.duration`` truncates (shorter than the intervals) or loops them (longer); PT0S (the
    default) and negative durations change nothing."""
    if not intervals or not duration_text:
        return intervals
    span = parse_duration(duration_text)
    if span is not None and span <= timedelta(0):
        return intervals
    first = intervals[0].start
    event_end = None if span is None else _shift(first, span)
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


def _minimal(period: Mapping[str, Any] | None, default_start: Any = None, default_duration: Any = None) -> bool:
    """Is this intervalPeriod the UG 7.9 cancellation pair: start 0001-01-01 and duration PT0S?"""
    period = period or {}
    start = period.get("start", default_start)
    try:
        duration = parse_duration(period.get("duration", default_duration))
    except ValueError:
        return False
    return isinstance(start, str) and start.startswith("0001-01-01") and duration == timedelta(0)


def is_cancelled(event: Mapping[str, Any]) -> bool:
    """UG 7.9: the event's window is start 0001-01-01 *and* PT0S (explicit or by default) — at the
    event level with no interval overriding it, or on every interval. A PT0S duration alone is not
    a cancellation (for a limit it means until further notice)."""
    default = event.get("intervalPeriod") or {}
    intervals = [i for i in event.get("intervals") or [] if isinstance(i, Mapping)]
    start, duration = default.get("start"), default.get("duration")
    if not intervals:
        return _minimal(default)
    return all(_minimal(i.get("intervalPeriod"), start, duration) for i in intervals)


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
    rejected: str | None = None  # the whole event could not be mapped: why (nothing else is set)
    rejected_intervals: list[str] = field(default_factory=list)  # "interval 3: why" (the rest are mapped)
    warnings: list[str] = field(default_factory=list)  # accepted with a doubt, e.g. a naive modificationDateTime


def _descriptors(event: Mapping[str, Any], program: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Payload descriptors by type: the event's, else the program's (event wins)."""
    out: dict[str, Mapping[str, Any]] = {}
    for source in ((program or {}).get("payloadDescriptors") or [], event.get("payloadDescriptors") or []):
        for descriptor in source:
            if isinstance(descriptor, Mapping) and descriptor.get("objectType", "EVENT_PAYLOAD_DESCRIPTOR") == \
                    "EVENT_PAYLOAD_DESCRIPTOR":
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
              interval_offsets: Mapping[int, timedelta] | None = None,
              horizon: timedelta = timedelta(days=2), modification: int | None = None,
              higher_priority: Sequence[tuple[datetime, datetime | None]] = ()) -> MappedEvent:
    """Map one OpenADR event (a JSON object as the VTN returns it) to hashflex inputs. Never raises.

    The event is validated first (``models.Event``); an invalid one, or one whose event-level times
    cannot be read, comes back with ``rejected`` = the reason. Each interval is then mapped on its
    own: a failing one is listed in ``rejected_intervals`` and the others proceed.
    ``higher_priority``: windows of conflicting limit intervals of higher-priority events (the VEN
    computes them across events); a limit interval wholly inside one is dropped."""
    event_id = str(event.get("id")) if isinstance(event, Mapping) else "?"
    result = MappedEvent(event_id)
    try:
        validate_event(event)
        modified = event.get("modificationDateTime")
        try:
            parse_datetime(modified)
        except ValueError as exc:
            result.warnings.append(f"modificationDateTime: {exc}; read as UTC")
        number = modification_number(modified) if modification is None else modification
        if is_cancelled(event):
            result.cancelled = True
            return result
        descriptors = _descriptors(event, program)
        result.intervals = resolve_intervals(event, now, random_offset=random_offset,
                                             interval_offsets=interval_offsets, horizon=horizon,
                                             errors=result.rejected_intervals)
    except ObjectRejected as exc:
        result.rejected = f"invalid event: {exc.reason}"
        return result
    except (ValueError, OverflowError, TypeError) as exc:
        result.rejected = f"{type(exc).__name__}: {exc}"
        return result
    for interval in result.intervals:
        try:
            _map_interval(result, interval, descriptors, event_id, number, dr_program, issuer, higher_priority)
        except Exception as exc:  # noqa: BLE001 - one interval never stops the others
            result.rejected_intervals.append(f"interval {interval.interval_id}: {type(exc).__name__}: {exc}")
    return result


def _map_interval(result: MappedEvent, interval: ResolvedInterval, descriptors: Mapping[str, Mapping[str, Any]],
                  event_id: str, number: int, dr_program: DRProgram | str, issuer: str,
                  higher_priority: Sequence[tuple[datetime, datetime | None]]) -> None:
    if interval.end is not None and interval.end <= interval.start:
        return  # an empty interval asks nothing (a PT0S price is instantaneous)
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
                  horizon: timedelta = timedelta(days=2), interval_offsets: Mapping[int, timedelta] | None = None
                  ) -> list[tuple[datetime, datetime | None]]:
    """Windows of the event's limit-type intervals (for priority conflicts between events); none
    for an event that is cancelled or cannot be read."""
    try:
        if is_cancelled(event):
            return []
        intervals = resolve_intervals(event, now, random_offset=random_offset, interval_offsets=interval_offsets,
                                      horizon=horizon, errors=[])
    except (ValueError, OverflowError, TypeError):
        return []
    return [(i.start, i.end) for i in intervals if any(k in i.payloads for k in LIMIT_TYPES)]
