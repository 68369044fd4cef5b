"""Greedy schedule used when the MILP fails or runs out of time. Simple, fast, always safe.

Interval by interval, (group, mode) options are ranked by profit per kW at that interval's price;
units are added while each hard limit still has room: availability, grid import limit (with
renewables), every receptor's noise energy budget, and every carbon budget (consumed in time
order, so the near term is served first). Equipment limits (min on/off, ramps) are not modelled:
the schedule errs toward running less, never toward breaking a grid or neighbour limit.
"""

from __future__ import annotations

import math

import numpy as np

from hashflex.optimize.problem import Problem
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, power_flows_kw, schedule_from_counts


def _unit_profit_usd_per_h(problem: Problem, g: int, m: int, t: int) -> float:
    mode = problem.groups[g].modes[m]
    hp = problem.hashprice_usd_per_th_h[t] * (1.0 - problem.pool_fee)
    carbon_usd_per_kwh = problem.intensity_kg_per_mwh[t] * problem.carbon_price_usd_per_t / 1e6
    return mode.hashrate_th_s * hp - mode.power_kw * (problem.energy_price_usd_mwh[t] / 1000.0 + carbon_usd_per_kwh)


def greedy_counts(problem: Problem) -> dict[tuple[int, int], np.ndarray]:
    """Integer counts n[g,m,t] that respect every hard limit."""
    T = problem.T
    counts = {(g, m): np.zeros(T, dtype=int) for g, group in enumerate(problem.groups) for m in range(len(group.modes))}
    carbon_left = [b.remaining_kg for b in problem.carbon_budgets]
    budgets = [r.energy_budget() for r in problem.receptors]
    for t in range(T):
        idle_kw = sum(group.units_available[t] * group.idle_power_kw for group in problem.groups)
        # Power available: import limit + renewables, minus the standby draw of sleeping units.
        room_kw = problem.import_limit_kw[t] + problem.renewable_kw[t] - idle_kw
        # Carbon: every budget covering t limits extra grid import in this interval.
        kg_per_kw = problem.duration_h[t] * problem.intensity_kg_per_mwh[t] / 1000.0
        for b, budget in enumerate(problem.carbon_budgets):
            if budget.mask[t] and kg_per_kw > 0:
                room_kw = min(room_kw, problem.renewable_kw[t] - idle_kw + max(carbon_left[b], 0.0) / kg_per_kw)
        noise_left = [float(b[t]) for b in budgets]
        options = sorted(
            ((g, m) for g, group in enumerate(problem.groups) for m in range(len(group.modes))),
            key=lambda gm: -_unit_profit_usd_per_h(problem, gm[0], gm[1], t) / problem.groups[gm[0]].modes[gm[1]].power_kw,
        )
        on = [0] * len(problem.groups)
        for g, m in options:
            if _unit_profit_usd_per_h(problem, g, m, t) <= 0:
                break
            group = problem.groups[g]
            mode = group.modes[m]
            step_kw = mode.power_kw - group.idle_power_kw
            n = int(group.units_available[t]) - on[g]
            if step_kw > 0:
                n = min(n, int(math.floor(max(room_kw, 0.0) / step_kw + 1e-9)))
            for r, receptor in enumerate(problem.receptors):
                energy = receptor.unit_energy(group.id, mode)
                if energy > 0:
                    n = min(n, int(math.floor(noise_left[r] / energy + 1e-9)) if math.isfinite(noise_left[r]) else n)
            n = max(n, 0)
            if n == 0:
                continue
            counts[g, m][t] = n
            on[g] += n
            room_kw -= n * step_kw
            for r, receptor in enumerate(problem.receptors):
                noise_left[r] -= n * receptor.unit_energy(group.id, mode)
        load_kw = sum(counts[g, m][t] * problem.groups[g].modes[m].power_kw for g, m in counts) + \
            sum((group.units_available[t] - on[g]) * group.idle_power_kw for g, group in enumerate(problem.groups))
        flows = power_flows_kw(np.array([load_kw]), problem.renewable_kw[t:t + 1], problem.import_limit_kw[t:t + 1],
                               problem.energy_price_usd_mwh[t:t + 1], problem.price_usd_mwh[t:t + 1],
                               problem.export_limit_kw)
        import_kw = float(flows[0][0])
        for b, budget in enumerate(problem.carbon_budgets):
            if budget.mask[t]:
                carbon_left[b] -= import_kw * kg_per_kw
    return counts


def greedy_schedule(problem: Problem, reason: str = "") -> Schedule:
    """The fallback Schedule; its status says it is a fallback and why."""
    problem.validate()
    counts = greedy_counts(problem)
    return schedule_from_counts(problem, counts, SolveInfo(status=SolveStatus.FALLBACK, message=reason))
