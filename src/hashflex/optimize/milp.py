"""The schedule MILP in Pyomo, solved by HiGHS. See optimization/FORMULATION.md for the math.

`build_model(problem)` reads top to bottom as a recipe: each `define_*` function adds one family
of variables or constraints (its equation in the docstring) and returns early when the problem
has nothing for it. `solve(problem)` builds, solves with time limit and gap, and turns the result
into a `Schedule` (see schedule.py); if HiGHS fails or finds nothing in time, the greedy fallback
answers and the status says so.

Hard limits (grid import, DR, noise, carbon, availability) are hard constraints; equipment limits
(minimum on time, ramp-down) are soft with a large penalty, so switching everything off is always
feasible and the grid and the neighbours win every conflict.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression
from pyomo.repn.linear import LinearRepnVisitor
from pyomo.repn.util import OrderedVarRecorder

from hashflex.optimize.problem import Problem, coarsen
from hashflex.optimize.rounding import round_lp_counts
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, expand_to_base, schedule_from_counts

log = logging.getLogger(__name__)

# Soft-constraint penalties. They must dominate any price: one 7.8 kW unit for an hour at the
# ERCOT cap of $5,000/MWh is ~$39, so $1,000 per unit-interval of broken min-on (or min-off) time
# can never be worth paying for profit. A kW of ramp violation for a whole hour at $5,000/MWh is
# worth $5, so $10 per kW per interval dominates it, while a few kW of rounding noise on a ramp
# that binds exactly (a 1 kW step costs $10) does not swamp the gap of a warm start.
PENALTY_MIN_ON_USD_PER_UNIT = 1_000.0
PENALTY_RAMP_USD_PER_KW = 10.0
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
    return terms, sign * constant


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
    """Σ_g,m n[g,m,t]·10^((Lw[g,m] − A[g,r])/10) <= 10^((cap[r,t] − margin)/10) − 10^(bg[r]/10),
    scaled by 10^(−L_ref/10) for conditioning; intervals with no cap get no constraint."""
    if not problem.receptors:
        return
    rows = []
    for r, receptor in enumerate(problem.receptors):
        budget = receptor.energy_budget()
        finite = budget[np.isfinite(budget)]
        scale = 1.0 / max(float(finite.max()) if finite.size else 1.0, 1.0)
        coefficients = {(g, m): receptor.unit_energy(group.id, mode) * scale
                        for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}
        for t in range(problem.T):
            if np.isfinite(budget[t]) and any(coefficients.values()):
                rows.append((r, t, coefficients, float(budget[t] * scale)))
    model.noise_index = pyo.Set(initialize=[(r, t) for r, t, _, _ in rows], dimen=2)
    lookup = {(r, t): (c, b) for r, t, c, b in rows}

    def noise_rule(mdl: pyo.ConcreteModel, r: int, t: int) -> pyo.Expression:
        coefficients, budget = lookup[r, t]
        return _linear((c, mdl.n[g, m, t]) for (g, m), c in coefficients.items()) <= budget

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
        define_power_balance(model, problem)
        define_noise_caps(model, problem)
        define_carbon(model, problem)
        define_commitment(model, problem)
        define_ramp(model, problem)
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


@dataclass
class RowBlock:
    """Rows in HiGHS's row-wise form: bounds, starts, column indices, coefficients."""

    lower: np.ndarray
    upper: np.ndarray
    starts: np.ndarray
    index: np.ndarray
    value: np.ndarray

    @classmethod
    def from_lists(cls, lower: list, upper: list, starts: list, index: list, value: list) -> "RowBlock":
        return cls(np.array(lower, dtype=float), np.array(upper, dtype=float), np.array(starts[:-1], dtype=np.int32),
                   np.array(index, dtype=np.int32), np.array(value, dtype=float))

    def add_to(self, highs: highspy.Highs) -> None:
        if len(self.lower):
            highs.addRows(len(self.lower), self.lower, self.upper, len(self.index), self.starts, self.index,
                          self.value)


