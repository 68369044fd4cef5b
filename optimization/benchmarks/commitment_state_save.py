"""Commitment state save, format 3 vs format 4, side by side (issue 18, task H5).

What the loop does on every batch that changes a mode (`ControlStateMixin._save_commitment`):
``store.set_meta("fleet", fleet.to_compact())``, where ``set_meta`` runs ``json.dumps`` on the caller's
thread and queues the text for the store's writer thread. Measured here per save, on a SYNTHETIC
site named by the profile's rule (`SiteProfile.miner_ids`, as every real fleet is: `from_profile`):

* ``to_compact``: building the state (format 3 or 4) after a batch that changes 50 miners' modes
  and accrues run hours for the running ones (so run hours change every save, as in the loop);
* ``json.dumps``: what ``set_meta`` does with it;
* ``save``: the two together (the caller's cost on the fast path), and the bytes the writer then
  writes to SQLite;
* ``load``: ``json.loads`` + `FleetState.from_dict` (a restart; once per process).

Formats alternate save by save (3, 4, 4, 3, ...) on the same fleet, so load from other work on a
shared machine falls on both alike; the medians and the ratio (format 3 / format 4) are printed.

    python optimization/benchmarks/commitment_state_save.py [--miners 100000] [--groups 12] [--saves 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np

from hashflex.control.fleet import FleetState
from hashflex.profile import MinerGroup, MinerMode

MODES = [MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
         MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
         MinerMode(name="turbo", power_kw=4.2, hashrate_th_s=230, sound_power_dba=86)]
NOW = datetime(2025, 7, 15, tzinfo=timezone.utc)


def synthetic_fleet(miners: int, groups: int) -> tuple[FleetState, SimpleNamespace]:
    """SYNTHETIC: ``miners`` S21-like units in ``groups`` groups, ids by the profile's naming rule."""
    sizes = [miners // groups + (1 if k < miners % groups else 0) for k in range(groups)]
    profile = SimpleNamespace(miner_groups=[MinerGroup(id=f"g{k:02d}", model="S21", units=n, modes=MODES,
                                                       idle_power_kw=0.01) for k, n in enumerate(sizes)])
    fleet = FleetState.from_profile(SimpleNamespace(
        miner_groups=profile.miner_groups,
        miner_ids=lambda: {f"{g.id}-{i:0{len(str(g.units))}d}": g.id for g in profile.miner_groups
                           for i in range(1, g.units + 1)}))
    rng = np.random.default_rng(0)
    for k in range(3):  # some history: starts and stops at three times, run hours
        fleet.apply_modes({g.id: rng.integers(-1, 3, g.units) for g in profile.miner_groups},
                          NOW + timedelta(minutes=15 * k))
        fleet.accrue_run_hours(0.25)
    return fleet, profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miners", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=12)
    parser.add_argument("--saves", type=int, default=40, help="saves per format (alternated)")
    args = parser.parse_args(argv)
    fleet, profile = synthetic_fleet(args.miners, args.groups)
    for version in (3, 4):
        fleet.to_compact(version)  # first saves fill the caches (ids' text, times' text) in both
    times: dict[int, dict[str, list[float]]] = {v: {"to_compact": [], "json.dumps": [], "save": []} for v in (3, 4)}
    size: dict[int, int] = {}
    rng = np.random.default_rng(1)
    order = [3, 4, 4, 3] * ((args.saves + 1) // 2)
    for k, version in enumerate(order[:2 * args.saves]):
        group = profile.miner_groups[k % len(profile.miner_groups)]
        modes = {g.id: fleet.columns(g.id).mode.copy() for g in profile.miner_groups}
        rows = rng.choice(group.units, size=min(50, group.units), replace=False)
        modes[group.id][rows] = (modes[group.id][rows] + 2) % 4 - 1  # 50 miners change mode
        fleet.apply_modes(modes, NOW + timedelta(hours=1, minutes=15 * k))
        fleet.accrue_run_hours(0.25)
        t0 = time.perf_counter()
        state = fleet.to_compact(version)
        t1 = time.perf_counter()
        text = json.dumps(state, default=str)  # as Store.set_meta
        t2 = time.perf_counter()
        times[version]["to_compact"].append(t1 - t0)
        times[version]["json.dumps"].append(t2 - t1)
        times[version]["save"].append(t2 - t0)
        size[version] = len(text)
    loads: dict[int, list[float]] = {3: [], 4: []}
    texts = {v: json.dumps(fleet.to_compact(v)) for v in (3, 4)}
    for version in (3, 4, 4, 3, 3, 4):
        t0 = time.perf_counter()
        FleetState.from_dict(json.loads(texts[version]), profile)
        loads[version].append(time.perf_counter() - t0)
    load = os.getloadavg()
    print(f"commitment state save, {args.miners:,} SYNTHETIC miners in {args.groups} groups, {args.saves} saves per "
          f"format alternated (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores)")
    print(f"{'median ms':<22}{'format 3':>12}{'format 4':>12}{'3 / 4':>10}")
    result = {}
    for name in ("to_compact", "json.dumps", "save"):
        a, b = (statistics.median(times[v][name]) * 1e3 for v in (3, 4))
        print(f"{name:<22}{a:>12.2f}{b:>12.2f}{a / b:>10.2f}")
        result[name] = [a, b]
    a, b = (statistics.median(loads[v]) * 1e3 for v in (3, 4))
    print(f"{'load (restart)':<22}{a:>12.2f}{b:>12.2f}{a / b:>10.2f}")
    print(f"{'bytes per save':<22}{size[3]:>12,}{size[4]:>12,}{size[3] / size[4]:>10.2f}")
    print(json.dumps({"miners": args.miners, "median_ms": result, "load_ms": [a, b], "bytes": [size[3], size[4]],
                      "loadavg": load[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
