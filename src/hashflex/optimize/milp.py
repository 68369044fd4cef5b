"""The schedule MILP in Pyomo, solved by HiGHS. See optimization/FORMULATION.md for the math.

`build_model(problem)` reads top to bottom as a recipe: each `define_*` function adds one family
of variables or constraints (its equation in the docstring) and returns early when the problem
has nothing for it. Compiling it into HiGHS is ``optimize.highs_compile``; solving it (time limit,
gap, LP → rounding → MIP, the greedy fallback when HiGHS fails) is ``optimize.solve``.

Hard limits (grid import, DR, noise, carbon, availability) are hard constraints; equipment limits
(minimum on time, ramp-down) are soft with a large penalty, so switching everything off is always
feasible and the grid and the neighbours win every conflict.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression

from hashflex.optimize.compute import define_compute, load_terms as compute_load_terms, noise_terms as compute_noise_terms
from hashflex.optimize.compute import objective_terms as compute_objective_terms
from hashflex.optimize.problem import Problem

log = logging.getLogger(__name__)

# Soft-constraint penalties. They must dominate any price: one 7.8 kW unit for an hour at the
# ERCOT cap of $5,000/MWh is ~$39, so $1,000 per unit-interval of broken min-on (or min-off) time
# can never be worth paying for profit. A kW of ramp violation for a whole hour at $5,000/MWh is
# worth $5, so $10 per kW per interval dominates it, while a few kW of rounding noise on a ramp
# that binds exactly (a 1 kW step costs $10) does not swamp the gap of a warm start.
PENALTY_MIN_ON_USD_PER_UNIT = 1_000.0
PENALTY_RAMP_USD_PER_KW = 10.0
# An awarded reserve not held costs, per kW-hour, the most that holding it could cost at that
# interval (its energy price with adders and carbon, as if it earned no hashes, plus the best hash
# revenue per kW that the import or carbon it uses could earn elsewhere) plus $0.10: breaking an
# award never pays, a hard limit (DR, noise, import, carbon) still wins, and the penalty stays of
# the order of the economics, so a unit or two of rounding does not blow the MIP gap (a flat
# $10/kWh did: 0.66 % gap after 10 s on a May 2024 day). Under a noise cap in force a kW of reserve
# can displace far more than a kW of mining (a loud qualified unit takes the noise room of many quiet
# ones), so the penalty adds what that noise room could earn (`_noise_room_usd_per_kw_h`): on 4 May
# 2024 at 06:00 CDT one S19j Pro in eco (2.59 kW of Non-Spin) took the room of 14 S21 XP Hydro in
# turbo at ranch_north, against a penalty of ~$0.29/kWh, and the LP held 90 kW too little.
PENALTY_RESERVE_SHORT_MARGIN_USD_PER_KW_H = 0.10
# Relative MIP gap at which a schedule counts as optimal. Price forecasts a day ahead are off by
# far more than 0.5 %, and the LP-rounded start usually lands within it, so HiGHS can stop at the
# root; the achieved gap is reported with every schedule.
DEFAULT_REL_GAP = 5e-3


def _mode_index(problem: Problem) -> list[tuple[int, int]]:
    return [(g, m) for g, group in enumerate(problem.groups) for m in range(len(group.modes))]


def _linear(terms: Iterable[tuple[float, pyo.Var]], constant: float = 0.0) -> LinearExpression:
    """Σ c·x + constant as one flat LinearExpression with float coefficients: the cheapest form for
    Pyomo to build and for the linear walker in `compile_to_highs` to read (zero terms dropped)."""
    args: list = [MonomialTermExpression((float(c), v)) for c, v in terms if c]
    if constant:
        args.append(float(constant))
    return LinearExpression(args)


def _on_terms(model: pyo.ConcreteModel, problem: Problem, g: int, t: int, sign: float = 1.0) -> list:
    """Terms of on[g,t] = Σ_m n[g,m,t] (times ``sign``)."""
    return [(sign, model.n[g, m, t]) for m in range(len(problem.groups[g].modes))]


def _load_terms(model: pyo.ConcreteModel, problem: Problem, t: int, sign: float = 1.0) -> tuple[list, float]:
    """site_load[t] = Σ_g,m (P[g,m] − P_idle[g])·n[g,m,t] + Σ_g P_idle[g]·avail[g,t] as (terms, constant)."""
    terms = [(sign * (mode.power_kw - group.idle_power_kw), model.n[g, m, t])
             for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)]
    constant = sum(group.idle_power_kw * int(group.units_available[t]) for group in problem.groups)
    # Units powered off at the PDU draw 0 kW instead of their idle power (issue 17).
    terms += [(-sign * problem.groups[g].idle_power_kw, model.n_off[g, t]) for g in _power_off_groups(problem)]
    gpu_terms, gpu_constant = compute_load_terms(model, problem, t, sign)  # GPU clusters (issue 16)
    return terms + gpu_terms, sign * constant + gpu_constant


def _power_off_groups(problem: Problem) -> dict[int, object]:
    """Group index → its `PowerOff` entry, for the groups a PDU can power off."""
    entries = {p.group: p for p in problem.power_off}
    return {g: entries[group.id] for g, group in enumerate(problem.groups) if group.id in entries}


def define_sets(model: pyo.ConcreteModel, problem: Problem) -> None:
    """T intervals, G groups, (g, m) group-mode pairs, R receptors."""
    model.T = pyo.RangeSet(0, problem.T - 1)
    model.G = pyo.RangeSet(0, len(problem.groups) - 1)
    model.GM = pyo.Set(initialize=_mode_index(problem), dimen=2)
    model.R = pyo.RangeSet(0, len(problem.receptors) - 1) if problem.receptors else pyo.Set(initialize=[])


def define_unit_counts(model: pyo.ConcreteModel, problem: Problem) -> None:
    """n[g,m,t] ∈ ℤ≥0 units of group g in mode m; Σ_m n[g,m,t] <= available[g,t]."""
    available = {(g, m, t): (0, int(group.units_available[t]))
                 for g, group in enumerate(problem.groups) for m in range(len(group.modes)) for t in range(problem.T)}
    model.n = pyo.Var(model.GM, model.T, domain=pyo.NonNegativeIntegers, bounds=available)
    model.availability = pyo.Constraint(
        model.G, model.T,
        rule=lambda mdl, g, t: _linear(_on_terms(mdl, problem, g, t)) <= int(problem.groups[g].units_available[t]),
    )


def define_power_off(model: pyo.ConcreteModel, problem: Problem) -> None:
    """Units powered off at the PDU (issue 17), per group g with a `PowerOff` entry:
    off[g,t] >= 0 units drawing 0 kW (in `_load_terms`: −P_idle[g]·off[g,t]);
    wake[g,t] >= off[g,t−1] − off[g,t] (units woken from off; off[g,−1] = initial units_off), each
    paying the cold start cost;
    Σ_m n[g,m,t] + off[g,t] + Σ_{k: τ_t−τ_k < boot_g} wake[g,k] <= available[g,t]: powered-off units
    are among the sleeping ones, and a unit woken at k cannot hash until its cold boot is over
    (rounded up to whole intervals). off and wake are continuous here (the LP → rounding → MIP
    procedure makes only the mode counts integer); the schedule rounds off up, which only lowers
    the load."""
    groups = _power_off_groups(problem)
    model.PO = pyo.Set(initialize=sorted(groups))
    if not groups:
        return
    bounds = {(g, t): (0.0, float(problem.groups[g].units_available[t])) for g in groups for t in range(problem.T)}
    model.n_off = pyo.Var(model.PO, model.T, domain=pyo.NonNegativeReals, bounds=bounds)
    model.wake_off = pyo.Var(model.PO, model.T, domain=pyo.NonNegativeReals)

    def woken(mdl: pyo.ConcreteModel, g: int, t: int) -> pyo.Expression:
        terms = [(1.0, mdl.wake_off[g, t]), (1.0, mdl.n_off[g, t])]
        if t > 0:
            return _linear(terms + [(-1.0, mdl.n_off[g, t - 1])]) >= 0.0
        return _linear(terms) >= float(problem.groups[g].initial.units_off)

    model.power_off_wake = pyo.Constraint(model.PO, model.T, rule=woken)
    boot_window = {g: _window_starts(problem, groups[g].cold_boot_h) for g in groups}

    def room(mdl: pyo.ConcreteModel, g: int, t: int) -> pyo.Expression:
        booting = [(1.0, mdl.wake_off[g, k]) for k in range(int(boot_window[g][t]), t + 1)]
        terms = _on_terms(mdl, problem, g, t) + [(1.0, mdl.n_off[g, t])] + booting
        return _linear(terms) <= int(problem.groups[g].units_available[t])

    model.power_off_room = pyo.Constraint(model.PO, model.T, rule=room)


def define_derates(model: pyo.ConcreteModel, problem: Problem) -> None:
    """Derated units (issue 17) run no mode above their cap: per `Derate` of group g with cap C and
    derated units D[t], Σ_{m: P[g,m] > C} n[g,m,t] <= max(available[g,t] − D[t], 0). Which units
    are derated is the dispatcher's to choose (it prefers healthy units for the high modes)."""
    index = {group.id: g for g, group in enumerate(problem.groups)}
    rows = []
    for derate in problem.derates:
        g = index[derate.group]
        group = problem.groups[g]
        high = [m for m, mode in enumerate(group.modes) if mode.power_kw > derate.max_power_kw + 1e-9]
        if not high:
            continue
        for t in range(problem.T):
            if derate.units[t] > 0:
                rows.append((g, t, tuple(high), max(int(group.units_available[t]) - int(derate.units[t]), 0)))
    model.derate_index = pyo.Set(initialize=list(range(len(rows))))
    if not rows:
        return
    model.derate = pyo.Constraint(
        model.derate_index,
        rule=lambda mdl, k: _linear((1.0, mdl.n[rows[k][0], m, rows[k][1]]) for m in rows[k][2]) <= rows[k][3],
    )


