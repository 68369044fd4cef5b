"""Per-interval results and the summary of a backtest, computed from the per-interval frame alone.

``interval_frame(result, policy)`` is what ``intervals_<policy>.csv`` holds: the accounted schedule
(actual RT prices; see ``runner.account``) plus the simulated sensor readings
(``noise_measured_dba_<receptor>``), ``fast_path_cut``, ``solve_seconds`` and ``schedule_status``.
``summarize(frame, profile)`` computes every summary figure from that frame, so the CSV alone
reproduces the summary. ``mpc+as`` adds (``ancillary_loop.settle_reserve``) per product P
``as_award_kw_P``, ``as_mcpc_usd_mw_h_P``, ``as_deployed_kw_P`` (a SYNTHETIC deployment in force, from
its instruction); ``synthetic_deployment`` (one is in force), ``as_deployment_binds`` (one is due: past
its deadline, ``control.as_shortfall``'s rule), ``as_deployment_limit_kw`` (the lowest limit of those due:
inf while none binds, e.g. in the 30 min before a Non-Spin deadline) and ``as_deployment_short_kw``.

``summary.json`` (a contract; other tools read it)::

    {"site": str, "profile_hash": str, "window": {"start": ISO, "end": ISO, "days": float,
                                                   "interval_minutes": int},
     "notes": [str],
     "policies": {"<name>": {
        "profit_usd": float,          # revenue − energy cost − carbon cost − start cost (+ AS net, mpc+as)
        "revenue_usd": float,         # hashrate × hashprice × (1 − pool fee)
        "energy_cost_usd": float,     # grid import × (actual RT price + adders) − export × RT price
        "energy_mwh": float,          # site load energy (miners incl. idle draw)
        "curtailed_hours": float,     # Σ Δt × units asleep / units in the fleet (full-site hours)
        "emissions_kg": float,        # grid import × intensity × Δt
        "noise_exceedance_minutes": {"<receptor>": {"modelled": float, "measured": float}},
        "import_violation_kwh": float,  # Σ max(import − limit, 0) × Δt, limit = min(interconnection, 4CP, DR)
        "dr_compliance_pct": float | null,  # % of DR-limited intervals with import ≤ limit; null if none
        "wall_seconds": float,        # wall time of the policy's run
        # also: hashrate_ph_h, grid_import_mwh, carbon_cost_usd, start_cost_usd,
        #       carbon_budget_overrun_kg, profit_ratio_to_oracle (null without an oracle run or
        #       when the oracle's profit is not positive: a ratio to a loss means nothing),
        #       solves, fast_path_actions, fallback_schedules
        # mpc+as only (issue 15; see ancillary_figures): as_payment_usd, as_clawback_usd,
        #       as_revenue_usd (inside profit_usd), as_deployment_cost_usd (the margin the shed
        #       load would have earned: it neither hashed nor drew, so profit_usd already lacks it;
        #       not subtracted again), as_awarded_mwh[_<P>],
        #       as_held_mwh, as_obligations_met_pct, as_synthetic_deployment_hours (in force), as_mode,
        #       as_deployments: [{deployment_id, product, obligation_kw, delivered_kw, shortfall_kw,
        #                         measured_response_s, ..., "synthetic": true}]
     }}}

Noise exceedance: "modelled" counts intervals whose modelled level (the optimizer's acoustics, the
units that ran) is above the cap; "measured" those whose simulated sensor reading is (for a
site-contribution cap, the reading less the receptor's background, see ``site_level_dba``). Each
counts its whole interval length in minutes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hashflex.acoustics import compared_level_dba
from hashflex.backtest.runner import BacktestResult
from hashflex.profile import SiteProfile, profile_hash

__all__ = ["DEPLOYMENT_COST_NOTE", "SUMMARY_KEYS", "interval_frame", "ratio_table", "summarize", "summary_document", "summary_table",
           "write_outputs"]

DEPLOYMENT_COST_NOTE = ("mpc+as: profit_usd already includes as_deployment_cost_usd (the margin the deployed, "
                        "shed load would have earned, hash revenue less energy cost, floored at 0 per kWh: that load "
                        "neither hashed nor drew, so revenue_usd and energy_cost_usd already leave it out); it is "
                        "reported, not subtracted again. profit_usd = revenue − energy − carbon − starts + "
                        "as_revenue_usd (payment − clawback)")
"""The summary's note on where a backtest's AS deployment cost sits in profit (issue 15)."""

SUMMARY_KEYS = ("profit_usd", "revenue_usd", "energy_cost_usd", "energy_mwh", "curtailed_hours", "emissions_kg",
                "noise_exceedance_minutes", "import_violation_kwh", "dr_compliance_pct", "wall_seconds")
TOLERANCE_DB = 1e-6
TOLERANCE_KW = 1e-6


def interval_frame(result: BacktestResult, policy: str) -> pd.DataFrame:
    """What ``intervals_<policy>.csv`` holds (see the module docstring).

    Parameters
    ----------
    result : BacktestResult
    policy : str

    Returns
    -------
    pd.DataFrame
        One row per interval: the accounted schedule, ``noise_measured_dba_<receptor>`` and the
        run's diagnostics, with a leading ``policy`` column.
    """
    run = result.runs[policy]
    frame = result.schedules[policy].frame.copy()
    for receptor, values in run.measured_dba.items():
        frame[f"noise_measured_dba_{receptor}"] = values
    for name, values in run.extra.items():
        frame[name] = values
    frame.insert(0, "policy", policy)
    return frame


site_level_dba = compared_level_dba  # the same comparison the control loop makes


def summarize(frame: pd.DataFrame, profile: SiteProfile, wall_seconds: float = 0.0) -> dict[str, Any]:
    """Every summary figure from the per-interval frame (see the module docstring)."""
    dt_h = frame["duration_h"].to_numpy(dtype=float)
    minutes = dt_h * 60.0
    units_total = sum(g.units for g in profile.miner_groups)
    units_on = frame[[c for c in frame.columns if c.startswith("units_")]].sum(axis=1).to_numpy(dtype=float)
    excess_kw = np.maximum(frame["grid_import_kw"].to_numpy(float) - frame["import_limit_kw"].to_numpy(float), 0.0)
    excess_kw[excess_kw <= TOLERANCE_KW] = 0.0
    dr = frame["import_limit_source"].astype(str).str.startswith("DR").to_numpy()
    noise = {}
    for receptor in profile.receptors:
        cap = frame[f"noise_cap_dba_{receptor.id}"].to_numpy(float)
        modelled = frame[f"noise_dba_{receptor.id}"].to_numpy(float) > cap + TOLERANCE_DB
        measured_col = f"noise_measured_dba_{receptor.id}"
        measured = np.zeros(len(frame), dtype=bool)
        if measured_col in frame:
            reading = site_level_dba(frame[measured_col].to_numpy(float), receptor.background_dba,
                                     receptor.cap_applies_to)
            measured = reading > cap + TOLERANCE_DB
        noise[receptor.id] = {"modelled": float(minutes[modelled].sum()), "measured": float(minutes[measured].sum())}
    overrun = 0.0
    if profile.carbon.daily_budget_kg is not None:
        local_day = frame.index.tz_convert(profile.tz).normalize()
        per_day = frame["emissions_kg"].groupby(local_day).sum()
        overrun = float(np.maximum(per_day - profile.carbon.daily_budget_kg, 0.0).sum())
    return {
        "profit_usd": float(frame["profit_usd"].sum()),
        "revenue_usd": float(frame["revenue_usd"].sum()),
        "energy_cost_usd": float(frame["energy_cost_usd"].sum()),
        "energy_mwh": float((frame["load_kw"].to_numpy(float) * dt_h).sum() / 1000.0),
        "curtailed_hours": float((dt_h * (1.0 - units_on / units_total)).sum()),
        "emissions_kg": float(frame["emissions_kg"].sum()),
        "noise_exceedance_minutes": noise,
        "import_violation_kwh": float((excess_kw * dt_h).sum()),
        "dr_compliance_pct": (float(100.0 * (excess_kw[dr] <= 0).mean()) if dr.any() else None),
        "wall_seconds": float(wall_seconds),
        "hashrate_ph_h": float((frame["hashrate_th_s"].to_numpy(float) * dt_h).sum() / 1000.0),
        "grid_import_mwh": float((frame["grid_import_kw"].to_numpy(float) * dt_h).sum() / 1000.0),
        "carbon_cost_usd": float(frame["carbon_cost_usd"].sum()),
        "start_cost_usd": float(frame["start_cost_usd"].sum()),
        "carbon_budget_overrun_kg": overrun,
        **ancillary_figures(frame),
    }


def ancillary_figures(frame: pd.DataFrame) -> dict[str, Any]:
    """The ``mpc+as`` figures of a per-interval frame (issue 15); empty for a frame without reserve.

    Parameters
    ----------
    frame : pd.DataFrame
        ``intervals_<policy>.csv`` rows (``ancillary_loop.settle_reserve`` columns).

    Returns
    -------
    dict
        ``as_payment_usd`` (Σ award × MCPC × Δt), ``as_clawback_usd`` (shortfalls × MCPC × Δt),
        ``as_revenue_usd`` (payment − clawback, inside ``profit_usd``), ``as_deployment_cost_usd``
        (measured margin of the shed load; already inside the hash revenue, not subtracted again),
        ``as_awarded_mwh``, ``as_held_mwh`` (award − hold and deployment shortfalls, MW·h),
        ``as_obligations_met_pct`` (held / awarded, null when nothing was awarded),
        ``as_synthetic_deployment_hours`` (hours with a SYNTHETIC deployment in force), and per
        product ``as_awarded_mwh_<P>``.
    """
    if "as_payment_usd" not in frame:
        return {}
    dt_h = frame["duration_h"].to_numpy(float)
    products = [c[len("as_award_kw_"):] for c in frame.columns if c.startswith("as_award_kw_")]
    awarded = held = 0.0
    out: dict[str, Any] = {}
    for product in products:
        award = frame[f"as_award_kw_{product}"].to_numpy(float)
        short = frame[f"reserve_{product}_short_kw"].to_numpy(float)
        out[f"as_awarded_mwh_{product}"] = float((award * dt_h).sum() / 1000.0)
        awarded += out[f"as_awarded_mwh_{product}"]
        held += float(((award - short) * dt_h).sum() / 1000.0)
    held -= float((frame["as_deployment_short_kw"].to_numpy(float) * dt_h).sum() / 1000.0)
    synthetic = frame["synthetic_deployment"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    return {"as_payment_usd": float(frame["as_payment_usd"].sum()),
            "as_clawback_usd": float(frame["as_clawback_usd"].sum()),
            "as_revenue_usd": float(frame["as_revenue_usd"].sum()),
            "as_deployment_cost_usd": float(frame["as_deployment_cost_usd"].sum()),
            "as_awarded_mwh": awarded, "as_held_mwh": held,
            "as_obligations_met_pct": (100.0 * held / awarded if awarded > 0 else None),
            "as_synthetic_deployment_hours": float(dt_h[synthetic].sum()), **out}


def summary_document(result: BacktestResult, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The ``summary.json`` document (see the module docstring); ``notes`` lead its notes (the
    command line's labels, e.g. an ASSUMED AS qualification)."""
    actuals, profile = result.actuals, result.profile
    policies = {}
    for name, run in result.runs.items():
        figures = summarize(interval_frame(result, name), profile, run.wall_seconds)
        figures.update(solves=run.solves, fast_path_actions=run.fast_path_actions,
                       fallback_schedules=run.fallback_schedules)
        if run.ancillary is not None:  # each SYNTHETIC deployment as the loop measured it
            figures["as_mode"] = run.ancillary.mode
            figures["as_deployments"] = [{**d, "synthetic": True} for d in run.ancillary.deployments]
        policies[name] = figures
    oracle = policies.get("oracle", {}).get("profit_usd")
    for figures in policies.values():
        figures["profit_ratio_to_oracle"] = (figures["profit_usd"] / oracle if oracle and oracle > 0 else None)
    notes = [*notes, *actuals.notes] + [f"{name}: {note}" for name, run in result.runs.items() for note in run.notes]
    if any("as_deployment_cost_usd" in f for f in policies.values()):
        notes.append(DEPLOYMENT_COST_NOTE)
    return {
        "site": profile.site.name,
        "profile_hash": profile_hash(profile),
        "window": {"start": actuals.index[0].isoformat(), "end": (actuals.index[-1] + actuals.step).isoformat(),
                   "days": actuals.days, "interval_minutes": profile.site.interval_minutes},
        "notes": notes,
        "policies": policies,
    }


