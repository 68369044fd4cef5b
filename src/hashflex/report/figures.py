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
  ``config`` record chained before it), each interval naming its source. Market-based (GHG
  Protocol Scope 2 Guidance, 2015): contractual instruments (``carbon.instruments`` of the profile,
  read defensively, then a ``--recs`` file; MWh pro rata to the period) cover import in order at
  their own factor (RECs 0); the rest at the residual mix (profile ``carbon.residual_mix_kg_per_mwh``
  or the RECs file), else at its location-based intensity, said in ``notes``. No instrument:
  market = location, and it says so. Carbon-free share: annual = (on-site renewable used +
  instrument MWh applied) / load; hourly-matched = Σ_hours min(on-site renewable, load) / load
  (annual certificates carry no hourly attribute, so they do not count hour by hour).
  Intensity of hashing: kg CO2 per PH·h, where 1 PH·h = 1 PH/s of hashrate sustained for one hour
  (Σ hashrate_th_s·h / 1000). Budget: per site-local day (and month), emissions vs the profile's
  ``daily_budget_kg`` (``monthly_budget_kg``); a day (month) partly in the period counts its full
  budget; the limit is the daily budget × days, else the monthly budget × months (latest config).
- efficiency: J/TH = Σ load·h·1000 / Σ hashrate_th_s·h (site load incl. idle units and auxiliaries).
- noise, per receptor: hourly LAeq = energy average of the interval LAeqs weighted by h (measured
  ``noise_dba`` and modelled ``noise_model_dba``), hourly cap = the lowest cap in the hour; minutes
  over cap = Σ ``noise_over_cap_min``; night = site-local hours [22:00, 07:00).
- demand response: see :mod:`hashflex.report.dr_performance` (per event: timeline, ERCOT
  baselines, settlement rows, pass/fail). Curtailed kW = max(full_load − load, 0); high-price
  intervals: price ≥ threshold.
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

from hashflex.report.provenance import config_for_seq

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
    history: pd.DataFrame | None = None  # every measurement of the trail (deduplicated), for DR baselines
    setpoints: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", payload...}
    schedules: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", "first_row", "reasons"}
    transitions: list[dict[str, Any]] = field(default_factory=list)  # dr_transition payloads
    meter_samples: list[dict[str, Any]] = field(default_factory=list)  # {"at", "import_kw", "source"}: DR in force


def _ts(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


def inputs_from_records(records: Iterable[Any], start: pd.Timestamp, end: pd.Timestamp) -> ReportInputs:
    """Decode ``AuditRecord``s (any order) into frames; measurements with interval_start in [start, end).

    DR events, acks, guard actions and configs are kept whole (events may start before the period)."""
    records = sorted(records, key=lambda r: r.seq)
    rows, noise, configs, events, acks, actions = [], [], [], [], [], []
    setpoints, schedules, transitions, samples = [], [], [], []
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
        elif rec.kind == "setpoints":
            setpoints.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "schedule":
            schedules.append({"seq": rec.seq, "at": at, "first_row": p.get("first_row") or {},
                              "reasons": p.get("reasons") or {}})
        elif rec.kind == "dr_transition":
            transitions.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "meter_sample":
            samples.append({"at": pd.Timestamp(p.get("at") or rec.at_utc).tz_convert("UTC"),
                            "import_kw": p.get("import_kw"), "source": p.get("source")})
    every = pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS)
    every["interval_start"] = pd.to_datetime(every["interval_start"], utc=True, format="ISO8601")
    for column in MEASUREMENT_COLUMNS:
        if column not in ("interval_start", "intensity_source", "seq", "at"):
            every[column] = pd.to_numeric(every[column], errors="coerce").astype("float64")
    every["interval_end"] = every["interval_start"] + pd.to_timedelta(every["interval_h"], unit="h")
    history = (every.sort_values("seq").drop_duplicates("interval_start", keep="last")
               .sort_values("interval_start").reset_index(drop=True))
    m = every[(every["interval_start"] >= start) & (every["interval_start"] < end)]
    before = len(m)
    m = m.sort_values("seq").drop_duplicates("interval_start", keep="last").sort_values("interval_start")
    superseded = before - len(m)
    m = m.reset_index(drop=True)
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
    return ReportInputs(m, n, configs, events, acks, actions, superseded, history, setpoints, schedules, transitions,
                        samples)


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
    intensity, source = intensity_used(m, configs)
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
        "intensity_x_h": intensity * h,
        "intensity_h": h.where(intensity.notna(), 0.0),
    })
    sums = frame.groupby("hour_start", sort=True).sum(numeric_only=True, min_count=1)
    named = pd.DataFrame({"hour_start": frame["hour_start"], "source": source})
    sources = named.groupby("hour_start")["source"].agg(lambda s: "; ".join(sorted(set(s))))
    rows = []
    for hour, row in sums.iterrows():
        rows.append({"hour_start": hour.isoformat(), "hours": _r(row["hours"]),
                     **{k: _r(row[k]) for k in ("grid_import_mwh", "renewable_generation_mwh", "renewable_used_mwh",
                                                "load_mwh", "location_kg", "hashrate_ph_h", "revenue_usd",
                                                "energy_cost_usd")},
                     "price_usd_mwh": _r(row["price_x_h"] / row["price_h"]) if row["price_h"] > 0 else None,
                     "location_kg_per_mwh": _r(row["intensity_x_h"] / row["intensity_h"])
                     if row["intensity_h"] > 0 else None,
                     "intensity_source": sources.get(hour)})
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
    seqs = m["seq"] if "seq" in m else [None] * len(m)
    for start, value, source, seq in zip(m["interval_start"], m["intensity_kg_per_mwh"], m["intensity_source"], seqs,
                                         strict=True):
        if value is not None and math.isfinite(value):
            values.append(float(value))
            sources.append(f"recorded: {source or 'unnamed source'}")
            continue
        config = config_at(configs, start) if seq is None else config_for_seq(configs, int(seq))
        carbon = (config or {}).get("profile", {}).get("carbon", {}) if config else {}
        default = carbon.get("default_intensity_kg_per_mwh")
        values.append(math.nan if default is None else float(default))
        sources.append(f"profile default: {carbon.get('intensity_source', 'no config recorded')}")
    return pd.Series(values, index=m.index, dtype="float64"), pd.Series(sources, index=m.index, dtype="object")