def define_power_balance(model: pyo.ConcreteModel, problem: Problem) -> None:
    """site_load[t] = Σ n·P[g,m] + (avail[g,t] − on[g,t])·P_idle[g] = import[t] + renewable_used[t];
    renewable_used[t] + export[t] <= renewable[t]; import[t] <= import_limit[t]; export <= limit.
    site_load is substituted into the rows (no Expression component), see `_load_terms`."""
    limit = problem.effective_import_limit_kw  # never below the standby draw: all asleep stays feasible
    model.grid_import_kw = pyo.Var(model.T, bounds={t: (0.0, float(limit[t])) for t in range(problem.T)})
    model.renewable_used_kw = pyo.Var(model.T, bounds={t: (0.0, float(problem.renewable_kw[t])) for t in range(problem.T)})
    model.export_kw = pyo.Var(model.T, bounds=(0.0, float(problem.export_limit_kw)))

    def energy_balance(mdl: pyo.ConcreteModel, t: int) -> pyo.Expression:
        terms, constant = _load_terms(mdl, problem, t)
        terms += [(-1.0, mdl.grid_import_kw[t]), (-1.0, mdl.renewable_used_kw[t])]
        return _linear(terms) == -constant

    model.energy_balance = pyo.Constraint(model.T, rule=energy_balance)
    model.renewable_split = pyo.Constraint(
        model.T, rule=lambda mdl, t: _linear([(1.0, mdl.renewable_used_kw[t]), (1.0, mdl.export_kw[t])])
        <= float(problem.renewable_kw[t])
    )


