"""Why is the load below full? One binding reason per interval, in words a site manager reads.

Integer schedules rarely meet a constraint with equality, so "binding" here means: the next
profitable step up (one more unit on, or one unit moved to a higher-power mode) would break the
limit. A step is profitable when its revenue beats its energy and carbon cost at this interval's
prices. If no step is profitable the reason is price; if a profitable step breaks nothing at this
interval, something across time holds it back (min on/off, start cost, ramp: ``equipment``) or,
for a group with none of these and a step the ramp limit allows, the solver left it off within its
relative gap (``gap``).

Reason codes, in order of precedence: the import-limit source (``DR``, ``4CP window``,
``import limit``), ``noise:<receptor>``, ``carbon``, ``equipment``, ``gap``, ``price``; full load
gives "".
Ahead of all of them, ``reserve RRS 5 MW`` (issue 15): reserve is held and a running unit loses
money on energy alone, so the reserve obligation or offer is what keeps it on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hashflex.optimize.problem import Problem

TOLERANCE_KW = 1e-6
CARBON_BINDING_FRACTION = 0.005  # matches the MILP's default relative gap


def _step_table(problem: Problem) -> list[tuple[int, int | None, int, float, float]]:
    """Every one-unit step up a group can make, whatever the counts: (group, from mode or None for
    a sleeping unit, to mode, Δ power kW, Δ hashrate TH/s), in the order the per-interval
    explanation examined them (group, then target mode, then a sleeping unit before running ones)."""
    steps = []
    for g, group in enumerate(problem.groups):
        for to, new in enumerate(group.modes):
            steps.append((g, None, to, new.power_kw - group.idle_power_kw, new.hashrate_th_s))
            for frm, old in enumerate(group.modes):
                if new.power_kw > old.power_kw:
                    steps.append((g, frm, to, new.power_kw - old.power_kw, new.hashrate_th_s - old.hashrate_th_s))
    return steps


def _ramp_would_break(problem: Problem, load: np.ndarray, d_power: np.ndarray) -> np.ndarray:
    """[S, T] True where a step of ``d_power`` [S] kW at t would break the site's ramp limit against
    t − 1 (or the initial load) or t + 1 (``milp.define_ramp``: R·Δt per interval, 1e-6 kW slack)."""
    out = np.zeros((d_power.size, problem.T), dtype=bool)
    rate = problem.ramp_limit_kw_per_h
    if rate is None:
        return out
    after = load[None, :] + d_power[:, None]
    limit = rate * problem.duration_h
    previous = np.concatenate([[np.nan if problem.initial_load_kw is None else problem.initial_load_kw], load[:-1]])
    with np.errstate(invalid="ignore"):
        out |= after - previous[None, :] > limit[None, :] + TOLERANCE_KW
    out[:, :-1] |= after[:, :-1] - load[None, 1:] > limit[None, 1:] + TOLERANCE_KW
    return out


def _reserve_reasons(problem: Problem, counts: dict[tuple[int, int], np.ndarray], frame: pd.DataFrame,
                     hp: np.ndarray, carbon_usd_per_kwh: np.ndarray) -> list[str]:
    """Per interval, "reserve RRS 5 MW" (products joined by ", ") where reserve is held and some
    running unit loses money on energy alone: the reserve, not the price, keeps it on; else ""."""
    out = [""] * problem.T
    if not problem.reserves:
        return out
    price = problem.energy_price_usd_mwh
    for t in range(problem.T):
        under_water = any(int(counts[g, m][t]) > 0 and mode.hashrate_th_s * hp[t]
                          - (mode.power_kw - group.idle_power_kw) * (price[t] / 1000.0 + carbon_usd_per_kwh[t]) < 0
                          for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes))
        held = [(r.name, float(frame[f"reserve_{r.name}_kw"].iloc[t])) for r in problem.reserves]
        held = [f"{name} {kw / 1000.0:g} MW" for name, kw in held if kw > TOLERANCE_KW]
        if under_water and held:
            out[t] = "reserve " + ", ".join(held)
    return out


def _cold_booting(problem: Problem, frame: pd.DataFrame, t: int) -> str:
    """"120 units of air_s21" (joined by ", ") woken from powered off within their cold boot
    before the end of interval t (issue 17); "" when none."""
    parts = []
    starts_h = np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])
    for entry in problem.power_off:
        column = f"units_{entry.group}_off"
        if column not in frame:
            continue
        group = next(g for g in problem.groups if g.id == entry.group)
        off = frame[column].to_numpy()
        woken = np.maximum(-np.diff(off, prepend=group.initial.units_off), 0)
        window = (starts_h <= starts_h[t]) & (starts_h > starts_h[t] - entry.cold_boot_h - 1e-9)
        if entry.cold_boot_h > 0 and int(woken[window].sum()) > 0:
            parts.append(f"{int(woken[window].sum())} units of {entry.group}")
    return ", ".join(parts)


def explain_intervals(problem: Problem, counts: dict[tuple[int, int], np.ndarray], frame: pd.DataFrame
                      ) -> tuple[list[str], list[str]]:
    """(reason code, human sentence) for every interval of a schedule frame.

    Every possible one-unit step up (`_step_table`) is valued and checked against the import limit,
    each receptor's noise budget and each carbon budget for all intervals at once ([steps, T]
    arrays); the strings are then assembled per interval. A profitable step that breaks none of
    them is held back by ``equipment`` when its group has min on/off times or a start cost, or the
    site's ramp limit would break; otherwise the solver left it off within its relative gap
    (``gap``).

    Parameters
    ----------
    problem : Problem
        The planning problem the counts solve.
    counts : dict
        (group index, mode index) → [T] int units in that mode.
    frame : pandas.DataFrame
        The schedule frame of ``schedule_from_counts`` (``load_kw``, ``full_load_kw``,
        ``grid_import_kw``, ``emissions_kg``, ``noise_dba_<receptor>``, reserve columns).

    Returns
    -------
    (list of str, list of str)
        [T] reason codes and [T] sentences.
    """
    T = problem.T
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    carbon_usd_per_kwh = problem.intensity_kg_per_mwh / 1000.0 * problem.carbon_price_usd_per_t / 1000.0
    emissions = frame["emissions_kg"].to_numpy()
    carbon_left = {}
    for budget in problem.carbon_budgets:
        carbon_left[budget.name] = budget.remaining_kg - float(emissions[budget.mask].sum())
    noise_energy = {}
    for receptor in problem.receptors:
        used = np.zeros(T)
        for (g, m), n in counts.items():
            used += n * receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[m])
        noise_energy[receptor.id] = (used, receptor.energy_budget())

    held_by_reserve = _reserve_reasons(problem, counts, frame, hp, carbon_usd_per_kwh)
    load = frame["load_kw"].to_numpy()
    full = frame["full_load_kw"].to_numpy()
    grid_import = frame["grid_import_kw"].to_numpy()
    price = np.asarray(problem.energy_price_usd_mwh, dtype=float)
    # Headroom from the grid: import up to the limit, plus renewable not yet used by the load.
    headroom_kw = problem.import_limit_kw - grid_import + np.maximum(problem.renewable_kw - (load - grid_import), 0.0)

    steps = _step_table(problem)
    group_of = np.array([g for g, _, _, _, _ in steps], dtype=int)
    d_power = np.array([dp for _, _, _, dp, _ in steps], dtype=float)
    d_hash = np.array([dh for _, _, _, _, dh in steps], dtype=float)
    on = {g: sum(counts[g, m] for m in range(len(group.modes))) for g, group in enumerate(problem.groups)}
    valid = np.array([on[g] < problem.groups[g].units_available if frm is None else counts[g, frm] > 0
                      for g, frm, _, _, _ in steps], dtype=bool).reshape(len(steps), T)
    marginal_usd_per_h = d_hash[:, None] * hp[None, :] - d_power[:, None] * (price[None, :] / 1000.0
                                                                            + carbon_usd_per_kwh[None, :])
    profitable = valid & (marginal_usd_per_h > 0)
    blocked_any = np.zeros_like(profitable)
    by_import = profitable & (d_power[:, None] > headroom_kw[None, :] + TOLERANCE_KW)
    blocked_any |= by_import
    by_noise = {}
    for receptor in problem.receptors:
        used, budget = noise_energy[receptor.id]
        d_energy = np.array([receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[to])
                             - (receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[frm])
                                if frm is not None else 0.0) for g, frm, to, _, _ in steps], dtype=float)
        hit = profitable & (d_energy[:, None] > 0) & (used[None, :] + d_energy[:, None] > budget[None, :])
        by_noise[receptor.id] = hit.any(axis=0)
        blocked_any |= hit
    carbon_hits = []
    for budget in problem.carbon_budgets:
        extra_kg = d_power[:, None] * problem.duration_h[None, :] * problem.intensity_kg_per_mwh[None, :] / 1000.0
        # Solved to a relative gap, a budget within that fraction of full is binding.
        hit = profitable & budget.mask[None, :] & (
            carbon_left[budget.name] < np.maximum(extra_kg, CARBON_BINDING_FRACTION * budget.remaining_kg))
        carbon_hits.append(hit)
        blocked_any |= hit
    by_carbon = np.logical_or.reduce(carbon_hits) if carbon_hits else np.zeros_like(profitable)
    unblocked = profitable & ~blocked_any
    committed = np.array([bool(problem.groups[g].min_on_h or problem.groups[g].min_off_h
                               or problem.groups[g].start_cost_usd) for g in group_of], dtype=bool)
    held_across_time = committed[:, None] | _ramp_would_break(problem, load, d_power)
    by_equipment = (unblocked & held_across_time).any(axis=0)
    within_gap = (unblocked & ~held_across_time).any(axis=0)
    any_profitable = profitable.any(axis=0)
    any_import = by_import.any(axis=0)
    levels = {r.id: frame[f"noise_dba_{r.id}"].to_numpy() for r in problem.receptors}

    reasons, details = [], []
    for t in range(T):
        if load[t] >= full[t] - TOLERANCE_KW and not held_by_reserve[t]:
            reasons.append("")
            details.append("full load")
            continue
        if held_by_reserve[t]:
            reasons.append(held_by_reserve[t])
            details.append(f"{held_by_reserve[t]}: units kept running as awarded/offered reserve at an energy "
                           f"price of ${price[t]:,.2f}/MWh that alone would curtail them")
            continue
        if not any_profitable[t]:
            reasons.append("price")
            details.append(f"price: energy at ${price[t]:,.2f}/MWh makes every further step unprofitable")
            continue
        blocked: dict[str, str] = {}
        source = problem.import_limit_source[t]
        if any_import[t]:
            blocked[source] = (f"{source}: grid import held at {grid_import[t]:,.0f} kW "
                               f"(limit {problem.import_limit_kw[t]:,.0f} kW)")
        for receptor in problem.receptors:
            if by_noise[receptor.id][t]:
                blocked.setdefault(f"noise:{receptor.id}",
                                   f"noise: {receptor.id} modelled {levels[receptor.id][t]:.1f} dB(A) against a cap "
                                   f"of {receptor.cap_dba[t]:.1f} (margin {receptor.margin_db:.1f} dB)")
        if by_carbon[:, t].any():
            # As the per-step reading did: the first budget that blocks the first blocked step.
            first = int(np.flatnonzero(by_carbon[:, t])[0])
            budget = next(b for b, hit in zip(problem.carbon_budgets, carbon_hits) if hit[first, t])
            blocked["carbon"] = (f"carbon: {budget.name} budget used up "
                                 f"({carbon_left[budget.name]:,.0f} kg left)")
        if by_equipment[t]:
            blocked["equipment"] = "equipment: min on/off time, ramp limit or start cost holds units back"
        if within_gap[t]:
            blocked["gap"] = ("within the solver's gap: a profitable step up breaks no limit here, and no min on/off "
                              "time, start cost or ramp limit holds it back")
        booting = _cold_booting(problem, frame, t) if problem.power_off else ""  # issue 17's PDU groups only
        if booting and ("equipment" in blocked or "gap" in blocked):
            blocked.pop("gap", None)
            blocked["equipment"] = f"equipment: {booting} cold-booting after a power-off at the PDU"
        order = [source] + [f"noise:{r.id}" for r in problem.receptors] + ["carbon", "equipment", "gap"]
        codes = [code for code in order if code in blocked]
        reasons.append(codes[0])
        details.append("; ".join(blocked[code] for code in codes))
    return reasons, details
