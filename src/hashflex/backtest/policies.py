"""The policies a backtest compares, as planners that fit the control loop's solver slot.

The closed-loop policies (``mpc``, ``threshold``, ``always-on``) all run inside the real
:class:`~hashflex.control.loop.ControlLoop`: forecast → problem → *planner* → dispatch → guard →
simulated fleet, with the guard's fast paths for DR and noise. Only the planner differs, so every
baseline obeys the same hard limits the same way a careful operator's site would. A planner has
the :class:`~hashflex.control.solver.SolveRunner` shape: ``run(problem, fine_intervals) ->
Schedule`` and ``last_seconds``.

- ``mpc`` — :class:`ReplanningPlanner` around the daemon's ``SolveRunner`` (inline): the MILP over
  the forecast horizon, re-solved every ``replan_minutes`` (and whenever the loop asks for a
  re-plan); between solves the cached schedule from the current interval on is the loop's plan, and its
  first row goes out after the plan-stability rule, as a fresh plan's does (``control.stability``).
- ``threshold`` — :class:`ThresholdPlanner`: each group runs (all units, stock mode) while the last
  settled real-time price is below the group's breakeven
  ``hashprice·H·(1 − fee)·1000/P − adder`` ($/MWh), switching only after the condition has held for
  ``persistence`` consecutive intervals; fixed unit limits per noise-cap window (computed once per
  cap from the profile's acoustics with the profile's model margin: most profitable group first);
  the daily carbon budget tracked against what was emitted so far today.
- ``always-on`` — :class:`AlwaysOnPlanner`: every unit in stock mode (the guard still cuts).
- ``oracle`` — :func:`oracle_counts`: perfect foresight, one MILP per ``days_per_solve`` local days
  over the *actual* real-time prices, renewables and DR limits; the upper bound (within the MIP
  gap). It is not run through the loop: its counts are the plan itself.

The control loop charges the daily and monthly carbon budgets with what was measured as emitted
so far (the runner reports each interval through ``ControlLoop.record_measurement``, as the daemon
does from its meters), so every closed-loop policy plans against what is really left.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from hashflex.control.solver import SolveRunner
from hashflex.optimize.problem import Group, GroupState, Problem
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, schedule_from_counts, grid_import_kw
from hashflex.profile import MinerGroup, SiteProfile

__all__ = ["POLICIES", "AlwaysOnPlanner", "ReplanningPlanner", "SiteMemory", "ThresholdPlanner",
           "breakeven_usd_mwh", "oracle_counts", "stock_mode_index"]

POLICIES = ("mpc", "threshold", "always-on", "oracle")  # "all"; mpc+as (backtest.ancillary_loop) is asked for by name

Counts = dict[tuple[int, int], np.ndarray]


def stock_mode_index(group: MinerGroup | Group) -> int:
    """The group's ``stock`` mode, or its highest-power mode if it has none (profile or problem group)."""
    names = [m.name for m in group.modes]
    if "stock" in names:
        return names.index("stock")
    return int(np.argmax([m.power_kw for m in group.modes]))


def breakeven_usd_mwh(problem: Problem, g: int, m: int, t: int = 0) -> float:
    """Settlement point price at which one unit of group g in mode m earns exactly its energy cost."""
    mode = problem.groups[g].modes[m]
    revenue_usd_per_h = mode.hashrate_th_s * problem.hashprice_usd_per_th_h[t] * (1.0 - problem.pool_fee)
    return revenue_usd_per_h * 1000.0 / mode.power_kw - problem.price_adder_usd_mwh


@dataclass
class SiteMemory:
    """What the backtest runner tells the planners about the site so far (the operator's logbook):
    emissions of the current local day, and the last settled real-time price as of the tick."""

    day: object = None
    emitted_today_kg: float = 0.0
    last_rt_price_usd_mwh: float = math.nan


def _one_row_schedule(problem: Problem, first: dict[tuple[int, int], int], status: SolveStatus,
                      message: str) -> Schedule:
    """A Schedule holding ``first`` counts in every interval of ``problem`` (figures recomputed)."""
    counts = {key: np.full(problem.T, n, dtype=int) for key, n in first.items()}
    return schedule_from_counts(problem, counts, SolveInfo(status=status, message=message))


def _first_interval(problem: Problem) -> Problem:
    """The problem's first interval alone (the only one a rule-based planner decides)."""
    sl = slice(0, 1)
    return dataclasses.replace(
        problem,
        interval_start=problem.interval_start[sl], duration_h=problem.duration_h[sl],
        price_usd_mwh=problem.price_usd_mwh[sl], hashprice_usd_per_ph_day=problem.hashprice_usd_per_ph_day[sl],
        renewable_kw=problem.renewable_kw[sl], import_limit_kw=problem.import_limit_kw[sl],
        import_limit_source=problem.import_limit_source[sl], intensity_kg_per_mwh=problem.intensity_kg_per_mwh[sl],
        groups=tuple(dataclasses.replace(g, units_available=g.units_available[sl]) for g in problem.groups),
        receptors=tuple(dataclasses.replace(r, cap_dba=r.cap_dba[sl]) for r in problem.receptors),
        carbon_budgets=tuple(dataclasses.replace(b, mask=b.mask[sl]) for b in problem.carbon_budgets),
    )


