"""The whole `hashflex backtest` command, a baseline commit's ``src`` against today's tree, alternated
(issue 18, task H5: a month of west_texas at 15 min, MPC, the whole command <= 2 min).

Each round runs the command once per tree (``python -m hashflex.cli backtest ...`` in a child process
whose ``PYTHONPATH`` puts that ``src`` first, as `baseline_tree` does), the order alternating round by
round, one at a time; per run: wall seconds, CPU seconds of the command and its solver worker (the
children's rusage), the largest child's peak RSS so far (rusage keeps a maximum), the mpc profit, and the 1-minute load average before it. The outputs
are compared with the first baseline run's: ``summary.json`` and ``intervals_mpc.csv`` must be equal
except for their timing fields (``wall_seconds``, ``solve_seconds``), and ``backtest.png`` must exist.

    python optimization/benchmarks/backtest_command.py [--baseline d987bd2] [--from 2020-02-01]
        [--to 2020-02-29] [--rounds 2] [--src-after DIR] [--src-before DIR]

``--src-before`` / ``--src-after``: use these ``src`` directories instead (e.g. a tree with patches
applied); the machine's load is printed with every run, since the numbers move with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import REPO, archived_src  # noqa: E402


def run_command(src: Path, out: Path, start: str, end: str) -> dict:
    """One whole command with ``src`` first on the path; wall, CPU (self + children), RSS, profit, load."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hashflex.cli", "backtest", "--profile", "west_texas", "--from", start,
                           "--to", end, "--policy", "mpc", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"backtest with {src} failed: {done.stderr.strip()[-600:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "rss_mb": after.ru_maxrss / 1024, "profit_usd": summary["policies"]["mpc"]["profit_usd"],
            "load_1min": load, "out": out}


def _untimed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def same_outputs(a: Path, b: Path) -> bool:
    """``summary.json`` and ``intervals_mpc.csv`` equal but for timing fields; ``backtest.png`` written."""
    summaries = [_untimed(json.loads((d / "summary.json").read_text(encoding="utf-8"))) for d in (a, b)]
    frames = [pd.read_csv(d / "intervals_mpc.csv", dtype=str) for d in (a, b)]
    columns = [c for c in frames[0].columns if "seconds" not in c]
    return (summaries[0] == summaries[1] and list(frames[0].columns) == list(frames[1].columns)
            and frames[0][columns].equals(frames[1][columns]) and (b / "backtest.png").stat().st_size > 10_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="d987bd2", help="baseline commit (default d987bd2, before H5)")
    parser.add_argument("--from", dest="start", default="2020-02-01")
    parser.add_argument("--to", dest="end", default="2020-02-29")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--src-before", type=Path, help="a src directory instead of the baseline commit's")
    parser.add_argument("--src-after", type=Path, default=REPO / "src", help="default today's src")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with contextlib.ExitStack() as stack:
        before_src = args.src_before or stack.enter_context(archived_src(args.baseline))
        outs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hashflex_backtest_cmd_")))
        for r in range(args.rounds):
            order = [("before", before_src), ("after", args.src_after)]
            for name, src in (order if r % 2 == 0 else order[::-1]):
                result = run_command(src, outs / f"{name}{r}", args.start, args.end)
                runs[name].append(result)
                print(f"round {r} {name:6} wall {result['wall_s']:7.1f} s  cpu {result['cpu_s']:7.1f} s  "
                      f"max child rss so far {result['rss_mb']:4.0f} MB  profit ${result['profit_usd']:,.2f}  "
                      f"load {result['load_1min']:.2f}", flush=True)
        reference = runs["before"][0]["out"]
        equal = all(same_outputs(reference, r["out"]) for r in runs["before"][1:] + runs["after"])
    print(f"whole command, west_texas {args.start}..{args.end} mpc, {args.rounds} round(s) alternated; "
          f"{os.cpu_count()} cores")
    print(f"    {'median':28} {'before':>12} {'after':>12} {'ratio':>9}")
    for key, unit in (("wall_s", "s"), ("cpu_s", "s")):
        a, b = (statistics.median(r[key] for r in runs[k]) for k in ("before", "after"))
        print(f"    {key:28} {a:12.1f} {b:12.1f} {a / b:8.2f}x  ({unit})")
    print(f"    outputs equal but timing fields: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
