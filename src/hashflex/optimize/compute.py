"""GPU compute in the schedule MILP (issue 16): `define_compute(model, problem)` adds the GPU
variables and rows; `load_terms`, `noise_terms` and `objective_terms` are the compute parts of the
site load, the noise rows and the objective that `milp` adds to its own. All compute variables are
continuous (a GPU count per workload is large and a cap is continuous), so the LP → rounding → MIP
procedure of `optimize.solve` rounds only the miner counts. See optimization/FORMULATION.md §Compute.

Per workload w on cluster c and interval t (k: GPUs working, p: their IT power in kW, u: their
throughput in uncapped-GPU equivalents; P_c full and P0_c idle kW per GPU):
  k·φ_c·P_c <= p <= k·P_c;  u <= α_s·k + β_s·p/P_c for each piece s of the concave curve;
  Σ_w k[w,t] <= GPUs_c;  cluster site kW = (1+κ_c)·(Σ_w (p − P0_c·k) + P0_c·GPUs_c).
Spot GPUs run uncapped: p = P_c·k, u = k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyomo.environ as pyo

from hashflex.optimize.compute_problem import ComputeProblem, cooling_unit_energy

# Restart counted on GPU increases: a suspended job pays its checkpoint cost again when resumed.
SECONDS_PER_HOUR = 3600.0


def _workloads(compute: ComputeProblem) -> list[tuple[str, int, int]]:
    """(kind, index in its tuple, cluster) for every workload, in a fixed order."""
    out = [("inference", i, w.cluster) for i, w in enumerate(compute.inference)]
    out += [("batch", j, w.cluster) for j, w in enumerate(compute.batch)]
    out += [("spot", s, w.cluster) for s, w in enumerate(compute.spot)]
    return out


def _workload_id(compute: ComputeProblem, kind: str, i: int) -> str:
    return getattr(compute, kind)[i].id


def _gpu_bounds(problem, kind: str, i: int, t: int) -> float:
    compute = problem.compute
    if kind == "inference":
        return float(compute.clusters[compute.inference[i].cluster].gpus)
    if kind == "batch":
        job = compute.batch[i]
        return float(job.max_gpus) if job.window[t] else 0.0
    return float(compute.spot[i].max_gpus)


def define_compute(model: pyo.ConcreteModel, problem) -> None:
    """GPU variables and rows (module docstring); nothing without ``problem.compute``."""
    compute: ComputeProblem | None = getattr(problem, "compute", None)
    if compute is None:
        return
    T = problem.T
    work = _workloads(compute)
    model.W = pyo.RangeSet(0, len(work) - 1) if work else pyo.Set(initialize=[])
    model.gpu_on = pyo.Var(model.W, model.T, domain=pyo.NonNegativeReals,
                           bounds=lambda m, w, t: (0.0, _gpu_bounds(problem, work[w][0], work[w][1], t)))
    model.gpu_kw = pyo.Var(model.W, model.T, domain=pyo.NonNegativeReals)
    model.gpu_work = pyo.Var(model.W, model.T, domain=pyo.NonNegativeReals)
    rows = pyo.ConstraintList()
    model.compute_rows = rows
    for w, (kind, i, c) in enumerate(work):
        cluster = compute.clusters[c]
        full = cluster.full_kw_per_gpu
        for t in range(T):
            k, p, u = model.gpu_on[w, t], model.gpu_kw[w, t], model.gpu_work[w, t]
            if kind == "spot":
                rows.add(p - full * k == 0)
                rows.add(u - k == 0)
                continue
            rows.add(p - full * k <= 0)
            rows.add(p - cluster.min_cap_fraction * full * k >= 0)
            for alpha, beta in cluster.segments():
                rows.add(u - alpha * k - (beta / full) * p <= 0)
    for c, cluster in enumerate(compute.clusters):
        members = [w for w, (_, _, cc) in enumerate(work) if cc == c]
        for t in range(T):
            if members:
                rows.add(sum(model.gpu_on[w, t] for w in members) <= cluster.gpus)
    # Inference: serve at most the demand; below the service level only by paying the shortfall.
    model.inference_short = pyo.Var(range(len(compute.inference)), model.T, domain=pyo.NonNegativeReals)
    for w, (kind, i, _) in enumerate(work):
        if kind != "inference":
            continue
        svc = compute.inference[i]
        cluster = compute.clusters[svc.cluster]
        for t in range(T):
            demand_gpu = float(svc.demand_tokens_per_s[t]) / svc.tokens_per_s_per_gpu
            rows.add(model.gpu_work[w, t] <= demand_gpu)
            rows.add(model.gpu_work[w, t] + model.inference_short[i, t] >= svc.service_level * demand_gpu)
            if svc.peak_demand_tokens_per_s is not None:
                # Coarse block: the capacity min_s(α_s·k + β_s·p/P) held through the block must reach
                # the service level of the block's busiest base interval (every piece of the curve).
                peak_gpu = svc.service_level * float(svc.peak_demand_tokens_per_s[t]) / svc.tokens_per_s_per_gpu
                k, p = model.gpu_on[w, t], model.gpu_kw[w, t]
                for alpha, beta in cluster.segments():
                    rows.add(alpha * k + (beta / cluster.full_kw_per_gpu) * p + model.inference_short[i, t] >= peak_gpu)
    # Batch: the horizon's share of work, late work paid for; restarts pay the checkpoint cost.
    model.batch_late_gpu_h = pyo.Var(range(len(compute.batch)), domain=pyo.NonNegativeReals)
    model.batch_restart = pyo.Var(range(len(compute.batch)), model.T, domain=pyo.NonNegativeReals)
    for w, (kind, j, _) in enumerate(work):
        if kind != "batch":
            continue
        job = compute.batch[j]
        done = sum(float(problem.duration_h[t]) * model.gpu_work[w, t] for t in range(T))
        rows.add(done + model.batch_late_gpu_h[j] >= job.work_gpu_h)
        rows.add(done <= job.total_gpu_h)
        for t in range(T):
            before = model.gpu_on[w, t - 1] if t > 0 else job.gpus_running_at_start
            rows.add(model.batch_restart[j, t] >= model.gpu_on[w, t] - before)


def cluster_it_terms(model: pyo.ConcreteModel, problem, c: int, t: int) -> tuple[list, float]:
    """IT kW of cluster c at t: Σ_w (p − P0·k) + P0·GPUs as (terms, constant)."""
    compute = problem.compute
    cluster = compute.clusters[c]
    terms = []
    for w, (_, _, cc) in enumerate(_workloads(compute)):
        if cc == c:
            terms += [(1.0, model.gpu_kw[w, t]), (-cluster.idle_kw_per_gpu, model.gpu_on[w, t])]
    return terms, cluster.idle_kw_per_gpu * cluster.gpus


def load_terms(model: pyo.ConcreteModel, problem, t: int, sign: float = 1.0) -> tuple[list, float]:
    """Site kW of every cluster at t, cooling included, times ``sign``, as (terms, constant)."""
    compute = getattr(problem, "compute", None)
    if compute is None:
        return [], 0.0
    terms, constant = [], 0.0
    for c, cluster in enumerate(compute.clusters):
        it_terms, it_constant = cluster_it_terms(model, problem, c, t)
        factor = sign * (1.0 + cluster.cooling_overhead)
        terms += [(factor * a, v) for a, v in it_terms]
        constant += factor * it_constant
    return terms, constant


def noise_terms(model: pyo.ConcreteModel, problem, receptor_id: str, t: int, scale: float) -> tuple[list, float]:
    """Cooling noise energy at a receptor, scaled: E_full·IT/IT_full (a chord above the fan law
    E ∝ load^(5/3), so conservative), as (terms, constant)."""
    compute = getattr(problem, "compute", None)
    if compute is None:
        return [], 0.0
    terms, constant = [], 0.0
    for c, cluster in enumerate(compute.clusters):
        energy = cooling_unit_energy(cluster, receptor_id)
        if energy <= 0:
            continue
        per_kw = energy * scale / (cluster.gpus * cluster.full_kw_per_gpu)
        it_terms, it_constant = cluster_it_terms(model, problem, c, t)
        terms += [(per_kw * a, v) for a, v in it_terms]
        constant += per_kw * it_constant
    return terms, constant


def objective_terms(model: pyo.ConcreteModel, problem) -> list:
    """Revenue and penalties of the compute classes ($); energy is paid through grid import."""
    compute = getattr(problem, "compute", None)
    if compute is None:
        return []
    terms = []
    for w, (kind, i, _) in enumerate(_workloads(compute)):
        for t in range(problem.T):
            dt_h = float(problem.duration_h[t])
            if kind == "inference":
                svc = compute.inference[i]
                mtok_per_gpu = svc.tokens_per_s_per_gpu * SECONDS_PER_HOUR * dt_h / 1e6
                terms.append((svc.revenue_usd_per_mtok * mtok_per_gpu, model.gpu_work[w, t]))
                terms.append((-svc.penalty_usd_per_mtok * mtok_per_gpu, model.inference_short[i, t]))
            elif kind == "batch":
                job = compute.batch[i]
                terms.append((job.revenue_usd_per_gpu_h * dt_h, model.gpu_work[w, t]))
                terms.append((-job.checkpoint_cost_usd_per_gpu, model.batch_restart[i, t]))
            else:
                terms.append((compute.spot[i].price_usd_per_gpu_h * dt_h, model.gpu_on[w, t]))
    for j, job in enumerate(compute.batch):
        terms.append((-(job.late_penalty_usd_per_gpu_h + job.revenue_usd_per_gpu_h), model.batch_late_gpu_h[j]))
    return terms


@dataclass(frozen=True)
class ComputeDispatch:
    """The compute plan per workload id: GPUs working, IT kW, work (uncapped-GPU equivalents),
    each [T]; inference shortfall in GPU equivalents [T]; batch late GPU-hours."""

    gpus: dict[str, np.ndarray]
    it_kw: dict[str, np.ndarray]
    work: dict[str, np.ndarray]
    inference_short_gpu: dict[str, np.ndarray]
    batch_late_gpu_h: dict[str, float]

    @classmethod
    def idle(cls, problem) -> ComputeDispatch:
        """Every GPU idle: the safe plan when no solved plan exists (shortfalls reported)."""
        compute, T = problem.compute, problem.T
        ids = [_workload_id(compute, kind, i) for kind, i, _ in _workloads(compute)]
        zero = {w: np.zeros(T) for w in ids}
        short = {s.id: s.service_level * s.demand_tokens_per_s / s.tokens_per_s_per_gpu for s in compute.inference}
        return cls(zero, dict(zero), dict(zero), short, {j.id: j.work_gpu_h for j in compute.batch})


def extract_dispatch(model: pyo.ConcreteModel, problem) -> ComputeDispatch | None:
    """The solved compute plan (None without compute)."""
    compute = getattr(problem, "compute", None)
    if compute is None:
        return None
    T = problem.T

    def values(var, w) -> np.ndarray:
        return np.array([max(pyo.value(var[w, t]) or 0.0, 0.0) for t in range(T)])

    gpus, it_kw, work = {}, {}, {}
    for w, (kind, i, _) in enumerate(_workloads(compute)):
        wid = _workload_id(compute, kind, i)
        gpus[wid], it_kw[wid], work[wid] = values(model.gpu_on, w), values(model.gpu_kw, w), values(model.gpu_work, w)
    short = {s.id: values(model.inference_short, i) for i, s in enumerate(compute.inference)}
    late = {j.id: float(pyo.value(model.batch_late_gpu_h[i]) or 0.0) for i, j in enumerate(compute.batch)}
    return ComputeDispatch(gpus, it_kw, work, short, late)


def expand_dispatch(dispatch: ComputeDispatch | None, coarse, fine, block_of: np.ndarray) -> ComputeDispatch | None:
    """A coarse grid's GPU plan as one row per base interval (`problem.coarsen`'s ``block_of``).

    Parameters
    ----------
    dispatch : the plan solved on ``coarse`` (arrays [B]); None gives None
    coarse, fine : the coarsened and the base-grid `Problem`
    block_of : [T] int, coarse block of each base interval

    Returns
    -------
    ComputeDispatch with arrays [T]. GPUs working and their IT kW are held constant through a block
    (the draw the coarse plan checked against the block's strictest limit and noise cap). Inference
    work in a base interval is what the block's capacity serves of that interval's demand,
    min(capacity, demand); the shortfall is recomputed against the base interval's service level.
    Batch and spot work keep the block's rate, so GPU-hours are conserved. A block of one base
    interval is copied as solved.
    """
    if dispatch is None:
        return None
    compute = fine.compute
    single = np.bincount(block_of)[block_of] == 1
    gpus = {w: v[block_of] for w, v in dispatch.gpus.items()}
    it_kw = {w: v[block_of] for w, v in dispatch.it_kw.items()}
    work = {w: v[block_of] for w, v in dispatch.work.items()}
    short = {}
    for s in compute.inference:
        cluster = compute.clusters[s.cluster]
        k, p = dispatch.gpus[s.id], dispatch.it_kw[s.id]
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(k > 1e-9, p / (np.maximum(k, 1e-9) * cluster.full_kw_per_gpu), 0.0)
        capacity = np.array([ki * cluster.throughput_fraction(f) if ki > 1e-9 else 0.0 for ki, f in zip(k, fraction)])
        demand_gpu = s.demand_tokens_per_s / s.tokens_per_s_per_gpu
        served = np.minimum(capacity[block_of], demand_gpu)
        work[s.id] = np.where(single, work[s.id], served)
        recomputed = np.maximum(s.service_level * demand_gpu - served, 0.0)
        short[s.id] = np.where(single, dispatch.inference_short_gpu[s.id][block_of], recomputed)
    return ComputeDispatch(gpus, it_kw, work, short, dict(dispatch.batch_late_gpu_h))


def cluster_site_kw(problem, dispatch: ComputeDispatch) -> dict[str, np.ndarray]:
    """Site kW per cluster (cooling included) from a dispatch, recomputed, not read from the solver."""
    compute = problem.compute
    out = {}
    for c, cluster in enumerate(compute.clusters):
        it = np.full(problem.T, cluster.idle_kw_per_gpu * cluster.gpus)
        for kind, i, cc in _workloads(compute):
            if cc == c:
                wid = _workload_id(compute, kind, i)
                it = it + dispatch.it_kw[wid] - cluster.idle_kw_per_gpu * dispatch.gpus[wid]
        out[cluster.id] = it * (1.0 + cluster.cooling_overhead)
    return out


def solve_site(problem, *, time_limit_s: float = 30.0, rel_gap: float | None = None):
    """Solve a site with or without compute: the one path, ``optimize.solve.solve`` (the daemon's,
    ``plan``'s and the backtest's), which reads the GPU plan into the Schedule's compute columns."""
    from hashflex.optimize.milp import DEFAULT_REL_GAP
    from hashflex.optimize.solve import solve

    return solve(problem, time_limit_s=time_limit_s, rel_gap=DEFAULT_REL_GAP if rel_gap is None else rel_gap)

def compute_columns(problem, dispatch: ComputeDispatch) -> dict[str, np.ndarray]:
    """Schedule columns: per cluster site kW; per workload GPUs, IT kW and its service figures."""
    compute, dt_h = problem.compute, problem.duration_h
    cols: dict[str, np.ndarray] = {}
    for cid, kw in cluster_site_kw(problem, dispatch).items():
        cols[f"cluster_kw_{cid}"] = kw
    revenue = np.zeros(problem.T)
    for s in compute.inference:
        served = dispatch.work[s.id] * s.tokens_per_s_per_gpu
        cols[f"gpus_{s.id}"] = dispatch.gpus[s.id]
        cols[f"it_kw_{s.id}"] = dispatch.it_kw[s.id]
        cols[f"served_tokens_per_s_{s.id}"] = served
        cols[f"demand_tokens_per_s_{s.id}"] = s.demand_tokens_per_s
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[f"service_level_{s.id}"] = np.where(s.demand_tokens_per_s > 0, served / s.demand_tokens_per_s, 1.0)
        revenue += served * SECONDS_PER_HOUR * dt_h / 1e6 * s.revenue_usd_per_mtok
    for j in compute.batch:
        cols[f"gpus_{j.id}"] = dispatch.gpus[j.id]
        cols[f"it_kw_{j.id}"] = dispatch.it_kw[j.id]
        cols[f"work_gpu_h_{j.id}"] = dispatch.work[j.id] * dt_h
        revenue += dispatch.work[j.id] * dt_h * j.revenue_usd_per_gpu_h
    for s in compute.spot:
        cols[f"gpus_{s.id}"] = dispatch.gpus[s.id]
        revenue += dispatch.gpus[s.id] * dt_h * s.price_usd_per_gpu_h
    cols["compute_revenue_usd"] = revenue
    return cols


def explain_compute(problem, dispatch: ComputeDispatch, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(reason code, sentence) per interval for the compute side: a deferred or capped batch job,
    an inference shortfall, a deadline run at a high price, or cooling noise; "" when none."""
    compute = problem.compute
    T = problem.T
    codes, sentences = [""] * T, [""] * T
    price = problem.energy_price_usd_mwh
    median_price = float(np.median(price)) if T else 0.0
    limit_source = problem.import_limit_source
    # At the limit: not even one more miner (its largest step) would fit under it.
    step_kw = max([m.power_kw - g.idle_power_kw for g in problem.groups for m in g.modes] + [0.0]) + 1.0
    at_limit = frame["grid_import_kw"].to_numpy() >= problem.import_limit_kw - step_kw
    for t in range(T):
        found: list[tuple[str, str]] = []
        for j in compute.batch:
            if not j.window[t]:
                continue
            gpus = dispatch.gpus[j.id][t]
            # Deferred: at the limit, the job runs fewer GPUs than its even pace to the deadline.
            window_h = float(problem.duration_h[j.window].sum())
            usual = min(j.work_gpu_h / window_h, float(j.max_gpus)) if window_h else 0.0
            if at_limit[t] and gpus < usual - 0.5:
                found.append((limit_source[t], f"{limit_source[t]}: deferred batch job {j.id} "
                                               f"({usual - gpus:,.0f} of {usual:,.0f} GPUs suspended)"))
            elif gpus > 0.5 and price[t] > median_price and j.work_gpu_h > 0:
                found.append(("deadline", f"deadline: batch job {j.id} runs {gpus:,.0f} GPUs at "
                                          f"${price[t]:,.2f}/MWh to meet its deadline"))
        for s in compute.inference:
            short = dispatch.inference_short_gpu[s.id][t] * s.tokens_per_s_per_gpu
            if short > 1e-6:
                found.append((limit_source[t] if at_limit[t] else "compute",
                              f"{limit_source[t] if at_limit[t] else 'emergency'}: inference {s.id} "
                              f"short {short:,.0f} tokens/s of its service level"))
        for receptor in problem.receptors:
            column = f"noise_dba_{receptor.id}"
            if column in frame and np.isfinite(receptor.cap_dba[t]) and \
                    frame[column].iloc[t] >= receptor.cap_dba[t] - receptor.margin_db - 0.05:
                loud = [c.id for c in compute.clusters if cooling_unit_energy(c, receptor.id) > 0]
                for cid in loud:
                    found.append((f"noise:{receptor.id}", f"noise: cooling of cluster {cid} held to "
                                                          f"{receptor.cap_dba[t]:.1f} dB(A) at {receptor.id}"))
        if found:
            codes[t] = found[0][0]
            sentences[t] = "; ".join(s for _, s in found)
    return codes, sentences


def cooling_noise_energy(problem, dispatch: ComputeDispatch, receptor_id: str) -> np.ndarray:
    """[T] cooling noise energy at a receptor (same chord rule as the MILP rows)."""
    out = np.zeros(problem.T)
    for cluster, kw in zip(problem.compute.clusters, cluster_site_kw(problem, dispatch).values()):
        energy = cooling_unit_energy(cluster, receptor_id)
        if energy > 0:
            it = kw / (1.0 + cluster.cooling_overhead)
            out += energy * it / (cluster.gpus * cluster.full_kw_per_gpu)
    return out
