"""Report figures: pure functions over frames built from audit records (no I/O, no clock).

Every figure is a sum over ``measurement`` records (one per control interval, see
:mod:`hashflex.audit`); ``h`` is a record's ``interval_h`` and sums run over the records whose
``interval_start`` lies in the report period. If two records cover the same interval, the later one
(higher seq) is taken, and the report says how many were superseded.

Definitions (the units are in the key names):

- energy: MWh = Σ kW·h / 1000 of ``import_kw`` (grid), ``load_kw`` (site), ``renewable_kw`` (on-site
  generation); renewable *used* = Σ max(load − import, 0)·h (meter balance, no storage).
  Annual-style share = Σ renewable / Σ load (can exceed 100 %); hour-matched share =
  Σ_hours min(R_hour, L_hour) / Σ L, hours being UTC clock hours.
- emissions, location-based: Σ import·h/1000 × intensity, intensity = the record's
  ``intensity_kg_per_mwh``, else the profile's ``carbon.default_intensity_kg_per_mwh`` (from the
  ``config`` record in force), each interval naming its source. Market-based (GHG Protocol Scope 2):
  RECs of ``recs_mwh`` cover import energy first; uncovered import at the residual-mix factor if
  one is given, else at its location-based intensity. No RECs: market = location, and it says so.
  Intensity of hashing: kg CO2 per PH·h, where 1 PH·h = 1 PH/s of hashrate sustained for one hour
  (Σ hashrate_th_s·h / 1000). Budget: per site-local day (and month), emissions vs the profile's
  ``daily_budget_kg`` (``monthly_budget_kg``); a day (month) partly in the period counts its full
  budget; the limit is the daily budget × days, else the monthly budget × months (latest config).
- efficiency: J/TH = Σ load·h·1000 / Σ hashrate_th_s·h (site load incl. idle units and auxiliaries).
- noise, per receptor: hourly LAeq = energy average of the interval LAeqs weighted by h (measured
  ``noise_dba`` and modelled ``noise_model_dba``), hourly cap = the lowest cap in the hour; minutes
  over cap = Σ ``noise_over_cap_min``; night = site-local hours [22:00, 07:00).
- demand response, per event in force during the period (latest accepted terms; a cancellation
  ends it at its receipt; events never accepted are listed if received in the period): the
  intervals overlapping [start, end); per interval the baseline (the event's ``baseline_kw``, else
  the record's ``dr_baseline_kw``, else the mean import of the hour before the event start),
  requested = max(baseline − limit, 0), delivered = baseline − measured import, compliant when
  measured ≤ limit + tolerance. Compliance % = compliant / intervals; response time = from
  max(start, receipt) to the end of the first compliant interval (an upper bound at interval
  resolution); ack time = ack ``acked_at`` − receipt; first action = first ``guard_action`` naming
  the event. Curtailed kW = max(full_load − load, 0); high-price intervals: price ≥ threshold.
- economics: revenue, energy cost, profit = revenue − energy cost (as recorded), curtailment hours =
  Σ h where curtailed > 1 % of full load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

NIGHT_HOURS = (22, 7)  # site-local [22:00, 07:00)
CURTAIL_FRACTION = 0.01
MEASUREMENT_COLUMNS = ["interval_start", "interval_h", "import_kw", "renewable_kw", "load_kw", "full_load_kw",
                       "hashrate_th_s", "intensity_kg_per_mwh", "intensity_source", "price_usd_mwh",
                       "revenue_usd", "energy_cost_usd", "dr_baseline_kw", "seq", "at"]
NOISE_COLUMNS = ["interval_start", "interval_h", "receptor", "measured_dba", "model_dba", "cap_dba",
                 "over_cap_min"]


@dataclass
class ReportInputs:
    """What the figures are computed from, decoded from audit records (see :func:`inputs_from_records`)."""

    measurements: pd.DataFrame
    noise: pd.DataFrame
    configs: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", "profile_hash", "profile"}
    dr_events: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", payload...}
    dr_acks: list[dict[str, Any]] = field(default_factory=list)
    guard_actions: list[dict[str, Any]] = field(default_factory=list)
    superseded: int = 0


def _ts(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


def inputs_from_records(records: Iterable[Any], start: pd.Timestamp, end: pd.Timestamp) -> ReportInputs:
    """Decode ``AuditRecord``s (any order) into frames; measurements with interval_start in [start, end).

    DR events, acks, guard actions and configs are kept whole (events may start before the period)."""
    records = sorted(records, key=lambda r: r.seq)
    rows, noise, configs, events, acks, actions = [], [], [], [], [], []
    for rec in records:
        p, at = rec.payload, pd.Timestamp(rec.at_utc)
        if rec.kind == "measurement":
            rows.append({**{c: p.get(c) for c in MEASUREMENT_COLUMNS[:-2]}, "seq": rec.seq, "at": at})
        elif rec.kind == "config":
            configs.append({"seq": rec.seq, "at": at, "profile_hash": p.get("profile_hash"),
                            "profile": p.get("profile") or {}, "reason": p.get("reason")})
        elif rec.kind == "dr_event":
            events.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "dr_ack":
            acks.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "guard_action":
            actions.append({"seq": rec.seq, "at": at, **p})
    m = pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS)
    m["interval_start"] = pd.to_datetime(m["interval_start"], utc=True, format="ISO8601")
    m = m[(m["interval_start"] >= start) & (m["interval_start"] < end)]
    before = len(m)
    m = m.sort_values("seq").drop_duplicates("interval_start", keep="last").sort_values("interval_start")
    superseded = before - len(m)
    m = m.reset_index(drop=True)
    for column in MEASUREMENT_COLUMNS:
        if column not in ("interval_start", "intensity_source", "seq", "at"):
            m[column] = pd.to_numeric(m[column], errors="coerce").astype("float64")
    m["interval_end"] = m["interval_start"] + pd.to_timedelta(m["interval_h"], unit="h")
    kept = set(m["seq"].tolist())
    for rec in records:
        if rec.kind == "measurement" and rec.seq in kept:
            p = rec.payload
            for r in sorted(set(p.get("noise_dba") or {}) | set(p.get("noise_model_dba") or {})
                            | set(p.get("noise_cap_dba") or {})):
                noise.append({"interval_start": pd.Timestamp(p["interval_start"]), "interval_h": p["interval_h"],
                              "receptor": r, "measured_dba": (p.get("noise_dba") or {}).get(r),
                              "model_dba": (p.get("noise_model_dba") or {}).get(r),
                              "cap_dba": (p.get("noise_cap_dba") or {}).get(r),
                              "over_cap_min": (p.get("noise_over_cap_min") or {}).get(r)})
    n = pd.DataFrame(noise, columns=NOISE_COLUMNS)
    for column in NOISE_COLUMNS[1:]:
        if column != "receptor":
            n[column] = pd.to_numeric(n[column], errors="coerce").astype("float64")
    n["interval_start"] = pd.to_datetime(n["interval_start"], utc=True)
    n = n.sort_values(["receptor", "interval_start"]).reset_index(drop=True)
    return ReportInputs(m, n, configs, events, acks, actions, superseded)


def _r(x: float | None, digits: int = 6) -> float | None:
    """Round for the report; NaN/inf become None (JSON null)."""
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _mwh(kw: pd.Series, h: pd.Series) -> float:
    return float((kw.fillna(0.0) * h).sum() / 1000.0)


def config_at(configs: Sequence[Mapping[str, Any]], moment: pd.Timestamp) -> Mapping[str, Any] | None:
    """The config record in force at ``moment`` (last with at ≤ moment, else the first one)."""
    if not configs:
        return None
    before = [c for c in configs if c["at"] <= moment]
    return before[-1] if before else configs[0]


def site_timezone(configs: Sequence[Mapping[str, Any]]) -> str:
    if not configs:
        return "UTC"
    return (configs[-1]["profile"].get("site") or {}).get("timezone", "UTC")


# --------------------------------------------------------------------------- hourly series


def hourly_figures(m: pd.DataFrame, configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per UTC clock hour: energy, emissions (location-based), hashing, money, mean price (h-weighted)."""
    if m.empty:
        return []
    h = m["interval_h"]
    intensity, _ = intensity_used(m, configs)
    frame = pd.DataFrame({
        "hour_start": m["interval_start"].dt.floor("h"),
        "hours": h,
        "grid_import_mwh": m["import_kw"].fillna(0.0) * h / 1000.0,
        "renewable_generation_mwh": m["renewable_kw"].fillna(0.0) * h / 1000.0,
        "renewable_used_mwh": (m["load_kw"] - m["import_kw"]).clip(lower=0.0).fillna(0.0) * h / 1000.0,
        "load_mwh": m["load_kw"].fillna(0.0) * h / 1000.0,
        "location_kg": m["import_kw"].fillna(0.0) * h / 1000.0 * intensity,
        "hashrate_ph_h": m["hashrate_th_s"].fillna(0.0) * h / 1000.0,
        "revenue_usd": m["revenue_usd"].fillna(0.0),
        "energy_cost_usd": m["energy_cost_usd"].fillna(0.0),
        "price_x_h": m["price_usd_mwh"] * h,
        "price_h": h.where(m["price_usd_mwh"].notna(), 0.0),
    })
    sums = frame.groupby("hour_start", sort=True).sum(numeric_only=True, min_count=1)
    rows = []
    for hour, row in sums.iterrows():
        rows.append({"hour_start": hour.isoformat(), "hours": _r(row["hours"]),
                     **{k: _r(row[k]) for k in ("grid_import_mwh", "renewable_generation_mwh", "renewable_used_mwh",
                                                "load_mwh", "location_kg", "hashrate_ph_h", "revenue_usd",
                                                "energy_cost_usd")},
                     "price_usd_mwh": _r(row["price_x_h"] / row["price_h"]) if row["price_h"] > 0 else None})
    return rows


