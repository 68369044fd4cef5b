"""Inbound models (``in/...`` topics): observations (price, renewables, noise, carbon, hashprice,
telemetry) and commands (DR events, limits changes, AS awards and deployments), and
:data:`INBOUND_MODELS`, the model per inbound kind.

Seam: what may arrive at the site and how each kind names its series (``key``), its time
(``observed_at``) and its duplicates (``identity``); split from ``messages.py`` (issue 11).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from hashflex.messages.base import Identifier, Text, UtcDatetime, _Inbound, _Message

__all__ = [
    "ASAwardMessage", "ASDeployMessage", "AsProduct", "CarbonBudget", "CarbonIntensityMessage", "DREventMessage",
    "DRProgram", "ForecastPoint", "HashpriceMessage", "INBOUND_MODELS", "InboundMessage", "LimitsChangeMessage",
    "LoadForecastMessage", "LoadForecastPoint", "NoiseCapOverride", "NoiseMessage", "PriceMessage", "RenewableMessage", "TelemetryMessage",
]


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
        """Series key: ``<settlement_point>/<market>`` (e.g. ``HB_WEST/RT``)."""
        return f"{self.settlement_point}/{self.market}"

    @property
    def observed_at(self) -> datetime:
        """The interval start the price is for (UTC)."""
        return self.interval_start

    @property
    def identity(self) -> tuple[Any, ...]:
        """Duplicates: same kind, key, interval start and publication time (a re-published price is new)."""
        return (self.kind, self.key, self.interval_start, self.published_at)


class ForecastPoint(_Message):
    """One point of a renewable source's own forecast: mean ``power_kw`` (kW, ≥ 0) from ``interval_start``."""

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
        """Series key: the source id."""
        return self.source_id

    @property
    def observed_at(self) -> datetime:
        """The measurement time (UTC)."""
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
        """Series key: the receptor id."""
        return self.receptor_id

    @property
    def observed_at(self) -> datetime:
        """The end of the averaging period the reading reports (UTC)."""
        return self.timestamp


class CarbonIntensityMessage(_Inbound):
    """Grid carbon intensity in kg CO2/MWh (``marginal`` or ``average``; the JSON field is ``kind``) at
    ``timestamp``, with its ``source`` named.
    """

    kind: ClassVar[str] = "carbon"
    intensity_kg_per_mwh: float = Field(ge=0, le=5_000)
    intensity_kind: Literal["marginal", "average"] = Field(alias="kind")
    timestamp: UtcDatetime
    source: Text

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    @property
    def key(self) -> str:
        """Series key: the intensity kind (``marginal`` or ``average``)."""
        return self.intensity_kind

    @property
    def observed_at(self) -> datetime:
        """The time the intensity is for (UTC)."""
        return self.timestamp


class HashpriceMessage(_Inbound):
    """Hashprice in $/PH/day (revenue per petahash per second per day) at ``timestamp``, with its source."""

    kind: ClassVar[str] = "hashprice"
    hashprice_usd_per_ph_day: float = Field(ge=0)
    timestamp: UtcDatetime
    source: Text

    @property
    def key(self) -> str:
        """Series key: the source."""
        return self.source

    @property
    def observed_at(self) -> datetime:
        """The time the hashprice is for (UTC)."""
        return self.timestamp


class TelemetryMessage(_Inbound):
    """One miner's telemetry: power (kW), hashrate (TH/s), mode, temperature (°C), errors; ``simulated``
    marks readings from simulators.
    """

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
        """Series key: the miner id."""
        return self.miner_id

    @property
    def observed_at(self) -> datetime:
        """The reading time (UTC)."""
        return self.timestamp


class DRProgram(str, enum.Enum):
    """Demand-response programmes: ERCOT Emergency Response Service (ERS-10, ERS-30; Nodal Protocols
    §3.14.3), a utility programme, 4CP transmission-charge avoidance, price-responsive curtailment.
    """

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
        """Series key: the event id."""
        return self.event_id

    @property
    def observed_at(self) -> datetime:
        """The event start (UTC)."""
        return self.start

    @property
    def identity(self) -> tuple[Any, ...]:
        """Duplicates: same event id and modification number (a higher number supersedes)."""
        return (self.kind, self.event_id, self.modification_number)


class NoiseCapOverride(_Message):
    """A temporary noise cap at one receptor: ``cap_dba`` (dB(A)) in force over [window_start, window_end)."""

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
    """A carbon budget in kg CO2 per site-local ``day`` or ``month``."""

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
        """Series key: the issuing site manager."""
        return self.issuer

    @property
    def observed_at(self) -> datetime:
        """The time the change was issued (UTC)."""
        return self.issued_at


