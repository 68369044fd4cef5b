"""Site profiles: what a site manager writes in one YAML file, validated with pydantic v2.

Every mistake is reported with the file, the field path and what is wrong (`ProfileError`).
Unknown keys are errors (a misspelt ``night_cap_dba`` must not be silently ignored), and units are
in the key names. The profile is configuration only; turning it into per-interval arrays (caps at
a given local time, attenuation per group) lives in small pure functions here so the optimizer,
the guard and the reports share one definition.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

# The sections split along their seams (issue 11), re-exported here: ``from hashflex.profile import
# GpuCluster, AS_PRODUCT_RULES, ...`` keeps working.
from hashflex.profile.ancillary import (  # noqa: F401 - re-exported
    AS_PRODUCT_RULES,
    AncillaryGroup,
    AncillaryProduct,
    AncillarySection,
    AsProductName,
)
from hashflex.profile.base import NonNegFloat, PositiveFloat, _Strict  # noqa: F401 - re-exported
from hashflex.profile.base import require_unique as _require_unique
from hashflex.profile.compute import (  # noqa: F401 - re-exported
    BatchJob,
    ComputeSection,
    GpuCluster,
    InferenceService,
    SpotCapacity,
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Hemispherical spreading from a point source on hard ground: A = 20·log10(r) + 8 dB (ISO 9613-2 Adiv
# for a source on a reflecting plane). Barriers and air absorption come on top as extra_attenuation_db.
HEMISPHERICAL_SPREADING_DB = 8.0


class SiteSection(_Strict):
    """The site: name and wire id, time zone, ERCOT settlement point, planning interval and horizon,
    and the broker identities allowed to change limits."""

    id: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$",
                           description="topic prefix hashflex/<id>/ (default: the name as a slug)")
    name: str = Field(min_length=1)
    timezone: str = "America/Chicago"
    settlement_point: str = Field(min_length=1, description="ERCOT settlement point, e.g. LZ_WEST")
    settlement_point_type: Literal["LZ", "LZEW", "HU", "RN", "SH", "AH"] = "LZ"
    interval_minutes: Literal[5, 15] = 15
    horizon_hours: Annotated[int, Field(ge=1, le=72)] = 24
    fine_horizon_hours: Annotated[float, Field(ge=0, le=72)] = Field(
        default=24,
        description="hours at interval resolution; beyond this the planning grid is hourly",
    )
    managers: list[str] = Field(
        default_factory=list, description="broker identities allowed to change limits at runtime (in/limits)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value


class FourCPSection(_Strict):
    """4CP avoidance: the import limit held in the afternoon windows of the summer months on alert
    days (ERCOT Four Coincident Peak transmission cost allocation, PUCT Substantive Rule §25.192)."""

    enabled: bool = True
    months: list[Annotated[int, Field(ge=1, le=12)]] = [6, 7, 8, 9]
    window_start_hour: Annotated[int, Field(ge=0, le=23)] = 15
    window_end_hour: Annotated[int, Field(ge=1, le=24)] = 19
    alert_import_limit_kw: NonNegFloat = 0.0
    hold_without_alert: bool = Field(
        default=False, description="hold the limit in every window of the months, alert or not"
    )

    @model_validator(mode="after")
    def _window_order(self) -> "FourCPSection":
        if self.window_end_hour <= self.window_start_hour:
            raise ValueError("window_end_hour must be after window_start_hour")
        return self


class GridSection(_Strict):
    """The grid connection: import and export limits (kW), price adders ($/MWh), ramp limit, 4CP."""

    import_limit_kw: PositiveFloat
    export_limit_kw: NonNegFloat = 0.0
    price_adders_usd_mwh: dict[str, float] = Field(default_factory=dict)
    ramp_limit_kw_per_min: PositiveFloat | None = None
    four_cp: FourCPSection | None = None

    @property
    def total_adder_usd_mwh(self) -> float:
        """Sum of the price adders, $/MWh."""
        return float(sum(self.price_adders_usd_mwh.values()))


class DRSection(_Strict):
    """Demand response: accepted issuers and the import limit (kW) of each OpenADR SIMPLE level."""

    issuers: list[str] = Field(default_factory=list)
    # Keys are OpenADR SIMPLE levels 1-3 (int; "1" is read as 1, so a profile round-trips through JSON).
    level_import_limit_kw: dict[Annotated[int, Field(ge=1, le=3)], NonNegFloat] = Field(default_factory=dict)


class MinerMode(_Strict):
    """One operating mode of a miner model: power (kW), hashrate (TH/s), sound power (dB(A))."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    power_kw: PositiveFloat
    hashrate_th_s: PositiveFloat
    sound_power_dba: float = Field(ge=0, le=140, description="A-weighted sound power level Lw per unit")

    @property
    def efficiency_j_per_th(self) -> float:
        """Energy per hash, J/TH."""
        return self.power_kw * 1000.0 / self.hashrate_th_s


