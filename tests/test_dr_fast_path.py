"""Issue 18, DR at 100,000 miners: the pieces taken off the per-miner path keep their meaning.

- The DR fast path records its cut as mode columns; a miner whose setpoint the driver refuses is put
  back to what it was (mode, last start, last stop), looked up in `ModeChanges`, and the others keep
  the cut.
- The MQTT driver shares one pending record per mode of a batch: telemetry that confirmed an older
  setpoint does not confirm the newer one that replaced it (real Mosquitto, telemetry sent by hand).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import paho.mqtt.client as mqtt

from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.drivers.base import SetpointStatus
from hashflex.drivers.batch import BatchResult, GroupBatch, SetpointBatch
from hashflex.drivers.mqtt import MqttDriver
from hashflex.messages import DREventMessage, TelemetryMessage, Topics
from hashflex.profile import parse_profile

NOW = datetime(2025, 7, 15, 17, 0, tzinfo=timezone.utc)

PROFILE_YAML = """
site: {id: drfast, name: DR fast path test (SYNTHETIC), settlement_point: LZ_WEST, horizon_hours: 2}
grid: {import_limit_kw: 1000}
dr: {issuers: [utility]}
miner_groups:
  - {id: a, model: S21, units: 20, modes: [{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}]}
  - {id: b, model: S19, units: 20, modes: [{name: eco, power_kw: 2.9, hashrate_th_s: 100, sound_power_dba: 80}]}
carbon: {default_intensity_kg_per_mwh: 370, intensity_source: test placeholder}
economics: {hashprice_usd_per_ph_day: 49}
"""


def _flat(now: datetime, start: pd.Timestamp, periods: int) -> HorizonForecast:
    """SYNTHETIC cheap flat prices: everything runs."""
    return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 10.0))


class _RefusesSome:
    """Takes batches whole; refuses the setpoints of ``refused`` miners once armed."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.batches: list[SetpointBatch] = []

    def apply_batch(self, batch: SetpointBatch) -> BatchResult:
        self.batches.append(batch)
        codes = [np.array([1 if m in self.refused else 0 for m in g.miner_id.tolist()], dtype=np.int64)
                 for g in batch.groups]
        return BatchResult(batch, [(SetpointStatus.APPLIED, "ok", 0.0), (SetpointStatus.REJECTED, "refused", 0.0)],
                           codes)


def test_a_refused_dr_setpoint_reverts_only_that_miner() -> None:
    profile = parse_profile(PROFILE_YAML)
    driver = _RefusesSome()
    loop = ControlLoop(profile, forecaster=_flat, driver=driver, solver=SolveRunner(inline=True))
    loop.tick(NOW)
    assert loop.fleet.units_running() == 40
    started = {m: (v.mode, v.last_start, v.last_stop) for m, v in loop.fleet.miners.items()}
    driver.refused = {"a-01", "b-07"}
    cut_at = NOW + timedelta(minutes=2)
    event = DREventMessage(event_id="ev", modification_number=0, program="ERS-10", start=cut_at,
                           end=cut_at + timedelta(minutes=30), import_limit_kw=35.0, issuer="utility")
    assert loop.handle_dr(event, cut_at).status == "accepted"
    cut = driver.batches[-1]
    asked = {sp.miner_id: sp.mode for sp in cut}
    stopped = {m for m, mode in asked.items() if mode == "sleep"}
    assert {"a-01", "b-07"} <= stopped, "the cut must stop the refused miners for this test to mean anything"
    for miner_id, view in loop.fleet.miners.items():
        if miner_id in driver.refused:  # put back exactly
            assert (view.mode, view.last_start, view.last_stop) == started[miner_id]
        else:  # the cut holds, stamped at the cut
            assert view.mode == asked[miner_id]
            assert view.last_stop == (cut_at if miner_id in stopped else started[miner_id][2])
    assert loop.counters["setpoint_failures"] == 2
    assert loop.fleet.units_running() == 40 - len(stopped) + 2


def _telemetry(client: mqtt.Client, site: str, miner_id: str, mode: str, power_kw: float) -> None:
    message = TelemetryMessage(miner_id=miner_id, power_kw=power_kw, hashrate_th_s=100.0 if mode != "sleep" else 0.0,
                               mode=mode, temperature_c=60.0, timestamp=datetime.now(timezone.utc))
    client.publish(Topics(site).telemetry(miner_id), message.model_dump_json(), qos=1).wait_for_publish(5)


