"""Run a benchmark's measurement on a baseline commit and on today's tree, side by side (issue 18).

The baseline is the commit's ``src`` from ``git archive`` in a temporary directory; each
measurement runs in a child process whose ``PYTHONPATH`` puts that ``src`` (or today's, for the
"after" column) first, so both columns pay the same process start and warm-up. Rounds alternate
which goes first (before, after, after, before, ...), one child at a time, never concurrently, so
load from other work on a shared machine falls on both columns alike.

The child is the benchmark script itself, called with a hidden worker flag; it prints its
result as one JSON line (the last line of its stdout starting with ``{``).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The commit before this session's solve changes (issue 18: the cold path's second LP with Devex
# edge weights); the benchmarks' default "before" column.
DEFAULT_BASELINE = "1e0fd7c"


@contextlib.contextmanager
def archived_src(commit: str) -> Iterator[Path]:
    """``src`` of ``commit`` extracted into a temporary directory (removed on exit).

    Raises
    ------
    RuntimeError
        If ``git archive`` fails (unknown commit, not a repository), with git's message.
    """
    with tempfile.TemporaryDirectory(prefix="hashflex_baseline_") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=False)
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {commit} failed: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp) / "src"


def run_child(script: Path, args: list[str], src: Path) -> dict:
    """Run ``script args`` in a child process importing hashflex from ``src``; its JSON line.

    Raises
    ------
    RuntimeError
        If the child fails or prints no JSON line (the end of its stderr in the message).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                           check=False)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"{script.name} {' '.join(args)} with {src} failed: {child.stderr.strip()[-600:]}")
    result = json.loads(lines[-1])
    result.setdefault("src", str(src))
    return result


def alternate(commit: str, script: Path, args: list[str], rounds: int) -> tuple[list[dict], list[dict]]:
    """``rounds`` child runs of ``script args`` on ``commit`` and on today's tree, alternating which
    goes first; returns (before results, after results), one dict per round each."""
    before, after = [], []
    with archived_src(commit) as old_src:
        for r in range(rounds):
            order = ((old_src, before), (REPO / "src", after))
            for src, out in (order if r % 2 == 0 else order[::-1]):
                out.append(run_child(script, args, src))
    return before, after


def median_of(results: list[dict], key: str) -> float:
    """Median of ``key`` over the rounds' results (NaN if none has it)."""
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def ratio_line(label: str, before: float, after: float, unit: str = "s") -> str:
    """One side-by-side row: before, after, before/after."""
    ratio = before / after if after else float("nan")
    return f"    {label:28} {before:12.3f} {after:12.3f} {ratio:8.2f}x  ({unit})"