class MinerGroup(_Strict):
    """A group of identical miners: model, count, cooling, modes, standby power and commitment
    parameters; with ``pdu_power_off``, sleeping units may be powered off at the PDU (issue 17)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    model: str
    units: Annotated[int, Field(ge=1)]
    cooling: Literal["air", "hydro", "immersion"] = "air"
    modes: list[MinerMode] = Field(min_length=1)
    idle_power_kw: NonNegFloat = 0.0
    boot_minutes: NonNegFloat = 0.0
    stop_minutes: NonNegFloat = 0.0
    min_on_minutes: NonNegFloat = 0.0
    min_off_minutes: NonNegFloat = 0.0
    start_cost_usd: NonNegFloat = 0.0
    safe_default_mode: Literal["sleep"] = "sleep"
    # Issue 17: a PDU or breaker can cut a sleeping unit's power entirely (0 kW instead of
    # idle_power_kw), at the cost of a cold boot when it is woken.
    pdu_power_off: bool = Field(default=False, description="the plan may power sleeping units off at the PDU")
    cold_boot_s: NonNegFloat = Field(default=0.0, description="seconds from power-on to hashing after a power-off")
    cold_start_cost_usd: NonNegFloat = Field(default=0.0, description="$ per unit woken from powered off")

    @model_validator(mode="after")
    def _unique_modes(self) -> "MinerGroup":
        names = [mode.name for mode in self.modes]
        if len(set(names)) != len(names):
            raise ValueError(f"mode names must be unique, got {names}")
        if "sleep" in names:
            raise ValueError("'sleep' is implied (units not in a mode sleep at idle_power_kw)")
        if self.pdu_power_off and "off" in names:
            raise ValueError("'off' is implied with pdu_power_off (units powered off at the PDU)")
        if not self.pdu_power_off and (self.cold_boot_s or self.cold_start_cost_usd):
            raise ValueError("cold_boot_s and cold_start_cost_usd need pdu_power_off: true")
        lowest = min(mode.power_kw for mode in self.modes)
        if self.idle_power_kw >= lowest:  # a newcomer's 100 kW standby planned past the carbon budget
            raise ValueError(f"idle_power_kw {self.idle_power_kw:g} must be below the lowest mode's power_kw "
                             f"{lowest:g} (a sleeping unit draws less than a running one)")
        return self

    def mode(self, name: str) -> MinerMode:
        """The mode called ``name`` (StopIteration if there is none)."""
        return next(m for m in self.modes if m.name == name)


class RenewableSource(_Strict):
    """An on-site renewable source and its nameplate capacity (kW)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["solar", "wind"]
    capacity_kw: PositiveFloat


class CapWindow(_Strict):
    """A noise cap in force from ``start`` to ``end`` local time on ``days`` (end < start wraps midnight)."""

    name: str
    start: dt.time
    end: dt.time
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = list(WEEKDAYS)
    cap_dba: float = Field(ge=0, le=140)

    def applies(self, local: dt.datetime) -> bool:
        """True when local time ``local`` falls in this window (the window belongs to its start day)."""
        clock = local.time().replace(tzinfo=None)
        weekday = WEEKDAYS[local.weekday()]
        if self.start < self.end:
            return weekday in self.days and self.start <= clock < self.end
        if clock >= self.start:
            return weekday in self.days
        previous_day = WEEKDAYS[(local.weekday() - 1) % 7]
        return clock < self.end and previous_day in self.days


