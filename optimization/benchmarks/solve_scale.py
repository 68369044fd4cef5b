"""The 5-minute × 48-group solve (issue 18, goal 3 s): what HiGHS and the formulation can do, side by side.

Two SYNTHETIC problems of 24 h at 5 minutes (T = 288) with 48 groups of 2-3 modes:

* ``synthetic``: `solve_scaling.synthetic_problem(288, 48)` (the issue's case: every group has its
  own attenuation to each receptor, so no two groups are alike);
* ``panhandle``: panhandle_120mw-like (hydro S21 XP Hyd in two blocks and immersion S19 XP, 48
  containers = 3 kinds × 16, two distance bands to the receptor, a DR window, a daily carbon
  budget, min on/off, start costs). Containers of one kind in one band are alike (symmetric).

Measured, in one run, per problem:

0. **before / after**: cold `solve()` of the code at the baseline commit (default ``1e0fd7c``, the
   commit before the cold path's second LP ran with Devex edge weights; ``--baseline 4953d1a`` for the
   commit before issue 18's solve work) against today's tree: ``--runs`` rounds, each a child process
   per side (`baseline_tree.alternate`: `git archive` of the commit's ``src``, the sides alternating
   which goes first, never concurrently), each warming up on a small problem and then timing one
   cold solve; medians of wall and CPU seconds side by side with their ratios and both objectives;
1. today's `solve()` cold: wall time, its build and solve parts, status, gap, objective (and, for a
   problem with identical groups, the same without pooling them, ``pool_identical=False``);
2. the LP relaxation alone (the model as `solve()` hands it to HiGHS, one run each): simplex with the
   interval-coupling rows deferred (what `solve_lp_round_mip` does) and at once, IPM, PDLP; presolve on/off;
3. a re-plan one interval later (inputs shifted, prices ±10 %): cold `solve()`, the kept model
   updated in place with the previous LP basis (`LpBasisCache`, today's re-plan path), and the
   previous *optimal basis shifted by one interval* (status of interval t+1 given to t);
4. smaller formulations: symmetric groups aggregated into one group per class
   (`optimize.symmetry`, what `solve()` now does itself), and the multiresolution grid
   (`solve_multiresolution`, fine 2 h then hourly blocks, as the daemon runs a 5-minute profile with
   ``fine_horizon_hours: 2``) with its objective against the full solve.

What was tried for the cold full-resolution solve (SYNTHETIC 288 × 48, CPU seconds of the LP alone
unless said; the machine is shared, so CPU is the steadier figure):

* today's procedure before this change: LP without the carbon row, then the row added: 2.6 + 5.5 s;
* **the rows that couple intervals (transition, min on/off, ramp) deferred instead**, the carbon row
  in the first LP: 0.8 + 0.7 s, same optimum (kept: `highs_compile.DEFERRED_ROW_FAMILIES`);
* the carbon row as a staircase of cumulative emissions (T rows of 3 entries): 17 s (worse);
* IPM with or without crossover: 27 s (the per-interval blocks make the normal matrix dense);
* a Lagrangian on the carbon row (secant on λ from [0, λ_max], each LP(λ) warm): 8.6 s to a
  2.6e-8 gap; then adding the row to the last basis took another 9.8 s;
* dropping the commitment rows altogether bounds the LP 0.68 % above its optimum (more than the gap);
* simplex pricing strategies and pushing the availability or min-off rows later: no gain; with the
  coupling rows deferred, the first LP by the primal simplex 5.9 s (dual 0.8 s), presolve off or
  no scaling within 10 %, and a third stage (the carbon row added between the two) 2.3 s in all;
* **the second LP (the first one's basis with the coupling rows added) with Devex dual edge weights**
  instead of HiGHS's choice (dual steepest edge, whose exact initial weights cost more than they
  save): that LP 0.90 → 0.60 s (SYNTHETIC), 4.08 → 1.88 s (panhandle-like), same optimum (kept:
  `solve.HOT_START_DUAL_EDGE_WEIGHTS`); Devex on the first, cold LP 0.86 → 1.4 s and on a re-plan
  from a cached basis 0.51 → 0.63 s: not used there. No scaling, price/crash strategies, no cost
  perturbation on top: no steady gain;
* **the deferred rows in two stages, transition rows first** (then min on/off and ramp, each LP
  hot-started with Devex): the deferred stages 2.14 → 1.38 s (panhandle-like; the min on/off rows
  bind only through the starts and stops the transition rows define), SYNTHETIC unchanged
  (0.54 → 0.55 s); same optimum (kept: `highs_compile.FIRST_DEFERRED_FAMILY`). Ramp rows with the
  transition rows instead: 1.77 s;
* **the LP valuing the rounded start (counts fixed) without presolve** (`solve.VALUING_LP_PRESOLVE`;
  not for GPU-compute sites): 0.180 → 0.070 s (SYNTHETIC), 0.134 → 0.061 s (panhandle-like), same
  objective; hot-starting it from the relaxation's basis instead: 2.1 s / 1.2 s (worse);
* a re-plan from the previous optimal basis *shifted by one interval* (`shifted_basis` below):
  worse than the previous basis unshifted (SYNTHETIC 8.45 s vs 0.70 s, panhandle-like 1.48 vs
  0.68 s, medians of 5 under heavy load): not used;
* **the model built from numpy arrays** (`optimize.fast_build`, the Pyomo compile entry by entry):
  build + compile 2.2 s → 0.16 s; **reasons vectorised** 0.44 s → 0.01 s; scipy no longer imported
  by a solve without reserves (~1 s of a fresh process).

    python optimization/benchmarks/solve_scale.py [--runs 3] [--problems synthetic panhandle] [--skip-lp]
        [--baseline 1e0fd7c | --no-baseline] [--skip-replan]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import highspy
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_tree import (
    DEFAULT_BASELINE,
    REPO,
    alternate,
    median_of,
    ratio_line,
    run_child,
)
from solve_scaling import replan_problem, synthetic_problem

from hashflex.optimize import solve as milp
from hashflex.optimize.problem import (
    CarbonBudget,
    Group,
    GroupState,
    Mode,
    Problem,
    Receptor,
)

GOAL_S = 3.0


def panhandle_like_problem(T: int = 288, n_groups: int = 48, seed: int = 11) -> Problem:
    """SYNTHETIC: a panhandle_120mw-like site split into ``n_groups`` containers of 3 kinds.

    Parameters
    ----------
    T : number of 5-minute intervals from local midnight
    n_groups : containers (a multiple of 3: hydro A, hydro B, immersion)
    seed : price noise

    Returns
    -------
    Problem
        Prices, wind, a 2 h DR window at 16-18 h (40 MW), a daily carbon budget, a ramp limit.
    """
    rng = np.random.default_rng(seed)
    dt_h = 5 / 60
    start = pd.Timestamp("2025-07-15 05:00", tz="UTC")
    hour = (np.arange(T) * dt_h) % 24.0
    price = 30 + 14 * np.sin((hour - 9) / 24 * 2 * np.pi) + rng.normal(0, 5, T)
    price = np.where((hour >= 19) & (hour < 20), 1200.0, price)
    wind = 0.5 + 0.4 * np.cos(hour / 24 * 2 * np.pi)
    hyd = (Mode("eco", 5.3, 410, 62), Mode("stock", 6.4, 473, 64), Mode("turbo", 7.8, 540, 66))
    imm = (Mode("eco", 2.6, 120, 60), Mode("stock", 3.0, 134, 62))
    groups, attenuation = [], {}
    per = n_groups // 3
    for g in range(n_groups):
        kind = g % 3
        modes = imm if kind == 2 else hyd
        units = 300 if kind == 2 else 375
        on0 = units // 2
        band = (g // 3) % 2
        gid = f"{('hyd_a', 'hyd_b', 'imm')[kind]}_{g // 3:02d}"
        groups.append(Group(id=gid, units=units, modes=modes, units_available=np.full(T, units),
                            idle_power_kw=0.02, min_on_h=0.25, min_off_h=10 / 60,
                            start_cost_usd=0.03 if kind == 2 else 0.05,
                            initial=GroupState(units_on=on0, load_kw=on0 * modes[0].power_kw)))
        attenuation[gid] = 81.0 + 3.0 * band + (2.0 if kind == 0 else 0.0)
    del per
    total_kw = sum(gr.units * gr.modes[-1].power_kw for gr in groups)
    limit = np.full(T, 125_000.0 * n_groups / 48)
    dr = (hour >= 16) & (hour < 18)
    limit[dr] = 40_000.0 * n_groups / 48
    source = tuple("DR" if d else "import limit" for d in dr)
    night = (hour < 6) | (hour >= 22)
    receptor = Receptor(id="farmstead_west", attenuation_db=attenuation, cap_dba=np.where(night, 45.0, 50.0),
                        background_dba=30.0, cap_applies_to="total", margin_db=1.0)
    intensity = 370 - 120 * wind + rng.normal(0, 8, T)
    return Problem(
        interval_start=pd.date_range(start, periods=T, freq="5min"), duration_h=np.full(T, dt_h),
        price_usd_mwh=price, price_adder_usd_mwh=3.5, hashprice_usd_per_ph_day=np.full(T, 49.0), pool_fee=0.015,
        groups=tuple(groups), renewable_kw=0.25 * total_kw * wind, import_limit_kw=limit,
        import_limit_source=source, export_limit_kw=0.0, receptors=(receptor,), intensity_kg_per_mwh=intensity,
        carbon_price_usd_per_t=15.0,
        carbon_budgets=(CarbonBudget("daily", np.ones(T, dtype=bool), 0.5 * total_kw * 24 * 370 / 1000),),
        ramp_limit_kw_per_h=20_000.0 * 60 * n_groups / 48,
        initial_load_kw=sum(gr.initial.load_kw for gr in groups), base_interval_h=dt_h)


# ---------------------------------------------------------------- measurements

def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _timed_solve(problem: Problem, time_limit_s: float, **kw: object) -> tuple[float, object]:
    started = time.perf_counter()
    schedule = milp.solve(problem, time_limit_s=time_limit_s, **kw)
    return time.perf_counter() - started, schedule


def cold_runs(problem: Problem, runs: int, time_limit_s: float, **kw: object) -> dict:
    """``runs`` cold `solve()` calls: medians of wall and CPU seconds, of the build and solve parts,
    and the last run's status, gap and objective."""
    walls, cpus, builds, solves = [], [], [], []
    for _ in range(runs):
        cpu = time.process_time()
        wall, schedule = _timed_solve(problem, time_limit_s, **kw)
        cpus.append(time.process_time() - cpu)
        walls.append(wall)
        builds.append(schedule.info.build_seconds or 0.0)
        solves.append(schedule.info.solve_seconds or 0.0)
    return {"wall": _median(walls), "cpu": _median(cpus), "build": _median(builds), "solve": _median(solves),
            "status": schedule.status.value, "gap": schedule.info.gap, "objective": schedule.info.objective_usd,
            "profit": float(schedule.total_profit_usd), "message": schedule.info.message}


