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
- economics: revenue, energy cost, reserve revenue (AS awards at their price less the clawback of
  reserve awarded and not held, :func:`hashflex.report.ancillary.reserve_money`), profit = revenue −
  energy cost + reserve revenue (as recorded), curtailment hours = Σ h where curtailed > 1 % of full
  load. An interval without a real-time price is not costed (not $0): cost and profit exclude it, and
  it is counted (``uncosted_intervals``).

Split (issue 11): decoding records is :mod:`hashflex.report.inputs`, the emissions figures
:mod:`hashflex.report.emissions`; both are re-exported here (``figures.inputs_from_records``,
``figures.emissions_figures``, ...) as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from hashflex import acoustics
from hashflex.report.emissions import (  # noqa: F401 - re-exported: figures.<name> as before the split
    _pro_rata_mwh,
    carbon_budget_figures,
    emissions_figures,
    instruments_from_profile,
    intensity_used,
)
from hashflex.report.inputs import (  # noqa: F401 - re-exported: figures.<name> as before the split
    MEASUREMENT_COLUMNS,
    NOISE_COLUMNS,
    ReportInputs,
    _mwh,
    _r,
    _ts,
    config_at,
    inputs_from_records,
    site_timezone,
)

NIGHT_HOURS = (22, 7)  # site-local [22:00, 07:00)
CURTAIL_FRACTION = 0.01


# --------------------------------------------------------------------------- hourly series


