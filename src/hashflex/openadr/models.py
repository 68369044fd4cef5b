"""Pydantic models of the VTN objects a VEN reads, written from the OpenAPI documents
(``openadr3-3.1.1.yaml`` and ``openadr3-3.0.1.yaml``, components/schemas) and checked against them
by ``tests/test_openadr_models.py`` (every schema property has a field of the same name; every
field the spec requires is required here, or defaulted where the other version leaves it optional).

Why hand-written rather than generated: ``datamodel-code-generator`` output would need a second
pass anyway for the two versions (3.0.1 targets are ``valuesMap`` objects, 3.1.1 targets are
strings; 3.1.1 requires descriptor ``objectType``, 3.0.1 does not) and it drags in a code
generator dependency. These models accept the union of what the two versions admit and check
types, patterns, lengths and enums: a ``targets`` string (not a list) is refused, an interval id
must be a 32-bit integer, a duration must match the spec's pattern, an object id must match
``^[a-zA-Z0-9_-]*$`` (1..128).

Unknown properties are kept (OpenAPI objects are open unless ``additionalProperties: false``).
Timestamps are checked by :func:`hashflex.openadr.mapping.parse_datetime` rules (RFC 3339, leap
seconds, ``0001-01-01``) except the offset, which the mapping decides (see README).

:func:`validate_event` / :func:`validate_object` return the model or raise ``ObjectRejected`` with a
one-line reason naming the field (``intervals.0.id: Input should be a valid integer``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from hashflex.messages.parse import duplicate_key_in, duplicate_key_reason

__all__ = ["DURATION_PATTERN", "OBJECT_ID_PATTERN", "Event", "EventPayloadDescriptor", "Interval", "IntervalPeriod",
           "Notification", "ObjectRejected", "Point", "Program", "ReportDescriptor", "Resource", "Subscription",
           "Ven", "ValuesMap", "rejection_reason", "validate_event", "validate_object"]

# Verbatim from components/schemas/duration and objectID (both versions).
DURATION_PATTERN = (r"^(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?"
                    r"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
OBJECT_ID_PATTERN = r"^[a-zA-Z0-9_-]*$"
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?)?$")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class ObjectRejected(ValueError):
    """A VTN object that does not validate against the spec's schema; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_DURATION = re.compile(DURATION_PATTERN)


def _duration_text(value: str) -> str:
    if not _DURATION.match(value):  # Python's re: the pattern's look-ahead is beyond pydantic-core's regex
        raise ValueError(f"{value!r}: not an ISO 8601 duration (the spec's pattern)")
    return value


def _datetime_text(value: str) -> str:
    if not _DATETIME.match(value):
        raise ValueError(f"{value!r}: not an RFC 3339 date-time")
    return value


