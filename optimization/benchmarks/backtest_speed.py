"""Backtest speed (issue 18): seconds per simulated day per policy, this tree vs a baseline commit.

Each (tree, profile, policy) runs ``hashflex backtest`` (the CLI's own code path, with ``--out``,
so the store, audit trail and outputs are included) in a fresh subprocess whose ``PYTHONPATH``
points at that tree's ``src``; the baseline tree is a ``git worktree`` of ``--baseline`` (created
at ``--baseline-dir`` if missing). Printed per row: wall seconds per simulated day of the whole
command (after imports), of the policy's run alone (``wall_seconds`` in its ``summary.json``), the
ratio baseline / this tree, and the subprocess's max RSS (``ru_maxrss`` of the backtest process;
the solver worker process, for mpc, separately): issue 18 asks for "RSS after a simulated day".

Real bundled prices (ERCOT RTM/DAM Feb 2020, ``src/hashflex/data/ercot``), the profile's own
fleet; the on-site solar is the backtest's SYNTHETIC clear-sky shape (as in every default backtest).

    python optimization/benchmarks/backtest_speed.py [--days 2] [--from 2020-02-10]
        [--profiles west_texas panhandle_120mw] [--policies always-on threshold mpc]
        [--baseline 4953d1a] [--baseline-dir /tmp/bt_base] [--no-baseline] [--cache FILE] [--repeat 3]

Goals (issue 18): west_texas MPC ≤ 4 s per simulated day (a month in two minutes);
panhandle_120mw (5-minute intervals) ≤ 10 s per simulated day; always-on and threshold almost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
GOALS_S_PER_DAY = {("west_texas", "mpc"): 4.0, ("panhandle_120mw", "mpc"): 10.0}

# Runs in the subprocess: the CLI's backtest on one policy; prints one JSON line.
CHILD = r"""
import json, resource, sys, time
argv, out = json.loads(sys.argv[1]), sys.argv[2]
import hashflex
from hashflex.cli import main
def cpu():  # (this process, its solver worker) (a worker still alive is reaped by main's close())
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime
cpu_started = cpu()
started = time.perf_counter()
code = main(argv)
wall = time.perf_counter() - started
cpu_ended = cpu()
summary = json.load(open(out + "/summary.json"))
print("RESULT " + json.dumps({
    "code": code, "wall_s": wall, "module": hashflex.__file__,
    "policies": {k: {"wall_seconds": v["wall_seconds"], "profit_usd": v["profit_usd"]}
                 for k, v in summary["policies"].items()},
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    "cpu_s": sum(cpu_ended) - sum(cpu_started),
    "worker_cpu_s": cpu_ended[1] - cpu_started[1],
}))
"""


def ensure_baseline(rev: str, where: Path) -> Path:
    """The baseline tree at ``where`` (``git worktree add`` of ``rev`` when missing)."""
    if not (where / "src" / "hashflex").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev], check=True)
    return where


def run_one(tree: Path, profile: str, policy: str, start: str, days: int) -> dict:
    """One backtest in a subprocess on ``tree``'s code; its timings, RSS and profit."""
    end = (pd.Timestamp(start) + pd.Timedelta(days=days - 1)).strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="bt_speed_") as out:
        argv = ["backtest", "--profile", profile, "--from", start, "--to", end, "--policy", policy, "--quiet",
                "--out", out]
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "MPLBACKEND": "Agg"}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv), out], env=env, cwd=out,
                              capture_output=True, text=True)
        total = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{tree} {profile} {policy}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if not result["module"].startswith(str(tree)):
        raise RuntimeError(f"{tree}: the subprocess imported {result['module']} (PYTHONPATH not honoured)")
    result["process_s"] = total
    result["load"] = os.getloadavg()[0]  # the 1-minute load average as the run ended
    return result


