"""The schedule LP handed to HiGHS straight from numpy arrays, for the problems the core families
cover (no powered-off units, derates, reserves or GPU compute): the same columns, rows, bounds,
costs and coefficients as ``compile_to_highs(build_model(problem))``, in the same order, with the
same slot maps (``col_at`` / ``row_at``, keyed by the Pyomo components' names and indices), so the
solve, the in-place update and the reading of the answer cannot tell them apart.

`milp.build_model` stays the model's definition (and builds every problem this module does not
cover); tests/test_optimize_fast_build.py checks, on random problems, that both give the same LP
entry by entry. Why: one Python object per row and term made Pyomo's build and translation ~2.2 s
of a 24 h × 5 min × 48-group cold solve (98k columns), against ~0.1 s here.
"""

from __future__ import annotations

import dataclasses
import math

import highspy
import numpy as np

from hashflex.optimize.highs_compile import (
    DEFERRED_ROW_FAMILIES,
    CompiledModel,
    RowBlock,
    _new_highs,
    _set_option,
    structure_key,
)
from hashflex.optimize.milp import PENALTY_MIN_ON_USD_PER_UNIT, PENALTY_RAMP_USD_PER_KW, _emission_factors
from hashflex.optimize.problem import Problem

# Problem fields the core families read; any other field set (power_off, derates, reserves,
# compute, whatever comes next) sends the problem through the Pyomo build.
_CORE_FIELDS = frozenset({
    "interval_start", "duration_h", "price_usd_mwh", "price_adder_usd_mwh", "hashprice_usd_per_ph_day",
    "pool_fee", "groups", "renewable_kw", "import_limit_kw", "import_limit_source", "export_limit_kw",
    "receptors", "intensity_kg_per_mwh", "carbon_price_usd_per_t", "carbon_budgets", "ramp_limit_kw_per_h",
    "initial_load_kw", "base_interval_h", "notes",
})


def fast_buildable(problem: Problem) -> bool:
    """True when ``problem`` uses only the core families this module builds."""
    return all(field_.name in _CORE_FIELDS or not getattr(problem, field_.name)
               for field_ in dataclasses.fields(problem))


class _Family:
    """Rows of one constraint family: bounds, and (row, column, value) triplets; rows numbered
    within the family in the Pyomo index order, ``keys`` their Pyomo indices."""

    def __init__(self, name: str, keys: list, lower: np.ndarray, upper: np.ndarray) -> None:
        self.name, self.keys = name, keys
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | float) -> None:
        rows, cols, vals = np.broadcast_arrays(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
                                               np.asarray(vals, dtype=float))
        self.rows.append(rows.ravel())
        self.cols.append(cols.ravel())
        self.vals.append(vals.ravel())


def _block(families: list[_Family]) -> tuple[RowBlock, dict[str, dict]]:
    """Families in order as one row-wise block (zero coefficients dropped, columns ascending in a
    row), and their row positions within it: family name → {Pyomo index: row}."""
    lower, upper, rows, cols, vals, at = [], [], [], [], [], {}
    first = 0
    for family in families:
        n = len(family.keys)
        if n == 0:
            continue
        at[family.name] = dict(zip(family.keys, range(first, first + n)))
        lower.append(family.lower)
        upper.append(family.upper)
        if family.rows:
            rows.append(np.concatenate(family.rows) + first)
            cols.append(np.concatenate(family.cols))
            vals.append(np.concatenate(family.vals))
        first += n
    if not first:
        return RowBlock(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32),
                        np.zeros(0)), at
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0)
    keep = v != 0.0
    r, c, v = r[keep], c[keep], v[keep]
    order = np.lexsort((c, r))
    starts = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=first))[:-1]]).astype(np.int32)
    return RowBlock(np.concatenate(lower), np.concatenate(upper), starts, c[order].astype(np.int32), v[order]), at


