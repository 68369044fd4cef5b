"""Solving the schedule model: LP relaxation → rounding → a proof within the gap or a warm-started
MIP (``solve_lp_round_mip``), the multiresolution grid, Pyomo's appsi route, and the greedy fallback
when HiGHS fails. ``solve(problem)`` is the entry point the loop, ``plan``, the backtest and
``evaluate`` use (through ``control.solver.SolveRunner``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import pyomo.environ as pyo

from hashflex.optimize.fast_build import compile_fast, fast_buildable
from hashflex.optimize.highs_compile import (  # noqa: F401 - re-exported for the solve API
    CompiledModel,
    LpBasisCache,
    RowBlock,
    _new_highs,
    _set_option,
    compile_to_highs,
    deferred_stages,
    structure_key,
    template_key,
    update_in_place,
)
from hashflex.optimize.milp import (  # noqa: F401
    DEFAULT_REL_GAP,
    PENALTY_MIN_ON_USD_PER_UNIT,
    PENALTY_RAMP_USD_PER_KW,
    build_model,
    extract_counts,
)
from hashflex.optimize.problem import Problem, coarsen
from hashflex.optimize.rounding import round_lp_counts
from hashflex.optimize.schedule import (
    Schedule,
    SolveInfo,
    SolveStatus,
    expand_to_base,
    schedule_from_counts,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunOutcome:
    """What `solve_lp_round_mip` found: status, objective, bound, the column values, and how."""

    status: SolveStatus | None  # None: nothing usable (the caller falls back)
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    x: np.ndarray | None = None
    message: str = ""


def _set_lp_time_limit(highs: highspy.Highs, seconds: float) -> None:
    """HiGHS compares an LP's time limit with its run clock, which accumulates over every run of
    the instance (a MIP run measures its own), so the next LP gets ``seconds`` beyond the clock."""
    _set_option(highs, "time_limit", highs.getRunTime() + seconds)


# The dual simplex's edge weights for the cold path's second LP (the first LP's optimal basis with
# the deferred rows added): Devex (1) instead of HiGHS's choice (-1), dual steepest edge, whose
# exact weights for that basis cost more than they save here (57k rows at 288 × 48). Same LP, same
# optimum; measured (CPU s of that LP alone, medians of 3, shared machine): SYNTHETIC 288 × 48
# 0.90 → 0.60, panhandle-like 4.08 → 1.88. Not used elsewhere: the first (cold) LP took
# 0.86 → 1.4 s with Devex; a re-plan from a cached optimal basis 0.51 → 0.63 s (solve() CPU,
# SYNTHETIC 288 × 48, medians of 7); the valuing LP and the MIP keep HiGHS's choice too.
HOT_START_DUAL_EDGE_WEIGHTS = 1
_HIGHS_CHOOSES_EDGE_WEIGHTS = -1


def _run_with_option(highs: highspy.Highs, option: str | None, value: object = None, default: object = None) -> None:
    """Run HiGHS, with ``option`` set to ``value`` for this run only (``default`` put back after it,
    also when the run raises); ``option`` None: run as set."""
    if option is None:
        highs.run()
        return
    _set_option(highs, option, value)
    try:
        highs.run()
    finally:
        _set_option(highs, option, default)


def _run_lp(highs: highspy.Highs, *, hot_start: bool) -> None:
    """Run the LP relaxation; ``hot_start`` (the cold path's second LP, from the first one's basis)
    with `HOT_START_DUAL_EDGE_WEIGHTS`, HiGHS's own choice being put back afterwards."""
    _run_with_option(highs, "simplex_dual_edge_weight_strategy" if hot_start else None,
                     HOT_START_DUAL_EDGE_WEIGHTS, _HIGHS_CHOOSES_EDGE_WEIGHTS)


# HiGHS's presolve for the LP that values the rounded start (the counts fixed): off. Measured
# (CPU s of that LP, medians of 3, shared machine): SYNTHETIC 288 × 48 0.180 → 0.070 (536 simplex
# iterations), panhandle-like 0.134 → 0.061, same objective: presolve's own passes over the 98k
# columns cost more than the few hundred iterations it saves. Put back to HiGHS's default
# ("choose") for the MIP, whose presolve matters. Not for a site with GPU compute: its continuous
# workloads (batch jobs movable within their windows) leave that LP many optimal vertices, and
# without presolve HiGHS picked another one (the batch job not started in the first interval:
# tests/test_compute_control.py), so those plans keep HiGHS's default.
VALUING_LP_PRESOLVE = "off"
_HIGHS_DEFAULT_PRESOLVE = "choose"


