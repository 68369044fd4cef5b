"""Run a solve with a hard deadline: the schedule arrives in time, or the greedy fallback does.

HiGHS does not always honour its own time limit (a background task ran ~120 s past it on a large
model here, see TOOLCHAIN.md), and nobody waiting for a plan can wait for it. So every solving
path (the daemon's loop, ``hashflex plan``, ``backtest``/``evaluate`` and ``run --simulate``) runs
its solves in one long-lived worker process that can be killed; on timeout or crash the worker is
replaced and the caller gets the greedy fallback schedule (status ``failed_fallback``), whose
message says why. ``inline=True`` solves in-process without a deadline (unit tests only).

The worker dies with its parent: a daemon killed with SIGKILL cannot shut its pool down, so the
worker watches its parent pid and exits when it changes (the parent died and the worker was
re-parented); on Linux, when the runner is created on the main thread, ``PR_SET_PDEATHSIG`` also
has the kernel kill it at once. (Only on the main thread: the kernel signals when the creating
*thread* exits, which for another thread is not the process dying.)
"""

from __future__ import annotations

import concurrent.futures as futures
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hashflex.optimize.fallback import greedy_schedule
from hashflex.optimize.problem import Problem
from hashflex.optimize.schedule import Schedule

__all__ = ["SolveRunner", "plan_problem", "solve_problem", "warm_up"]

log = logging.getLogger(__name__)

DEFAULT_MARGIN_S = 10.0  # deadline beyond the solver's own time limit: worker start, model build, IPC
_PARENT_POLL_S = 0.2  # how often the worker checks its parent (a getppid call: negligible)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# Successive re-plans have the same structure, so the last LP basis is a good start for the next
# (3x faster at 288 intervals x 48 groups). One per process: the worker keeps its own.
_BASIS_CACHE: Any = None


def plan_problem(problem: Problem, fine_intervals: int, time_limit_s: float) -> Schedule:
    """Solve at full resolution, or coarsen beyond ``fine_intervals`` when the horizon is longer.

    Runs in the worker process (or in-process with ``inline=True``) and keeps the last LP basis per
    process as a warm start for the next re-plan.

    Parameters
    ----------
    problem : Problem
        The optimizer's input arrays, ``problem.T`` intervals.
    fine_intervals : int
        Intervals kept at full resolution; beyond them the horizon is coarsened
        (``optimize.solve.solve_multiresolution``).
    time_limit_s : float
        HiGHS's own time limit, s.

    Returns
    -------
    Schedule
        The plan over all ``problem.T`` intervals.
    """
    # Pyomo is imported where a solve happens (the worker), not with the daemon: it is ~1 s of a
    # restart's start-up, which the restart fast path must not wait for.
    from hashflex.optimize.solve import LpBasisCache, solve, solve_multiresolution

    global _BASIS_CACHE
    if _BASIS_CACHE is None:
        _BASIS_CACHE = LpBasisCache()
    if fine_intervals < problem.T:
        return solve_multiresolution(problem, fine_intervals=fine_intervals, time_limit_s=time_limit_s,
                                     basis_cache=_BASIS_CACHE)
    return solve(problem, time_limit_s=time_limit_s, basis_cache=_BASIS_CACHE)


def solve_problem(problem: Problem, time_limit_s: float, rel_gap: float | None = None) -> Schedule:
    """One full-resolution solve (the backtest oracle's), optionally with a relative MIP gap.

    Parameters
    ----------
    problem : Problem
        The optimizer's input arrays.
    time_limit_s : float
        HiGHS's own time limit, s.
    rel_gap : float, optional
        Relative MIP gap at which HiGHS stops (default: the solver module's).

    Returns
    -------
    Schedule
        The plan over all ``problem.T`` intervals.
    """
    from hashflex.optimize.solve import solve

    if rel_gap is None:
        return solve(problem, time_limit_s=time_limit_s)
    return solve(problem, time_limit_s=time_limit_s, rel_gap=rel_gap)


def warm_up() -> bool:
    """Import what a solve needs (Pyomo, highspy, the model) in the worker ahead of the first plan.

    Submitted by :meth:`SolveRunner.start`; returns True once the imports are done.
    """
    import hashflex.optimize.solve  # noqa: F401 - the import is the point: ~1-3 s of a worker's first solve

    return True


