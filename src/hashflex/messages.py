"""Every message on the wire, in and out, as pydantic v2 models: the one place for the schema.

Conventions
-----------
- Units are in field names (``power_kw``, ``laeq_dba``, ``price_usd_mwh``).
- Every timestamp must carry a timezone; it is normalised to UTC. Naive timestamps are rejected.
- Unknown fields are rejected (``extra="forbid"``); non-finite numbers are rejected.
- Payloads are JSON. :func:`parse_message` validates in pydantic's *strict* JSON mode, so ``"55"`` is
  not a number and ``1`` is not a boolean; building models in Python stays lax (ISO strings work).

Topics (site prefix ``hashflex/<site>/``)::

    in/price  in/renewable/<source>  in/noise/<receptor>  in/carbon  in/hashprice  in/dr  in/limits
    in/telemetry/<miner>  out/setpoint/<miner>  out/schedule  out/status  out/dr/ack
    in/as/award  in/as/deploy  out/as/ack  (ancillary services, issue 15)

Public API
----------
- Inbound models: :class:`PriceMessage`, :class:`RenewableMessage`, :class:`NoiseMessage`,
  :class:`CarbonIntensityMessage`, :class:`HashpriceMessage`, :class:`TelemetryMessage`,
  :class:`DREventMessage`, :class:`LimitsChangeMessage` (``InboundMessage`` is their union).
  Each has ``kind`` (class constant), ``key`` (series key: source, receptor, miner, event id, ...),
  ``observed_at`` (the time the data is about) and ``identity`` (what makes two messages duplicates).
- Outbound models: :class:`SetpointMessage`, :class:`DRAckMessage`, :class:`StatusMessage`.
- :class:`Topics` builds and routes topic names; :func:`parse_message` turns ``(topic, payload)``
  into a model or a :class:`Rejection`, never raising.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

__all__ = [
    "ASAckMessage",
    "ASAwardMessage",
    "ASDeployMessage",
    "CarbonIntensityMessage",
    "DRAckMessage",
    "DREventMessage",
    "DRProgram",
    "ForecastPoint",
    "HashpriceMessage",
    "INBOUND_MODELS",
    "InboundMessage",
    "LimitsChangeMessage",
    "NoiseCapOverride",
    "NoiseMessage",
    "PriceMessage",
    "Rejection",
    "RenewableMessage",
    "SetpointMessage",
    "StatusMessage",
    "TelemetryMessage",
    "Topics",
    "CarbonBudget",
    "parse_message",
    "payload_preview",
]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware timestamp, normalised to UTC; naive input is rejected."""

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=_ID_PATTERN)]
"""An id that is also safe as an MQTT topic level (no ``/``, ``+``, ``#``, spaces)."""
Text = Annotated[str, Field(min_length=1, max_length=512)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class _Inbound(_Message):
    kind: ClassVar[str]

    # Every inbound model defines ``key`` (series key within the kind: source, receptor, miner,
    # event id, ...) and ``observed_at`` (the UTC time the data is about); ``identity`` uses both.
    key: ClassVar[property]
    observed_at: ClassVar[property]

    @property
    def identity(self) -> tuple[Any, ...]:
        """Two messages with equal identity are duplicates; the store keeps one."""
        return (self.kind, self.key, self.observed_at)



SLEEP = "sleep"
"""The mode name of the safe default, on the wire and everywhere else: not hashing, drawing the
group's idle power. A miner whose setpoint expires goes to it."""

# --------------------------------------------------------------------------- inbound


class PriceMessage(_Inbound):
    """Energy price for one settlement interval. Prices may be negative and are unbounded above."""

    kind: ClassVar[str] = "price"
    settlement_point: Identifier
    market: Literal["RT", "DA"]
    interval_start: UtcDatetime
    interval_end: UtcDatetime
    price_usd_mwh: float
    published_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _interval_order(self) -> PriceMessage:
        if self.interval_end <= self.interval_start:
            raise ValueError("interval_end: must be after interval_start")
        return self

    @property
    def key(self) -> str:
        return f"{self.settlement_point}/{self.market}"

    @property
    def observed_at(self) -> datetime:
        return self.interval_start

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.kind, self.key, self.interval_start, self.published_at)


class ForecastPoint(_Message):
    interval_start: UtcDatetime
    power_kw: float = Field(ge=0)