def _run_valuing_lp(highs: highspy.Highs, *, presolve_off: bool) -> None:
    """Run the LP with the counts fixed; with ``presolve_off``, presolve `VALUING_LP_PRESOLVE`
    for that run, HiGHS's default put back after it."""
    _run_with_option(highs, "presolve" if presolve_off else None, VALUING_LP_PRESOLVE, _HIGHS_DEFAULT_PRESOLVE)


def relative_gap(objective: float, bound: float) -> float:
    """|bound − objective| / |objective| (objective floored at 1e-9 in magnitude), in $ / $."""
    return abs(bound - objective) / max(abs(objective), 1e-9)


def solve_lp_round_mip(compiled: CompiledModel, problem: Problem, *, time_limit_s: float,
                       rel_gap: float, basis_cache: LpBasisCache | None = None) -> RunOutcome:
    """LP relaxation → rounding (rounding.py) → either proof that the rounded start is within
    ``rel_gap`` of the LP bound (done, no branch and bound) or a MIP warm-started from it.

    The rounded start is completed by one LP with the counts fixed (solved from scratch, presolve
    off, `VALUING_LP_PRESOLVE`: a few hundred iterations, where a hot start from the relaxation's
    basis took thousands): its objective is the start's value, and since the LP optimum bounds the
    MIP optimum, |LP − start|/|start| <= rel_gap proves the start optimal within the gap.
    With a ``basis_cache``, the LP starts from the last optimal basis of the same structure."""
    deadline = time.perf_counter() + time_limit_s
    highs = compiled.highs
    _set_lp_time_limit(highs, float(time_limit_s))
    basis = basis_cache.get(compiled.structure_key) if basis_cache is not None else None
    hot_start = False
    if compiled.deferred is not None and basis is None:
        # Cold: first the LP without the rows that couple intervals (commitment, ramp:
        # `DEFERRED_ROW_FAMILIES`), which then falls apart by interval except for the carbon
        # budget; then the dual simplex, hot-started, repairs what adding them violates. Same LP,
        # same optimum (SYNTHETIC 288 × 48, LP alone: 7.4 s → 1.5 s of CPU; deferring the carbon
        # rows instead, as before, took 12 s → 7 s).
        highs.run()
        hot_start = highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
        _set_lp_time_limit(highs, max(deadline - time.perf_counter(), 0.1))
        # The deferred rows in stages (`highs_compile.FIRST_DEFERRED_FAMILY` first), each LP
        # hot-started from the last; the last stage is added below.
        *early, last = deferred_stages(compiled, highs.getNumRow())
        for stage in early:
            stage.add_to(highs)
            _run_lp(highs, hot_start=hot_start)
            hot_start = hot_start and highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
            _set_lp_time_limit(highs, max(deadline - time.perf_counter(), 0.1))
        compiled.deferred = last
    if compiled.deferred is not None:
        compiled.deferred.add_to(highs)
        compiled.deferred = None
    if basis is not None and highs.setBasis(basis) == highspy.HighsStatus.kError:
        log.warning("cached LP basis rejected; solving the LP relaxation cold")
    _run_lp(highs, hot_start=hot_start)
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
    highs.clearSolver()  # from scratch (a hot start from the relaxation's basis took thousands of iterations)
    _run_valuing_lp(highs, presolve_off=getattr(problem, "compute", None) is None)
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
    if highs.getInfo().primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible \
            and not _solution_matches_objective(highs):
        # Seen with highspy 1.16: given a start, a MIP solved in presolve reports the better
        # objective but hands back the start's column values (the plan then ran fewer units than
        # the solver said). Solve again without the start; the answer's values are then its own.
        log.warning("HiGHS solution vector does not match its objective; re-solving the MIP without the start")
        _set_option(highs, "time_limit", max(deadline - time.perf_counter(), 0.1))
        highs.clearSolver()
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
    outcome = RunOutcome(status, objective, bound if math.isfinite(bound) else None, gap,
                         np.array(highs.getSolution().col_value), highs.modelStatusToString(model_status))
    return _hold_reserve_obligations(compiled, problem, outcome, rel_gap=rel_gap, deadline=deadline)