class Receptor(_Strict):
    """A noise receptor: where the neighbours are (attenuation or distance per group), their
    background level, and the caps that apply (total level or the site's contribution)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    attenuation_db: dict[str, NonNegFloat] = Field(default_factory=dict)
    distance_m: dict[str, PositiveFloat] = Field(default_factory=dict)
    extra_attenuation_db: NonNegFloat = 0.0
    background_dba: float = Field(ge=0, le=140)
    cap_applies_to: Literal["total", "site"] = "total"
    caps: list[CapWindow] = Field(min_length=1)
    sensor_topic: str | None = None
    model_margin_db: NonNegFloat = Field(
        default=1.0, description="safety margin subtracted from the cap when no sensor confirms the model"
    )
    # Compliance-level margin: with a probability p, the plan keeps the p-quantile of the meter's
    # measured − modelled residuals below the cap, so the cap is met in a share p of intervals
    # (once ``compliance_min_samples`` residuals are known; the fixed margin until then).
    compliance_probability: float | None = Field(default=None, gt=0.5, lt=1.0)
    compliance_min_samples: int = Field(default=30, ge=5)

    @model_validator(mode="after")
    def _one_path_per_group(self) -> "Receptor":
        both = set(self.attenuation_db) & set(self.distance_m)
        if both:
            raise ValueError(f"groups {sorted(both)} have both attenuation_db and distance_m; give one")
        return self

    def attenuation_from(self, group_id: str) -> float:
        """Attenuation in dB from one unit of ``group_id`` to this receptor (inf if unrelated)."""
        if group_id in self.attenuation_db:
            return self.attenuation_db[group_id]
        if group_id in self.distance_m:
            return geometric_attenuation_db(self.distance_m[group_id]) + self.extra_attenuation_db
        return math.inf

    def cap_at(self, local: dt.datetime) -> float:
        """The cap in force at ``local``: the lowest of all matching windows (inf if none match)."""
        caps = [window.cap_dba for window in self.caps if window.applies(local)]
        return min(caps) if caps else math.inf


class EnergyAttributeInstrument(_Strict):
    """A contractual instrument for market-based Scope 2 (GHG Protocol Scope 2 Guidance, 2015, ch. 7:
    RECs, PPAs, green tariffs, supplier-specific factors): ``mwh`` over ``[period_start, period_end)``
    (pro rata over a report's period; the whole amount when no period is given)."""

    id: str = Field(min_length=1)
    kind: Literal["REC", "PPA", "green_tariff", "supplier_specific"]
    mwh: PositiveFloat
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    emission_factor_kg_per_mwh: NonNegFloat = 0.0
    source: str = Field(min_length=1, description="certificate registry, contract, or supplier disclosure")


class CarbonSection(_Strict):
    """Carbon accounting: budgets (kg), an internal carbon price ($/t), the default grid intensity
    with its source, and market-based instruments (GHG Protocol Scope 2 Guidance, 2015)."""

    daily_budget_kg: NonNegFloat | None = None
    monthly_budget_kg: NonNegFloat | None = None
    internal_price_usd_per_t: NonNegFloat = 0.0
    default_intensity_kg_per_mwh: NonNegFloat
    intensity_source: str = Field(min_length=1, description="where the default factor comes from")
    # Market-based Scope 2: what the site's instruments cover, and the residual mix for the rest.
    instruments: list[EnergyAttributeInstrument] = Field(default_factory=list)
    residual_mix_kg_per_mwh: NonNegFloat | None = None
    residual_mix_source: str | None = None


class EconomicsSection(_Strict):
    """Mining economics: hashprice ($ per PH/s per day) with its source, and the pool fee (%)."""

    hashprice_usd_per_ph_day: NonNegFloat
    hashprice_source: str = "profile"
    pool_fee_pct: float = Field(default=2.0, ge=0, lt=100)


class SiteProfile(_Strict):
    """A whole site profile, validated: every section, cross-references between them checked."""

    site: SiteSection
    grid: GridSection
    dr: DRSection = DRSection()
    miner_groups: list[MinerGroup] = Field(min_length=1)
    renewables: list[RenewableSource] = Field(default_factory=list)
    receptors: list[Receptor] = Field(default_factory=list)
    carbon: CarbonSection
    economics: EconomicsSection
    compute: ComputeSection | None = None  # GPU clusters and workloads (issue 16)
    # The site's revenue or check meter over Modbus TCP (``drivers.modbus_meter.MeterConfig``:
    # host, port, registers {address, table, data_type, word_order, scale_to_kw, import_sign,
    # device_id}, poll_s, max_age_s, ...); checked field by field when the daemon starts.
    site_meter: dict[str, Any] | None = None
    ancillary: AncillarySection | None = None  # issue 15: reserves as a Load Resource

    @model_validator(mode="after")
    def _references(self) -> "SiteProfile":
        group_ids = [g.id for g in self.miner_groups]
        _require_unique("miner_groups", group_ids)
        _require_unique("renewables", [r.id for r in self.renewables])
        _require_unique("receptors", [r.id for r in self.receptors])
        cluster_ids = [c.id for c in self.compute.clusters] if self.compute else []
        _require_unique("miner groups and compute clusters", group_ids + cluster_ids)
        for receptor in self.receptors:
            unknown = (set(receptor.attenuation_db) | set(receptor.distance_m)) - set(group_ids) - set(cluster_ids)
            if unknown:
                raise ValueError(f"receptor {receptor.id!r} names unknown miner groups {sorted(unknown)}")
            # Every source must be placed: a group left out was silently silent at the receptor (a newcomer's
            # plan ran 45 % more units at night). An inaudible source says so: attenuation_db {id: .inf}.
            loud_clusters = [c.id for c in self.compute.clusters if c.cooling_sound_power_dba > 0] if self.compute else []
            missing = [g for g in group_ids + loud_clusters
                       if g not in receptor.attenuation_db and g not in receptor.distance_m]
            if missing:
                raise ValueError(f"receptor {receptor.id!r}: no distance_m or attenuation_db for {missing} "
                                 "(give one for every miner group and every cluster with cooling sound; "
                                 "attenuation_db: {id: .inf} for a source it cannot hear)")
        if self.ancillary is not None:
            unknown = set(self.ancillary.groups) - set(group_ids)
            if unknown:
                raise ValueError(f"ancillary.groups names unknown miner groups {sorted(unknown)}")
        return self

    @property
    def site_id(self) -> str:
        """The site's identifier on the wire (MQTT topic prefix)."""
        if self.site.id:
            return self.site.id
        return re.sub(r"[^a-z0-9]+", "_", self.site.name.lower()).strip("_") or "site"

    @property
    def tz(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.site.timezone)

    @property
    def full_load_kw(self) -> float:
        """Site load with every unit in its highest-power mode."""
        return sum(g.units * max(m.power_kw for m in g.modes) for g in self.miner_groups)

    def group(self, group_id: str) -> MinerGroup:
        """The miner group called ``group_id``.

        Raises
        ------
        ValueError
            No such group (the message names the groups there are).
        """
        for group in self.miner_groups:
            if group.id == group_id:
                return group
        raise ValueError(f"group {group_id!r}: not in the profile (groups: {', '.join(g.id for g in self.miner_groups)})")

    def miner_ids(self) -> dict[str, str]:
        """Miner id → group id for every unit: ``<group>-<n>``, n from 1, zero-padded to the width
        of the group's unit count (``air-0001`` … ``air-7200``). The one naming rule: the fleet,
        the drivers, the simulators and the input checks all address miners by it."""
        ids: dict[str, str] = {}
        for group in self.miner_groups:
            width = len(str(group.units))
            ids.update({f"{group.id}-{i:0{width}d}": group.id for i in range(1, group.units + 1)})
        return ids


def geometric_attenuation_db(distance_m: float) -> float:
    """Point source over reflecting ground: A = 20·log10(r / 1 m) + 8 dB."""
    return 20.0 * math.log10(max(distance_m, 1.0)) + HEMISPHERICAL_SPREADING_DB


class ProfileError(ValueError):
    """A profile could not be loaded; the message names the file, the field path and the problem."""


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"{source}: invalid site profile ({error.error_count()} problem(s))"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<top level>"
        lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


def parse_profile(text: str, source: str = "<profile>") -> SiteProfile:
    """Validate YAML text; raise ProfileError naming ``source`` and every bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a site profile must be a YAML mapping, got {type(data).__name__}")
    try:
        return SiteProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_validation_error(source, exc)) from exc


def load_profile(path: str | Path) -> SiteProfile:
    """Load a profile file, or one of the bundled profiles by name (e.g. ``west_texas``)."""
    candidate = Path(path)
    if not candidate.exists() and not candidate.suffix:
        bundled = resources.files("hashflex.data").joinpath("profiles", f"{path}.yaml")
        if bundled.is_file():
            return parse_profile(bundled.read_text(encoding="utf-8"), source=f"bundled:{path}")
    try:
        text = candidate.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{candidate}: cannot read profile: {exc.strerror or exc}") from exc
    return parse_profile(text, source=str(candidate))


DEFAULT_PROFILE = "west_texas"


def profile_hash(profile: SiteProfile) -> str:
    """SHA-256 of the profile's canonical JSON: what the audit trail and reports cite."""
    return hashlib.sha256(profile.model_dump_json().encode("utf-8")).hexdigest()
