"""The Pyomo model compiled straight into HiGHS: rows and columns read from Pyomo's own linear
representation (``LinearRepnVisitor``) and passed in one ``addRows`` call per block, plus the LP
basis cache that warm-starts re-plans. Split from ``milp`` (the model's definition) and
``optimize.solve`` (the LP → rounding → MIP procedure); see optimization/FORMULATION.md."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.common.gc_manager import PauseGC
from pyomo.core.expr.numeric_expr import LinearExpression, MonomialTermExpression
from pyomo.repn.linear import LinearRepnVisitor
from pyomo.repn.util import OrderedVarRecorder

from hashflex.optimize.milp import extract_counts  # noqa: F401 - used by callers compiling a built model
from hashflex.optimize.problem import Problem

log = logging.getLogger(__name__)

@dataclass
class RowBlock:
    """Rows in HiGHS's row-wise form: bounds, starts, column indices, coefficients."""

    lower: np.ndarray
    upper: np.ndarray
    starts: np.ndarray
    index: np.ndarray
    value: np.ndarray

    @classmethod
    def from_lists(cls, lower: list, upper: list, starts: list, index: list, value: list) -> RowBlock:
        """Rows from Python lists (``starts`` with its closing entry, which HiGHS does not take)."""
        return cls(np.array(lower, dtype=float), np.array(upper, dtype=float), np.array(starts[:-1], dtype=np.int32),
                   np.array(index, dtype=np.int32), np.array(value, dtype=float))

    def split(self, at: int) -> tuple[RowBlock, RowBlock]:
        """(rows ``[0, at)``, rows ``[at, n)``) as two blocks, in order; ``0 <= at <= n``."""
        n = len(self.lower)
        if not 0 <= at <= n:
            raise ValueError(f"split at row {at} of a block of {n} rows")
        cut = int(self.starts[at]) if at < n else len(self.index)
        head = RowBlock(self.lower[:at], self.upper[:at], self.starts[:at].copy(), self.index[:cut], self.value[:cut])
        tail = RowBlock(self.lower[at:], self.upper[at:], (self.starts[at:] - cut).astype(np.int32),
                        self.index[cut:], self.value[cut:])
        return head, tail

    def add_to(self, highs: highspy.Highs) -> None:
        """Add these rows to ``highs`` in one ``addRows`` call (nothing if there are none)."""
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
    # Rows that couple intervals (commitment and ramp, `DEFERRED_ROW_FAMILIES`), added after a
    # first LP without them: see `solve_lp_round_mip`. None once added (or if there are none).
    deferred: RowBlock | None = None
    # For in-place re-plans (`update_in_place`): the Pyomo model the rows came from, and where each
    # variable and constraint landed: component name -> {Pyomo index: column / row}.
    model: pyo.ConcreteModel | None = None
    col_at: dict[str, dict] | None = None
    row_at: dict[str, dict] | None = None
    # `update_in_place`'s slot arrays per call site, built at the first update (see `_Updates._at`).
    slots: dict = dataclasses.field(default_factory=dict, repr=False)


class LpBasisCache:
    """Optimal LP bases of recent solves, keyed by the LP's structure (its sizes and sparsity
    pattern, `CompiledModel.structure_key`), so parameter-only changes reuse the last basis; and
    the last compiled model(s), keyed by `template_key`, so a re-plan of the same structure updates
    costs, bounds and right-hand sides in place (`update_in_place`) instead of rebuilding.

    A re-plan whose model has the same structure (same horizon length, fleet, receptors, budget
    masks, commitment groups) starts its LP relaxation from the previous optimal basis instead of
    from scratch; the LP optimum is the same, the simplex path much shorter (measured on the
    SYNTHETIC 288 × 24-group LP, shifted one interval with prices ±10 %: 3.8 s → 0.26 s). Owned by
    the caller (the control loop keeps one), never global. A degenerate LP may end at another,
    equally optimal vertex, so a warm schedule may differ from a cold one within the gap."""

    def __init__(self, max_entries: int = 4, max_models: int = 2) -> None:
        self.max_entries = max_entries
        self.max_models = max_models
        self._bases: OrderedDict[str, highspy.HighsBasis] = OrderedDict()
        self._models: OrderedDict[str, CompiledModel] = OrderedDict()

    def take_model(self, template: str) -> CompiledModel | None:
        """The compiled model kept for ``template``, removed from the cache while in use (a solve
        that raises half-way never leaves a half-updated model behind); None if there is none."""
        return self._models.pop(template, None)

    def put_model(self, template: str, compiled: CompiledModel) -> None:
        """Keep ``compiled`` (after a successful solve) for the next re-plan of the same template.
        A model without slot maps (the benchmarks' bare build) is not kept."""
        if self.max_models <= 0 or compiled.col_at is None or compiled.row_at is None:
            return
        self._models[template] = compiled
        self._models.move_to_end(template)
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)

    def get(self, key: str) -> highspy.HighsBasis | None:
        """The cached basis for structure ``key`` (marked most recent), or None."""
        basis = self._bases.get(key)
        if basis is not None:
            self._bases.move_to_end(key)
        return basis

    def put(self, key: str, basis: highspy.HighsBasis) -> None:
        """Keep ``basis`` for structure ``key``, dropping the least recent beyond ``max_entries``."""
        self._bases[key] = basis
        self._bases.move_to_end(key)
        while len(self._bases) > self.max_entries:
            self._bases.popitem(last=False)

    def __len__(self) -> int:
        return len(self._bases)


