"""GPU compute scheduled with miners under one cap (issue 16): hand-checkable cases.

Site: 1,000 miners of 3.25 kW / 100 TH/s (3.25 MW, each earning $0.208/h at $50/PH/day), and a
cluster g1 of 1,000 GPUs (125 nodes × 8; 0.2 kW idle, 1.0 kW full per GPU; cooling +15 %).
Per kW, a miner earns ~$0.064/h, a GPU $2–7/h: the miners are the cheapest load to shed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hashflex.optimize.compute import solve_site
from hashflex.optimize.compute_problem import (
    Batch,
    Cluster,
    ComputeProblem,
    Inference,
    Spot,
)
from hashflex.optimize.problem import Group, Mode, Problem, Receptor

T = 8  # 15-min intervals


def make_problem(*, price=30.0, limit_kw=None, limit_source="DR:event-2mw", inference=True, batch_work_gpu_h=250.0,
                 spot=False, receptor_cap_dba=None) -> Problem:
    cluster = Cluster(id="g1", gpus=1000, idle_kw_per_gpu=0.2, full_kw_per_gpu=1.0, min_cap_fraction=0.5,
                      curve=((0.5, 0.70), (0.857, 0.93), (1.0, 1.0)), cooling_overhead=0.15,
                      cooling_sound_power_dba=100.0, attenuation_db={"home": 55.0})
    compute = ComputeProblem(
        clusters=(cluster,),
        inference=(Inference("chat", 0, 1000.0, np.full(T, 400_000.0), 0.99, 2.0, 20.0),) if inference else (),
        batch=(Batch("j-17", 0, batch_work_gpu_h, batch_work_gpu_h, 500, np.ones(T, dtype=bool), 2.0, 10.0, 1.0),)
        if batch_work_gpu_h else (),
        spot=(Spot("spot", 0, 1000, 1.0),) if spot else (),
    )
    limit = np.full(T, 1e6) if limit_kw is None else np.asarray(limit_kw, dtype=float)
    receptors = ()
    if receptor_cap_dba is not None:
        receptors = (Receptor(id="home", attenuation_db={}, cap_dba=np.asarray(receptor_cap_dba, dtype=float),
                              background_dba=30.0, margin_db=0.0),)
    return Problem(
        interval_start=pd.date_range("2024-03-01 00:00", periods=T, freq="15min", tz="UTC"),
        duration_h=np.full(T, 0.25),
        price_usd_mwh=np.broadcast_to(np.asarray(price, dtype=float), (T,)).copy(),
        price_adder_usd_mwh=0.0,
        hashprice_usd_per_ph_day=np.full(T, 50.0),
        pool_fee=0.0,
        groups=(Group(id="s19", units=1000, modes=(Mode("stock", 3.25, 100.0, 90.0),),
                      units_available=np.full(T, 1000), idle_power_kw=0.01),),
        renewable_kw=np.zeros(T),
        import_limit_kw=limit,
        import_limit_source=tuple(limit_source if v < 1e6 else "import limit" for v in limit),
        export_limit_kw=0.0,
        receptors=receptors,
        intensity_kg_per_mwh=np.full(T, 400.0),
        compute=compute,
    )


def miner_kw(frame: pd.DataFrame) -> np.ndarray:
    return frame["units_s19_stock"].to_numpy() * 3.25


def test_a_2_mw_dr_event_is_met_by_miners_and_the_batch_job_and_inference_keep_running() -> None:
    base = solve_site(make_problem()).frame
    assert np.all(miner_kw(base) == 3250.0)  # every miner earns its energy at $30/MWh
    limit = np.full(T, 1e6)
    limit[3:5] = base["grid_import_kw"].to_numpy()[3:5] - 2000.0
    dr = solve_site(make_problem(limit_kw=limit)).frame
    assert np.all(dr["grid_import_kw"].to_numpy()[3:5] <= limit[3:5] + 1e-6)
    # The 2 MW came from the miners (1,000 × 3.25 kW available), not from the GPUs.
    assert np.all(miner_kw(base)[3:5] - miner_kw(dr)[3:5] >= 2000.0 - 1e-6)
    np.testing.assert_allclose(dr["gpus_j-17"].to_numpy()[3:5], base["gpus_j-17"].to_numpy()[3:5], atol=1e-6)
    np.testing.assert_allclose(dr["work_gpu_h_j-17"].sum(), 250.0, atol=1e-6)
    assert np.all(dr["service_level_chat"] >= 0.99 - 1e-9)
    assert all(reason == "DR:event-2mw" for reason in dr["reason"].iloc[3:5])
    assert "deferred batch job" not in " ".join(dr["reason_detail"])


def test_a_dr_event_deeper_than_the_miners_defers_the_batch_job_and_says_so() -> None:
    # 440 kW. Miners asleep: 10 kW. Inference at 99 % of 400 GPU-eq on 566 GPUs capped at 50 % (0.70
    # throughput): 283 kW, the other 434 GPUs idle 87 kW, ×1.15 cooling = 425 kW; 435 kW in all. The
    # batch job's 50 GPUs (at 0.5 kW, 0.2 idle) would add 17 kW: it must make way.
    limit = np.full(T, 1e6)
    limit[2:4] = 440.0
    frame = solve_site(make_problem(limit_kw=limit, batch_work_gpu_h=100.0)).frame
    assert np.all(frame["grid_import_kw"].to_numpy()[2:4] <= 440.0 + 1e-6)
    assert np.all(miner_kw(frame)[2:4] == 0.0)
    assert np.all(frame["gpus_j-17"].to_numpy()[2:4] < 50.0 - 0.5)  # below its even pace (100 GPU-h / 2 h)
    assert np.all(frame["service_level_chat"] >= 0.99 - 1e-9)  # inference is capped last, kept
    assert all("DR:event-2mw: deferred batch job j-17" in d for d in frame["reason_detail"].iloc[2:4])
    np.testing.assert_allclose(frame["work_gpu_h_j-17"].sum(), 100.0, atol=1e-6)  # done elsewhere


def test_a_deadline_forces_the_batch_job_into_expensive_hours_and_the_plan_says_so() -> None:
    # Cheap first hour ($20), dear second ($400). 500 GPUs can do at most 500 GPU-h in the cheap hour
    # (uncapped); the job needs 750 by its deadline, so ≥ 250 GPU-h run at $400/MWh.
    price = np.array([20.0] * 4 + [400.0] * 4)
    frame = solve_site(make_problem(price=price, batch_work_gpu_h=750.0, inference=False)).frame
    dear = frame.iloc[4:]
    assert dear["work_gpu_h_j-17"].sum() >= 250.0 - 1e-6
    np.testing.assert_allclose(frame["work_gpu_h_j-17"].sum(), 750.0, atol=1e-6)
    assert np.all(miner_kw(dear) == 0.0)  # miners do not pay at $400/MWh
    running = dear[dear["gpus_j-17"] > 0.5]
    assert len(running) > 0
    assert all(r == "deadline" for r in running["reason"])
    assert all("deadline: batch job j-17 runs" in d and "$400.00/MWh" in d for d in running["reason_detail"])


def test_noise_from_cooling_binds_at_night() -> None:
    # Cooling 100 dB(A) − 55 dB = 45 dB(A) at the home at full IT load; night cap 40 dB(A), 30 background.
    cap = np.array([np.inf] * 4 + [40.0] * 4)
    frame = solve_site(make_problem(inference=False, batch_work_gpu_h=0.0, spot=True, receptor_cap_dba=cap)).frame
    day, night = frame.iloc[:4], frame.iloc[4:]
    np.testing.assert_allclose(day["gpus_spot"], 1000.0, atol=1e-6)
    assert np.all(night["cluster_kw_g1"].to_numpy() < day["cluster_kw_g1"].to_numpy() - 100.0)
    assert np.all(night["noise_dba_home"] <= 40.0 + 1e-6)
    assert np.all(night["noise_dba_home"] >= 40.0 - 0.05)  # binding, not merely below
    assert np.all(miner_kw(night) == 3250.0)  # the miners are far from the home
    assert all(r == "noise:home" for r in night["reason"])
    assert all("noise: cooling of cluster g1" in d for d in night["reason_detail"])
