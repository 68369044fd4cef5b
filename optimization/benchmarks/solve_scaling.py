"""Solve time of the schedule MILP against horizon and fleet size, Pyomo vs bare highspy.

SYNTHETIC site (not a real one): G miner groups of 3 modes each (eco/stock/turbo, S21-like figures,
group sizes 150-400 units, air-cooled and hydro mixed), two receptors with night caps (one capped on
the total level, one on the site's contribution), 24 h of ERCOT-like prices with an evening spike,
solar, a 2 h DR import-limit window, a daily carbon budget, a ramp limit, min on/off and start costs.

For T in {96 (15-min), 288 (5-min)} × G in {3, 12, 48} it prints the median over a few runs of
  * the Pyomo build, solve (LP → rounding → warm-started MIP) and `solve()` wall time, status, gap;
  * the same model built and solved directly in highspy (bare_highspy.py): build, solve, total;
  * the ratio (Pyomo build + translation) / bare build;
  * a re-plan (inputs shifted one interval, prices ±10 %) warm-started from the previous LP basis;
and for T=288 the wall time of `solve_multiresolution(fine_intervals=24)`.

`solve()` itself now builds these problems from numpy arrays (`optimize.fast_build`, the same LP as
the Pyomo compile, which bare_highspy.py now wraps); the "build" and "translate" columns time the
Pyomo route (`milp.build_model` + `compile_to_highs`) on its own, as the reference it still is.

    python optimization/benchmarks/solve_scaling.py [--runs 5] [--quick] [--time-limit 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor  # noqa: E402

GOAL_T96_G12_S = 0.5
GOAL_T288_G48_S = 3.0
GOAL_OVERHEAD = 1.5
SHORT_STATUS = {"optimal": "optimal", "feasible_with_gap": "feasgap", "time_limit": "timelim",
                "failed_fallback": "FALLBACK"}


def synthetic_problem(T: int, n_groups: int, interval_min: int = 15, seed: int = 7) -> Problem:
    """A SYNTHETIC but realistic site: T intervals of ``interval_min`` from local midnight."""
    rng = np.random.default_rng(seed)
    dt_h = interval_min / 60.0
    start = pd.Timestamp("2025-07-15 05:00", tz="UTC")  # local midnight (CDT); hours below count from it
    interval_start = pd.date_range(start, periods=T, freq=f"{interval_min}min")
    hour = (np.arange(T) * dt_h) % 24.0
    # ERCOT-like summer day: cheap night, solar dip at noon, evening ramp with a spike at 19-20 h.
    price = 28 + 12 * np.sin((hour - 9) / 24 * 2 * np.pi) + rng.normal(0, 4, T)
    price = np.where((hour >= 11) & (hour < 15), price - 18, price)
    price = np.where((hour >= 19) & (hour < 20), 900.0, price)
    price = np.where((hour >= 18) & (hour < 19), 95.0 + rng.normal(0, 10, T), price)
    solar = np.clip(np.sin((hour - 6.5) / 13 * np.pi), 0, None)

    groups = []
    total_full_kw = 0.0
    for g in range(n_groups):
        hydro = g % 3 == 0
        units = int(rng.integers(150, 400))
        if hydro:
            modes = (Mode("eco", 5.3, 410, 62), Mode("stock", 6.4, 473, 64), Mode("turbo", 7.8, 540, 66))
        else:
            modes = (Mode("eco", 2.9, 175, 81), Mode("stock", 3.5, 200, 84), Mode("turbo", 4.2, 230, 86))
        available = np.full(T, units)
        if g % 5 == 1:  # maintenance on part of the group for 3 h
            available[int(8 / dt_h):int(11 / dt_h)] = units - 20
        on0 = int(units * 0.8)
        groups.append(Group(
            id=f"g{g:02d}", units=units, modes=modes, units_available=available.astype(int),
            idle_power_kw=0.02 if hydro else 0.01, min_on_h=0.5, min_off_h=0.25,
            start_cost_usd=0.05 if hydro else 0.03,
            initial=GroupState(units_on=on0, load_kw=on0 * modes[1].power_kw,
                               must_stay_on=((0.25, min(10, on0)),)),
        ))
        total_full_kw += units * modes[2].power_kw

    import_limit = np.full(T, 0.8 * total_full_kw)
    source = ["import limit"] * T
    dr = (hour >= 16) & (hour < 18)
    import_limit[dr] = 0.3 * total_full_kw
    for t in np.flatnonzero(dr):
        source[t] = "DR"
    night = (hour < 7) | (hour >= 21)

    def receptor(rid: str, base_att: float, cap_day: float, cap_night: float, applies: str) -> Receptor:
        att = {grp.id: base_att + (25.0 if grp.modes[0].power_kw > 5 else 0.0) + float(rng.uniform(-3, 3))
               for grp in groups}
        return Receptor(id=rid, attenuation_db=att, cap_dba=np.where(night, cap_night, cap_day),
                        background_dba=36.0, cap_applies_to=applies, margin_db=1.0)

    # Attenuation grows with fleet size so that the night cap binds at roughly half the air fleet.
    spread = 10 * np.log10(max(n_groups, 1))
    receptors = (receptor("ranch_north", 52.0 + spread, 55.0, 45.0, "total"),
                 receptor("school", 58.0 + spread, 50.0, 48.0, "site"))
    intensity = 380 - 150 * solar + rng.normal(0, 10, T)
    full_day_kg = 0.6 * total_full_kw * 24 * 380 / 1000
    return Problem(
        interval_start=interval_start,
        duration_h=np.full(T, dt_h),
        price_usd_mwh=price,
        price_adder_usd_mwh=4.6,
        hashprice_usd_per_ph_day=np.full(T, 49.0),
        pool_fee=0.02,
        groups=tuple(groups),
        renewable_kw=0.25 * total_full_kw * solar,
        import_limit_kw=import_limit,
        import_limit_source=tuple(source),
        export_limit_kw=0.0,
        receptors=receptors,
        intensity_kg_per_mwh=intensity,
        carbon_price_usd_per_t=10.0,
        carbon_budgets=(CarbonBudget("daily", np.ones(T, dtype=bool), 0.7 * full_day_kg),),
        ramp_limit_kw_per_h=6.0 * total_full_kw,  # 10 %/min, like west_texas.yaml
        initial_load_kw=sum(grp.initial.load_kw for grp in groups),
        base_interval_h=dt_h,
    )


def replan_problem(problem: Problem, seed: int) -> Problem:
    """The next re-plan: prices, solar and intensity shifted by one interval, prices ±10 %."""
    rng = np.random.default_rng(seed)
    return dataclasses.replace(
        problem,
        price_usd_mwh=np.roll(problem.price_usd_mwh, -1) * rng.uniform(0.9, 1.1, problem.T),
        renewable_kw=np.roll(problem.renewable_kw, -1),
        intensity_kg_per_mwh=np.roll(problem.intensity_kg_per_mwh, -1),
    )


def _median(values: list[float | None]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def measure(T: int, n_groups: int, interval_min: int, runs: int, time_limit_s: float) -> dict:
    """Median timings over ``runs`` for one case (Pyomo `solve()`, its build and translation, bare highspy)."""
    from bare_highspy import build_bare, solve_bare

    from hashflex.optimize import solve as milp  # build_model, compile_to_highs, solve re-exported

    problem = synthetic_problem(T, n_groups, interval_min)
    row: dict = {"T": T, "interval": f"{interval_min}-min", "groups": n_groups}
    walls, builds, solves, translates, statuses, gaps, messages = [], [], [], [], [], [], []
    bare_builds, bare_solves, bare_walls, bare_objectives = [], [], [], []
    objectives, bare_statuses = [], []
    for _ in range(runs):
        started = time.perf_counter()
        schedule = milp.solve(problem, time_limit_s=time_limit_s)
        walls.append(time.perf_counter() - started)
        statuses.append(SHORT_STATUS.get(schedule.status.value, schedule.status.value))
        gaps.append(schedule.info.gap if schedule.info.gap is not None else float("nan"))
        objectives.append(schedule.info.objective_usd)
        messages.append(schedule.info.message)
        # Build and translation (Pyomo model -> highspy rows) timed on their own: a fallback's
        # SolveInfo carries no timings, and the overhead ratio needs the translation alone.
        started = time.perf_counter()
        model = milp.build_model(problem)
        built = time.perf_counter()
        milp.compile_to_highs(model, problem)
        builds.append(built - started)
        translates.append(time.perf_counter() - built)
        solves.append(schedule.info.solve_seconds if schedule.status.value != "failed_fallback" else None)
        started = time.perf_counter()
        bare = solve_bare(problem, time_limit_s=time_limit_s)
        bare_walls.append(time.perf_counter() - started)
        bare_builds.append(bare.build_seconds)
        bare_solves.append(bare.solve_seconds)
        bare_objectives.append(bare.outcome.objective)
        bare_statuses.append(SHORT_STATUS.get(bare.outcome.status.value, "") if bare.outcome.status else "FALLBACK")
    shape = build_bare(problem)
    row.update(
        cols=shape.n_cols, rows=shape.n_rows,
        build=_median(builds), translate=_median(translates), solve=_median(solves), wall=_median(walls),
        status="/".join(sorted(set(statuses))), gap=max(gaps),
        mip_skipped=sum("within the gap of the LP bound" in m for m in messages),
        runs=runs,
        bare_status="/".join(sorted(set(bare_statuses))), bare_build=_median(bare_builds), bare_solve=_median(bare_solves), bare_wall=_median(bare_walls),
        objective=_median(objectives), bare_objective=_median(bare_objectives),
    )
    row["overhead"] = (row["build"] + row["translate"]) / row["bare_build"]
    # Re-plan with the LP basis of the previous plan (LpBasisCache), primed once without a deadline.
    cache = milp.LpBasisCache()
    milp.solve(problem, time_limit_s=120.0, basis_cache=cache)
    warm = []
    for run in range(runs):
        started = time.perf_counter()
        milp.solve(replan_problem(problem, run), time_limit_s=time_limit_s, basis_cache=cache)
        warm.append(time.perf_counter() - started)
    row["replan"] = _median(warm)
    if T == 288:
        multi = []
        for _ in range(runs):
            started = time.perf_counter()
            coarse = milp.solve_multiresolution(problem, fine_intervals=24, time_limit_s=time_limit_s)
            multi.append(time.perf_counter() - started)
        row["multires"] = _median(multi)
        row["multires_status"] = SHORT_STATUS.get(coarse.status.value, coarse.status.value)
    return row


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case (at most 3 / 2 for 48 groups at T=96 / 288)")
    parser.add_argument("--quick", action="store_true", help="only T=96 × {3, 12} and one run each")
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args(argv)
    cases = [(96, g, 15) for g in (3, 12, 48)] + [(288, g, 5) for g in (3, 12, 48)]
    if args.quick:
        cases = [(96, 3, 15), (96, 12, 15)]
    print("SYNTHETIC site (optimization/benchmarks/solve_scaling.py: 3 modes per group, 2 receptors, "
          "DR window, carbon budget, min on/off, ramp); medians; times in seconds")
    header = (f"{'T':>4} {'grid':>6} {'G':>3} {'cols':>6} {'rows':>6} | {'build':>6} {'transl':>6} {'solve':>6} "
              f"{'solve()':>7} {'status':>8} {'gap':>7} {'noMIP':>5} | {'bare bld':>8} {'bare slv':>8} "
              f"{'bare tot':>8} {'status':>8} | {'ovh':>5} | {'re-plan':>7} | {'multires':>8}")
    print(header)
    print("-" * len(header))
    results = []
    for T, groups, interval in cases:
        runs = 1 if args.quick else args.runs
        if groups >= 48:  # fewer runs for the big cases
            runs = min(runs, 3 if T <= 96 else 2)
        row = measure(T, groups, interval, runs, args.time_limit)
        results.append(row)
        multires = f"{row['multires']:8.3f} {row['multires_status']}" if "multires" in row else ""
        print(f"{T:>4} {row['interval']:>6} {groups:>3} {row['cols']:>6} {row['rows']:>6} | {row['build']:6.3f} "
              f"{row['translate']:6.3f} {row['solve']:6.3f} {row['wall']:7.3f} {row['status'][:8]:>8} "
              f"{row['gap']:7.1e} {row['mip_skipped']}/{row['runs']:<3} | {row['bare_build']:8.4f} "
              f"{row['bare_solve']:8.3f} {row['bare_wall']:8.3f} {row['bare_status'][:8]:>8} | {row['overhead']:5.1f} | "
              f"{row['replan']:7.3f} | {multires}", flush=True)
        if abs(row["objective"] - row["bare_objective"]) > 0.005 * abs(row["objective"]):
            print(f"     objective differs: Pyomo {row['objective']:.2f} vs bare {row['bare_objective']:.2f}")
    print()
    print("build = Pyomo build_model; transl = Pyomo model -> highspy rows (compile_to_highs); solve = transl + "
          "LP + rounding + (MIP); solve() = whole wall time incl. schedule/reasons; noMIP = runs where the LP "
          "bound proved the rounded start within the gap; ovh = (build + transl) / bare build; re-plan = solve() "
          "wall time of the next plan (inputs shifted one interval, prices ±10 %) warm-started from the previous "
          "plan's LP basis (LpBasisCache); multires = solve_multiresolution(fine_intervals=24) wall time (cold)")
    by_case = {(r["T"], r["groups"]): r for r in results}
    goals = [
        ("T=96 x 12 groups solve() median < 0.5 s", (96, 12), lambda r: r["wall"] < GOAL_T96_G12_S, "wall"),
        ("T=288 x 48 groups solve() median < 3 s", (288, 48), lambda r: r["wall"] < GOAL_T288_G48_S, "wall"),
        ("T=288 x 48 groups solve_multiresolution(fine_intervals=24) median < 3 s", (288, 48),
         lambda r: r["multires"] < GOAL_T288_G48_S, "multires"),
    ]
    for text, key, check, field in goals:
        if key in by_case:
            r = by_case[key]
            print(f"GOAL {text}: {r[field]:.3f} s -> {'MET' if check(r) else 'NOT MET'}")
    worst = max(results, key=lambda r: r["overhead"])
    print(f"GOAL Pyomo build+translate <= {GOAL_OVERHEAD}x bare highspy build: worst {worst['overhead']:.1f}x "
          f"(T={worst['T']}, G={worst['groups']}) -> {'MET' if worst['overhead'] <= GOAL_OVERHEAD else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