# --------------------------------------------------------------------------- energy


def energy_figures(m: pd.DataFrame) -> dict[str, Any]:
    h = m["interval_h"]
    load = _mwh(m["load_kw"], h)
    renewable = _mwh(m["renewable_kw"], h)
    used = _mwh((m["load_kw"] - m["import_kw"]).clip(lower=0.0), h)
    hourly = pd.DataFrame({"hour": m["interval_start"].dt.floor("h"),
                           "r": m["renewable_kw"].fillna(0.0) * h / 1000.0, "l": m["load_kw"].fillna(0.0) * h / 1000.0})
    per_hour = hourly.groupby("hour")[["r", "l"]].sum()
    matched = float(np.minimum(per_hour["r"], per_hour["l"]).sum())
    return {
        "intervals": int(len(m)),
        "hours_covered": _r(float(h.sum())),
        "grid_import_mwh": _r(_mwh(m["import_kw"], h)),
        "load_mwh": _r(load),
        "renewable_generation_mwh": _r(renewable),
        "renewable_used_mwh": _r(used),
        "renewable_share_annual_pct": _r(100.0 * renewable / load) if load > 0 else None,
        "renewable_share_hourly_pct": _r(100.0 * matched / load) if load > 0 else None,
    }


# --------------------------------------------------------------------------- emissions