def _batch(ids: list[str], mode: np.ndarray, seconds: float = 600.0) -> SetpointBatch:
    now = datetime.now(timezone.utc)
    group = GroupBatch("air", np.array(ids, dtype=object), mode.astype(np.int16), ("eco",), np.array([0.0, 0.01, 2.9]))
    return SetpointBatch([group], now, now + timedelta(seconds=seconds))


def test_a_confirmation_of_a_replaced_setpoint_does_not_count(mosquitto, wait_for) -> None:  # noqa: ANN001
    site = "drfast-stale"
    follower = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drfast-follower", protocol=mqtt.MQTTv5)
    follower.connect(mosquitto.host, mosquitto.port)
    follower.subscribe(f"hashflex/{site}/out/setpoints/+", qos=1)
    follower.loop_start()
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drfast-miners", protocol=mqtt.MQTTv5)
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    time.sleep(0.3)  # the follower's subscription in place
    try:
        with MqttDriver(site, mosquitto.host, mosquitto.port) as driver:
            first = driver.apply_batch(_batch(["air-1", "air-2", "air-3"], np.array([0, 0, -1])))
            assert first.tally() == {"applied": 3}
            _telemetry(sender, site, "air-1", "eco", 2.9)
            wait_for(lambda: driver.telemetry("air-1") is not None, 5, message="telemetry reached the driver")
            # air-1 now asked to sleep: its eco confirmation belongs to the setpoint this one replaced
            assert driver.apply_batch(_batch(["air-1"], np.array([-1]))).tally() == {"applied": 1}
            results = {r.miner_id: r for r in driver.verify(timeout_s=0.3)}
            assert results["air-1"].status is SetpointStatus.UNVERIFIED
            assert results["air-1"].reason.startswith("no telemetry since the setpoint was published; expected sleep")
            assert results["air-2"].status is SetpointStatus.UNVERIFIED  # nothing heard
            assert "no telemetry since" in results["air-2"].reason
            # a fresh batch, then telemetry that does match: confirmed, one record shared by the rows
            driver.apply_batch(_batch(["air-1", "air-2"], np.array([0, 0])))
            _telemetry(sender, site, "air-1", "eco", 2.95)
            _telemetry(sender, site, "air-2", "eco", 2.85)
            results = {r.miner_id: r for r in driver.verify(timeout_s=5.0)}
            assert {m: r.status for m, r in results.items()} == {"air-1": SetpointStatus.APPLIED,
                                                                 "air-2": SetpointStatus.APPLIED}
            assert driver.pending() == []
    finally:
        follower.loop_stop()
        sender.loop_stop()


def test_group_payload_reaches_a_follower_byte_for_byte(mosquitto, wait_for) -> None:  # noqa: ANN001
    """What the columnar driver publishes is the row-by-row builder's JSON (one message per group)."""
    site = "drfast-bytes"
    got: list[bytes] = []
    follower = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drfast-bytes", protocol=mqtt.MQTTv5)
    follower.on_message = lambda c, u, m: got.append(m.payload)
    follower.connect(mosquitto.host, mosquitto.port)
    follower.subscribe(f"hashflex/{site}/out/setpoints/+", qos=1)
    follower.loop_start()
    time.sleep(0.3)
    try:
        with MqttDriver(site, mosquitto.host, mosquitto.port) as driver:
            batch = _batch([f"air-{i:03d}" for i in range(50)], np.arange(50) % 2 - 1)
            assert driver.apply_batch(batch).tally() == {"applied": 50}
            wait_for(lambda: len(got) == 1, 5, message="the group message arrived")
        body = json.loads(got[0])
        assert body["group_id"] == "air" and len(body["setpoints"]) == 50
        assert body["setpoints"][:2] == [{"miner_id": "air-000", "mode": "sleep", "power_target_kw": 0.01},
                                         {"miner_id": "air-001", "mode": "eco", "power_target_kw": 2.9}]
        from hashflex.drivers.setpoint_messages import GroupSetpointsMessage

        assert GroupSetpointsMessage.model_validate_json(got[0]).model_dump_json().encode() == got[0]
    finally:
        follower.loop_stop()