MAKERS = {"synthetic": lambda: synthetic_problem(288, 48, 5), "panhandle": panhandle_like_problem}


def side_by_side(commit: str, name: str, runs: int, time_limit_s: float) -> tuple[dict | None, dict]:
    """Cold `solve()` of ``name`` on ``commit`` and on today's tree, ``runs`` rounds alternating
    which goes first, each a child process (`baseline_tree.alternate`) that warms up on a small
    problem and then times one cold solve. Returns (before medians or None, after medians);
    without a baseline (it could not be archived or failed), the after column runs alone."""
    script = Path(__file__).resolve()
    args = ["--baseline-worker", name, "--time-limit", str(time_limit_s)]
    try:
        before, after = alternate(commit, script, args, runs)
    except RuntimeError as exc:
        print(f"  (baseline {commit}: {exc})")
        after = [run_child(script, args, REPO / "src") for _ in range(runs)]
        before = None

    def medians(results: list[dict]) -> dict:
        out = {key: median_of(results, key) for key in ("wall", "cpu", "build", "solve", "profit")}
        out.update({key: results[-1][key] for key in ("status", "objective", "gap", "message")})
        return out

    return (medians(before) if before else None), medians(after)


def _worker(name: str, time_limit_s: float) -> int:
    """The child process of `side_by_side`: one warm-up solve of a small SYNTHETIC problem (so both
    columns pay their imports outside the timing), then one timed cold solve; one JSON line."""
    import hashflex

    milp.solve(synthetic_problem(96, 3, 15), time_limit_s=time_limit_s)
    result = cold_runs(MAKERS[name](), 1, time_limit_s)
    result["hashflex"] = str(Path(hashflex.__file__).resolve().parent)
    print(json.dumps(result))
    return 0