def define_noise_caps(model: pyo.ConcreteModel, problem: Problem) -> None:
    """Σ_g,m n[g,m,t]·10^((Lw[g,m] − A[g,r])/10) <= B[r,t], where B[r,t] =
    10^((cap[r,t] − margin)/10) − 10^(bg[r]/10) for a cap on the total level (``cap_applies_to ==
    "total"``) and 10^((cap[r,t] − margin)/10) for a cap on the site's contribution alone
    (``"site"``), floored at 0 (``Receptor.energy_budget``); scaled by s_r for conditioning;
    intervals with no cap get no constraint."""
    if not problem.receptors:
        return
    rows, scales = [], {}
    for r, receptor in enumerate(problem.receptors):
        budget = receptor.energy_budget()
        finite = budget[np.isfinite(budget)]
        scale = scales[r] = 1.0 / max(float(finite.max()) if finite.size else 1.0, 1.0)
        coefficients = {(g, m): receptor.unit_energy(group.id, mode) * scale
                        for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}
        for t in range(problem.T):
            if np.isfinite(budget[t]) and (any(coefficients.values()) or problem.compute is not None):
                rows.append((r, t, coefficients, float(budget[t] * scale)))
    model.noise_index = pyo.Set(initialize=[(r, t) for r, t, _, _ in rows], dimen=2)
    lookup = {(r, t): (c, b) for r, t, c, b in rows}

    def noise_rule(mdl: pyo.ConcreteModel, r: int, t: int) -> pyo.Expression:
        coefficients, budget = lookup[r, t]
        gpu_terms, gpu_constant = compute_noise_terms(mdl, problem, problem.receptors[r].id, t, scales[r])
        terms = [(c, mdl.n[g, m, t]) for (g, m), c in coefficients.items()] + gpu_terms
        if not any(c for c, _ in terms):
            return pyo.Constraint.Skip
        # Idle cooling noise is a floor; clipped at 0 so that every GPU idle stays feasible.
        return _linear(terms) <= max(budget - gpu_constant, 0.0)

    model.noise_cap = pyo.Constraint(model.noise_index, rule=noise_rule)


