"""Re-plan by in-place update vs today's rebuild, side by side (issue 18).

SYNTHETIC site of solve_scaling.py (24 h × 15 min × 12 groups by default). A first plan is solved
and kept; each re-plan shifts prices, solar and intensity by one interval (prices ±10 %) and is
then planned two ways in the same run:
  * rebuild: Pyomo `build_model` + `compile_to_highs` + LP → rounding → MIP (with the LP basis
    cache, as the daemon did before): build, compile and solve times separately;
  * update: `update_in_place` of the kept HiGHS model (costs, bounds, right-hand sides) + the same
    solve: update and solve times separately;
and the whole `solve()` wall time both ways (with and without the kept model). Also, with
--solvers, the 5-min × 48-group full-resolution LP relaxation by simplex, IPM and PDLP with
presolve on/off (cold, one run each), to pick HiGHS's settings.

and the whole `solve()` CPU seconds both ways. With --baseline COMMIT, the in-place re-plan on that
commit and on today's tree side by side (alternated child processes, `baseline_tree.py`).

    python optimization/benchmarks/replan_update.py [--runs 5] [--T 96] [--groups 12] [--solvers]
        [--baseline 1e0fd7c --rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solve_scaling import replan_problem, synthetic_problem  # noqa: E402

from hashflex.optimize import solve as milp  # noqa: E402
from hashflex.optimize.highs_compile import LpBasisCache, template_key, update_in_place  # noqa: E402

GOAL_REPLAN_S = 0.3


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def with_reserves(problem, seed: int):
    """SYNTHETIC RRS and ECRS on half the groups (issue 15): random MCPCs (0–300 $/MW-h), awards on 40 % of
    intervals, caps finite on two intervals in three (the same pattern every re-plan: same template)."""
    import dataclasses

    import numpy as np

    from hashflex.optimize.problem import ReserveProduct

    rng = np.random.default_rng(seed)
    T = problem.T
    half = {g.id: 0.5 * g.units * max(m.power_kw for m in g.modes) for g in problem.groups[: len(problem.groups) // 2]}
    pattern = np.arange(T) % 3 != 0
    reserves = tuple(ReserveProduct(name, price_usd_mw_h=rng.uniform(0, 300, T),
                                    max_kw=np.where(pattern, rng.uniform(0.2, 1.0, T) * sum(half.values()), np.inf),
                                    obligation_kw=np.where(rng.random(T) < 0.4, rng.uniform(0, 0.3, T) * sum(half.values()), 0.0),
                                    group_max_kw=dict(half), deployed_fraction=0.05)
                     for name in ("RRS", "ECRS"))
    return dataclasses.replace(problem, reserves=reserves)


def replan_rows(T: int, groups: int, runs: int, time_limit_s: float, reserves: bool = False,
                quiet: bool = False) -> dict:
    """Re-plan by rebuild vs in-place update at T × groups, ``runs`` re-plans; prints the table
    (unless ``quiet``) and returns the medians (s): build, compile, solve_rb, update, solve_up,
    wall_rb / wall_up (whole `solve()` wall, rebuilt / updated) and cpu_rb / cpu_up (its CPU), and
    the worst relative objective difference rebuild vs update (``worst``).
    ``reserves``: with SYNTHETIC RRS/ECRS products (issue 15), new prices and awards every re-plan."""
    interval = 15 if T <= 96 else 5
    problem = synthetic_problem(T, groups, interval)
    if reserves:
        problem = with_reserves(problem, 0)
    rebuild_cache, update_cache = LpBasisCache(max_models=0), LpBasisCache()
    milp.solve(problem, time_limit_s=120.0, basis_cache=rebuild_cache)  # primes the LP basis
    milp.solve(problem, time_limit_s=120.0, basis_cache=update_cache)  # primes basis and kept model
    t = {k: [] for k in ("build", "compile", "solve_rb", "update", "solve_up", "wall_rb", "wall_up", "cpu_rb",
                         "cpu_up")}
    objectives = []
    for run in range(runs):
        replan = replan_problem(problem, run)
        if reserves:
            replan = with_reserves(replan, run + 1)
        # rebuild, stage by stage
        started = time.perf_counter()
        model = milp.build_model(replan)
        built = time.perf_counter()
        compiled = milp.compile_to_highs(model, replan)
        compiled_at = time.perf_counter()
        a = milp.solve_lp_round_mip(compiled, replan, time_limit_s=time_limit_s, rel_gap=milp.DEFAULT_REL_GAP,
                                    basis_cache=rebuild_cache)
        t["build"].append(built - started)
        t["compile"].append(compiled_at - built)
        t["solve_rb"].append(time.perf_counter() - compiled_at)
        # update, stage by stage (the kept model is taken out, updated, solved, put back)
        key = template_key(replan)
        kept = update_cache.take_model(key)
        assert kept is not None, "the first plan's model is kept"
        started = time.perf_counter()
        update_in_place(kept, replan)
        updated = time.perf_counter()
        b = milp.solve_lp_round_mip(kept, replan, time_limit_s=time_limit_s, rel_gap=milp.DEFAULT_REL_GAP,
                                    basis_cache=update_cache)
        t["update"].append(updated - started)
        t["solve_up"].append(time.perf_counter() - updated)
        update_cache.put_model(key, kept)
        objectives.append((a.objective, b.objective))
        # whole solve() both ways
        for cache, side in ((rebuild_cache, "rb"), (update_cache, "up")):
            started, cpu = time.perf_counter(), time.process_time()
            milp.solve(replan, time_limit_s=time_limit_s, basis_cache=cache)
            t[f"wall_{side}"].append(time.perf_counter() - started)
            t[f"cpu_{side}"].append(time.process_time() - cpu)
    m = {k: _median(v) for k, v in t.items()}
    m["worst"] = max(abs(x - y) / max(abs(x), 1e-9) for x, y in objectives)
    if quiet:
        return m
    print(f"T={T} ({interval}-min) x {groups} groups{' with RRS+ECRS' if reserves else ''}, {runs} re-plans, "
          "medians in seconds")
    print(f"{'':10} {'build':>8} {'compile':>8} {'update':>8} {'solve':>8} {'solve()':>8} {'CPU':>8}")
    print(f"{'rebuild':10} {m['build']:8.4f} {m['compile']:8.4f} {'-':>8} {m['solve_rb']:8.4f} {m['wall_rb']:8.4f} "
          f"{m['cpu_rb']:8.4f}")
    print(f"{'update':10} {'-':>8} {'-':>8} {m['update']:8.4f} {m['solve_up']:8.4f} {m['wall_up']:8.4f} {m['cpu_up']:8.4f}")
    print(f"ratio rebuild/update: build+compile vs update {(m['build'] + m['compile']) / m['update']:.1f}x, "
          f"solve() {m['wall_rb'] / m['wall_up']:.2f}x")
    print(f"objective rebuild vs update: worst relative difference {m['worst']:.2e} (gap {milp.DEFAULT_REL_GAP})")
    print(f"GOAL re-plan with in-place update <= {GOAL_REPLAN_S} s: median of {runs}: {m['wall_up']:.3f} s wall, "
          f"{m['cpu_up']:.3f} s CPU -> {'MET' if m['wall_up'] <= GOAL_REPLAN_S else 'NOT MET'}")
    return m


def baseline_rows(commit: str, T: int, groups: int, runs: int, rounds: int, time_limit_s: float,
                  reserves: bool) -> None:
    """The in-place re-plan's `solve()` on ``commit`` and on today's tree side by side:
    ``rounds`` child processes per side, alternating (`baseline_tree.alternate`), each timing
    ``runs`` re-plans; medians over the rounds of each round's medians, and the ratios."""
    from baseline_tree import alternate, median_of, ratio_line

    args = ["--worker", "--T", str(T), "--groups", str(groups), "--runs", str(runs),
            "--time-limit", str(time_limit_s)] + (["--reserves"] if reserves else [])
    try:
        before, after = alternate(commit, Path(__file__).resolve(), args, rounds)
    except RuntimeError as exc:
        print(f"(baseline {commit}: {exc})")
        return
    print(f"in-place re-plan solve(), {rounds} alternated rounds of {runs} re-plans "
          f"{'before (' + commit + ')':>14} {'after (now)':>12} {'ratio':>9}")
    for key, label in (("wall_up", "solve() wall, updated"), ("cpu_up", "solve() CPU, updated"),
                       ("update", "update"), ("solve_up", "LP+rounding+MIP, updated"),
                       ("wall_rb", "solve() wall, rebuilt"), ("cpu_rb", "solve() CPU, rebuilt")):
        print(ratio_line(label, median_of(before, key), median_of(after, key)))
    print(f"GOAL re-plan with in-place update <= {GOAL_REPLAN_S} s (median of {rounds} rounds): "
          f"{median_of(after, 'wall_up'):.3f} s wall, {median_of(after, 'cpu_up'):.3f} s CPU "
          f"(baseline {median_of(before, 'wall_up'):.3f} s wall) -> "
          f"{'MET' if median_of(after, 'wall_up') <= GOAL_REPLAN_S else 'NOT MET'}")