def before_after(name: str, before: dict | None, after: dict, commit: str) -> None:
    """The side-by-side lines: medians of cold solve() wall and CPU, ratios, objectives."""
    if before is None:
        print(f"  cold solve() now: wall {after['wall']:.3f} s, CPU {after['cpu']:.3f} s (no baseline)")
        return
    diff = (after["profit"] - before["profit"]) / max(abs(before["profit"]), 1e-9)
    print(f"  cold solve() medians, alternated child runs {'before (' + commit + ')':>14} {'after (now)':>12} {'ratio':>9}")
    print(ratio_line("wall", before["wall"], after["wall"]))
    print(ratio_line("CPU", before["cpu"], after["cpu"]))
    print(ratio_line("build+compile", before["build"], after["build"]))
    print(ratio_line("LP+rounding+MIP", before["solve"], after["solve"]))
    print(f"    {'status':28} {before['status']:>12} {after['status']:>12}")
    print(f"    {'objective $':28} {before['objective'] or float('nan'):12.2f} {after['objective'] or float('nan'):12.2f}")
    print(f"    {'schedule profit $':28} {before['profit']:12.2f} {after['profit']:12.2f} {diff:+9.1e} (relative)",
          flush=True)


def lp_rows(problem: Problem, time_limit_s: float) -> None:
    """The LP relaxation by each HiGHS LP solver and presolve setting (cold, one run each)."""
    model = milp.build_model(problem)
    print(f"  {'LP relaxation':34} {'s':>8} {'status':>12} {'objective':>14} {'iter':>7}")
    for label, solver, presolve, deferred in (("simplex, coupling rows deferred", "simplex", "on", True),
                                              ("simplex", "simplex", "on", False),
                                              ("simplex, presolve off", "simplex", "off", False),
                                              ("ipm", "ipm", "on", False), ("ipm, presolve off", "ipm", "off", False),
                                              ("pdlp", "pdlp", "on", False)):
        compiled = milp.compile_to_highs(model, problem)
        highs = compiled.highs
        highs.setOptionValue("solver", solver)
        highs.setOptionValue("presolve", presolve)
        highs.setOptionValue("time_limit", time_limit_s)
        started = time.perf_counter()
        if compiled.deferred is not None:
            if deferred:
                highs.run()
            compiled.deferred.add_to(highs)
        highs.run()
        elapsed = time.perf_counter() - started
        info = highs.getInfo()
        iters = info.simplex_iteration_count + info.ipm_iteration_count + info.pdlp_iteration_count
        print(f"  {label:34} {elapsed:8.3f} {highs.modelStatusToString(highs.getModelStatus()):>12} "
              f"{info.objective_function_value:14.2f} {iters:7d}", flush=True)