def compile_fast(problem: Problem) -> CompiledModel:
    """``compile_to_highs(build_model(problem))`` from numpy arrays, for a `fast_buildable` problem.

    Parameters
    ----------
    problem : Problem
        Validated here (as `build_model` does); only the core families (see `fast_buildable`).

    Returns
    -------
    CompiledModel
        The HiGHS LP (count columns continuous; the interval-coupling rows of
        `DEFERRED_ROW_FAMILIES` in ``deferred``), ``columns`` empty and ``model`` None (no Pyomo
        model), ``col_at`` / ``row_at`` as the Pyomo compile gives them.

    Raises
    ------
    ValueError
        If ``problem`` is invalid (`Problem.validate`) or uses a family this module does not build.
    """
    problem.validate()
    if not fast_buildable(problem):
        raise ValueError("problem uses families only the Pyomo build covers (power_off, derates, reserves, compute)")
    T = problem.T
    t_idx = np.arange(T)
    groups = problem.groups
    gm = [(g, m) for g, group in enumerate(groups) for m in range(len(group.modes))]
    gm_group = np.array([g for g, _ in gm], dtype=int)
    power = np.array([groups[g].modes[m].power_kw for g, m in gm], dtype=float)
    idle = np.array([groups[g].idle_power_kw for g, _ in gm], dtype=float)
    hashrate = np.array([groups[g].modes[m].hashrate_th_s for g, m in gm], dtype=float)
    avail = np.array([np.asarray(group.units_available) for group in groups], dtype=float).reshape(len(groups), T)
    dt = np.asarray(problem.duration_h, dtype=float)
    starts_h = np.concatenate([[0.0], np.cumsum(dt)[:-1]])

    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    cost: list[np.ndarray] = []
    col_at: dict[str, dict] = {}
    offset = 0

    def columns(name: str, keys: list, lb: np.ndarray, ub: np.ndarray, c: np.ndarray | float) -> np.ndarray:
        nonlocal offset
        size = len(keys)
        index = offset + np.arange(size)
        if size:
            col_at[name] = dict(zip(keys, range(offset, offset + size)))
        offset += size
        lower.append(np.broadcast_to(np.asarray(lb, dtype=float), (size,)).ravel())
        upper.append(np.broadcast_to(np.asarray(ub, dtype=float), (size,)).ravel())
        cost.append(np.broadcast_to(np.asarray(c, dtype=float), (size,)).ravel())
        return index

    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    kg_per_kw = _emission_factors(problem)
    # n[g,m,t] (milp.define_unit_counts), in the index order (g, m, t)
    n = columns("n", [(g, m, t) for g, m in gm for t in range(T)], 0.0, avail[gm_group].ravel(),
                (hashrate[:, None] * dt[None, :] * hp[None, :]).ravel()).reshape(len(gm), T)
    # grid_import_kw, renewable_used_kw, export_kw (milp.define_power_balance)
    ts = list(range(T))
    energy_cost = -(problem.energy_price_usd_mwh * dt / 1000.0 + problem.carbon_price_usd_per_t / 1000.0 * kg_per_kw)
    imp = columns("grid_import_kw", ts, 0.0, problem.effective_import_limit_kw, energy_cost)
    ren = columns("renewable_used_kw", ts, 0.0, problem.renewable_kw, 0.0)
    exp = columns("export_kw", ts, 0.0, float(problem.export_limit_kw), problem.price_usd_mwh * dt / 1000.0)
    # commitment columns (milp.define_commitment)
    uc = [g for g, group in enumerate(groups) if group.min_on_h or group.min_off_h or group.start_cost_usd]
    on_groups = [g for g in uc if groups[g].min_on_h or groups[g].initial.must_stay_on]
    off_groups = [g for g in uc if groups[g].min_off_h or groups[g].initial.must_stay_off]
    start_cost = np.repeat([-groups[g].start_cost_usd for g in uc], T)
    start = columns("start", [(g, t) for g in uc for t in ts], 0.0, math.inf, start_cost).reshape(len(uc), T)
    stop = columns("stop", [(g, t) for g in uc for t in ts], 0.0, math.inf, 0.0).reshape(len(uc), T)
    short = columns("min_on_short", [(g, t) for g in on_groups for t in ts], 0.0, math.inf,
                    -PENALTY_MIN_ON_USD_PER_UNIT).reshape(len(on_groups), T)
    excess = columns("min_off_excess", [(g, t) for g in off_groups for t in ts], 0.0, math.inf,
                     -PENALTY_MIN_ON_USD_PER_UNIT).reshape(len(off_groups), T)
    ramp = None
    if problem.ramp_limit_kw_per_h is not None:
        ramp = columns("ramp_short_kw", ts, 0.0, math.inf, -PENALTY_RAMP_USD_PER_KW)

    main: list[_Family] = []
    late: list[_Family] = []
    # availability[g,t]: Σ_m n[g,m,t] <= available[g,t]
    fam = _Family("availability", [(g, t) for g in range(len(groups)) for t in ts], np.full(avail.size, -math.inf),
                  avail.ravel())
    fam.add(gm_group[:, None] * T + t_idx[None, :], n, 1.0)
    main.append(fam)
    # energy_balance[t]: Σ (P − P_idle)·n − import − renewable_used = −Σ_g P_idle·avail
    standby = np.zeros(T)
    for g, group in enumerate(groups):
        standby = standby + group.idle_power_kw * avail[g].astype(int)
    fam = _Family("energy_balance", ts, -standby, -standby)
    fam.add(np.broadcast_to(t_idx, (len(gm), T)), n, (power - idle)[:, None])
    fam.add(t_idx, imp, -1.0)
    fam.add(t_idx, ren, -1.0)
    main.append(fam)
    # renewable_split[t]: renewable_used + export <= renewable
    fam = _Family("renewable_split", ts, np.full(T, -math.inf), problem.renewable_kw)
    fam.add(t_idx, ren, 1.0)
    fam.add(t_idx, exp, 1.0)
    main.append(fam)
    # noise_cap[r,t], scaled per receptor (milp.define_noise_caps), capped intervals only
    keys, ubs, parts = [], [], []
    for r, receptor in enumerate(problem.receptors):
        budget = receptor.energy_budget()
        finite = budget[np.isfinite(budget)]
        scale = 1.0 / max(float(finite.max()) if finite.size else 1.0, 1.0)
        coef = np.array([receptor.unit_energy(groups[g].id, groups[g].modes[m]) * scale for g, m in gm], dtype=float)
        capped = np.flatnonzero(np.isfinite(budget)) if np.any(coef) else np.zeros(0, dtype=int)
        parts.append((len(keys), capped, coef))
        keys += [(r, int(t)) for t in capped]
        ubs += [float(budget[t] * scale) for t in capped]
    fam = _Family("noise_cap", keys, np.full(len(keys), -math.inf), np.array(ubs, dtype=float))
    for first, capped, coef in parts:
        fam.add(first + np.broadcast_to(np.arange(capped.size), (len(gm), capped.size)), n[:, capped], coef[:, None])
    main.append(fam)
    # carbon_budget[b] (milp.define_carbon)
    members_of = [(b, np.flatnonzero(budget.mask)) for b, budget in enumerate(problem.carbon_budgets)]
    members_of = [(b, members) for b, members in members_of if members.size]
    fam = _Family("carbon_budget", [b for b, _ in members_of], np.full(len(members_of), -math.inf),
                  np.array([problem.effective_carbon_budget_kg(problem.carbon_budgets[b]) for b, _ in members_of]))
    for row, (_, members) in enumerate(members_of):
        fam.add(np.full(members.size, row), imp[members], kg_per_kw[members])
    main.append(fam)

    # transition[g,t]: start − stop − on[t] + on[t−1] = 0 (t = 0: = −units_on)
    rhs = np.zeros((len(uc), T))
    rhs[:, 0] = [-float(groups[g].initial.units_on) for g in uc]
    fam = _Family("transition", [(g, t) for g in uc for t in ts], rhs.ravel(), rhs.ravel())
    for u, g in enumerate(uc):
        fam.add(u * T + t_idx, start[u], 1.0)
        fam.add(u * T + t_idx, stop[u], -1.0)
        for k in np.flatnonzero(gm_group == g):
            fam.add(u * T + t_idx, n[k], -1.0)
            fam.add(u * T + t_idx[1:], n[k, :-1], 1.0)
    late.append(fam)

    def held(g: int, attr: str) -> np.ndarray:
        out = np.zeros(T)
        for hours_left, units in getattr(groups[g].initial, attr):
            out += np.where(starts_h < hours_left - 1e-9, units, 0)
        return out

    def window(fam: _Family, i: int, hours: float, cols: np.ndarray, sign: float) -> None:
        if not hours:
            return
        begin = np.searchsorted(starts_h, starts_h - hours + 1e-9, side="right")
        for lag in range(int((t_idx - begin).max()) + 1):
            t_in = t_idx[t_idx - lag >= begin]
            fam.add(i * T + t_in, cols[t_in - lag], sign)

    # min_on[g,t] (soft): on[t] + short[t] − Σ_window start >= held_on
    lb = np.concatenate([held(g, "must_stay_on") for g in on_groups]) if on_groups else np.zeros(0)
    fam = _Family("min_on", [(g, t) for g in on_groups for t in ts], lb, np.full(lb.size, math.inf))
    for i, g in enumerate(on_groups):
        for k in np.flatnonzero(gm_group == g):
            fam.add(i * T + t_idx, n[k], 1.0)
        fam.add(i * T + t_idx, short[i], 1.0)
        window(fam, i, groups[g].min_on_h, start[uc.index(g)], -1.0)
    late.append(fam)
    # min_off[g,t] (soft): on[t] + Σ_window stop − excess <= N − held_off
    ub = (np.concatenate([groups[g].units - held(g, "must_stay_off") for g in off_groups]) if off_groups
          else np.zeros(0))
    fam = _Family("min_off", [(g, t) for g in off_groups for t in ts], np.full(ub.size, -math.inf), ub)
    for i, g in enumerate(off_groups):
        for k in np.flatnonzero(gm_group == g):
            fam.add(i * T + t_idx, n[k], 1.0)
        fam.add(i * T + t_idx, excess[i], -1.0)
        window(fam, i, groups[g].min_off_h, stop[uc.index(g)], 1.0)
    late.append(fam)
    # ramp_up/ramp_down[t] (soft): ±(load[t] − load[t−1]) − ramp_short <= R·Δt
    if ramp is not None:
        rts = t_idx if problem.initial_load_kw is not None else t_idx[1:]
        previous = np.concatenate([[problem.initial_load_kw or 0.0], standby[:-1]])[rts]
        step = standby[rts] - previous
        for name, sign in (("ramp_up", 1.0), ("ramp_down", -1.0)):
            fam = _Family(name, [int(t) for t in rts], np.full(rts.size, -math.inf),
                          problem.ramp_limit_kw_per_h * dt[rts] - sign * step)
            local = np.arange(rts.size)
            fam.add(np.broadcast_to(local, (len(gm), rts.size)), n[:, rts], sign * (power - idle)[:, None])
            later = rts > 0
            fam.add(np.broadcast_to(local[later], (len(gm), int(later.sum()))), n[:, rts[later] - 1],
                    -sign * (power - idle)[:, None])
            fam.add(local, ramp[rts], -1.0)
            late.append(fam)
    assert {f.name for f in late} <= DEFERRED_ROW_FAMILIES

    main_block, main_at = _block(main)
    late_block, late_at = _block(late)
    n_main = len(main_block.lower)
    row_at = dict(main_at)
    row_at.update({name: {key: n_main + row for key, row in slots.items()} for name, slots in late_at.items()})

    col_lower, col_upper, col_cost = np.concatenate(lower), np.concatenate(upper), np.concatenate(cost)
    highs = _new_highs()
    _set_option(highs, "output_flag", False)
    highs.addVars(offset, col_lower, col_upper)
    highs.changeColsCost(offset, np.arange(offset, dtype=np.int32), col_cost)
    highs.changeObjectiveSense(highspy.ObjSense.kMaximize)
    main_block.add_to(highs)
    count_columns = {key: n[i].astype(np.int32) for i, key in enumerate(gm)}
    all_starts = np.concatenate([main_block.starts, len(main_block.index) + late_block.starts,
                                 [len(main_block.index) + len(late_block.index)]])
    key = structure_key(offset, all_starts.astype(np.int64),
                        np.concatenate([main_block.index, late_block.index]).astype(np.int64))
    deferred = late_block if len(late_block.lower) else None
    return CompiledModel(highs, [], col_lower, col_upper, count_columns, key, deferred, None, col_at, row_at)