def solver_rows(T: int, groups: int, time_limit_s: float) -> None:
    """The LP relaxation of the full-resolution case by each HiGHS LP solver and presolve setting."""

    problem = synthetic_problem(T, groups, 5 if T == 288 else 15)
    model = milp.build_model(problem)
    print(f"LP relaxation, T={T} x {groups} groups, cold, one run each (seconds, objective)")
    for solver in ("simplex", "ipm", "pdlp"):
        for presolve in ("on", "off"):
            compiled = milp.compile_to_highs(model, problem)
            if compiled.deferred is not None:
                compiled.deferred.add_to(compiled.highs)
            highs = compiled.highs
            highs.setOptionValue("solver", solver)
            highs.setOptionValue("presolve", presolve)
            highs.setOptionValue("time_limit", time_limit_s)
            started = time.perf_counter()
            highs.run()
            elapsed = time.perf_counter() - started
            status = highs.modelStatusToString(highs.getModelStatus())
            objective = highs.getInfo().objective_function_value
            print(f"  {solver:8} presolve={presolve:3} {elapsed:8.3f} s  {status:12} {objective:14.2f}", flush=True)
    # The whole procedure with the default (simplex, deferred carbon rows) for reference.
    started = time.perf_counter()
    schedule = milp.solve(problem, time_limit_s=time_limit_s)
    print(f"  solve() default: {time.perf_counter() - started:.3f} s {schedule.status.value}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--T", type=int, default=96)
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--solvers", action="store_true", help="also compare HiGHS LP solvers at T=288 x 48")
    parser.add_argument("--reserves", action="store_true", help="with SYNTHETIC RRS/ECRS products (issue 15)")
    parser.add_argument("--baseline", default=None, help="also run the in-place re-plan on this commit side by "
                        "side (e.g. 1e0fd7c), in alternated child processes")
    parser.add_argument("--rounds", type=int, default=3, help="alternated child rounds per side with --baseline")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # a child of baseline_rows: the medians as one JSON line
        import json

        print(json.dumps(replan_rows(args.T, args.groups, args.runs, args.time_limit, reserves=args.reserves,
                                     quiet=True)))
        return 0
    print("SYNTHETIC site (optimization/benchmarks/solve_scaling.py)")
    replan_rows(args.T, args.groups, args.runs, args.time_limit, reserves=args.reserves)
    if args.baseline:
        baseline_rows(args.baseline, args.T, args.groups, args.runs, args.rounds, args.time_limit, args.reserves)
    if args.solvers:
        solver_rows(288, 48, 60.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
