"""The profile's ``compute`` section (issue 16): parsed, checked field by field, turned into the
optimizer's arrays by the one builder, and driven by the bundled Azure inference trace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from hashflex.data.ai_traces import trace_demand_tokens_per_s, trace_tokens_per_s
from hashflex.optimize.compute import solve_site
from hashflex.optimize.problem import problem_from_profile
from hashflex.profile import ProfileError, load_profile, parse_profile

COMPUTE = {
    "clusters": [{"id": "g1", "nodes": 4, "gpus_per_node": 8, "idle_power_kw": 1.6, "full_power_kw": 8.0,
                  "cooling_overhead_fraction": 0.15, "cooling_sound_power_dba": 95}],
    "inference": [{"id": "chat", "cluster": "g1", "tokens_per_s_per_gpu": 1000, "demand_tokens_per_s": 10000,
                   "demand_trace": "azure_conv", "service_level": 0.99, "revenue_usd_per_million_tokens": 2.0,
                   "penalty_usd_per_million_tokens": 20.0}],
    "batch": [{"id": "j-17", "cluster": "g1", "gpu_hours": 20, "max_gpus": 16,
               "release": "2024-03-05T00:00:00-06:00", "deadline": "2024-03-05T06:00:00-06:00",
               "revenue_usd_per_gpu_hour": 2.0, "late_penalty_usd_per_gpu_hour": 10.0,
               "checkpoint_cost_usd_per_gpu": 0.5}],
    "spot": [{"id": "spot", "cluster": "g1", "max_gpus": 32, "price_usd_per_gpu_hour": 0.8}],
}


def profile_text(compute: dict, receptor_extra: dict | None = None) -> str:
    data = load_profile("quiet_hollow").model_dump(mode="json", exclude_none=True)
    data["compute"] = compute
    if receptor_extra:
        data["receptors"][0]["distance_m"].update(receptor_extra)
    # Every receptor must place every loud source; the clusters these tests add are not heard where not placed.
    for receptor in data["receptors"]:
        for cluster in compute.get("clusters", []):
            if cluster["id"] not in receptor.get("distance_m", {}):
                receptor.setdefault("attenuation_db", {})[cluster["id"]] = float("inf")
    return yaml.safe_dump(data)


def test_a_profile_with_compute_plans_gpus_beside_the_miners() -> None:
    profile = parse_profile(profile_text(COMPUTE, {"g1": 300}))
    start = pd.date_range("2024-03-05 06:00", periods=24, freq="15min", tz="UTC")  # 00:00-06:00 Central
    problem = problem_from_profile(profile, start, np.full(24, 25.0))
    assert problem.compute is not None and problem.compute.clusters[0].gpus == 32
    assert problem.compute.clusters[0].attenuation_db["maple_lane"] > 0  # cluster placed by distance
    frame = solve_site(problem).frame
    np.testing.assert_allclose(frame["work_gpu_h_j-17"].sum(), 20.0, atol=1e-6)
    assert np.all(frame["service_level_chat"] >= 0.99 - 1e-9)
    assert np.all(frame["grid_import_kw"] <= problem.import_limit_kw + 1e-6)
    # The trace drives the demand: its busiest minute is the contract's 10,000 tokens/s.
    demand = frame["demand_tokens_per_s_chat"].to_numpy()
    assert demand.max() <= 10_000.0 + 1e-9 and demand.min() > 0 and np.ptp(demand) > 0


@pytest.mark.parametrize("patch, field", [
    ({"clusters": [{**COMPUTE["clusters"][0], "full_power_kw": 1.0}]}, "full_power_kw must exceed idle_power_kw"),
    ({"clusters": [{**COMPUTE["clusters"][0], "throughput_curve": [[0.5, 0.7], [0.7, 0.75], [1.0, 1.0]]}]},
     "compute.clusters.0: Value error, throughput_curve must be concave"),
    ({"batch": [{**COMPUTE["batch"][0], "deadline": "2024-03-04T06:00:00-06:00"}]}, "deadline must be after release"),
    ({"batch": [{**COMPUTE["batch"][0], "release": "2024-03-05T00:00:00"}]}, "need a UTC offset"),
    ({"spot": [{**COMPUTE["spot"][0], "cluster": "g9"}]}, "unknown cluster 'g9'"),
    ({"inference": [{**COMPUTE["inference"][0], "service_level": 1.5}]}, "compute.inference.0.service_level"),
])
def test_bad_compute_input_names_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(profile_text({**COMPUTE, **patch}), source="site.yaml")
    assert "site.yaml" in str(caught.value) and field in str(caught.value)


def test_trace_demand_is_the_trace_rate_scaled_to_the_peak() -> None:
    rate = trace_tokens_per_s("azure_conv")
    assert len(rate) == 58  # complete minutes of the hour
    start = pd.date_range("2024-01-01", periods=1, freq="15min", tz="UTC")
    # Interval 00:00-00:15 = the mean of minutes 0..14 of the trace, scaled peak → 1,000 tokens/s.
    expected = 1000.0 * rate[:15].mean() / rate.max()
    np.testing.assert_allclose(trace_demand_tokens_per_s("azure_conv", start, 1000.0,
                                                         pd.Timedelta(minutes=15)), [expected])
    with pytest.raises(ValueError, match="demand_trace"):
        trace_tokens_per_s("azure_nope")


def test_a_batch_job_outside_the_horizon_asks_for_no_work_and_pays_no_lateness() -> None:
    # Found while backtesting day by day: a job whose deadline had passed was charged as late in
    # every later day's plan (its whole work, with no window to do it in).
    profile = parse_profile(profile_text(COMPUTE))
    start = pd.date_range("2024-03-06 06:00", periods=8, freq="15min", tz="UTC")  # the day after j-17's window
    problem = problem_from_profile(profile, start, np.full(8, 25.0))
    job = problem.compute.batch[0]
    assert not job.window.any() and job.work_gpu_h == 0.0
    frame = solve_site(problem).frame
    assert frame["work_gpu_h_j-17"].sum() == 0.0
    assert solve_site(problem).info.objective_usd > 0  # no $10/GPU-h × 20 GPU-h lateness charged