def intensity_used(m: pd.DataFrame, configs: Sequence[Mapping[str, Any]]) -> tuple[pd.Series, pd.Series]:
    """(kg/MWh, source) per interval: recorded intensity, else the config's default factor."""
    values, sources = [], []
    for start, value, source in zip(m["interval_start"], m["intensity_kg_per_mwh"], m["intensity_source"],
                                    strict=True):
        if value is not None and math.isfinite(value):
            values.append(float(value))
            sources.append(f"recorded: {source or 'unnamed source'}")
            continue
        config = config_at(configs, start)
        carbon = (config or {}).get("profile", {}).get("carbon", {}) if config else {}
        default = carbon.get("default_intensity_kg_per_mwh")
        values.append(math.nan if default is None else float(default))
        sources.append(f"profile default: {carbon.get('intensity_source', 'no config recorded')}")
    return pd.Series(values, index=m.index, dtype="float64"), pd.Series(sources, index=m.index, dtype="object")


def emissions_figures(m: pd.DataFrame, configs: Sequence[Mapping[str, Any]], *, recs_mwh: float | None = None,
                      residual_mix_kg_per_mwh: float | None = None, recs_source: str | None = None,
                      tz: str = "UTC") -> dict[str, Any]:
    h = m["interval_h"]
    intensity, source = intensity_used(m, configs)
    import_mwh_i = m["import_kw"].fillna(0.0) * h / 1000.0
    loc_i = import_mwh_i * intensity
    location = float(loc_i.sum())
    import_mwh = float(import_mwh_i.sum())
    hash_ph_h = float((m["hashrate_th_s"].fillna(0.0) * h).sum() / 1000.0)
    recs = float(recs_mwh or 0.0)
    covered = min(recs, import_mwh)
    notes = []
    if recs <= 0:
        market = location
        notes.append("no RECs supplied: market-based equals location-based")
        method = "location"
    elif residual_mix_kg_per_mwh is not None:
        market = (import_mwh - covered) * float(residual_mix_kg_per_mwh)
        method = "residual mix"
    else:
        market = location * (1.0 - covered / import_mwh) if import_mwh > 0 else 0.0
        method = "location intensity for uncovered import (no residual mix factor)"
        notes.append("no residual-mix factor: uncovered import valued at its location-based intensity")
    sources = source.value_counts()
    out = {
        "grid_import_mwh": _r(import_mwh),
        "location_based_kg": _r(location),
        "location_intensity_sources": {str(k): int(v) for k, v in sources.items()},
        "intervals_recorded_intensity": int(m["intensity_kg_per_mwh"].notna().sum()),
        "intervals_default_intensity": int(m["intensity_kg_per_mwh"].isna().sum()),
        "market_based_kg": _r(market),
        "market_method": method,
        "recs_mwh": _r(recs),
        "recs_applied_mwh": _r(covered),
        "recs_source": recs_source,
        "residual_mix_kg_per_mwh": _r(residual_mix_kg_per_mwh),
        "hashrate_ph_h": _r(hash_ph_h),
        "location_kg_per_ph_h": _r(location / hash_ph_h) if hash_ph_h > 0 else None,
        "market_kg_per_ph_h": _r(market / hash_ph_h) if hash_ph_h > 0 else None,
        "budget": carbon_budget_figures(m, loc_i, configs, tz),
        "notes": notes,
    }
    return out


