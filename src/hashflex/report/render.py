"""Write a report dict (see :mod:`hashflex.report`) as JSON, CSV or one self-contained HTML file.

- JSON: the dict as is (sorted keys, 2-space indent): byte-identical for the same database and period.
- CSV: two columns ``figure,value``; every leaf of the JSON, dotted keys, list items by index
  (``noise.receptors.maple_lane.hourly.3.cap_dba``).
- HTML: sections ``audit``, ``energy``, ``emissions``, ``efficiency``, ``noise``,
  ``demand-response``, ``economics``, ``definitions``; every scalar figure is a table row
  ``<tr data-figure="<dotted key>">`` with a plain-language label, value and unit; plots are PNGs
  (matplotlib, Agg backend) embedded as base64 ``data:`` URIs, each in ``<figure id="plot-...">``.
  The audit chain head hash and the profile hash(es) are printed at the top and in ``<meta>`` tags.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["flatten", "render", "to_csv", "to_html", "to_json", "FORMATS"]

FORMATS = ("html", "json", "csv")
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")

SECTION_IDS = {"energy": "energy", "emissions": "emissions", "efficiency": "efficiency", "noise": "noise",
               "demand_response": "demand-response", "economics": "economics"}

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
    "delivered_reduction_kw": "Reduction delivered (average, below baseline)",
    "delivered_pct": "Delivered ÷ asked", "worst_excess_kw": "Largest excess over the limit",
    "response_s": "Time until under the limit (upper bound)", "ack_s": "Time to acknowledge",
    "first_action_s": "Time to the first protective action",
}
UNITS = (("_usd_per_mwh", "$/MWh"), ("_usd_mwh", "$/MWh"), ("_kg_per_ph_h", "kg CO₂/PH·h"),
         ("_kg_per_mwh", "kg CO₂/MWh"), ("_mwh", "MWh"), ("_kg", "kg CO₂"),
         ("_pct", "%"), ("_usd", "$"), ("_dba", "dB(A)"),
         ("_kw", "kW"), ("_ph_h", "PH·h"), ("_ph_s", "PH/s"), ("_j_per_th", "J/TH"), ("_hours", "h"),
         ("hours_covered", "h"), ("_s", "s"), ("minutes_over_cap", "min"))

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
    ("Demand response", "When the grid operator asks the site to draw less, 'requested' is the reduction asked "
     "below the baseline, 'delivered' is baseline minus what the meter measured; an interval complies when the "
     "measured import is at or below the limit. Response time is an upper bound at interval resolution."),
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


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        text = f"{value:,.1f}" if abs(value) >= 1000 else f"{value:,.3f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, str) and _ISO.match(value):
        return value[:10] + " " + value[11:16] + " UTC" if value.endswith(("+00:00", "Z")) else value
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "; ".join(fmt(v) for v in value) or "none"
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
                    f'<td class="num">{html.escape(fmt(value))}</td><td>{html.escape(unit_of(key))}</td></tr>')
    return "\n".join(rows)


def _figures_table(section: dict[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> str:
    return f'<table class="figures">\n{_figure_rows(section, prefix, skip)}\n</table>'


def _table(rows: list[dict[str, Any]], columns: list[str], table_id: str) -> str:
    if not rows:
        return f'<p id="{table_id}">No data.</p>'
    head = "".join(f"<th>{html.escape(_label(c))}{' (' + unit_of(c) + ')' if unit_of(c) else ''}</th>"
                   for c in columns)
    body = "\n".join("<tr>" + "".join(f'<td class="num">{html.escape(fmt(r.get(c)))}</td>' for c in columns)
                     + "</tr>" for r in rows)
    return f'<table class="data" id="{table_id}"><tr>{head}</tr>\n{body}\n</table>'


def _png(draw: Any) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=90)
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        ax.set_xlabel("time (UTC)")
        fig.autofmt_xdate()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(plot_id: str, caption: str, draw: Any) -> str:
    data = _png(draw)
    if data is None:
        return (f'<figure id="{plot_id}"><figcaption>{html.escape(caption)} '
                f"(plot unavailable: matplotlib not installed)</figcaption></figure>")
    return (f'<figure id="{plot_id}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _times(rows: list[dict[str, Any]], key: str) -> list[Any]:
    import pandas as pd

    return [pd.Timestamp(r[key]).to_pydatetime() for r in rows]


def _series(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if r.get(key) is None else float(r[key]) for r in rows]


def _energy_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        grid, ren = _series(hourly, "grid_import_mwh"), _series(hourly, "renewable_used_mwh")
        width = 1 / 24 * 0.9
        ax.bar(t, grid, width=width, label="from the grid", color="#7f7f7f", align="edge")
        ax.bar(t, ren, width=width, bottom=grid, label="on-site renewable used", color="#2ca02c", align="edge")
        ax.step(t, _series(hourly, "renewable_generation_mwh"), where="post", color="#17becf",
                label="on-site renewable generated")
        ax.set_ylabel("MWh per hour")
        ax.legend(fontsize=8)
    return _plot("plot-energy", "Electricity used per hour, by where it came from", draw)


def _emissions_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        ax.bar(_times(hourly, "hour_start"), _series(hourly, "location_kg"), width=1 / 24 * 0.9, align="edge",
               color="#8c564b", label="location-based")
        ax.set_ylabel("kg CO₂ per hour")
        ax.legend(fontsize=8)
    return _plot("plot-emissions", "CO₂ emissions per hour (location-based)", draw)


def _noise_plot(receptor: str, hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        ax.plot(t, _series(hourly, "measured_laeq_dba"), marker="o", label="measured")
        ax.plot(t, _series(hourly, "model_laeq_dba"), linestyle="--", label="modelled")
        ax.step(t, _series(hourly, "cap_dba"), where="post", color="red", label="limit")
        ax.set_ylabel("dB(A), hourly LAeq")
        ax.legend(fontsize=8)
    return _plot(f"plot-noise-{receptor}", f"Sound at {receptor}: hourly level against its limit", draw)


def _dr_plot(event: dict[str, Any]) -> str:
    rows = event["per_interval"]

    def draw(ax: Any) -> None:
        t = _times(rows, "interval_start")
        ax.step(t, _series(rows, "measured_kw"), where="post", label="measured grid import")
        ax.step(t, _series(rows, "limit_kw"), where="post", color="red", label="limit asked")
        ax.step(t, _series(rows, "baseline_kw"), where="post", linestyle=":", color="gray", label="baseline")
        ax.set_ylabel("kW")
        ax.legend(fontsize=8)
    return _plot(f"plot-dr-{event['event_id']}", f"Demand-response event {event['event_id']}: import against the limit",
                 draw)


def _economics_plot(hourly: list[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        t = _times(hourly, "hour_start")
        profit, total = [], 0.0
        for r in hourly:
            total += (r["revenue_usd"] or 0.0) - (r["energy_cost_usd"] or 0.0)
            profit.append(total)
        ax.plot(t, profit, color="#1f77b4", label="cumulative profit ($)")
        ax.set_ylabel("$")
        twin = ax.twinx()
        twin.step(t, _series(hourly, "price_usd_mwh"), where="post", color="#ff7f0e", alpha=0.7,
                  label="electricity price ($/MWh)")
        twin.set_ylabel("$/MWh")
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="upper right", fontsize=8)
    return _plot("plot-economics", "Cumulative profit and the electricity price", draw)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;
text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}table.data{font-size:.85rem}
.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}code{word-break:break-all}
figure{margin:1rem 0}img{max-width:100%}"""


