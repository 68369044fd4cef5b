"""Write a report dict (see :mod:`hashflex.report`) as JSON, CSV or one self-contained HTML file.

- JSON: the dict as is (sorted keys, 2-space indent): byte-identical for the same database and period.
- CSV: two columns ``figure,value``; every leaf of the JSON, dotted keys, list items by index
  (``noise.receptors.maple_lane.hourly.3.cap_dba``).
- HTML: sections ``audit``, ``energy``, ``emissions``, ``efficiency``, ``noise``,
  ``demand-response``, ``economics``, ``definitions``; every scalar figure is a table row
  ``<tr data-figure="<dotted key>">`` with a plain-language label, value and unit; plots are PNGs
  (matplotlib, Agg backend) embedded as base64 ``data:`` URIs, each in ``<figure id="plot-...">``.
  The audit chain head hash and the profile hash(es) are printed at the top and in ``<meta>`` tags,
  with the signed head and its verification result when one was given.
- Times: the HTML shows the site's local time with its zone and offset (``2020-02-01 14:00 CST
  (UTC−06:00)``), plot axes too; JSON and CSV keep ISO UTC.
- Precision fits the instrument: dB(A) to 0.1, energy to the kWh (MWh with 3 decimals), money to
  $0.01 (the key's unit decides, :data:`hashflex.report.PRECISION`).
- A report on a simulated trail (``report.simulated``) says SIMULATED in its title, at the top of
  every section (``<p class="simulated">``), in the caption of every table and plot, and across
  every plot image.
"""

from __future__ import annotations

import base64
import contextvars
import csv
import html
import io
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from hashflex.report.provenance import local_label

__all__ = ["flatten", "render", "to_csv", "to_html", "to_json", "FORMATS"]

FORMATS = ("html", "json", "csv")
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")

SECTION_IDS = {"energy": "energy", "emissions": "emissions", "efficiency": "efficiency", "noise": "noise",
               "demand_response": "demand-response", "curtailment": "curtailment", "economics": "economics"}
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
    "profit_usd": "Profit (revenue − electricity cost)",
    "average_energy_cost_usd_per_mwh": "Average electricity cost",
    "curtailment_hours": "Hours with mining curtailed",
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
UNITS = (("_usd_per_mwh", "$/MWh"), ("_usd_mwh", "$/MWh"), ("_kg_per_ph_h", "kg CO₂/PH·h"),
         ("_kg_per_mwh", "kg CO₂/MWh"), ("_mwh", "MWh"), ("_kg", "kg CO₂"),
         ("_pct", "%"), ("_usd", "$"), ("_dba", "dB(A)"),
         ("_kw", "kW"), ("_ph_h", "PH·h"), ("_ph_s", "PH/s"), ("_j_per_th", "J/TH"), ("_hours", "h"),
         ("hours_covered", "h"), ("_s", "s"), ("minutes_over_cap", "min"), ("_mw", "MW"), ("_kwh", "kWh"),
    ("_th_s", "TH/s"), ("total_hours", "h"))
DIGITS = (("_dba", 1), ("_usd_mwh", 2), ("_usd_per_mwh", 2), ("_usd", 2), ("_kg_per_mwh", 1), ("_mwh", 3),
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
    ("Curtailment by cause", "Energy not used (full load − load) in intervals run below full load, by the "
     "reason the plan gave for that interval, or the guard's fast-path action that cut inside it."),
    ("Time", "Times on this page are the site's local time with its offset from UTC; the JSON and CSV exports "
     "keep UTC."),
]