class RenewableMessage(_Inbound):
    """Measured renewable output of one source, optionally with its own forecast."""

    kind: ClassVar[str] = "renewable"
    source_id: Identifier
    power_kw: float = Field(ge=0)
    timestamp: UtcDatetime
    forecast: list[ForecastPoint] | None = Field(default=None, max_length=10_000)

    @property
    def key(self) -> str:
        return self.source_id

    @property
    def observed_at(self) -> datetime:
        return self.timestamp


class NoiseMessage(_Inbound):
    """A sound level meter reading at a receptor (A-weighted equivalent level over averaging_s)."""

    kind: ClassVar[str] = "noise"
    receptor_id: Identifier
    laeq_dba: float = Field(ge=0, le=200)
    averaging_s: float = Field(gt=0, le=86_400)
    timestamp: UtcDatetime
    meter_class: Literal[1, 2]
    # Set by simulators (hashflex sim): every record built from the reading is labelled SIMULATED.
    simulated: bool = False

    @property
    def key(self) -> str:
        return self.receptor_id

    @property
    def observed_at(self) -> datetime:
        return self.timestamp


class CarbonIntensityMessage(_Inbound):
    kind: ClassVar[str] = "carbon"
    intensity_kg_per_mwh: float = Field(ge=0, le=5_000)
    intensity_kind: Literal["marginal", "average"] = Field(alias="kind")
    timestamp: UtcDatetime
    source: Text

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    @property
    def key(self) -> str:
        return self.intensity_kind

    @property
    def observed_at(self) -> datetime:
        return self.timestamp


class HashpriceMessage(_Inbound):
    kind: ClassVar[str] = "hashprice"
    hashprice_usd_per_ph_day: float = Field(ge=0)
    timestamp: UtcDatetime
    source: Text

    @property
    def key(self) -> str:
        return self.source

    @property
    def observed_at(self) -> datetime:
        return self.timestamp


class TelemetryMessage(_Inbound):
    kind: ClassVar[str] = "telemetry"
    miner_id: Identifier
    power_kw: float = Field(ge=0, le=100)
    hashrate_th_s: float = Field(ge=0, le=100_000)
    mode: Identifier
    temperature_c: float = Field(ge=-60, le=150)
    errors: list[Annotated[str, Field(max_length=512)]] = Field(default_factory=list, max_length=100)
    timestamp: UtcDatetime
    simulated: bool = False  # set by simulated miners: the audit trail then labels the site's data SIMULATED

    @property
    def key(self) -> str:
        return self.miner_id

    @property
    def observed_at(self) -> datetime:
        return self.timestamp


class DRProgram(str, enum.Enum):
    ERS_10 = "ERS-10"
    ERS_30 = "ERS-30"
    UTILITY = "utility"
    FOUR_CP = "4CP"
    PRICE_RESPONSIVE = "price-responsive"


class DREventMessage(_Inbound):
    """A demand-response event. A higher modification_number supersedes a lower one.

    Exactly one of ``import_limit_kw``, ``shed_kw`` (with ``baseline_kw``) or ``level`` states what is
    asked, except on a cancellation, which may carry none.
    """

    kind: ClassVar[str] = "dr"
    event_id: Identifier
    modification_number: int = Field(ge=0, lt=2**31)
    program: DRProgram
    start: UtcDatetime
    end: UtcDatetime | None = None
    import_limit_kw: float | None = Field(default=None, ge=0)
    shed_kw: float | None = Field(default=None, gt=0)
    baseline_kw: float | None = Field(default=None, ge=0)
    level: Literal[0, 1, 2, 3] | None = None
    issuer: Text
    cancelled: bool = False

    @model_validator(mode="after")
    def _one_request(self) -> DREventMessage:
        given = [n for n in ("import_limit_kw", "shed_kw", "level") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"{', '.join(given)}: conflict, give exactly one of import_limit_kw, shed_kw, level"
            )
        if not given and not self.cancelled:
            raise ValueError("import_limit_kw, shed_kw, level: one is required unless cancelled")
        if self.shed_kw is not None:
            if self.baseline_kw is None:
                raise ValueError("baseline_kw: required with shed_kw")
            if self.shed_kw > self.baseline_kw:
                raise ValueError("shed_kw: larger than baseline_kw")
        elif self.baseline_kw is not None:
            raise ValueError("baseline_kw: only allowed with shed_kw")
        if self.end is not None and self.end <= self.start:
            raise ValueError("end: must be after start")
        return self

    @property
    def key(self) -> str:
        return self.event_id

    @property
    def observed_at(self) -> datetime:
        return self.start

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.kind, self.event_id, self.modification_number)