def to_html(report: dict[str, Any]) -> str:
    meta = report["report"]
    audit = meta["audit"]
    title = f"hashflex report: {meta.get('site') or 'site'}, {meta['period_start']} to {meta['period_end']}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f'<meta name="audit-head-hash" content="{html.escape(str(audit.get("head_hash")))}">',
             f'<meta name="profile-hash" content="{html.escape(",".join(meta["profile_hashes"]))}">',
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Site time zone {html.escape(meta['timezone'])}; {meta['measurement_intervals']} measured intervals. "
             f"Period is half-open: from the start up to, not including, the end.</p>"]
    status = ('<span class="ok">verified</span>' if audit["ok"]
              else f'<span class="bad">FAILED at record {audit["first_bad_seq"]}: '
                   f'{html.escape(audit["problem"])}</span>')
    parts += ['<section id="audit"><h2>Audit trail</h2>',
              f"<p>Audit chain: {status} ({audit['records']} records).</p>",
              f'<table class="figures"><tr data-figure="report.audit.head_hash"><th>Chain head hash (record '
              f'{audit.get("head_seq")})</th><td><code id="audit-head-hash">{html.escape(str(audit.get("head_hash")))}'
              f"</code></td></tr>",
              f'<tr data-figure="report.profile_hashes"><th>Site profile hash</th><td><code id="profile-hash">'
              f'{html.escape(", ".join(meta["profile_hashes"]) or "none recorded")}</code></td></tr></table>',
              "<p>To check: <code>hashflex audit verify --db &lt;database&gt;</code>, then "
              "<code>hashflex report --format json</code> for the same period gives these numbers.</p>"]
    if meta["notes"]:
        parts.append('<ul id="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in meta["notes"]) + "</ul>")
    parts.append("</section>")

    hourly = report.get("hourly", [])
    energy = report["energy"]
    parts += ['<section id="energy"><h2>Energy</h2>', _figures_table(energy, "energy"), _energy_plot(hourly),
              "</section>"]

    em = report["emissions"]
    parts += ['<section id="emissions"><h2>Emissions</h2>', _figures_table(em, "emissions", skip=("budget",))]
    parts += ["<h3>Carbon budget</h3>", _figures_table(em["budget"], "emissions.budget"),
              _table(em["budget"]["per_day"], ["day", "emissions_kg", "budget_kg", "used_pct", "over"],
                     "budget-per-day"),
              _emissions_plot(hourly), "</section>"]

    parts += ['<section id="efficiency"><h2>Efficiency</h2>', _figures_table(report["efficiency"], "efficiency"),
              "</section>"]

    noise = report["noise"]
    parts += ['<section id="noise"><h2>Noise at the neighbours</h2>',
              _figures_table({"night_definition": noise["night_definition"]}, "noise")]
    for receptor, data in noise["receptors"].items():
        parts.append(f'<h3 id="receptor-{html.escape(receptor)}">{html.escape(receptor)}</h3>')
        rows = []
        for period in ("all", "day", "night"):
            for key, value in data[period].items():
                full = f"noise.receptors.{receptor}.{period}.{key}"
                rows.append(f'<tr data-figure="{html.escape(full)}"><th>{html.escape(_label(full))} '
                            f"({period})</th><td class=\"num\">{html.escape(fmt(value))}</td>"
                            f"<td>{html.escape(unit_of(key))}</td></tr>")
        parts.append('<table class="figures">' + "\n".join(rows) + "</table>")
        parts.append(_noise_plot(receptor, data["hourly"]))
        parts.append(_table(data["hourly"], ["hour_start", "measured_laeq_dba", "model_laeq_dba", "cap_dba",
                                             "minutes_over_cap", "night"], f"noise-hourly-{receptor}"))
    parts.append("</section>")

    dr = report["demand_response"]
    parts += ['<section id="demand-response"><h2>Demand response</h2>',
              _figures_table({"tolerance_kw": dr["tolerance_kw"]}, "demand_response"),
              "<h3>Curtailment during high prices</h3>", _figures_table(dr["high_price"], "demand_response.high_price")]
    if not dr["events"]:
        parts.append("<p>No demand-response events.</p>")
    for i, event in enumerate(dr["events"]):
        parts.append(f'<h3 id="dr-{html.escape(event["event_id"])}">Event {html.escape(event["event_id"])}</h3>')
        parts.append(_figures_table({k: v for k, v in event.items() if k != "per_interval"},
                                    f"demand_response.events.{i}"))
        if event.get("per_interval"):
            parts.append(_dr_plot(event))
            parts.append(_table(event["per_interval"], ["interval_start", "limit_kw", "baseline_kw", "measured_kw",
                                                        "requested_kw", "delivered_kw", "compliant"],
                                f"dr-intervals-{event['event_id']}"))
    parts.append("</section>")

    parts += ['<section id="economics"><h2>Economics</h2>', _figures_table(report["economics"], "economics"),
              _economics_plot(hourly), "</section>"]

    parts += ['<section id="definitions"><h2>Definitions</h2><dl>']
    parts += [f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in DEFINITIONS]
    parts += ["</dl></section></body></html>\n"]
    return "\n".join(parts)


def render(report: dict[str, Any], fmt_name: str) -> str:
    if fmt_name == "json":
        return to_json(report)
    if fmt_name == "csv":
        return to_csv(report)
    if fmt_name == "html":
        return to_html(report)
    raise ValueError(f"format {fmt_name!r}: expected one of {FORMATS}")
