"""Mixed site backtest (issue 16): ASICs and GPUs under one cap on real ERCOT prices.

The bundled ``quiet_hollow`` site (1.19 MW of air-cooled miners under a 1.5 MW import limit, homes
250-400 m away) plus a GPU cluster of 16 × 8 H100-class nodes (1.6 kW idle, 10.2 kW full per node,
+15 % cooling, cooling Lw 88 dB(A) as close to the homes as the nearest miners) serving:

- firm inference ``chat``: demand from the bundled Azure LLM conversation trace (CC BY 4.0),
  peak 150,000 tokens/s, 1,500 tokens/s per uncapped GPU, 99 % service level, $2/M tokens, $20/M short;
- one batch job per local day ``b-<date>``: 600 GPU-hours, released 00:00, deadline 12:00 the next
  day, ≤ 64 GPUs, $2.20/GPU-h, $10/GPU-h late, $0.50 per GPU restart;
- spot: up to 128 GPUs at $0.90/GPU-h.

Each local day is one perfect-foresight MILP (`compute.solve_site`), batch work carried across days.
Prints revenue by class, service levels met, energy and emissions per unit of work, and the
solve time with compute against the same days without it (the ratio).

    python optimization/benchmarks/mixed_site.py                    # Feb 2020, 7 days
    python optimization/benchmarks/mixed_site.py --prices ercot/RTM-2021-02.csv --start 2021-02-12 --days 7
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from hashflex.backtest.mix import plan_window
from hashflex.backtest.runner import build_actuals, load_prices
from hashflex.data import bundled_path
from hashflex.profile import SiteProfile, load_profile


def mixed_profile(base: SiteProfile, start: pd.Timestamp, days: int) -> SiteProfile:
    """``base`` with a mixed fleet over ``days`` days from ``start`` (SYNTHETIC)."""
    data = base.model_dump(mode="json")
    tz = base.site.timezone
    jobs = []
    for k in range(days):
        release = (start + pd.Timedelta(days=k)).tz_localize(tz)
        jobs.append({"id": f"b-{release:%m%d}", "cluster": "g1", "gpu_hours": 600, "max_gpus": 64,
                     "release": release.isoformat(), "deadline": (release + pd.Timedelta(hours=36)).isoformat(),
                     "revenue_usd_per_gpu_hour": 2.2, "late_penalty_usd_per_gpu_hour": 10.0,
                     "checkpoint_cost_usd_per_gpu": 0.5})
    data["compute"] = {
        "clusters": [{"id": "g1", "nodes": 16, "gpus_per_node": 8, "idle_power_kw": 1.6, "full_power_kw": 10.2,
                      "cooling_overhead_fraction": 0.15, "cooling_sound_power_dba": 88}],
        "inference": [{"id": "chat", "cluster": "g1", "tokens_per_s_per_gpu": 1500, "demand_tokens_per_s": 150_000,
                       "demand_trace": "azure_conv", "service_level": 0.99, "revenue_usd_per_million_tokens": 2.0,
                       "penalty_usd_per_million_tokens": 20.0}],
        "batch": jobs,
        "spot": [{"id": "spot", "cluster": "g1", "max_gpus": 128, "price_usd_per_gpu_hour": 0.9}],
    }
    for receptor, spec in zip(data["receptors"], base.receptors):
        nearest = min(spec.attenuation_from(g.id) for g in base.miner_groups)
        receptor.setdefault("attenuation_db", {})["g1"] = nearest
    return SiteProfile.model_validate(data)


def main() -> None:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prices", default="ercot/RTM-2020-02.csv")
    parser.add_argument("--start", default="2020-02-03", help="first local day")
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    base = load_profile("quiet_hollow")
    start = pd.Timestamp(args.start)
    mixed = mixed_profile(base, start, args.days)
    prices = load_prices(base, [bundled_path(args.prices)], [])
    actuals = build_actuals(base, prices, start, start + pd.Timedelta(days=args.days))
    first_day = build_actuals(base, prices, start, start + pd.Timedelta(days=1))
    plan_window(base, first_day)  # warm-up (imports, first HiGHS instance): not timed
    wall = time.perf_counter()
    base_frame, base_s = plan_window(base, actuals)
    mixed_frame, mixed_s = plan_window(mixed, actuals)
    f, dt = mixed_frame, mixed_frame["duration_h"]
    kg_per_kwh = f["intensity_kg_per_mwh"] / 1000.0
    cooling = 1.15
    miner_kwh = f["load_kw"] - f["cluster_kw_g1"]
    classes = {
        "mining": (float(f["revenue_usd"].sum()), float((miner_kwh * dt).sum()),
                   float((f["hashrate_th_s"] * dt * 3600).sum()) / 1e6, "EH"),
        "inference": (float((f["served_tokens_per_s_chat"] * 3600 * dt / 1e6 * 2.0).sum()),
                      float((f["it_kw_chat"] * cooling * dt).sum()),
                      float((f["served_tokens_per_s_chat"] * 3600 * dt).sum()) / 1e6, "M tokens"),
    }
    batch_cols = [c for c in f.columns if c.startswith("work_gpu_h_b-")]
    batch_work = float(sum(f[c].sum() for c in batch_cols))
    batch_kwh = float(sum((f[c.replace("work_gpu_h_", "it_kw_")] * cooling * dt).sum() for c in batch_cols))
    classes["batch"] = (batch_work * 2.2, batch_kwh, batch_work, "GPU-h")
    classes["spot"] = (float((f["gpus_spot"] * dt * 0.9).sum()), float((f["gpus_spot"] * 10.2 / 8 * cooling * dt).sum()),
                       float((f["gpus_spot"] * dt).sum()), "GPU-h")
    mean_kg_per_kwh = float((f["grid_import_kw"] * dt * kg_per_kwh).sum() / max((f["grid_import_kw"] * dt).sum(), 1e-9))
    print(f"quiet_hollow + 128 GPUs, {args.prices} from {args.start}, {args.days} days, perfect foresight per day")
    print(f"{'class':<10}{'revenue $':>12}{'energy MWh':>12}{'work':>14}{'kWh / unit':>14}{'kg CO2 / unit':>15}")
    for name, (revenue, kwh, work, unit) in classes.items():
        per = kwh / work if work else float("nan")
        print(f"{name:<10}{revenue:>12,.0f}{kwh / 1000:>12,.1f}{work:>10,.1f} {unit:<4}{per:>13,.2f} "
              f"{per * mean_kg_per_kwh:>14,.2f}")
    print(f"GPU idle + cooling of idle GPUs: {float(((f['cluster_kw_g1'] / cooling - f['it_kw_chat'] - sum(f[c.replace('work_gpu_h_', 'it_kw_')] for c in batch_cols) - f['gpus_spot'] * 10.2 / 8) * cooling * dt).sum()) / 1000:,.1f} MWh")
    sl = f["service_level_chat"].to_numpy()
    print(f"inference service level >= 99 %: {np.mean(sl >= 0.99 - 1e-9) * 100:.1f} % of intervals (min {sl.min() * 100:.2f} %)")
    done = {c[len('work_gpu_h_'):]: float(f[c].sum()) for c in batch_cols}
    on_time = sum(1 for v in done.values() if v >= 600 - 1e-6)
    print(f"batch jobs with all 600 GPU-h done in the window: {on_time} of {len(done)} "
          f"(the last may finish after the window; its deadline is 36 h after release)")
    print(f"mining revenue: mixed ${f['revenue_usd'].sum():,.0f} vs miners only ${base_frame['revenue_usd'].sum():,.0f} "
          f"(the GPUs take import and noise headroom)")
    print(f"profit: mixed ${f['profit_usd'].sum():,.0f} vs miners only ${base_frame['profit_usd'].sum():,.0f}; "
          f"mean grid intensity {mean_kg_per_kwh * 1000:.0f} kg/MWh")
    print(f"solve time: with compute {mixed_s:.1f} s, without {base_s:.1f} s, ratio {mixed_s / base_s:.2f} "
          f"({args.days} MILPs each); wall {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    main()
