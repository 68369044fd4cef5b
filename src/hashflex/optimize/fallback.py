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
from hashflex.optimize.rounding import load_kw as _load_kw, noise_energy as _noise_energy
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, power_flows_kw, schedule_from_counts


def _unit_profit_usd_per_h(problem: Problem, g: int, m: int, t: int) -> float:
    mode = problem.groups[g].modes[m]
    hp = problem.hashprice_usd_per_th_h[t] * (1.0 - problem.pool_fee)
    carbon_usd_per_kwh = problem.intensity_kg_per_mwh[t] * problem.carbon_price_usd_per_t / 1e6
    return mode.hashrate_th_s * hp - mode.power_kw * (problem.energy_price_usd_mwh[t] / 1000.0 + carbon_usd_per_kwh)


def _import_kw(problem: Problem, t: int, load_kw: float) -> float:
    flows = power_flows_kw(np.array([load_kw]), problem.renewable_kw[t:t + 1], problem.price_usd_mwh[t:t + 1],
                           problem.export_limit_kw)
    return float(flows[0][0])


def greedy_counts(
    problem: Problem, start: dict[tuple[int, int], np.ndarray] | None = None
) -> dict[tuple[int, int], np.ndarray]:
    """Integer counts n[g,m,t] that respect every hard limit, adding units on top of ``start``
    (which must itself respect them; the default is all asleep)."""
    T = problem.T
    counts = {(g, m): (np.array(start[g, m], dtype=int) if start else np.zeros(T, dtype=int))
              for g, group in enumerate(problem.groups) for m in range(len(group.modes))}
    load_kw = _load_kw(problem, counts)
    kg_per_kw = problem.duration_h * problem.intensity_kg_per_mwh / 1000.0
    start_import = np.array([_import_kw(problem, t, load_kw[t]) for t in range(T)])
    # Budgets are charged up front with the start's whole-horizon emissions, so units added
    # early can never leave a later interval of the start over budget.
    carbon_left = [b.remaining_kg - float((start_import * kg_per_kw)[b.mask].sum()) for b in problem.carbon_budgets]
    noise_left_all = [r.energy_budget() - _noise_energy(problem, r, counts) for r in problem.receptors]
    for t in range(T):
        room_kw = problem.import_limit_kw[t] + problem.renewable_kw[t] - load_kw[t]
        spare_renewable_kw = max(problem.renewable_kw[t] - load_kw[t], 0.0)
        for b, budget in enumerate(problem.carbon_budgets):
            if budget.mask[t] and kg_per_kw[t] > 0:
                room_kw = min(room_kw, spare_renewable_kw + max(carbon_left[b], 0.0) / kg_per_kw[t])
        noise_left = [float(n[t]) for n in noise_left_all]
        options = sorted(
            ((g, m) for g, group in enumerate(problem.groups) for m in range(len(group.modes))),
            key=lambda gm: -_unit_profit_usd_per_h(problem, gm[0], gm[1], t) / problem.groups[gm[0]].modes[gm[1]].power_kw,
        )
        on = [sum(int(counts[g, m][t]) for m in range(len(group.modes))) for g, group in enumerate(problem.groups)]
        high_left = _derate_room(problem, counts, t)
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
                if energy > 0 and math.isfinite(noise_left[r]):
                    n = min(n, int(math.floor(max(noise_left[r], 0.0) / energy + 1e-9)))
            if (g, m) in high_left:  # a mode above a derate cap: only healthy units may run it (issue 17)
                n = min(n, high_left[g, m][0])
            if n <= 0:
                continue
            for key in high_left.get((g, m), (0, ()))[1]:
                high_left[key] = (high_left[key][0] - n, high_left[key][1])
            counts[g, m][t] += n
            on[g] += n
            room_kw -= n * step_kw
            load_kw[t] += n * step_kw
            for r, receptor in enumerate(problem.receptors):
                noise_left[r] -= n * receptor.unit_energy(group.id, mode)
        added_kg = (_import_kw(problem, t, load_kw[t]) - start_import[t]) * kg_per_kw[t]
        for b, budget in enumerate(problem.carbon_budgets):
            if budget.mask[t]:
                carbon_left[b] -= added_kg
    return counts


def _derate_room(problem: Problem, counts: dict[tuple[int, int], np.ndarray], t: int
                 ) -> dict[tuple[int, int], tuple[int, tuple[tuple[int, int], ...]]]:
    """At interval t, per (g, m) above a `Derate`'s cap: (units that may still enter modes above
    the cap, the (g, m) keys sharing that room)."""
    index = {group.id: g for g, group in enumerate(problem.groups)}
    out = {}
    for derate in problem.derates:
        g = index[derate.group]
        group = problem.groups[g]
        high = tuple((g, m) for m, mode in enumerate(group.modes) if mode.power_kw > derate.max_power_kw + 1e-9)
        room = max(int(group.units_available[t]) - int(derate.units[t]), 0) - sum(int(counts[k][t]) for k in high)
        for key in high:
            out[key] = (max(room, 0), high)
    return out


def greedy_schedule(problem: Problem, reason: str = "") -> Schedule:
    """The fallback Schedule; its status says it is a fallback and why."""
    problem.validate()
    counts = greedy_counts(problem)
    return schedule_from_counts(problem, counts, SolveInfo(status=SolveStatus.FALLBACK, message=reason))