# --------------------------------------------------------------------------- JSON / CSV


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a JSON value as (dotted key, value); empty lists/dicts as one leaf."""
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{i}")
    else:
        yield prefix, value


def to_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["figure", "value"])
    for key, value in flatten(report):
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        writer.writerow([key, "" if value is None else (str(value).lower() if isinstance(value, bool) else value)])
    return buffer.getvalue()


# --------------------------------------------------------------------------- HTML


def unit_of(key: str) -> str:
    for suffix, unit in UNITS:
        if key.endswith(suffix):
            return unit
    return ""


def digits_of(key: str) -> int | None:
    for suffix, digits in DIGITS:
        if key.endswith(suffix):
            return digits
    return None


def fmt(value: Any, key: str = "") -> str:
    """A value as the page shows it: local time with offset for ISO times, the unit's precision
    for numbers (from ``key``), yes/no, n/a for missing."""
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


def _figure_rows(section: dict[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> str:
    rows = []
    for key in section:
        value = section[key]
        full = f"{prefix}.{key}"
        if key in skip or (isinstance(value, list) and value and isinstance(value[0], dict)):
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            continue
        if isinstance(value, dict) and key not in ("location_intensity_sources",):
            rows.append(_figure_rows(value, full))
            continue
        rows.append(f'<tr data-figure="{html.escape(full)}"><th>{html.escape(_label(full))}</th>'
                    f'<td class="num">{html.escape(fmt(value, key))}</td><td>{html.escape(unit_of(key))}</td></tr>')
    return "\n".join(rows)


def _caption(text: str = "") -> str:
    """A table caption: SIMULATED first on a simulated report."""
    label = f'<span class="sim-tag">{SIMULATED_TEXT} DATA</span> ' if _SIM.get() else ""
    return f"<caption>{label}{html.escape(text)}</caption>" if (label or text) else ""


def _figures_table(section: dict[str, Any], prefix: str, skip: tuple[str, ...] = (), caption: str = "") -> str:
    return f'<table class="figures">{_caption(caption)}\n{_figure_rows(section, prefix, skip)}\n</table>'


def _table(rows: list[dict[str, Any]], columns: list[str], table_id: str, caption: str = "") -> str:
    if not rows:
        return f'<p id="{table_id}">No data.</p>'
    head = "".join(f"<th>{html.escape(_label(c))}{' (' + unit_of(c) + ')' if unit_of(c) else ''}</th>"
                   for c in columns)
    body = "\n".join("<tr>" + "".join(f'<td class="num">{html.escape(fmt(r.get(c), c))}</td>' for c in columns)
                     + "</tr>" for r in rows)
    return f'<table class="data" id="{table_id}">{_caption(caption)}<tr>{head}</tr>\n{body}\n</table>'


def _png(draw: Any, *, height_in: float = 3.4, time_axis: bool = True) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(11, height_in), dpi=90)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        if time_axis:
            tz = _TZ.get()
            ax.set_xlabel(f"site local time ({tz})")
            _local_axis(ax, tz)
        if _SIM.get():  # across the image, so a cropped or copied plot still says it
            fig.text(0.5, 0.5, SIMULATED_TEXT, fontsize=48, color="#c00000", alpha=0.15, ha="center", va="center",
                     rotation=20, transform=fig.transFigure)
            ax.set_title(f"{SIMULATED_TEXT} DATA", loc="left", fontsize=9, color="#c00000", fontweight="bold")
        if time_axis:
            fig.autofmt_xdate()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _local_axis(ax: Any, tz: str) -> None:
    import matplotlib.dates as mdates
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    locator = mdates.AutoDateLocator(tz=zone)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))


def _legend_outside(ax: Any, *extra_axes: Any) -> None:
    """One legend for the axes given, to the right of the plot (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    for other in extra_axes:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:  # below the axes, under the time labels: never over the data, never squeezing it
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.4), ncol=min(len(handles), 3),
                  fontsize=8, frameon=False)


