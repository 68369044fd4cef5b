"""GPU compute in the optimizer's input: plain arrays over T intervals, no I/O (issue 16).

A `ComputeProblem` sits in `Problem.compute` beside the miner groups. Units: power in kW per GPU
(node power / GPUs per node), work in uncapped-GPU-hours, inference in tokens per second. Built
from a profile's ``compute`` section by `compute_from_profile`; `problem_from_profile` calls it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hashflex import acoustics


@dataclass(frozen=True)
class Cluster:
    """One GPU cluster: ``gpus`` identical GPUs. ``curve``: concave (power fraction, throughput
    fraction) points ending at (1, 1); ``attenuation_db``: receptor id → dB from the cluster's
    cooling plant to the receptor (inf: unrelated)."""

    id: str
    gpus: int
    idle_kw_per_gpu: float
    full_kw_per_gpu: float
    min_cap_fraction: float
    curve: tuple[tuple[float, float], ...]
    cooling_overhead: float
    cooling_sound_power_dba: float
    attenuation_db: dict[str, float]

    def segments(self) -> list[tuple[float, float]]:
        """(intercept a, slope b) of each curve piece: throughput fraction <= a + b·power fraction
        on the whole range (the curve is concave, so the minimum of the pieces is the curve).
        A single point (1, 1) gives throughput <= power fraction (proportional)."""
        points = list(self.curve)
        if len(points) == 1:
            return [(0.0, 1.0)]
        out = []
        for (p0, q0), (p1, q1) in zip(points, points[1:]):
            slope = (q1 - q0) / (p1 - p0)
            out.append((q0 - slope * p0, slope))
        return out

    def throughput_fraction(self, power_fraction: float) -> float:
        """Throughput of one GPU capped at ``power_fraction`` of full, as a fraction of uncapped."""
        return min(a + b * power_fraction for a, b in self.segments())


@dataclass(frozen=True)
class Inference:
    """Firm inference on one cluster: serve ``demand_tokens_per_s`` [T] (tokens/s) at
    ``service_level`` of it, at ``tokens_per_s_per_gpu`` per uncapped GPU.

    ``peak_demand_tokens_per_s`` [T] or None: on a coarsened grid (`coarsen_compute`), the highest
    demand of the base intervals a block covers. The plan's GPU capacity must then reach
    ``service_level`` × the peak, so that capacity held constant through the block keeps the service
    level in every base interval; served tokens (and revenue) stay capped by the block's mean demand.
    """

    id: str
    cluster: int
    tokens_per_s_per_gpu: float
    demand_tokens_per_s: np.ndarray  # [T]
    service_level: float
    revenue_usd_per_mtok: float
    penalty_usd_per_mtok: float
    peak_demand_tokens_per_s: np.ndarray | None = None  # [T], coarse grids only


@dataclass(frozen=True)
class Batch:
    """``work_gpu_h``: the work this horizon must do by the deadline (the rest fits after the
    horizon at ``max_gpus``); ``window``: [T] bool, intervals between release and deadline."""

    id: str
    cluster: int
    work_gpu_h: float
    total_gpu_h: float
    max_gpus: int
    window: np.ndarray  # [T] bool
    revenue_usd_per_gpu_h: float
    late_penalty_usd_per_gpu_h: float
    checkpoint_cost_usd_per_gpu: float
    gpus_running_at_start: float = 0.0


@dataclass(frozen=True)
class Spot:
    """Interruptible capacity: up to ``max_gpus`` uncapped GPUs at ``price_usd_per_gpu_h``."""

    id: str
    cluster: int
    max_gpus: int
    price_usd_per_gpu_h: float


@dataclass(frozen=True)
class ComputeProblem:
    """The GPU side of a `Problem`: clusters and the workloads they serve (issue 16)."""

    clusters: tuple[Cluster, ...]
    inference: tuple[Inference, ...] = ()
    batch: tuple[Batch, ...] = ()
    spot: tuple[Spot, ...] = ()

    def idle_site_kw(self) -> float:
        """Site draw of every GPU idle, cooling included: the least the clusters can draw."""
        return sum(c.gpus * c.idle_kw_per_gpu * (1.0 + c.cooling_overhead) for c in self.clusters)

    def idle_noise_energy(self, receptor_id: str) -> float:
        """Cooling noise energy at a receptor with every GPU idle (the MILP's chord rule)."""
        return sum(cooling_unit_energy(c, receptor_id) * c.idle_kw_per_gpu / c.full_kw_per_gpu for c in self.clusters)

    def validate(self, T: int) -> None:
        """Raise ValueError naming the workload whose arrays do not fit the horizon."""
        for w in self.inference:
            if w.demand_tokens_per_s.shape != (T,) or not np.all(np.isfinite(w.demand_tokens_per_s)):
                raise ValueError(f"inference {w.id}: demand_tokens_per_s must be {T} finite values")
            if np.any(w.demand_tokens_per_s < 0):
                raise ValueError(f"inference {w.id}: demand_tokens_per_s must be >= 0")
            peak = w.peak_demand_tokens_per_s
            if peak is not None and (peak.shape != (T,) or not np.all(np.isfinite(peak))
                                     or np.any(peak < w.demand_tokens_per_s - 1e-9)):
                raise ValueError(f"inference {w.id}: peak_demand_tokens_per_s must be {T} finite values "
                                 "at or above demand_tokens_per_s")
        for j in self.batch:
            if j.window.shape != (T,):
                raise ValueError(f"batch {j.id}: window must have {T} entries")


def batch_work_in_horizon(total_gpu_h: float, max_gpus: int, deadline: pd.Timestamp,
                          horizon_end: pd.Timestamp) -> float:
    """GPU-hours that must be done inside the horizon: what cannot fit after it at ``max_gpus``."""
    after_h = max((deadline - horizon_end) / pd.Timedelta(hours=1), 0.0)
    return max(total_gpu_h - max_gpus * after_h, 0.0)


def compute_from_profile(profile, interval_start: pd.DatetimeIndex, duration_h: np.ndarray,
                         demand_tokens_per_s: dict[str, np.ndarray] | None = None,
                         done_gpu_h: dict[str, float] | None = None) -> ComputeProblem | None:
    """The profile's ``compute`` section as arrays over the horizon (None without one).

    ``demand_tokens_per_s``: measured or forecast demand per inference id (default: the profile's
    constant, or its bundled trace); ``done_gpu_h``: work batch jobs have already done."""
    section = profile.compute
    if section is None:
        return None
    T = len(interval_start)
    index = {c.id: i for i, c in enumerate(section.clusters)}
    clusters = tuple(
        Cluster(
            id=c.id, gpus=c.gpus,
            idle_kw_per_gpu=c.idle_power_kw / c.gpus_per_node,
            full_kw_per_gpu=c.full_power_kw / c.gpus_per_node,
            min_cap_fraction=c.min_power_cap_fraction,
            curve=tuple((float(p), float(q)) for p, q in c.throughput_curve),
            cooling_overhead=c.cooling_overhead_fraction,
            cooling_sound_power_dba=c.cooling_sound_power_dba,
            attenuation_db={r.id: r.attenuation_from(c.id) for r in profile.receptors},
        )
        for c in section.clusters
    )
    demand = demand_tokens_per_s or {}
    inference = []
    for w in section.inference:
        if w.id in demand:
            series = np.asarray(demand[w.id], dtype=float)
        elif w.demand_trace != "none":
            from hashflex.data.ai_traces import trace_demand_tokens_per_s

            series = trace_demand_tokens_per_s(w.demand_trace, interval_start, w.demand_tokens_per_s)
        else:
            series = np.full(T, w.demand_tokens_per_s)
        inference.append(Inference(w.id, index[w.cluster], w.tokens_per_s_per_gpu, series, w.service_level,
                                   w.revenue_usd_per_million_tokens, w.penalty_usd_per_million_tokens))
    starts = interval_start
    ends = interval_start + pd.to_timedelta(duration_h, unit="h")
    horizon_end = ends[-1] if T else starts
    done = done_gpu_h or {}
    batch = []
    for j in section.batch:
        release, deadline = pd.Timestamp(j.release), pd.Timestamp(j.deadline)
        window = np.asarray((starts >= release) & (ends <= deadline))
        # A job whose window lies outside the horizon has nothing to do in it (its lateness, if any,
        # was settled when its deadline passed).
        remaining = max(j.gpu_hours - done.get(j.id, 0.0), 0.0) if window.any() else 0.0
        batch.append(Batch(j.id, index[j.cluster], batch_work_in_horizon(remaining, j.max_gpus, deadline, horizon_end),
                           remaining, j.max_gpus, window, j.revenue_usd_per_gpu_hour,
                           j.late_penalty_usd_per_gpu_hour, j.checkpoint_cost_usd_per_gpu))
    spot = tuple(Spot(s.id, index[s.cluster], s.max_gpus, s.price_usd_per_gpu_hour) for s in section.spot)
    problem = ComputeProblem(clusters, tuple(inference), tuple(batch), spot)
    problem.validate(T)
    return problem


def cooling_unit_energy(cluster: Cluster, receptor_id: str) -> float:
    """Noise energy 10^((Lw − A)/10) at a receptor from the cluster's cooling at full IT load."""
    attenuation = cluster.attenuation_db.get(receptor_id, math.inf)
    if math.isinf(attenuation) or cluster.cooling_sound_power_dba <= 0:
        return 0.0
    return acoustics.energy(cluster.cooling_sound_power_dba - attenuation)


def coarsen_compute(compute: ComputeProblem, block_of: np.ndarray, duration_h: np.ndarray) -> ComputeProblem:
    """The compute arrays on a coarse grid (`problem.coarsen`'s blocks), conservatively.

    Parameters
    ----------
    compute : the problem on the base grid, arrays [T]
    block_of : [T] int, coarse block of each base interval (non-decreasing, from 0)
    duration_h : [T] hours of each base interval

    Returns
    -------
    ComputeProblem with arrays [B], B = ``block_of[-1] + 1``:

    - inference demand (tokens/s, a rate): the duration-weighted mean over the block, so the tokens
      demanded (and the revenue they can earn) are conserved; ``peak_demand_tokens_per_s``: the
      block's highest base-interval demand, which the capacity must cover at the service level;
    - batch window: a block is in a job's window only if every base interval of it is (release
      rounded up, deadline rounded down to block boundaries); work in GPU-hours is a total and
      carries over unchanged;
    - clusters and spot capacity have no per-interval arrays.
    """
    n_blocks = int(block_of[-1]) + 1 if len(block_of) else 0
    hours = np.bincount(block_of, weights=duration_h, minlength=n_blocks)

    def weighted_mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(block_of, weights=values * duration_h, minlength=n_blocks) / hours

    def block_max(values: np.ndarray) -> np.ndarray:
        out = np.full(n_blocks, -np.inf)
        np.maximum.at(out, block_of, values)
        return out

    def all_in_block(mask: np.ndarray) -> np.ndarray:
        return np.bincount(block_of, weights=(~mask).astype(float), minlength=n_blocks) == 0

    inference = tuple(
        dataclasses.replace(
            w, demand_tokens_per_s=weighted_mean(w.demand_tokens_per_s),
            peak_demand_tokens_per_s=block_max(w.demand_tokens_per_s if w.peak_demand_tokens_per_s is None
                                               else w.peak_demand_tokens_per_s))
        for w in compute.inference)
    batch = tuple(dataclasses.replace(j, window=all_in_block(np.asarray(j.window, dtype=bool))) for j in compute.batch)
    return dataclasses.replace(compute, inference=inference, batch=batch)
