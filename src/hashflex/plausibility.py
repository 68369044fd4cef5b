"""Plausibility bounds for every inbound kind: one table, one pure check.

A message can be well formed (:func:`hashflex.messages.parse_message` accepts it) and still be
impossible: a renewable reading of 1e308 kW, a price of −1e308 $/MWh, a noise reading dated 1970,
telemetry from a miner the site does not have. Believed, such values switch off protections or send
every solve to its fallback. :func:`check_plausible` rejects them, naming the field path, the rule and
the bound, *before* anything is stored or acted on. Values inside the bounds are never changed
(no clipping): a real −$251/MWh or $9,000/MWh interval is planned as it is.

Rules (the ``rule`` part of :attr:`Rejection.rule`, the metrics label ``reason`` is ``<rule>:<field>``):

- ``out_of_bounds``: a number outside ``[lower, upper]`` (the table :data:`BOUNDS`).
- ``unknown_id``: a series key the site profile does not have (renewable source, receptor, miner).
- ``stale``: the time the data is about is older than the kind's staleness window (:data:`STALENESS_S`).
- ``future``: a timestamp later than ``now`` plus the clock-skew window (:data:`FUTURE_SKEW_S`), or,
  for kinds that are legitimately about the future (prices, DR events), beyond their horizon.

Safety direction: DR events and manager limits bind however old they are (an event in force must be
enforced: when in doubt, curtail), so they have no staleness window; their numeric bounds only reject
values that could never restrict this site (e.g. an import limit above ten times its size), and a
noise cap override is bounded above only (a lower cap is more restrictive, hence safe).

Public API
----------
- :data:`BOUNDS` (tuple of :class:`Bound`), :func:`bounds_markdown` (the README table);
- :class:`PlausibilityContext` (``from_profile(profile)``: nameplates, miner ids, receptors, site size);
- :func:`check_plausible` ``(message, now, context) -> Rejection | None`` (pure, never raises);
- :func:`check_price_value` (one price row, shared with the HTTP price feed) and
  :func:`filter_price_frame` (drop implausible rows of a canonical price frame, keep the rest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from hashflex.messages import (
    ASAwardMessage,
    ASDeployMessage,
    CarbonIntensityMessage,
    DREventMessage,
    HashpriceMessage,
    InboundMessage,
    LimitsChangeMessage,
    NoiseMessage,
    PriceMessage,
    Rejection,
    RenewableMessage,
    TelemetryMessage,
    Topics,
)
from hashflex.profile import SiteProfile

__all__ = [
    "BOUNDS",
    "Bound",
    "FUTURE_SKEW_S",
    "PlausibilityContext",
    "STALENESS_S",
    "bounds_markdown",
    "check_plausible",
    "check_price_value",
    "filter_price_frame",
]

# --------------------------------------------------------------------------- the numbers

# ERCOT prices. Energy offer floor −$250/MWh (PUCT Subst. R. 25.505(g)(6); ERCOT Nodal Protocols
# 4.4.9, energy offer curves). The bound is −$251/MWh, the administrative Real-Time SPP floor that
# NPRR385 set out for Resource Nodes, Hubs and Load Zones (ERCOT QMWG, Dec 2011, which also notes
# that DAM and RT prices below −$251 occurred in the early nodal market through congestion). A
# price below it is rejected, never clipped: the interval is then planned as unknown (the forecast's
# fallbacks curtail), the safe side. −251 itself is accepted. System-wide offer cap HCAP
# $5,000/MWh (PUCT 25.505(g)(6)(B), since 2022; $9,000 before). A Real-Time SPP adds the ORDC
# reserve price adder (RTORPA) and the reliability deployment adder (RTRDP) to the LMP, and binding
# constraints (shadow price caps) move nodal prices further, so an SPP can exceed HCAP; $20,000/MWh
# is four times HCAP and more than twice the old $9,000 cap that settled prices reached (Feb 2021).
# Anything above is a unit or encoding error, not a market outcome.
PRICE_FLOOR_USD_MWH = -251.0
PRICE_CEILING_USD_MWH = 20_000.0
PRICE_INTERVAL_MAX_S = 86_400.0  # one day: ERCOT's longest product is the hourly DAM interval
PRICE_HORIZON_S = 7 * 86_400.0  # DAM posts tomorrow ~13:30 CPT; forecasts may reach the 72 h horizon

# Renewables: a measurement or forecast up to nameplate plus 10 % (a wind farm can briefly run over
# its rating; an inverter-limited PV plant cannot). Above that it is a unit error (W vs kW) or junk.
RENEWABLE_MARGIN = 1.10

# Sound level meters: IEC 61672-1 class 1 meters cover a linear operating range of roughly
# 20–140 dB(A) (the standard fixes tolerances, the maker states the range; 140 dB is also the
# threshold of pain). A reading outside cannot come from a working class 1 or 2 meter.
NOISE_MIN_DBA = 20.0
NOISE_MAX_DBA = 140.0

# Grid carbon intensity: the dirtiest fossil units emit ~1,000–1,200 kg CO2/MWh (lignite, old oil
# peakers: heat rate × emission factor, EPA emission factors for GHG inventories; IPCC AR5 WG3
# Annex III, coal 740–910 g/kWh direct). 2,000 kg/MWh leaves margin for marginal-emission estimates.
CARBON_MAX_KG_PER_MWH = 2_000.0

# Hashprice (USD per PH/s per day): the bundled 2020–2025 network data (data/bitcoin) peaks at
# ~$405/PH/day (Oct 2021, subsidy only); Dec 2017 was a few thousand. $10,000 is far above both.
HASHPRICE_MAX_USD_PER_PH_DAY = 10_000.0

# Telemetry: a miner's power and hashrate up to 1.5 × the highest mode of its group (overclocking,
# PSU losses, meter error) — more is a unit error or another machine.
TELEMETRY_MARGIN = 1.5

# DR events and manager limits: kW figures up to ten times the site (max of interconnection and full
# load); beyond that they could never bind and are most likely a unit error. DR events may be
# announced ahead, but not by more than a year (the longest ERCOT ERS standard contract term is four
# months).
SITE_SCALE_MARGIN = 10.0
DR_HORIZON_S = 366 * 86_400.0

# Clock skew: a reading may be dated at most this far after our clock (NTP-synced devices differ by
# milliseconds; 120 s allows an unsynced logger). Later than that is a bad clock.
FUTURE_SKEW_S = 120.0

# Staleness per kind (seconds; None: no limit). Real-time readings are useless for control after
# minutes, but a broker queues QoS 1 messages across an outage, so the windows leave room for a
# catch-up; older data is rejected (and recorded with the rejection) rather than taken as current.
STALENESS_S: Mapping[str, float | None] = {
    "price": 7 * 86_400.0,  # interval_end; allows a week's backfill after a feed outage
    "renewable": 3_600.0,
    "noise": 3_600.0,  # plus the reading's own averaging_s
    "carbon": 86_400.0,
    "hashprice": 7 * 86_400.0,  # daily indices, weekends, holidays
    "telemetry": 600.0,
    "dr": None,  # an event in force binds however old its start (when in doubt, curtail)
    "limits": None,  # likewise a manager's limit
}

_NOTES = {
    "price": "ERCOT offer floor −$250 (PUCT 25.505(g)(6), Nodal Protocols 4.4.9) and the −$251 RT SPP floor "
             "of NPRR385; ceiling 4 × HCAP $5,000 (PUCT 25.505(g)(6)(B)) for ORDC/RDPA adders and congestion",
}


@dataclass(frozen=True)
class Bound:
    """One row of the table: ``kind.field`` must lie in ``[lower, upper]`` (``None``: open side).

    ``upper_from`` names a context figure the upper bound is a multiple of (``upper`` is then the
    multiplier), e.g. the renewable source's nameplate. ``source`` says where the number comes from.
    """

    kind: str
    field: str
    lower: float | None
    upper: float | None
    unit: str
    source: str
    upper_from: str | None = None


BOUNDS: tuple[Bound, ...] = (
    Bound("price", "price_usd_mwh", PRICE_FLOOR_USD_MWH, PRICE_CEILING_USD_MWH, "$/MWh", _NOTES["price"]),
    Bound("price", "interval_end − interval_start", None, PRICE_INTERVAL_MAX_S, "s",
          "longest ERCOT settlement interval is the 1 h DAM hour; a day allows other markets"),
    Bound("price", "interval_start − now", None, PRICE_HORIZON_S, "s",
          "DAM for the next day posts ~13:30 CPT; planning horizon ≤ 72 h"),
    Bound("renewable", "power_kw", 0.0, RENEWABLE_MARGIN, "kW", "nameplate (profile renewables[].capacity_kw) "
          "+ 10 %; source_id must be a profile renewable", upper_from="capacity_kw"),
    Bound("renewable", "forecast.power_kw", 0.0, RENEWABLE_MARGIN, "kW", "as power_kw", upper_from="capacity_kw"),
    Bound("noise", "laeq_dba", NOISE_MIN_DBA, NOISE_MAX_DBA, "dB(A)",
          "class 1 sound level meter range (IEC 61672-1 instruments: ~20–140 dB(A)); receptor_id must be a "
          "profile receptor"),
    Bound("carbon", "intensity_kg_per_mwh", 0.0, CARBON_MAX_KG_PER_MWH, "kg CO2/MWh",
          "dirtiest fossil units ~1,000–1,200 kg/MWh (EPA emission factors, IPCC AR5 Annex III)"),
    Bound("hashprice", "hashprice_usd_per_ph_day", 0.0, HASHPRICE_MAX_USD_PER_PH_DAY, "$/PH/day",
          "bundled network data 2020–2025 peaks at ~$405/PH/day (Oct 2021)"),
    Bound("telemetry", "power_kw", 0.0, TELEMETRY_MARGIN, "kW", "1.5 × the group's highest mode power; "
          "miner_id must be a profile miner (SiteProfile.miner_ids)", upper_from="max_mode_power_kw"),
    Bound("telemetry", "hashrate_th_s", 0.0, TELEMETRY_MARGIN, "TH/s", "1.5 × the group's highest mode hashrate",
          upper_from="max_mode_hashrate_th_s"),
    Bound("dr", "import_limit_kw / shed_kw / baseline_kw", 0.0, SITE_SCALE_MARGIN, "kW",
          "10 × site size (max of interconnection and full load): above, it can never bind",
          upper_from="site_scale_kw"),
    Bound("dr", "start − now", None, DR_HORIZON_S, "s", "announced at most a year ahead; no staleness "
          "(an event in force binds)"),
    Bound("limits", "import_limit_kw", 0.0, SITE_SCALE_MARGIN, "kW", "10 × site size", upper_from="site_scale_kw"),
    Bound("limits", "noise_caps.cap_dba", None, NOISE_MAX_DBA, "dB(A)",
          "meter range; no lower bound (a lower cap only restricts)"),
    Bound("limits", "carbon_budget.budget_kg", 0.0, SITE_SCALE_MARGIN, "kg",
          "10 × what the site can emit in the period (site size × hours × 2 t/MWh)",
          upper_from="max_emissions_kg"),
)
"""The one table of plausibility bounds (timestamps: :data:`STALENESS_S`, :data:`FUTURE_SKEW_S`)."""


def bounds_markdown() -> str:
    """The table as Markdown (README): every bound, then the time windows per kind."""
    def num(value: float | None, upper_from: str | None = None) -> str:
        if value is None:
            return "—"
        text = f"{value:,.2f}".rstrip("0").rstrip(".")
        return f"{text} × {upper_from}" if upper_from else text

    lines = ["| kind | field | lower | upper | unit | source / why |", "| --- | --- | --- | --- | --- | --- |"]
    for b in BOUNDS:
        lines.append(f"| {b.kind} | {b.field} | {num(b.lower)} | {num(b.upper, b.upper_from)} | {b.unit} | {b.source} |")
    lines.append(f"| readings¹ | timestamp − now | — | {FUTURE_SKEW_S:.0f} | s | clock skew window |")
    for kind, window in STALENESS_S.items():
        shown = "none (binds however old)" if window is None else f"{window:,.0f}"
        lines.append(f"| {kind} | now − observed time | — | {shown} | s | staleness window |")
    lines.append("")
    lines.append("¹ renewable, noise, carbon, hashprice and telemetry `timestamp`, price `published_at`, limits "
                 "`issued_at`; prices and DR events are about the future and have the horizons above. "
                 "Also rejected: a renewable `source_id`, noise `receptor_id` or telemetry `miner_id` the "
                 "profile does not have.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class PlausibilityContext:
    """What the checks need from the site profile, built once (:meth:`from_profile`).

    ``renewable_capacity_kw``: nameplate per renewable source id; ``miner_group``: group per miner id
    (ids as :meth:`hashflex.profile.SiteProfile.miner_ids` names them);
    ``max_mode_power_kw`` / ``max_mode_hashrate_th_s``: per group; ``receptor_ids``;
    ``site_scale_kw``: max(interconnection, full load) in kW. Windows in seconds.
    """

    site: str
    renewable_capacity_kw: Mapping[str, float]
    miner_group: Mapping[str, str]
    max_mode_power_kw: Mapping[str, float]
    max_mode_hashrate_th_s: Mapping[str, float]
    receptor_ids: frozenset[str]
    site_scale_kw: float
    staleness_s: Mapping[str, float | None] = field(default_factory=lambda: dict(STALENESS_S))
    future_skew_s: float = FUTURE_SKEW_S

    @classmethod
    def from_profile(cls, profile: SiteProfile, *, staleness_s: Mapping[str, float | None] | None = None,
                     future_skew_s: float = FUTURE_SKEW_S) -> PlausibilityContext:
        """Build from a validated profile; ``staleness_s`` overrides windows per kind."""
        windows = dict(STALENESS_S)
        windows.update(staleness_s or {})
        return cls(
            site=profile.site_id,
            renewable_capacity_kw={r.id: r.capacity_kw for r in profile.renewables},
            miner_group=profile.miner_ids(),
            max_mode_power_kw={g.id: max(m.power_kw for m in g.modes) for g in profile.miner_groups},
            max_mode_hashrate_th_s={g.id: max(m.hashrate_th_s for m in g.modes) for g in profile.miner_groups},
            receptor_ids=frozenset(r.id for r in profile.receptors),
            site_scale_kw=max(profile.grid.import_limit_kw, profile.full_load_kw),
            staleness_s=windows,
            future_skew_s=future_skew_s,
        )


# --------------------------------------------------------------------------- checks

_Fault = tuple[str, str, str]  # (rule, field for the metrics label, reason in words)


def _range(field_path: str, label: str, value: float, lower: float | None, upper: float | None,
           unit: str) -> _Fault | None:
    """``value`` outside ``[lower, upper]`` (NaN is outside everything)."""
    if not math.isfinite(value) or (lower is not None and value < lower) or (upper is not None and value > upper):
        lo = "−∞" if lower is None else f"{lower:g}"
        hi = "∞" if upper is None else f"{upper:g}"
        return ("out_of_bounds", label, f"{field_path}: {value!r} {unit} is outside the plausible range "
                                        f"[{lo}, {hi}] {unit}")
    return None


def _time(field_path: str, at: datetime, now: datetime, stale_s: float | None, future_s: float | None,
          horizon_what: str = "clock-skew window") -> _Fault | None:
    age_s = (now - at).total_seconds()
    if future_s is not None and -age_s > future_s:
        return ("future", field_path, f"{field_path}: {at.isoformat()} is {-age_s:.0f} s after now "
                                      f"({now.isoformat()}), beyond the {future_s:.0f} s {horizon_what}")
    if stale_s is not None and age_s > stale_s:
        return ("stale", field_path, f"{field_path}: {at.isoformat()} is {age_s:.0f} s old, older than the "
                                     f"{stale_s:.0f} s staleness window")
    return None


def check_price_value(price_usd_mwh: float, interval_start: datetime, interval_end: datetime, now: datetime,
                      stale_s: float | None = STALENESS_S["price"]) -> _Fault | None:
    """One price row against the price bounds: ``(rule, field, reason)`` or None when plausible.

    Shared by MQTT ``in/price`` and the HTTP price feed so both apply the same numbers. Prices are
    about the future by nature, so ``interval_start`` has the price horizon, not the clock skew."""
    return (_range("price_usd_mwh", "price_usd_mwh", price_usd_mwh, PRICE_FLOOR_USD_MWH, PRICE_CEILING_USD_MWH,
                   "$/MWh")
            or _range("interval_end", "interval_end", (interval_end - interval_start).total_seconds(), None,
                      PRICE_INTERVAL_MAX_S, "s after interval_start")
            or _time("interval_start", interval_start, now, None, PRICE_HORIZON_S, "price horizon")
            or _time("interval_end", interval_end, now, stale_s, None))


def _price(m: PriceMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    return (check_price_value(m.price_usd_mwh, m.interval_start, m.interval_end, now, ctx.staleness_s.get("price"))
            or (_time("published_at", m.published_at, now, None, ctx.future_skew_s)
                if m.published_at is not None else None))


def _renewable(m: RenewableMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    capacity = ctx.renewable_capacity_kw.get(m.source_id)
    if capacity is None:
        known = ", ".join(sorted(ctx.renewable_capacity_kw)) or "none"
        return ("unknown_id", "source_id", f"source_id: {m.source_id!r} is not a renewable source of the profile "
                                           f"(known: {known})")
    upper = capacity * RENEWABLE_MARGIN
    fault = _range("power_kw", "power_kw", m.power_kw, 0.0, upper, "kW") or _time(
        "timestamp", m.timestamp, now, ctx.staleness_s.get("renewable"), ctx.future_skew_s)
    if fault is not None:
        return fault
    for i, point in enumerate(m.forecast or ()):
        fault = (_range(f"forecast.{i}.power_kw", "forecast.power_kw", point.power_kw, 0.0, upper, "kW")
                 or _time(f"forecast.{i}.interval_start", point.interval_start, now, None, PRICE_HORIZON_S,
                          "forecast horizon"))
        if fault is not None:
            return fault[0], fault[1].replace(f".{i}.", "."), fault[2]  # label without the index (cardinality)
    return None


def _noise(m: NoiseMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    if m.receptor_id not in ctx.receptor_ids:
        known = ", ".join(sorted(ctx.receptor_ids)) or "none"
        return ("unknown_id", "receptor_id", f"receptor_id: {m.receptor_id!r} is not a receptor of the profile "
                                             f"(known: {known})")
    stale = ctx.staleness_s.get("noise")
    return (_range("laeq_dba", "laeq_dba", m.laeq_dba, NOISE_MIN_DBA, NOISE_MAX_DBA, "dB(A)")
            or _time("timestamp", m.timestamp, now, None if stale is None else stale + m.averaging_s,
                     ctx.future_skew_s))


def _carbon(m: CarbonIntensityMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    return (_range("intensity_kg_per_mwh", "intensity_kg_per_mwh", m.intensity_kg_per_mwh, 0.0,
                   CARBON_MAX_KG_PER_MWH, "kg/MWh")
            or _time("timestamp", m.timestamp, now, ctx.staleness_s.get("carbon"), ctx.future_skew_s))


def _hashprice(m: HashpriceMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    return (_range("hashprice_usd_per_ph_day", "hashprice_usd_per_ph_day", m.hashprice_usd_per_ph_day, 0.0,
                   HASHPRICE_MAX_USD_PER_PH_DAY, "$/PH/day")
            or _time("timestamp", m.timestamp, now, ctx.staleness_s.get("hashprice"), ctx.future_skew_s))


def _telemetry(m: TelemetryMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    group = ctx.miner_group.get(m.miner_id)
    if group is None:
        return ("unknown_id", "miner_id", f"miner_id: {m.miner_id!r} is not a miner of the profile "
                                          f"({len(ctx.miner_group)} known, ids <group>-<n>)")
    return (_range("power_kw", "power_kw", m.power_kw, 0.0, ctx.max_mode_power_kw[group] * TELEMETRY_MARGIN, "kW")
            or _range("hashrate_th_s", "hashrate_th_s", m.hashrate_th_s, 0.0,
                      ctx.max_mode_hashrate_th_s[group] * TELEMETRY_MARGIN, "TH/s")
            or _time("timestamp", m.timestamp, now, ctx.staleness_s.get("telemetry"), ctx.future_skew_s))


def _dr(m: DREventMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    upper = ctx.site_scale_kw * SITE_SCALE_MARGIN
    for name in ("import_limit_kw", "shed_kw", "baseline_kw"):
        value = getattr(m, name)
        fault = None if value is None else _range(name, name, value, 0.0, upper, "kW")
        if fault is not None:
            return fault
    return _time("start", m.start, now, ctx.staleness_s.get("dr"), DR_HORIZON_S, "DR announcement horizon")


def _limits(m: LimitsChangeMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    upper = ctx.site_scale_kw * SITE_SCALE_MARGIN
    if m.import_limit_kw is not None and (fault := _range("import_limit_kw", "import_limit_kw", m.import_limit_kw,
                                                          0.0, upper, "kW")):
        return fault
    for i, cap in enumerate(m.noise_caps or ()):
        if fault := _range(f"noise_caps.{i}.cap_dba", "noise_caps.cap_dba", cap.cap_dba, None, NOISE_MAX_DBA,
                           "dB(A)"):
            return fault
    if m.carbon_budget is not None:
        hours = 24.0 if m.carbon_budget.period == "day" else 31 * 24.0
        max_kg = ctx.site_scale_kw / 1000.0 * hours * CARBON_MAX_KG_PER_MWH * SITE_SCALE_MARGIN
        if fault := _range("carbon_budget.budget_kg", "carbon_budget.budget_kg", m.carbon_budget.budget_kg, 0.0,
                           max_kg, "kg"):
            return fault
    return _time("issued_at", m.issued_at, now, ctx.staleness_s.get("limits"), ctx.future_skew_s)


def _as(m: ASAwardMessage | ASDeployMessage, now: datetime, ctx: PlausibilityContext) -> _Fault | None:
    """AS awards and deployments (issue 15): kW within the site's scale; a deployment binds however
    old it is (shedding is the safe direction) and may not be dated after the skew window; an award
    may be announced ahead like a DR event."""
    upper = ctx.site_scale_kw * SITE_SCALE_MARGIN
    if isinstance(m, ASAwardMessage):
        return (_range("reserve_kw", "reserve_kw", m.reserve_kw, 0.0, upper, "kW")
                or _time("start", m.start, now, None, DR_HORIZON_S, "DR announcement horizon"))
    return (_range("deployed_kw", "deployed_kw", m.deployed_kw, 0.0, upper, "kW")
            or _time("issued_at", m.issued_at, now, None, ctx.future_skew_s))


_CHECKS: dict[type, Any] = {
    PriceMessage: _price,
    RenewableMessage: _renewable,
    NoiseMessage: _noise,
    CarbonIntensityMessage: _carbon,
    HashpriceMessage: _hashprice,
    TelemetryMessage: _telemetry,
    DREventMessage: _dr,
    LimitsChangeMessage: _limits,
    ASAwardMessage: _as,
    ASDeployMessage: _as,
}


def check_plausible(message: InboundMessage, now: datetime, context: PlausibilityContext,
                    topic: str | None = None) -> Rejection | None:
    """None when ``message`` is plausible at ``now`` (aware datetime), else a :class:`Rejection`.

    The rejection's ``reason`` reads ``"<kind>: <field path>: <value> ... <bound>"``, its ``rule``
    is ``"<rule>:<field>"`` (bounded set, for metrics), its ``payload`` the message as JSON.
    Pure and never raises: an unexpected error is itself a rejection (``rule="error"``), since a
    message that cannot be checked is not believed."""
    kind = getattr(message, "kind", "unknown")
    try:
        where = topic or Topics(context.site).topic_for(message)
    except Exception:  # noqa: BLE001 - a site id that is not a topic level; the topic is only a label
        where = f"in/{kind}"
    try:
        check = _CHECKS.get(type(message))
        if check is None:
            return Rejection(where, f"{kind}: no plausibility rule for {type(message).__name__}", "", kind,
                             "error:model")
        fault = check(message, now, context)
        if fault is None:
            return None
        rule, label, reason = fault
        return Rejection(where, f"{kind}: {reason}", _payload(message), kind, f"{rule}:{label}")
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        return Rejection(where, f"{kind}: plausibility check failed: {type(exc).__name__}: {exc}", "", kind,
                         "error:check")


def _payload(message: InboundMessage) -> str:
    try:
        text = message.model_dump_json()
    except Exception:  # noqa: BLE001
        return ""
    return text if len(text) <= 200 else text[:200] + "…"


# --------------------------------------------------------------------------- price frames


def filter_price_frame(frame: pd.DataFrame, now: datetime,
                       stale_s: float | None = STALENESS_S["price"]) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """Split a canonical price frame (``hashflex.frames``) into its plausible rows.

    Returns ``(kept, counts, reasons)``: the plausible rows (same columns, same order, values
    untouched), the number of dropped rows per ``"<rule>:<field>"``, and the first few reasons in
    words (with the settlement point and interval). A bad row never removes a good one."""
    if frame.empty:
        return frame, {}, []
    keep: list[bool] = []
    counts: dict[str, int] = {}
    reasons: list[str] = []
    rows = zip(frame["settlement_point"].tolist(), frame["market"].tolist(), frame["interval_start"].tolist(),
               frame["interval_end"].tolist(), frame["price_usd_mwh"].tolist(), strict=True)
    for point, market, start, end, price in rows:
        fault = check_price_value(float(price), pd.Timestamp(start).to_pydatetime(),
                                  pd.Timestamp(end).to_pydatetime(), now, stale_s)
        keep.append(fault is None)
        if fault is not None:
            label = f"{fault[0]}:{fault[1]}"
            counts[label] = counts.get(label, 0) + 1
            if len(reasons) < 5:
                reasons.append(f"price {point}/{market} {pd.Timestamp(start).isoformat()}: {fault[2]}")
    kept = frame.loc[keep]
    if len(kept) != len(frame):
        kept = kept.reset_index(drop=True)
        kept.attrs = dict(frame.attrs)
    return kept, counts, reasons
