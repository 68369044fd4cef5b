"""Guard fast-path latency: ``Guard.emergency_dr_cut`` (and ``check``) on a 1,000-miner batch.

Builds a 1,000-miner site (three groups in the proportions of the bundled west_texas profile, every
unit in its top mode) and times an emergency cut to half the load, plus a full ``check`` with a DR
limit and the noise caps. Prints p50 / p99 / max in milliseconds.

    python optimization/benchmarks/guard_latency.py [-n 1000] [--runs 500] [--goal-ms 10]

Exit status 1 if the emergency cut's p99 is over the goal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

from hashflex.control.fleet import FleetState
from hashflex.control.guard import Guard, Limits, Measurements
from hashflex.profile import load_profile

NOW = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)


def site(n: int):  # noqa: ANN201
    """A SYNTHETIC site of ``n`` miners: (profile, the full batch with every unit in its top mode)."""
    base = load_profile("west_texas")
    total = sum(g.units for g in base.miner_groups)
    groups = [g.model_copy(update={"units": max(1, round(n * g.units / total))}) for g in base.miner_groups]
    profile = base.model_copy(update={"miner_groups": groups})
    fleet = FleetState.from_profile(profile)
    for miner in fleet.miners.values():
        group = fleet.groups[miner.group_id]
        miner.mode = max(group.modes, key=lambda m: m.power_kw).name
    return profile, fleet.as_setpoints(NOW, 300)


def percentiles(samples: list[float]) -> str:
    """p50 / p99 / max of ``samples`` (ms) as text."""
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"p50 {p(0.50) * 1e3:.3f} ms  p99 {p(0.99) * 1e3:.3f} ms  max {ordered[-1] * 1e3:.3f} ms"


def main() -> int:
    """Parse the arguments, run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="miners")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--goal-ms", type=float, default=10.0, help="p99 goal for emergency_dr_cut")
    args = parser.parse_args()

    profile, batch = site(args.n)
    guard = Guard(profile)
    measurements = Measurements(at=NOW - timedelta(seconds=10), renewable_kw=1000.0)
    full = guard.net_import_kw(batch)
    limit = full / 2
    emergency, checks = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = guard.emergency_dr_cut(batch, limit, measurements)
        emergency.append(time.perf_counter() - start)
        start = time.perf_counter()
        guard.check(batch, measurements, Limits({"DR:bench": limit}), NOW)
        checks.append(time.perf_counter() - start)
    assert guard.net_import_kw(result.batch, renewable_kw=1000.0) <= limit + 1e-6
    cut = len(result.actions[0].miners)
    print(f"{len(batch)} miners, {full:.0f} kW at full load, limit {limit:.0f} kW, {cut} units cut")
    print(f"emergency_dr_cut: {percentiles(emergency)}  (mean {statistics.fmean(emergency) * 1e3:.3f} ms)")
    print(f"check (import + {len(profile.receptors)} receptors): {percentiles(checks)}")
    p99 = sorted(emergency)[min(len(emergency) - 1, int(0.99 * len(emergency)))] * 1e3
    if p99 > args.goal_ms:
        print(f"FAIL: emergency_dr_cut p99 {p99:.3f} ms > goal {args.goal_ms} ms")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
