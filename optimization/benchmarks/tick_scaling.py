"""Dispatch per tick at 1k / 10k / 100k SYNTHETIC miners: today's per-miner `plan_dispatch` vs
the array path (`plan_dispatch_arrays`, issue 18), side by side, plus the driver edge
(`ArrayDispatch.to_setpoints`, one object per miner). Excludes the solve, the guard and the driver.

SYNTHETIC fleet: 12 groups of 3 modes, a third running, 5 % unhealthy, 2 % unavailable, random
run hours and start/stop times; counts move 10 % of each group (a typical re-plan).

    python optimization/benchmarks/tick_scaling.py [--sizes 1000 10000 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np

from hashflex.control.dispatch import plan_dispatch, plan_dispatch_arrays
from hashflex.control.fleet import SLEEP, FleetArrays, FleetState, Miner
from hashflex.profile import MinerGroup, MinerMode

NOW = datetime(2025, 7, 15, 12, 0, tzinfo=timezone.utc)
GOAL_MS = 100.0


def synthetic_fleet(n_miners: int, n_groups: int = 12, seed: int = 3) -> tuple[FleetState, dict]:
    """SYNTHETIC fleet of ``n_miners`` in ``n_groups`` groups, and counts moving 10 % of each group."""
    rng = np.random.default_rng(seed)
    modes = [MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
             MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
             MinerMode(name="turbo", power_kw=4.2, hashrate_th_s=230, sound_power_dba=86)]
    groups = [MinerGroup(id=f"g{g:02d}", model="S21", units=n_miners // n_groups, modes=modes, idle_power_kw=0.01,
                         min_on_minutes=30, min_off_minutes=15) for g in range(n_groups)]
    miners, counts = [], {}
    for group in groups:
        per = n_miners // n_groups
        mode = rng.choice([SLEEP, "eco", "stock", "turbo"], per, p=[0.67, 0.11, 0.11, 0.11])
        for i in range(per):
            miners.append(Miner(f"{group.id}-{i:06d}", group.id, str(mode[i]), healthy=bool(rng.random() > 0.05),
                                available=bool(rng.random() > 0.02),
                                last_start=NOW - timedelta(minutes=int(rng.integers(0, 120))),
                                last_stop=NOW - timedelta(minutes=int(rng.integers(0, 120))),
                                run_hours=float(rng.integers(0, 5000))))
        for name in ("eco", "stock", "turbo"):
            counts[group.id, name] = int((mode == name).sum() + rng.integers(0, max(per // 10, 1)))
    return FleetState(miners, groups), counts


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print("SYNTHETIC fleet, 12 groups x 3 modes; medians in ms")
    print(f"{'miners':>8} | {'per-miner':>10} | {'arrays':>8} {'ratio':>7} | {'+to_setpoints':>13} | same")
    for n in args.sizes:
        fleet, counts = synthetic_fleet(n)
        arrays = FleetArrays.from_fleet(fleet)
        old, new, edge = [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            want = plan_dispatch(counts, fleet, NOW, 300.0)
            old.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            got = plan_dispatch_arrays(counts, arrays, NOW, 300.0)
            new.append((time.perf_counter() - started) * 1000)
            setpoints = got.to_setpoints(arrays, NOW, 300.0)
            edge.append((time.perf_counter() - started) * 1000)
        o, a, e = (statistics.median(v) for v in (old, new, edge))
        print(f"{n:>8} | {o:10.1f} | {a:8.1f} {o / a:6.0f}x | {e:13.1f} | {setpoints == want.setpoints}", flush=True)
        if n >= 100_000:
            print(f"GOAL dispatch at {n} miners <= {GOAL_MS:.0f} ms (arrays, excluding the driver edge): "
                  f"{a:.1f} ms -> {'MET' if a <= GOAL_MS else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
