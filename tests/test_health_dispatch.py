"""Fleet health in the plan (issue 17): telemetry goes into the loop's health book; a unit that must stop
(critical overheat) is planned as unavailable, a warm one may run only modes within 80 % of its group's
top power, and each new finding is published on ``out/alert``. Values by hand below."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.messages import TelemetryMessage
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet

T0 = datetime(2024, 3, 5, 18, 0, tzinfo=timezone.utc)
# Four units: stock 3.0 kW / 100 TH/s, eco 2.2 kW / 80 TH/s (eco ≤ 0.8 × 3.0 = 2.4 kW: a warm unit may run eco).
PROFILE = SiteProfile.model_validate({
    "site": {"name": "health", "settlement_point": "LZ_WEST", "horizon_hours": 1},
    "grid": {"import_limit_kw": 100},
    "miner_groups": [{"id": "air", "model": "S19", "units": 4,
                      "modes": [{"name": "eco", "power_kw": 2.2, "hashrate_th_s": 80, "sound_power_dba": 88},
                                {"name": "stock", "power_kw": 3.0, "hashrate_th_s": 100, "sound_power_dba": 90}]}],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
    "economics": {"hashprice_usd_per_ph_day": 50},
})


def cheap(now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
    return HorizonForecast(pd.date_range(horizon_start, periods=periods, freq="15min"), np.full(periods, 5.0))


class Captured:
    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {}

    def publish_json(self, topic_suffix: str, payload: dict[str, Any]) -> None:
        self.sent.setdefault(topic_suffix, []).append(payload)


def telemetry(miner_id: str, temperature_c: float, at: datetime) -> TelemetryMessage:
    return TelemetryMessage(miner_id=miner_id, power_kw=3.0, hashrate_th_s=100.0, mode="stock",
                            temperature_c=temperature_c, timestamp=at)


def modes(fleet: SimulatedFleet, loop: ControlLoop) -> dict[str, str]:
    return {m.miner_id: m.mode for m in loop.fleet.miners.values()}


def test_health_findings_shape_the_plan_and_raise_alerts() -> None:
    publisher = Captured()
    fleet = SimulatedFleet(PROFILE)
    loop = ControlLoop(PROFILE, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True), publisher=publisher)
    loop.tick(T0)
    assert set(modes(fleet, loop).values()) == {"stock"}  # cheap power: all four in the top mode
    now = T0 + timedelta(minutes=5)
    for miner_id, temp in (("air-1", 105.0), ("air-2", 93.0), ("air-3", 70.0), ("air-4", 70.0)):
        loop.on_message(telemetry(miner_id, temp, now), now)
    alerts = publisher.sent.get("out/alert", [])
    assert sorted((a["miner_id"], a["severity"]) for a in alerts) == [("air-1", "critical"), ("air-2", "warning")]
    loop.tick(T0 + timedelta(minutes=15))
    after = modes(fleet, loop)
    # air-1 (105 °C ≥ 100) is planned as unavailable: three units run; one of them (the warm air-2's
    # derate) only in eco: the plan holds 2 stock + 1 eco.
    running = sorted(mode for mode in after.values() if mode != "sleep")
    assert running == ["eco", "stock", "stock"]
    assert loop.last_report.schedule.frame["units_air_stock"].iloc[0] == 2
    # The dispatcher realises the counts with the right units: the hot unit never runs, the warm one runs eco.
    assert after["air-1"] == "sleep" and after["air-2"] == "eco"
    health = loop.status(T0 + timedelta(minutes=15))["health"]
    assert health["planned_unavailable"] == ["air-1"] and health["derated"] == ["air-2"] and health["finding_count"] == 2
    # One of four units (over 10 % of the fleet) out on a critical finding: /healthz says so.
    causes = loop.status(T0 + timedelta(minutes=15))["unhealthy_causes"]
    assert any(c.startswith("health: 1 of 4 units planned unavailable") for c in causes)


def test_booting_miners_are_not_flagged_as_ignoring_their_setpoints() -> None:
    """Found by a newcomer on the live demo: miners told to run report ``booting`` (and draw 0.02 kW) for
    their boot time; the not-following detector flagged them and the plan dropped half the fleet."""
    data = PROFILE.model_dump(mode="json", exclude_none=True)
    data["miner_groups"][0]["boot_minutes"] = 5.0
    profile = SiteProfile.model_validate(data)
    fleet = SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True), publisher=Captured())
    loop.tick(T0)
    assert loop.fleet.miners["air-1"].mode == "stock"

    def reading(mode: str, power_kw: float, at: datetime) -> TelemetryMessage:
        return TelemetryMessage(miner_id="air-1", power_kw=power_kw, hashrate_th_s=0.0, mode=mode,
                                temperature_c=40.0, timestamp=at)

    for k in range(4):  # booting: another mode than commanded
        at = T0 + timedelta(seconds=30 * (k + 1))
        loop.on_message(reading("booting", 0.02, at), at)
    for k in range(4):  # says stock but still inside the 5-minute boot time
        at = T0 + timedelta(minutes=2, seconds=30 * k)
        loop.on_message(reading("stock", 0.02, at), at)
    assert loop.health.findings("air-1") == []
    for k in range(4):  # past the boot time, in the commanded mode, drawing nothing: that is not following
        at = T0 + timedelta(minutes=6, seconds=30 * k)
        loop.on_message(reading("stock", 0.02, at), at)
    assert [f.kind for f in loop.health.findings("air-1")] == ["not_following"]