def _hold_reserve_obligations(compiled: CompiledModel, problem: Problem, outcome: RunOutcome, *,
                              rel_gap: float, deadline: float) -> RunOutcome:
    """Issue 15: an award is a hard obligation where the limits allow it, but the MILP holds it
    through a soft row whose few kW short cost cents, far inside the gap: the incumbent HiGHS
    returns may keep a product a unit short of its own groups (1,891 S19j units, 4,897.7 kW, for a
    4,900 kW Non-Spin award on 8 May 2024). So its counts get `rounding.cover_reserve_obligations`,
    and when that added units, the LP with the counts fixed re-values them (every hard row
    re-checked); its objective replaces the incumbent's, with the gap to the same bound. If that LP
    is not optimal, the incumbent is kept and the shortfall stays in the schedule's
    ``reserve_<p>_short_kw``. The count columns get their bounds back either way."""
    from hashflex.optimize.rounding import cover_reserve_obligations

    if not getattr(problem, "reserves", ()) or outcome.x is None:
        return outcome
    keys = list(compiled.count_columns)
    counts = {key: np.rint(outcome.x[compiled.count_columns[key]]).astype(int) for key in keys}
    added = cover_reserve_obligations(problem, counts)
    if not added:
        return outcome
    highs = compiled.highs
    cols = np.concatenate([compiled.count_columns[key] for key in keys]).astype(np.int32)
    fixed = np.concatenate([counts[key] for key in keys]).astype(float)
    highs.changeColsBounds(len(cols), cols, fixed, fixed)
    _set_lp_time_limit(highs, max(deadline - time.perf_counter(), 0.5))
    highs.clearSolver()
    highs.run()
    repaired = None
    status = highs.modelStatusToString(highs.getModelStatus())
    if highs.getModelStatus() == highspy.HighsModelStatus.kOptimal and _solution_matches_objective(highs):
        repaired = (np.array(highs.getSolution().col_value), highs.getInfo().objective_function_value)
    highs.changeColsBounds(len(cols), cols, compiled.lower[cols], compiled.upper[cols])
    if repaired is None:
        log.warning("reserve cover of the MILP answer (%d units) not valued (%s); kept the incumbent", added, status)
        return dataclasses.replace(outcome, message=f"{outcome.message}; reserve cover of {added} units "
                                                    f"not valued ({status}), shortfall kept")
    x, objective = repaired
    gap = relative_gap(objective, outcome.bound) if outcome.bound is not None else None
    status = outcome.status
    if status == SolveStatus.OPTIMAL and (gap is None or gap > rel_gap):
        status = SolveStatus.FEASIBLE_GAP
    return RunOutcome(status, objective, outcome.bound, gap, x,
                      f"{outcome.message}; {added} units added so every award is held by its own groups")


def _solution_matches_objective(highs: highspy.Highs, rel_tol: float = 1e-7) -> bool:
    """True when the column values HiGHS returns give the objective it reports (c·x + offset)."""
    lp = highs.getLp()
    x = np.asarray(highs.getSolution().col_value, dtype=float)
    if x.size == 0:
        return False
    value = float(np.dot(np.asarray(lp.col_cost_, dtype=float), x)) + float(lp.offset_)
    reported = float(highs.getInfo().objective_function_value)
    return abs(value - reported) <= rel_tol * max(1.0, abs(reported))


@dataclass(frozen=True)
class _Solved:
    """The MILP's answer before it becomes a Schedule: integer counts, SolveInfo and the model's
    grid import; or, when HiGHS failed, the greedy fallback's finished Schedule."""

    counts: dict[tuple[int, int], np.ndarray] | None = None
    info: SolveInfo | None = None
    import_kw: np.ndarray | None = None
    fallback: Schedule | None = None
    compute: Any = None  # optimize.compute.ComputeDispatch: the GPU plan of a site with compute
    powered_off: Any = None  # group id -> [T] units powered off at the PDU (issue 17, H4)


