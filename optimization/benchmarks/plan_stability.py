"""Plan stability (issue 14): the MPC with the stability rule at several thresholds, side by side in one
run over the same real prices, settled by the backtest's accounting. Prints, per threshold: profit ($),
profit relative to the rule off, plan changes (ticks whose first interval differed from what the previous
plan had for it), units moved by those changes, ticks that kept the previous plan, and unit switches
(starts + stops actually dispatched).

The threshold is ``LoopConfig.replan_min_gain_fraction``: a re-plan changes the interval about to start
only if it gains at least that fraction of the whole fleet's gross revenue over the horizon
(`control.stability`). 0 is the rule off (the baseline).

    python optimization/benchmarks/plan_stability.py                      # west_texas, Feb 10-12 2020
    python optimization/benchmarks/plan_stability.py --profile quiet_hollow --days 2 --fractions 0 0.001 0.003
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import pandas as pd

import hashflex.backtest.closed_loop as closed_loop
from hashflex.backtest.runner import build_actuals, load_prices, run_backtest
from hashflex.control.loop import ControlLoop, LoopConfig
from hashflex.data import bundled_path
from hashflex.feeds.hashprice import bundled_hashprice
from hashflex.profile import load_profile

LOOPS: list[ControlLoop] = []


class _Recorded(ControlLoop):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        LOOPS.append(self)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="west_texas")
    parser.add_argument("--start", default="2020-02-10")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.0005, 0.001, 0.003])
    args = parser.parse_args()
    profile = load_profile(args.profile)
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv"), bundled_path("ercot/DAM-2020-02.csv")])
    start = pd.Timestamp(args.start)
    actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=args.days), hashprice=bundled_hashprice())
    closed_loop.ControlLoop = _Recorded
    rows = []
    for fraction in args.fractions:
        closed_loop.LoopConfig = functools.partial(LoopConfig, replan_min_gain_fraction=fraction)
        LOOPS.clear()
        began = time.perf_counter()
        result = run_backtest(profile, actuals, ["mpc"], inline_solver=True)
        wall = time.perf_counter() - began
        counters = LOOPS[-1].counters
        counts = result.runs["mpc"].counts
        on = sum(counts.values())
        switches = int(np.abs(np.diff(np.asarray(on), prepend=np.asarray(on)[0])).sum())
        rows.append({"fraction": fraction, "profit_usd": result.schedules["mpc"].total_profit_usd,
                     "plan_changes": counters["plan_changes"], "units_moved": counters["plan_churn_units"],
                     "holds": counters["plan_holds"], "unit_switches": switches, "wall_s": wall})
    base = rows[0]["profit_usd"]
    print(f"{args.profile}, {args.start} + {args.days} d, real LZ prices, bundled hashprice; {len(actuals.index)} ticks")
    print(f"{'fraction':>9} {'profit $':>12} {'vs off':>8} {'plan changes':>13} {'units moved':>12} {'holds':>6} "
          f"{'unit switches':>14} {'wall s':>7}")
    for row in rows:
        print(f"{row['fraction']:>9g} {row['profit_usd']:>12,.0f} {row['profit_usd'] / base:>8.4f} "
              f"{row['plan_changes']:>13} {row['units_moved']:>12} {row['holds']:>6} {row['unit_switches']:>14} "
              f"{row['wall_s']:>7.1f}")


if __name__ == "__main__":
    main()
