"""Restore time of the commitment state after a profile change (issue 18, task H10).

A SYNTHETIC two-group site (``--miners`` split evenly, half of each group running with history) is
saved in format 4; then it is restored (`FleetState.restored`, what `load_control_state` calls) onto
(a) the same profile (baseline: ids equal, columns copied whole), (b) the profile with one unit
added to group ``a`` (ids matched miner by miner, by (group, n)), (c) group ``a`` at the next power
of ten (every id of it re-padded). Prints the median of ``--repeats`` runs per case, the ratio to
the load path before H10 (from_dict + from_profile + ids compared), and the count of miners restored running (must equal the saved count, minus none).

    python optimization/benchmarks/commitment_partial_restore.py [--miners 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime

import numpy as np

from hashflex.control.fleet import FleetState
from hashflex.profile import parse_profile

NOW = datetime(2025, 7, 15, 12, 0, tzinfo=UTC)


def _profile(units_a: int, units_b: int):
    return parse_profile(f"""
site: {{id: bench, name: partial restore bench (SYNTHETIC), settlement_point: LZ_WEST, horizon_hours: 2}}
grid: {{import_limit_kw: 1000000}}
miner_groups:
  - {{id: a, model: S21, units: {units_a}, min_on_minutes: 30, modes: [{{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}}]}}
  - {{id: b, model: S19, units: {units_b}, modes: [{{name: eco, power_kw: 2.9, hashrate_th_s: 100, sound_power_dba: 80}}]}}
carbon: {{default_intensity_kg_per_mwh: 370, intensity_source: test placeholder}}
economics: {{hashprice_usd_per_ph_day: 49}}
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    half = args.miners // 2
    base = _profile(half, args.miners - half)
    fleet = FleetState.from_profile(base)
    fleet.apply_modes({"a": np.where(np.arange(half) % 2 == 0, 0, -1),
                       "b": np.where(np.arange(args.miners - half) % 2 == 0, 0, -1)}, NOW)
    fleet.accrue_run_hours(0.25)
    saved = fleet.to_compact(4)
    running = fleet.units_running()
    cases = {"same profile": base, "a +1 unit": _profile(half + 1, args.miners - half),
             "a re-padded": _profile(10 ** len(str(half)), args.miners - half)}
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores shared); {args.miners:,} miners saved, {running:,} running")
    times = []
    for _ in range(args.repeats):  # the load path before H10: whole state, ids compared, same profile only
        t0 = time.perf_counter()
        whole = FleetState.from_dict(saved, base)
        assert sorted(whole.miners) == sorted(FleetState.from_profile(base).miners)
        times.append(time.perf_counter() - t0)
    baseline = statistics.median(times)
    print(f"{'before H10':14s} median {baseline * 1e3:8.1f} ms  x 1.00 (from_dict + from_profile + sorted ids; "
          f"same profile only, any change dropped all)")
    for name, profile in cases.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            restored, missing = FleetState.restored(saved, profile)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        print(f"{name:14s} median {median * 1e3:8.1f} ms  x{median / baseline:5.2f} of before  "
              f"running after {restored.units_running():,} (saved {running:,})  not restored {missing}")
        assert restored.units_running() == running, "a restored running miner was lost"


if __name__ == "__main__":
    main()