def _compiled_for(problem: Problem, basis_cache: LpBasisCache | None
                  ) -> tuple[CompiledModel, pyo.ConcreteModel, str | None]:
    """The HiGHS model for ``problem``: the one kept in ``basis_cache`` for the same `template_key`,
    updated in place (costs, bounds, right-hand sides; no Pyomo build), or a fresh build: from numpy
    arrays (`fast_build.compile_fast`, the same LP as the Pyomo compile) when the problem uses only
    the core families, else the Pyomo build and compile. Returns (compiled, its Pyomo model or None,
    template key or None without a cache). A kept model that cannot be updated is dropped and the
    problem built afresh (logged, never fatal)."""
    template = template_key(problem) if basis_cache is not None else None
    kept = basis_cache.take_model(template) if template is not None else None
    if kept is not None:
        problem.validate()  # as build_model does: bad input raises here too, never reaches HiGHS
        try:
            update_in_place(kept, problem)
            return kept, kept.model, template
        except (KeyError, ValueError, IndexError):
            log.warning("kept HiGHS model could not be updated in place; rebuilding", exc_info=True)
    if fast_buildable(problem):  # the core families: the same LP from numpy arrays, no Pyomo model
        return compile_fast(problem), None, template
    model = build_model(problem)
    return compile_to_highs(model, problem), model, template


def _solve(problem: Problem, time_limit_s: float, rel_gap: float, basis_cache: LpBasisCache | None) -> _Solved:
    from hashflex.optimize.fallback import greedy_schedule

    started = time.perf_counter()
    try:
        compiled, model, template = _compiled_for(problem, basis_cache)
        built = time.perf_counter()
        outcome = solve_lp_round_mip(compiled, problem, time_limit_s=time_limit_s, rel_gap=rel_gap,
                                     basis_cache=basis_cache)
    except Exception as exc:  # solver crash or missing binary: never leave the site unplanned
        log.exception("HiGHS failed; using the greedy fallback")
        return _Solved(fallback=greedy_schedule(problem, reason=f"solver error: {exc}"))
    solved = time.perf_counter()
    if outcome.status is None:
        return _Solved(fallback=greedy_schedule(problem, reason=outcome.message))
    if basis_cache is not None and template is not None:
        basis_cache.put_model(template, compiled)  # only a model that solved is kept for re-plans
    if compiled.col_at is not None:
        # Read the answer by column index (no per-variable Pyomo calls; same values, see
        # `_values_from_columns`); the Pyomo model keeps its definition role.
        counts, import_kw, penalties = _values_from_columns(compiled, problem, outcome.x)
    else:
        for var, x in zip(compiled.columns, outcome.x):
            var.set_value(float(x), skip_validation=True)
        counts = extract_counts(model, problem)
        import_kw = np.array([model.grid_import_kw[t].value for t in range(problem.T)], dtype=float)
        penalties = _penalties(model)
    compute = None
    if getattr(problem, "compute", None) is not None and model is not None:
        # The GPU plan is read from the Pyomo model (compute problems are always built afresh:
        # `template_key` gives them none, so no kept model lacks their columns).
        from hashflex.optimize.compute import extract_dispatch

        for var, x in zip(compiled.columns, outcome.x):
            var.set_value(float(x), skip_validation=True)
        compute = extract_dispatch(model, problem)
    from hashflex.optimize.milp import read_powered_off  # issue 17 (H4)

    powered_off = read_powered_off(model, compiled, problem, outcome.x)
    info = SolveInfo(
        status=outcome.status,
        objective_usd=outcome.objective,
        bound_usd=outcome.bound,
        gap=outcome.gap,
        build_seconds=built - started,
        solve_seconds=solved - built,
        penalties=penalties,
        message=outcome.message,
    )
    return _Solved(counts, info, import_kw, compute=compute, powered_off=powered_off)


_PENALTY_COLUMNS = (("min_on_short", "min_on_units_short"), ("min_off_excess", "min_off_units_early"),
                    ("ramp_short_kw", "ramp_down_kw_over"))


