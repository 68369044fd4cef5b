"""What selling reserves adds (issue 15): ``mpc+as`` (day-ahead case) against energy-only on the
development months of real ERCOT prices, with real HiGHS solves. Prints numbers; asserts nothing.

    python optimization/benchmarks/ancillary_value.py                 # Feb–May 2024 (dev months)
    python optimization/benchmarks/ancillary_value.py --months 2024-05 --months 2025-08
    python optimization/benchmarks/ancillary_value.py --all           # every dev month in the file
    python optimization/benchmarks/ancillary_value.py --loop --file src/hashflex/data/ercot/hourly_dam_rt_as_mcpc_2024-05.csv \
        --from 2024-05-08 --days 1                                     # mpc vs mpc+as through the real loop

Site: the bundled west_texas profile with ``EXAMPLE_WEST_TEXAS_ANCILLARY`` (an ASSUMED
qualification: 10 MW RRS from the hydro containers on UFRs, 5 MW ECRS and 5 MW Non-Spin from the
air halls). Rules (``hashflex.backtest.ancillary``): offers for day D from D−1's day-ahead energy and
AS prices only; price-taking, so awards = offers, paid D's real MCPC; both policies then run D
against its hourly real-time LZ_WEST price; deployments are SYNTHETIC (Poisson at the profile's
rates). Figures: added profit per MW-year of qualified reserve (20 MW), obligations met (MW·h held /
awarded), and the execution solve time with the award's reserve variables vs without (ratio of
medians, same day, same HiGHS settings).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd

from hashflex.backtest.ancillary import (
    EXAMPLE_WEST_TEXAS_ANCILLARY,
    load_hourly_market,
    run_day_ahead_as,
    with_ancillary,
)
from hashflex.profile import load_profile

# The 2024 development rows, kept in the repository (optimization/data/ercot_dev2/PROVENANCE.md).
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "optimization" / "data" / "ercot_dev2" / "hourly_hubs_dam_rt_and_dam_as_mcpc_2024.csv"
DEV_2024 = ["2024-02", "2024-03", "2024-04", "2024-05"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--months", action="append", help="YYYY-MM (repeatable); default Feb–May 2024")
    parser.add_argument("--all", action="store_true", help="every month in the file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rel-gap", type=float, default=None, help="execution solves' MIP gap (default: the daemon's 0.5 %%)")
    parser.add_argument("--loop", action="store_true", help="mpc vs mpc+as through the real control loop "
                                                           "(hashflex backtest's policies) instead of the study")
    parser.add_argument("--from", dest="start", default="2024-05-08", help="--loop: first local day")
    parser.add_argument("--days", type=int, default=1, help="--loop: days (each ~35 s per policy at --replan 60)")
    parser.add_argument("--replan-minutes", type=int, default=60, help="--loop: mpc re-solves every N minutes")
    parser.add_argument("--as-mode", choices=("day-ahead", "real-time"), default="day-ahead")
    args = parser.parse_args()
    if args.loop:
        loop_case(args)
        return
    market = load_hourly_market(args.file)
    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    local = market.index.tz_convert(profile.tz)
    months = sorted(set(local.strftime("%Y-%m"))) if args.all else (args.months or DEV_2024)
    days = sorted({d for d in local.normalize().tz_localize(None) if d.strftime("%Y-%m") in months})
    qualified_mw = sum(sum(p["group_mw"].values()) for p in EXAMPLE_WEST_TEXAS_ANCILLARY["products"].values())
    started = time.perf_counter()
    result = run_day_ahead_as(profile, market, [pd.Timestamp(d) for d in days], seed=args.seed, rel_gap=args.rel_gap)
    wall = time.perf_counter() - started
    years = result.days / 365.0
    added = result.profit_with_as_usd - result.profit_energy_only_usd
    with_s, without_s = statistics.median(result.solve_s_with_reserves), statistics.median(result.solve_s_without)
    print(f"months: {', '.join(months)}; days run {result.days}, skipped {len(result.skipped_days)} "
          f"(no AS price upstream): {', '.join(result.skipped_days[:8])}{' ...' if len(result.skipped_days) > 8 else ''}")
    print(f"energy-only profit        ${result.profit_energy_only_usd:,.0f}")
    print(f"mpc+as profit             ${result.profit_with_as_usd:,.0f}  (AS paid ${result.as_revenue_usd:,.0f}, "
          f"clawed back ${result.as_clawback_usd:,.0f})")
    print(f"added                     ${added:,.0f} = ${added / qualified_mw / years:,.0f} per MW-year "
          f"of {qualified_mw:g} MW qualified")
    print(f"awarded {result.awarded_mwh:,.1f} MW·h, held {result.held_mwh:,.1f}: obligations met "
          f"{result.obligations_met * 100:.3f} %")
    print(f"SYNTHETIC deployments: {result.deployments}, {result.deployed_mwh:,.1f} MW·h shed")
    print(f"execution solve, median: with reserves {with_s:.3f} s, without {without_s:.3f} s, "
          f"ratio {with_s / without_s:.2f}; max with {max(result.solve_s_with_reserves):.2f} s")
    print(f"wall time {wall:.0f} s")
    for note in result.notes:
        print(f"note: {note}")


def loop_case(args: argparse.Namespace) -> None:
    """mpc and mpc+as over the same window through the real ControlLoop, settled at real prices."""
    from hashflex.backtest.ancillary import market_price_frame
    from hashflex.backtest.runner import build_actuals, run_backtest
    from hashflex.backtest.summary import summary_document, summary_table

    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    market = load_hourly_market(args.file)
    start = pd.Timestamp(args.start)
    actuals = build_actuals(profile, market_price_frame(market, profile.site.settlement_point), start,
                            start + pd.Timedelta(days=args.days), as_market=market)
    started = time.perf_counter()
    result = run_backtest(profile, actuals, ["mpc", "mpc+as"], replan_minutes=args.replan_minutes, seed=args.seed,
                          as_mode=args.as_mode)
    document = summary_document(result)
    print(summary_table(document))
    mpc, with_as = document["policies"]["mpc"], document["policies"]["mpc+as"]
    qualified_mw = sum(sum(p["group_mw"].values()) for p in EXAMPLE_WEST_TEXAS_ANCILLARY["products"].values())
    added = with_as["profit_usd"] - mpc["profit_usd"]
    print(f"added by reserves: ${added:,.0f} over {actuals.days:g} days = ${added / qualified_mw / actuals.days * 365:,.0f} "
          f"per MW-year of {qualified_mw:g} MW qualified; obligations met {with_as['as_obligations_met_pct']:.3f} %; "
          f"wall {time.perf_counter() - started:.0f} s")
    for note in document["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
