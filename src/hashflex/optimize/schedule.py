"""`Schedule`: the optimizer's answer, one row per planning interval, plus how it was obtained.

Every figure in the frame is recomputed here from the integer unit counts and the Problem, with
the same formulas for the MILP and the greedy fallback, so a schedule can be checked line by line
and a reader never sees a number the solver merely asserted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hashflex import acoustics
from hashflex.optimize.problem import Problem


class SolveStatus(str, enum.Enum):
    """How a schedule was obtained (reported with every plan)."""

    OPTIMAL = "optimal"  # proven within the requested relative gap
    FEASIBLE_GAP = "feasible_with_gap"
    TIME_LIMIT = "time_limit"  # incumbent from a solve that hit its time limit
    FALLBACK = "failed_fallback"  # the solver failed; greedy schedule, every hard limit respected


@dataclass(frozen=True)
class SolveInfo:
    """The solve behind a schedule: status, objective and bound ($), relative gap, build and
    solve seconds, soft-constraint penalties paid, and the solver's message."""

    status: SolveStatus
    objective_usd: float | None = None
    bound_usd: float | None = None
    gap: float | None = None
    build_seconds: float = 0.0
    solve_seconds: float = 0.0
    penalties: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class Schedule:
    """The optimizer's answer: ``frame`` (one row per interval, every figure recomputed from the
    integer counts), how it was solved, and the (group, mode) and receptor columns it holds."""

    frame: pd.DataFrame  # indexed by interval_start (UTC)
    info: SolveInfo
    group_modes: tuple[tuple[str, str], ...]
    receptor_ids: tuple[str, ...]

    @property
    def status(self) -> SolveStatus:
        """The solve status (see `SolveStatus`)."""
        return self.info.status

    def counts(self, group_id: str, mode: str) -> pd.Series:
        """[T] units of ``group_id`` planned in ``mode``."""
        return self.frame[unit_column(group_id, mode)]

    @property
    def total_profit_usd(self) -> float:
        """Profit of the whole schedule in $ (revenue less energy, carbon and start costs)."""
        return float(self.frame["profit_usd"].sum())


def unit_column(group_id: str, mode: str) -> str:
    """Schedule column of a group's count in a mode: ``units_<group>_<mode>`` (``_off``: powered off)."""
    return f"units_{group_id}_{mode}"


def noise_levels_dba(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> dict[str, np.ndarray]:
    """Modelled level at each receptor, L = 10·log10(Σ n·10^((Lw−A)/10) [+ 10^(bg/10)]), the
    quantity its cap is compared with (total level, or the site's contribution alone)."""
    levels = {}
    for receptor in problem.receptors:
        energy = np.zeros(problem.T)
        for (g, m), n in counts.items():
            energy += n * receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[m])
        if receptor.cap_applies_to == "total":
            energy += acoustics.energy(receptor.background_dba)
        levels[receptor.id] = acoustics.level_dba(energy)
    return levels


def grid_import_kw(load_kw, renewable_kw):
    """Grid import under the default rule (on-site renewables serve the load first), kW: max(load − renewable, 0).

    The one definition of "import from load" for every caller without a solved import (the loop's
    metering, the simulated site, the backtest's accounting of emissions, the dashboard); scalars or arrays.
    """
    if np.ndim(load_kw) == 0 and np.ndim(renewable_kw) == 0:
        return max(float(load_kw) - float(renewable_kw), 0.0)
    return np.maximum(np.asarray(load_kw, dtype=float) - np.asarray(renewable_kw, dtype=float), 0.0)