def shifted_basis(compiled: milp.CompiledModel, basis: highspy.HighsBasis) -> highspy.HighsBasis | None:
    """The optimal basis of the previous plan moved one interval earlier: every column and row
    indexed by interval t gets the status of its t+1 twin (the last interval keeps its own); the
    count of basic variables is then repaired with the last interval's row slacks."""
    col_status, row_status = list(basis.col_status), list(basis.row_status)
    new_col, new_row = list(col_status), list(row_status)
    for table, old, new in ((compiled.col_at, col_status, new_col), (compiled.row_at, row_status, new_row)):
        for slots in table.values():
            for index, at in slots.items():
                t = index[-1] if isinstance(index, tuple) else index
                key_next = (index[:-1] + (t + 1,)) if isinstance(index, tuple) else t + 1
                if isinstance(t, (int, np.integer)) and key_next in slots:
                    new[at] = old[slots[key_next]]
    basic = highspy.HighsBasisStatus.kBasic
    n_basic = sum(s == basic for s in new_col) + sum(s == basic for s in new_row)
    excess = n_basic - len(new_row)
    rows_last = sorted((at for slots in compiled.row_at.values() for index, at in slots.items()), reverse=True)
    for at in rows_last:
        if excess == 0:
            break
        if excess < 0 and new_row[at] != basic:
            new_row[at], excess = basic, excess + 1
        elif excess > 0 and new_row[at] == basic:
            new_row[at], excess = highspy.HighsBasisStatus.kUpper, excess - 1
    out = highspy.HighsBasis()
    out.col_status, out.row_status = new_col, new_row
    out.valid = True
    return out


