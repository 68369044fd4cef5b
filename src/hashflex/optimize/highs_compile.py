"""The Pyomo model compiled straight into HiGHS: rows and columns read from Pyomo's own linear
representation (``LinearRepnVisitor``) and passed in one ``addRows`` call per block, plus the LP
basis cache that warm-starts re-plans. Split from ``milp`` (the model's definition) and
``optimize.solve`` (the LP → rounding → MIP procedure); see optimization/FORMULATION.md."""

from __future__ import annotations

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


def _set_option(highs: highspy.Highs, name: str, value: float | bool) -> None:
    """Set a HiGHS option; a value HiGHS rejects (a negative time limit) raises instead of being ignored."""
    if highs.setOptionValue(name, value) == highspy.HighsStatus.kError:
        raise ValueError(f"HiGHS rejected option {name}={value!r}")
