"""The multiresolution grid carries compute (issue 16 leftover): `problem.coarsen` conserves the
tokens demanded, holds batch windows to whole blocks (release up, deadline down), and a compute
site's coarse solve keeps the inference service level in every base interval and earns what the
full-resolution solve earns within a stated tolerance.

Site (hand-checkable): 200 miners of 3.25 kW / 100 TH/s; a cluster g1 of 400 GPUs (0.2 kW idle,
1.0 kW full per GPU, +15 % cooling); firm inference driven by the bundled Azure trace (peak 200,000
tokens/s at 1,000 tokens/s per GPU: 200 GPU-equivalents), a 300 GPU-h batch job due at 20:00,
prices $20/MWh except $300/MWh 16:00–19:00; 24 h of 15-minute intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.data.ai_traces import trace_demand_tokens_per_s
from hashflex.optimize.compute_problem import Batch, Cluster, ComputeProblem, Inference
from hashflex.optimize.problem import Group, Mode, Problem, coarsen
from hashflex.optimize.solve import solve, solve_multiresolution

T = 96
START = pd.date_range("2024-03-05 00:00", periods=T, freq="15min", tz="UTC")
# The coarse plan may earn less than the fine one (a constant capacity per hour must cover the
# hour's busiest quarter, and windows shrink to whole hours), never more than the LP bound allows.
OBJECTIVE_TOLERANCE = 0.01  # 1 % of the fine plan's profit


def make_problem(limit_kw: float = 1e6) -> Problem:
    cluster = Cluster(id="g1", gpus=400, idle_kw_per_gpu=0.2, full_kw_per_gpu=1.0, min_cap_fraction=0.5,
                      curve=((0.5, 0.70), (0.857, 0.93), (1.0, 1.0)), cooling_overhead=0.15,
                      cooling_sound_power_dba=0.0, attenuation_db={})
    demand = trace_demand_tokens_per_s("azure_conv", START, 200_000.0)
    hours = (START - START[0]) / pd.Timedelta(hours=1)
    window = np.asarray((hours >= 2.5) & (hours < 20.0))  # released 02:30, due 20:00
    compute = ComputeProblem(
        clusters=(cluster,),
        inference=(Inference("chat", 0, 1000.0, demand, 0.99, 2.0, 20.0),),
        batch=(Batch("j-1", 0, 300.0, 300.0, 100, window, 2.0, 10.0, 0.5),),
    )
    price = np.where((hours >= 16) & (hours < 19), 300.0, 20.0)
    return Problem(
        interval_start=START, duration_h=np.full(T, 0.25), price_usd_mwh=price, price_adder_usd_mwh=0.0,
        hashprice_usd_per_ph_day=np.full(T, 50.0), pool_fee=0.0,
        groups=(Group(id="s19", units=200, modes=(Mode("stock", 3.25, 100.0, 90.0),),
                      units_available=np.full(T, 200), idle_power_kw=0.01),),
        renewable_kw=np.zeros(T), import_limit_kw=np.full(T, limit_kw),
        import_limit_source=("import limit",) * T, export_limit_kw=0.0, receptors=(),
        intensity_kg_per_mwh=np.full(T, 400.0), compute=compute,
    )


def test_coarsen_conserves_tokens_and_rounds_batch_windows_inward() -> None:
    problem = make_problem()
    coarse, block_of = coarsen(problem, fine_intervals=16, block_h=1.0)
    assert coarse.T == 16 + 20  # 4 h at 15 min, then 20 hourly blocks
    fine_w, coarse_w = problem.compute.inference[0], coarse.compute.inference[0]
    # Tokens demanded: Σ rate × hours is the same on both grids.
    np.testing.assert_allclose((coarse_w.demand_tokens_per_s * coarse.duration_h).sum(),
                               (fine_w.demand_tokens_per_s * problem.duration_h).sum(), rtol=1e-12)
    # The peak is the busiest base interval of each block, at or above the block's mean.
    for b in range(coarse.T):
        members = fine_w.demand_tokens_per_s[block_of == b]
        assert coarse_w.peak_demand_tokens_per_s[b] == pytest.approx(members.max())
        assert coarse_w.demand_tokens_per_s[b] == pytest.approx(members.mean())
    # Release 02:30 sits inside the fine part (kept exact); deadline 20:00 falls on a block boundary.
    window = coarse.compute.batch[0].window
    assert not window[:10].any() and window[10:16].all()  # 02:30–04:00 at 15 min
    hourly = window[16:]  # blocks 04:00, 05:00, ... 23:00
    assert hourly[:16].all() and not hourly[16:].any()  # up to the 19:00–20:00 block
    # A window ending mid-block (19:30) loses that block: the deadline is rounded down.
    shifted = make_problem()
    job = shifted.compute.batch[0]
    hours = (START - START[0]) / pd.Timedelta(hours=1)
    import dataclasses
    cut = dataclasses.replace(job, window=np.asarray((hours >= 2.5) & (hours < 19.5)))
    shifted = dataclasses.replace(shifted, compute=dataclasses.replace(shifted.compute, batch=(cut,)))
    coarse2, _ = coarsen(shifted, fine_intervals=16, block_h=1.0)
    assert coarse2.compute.batch[0].window[16:].sum() == 15  # 04:00–19:00, not the 19:00 block


def test_a_compute_site_coarse_solve_keeps_the_sla_and_matches_the_fine_objective() -> None:
    problem = make_problem()
    fine = solve(problem)
    multi = solve_multiresolution(problem, fine_intervals=16, block_h=1.0)
    frame = multi.frame
    assert len(frame) == T
    # The service level holds in every base interval, far part included.
    assert np.all(frame["service_level_chat"].to_numpy() >= 0.99 - 1e-9)
    assert np.all(fine.frame["service_level_chat"].to_numpy() >= 0.99 - 1e-9)
    # The batch job does its 300 GPU-h by its deadline on the expanded grid too.
    np.testing.assert_allclose(frame["work_gpu_h_j-1"].sum(), 300.0, atol=1e-6)
    hours = (START - START[0]) / pd.Timedelta(hours=1)
    assert frame["gpus_j-1"].to_numpy()[(hours < 2.5) | (hours >= 20.0)].max() <= 1e-9
    assert np.all(frame["grid_import_kw"].to_numpy() <= problem.import_limit_kw + 1e-6)
    # Objective: the expanded plan's profit (recomputed on the base grid) and the coarse solve's own
    # objective are both within 1 % of the full-resolution plan's.
    fine_profit, multi_profit = fine.total_profit_usd, multi.total_profit_usd
    assert abs(multi_profit - fine_profit) <= OBJECTIVE_TOLERANCE * abs(fine_profit)
    assert abs(multi.info.objective_usd - fine.info.objective_usd) <= OBJECTIVE_TOLERANCE * abs(fine.info.objective_usd)


def test_the_coarse_plan_holds_inference_capacity_for_the_busiest_quarter_under_a_tight_limit() -> None:
    # 270 kW: all miners asleep (2 kW), 400 GPUs idle 92 kW with cooling; inference at 99 % of the
    # trace's busiest quarter needs ~170 kW more. Tight enough that a plan sized to the hourly mean
    # would leave the busiest quarter short; the coarse plan must not.
    problem = make_problem(limit_kw=270.0)
    multi = solve_multiresolution(problem, fine_intervals=16, block_h=1.0)
    frame = multi.frame
    assert np.all(frame["grid_import_kw"].to_numpy() <= 270.0 + 1e-6)
    assert np.all(frame["service_level_chat"].to_numpy() >= 0.99 - 1e-9)