def replan_rows(problem: Problem, runs: int, time_limit_s: float) -> dict:
    """Re-plan one interval later (identical groups not pooled): cold, in place + previous basis,
    in place + shifted basis."""
    # The full model's re-plan path: identical groups are not pooled here (pooling has its own row).
    cache = milp.LpBasisCache()
    milp.solve(problem, time_limit_s=120.0, basis_cache=cache, pool_identical=False)
    template = milp.template_key(problem)
    cold, kept, shifted, objectives = [], [], [], []
    for run in range(runs):
        replan = replan_problem(problem, run)
        w, s_cold = _timed_solve(replan, time_limit_s, pool_identical=False)
        cold.append(w)
        w, s_kept = _timed_solve(replan, time_limit_s, basis_cache=cache, pool_identical=False)
        kept.append(w)
        # shifted basis: the kept model, updated, from the previous basis moved one interval
        compiled = cache.take_model(template)
        basis = cache.get(compiled.structure_key)
        started = time.perf_counter()
        milp.update_in_place(compiled, replan)
        moved = shifted_basis(compiled, basis)
        one = milp.LpBasisCache()
        one.put(compiled.structure_key, moved)
        outcome = milp.solve_lp_round_mip(compiled, replan, time_limit_s=time_limit_s,
                                          rel_gap=milp.DEFAULT_REL_GAP, basis_cache=one)
        shifted.append(time.perf_counter() - started)
        cache.put_model(template, compiled)
        objectives.append((s_cold.info.objective_usd, s_kept.info.objective_usd, outcome.objective))
    m = {"cold": _median(cold), "kept": _median(kept), "shifted": _median(shifted)}
    pairs = [(a, x) for a, b, c in objectives for x in (b, c) if a is not None and x is not None]
    worst = max((abs(a - x) / max(abs(a), 1e-9) for a, x in pairs), default=float("nan"))
    missing = sum(v is None for triple in objectives for v in triple)
    if missing:
        print(f"  ({missing} run(s) ended without an objective: time limit or fallback)")
    print(f"  re-plan one interval later ({runs} runs, medians): cold solve() {m['cold']:.3f} s | in place + "
          f"previous basis {m['kept']:.3f} s ({m['cold'] / m['kept']:.1f}x) | in place + shifted basis "
          f"(update + LP + rounding, no schedule) {m['shifted']:.3f} s ({m['cold'] / m['shifted']:.1f}x); "
          f"objectives within {worst:.1e} of cold", flush=True)
    return m


