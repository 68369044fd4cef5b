"""The schedule MILP of `hashflex.optimize.milp`, built directly in highspy from numpy arrays.

This is the yardstick for Pyomo's overhead in `solve_scaling.py`: the same columns, rows and
objective as `milp.build_model` (see optimization/FORMULATION.md), written as coordinate triplets
per constraint family with numpy and handed to `highspy.Highs` in one `addVars` and one `addRows`.
It is solved with the very same procedure (`milp.solve_lp_round_mip`: LP relaxation → rounding →
proof by the LP bound or warm-started MIP), so only the build differs.
`tests/test_bare_highspy_equivalence.py` checks that both builds give the same LP optimum and the
same MIP objective within the gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import numpy as np

from hashflex.optimize.solve import (
    DEFAULT_REL_GAP,
    PENALTY_MIN_ON_USD_PER_UNIT,
    PENALTY_RAMP_USD_PER_KW,
    CompiledModel,
    RowBlock,
    RunOutcome,
    solve_lp_round_mip,
)
from hashflex.optimize.problem import Problem


class _Rows:
    """Coordinate triplets and row bounds, appended one constraint family at a time."""

    def __init__(self) -> None:
        self.n_rows = 0
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lower: list[np.ndarray] = []
        self.upper: list[np.ndarray] = []

    def family(self, lower: np.ndarray, upper: np.ndarray) -> int:
        """Reserve len(lower) rows; returns the first row index."""
        first = self.n_rows
        self.n_rows += len(lower)
        self.lower.append(np.asarray(lower, dtype=float))
        self.upper.append(np.asarray(upper, dtype=float))
        return first

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | float) -> None:
        rows, cols, vals = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
                                               np.asarray(vals, dtype=float))
        self.rows.append(rows.ravel())
        self.cols.append(cols.ravel())
        self.vals.append(vals.ravel())

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rows = np.concatenate(self.rows)
        cols = np.concatenate(self.cols)
        vals = np.concatenate(self.vals)
        keep = vals != 0.0
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        order = np.lexsort((cols, rows))
        starts = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.n_rows))[:-1]])
        return (np.concatenate(self.lower), np.concatenate(self.upper), starts.astype(np.int32),
                cols[order].astype(np.int32), vals[order])


@dataclass
class BareModel:
    """The bare highspy model: the HiGHS instance, its columns' bounds and the count columns."""
    compiled: CompiledModel
    n_cols: int
    n_rows: int
    nnz: int


def _window_starts(starts_h: np.ndarray, hours: float) -> np.ndarray:
    return np.searchsorted(starts_h, starts_h - hours + 1e-9, side="right")