def _exit_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    """Worker initializer: exit as soon as ``parent_pid`` is no longer our parent."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # not fatal: the watcher below still works
            pass

    def watch() -> None:
        # HiGHS releases the GIL while it solves, so this thread runs during a long solve too.
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)  # no cleanup: the parent that would collect anything is gone

    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="hashflex-solver-parent-watch", daemon=True).start()


class SolveRunner:
    """``run(problem, fine_intervals)`` → Schedule within ``deadline_s`` (wall clock), never raises.

    ``solve(problem, time_limit_s=, rel_gap=)`` is the same for one full-resolution solve (a given
    ``deadline_s`` caps it too). ``timeouts`` and ``failures`` count the fallbacks; ``last_seconds``
    is the last call's wall time, s. Call ``close()`` (or use it as a context manager) to stop the
    worker.

    Parameters
    ----------
    time_limit_s : float, default 20.0
        HiGHS's own time limit, s.
    deadline_s : float, optional
        Wall-clock time after which the worker is killed and the greedy fallback returned instead, s
        (default ``time_limit_s`` + ``DEFAULT_MARGIN_S``, 10 s).
    inline : bool, default False
        Solve in this process without a deadline (unit tests only).
    """

    def __init__(self, *, time_limit_s: float = 20.0, deadline_s: float | None = None, inline: bool = False) -> None:
        self.time_limit_s = time_limit_s
        self.deadline_s = deadline_s if deadline_s is not None else time_limit_s + DEFAULT_MARGIN_S
        self._deadline_given = deadline_s is not None
        self.inline = inline
        self._pool: futures.ProcessPoolExecutor | None = None
        self.timeouts = 0
        self.failures = 0
        self.last_seconds = 0.0

    def __enter__(self) -> SolveRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _executor(self) -> futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the daemon has MQTT and store threads whose locks must not be cloned.
            on_main_thread = threading.current_thread() is threading.main_thread()
            self._pool = futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=_exit_with_parent,
                                                     initargs=(os.getpid(), on_main_thread))
        return self._pool

    def start(self) -> None:
        """Start the worker and its imports now, in the background (nothing when ``inline``).

        A worker starts at the first solve otherwise: a spawned interpreter plus the Pyomo and HiGHS
        imports, 1.2-3 s on the shared 2-core machine, which the first plan then waits for. Started
        early, that overlaps with whatever the caller does before its first plan (the backtest: its
        forecaster and loop). The first solve still gets its full deadline from when it is
        submitted; it waits behind the warm-up only if that is not yet done. Never raises: a worker
        that fails to start is replaced at the next solve, as after a crash.
        """
        if self.inline:
            return
        try:
            self._executor().submit(warm_up)
        except Exception:  # the next solve's own submit reports a broken pool
            log.warning("solver worker could not be started ahead of the first solve", exc_info=True)

    def worker_pids(self) -> list[int]:
        """Pids of the live worker process(es); empty before the first solve and after ``close``.

        Returns
        -------
        list of int
            Sorted process ids.
        """
        pool = self._pool
        return sorted(getattr(pool, "_processes", None) or {}) if pool is not None else []

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def run(self, problem: Problem, fine_intervals: int) -> Schedule:
        """The daemon's plan: ``plan_problem`` within ``deadline_s``, else the greedy fallback.

        Parameters
        ----------
        problem : Problem
            The optimizer's input arrays, ``problem.T`` intervals.
        fine_intervals : int
            Intervals kept at full resolution (see :func:`plan_problem`).

        Returns
        -------
        Schedule
            The solved plan; on a timeout or a worker failure the greedy fallback (status
            ``failed_fallback``, every hard limit respected) whose message says why. Never raises.
        """
        return self._call(problem, self.deadline_s, plan_problem, problem, fine_intervals, self.time_limit_s)

    def solve(self, problem: Problem, *, time_limit_s: float | None = None, rel_gap: float | None = None) -> Schedule:
        """One full-resolution solve with HiGHS limit ``time_limit_s``; killed at the runner's
        ``deadline_s`` when one was given, else at the limit + 10 s.

        Parameters
        ----------
        problem : Problem
            The optimizer's input arrays.
        time_limit_s : float, optional
            HiGHS's own time limit, s (default: the runner's ``time_limit_s``).
        rel_gap : float, optional
            Relative MIP gap (see :func:`solve_problem`).

        Returns
        -------
        Schedule
            The solved plan, or the greedy fallback on a timeout or failure. Never raises.
        """
        limit = self.time_limit_s if time_limit_s is None else time_limit_s
        deadline = self.deadline_s if self._deadline_given else limit + DEFAULT_MARGIN_S
        return self._call(problem, deadline, solve_problem, problem, limit, rel_gap)

    def _call(self, problem: Problem, deadline_s: float, fn: Callable[..., Schedule], *args: Any) -> Schedule:
        started = time.perf_counter()
        try:
            if self.inline:
                return fn(*args)
            future = self._executor().submit(fn, *args)
            return future.result(timeout=deadline_s)
        except futures.TimeoutError:
            self.timeouts += 1
            log.error("solve exceeded its %.1f s deadline; worker killed, greedy fallback used", deadline_s)
            self._kill()
            return greedy_schedule(problem, reason=f"solver timeout after {deadline_s:.1f} s")
        except Exception as exc:  # a crashed worker must not stop the site being planned
            self.failures += 1
            log.exception("solve failed; greedy fallback used")
            self._kill()
            return greedy_schedule(problem, reason=f"solver failure: {exc!r}")
        finally:
            self.last_seconds = time.perf_counter() - started

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker: an idle one exits cleanly (no leaked semaphores); one still busy after
        ``timeout_s`` is killed.

        Parameters
        ----------
        timeout_s : float, default 5.0
            How long to wait for the worker to exit before killing it, s.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
