"""What covering each reserve product from its own groups costs (issue 15, H6).

SYNTHETIC site of solve_scaling.py with the SYNTHETIC RRS/ECRS awards of replan_update.py. Prints,
per size, the median time of:
  * ``rounding.reserve_uncovered_kw`` (the exact max-flow check the rounding and the MILP guard run on
    every solve with an award), against the baseline of one ``schedule.reserve_from_counts`` (the
    reserve LP every schedule already solves), on counts that hold every award;
  * ``rounding.cover_reserve_obligations`` from the worst start, every unit asleep (it adds units
    until each product is held, as far as the limits allow), and what is left uncovered;
  * ``solve()`` wall time with the awards (the cover inside).

    python optimization/benchmarks/reserve_cover.py [--runs 5] [--sizes 96x12 288x48]
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

from hashflex.optimize.rounding import cover_reserve_obligations, reserve_uncovered_kw  # noqa: E402
from hashflex.optimize.schedule import reserve_from_counts  # noqa: E402
from hashflex.optimize.solve import solve  # noqa: E402


def _timed(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    """Print the table (seconds are medians over ``--runs``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["96x12", "288x48"], help="T x groups")
    args = parser.parse_args(argv)
    print("SYNTHETIC site and awards (solve_scaling.py, replan_update.py --reserves); medians in ms")
    print(f"{'T x G':>8} {'check':>8} {'LP (base)':>10} {'ratio':>7} {'cover from 0':>13} {'units':>7} "
          f"{'left kW':>8} {'solve() s':>10}")
    for size in args.sizes:
        T, groups = (int(v) for v in size.split("x"))
        problem = with_reserves(synthetic_problem(T, groups), 0)
        schedule = solve(problem, time_limit_s=30.0)
        counts = {(g, m): schedule.frame[f"units_{group.id}_{mode.name}"].to_numpy().astype(int)
                  for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}
        reserve_from_counts(problem, counts)  # scipy's first import is not the LP's cost
        check_s, _ = _timed(lambda: reserve_uncovered_kw(problem, counts), args.runs)
        lp_s, _ = _timed(lambda: reserve_from_counts(problem, counts), args.runs)
        asleep = {key: np.zeros(T, dtype=int) for key in counts}

        def cover() -> tuple[int, float]:
            start = {key: values.copy() for key, values in asleep.items()}
            added = cover_reserve_obligations(problem, start)
            return added, float(reserve_uncovered_kw(problem, start).max())

        cover_s, (added, left_kw) = _timed(cover, args.runs)
        solve_s, _ = _timed(lambda: solve(problem, time_limit_s=30.0), 1)
        print(f"{size:>8} {check_s * 1e3:8.2f} {lp_s * 1e3:10.1f} {lp_s / check_s:6.0f}x {cover_s * 1e3:13.1f} "
              f"{added:7d} {left_kw:8.2f} {solve_s:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
