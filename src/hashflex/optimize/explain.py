"""Why is the load below full? One binding reason per interval, in words a site manager reads.

Integer schedules rarely meet a constraint with equality, so "binding" here means: the next
profitable step up (one more unit on, or one unit moved to a higher-power mode) would break the
limit. A step is profitable when its revenue beats its energy and carbon cost at this interval's
prices. If no step is profitable the reason is price; if a profitable step breaks nothing at this
interval, something across time holds it back (carbon budget, min on/off, ramp).

Reason codes, in order of precedence: the import-limit source (``DR``, ``4CP window``,
``import limit``), ``noise:<receptor>``, ``carbon``, ``equipment``, ``price``; full load gives "".
Ahead of all of them, ``reserve RRS 5 MW`` (issue 15): reserve is held and a running unit loses
money on energy alone, so the reserve obligation or offer is what keeps it on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hashflex.optimize.problem import Problem

TOLERANCE_KW = 1e-6
CARBON_BINDING_FRACTION = 0.005  # matches the MILP's default relative gap


def _steps(problem: Problem, counts: dict[tuple[int, int], np.ndarray], t: int) -> list[tuple[int, int | None, int]]:
    """Possible one-unit steps up at t: (group, from mode or None for a sleeping unit, to mode)."""
    steps = []
    for g, group in enumerate(problem.groups):
        on = sum(int(counts[g, m][t]) for m in range(len(group.modes)))
        for to in range(len(group.modes)):
            if on < group.units_available[t]:
                steps.append((g, None, to))
            for frm in range(len(group.modes)):
                if counts[g, frm][t] > 0 and group.modes[to].power_kw > group.modes[frm].power_kw:
                    steps.append((g, frm, to))
    return steps


def _step_deltas(problem: Problem, g: int, frm: int | None, to: int) -> tuple[float, float]:
    """(Δ power kW, Δ hashrate TH/s) of one step."""
    group = problem.groups[g]
    new = group.modes[to]
    if frm is None:
        return new.power_kw - group.idle_power_kw, new.hashrate_th_s
    old = group.modes[frm]
    return new.power_kw - old.power_kw, new.hashrate_th_s - old.hashrate_th_s



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


def explain_intervals(    problem: Problem, counts: dict[tuple[int, int], np.ndarray], frame: pd.DataFrame
) -> tuple[list[str], list[str]]:
    """(reason code, human sentence) for every interval of a schedule frame."""
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    carbon_usd_per_kwh = problem.intensity_kg_per_mwh / 1000.0 * problem.carbon_price_usd_per_t / 1000.0
    emissions = frame["emissions_kg"].to_numpy()
    carbon_left = {}
    for budget in problem.carbon_budgets:
        carbon_left[budget.name] = budget.remaining_kg - float(emissions[budget.mask].sum())
    noise_energy = {}
    for receptor in problem.receptors:
        used = np.zeros(problem.T)
        for (g, m), n in counts.items():
            used += n * receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[m])
        noise_energy[receptor.id] = (used, receptor.energy_budget())

    held_by_reserve = _reserve_reasons(problem, counts, frame, hp, carbon_usd_per_kwh)
    reasons, details = [], []
    load = frame["load_kw"].to_numpy()
    full = frame["full_load_kw"].to_numpy()
    grid_import = frame["grid_import_kw"].to_numpy()
    for t in range(problem.T):
        if load[t] >= full[t] - TOLERANCE_KW and not held_by_reserve[t]:
            reasons.append("")
            details.append("full load")
            continue
        price = float(problem.energy_price_usd_mwh[t])
        # Headroom from the grid: import up to the limit, plus renewable not yet used by the load.
        headroom_kw = problem.import_limit_kw[t] - grid_import[t] + max(problem.renewable_kw[t] - (load[t] - grid_import[t]), 0.0)
        blocked: dict[str, str] = {}
        profitable = 0
        for g, frm, to in _steps(problem, counts, t):
            d_power, d_hash = _step_deltas(problem, g, frm, to)
            marginal_usd_per_h = d_hash * hp[t] - d_power * (price / 1000.0 + carbon_usd_per_kwh[t])
            if marginal_usd_per_h <= 0:
                continue
            profitable += 1
            blockers = []
            if d_power > headroom_kw + TOLERANCE_KW:
                source = problem.import_limit_source[t]
                blockers.append(source)
                blocked.setdefault(source, f"{source}: grid import held at {grid_import[t]:,.0f} kW "
                                           f"(limit {problem.import_limit_kw[t]:,.0f} kW)")
            new_mode = problem.groups[g].modes[to]
            old_mode = problem.groups[g].modes[frm] if frm is not None else None
            for receptor in problem.receptors:
                used, budget = noise_energy[receptor.id]
                d_energy = receptor.unit_energy(problem.groups[g].id, new_mode)
                if old_mode is not None:
                    d_energy -= receptor.unit_energy(problem.groups[g].id, old_mode)
                if d_energy > 0 and used[t] + d_energy > budget[t]:
                    code = f"noise:{receptor.id}"
                    blockers.append(code)
                    level = frame[f"noise_dba_{receptor.id}"].iloc[t]
                    blocked.setdefault(code, f"noise: {receptor.id} modelled {level:.1f} dB(A) against a cap of "
                                             f"{receptor.cap_dba[t]:.1f} (margin {receptor.margin_db:.1f} dB)")
            for budget in problem.carbon_budgets:
                if budget.mask[t]:
                    extra_kg = d_power * problem.duration_h[t] * problem.intensity_kg_per_mwh[t] / 1000.0
                    # Solved to a relative gap, a budget within that fraction of full is binding.
                    if carbon_left[budget.name] < max(extra_kg, CARBON_BINDING_FRACTION * budget.remaining_kg):
                        blockers.append("carbon")
                        blocked.setdefault("carbon", f"carbon: {budget.name} budget used up "
                                                     f"({carbon_left[budget.name]:,.0f} kg left)")
            if not blockers:
                blocked.setdefault("equipment", "equipment: min on/off time, ramp limit or start cost "
                                                "holds units back")
        if held_by_reserve[t]:
            reasons.append(held_by_reserve[t])
            details.append(f"{held_by_reserve[t]}: units kept running as awarded/offered reserve at an energy "
                           f"price of ${price:,.2f}/MWh that alone would curtail them")
            continue
        if profitable == 0:
            reasons.append("price")
            details.append(f"price: energy at ${price:,.2f}/MWh makes every further step unprofitable")
            continue
        booting = _cold_booting(problem, frame, t)
        if booting and "equipment" in blocked:
            blocked["equipment"] = f"equipment: {booting} cold-booting after a power-off at the PDU"
        order = [problem.import_limit_source[t]] + [f"noise:{r.id}" for r in problem.receptors] + ["carbon", "equipment"]
        codes = [code for code in order if code in blocked]
        reasons.append(codes[0])
        details.append("; ".join(blocked[code] for code in codes))
    return reasons, details
