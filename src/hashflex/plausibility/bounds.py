"""The plausibility numbers: one bound per input field, with where each number comes from.

:data:`BOUNDS` is the table (:class:`Bound` rows), :data:`STALENESS_S` and :data:`FUTURE_SKEW_S` the
time windows, :func:`bounds_markdown` the README table. The checks that apply them live in
:mod:`hashflex.plausibility.checks`; the rules are described in :mod:`hashflex.plausibility`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hashflex.profile.ancillary import DEFAULT_MAX_HOLD_H

__all__ = [
    "AS_DEPLOY_STALE_S",
    "BOUNDS",
    "CARBON_MAX_KG_PER_MWH",
    "DR_HORIZON_S",
    "FUTURE_SKEW_S",
    "HASHPRICE_MAX_USD_PER_PH_DAY",
    "NOISE_MAX_DBA",
    "NOISE_MIN_DBA",
    "PRICE_CEILING_USD_MWH",
    "PRICE_FLOOR_USD_MWH",
    "PRICE_HORIZON_S",
    "PRICE_INTERVAL_MAX_S",
    "RENEWABLE_MARGIN",
    "SITE_SCALE_MARGIN",
    "STALENESS_S",
    "TELEMETRY_MARGIN",
    "Bound",
    "bounds_markdown",
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

# AS deployments (issue 15): a deployment holds until its recall, at most the backstop
# ``ancillary.max_hold_h`` from its instruction (default 8 h, hashflex.profile.ancillary.DEFAULT_MAX_HOLD_H;
# the context takes the profile's value). One whose ``issued_at`` is that old had already ended when it
# arrived: it binds nothing, and acking it "obeyed" would be untrue (H1 finding 1), so it is refused.
AS_DEPLOY_STALE_S = DEFAULT_MAX_HOLD_H * 3600.0

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
    "as_award": None,  # an award in force binds however old its start (the book refuses one already ended)
    "as_deploy": AS_DEPLOY_STALE_S,  # issued_at; the profile's ancillary.max_hold_h (recalls: no window)
}

_NOTES = {
    "price": "ERCOT offer floor −$250 (PUCT 25.505(g)(6), Nodal Protocols 4.4.9) and the −$251 RT SPP floor "
             "of NPRR385; ceiling 4 × HCAP $5,000 (PUCT 25.505(g)(6)(B)) for ORDC/RDPA adders and congestion",
}


@dataclass(frozen=True)
class Bound:
    """One row of the table: ``kind.field`` must lie in ``[lower, upper]`` (None: open side).

    Attributes
    ----------
    kind, field : str
    lower, upper : float or None
        With ``upper_from``, ``upper`` is a multiplier of that context figure.
    unit : str
    source : str
        Where the number comes from.
    upper_from : str, optional
        A :class:`PlausibilityContext` figure, e.g. the renewable source's nameplate.
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
    Bound("as_award", "reserve_kw", 0.0, SITE_SCALE_MARGIN, "kW",
          "10 × site size (a unit error beyond); the site then refuses more than it is qualified for "
          "(profile ancillary.products.<P>.group_mw summed, capped by max_mw: refused:reserve_kw)",
          upper_from="site_scale_kw"),
    Bound("as_award", "start − now", None, DR_HORIZON_S, "s",
          "awarded at most a year ahead (day-ahead in practice); the site refuses one whose end has passed"),
    Bound("as_deploy", "deployed_kw", 0.0, SITE_SCALE_MARGIN, "kW",
          "10 × site size; the site then refuses more than the product's qualification (as reserve_kw: "
          "ERCOT cannot deploy a Load Resource beyond it) and 0 unless it is a recall (refused:deployed_kw)",
          upper_from="site_scale_kw"),
)
"""The one table of plausibility bounds (timestamps: :data:`STALENESS_S`, :data:`FUTURE_SKEW_S`)."""


def bounds_markdown() -> str:
    """The table as Markdown (README): every bound, then the time windows per kind.

    Returns
    -------
    str
    """
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
        why = "staleness window"
        if kind == "as_deploy":
            why = ("`issued_at` of a deployment (not a recall): its hold is over after ancillary.max_hold_h "
                   f"(default {DEFAULT_MAX_HOLD_H:g} h; the profile's value applies)")
        lines.append(f"| {kind} | now − observed time | — | {shown} | s | {why} |")
    lines.append("")
    lines.append("¹ renewable, noise, carbon, hashprice and telemetry `timestamp`, price `published_at`, limits "
                 "and AS deployment `issued_at`; prices, DR events and AS awards are about the future and have "
                 "the horizons above. Also rejected: a renewable `source_id`, noise `receptor_id` or telemetry "
                 "`miner_id` the profile does not have. A command (DR, limits, AS) refused by these bounds is "
                 "answered `rejected` and counted as `refused:<field>`.")
    return "\n".join(lines)
