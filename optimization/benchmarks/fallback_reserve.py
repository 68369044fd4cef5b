"""The greedy fallback with awarded reserve held first (issue 15, H4) vs the fallback before it.

SYNTHETIC site of solve_scaling.py with the SYNTHETIC RRS/ECRS awards of replan_update.py. Prints, per
size, the median wall time of ``fallback.greedy_schedule`` (the schedule, reasons and reserve LP
included) and the award short it leaves (kWh summed over products and intervals), side by side with
the baseline: the fallback as it was before (``greedy_counts`` from every unit asleep, no reserve
cover), valued by the same ``schedule_from_counts``.

    python optimization/benchmarks/fallback_reserve.py [--runs 3] [--sizes 96x12 288x48]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replan_update import with_reserves  # noqa: E402
from solve_scaling import synthetic_problem  # noqa: E402

from hashflex.optimize.fallback import greedy_counts, greedy_schedule  # noqa: E402
from hashflex.optimize.schedule import SolveInfo, SolveStatus, schedule_from_counts  # noqa: E402


def _baseline(problem):
    """The fallback before issue 15's fix: profit order only, awards ignored."""
    problem.validate()
    return schedule_from_counts(problem, greedy_counts(problem), SolveInfo(status=SolveStatus.FALLBACK))


def _short_kwh(problem, schedule) -> float:
    frame = schedule.frame
    return float(sum((frame[f"reserve_{r.name}_short_kw"].to_numpy() * problem.duration_h).sum()
                     for r in problem.reserves))


def _timed(fn, runs: int):
    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    """Print the table (seconds are medians over ``--runs``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["96x12", "288x48"], help="T x groups")
    args = parser.parse_args(argv)
    print("SYNTHETIC site and awards (solve_scaling.py, replan_update.py --reserves); medians over "
          f"{args.runs} runs")
    print(f"{'T x G':>8} {'awarded kWh':>12} {'base s':>8} {'base short kWh':>15} {'new s':>8} "
          f"{'new short kWh':>14} {'time ratio':>10} {'profit base $':>14} {'profit new $':>13}")
    for size in args.sizes:
        T, groups = (int(v) for v in size.split("x"))
        problem = with_reserves(synthetic_problem(T, groups), 0)
        awarded = float(sum((np.minimum(r.obligation_kw, r.max_kw) * problem.duration_h).sum() for r in problem.reserves))
        _baseline(problem)  # scipy's first import (the reserve LP) is nobody's cost
        base_s, base = _timed(lambda p=problem: _baseline(p), args.runs)
        new_s, new = _timed(lambda p=problem: greedy_schedule(p, reason="benchmark"), args.runs)
        print(f"{size:>8} {awarded:>12,.0f} {base_s:>8.2f} {_short_kwh(problem, base):>15,.1f} {new_s:>8.2f} "
              f"{_short_kwh(problem, new):>14,.1f} {new_s / base_s:>10.2f} "
              f"{base.frame['profit_usd'].sum():>14,.0f} {new.frame['profit_usd'].sum():>13,.0f}")
        if new.info.message != "benchmark":
            print(f"         stated: {new.info.message[:300]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