def carbon_budget_figures(m: pd.DataFrame, loc_kg: pd.Series, configs: Sequence[Mapping[str, Any]],
                          tz: str) -> dict[str, Any]:
    """Location-based emissions per site-local day and month against the profile's budgets."""
    carbon = ((configs[-1]["profile"].get("carbon") or {}) if configs else {})
    local = m["interval_start"].dt.tz_convert(ZoneInfo(tz))
    out: dict[str, Any] = {"daily_budget_kg": _r(carbon.get("daily_budget_kg")),
                           "monthly_budget_kg": _r(carbon.get("monthly_budget_kg"))}
    for period, key, fmt in (("day", "daily_budget_kg", "%Y-%m-%d"), ("month", "monthly_budget_kg", "%Y-%m")):
        budget = carbon.get(key)
        labels = local.dt.strftime(fmt)
        used = loc_kg.groupby(labels).sum() if len(m) else pd.Series(dtype="float64")
        rows = [{period: str(label), "emissions_kg": _r(float(kg)),
                 "budget_kg": _r(budget), "used_pct": _r(100.0 * kg / budget) if budget else None,
                 "over": bool(budget is not None and kg > budget)} for label, kg in used.items()]
        out[f"per_{period}"] = rows
    total = float(loc_kg.sum())
    if carbon.get("daily_budget_kg") is not None:
        limit = carbon["daily_budget_kg"] * len(out["per_day"])
    elif carbon.get("monthly_budget_kg") is not None:
        limit = carbon["monthly_budget_kg"] * len(out["per_month"])
    else:
        limit = None
    out["used_kg"] = _r(total)
    out["limit_kg"] = _r(limit)
    out["used_pct"] = _r(100.0 * total / limit) if limit else None
    out["days_over"] = sum(1 for row in out["per_day"] if row["over"])
    return out


