"""What a live interval's measurement record carries for the evidence reports (issue 13): the
grid carbon intensity measured in the interval (in/carbon) with its source, the settled price as
the time-weighted mean of finer real-time prices, the import limit in force and its source."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.records import IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.messages import CarbonIntensityMessage, PriceMessage
from hashflex.profile import load_profile
from hashflex.sim.site import SimulatedFleet
from hashflex.store import Store

PROFILE = load_profile("quiet_hollow")
T0 = datetime(2025, 7, 1, 15, 0, tzinfo=timezone.utc)


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def record(self, kind: str, payload: dict, at: datetime) -> None:
        self.records.append((kind, payload))


def test_live_measurement_carries_intensity_price_and_limit(tmp_path: Path) -> None:
    def forecaster(now, start, periods):  # noqa: ANN001, ANN202
        return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 20.0))

    recorder = Recorder()
    with Store(tmp_path / "s.db") as store:
        for k, price in enumerate([10.0, 10.0, 100.0]):  # three 5-minute prices: 40 $/MWh settled
            start = T0 + timedelta(minutes=5 * k)
            store.put(PriceMessage(settlement_point=PROFILE.site.settlement_point, market="RT", interval_start=start,
                                   interval_end=start + timedelta(minutes=5), price_usd_mwh=price))
        store.put(CarbonIntensityMessage(intensity_kg_per_mwh=412.0, kind="average", timestamp=T0 + timedelta(minutes=3),
                                         source="ERCOT fuel mix (test)"))
        store.flush()
        loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE), store=store,
                           recorder=recorder, meter=IntervalMeter(), solver=SolveRunner(inline=True))
        loop.tick(T0)
        # One miner reports: the load is measured (issue 15, H9: without telemetry it is "unmeasured")
        from hashflex.messages import TelemetryMessage
        loop.on_message(TelemetryMessage(miner_id=next(iter(PROFILE.miner_ids())), power_kw=3.0, hashrate_th_s=100.0,
                                         mode="stock", temperature_c=60.0, timestamp=T0 + timedelta(minutes=1)),
                        T0 + timedelta(minutes=1))
        loop.tick(T0 + timedelta(minutes=15))  # closes the first interval
    (measurement,) = [p for k, p in recorder.records if k == "measurement"]
    assert measurement["import_kw"] == pytest.approx(3.0)  # the one miner's telemetry, no renewable
    assert measurement["intensity_kg_per_mwh"] == 412.0
    assert measurement["intensity_source"] == "ERCOT fuel mix (test)"
    assert measurement["price_usd_mwh"] == pytest.approx(40.0)
    assert measurement["import_limit_kw"] == PROFILE.grid.import_limit_kw
    assert measurement["import_limit_source"] == "interconnection"
    assert measurement["source"] == "metered"


def test_a_live_daemon_fed_by_simulators_labels_its_measurements_simulated(tmp_path: Path) -> None:
    """Found by a newcomer: `hashflex run` controlling `hashflex sim` miners wrote a trail the report
    called real. Simulated telemetry and noise carry ``simulated: true``; the loop then labels
    every measurement simulated, and the report follows."""
    from hashflex.messages import TelemetryMessage

    def forecaster(now, start, periods):  # noqa: ANN001, ANN202
        return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 20.0))

    recorder = Recorder()
    loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE), recorder=recorder,
                       meter=IntervalMeter(), solver=SolveRunner(inline=True))
    loop.tick(T0)
    miner = next(iter(PROFILE.miner_ids()))
    loop.on_message(TelemetryMessage(miner_id=miner, power_kw=3.0, hashrate_th_s=100.0, mode="stock",
                                     temperature_c=60.0, timestamp=T0, simulated=True), T0)
    loop.tick(T0 + timedelta(minutes=15))
    (measurement,) = [p for k, p in recorder.records if k == "measurement"]
    assert measurement["source"] == "simulated" and loop.simulated_inputs


def test_an_interval_without_a_settled_price_is_recorded_with_unknown_cost(tmp_path: Path) -> None:
    """QSE/auditor review (issue 15): an interval with no real-time price was recorded at an
    energy cost of $0; the cost is unknown, so the record says null (the report leaves it out)."""
    def forecaster(now, start, periods):  # noqa: ANN001, ANN202
        return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 20.0))

    recorder = Recorder()
    with Store(tmp_path / "s.db") as store:  # no price stored at all
        loop = ControlLoop(PROFILE, forecaster=forecaster, driver=SimulatedFleet(PROFILE), store=store,
                           recorder=recorder, meter=IntervalMeter(), solver=SolveRunner(inline=True))
        loop.tick(T0)
        loop.tick(T0 + timedelta(minutes=15))
    (measurement,) = [p for k, p in recorder.records if k == "measurement"]
    assert measurement["price_usd_mwh"] is None
    assert measurement["energy_cost_usd"] is None
