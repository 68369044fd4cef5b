"""Run policies over recorded history and account for each with one function.

The backtest in three rooms (split along its seams, issue 11):

- :mod:`~hashflex.backtest.actuals` — ``load_prices``, ``build_actuals`` (what really happened over
  the window) and ``account`` (THE economics of any policy's unit counts at the actual prices);
- :mod:`~hashflex.backtest.closed_loop` — ``simulate_policy``: the real ``ControlLoop`` on a
  simulated clock, fleet and sensors, with each policy's planner in its solver slot;
- this module — ``run_oracle`` (perfect foresight over the actual series) and ``run_backtest``
  (every policy over the same window, each accounted by ``account``).

``mpc+as`` (issue 15) is mpc in the same loop with the site's QSE played by
:class:`~hashflex.backtest.ancillary_loop.ASParticipant`. Every name the backtest used to export from
here is still importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# Re-exported: these lived here before the split (issue 11); tests, benchmarks and the CLI import them from here.
from hashflex.backtest.actuals import Actuals, Counts, account, actual_problem, build_actuals, load_prices
from hashflex.backtest.ancillary_loop import AS_POLICY, check_as_inputs
from hashflex.backtest.closed_loop import (
    PolicyRun,
    RuleForecaster,
    SnapshotForecaster,
    make_planner,
    simulate_policy,
)
from hashflex.backtest.policies import oracle_counts
from hashflex.backtest.progress import Progress, no_progress
from hashflex.control.solver import SolveRunner
from hashflex.optimize.schedule import Schedule, SolveStatus
from hashflex.profile import SiteProfile
from hashflex.sim.noise import NoiseSensorSim

__all__ = ["Actuals", "BacktestResult", "Counts", "PolicyRun", "Progress", "RuleForecaster", "SnapshotForecaster",
           "account", "actual_problem", "build_actuals", "load_prices", "make_planner", "run_backtest", "run_oracle",
           "simulate_policy"]


def run_oracle(profile: SiteProfile, actuals: Actuals, *, days_per_solve: int = 1, time_limit_s: float = 60.0,
               rel_gap: float = 1e-3, seed: int = 0, noise_bias_db: dict[str, float] | None = None,
               noise_sigma_db: float = 0.5, progress: Progress | None = None,
               runner: SolveRunner | None = None) -> PolicyRun:
    """Perfect foresight over the actual series; sensors read its counts with the same seed.

    One MILP per ``days_per_solve`` local days (``policies.oracle_counts``); the simulated sensors
    read its counts with the same seed as the closed-loop policies, so its measured noise is
    comparable.

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
    days_per_solve : int
        Local days per MILP.
    time_limit_s, rel_gap : float
        HiGHS time limit (s) and relative MIP gap per MILP.
    seed, noise_bias_db, noise_sigma_db
        The simulated sensors (as :func:`simulate_policy`).
    progress : Progress, optional
    runner : SolveRunner, optional
        Solves each block within its deadline (None: in-process, tests only).

    Returns
    -------
    PolicyRun
        Named ``oracle``; ``infos`` holds each MILP's status and gap.
    """
    started = time.perf_counter()
    counts, infos = oracle_counts(lambda index, initial: actual_problem(profile, actuals, index, initial),
                                  actuals.index, profile.tz, days_per_solve=days_per_solve,
                                  time_limit_s=time_limit_s, rel_gap=rel_gap,
                                  progress=progress.update if progress is not None else None, runner=runner)
    if progress is not None:
        progress.close()
    sensors = NoiseSensorSim(profile, bias_db=dict(noise_bias_db or {}), sigma_db=noise_sigma_db, seed=seed)
    measured = {r.id: np.full(len(actuals.index), np.nan) for r in profile.receptors}
    for k, stamp in enumerate(actuals.index):
        running = {(group.id, mode.name): int(counts[g, m][k]) for g, group in enumerate(profile.miner_groups)
                   for m, mode in enumerate(group.modes) if counts[g, m][k]}
        for reading in sensors.measure(running, (stamp + actuals.step / 2).to_pydatetime()):
            measured[reading.receptor_id][k] = reading.laeq_dba
    gaps = [i.gap for i in infos if i.gap is not None]
    notes = [f"{len(infos)} MILP(s), worst relative gap {max(gaps) * 100:.3f}%" if gaps else f"{len(infos)} MILP(s)"]
    notes += [f"oracle block {i}: {info.status.value} {info.message}" for i, info in enumerate(infos)
              if info.status in (SolveStatus.FALLBACK, SolveStatus.TIME_LIMIT)]
    status = np.empty(len(actuals.index), dtype=object)
    status[:] = "oracle"
    return PolicyRun("oracle", counts, measured, time.perf_counter() - started,
                     extra={"solve_seconds": np.zeros(len(actuals.index)),
                            "fast_path_cut": np.zeros(len(actuals.index), dtype=bool), "schedule_status": status},
                     solves=len(infos), infos=infos, notes=notes)


@dataclass
class BacktestResult:
    """Every policy's run over one window and its accounting.

    Attributes
    ----------
    profile : SiteProfile
    actuals : Actuals
    runs : dict of str to PolicyRun
    schedules : dict of str to Schedule
        Each run accounted at the actual prices (:func:`account`), one per policy.
    """

    profile: SiteProfile
    actuals: Actuals
    runs: dict[str, PolicyRun]
    schedules: dict[str, Schedule]  # accounted with actual prices, one per policy


def run_backtest(profile: SiteProfile, actuals: Actuals, policies: Sequence[str], *,
                 replan_minutes: int | None = None, time_limit_s: float = 20.0, persistence: int = 1,
                 oracle_days: int = 1, oracle_rel_gap: float = 1e-3, seed: int = 0,
                 noise_bias_db: dict[str, float] | None = None, noise_sigma_db: float = 0.5, store: Any = None,
                 progress: Callable[[str, int, float], Progress] | None = None,
                 deadline_s: float | None = None, inline_solver: bool = False,
                 price_forecaster: Any = None, as_mode: str = "day-ahead",
                 offer_rule: str | None = None, as_store: Any = None) -> BacktestResult:
    """Run each policy over the same window and account for each with :func:`account`.

    Every solve (mpc's and the oracle's) runs in one worker process with the daemon's hard deadline
    (:class:`SolveRunner`), past which the worker is killed and the greedy fallback used (counted
    in ``fallback_schedules`` and the notes).

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
        ``mpc+as`` needs ``actuals.as_market`` and a profile with an ``ancillary`` section.
    policies : sequence of str
        Any of ``mpc``, ``mpc+as``, ``threshold``, ``always-on``, ``oracle``.
    replan_minutes, time_limit_s, persistence, seed, noise_bias_db, noise_sigma_db, price_forecaster
        As :func:`simulate_policy`.
    oracle_days, oracle_rel_gap
        The oracle's days per MILP and MIP gap.
    store : Store, optional
        Receives the mpc loop's records (``mpc+as``'s when mpc is not run), as the daemon's store would.
    as_store : Store, optional
        Receives the ``mpc+as`` loop's records when mpc runs too (its own trail: the reserve evidence
        an auditor reads with ``hashflex report``); ignored otherwise.
    progress : callable, optional
        ``(label, total, step_days) -> Progress`` (:meth:`Progress.factory`).
    deadline_s : float, optional
        Wall-clock deadline per solve, s (default ``time_limit_s`` + 10; the oracle's limit is at
        least 60 s, with the same margin).
    inline_solver : bool
        Solve in-process with no deadline (tests that want no worker process).
    as_mode : str
        ``mpc+as``: ``day-ahead`` or ``real-time`` (:mod:`hashflex.backtest.ancillary_loop`).
    offer_rule : str, optional
        ``mpc+as`` day-ahead offers: ``price-taking`` (default) or ``rt-risk`` (`backtest.ancillary.OFFER_RULES`).

    Returns
    -------
    BacktestResult

    Raises
    ------
    ValueError
        ``mpc+as`` without an ancillary section or AS prices.
    """
    progress = progress or no_progress
    if AS_POLICY in policies:
        check_as_inputs(profile, actuals, as_mode)
    recorded = "mpc" if "mpc" in policies else AS_POLICY
    step_days = float(actuals.step / pd.Timedelta(days=1))
    runs: dict[str, PolicyRun] = {}
    with SolveRunner(time_limit_s=time_limit_s, deadline_s=deadline_s, inline=inline_solver) as runner:
        if any(policy in ("mpc", AS_POLICY, "oracle") for policy in policies):
            runner.start()  # the worker's spawn and imports overlap the first policy's set-up (issue 18)
        for policy in policies:
            bar = progress(policy, len(actuals.index), step_days)
            if policy == "oracle":
                runs[policy] = run_oracle(profile, actuals, days_per_solve=oracle_days, rel_gap=oracle_rel_gap,
                                          time_limit_s=max(time_limit_s, 60.0), seed=seed,
                                          noise_bias_db=noise_bias_db, noise_sigma_db=noise_sigma_db, progress=bar,
                                          runner=runner)
            else:
                runs[policy] = simulate_policy(profile, actuals, policy, replan_minutes=replan_minutes,
                                               time_limit_s=time_limit_s, persistence=persistence, seed=seed,
                                               noise_bias_db=noise_bias_db, noise_sigma_db=noise_sigma_db,
                                               store=(store if policy == recorded else
                                                      as_store if policy == AS_POLICY else None),
                                               progress=bar, runner=runner, price_forecaster=price_forecaster,
                                               as_mode=as_mode, offer_rule=offer_rule)
    schedules = {name: account(profile, actuals, run.counts, ancillary=run.ancillary) for name, run in runs.items()}
    return BacktestResult(profile, actuals, runs, schedules)