class ReplanningPlanner:
    """The daemon's solve (``SolveRunner``), re-run every ``replan_minutes`` or when ``force`` is set;
    in between, the last schedule from the current interval on (its first row is dispatched).
    ``on_solve``, when set, is called as each solve starts (the backtest prefetches the next tick's
    forecast there, while this thread waits on the solver worker)."""

    def __init__(self, runner: SolveRunner, replan_minutes: int) -> None:
        self.runner = runner
        self.on_solve: Callable[[], None] | None = None
        self.replan = pd.Timedelta(minutes=replan_minutes)
        self.cached: Schedule | None = None
        self.next_solve: pd.Timestamp | None = None
        self.force = False
        self.solves = 0
        self.last_seconds = 0.0
        self.timeouts = 0

    def run(self, problem: Problem, fine_intervals: int) -> Schedule:
        """The cached schedule from the current interval on, or a new solve when one is due."""
        start = problem.interval_start[0]
        cached = self.cached
        if (cached is not None and not self.force and self.next_solve is not None and start < self.next_solve
                and start in cached.frame.index):
            self.last_seconds = 0.0
            return dataclasses.replace(cached, frame=cached.frame.loc[start:])
        if self.on_solve is not None:
            self.on_solve()
        schedule = self.runner.run(problem, fine_intervals)
        self.last_seconds = self.runner.last_seconds
        self.timeouts = self.runner.timeouts
        self.solves += 1
        self.cached, self.next_solve, self.force = schedule, start + self.replan, False
        return schedule


class AlwaysOnPlanner:
    """Every available unit in stock mode, whatever the price (the guard still enforces limits)."""

    # A baseline, not the MPC: the loop does not apply the plan-stability rule to its plans (control.stability;
    # before issue 14 H5 its one-row plans were skipped as "not valued").
    plan_stability = False

    def __init__(self) -> None:
        self.last_seconds = 0.0
        self.solves = 0
        self.timeouts = 0

    def run(self, problem: Problem, fine_intervals: int) -> Schedule:
        """Every available unit of the first interval in stock mode, as a one-row-per-interval schedule."""
        started = time.perf_counter()
        first = _first_interval(problem)
        counts = {(g, m): (int(group.units_available[0]) if m == stock_mode_index(group) else 0)
                  for g, group in enumerate(first.groups) for m in range(len(group.modes))}
        schedule = _one_row_schedule(first, counts, SolveStatus.OPTIMAL, "always-on: every unit in stock mode")
        self.last_seconds = time.perf_counter() - started
        return schedule


