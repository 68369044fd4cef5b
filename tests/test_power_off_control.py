"""Powered off in the control loop (issue 17): a limit below what sleeping units draw is met by opening
PDU outlets — at once by the fast path, and by the plan's ``units_<g>_off`` at the next tick — where the
profile allows it (``pdu_power_off``); elsewhere the guard still says the limit is unreachable.

Site: 10 miners of 3 kW, 0.5 kW each asleep (5 kW standby). A DR event at 2 kW: every unit asleep draws
5 kW; 6 outlets opened leave 4 × 0.5 = 2 kW."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.messages import DREventMessage
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet

T0 = datetime(2024, 3, 5, 18, 0, tzinfo=timezone.utc)


def profile(pdu: bool) -> SiteProfile:
    group = {"id": "air", "model": "S19", "units": 10, "idle_power_kw": 0.5,
             "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 90}]}
    if pdu:
        group.update({"pdu_power_off": True, "cold_boot_s": 300})
    return SiteProfile.model_validate({
        "site": {"name": "pdu", "settlement_point": "LZ_WEST", "horizon_hours": 2},
        "grid": {"import_limit_kw": 100}, "dr": {"issuers": ["utility"]}, "miner_groups": [group],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })


def cheap(now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
    return HorizonForecast(pd.date_range(horizon_start, periods=periods, freq="15min"), np.full(periods, 10.0))


def event() -> DREventMessage:
    return DREventMessage(event_id="eea-3", modification_number=0, program="ERS-10", start=T0 + timedelta(minutes=1),
                          end=T0 + timedelta(hours=2), import_limit_kw=2.0, issuer="utility")


def test_a_limit_below_standby_is_met_by_opening_outlets() -> None:
    site = profile(pdu=True)
    fleet = SimulatedFleet(site)
    loop = ControlLoop(site, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True))
    loop.tick(T0)
    assert fleet.load_kw() == pytest.approx(30.0)  # all ten running at cheap power
    at = T0 + timedelta(minutes=1)
    assert loop.handle_dr(event(), at).status == "accepted"
    # The fast path: ten to sleep (5 kW), then six outlets opened, largest standby first (all equal: by id).
    assert fleet.load_kw() == pytest.approx(2.0) and fleet.powered_off() == {"air": 6}
    assert sum(1 for m in loop.fleet.miners.values() if m.mode == POWERED_OFF) == 6
    assert not any(m.running for m in loop.fleet.miners.values())
    # The next plan knows six are off (GroupState.units_off) and keeps the limit with units_air_off.
    report = loop.tick(T0 + timedelta(minutes=15))
    assert report.schedule.frame["units_air_off"].iloc[0] >= 6
    assert fleet.load_kw() <= 2.0 + 1e-9
    # The same units stay off (no relay cycles spent on swapping them).
    assert {m.miner_id for m in loop.fleet.miners.values() if m.mode == POWERED_OFF} >= {
        f"air-{i:02d}" for i in range(1, 7)}


def test_without_a_pdu_the_guard_says_the_limit_is_unreachable() -> None:
    site = profile(pdu=False)
    fleet = SimulatedFleet(site)
    loop = ControlLoop(site, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True))
    loop.tick(T0)
    loop.handle_dr(event(), T0 + timedelta(minutes=1))
    assert fleet.load_kw() == pytest.approx(5.0)  # every unit asleep: the standby draw remains
    assert POWERED_OFF not in {m.mode for m in loop.fleet.miners.values()}