class NoiseCapOverride(_Message):
    receptor_id: Identifier
    cap_dba: float = Field(ge=0, le=200)
    window_start: UtcDatetime
    window_end: UtcDatetime

    @model_validator(mode="after")
    def _window(self) -> NoiseCapOverride:
        if self.window_end <= self.window_start:
            raise ValueError("window_end: must be after window_start")
        return self


class CarbonBudget(_Message):
    budget_kg: float = Field(ge=0)
    period: Literal["day", "month"]


class LimitsChangeMessage(_Inbound):
    """A site manager changes limits: noise caps, carbon budget, import limit — or ``clear`` lifts
    that manager's own earlier values of the named parts (``import``, ``noise``, ``carbon``)."""

    kind: ClassVar[str] = "limits"
    issuer: Identifier
    reason: Text
    issued_at: UtcDatetime
    noise_caps: list[NoiseCapOverride] | None = Field(default=None, max_length=1_000)
    carbon_budget: CarbonBudget | None = None
    import_limit_kw: float | None = Field(default=None, ge=0)
    valid_until: UtcDatetime | None = None
    clear: list[Literal["import", "noise", "carbon"]] | None = Field(default=None, max_length=3)

    @model_validator(mode="after")
    def _something_changes(self) -> LimitsChangeMessage:
        if (self.noise_caps is None and self.carbon_budget is None and self.import_limit_kw is None
                and not self.clear):
            raise ValueError("noise_caps, carbon_budget, import_limit_kw, clear: at least one is required")
        both = {p for p, v in (("import", self.import_limit_kw), ("noise", self.noise_caps),
                               ("carbon", self.carbon_budget)) if v is not None} & set(self.clear or ())
        if both:
            raise ValueError(f"clear: {sorted(both)} both set and cleared in one message")
        if self.valid_until is not None and self.valid_until <= self.issued_at:
            raise ValueError("valid_until: must be after issued_at")
        return self

    @property
    def key(self) -> str:
        return self.issuer

    @property
    def observed_at(self) -> datetime:
        return self.issued_at


InboundMessage = (
    PriceMessage
    | RenewableMessage
    | NoiseMessage
    | CarbonIntensityMessage
    | HashpriceMessage
    | TelemetryMessage
    | DREventMessage
    | LimitsChangeMessage
)

AsProduct = Literal["RRS", "ECRS", "NSPIN"]


class ASAwardMessage(_Inbound):
    """An ancillary service award from the site's QSE (``in/as/award``, issue 15): ``reserve_kw`` of
    ``product`` to be held from ``start`` to ``end`` (a minimum running load the plan must keep,
    able to be shed within the product's deadline). A later award with the same ``award_id`` and a
    higher ``revision`` replaces it; ``reserve_kw`` 0 withdraws it."""

    kind: ClassVar[str] = "as_award"
    award_id: Identifier
    revision: int = Field(default=0, ge=0, lt=2**31)
    product: AsProduct
    start: UtcDatetime
    end: UtcDatetime
    reserve_kw: float = Field(ge=0, le=1e7)
    price_usd_mw_h: float | None = Field(default=None, ge=-1e4, le=1e5)
    issuer: Text

    @model_validator(mode="after")
    def _window(self) -> ASAwardMessage:
        if self.end <= self.start:
            raise ValueError("end: must be after start")
        return self

    @property
    def key(self) -> str:
        return self.award_id

    @property
    def observed_at(self) -> datetime:
        return self.start

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.kind, self.award_id, self.revision)


class ASDeployMessage(_Inbound):
    """An ancillary service deployment (``in/as/deploy``, issue 15): shed ``deployed_kw`` of
    ``product`` from the load at ``issued_at`` within the product's deadline, until ``recalled``
    (a later message with the same id) or the product's sustain duration has passed."""

    kind: ClassVar[str] = "as_deploy"
    deployment_id: Identifier
    product: AsProduct
    issued_at: UtcDatetime
    deployed_kw: float = Field(ge=0, le=1e7)
    recalled: bool = False
    issuer: Text

    @property
    def key(self) -> str:
        return self.deployment_id

    @property
    def observed_at(self) -> datetime:
        return self.issued_at

    @property
    def identity(self) -> tuple[Any, ...]:
        return (self.kind, self.deployment_id, self.recalled)


