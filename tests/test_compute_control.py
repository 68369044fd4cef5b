"""The control loop commands GPU clusters (issue 16): the plan's first interval becomes power caps and
suspend/resume over the compute driver (a real Mosquitto broker and the simulated cluster agent), the
guard counts the clusters' draw, and an emergency DR sheds GPU load in the contracts' order when
shedding miners alone cannot meet the limit: spot first, batch deferred, inference capped last."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from hashflex.control.compute_commands import ComputeState, cap_limits, node_ids, plan_commands, shed_commands
from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.drivers.compute import MqttComputeDriver
from hashflex.messages import DREventMessage
from hashflex.profile import SiteProfile
from hashflex.sim.cluster import SimulatedCluster
from hashflex.sim.site import SimulatedFleet

T0 = datetime(2024, 3, 5, 12, 0, tzinfo=timezone.utc)  # 06:00 Central, inside the batch window

# 10 miners of 3 kW; one cluster of 2 nodes × 8 GPUs: 1.6 kW idle and 8 kW full per node (200 W idle,
# 1,000 W full per GPU; lowest cap 50 % = 500 W), cooling +15 %.
PROFILE = SiteProfile.model_validate({
    "site": {"name": "gpu", "settlement_point": "LZ_WEST", "horizon_hours": 2, "managers": ["site_manager"]},
    "grid": {"import_limit_kw": 200},
    "dr": {"issuers": ["utility"]},
    "miner_groups": [{"id": "air", "model": "S19", "units": 10,
                      "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 90}]}],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
    "economics": {"hashprice_usd_per_ph_day": 50},
    "compute": {
        "clusters": [{"id": "g1", "nodes": 2, "gpus_per_node": 8, "idle_power_kw": 1.6, "full_power_kw": 8.0,
                      "cooling_overhead_fraction": 0.15}],
        "inference": [{"id": "chat", "cluster": "g1", "tokens_per_s_per_gpu": 1000, "demand_tokens_per_s": 3000,
                       "service_level": 1.0, "revenue_usd_per_million_tokens": 2.0,
                       "penalty_usd_per_million_tokens": 20.0}],
        "batch": [{"id": "j-17", "cluster": "g1", "gpu_hours": 8, "max_gpus": 8,
                   "release": "2024-03-05T00:00:00-06:00", "deadline": "2024-03-05T08:00:00-06:00",
                   "revenue_usd_per_gpu_hour": 2.0, "late_penalty_usd_per_gpu_hour": 10.0}],
    },
})


def cheap(now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
    index = pd.date_range(horizon_start, periods=periods, freq="15min")
    return HorizonForecast(interval_start=index, price_usd_mwh=np.full(periods, 10.0))


def test_plan_commands_by_hand() -> None:
    # 3 inference GPUs at 2.4 kW IT → 1 node (ceil), cap 2,400/8 = 300 W → raised to the lowest cap 500 W;
    # batch 8 GPUs at 8 kW → 1 node (floor) at 1,000 W; no node left idle.
    commands, state = plan_commands(PROFILE, {"chat": 3.0, "j-17": 8.0}, {"chat": 2.4, "j-17": 8.0}, T0, 1800.0)
    assert node_ids(PROFILE.compute.clusters[0]) == ["g1-n0", "g1-n1"]
    caps = {c.node_id: c.watts_per_gpu for c in commands if c.kind == "power_cap"}
    assert caps == {"g1-n0": 500.0, "g1-n1": 1000.0}
    assert [(c.kind, c.job_id) for c in commands if c.kind != "power_cap"] == [("resume", "j-17")]
    assert all(c.expires_at == T0 + timedelta(seconds=1800) for c in commands)
    # Modelled draw: (8 × 0.5 + 8 × 1.0) kW IT × 1.15 = 13.8 kW.
    assert state.site_kw == pytest.approx(13.8)
    # Batch with 7.5 GPUs planned: floor → no node (never more than planned), and the job is suspended.
    commands, state = plan_commands(PROFILE, {"chat": 3.0, "j-17": 7.5}, {"chat": 2.4, "j-17": 7.5}, T0, 1800.0)
    assert ("suspend", "j-17") in [(c.kind, c.job_id) for c in commands]
    assert state.node_workload["g1-n1"] is None and state.cap_w["g1-n1"] == cap_limits(PROFILE)["g1"].min_w


def test_shed_order_is_batch_before_inference() -> None:
    _, state = plan_commands(PROFILE, {"chat": 8.0, "j-17": 8.0}, {"chat": 8.0, "j-17": 8.0}, T0, 1800.0)
    assert state.site_kw == pytest.approx(18.4)  # 2 nodes × 8 kW × 1.15
    # 5 kW over: suspending the batch frees (8 − 1.6) × 1.15 = 7.36 kW; inference keeps its cap.
    commands, after, reasons = shed_commands(PROFILE, state, 5.0, T0, 1800.0)
    assert reasons == ["deferred batch job j-17"] and [c.kind for c in commands] == ["suspend"]
    assert after.site_kw == pytest.approx(18.4 - 7.36)
    # 9 kW over: the batch is not enough; inference is capped to 500 W per GPU (frees 4 × 1.15 = 4.6 kW).
    commands, after, reasons = shed_commands(PROFILE, state, 9.0, T0, 1800.0)
    assert reasons == ["deferred batch job j-17", "power-capped inference chat to 500 W per GPU"]
    assert after.site_kw == pytest.approx(18.4 - 7.36 - 4.6)
    assert shed_commands(PROFILE, ComputeState(), 0.0, T0, 60.0)[0] == []


@pytest.fixture
def gpu_site(mosquitto):
    clock = {"now": T0}
    cluster = SimulatedCluster("gpu", "g1", node_ids(PROFILE.compute.clusters[0]), ["j-17"],
                               cap_limits(PROFILE)["g1"], host=mosquitto.host, port=mosquitto.port,
                               clock=lambda: clock["now"], cooling_overhead=0.15)
    cluster.start()
    driver = MqttComputeDriver("gpu", cap_limits(PROFILE), mosquitto.host, mosquitto.port, ack_timeout_s=5.0)
    fleet = SimulatedFleet(PROFILE)
    loop = ControlLoop(PROFILE, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True),
                       compute_driver=driver)
    yield loop, cluster, fleet
    loop.close()
    driver.close()
    cluster.stop()


def test_the_loop_commands_the_cluster_and_sheds_it_in_a_dr_event(gpu_site) -> None:
    loop, cluster, fleet = gpu_site
    report = loop.tick(T0)
    loop.flush_sends()
    row = report.schedule.frame.iloc[0]
    # The plan serves inference (3,000 tokens/s = 3 GPUs) and runs the batch job at cheap prices.
    assert row["gpus_chat"] >= 3.0 - 1e-6 and row["gpus_j-17"] > 0
    assert loop.counters["compute_commands"] > 0 and loop.counters["compute_command_failures"] == 0
    # The agent holds exactly the caps the loop commanded, and the guard counts the clusters' draw.
    assert cluster.cap_w == loop.compute_state.cap_w
    assert loop.measurements.auxiliary_kw == pytest.approx(loop.compute_state.site_kw) and loop.compute_state.site_kw > 0
    running_before = cluster.job_running["j-17"]
    # An emergency DR event at 5 kW: sleeping every miner (idle 0 kW) cannot meet it while the GPUs draw
    # more; the fast path defers the batch job and caps inference to the lowest cap.
    ack = loop.handle_dr(DREventMessage(event_id="eea-1", modification_number=0, program="ERS-10", start=T0,
                                        end=T0 + timedelta(hours=1), import_limit_kw=5.0, issuer="utility"), T0)
    loop.flush_sends()
    assert ack.status == "accepted"
    assert all(m.mode == "sleep" for m in loop.fleet.miners.values())
    assert running_before and cluster.job_running["j-17"] is False
    lowest = cap_limits(PROFILE)["g1"].min_w
    chat_nodes = [n for n, w in loop.compute_state.node_workload.items() if w == "chat"]
    assert chat_nodes and all(cluster.cap_w[n] == lowest for n in chat_nodes)
    assert loop.compute_state.site_kw < report.schedule.frame.iloc[0]["cluster_kw_g1"] + 1e-9