# --------------------------------------------------------------------------- efficiency


def efficiency_figures(m: pd.DataFrame) -> dict[str, Any]:
    h = m["interval_h"]
    energy_kwh = float((m["load_kw"].fillna(0.0) * h).sum())
    th_h = float((m["hashrate_th_s"].fillna(0.0) * h).sum())
    return {
        "load_mwh": _r(energy_kwh / 1000.0),
        "hashrate_ph_h": _r(th_h / 1000.0),
        "average_hashrate_ph_s": _r(th_h / 1000.0 / float(h.sum())) if float(h.sum()) > 0 else None,
        "average_j_per_th": _r(1000.0 * energy_kwh / th_h) if th_h > 0 else None,
    }


# --------------------------------------------------------------------------- noise


def energy_average(levels: pd.Series, weights: pd.Series) -> float:
    ok = levels.notna() & weights.notna() & (weights > 0)
    if not ok.any():
        return math.nan
    w = weights[ok]
    return float(10.0 * np.log10((w * 10.0 ** (levels[ok] / 10.0)).sum() / w.sum()))


def is_night(moments: pd.Series, tz: str, night: tuple[int, int] = NIGHT_HOURS) -> pd.Series:
    hour = moments.dt.tz_convert(ZoneInfo(tz)).dt.hour
    start, end = night
    return (hour >= start) | (hour < end) if start > end else (hour >= start) & (hour < end)


def noise_hourly(n: pd.DataFrame, tz: str) -> pd.DataFrame:
    """Per receptor and UTC hour: measured, modelled LAeq, lowest cap, minutes over cap, night flag."""
    columns = ["receptor", "hour_start", "measured_laeq_dba", "model_laeq_dba", "cap_dba", "minutes_over_cap",
               "night"]
    if n.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    frame = n.assign(hour_start=n["interval_start"].dt.floor("h"))
    for (receptor, hour), g in frame.groupby(["receptor", "hour_start"], sort=True):
        rows.append({"receptor": receptor, "hour_start": hour,
                     "measured_laeq_dba": energy_average(g["measured_dba"], g["interval_h"]),
                     "model_laeq_dba": energy_average(g["model_dba"], g["interval_h"]),
                     "cap_dba": float(g["cap_dba"].min()) if g["cap_dba"].notna().any() else math.nan,
                     "minutes_over_cap": float(g["over_cap_min"].fillna(0.0).sum())})
    out = pd.DataFrame(rows, columns=columns[:-1])
    out["night"] = is_night(out["hour_start"], tz)
    return out