def _emission_factors(problem: Problem) -> np.ndarray:
    """[T] kg per kW of import over the interval: Δt[t]·intensity[t]/1000."""
    return problem.duration_h * problem.intensity_kg_per_mwh / 1000.0


def define_carbon(model: pyo.ConcreteModel, problem: Problem) -> None:
    """emissions[t] = import[t]·Δt[t]·intensity[t]/1000 (kg); Σ_{t∈budget} emissions <= remaining.
    emissions[t] is substituted into the rows and the objective (no Expression component)."""
    if not problem.carbon_budgets:
        return
    model.B = pyo.RangeSet(0, len(problem.carbon_budgets) - 1)
    kg_per_kw = _emission_factors(problem)

    def budget_rule(mdl: pyo.ConcreteModel, b: int) -> pyo.Expression:
        budget = problem.carbon_budgets[b]
        members = np.flatnonzero(budget.mask)
        if members.size == 0:
            return pyo.Constraint.Skip
        return _linear((kg_per_kw[t], mdl.grid_import_kw[int(t)]) for t in members) <= problem.effective_carbon_budget_kg(budget)

    model.carbon_budget = pyo.Constraint(model.B, rule=budget_rule)


def _window_starts(problem: Problem, hours: float) -> np.ndarray:
    """[T] first interval k of the window of t: the k <= t whose start lies within ``hours`` before
    the start of t, i.e. τ_t − τ_k < hours (with 1e-9 h tolerance), are first[t]..t."""
    starts_h = np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])
    return np.searchsorted(starts_h, starts_h - hours + 1e-9, side="right")


def _initial_batches(problem: Problem, g: int, attr: str) -> np.ndarray:
    """[T] units still held on (attr='must_stay_on') or off by min-on/off from before the horizon."""
    starts_h = np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])
    held = np.zeros(problem.T)
    for hours_left, units in getattr(problem.groups[g].initial, attr):
        held += np.where(starts_h < hours_left - 1e-9, units, 0)
    return held


def define_commitment(model: pyo.ConcreteModel, problem: Problem) -> None:
    """Clustered unit commitment on counts, per group with min-on/off or a start cost:
    start[g,t] − stop[g,t] = on[g,t] − on[g,t−1] (on[g,−1] from the initial state);
    min-on (soft):  on[g,t] + short[g,t] >= Σ_{k: τ_t−τ_k < UT} start[g,k] + held_on[g,t];
    min-off (soft):  on[g,t] + Σ_{k: τ_t−τ_k < DT} stop[g,k] + held_off[g,t] − excess[g,t] <= N_g.
    Both are soft so that a rounded-down LP solution is always a feasible MIP start."""
    groups = [g for g, group in enumerate(problem.groups)
              if group.min_on_h or group.min_off_h or group.start_cost_usd]
    model.UC = pyo.Set(initialize=groups)
    if not groups:
        return
    model.start = pyo.Var(model.UC, model.T, domain=pyo.NonNegativeReals)
    model.stop = pyo.Var(model.UC, model.T, domain=pyo.NonNegativeReals)

    def transition(mdl: pyo.ConcreteModel, g: int, t: int) -> pyo.Expression:
        terms = [(1.0, mdl.start[g, t]), (-1.0, mdl.stop[g, t])] + _on_terms(mdl, problem, g, t, -1.0)
        if t > 0:
            return _linear(terms + _on_terms(mdl, problem, g, t - 1)) == 0.0
        return _linear(terms) == -float(problem.groups[g].initial.units_on)

    model.transition = pyo.Constraint(model.UC, model.T, rule=transition)

    min_on_groups = [g for g in groups if problem.groups[g].min_on_h or problem.groups[g].initial.must_stay_on]
    model.min_on_short = pyo.Var(min_on_groups, model.T, domain=pyo.NonNegativeReals)
    held_on = {g: _initial_batches(problem, g, "must_stay_on") for g in min_on_groups}
    on_window = {g: _window_starts(problem, problem.groups[g].min_on_h) for g in min_on_groups}

    def min_on(mdl: pyo.ConcreteModel, g: int, t: int) -> pyo.Expression:
        window = range(int(on_window[g][t]), t + 1) if problem.groups[g].min_on_h else ()
        terms = _on_terms(mdl, problem, g, t) + [(1.0, mdl.min_on_short[g, t])]
        return _linear(terms + [(-1.0, mdl.start[g, k]) for k in window]) >= float(held_on[g][t])

    model.min_on = pyo.Constraint(min_on_groups, model.T, rule=min_on)

    min_off_groups = [g for g in groups if problem.groups[g].min_off_h or problem.groups[g].initial.must_stay_off]
    held_off = {g: _initial_batches(problem, g, "must_stay_off") for g in min_off_groups}
    off_window = {g: _window_starts(problem, problem.groups[g].min_off_h) for g in min_off_groups}

    model.min_off_excess = pyo.Var(min_off_groups, model.T, domain=pyo.NonNegativeReals)

    def min_off(mdl: pyo.ConcreteModel, g: int, t: int) -> pyo.Expression:
        window = range(int(off_window[g][t]), t + 1) if problem.groups[g].min_off_h else ()
        terms = _on_terms(mdl, problem, g, t) + [(-1.0, mdl.min_off_excess[g, t])]
        terms += [(1.0, mdl.stop[g, k]) for k in window]
        return _linear(terms) <= problem.groups[g].units - float(held_off[g][t])

    model.min_off = pyo.Constraint(min_off_groups, model.T, rule=min_off)


