"""From the GPU plan to compute commands, and the emergency shed of GPU load (issue 16). Pure: no I/O.

The optimizer plans, per workload and interval, how many GPUs work and at what IT power
(`optimize.compute.ComputeDispatch`). A cluster is commanded per node (`drivers.compute`): a power cap
per GPU of a node, and suspend/resume per job. This module maps the plan's first interval to those
commands:

- nodes are named ``<cluster>-n<k>`` (k from 0; `node_ids`), the name a node agent or the simulated
  cluster (`sim.cluster.SimulatedCluster`) answers to;
- workloads take whole nodes in the order inference, batch, spot (the order of protection): inference
  gets ``ceil(gpus / gpus_per_node)`` nodes (its service level is firm) with the cap lowered so those
  nodes draw no more IT power than planned; batch and spot get ``floor`` nodes (never more power than
  planned: when in doubt, curtail) at the planned watts per GPU; every other node gets the cluster's
  lowest cap (``min_power_cap_fraction`` × full);
- a batch job or spot pool with no planned GPUs is suspended, otherwise resumed (sent every tick:
  commands are idempotent and expire, so a lost one is repaired at the next tick).

`shed_commands` is the fast path's cut when shedding miners alone cannot meet a DR or AS limit: the
order of shedding follows the contracts — spot first, batch deferred (suspended), inference
power-capped last (to the lowest cap; firm inference is never stopped by hashflex). Each step's kW
is estimated from the profile's power model (`profile.GpuCluster`), cooling included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hashflex.drivers.compute import CapLimits, ComputeCommand
from hashflex.profile import GpuCluster, SiteProfile

__all__ = ["ComputeState", "cap_limits", "node_ids", "plan_commands", "shed_commands"]


def node_ids(cluster: GpuCluster) -> list[str]:
    """The node names of ``cluster``: ``["<id>-n0", "<id>-n1", ...]`` (``cluster.nodes`` of them)."""
    return [f"{cluster.id}-n{k}" for k in range(cluster.nodes)]


def cap_limits(profile: SiteProfile) -> dict[str, CapLimits]:
    """Per-GPU cap range of each cluster, in W: lowest cap (``min_power_cap_fraction`` of full) .. full.

    Raises
    ------
    ValueError
        The profile has no ``compute`` section.
    """
    if profile.compute is None:
        raise ValueError("compute: the profile has no compute section")
    return {c.id: CapLimits(min_w=_full_w(c) * c.min_power_cap_fraction, max_w=_full_w(c))
            for c in profile.compute.clusters}


def _full_w(cluster: GpuCluster) -> float:
    return cluster.full_power_kw / cluster.gpus_per_node * 1000.0


@dataclass
class ComputeState:
    """What was last commanded: node → W per GPU, node → workload id (or None: idle), job → running.

    ``site_kw``: the modelled draw of every cluster, cooling included, kW (what the guard counts as
    non-miner load)."""

    cap_w: dict[str, float] = field(default_factory=dict)
    node_workload: dict[str, str | None] = field(default_factory=dict)
    running: dict[str, bool] = field(default_factory=dict)
    site_kw: float = 0.0


def _node_kw(cluster: GpuCluster, cap_w: float, busy: bool) -> float:
    """Modelled site kW of one node: busy GPUs at their cap, idle ones at idle power; cooling added."""
    it_kw = cap_w * cluster.gpus_per_node / 1000.0 if busy else cluster.idle_power_kw
    return it_kw * (1.0 + cluster.cooling_overhead_fraction)


def _site_kw(profile: SiteProfile, state: ComputeState) -> float:
    total = 0.0
    for cluster in profile.compute.clusters:
        for node in node_ids(cluster):
            workload = state.node_workload.get(node)
            busy = workload is not None and state.running.get(workload, True)
            total += _node_kw(cluster, state.cap_w.get(node, 0.0), busy)
    return total


def plan_commands(profile: SiteProfile, gpus: dict[str, float], it_kw: dict[str, float], now: datetime,
                  expiry_s: float) -> tuple[list[ComputeCommand], ComputeState]:
    """Commands realising one interval of the GPU plan (module docstring for the rules).

    Parameters
    ----------
    profile : SiteProfile
        With a ``compute`` section.
    gpus, it_kw : dict[str, float]
        Per workload id: GPUs working and their IT power in kW, for the interval being started
        (the first row of the schedule's ``gpus_<w>`` / ``it_kw_<w>`` columns; spot draws full power).
    now : datetime
        tz-aware; commands are issued now and expire ``expiry_s`` seconds later.
    expiry_s : float
        Seconds until a cap falls back to the lowest (the driver protocol's safe default).

    Returns
    -------
    (list[ComputeCommand], ComputeState)
        One ``power_cap`` per node, one ``suspend``/``resume`` per batch job and spot pool, and the
        state they leave the clusters in.
    """
    compute = profile.compute
    issued, expires = now, now + timedelta(seconds=expiry_s)
    limits = cap_limits(profile)
    commands: list[ComputeCommand] = []
    state = ComputeState()
    for cluster in compute.clusters:
        lim = limits[cluster.id]
        free = node_ids(cluster)
        workloads = ([(w.id, "inference") for w in compute.inference if w.cluster == cluster.id]
                     + [(w.id, "batch") for w in compute.batch if w.cluster == cluster.id]
                     + [(w.id, "spot") for w in compute.spot if w.cluster == cluster.id])
        for wid, kind in workloads:
            n_gpus = max(float(gpus.get(wid, 0.0)), 0.0)
            if kind == "spot":
                power_kw = n_gpus * lim.max_w / 1000.0
            else:
                power_kw = max(float(it_kw.get(wid, 0.0)), 0.0)
            nodes_wanted = n_gpus / cluster.gpus_per_node
            count = math.ceil(nodes_wanted - 1e-9) if kind == "inference" else math.floor(nodes_wanted + 1e-9)
            count = min(count, len(free))
            mine, free = free[:count], free[count:]
            if kind != "inference":
                state.running[wid] = count > 0
                commands.append(ComputeCommand("resume" if count > 0 else "suspend", cluster.id, issued, expires,
                                               job_id=wid))
            if not mine:
                continue
            # IT power spread over the nodes' GPUs: never more than planned, within the cap range.
            watts = power_kw * 1000.0 / (count * cluster.gpus_per_node)
            watts = min(max(watts, lim.min_w), lim.max_w)
            for node in mine:
                state.cap_w[node], state.node_workload[node] = watts, wid
                commands.append(ComputeCommand("power_cap", cluster.id, issued, expires, node_id=node,
                                               watts_per_gpu=round(watts, 1)))
        for node in free:
            state.cap_w[node], state.node_workload[node] = lim.min_w, None
            commands.append(ComputeCommand("power_cap", cluster.id, issued, expires, node_id=node,
                                           watts_per_gpu=round(lim.min_w, 1)))
    state.site_kw = _site_kw(profile, state)
    return commands, state


def shed_commands(profile: SiteProfile, state: ComputeState, excess_kw: float, now: datetime,
                  expiry_s: float) -> tuple[list[ComputeCommand], ComputeState, list[str]]:
    """The emergency cut of GPU load: spot suspended, then batch, then inference capped to the lowest cap,
    until ``excess_kw`` is shed (or nothing more can be).

    Parameters
    ----------
    profile : SiteProfile
        With a ``compute`` section.
    state : ComputeState
        What was last commanded (`plan_commands`).
    excess_kw : float
        Import above the limit after the miners' cut, kW; nothing is shed when <= 0.
    now, expiry_s
        As for `plan_commands`.

    Returns
    -------
    (list[ComputeCommand], ComputeState, list[str])
        The commands, the state after them, and one reason per step ("DR: suspended spot pool s1").
    """
    compute = profile.compute
    issued, expires = now, now + timedelta(seconds=expiry_s)
    limits = cap_limits(profile)
    clusters = {c.id: c for c in compute.clusters}
    new = ComputeState(dict(state.cap_w), dict(state.node_workload), dict(state.running), state.site_kw)
    commands: list[ComputeCommand] = []
    reasons: list[str] = []
    steps = ([(w, "spot") for w in compute.spot] + [(w, "batch") for w in compute.batch]
             + [(w, "inference") for w in compute.inference])
    for workload, kind in steps:
        if excess_kw <= 0:
            break
        before = _site_kw(profile, new)
        cluster = clusters[workload.cluster]
        nodes = [n for n, w in new.node_workload.items() if w == workload.id]
        if kind in ("spot", "batch"):
            if not new.running.get(workload.id, False):
                continue
            new.running[workload.id] = False
            commands.append(ComputeCommand("suspend", cluster.id, issued, expires, job_id=workload.id))
            reasons.append(f"{'suspended spot pool' if kind == 'spot' else 'deferred batch job'} {workload.id}")
        else:
            lowest = limits[cluster.id].min_w
            nodes = [n for n in nodes if new.cap_w.get(n, lowest) > lowest]
            if not nodes:
                continue
            for node in nodes:
                new.cap_w[node] = lowest
                commands.append(ComputeCommand("power_cap", cluster.id, issued, expires, node_id=node,
                                               watts_per_gpu=round(lowest, 1)))
            reasons.append(f"power-capped inference {workload.id} to {lowest:.0f} W per GPU")
        new.site_kw = _site_kw(profile, new)
        excess_kw -= before - new.site_kw
    return commands, new, reasons