def power_flows_kw(
    load_kw: np.ndarray,
    renewable_kw: np.ndarray,
    price_usd_mwh: np.ndarray,
    export_limit_kw: float,
    import_kw: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid import, renewable used, export) for a given load.

    Default rule: on-site renewables serve the load first (least cost at any price >= 0, and the
    least emissions at every price), the grid the rest; surplus is exported when paid. The MILP
    may choose otherwise (e.g. import at a negative price and spill solar) within its own carbon
    and limit constraints, so its chosen ``import_kw`` is passed in and kept."""
    if import_kw is None:
        import_kw = grid_import_kw(load_kw, renewable_kw)
    import_kw = np.clip(import_kw, 0.0, load_kw)
    renewable_used_kw = load_kw - import_kw
    surplus = np.maximum(renewable_kw - renewable_used_kw, 0.0)
    export_kw = np.where(price_usd_mwh > 0, np.minimum(surplus, export_limit_kw), 0.0)
    return import_kw, renewable_used_kw, export_kw



def reserve_column(product: str, what: str = "kw") -> str:
    """Schedule column of a reserve product: ``reserve_RRS_kw``, ``reserve_RRS_obligation_kw``, ..."""
    return f"reserve_{product}_{what}"


def reserve_from_counts(problem: Problem, counts: dict[tuple[int, int], np.ndarray]
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """The reserve a schedule holds, recomputed from its integer counts: the LP of
    ``milp.define_reserve`` with n fixed (solved by HiGHS through scipy), so the MILP and the greedy
    fallback report reserve by one rule. Returns (kW held per product [T], kW short of the
    obligation per product [T], expected deployment cost $ [T])."""
    if not problem.reserves:  # nothing to value; and no Pyomo (milp) import in a process that never solves (issue 18)
        return {}, {}, np.zeros(problem.T)
    from hashflex.optimize.milp import (
        _reserve_index,
        reserve_short_penalty_usd_per_kw,
        reserve_value_usd_per_kw,
    )

    T, pairs = problem.T, _reserve_index(problem)
    held = {r.name: np.zeros(T) for r in problem.reserves}
    short = {r.name: r.obligation_kw.copy() for r in problem.reserves}
    if not pairs:
        return held, short, np.zeros(T)
    # Imported only when there is reserve to value: scipy.optimize's first import costs ~1 s of a
    # cold solve (a fresh solver process) that has no reserves at all.
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix
    P = len(problem.reserves)
    n_r = len(pairs) * T
    col = {(k, t): k * T + t for k in range(len(pairs)) for t in range(T)}
    short_col = {(p, t): n_r + p * T + t for p in range(P) for t in range(T)}
    value = {k: reserve_value_usd_per_kw(problem, p, g) for k, (p, g) in enumerate(pairs)}
    cost = np.concatenate([-value[k] for k in range(len(pairs))]
                          + [reserve_short_penalty_usd_per_kw(problem) for _ in range(P)])
    rows, cols, vals, rhs = [], [], [], []

    def row(entries: list[tuple[int, float]], bound: float) -> None:
        r = len(rhs)
        for c, v in entries:
            rows.append(r), cols.append(c), vals.append(v)
        rhs.append(bound)

    for t in range(T):
        for g in sorted({g for _, g in pairs}):
            group = problem.groups[g]
            running = sum((mode.power_kw - group.idle_power_kw) * float(counts[g, m][t]) for m, mode in enumerate(group.modes))
            row([(col[k, t], 1.0) for k, (_, g2) in enumerate(pairs) if g2 == g], running)
        for p, reserve in enumerate(problem.reserves):
            members = [col[k, t] for k, (p2, _) in enumerate(pairs) if p2 == p]
            if np.isfinite(reserve.max_kw[t]):
                row([(c, 1.0) for c in members], float(reserve.max_kw[t]))
            row([(c, -1.0) for c in members] + [(short_col[p, t], -1.0)], -float(reserve.obligation_kw[t]))
    bounds = [(0.0, float(problem.reserves[p].group_max_kw[problem.groups[g].id])) for p, g in pairs for _ in range(T)]
    bounds += [(0.0, None)] * (P * T)
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(rhs), n_r + P * T)).tocsr()
    result = linprog(cost, A_ub=matrix, b_ub=np.array(rhs), bounds=bounds, method="highs")
    if result.status != 0:  # always feasible (short absorbs any obligation); kept loud if not
        raise RuntimeError(f"reserve recomputation failed: {result.message}")
    x = np.maximum(result.x, 0.0)
    expected_cost = np.zeros(T)
    for k, (p, g) in enumerate(pairs):
        r = x[k * T:(k + 1) * T]
        held[problem.reserves[p].name] += r
        price_part = problem.duration_h * problem.reserves[p].price_usd_mw_h / 1000.0
        expected_cost += (price_part - value[k]) * r
    for p, reserve in enumerate(problem.reserves):
        short[reserve.name] = x[n_r + p * T:n_r + (p + 1) * T]
    return held, short, expected_cost


def minimum_powered_off(problem: Problem, counts: dict[tuple[int, int], np.ndarray],
                        other_load_kw: np.ndarray | float = 0.0) -> dict[str, np.ndarray]:
    """The fewest sleeping units of `PowerOff` groups to power off so that grid import stays
    within the import limit (issue 17): the plan of a schedule that chose none (the greedy
    fallback, a policy's counts). Groups with the largest idle draw go first.

    Parameters
    ----------
    problem : the problem (its ``power_off`` groups, limits, renewables)
    counts : (g, m) → [T] units per mode
    other_load_kw : [T] or scalar kW of load besides the miners (GPU clusters)

    Returns
    -------
    group id → [T] int units powered off (zeros where the limit already holds).
    """
    T = problem.T
    entries = {p.group for p in problem.power_off}
    load = np.asarray(other_load_kw, dtype=float) + np.zeros(T)
    sleeping = {}
    for g, group in enumerate(problem.groups):
        on = sum(counts[g, m] for m in range(len(group.modes)))
        load = load + sum(counts[g, m] * mode.power_kw for m, mode in enumerate(group.modes))
        load = load + (group.units_available - on) * group.idle_power_kw
        if group.id in entries:
            sleeping[group.id] = (np.maximum(group.units_available - on, 0), group.idle_power_kw)
    excess = np.maximum(load - problem.renewable_kw, 0.0) - problem.import_limit_kw
    out = {gid: np.zeros(T, dtype=int) for gid in sleeping}
    for gid, (asleep, idle_kw) in sorted(sleeping.items(), key=lambda item: -item[1][1]):
        if idle_kw <= 0:
            continue
        need = np.ceil(np.maximum(excess, 0.0) / idle_kw - 1e-9).astype(int)
        out[gid] = np.minimum(need, asleep).astype(int)
        excess = excess - out[gid] * idle_kw
    return out


def schedule_from_counts(problem: Problem, counts: dict[tuple[int, int], np.ndarray], info: SolveInfo,
                         import_kw: np.ndarray | None = None, compute: object | None = None,
                         powered_off: dict[str, np.ndarray] | None = None, explain: bool = True) -> Schedule:
    """Every column of the schedule, computed from integer counts n[g,m,t] (and the MILP's grid
    import where it chose one; see power_flows_kw). ``compute``: the GPU plan
    (`optimize.compute.ComputeDispatch`); a problem with compute and no plan gets every GPU idle.
    ``powered_off``: group id → [T] units powered off at the PDU (issue 17), held to the units
    left asleep; a problem with `PowerOff` groups and no plan gets `minimum_powered_off`. Their
    count is the column ``units_<group>_off``; they draw 0 kW, and each unit woken from off pays
    the group's cold start cost in ``start_cost_usd``. ``explain=False`` leaves ``reason`` and
    ``reason_detail`` empty (callers that only value or check a schedule, e.g. plan stability on every
    tick, skip the reasons, the costliest part at scale)."""
    from hashflex.optimize.explain import explain_intervals

    T = problem.T
    dt_h = problem.duration_h
    columns: dict[str, np.ndarray] = {}
    load_kw = np.zeros(T)
    hashrate_th_s = np.zeros(T)
    full_load_kw = np.zeros(T)
    start_cost_usd = np.zeros(T)
    group_modes = []
    compute_data: dict[str, np.ndarray] = {}
    cluster_kw: np.ndarray | float = 0.0
    if problem.compute is not None:  # issue 16: GPU clusters under the same cap
        from hashflex.optimize import compute as gpu

        compute = compute if compute is not None else gpu.ComputeDispatch.idle(problem)
        compute_data = gpu.compute_columns(problem, compute)
        cluster_kw = sum(v for k, v in compute_data.items() if k.startswith("cluster_kw_"))
    off_entries = {p.group: p for p in problem.power_off}
    if off_entries and powered_off is None:
        powered_off = minimum_powered_off(problem, counts, cluster_kw)
    for g, group in enumerate(problem.groups):
        on = np.zeros(T, dtype=int)
        for m, mode in enumerate(group.modes):
            n = counts[g, m]
            columns[unit_column(group.id, mode.name)] = n
            group_modes.append((group.id, mode.name))
            on += n
            load_kw += n * mode.power_kw
            hashrate_th_s += n * mode.hashrate_th_s
        asleep = group.units_available - on
        if group.id in off_entries:
            off = np.clip(np.asarray(powered_off.get(group.id, np.zeros(T)), dtype=int), 0, np.maximum(asleep, 0))
            columns[unit_column(group.id, "off")] = off
            asleep = asleep - off
            woken = np.maximum(-np.diff(off, prepend=group.initial.units_off), 0)
            start_cost_usd += woken * off_entries[group.id].cold_start_cost_usd
        load_kw += asleep * group.idle_power_kw
        starts = np.maximum(np.diff(on, prepend=group.initial.units_on), 0)
        start_cost_usd += starts * group.start_cost_usd
        full_load_kw += group.units_available * max(mode.power_kw for mode in group.modes)
    load_kw, full_load_kw = load_kw + cluster_kw, full_load_kw + cluster_kw
    import_kw, renewable_used_kw, export_kw = power_flows_kw(
        load_kw, problem.renewable_kw, problem.price_usd_mwh, problem.export_limit_kw, import_kw)
    emissions_kg = import_kw * dt_h * problem.intensity_kg_per_mwh / 1000.0
    revenue_usd = hashrate_th_s * dt_h * problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    energy_cost_usd = import_kw * dt_h * problem.energy_price_usd_mwh / 1000.0 - export_kw * dt_h * problem.price_usd_mwh / 1000.0
    carbon_cost_usd = emissions_kg * problem.carbon_price_usd_per_t / 1000.0
    levels = noise_levels_dba(problem, counts)
    if compute_data:  # cooling noise adds in the energy domain
        for receptor in problem.receptors:
            extra = gpu.cooling_noise_energy(problem, compute, receptor.id)
            levels[receptor.id] = acoustics.level_dba(acoustics.energy(levels[receptor.id]) + extra)
    reserve_kw, reserve_short_kw, as_deployment_cost_usd = reserve_from_counts(problem, counts)
    as_revenue_usd = np.zeros(T)
    for reserve in problem.reserves:
        as_revenue_usd += reserve_kw[reserve.name] * dt_h * reserve.price_usd_mw_h / 1000.0

    data: dict[str, object] = {
        # Whole milliseconds: 5 minutes is 0.08333… h, and hours as a float timedelta ended every
        # 5-minute interval 2 ns early (06:04:59.999999998; the audit warned on each plan's horizon end).
        "interval_end": problem.interval_start + pd.to_timedelta(np.round(dt_h * 3_600_000.0), unit="ms").as_unit("ns"),
        "duration_h": dt_h,
        "price_usd_mwh": problem.price_usd_mwh,
        "energy_price_usd_mwh": problem.energy_price_usd_mwh,
        "hashprice_usd_per_ph_day": problem.hashprice_usd_per_ph_day,
        **columns,
        "load_kw": load_kw,
        "full_load_kw": full_load_kw,
        "grid_import_kw": import_kw,
        "import_limit_kw": problem.import_limit_kw,
        "import_limit_source": list(problem.import_limit_source),
        "renewable_kw": problem.renewable_kw,
        "renewable_used_kw": renewable_used_kw,
        "export_kw": export_kw,
        "hashrate_th_s": hashrate_th_s,
    }
    for receptor in problem.receptors:
        data[f"noise_dba_{receptor.id}"] = levels[receptor.id]
        data[f"noise_cap_dba_{receptor.id}"] = receptor.cap_dba
    data.update({
        "intensity_kg_per_mwh": problem.intensity_kg_per_mwh,
        "emissions_kg": emissions_kg,
        "revenue_usd": revenue_usd,
        "energy_cost_usd": energy_cost_usd,
        "carbon_cost_usd": carbon_cost_usd,
        "start_cost_usd": start_cost_usd,
    })
    for reserve in problem.reserves:  # issue 15: reserve held, awarded, short, per product
        data[reserve_column(reserve.name)] = reserve_kw[reserve.name]
        data[reserve_column(reserve.name, "obligation_kw")] = reserve.obligation_kw
        data[reserve_column(reserve.name, "short_kw")] = reserve_short_kw[reserve.name]
    # AS revenue at the clearing price, less the expected cost of deployments (hashes lost then).
    data["as_revenue_usd"] = as_revenue_usd
    data["as_expected_deployment_cost_usd"] = as_deployment_cost_usd
    data.update(compute_data)
    data["profit_usd"] = (revenue_usd - energy_cost_usd - carbon_cost_usd - start_cost_usd
                          + as_revenue_usd - as_deployment_cost_usd + compute_data.get("compute_revenue_usd", 0.0))
    frame = pd.DataFrame(data, index=pd.DatetimeIndex(problem.interval_start, name="interval_start"))
    if not explain:
        return Schedule(frame=frame.assign(reason="", reason_detail=""), info=info, group_modes=tuple(group_modes),
                        receptor_ids=tuple(r.id for r in problem.receptors))
    reasons, details = explain_intervals(problem, counts, frame)
    if compute_data:  # a GPU reason (deferred job, deadline, cooling noise) joins the miners'
        codes, sentences = gpu.explain_compute(problem, compute, frame)
        for t, (code, sentence) in enumerate(zip(codes, sentences)):
            if code:
                reasons[t] = reasons[t] if reasons[t] not in ("", "price") else code
                details[t] = f"{details[t]}; {sentence}" if details[t] else sentence
    frame = frame.assign(reason=reasons, reason_detail=details)
    return Schedule(frame=frame, info=info, group_modes=tuple(group_modes),
                    receptor_ids=tuple(r.id for r in problem.receptors))


def expand_to_base(schedule: Schedule, fine: Problem, block_of: np.ndarray) -> Schedule:
    """Turn a schedule on a coarsened grid back into one row per base interval (counts held
    constant inside a block; every figure recomputed with the fine prices, caps and limits)."""
    counts = {}
    for g, group in enumerate(fine.groups):
        for m, mode in enumerate(group.modes):
            coarse_counts = schedule.frame[unit_column(group.id, mode.name)].to_numpy()
            counts[g, m] = coarse_counts[block_of]
    powered_off = {p.group: schedule.frame[unit_column(p.group, "off")].to_numpy()[block_of]
                   for p in fine.power_off if unit_column(p.group, "off") in schedule.frame} or None
    return schedule_from_counts(fine, counts, schedule.info, powered_off=powered_off)
