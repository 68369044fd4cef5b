"""How the HTML report says a figure: plain-language labels, units and precision by key, the
definitions section, and :func:`fmt` (site-local times with offset, the unit's precision).

Seam: words and number formats of the page, shared by the tables (:mod:`.render`) and the plots
(:mod:`.plots`), with the page's context (site time zone, simulated or not) that ``to_html`` sets.
Split from ``report/render.py`` (issue 11).
"""

from __future__ import annotations

import contextvars
import math
import re
from typing import Any

from hashflex.report.provenance import local_label

__all__ = ["DEFINITIONS", "DIGITS", "EVENT_LABELS", "LABELS", "PATH_LABELS", "SIMULATED_TEXT", "UNITS", "digits_of",
           "fmt", "unit_of"]

_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")

SIMULATED_TEXT = "SIMULATED"
# what the page being rendered needs everywhere (site time zone, simulated or not): set by to_html
_TZ: contextvars.ContextVar[str] = contextvars.ContextVar("report_tz", default="UTC")
_SIM: contextvars.ContextVar[bool] = contextvars.ContextVar("report_simulated", default=False)

# key (last part of the dotted path) -> plain-language label
LABELS = {
    "intervals": "Control intervals recorded",
    "hours_covered": "Hours covered by measurements",
    "grid_import_mwh": "Electricity bought from the grid",
    "load_mwh": "Electricity used by the site",
    "renewable_generation_mwh": "On-site renewable generation",
    "renewable_used_mwh": "On-site renewable electricity used by the site",
    "renewable_share_annual_pct": "Renewable share, period total (generation ÷ use; can exceed 100 %)",
    "renewable_share_hourly_pct": "Renewable share, matched hour by hour",
    "location_based_kg": "CO₂ emissions, location-based (grid average where the site is)",
    "intervals_recorded_intensity": "Intervals with a recorded grid carbon intensity",
    "intervals_default_intensity": "Intervals using the profile's default carbon factor",
    "market_based_kg": "CO₂ emissions, market-based (after renewable energy certificates)",
    "market_method": "Market-based method",
    "recs_mwh": "Renewable energy certificates (RECs) for the period",
    "recs_applied_mwh": "RECs applied to grid electricity",
    "recs_source": "RECs file",
    "residual_mix_kg_per_mwh": "Residual-mix emission factor",
    "hashrate_ph_h": "Hashing done (PH·h: one petahash per second for one hour)",
    "location_kg_per_ph_h": "CO₂ per PH·h of hashing, location-based",
    "market_kg_per_ph_h": "CO₂ per PH·h of hashing, market-based",
    "daily_budget_kg": "Daily carbon budget",
    "monthly_budget_kg": "Monthly carbon budget",
    "used_kg": "Carbon emitted against the budget (location-based)",
    "limit_kg": "Carbon budget for the days in the period",
    "used_pct": "Share of the carbon budget used",
    "days_over": "Days over the carbon budget",
    "average_hashrate_ph_s": "Average hashrate",
    "average_j_per_th": "Average efficiency (energy per terahash; lower is better)",
    "night_definition": "Night hours",
    "hours": "Hours",
    "measured_laeq_dba": "Measured sound level (LAeq)",
    "model_laeq_dba": "Modelled sound level (LAeq)",
    "max_hourly_measured_dba": "Loudest measured hour",
    "lowest_cap_dba": "Strictest limit in force",
    "minutes_over_cap": "Minutes measured above the limit",
    "hours_over_cap": "Hours whose average was above the limit",
    "tolerance_kw": "Tolerance when checking demand-response limits",
    "threshold_usd_mwh": "High-price threshold",
    "curtailed_mwh": "Mining switched off (energy not used)",
    "intervals_without_full_load": "Intervals without a recorded full-load figure",
    "revenue_usd": "Mining revenue",
    "energy_cost_usd": "Electricity cost",
    "profit_usd": "Profit (revenue − electricity cost + net reserve payment; start costs not subtracted)",
    "reserve_payment_usd": "Reserve (ancillary service) awards paid",
    "reserve_clawback_usd": "Reserve charged back (awarded reserve not held)",
    "reserve_revenue_usd": "Net reserve payment",
    "average_energy_cost_usd_per_mwh": "Average electricity cost",
    "curtailment_hours": "Hours with any mining curtailed (> 1 % of full load)",
    "uncosted_intervals": "Intervals without an RT settlement point price, not costed",
    "uncosted_hours": "Hours not costed (no RT settlement point price)",
    "uncosted_grid_import_mwh": "Grid import not costed (no RT settlement point price)",
    "uncosted_revenue_usd": "Mining revenue of the intervals not costed (left out of profit)",
    "hour_start": "Hour starting",
    "interval_start": "Interval starting",
    "cap_dba": "Limit in force",
    "night": "Night",
    "day": "Day (site time)",
    "emissions_kg": "Emissions",
    "budget_kg": "Budget",
    "measured_kw": "Measured grid import",
    "limit_kw": "Limit",
    "baseline_kw": "Baseline",
    "requested_kw": "Reduction asked",
    "delivered_kw": "Reduction delivered",
    "compliant": "At or under the limit",
    "location_intensity_sources": "Carbon intensity used (intervals per source)",
    "notes": "Notes",
    "instruments_applied_mwh": "Grid electricity covered by contractual instruments (RECs, PPAs)",
    "residual_mix_source": "Residual-mix factor source",
    "carbon_free_share_annual_pct": "Carbon-free share, period total (on-site renewable used + instruments)",
    "carbon_free_share_hourly_pct": "Carbon-free share, matched hour by hour (on-site renewable only)",
    "metered_import_kw": "Metered grid import",
    "metered_import_kwh": "Metered grid import energy",
    "obligated_kw": "Reduction owed",
    "delivered_mw": "Delivered",
    "delivered_mwh": "Delivered energy",
    "assessed": "Assessed (after ramp)",
    "baseline_method": "Baseline used",
    "baseline_m8of10_kw": "Baseline, ERCOT middle 8-of-10",
    "baseline_meter_before_kw": "Baseline, meter before event",
    "total_mwh": "Mining switched off, all causes (energy not used)",
    "total_hours": "Hours curtailed, all causes",
    "cause": "Cause",
    "mwh": "Energy not used",
    "location_kg_per_mwh": "Grid carbon intensity",
    "intensity_source": "Intensity source",
    "simulated": "Simulated data",
    # ancillary services (issue 15)
    "deployment_count": "Ancillary service deployments in the period",
    "accepted_count": "Deployments accepted",
    "shortfall_count": "Deployments with a shortfall",
    "late_count": "Deployments not cut by the deadline",
    "late_arrival_count": "Deployments that arrived after their deadline",
    "above_award_count": "Deployments above the award in force",
    "amended_count": "Deployments amended (more than one revision)",
    "in_force_from": "Revision in force (held) from: its receipt at the site",
    "in_force_until": "Revision in force until",
    "in_force_h": "Held (from receipt)",
    "status": "Status",
    "cancelled_count": "Deployments cancelled before they bound",
    "covers_through_seq": "Trail covered through record",
    "trail_complete": "Trail complete (the backtest run ended)",
    "qualification": "AS qualification",
    "covers_through_at": "Trail covered through",
    "final_through": "Figures final through",
    "provisional_interval_count": "Intervals not yet final",
    "reserve_final_through": "Reserve money final through",
    "reserve_provisional_payment_usd": "Reserve payment not yet final",
    "reserve_estimated_hold_intervals": "Reserve held estimated from the metered load (interval-products)",
    "reserve_unverified_payment_usd": "Reserve payment for award time no measurement covers",
    "reserve_unverified_hold_h": "Award time no measurement covers (h)",
    "commanded_limit_kw": "Limit at the command",
    "awarded_latest_mw": "Award as last revised",
    "book_awarded_at_instruction_mw": "Reserve awarded at the instruction, all products (as the limits book recorded it)",
    "final": "Final",
    "arrived_late": "Arrived after its deadline",
    "arrival_delay_s": "Arrived after the instruction",
    "above_award_mw": "Deployed above the award",
    "award_obligation_mw": "Obligation against the award",
    "award_shortfall_mw": "Shortfall against the award",
    "deployment_id": "Deployment",
    "product": "Product",
    "issued_at": "Instructed at",
    "deployed_mw": "Deployed (reduction asked)",
    "awarded_mw": "Awarded reserve in force (as known at the instruction)",
    "delivered_vs_deployed_pct": "Delivered ÷ deployed (of what this deployment asked)",
    "delivered_vs_awarded_pct": "Delivered ÷ whole award in force (below 100 % when part of the award is deployed)",
    "shortfall_mw": "Shortfall (still over the limit)",
    "response_s": "Cut commanded after",
    "deadline": "Deadline",
    "within_deadline": "Cut commanded by the deadline",
    "recalled_at": "Recalled at",
    "metered_delivered_mw": "Metered reduction delivered",
    "metered_shortfall_mw": "Metered shortfall",
    "metered_response_s": "Metered import under the limit after (upper bound)",
    "measured_response_s": "Meter reading under the limit after",
    "award_id": "Award",
    "revision": "Revision",
    "award_start": "Award from",
    "award_end": "Award until",
    "reserve_mw": "Reserve awarded",
    "price_usd_mw_h": "Award price",
}
# labels that depend on the section (matched on the dotted path, most specific first)
PATH_LABELS = {
    "demand_response.high_price.intervals": "Intervals at or above the high-price threshold",
    "demand_response.high_price.hours": "Hours at or above the high-price threshold",
    "demand_response.high_price.curtailed_mwh": "Mining switched off during high prices (energy not used)",
}
EVENT_LABELS = {
    "event_id": "Event", "accepted": "Accepted by the site", "messages": "Messages received about it",
    "rejections": "Messages rejected (reason)", "program": "Programme", "issuer": "Issued by",
    "modification_number": "Latest modification", "start": "Start", "end": "End (or cancellation)",
    "cancelled_at": "Cancelled at", "received_at": "First received", "limit_kw": "Grid import limit asked",
    "intervals": "Control intervals during the event", "compliant_intervals": "Intervals at or under the limit",
    "compliance_pct": "Compliance (intervals at or under the limit)",
    "requested_reduction_kw": "Reduction asked (average, below baseline)",
    "delivered_pct": "Delivered ÷ asked",
    "ack_s": "Acknowledged after notification", "ack_at": "Acknowledged at", "ack_status": "Acknowledgement",
    "notification_at": "Notified at", "deployment_at": "Obligation began (start, or notice if later)",
    "first_setpoint_at": "First setpoint batch at", "first_setpoint_s": "First setpoint after the obligation began",
    "first_setpoint_source": "First setpoint batch from",
    "metered_under_limit_by": "Metered import under the limit by (a meter sample, else an interval's end: upper bound)",
    "metered_under_limit_s": "Metered import under the limit after the obligation began",
    "metered_resolution_s": "Meter resolution in the trail (s between samples, or one interval)",
    "metered_crossing_source": "Crossing measured by", "meter_samples": "Meter samples during the event",
    "synthetic": "Simulated or synthetic event", "duplicates": "Redeliveries (answered with the same ack)",
    "shed_kw": "Reduction asked", "baseline_method": "Baseline used", "ramp_minutes": "Ramp allowed (min)",
    "assessed_intervals": "Intervals assessed (after the ramp)",
    "obligated_reduction_kw": "Reduction owed (average, below baseline)",
    "delivered_reduction_kw": "Reduction delivered (average, below baseline)",
    "delivered_mwh": "Energy reduction delivered", "event_performance_factor": "Event performance factor",
    "pass": "PASS under the programme rule", "rule": "Programme rule applied",
    "worst_excess_kw": "Largest excess over the limit",
}
UNITS = (("_usd_mw_h", "$/MW per h"),  # AS award prices (issue 15)
         ("_usd_per_mwh", "$/MWh"), ("_usd_mwh", "$/MWh"), ("_kg_per_ph_h", "kg CO₂/PH·h"),
         ("_kg_per_mwh", "kg CO₂/MWh"), ("_mwh", "MWh"), ("_kg", "kg CO₂"),
         ("_pct", "%"), ("_usd", "$"), ("_dba", "dB(A)"),
         ("_kw", "kW"), ("_ph_h", "PH·h"), ("_ph_s", "PH/s"), ("_j_per_th", "J/TH"), ("_hours", "h"),
         ("hours_covered", "h"), ("_s", "s"), ("minutes_over_cap", "min"), ("_mw", "MW"), ("_kwh", "kWh"),
    ("_th_s", "TH/s"), ("total_hours", "h"))
