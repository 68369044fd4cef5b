"""Is a speed change the same run? The CLI's mpc backtest on a baseline commit and on this tree,
compared record for record (issue 18: per-tick costs cut "without changing results").

Each tree runs ``hashflex backtest --profile P --from A --to B --policy mpc --quiet --out DIR`` in
its own subprocess (``PYTHONPATH`` = that tree's ``src``; the baseline is ``git archive`` of
``--baseline`` into a temporary directory, or ``--baseline-src`` as given), one after the other.
Compared: the summary's figures (profit, revenue, energy, solves, fallbacks, every count), the
per-interval CSV byte for byte, and every row of the audit trail (seq, at_utc, kind, payload,
hash: the last hash equal means the whole chain is). Prints what differs and exits 1 if anything
does; also prints each run's wall and CPU seconds (not a benchmark: one run each, see
``backtest_speed.py`` for timings).

Real bundled ERCOT prices (Feb 2020); the on-site solar is the backtest's SYNTHETIC clear-sky shape.

    python optimization/benchmarks/backtest_identity.py [--profile panhandle_120mw]
        [--from 2020-02-10] [--to 2020-02-11] [--baseline d987bd2 | --baseline-src DIR] [--src DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(src: Path, out: Path, profile: str, start: str, end: str) -> dict:
    """One mpc backtest through the CLI on ``src``'s code; its wall and CPU seconds.

    Raises
    ------
    RuntimeError
        If the backtest fails or imported hashflex from elsewhere (stderr's end in the message).
    """
    out.mkdir(parents=True, exist_ok=True)
    code = ("import sys, hashflex; from hashflex.cli import main; "
            "print('MODULE', hashflex.__file__); sys.exit(main(sys.argv[1:]))")
    argv = ["backtest", "--profile", profile, "--from", start, "--to", end, "--policy", "mpc", "--quiet",
            "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=out, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    module = next((line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("MODULE ")), "")
    if proc.returncode != 0:
        raise RuntimeError(f"{src}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    if not module.startswith(str(src)):
        raise RuntimeError(f"{src}: the subprocess imported {module!r} (PYTHONPATH not honoured)")
    return {"wall_s": wall, "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def audit_rows(db: Path) -> list[tuple]:
    """Every audit row (seq, at_utc, kind, payload, hash) in order."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, at_utc, kind, payload, hash FROM audit_log ORDER BY seq").fetchall()


def _csv_rows(path: Path) -> list[list[str]]:
    """The CSV's rows without its ``solve_seconds`` column (wall time: differs from run to run)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    skip = rows[0].index("solve_seconds") if rows and "solve_seconds" in rows[0] else None
    return [[cell for i, cell in enumerate(row) if i != skip] for row in rows]


def compare(base: Path, new: Path) -> list[str]:
    """What differs between two ``--out`` directories (empty: the same run)."""
    diffs = []
    old_summary = json.loads((base / "summary.json").read_text())["policies"]["mpc"]
    new_summary = json.loads((new / "summary.json").read_text())["policies"]["mpc"]
    for key in sorted(set(old_summary) | set(new_summary)):
        if key == "wall_seconds":
            continue
        if old_summary.get(key) != new_summary.get(key):
            diffs.append(f"summary {key}: {old_summary.get(key)!r} -> {new_summary.get(key)!r}")
    for name in sorted(p.name for p in base.glob("intervals_*.csv")):
        old_rows = _csv_rows(base / name)
        new_rows = _csv_rows(new / name) if (new / name).exists() else []
        if old_rows != new_rows:
            where = next((k for k, (a, b) in enumerate(zip(old_rows, new_rows)) if a != b), min(len(old_rows),
                                                                                             len(new_rows)))
            diffs.append(f"{name}: differs (other than solve_seconds) from row {where}")
    old_rows, new_rows = audit_rows(base / "backtest.db"), audit_rows(new / "backtest.db")
    if len(old_rows) != len(new_rows):
        diffs.append(f"audit rows: {len(old_rows)} -> {len(new_rows)}")
    for a, b in zip(old_rows, new_rows):
        if a != b:
            diffs.append(f"first differing audit row: seq {a[0]} kind {a[2]} (baseline) vs seq {b[0]} kind {b[2]}")
            break
    return diffs


def main(argv: list[str] | None = None) -> int:
    """Run both trees and print the comparison; exit 0 when the same run, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="panhandle_120mw")
    parser.add_argument("--from", dest="start", default="2020-02-10")
    parser.add_argument("--to", dest="end", default="2020-02-11")
    parser.add_argument("--baseline", default="d987bd2", help="baseline commit (git archive of its src)")
    parser.add_argument("--baseline-src", help="a baseline src directory instead of --baseline")
    parser.add_argument("--src", default=str(REPO / "src"), help="this tree's src (default: the checkout's)")
    parser.add_argument("--keep", help="run in this directory and keep both runs' outputs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bt_identity_") as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.baseline_src:
            base_src = Path(args.baseline_src).resolve()
        else:
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "src"], capture_output=True,
                                     check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            base_src = Path(tmp) / "src"
        new_src = Path(args.src).resolve()
        load = os.getloadavg()
        timings = {}
        for label, src in (("baseline", base_src), ("this tree", new_src)):
            timings[label] = run_cli(src, Path(tmp) / label.replace(" ", "_"), args.profile, args.start, args.end)
        diffs = compare(Path(tmp) / "baseline", Path(tmp) / "this_tree")
        rows = len(audit_rows(Path(tmp) / "this_tree" / "backtest.db"))
    print(f"{args.profile} mpc {args.start}..{args.end}: baseline {base_src} vs {new_src}; "
          f"load average at start {load[0]:.2f}")
    for label, t in timings.items():
        print(f"  {label:<10} whole command {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU (with its solver worker)")
    if diffs:
        print("DIFFERENT:")
        for line in diffs:
            print("  " + line)
        return 1
    print(f"IDENTICAL: summary figures, per-interval CSV (but solve_seconds) and all {rows} audit rows "
          "(payloads and hashes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
