"""Scope 2 emissions of the report (GHG Protocol Scope 2 Guidance, 2015): the carbon intensity used
per interval, contractual instruments, location- and market-based figures, and the carbon budget.

Seam: every emissions figure and its sources (definitions in :mod:`hashflex.report.figures`);
split from ``report/figures.py`` (issue 11).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from hashflex.report.inputs import _r, config_at
from hashflex.report.provenance import config_for_seq

__all__ = ["carbon_budget_figures", "emissions_figures", "instruments_from_profile", "intensity_used"]


def intensity_used(m: pd.DataFrame, configs: Sequence[Mapping[str, Any]]) -> tuple[pd.Series, pd.Series]:
    """(kg/MWh, source) per interval: recorded intensity, else the config's default factor.

    Parameters
    ----------
    m : pd.DataFrame
        Measurements (``intensity_kg_per_mwh``, ``intensity_source``, ``seq``).
    configs : sequence of Mapping
        Decoded ``config`` records.

    Returns
    -------
    tuple of (pd.Series, pd.Series)
        kg CO2/MWh and its source, aligned with ``m``.
    """
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
    (default 0, a renewable certificate), ``source``. Malformed entries are skipped.

    Parameters
    ----------
    profile : Mapping
        A profile as recorded in a ``config`` record.

    Returns
    -------
    list of dict
    """
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
    by side (see the docstring of :mod:`hashflex.report.figures` and :mod:`hashflex.report`).

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.
    configs : sequence of Mapping
        Decoded ``config`` records (default factor, instruments, residual mix, budgets).
    recs_mwh : float, optional
        MWh of RECs from a file.
    residual_mix_kg_per_mwh : float, optional
        Residual-mix factor from the RECs file, kg CO2/MWh.
    recs_source : str, optional
        The RECs file's name and hash.
    tz : str
        The site's time zone (budgets per local day and month).
    period : tuple of (pd.Timestamp, pd.Timestamp), optional
        The period (instruments count pro rata to it).

    Returns
    -------
    dict
        The ``emissions`` section (kg CO2, MWh, %, kg CO2/PH·h, ``budget``, ``notes``).
    """
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
    """Location-based emissions per site-local day and month against the profile's budgets.

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.
    loc_kg : pd.Series
        Location-based kg CO2 per interval, aligned with ``m``.
    configs : sequence of Mapping
        Decoded ``config`` records (the latest one's budgets).
    tz : str
        The site's time zone.

    Returns
    -------
    dict
        Daily and monthly budgets (kg), per-day and per-month rows, used, limit, % and days over.
    """
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


