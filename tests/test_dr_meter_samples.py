"""DR performance in seconds (issue 13): while an event is in force the loop writes meter samples
(site meter, or the miners' telemetry when there is no meter) at most once a second, and the report
measures when the metered import crossed the limit from them instead of bounding it by an interval."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from hashflex.audit import AuditLog, config_payload, dr_event_payload, measurement_payload
from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.messages import DREventMessage, TelemetryMessage
from hashflex.profile import load_profile
from hashflex.report import build_report
from hashflex.sim.site import SimulatedFleet

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
PROFILE = load_profile("quiet_hollow").model_copy(update={"dr": load_profile("quiet_hollow").dr.model_copy(
    update={"issuers": ["utility"]})})


def test_the_report_measures_the_crossing_from_meter_samples(tmp_path: Path) -> None:
    path = tmp_path / "trail.db"
    event = DREventMessage(event_id="ev1", modification_number=0, program="ERS-10", start=T0,
                           end=T0 + timedelta(hours=1), import_limit_kw=200.0, issuer="utility")
    with AuditLog(path) as log:
        log.append("config", config_payload(PROFILE, "start"), T0 - timedelta(hours=2))
        log.append("dr_event", dr_event_payload(event, True, "accepted", 200.0, T0), T0)
        # 1 s samples: 900 kW for 6 s, then 150 kW from T0 + 7 s
        for s in range(12):
            kw = 900.0 if s < 7 else 150.0
            log.append("meter_sample", {"at": (T0 + timedelta(seconds=s)).isoformat(), "import_kw": kw,
                                        "source": "site meter"}, T0 + timedelta(seconds=s))
        for k in range(4):
            start = T0 + timedelta(minutes=15 * k)
            log.append("measurement", measurement_payload(start, 0.25, 180.0, 0.0, 180.0, 1000.0, {}, None, 30.0,
                                                          1.0, 1.0, full_load_kw=1000.0),
                       start + timedelta(minutes=15))
    (row,) = [e for e in build_report(path, "2026-03-02T00:00Z", "2026-03-03T00:00Z")["demand_response"]["events"]
              if e["event_id"] == "ev1"]
    assert row["metered_under_limit_s"] == 7.0
    assert row["metered_resolution_s"] == 1.0 and row["metered_crossing_source"] == "site meter"
    assert row["meter_samples"] == 12


def test_the_loop_samples_telemetry_only_while_an_event_is_in_force() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.records: list[tuple[str, dict]] = []

        def record(self, kind: str, payload: dict, at: datetime) -> None:
            self.records.append((kind, payload))

    def cheap(now, start, periods):  # noqa: ANN001, ANN202
        return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 10.0))

    recorder = Recorder()
    loop = ControlLoop(PROFILE, forecaster=cheap, driver=SimulatedFleet(PROFILE), recorder=recorder,
                       solver=SolveRunner(inline=True))
    miner = next(iter(PROFILE.miner_ids()))

    def telemetry(at: datetime, kw: float) -> None:
        loop.on_message(TelemetryMessage(miner_id=miner, power_kw=kw, hashrate_th_s=0.0, mode="sleep", temperature_c=40.0,
                                         timestamp=at), at)

    telemetry(T0 - timedelta(seconds=5), 3.0)  # no event yet: no sample
    ack = loop.handle_dr(DREventMessage(event_id="ev", modification_number=0, program="utility", start=T0,
                                        end=T0 + timedelta(hours=1), import_limit_kw=0.0, issuer="utility"), T0)
    assert ack.status == "accepted"
    for ms in (0, 300, 1200, 1500, 2500):  # at most one a second
        telemetry(T0 + timedelta(milliseconds=ms), 0.1)
    samples = [p for k, p in recorder.records if k == "meter_sample"]
    assert [pd.Timestamp(p["at"]) - pd.Timestamp(T0) for p in samples] == [
        pd.Timedelta(0), pd.Timedelta(milliseconds=1200), pd.Timedelta(milliseconds=2500)]
    assert all(p["source"] == "telemetry" and p["import_kw"] == 0.1 for p in samples)
