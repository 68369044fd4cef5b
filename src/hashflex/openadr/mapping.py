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
- **Priorities**: a lower number wins. A limit interval wholly covered by a conflicting (limit or
  SIMPLE) interval of a strictly higher-priority event is dropped; partial overlaps are kept, and the
  DR book then takes the lower of the two limits over the overlap (conservative). No priority counts
  as the lowest.
- **Units**: IMPORT/EXPORT_CAPACITY_LIMIT in KW (default), W or MW; PRICE in currency per KWH
  (default) or MWH, USD only, → USD/MWh; GHG is g/kWh by definition, numerically kg/MWh.
  Multi-valued PRICE/GHG payloads split their interval into equal sub-intervals.
- **Unknown payload types** and unusable descriptors are returned in ``MappedEvent.unsupported``
  (the VEN logs and counts them); never fatal.
- **Time** (timing, durations, timestamps, randomizeStart, event.duration, cancellations,
  modification numbers): :mod:`hashflex.openadr.timing`, whose names are re-exported here.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hashflex.messages import DREventMessage, DRProgram
from hashflex.openadr.models import ObjectRejected, validate_event

# Re-exported: these lived here before the split into timing and mapping (import paths kept).
from hashflex.openadr.timing import (  # noqa: F401
    BEGINNING,
    EPOCH,
    OPEN_ENDED_AFTER,
    OPEN_ENDED_YEARS,
    STATE_TYPES,
    UTC,
    NaiveTimestamp,
    ResolvedInterval,
    is_cancelled,
    modification_number,
    parse_datetime,
    parse_duration,
    randomize_spreads,
    resolve_intervals,
)

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

LIMIT_TYPES = ("IMPORT_CAPACITY_LIMIT", "SIMPLE")  # payloads that become DR events (and conflict)
MAX_BASE_CHARS = 96
POWER_KW = {"KW": 1.0, "W": 0.001, "MW": 1000.0}
_PRICE_PER_MWH = {"KWH": 1000.0, "MWH": 1.0, "WH": 1_000_000.0}
_ID_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def message_base(oadr_event_id: str) -> str:
    """The hashflex id prefix of an OpenADR event: the id itself when it is a safe Identifier of at
    most ``MAX_BASE_CHARS``; else ``oadr-`` + id (ids starting with ``_``/``-``); an id still longer
    is shortened to 79 characters + ``-h`` + 15 hex digits of its SHA-256 (stable, collision-safe).

    Parameters
    ----------
    oadr_event_id : str
        The OpenADR event id (objectID, up to 128 characters).

    Returns
    -------
    str
        At most ``MAX_BASE_CHARS`` characters, a hashflex Identifier.
    """
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

    Raises ``ValueError`` when ``targets`` is not a list (a string would grant its characters).

    Parameters
    ----------
    obj : Mapping
        A program, event or ven object.

    Returns
    -------
    set of str

    Raises
    ------
    ValueError
        ``targets`` is not a list, or holds something that is neither a string nor a valuesMap.
    """
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


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class SignalPoint:
    """One value of a price or carbon signal over ``[interval_start, interval_end)``."""

    interval_start: datetime
    interval_end: datetime | None
    value: float


@dataclass(frozen=True)
class ExportLimit:
    """An export limit over ``[interval_start, interval_end)`` (EXPORT_CAPACITY_LIMIT), kW; end None:
    until further notice."""
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


def payload_descriptors(event: Mapping[str, Any], program: Mapping[str, Any] | None
                        ) -> dict[str, Mapping[str, Any]]:
    """Payload descriptors by type: the event's, else the program's (event wins).

    Parameters
    ----------
    event, program : Mapping
        The event and its program as the VTN returns them (``payloadDescriptors`` lists).

    Returns
    -------
    dict
        ``payloadType`` -> EVENT_PAYLOAD_DESCRIPTOR (report descriptors are left out).
    """
    out: dict[str, Mapping[str, Any]] = {}
    for source in ((program or {}).get("payloadDescriptors") or [], event.get("payloadDescriptors") or []):
        for descriptor in source:
            if isinstance(descriptor, Mapping) and descriptor.get("objectType", "EVENT_PAYLOAD_DESCRIPTOR") == \
                    "EVENT_PAYLOAD_DESCRIPTOR":
                out[str(descriptor.get("payloadType"))] = descriptor
    return out


def single_number(values: Sequence[Any]) -> float | None:
    """The one finite number of a payload's ``values`` (exactly one, not a bool), else None."""
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
    computes them across events); a limit interval wholly inside one is dropped.

    Parameters
    ----------
    event : Mapping
        The event as the VTN returns it.
    now : datetime
        Current time, UTC.
    issuer : str
        The DR messages' issuer (must be in ``profile.dr.issuers``).
    program : Mapping, optional
        The event's program (its payloadDescriptors apply where the event has none).
    dr_program : DRProgram or str
        The DR messages' program.
    random_offset, interval_offsets : timedelta, mapping
        randomizeStart draws (UG 7.3), kept by the VEN per event.
    horizon : timedelta
        How far looping events are unrolled.
    modification : int, optional
        The messages' modification number; default from ``modificationDateTime``.
    higher_priority : sequence of (datetime, datetime or None)
        Windows of conflicting limit intervals of higher-priority events.

    Returns
    -------
    MappedEvent
        ``rejected`` set (and nothing else) when the whole event is refused.
    """
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
        descriptors = payload_descriptors(event, program)
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
    value = single_number(values)
    units = str(descriptor.get("units") or "KW").upper()
    if value is None or value < 0:
        result.unsupported.append(f"{kind} value {values!r}: not one non-negative number")
        return None
    if units not in POWER_KW:
        result.unsupported.append(f"{kind} units {units!r}: expected KW, W or MW")
        return None
    return value * POWER_KW[units]


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
    for an event that is cancelled or cannot be read.

    Parameters
    ----------
    event : Mapping
        The event as the VTN returns it.
    now : datetime
        Current time, UTC.
    random_offset, horizon, interval_offsets
        As for :func:`resolve_intervals`.

    Returns
    -------
    list of (datetime, datetime or None)
        ``(start, end)`` of each IMPORT_CAPACITY_LIMIT or SIMPLE interval; end None: open-ended.
    """
    try:
        if is_cancelled(event):
            return []
        intervals = resolve_intervals(event, now, random_offset=random_offset, interval_offsets=interval_offsets,
                                      horizon=horizon, errors=[])
    except (ValueError, OverflowError, TypeError):
        return []
    return [(i.start, i.end) for i in intervals if any(k in i.payloads for k in LIMIT_TYPES)]