DIGITS = (("_usd_mw_h", 2),  # AS award prices (issue 15)
          ("_dba", 1), ("_usd_mwh", 2), ("_usd_per_mwh", 2), ("_usd", 2), ("_kg_per_mwh", 1), ("_mwh", 3),
          ("_kwh", 1), ("_kg_per_ph_h", 4), ("_kg", 1), ("_kw", 1), ("_mw", 3), ("_pct", 1), ("_s", 0),
          ("_hours", 2), ("hours", 2), ("_factor", 3))

DEFINITIONS = [
    ("Where the numbers come from", "Every figure is recomputed from the site's tamper-evident audit trail "
     "(one measurement record per control interval). Anyone with a copy of the database can run "
     "'hashflex audit verify' and 'hashflex report' and get the same numbers."),
    ("Renewable share", "Period total: all on-site renewable generation divided by all electricity used. "
     "Hour by hour: each hour counts only the renewable energy produced in that same hour, up to that hour's use."),
    ("Location-based emissions", "Grid electricity × the grid's carbon intensity in that interval when recorded, "
     "otherwise the default factor of the site profile (its source is named)."),
    ("Market-based emissions", "Location-based emissions after renewable energy certificates cover part of the "
     "grid electricity; with no certificates the two are equal."),
    ("PH·h", "One petahash per second of hashing sustained for one hour (3.6 × 10^18 hashes)."),
    ("LAeq", "Energy-average sound level: a few loud minutes weigh more than many quiet ones."),
    ("Demand response", "Per event: when the site was notified, acknowledged, sent its first setpoints, and when "
     "the metered import was under the limit (an upper bound: the trail holds one meter mean per control "
     "interval). 'Owed' is the reduction below the baseline the event asks for, 'delivered' is baseline minus "
     "metered import. Baselines: the utility's own if sent, else ERCOT's middle 8-of-10 like days (10 most recent "
     "like days without an event, highest and lowest dropped, event-day adjusted), else the mean metered import "
     "in the hour before notice. Intervals inside the programme's ramp time are not assessed. A firm-limit event "
     "passes when every assessed interval is at or under the limit; a load-reduction event when delivered ÷ owed "
     "is at least 0.95."),
    ("Scope 2 emissions", "GHG Protocol Scope 2 Guidance: location-based = grid electricity × the grid's "
     "intensity in that interval (source named per hour); market-based = grid electricity covered by contractual "
     "instruments (RECs, PPAs) at their factor, the rest at the residual mix (or, lacking one, at the location "
     "intensity, said so). Both are always shown side by side."),
    ("Ancillary service deployments", "An ancillary service award (Responsive Reserve, ECRS, Non-Spin) is a "
     "promise to cut load when ERCOT deploys it. Per deployment: the reduction asked, the reserve awarded for that "
     "product, the reduction the fast path commanded (modelled import before, less the import the new setpoints "
     "leave) and any shortfall (idle draw and auxiliaries cannot be shed), how long after the instruction the cut "
     "was commanded against the product's deadline (RRS and ECRS 10 minutes, Non-Spin 30), and the metered import "
     "of the intervals after the deadline, each against the limit in force then (measured from the load before "
     "the instruction: reserve awarded later does not raise it, as the controller enforces it). The metered time under the limit is an upper bound: "
     "the trail holds one mean per control interval. An amended deployment has one row per revision, each with "
     "the reduction, limit and deadline of that instruction, in force from its arrival until the next one's. With "
     "deployments in force together, an interval is measured against the lowest limit of those due, its shortfall "
     "capped at their MW together and shared pro rata (the backtest's rule)."),
    ("Economics and the backtest summary", "Profit here is mining revenue − electricity cost + net reserve "
     "payment as recorded; it does not subtract miner start costs, which a backtest summary's profit_usd does "
     "(start_cost_usd there). Hours with any mining curtailed count whole intervals in which load was more than "
     "1 % below full load; a backtest summary's curtailed_hours weighs each interval by the share of units "
     "asleep (full-site hours), so it is smaller. The reserve charge-back is awarded reserve not held by "
     "running, shed-able load; a deployment's metered shortfall is reported per deployment, not charged. An "
     "interval without a real-time settlement point price is not costed (never at $0): electricity cost, "
     "profit and the average cost leave it out, and it is counted."),
    ("Curtailment by cause", "Energy not used (full load − load) in intervals run below full load, by the "
     "reason the plan gave for that interval, or the guard's fast-path action that cut inside it."),
    ("Time", "Times on this page are the site's local time with its offset from UTC; the JSON and CSV exports "
     "keep UTC."),
]