def _values_from_columns(compiled: CompiledModel, problem: Problem, x: np.ndarray
                         ) -> tuple[dict[tuple[int, int], np.ndarray], np.ndarray, dict[str, float]]:
    """(integer counts per (g, m) over T, grid import [T] kW, penalties) read from the solution
    vector by column index, as `extract_counts`, ``grid_import_kw`` and `_penalties` read them
    from the Pyomo model. Raises ValueError on fractional counts (as `extract_counts`)."""
    counts = {}
    for (g, m), cols in compiled.count_columns.items():
        values = x[cols]
        rounded = np.rint(values)
        if np.max(np.abs(values - rounded), initial=0.0) > 1e-4:
            raise ValueError(f"solver returned fractional unit counts for group {problem.groups[g].id}")
        counts[g, m] = rounded.astype(int)
    import_at = compiled.col_at["grid_import_kw"]
    import_kw = x[[import_at[t] for t in range(problem.T)]].astype(float)
    penalties = {}
    for component, name in _PENALTY_COLUMNS:
        if component in compiled.col_at:
            penalties[name] = float(x[list(compiled.col_at[component].values())].sum())
    return counts, import_kw, {k: v for k, v in penalties.items() if v > 1e-6}


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
    message = f"appsi: {results.termination_condition.name}"
    covered = _hold_reserve_obligations_appsi(model, problem, solver)  # issue 15, as the direct route
    if covered is not None:
        objective, added = covered
        gap = relative_gap(objective, bound) if bound is not None and math.isfinite(bound) else None
        if status == SolveStatus.OPTIMAL and (gap is None or gap > rel_gap):
            status = SolveStatus.FEASIBLE_GAP
        message += f"; {added} units added so every award is held by its own groups"
    info = SolveInfo(status=status, objective_usd=objective, bound_usd=bound, gap=gap,
                     build_seconds=built - started, solve_seconds=solved - built,
                     penalties=_penalties(model), message=message)
    import_kw = np.array([model.grid_import_kw[t].value for t in range(problem.T)], dtype=float)
    return _Solved(extract_counts(model, problem), info, import_kw)


def _hold_reserve_obligations_appsi(model: pyo.ConcreteModel, problem: Problem, solver: Any
                                    ) -> tuple[float, int] | None:
    """`_hold_reserve_obligations` for the appsi route: cover the loaded answer's awards product by
    product, fix n to the covered counts and solve again (every hard row re-checked). Returns
    (objective $, units added), or None when nothing was added or the fixed solve found no
    solution (the loaded answer's counts are then put back, its shortfall stated in the schedule)."""
    from pyomo.contrib.appsi.base import TerminationCondition

    from hashflex.optimize.rounding import cover_reserve_obligations

    if not getattr(problem, "reserves", ()):
        return None
    loaded = extract_counts(model, problem)
    counts = {key: values.copy() for key, values in loaded.items()}
    added = cover_reserve_obligations(problem, counts)
    if not added:
        return None
    for (g, m), values in counts.items():
        for t in range(problem.T):
            model.n[g, m, t].fix(int(values[t]))
    try:
        solver.config.warmstart = False
        solver.config.time_limit = max(float(solver.config.time_limit or 0.0), 1.0)
        results = solver.solve(model)
        if results.termination_condition != TerminationCondition.optimal or results.best_feasible_objective is None:
            log.warning("reserve cover of the appsi answer not valued (%s); kept the incumbent",
                        results.termination_condition.name)
            for (g, m), values in loaded.items():  # the fixed solve loaded nothing: put the counts back
                for t in range(problem.T):
                    model.n[g, m, t].set_value(int(values[t]))
            return None
        results.solution_loader.load_vars()
        return float(results.best_feasible_objective), added
    finally:
        for var in model.n.values():
            var.unfix()


SOLVER_INTERFACES = ("direct", "appsi")


