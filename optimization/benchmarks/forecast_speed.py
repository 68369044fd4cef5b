"""Forecast speed (issue 18): CPU milliseconds per tick of the backtest's forecaster, this tree vs a baseline commit.

Each (tree, profile) builds the backtest's ``SnapshotForecaster`` over a bundled day (as
``hashflex backtest`` does: real ERCOT Feb 2020 prices, bundled hashprice, the SYNTHETIC clear-sky
solar history) in a fresh subprocess whose ``PYTHONPATH`` is that tree's ``src``, and calls it at
every interval start of the day with the profile's horizon. Printed: CPU ms per tick (the minimum of
``--reps`` passes after one warm-up pass; ``time.process_time``, so a loaded machine inflates it less
than wall time), the ratio baseline / this tree, and whether the forecasts are identical to the bit.

    python optimization/benchmarks/forecast_speed.py [--day 2020-02-10] [--profiles west_texas panhandle_120mw]
        [--baseline 9ede24f] [--baseline-dir /tmp/bt_base] [--reps 3]

Measured on the shared 2-core machine (load 3-5), one run, --reps 2, baseline 9ede24f: west_texas
12.9 -> 4.5 ms per tick (2.9x), panhandle_120mw (5-min, wind + solar) 12.5 -> 5.8 ms per tick (2.1x);
forecasts identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backtest_speed import REPO, ensure_baseline  # this directory's sibling script

CHILD = r"""
import dataclasses, hashlib, json, pickle, sys, time
import numpy as np, pandas as pd
import hashflex
from hashflex.backtest.runner import SnapshotForecaster, build_actuals, load_prices
from hashflex.data import bundled_path
from hashflex.feeds.hashprice import bundled_hashprice
from hashflex.profile import load_profile
name, day, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
profile = load_profile(name)
prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")])
end = (pd.Timestamp(day) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
actuals = build_actuals(profile, prices, day, end, hashprice=bundled_hashprice())
forecaster = SnapshotForecaster(profile, actuals)
T = int(round(profile.site.horizon_hours * 60 / profile.site.interval_minutes))
stamps = [s.to_pydatetime() for s in actuals.index]
digest = hashlib.sha256()
for s in stamps:  # the warm-up pass also fingerprints every forecast field
    f = forecaster(s, s, T)
    for field in dataclasses.fields(f):
        v = getattr(f, field.name)
        digest.update(v.asi8.tobytes() if isinstance(v, pd.DatetimeIndex) else
                      v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
best = float("inf")
for _ in range(reps):
    started = time.process_time()
    for s in stamps:
        forecaster(s, s, T)
    best = min(best, time.process_time() - started)
print("RESULT " + json.dumps({"module": hashflex.__file__, "ticks": len(stamps), "cpu_s": best,
                              "digest": digest.hexdigest()}))
"""


def run_one(tree: Path, profile: str, day: str, reps: int) -> dict:
    """One profile's forecast timing on ``tree``'s code, in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run([sys.executable, "-c", CHILD, profile, day, str(reps)], env=env, capture_output=True,
                          text=True, check=False)  # a failure is reported below with its stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{tree} {profile}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if not result["module"].startswith(str(tree)):
        raise RuntimeError(f"{tree}: the subprocess imported {result['module']} (PYTHONPATH not honoured)")
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, time both trees per profile and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--day", default="2020-02-10", help="the local day (bundled Feb 2020 prices)")
    parser.add_argument("--profiles", nargs="+", default=["west_texas", "panhandle_120mw"])
    parser.add_argument("--baseline", default="9ede24f", help="baseline commit (default: before issue 18's forecast work)")
    parser.add_argument("--baseline-dir", default="/tmp/bt_base_forecast", help="its git worktree (created if missing)")
    parser.add_argument("--reps", type=int, default=3, help="timed passes per tree; the minimum is printed")
    args = parser.parse_args(argv)
    base = ensure_baseline(args.baseline, Path(args.baseline_dir))
    print(f"forecast speed: SnapshotForecaster at every interval of {args.day} (bundled ERCOT prices, SYNTHETIC "
          f"clear-sky solar history); CPU ms per tick, min of {args.reps}; baseline {args.baseline}")
    print(f"{'profile':<16} {'ticks':>5} | {'this tree':>9} | {'baseline':>9} | {'ratio':>6} | forecasts")
    for profile in args.profiles:
        new, old = run_one(REPO, profile, args.day, args.reps), run_one(base, profile, args.day, args.reps)
        ms_new, ms_old = 1000 * new["cpu_s"] / new["ticks"], 1000 * old["cpu_s"] / old["ticks"]
        same = "identical" if new["digest"] == old["digest"] else "DIFFERENT"
        print(f"{profile:<16} {new['ticks']:>5} | {ms_new:9.2f} | {ms_old:9.2f} | {ms_old / ms_new:5.1f}x | {same}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
