"""Inside the interval, without a solve: a 5-minute real-time price puts groups under water and the
breakeven ladder sleeps them within one message (issue 14); the site meter reads over the limit and
the guard cuts more within one reading, over a real Modbus TCP server (issue 17)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from hashflex.control.daemon import _start_meter
from hashflex.control.ladder import breakeven_ladder, under_water
from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.drivers.modbus_meter import MeterRegisterMap
from hashflex.messages import DREventMessage, PriceMessage
from hashflex.profile import SiteProfile
from hashflex.sim.modbus_devices import SimulatedMeter
from hashflex.sim.site import SimulatedFleet

from conftest import poll_until

T0 = datetime.now(timezone.utc).replace(second=0, microsecond=0)  # the meter poller runs on the wall clock

PROFILE = SiteProfile.model_validate({
    "site": {"name": "ladder", "settlement_point": "HB_WEST", "horizon_hours": 2},
    "grid": {"import_limit_kw": 1000, "price_adders_usd_mwh": {"tdsp": 5.0}},
    "dr": {"issuers": ["utility"]},
    "miner_groups": [
        {"id": "old", "model": "S19", "units": 4, "idle_power_kw": 0.2,
         "modes": [{"name": "stock", "power_kw": 3.2, "hashrate_th_s": 100, "sound_power_dba": 80}]},
        {"id": "new", "model": "S21", "units": 4, "idle_power_kw": 0.2,
         "modes": [{"name": "stock", "power_kw": 3.7, "hashrate_th_s": 200, "sound_power_dba": 80}]},
    ],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test", "internal_price_usd_per_t": 50},
    "economics": {"hashprice_usd_per_ph_day": 48.0, "pool_fee_pct": 2.0},
})


def breakeven_by_hand(hashrate_th_s: float, power_kw: float) -> float:
    revenue_usd_per_h = hashrate_th_s * 48.0 / 1000 / 24 * 0.98
    return revenue_usd_per_h / ((power_kw - 0.2) / 1000) - 5.0 - 50 * 400 / 1000


def test_breakeven_ladder_by_hand() -> None:
    ladder = breakeven_ladder(PROFILE)
    by = {(r.group_id, r.mode): r.breakeven_usd_mwh for r in ladder}
    assert by["old", "stock"] == pytest.approx(breakeven_by_hand(100, 3.2))  # 100·0.002·0.98/0.003 − 25 = 40.33
    assert by["new", "stock"] == pytest.approx(breakeven_by_hand(200, 3.7))  # 0.392/0.0035 − 25 = 87.0
    assert [r.group_id for r in ladder] == ["old", "new"], "lowest breakeven first"
    assert set(under_water(ladder, 60.0)) == {("old", "stock")}


def running_loop() -> tuple[ControlLoop, SimulatedFleet]:
    def cheap(now, start, periods):  # noqa: ANN001, ANN202
        return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 10.0))

    fleet = SimulatedFleet(PROFILE)
    loop = ControlLoop(PROFILE, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True))
    loop.tick(T0)
    assert sum(fleet.running().values()) == 8
    return loop, fleet


def sced(price: float, start: datetime = T0, point: str = "HB_WEST") -> PriceMessage:
    return PriceMessage(settlement_point=point, market="RT", interval_start=start,
                        interval_end=start + timedelta(minutes=5), price_usd_mwh=price, published_at=start)


def test_a_five_minute_spike_sleeps_the_groups_under_water_in_one_message() -> None:
    loop, fleet = running_loop()
    loop.on_message(sced(60.0), T0 + timedelta(minutes=1))
    assert fleet.running() == {("new", "stock"): 4}, "60 $/MWh is above the old units' 40 $/MWh breakeven only"
    loop.on_message(sced(2_000.0, T0 + timedelta(minutes=5)), T0 + timedelta(minutes=6))
    assert fleet.running() == {}, "a 2,000 $/MWh SCED price sleeps everything at once"
    assert loop.counters["fast_path_actions"] == 2 and loop.replan_reasons


def test_prices_that_are_not_now_or_not_here_do_not_cut() -> None:
    loop, fleet = running_loop()
    for message in (sced(2_000.0, point="HB_NORTH"), sced(2_000.0, T0 + timedelta(hours=1)),
                    sced(2_000.0, T0 - timedelta(hours=1)),
                    sced(2_000.0).model_copy(update={"market": "DA"}), sced(20.0)):
        assert loop.handle_price(message, T0 + timedelta(minutes=1)) is False
    assert sum(fleet.running().values()) == 8


def test_a_meter_reading_over_the_limit_cuts_more_over_modbus() -> None:
    """The model says the site is under the DR limit; the meter (a real Modbus TCP server) reads
    unmodelled load on top, and the poller's first reading makes the guard cut the excess."""
    loop, fleet = running_loop()
    event = DREventMessage(event_id="ev", modification_number=0, program="utility", start=T0,
                           end=T0 + timedelta(hours=1), import_limit_kw=20.0, issuer="utility")
    loop.handle_dr(event, T0 + timedelta(minutes=1))
    modelled = fleet.load_kw()
    assert modelled <= 20.0
    registers = MeterRegisterMap(address=52)
    with SimulatedMeter(lambda: fleet.load_kw() + 6.0, registers) as meter:  # 6 kW the model does not know
        profile = PROFILE.model_copy(update={"site_meter": {"host": meter.host, "port": meter.port,
                                                            "registers": {"address": 52}, "poll_s": 0.2,
                                                            "max_age_s": 5.0}})
        loop.profile = profile
        poller = _start_meter(profile, loop)
        try:
            poll_until(lambda: fleet.load_kw() + 6.0 <= 20.0 + 1e-6, 10, message="the metered cut")
        finally:
            poller.stop()
    assert fleet.load_kw() < modelled