def _plot(plot_id: str, caption: str, draw: Any, **kwargs: Any) -> str:
    data = _png(draw, **kwargs)
    tag = f"{SIMULATED_TEXT} DATA — " if _SIM.get() else ""
    text = tag + caption
    if data is None:
        return (f'<figure id="{plot_id}"><figcaption>{html.escape(text)} '
                f"(plot unavailable: matplotlib not installed)</figcaption></figure>")
    return (f'<figure id="{plot_id}"><img alt="{html.escape(text)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(text)}</figcaption></figure>")


def _times(rows: list[dict[str, Any]], key: str) -> list[Any]:
    import pandas as pd

    return [pd.Timestamp(r[key]).to_pydatetime() for r in rows]


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [math.nan if r.get(key) is None else float(r[key]) * scale for r in rows]


def _edges(rows: list[dict[str, Any]]) -> list[Any]:
    """Step edges: every interval start, then the last interval's end (so the last step shows)."""
    import pandas as pd

    return _times(rows, "interval_start") + [pd.Timestamp(rows[-1]["interval_end"]).to_pydatetime()]


def _step(ax: Any, rows: list[dict[str, Any]], values: list[float], **kwargs: Any) -> Any:
    return ax.stairs(values, _edges(rows), baseline=None, **kwargs)


def _shade_dr(ax: Any, events: list[dict[str, Any]]) -> None:
    import pandas as pd

    for k, event in enumerate(e for e in events if e.get("start") and e.get("end")):
        ax.axvspan(pd.Timestamp(event["start"]).to_pydatetime(), pd.Timestamp(event["end"]).to_pydatetime(),
                   color="#ffbf00", alpha=0.25, lw=0, label="DR event in force" if k == 0 else None)


def _price_axis(ax: Any, prices: list[float]) -> None:
    """Symmetric-log price axis: a single $5,000 spike does not flatten $20 hours (linear to ±$100)."""
    finite = [p for p in prices if math.isfinite(p)]
    if finite and (max(finite) > 300 or min(finite) < -100):
        ax.set_yscale("symlog", linthresh=100.0)
    ax.set_ylabel("$/MWh (symlog above $100)" if ax.get_yscale() == "symlog" else "$/MWh")


def _import_plot(intervals: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        edges = _edges(intervals)
        grid = [0.0 if math.isnan(v) else v for v in _series(intervals, "import_kw", 1e-3)]
        load = _series(intervals, "load_kw", 1e-3)
        behind = [max(l_ - g, 0.0) if not math.isnan(l_) else 0.0 for l_, g in zip(load, grid, strict=True)]
        _shade_dr(ax, events)
        ax.stairs(grid, edges, fill=True, color="#7f7f7f", alpha=0.8, label="grid import (metered; the limit applies)")
        ax.stairs([g + b for g, b in zip(grid, behind, strict=True)], edges, baseline=grid, fill=True,
                  color="#2ca02c", alpha=0.35, hatch="//",
                  label="on-site renewable used (behind the meter, not counted against the limit)")
        limit = _series(intervals, "import_limit_kw", 1e-3)
        if any(not math.isnan(v) for v in limit):
            ax.stairs(limit, edges, baseline=None, color="red", lw=1.4, label="import limit in force (plan)")
        ax.set_ylabel("MW (interval mean)")
        _legend_outside(ax)
    return _plot("plot-import", "Grid import against the import limit, with on-site renewable supply shown apart",
                 draw, height_in=3.8)


def _energy_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        grid, ren = _series(hourly, "grid_import_mwh"), _series(hourly, "renewable_used_mwh")
        width = 1 / 24 * 0.9
        ax.bar(t, grid, width=width, label="from the grid", color="#7f7f7f", align="edge")
        ax.bar(t, ren, width=width, bottom=grid, label="on-site renewable used", color="#2ca02c", align="edge")
        ax.plot(t, _series(hourly, "renewable_generation_mwh"), drawstyle="steps-post", color="#17becf",
                label="on-site renewable generated")
        ax.set_ylabel("MWh per hour")
        _legend_outside(ax)
    return _plot("plot-energy", "Electricity used per hour, by where it came from", draw)


def _emissions_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        ax.bar(_times(hourly, "hour_start"), _series(hourly, "location_kg"), width=1 / 24 * 0.9, align="edge",
               color="#8c564b", label="location-based")
        ax.set_ylabel("kg CO₂ per hour")
        _legend_outside(ax)
    return _plot("plot-emissions", "CO₂ emissions per hour (location-based)", draw)


def _noise_plot(receptor: str, hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        ax.plot(t, _series(hourly, "measured_laeq_dba"), marker="o", label="measured")
        ax.plot(t, _series(hourly, "model_laeq_dba"), linestyle="--", label="modelled")
        ax.plot(t, _series(hourly, "cap_dba"), drawstyle="steps-post", color="red", label="limit")
        ax.set_ylabel("dB(A), hourly LAeq")
        _legend_outside(ax)
    label = "Sound at " + receptor + (" (simulated sensor)" if _SIM.get() else "") + ": hourly level against its limit"
    return _plot(f"plot-noise-{receptor}", label, draw)


def _dr_plot(event: dict[str, Any], intervals: list[dict[str, Any]]) -> str:
    import pandas as pd

    rows = event["per_interval"]
    t0 = pd.Timestamp(rows[0]["interval_start"]) - pd.Timedelta(hours=1)
    t1 = pd.Timestamp(rows[-1]["interval_end"]) + pd.Timedelta(hours=1)
    around = [r for r in intervals if t0 <= pd.Timestamp(r["interval_start"]) < t1] or rows
    key = "import_kw" if around is not rows else "metered_import_kw"

    def draw(ax: Any) -> None:
        _shade_dr(ax, [event])
        _step(ax, around, _series(around, key), label="metered grid import", lw=1.6)
        _step(ax, rows, _series(rows, "limit_kw"), color="red", label="limit asked")
        _step(ax, rows, _series(rows, "baseline_kw"), linestyle=":", color="gray",
              label=f"baseline ({event.get('baseline_method')})")
        ax.set_ylabel("kW (interval mean)")
        _legend_outside(ax)
    return _plot(f"plot-dr-{event['event_id']}", f"Demand-response event {event['event_id']}: metered import against "
                 f"the limit and the baseline", draw)


def _curtailment_plot(per_day: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        import pandas as pd

        frame = pd.DataFrame(per_day).pivot_table(index="day", columns="cause", values="mwh", aggfunc="sum").fillna(0)
        bottom = [0.0] * len(frame)
        days = [str(d) for d in frame.index]  # site-local calendar days, as labels
        for cause in frame.columns:
            values = frame[cause].tolist()
            ax.bar(days, values, bottom=bottom, width=0.6, label=cause)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("MWh not used per day")
        ax.set_xlabel("site-local day")
        _legend_outside(ax)
    return _plot("plot-curtailment", "Mining switched off per site-local day, by cause", draw, time_axis=False)


def _economics_plot(hourly: list[dict[str, Any]], events: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        profit, total = [], 0.0
        for r in hourly:
            total += (r["revenue_usd"] or 0.0) - (r["energy_cost_usd"] or 0.0)
            profit.append(total)
        _shade_dr(ax, events)
        ax.plot(t, profit, color="#1f77b4", label="cumulative profit ($)")
        ax.set_ylabel("$")
        twin = ax.twinx()
        prices = _series(hourly, "price_usd_mwh")
        twin.plot(t, prices, drawstyle="steps-post", color="#ff7f0e", alpha=0.8, label="electricity price ($/MWh)")
        _price_axis(twin, prices)
        _legend_outside(ax, twin)
    return _plot("plot-economics", "Cumulative profit and the electricity price (hourly mean)", draw)


_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;
text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}table.data{font-size:.85rem}
caption{text-align:left;font-size:.85rem;color:#555;padding:.2rem 0}
.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}code{word-break:break-all}
.simulated,.sim-tag{color:#fff;background:#c00000;font-weight:bold;padding:.15rem .5rem;border-radius:3px}
p.simulated{display:block;margin:.4rem 0}.sim-tag{font-size:.75rem}
figure{margin:1rem 0}img{max-width:100%}table.side th,table.side td{min-width:9rem}"""


def _sim_banner(meta: dict[str, Any], *, detail: bool = False) -> str:
    if not meta.get("simulated"):
        return ""
    why = " " + html.escape((meta.get("provenance") or {}).get("detail", "")) if detail else ""
    return (f'<p class="simulated" data-simulated="true">{SIMULATED_TEXT} DATA — not measured at a real site.{why}'
            f"</p>")


def _audit_section(meta: dict[str, Any]) -> list[str]:
    audit = meta["audit"]
    status = ('<span class="ok">verified</span>' if audit["ok"]
              else f'<span class="bad">FAILED at record {audit["first_bad_seq"]}: '
                   f'{html.escape(audit["problem"])}</span>')
    signed = audit.get("signed_head")
    if signed is None:
        signed_row = ("not given (sign with <code>hashflex audit sign</code>, keep the line off the box, and pass "
                      "it to <code>hashflex report --signature</code>)")
    else:
        verdict = ('<span class="ok">matches: the trail up to the signed record is unchanged</span>' if signed["ok"]
                   else f'<span class="bad">FAILED: {html.escape(str(signed.get("problem")))}</span>')
        signed_row = f'<code>{html.escape(signed["signature"])}</code> (record {signed.get("signed_seq")}): {verdict}'
    return ['<section id="audit"><h2>Audit trail</h2>', _sim_banner(meta, detail=True),
            f"<p>Audit chain: {status} ({audit['records']} records).</p>",
            f'<table class="figures">{_caption("Evidence")}<tr data-figure="report.audit.head_hash"><th>Chain head '
            f'hash (record {audit.get("head_seq")})</th><td><code id="audit-head-hash">'
            f'{html.escape(str(audit.get("head_hash")))}</code></td></tr>',
            f'<tr data-figure="report.audit.signed_head"><th>Signed head</th><td id="signed-head">{signed_row}'
            f"</td></tr>",
            f'<tr data-figure="report.profile_hashes"><th>Site profile hash (in force during the period)</th><td>'
            f'<code id="profile-hash">{html.escape(", ".join(meta["profile_hashes"]) or "none recorded")}</code>'
            f"</td></tr></table>",
            "<p>To check: <code>hashflex audit verify --db &lt;database&gt;</code>, then "
            "<code>hashflex report --format json</code> for the same period gives these numbers.</p>"]


def _by_cause_table(by_cause: dict[str, dict[str, Any]]) -> str:
    if not by_cause:
        return '<p id="curtailment-by-cause">No curtailment in the period.</p>'
    body = "".join(f'<tr data-figure="curtailment.by_cause.{html.escape(cause)}"><th>{html.escape(cause)}</th>'
                   f'<td class="num">{html.escape(fmt(v.get("mwh"), "_mwh"))}</td>'
                   f'<td class="num">{html.escape(fmt(v.get("hours"), "hours"))}</td>'
                   f'<td class="num">{html.escape(fmt(v.get("intervals")))}</td></tr>' for cause, v in by_cause.items())
    return (f'<table class="data" id="curtailment-by-cause">{_caption("By cause, for the period")}<tr><th>Cause</th>'
            f"<th>Energy not used (MWh)</th><th>Hours curtailed</th><th>Intervals</th></tr>{body}</table>")


def _factor_table(hourly: list[dict[str, Any]]) -> str:
    """Per hour: import, factor, kg and the factor's source, sources keyed [S1].. and listed once."""
    keys: dict[str, str] = {}
    rows = []
    for r in hourly:
        source = str(r.get("intensity_source") or "unknown")
        key = keys.setdefault(source, f"S{len(keys) + 1}")
        rows.append({**r, "intensity_source": key})
    legend = "".join(f"<li><b>{k}</b>: {html.escape(s)}</li>" for s, k in keys.items())
    return (_table(rows, ["hour_start", "grid_import_mwh", "location_kg_per_mwh", "location_kg", "intensity_source"],
                   "emission-factors", "Location-based factor per hour (source key below)")
            + f'<ul id="factor-sources">{legend}</ul>')


def _emissions_side_by_side(em: dict[str, Any]) -> str:
    rows = [("Emissions", "location_based_kg", "market_based_kg", "kg CO₂"),
            ("Per PH·h of hashing", "location_kg_per_ph_h", "market_kg_per_ph_h", "kg CO₂/PH·h")]
    body = "".join(f'<tr data-figure="emissions.{lk}|emissions.{mk}"><th>{html.escape(t)}</th>'
                   f'<td class="num">{html.escape(fmt(em.get(lk), lk))}</td>'
                   f'<td class="num">{html.escape(fmt(em.get(mk), mk))}</td><td>{html.escape(u)}</td></tr>'
                   for t, lk, mk, u in rows)
    method = (f'<tr><th>Method</th><td>grid average where the site is (per interval; sources below)</td>'
              f'<td>{html.escape(str(em.get("market_method")))}</td><td></td></tr>')
    return (f'<table class="figures side" id="scope2">{_caption("Scope 2, GHG Protocol: both methods")}'
            f"<tr><th></th><th>Location-based</th><th>Market-based</th><th></th></tr>{body}{method}</table>")


def to_html(report: dict[str, Any]) -> str:
    meta = report["report"]
    tz_token, sim_token = _TZ.set(meta.get("timezone") or "UTC"), _SIM.set(bool(meta.get("simulated")))
    try:
        return _to_html(report)
    finally:
        _TZ.reset(tz_token)
        _SIM.reset(sim_token)


def _to_html(report: dict[str, Any]) -> str:
    meta = report["report"]
    audit = meta["audit"]
    sim = bool(meta.get("simulated"))
    banner = _sim_banner(meta)
    period = f"{fmt(meta['period_start'])} to {fmt(meta['period_end'])}"
    title = (f"{SIMULATED_TEXT} — " if sim else "") + f"hashflex report: {meta.get('site') or 'site'}, {period}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f'<meta name="audit-head-hash" content="{html.escape(str(audit.get("head_hash")))}">',
             f'<meta name="profile-hash" content="{html.escape(",".join(meta["profile_hashes"]))}">',
             f'<meta name="simulated" content="{"true" if sim else "false"}">',
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Site time zone {html.escape(meta['timezone'])}: every time on this page is site-local with its "
             f"offset from UTC (the JSON and CSV exports keep UTC). {meta['measurement_intervals']} measured "
             f"intervals. The period is half-open: from the start up to, not including, the end.</p>"]
    parts += _audit_section(meta)
    if meta["notes"]:
        parts.append('<ul id="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in meta["notes"]) + "</ul>")
    parts.append("</section>")

    hourly = report.get("hourly", [])
    intervals = report.get("intervals", [])
    dr = report["demand_response"]
    energy = report["energy"]
    parts += ['<section id="energy"><h2>Energy</h2>', banner, _figures_table(energy, "energy", caption="Energy")]
    if intervals:
        parts.append(_import_plot(intervals, dr["events"]))
    parts += [_energy_plot(hourly), "</section>"]

    em = report["emissions"]
    parts += ['<section id="emissions"><h2>Emissions (Scope 2)</h2>', banner, _emissions_side_by_side(em),
              _figures_table(em, "emissions", skip=("budget",), caption="Scope 2 figures"),
              "<h3>Contractual instruments</h3>",
              _table(em.get("instruments") or [], ["id", "kind", "source", "mwh_for_period", "mwh_applied",
                                                   "emission_factor_kg_per_mwh"], "instruments",
                     "Instruments that make the market-based figure differ"),
              "<h3>Emission factor and its source, hour by hour</h3>", _factor_table(hourly)]
    parts += ["<h3>Carbon budget</h3>", _figures_table(em["budget"], "emissions.budget", caption="Carbon budget"),
              _table(em["budget"]["per_day"], ["day", "emissions_kg", "budget_kg", "used_pct", "over"],
                     "budget-per-day", "Per site-local day"),
              _emissions_plot(hourly), "</section>"]

    parts += ['<section id="efficiency"><h2>Efficiency</h2>', banner,
              _figures_table(report["efficiency"], "efficiency", caption="Efficiency"), "</section>"]

    noise = report["noise"]
    parts += ['<section id="noise"><h2>Noise at the neighbours</h2>', banner,
              _figures_table({"night_definition": noise["night_definition"]}, "noise", caption="Definition")]
    for receptor, data in noise["receptors"].items():
        parts.append(f'<h3 id="receptor-{html.escape(receptor)}">{html.escape(receptor)}</h3>')
        rows = []
        for period_name in ("all", "day", "night"):
            for key, value in data[period_name].items():
                full = f"noise.receptors.{receptor}.{period_name}.{key}"
                rows.append(f'<tr data-figure="{html.escape(full)}"><th>{html.escape(_label(full))} '
                            f"({period_name})</th><td class=\"num\">{html.escape(fmt(value, key))}</td>"
                            f"<td>{html.escape(unit_of(key))}</td></tr>")
        sensor = "simulated sensor" if sim else "measured at the receptor"
        parts.append(f'<table class="figures">{_caption(f"Sound at {receptor} ({sensor})")}' + "\n".join(rows)
                     + "</table>")
        parts.append(_noise_plot(receptor, data["hourly"]))
        parts.append(_table(data["hourly"], ["hour_start", "measured_laeq_dba", "model_laeq_dba", "cap_dba",
                                             "minutes_over_cap", "night"], f"noise-hourly-{receptor}",
                            f"Hourly at {receptor}"))
    parts.append("</section>")

    parts += ['<section id="demand-response"><h2>Demand response</h2>', banner,
              _figures_table({"tolerance_kw": dr["tolerance_kw"]}, "demand_response", caption="Settings"),
              "<h3>Curtailment during high prices</h3>",
              _figures_table(dr["high_price"], "demand_response.high_price", caption="High prices")]
    if not dr["events"]:
        parts.append("<p>No demand-response events.</p>")
    for i, event in enumerate(dr["events"]):
        eid = html.escape(event["event_id"])
        tag = ' <span class="sim-tag">SIMULATED / SYNTHETIC EVENT</span>' if event.get("synthetic") else ""
        parts.append(f'<h3 id="dr-{eid}">Event {eid}{tag}</h3>')
        verdict = event.get("pass")
        if verdict is not None:
            parts.append(f'<p class="{"ok" if verdict else "bad"}" id="dr-verdict-{eid}">'
                         f'{"PASS" if verdict else "FAIL"}: {html.escape(str(event.get("rule")))}</p>')
        parts.append(_figures_table({k: v for k, v in event.items() if k not in ("per_interval", "baselines")},
                                    f"demand_response.events.{i}", caption=f"Event {event['event_id']}"))
        for name, base in (event.get("baselines") or {}).items():
            parts.append(_figures_table(base, f"demand_response.events.{i}.baselines.{name}",
                                        caption=f"Baseline: {base.get('method')}"))
        if event.get("per_interval"):
            parts.append(_dr_plot(event, intervals))
            parts.append(_table(event["per_interval"], ["interval_start", "limit_kw", "baseline_kw",
                                                        "baseline_m8of10_kw", "baseline_meter_before_kw",
                                                        "metered_import_kw", "obligated_kw", "delivered_kw",
                                                        "delivered_mw", "delivered_mwh", "assessed", "compliant"],
                                f"dr-intervals-{event['event_id']}", f"Settlement intervals of {event['event_id']}"))
    parts.append("</section>")

    cur = report.get("curtailment") or {"by_cause": {}, "per_day": []}
    parts += ['<section id="curtailment"><h2>Curtailment by cause</h2>', banner,
              _figures_table({k: v for k, v in cur.items() if k not in ("by_cause", "per_day")}, "curtailment",
                             caption="For the period"),
              _by_cause_table(cur["by_cause"]),
              _table(cur["per_day"], ["day", "cause", "mwh", "hours"], "curtailment-per-day",
                     "By cause, per site-local day")]
    if cur["per_day"]:
        parts.append(_curtailment_plot(cur["per_day"]))
    parts.append("</section>")

    parts += ['<section id="economics"><h2>Economics</h2>', banner,
              _figures_table(report["economics"], "economics", caption="Economics"),
              _economics_plot(hourly, dr["events"]), "</section>"]

    parts += ['<section id="definitions"><h2>Definitions</h2>', banner, "<dl>"]
    parts += [f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in DEFINITIONS]
    parts += ["</dl></section></body></html>\n"]
    return "\n".join(p for p in parts if p)


def render(report: dict[str, Any], fmt_name: str) -> str:
    if fmt_name == "json":
        return to_json(report)
    if fmt_name == "csv":
        return to_csv(report)
    if fmt_name == "html":
        return to_html(report)
    raise ValueError(f"format {fmt_name!r}: expected one of {FORMATS}")