class LoadForecastPoint(_Message):
    """One hour (or ``interval_minutes``) of a system load forecast: the mean load ``load_forecast_mw`` (MW)
    expected from ``interval_start``. The bound here is only "a positive number below 10^6 MW"; the
    plausible range of ERCOT's system load is checked by :func:`hashflex.feeds.load_forecast.check_load_forecast`."""

    interval_start: UtcDatetime
    load_forecast_mw: float = Field(gt=0, lt=1e6)


class LoadForecastMessage(_Inbound):
    """One posting of a system load forecast (``in/load_forecast``; issue 14): ERCOT's seven-day load
    forecast (NP3-565-CD, the in-use model's system total) or any relay of it, as published at
    ``published_at``. The learned price model uses, for each hour, the newest posting published by the
    day-ahead cutoff (:meth:`hashflex.store.Store.load_forecast`), so ``published_at`` must be when the
    forecast was *published*, not when it was relayed.

    Fields: ``region`` (default ``ERCOT``: the system total), ``published_at``, ``source`` (e.g.
    ``ERCOT NP3-565-CD``), ``interval_minutes`` (60: ERCOT's hourly product), ``points`` (1..2,000, strictly
    increasing ``interval_start``)."""

    kind: ClassVar[str] = "load_forecast"
    region: Identifier = "ERCOT"
    published_at: UtcDatetime
    source: Text
    interval_minutes: Literal[15, 30, 60] = 60
    points: list[LoadForecastPoint] = Field(min_length=1, max_length=2_000)

    @model_validator(mode="after")
    def _increasing(self) -> LoadForecastMessage:
        starts = [p.interval_start for p in self.points]
        for i in range(1, len(starts)):
            if starts[i] <= starts[i - 1]:
                raise ValueError(f"points.{i}.interval_start: not after points.{i - 1}.interval_start "
                                 "(one value per interval, in time order)")
        return self

    @property
    def key(self) -> str:
        """Series key: the region (``ERCOT``: the system total)."""
        return self.region

    @property
    def observed_at(self) -> datetime:
        """The posting's publication time (UTC)."""
        return self.published_at

    @property
    def identity(self) -> tuple[Any, ...]:
        """Duplicates: same region and publication time (a posting is sent once per ``published_at``)."""
        return (self.kind, self.region, self.published_at)


InboundMessage = (
    PriceMessage
    | RenewableMessage
    | NoiseMessage
    | CarbonIntensityMessage
    | HashpriceMessage
    | TelemetryMessage
    | DREventMessage
    | LimitsChangeMessage
    | LoadForecastMessage
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
        """Series key: the award id."""
        return self.award_id

    @property
    def observed_at(self) -> datetime:
        """The start of the award window (UTC)."""
        return self.start

    @property
    def identity(self) -> tuple[Any, ...]:
        """Duplicates: same award id and revision (a higher revision replaces the award)."""
        return (self.kind, self.award_id, self.revision)


class ASDeployMessage(_Inbound):
    """An ancillary service deployment (``in/as/deploy``, issue 15): shed ``deployed_kw`` of
    ``product`` from the load at ``issued_at`` within the product's deadline, until ``recalled``
    (a later message with the same id) or the product's sustain duration has passed. A later
    message with the same id and a higher ``revision`` amends the MW (issued_at: the amendment's time)."""

    kind: ClassVar[str] = "as_deploy"
    deployment_id: Identifier
    revision: int = Field(default=0, ge=0, lt=2**31)
    product: AsProduct
    issued_at: UtcDatetime
    deployed_kw: float = Field(ge=0, le=1e7)
    recalled: bool = False
    issuer: Text

    @property
    def key(self) -> str:
        """Series key: the deployment id."""
        return self.deployment_id

    @property
    def observed_at(self) -> datetime:
        """The time ERCOT (through the QSE) instructed the deployment (UTC)."""
        return self.issued_at

    @property
    def identity(self) -> tuple[Any, ...]:
        """Duplicates: same deployment id, revision and recall flag (an amendment and a recall are distinct)."""
        return (self.kind, self.deployment_id, self.revision, self.recalled)


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
        LoadForecastMessage,
        ASDeployMessage,
    )
}
"""Model per inbound kind; the kind is also the first topic level after ``in/``."""