def _median_run(runs: list[dict]) -> dict:
    """The run of median CPU seconds (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r.get("cpu_s") or 0.0)[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run every (profile, policy) on both trees and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=2, help="simulated days per run (default 2)")
    parser.add_argument("--from", dest="start", default="2020-02-10", help="first local day (bundled Feb 2020 prices)")
    parser.add_argument("--profiles", nargs="+", default=["west_texas", "panhandle_120mw"])
    parser.add_argument("--policies", nargs="+", default=["always-on", "threshold", "mpc"],
                        help="any of always-on threshold mpc oracle")
    parser.add_argument("--baseline", default="4953d1a", help="baseline commit (default: issue 18's start)")
    parser.add_argument("--baseline-dir", default="/tmp/bt_base", help="its git worktree (created if missing)")
    parser.add_argument("--no-baseline", action="store_true", help="this tree only")
    parser.add_argument("--tree", default=str(REPO),
                        help="the tree measured as 'this tree' (a directory with src/hashflex; default: this "
                             "checkout), e.g. a baseline with only some files changed")
    parser.add_argument("--cache", help="JSON file keeping the baseline's results (reused when the same run)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per tree, alternated this tree / baseline; each cell is the run of median CPU")
    args = parser.parse_args(argv)
    if args.days < 1 or args.repeat < 1:
        parser.error("--days and --repeat must be >= 1")
    base = None if args.no_baseline else ensure_baseline(args.baseline, Path(args.baseline_dir))
    tree = Path(args.tree).resolve()
    if not (tree / "src" / "hashflex").is_dir():
        parser.error(f"--tree {tree}: no src/hashflex there")
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).exists() else {}
    print(f"backtest speed: {args.days} simulated day(s) from {args.start}; bundled ERCOT Feb 2020 prices, "
          f"SYNTHETIC clear-sky solar; baseline {args.baseline if base else '(none)'}")
    print("s/day: whole command after imports (policy run alone); CPU: CPU seconds per day of the command and "
          "its solver worker, the worker's share in brackets (user + system; a loaded shared machine inflates "
          "wall time far more than CPU time); "
          "ratio = baseline / this tree, wall (CPU); RSS: backtest process max (solver worker max)")
    header = (f"{'profile':<16} {'policy':<10} | {'this tree s/day':>20} {'CPU (worker)':>14} {'RSS MB':>14} | "
              f"{'baseline s/day':>20} {'CPU (worker)':>14} {'RSS MB':>14} | {'ratio':>11} | profit vs baseline")
    print(header)
    print("-" * len(header))
    for profile in args.profiles:
        for policy in args.policies:
            news, olds = [], []
            key = f"{args.baseline}|{profile}|{policy}|{args.start}|{args.days}"
            for _ in range(args.repeat):  # alternated, so a change in the machine's load hits both trees
                news.append(run_one(tree, profile, policy, args.start, args.days))
                if base is not None and (key not in cache or args.repeat > 1):
                    olds.append(run_one(base, profile, policy, args.start, args.days))
            new = _median_run(news)
            old = None
            if base is not None:
                old = _median_run(olds) if olds else cache[key]
                cache[key] = old
                if args.cache:
                    Path(args.cache).write_text(json.dumps(cache, indent=1))
            if args.repeat > 1:
                for label, runs in (("this tree", news), ("baseline", olds)):
                    if runs:
                        print(f"  {profile} {policy} {label}: CPU s/day per run "
                              + " ".join(f"{r['cpu_s'] / args.days:.2f}" for r in runs)
                              + "; policy run s/day " + " ".join(
                                  f"{r['policies'][policy]['wall_seconds'] / args.days:.2f}" for r in runs)
                              + "; load " + " ".join(f"{r.get('load', float('nan')):.1f}" for r in runs), flush=True)

            def cells(r: dict | None) -> str:
                if r is None:
                    return f"{'-':>20} {'-':>14} {'-':>14}"
                run = r["policies"][policy]["wall_seconds"] / args.days
                cpu, worker = r.get("cpu_s"), r.get("worker_cpu_s")
                cpu_cell = (f"{cpu / args.days:6.2f}" if cpu is not None else f"{'-':>6}") + (
                    f" ({worker / args.days:5.2f})" if worker is not None else f" ({'-':>5})")
                return (f"{r['wall_s'] / args.days:9.1f} ({run:7.1f}) {cpu_cell} "
                        f"{r['maxrss_mb']:6.0f} ({r['children_maxrss_mb']:5.0f})")

            ratio = "          -"
            if old:  # wall (CPU): CPU time is what a loaded shared machine does not inflate
                cpu_ratio = (f"{old['cpu_s'] / new['cpu_s']:4.1f}x" if old.get("cpu_s") and new.get("cpu_s")
                             else "   -")
                ratio = f"{old['wall_s'] / new['wall_s']:5.1f}x ({cpu_ratio})"
            same = "-"
            if old is not None:  # the same result, or this tree's profit less the baseline's
                delta = new["policies"][policy]["profit_usd"] - old["policies"][policy]["profit_usd"]
                # (was assigned to `base`, the baseline tree: the next row then ran on a float)
                old_profit = old["policies"][policy]["profit_usd"]
                same = "same" if abs(delta) < 1e-6 else f"{delta:+,.2f} $ ({delta / old_profit:+.3%})"
            print(f"{profile:<16} {policy:<10} | {cells(new)} | {cells(old)} | {ratio:>11} | {same}", flush=True)
            print(f"  load average (1 min) at the end of the row: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
                  flush=True)
            goal = GOALS_S_PER_DAY.get((profile, policy))
            if goal is not None:
                got = new["wall_s"] / args.days
                print(f"  GOAL {profile} {policy} <= {goal:g} s per simulated day: {got:.1f} s -> "
                      f"{'MET' if got <= goal else 'NOT MET'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