# Row families that link interval t to its neighbours (clustered unit commitment and the ramp): a
# cold LP is solved first without them, then they are added and the dual simplex, hot-started,
# repairs what they cut off. Same LP, same optimum, reached 1.5-3.8x faster on the SYNTHETIC
# benchmark problems (288 x 48: 7.4 s -> 1.5 s of CPU), because the first LP then falls apart
# into one small problem per interval linked only by the carbon budget row, and its optimum
# already meets most commitment rows. (The carbon budget rows were deferred before: with the
# commitment rows in, adding the dense carbon row made every dual simplex iteration ~10x dearer.)
DEFERRED_ROW_FAMILIES = frozenset({"transition", "min_on", "min_off", "ramp_up", "ramp_down"})
# Of the deferred rows, the transition rows (which define starts and stops) are added first and
# the LP re-solved, then the rest (min on/off, ramp). The min on/off rows only bind through the
# starts and stops, which are free (0) until the transition rows exist; added together, the dual
# simplex repairs both at once at a higher cost. Same LP, same optimum; measured (CPU s of the
# deferred stages, Devex, medians of 5, shared machine): panhandle-like 288 × 48 2.14 → 1.38,
# SYNTHETIC 288 × 48 0.54 → 0.55 (no change). Both builds put the transition rows first in the
# deferred block (`deferred_stages` checks it and otherwise adds the block whole).
FIRST_DEFERRED_FAMILY = "transition"


def deferred_stages(compiled: CompiledModel, n_rows: int) -> list[RowBlock]:
    """``compiled.deferred`` as the blocks to add one after the other, in row order: the
    `FIRST_DEFERRED_FAMILY` rows and the rest when those lead the block (the row numbers in
    ``compiled.row_at`` then hold as added), else the block whole. ``n_rows``: the rows already in
    the HiGHS model (the main block). [] when nothing is deferred."""
    late = compiled.deferred
    if late is None:
        return []
    first = (compiled.row_at or {}).get(FIRST_DEFERRED_FAMILY, {})
    rows = np.fromiter(first.values(), dtype=np.int64, count=len(first)) - n_rows
    n = len(late.lower)
    if rows.size == 0 or rows.size == n or rows.min() != 0 or rows.max() != rows.size - 1:
        return [late]
    return list(late.split(rows.size))


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
    col_at: dict[str, dict] = {}
    for i, v in enumerate(columns):
        col_at.setdefault(v.parent_component().local_name, {})[v.index()] = i
    row_slots: list[tuple[str, object, bool, int]] = []  # (component, index, deferred?, row in block)
    var_map = {id(v): v for v in columns}
    visitor = LinearRepnVisitor({}, var_recorder=OrderedVarRecorder(var_map, order, None))
    bounds = [v.bounds for v in columns]
    lower = np.array([-math.inf if lb is None else lb for lb, _ in bounds], dtype=float)
    upper = np.array([math.inf if ub is None else ub for _, ub in bounds], dtype=float)

    # Rows coupling intervals go to a second block, added to HiGHS after a first LP (see solve_lp_round_mip).
    blocks = {False: ([0], [], [], [], []), True: ([0], [], [], [], [])}  # starts, index, value, lower, upper
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
        family = con.parent_component().local_name
        is_late = family in DEFERRED_ROW_FAMILIES
        starts, index, value, row_lower, row_upper = blocks[is_late]
        row_slots.append((family, con.index(), is_late, len(row_lower)))
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
    n_main = len(main["lower"])
    row_at: dict[str, dict] = {}
    for name, index_, is_late, k in row_slots:
        row_at.setdefault(name, {})[index_] = n_main + k if is_late else k
    return CompiledModel(highs, columns, lower, upper, count_columns, key, late, model, col_at, row_at)


