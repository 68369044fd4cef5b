"""OpenADR 3 time: durations, RFC 3339 timestamps, interval resolution, loops, cancellation.
Pure: no network, no clock (``now`` is passed in). Split from :mod:`hashflex.openadr.mapping`
(which re-exports every name here); clauses quoted as there: UG = User Guide 3.1.1,
DEF = Definition 3.1.1, YAML = openadr3-*.yaml.
--------------------------------------------------------------------------------------------------
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
- **Modifications**: ``modificationDateTime`` → ``modification_number`` = whole seconds since
  2020-01-01Z (monotone, fits 31 bits until 2088). The VEN bumps the number when content changes
  within the same second.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "BEGINNING",
    "EPOCH",
    "NaiveTimestamp",
    "OPEN_ENDED_AFTER",
    "OPEN_ENDED_YEARS",
    "ResolvedInterval",
    "STATE_TYPES",
    "is_cancelled",
    "modification_number",
    "parse_datetime",
    "parse_duration",
    "randomize_spreads",
    "resolve_intervals",
]

UTC = timezone.utc
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
BEGINNING = datetime(1, 1, 1, tzinfo=UTC)  # '0001-01-01': the beginning of time
OPEN_ENDED_AFTER = datetime(9000, 1, 1, tzinfo=UTC)  # P9999Y from any real start lands past this
OPEN_ENDED_YEARS = 1_000  # a duration this long (or longer) is 'infinity'
_OPEN_ENDED_SECONDS = OPEN_ENDED_YEARS * 365 * 86_400
STATE_TYPES = frozenset({"IMPORT_CAPACITY_LIMIT", "EXPORT_CAPACITY_LIMIT", "SIMPLE"})  # PT0S: until further notice
_DURATION_RE = re.compile(
    r"^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_LEAP = re.compile(r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}):60(\.\d+)?(.*)$")


class NaiveTimestamp(ValueError):
    """A timestamp without a UTC offset where one is required (RFC 3339)."""


# --------------------------------------------------------------------------- time


def parse_duration(text: str | None) -> timedelta | None:
    """ISO 8601 duration (the YAML's pattern) → timedelta; ``None`` for 'infinity'.

    Missing or empty → PT0S (the YAML default). Any duration of ``OPEN_ENDED_YEARS`` or more → None
    (negative ones are clamped to minus that). Raises ``ValueError`` for text the pattern refuses.

    Parameters
    ----------
    text : str or None
        An ISO 8601 duration such as ``PT15M`` or ``P9999Y``.

    Returns
    -------
    timedelta or None
        None: open-ended ('infinity', UG 7.3).

    Raises
    ------
    ValueError
        The text does not match the YAML's duration pattern.
    """
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
    that is not a date-time.

    Parameters
    ----------
    text : str or None
        An RFC 3339 date-time (DEF: "datetime in RFC 3339 format").
    allow_naive : bool
        Read a value without an offset as UTC instead of raising.

    Returns
    -------
    datetime or None
        Aware, UTC.

    Raises
    ------
    NaiveTimestamp
        No UTC offset and not ``allow_naive``.
    ValueError
        Not a date-time.
    """
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

    A value without an offset is read as UTC (it only orders versions of one event).

    Parameters
    ----------
    modification_dt : str or None
        The object's ``modificationDateTime``.

    Returns
    -------
    int
        0 .. 2**31 - 1.
    """
    try:
        when = parse_datetime(modification_dt, allow_naive=True)
    except ValueError:
        return 0
    if when is None:
        return 0
    return max(0, min(int((when - EPOCH).total_seconds()), 2**31 - 1))


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
                      errors: list[str] | None = None,
                      state_types: frozenset[str] = STATE_TYPES) -> list[ResolvedInterval]:
    """Absolute start and end of every interval of ``event`` (module docstring: timing, durations,
    randomizeStart). An interval whose times cannot be read is left out with its reason appended to
    ``errors`` (when given; else ``ValueError`` is raised), and so are intervals that follow it.

    Parameters
    ----------
    event : Mapping
        The event (validated or not) as the VTN returns it.
    now : datetime
        Current time, UTC: what ``0001-01-01`` means (UG 7.3 'do it now').
    random_offset : timedelta
        The event's randomizeStart draw; ``interval_offsets`` the draws of intervals with their own.
    horizon : timedelta
        How far a looping event (event.duration longer than its intervals) is unrolled.
    errors : list of str, optional
        Collects ``"interval <id>: why"``; without it the first unreadable interval raises.
    state_types : frozenset of str
        Payload types for which PT0S means until further notice (the default: limits and SIMPLE).

    Returns
    -------
    list of ResolvedInterval
        In event order; ``end`` None for open-ended intervals.

    Raises
    ------
    ValueError
        The event-level start cannot be read (``NaiveTimestamp`` without an offset), or an interval's
        times and ``errors`` is None.
    """
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
            if duration == timedelta(0) and state_types & payloads.keys():
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
    a cancellation (for a limit it means until further notice).

    Parameters
    ----------
    event : Mapping
        The event as the VTN returns it.

    Returns
    -------
    bool
    """
    default = event.get("intervalPeriod") or {}
    intervals = [i for i in event.get("intervals") or [] if isinstance(i, Mapping)]
    start, duration = default.get("start"), default.get("duration")
    if not intervals:
        return _minimal(default)
    return all(_minimal(i.get("intervalPeriod"), start, duration) for i in intervals)