def solve(problem: Problem, *, time_limit_s: float = 10.0, rel_gap: float = DEFAULT_REL_GAP,
          basis_cache: LpBasisCache | None = None, interface: str = "direct",
          pool_identical: bool = True) -> Schedule:
    """Build, solve the LP relaxation, warm-start the MILP from its rounded-down counts (or stop
    there when the LP bound proves the start within ``rel_gap``), and return a Schedule whose status
    says how good it is (or the greedy fallback's). ``basis_cache``: see `LpBasisCache`.

    ``interface``: ``"direct"`` (default) hands the Pyomo model's rows, as Pyomo's linear
    representation produces them, to HiGHS in one call; ``"appsi"`` goes through Pyomo's persistent
    HiGHS interface. Same model, same HiGHS, same procedure; see optimization/FORMULATION.md.

    ``pool_identical`` (direct interface): groups that are alike (same modes, idle draw, commitment
    parameters and noise coefficients; `optimize.symmetry`) are solved as one group per class and
    the plan is split back per group before the schedule is computed; the pooled problem's optimum
    bounds the unpooled one, so the reported gap stays a true gap."""
    if interface not in SOLVER_INTERFACES:
        raise ValueError(f"interface must be one of {SOLVER_INTERFACES}, got {interface!r}")
    if interface == "direct" and pool_identical:
        from hashflex.optimize.symmetry import poolable

        if poolable(problem):
            return _solve_pooled(problem, time_limit_s, rel_gap, basis_cache)
    if interface == "appsi":
        solved = _solve_appsi(problem, time_limit_s, rel_gap)
    else:
        solved = _solve(problem, time_limit_s, rel_gap, basis_cache)
    if solved.fallback is not None:
        return solved.fallback
    return schedule_from_counts(problem, solved.counts, solved.info, import_kw=solved.import_kw,
                                compute=solved.compute, powered_off=solved.powered_off)


def _solve_pooled(problem: Problem, time_limit_s: float, rel_gap: float, basis_cache: LpBasisCache | None
                  ) -> Schedule:
    """`solve` with identical groups pooled (`optimize.symmetry`): the pooled problem is solved with
    the same procedure, time limit and gap; its counts are split back per group and the schedule
    is computed on the original problem. A fallback is the original problem's greedy schedule."""
    from hashflex.optimize.fallback import greedy_schedule
    from hashflex.optimize.symmetry import pool_identical_groups, split_counts

    problem.validate()
    pooled, members = pool_identical_groups(problem)
    solved = _solve(pooled, time_limit_s, rel_gap, basis_cache)
    if solved.fallback is not None:
        return greedy_schedule(problem, reason=solved.fallback.info.message)
    try:
        counts = split_counts(problem, members, solved.counts)
    except ValueError as exc:  # never leave the site unplanned
        log.exception("pooled counts could not be split back; using the greedy fallback")
        return greedy_schedule(problem, reason=f"solver error: {exc}")
    note = f"{len(problem.groups)} groups solved as {len(pooled.groups)} classes of identical groups"
    info = dataclasses.replace(solved.info, message=f"{solved.info.message}; {note}" if solved.info.message else note)
    return schedule_from_counts(problem, counts, info, import_kw=solved.import_kw)


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
    next re-plan, so the far term needs to be right in aggregate, not interval by interval.
    Identical groups are pooled on the coarse grid and split back there, as `solve` does."""
    coarse, block_of = coarsen(problem, fine_intervals, block_h)
    if coarse is problem:
        return solve(problem, time_limit_s=time_limit_s, rel_gap=rel_gap, basis_cache=basis_cache)
    from hashflex.optimize.symmetry import pool_identical_groups, poolable, split_counts

    members = None
    if poolable(coarse):  # identical groups pooled, as `solve` does (optimize.symmetry)
        pooled, members = pool_identical_groups(coarse)
        solved = _solve(pooled, time_limit_s, rel_gap, basis_cache)
        if solved.fallback is not None:
            from hashflex.optimize.fallback import greedy_schedule

            return greedy_schedule(problem, reason=solved.fallback.info.message)
    else:
        solved = _solve(coarse, time_limit_s, rel_gap, basis_cache)
    if solved.fallback is not None:
        return expand_to_base(solved.fallback, problem, block_of)
    coarse_counts = split_counts(coarse, members, solved.counts) if members is not None else solved.counts
    # As expand_to_base does from a coarse Schedule, without building (and explaining) that one.
    counts = {key: values[block_of] for key, values in coarse_counts.items()}
    from hashflex.optimize.compute import (
        expand_dispatch,  # issue 16: the GPU plan expands with the counts (H4)
    )

    powered_off = None if solved.powered_off is None else {g: v[block_of] for g, v in solved.powered_off.items()}
    return schedule_from_counts(problem, counts, solved.info, powered_off=powered_off,
                                compute=expand_dispatch(solved.compute, coarse, problem, block_of))