def build_bare(problem: Problem) -> BareModel:
    """The MILP's LP relaxation as a highspy model; count columns are made integer by the solve."""
    problem.validate()
    T = problem.T
    t_idx = np.arange(T)
    groups = problem.groups
    gm = [(g, m) for g, group in enumerate(groups) for m in range(len(group.modes))]
    GM = len(gm)
    gm_group = np.array([g for g, _ in gm])
    power = np.array([groups[g].modes[m].power_kw for g, m in gm])
    idle = np.array([groups[g].idle_power_kw for g, _ in gm])
    hashrate = np.array([groups[g].modes[m].hashrate_th_s for g, m in gm])
    avail = np.array([group.units_available for group in groups], dtype=float).reshape(len(groups), T)
    starts_h = np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])

    # Columns, family by family.
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    cost: list[np.ndarray] = []
    offset = 0

    def columns(lb: np.ndarray, ub: np.ndarray, c: np.ndarray) -> np.ndarray:
        nonlocal offset
        index = offset + np.arange(lb.size).reshape(lb.shape)
        offset += lb.size
        lower.append(lb.ravel())
        upper.append(ub.ravel())
        cost.append(np.broadcast_to(c, lb.shape).ravel())
        return index

    dt = problem.duration_h
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    kg_per_kw = dt * problem.intensity_kg_per_mwh / 1000.0
    n = columns(np.zeros((GM, T)), avail[gm_group], hashrate[:, None] * dt[None, :] * hp[None, :])
    imp = columns(np.zeros(T), problem.effective_import_limit_kw.astype(float),
                  -(problem.energy_price_usd_mwh * dt / 1000.0 + problem.carbon_price_usd_per_t / 1000.0 * kg_per_kw))
    ren = columns(np.zeros(T), problem.renewable_kw.astype(float), np.zeros(T))
    exp = columns(np.zeros(T), np.full(T, float(problem.export_limit_kw)), problem.price_usd_mwh * dt / 1000.0)

    uc = [g for g, group in enumerate(groups) if group.min_on_h or group.min_off_h or group.start_cost_usd]
    on_groups = [g for g in uc if groups[g].min_on_h or groups[g].initial.must_stay_on]
    off_groups = [g for g in uc if groups[g].min_off_h or groups[g].initial.must_stay_off]
    U = len(uc)
    start = columns(np.zeros((U, T)), np.full((U, T), np.inf),
                    -np.array([groups[g].start_cost_usd for g in uc])[:, None] * np.ones((U, T)))
    stop = columns(np.zeros((U, T)), np.full((U, T), np.inf), np.zeros((U, T)))
    short = columns(np.zeros((len(on_groups), T)), np.full((len(on_groups), T), np.inf),
                    np.full((len(on_groups), T), -PENALTY_MIN_ON_USD_PER_UNIT))
    excess = columns(np.zeros((len(off_groups), T)), np.full((len(off_groups), T), np.inf),
                     np.full((len(off_groups), T), -PENALTY_MIN_ON_USD_PER_UNIT))
    ramp = None
    if problem.ramp_limit_kw_per_h is not None:
        ramp = columns(np.zeros(T), np.full(T, np.inf), np.full(T, -PENALTY_RAMP_USD_PER_KW))

    rows = _Rows()
    # availability: Σ_m n[g,m,t] <= avail[g,t]
    first = rows.family(np.full(avail.size, -np.inf), avail.ravel())
    rows.add(first + gm_group[:, None] * T + t_idx[None, :], n, 1.0)
    # energy balance: Σ (P − P_idle)·n − import − renewable_used = −Σ_g P_idle·avail
    standby = (np.array([group.idle_power_kw for group in groups])[:, None] * avail).sum(axis=0)
    first = rows.family(-standby, -standby)
    rows.add(first + np.broadcast_to(t_idx, (GM, T)), n, (power - idle)[:, None])
    rows.add(first + t_idx, imp, -1.0)
    rows.add(first + t_idx, ren, -1.0)
    # renewable split: renewable_used + export <= renewable
    first = rows.family(np.full(T, -np.inf), problem.renewable_kw)
    rows.add(first + t_idx, ren, 1.0)
    rows.add(first + t_idx, exp, 1.0)
    # noise caps, scaled per receptor
    for receptor in problem.receptors:
        budget = receptor.energy_budget()
        finite = budget[np.isfinite(budget)]
        scale = 1.0 / max(float(finite.max()) if finite.size else 1.0, 1.0)
        coef = np.array([receptor.unit_energy(groups[g].id, groups[g].modes[m]) for g, m in gm]) * scale
        capped = np.flatnonzero(np.isfinite(budget)) if np.any(coef) else np.array([], dtype=int)
        first = rows.family(np.full(capped.size, -np.inf), budget[capped] * scale)
        rows.add(first + np.broadcast_to(np.arange(capped.size), (GM, capped.size)), n[:, capped], coef[:, None])
    # carbon budgets: a separate block, added after a first LP as milp.compile_to_highs does
    carbon_rows = _Rows()
    for budget in problem.carbon_budgets:
        members = np.flatnonzero(budget.mask)
        if members.size == 0:
            continue
        first = carbon_rows.family(np.array([-np.inf]), np.array([problem.effective_carbon_budget_kg(budget)]))
        carbon_rows.add(np.full(members.size, first), imp[members], kg_per_kw[members])
    # unit commitment: start − stop − on[t] + on[t−1] = 0 (t=0: = −on0)
    if U:
        rhs = np.zeros((U, T))
        rhs[:, 0] = [-float(groups[g].initial.units_on) for g in uc]
        first = rows.family(rhs.ravel(), rhs.ravel())
        rows.add(first + np.arange(U * T), start.ravel(), 1.0)
        rows.add(first + np.arange(U * T), stop.ravel(), -1.0)
        for u, g in enumerate(uc):
            for k in np.flatnonzero(gm_group == g):
                rows.add(first + u * T + t_idx, n[k], -1.0)
                rows.add(first + u * T + t_idx[1:], n[k, :-1], 1.0)

    def held(g: int, attr: str) -> np.ndarray:
        out = np.zeros(T)
        for hours_left, units in getattr(groups[g].initial, attr):
            out += np.where(starts_h < hours_left - 1e-9, units, 0)
        return out

    def window_entries(first_row: int, i: int, g: int, hours: float, cols: np.ndarray, sign: float) -> None:
        if not hours:
            return
        begin = _window_starts(starts_h, hours)
        for lag in range(int((t_idx - begin).max()) + 1):
            t_in = t_idx[(t_idx - lag >= begin)]
            rows.add(first_row + i * T + t_in, cols[uc.index(g), t_in - lag], sign)

    # min-on (soft): on[t] + short[t] − Σ_window start >= held_on
    if on_groups:
        lb = np.concatenate([held(g, "must_stay_on") for g in on_groups])
        first = rows.family(lb, np.full(lb.size, np.inf))
        for i, g in enumerate(on_groups):
            for k in np.flatnonzero(gm_group == g):
                rows.add(first + i * T + t_idx, n[k], 1.0)
            rows.add(first + i * T + t_idx, short[i], 1.0)
            window_entries(first, i, g, groups[g].min_on_h, start, -1.0)
    # min-off (soft): on[t] + Σ_window stop − excess <= N − held_off
    if off_groups:
        ub = np.concatenate([groups[g].units - held(g, "must_stay_off") for g in off_groups])
        first = rows.family(np.full(ub.size, -np.inf), ub)
        for i, g in enumerate(off_groups):
            for k in np.flatnonzero(gm_group == g):
                rows.add(first + i * T + t_idx, n[k], 1.0)
            rows.add(first + i * T + t_idx, excess[i], -1.0)
            window_entries(first, i, g, groups[g].min_off_h, stop, 1.0)
    # ramp (soft, both directions): ±(load[t] − load[t−1]) − ramp_over <= R·Δt
    if ramp is not None:
        ts = t_idx if problem.initial_load_kw is not None else t_idx[1:]
        step_const = standby[ts] - np.where(ts > 0, standby[np.maximum(ts - 1, 0)],
                                             problem.initial_load_kw or 0.0)
        for sign in (1.0, -1.0):
            first = rows.family(np.full(ts.size, -np.inf),
                                problem.ramp_limit_kw_per_h * dt[ts] - sign * step_const)
            local = np.arange(ts.size)
            rows.add(first + np.broadcast_to(local, (GM, ts.size)), n[:, ts], sign * (power - idle)[:, None])
            later = ts > 0
            rows.add(first + np.broadcast_to(local[later], (GM, later.sum())), n[:, ts[later] - 1],
                     -sign * (power - idle)[:, None])
            rows.add(first + local, ramp[ts], -1.0)

    row_lower, row_upper, starts, index, value = rows.csr()
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    col_lower, col_upper, col_cost = np.concatenate(lower), np.concatenate(upper), np.concatenate(cost)
    highs.addVars(offset, col_lower, col_upper)
    highs.changeColsCost(offset, np.arange(offset, dtype=np.int32), col_cost)
    highs.changeObjectiveSense(highspy.ObjSense.kMaximize)
    highs.addRows(rows.n_rows, row_lower, row_upper, len(index), starts, index, value)
    count_columns = {key: n[i].astype(np.int32) for i, key in enumerate(gm)}
    deferred = None
    if carbon_rows.n_rows:
        deferred = RowBlock(*carbon_rows.csr())
    compiled = CompiledModel(highs, [], col_lower, col_upper, count_columns, deferred=deferred)
    nnz = len(index) + (len(deferred.index) if deferred is not None else 0)
    return BareModel(compiled, offset, rows.n_rows + carbon_rows.n_rows, nnz)


@dataclass(frozen=True)
class BareResult:
    """A bare build and solve: the outcome and the build / solve times (s)."""
    outcome: RunOutcome
    build_seconds: float
    solve_seconds: float
    counts: dict[tuple[int, int], np.ndarray]


def solve_bare(problem: Problem, *, time_limit_s: float = 10.0, rel_gap: float = DEFAULT_REL_GAP) -> BareResult:
    """Build in bare highspy and solve with the same LP → rounding → MIP procedure as `milp.solve`."""
    started = time.perf_counter()
    bare = build_bare(problem)
    built = time.perf_counter()
    outcome = solve_lp_round_mip(bare.compiled, problem, time_limit_s=time_limit_s, rel_gap=rel_gap)
    solved = time.perf_counter()
    counts = {}
    if outcome.x is not None:
        counts = {key: np.rint(outcome.x[cols]).astype(int) for key, cols in bare.compiled.count_columns.items()}
    return BareResult(outcome, built - started, solved - built, counts)