@dataclass
class ThresholdPlanner:
    """The careful operator's rule (see module docstring). ``memory`` is updated by the runner."""

    profile: SiteProfile
    memory: SiteMemory
    persistence: int = 1
    last_seconds: float = 0.0
    solves: int = 0
    timeouts: int = 0
    _on: dict[int, bool] = field(default_factory=dict)
    _streak: dict[int, int] = field(default_factory=dict)
    _noise_limits: dict[tuple[float, ...], dict[int, int]] = field(default_factory=dict)
    # A baseline, not the MPC: the loop does not apply the plan-stability rule to its plans (control.stability;
    # before issue 14 H5 its one-row plans were skipped as "not valued").
    plan_stability: ClassVar[bool] = False

    def run(self, problem: Problem, fine_intervals: int) -> Schedule:
        """The rule on the first interval (see the module docstring), held over the horizon."""
        started = time.perf_counter()
        first = _first_interval(problem)
        price = self.memory.last_rt_price_usd_mwh
        order = self._profit_order(first)
        limits = self.noise_unit_limits(first, order)
        counts: dict[tuple[int, int], int] = {(g, m): 0 for g, group in enumerate(first.groups)
                                              for m in range(len(group.modes))}
        for g, group in enumerate(first.groups):
            m = stock_mode_index(group)
            wants = math.isfinite(price) and price < breakeven_usd_mwh(first, g, m)
            if wants != self._on.get(g, False):
                self._streak[g] = self._streak.get(g, 0) + 1
                if self._streak[g] >= self.persistence:
                    self._on[g], self._streak[g] = wants, 0
            else:
                self._streak[g] = 0
            if self._on.get(g, False):
                counts[g, m] = min(int(group.units_available[0]), limits.get(g, int(group.units_available[0])))
        counts = self._carbon_cut(first, counts, order)
        schedule = _one_row_schedule(first, counts, SolveStatus.OPTIMAL,
                                     f"threshold: last RT price {price:.2f} $/MWh")
        self.last_seconds = time.perf_counter() - started
        return schedule

    @staticmethod
    def _profit_order(problem: Problem) -> list[int]:
        """Groups by breakeven in stock mode, highest (most profitable) first."""
        return sorted(range(len(problem.groups)),
                      key=lambda g: -breakeven_usd_mwh(problem, g, stock_mode_index(problem.groups[g])))

    def noise_unit_limits(self, problem: Problem, order: list[int]) -> dict[int, int]:
        """Fixed units per group for the caps in force (one table per distinct set of caps): fill the
        most profitable group first while every receptor stays under cap − model margin."""
        key = tuple(float(r.cap_dba[0]) for r in problem.receptors)
        if key in self._noise_limits:
            return self._noise_limits[key]
        margin = {r.id: r.model_margin_db for r in self.profile.receptors}
        room = [dataclasses.replace(r, margin_db=margin.get(r.id, r.margin_db)).energy_budget()[0]
                for r in problem.receptors]
        limits = {}
        for g in order:
            group = problem.groups[g]
            mode = group.modes[stock_mode_index(group)]
            n = int(group.units_available[0])
            for r, receptor in enumerate(problem.receptors):
                energy = receptor.unit_energy(group.id, mode)
                if energy > 0 and math.isfinite(room[r]):
                    n = min(n, int(math.floor(max(room[r], 0.0) / energy + 1e-9)))
            for r, receptor in enumerate(problem.receptors):
                room[r] -= n * receptor.unit_energy(group.id, mode)
            limits[g] = n
        self._noise_limits[key] = limits
        return limits

    def _carbon_cut(self, problem: Problem, counts: dict[tuple[int, int], int],
                    order: list[int]) -> dict[tuple[int, int], int]:
        """Stop units, least profitable group first, until this interval's emissions fit what is left
        of today's carbon budget (the operator's running tally; nothing when there is no budget)."""
        budget = self.profile.carbon.daily_budget_kg
        if budget is None:
            return counts
        left = budget - self.memory.emitted_today_kg
        kg_per_kw = float(problem.duration_h[0] * problem.intensity_kg_per_mwh[0] / 1000.0)
        idle = sum(g.units_available[0] * g.idle_power_kw for g in problem.groups)

        def emissions(c: dict[tuple[int, int], int]) -> float:
            load = idle + sum(n * (problem.groups[g].modes[m].power_kw - problem.groups[g].idle_power_kw)
                              for (g, m), n in c.items())
            return grid_import_kw(load, float(problem.renewable_kw[0])) * kg_per_kw

        out = dict(counts)
        for g in reversed(order):
            m = stock_mode_index(problem.groups[g])
            over = emissions(out) - max(left, 0.0)
            if over <= 1e-9:
                break
            per_unit = (problem.groups[g].modes[m].power_kw - problem.groups[g].idle_power_kw) * kg_per_kw
            if per_unit > 0:
                out[g, m] = max(out[g, m] - int(math.ceil(over / per_unit - 1e-9)), 0)
        return out


def oracle_counts(problem_for_days: Callable[[pd.DatetimeIndex, dict[str, GroupState]], Problem],
                  index: pd.DatetimeIndex, tz: object, *, days_per_solve: int = 1, time_limit_s: float = 60.0,
                  rel_gap: float = 1e-3, progress: Callable[[int], None] | None = None,
                  runner: SolveRunner | None = None) -> tuple[Counts, list[SolveInfo]]:
    """Perfect foresight: one MILP per block of ``days_per_solve`` local days of ``index``, each
    starting from the previous block's last interval (units on, load); counts for every interval.

    ``problem_for_days(block_index, initial)`` builds the block's Problem from the *actual* series.
    ``runner`` solves each block within its deadline (a block past it gets the greedy fallback,
    its info says so); without one the solve runs in-process with no deadline (tests only)."""
    local_day = index.tz_convert(tz).normalize()
    days = pd.unique(local_day)
    blocks = [days[i:i + days_per_solve] for i in range(0, len(days), days_per_solve)]
    parts: list[Counts] = []
    infos: list[SolveInfo] = []
    initial: dict[str, GroupState] = {}
    done = 0
    for block in blocks:
        mask = np.isin(local_day, block)
        problem = problem_for_days(index[mask], initial)
        if runner is not None:
            schedule = runner.solve(problem, time_limit_s=time_limit_s, rel_gap=rel_gap)
        else:
            from hashflex.optimize.solve import solve  # in-process (tests): Pyomo only when used

            schedule = solve(problem, time_limit_s=time_limit_s, rel_gap=rel_gap)
        counts = {(g, m): schedule.frame[f"units_{group.id}_{mode.name}"].to_numpy(dtype=int)
                  for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}
        parts.append(counts)
        infos.append(schedule.info)
        last = schedule.frame.iloc[-1]
        initial = {}
        for g, group in enumerate(problem.groups):
            on = sum(int(counts[g, m][-1]) for m in range(len(group.modes)))
            initial[group.id] = GroupState(units_on=on, load_kw=None)
        initial_load = float(last["load_kw"])
        if initial:  # problem_from_profile sums the groups' load_kw into the site's initial load (ramp)
            first_id = problem.groups[0].id
            initial[first_id] = dataclasses.replace(initial[first_id], load_kw=initial_load)
        done += int(mask.sum())
        if progress is not None:
            progress(done)
    keys = parts[0].keys() if parts else ()
    return {key: np.concatenate([p[key] for p in parts]) for key in keys}, infos
