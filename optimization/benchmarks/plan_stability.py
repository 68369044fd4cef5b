"""Plan stability (issue 14): the MPC with the stability rule at several thresholds, side by side in one
run over the same real prices, settled by the backtest's accounting. Prints, per profile and threshold:
profit ($), profit relative to the rule off, plan changes (ticks whose first interval differed from what
ran), units moved by those changes, ticks that kept what runs, unit switches (starts + stops actually
dispatched), and what each unit switch avoided cost ($ of profit given up per switch avoided vs the rule off).

Two kinds of threshold (`control.stability.hold_previous_counts`):

- ``fraction:F`` — ``LoopConfig.replan_min_gain_fraction``: a re-plan changes the interval about to start
  only if it gains at least F of the whole fleet's gross revenue per day at the horizon's mean rate (one
  scale per site, the same for any horizon length; equal to F of the horizon's revenue at 24 h);
- ``unit:K`` — ``LoopConfig.replan_min_gain_unit_intervals``: at least K intervals of gross revenue of each
  unit the change moves (a switching cost per unit moved).

``fraction:0`` is the rule off (the baseline of the "vs off" column). A threshold with ``@first`` values the
held alternative over the first interval only (``hold_span="first"``, the rule until this round); without
it (``@block``, the default) over the new plan's first block.

Measured (this script, ``--profiles west_texas quiet_hollow --days 3``, Feb 10-12 2020), profit vs off and
unit switches vs off: fraction 0.0002 x0.9979 / 0.709 and x0.9974 / 0.977; 0.0005 x1.0014 / 0.614 and
x1.0065 / 0.887 (the default since); 0.001 x0.9982 / 0.559 and x0.9921 / 0.881; 0.002 x0.9940 / 0.461 and
x0.9903 / 0.749; unit 0.5 x0.917 / 0.144 and x0.912 / 0.359; unit >= 1 freezes the fleet (x0.26, x0.20).
(Those figures are of the ``@first`` rule.) The block rule, same windows, one run (this round, loaded 2-core
machine, 4.5 min): west_texas 0.0005@first x1.0014 / 0.614, 0.0005 x1.0049 / 0.752, 0.001 x1.0030 / 0.725,
0.002 x1.0026 / 0.720; quiet_hollow 0.0005@first x1.0065 / 0.887, 0.0005 x1.0160 / 0.894, 0.001 the same,
0.002 x1.0168 / 0.762 (profit vs off / unit switches vs off).

    python optimization/benchmarks/plan_stability.py                      # west_texas, Feb 10-12 2020
    python optimization/benchmarks/plan_stability.py --profiles west_texas quiet_hollow --days 2 \\
        --thresholds fraction:0 fraction:0.0005 fraction:0.001 unit:1 unit:4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import numpy as np
import pandas as pd

import hashflex.backtest.closed_loop as closed_loop
import hashflex.control.loop as control_loop
from hashflex.backtest.runner import build_actuals, load_prices, run_backtest
from hashflex.control.loop import ControlLoop, LoopConfig
from hashflex.control.stability import hold_previous_counts
from hashflex.data import bundled_path
from hashflex.feeds.hashprice import bundled_hashprice
from hashflex.profile import load_profile

LOOPS: list[ControlLoop] = []


class _Recorded(ControlLoop):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        LOOPS.append(self)


def parse_threshold(text: str) -> tuple[str, float, str]:
    """``fraction:F`` or ``unit:K`` (a bare number is a fraction, as before), optionally ``@first`` (hold
    valued over the first interval only, the rule before) or ``@block`` (the default)."""
    text, _, span = text.partition("@")
    span = span or "block"
    if span not in ("block", "first"):
        raise argparse.ArgumentTypeError(f"threshold {text!r}: span must be 'block' or 'first'")
    kind, _, value = text.rpartition(":")
    kind = kind or "fraction"
    if kind not in ("fraction", "unit"):
        raise argparse.ArgumentTypeError(f"threshold {text!r}: kind must be 'fraction' or 'unit'")
    return kind, float(value), span


def configure(kind: str, value: float, span: str = "block") -> None:
    """Point the backtest's loop at one threshold. The loop passes ``replan_min_gain_fraction`` (and, when
    LoopConfig has it, ``replan_min_gain_unit_intervals``); for ``unit`` on a loop without that field the
    loop's call of ``hold_previous_counts`` is given the per-unit threshold directly; ``span`` is given to it
    as ``hold_span``."""
    fields = {f.name for f in dataclasses.fields(LoopConfig)}
    settings = {"replan_min_gain_fraction": value if kind == "fraction" else 0.0}
    has_unit = "replan_min_gain_unit_intervals" in fields
    if has_unit:
        settings["replan_min_gain_unit_intervals"] = value if kind == "unit" else 0.0
    closed_loop.LoopConfig = functools.partial(LoopConfig, **settings)
    extra = {"min_gain_unit_intervals": value} if kind == "unit" and not has_unit else {}
    control_loop.hold_previous_counts = functools.partial(hold_previous_counts, hold_span=span, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", "--profile", nargs="+", default=["west_texas"])
    parser.add_argument("--start", default="2020-02-10")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--thresholds", "--fractions", nargs="+", type=parse_threshold,
                        default=[parse_threshold(t) for t in ("fraction:0", "fraction:0.0005@first", "fraction:0.0002",
                                                              "fraction:0.0005", "fraction:0.001", "fraction:0.002")])
    args = parser.parse_args(argv)
    closed_loop.ControlLoop = _Recorded
    lines = []
    for name in args.profiles:
        profile = load_profile(name)
        prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv"), bundled_path("ercot/DAM-2020-02.csv")])
        start = pd.Timestamp(args.start)
        actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=args.days),
                                hashprice=bundled_hashprice())
        rows = []
        for kind, value, span in args.thresholds:
            configure(kind, value, span)
            LOOPS.clear()
            began = time.perf_counter()
            result = run_backtest(profile, actuals, ["mpc"], inline_solver=True)
            wall = time.perf_counter() - began
            counters = LOOPS[-1].counters
            counts = result.runs["mpc"].counts
            switches = sum(int(np.abs(np.diff(np.asarray(c))).sum()) for c in counts.values())
            rows.append({"threshold": f"{kind}:{value:g}" + ("@first" if span == "first" else ""), "profit_usd": result.schedules["mpc"].total_profit_usd,
                         "plan_changes": counters["plan_changes"], "units_moved": counters["plan_churn_units"],
                         "holds": counters["plan_holds"], "unit_switches": switches, "wall_s": wall})
            print(f"{name} {kind}:{value:g}@{span} done in {wall:.0f} s", file=sys.stderr, flush=True)
        configure("fraction", 0.0)
        base = next((r for r in rows if r["threshold"] == "fraction:0"), rows[0])
        lines.append(f"{name} ({profile.site.settlement_point}), {args.start} + {args.days} d, real ERCOT prices, "
                     f"bundled daily hashprice; {len(actuals.index)} ticks; baseline {base['threshold']}")
        lines.append(f"{'threshold':>16} {'profit $':>12} {'vs off':>8} {'plan changes':>13} {'units moved':>12} "
                     f"{'holds':>6} {'unit switches':>14} {'switches vs off':>16} {'$ per switch saved':>19} "
                     f"{'wall s':>7}")
        for row in rows:
            saved = base["unit_switches"] - row["unit_switches"]
            cost = (base["profit_usd"] - row["profit_usd"]) / saved if saved > 0 else float("nan")
            lines.append(f"{row['threshold']:>16} {row['profit_usd']:>12,.0f} {row['profit_usd'] / base['profit_usd']:>8.4f} "
                         f"{row['plan_changes']:>13} {row['units_moved']:>12} {row['holds']:>6} "
                         f"{row['unit_switches']:>14} {row['unit_switches'] / max(base['unit_switches'], 1):>16.3f} "
                         f"{cost:>19.2f} {row['wall_s']:>7.1f}")
        lines.append("")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
