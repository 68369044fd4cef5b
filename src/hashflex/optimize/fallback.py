"""Greedy schedule used when the MILP fails or runs out of time. Simple, fast, always safe.

Awarded reserve first (issue 15), as the MILP's award row does: its short penalty is above any
margin a kW could earn, so the MILP never trades an award for hashes. Every product's award is held
by its own qualified groups (``ReserveProduct.group_max_kw``) with
`rounding.cover_reserve_obligations` (an exact max-flow cover) from every unit asleep, within
availability, derates, the import limit (which carries DR, 4CP and deployment limits from the
limits book), every receptor's noise budget and the carbon budgets; price does not enter. What
no addition can hold is stated: the schedule's ``reserve_<p>_short_kw`` columns, the solve
message (``reserve RRS short 1.5 MW (2 of 4 intervals, …) within noise:farm``) and the reason
detail of each short interval, with the hard limit that stops a qualified unit.

Then, interval by interval, (group, mode) options are ranked by profit per kW at that interval's
price; units are added while each hard limit still has room: availability, grid import limit (with
renewables), every receptor's noise energy budget, and every carbon budget (consumed in time
order, so the near term is served first). Equipment limits (min on/off, ramps) are not modelled
here beyond what the reserve cover keeps: the schedule errs toward running less, never toward
breaking a grid or neighbour limit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hashflex.optimize.problem import Problem, ReserveProduct
from hashflex.optimize.rounding import (
    cover_reserve_obligations,
    load_kw as _load_kw,
    noise_energy as _noise_energy,
)
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


def reserve_first_counts(problem: Problem) -> dict[tuple[int, int], np.ndarray]:
    """Integer counts n[g,m,t] holding every awarded reserve product from its own qualified groups
    as far as the hard limits allow, from every unit asleep (`rounding.cover_reserve_obligations`);
    all zeros without an award. They respect every hard limit, so `greedy_counts` may start from them.

    Parameters
    ----------
    problem : the problem (``reserves``: ``obligation_kw`` [T] kW per product, ``group_max_kw``)

    Returns
    -------
    (g, m) → [T] int units running mode m of group g.
    """
    counts = {(g, m): np.zeros(problem.T, dtype=int)
              for g, group in enumerate(problem.groups) for m in range(len(group.modes))}
    cover_reserve_obligations(problem, counts)
    return counts


def greedy_schedule(problem: Problem, reason: str = "") -> Schedule:
    """The fallback Schedule; its status says it is a fallback and why.

    Awards first (`reserve_first_counts`), then every profitable unit that fits (`greedy_counts`).
    A product the hard limits do not let the site hold is stated in the message after ``reason``
    and in the short intervals' ``reason_detail`` (`_short_reserve_text`).

    Parameters
    ----------
    problem : the problem
    reason : why the fallback is used (``solver timeout after 5.0 s``)

    Returns
    -------
    Schedule with ``info.status`` FALLBACK.

    Raises
    ------
    ValueError
        From ``problem.validate()``, naming the inconsistent array.
    """
    problem.validate()
    counts = greedy_counts(problem, start=reserve_first_counts(problem))
    schedule = schedule_from_counts(problem, counts, SolveInfo(status=SolveStatus.FALLBACK, message=reason))
    return _short_reserve_text(problem, counts, schedule)


SHORT_KW = 1e-3  # kW below which a reserve shortfall is rounding noise of the reserve LP, not stated


def _short_reserve_text(problem: Problem, counts: dict[tuple[int, int], np.ndarray], schedule: Schedule) -> Schedule:
    """``schedule`` with each product's award shortfall stated: in the solve message ("reserve RRS
    short 1.5 MW (2 of 4 intervals, 0.75 MWh) within noise:farm") and appended to the reason detail
    of each short interval ("reserve RRS 1.5 MW short (noise:farm)"). Unchanged when nothing is short."""
    frame = schedule.frame
    parts: list[str] = []
    details = frame["reason_detail"].tolist() if "reason_detail" in frame else None
    for reserve in problem.reserves:
        column = f"reserve_{reserve.name}_short_kw"
        if column not in frame:
            continue
        short = frame[column].to_numpy(dtype=float)
        at = np.flatnonzero(short > SHORT_KW)
        if at.size == 0:
            continue
        causes_at = {int(t): _blocking_limits(problem, counts, reserve, int(t)) for t in at}
        causes = sorted({c for found in causes_at.values() for c in found})
        mwh = float((short[at] * problem.duration_h[at]).sum()) / 1000.0
        parts.append(f"reserve {reserve.name} short {short[at].max() / 1000.0:.3g} MW ({at.size} of {problem.T} "
                     f"intervals, {mwh:.3g} MWh) within {', '.join(causes)}")
        if details is not None:
            for t in at:
                note = f"reserve {reserve.name} {short[t] / 1000.0:.3g} MW short ({', '.join(causes_at[int(t)])})"
                details[t] = f"{details[t]}; {note}" if details[t] else note
    if not parts:
        return schedule
    message = "; ".join([schedule.info.message, *parts]) if schedule.info.message else "; ".join(parts)
    if details is not None:
        frame = frame.assign(reason_detail=details)
    return dataclasses.replace(schedule, frame=frame, info=dataclasses.replace(schedule.info, message=message))


def _blocking_limits(problem: Problem, counts: dict[tuple[int, int], np.ndarray], reserve: ReserveProduct,
                     t: int) -> list[str]:
    """The hard limits that stop one more qualified unit of ``reserve`` at
    interval t, by the names the reasons use: the import limit's source (``import limit``, ``DR``,
    ``AS:RRS:d-1``), ``noise:<receptor>``, ``carbon:<budget>``, ``all qualified units running``,
    ``qualified MW`` (the groups carry their qualified MW already); ``equipment`` when none of
    them binds (min on/off or ramp kept the cover from adding a run)."""
    found: list[str] = []
    load = _load_kw(problem, counts)
    import_room = problem.import_limit_kw[t] + problem.renewable_kw[t] - load[t]
    kg_per_kw = problem.duration_h * problem.intensity_kg_per_mwh / 1000.0
    imported = np.maximum(load - problem.renewable_kw, 0.0)
    noise_room = {r.id: float(r.energy_budget()[t] - _noise_energy(problem, r, counts)[t]) for r in problem.receptors}
    for g, group in enumerate(problem.groups):
        cap_kw = float(reserve.group_max_kw.get(group.id, 0.0))
        if cap_kw <= 0:
            continue
        on = sum(int(counts[g, m][t]) for m in range(len(group.modes)))
        shed_kw = sum((mode.power_kw - group.idle_power_kw) * int(counts[g, m][t]) for m, mode in enumerate(group.modes))
        if shed_kw >= cap_kw - SHORT_KW:
            found.append("qualified MW")
            continue
        if on >= int(group.units_available[t]):
            found.append("all qualified units running")
            continue
        mode = min(group.modes, key=lambda md: md.power_kw)  # the smallest step a unit can add
        step_kw = mode.power_kw - group.idle_power_kw
        blocked = []
        if step_kw > import_room + 1e-6:
            blocked.append(problem.import_limit_source[t] or "import limit")
        for receptor in problem.receptors:
            energy = receptor.unit_energy(group.id, mode)
            if energy > 0 and energy > noise_room[receptor.id] * (1.0 + 1e-9):
                blocked.append(f"noise:{receptor.id}")
        for budget in problem.carbon_budgets:
            if budget.mask[t] and kg_per_kw[t] > 0:
                left = problem.effective_carbon_budget_kg(budget) - float((imported * kg_per_kw)[budget.mask].sum())
                if step_kw * kg_per_kw[t] > left + 1e-6:
                    blocked.append(f"carbon:{budget.name}")
        found.extend(blocked or ["equipment"])
    return sorted(set(found)) or ["no qualified group"]
