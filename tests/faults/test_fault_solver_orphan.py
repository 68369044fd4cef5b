"""Issue 10 item 9b: a daemon killed with SIGKILL must not leave its solver worker running.

A parent process (a stand-in for the daemon, which holds one SolveRunner) runs one real HiGHS
solve in the worker, prints the worker's pid and waits; we SIGKILL the parent and the worker must
go away on its own (it cannot be told: its parent is gone). The same with the runner created on a
thread that is not the main thread, as in the daemon's loop thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PARENT = r"""
import sys, threading, time
import numpy as np, pandas as pd
from hashflex.control.solver import SolveRunner
from hashflex.optimize.problem import problem_from_profile
from hashflex.profile import load_profile

def main():
    profile = load_profile("west_texas")
    index = pd.date_range("2020-02-10T06:00Z", periods=8, freq="15min")
    problem = problem_from_profile(profile, index, np.full(8, 20.0))
    runner = SolveRunner(time_limit_s=10.0, deadline_s=60.0)
    schedule = runner.run(problem, fine_intervals=8)
    pids = sorted(runner._pool._processes)  # the live worker(s) of the pool
    print(schedule.status.value, *pids, flush=True)

if sys.argv[1] == "thread":
    worker = threading.Thread(target=main)
    worker.start()
    worker.join()
else:
    main()
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a reaped-later orphan is dead for our purpose)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("created_on", ["main", "thread"])
def test_worker_dies_with_a_killed_parent(created_on: str, tmp_path: Path, wait_for) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, created_on], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    worker_pids: list[int] = []
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        assert line and line[0] in ("optimal", "feasible"), line
        worker_pids = [int(p) for p in line[1:]]
        assert worker_pids and all(alive(pid) for pid in worker_pids)
        assert parent.pid not in worker_pids
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        wait_for(lambda: not any(alive(pid) for pid in worker_pids), timeout_s=10,
                 message=f"solver worker(s) {worker_pids} to exit after their parent was killed")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        for pid in worker_pids:  # never leave an orphan behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