def instruments_from_profile(profile: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Contractual instruments (RECs, PPAs, green tariffs) listed in a profile's JSON, read
    defensively: ``carbon.instruments`` (or top-level ``instruments``), each with ``mwh`` and
    optional ``id``, ``kind``, ``period_start``, ``period_end``, ``emission_factor_kg_per_mwh``
    (default 0, a renewable certificate), ``source``. Malformed entries are skipped."""
    carbon = profile.get("carbon") or {}
    raw = carbon.get("instruments") or profile.get("instruments") or []
    out = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, Mapping):
            continue
        try:
            mwh = float(item["mwh"])
        except (KeyError, TypeError, ValueError):
            continue
        out.append({"id": str(item.get("id") or f"instrument-{i + 1}"), "kind": str(item.get("kind") or "REC"),
                    "mwh": mwh, "period_start": item.get("period_start"), "period_end": item.get("period_end"),
                    "emission_factor_kg_per_mwh": float(item.get("emission_factor_kg_per_mwh") or 0.0),
                    "source": str(item.get("source") or "site profile")})
    return out


def _pro_rata_mwh(item: Mapping[str, Any], start: pd.Timestamp, end: pd.Timestamp) -> float:
    p0, p1 = item.get("period_start"), item.get("period_end")
    if not p0 or not p1:
        return float(item["mwh"])
    a, b = pd.Timestamp(p0), pd.Timestamp(p1)
    a = a.tz_localize("UTC") if a.tzinfo is None else a
    b = b.tz_localize("UTC") if b.tzinfo is None else b
    span = (b - a).total_seconds()
    overlap = (min(b, end) - max(a, start)).total_seconds()
    return float(item["mwh"]) * max(overlap, 0.0) / span if span > 0 else 0.0


def emissions_figures(m: pd.DataFrame, configs: Sequence[Mapping[str, Any]], *, recs_mwh: float | None = None,
                      residual_mix_kg_per_mwh: float | None = None, recs_source: str | None = None,
                      tz: str = "UTC", period: tuple[pd.Timestamp, pd.Timestamp] | None = None) -> dict[str, Any]:
    """Scope 2 per the GHG Protocol Scope 2 Guidance (2015): location-based and market-based side
    by side (see the module docstring and :mod:`hashflex.report`)."""
    h = m["interval_h"]
    intensity, source = intensity_used(m, configs)
    import_mwh_i = m["import_kw"].fillna(0.0) * h / 1000.0
    loc_i = import_mwh_i * intensity
    location = float(loc_i.sum())
    import_mwh = float(import_mwh_i.sum())
    hash_ph_h = float((m["hashrate_th_s"].fillna(0.0) * h).sum() / 1000.0)
    profile = (configs[-1]["profile"] if configs else {}) or {}
    carbon = profile.get("carbon") or {}
    start, end = period or ((m["interval_start"].min(), m["interval_end"].max()) if len(m)
                            else (pd.Timestamp(0, tz="UTC"), pd.Timestamp(0, tz="UTC")))
    instruments = [{**i, "period_mwh": _pro_rata_mwh(i, start, end)} for i in instruments_from_profile(profile)]
    if recs_mwh:
        instruments.append({"id": "recs-file", "kind": "REC", "mwh": float(recs_mwh), "period_mwh": float(recs_mwh),
                            "emission_factor_kg_per_mwh": 0.0, "source": recs_source or "RECs file",
                            "period_start": None, "period_end": None})
    residual = residual_mix_kg_per_mwh if residual_mix_kg_per_mwh is not None else carbon.get("residual_mix_kg_per_mwh")
    residual_source = ("RECs file" if residual_mix_kg_per_mwh is not None
                       else carbon.get("residual_mix_source") or ("site profile" if residual is not None else None))
    remaining, market, applied_rows = import_mwh, 0.0, []
    for item in instruments:  # instruments cover import in the order listed (profile first, then the file)
        applied = min(item["period_mwh"], remaining)
        remaining -= applied
        market += applied * item["emission_factor_kg_per_mwh"]
        applied_rows.append({"id": item["id"], "kind": item["kind"], "source": item["source"],
                             "mwh_for_period": _r(item["period_mwh"], 3), "mwh_applied": _r(applied, 3),
                             "emission_factor_kg_per_mwh": _r(item["emission_factor_kg_per_mwh"], 3)})
    covered = import_mwh - remaining
    notes = []
    if not instruments:
        method = "location"
        notes.append("no contractual instruments (RECs, PPAs) in the profile or a RECs file: market-based "
                     "equals location-based, as the Scope 2 Guidance requires when no instrument applies")
        market = location
    elif residual is not None:
        market += remaining * float(residual)
        method = "instruments, then residual mix"
    else:
        uncovered_kg = float((loc_i * (1.0 - covered / import_mwh)).sum()) if import_mwh > 0 else 0.0
        market += uncovered_kg
        method = "instruments, then location intensity (no residual mix factor)"
        notes.append("no residual-mix factor: import not covered by instruments valued at its location-based "
                     "intensity (the Scope 2 Guidance asks for a residual mix; add one to the profile)")
    load_mwh = float((m["load_kw"].fillna(0.0) * h).sum() / 1000.0)
    used_mwh = float(((m["load_kw"] - m["import_kw"]).clip(lower=0.0).fillna(0.0) * h).sum() / 1000.0)
    per_hour = pd.DataFrame({"hour": m["interval_start"].dt.floor("h"),
                             "r": m["renewable_kw"].fillna(0.0) * h / 1000.0,
                             "l": m["load_kw"].fillna(0.0) * h / 1000.0}).groupby("hour")[["r", "l"]].sum()
    matched = float(np.minimum(per_hour["r"], per_hour["l"]).sum())
    sources = source.value_counts()
    return {
        "grid_import_mwh": _r(import_mwh, 3),
        "location_based_kg": _r(location, 1),
        "location_intensity_sources": {str(k): int(v) for k, v in sources.items()},
        "intervals_recorded_intensity": int(m["intensity_kg_per_mwh"].notna().sum()),
        "intervals_default_intensity": int(m["intensity_kg_per_mwh"].isna().sum()),
        "market_based_kg": _r(market, 1),
        "market_method": method,
        "instruments": applied_rows,
        "instruments_applied_mwh": _r(covered, 3),
        "recs_mwh": _r(float(recs_mwh or 0.0), 3),
        "recs_applied_mwh": _r(sum(r["mwh_applied"] or 0.0 for r in applied_rows if r["id"] == "recs-file"), 3),
        "recs_source": recs_source,
        "residual_mix_kg_per_mwh": _r(residual, 3),
        "residual_mix_source": residual_source,
        "carbon_free_share_annual_pct": _r(100.0 * min(used_mwh + covered, load_mwh) / load_mwh, 1)
        if load_mwh > 0 else None,
        "carbon_free_share_hourly_pct": _r(100.0 * matched / load_mwh, 1) if load_mwh > 0 else None,
        "hashrate_ph_h": _r(hash_ph_h, 3),
        "location_kg_per_ph_h": _r(location / hash_ph_h, 4) if hash_ph_h > 0 else None,
        "market_kg_per_ph_h": _r(market / hash_ph_h, 4) if hash_ph_h > 0 else None,
        "budget": carbon_budget_figures(m, loc_i, configs, tz),
        "notes": notes,
    }


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


def dr_figures(m: pd.DataFrame, inputs: ReportInputs, period_start: pd.Timestamp, period_end: pd.Timestamp, *,
               tolerance_kw: float = 0.0, high_price_usd_mwh: float = 100.0, tz: str = "UTC",
               simulated: bool = False) -> dict[str, Any]:
    """Events in force during the period (or, if never accepted, received during it), measured as a
    utility settles them (:mod:`hashflex.report.dr_performance`); curtailment at high prices."""
    from hashflex.report.dr_performance import events_performance

    history = inputs.history if inputs.history is not None else m
    events_out = events_performance(m, history, inputs.dr_events, inputs.dr_acks, inputs.setpoints, period_start,
                                    period_end, tz, tolerance_kw=tolerance_kw, simulated=simulated,
                                    meter_samples=inputs.meter_samples)
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