def smaller_rows(problem: Problem, runs: int, time_limit_s: float, full_objective: float) -> dict:
    """The multiresolution grid (pooling identical groups is now part of `solve()` itself)."""
    out = {}
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        multi = milp.solve_multiresolution(problem, fine_intervals=24, time_limit_s=time_limit_s)
        walls.append(time.perf_counter() - started)
    out["multires"] = _median(walls)
    print(f"  multiresolution (24 x 5 min, then 1 h blocks; {24 + (problem.T - 24) // 12} intervals): "
          f"{out['multires']:.3f} s, status {multi.status.value}, objective of the coarse plan "
          f"{multi.info.objective_usd or float('nan'):.2f} ({((multi.info.objective_usd or float('nan')) - full_objective) / abs(full_objective):+.2e} "
          f"vs full; a restriction: every interval safe)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print, per problem, cold solve() before/after side by side, the other tables and the 3 s goal."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=60.0, help="solve() time limit (s); generous so "
                        "that the time measured is the solve's, not the limit")
    parser.add_argument("--problems", nargs="+", default=["synthetic", "panhandle"])
    parser.add_argument("--skip-lp", action="store_true", help="skip the LP solver table (slowest part)")
    parser.add_argument("--skip-replan", action="store_true", help="skip the re-plan and multiresolution rows")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="commit whose cold solve() is the 'before' column (4953d1a: before issue 18's solve work)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--baseline-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker:
        return _worker(args.baseline_worker, args.time_limit)
    print("SYNTHETIC problems, 24 h x 5 min (T=288) x 48 groups; times in seconds (the machine is shared: "
          "CPU seconds are the steadier figure)")
    for name in args.problems:
        problem = MAKERS[name]()
        print(f"\n{name}: {len(problem.groups)} groups, {sum(len(g.modes) for g in problem.groups)} (group, mode) pairs")
        if args.no_baseline:
            before, after = None, cold_runs(problem, args.runs, args.time_limit)
        else:
            before, after = side_by_side(args.baseline, name, args.runs, args.time_limit)
        before_after(name, before, after, args.baseline)
        print(f"  today's solve() cold: {after['wall']:.3f} s (build+compile {after['build']:.3f}, LP+rounding+MIP "
              f"{after['solve']:.3f}, schedule+reasons {after['wall'] - after['build'] - after['solve']:.3f}); "
              f"{after['status']}, gap {after['gap'] or float('nan'):.1e}, objective {after['objective'] or float('nan'):.2f}"
              f"{'; ' + after['message'] if 'classes' in after['message'] else ''}", flush=True)
        from hashflex.optimize.symmetry import poolable

        if poolable(problem):
            unpooled = cold_runs(problem, args.runs, args.time_limit, pool_identical=False)
            print(f"  the same without pooling identical groups (pool_identical=False): wall {unpooled['wall']:.3f} s, "
                  f"CPU {unpooled['cpu']:.3f} s, {unpooled['status']}, objective {unpooled['objective'] or float('nan'):.2f}, "
                  f"schedule profit {unpooled['profit']:.2f} (pooled {after['profit']:.2f})", flush=True)
        if not args.skip_lp:
            lp_rows(problem, min(args.time_limit, 60.0))
        candidates = [("cold solve()", after["wall"])]
        if not args.skip_replan:
            replan = replan_rows(problem, args.runs, args.time_limit)
            smaller = smaller_rows(problem, args.runs, args.time_limit, after["objective"] or float("nan"))
            candidates += [("re-plan in place + previous basis", replan["kept"]),
                           ("re-plan in place + shifted basis", replan["shifted"]), ("multiresolution", smaller["multires"])]
        best = min(candidates, key=lambda kv: kv[1])
        vs = "" if before is None else (f" (baseline {args.baseline}: {before['wall']:.3f} s wall, {before['cpu']:.3f} s CPU; "
                                        f"ratio {before['wall'] / after['wall']:.2f}x wall, {before['cpu'] / after['cpu']:.2f}x CPU)")
        print(f"  GOAL {name} <= {GOAL_S} s: cold full resolution, median of {args.runs}: {after['wall']:.3f} s wall, "
              f"{after['cpu']:.3f} s CPU{vs} -> "
              f"{'MET' if after['wall'] <= GOAL_S else 'NOT MET'} (wall), {'MET' if after['cpu'] <= GOAL_S else 'NOT MET'} (CPU); "
              f"fastest: {best[0]} {best[1]:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