def define_ramp(model: pyo.ConcreteModel, problem: Problem) -> None:
    """|site_load[t] − site_load[t−1]| <= R·Δt[t] + ramp_over[t], soft in both directions: a DR cut
    may be steeper than the ramp limit, and rounding may step a few kW past it. site_load[−1] is
    the initial load; without one, t = 0 has no ramp row."""
    if problem.ramp_limit_kw_per_h is None:
        return
    rate = problem.ramp_limit_kw_per_h
    model.ramp_short_kw = pyo.Var(model.T, domain=pyo.NonNegativeReals)

    def step(mdl: pyo.ConcreteModel, t: int, sign: float) -> pyo.Expression:
        """sign·(site_load[t] − site_load[t−1]) − ramp_over[t] <= R·Δt[t]."""
        if t == 0 and problem.initial_load_kw is None:
            return pyo.Constraint.Skip
        terms, constant = _load_terms(mdl, problem, t, sign)
        if t > 0:
            previous, previous_constant = _load_terms(mdl, problem, t - 1, -sign)
            terms += previous
            constant += previous_constant
        else:
            constant -= sign * problem.initial_load_kw
        terms.append((-1.0, mdl.ramp_short_kw[t]))
        return _linear(terms) <= rate * float(problem.duration_h[t]) - constant

    model.ramp_up = pyo.Constraint(model.T, rule=lambda mdl, t: step(mdl, t, 1.0))
    model.ramp_down = pyo.Constraint(model.T, rule=lambda mdl, t: step(mdl, t, -1.0))



def _reserve_index(problem: Problem) -> list[tuple[int, int]]:
    """(product p, group g) pairs where group g is qualified for product p."""
    ids = {group.id: g for g, group in enumerate(problem.groups)}
    return [(p, ids[group_id]) for p, reserve in enumerate(problem.reserves) for group_id in reserve.group_max_kw]


