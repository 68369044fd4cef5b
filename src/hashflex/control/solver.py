"""Run a solve with a hard deadline: the schedule arrives in time, or the greedy fallback does.

HiGHS does not always honour its own time limit (a background task ran ~120 s past it on a large
model here, see TOOLCHAIN.md), and a control loop cannot wait for it. So in the daemon the solve
runs in one long-lived worker process that can be killed; on timeout or crash the worker is
replaced and the loop gets the fallback schedule, whose status says why. Backtests, which own
their clock, solve inline.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import multiprocessing
import time

from hashflex.optimize.fallback import greedy_schedule
from hashflex.optimize.milp import LpBasisCache, solve, solve_multiresolution
from hashflex.optimize.problem import Problem
from hashflex.optimize.schedule import Schedule

log = logging.getLogger(__name__)


# Successive re-plans have the same structure, so the last LP basis is a good start for the next
# (3x faster at 288 intervals x 48 groups). One per process: the worker keeps its own.
_BASIS_CACHE = LpBasisCache()


def plan_problem(problem: Problem, fine_intervals: int, time_limit_s: float) -> Schedule:
    """Solve at full resolution, or coarsen beyond ``fine_intervals`` when the horizon is longer."""
    if fine_intervals < problem.T:
        return solve_multiresolution(problem, fine_intervals=fine_intervals, time_limit_s=time_limit_s,
                                     basis_cache=_BASIS_CACHE)
    return solve(problem, time_limit_s=time_limit_s, basis_cache=_BASIS_CACHE)


class SolveRunner:
    """``run(problem, fine_intervals)`` → Schedule within ``deadline_s`` (wall clock), never raises."""

    def __init__(self, *, time_limit_s: float = 20.0, deadline_s: float | None = None, inline: bool = False) -> None:
        self.time_limit_s = time_limit_s
        self.deadline_s = deadline_s if deadline_s is not None else time_limit_s + 10.0
        self.inline = inline
        self._pool: futures.ProcessPoolExecutor | None = None
        self.timeouts = 0
        self.last_seconds = 0.0

    def _executor(self) -> futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the daemon has MQTT and store threads whose locks must not be cloned.
            self._pool = futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def run(self, problem: Problem, fine_intervals: int) -> Schedule:
        started = time.perf_counter()
        try:
            if self.inline:
                return plan_problem(problem, fine_intervals, self.time_limit_s)
            future = self._executor().submit(plan_problem, problem, fine_intervals, self.time_limit_s)
            return future.result(timeout=self.deadline_s)
        except futures.TimeoutError:
            self.timeouts += 1
            log.error("solve exceeded its %.1f s deadline; worker killed, greedy fallback used", self.deadline_s)
            self._kill()
            return greedy_schedule(problem, reason=f"solver timeout after {self.deadline_s:.1f} s")
        except Exception as exc:  # a crashed worker must not stop the site being planned
            log.exception("solve failed; greedy fallback used")
            self._kill()
            return greedy_schedule(problem, reason=f"solver failure: {exc!r}")
        finally:
            self.last_seconds = time.perf_counter() - started

    def close(self) -> None:
        self._kill()