def violations(figures: dict[str, Any]) -> str:
    """Hard-limit violations in a few words ("none" if none)."""
    parts = []
    if figures["import_violation_kwh"] > 0:
        parts.append(f"import {figures['import_violation_kwh']:,.0f} kWh")
    modelled = sum(v["modelled"] for v in figures["noise_exceedance_minutes"].values())
    measured = sum(v["measured"] for v in figures["noise_exceedance_minutes"].values())
    if modelled:
        parts.append(f"noise {modelled:,.0f} min modelled")
    if measured:
        parts.append(f"noise {measured:,.0f} min measured")
    if figures.get("carbon_budget_overrun_kg", 0) > 0:
        parts.append(f"carbon +{figures['carbon_budget_overrun_kg'] / 1000:,.1f} t")
    if figures["dr_compliance_pct"] is not None and figures["dr_compliance_pct"] < 100:
        parts.append(f"DR {figures['dr_compliance_pct']:.0f}%")
    return "; ".join(parts) or "none"


def percent_not_rounded_up(pct: float, decimals: int = 3) -> str:
    """A percentage shown to ``decimals`` places, truncated, never rounded up: 99.9994 is "99.999",
    not "100.00" (a newcomer read "AS obligations met 100.00" for a run with a $1.45 clawback); 100
    only when it is 100.

    Parameters
    ----------
    pct : float
        The percentage, 0–100.
    decimals : int
        Places shown.

    Returns
    -------
    str
    """
    scale = 10 ** decimals
    return f"{math.floor(pct * scale + 1e-9) / scale:.{decimals}f}"