def define_reserve(model: pyo.ConcreteModel, problem: Problem) -> None:
    """Reserve as a Load Resource (issue 15), r[p,g,t] >= 0 kW of product p carried by group g:
    r[p,g,t] <= group_max[p,g];  Σ_p r[p,g,t] <= Σ_m (P[g,m] − P_idle[g])·n[g,m,t]  (only load that is
    running and can be shed counts, once across products);  Σ_g r[p,g,t] <= cap[p,t];
    Σ_g r[p,g,t] + reserve_short[p,t] >= obligation[p,t]  (an award is a minimum running load; soft,
    so DR, noise, carbon and the import limit still win, and the shortfall is reported)."""
    pairs = _reserve_index(problem)
    model.RP = pyo.Set(initialize=pairs, dimen=2)
    if not pairs:
        return
    bounds = {(p, g, t): (0.0, float(problem.reserves[p].group_max_kw[problem.groups[g].id]))
              for p, g in pairs for t in range(problem.T)}
    model.reserve_kw = pyo.Var(model.RP, model.T, domain=pyo.NonNegativeReals, bounds=bounds)
    model.reserve_short_kw = pyo.Var(range(len(problem.reserves)), model.T, domain=pyo.NonNegativeReals)
    carried = sorted({g for _, g in pairs})

    def sheddable(mdl: pyo.ConcreteModel, g: int, t: int) -> pyo.Expression:
        group = problem.groups[g]
        terms = [(1.0, mdl.reserve_kw[p, g2, t]) for p, g2 in pairs if g2 == g]
        terms += [(-(mode.power_kw - group.idle_power_kw), mdl.n[g, m, t]) for m, mode in enumerate(group.modes)]
        return _linear(terms) <= 0.0

    model.reserve_sheddable = pyo.Constraint(carried, model.T, rule=sheddable)

    def cap(mdl: pyo.ConcreteModel, p: int, t: int) -> pyo.Expression:
        limit = float(problem.reserves[p].max_kw[t])
        if not np.isfinite(limit):
            return pyo.Constraint.Skip
        return _linear((1.0, mdl.reserve_kw[p, g, t]) for p2, g in pairs if p2 == p) <= limit

    def obligation(mdl: pyo.ConcreteModel, p: int, t: int) -> pyo.Expression:
        terms = [(1.0, mdl.reserve_kw[p, g, t]) for p2, g in pairs if p2 == p] + [(1.0, mdl.reserve_short_kw[p, t])]
        return _linear(terms) >= float(problem.reserves[p].obligation_kw[t])

    products = range(len(problem.reserves))
    model.reserve_cap = pyo.Constraint(products, model.T, rule=cap)
    model.reserve_obligation = pyo.Constraint(products, model.T, rule=obligation)


def reserve_value_usd_per_kw(problem: Problem, p: int, g: int) -> np.ndarray:
    """[T] $ per kW of product p carried by group g over each interval: the clearing price minus the
    expected deployment cost (the deployed share of the group's best margin per kW, hashes lost net
    of the energy not bought; nothing when mining is under water anyway)."""
    reserve, group = problem.reserves[p], problem.groups[g]
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    margin = np.max([mode.hashrate_th_s / (mode.power_kw - group.idle_power_kw) * hp
                     - problem.energy_price_usd_mwh / 1000.0 for mode in group.modes], axis=0)
    return problem.duration_h * (reserve.price_usd_mw_h / 1000.0 - reserve.deployed_fraction * np.maximum(margin, 0.0))


def reserve_short_penalty_usd_per_kw(problem: Problem) -> np.ndarray:
    """[T] $ per kW of award not held over each interval (see PENALTY_RESERVE_SHORT_MARGIN_USD_PER_KW_H).

    Above anything a kW could earn instead: energy not bought, carbon, the best reserve price of
    any product (else the plan would sell an offered product from the megawatts an award needs and
    leave the award short: tests/test_ancillary_optimizer.py), and what the units it displaces
    earn: the best hashes per kW (import or carbon room) plus what the noise room a kW of reserve
    takes could earn under a cap that can bind (`_noise_room_usd_per_kw_h`), both over max(Δt[t], longest min-on time)
    hours, since a unit started before the award earns over its whole minimum on time
    (tests/test_reserve_first_interval.py).

    penalty[t] = Δt[t]·(max(price[t], 0) + carbon[t] + max_p MCPC[p,t])/1000 + Δt[t]·$0.10
                 + max(Δt[t], UT)·(hash_per_kw[t] + noise_room[t])   ($ per kW short)"""
    carbon_usd_per_kwh = problem.intensity_kg_per_mwh / 1000.0 * problem.carbon_price_usd_per_t / 1000.0
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    best_hash_per_kw = max((mode.hashrate_th_s / mode.power_kw for group in problem.groups for mode in group.modes),
                           default=0.0) * hp
    reserves = getattr(problem, "reserves", ())
    best_reserve_per_kwh = (np.maximum(np.max([np.asarray(r.price_usd_mw_h, dtype=float) for r in reserves], axis=0), 0.0)
                            / 1000.0 if reserves else 0.0)
    per_kwh = (np.maximum(problem.energy_price_usd_mwh, 0.0) / 1000.0 + carbon_usd_per_kwh + best_reserve_per_kwh
               + PENALTY_RESERVE_SHORT_MARGIN_USD_PER_KW_H)
    # What a displacing unit earns is counted over the longest minimum on time: a unit started
    # before the award's first interval earns there too but, held on, blocks the award (a plan that
    # must stage the swap earlier otherwise finds the shortfall cheaper than the staging).
    displaced_h = np.maximum(problem.duration_h, max((group.min_on_h for group in problem.groups), default=0.0))
    return problem.duration_h * per_kwh + displaced_h * (best_hash_per_kw + _noise_room_usd_per_kw_h(problem))