def unit_of(key: str) -> str:
    """The unit shown for a key, from its suffix (:data:`UNITS`): ``grid_import_mwh`` → ``MWh``.

    Parameters
    ----------
    key : str
        The last part of a figure's dotted key.

    Returns
    -------
    str
        Empty when the key has no known unit.
    """
    for suffix, unit in UNITS:
        if key.endswith(suffix):
            return unit
    return ""


def digits_of(key: str) -> int | None:
    """Decimals shown for a key, from its suffix (:data:`DIGITS`), or None.

    Parameters
    ----------
    key : str
        The last part of a figure's dotted key.

    Returns
    -------
    int or None
    """
    for suffix, digits in DIGITS:
        if key.endswith(suffix):
            return digits
    return None


def fmt(value: Any, key: str = "") -> str:
    """A value as the page shows it: local time with offset for ISO times, the unit's precision
    for numbers (from ``key``), yes/no, n/a for missing.

    Parameters
    ----------
    value : Any
        A JSON value.
    key : str
        Its key (unit and precision).

    Returns
    -------
    str
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        if isinstance(value, int):  # counts stay whole
            return f"{value:,}"
        digits = digits_of(key)
        if digits is not None:
            return f"{value:,.{digits}f}"
        text = f"{value:,.1f}" if abs(value) >= 1000 else f"{value:,.3f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, str) and _ISO.match(value):
        return local_label(value, _TZ.get())
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "; ".join(fmt(v, key) for v in value) or "none"
    return str(value)


def _label(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    if key in PATH_LABELS:
        return PATH_LABELS[key]
    if ".events." in key and last in EVENT_LABELS:
        return EVENT_LABELS[last]
    return LABELS.get(last, last.replace("_", " ").capitalize())