def summary_table(document: dict[str, Any]) -> str:
    """Side-by-side table, one column per policy."""
    policies = document["policies"]
    names = list(policies)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fmt: Any) -> None:
        rows.append((label, [fmt(policies[n]) for n in names]))

    add("profit $", lambda f: f"{f['profit_usd']:,.0f}")
    add("profit / oracle", lambda f: "-" if f["profit_ratio_to_oracle"] is None else f"{f['profit_ratio_to_oracle']:.3f}")
    add("revenue $", lambda f: f"{f['revenue_usd']:,.0f}")
    add("energy cost $", lambda f: f"{f['energy_cost_usd']:,.0f}")
    add("energy MWh", lambda f: f"{f['energy_mwh']:,.1f}")
    add("hashrate PH·h", lambda f: f"{f['hashrate_ph_h']:,.1f}")
    add("curtailed h (full site)", lambda f: f"{f['curtailed_hours']:,.1f}")
    add("emissions t", lambda f: f"{f['emissions_kg'] / 1000:,.1f}")
    receptors = next(iter(policies.values()))["noise_exceedance_minutes"] if policies else {}
    for receptor in receptors:
        add(f"noise > cap min {receptor} (model/meas)",
            lambda f, r=receptor: f"{f['noise_exceedance_minutes'][r]['modelled']:,.0f}/"
                                  f"{f['noise_exceedance_minutes'][r]['measured']:,.0f}")
    add("import violation kWh", lambda f: f"{f['import_violation_kwh']:,.1f}")
    add("carbon overrun t", lambda f: f"{f['carbon_budget_overrun_kg'] / 1000:,.1f}")
    add("DR compliance %", lambda f: "-" if f["dr_compliance_pct"] is None else f"{f['dr_compliance_pct']:.1f}")
    if any("as_revenue_usd" in f for f in policies.values()):  # issue 15: mpc+as
        add("AS revenue $ (net)", lambda f: f"{f['as_revenue_usd']:,.0f}" if "as_revenue_usd" in f else "-")
        add("AS deployment cost $ (in profit, not subtracted)",
            lambda f: f"{f['as_deployment_cost_usd']:,.0f}" if "as_revenue_usd" in f else "-")
        add("AS obligations met %", lambda f: "-" if f.get("as_obligations_met_pct") is None
            else percent_not_rounded_up(f["as_obligations_met_pct"]))
        add("AS deployments (SYNTHETIC)", lambda f: str(len(f["as_deployments"])) if "as_deployments" in f else "-")
    add("wall s", lambda f: f"{f['wall_seconds']:,.1f}")
    width = max(len(label) for label, _ in rows)
    cols = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    lines = [" " * width + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols))]
    lines += [label.ljust(width) + "  " + "  ".join(v.rjust(c) for v, c in zip(values, cols)) for label, values in rows]
    return "\n".join(lines)


def ratio_table(entries: list[tuple[str, dict[str, Any]]]) -> str:
    """Benchmark table: one row per (case, policy): profit, ratio to oracle, violations, wall s/day."""
    header = ("case", "policy", "profit $", "/ oracle", "violations", "wall s/day")
    rows = [header]
    for case, document in entries:
        days = document["window"]["days"]
        for name, f in document["policies"].items():
            ratio = f["profit_ratio_to_oracle"]
            rows.append((case, name, f"{f['profit_usd']:,.0f}", "-" if ratio is None else f"{ratio:.3f}",
                         violations(f), f"{f['wall_seconds'] / days:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 1, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def write_outputs(result: BacktestResult, out: Path, notes: Sequence[str] = ()) -> dict[str, Path]:
    """``intervals_<policy>.csv`` per policy, ``summary.json`` (``notes`` leading its notes,
    :func:`summary_document`); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in result.runs:
        path = out / f"intervals_{name}.csv"
        interval_frame(result, name).to_csv(path)
        written[f"intervals_{name}"] = path
    document = summary_document(result, notes)
    path = out / "summary.json"
    path.write_text(json.dumps(_finite(document), indent=2) + "\n", encoding="utf-8")
    written["summary"] = path
    return written


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: write null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