ObjectID = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=OBJECT_ID_PATTERN)]
Str128 = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Duration = Annotated[StrictStr, AfterValidator(_duration_text)]
DateTimeText = Annotated[StrictStr, AfterValidator(_datetime_text)]
Int32 = Annotated[StrictInt, Field(ge=INT32_MIN, le=INT32_MAX)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Point(_Open):
    """components/schemas/point: one x/y point of a CURVE payload."""
    x: StrictFloat | StrictInt
    y: StrictFloat | StrictInt


class ValuesMap(_Open):
    """components/schemas/valuesMap: a ``type`` and its ``values`` (payloads, targets in 3.0.1, attributes)."""
    type: Str128
    values: list[StrictBool | StrictInt | StrictFloat | StrictStr | Point]


Target = Annotated[StrictStr, Field(min_length=1, max_length=128)] | ValuesMap  # 3.1.1 | 3.0.1


class IntervalPeriod(_Open):
    """components/schemas/intervalPeriod: ``start``, ``duration``, ``randomizeStart``."""
    start: DateTimeText | None = None  # required in 3.0.1, optional in 3.1.1
    duration: Duration | None = None
    randomizeStart: Duration | None = None


class Interval(_Open):
    """components/schemas/interval: an int32 ``id``, an optional period and its payloads."""
    id: Int32
    intervalPeriod: IntervalPeriod | None = None
    payloads: list[ValuesMap]


class EventPayloadDescriptor(_Open):
    """components/schemas/eventPayloadDescriptor: a payload type's units and currency."""
    objectType: Literal["EVENT_PAYLOAD_DESCRIPTOR"] | None = None  # required in 3.1.1
    payloadType: Str128
    units: Str128 | None = None
    currency: StrictStr | None = None


class ReportPayloadDescriptor(_Open):
    objectType: Literal["REPORT_PAYLOAD_DESCRIPTOR"] | None = None
    payloadType: Str128
    readingType: Str128 | None = None
    units: Str128 | None = None
    accuracy: StrictFloat | StrictInt | None = None
    confidence: Annotated[StrictInt, Field(ge=0, le=100)] | None = None


class ReportDescriptor(_Open):
    """components/schemas/reportDescriptor: a report the VTN asks for (type, units, which intervals, how often)."""
    payloadType: Str128
    readingType: Str128 | None = None
    units: Str128 | None = None
    targets: list[Target] | None = None
    aggregate: StrictBool = False
    startInterval: Int32 = -1
    numIntervals: Int32 = -1
    historical: StrictBool = True
    frequency: Int32 = -1
    repeat: Int32 = 1
    reportIntervals: Literal["INTERVALS", "SUB_INTERVALS", "OPEN_INTERVALS"] = "INTERVALS"  # 3.1.1


class _Metadata(_Open):
    id: ObjectID
    createdDateTime: DateTimeText | None = None
    modificationDateTime: DateTimeText | None = None


class Event(_Metadata):
    """components/schemas/event: a program's request to the VEN (intervals of payloads, descriptors, targets)."""
    objectType: Literal["EVENT"] | None = None
    programID: ObjectID
    eventName: StrictStr | None = None
    duration: Duration | None = None
    priority: Annotated[StrictInt, Field(ge=0)] | None = None
    targets: list[Target] | None = None
    reportDescriptors: list[ReportDescriptor] | None = None
    payloadDescriptors: list[EventPayloadDescriptor] | None = None
    intervalPeriod: IntervalPeriod | None = None
    intervals: list[Interval] = Field(default_factory=list)  # required in 3.0.1


class Program(_Metadata):
    """components/schemas/program: its name, descriptors, attributes (3.1.1 PROGRAM_TYPE) and targets."""
    objectType: Literal["PROGRAM"] | None = None
    programName: Str128
    intervalPeriod: IntervalPeriod | None = None
    payloadDescriptors: list[EventPayloadDescriptor | ReportPayloadDescriptor] | None = None
    attributes: list[ValuesMap] | None = None
    targets: list[Target] | None = None


class Resource(_Metadata):
    """components/schemas/resource: one of a ven's resources (name, ven id, targets)."""
    objectType: StrictStr | None = None  # the spec's enums cannot all be satisfied (see tests/openadr_vtn.py)
    resourceName: Str128
    venID: ObjectID | None = None
    attributes: list[ValuesMap] | None = None
    targets: list[Target] | None = None


class Ven(_Metadata):
    """components/schemas/ven: the VEN's object on the VTN (name, attributes, targets granted)."""
    objectType: StrictStr | None = None  # idem
    venName: Str128
    attributes: list[ValuesMap] | None = None
    targets: list[Target] | None = None


class Subscription(_Metadata):
    """components/schemas/subscription: a client's webhook subscription (object operations, callback URL)."""
    objectType: Literal["SUBSCRIPTION"] | None = None
    clientName: Str128
    programID: ObjectID | None = None
    objectOperations: list[dict[str, Any]]
    targets: list[Target] | None = None


class Notification(_Open):
    """components/schemas/notification: the body a VTN POSTs to a webhook (object type, operation, object)."""
    objectType: Literal["PROGRAM", "EVENT", "REPORT", "SUBSCRIPTION", "VEN", "RESOURCE"]
    operation: Literal["CREATE", "READ", "UPDATE", "DELETE"]
    object: dict[str, Any]
    targets: list[Target] | None = None


def rejection_reason(exc: PydanticValidationError, limit: int = 3) -> str:
    """One line: ``field.path: message`` for the first ``limit`` errors."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "object"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def validate_object(model: type[BaseModel], obj: Any, *, unchecked: tuple[str, ...] = ()) -> Any:
    """``model.model_validate(obj)`` or :class:`ObjectRejected` with the reason.

    A key given twice in one JSON object, at any depth, is refused first, naming its path (``intervals.0.payloads:
    duplicate key: ...``): which value the VTN meant is unknown. The rule is the MQTT commands' one
    (:func:`hashflex.messages.parse.duplicate_key_in` over an answer read by
    :func:`~hashflex.messages.parse.loads_marking_duplicates`, as the client and the webhook read them; issue 15,
    task H3). ``unchecked``: top-level keys left to their own validation (a notification's ``object``, an
    event checked with its id by :func:`validate_event`).
    """
    if not isinstance(obj, dict):
        raise ObjectRejected(f"object: a JSON object was expected, got {type(obj).__name__}")
    if (where := duplicate_key_in(obj, skip=unchecked)) is not None:
        raise ObjectRejected(duplicate_key_reason(where))
    try:
        return model.model_validate(obj)
    except PydanticValidationError as exc:
        raise ObjectRejected(rejection_reason(exc)) from None


def validate_event(obj: Any) -> Event:
    """Validate an event object.

    Parameters
    ----------
    obj : Any
        The event as the VTN returned it (JSON).

    Returns
    -------
    Event

    Raises
    ------
    ObjectRejected
        Its ``reason`` names the field (``intervals.0.id: Input should be a valid integer``).
    """
    return validate_object(Event, obj)