def noise_figures(n: pd.DataFrame, tz: str) -> dict[str, Any]:
    hourly = noise_hourly(n, tz)
    out: dict[str, Any] = {"night_definition": f"site-local {NIGHT_HOURS[0]:02d}:00-{NIGHT_HOURS[1]:02d}:00 ({tz})",
                           "receptors": {}}
    for receptor, g in hourly.groupby("receptor", sort=True):
        raw = n[n["receptor"] == receptor]
        raw_night = is_night(raw["interval_start"], tz)
        summary: dict[str, Any] = {}
        for label, mask_h, mask_raw in (("all", slice(None), slice(None)), ("day", ~g["night"], ~raw_night),
                                        ("night", g["night"], raw_night)):
            gh, gr = g.loc[mask_h], raw.loc[mask_raw]
            over_hours = (gh["measured_laeq_dba"] > gh["cap_dba"]).sum()
            summary[label] = {
                "hours": int(len(gh)),
                "measured_laeq_dba": _r(energy_average(gr["measured_dba"], gr["interval_h"]), 3),
                "model_laeq_dba": _r(energy_average(gr["model_dba"], gr["interval_h"]), 3),
                "max_hourly_measured_dba": _r(gh["measured_laeq_dba"].max(), 3) if len(gh) else None,
                "lowest_cap_dba": _r(gh["cap_dba"].min(), 3) if len(gh) else None,
                "minutes_over_cap": _r(float(gr["over_cap_min"].fillna(0.0).sum()), 3),
                "hours_over_cap": int(over_hours),
            }
        out["receptors"][str(receptor)] = {
            **summary,
            "hourly": [{"hour_start": row.hour_start.isoformat(), "measured_laeq_dba": _r(row.measured_laeq_dba, 3),
                        "model_laeq_dba": _r(row.model_laeq_dba, 3), "cap_dba": _r(row.cap_dba, 3),
                        "minutes_over_cap": _r(row.minutes_over_cap, 3), "night": bool(row.night)}
                       for row in g.itertuples()],
        }
    return out


# --------------------------------------------------------------------------- demand response