def _noise_room_usd_per_kw_h(problem: Problem) -> np.ndarray:
    """[T] $ per kWh of reserve: the most the noise room one kW of an award takes could earn mining.

    Per receptor r whose cap can bind at t (the available fleet in its loudest modes would exceed
    the budget), the room is worth at most v[r,t] = max over every (g', m') heard at r of
    max(H[g',m']·hp[t]·(1 − fee) − (P[g',m'] − P_idle[g'])·price[t]/1000, 0) / e[g',m',r] ($ per
    hour per unit of noise energy: the best margin per unit of noise), 0 where it cannot bind. A
    kW of reserve from qualified (g, m) takes Σ_r e[g,m,r]·v[r,t] / (P[g,m] − P_idle[g]) (freeing
    each receptor's share separately is one way to make the room, so the sum bounds the cost).
    Each group holds its share in its cheapest mode; a product may need every qualified group
    (offer caps per group), so the dearest group counts, and the dearest product (one penalty for
    all). Zero without receptors or reserves. GPU clusters' noise is not counted."""
    reserves = getattr(problem, "reserves", ())
    out = np.zeros(problem.T)
    if not reserves or not problem.receptors:
        return out
    values = [_noise_value_usd_per_energy_h(problem, receptor) for receptor in problem.receptors]
    groups = {group.id: group for group in problem.groups}
    for reserve in reserves:
        for group_id in reserve.group_max_kw:
            group = groups[group_id]
            per_mode = [sum(value * receptor.unit_energy(group.id, mode) for value, receptor in zip(values, problem.receptors))
                        / (mode.power_kw - group.idle_power_kw)
                        for mode in group.modes if mode.power_kw - group.idle_power_kw > 1e-9]
            if per_mode:
                out = np.maximum(out, np.min(per_mode, axis=0))
    return out


def _noise_value_usd_per_energy_h(problem: Problem, receptor: object) -> np.ndarray:
    """[T] $ per hour per unit of noise energy at ``receptor`` (a `problem.Receptor`): the best
    margin (hashes less the energy a sleeping unit saves) per unit of its noise over every mode
    heard there, where its cap can bind at t (0 elsewhere)."""
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)  # [T] $ per TH/s-hour
    price_usd_kwh = problem.energy_price_usd_mwh / 1000.0
    best = np.zeros(problem.T)
    loudest = np.zeros(problem.T)  # the available fleet in its loudest modes
    for group in problem.groups:
        energies = [receptor.unit_energy(group.id, mode) for mode in group.modes]
        loudest = loudest + group.units_available * max(energies, default=0.0)
        for mode, energy in zip(group.modes, energies):
            if energy > 0:
                margin = mode.hashrate_th_s * hp - (mode.power_kw - group.idle_power_kw) * price_usd_kwh
                best = np.maximum(best, margin / energy)
    budget = receptor.energy_budget()
    return np.where(np.isfinite(budget) & (loudest > budget), best, 0.0)


def _reserve_objective_terms(model: pyo.ConcreteModel, problem: Problem) -> list:
    """Objective terms of `define_reserve`: value of the reserve held, penalty on any award short."""
    if not hasattr(model, "reserve_kw"):
        return []
    terms = []
    for p, g in model.RP:
        value = reserve_value_usd_per_kw(problem, p, g)
        terms += [(float(value[t]), model.reserve_kw[p, g, t]) for t in range(problem.T)]
    penalty = reserve_short_penalty_usd_per_kw(problem)
    terms += [(-float(penalty[t]), v) for (p, t), v in model.reserve_short_kw.items()]
    return terms


