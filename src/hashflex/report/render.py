"""Write a report dict (see :mod:`hashflex.report`) as JSON, CSV or one self-contained HTML file.

- JSON: the dict as is (sorted keys, 2-space indent): byte-identical for the same database and period.
- CSV: two columns ``figure,value``; every leaf of the JSON, dotted keys, list items by index
  (``noise.receptors.maple_lane.hourly.3.cap_dba``).
- HTML: sections ``audit``, ``energy``, ``emissions``, ``efficiency``, ``noise``,
  ``demand-response``, ``ancillary``, ``curtailment``, ``economics``, ``definitions``; every scalar
  figure is a table row ``<tr data-figure="<dotted key>">`` with a plain-language label, value and
  unit; plots are PNGs (matplotlib, Agg backend) embedded as base64 ``data:`` URIs, each in
  ``<figure id="plot-...">``.
  The audit chain head hash and the profile hash(es) are printed at the top and in ``<meta>`` tags,
  with the signed head and its verification result when one was given.
- Times: the HTML shows the site's local time with its zone and offset (``2020-02-01 14:00 CST
  (UTC−06:00)``), plot axes too; JSON and CSV keep ISO UTC.
- Precision fits the instrument: dB(A) to 0.1, energy to the kWh (MWh with 3 decimals), money to
  $0.01 (the key's unit decides, :data:`hashflex.report.PRECISION`).
- A report on a simulated trail (``report.simulated``) says SIMULATED in its title, at the top of
  every section (``<p class="simulated">``), in the caption of every table and plot, and across
  every plot image.

Split (issue 11): labels, units and number formats are :mod:`hashflex.report.labels`, the plots
:mod:`hashflex.report.plots`; this module writes JSON, CSV and the HTML page from them.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterator
from typing import Any

from hashflex.report.ancillary import AWARD_COLUMNS, DEPLOYMENT_COLUMNS
from hashflex.report.labels import (  # noqa: F401 - LABELS..digits_of: importable from here as before the split
    _ISO,
    _SIM,
    _TZ,
    DEFINITIONS,
    DIGITS,
    EVENT_LABELS,
    LABELS,
    PATH_LABELS,
    SIMULATED_TEXT,
    UNITS,
    _label,
    digits_of,
    fmt,
    unit_of,
)
from hashflex.report.plots import (
    _curtailment_plot,
    _dr_plot,
    _economics_plot,
    _emissions_plot,
    _energy_plot,
    _import_plot,
    _noise_plot,
)

__all__ = ["flatten", "render", "to_csv", "to_html", "to_json", "FORMATS"]

FORMATS = ("html", "json", "csv")

SECTION_IDS = {"energy": "energy", "emissions": "emissions", "efficiency": "efficiency", "noise": "noise",
               "demand_response": "demand-response", "curtailment": "curtailment", "economics": "economics"}


# --------------------------------------------------------------------------- JSON / CSV


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON text: sorted keys, 2-space indent, no NaN (byte-identical for the same data).

    Parameters
    ----------
    report : dict
        A report from :func:`hashflex.report.build_report`.

    Returns
    -------
    str
    """
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a JSON value as (dotted key, value); empty lists/dicts as one leaf.

    Parameters
    ----------
    value : Any
        A JSON value.
    prefix : str
        The dotted key of ``value``.

    Yields
    ------
    tuple of (str, Any)
    """
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{i}")
    else:
        yield prefix, value


def to_csv(report: dict[str, Any]) -> str:
    """The report as CSV: ``figure,value`` rows, one per leaf of the JSON (:func:`flatten`).

    Parameters
    ----------
    report : dict
        A report.

    Returns
    -------
    str
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["figure", "value"])
    for key, value in flatten(report):
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        writer.writerow([key, "" if value is None else (str(value).lower() if isinstance(value, bool) else value)])
    return buffer.getvalue()



# --------------------------------------------------------------------------- HTML


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


def _ancillary_section(section: dict[str, Any], banner: str) -> list[str]:
    """The "Ancillary service deployments" section: counts, one row per deployment (product, MW
    deployed, awarded and delivered, shortfall, response time, metered figures), the awards."""
    scalars = {k: v for k, v in section.items() if k not in ("deployments", "awards")}
    parts = ['<section id="ancillary"><h2>Ancillary service deployments</h2>', banner,
             _figures_table(scalars, "ancillary", caption="For the period")]
    if section["deployments"]:
        parts.append(_table(section["deployments"], DEPLOYMENT_COLUMNS, "as-deployments",
                            "Each deployment: reduction asked, reserve awarded, reduction delivered and how fast"))
    else:
        parts.append('<p id="as-deployments">No ancillary service deployments in the period.</p>')
    parts += ["<h3>Awards</h3>", _table(section["awards"], AWARD_COLUMNS, "as-awards",
                                         "Ancillary service awards in force during the period"), "</section>"]
    return parts


def to_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (see the module docstring).

    Parameters
    ----------
    report : dict
        A report.

    Returns
    -------
    str
    """
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

    parts += _ancillary_section(report.get("ancillary") or {"deployments": [], "awards": []}, banner)

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
    """The report in ``fmt_name``: ``json``, ``csv`` or ``html``.

    Parameters
    ----------
    report : dict
        A report.
    fmt_name : str
        One of :data:`FORMATS`.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        An unknown format.
    """
    if fmt_name == "json":
        return to_json(report)
    if fmt_name == "csv":
        return to_csv(report)
    if fmt_name == "html":
        return to_html(report)
    raise ValueError(f"format {fmt_name!r}: expected one of {FORMATS}")