def structure_key(n_cols: int, starts: np.ndarray, index: np.ndarray) -> str:
    """Digest of an LP's shape and row-wise sparsity pattern (not its numbers)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.array([n_cols, len(starts)], dtype=np.int64).tobytes())
    digest.update(np.asarray(starts, dtype=np.int64).tobytes())
    digest.update(np.asarray(index, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _set_option(highs: highspy.Highs, name: str, value: float | bool) -> None:
    """Set a HiGHS option; a value HiGHS rejects (a negative time limit) raises instead of being ignored."""
    if highs.setOptionValue(name, value) == highspy.HighsStatus.kError:
        raise ValueError(f"HiGHS rejected option {name}={value!r}")


# ---------------------------------------------------------------------------------------------
# Re-plans update, not rebuild (issue 18). Between two re-plans of the same site only prices,
# limits, availability, renewables, intensity and the initial state change: the numbers of the LP,
# not its shape. `template_key` digests everything that shapes the matrix (sizes, durations,
# fleet, noise coefficients, budget masks, which optional rows exist); two problems with equal
# keys differ only in costs, column bounds, row bounds and the carbon rows' coefficients, which
# `update_in_place` writes into the kept HiGHS model. `milp.build_model` stays the definition:
# tests/test_inplace_update.py checks, on random changes, that the updated LP equals a fresh
# compile of the Pyomo model (every cost, bound and coefficient) and solves to the same optimum.
# ---------------------------------------------------------------------------------------------


def _noise_rows(problem: Problem) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Per receptor, as `milp.define_noise_caps`: (scale, [T] budget, [G·M] scaled unit energy)."""
    out = []
    for receptor in problem.receptors:
        budget = receptor.energy_budget()
        finite = budget[np.isfinite(budget)]
        scale = 1.0 / max(float(finite.max()) if finite.size else 1.0, 1.0)
        coefficients = np.array([receptor.unit_energy(group.id, mode) * scale
                                 for group in problem.groups for mode in group.modes], dtype=float)
        out.append((scale, budget, coefficients))
    return out


# Problem fields `update_in_place` knows (it writes their numbers, or `template_key` digests them).
# Any other field (reserves, compute, whatever comes next) must be empty for an in-place update:
# otherwise `template_key` is None and the model is rebuilt, so a new constraint family is never
# silently left with the numbers of the previous plan.
_UPDATABLE_FIELDS = frozenset({
    "interval_start", "duration_h", "price_usd_mwh", "price_adder_usd_mwh", "hashprice_usd_per_ph_day",
    "pool_fee", "groups", "renewable_kw", "import_limit_kw", "import_limit_source", "export_limit_kw",
    "receptors", "intensity_kg_per_mwh", "carbon_price_usd_per_t", "carbon_budgets", "ramp_limit_kw_per_h",
    "initial_load_kw", "base_interval_h", "notes", "reserves",
})
# Pyomo components `update_in_place` writes (or whose numbers never change: penalties, stop).
_UPDATABLE_COMPONENTS = frozenset({
    "n", "grid_import_kw", "renewable_used_kw", "export_kw", "start", "stop", "min_on_short", "min_off_excess",
    "ramp_short_kw", "availability", "energy_balance", "renewable_split", "noise_cap", "carbon_budget",
    "transition", "min_on", "min_off", "ramp_up", "ramp_down",
    "reserve_kw", "reserve_short_kw", "reserve_sheddable", "reserve_cap", "reserve_obligation",  # issue 15
})