@dataclass
class CompiledModel:
    """A linear model handed to highspy: columns (Pyomo variables in declaration order), and the
    columns of the unit counts n[g,m,·], which the LP relaxation relaxes and rounding fixes."""

    highs: highspy.Highs
    columns: list[pyo.Var]
    lower: np.ndarray
    upper: np.ndarray
    count_columns: dict[tuple[int, int], np.ndarray]  # (g, m) -> [T] column indices
    structure_key: str = ""  # sizes and sparsity pattern: equal keys, interchangeable LP bases
    # Rows coupling the whole horizon (carbon budgets), added after a first LP without them: see
    # `solve_lp_round_mip`. None once added (or if there are none).
    deferred: RowBlock | None = None


class LpBasisCache:
    """Optimal LP bases of recent solves, keyed by the LP's structure (its sizes and sparsity
    pattern, `CompiledModel.structure_key`), so parameter-only changes reuse the last basis.

    A re-plan whose model has the same structure (same horizon length, fleet, receptors, budget
    masks, commitment groups) starts its LP relaxation from the previous optimal basis instead of
    from scratch; the LP optimum is the same, the simplex path much shorter (measured on the
    SYNTHETIC 288 × 24-group LP, shifted one interval with prices ±10 %: 3.8 s → 0.26 s). Owned by
    the caller (the control loop keeps one), never global. A degenerate LP may end at another,
    equally optimal vertex, so a warm schedule may differ from a cold one within the gap."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._bases: OrderedDict[str, highspy.HighsBasis] = OrderedDict()

    def get(self, key: str) -> highspy.HighsBasis | None:
        basis = self._bases.get(key)
        if basis is not None:
            self._bases.move_to_end(key)
        return basis

    def put(self, key: str, basis: highspy.HighsBasis) -> None:
        self._bases[key] = basis
        self._bases.move_to_end(key)
        while len(self._bases) > self.max_entries:
            self._bases.popitem(last=False)

    def __len__(self) -> int:
        return len(self._bases)


def compile_to_highs(model: pyo.ConcreteModel, problem: Problem) -> CompiledModel:
    """Translate the Pyomo model into a highspy LP (integrality is set later, see `solve_lp_round_mip`).

    Each constraint body and the objective are read with Pyomo's linear walker (the one behind its
    LP and NL writers), rows are passed to HiGHS in one call. This replaces appsi's persistent
    interface, whose per-constraint `generate_standard_repn` walk cost more than building the model."""
    with PauseGC():
        return _compile(model, problem)


def _flat_row(body: object, order: dict[int, int]) -> tuple[list[int], list[float], float] | None:
    """(columns, coefficients, constant) of a body built by `_linear` (a LinearExpression of
    float·Var monomials and float constants, each variable once); None for anything else, which
    then goes through Pyomo's linear walker."""
    if body.__class__ is not LinearExpression:
        return None
    columns, coefficients, constant = [], [], 0.0
    for arg in body.args:
        if arg.__class__ is MonomialTermExpression:
            coefficient, var = arg._args_
            if coefficient.__class__ is not float or var.fixed:
                return None
            columns.append(order[id(var)])
            coefficients.append(coefficient)
        elif arg.__class__ is float:
            constant += arg
        else:
            return None
    if len(set(columns)) != len(columns):
        return None
    return columns, coefficients, constant


_BANNER_SHOWN = False