def _event_terms(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per event id: latest accepted terms, first receipt, cancellation time, modifications."""
    events: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r["seq"]):
        event = rec["event"]
        eid = event["event_id"]
        entry = events.setdefault(eid, {"event_id": eid, "received_at": _ts(rec["received_at"]), "terms": None,
                                        "limit_kw": None, "cancelled_at": None, "messages": 0, "accepted": False,
                                        "rejections": []})
        entry["messages"] += 1
        if not rec["accepted"]:
            entry["rejections"].append(rec["reason"])
            continue
        entry["accepted"] = True
        if event.get("cancelled"):
            entry["cancelled_at"] = _ts(rec["received_at"])
        else:
            entry["terms"], entry["limit_kw"] = event, rec.get("limit_kw")
            entry["modification_number"] = event["modification_number"]
    return events


def dr_figures(m: pd.DataFrame, inputs: ReportInputs, period_start: pd.Timestamp, period_end: pd.Timestamp, *,
               tolerance_kw: float = 0.0, high_price_usd_mwh: float = 100.0) -> dict[str, Any]:
    """Events in force during the period (or, if never accepted, received during it); see module doc."""
    events_out = []
    for eid, entry in _event_terms(inputs.dr_events).items():
        terms = entry["terms"]
        row: dict[str, Any] = {"event_id": eid, "accepted": entry["accepted"], "messages": entry["messages"],
                               "rejections": entry["rejections"]}
        if terms is None:
            if period_start <= entry["received_at"] < period_end:
                events_out.append(row)
            continue
        start = _ts(terms["start"])
        end = _ts(terms.get("end")) or period_end
        if entry["cancelled_at"] is not None:
            end = min(end, max(entry["cancelled_at"], start))
        if end <= period_start or start >= period_end:
            continue
        limit = entry["limit_kw"]
        effective = max(start, entry["received_at"])
        sel = m[(m["interval_start"] < end) & (m["interval_end"] > start)]
        pre = m[(m["interval_start"] >= start - pd.Timedelta(hours=1)) & (m["interval_end"] <= start)]
        pre_baseline = float(pre["import_kw"].mean()) if len(pre) else None
        intervals = []
        for r in sel.itertuples():
            if terms.get("baseline_kw") is not None:
                base, base_src = float(terms["baseline_kw"]), "event"
            elif r.dr_baseline_kw is not None and math.isfinite(r.dr_baseline_kw):
                base, base_src = float(r.dr_baseline_kw), "measurement"
            elif pre_baseline is not None:
                base, base_src = pre_baseline, "hour before start"
            else:
                base, base_src = None, "none"
            measured = float(r.import_kw)
            lim = math.inf if limit is None else float(limit)
            intervals.append({
                "interval_start": r.interval_start.isoformat(), "limit_kw": _r(limit), "baseline_kw": _r(base),
                "baseline_source": base_src, "measured_kw": _r(measured),
                "requested_kw": _r(max(base - lim, 0.0)) if base is not None and math.isfinite(lim) else None,
                "delivered_kw": _r(base - measured) if base is not None else None,
                "compliant": bool(measured <= lim + tolerance_kw), "interval_end": r.interval_end.isoformat()})
        n = len(intervals)
        ok = sum(i["compliant"] for i in intervals)
        with_base = [i for i in intervals if i["requested_kw"] is not None]
        requested = sum(i["requested_kw"] for i in with_base) / len(with_base) if with_base else None
        delivered = sum(i["delivered_kw"] for i in with_base) / len(with_base) if with_base else None
        first_ok = next((i for i in intervals if i["compliant"]), None)
        ack = next((a for a in inputs.dr_acks if a.get("event_id") == eid
                    and a.get("modification_number") == entry.get("modification_number")), None)
        action = next((a for a in inputs.guard_actions if a.get("event_id") == eid and a["at"] >= start), None)
        row.update({
            "program": terms.get("program"), "issuer": terms.get("issuer"),
            "modification_number": entry.get("modification_number"),
            "start": start.isoformat(), "end": end.isoformat(),
            "cancelled_at": entry["cancelled_at"].isoformat() if entry["cancelled_at"] is not None else None,
            "received_at": entry["received_at"].isoformat(), "limit_kw": _r(limit),
            "intervals": n, "compliant_intervals": ok,
            "compliance_pct": _r(100.0 * ok / n) if n else None,
            "requested_reduction_kw": _r(requested), "delivered_reduction_kw": _r(delivered),
            "delivered_pct": _r(100.0 * delivered / requested) if requested else None,
            "worst_excess_kw": _r(max([max(i["measured_kw"] - float(i["limit_kw"]), 0.0) for i in intervals
                                       if i["limit_kw"] is not None], default=0.0)),
            "response_s": _r((pd.Timestamp(first_ok["interval_end"]) - effective).total_seconds())
            if first_ok else None,
            "ack_s": _r((pd.Timestamp(ack["acked_at"]) - entry["received_at"]).total_seconds()) if ack else None,
            "first_action_s": _r((action["at"] - effective).total_seconds()) if action else None,
            "per_interval": intervals,
        })
        events_out.append(row)
    curtailed = (m["full_load_kw"] - m["load_kw"]).clip(lower=0.0)
    high = m["price_usd_mwh"] >= high_price_usd_mwh
    return {
        "tolerance_kw": tolerance_kw,
        "events": events_out,
        "high_price": {
            "threshold_usd_mwh": high_price_usd_mwh,
            "intervals": int(high.sum()),
            "hours": _r(float(m.loc[high, "interval_h"].sum())),
            "curtailed_mwh": _r(_mwh(curtailed[high], m.loc[high, "interval_h"])),
            "intervals_without_full_load": int(m["full_load_kw"].isna().sum()),
        },
    }


# --------------------------------------------------------------------------- economics


def economics_figures(m: pd.DataFrame) -> dict[str, Any]:
    h = m["interval_h"]
    curtailed = (m["full_load_kw"] - m["load_kw"]).clip(lower=0.0)
    curtailing = curtailed > CURTAIL_FRACTION * m["full_load_kw"]
    revenue, cost = float(m["revenue_usd"].fillna(0.0).sum()), float(m["energy_cost_usd"].fillna(0.0).sum())
    import_mwh = _mwh(m["import_kw"], h)
    return {
        "revenue_usd": _r(revenue, 4),
        "energy_cost_usd": _r(cost, 4),
        "profit_usd": _r(revenue - cost, 4),
        "average_energy_cost_usd_per_mwh": _r(cost / import_mwh, 4) if import_mwh > 0 else None,
        "curtailment_hours": _r(float(h[curtailing].sum())),
        "curtailed_mwh": _r(_mwh(curtailed, h)),
    }
