"""The product's tick at 1k / 10k / 100k SYNTHETIC miners: `ControlLoop.tick` end to end (forecast →
problem → schedule → plan stability → dispatch → guard → driver batch → commitment saved to a real
SQLite store), excluding only the solve, for this tree and a baseline commit side by side (issue 18,
goal ≤ 100 ms at 100k excluding the solve).

The site is `fleet_tick.synthetic_site` (SYNTHETIC: 12 groups of 3 modes, a receptor whose cap
binds, a third of the fleet running). The solve is excluded by solving once (real HiGHS) and
handing every tick that schedule (`CachedSolve`); the driver accepts every batch without I/O
(publishing is measured by ``mqtt_batch.py``). Each size runs in a fresh process per tree; the
baseline tree is a ``git worktree`` of ``--baseline`` (default: 1e0fd7c, before the tick's issue-18 work of
session 4)
imported through PYTHONPATH.

    python optimization/benchmarks/loop_tick.py [--sizes 1000 10000 100000] [--ticks 5] [--baseline 1e0fd7c] [--repeats 3]
    python optimization/benchmarks/loop_tick.py --sizes 100000 --ticks 96 --step-s 900   # a simulated day: RSS after it
    python optimization/benchmarks/loop_tick.py --sizes 100000 --ticks 4 --change-modes --baseline 39fba2a

``--change-modes``: ticks whose plan changes modes (the commitment state is then saved, the guard
and the driver batch carry the changes). The SYNTHETIC forecast alternates between the cheap flat
price and 5,000 $/MWh, each level with its own real solve made once (untimed), and ticks are 30 min
apart (``--step-s 1800``: past the site's 30-minute min-on and 15-minute min-off), so every timed
tick starts or stops about a third of the fleet; the table says how many miners changed per tick.

``--repeats R`` runs each tree R times per size, alternating (this tree, baseline, this tree, ...), since
the machine is shared: the table gives the median over every timed tick of a tree's runs, wall and CPU
(``time.process_time`` over the tick: every thread of the process, the store's writer included), and the
spread of the runs' medians.

Prints, per size and tree: median tick ms without the solve (wall and CPU), and the ratio baseline / this
tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GOAL_MS = 100.0


def _one(n_miners: int, ticks: int, step_s: float = 1.0, change_modes: bool = False) -> dict:
    """Run in a child process: the ticks of one size with whatever `hashflex` is importable."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from fleet_tick import NOW, synthetic_site

    from hashflex.control.loop import ControlLoop, HorizonForecast
    from hashflex.control.solver import SolveRunner
    from hashflex.drivers.base import SetpointResult, SetpointStatus
    from hashflex.store import Store

    profile, fleet, _, measurements, _ = synthetic_site(n_miners)

    class NullDriver:
        """Accepts every batch without I/O: per setpoint (``apply``, what the baseline tree calls) or
        a columnar batch whole (``apply_batch``, issue 18; only a tree with ``drivers.batch`` calls it)."""

        def apply(self, batch):
            return [SetpointResult(sp.miner_id, SetpointStatus.APPLIED, "accepted") for sp in batch]

        def apply_batch(self, batch):
            from hashflex.drivers.batch import BatchResult

            return BatchResult.all_applied(batch, "accepted")

    level = {"price": 25.0}  # the forecast's flat price now ($/MWh, SYNTHETIC)

    class CachedSolve:
        """The first solve per price level is real (HiGHS); later ticks at that level get its schedule
        (the solve excluded)."""

        def __init__(self) -> None:
            self.runner = SolveRunner(time_limit_s=30)
            self.schedules = {}
            self.last_seconds = 0.0

        def run(self, problem, fine_intervals=None):
            if level["price"] not in self.schedules:
                self.schedules[level["price"]] = self.runner.run(problem, fine_intervals)
            return self.schedules[level["price"]]

    def forecaster(now, start, periods):
        return HorizonForecast(pd.date_range(start, periods=periods, freq=f"{profile.site.interval_minutes}min"),
                               np.full(periods, level["price"]))

    def modes_now(loop):
        return {g: loop.fleet.columns(g).mode.copy() for g in loop.fleet.groups}

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "tick.db")
        loop = ControlLoop(profile, forecaster=forecaster, driver=NullDriver(), fleet=fleet, store=store,
                           solver=CachedSolve())
        loop.measurements = measurements
        loop.tick(NOW)  # the real solve, and the first dispatch
        if change_modes:  # the other level's real solve, untimed, so every timed tick only re-uses one
            level["price"] = 5000.0
            loop.tick(NOW + timedelta(seconds=step_s))
            level["price"] = 25.0
        times, cpu, changed = [], [], []
        for k in range(ticks):
            moment = NOW + timedelta(seconds=(k + (2 if change_modes else 1)) * step_s)
            if change_modes:
                level["price"] = 5000.0 if k % 2 else 25.0
            before = modes_now(loop)
            started, started_cpu = time.perf_counter(), time.process_time()
            loop.tick(moment)
            times.append((time.perf_counter() - started) * 1000.0)
            cpu.append((time.process_time() - started_cpu) * 1000.0)
            after = modes_now(loop)
            changed.append(int(sum((before[g] != after[g]).sum() for g in before)))
        store.close()
    import resource

    return {"times_ms": times, "cpu_ms": cpu, "changed": statistics.median(changed),
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _worktree(commit: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"hashflex_base_{commit}"
    if not (path / "src").exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", "--detach", str(path), commit],
                       check=True, capture_output=True)
    return path


def _run(n: int, ticks: int, src: Path | None, step_s: float = 1.0, change_modes: bool = False) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, __file__, "--child", str(n), "--ticks", str(ticks),
                          "--step-s", str(step_s)] + (["--change-modes"] if change_modes else []), env=env,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse the arguments, run each size in fresh processes for both trees and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--baseline", default="1e0fd7c", help="commit to compare with ('' for none)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tree and size, alternated (shared machine)")
    parser.add_argument("--step-s", type=float, default=None,
                        help="seconds between ticks (default 1, or 1800 with --change-modes; 900 with --ticks 96: "
                             "a simulated day, for its RSS)")
    parser.add_argument("--change-modes", action="store_true",
                        help="ticks whose plan starts or stops about a third of the fleet (see above)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_s is None:
        args.step_s = 1800.0 if args.change_modes else 1.0
    if args.child:
        print(json.dumps(_one(args.child, args.ticks, args.step_s, args.change_modes)))
        return
    base = _worktree(args.baseline) / "src" if args.baseline else None
    kind = "ticks that change modes" if args.change_modes else "ticks"
    print(f"ControlLoop.tick without the solve, median of {args.ticks} {kind} x {args.repeats} alternated runs "
          f"(goal ≤ {GOAL_MS:.0f} ms at 100k); SYNTHETIC site")
    print(f"{'miners':>8} {'tree':>9} {'wall ms':>8} {'CPU ms':>7} {'run medians (wall)':>24} {'max ms':>7} "
          f"{'RSS MiB':>8} {'changed/tick':>13}")
    for n in args.sizes:
        runs: dict[str, list[dict]] = {"this": [], "baseline": []}
        for _ in range(args.repeats):
            runs["this"].append(_run(n, args.ticks, None, args.step_s, args.change_modes))
            if base is not None:
                runs["baseline"].append(_run(n, args.ticks, base, args.step_s, args.change_modes))
        medians = {}
        for tree, results in runs.items():
            if not results:
                continue
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                print(f"{n:>8} {tree:>9} error: {errors[0]}")
                continue
            wall = statistics.median([t for r in results for t in r["times_ms"]])
            cpu = statistics.median([t for r in results for t in r["cpu_ms"]])
            per_run = ", ".join(f"{statistics.median(r['times_ms']):.0f}" for r in results)
            medians[tree] = (wall, cpu)
            print(f"{n:>8} {tree:>9} {wall:>8.0f} {cpu:>7.0f} {per_run:>24} "
                  f"{max(t for r in results for t in r['times_ms']):>7.0f} {max(r['rss_mib'] for r in results):>8.0f} "
                  f"{statistics.median([r['changed'] for r in results]):>13.0f}")
        if len(medians) == 2:
            (new_wall, new_cpu), (old_wall, old_cpu) = medians["this"], medians["baseline"]
            print(f"{n:>8} {'ratio':>9} {old_wall / new_wall:>7.2f}x {old_cpu / new_cpu:>6.2f}x   (baseline / this tree)")


if __name__ == "__main__":
    main()