def template_key(problem: Problem) -> str | None:
    """Digest of what shapes ``problem``'s LP matrix (not its costs or bounds): horizon length and
    interval durations; per group its id, size, modes, idle power, commitment parameters and
    whether initial min-on/off batches exist; noise coefficients and which intervals are capped;
    carbon budget masks and which intervals have zero intensity; whether ramp rows exist.
    None when the problem uses a field `update_in_place` does not handle (compute, power-off, derates):
    such a problem is always built afresh."""
    for field_ in dataclasses.fields(problem):
        if field_.name not in _UPDATABLE_FIELDS and getattr(problem, field_.name):
            return None
    digest = hashlib.blake2b(digest_size=16)

    def put(*items: object) -> None:
        digest.update(repr(items).encode())

    put(problem.T, np.asarray(problem.duration_h, dtype=float).tobytes())
    for group in problem.groups:
        # Initial min-on/off batches shape the rows only of a group that has no min on/off time of
        # its own (with one, its min_on/min_off rows exist anyway and the batches are their bounds).
        put(group.id, group.units, group.modes, group.idle_power_kw, group.min_on_h, group.min_off_h,
            bool(group.start_cost_usd), bool(group.min_on_h or group.initial.must_stay_on),
            bool(group.min_off_h or group.initial.must_stay_off))
    for (scale, budget, coefficients), receptor in zip(_noise_rows(problem), problem.receptors):
        put(receptor.id, scale, coefficients.tobytes(), np.isfinite(budget).tobytes())
    # A carbon budget is one row over the import columns; which intervals it covers (its mask, which
    # slides one interval per re-plan of a rolling horizon across a day boundary) and which have zero
    # intensity are its coefficients, written by `update_in_place`: only whether the row exists
    # (a non-empty mask) shapes the LP. (Digesting the mask made every 15-minute re-plan of a site
    # with a daily budget a rebuild: 96 of 96 on west_texas, issue 18.)
    put(tuple(bool(np.any(budget.mask)) for budget in problem.carbon_budgets))
    put(problem.ramp_limit_kw_per_h is None, problem.initial_load_kw is None)
    # issue 15: which (product, group) pairs carry reserve and which intervals have a finite cap shape
    # the rows; prices, caps, obligations and group maxima are written by update_in_place.
    put(tuple((r.name, tuple(sorted(r.group_max_kw)), np.isfinite(np.asarray(r.max_kw, dtype=float)).tobytes())
              for r in getattr(problem, "reserves", ())))
    return digest.hexdigest()


class _Updates:
    """Index/value arrays gathered family by family, written to HiGHS in one call per kind."""

    def __init__(self, compiled: CompiledModel) -> None:
        self.compiled = compiled
        self.cost: list[tuple[np.ndarray, np.ndarray]] = []
        self.col_bounds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.row_bounds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _at(self, table: dict[str, dict] | None, name: str, keys: list) -> np.ndarray:
        # Every problem a kept model is updated with has its template, and under one template each
        # call site's keys are fixed by (family, count, first key): all T intervals, or the capped
        # ones of one receptor or product (fixed by the template too), of one group/receptor/
        # product/budget named by the first key. So the slots are looked up once per model, not
        # per re-plan (~T dict lookups per family: a third of an update, issue 18).
        memo = (table is self.compiled.col_at, name, len(keys), keys[0] if keys else None)
        slots = self.compiled.slots.get(memo)
        if slots is None:
            at = table.get(name, {}) if table is not None else {}
            slots = np.fromiter((at[k] for k in keys), dtype=np.int32, count=len(keys))
            self.compiled.slots[memo] = slots
        return slots

    def columns(self, name: str, keys: list, lower: np.ndarray | float, upper: np.ndarray | float,
                cost: np.ndarray | float | None = None) -> None:
        if not keys:
            return
        cols = self._at(self.compiled.col_at, name, keys)
        lower, upper = (np.broadcast_to(np.asarray(v, dtype=float), cols.shape) for v in (lower, upper))
        self.col_bounds.append((cols, lower, upper))
        if cost is not None:
            self.cost.append((cols, np.broadcast_to(np.asarray(cost, dtype=float), cols.shape)))

    def rows(self, name: str, keys: list, lower: np.ndarray | float, upper: np.ndarray | float) -> None:
        if not keys:
            return
        rows = self._at(self.compiled.row_at, name, keys)
        self.row_bounds.append((rows, *(np.broadcast_to(np.asarray(v, dtype=float), rows.shape)
                                        for v in (lower, upper))))

    def apply(self) -> None:
        highs = self.compiled.highs
        if self.cost:
            cols, cost = (np.concatenate(parts) for parts in zip(*self.cost))
            highs.changeColsCost(len(cols), cols, cost)
        if self.col_bounds:
            cols, lower, upper = (np.concatenate(parts) for parts in zip(*self.col_bounds))
            highs.changeColsBounds(len(cols), cols, lower, upper)
            self.compiled.lower[cols] = lower
            self.compiled.upper[cols] = upper
        if self.row_bounds:
            rows, lower, upper = (np.concatenate(parts) for parts in zip(*self.row_bounds))
            highs.changeRowsBounds(len(rows), rows, lower, upper)