class ASAckMessage(_Message):
    """The answer to an AS award or deployment (``out/as/ack``); ``message_id`` is the award or
    deployment id. A deployment's ack carries the import limit it set and its deadline."""

    message_id: Identifier
    kind: Literal["as_award", "as_deploy"]
    status: Literal["accepted", "rejected"]
    reason: Text | None = None
    acked_at: UtcDatetime
    import_limit_kw: float | None = None
    deadline: UtcDatetime | None = None


INBOUND_MODELS: dict[str, type[_Inbound]] = {
    m.kind: m
    for m in (
        PriceMessage,
        RenewableMessage,
        NoiseMessage,
        CarbonIntensityMessage,
        HashpriceMessage,
        TelemetryMessage,
        DREventMessage,
        LimitsChangeMessage,
        ASAwardMessage,
        ASDeployMessage,
    )
}
"""Model per inbound kind; the kind is also the first topic level after ``in/``."""

# --------------------------------------------------------------------------- outbound


class SetpointMessage(_Message):
    """What one miner should do until expires_at; after that it falls back to its safe default."""

    miner_id: Identifier
    mode: Identifier  # an operating mode name, or "sleep"
    power_target_kw: float = Field(ge=0, le=100)
    issued_at: UtcDatetime
    expires_at: UtcDatetime

    @model_validator(mode="after")
    def _expiry(self) -> SetpointMessage:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at: must be after issued_at")
        return self


class DRAckMessage(_Message):
    event_id: Identifier
    modification_number: int = Field(ge=0, lt=2**31)
    status: Literal["accepted", "rejected"]
    reason: Text | None = None
    acked_at: UtcDatetime

    @model_validator(mode="after")
    def _reason_on_reject(self) -> DRAckMessage:
        if self.status == "rejected" and self.reason is None:
            raise ValueError("reason: required when status is rejected")
        return self


class StatusMessage(_Message):
    site: Identifier
    timestamp: UtcDatetime
    fields: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Topics:
    """Topic names for one site: ``Topics("west").noise("r1") == "hashflex/west/in/noise/r1"``."""

    site: str

    def __post_init__(self) -> None:
        if not re.match(_ID_PATTERN, self.site):
            raise ValueError(f"site {self.site!r}: not a valid topic level")

    @property
    def prefix(self) -> str:
        return f"hashflex/{self.site}/"

    @property
    def inbound_filter(self) -> str:
        return f"{self.prefix}in/#"

    @property
    def price(self) -> str:
        return f"{self.prefix}in/price"

    def renewable(self, source_id: str) -> str:
        return f"{self.prefix}in/renewable/{source_id}"

    def noise(self, receptor_id: str) -> str:
        return f"{self.prefix}in/noise/{receptor_id}"

    @property
    def carbon(self) -> str:
        return f"{self.prefix}in/carbon"

    @property
    def hashprice(self) -> str:
        return f"{self.prefix}in/hashprice"

    @property
    def dr(self) -> str:
        return f"{self.prefix}in/dr"

    @property
    def limits(self) -> str:
        return f"{self.prefix}in/limits"

    def telemetry(self, miner_id: str) -> str:
        return f"{self.prefix}in/telemetry/{miner_id}"

    def setpoint(self, miner_id: str) -> str:
        return f"{self.prefix}out/setpoint/{miner_id}"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}out/schedule"

    @property
    def status(self) -> str:
        return f"{self.prefix}out/status"

    @property
    def dr_ack(self) -> str:
        return f"{self.prefix}out/dr/ack"

    def topic_for(self, message: InboundMessage) -> str:
        """The inbound topic a message belongs on."""
        if isinstance(message, (RenewableMessage, NoiseMessage, TelemetryMessage)):
            return f"{self.prefix}in/{message.kind}/{message.key}"
        if isinstance(message, (ASAwardMessage, ASDeployMessage)):
            return f"{self.prefix}in/as/{message.kind.removeprefix('as_')}"
        return f"{self.prefix}in/{message.kind}"


# Kinds whose topic carries the series key as a last level, and the payload field it must match.
_KEYED_KINDS = {"renewable": "source_id", "noise": "receptor_id", "telemetry": "miner_id"}
_TOPIC_RE = re.compile(r"^hashflex/([^/]+)/in/([^/]+)(?:/([^/]+))?$")
_PAYLOAD_PREVIEW_CHARS = 200
_MAX_ERRORS_IN_REASON = 3
MAX_PAYLOAD_BYTES = 1_000_000


