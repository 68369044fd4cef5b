"""Issue 10 item 10: every solving path keeps its deadline.

`hashflex plan --time-limit 2` once took 65 s because HiGHS overran its own limit; `backtest` and
`evaluate` solved in-process with no deadline at all. Each now solves in a worker that is killed at
``--deadline`` (default: the time limit + 10 s) and falls back to the greedy schedule, saying so.

A deadline shorter than it takes a worker to start guarantees the overrun without a test-only hook
in the code: the command must come back with ``failed_fallback`` reported, rather than waiting for
the solve. Nothing here times performance; the subprocess timeout only stops a hung command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

HUNG = 600  # s: only a command that ignores its deadline gets near this


def hashflex(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hashflex.cli", *args], capture_output=True, text=True, timeout=HUNG)


def test_plan_falls_back_at_its_deadline_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "schedule.json"
    result = hashflex("plan", "--time-limit", "2", "--deadline", "0.2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "status failed_fallback" in result.stdout, result.stdout
    assert "solver timeout after 0.2 s" in result.stdout
    assert "fallback" in result.stderr and "deadline" in result.stderr, result.stderr
    document = json.loads(out.read_text())
    assert document["status"] == "failed_fallback" and "timeout" in document["message"]
    frame = pd.DataFrame(document["intervals"])
    assert (frame["grid_import_kw"] <= frame["import_limit_kw"] + 1e-6).all(), "the fallback keeps hard limits"


def test_plan_within_its_deadline_is_still_solved(tmp_path: Path) -> None:
    result = hashflex("plan", "--time-limit", "20")
    assert result.returncode == 0, result.stderr
    assert "status optimal" in result.stdout
    assert "fallback" not in result.stderr


def test_plan_refuses_a_deadline_that_is_not_positive() -> None:
    result = hashflex("plan", "--deadline", "0")
    assert result.returncode == 2
    assert "--deadline" in result.stderr


def test_backtest_solves_keep_their_deadline() -> None:
    result = hashflex("backtest", "--policy", "mpc,oracle", "--from", "2020-02-10T00:00-06:00",
                      "--to", "2020-02-10T01:00-06:00", "--time-limit", "5", "--deadline", "0.2", "--quiet")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "note: mpc: 4 of 4 solves fell back to the greedy schedule (solver deadline 0.2 s)" in out, out
    assert "oracle block 0: failed_fallback solver timeout after 0.2 s" in out, out
    violation = next(line for line in out.splitlines() if line.startswith("import violation kWh"))
    assert violation.split()[-2:] == ["0.0", "0.0"], "the fallback keeps the import limit"


def test_evaluate_solves_keep_their_deadline() -> None:
    result = hashflex("evaluate", "--from", "2020-02-10T00:00-06:00", "--to", "2020-02-10T01:00-06:00",
                      "--model-power-kw", "3.5", "--model-hashrate-th-s", "200", "--model-sound-dba", "80",
                      "--unit-price-usd", "3000", "--units", "10", "--time-limit", "5", "--deadline", "0.2",
                      "--quiet")
    assert result.returncode == 0, result.stderr
    assert "fell back to the greedy schedule" in result.stdout, result.stdout
