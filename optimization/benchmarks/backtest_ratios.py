"""Backtest ratios: every policy's profit over the oracle's, limit violations, and wall time.

Runs mpc, threshold, always-on and oracle on the bundled real ERCOT months (Feb 2020, a normal
month; Feb 2021, winter storm Uri) for the default profile (west_texas, LZ_WEST) and the
noise-dominated one (quiet_hollow, LZ_NORTH), then prints one table: profit, profit / oracle
profit, hard-limit violations, and backtest wall seconds per simulated day (per policy), plus the
extrapolated wall time of a 28-day month at that rate.

    python optimization/benchmarks/backtest_ratios.py                 # 3 days per case (a few minutes)
    python optimization/benchmarks/backtest_ratios.py --days 1 --replan-minutes 15 60
    python optimization/benchmarks/backtest_ratios.py --full-month   # every full day of each month (slow)
    python optimization/benchmarks/backtest_ratios.py --policies mpc oracle

Goals (issue): mpc within 3 % of the oracle and ahead of threshold where noise or carbon binds, zero
hard-limit violations; a month at 15-min, re-planned every interval, 24 h horizon, in under 2 min.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from hashflex.backtest.runner import Progress, build_actuals, load_prices, run_backtest
from hashflex.backtest.summary import ratio_table, summary_document
from hashflex.data import bundled_path
from hashflex.profile import load_profile

MONTHS = {  # month -> (RT file, first day of the default window)
    "2020-02": ("ercot/RTM-2020-02.csv", "2020-02-10"),
    "2021-02": ("ercot/RTM-2021-02.csv", "2021-02-14"),  # Uri: load shed from Feb 15
}
PROFILES = ("west_texas", "quiet_hollow")
POLICIES = ["mpc", "threshold", "always-on", "oracle"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=3, help="days per case from the month's default start day")
    parser.add_argument("--full-month", action="store_true", help="every full day of each month")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--months", nargs="+", default=list(MONTHS), choices=list(MONTHS))
    parser.add_argument("--replan-minutes", type=int, nargs="+", default=[15],
                        help="mpc re-plan period(s); each gets its own mpc row (default 15 = every interval)")
    parser.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    entries = []
    timings = []
    for name in args.profiles:
        profile = load_profile(name)
        for month in args.months:
            path, first_day = MONTHS[month]
            prices = load_prices(profile, [bundled_path(path)])
            if args.full_month:
                actuals = build_actuals(profile, prices)
            else:
                start = pd.Timestamp(first_day)
                actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=args.days))
            case = f"{name} {month}"
            document = None
            for k, replan in enumerate(args.replan_minutes):
                policies = args.policies if k == 0 else ["mpc"]
                started = time.perf_counter()
                result = run_backtest(profile, actuals, policies, replan_minutes=replan,
                                      progress=Progress.factory(args.quiet))
                part = summary_document(result)
                if document is None:
                    document = part
                else:
                    oracle = document["policies"]["oracle"]["profit_usd"]
                    figures = part["policies"]["mpc"]
                    figures["profit_ratio_to_oracle"] = figures["profit_usd"] / oracle if oracle and oracle > 0 else None
                    document["policies"][f"mpc/{replan}min"] = figures
                if k == 0 and len(args.replan_minutes) > 1:
                    document["policies"][f"mpc/{replan}min"] = document["policies"].pop("mpc")
                timings.append((case, replan, time.perf_counter() - started, actuals.days))
            entries.append((case, document))
            print(f"{case}: {actuals.days:g} days done", file=sys.stderr)
    print(ratio_table(entries))
    print()
    print("wall time per simulated day (s) and a 28-day month extrapolated (min):")
    for case, document in entries:
        days = document["window"]["days"]
        for policy, figures in document["policies"].items():
            per_day = figures["wall_seconds"] / days
            print(f"  {case:24s} {policy:12s} {per_day:7.1f} s/day  -> {per_day * 28 / 60:6.1f} min/month")
    return 0


if __name__ == "__main__":
    sys.exit(main())
