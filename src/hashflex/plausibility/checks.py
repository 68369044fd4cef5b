"""The plausibility checks: one pure function per inbound kind, applying :mod:`.bounds`.

:func:`check_plausible` dispatches a parsed message to its kind's check against a
:class:`PlausibilityContext` built from the site profile; :func:`check_price_value` and
:func:`filter_price_frame` apply the price bounds to one row and to a canonical price frame. The
rules are described in :mod:`hashflex.plausibility`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
from hashflex.messages.inbound import LoadForecastMessage
from hashflex.plausibility.bounds import (
    CARBON_MAX_KG_PER_MWH,
    DR_HORIZON_S,
    FUTURE_SKEW_S,
    HASHPRICE_MAX_USD_PER_PH_DAY,
    NOISE_MAX_DBA,
    NOISE_MIN_DBA,
    PRICE_CEILING_USD_MWH,
    PRICE_FLOOR_USD_MWH,
    PRICE_HORIZON_S,
    PRICE_INTERVAL_MAX_S,
    RENEWABLE_MARGIN,
    SITE_SCALE_MARGIN,
    STALENESS_S,
    TELEMETRY_MARGIN,
)
from hashflex.plausibility.load_forecast import load_forecast_fault
from hashflex.profile import SiteProfile

__all__ = ["PlausibilityContext", "check_plausible", "check_price_value", "filter_price_frame"]


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class PlausibilityContext:
    """What the checks need from the site profile, built once (:meth:`from_profile`).

    Attributes
    ----------
    site : str
        Site id (topic prefix).
    renewable_capacity_kw : Mapping[str, float]
        Nameplate per renewable source id (kW).
    miner_group : Mapping[str, str]
        Group per miner id (ids as :meth:`hashflex.profile.SiteProfile.miner_ids` names them).
    max_mode_power_kw, max_mode_hashrate_th_s : Mapping[str, float]
        Per group: the highest mode's power (kW) and hashrate (TH/s).
    receptor_ids : frozenset[str]
    site_scale_kw : float
        max(interconnection, full load) (kW).
    staleness_s : Mapping[str, float or None]
        Staleness window per kind (s; None: none). ``as_deploy``: the profile's backstop
        ``ancillary.max_hold_h`` × 3600 (a deployment that old had already ended).
    future_skew_s : float
        Clock-skew window (s).
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
        """Build from a validated profile.

        Parameters
        ----------
        profile : SiteProfile
        staleness_s : Mapping[str, float or None], optional
            Overrides of :data:`STALENESS_S` per kind (s); without one, ``as_deploy`` is the
            profile's ``ancillary.max_hold_h`` in seconds (the default backstop without a section).
        future_skew_s : float, default FUTURE_SKEW_S
            Clock-skew window (s).

        Returns
        -------
        PlausibilityContext
        """
        windows = dict(STALENESS_S)
        if profile.ancillary is not None:  # a deployment's hold ends at its backstop (issue 15, H1 finding 1)
            windows["as_deploy"] = float(profile.ancillary.max_hold_h) * 3600.0
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
    """One price row against the price bounds.

    Shared by MQTT ``in/price`` and the HTTP price feed so both apply the same numbers. Prices are
    about the future by nature, so ``interval_start`` has the price horizon, not the clock skew.
    Bounds: ERCOT offer floor and the −$251/MWh RT SPP floor (PUCT 25.505(g)(6), Nodal Protocols
    4.4.9, NPRR385); ceiling 4 × HCAP (see :mod:`hashflex.plausibility.bounds`).

    Parameters
    ----------
    price_usd_mwh : float
    interval_start, interval_end : datetime
        Aware.
    now : datetime
        Aware.
    stale_s : float or None, default STALENESS_S["price"]
        Staleness window on ``interval_end`` (s; None: none).

    Returns
    -------
    tuple[str, str, str] or None
        ``(rule, field, reason)``, or None when plausible.
    """
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
    """AS awards and deployments (issue 15): kW within the site's scale; a deployment may not be
    dated after the skew window, nor before its backstop (``ctx.staleness_s["as_deploy"]``, the
    profile's ``ancillary.max_hold_h``): one that old had already ended when it arrived, so it
    would bind nothing and is refused rather than acked as obeyed (H1 findings 1 and 2). A recall
    has no such window (refusing a recall keeps the cut, and a pending recall is dropped by the book
    at the same age). An award may be announced ahead like a DR event. The site's own rules
    (issuer, qualification, an award already ended) are the limits book's and the intake's."""
    upper = ctx.site_scale_kw * SITE_SCALE_MARGIN
    if isinstance(m, ASAwardMessage):
        return (_range("reserve_kw", "reserve_kw", m.reserve_kw, 0.0, upper, "kW")
                or _time("start", m.start, now, None, DR_HORIZON_S, "DR announcement horizon"))
    fault = (_range("deployed_kw", "deployed_kw", m.deployed_kw, 0.0, upper, "kW")
             or _time("issued_at", m.issued_at, now, None, ctx.future_skew_s))
    if fault is not None or m.recalled:
        return fault
    hold_s = ctx.staleness_s.get("as_deploy")
    age_s = (now - m.issued_at).total_seconds()
    if hold_s is not None and age_s >= hold_s:
        return ("stale", "issued_at",
                f"issued_at: {m.issued_at.isoformat()} is {age_s / 3600.0:,.2f} h old: a deployment is held at "
                f"most ancillary.max_hold_h ({hold_s / 3600.0:g} h) from its instruction, so this one had already "
                f"ended at {(m.issued_at + timedelta(seconds=hold_s)).isoformat()}, before it arrived; refused "
                "(it would bind nothing)")
    return None


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
    LoadForecastMessage: lambda message, now, context: load_forecast_fault(message, now),
}


def check_plausible(message: InboundMessage, now: datetime, context: PlausibilityContext,
                    topic: str | None = None) -> Rejection | None:
    """Check a parsed inbound message against the bounds of its kind.

    Pure and never raises: an unexpected error is itself a rejection (``rule="error"``), since a
    message that cannot be checked is not believed.

    Parameters
    ----------
    message : InboundMessage
    now : datetime
        Aware.
    context : PlausibilityContext
    topic : str, optional
        The topic it arrived on (for the rejection; default derived from the message).

    Returns
    -------
    Rejection or None
        None when plausible. The rejection's ``reason`` reads ``"<kind>: <field path>: <value> ...
        <bound>"``, its ``rule`` is ``"<rule>:<field>"`` (bounded set, for metrics), its ``payload``
        the message as JSON (cut to 200 characters).
    """
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
    """Split a canonical price frame (:mod:`hashflex.frames`) into its plausible rows.

    A bad row never removes a good one.

    Parameters
    ----------
    frame : pandas.DataFrame
        A canonical price frame.
    now : datetime
        Aware.
    stale_s : float or None, default STALENESS_S["price"]

    Returns
    -------
    kept : pandas.DataFrame
        The plausible rows (same columns, same order, values untouched).
    counts : dict[str, int]
        Dropped rows per ``"<rule>:<field>"``.
    reasons : list[str]
        The first few reasons in words (with the settlement point and interval).
    """
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