def define_objective(model: pyo.ConcreteModel, problem: Problem) -> None:
    """max Σ_t Δt[t]·( Σ n·H[g,m]·hp[t]·(1−fee) − (price[t]+adder)·import[t]/1000
                       + price[t]·export[t]/1000 − carbon_price·emissions[t]/(1000·Δt[t]) )
           − Σ start_cost[g]·start[g,t] − penalties·shortfalls."""
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    energy = problem.energy_price_usd_mwh
    carbon_usd_per_kg = problem.carbon_price_usd_per_t / 1000.0
    kg_per_kw = _emission_factors(problem)
    terms = []
    for t in range(problem.T):
        dt_h = float(problem.duration_h[t])
        terms += [(mode.hashrate_th_s * dt_h * hp[t], model.n[g, m, t])
                  for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)]
        terms.append((-(energy[t] * dt_h / 1000.0 + carbon_usd_per_kg * kg_per_kw[t]), model.grid_import_kw[t]))
        terms.append((problem.price_usd_mwh[t] * dt_h / 1000.0, model.export_kw[t]))
    if len(model.UC):
        terms += [(-problem.groups[g].start_cost_usd, model.start[g, t]) for g in model.UC for t in model.T]
        terms += [(-PENALTY_MIN_ON_USD_PER_UNIT, v) for v in model.min_on_short.values()]
        terms += [(-PENALTY_MIN_ON_USD_PER_UNIT, v) for v in model.min_off_excess.values()]
    if hasattr(model, "ramp_short_kw"):
        terms += [(-PENALTY_RAMP_USD_PER_KW, v) for v in model.ramp_short_kw.values()]
    terms += _reserve_objective_terms(model, problem)
    for g, entry in _power_off_groups(problem).items():  # cold starts from powered off (issue 17)
        terms += [(-entry.cold_start_cost_usd, model.wake_off[g, t]) for t in range(problem.T)]
    terms += compute_objective_terms(model, problem)
    model.profit = pyo.Objective(expr=_linear(terms), sense=pyo.maximize)


def build_model(problem: Problem) -> pyo.ConcreteModel:
    """The whole MILP for ``problem``; every family of constraints in its own function.

    The cyclic garbage collector is paused while the tens of thousands of expression objects are
    created (as Pyomo's own writers do): otherwise its full collections cost as much as the build."""
    problem.validate()
    with PauseGC():
        model = pyo.ConcreteModel(name="hashflex_schedule")
        define_sets(model, problem)
        define_unit_counts(model, problem)
        define_power_off(model, problem)
        define_derates(model, problem)
        define_compute(model, problem)
        define_power_balance(model, problem)
        define_noise_caps(model, problem)
        define_carbon(model, problem)
        define_commitment(model, problem)
        define_ramp(model, problem)
        define_reserve(model, problem)
        define_objective(model, problem)
    return model


def extract_counts(model: pyo.ConcreteModel, problem: Problem) -> dict[tuple[int, int], np.ndarray]:
    """Integer counts per (g, m) over T; refuses values that came back fractional."""
    counts = {}
    for g, group in enumerate(problem.groups):
        for m in range(len(group.modes)):
            values = np.array([pyo.value(model.n[g, m, t]) for t in range(problem.T)], dtype=float)
            rounded = np.rint(values)
            if np.max(np.abs(values - rounded), initial=0.0) > 1e-4:
                raise ValueError(f"solver returned fractional unit counts for group {group.id}")
            counts[g, m] = rounded.astype(int)
    return counts


def powered_off_counts(problem: Problem, values: dict[tuple[int, int], float]) -> dict[str, np.ndarray] | None:
    """Units powered off per group id, [T] int, from the solved off[g,t] (``values``: (g, t) →
    value, as read from the model or its HiGHS columns); None without `PowerOff` groups. Rounded
    up (a fractional LP value never leaves a unit drawing idle power the plan did not count) and
    held to the units the plan leaves asleep by `schedule.schedule_from_counts`."""
    groups = _power_off_groups(problem)
    if not groups:
        return None
    return {problem.groups[g].id: np.ceil(np.array([max(values.get((g, t), 0.0), 0.0) for t in range(problem.T)])
                                          - 1e-6).astype(int)
            for g in groups}


def read_powered_off(model: pyo.ConcreteModel | None, compiled: object, problem: Problem,
                     x: np.ndarray | None) -> dict[str, np.ndarray] | None:
    """`powered_off_counts` of a solve: read by column index from ``compiled.col_at`` and the
    solution ``x`` when there is one, else from the Pyomo model's values."""
    if not problem.power_off:
        return None
    col_at = getattr(compiled, "col_at", None)
    if col_at is not None and x is not None and "n_off" in col_at:
        return powered_off_counts(problem, {key: float(x[col]) for key, col in col_at["n_off"].items()})
    if model is not None and hasattr(model, "n_off"):
        return powered_off_counts(problem, {key: float(pyo.value(v) or 0.0) for key, v in model.n_off.items()})
    return None