def update_in_place(compiled: CompiledModel, problem: Problem) -> None:
    """Write ``problem``'s costs, column bounds, row bounds and carbon coefficients into the kept
    HiGHS model ``compiled`` (compiled from a problem with the same `template_key`), and make its
    count columns continuous again for the next LP relaxation. Mirrors `milp.build_model` family by
    family (each line names the Pyomo component it updates); the deferred rows (commitment, ramp)
    must already be in the model (``compiled.deferred is None``, as after any `solve_lp_round_mip`).

    Raises ValueError if the model cannot be updated (never compiled from Pyomo, or rows still
    deferred); KeyError if a slot is missing (a template mismatch): the caller rebuilds."""
    from hashflex.optimize.milp import (  # noqa: F401
        _emission_factors,
        _initial_batches,
        _window_starts,
    )

    if compiled.col_at is None or compiled.row_at is None or compiled.deferred is not None:
        raise ValueError("compiled model cannot be updated in place (no slot maps, or rows still deferred)")
    unknown = (set(compiled.col_at) | set(compiled.row_at)) - _UPDATABLE_COMPONENTS
    if unknown:
        raise ValueError(f"compiled model cannot be updated in place: components {sorted(unknown)} "
                         "are not handled by update_in_place")
    T = problem.T
    ts = list(range(T))
    dt = np.asarray(problem.duration_h, dtype=float)
    groups = problem.groups
    u = _Updates(compiled)

    # n[g,m,t]: bounds (0, available[g,t]); profit Δt·H[g,m]·hashprice[t]·(1 − fee)
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    for g, group in enumerate(groups):
        available = np.asarray(group.units_available, dtype=float)
        for m, mode in enumerate(group.modes):
            cols = compiled.count_columns[g, m]
            u.col_bounds.append((cols, np.zeros(T), available))
            u.cost.append((cols, mode.hashrate_th_s * dt * hp))
    # grid_import_kw[t], renewable_used_kw[t], export_kw
    carbon_usd_per_kg = problem.carbon_price_usd_per_t / 1000.0
    kg_per_kw = _emission_factors(problem)
    u.columns("grid_import_kw", ts, 0.0, problem.effective_import_limit_kw,
              -(problem.energy_price_usd_mwh * dt / 1000.0 + carbon_usd_per_kg * kg_per_kw))
    u.columns("renewable_used_kw", ts, 0.0, problem.renewable_kw)
    u.columns("export_kw", ts, 0.0, float(problem.export_limit_kw), problem.price_usd_mwh * dt / 1000.0)
    # availability[g,t] <= available; energy_balance[t] == −standby[t]; renewable_split[t] <= renewable
    standby = np.zeros(T)
    for g, group in enumerate(groups):
        available = np.asarray(group.units_available, dtype=float)
        u.rows("availability", [(g, t) for t in ts], -math.inf, available)
        standby += group.idle_power_kw * available
    u.rows("energy_balance", ts, -standby, -standby)
    u.rows("renewable_split", ts, -math.inf, problem.renewable_kw)
    # noise_cap[r,t] <= scaled budget (capped intervals only: the template fixes which)
    noise_at = compiled.row_at.get("noise_cap", {})
    for r, (scale, budget, _) in enumerate(_noise_rows(problem)):
        capped = [t for t in ts if (r, t) in noise_at]
        u.rows("noise_cap", [(r, t) for t in capped], -math.inf, budget[capped] * scale)
    # carbon_budget[b] <= effective budget; coefficients kg_per_kw[t] on the budget's intervals and
    # 0 elsewhere (HiGHS drops an entry set to 0, as the fresh build leaves it out): the mask slides
    # with the horizon and the intensity forecast changes.
    carbon_at = compiled.row_at.get("carbon_budget", {})
    import_at = compiled.col_at["grid_import_kw"]
    for b, budget in enumerate(problem.carbon_budgets):
        if b not in carbon_at:
            if np.any(budget.mask):  # a budget the kept model has no row for: never drop it silently
                raise KeyError(f"carbon budget {b} ({budget.name}) has no row in the kept model")
            continue
        u.rows("carbon_budget", [b], -math.inf, problem.effective_carbon_budget_kg(budget))
        coefficients = np.where(np.asarray(budget.mask, dtype=bool), kg_per_kw, 0.0)
        for t in ts:
            compiled.highs.changeCoeff(carbon_at[b], import_at[t], float(coefficients[t]))
    # commitment: start cost; transition[g,0] == −units_on; min_on >= held_on; min_off <= N − held_off
    for g in sorted({g for g, _ in compiled.row_at.get("transition", {})}):  # the commitment groups (model.UC)
        group = groups[g]
        u.columns("start", [(g, t) for t in ts], 0.0, math.inf, -group.start_cost_usd)
        rhs = np.zeros(T)
        rhs[0] = -float(group.initial.units_on)
        u.rows("transition", [(g, t) for t in ts], rhs, rhs)
    for g in {g for g, _ in compiled.row_at.get("min_on", {})}:
        u.rows("min_on", [(g, t) for t in ts], _initial_batches(problem, g, "must_stay_on"), math.inf)
    for g in {g for g, _ in compiled.row_at.get("min_off", {})}:
        u.rows("min_off", [(g, t) for t in ts], -math.inf,
               groups[g].units - _initial_batches(problem, g, "must_stay_off"))
    # ramp_up/ramp_down[t] <= R·Δt[t] − sign·(standby[t] − standby[t−1] or initial load)
    if problem.ramp_limit_kw_per_h is not None:
        ramp_ts = ts if problem.initial_load_kw is not None else ts[1:]
        previous = np.concatenate([[problem.initial_load_kw or 0.0], standby[:-1]])[ramp_ts]
        step = standby[ramp_ts] - previous
        for name, sign in (("ramp_up", 1.0), ("ramp_down", -1.0)):
            u.rows(name, ramp_ts, -math.inf, problem.ramp_limit_kw_per_h * dt[ramp_ts] - sign * step)
    # reserve_kw[p,g,t]: bounds (0, group max), value Δt·(MCPC − deployed share of the margin);
    # reserve_short_kw[p,t]: −penalty; reserve_cap[p,t] <= max_kw (finite ones: the template fixes which);
    # reserve_obligation[p,t] >= award. reserve_sheddable rows have constant bounds (<= 0).
    if getattr(problem, "reserves", ()):
        from hashflex.optimize.milp import (
            _reserve_index,
            reserve_short_penalty_usd_per_kw,
            reserve_value_usd_per_kw,
        )

        for p, g in _reserve_index(problem):
            reserve = problem.reserves[p]
            u.columns("reserve_kw", [(p, g, t) for t in ts], 0.0,
                      float(reserve.group_max_kw[groups[g].id]), reserve_value_usd_per_kw(problem, p, g))
        penalty = reserve_short_penalty_usd_per_kw(problem)
        cap_at = compiled.row_at.get("reserve_cap", {})
        for p, reserve in enumerate(problem.reserves):
            u.columns("reserve_short_kw", [(p, t) for t in ts], 0.0, math.inf, -penalty)
            capped = [t for t in ts if (p, t) in cap_at]
            u.rows("reserve_cap", [(p, t) for t in capped], -math.inf, np.asarray(reserve.max_kw, dtype=float)[capped])
            u.rows("reserve_obligation", [(p, t) for t in ts], np.asarray(reserve.obligation_kw, dtype=float), math.inf)
    u.apply()
    # The last run left a MIP incumbent and integrality behind: start the next LP from a clean slate
    # (the LP basis comes from the LpBasisCache).
    compiled.highs.clearSolver()
    cols = np.concatenate(list(compiled.count_columns.values())).astype(np.int32)
    compiled.highs.changeColsIntegrality(len(cols), cols, np.full(len(cols), highspy.HighsVarType.kContinuous))