def _new_highs() -> highspy.Highs:
    """A HiGHS instance. The first one in a process prints HiGHS's copyright banner on stdout before
    any option can silence it; it is sent to /dev/null so `hashflex plan` output stays clean."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    _BANNER_SHOWN = True
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _compile(model: pyo.ConcreteModel, problem: Problem) -> CompiledModel:
    columns = list(model.component_data_objects(pyo.Var, active=True, descend_into=True))
    order = {id(v): i for i, v in enumerate(columns)}
    var_map = {id(v): v for v in columns}
    visitor = LinearRepnVisitor({}, var_recorder=OrderedVarRecorder(var_map, order, None))
    bounds = [v.bounds for v in columns]
    lower = np.array([-math.inf if lb is None else lb for lb, _ in bounds], dtype=float)
    upper = np.array([math.inf if ub is None else ub for _, ub in bounds], dtype=float)

    # Carbon budget rows go to a second block, added to HiGHS after a first LP (see solve_lp_round_mip).
    blocks = {False: ([0], [], [], [], []), True: ([0], [], [], [], [])}  # starts, index, value, lower, upper
    carbon = getattr(model, "carbon_budget", None)
    for con in model.component_data_objects(pyo.Constraint, active=True, descend_into=True):
        lb, body, ub = con.to_bounded_expression(evaluate_bounds=True)
        row = _flat_row(body, order)
        if row is None:
            repn = visitor.walk_expression(body)
            if repn.nonlinear is not None:
                raise ValueError(f"constraint {con.name} is not linear")
            scale = repn.multiplier
            row = ([order[vid] for vid in repn.linear], [c * scale for c in repn.linear.values()],
                   repn.constant * scale)
        row_columns, coefficients, constant = row
        starts, index, value, row_lower, row_upper = blocks[carbon is not None and con.parent_component() is carbon]
        index.extend(row_columns)
        value.extend(coefficients)
        starts.append(len(index))
        row_lower.append(-math.inf if lb is None else lb - constant)
        row_upper.append(math.inf if ub is None else ub - constant)
    objective = next(model.component_data_objects(pyo.Objective, active=True))
    obj = visitor.walk_expression(objective.expr)
    if obj.nonlinear is not None:
        raise ValueError("objective is not linear")
    cost = np.zeros(len(columns))
    for vid, c in obj.linear.items():
        cost[order[vid]] += c * obj.multiplier

    highs = _new_highs()
    _set_option(highs, "output_flag", False)
    n_cols = len(columns)
    highs.addVars(n_cols, lower, upper)
    highs.changeColsCost(n_cols, np.arange(n_cols, dtype=np.int32), cost)
    highs.changeObjectiveOffset(float(obj.constant * obj.multiplier))
    highs.changeObjectiveSense(highspy.ObjSense.kMaximize if objective.sense == pyo.maximize
                               else highspy.ObjSense.kMinimize)
    main, deferred = ({"starts": b[0], "index": b[1], "value": b[2], "lower": b[3], "upper": b[4]}
                      for b in (blocks[False], blocks[True]))
    RowBlock.from_lists(main["lower"], main["upper"], main["starts"], main["index"], main["value"]).add_to(highs)
    count_columns = {(g, m): np.array([order[id(model.n[g, m, t])] for t in range(problem.T)], dtype=np.int32)
                     for g, group in enumerate(problem.groups) for m in range(len(group.modes))}
    all_starts = main["starts"] + [main["starts"][-1] + k for k in deferred["starts"][1:]]
    key = structure_key(n_cols, np.array(all_starts, dtype=np.int64),
                        np.array(main["index"] + deferred["index"], dtype=np.int64))
    late = (RowBlock.from_lists(deferred["lower"], deferred["upper"], deferred["starts"], deferred["index"],
                                deferred["value"]) if deferred["lower"] else None)
    return CompiledModel(highs, columns, lower, upper, count_columns, key, late)


def structure_key(n_cols: int, starts: np.ndarray, index: np.ndarray) -> str:
    """Digest of an LP's shape and row-wise sparsity pattern (not its numbers)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.array([n_cols, len(starts)], dtype=np.int64).tobytes())
    digest.update(np.asarray(starts, dtype=np.int64).tobytes())
    digest.update(np.asarray(index, dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RunOutcome:
    """What `solve_lp_round_mip` found: status, objective, bound, the column values, and how."""

    status: SolveStatus | None  # None: nothing usable (the caller falls back)
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    x: np.ndarray | None = None
    message: str = ""


def _set_option(highs: highspy.Highs, name: str, value: float | bool) -> None:
    """Set a HiGHS option; a value HiGHS rejects (a negative time limit) raises instead of being ignored."""
    if highs.setOptionValue(name, value) == highspy.HighsStatus.kError:
        raise ValueError(f"HiGHS rejected option {name}={value!r}")


def _set_lp_time_limit(highs: highspy.Highs, seconds: float) -> None:
    """HiGHS compares an LP's time limit with its run clock, which accumulates over every run of
    the instance (a MIP run measures its own), so the next LP gets ``seconds`` beyond the clock."""
    _set_option(highs, "time_limit", highs.getRunTime() + seconds)


def relative_gap(objective: float, bound: float) -> float:
    return abs(bound - objective) / max(abs(objective), 1e-9)


def solve_lp_round_mip(compiled: CompiledModel, problem: Problem, *, time_limit_s: float,
                       rel_gap: float, basis_cache: LpBasisCache | None = None) -> RunOutcome:
    """LP relaxation → rounding (rounding.py) → either proof that the rounded start is within
    ``rel_gap`` of the LP bound (done, no branch and bound) or a MIP warm-started from it.

    The rounded start is completed by one LP with the counts fixed (solved from scratch: with the
    counts fixed, presolve all but solves it, where a hot start from the relaxation's basis took
    thousands of iterations): its objective is the start's value, and since the LP optimum bounds the
    MIP optimum, |LP − start|/|start| <= rel_gap proves the start optimal within the gap.
    With a ``basis_cache``, the LP starts from the last optimal basis of the same structure."""
    deadline = time.perf_counter() + time_limit_s
    highs = compiled.highs
    _set_lp_time_limit(highs, float(time_limit_s))
    basis = basis_cache.get(compiled.structure_key) if basis_cache is not None else None
    if compiled.deferred is not None and basis is None:
        # Cold: first the LP without the carbon budget rows, which couple the whole horizon and
        # make every simplex iteration several times dearer; then the dual simplex, hot-started,
        # repairs what adding them violates. Same LP, same optimum (SYNTHETIC 288 × 48: 12 s → 7 s).
        highs.run()
        _set_lp_time_limit(highs, max(deadline - time.perf_counter(), 0.1))
    if compiled.deferred is not None:
        compiled.deferred.add_to(highs)
        compiled.deferred = None
    if basis is not None and highs.setBasis(basis) == highspy.HighsStatus.kError:
        log.warning("cached LP basis rejected; solving the LP relaxation cold")
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return RunOutcome(None, message=f"LP relaxation: {highs.modelStatusToString(highs.getModelStatus())}")
    if basis_cache is not None:
        basis_cache.put(compiled.structure_key, highs.getBasis())
    lp_bound = highs.getInfo().objective_function_value
    x_lp = np.array(highs.getSolution().col_value)
    keys = list(compiled.count_columns)
    lp_counts = {key: x_lp[compiled.count_columns[key]] for key in keys}
    rounded = round_lp_counts(problem, lp_counts)
    cols = np.concatenate([compiled.count_columns[key] for key in keys]).astype(np.int32)
    fixed = np.concatenate([rounded[key] for key in keys]).astype(float)

    highs.changeColsBounds(len(cols), cols, fixed, fixed)
    _set_lp_time_limit(highs, max(deadline - time.perf_counter(), 0.1))
    highs.clearSolver()  # from scratch: presolve removes the fixed counts and all but solves the rest
    highs.run()
    start = None
    if highs.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        start = np.array(highs.getSolution().col_value)
        start_objective = highs.getInfo().objective_function_value
        if relative_gap(start_objective, lp_bound) <= rel_gap:
            return RunOutcome(SolveStatus.OPTIMAL, start_objective, lp_bound,
                              relative_gap(start_objective, lp_bound), start,
                              "rounded LP start within the gap of the LP bound")
    highs.changeColsBounds(len(cols), cols, compiled.lower[cols], compiled.upper[cols])
    highs.changeColsIntegrality(len(cols), cols, np.full(len(cols), highspy.HighsVarType.kInteger))
    _set_option(highs, "mip_rel_gap", float(rel_gap))
    _set_option(highs, "time_limit", max(deadline - time.perf_counter(), 0.1))
    if start is not None:
        solution = highspy.HighsSolution()
        solution.col_value = start.tolist()
        highs.setSolution(solution)
    else:  # the valuing LP ran out of time: HiGHS completes the rounded counts itself
        highs.setSolution(len(cols), cols, fixed)
    highs.run()
    model_status = highs.getModelStatus()
    info = highs.getInfo()
    if info.primal_solution_status != highspy.SolutionStatus.kSolutionStatusFeasible:
        return RunOutcome(None, message=f"solver: {highs.modelStatusToString(model_status)}, no incumbent")
    objective = info.objective_function_value
    bound = info.mip_dual_bound
    gap = relative_gap(objective, bound) if math.isfinite(bound) else None
    if model_status == highspy.HighsModelStatus.kOptimal:
        status = SolveStatus.OPTIMAL
    elif model_status == highspy.HighsModelStatus.kTimeLimit:
        status = SolveStatus.TIME_LIMIT
    else:
        status = SolveStatus.FEASIBLE_GAP
    return RunOutcome(status, objective, bound if math.isfinite(bound) else None, gap,
                      np.array(highs.getSolution().col_value), highs.modelStatusToString(model_status))


@dataclass(frozen=True)
class _Solved:
    """The MILP's answer before it becomes a Schedule: integer counts, SolveInfo and the model's
    grid import; or, when HiGHS failed, the greedy fallback's finished Schedule."""

    counts: dict[tuple[int, int], np.ndarray] | None = None
    info: SolveInfo | None = None
    import_kw: np.ndarray | None = None
    fallback: Schedule | None = None


def _solve(problem: Problem, time_limit_s: float, rel_gap: float, basis_cache: LpBasisCache | None) -> _Solved:
    from hashflex.optimize.fallback import greedy_schedule

    started = time.perf_counter()
    try:
        model = build_model(problem)
        built = time.perf_counter()
        compiled = compile_to_highs(model, problem)
        outcome = solve_lp_round_mip(compiled, problem, time_limit_s=time_limit_s, rel_gap=rel_gap,
                                     basis_cache=basis_cache)
    except Exception as exc:  # solver crash or missing binary: never leave the site unplanned
        log.exception("HiGHS failed; using the greedy fallback")
        return _Solved(fallback=greedy_schedule(problem, reason=f"solver error: {exc}"))
    solved = time.perf_counter()
    if outcome.status is None:
        return _Solved(fallback=greedy_schedule(problem, reason=outcome.message))
    for var, x in zip(compiled.columns, outcome.x):
        var.set_value(float(x), skip_validation=True)
    counts = extract_counts(model, problem)
    import_kw = np.array([model.grid_import_kw[t].value for t in range(problem.T)], dtype=float)
    info = SolveInfo(
        status=outcome.status,
        objective_usd=outcome.objective,
        bound_usd=outcome.bound,
        gap=outcome.gap,
        build_seconds=built - started,
        solve_seconds=solved - built,
        penalties=_penalties(model),
        message=outcome.message,
    )
    return _Solved(counts, info, import_kw)


def _solve_appsi(problem: Problem, time_limit_s: float, rel_gap: float) -> _Solved:
    """The same model and the same LP → rounding → warm-started MIP, through Pyomo's own persistent
    HiGHS interface (``pyomo.contrib.appsi``). Kept selectable and tested against the direct route:
    it is the interface Pyomo maintains, at ~2-5x the solve time here (its expression walk)."""
    from pyomo.contrib.appsi.base import TerminationCondition
    from pyomo.contrib.appsi.solvers import Highs

    from hashflex.optimize.fallback import greedy_schedule

    started = time.perf_counter()
    try:
        model = build_model(problem)
        built = time.perf_counter()
        solver = Highs()
        solver.config.time_limit = time_limit_s
        solver.config.load_solution = False
        solver.highs_options = {"mip_rel_gap": rel_gap, "output_flag": False}
        for var in model.n.values():
            var.domain = pyo.NonNegativeReals
        relaxation = solver.solve(model)
        if relaxation.termination_condition != TerminationCondition.optimal:
            return _Solved(fallback=greedy_schedule(problem, reason=f"LP relaxation: {relaxation.termination_condition.name}"))
        relaxation.solution_loader.load_vars()
        lp_counts = {(g, m): np.array([model.n[g, m, t].value or 0.0 for t in range(problem.T)])
                     for g, group in enumerate(problem.groups) for m in range(len(group.modes))}
        for (g, m), values in round_lp_counts(problem, lp_counts).items():
            for t in range(problem.T):
                model.n[g, m, t].set_value(int(values[t]))
        for var in model.n.values():
            var.domain = pyo.NonNegativeIntegers
        solver.config.warmstart = True
        solver.config.time_limit = max(time_limit_s - (time.perf_counter() - built), 0.1)
        results = solver.solve(model)
    except Exception as exc:  # solver crash: never leave the site unplanned
        log.exception("HiGHS (appsi) failed; using the greedy fallback")
        return _Solved(fallback=greedy_schedule(problem, reason=f"solver error: {exc}"))
    solved = time.perf_counter()
    objective = results.best_feasible_objective
    if objective is None:
        return _Solved(fallback=greedy_schedule(problem, reason=f"solver: {results.termination_condition.name}, no incumbent"))
    results.solution_loader.load_vars()
    bound = results.best_objective_bound
    gap = relative_gap(objective, bound) if bound is not None and math.isfinite(bound) else None
    status = {TerminationCondition.optimal: SolveStatus.OPTIMAL,
              TerminationCondition.maxTimeLimit: SolveStatus.TIME_LIMIT}.get(results.termination_condition,
                                                                             SolveStatus.FEASIBLE_GAP)
    info = SolveInfo(status=status, objective_usd=objective, bound_usd=bound, gap=gap,
                     build_seconds=built - started, solve_seconds=solved - built,
                     penalties=_penalties(model), message=f"appsi: {results.termination_condition.name}")
    import_kw = np.array([model.grid_import_kw[t].value for t in range(problem.T)], dtype=float)
    return _Solved(extract_counts(model, problem), info, import_kw)


SOLVER_INTERFACES = ("direct", "appsi")


def solve(problem: Problem, *, time_limit_s: float = 10.0, rel_gap: float = DEFAULT_REL_GAP,
          basis_cache: LpBasisCache | None = None, interface: str = "direct") -> Schedule:
    """Build, solve the LP relaxation, warm-start the MILP from its rounded-down counts (or stop
    there when the LP bound proves the start within ``rel_gap``), and return a Schedule whose status
    says how good it is (or the greedy fallback's). ``basis_cache``: see `LpBasisCache`.

    ``interface``: ``"direct"`` (default) hands the Pyomo model's rows, as Pyomo's linear
    representation produces them, to HiGHS in one call; ``"appsi"`` goes through Pyomo's persistent
    HiGHS interface. Same model, same HiGHS, same procedure; see optimization/FORMULATION.md."""
    if interface not in SOLVER_INTERFACES:
        raise ValueError(f"interface must be one of {SOLVER_INTERFACES}, got {interface!r}")
    if interface == "appsi":
        solved = _solve_appsi(problem, time_limit_s, rel_gap)
    else:
        solved = _solve(problem, time_limit_s, rel_gap, basis_cache)
    if solved.fallback is not None:
        return solved.fallback
    return schedule_from_counts(problem, solved.counts, solved.info, import_kw=solved.import_kw)


def _penalties(model: pyo.ConcreteModel) -> dict[str, float]:
    """Soft-constraint shortfalls the schedule pays for (reported, never hidden)."""
    out = {}
    if hasattr(model, "min_on_short"):
        out["min_on_units_short"] = float(sum(pyo.value(v) for v in model.min_on_short.values()))
    if hasattr(model, "min_off_excess"):
        out["min_off_units_early"] = float(sum(pyo.value(v) for v in model.min_off_excess.values()))
    if hasattr(model, "ramp_short_kw"):
        out["ramp_down_kw_over"] = float(sum(pyo.value(v) for v in model.ramp_short_kw.values()))
    return {k: v for k, v in out.items() if v > 1e-6}


def solve_multiresolution(problem: Problem, *, fine_intervals: int, block_h: float = 1.0,
                          time_limit_s: float = 10.0, rel_gap: float = DEFAULT_REL_GAP,
                          basis_cache: LpBasisCache | None = None) -> Schedule:
    """Plan the first ``fine_intervals`` at the base interval and the rest in ``block_h`` blocks,
    then expand back to one row per base interval. Only the near term is dispatched before the
    next re-plan, so the far term needs to be right in aggregate, not interval by interval."""
    coarse, block_of = coarsen(problem, fine_intervals, block_h)
    if coarse is problem:
        return solve(problem, time_limit_s=time_limit_s, rel_gap=rel_gap, basis_cache=basis_cache)
    solved = _solve(coarse, time_limit_s, rel_gap, basis_cache)
    if solved.fallback is not None:
        return expand_to_base(solved.fallback, problem, block_of)
    # As expand_to_base does from a coarse Schedule, without building (and explaining) that one.
    counts = {key: values[block_of] for key, values in solved.counts.items()}
    return schedule_from_counts(problem, counts, solved.info)