@dataclass(frozen=True)
class Rejection:
    """A payload that was not accepted. ``reason`` names the kind and the field path.

    ``rule`` is the reason *class*, a short label from a bounded set for counters and metrics (never
    the value, never a field name taken from the payload): ``topic``, ``oversize``, ``schema:<pydantic
    error type>``, ``key_mismatch``, ``error``, or from :mod:`hashflex.plausibility`
    ``out_of_bounds:<field>``, ``unknown_id:<field>``, ``stale:<field>``, ``future:<field>``.
    """

    topic: str
    reason: str
    payload: str  # the raw payload, decoded leniently and truncated
    kind: str | None = None
    rule: str = "unspecified"


def payload_preview(payload: bytes | str) -> str:
    """The payload as stored with a rejection: decoded leniently, truncated to 200 characters."""
    return _preview(payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))


def _preview(payload: bytes) -> str:
    text = payload[: _PAYLOAD_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    if len(text) > _PAYLOAD_PREVIEW_CHARS or len(payload) > _PAYLOAD_PREVIEW_CHARS * 4:
        return text[:_PAYLOAD_PREVIEW_CHARS] + "…"
    return text


def _explain(kind: str, error: ValidationError) -> str:
    parts = []
    errors = error.errors(include_url=False, include_input=False)
    for err in errors[:_MAX_ERRORS_IN_REASON]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "json_invalid":
            parts.append(f"{kind}: payload: {msg}")
        elif loc:
            parts.append(f"{kind}: {loc}: {msg}")
        else:
            parts.append(f"{kind}: {msg}")
    if len(errors) > _MAX_ERRORS_IN_REASON:
        parts.append(f"(+{len(errors) - _MAX_ERRORS_IN_REASON} more)")
    return "; ".join(parts)


def _schema_rule(error: ValidationError) -> str:
    """``schema:<type>`` of the first error: pydantic's error types are a fixed set, unlike field
    paths, which an extra key in the payload could make unbounded."""
    try:
        first = error.errors(include_url=False, include_input=False)[0]["type"]
    except (IndexError, KeyError):
        first = "unknown"
    return f"schema:{first}"


def parse_message(topic: str, payload: bytes | str, *, site: str | None = None) -> InboundMessage | Rejection:
    """Validate one inbound payload against the model its topic names. Never raises.

    Returns the model, or a :class:`Rejection` for an unknown topic, another site's topic (when
    ``site`` is given), an oversized payload, bad JSON, a schema error, or a topic/payload key mismatch.
    """
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    match = _TOPIC_RE.match(topic)
    if match is None:
        return Rejection(topic, "topic: not an inbound hashflex topic", _preview(raw), None, "topic")
    topic_site, kind, topic_key = match.groups()
    if kind == "as" and topic_key in ("award", "deploy"):  # in/as/award, in/as/deploy (issue 15)
        kind, topic_key = f"as_{topic_key}", None
    model = INBOUND_MODELS.get(kind)
    if model is None:
        return Rejection(topic, f"topic: unknown kind {kind!r}", _preview(raw), None, "topic")
    if site is not None and topic_site != site:
        return Rejection(topic, f"topic: site {topic_site!r} is not {site!r}", _preview(raw), kind, "topic")
    key_field = _KEYED_KINDS.get(kind)
    if (key_field is None) != (topic_key is None):
        expected = f"in/{kind}/<{key_field}>" if key_field else f"in/{kind}"
        return Rejection(topic, f"topic: expected {expected}", _preview(raw), kind, "topic")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Rejection(topic, f"{kind}: payload: larger than {MAX_PAYLOAD_BYTES} bytes", _preview(raw), kind,
                         "oversize")
    try:
        message = model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        return Rejection(topic, _explain(kind, exc), _preview(raw), kind, _schema_rule(exc))
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return Rejection(topic, f"{kind}: payload: {type(exc).__name__}: {exc}", _preview(raw), kind, "error")
    if key_field is not None and getattr(message, key_field) != topic_key:
        reason = f"{kind}: {key_field}: topic says {topic_key!r} but payload says {getattr(message, key_field)!r}"
        return Rejection(topic, reason, _preview(raw), kind, "key_mismatch")
    return message  # type: ignore[return-value]
