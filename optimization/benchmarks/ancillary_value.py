"""What selling reserves adds (issue 15): ``mpc+as`` (day-ahead case) against energy-only on the
development months of real ERCOT prices, with real HiGHS solves. Prints numbers; asserts nothing.

    python optimization/benchmarks/ancillary_value.py                 # Feb–May 2024 (dev months)
    python optimization/benchmarks/ancillary_value.py --months 2024-05 --offer-rule rt-risk
    python optimization/benchmarks/ancillary_value.py --all           # every dev month in the file
    python optimization/benchmarks/ancillary_value.py --loop --from 2024-05-08 --days 1   # through the real loop

Offer rules, side by side in one run (``--offer-rule`` to run one): ``price-taking`` (the plan values
reserve at D−1's MCPC) and ``rt-risk`` (the expected MCPC, max(D−1's, the mean of the 28 days before),
less the mean cost of running one MW through real-time prices above the carrying groups' breakeven
over the same days, all published before the DAM close: ``ancillary.reserve_value_usd_mw_h``); the
energy-only baseline is solved once per day for both.

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
import math
import statistics
import time
from pathlib import Path

import pandas as pd

from hashflex.backtest.ancillary import (
    EXAMPLE_WEST_TEXAS_ANCILLARY,
    OFFER_RULES,
    compare_offer_rules,
    load_hourly_market,
    with_ancillary,
)
from hashflex.profile import load_profile

# The 2024 development rows, kept in the repository (optimization/data/ercot_dev2/PROVENANCE.md).
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "optimization" / "data" / "ercot_dev2" / "hourly_hubs_dam_rt_and_dam_as_mcpc_2024.csv"
DEV_2024 = ["2024-02", "2024-03", "2024-04", "2024-05"]
MIN_DAYS_ANNUALISED = 28
"""Fewer days than this are not scaled to a MW-year (a newcomer read one spike day as −$676k/MW-year)."""


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
    parser.add_argument("--day", action="append", help="YYYY-MM-DD local day (repeatable): run only these days")
    parser.add_argument("--trace-short", action="store_true",
                        help="print every interval an award was left short (day, product, kW, deployed, solve status)")
    parser.add_argument("--offer-rule", action="append", choices=OFFER_RULES,
                        help="offer rule (repeatable); default: every rule, side by side")
    args = parser.parse_args()
    if args.loop:
        loop_case(args)
        return
    market = load_hourly_market(args.file)
    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    local = market.index.tz_convert(profile.tz)
    months = sorted(set(local.strftime("%Y-%m"))) if args.all else (args.months or DEV_2024)
    days = sorted({d for d in local.normalize().tz_localize(None) if d.strftime("%Y-%m") in months})
    if args.day:
        days = sorted(pd.Timestamp(d) for d in args.day)
        months = sorted({d.strftime("%Y-%m") for d in days})
    qualified_mw = sum(sum(p["group_mw"].values()) for p in EXAMPLE_WEST_TEXAS_ANCILLARY["products"].values())
    rules = tuple(args.offer_rule or OFFER_RULES)
    started = time.perf_counter()
    results = compare_offer_rules(profile, market, [pd.Timestamp(d) for d in days], rules=rules, seed=args.seed,
                                  rel_gap=args.rel_gap)
    wall = time.perf_counter() - started
    first = results[rules[0]]
    years = first.days / 365.0
    print(f"months: {', '.join(months)}; days run {first.days}, skipped {len(first.skipped_days)} "
          f"(no AS price upstream): {', '.join(first.skipped_days[:8])}{' ...' if len(first.skipped_days) > 8 else ''}")
    print(f"energy-only profit        ${first.profit_energy_only_usd:,.0f}")
    width = 16
    print(f"{'offer rule':<34}" + "".join(f"{r:>{width}}" for r in rules))
    rows = [
        ("mpc+as profit $", lambda r: f"{r.profit_with_as_usd:,.0f}"),
        ("AS paid $", lambda r: f"{r.as_revenue_usd:,.0f}"),
        ("AS clawed back $", lambda r: f"{r.as_clawback_usd:,.0f}"),
        ("added vs energy-only $", lambda r: f"{r.profit_with_as_usd - r.profit_energy_only_usd:,.0f}"),
        (f"added $ per MW-year ({qualified_mw:g} MW)",
         lambda r: f"{(r.profit_with_as_usd - r.profit_energy_only_usd) / qualified_mw / years:,.0f}"
         if first.days >= MIN_DAYS_ANNUALISED else f"n/a (< {MIN_DAYS_ANNUALISED} days)"),
        ("awarded MW·h", lambda r: f"{r.awarded_mwh:,.1f}"),
        # Truncated, never rounded up (99.9994 % must not print as 100.000).
        ("obligations met %", lambda r: f"{math.floor(r.obligations_met * 100_000) / 1000:.3f}"),
        ("short MW·h (awarded − held)", lambda r: f"{r.awarded_mwh - r.held_mwh:,.3f}"),
        ("SYNTHETIC deployments", lambda r: f"{r.deployments}"),
        ("solve with reserves, median s", lambda r: f"{statistics.median(r.solve_s_with_reserves):.3f}"),
    ]
    for label, cell in rows:
        print(f"{label:<34}" + "".join(f"{cell(results[r]):>{width}}" for r in rules))
    without_s = statistics.median(first.solve_s_without)
    with_s = statistics.median(first.solve_s_with_reserves)
    print(f"execution solve, median ({rules[0]}): with reserves {with_s:.3f} s, without {without_s:.3f} s, "
          f"ratio {with_s / without_s:.2f}; max with {max(first.solve_s_with_reserves):.2f} s")
    print(f"wall time {wall:.0f} s")
    for note in first.notes:
        print(f"note: {note}")
    if args.trace_short:
        dt_h = profile.site.interval_minutes / 60.0
        for rule in rules:
            rows = results[rule].short_intervals
            print(f"short intervals ({rule}): {len(rows)}, {sum(r['short_kw'] for r in rows) * dt_h / 1000.0:.3f} MW·h")
            for r in rows:
                print(f"  {r['day']} {r['interval_utc']} {r['product']:<5} awarded {r['awarded_kw']:8.1f} kW "
                      f"short {r['short_kw']:8.3f} kW deployed={r['deployed']} solve={r['solve']} "
                      f"status={r['status']} gap={r['gap']} {r['message']}")


def loop_case(args: argparse.Namespace) -> None:
    """mpc and mpc+as (each offer rule) over the same window through the real ControlLoop, settled at
    real prices. The offer rule reaches ``ASParticipant`` through ``ancillary.DEFAULT_OFFER_RULE``
    (``hashflex backtest`` has no option for it yet)."""
    from hashflex.backtest import ancillary
    from hashflex.backtest.ancillary import market_price_frame
    from hashflex.backtest.runner import build_actuals, run_backtest
    from hashflex.backtest.summary import summary_document

    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    market = load_hourly_market(args.file)
    start = pd.Timestamp(args.start)
    actuals = build_actuals(profile, market_price_frame(market, profile.site.settlement_point), start,
                            start + pd.Timedelta(days=args.days), as_market=market)
    rules = tuple(args.offer_rule or OFFER_RULES)
    started = time.perf_counter()
    kwargs = {"replan_minutes": args.replan_minutes, "seed": args.seed, "as_mode": args.as_mode}
    cpu_before = _cpu_seconds()
    result = run_backtest(profile, actuals, ["mpc"], **kwargs)
    mpc = summary_document(result)["policies"]["mpc"]
    mpc.update(_solve_figures(result.runs["mpc"], _cpu_seconds() - cpu_before))
    runs, notes = {}, []
    for rule in rules:
        ancillary.DEFAULT_OFFER_RULE = rule
        cpu_before = _cpu_seconds()
        result = run_backtest(profile, actuals, ["mpc+as"], **kwargs)
        document = summary_document(result)
        runs[rule] = document["policies"]["mpc+as"]
        runs[rule].update(_solve_figures(result.runs["mpc+as"], _cpu_seconds() - cpu_before))
        notes += [n for n in document["notes"] if n not in notes]
    qualified_mw = sum(sum(p["group_mw"].values()) for p in EXAMPLE_WEST_TEXAS_ANCILLARY["products"].values())
    width = 16
    print(f"{actuals.days:g} days from {args.start} through the control loop (re-plan every {args.replan_minutes} min, "
          f"AS {args.as_mode})")
    print(f"{'':<34}{'mpc':>{width}}" + "".join(f"{'mpc+as ' + r:>{width + 4}}" for r in rules))
    rows = [
        ("profit $", lambda f: f"{f['profit_usd']:,.0f}"),
        ("energy cost $", lambda f: f"{f['energy_cost_usd']:,.0f}"),
        ("AS revenue $ (net)", lambda f: f"{f.get('as_revenue_usd', 0.0):,.0f}" if "as_revenue_usd" in f else "-"),
        ("AS clawed back $ (award not held)", lambda f: f"{f['as_clawback_usd']:,.2f}" if "as_clawback_usd" in f else "-"),
        ("AS short MW·h (awarded − held)", lambda f: f"{f['as_awarded_mwh'] - f['as_held_mwh']:,.3f}"
         if "as_awarded_mwh" in f else "-"),
        ("added vs mpc $", lambda f: f"{f['profit_usd'] - mpc['profit_usd']:,.0f}"),
        # A few days scaled to a year say nothing (one spike day is −$676k per MW-year): annualised
        # from four weeks of days up only, as the study's 112 days are.
        (f"added $ per MW-year ({qualified_mw:g} MW)",
         lambda f: f"{(f['profit_usd'] - mpc['profit_usd']) / qualified_mw / actuals.days * 365:,.0f}"
         if actuals.days >= MIN_DAYS_ANNUALISED else f"n/a (< {MIN_DAYS_ANNUALISED} days)"),
        ("AS obligations met %", lambda f: "-" if f.get("as_obligations_met_pct") is None
         else f"{f['as_obligations_met_pct']:.3f}"),
        ("AS deployments (SYNTHETIC)", lambda f: f"{len(f.get('as_deployments', []))}" if "as_mode" in f else "-"),
        ("solves (not optimal)", lambda f: f"{f['solves']} ({f['solves_not_optimal']})"),
        ("solve wall s (sum)", lambda f: f"{f['solve_wall_s']:,.1f}"),
        ("CPU s (run + solver worker)", lambda f: f"{f['cpu_s']:,.1f}"),
    ]
    for label, cell in rows:
        print(f"{label:<34}{cell(mpc):>{width}}" + "".join(f"{cell(runs[r]):>{width + 4}}" for r in rules))
    print(f"wall {time.perf_counter() - started:.0f} s")
    for note in notes:
        print(f"note: {note}")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the solver worker is
    one: each ``run_backtest`` closes its runner, so its worker is reaped and counted)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _solve_figures(run: object, cpu_s: float) -> dict:
    """Solves, those whose schedule was not ``optimal`` (time limit, gap, fallback), their wall
    seconds summed, and the run's CPU seconds (machine shared: CPU, not wall, compares runs)."""
    status = [s for s in run.extra["schedule_status"] if s]
    solved = run.extra["solve_seconds"] > 0
    not_optimal = sum(1 for s, k in zip(run.extra["schedule_status"], solved) if k and s and s != "optimal")
    return {"solves_not_optimal": not_optimal, "solve_wall_s": float(run.extra["solve_seconds"].sum()),
            "cpu_s": cpu_s, "statuses": sorted(set(status))}


if __name__ == "__main__":
    main()
