"""The operator's question (issue 16): for this site and this price history, what do K more ASICs
or K' GPU nodes add per year, after curtailment, DR and noise — side by side, with payback.

Each variant (the site as it is, + K ASICs, + K' GPU nodes) is planned day by day with perfect
foresight of the actual prices, limits and renewables (`compute.solve_site`, one MILP per local
day, batch work carried across days) and settled at those actuals. Perfect foresight overstates
every variant alike; the comparison is the point. The added profit per day is annualised × 365.

GPU nodes enter as a new cluster serving spot capacity at a contract price ($/GPU-hour): the
conservative contract, curtailable like a miner; firm inference and batch contracts in the
profile's ``compute`` section are planned as written.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import pandas as pd

from hashflex.backtest.cli import profile_with_candidate
from hashflex.optimize.compute_problem import compute_from_profile
from hashflex.profile import SiteProfile

DAYS_PER_YEAR = 365.0


def profile_with_gpu_nodes(profile: SiteProfile, *, nodes: int, gpus_per_node: int = 8, idle_power_kw: float,
                           full_power_kw: float, cooling_overhead_fraction: float = 0.15,
                           cooling_sound_power_dba: float = 0.0, contract_usd_per_gpu_hour: float,
                           cluster_id: str = "new_gpu") -> SiteProfile:
    """The profile plus a cluster of ``nodes`` GPU nodes rented as spot capacity at the contract
    price. At each receptor the cooling is placed as close as the nearest existing group."""
    data = profile.model_dump()
    compute = data.get("compute") or {"clusters": [], "inference": [], "batch": [], "spot": []}
    compute["clusters"].append({"id": cluster_id, "nodes": nodes, "gpus_per_node": gpus_per_node,
                                "idle_power_kw": idle_power_kw, "full_power_kw": full_power_kw,
                                "cooling_overhead_fraction": cooling_overhead_fraction,
                                "cooling_sound_power_dba": cooling_sound_power_dba})
    compute["spot"].append({"id": f"{cluster_id}_spot", "cluster": cluster_id, "max_gpus": nodes * gpus_per_node,
                            "price_usd_per_gpu_hour": contract_usd_per_gpu_hour})
    data["compute"] = compute
    for receptor, spec in zip(data["receptors"], profile.receptors):
        nearest = min(spec.attenuation_from(g.id) for g in profile.miner_groups)
        if math.isfinite(nearest) and cooling_sound_power_dba > 0:
            receptor.setdefault("attenuation_db", {})[cluster_id] = nearest
    return SiteProfile.model_validate(data)


def plan_window(profile: SiteProfile, actuals: Any, *, time_limit_s: float = 30.0) -> tuple[pd.DataFrame, float]:
    """Day-by-day perfect-foresight plan over the whole window: (schedule frame, solve seconds)."""
    from hashflex.backtest.runner import actual_problem
    from hashflex.optimize.compute import solve_site  # Pyomo: imported when a plan is made, not with the CLI (issue 18)

    local_day = actuals.index.tz_convert(profile.tz).normalize()
    frames, done, seconds = [], {}, 0.0
    for day in pd.unique(local_day):
        index = actuals.index[local_day == day]
        problem = actual_problem(profile, actuals, index)
        if problem.compute is not None:  # carry batch work done on earlier days
            problem = dataclasses.replace(problem, compute=compute_from_profile(
                profile, problem.interval_start, problem.duration_h, done_gpu_h=done))
        started = time.perf_counter()
        schedule = solve_site(problem, time_limit_s=time_limit_s)
        seconds += time.perf_counter() - started
        for job in (problem.compute.batch if problem.compute is not None else ()):
            done[job.id] = done.get(job.id, 0.0) + float(schedule.frame[f"work_gpu_h_{job.id}"].sum())
        frames.append(schedule.frame)
    return pd.concat(frames), seconds


def summarise(profile: SiteProfile, frame: pd.DataFrame) -> dict[str, float]:
    """Revenue by class, energy, emissions, profit, and service levels of one planned window."""
    days = float(frame["duration_h"].sum()) / 24.0
    energy_mwh = float((frame["grid_import_kw"] * frame["duration_h"]).sum()) / 1000.0
    out = {"days": days, "profit_usd": float(frame["profit_usd"].sum()),
           "mining_revenue_usd": float(frame["revenue_usd"].sum()),
           "compute_revenue_usd": float(frame.get("compute_revenue_usd", pd.Series(0.0)).sum()),
           "energy_cost_usd": float(frame["energy_cost_usd"].sum()), "energy_mwh": energy_mwh,
           "emissions_t": float(frame["emissions_kg"].sum()) / 1000.0,
           "hash_eh": float((frame["hashrate_th_s"] * frame["duration_h"] * 3600).sum()) / 1e6}
    for column in frame.columns:
        if column.startswith("service_level_"):
            out[column + "_min"] = float(frame[column].min())
        if column.startswith("work_gpu_h_"):
            out[column] = float(frame[column].sum())
    return out


def evaluate_mix(profile: SiteProfile, actuals: Any, *, asic_units: int, asic_power_kw: float,
                 asic_hashrate_th_s: float, asic_sound_dba: float, asic_unit_price_usd: float,
                 gpu_nodes: int, gpu_idle_power_kw: float, gpu_full_power_kw: float,
                 gpu_node_capex_usd: float, gpu_contract_usd_per_gpu_hour: float, gpus_per_node: int = 8,
                 gpu_cooling_sound_dba: float = 0.0, time_limit_s: float = 30.0) -> dict[str, dict[str, float]]:
    """Base, + ASICs, + GPU nodes planned over the same window: each variant's summary, its added
    profit per year against the base, capex and simple payback (years; inf if it adds nothing)."""
    variants = {
        "base": profile,
        f"+{asic_units} ASICs": profile_with_candidate(profile, power_kw=asic_power_kw, hashrate_th_s=asic_hashrate_th_s,
                                                       sound_dba=asic_sound_dba, units=asic_units),
        f"+{gpu_nodes} GPU nodes": profile_with_gpu_nodes(
            profile, nodes=gpu_nodes, gpus_per_node=gpus_per_node, idle_power_kw=gpu_idle_power_kw,
            full_power_kw=gpu_full_power_kw, cooling_sound_power_dba=gpu_cooling_sound_dba,
            contract_usd_per_gpu_hour=gpu_contract_usd_per_gpu_hour),
    }
    capex = {"base": 0.0, f"+{asic_units} ASICs": asic_units * asic_unit_price_usd,
             f"+{gpu_nodes} GPU nodes": gpu_nodes * gpu_node_capex_usd}
    out: dict[str, dict[str, float]] = {}
    for name, variant in variants.items():
        frame, seconds = plan_window(variant, actuals, time_limit_s=time_limit_s)
        out[name] = {**summarise(variant, frame), "solve_seconds": seconds}
    base = out["base"]
    for name, row in out.items():
        added_per_year = (row["profit_usd"] - base["profit_usd"]) / row["days"] * DAYS_PER_YEAR
        row["capex_usd"] = capex[name]
        row["added_profit_usd_per_year"] = added_per_year
        row["payback_years"] = capex[name] / added_per_year if added_per_year > 0 else (0.0 if name == "base" else math.inf)
    return out


def mix_table(results: dict[str, dict[str, float]]) -> str:
    """The side-by-side table an operator reads."""
    lines = [f"{'variant':<18}{'profit $':>12}{'mining $':>12}{'compute $':>12}{'energy MWh':>12}"
             f"{'tCO2':>8}{'capex $':>14}{'added $/yr':>14}{'payback yr':>12}"]
    for name, r in results.items():
        payback = "-" if name == "base" else ("never" if math.isinf(r["payback_years"]) else f"{r['payback_years']:.1f}")
        lines.append(f"{name:<18}{r['profit_usd']:>12,.0f}{r['mining_revenue_usd']:>12,.0f}"
                     f"{r['compute_revenue_usd']:>12,.0f}{r['energy_mwh']:>12,.1f}{r['emissions_t']:>8,.1f}"
                     f"{r['capex_usd']:>14,.0f}{r['added_profit_usd_per_year']:>14,.0f}{payback:>12}")
    return "\n".join(lines)


__all__ = ["evaluate_mix", "mix_table", "plan_window", "profile_with_gpu_nodes", "summarise"]


def add_mix_parser(subparsers: Any) -> None:
    """``hashflex evaluate-mix``: K ASICs vs K' GPU nodes side by side (registered by
    ``backtest.cli.add_backtest_parsers``)."""
    from hashflex.backtest.cli import _common_arguments

    parser = subparsers.add_parser("evaluate-mix", help="K more ASICs vs K' GPU nodes on this site and price "
                                                        "history: added profit per year and payback, side by side")
    _common_arguments(parser)
    parser.add_argument("--asic-units", type=int, required=True)
    parser.add_argument("--asic-power-kw", type=float, required=True)
    parser.add_argument("--asic-hashrate-th-s", type=float, required=True)
    parser.add_argument("--asic-sound-dba", type=float, required=True, help="sound power level Lw per unit")
    parser.add_argument("--asic-unit-price-usd", type=float, required=True, help="landed price incl. import tariff")
    parser.add_argument("--gpu-nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu-idle-power-kw", type=float, default=1.6, help="per node (default: an 8×H100 node)")
    parser.add_argument("--gpu-full-power-kw", type=float, default=10.2, help="per node at full load")
    parser.add_argument("--gpu-cooling-sound-dba", type=float, default=0.0, help="cooling Lw per cluster at full load")
    parser.add_argument("--gpu-node-capex-usd", type=float, required=True)
    parser.add_argument("--gpu-contract-usd-per-gpu-hour", type=float, required=True)
    parser.set_defaults(handler=cmd_evaluate_mix)


def cmd_evaluate_mix(args: Any) -> int:
    from hashflex.backtest.cli import _inputs
    from hashflex.profile import load_profile

    profile = load_profile(args.profile)
    actuals = _inputs(args, profile)
    results = evaluate_mix(
        profile, actuals, asic_units=args.asic_units, asic_power_kw=args.asic_power_kw,
        asic_hashrate_th_s=args.asic_hashrate_th_s, asic_sound_dba=args.asic_sound_dba,
        asic_unit_price_usd=args.asic_unit_price_usd, gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node,
        gpu_idle_power_kw=args.gpu_idle_power_kw, gpu_full_power_kw=args.gpu_full_power_kw,
        gpu_cooling_sound_dba=args.gpu_cooling_sound_dba, gpu_node_capex_usd=args.gpu_node_capex_usd,
        gpu_contract_usd_per_gpu_hour=args.gpu_contract_usd_per_gpu_hour, time_limit_s=args.time_limit)
    print(f"{profile.site.name}: {actuals.days:g} days of {profile.site.settlement_point} prices, perfect foresight, "
          f"one MILP per local day; added profit annualised × 365")
    print(mix_table(results))
    for note in actuals.notes:
        print(f"note: {note}")
    return 0