def hourly_figures(m: pd.DataFrame, configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per UTC clock hour: energy, emissions (location-based), hashing, money, mean price (h-weighted).

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.
    configs : sequence of Mapping
        Decoded ``config`` records (default carbon factor).

    Returns
    -------
    list of dict
        One row per hour: MWh, kg CO2, PH·h, $, $/MWh, kg CO2/MWh and the intensity's source;
        ``energy_cost_usd`` over the hour's intervals with a real-time price (null when none has one),
        ``uncosted_intervals`` those without.
    """
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
        # Not costed without a price (economics_figures): NaN, and counted per hour.
        "energy_cost_usd": m["energy_cost_usd"].where(m["price_usd_mwh"].notna()),
        "uncosted_intervals": m["price_usd_mwh"].isna().astype(int),
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
                     "uncosted_intervals": int(row["uncosted_intervals"]),
                     "price_usd_mwh": _r(row["price_x_h"] / row["price_h"]) if row["price_h"] > 0 else None,
                     "location_kg_per_mwh": _r(row["intensity_x_h"] / row["intensity_h"])
                     if row["intensity_h"] > 0 else None,
                     "intensity_source": sources.get(hour)})
    return rows


# --------------------------------------------------------------------------- energy


def energy_figures(m: pd.DataFrame) -> dict[str, Any]:
    """The ``energy`` section: MWh imported, used, generated on site and used from it, and the
    renewable share as a period total and matched hour by hour (definitions in the module docstring).

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.

    Returns
    -------
    dict
    """
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



# --------------------------------------------------------------------------- efficiency


def efficiency_figures(m: pd.DataFrame) -> dict[str, Any]:
    """The ``efficiency`` section: MWh used, PH·h hashed, average hashrate (PH/s) and J/TH.

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.

    Returns
    -------
    dict
    """
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
    """Energy average of levels weighted by durations: 10·log10(Σ w·10^(L/10) / Σ w).

    Parameters
    ----------
    levels : pd.Series
        Levels in dB(A).
    weights : pd.Series
        Weights (hours); rows with a missing level or a non-positive weight are left out.

    Returns
    -------
    float
        dB(A); NaN when nothing is left.
    """
    ok = levels.notna() & weights.notna() & (weights > 0)
    if not ok.any():
        return math.nan
    return acoustics.laeq_dba(levels[ok].to_numpy(dtype=float), weights[ok].to_numpy(dtype=float))


def is_night(moments: pd.Series, tz: str, night: tuple[int, int] = NIGHT_HOURS) -> pd.Series:
    """Whether each moment falls in the site-local night (default [22:00, 07:00)).

    Parameters
    ----------
    moments : pd.Series
        Tz-aware times.
    tz : str
        The site's time zone.
    night : tuple of (int, int)
        Start and end hour of the night.

    Returns
    -------
    pd.Series of bool
    """
    hour = moments.dt.tz_convert(ZoneInfo(tz)).dt.hour
    start, end = night
    return (hour >= start) | (hour < end) if start > end else (hour >= start) & (hour < end)


def noise_hourly(n: pd.DataFrame, tz: str) -> pd.DataFrame:
    """Per receptor and UTC hour: measured, modelled LAeq, lowest cap, minutes over cap, night flag.

    Parameters
    ----------
    n : pd.DataFrame
        Per-interval noise rows (:attr:`ReportInputs.noise`).
    tz : str
        The site's time zone (night flag).

    Returns
    -------
    pd.DataFrame
    """
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
    """The ``noise`` section: per receptor, measured and modelled LAeq, loudest hour, strictest cap,
    minutes and hours over the cap, for the whole period, day and night, and the hourly rows.

    Parameters
    ----------
    n : pd.DataFrame
        Per-interval noise rows.
    tz : str
        The site's time zone.

    Returns
    -------
    dict
    """
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
    utility settles them (:mod:`hashflex.report.dr_performance`); curtailment at high prices.

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.
    inputs : ReportInputs
        Decoded records (DR events, acks, setpoints, meter samples, history).
    period_start, period_end : pd.Timestamp
        The period, UTC, half-open.
    tolerance_kw : float
        kW an interval may be over the limit and still comply.
    high_price_usd_mwh : float
        Threshold of the high-price figures, $/MWh.
    tz : str
        The site's time zone.
    simulated : bool
        The trail is simulated.

    Returns
    -------
    dict
        ``tolerance_kw``, ``events``, ``high_price``.
    """
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


def economics_figures(m: pd.DataFrame, reserve: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``economics`` section: revenue, energy cost and profit as recorded ($), the ancillary
    service reserve money, average energy cost ($/MWh imported), hours and MWh curtailed.

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.
    reserve : mapping, optional
        ``reserve_payment_usd``, ``reserve_clawback_usd``, ``reserve_revenue_usd``, and when given
        ``reserve_final_through``, ``reserve_provisional_payment_usd``,
        ``reserve_estimated_hold_intervals``, ``reserve_unverified_payment_usd``,
        ``reserve_unverified_hold_h`` and ``notes`` (added to the section's)
        (:func:`hashflex.report.ancillary.reserve_money`); None: no reserve (all 0).

    Returns
    -------
    dict
        ``profit_usd`` = revenue − energy cost + ``reserve_revenue_usd`` (miner start costs are NOT
        subtracted: the trail does not record them; a backtest summary's ``profit_usd`` subtracts its
        ``start_cost_usd``, so the two differ by it); ``curtailment_hours`` = hours of intervals with
        any curtailment above 1 % of full load (a backtest summary's ``curtailed_hours`` weighs each
        interval by the share of units asleep: full-site hours, smaller). An interval without a
        real-time price (``price_usd_mwh`` null) is not costed: ``energy_cost_usd``, ``profit_usd``
        (its revenue too) and ``average_energy_cost_usd_per_mwh`` leave it out; ``uncosted_intervals``,
        ``uncosted_hours``, ``uncosted_grid_import_mwh`` and ``uncosted_revenue_usd`` count it, and
        ``notes`` says so; ``revenue_usd`` is every interval's mining revenue.
    """
    h = m["interval_h"]
    curtailed = (m["full_load_kw"] - m["load_kw"]).clip(lower=0.0)
    curtailing = curtailed > CURTAIL_FRACTION * m["full_load_kw"]
    # Without a real-time price an interval's electricity cost is unknown (the loop records 0.0 for
    # it): costing it at $0 would understate cost and overstate profit, so it is left out and counted.
    costed = m["price_usd_mwh"].notna()
    revenue = float(m["revenue_usd"].fillna(0.0).sum())
    costed_revenue = float(m["revenue_usd"][costed].fillna(0.0).sum())
    cost = float(m["energy_cost_usd"][costed].fillna(0.0).sum())
    money = {"reserve_payment_usd": 0.0, "reserve_clawback_usd": 0.0, "reserve_revenue_usd": 0.0, **(reserve or {})}
    import_mwh = _mwh(m["import_kw"][costed], h[costed])
    uncosted = int((~costed).sum())
    notes = []
    if uncosted:
        notes.append(f"{uncosted} interval(s) without an RT settlement point price, not costed "
                     f"({_r(float(h[~costed].sum()))} h, {_r(_mwh(m['import_kw'][~costed], h[~costed]))} MWh "
                     f"imported): energy_cost_usd, profit_usd and average_energy_cost_usd_per_mwh exclude them "
                     f"(revenue_usd includes their mining revenue, {_r(revenue - costed_revenue, 4)} $)")
    return {
        "revenue_usd": _r(revenue, 4),
        "energy_cost_usd": _r(cost, 4),
        **{k: _r(float(money[k]), 4) for k in ("reserve_payment_usd", "reserve_clawback_usd", "reserve_revenue_usd")},
        "profit_usd": _r(costed_revenue - cost + float(money["reserve_revenue_usd"]), 4),
        "average_energy_cost_usd_per_mwh": _r(cost / import_mwh, 4) if import_mwh > 0 else None,
        "uncosted_intervals": uncosted,
        "uncosted_hours": _r(float(h[~costed].sum())),
        "uncosted_grid_import_mwh": _r(_mwh(m["import_kw"][~costed], h[~costed])),
        "uncosted_revenue_usd": _r(revenue - costed_revenue, 4),
        "curtailment_hours": _r(float(h[curtailing].sum())),
        "curtailed_mwh": _r(_mwh(curtailed, h)),
        # issue 15: until when the reserve money is final, the provisional part of the payment
        **{k: money[k] for k in ("reserve_final_through", "reserve_provisional_payment_usd",
                                 "reserve_estimated_hold_intervals", "reserve_unverified_payment_usd",
                                 "reserve_unverified_hold_h") if k in money},
        "notes": notes + list(money.get("notes") or []),
    }
