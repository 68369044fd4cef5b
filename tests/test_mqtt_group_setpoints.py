"""Issue 18: setpoints as one MQTT message per group (``out/setpoints/<group>``), against the real
Mosquitto fixture and simulated MQTT miners; the per-miner topic stays for miners that only speak it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from hashflex.drivers.base import Setpoint, SetpointStatus, utc_now
from hashflex.drivers.mqtt import MqttDriver
from hashflex.drivers.setpoint_messages import GroupSetpointsMessage, group_setpoints_topic
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim import MinerState, MqttSimulatedMiners, ScaledClock

AIR = MinerGroup(id="air", model="S21", units=10, idle_power_kw=0.01, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
    MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
])
HYDRO = MinerGroup(id="hydro", model="S21-hyd", units=10, idle_power_kw=0.02, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=5.0, hashrate_th_s=300, sound_power_dba=70),
])
MINERS = {**{f"air-{i}": AIR for i in range(3)}, **{f"hydro-{i}": HYDRO for i in range(2)}}


def batch_of(clock, *rows: tuple[str, str, float], seconds: float = 900.0) -> list[Setpoint]:
    """Setpoints as the dispatcher makes them: one ``issued_at`` and ``expires_at`` per batch."""
    now = clock()
    return [Setpoint(miner_id, mode, power_kw, now, now + timedelta(seconds=seconds),
                     group_id=miner_id.split("-")[0]) for miner_id, mode, power_kw in rows]


@pytest.fixture
def site(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("_", "-")[:60]


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(600.0)  # 1 simulated minute = 0.1 s


@pytest.fixture
def group_only(mosquitto, site, clock) -> Iterator[MqttSimulatedMiners]:
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=clock, telemetry_interval_s=0.05,
                             setpoint_topics="group") as sim:
        yield sim


def test_one_message_per_group_reaches_and_moves_the_miners(group_only, mosquitto, site, clock, wait_for) -> None:
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        batch = batch_of(clock, ("air-0", "eco", 2.9), ("air-1", "stock", 3.5), ("hydro-0", "eco", 5.0),
                         seconds=3600.5)
        results = drv.apply(batch)
        assert [r.status for r in results] == [SetpointStatus.APPLIED] * 3, results
        assert "group message (2 miners)" in results[0].reason and "PUBACK" in results[0].reason
        assert drv.messages_published == 2  # air and hydro, not three
        verified = {r.miner_id: r.status for r in drv.verify(timeout_s=5.0)}
    assert verified == {"air-0": SetpointStatus.APPLIED, "air-1": SetpointStatus.APPLIED,
                        "hydro-0": SetpointStatus.APPLIED}
    wait_for(lambda: group_only.group_messages == 2, 5, message="two group messages at the miners")
    message, expiry = group_only.received["air-0"][-1]
    assert message.mode == "eco" and message.expires_at == batch[0].expires_at
    # whole simulated seconds left when published (the clock runs 600x): rounded down, so at most 3600
    assert expiry is not None and 3000 <= expiry <= 3600
    states = group_only.states()
    assert states["air-1"].mode == "stock" and states["hydro-0"].state is MinerState.HASHING
    # a group message speaks only for the miners it lists
    assert len(group_only.received["air-2"]) == 0 and states["air-2"].state is MinerState.SLEEPING
    assert len(group_only.received["hydro-1"]) == 0


def test_group_message_expiry_makes_the_miners_fall_back_to_sleep(group_only, mosquitto, site, clock,
                                                                   wait_for) -> None:
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        # 900 simulated s = 1.5 s real: long enough for telemetry to confirm under a loaded CI machine
        # (120 simulated s = 0.2 s real expired before the confirmation there: 'unverified')
        drv.apply(batch_of(clock, ("air-0", "stock", 3.5), ("air-1", "stock", 3.5), seconds=900))
        assert {r.status for r in drv.verify(timeout_s=5.0)} == {SetpointStatus.APPLIED}
    wait_for(lambda: all(group_only.miner(m).snapshot().state is MinerState.SLEEPING for m in ("air-0", "air-1")),
             10, message="both miners back asleep after 900 simulated seconds")
    assert group_only.miner("air-0").snapshot().fallbacks == 1


def test_large_group_is_split_and_duplicates_start_a_new_message(group_only, mosquitto, site, clock) -> None:
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock, max_setpoints_per_message=2) as drv:
        # a later setpoint for the same miner in the same batch
        batch = batch_of(clock, ("air-0", "eco", 2.9), ("air-1", "eco", 2.9), ("air-2", "eco", 2.9),
                         ("air-0", "stock", 3.5))
        results = drv.apply(batch)
        assert [r.status for r in results] == [SetpointStatus.APPLIED] * 4, results
        assert drv.messages_published == 2  # [air-0 eco, air-1], [air-2, air-0 stock]
        # the newer setpoint replaced the older one in verification
        assert drv.pending() == ["air-0", "air-1", "air-2"]
        verified = {r.miner_id: r for r in drv.verify(timeout_s=5.0)}
    assert "telemetry confirms stock" in verified["air-0"].reason
    assert group_only.states()["air-0"].mode == "stock"
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        results = drv.apply(batch_of(clock, ("air-1", "stock", 3.5), ("air-1", "eco", 2.9)))
        assert all(r.ok for r in results) and drv.messages_published == 2  # a message lists a miner once
        assert "telemetry confirms eco" in drv.verify(timeout_s=5.0)[0].reason


def test_different_deadlines_go_in_different_messages(group_only, mosquitto, site, clock, wait_for) -> None:
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        results = drv.apply(batch_of(clock, ("air-0", "eco", 2.9), seconds=600)
                            + batch_of(clock, ("air-1", "eco", 2.9), seconds=900))
        assert all(r.ok for r in results) and drv.messages_published == 2
    wait_for(lambda: group_only.received["air-1"], 5, message="air-1's setpoint")
    assert group_only.received["air-0"][-1][0].expires_at != group_only.received["air-1"][-1][0].expires_at


def test_invalid_row_is_rejected_naming_the_field_and_the_rest_of_the_group_goes(group_only, mosquitto, site,
                                                                                  clock, wait_for) -> None:
    batch = batch_of(clock, ("air-0", "eco", 2.9), ("air-9/x", "eco", 2.9), ("air-1", "eco", 2.9))  # "/": a level
    assert batch[1].group_id == "air"
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        results = drv.apply(batch)
    assert [r.status for r in results] == [SetpointStatus.APPLIED, SetpointStatus.REJECTED, SetpointStatus.APPLIED]
    assert "miner_id" in results[1].reason and results[1].miner_id == "air-9/x"
    wait_for(lambda: group_only.received["air-0"] and group_only.received["air-1"], 5, message="the valid rows")


def test_group_nobody_follows_falls_back_to_per_miner_topics(mosquitto, site, clock) -> None:
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=clock, telemetry_interval_s=0.05,
                             setpoint_topics="miner") as sim, \
            MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        results = drv.apply(batch_of(clock, ("air-0", "eco", 2.9), ("air-1", "eco", 2.9)))
        assert [r.status for r in results] == [SetpointStatus.APPLIED] * 2, results
        assert drv.messages_published == 1 + 2  # the group message nobody took, then one per miner
        assert {r.status for r in drv.verify(timeout_s=5.0)} == {SetpointStatus.APPLIED}
    assert sim.group_messages == 0 and len(sim.received["air-0"]) == 1


def test_per_miner_option_for_groups_that_only_speak_it(mosquitto, site, clock, wait_for) -> None:
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=clock, telemetry_interval_s=0.05
                             ) as sim, \
            MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock, per_miner_groups=["hydro"]) as drv, \
            MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock, setpoint_topics="miner") as per_miner:
        batch = batch_of(clock, ("air-0", "eco", 2.9), ("hydro-0", "eco", 5.0), ("hydro-1", "eco", 5.0))
        assert all(r.ok for r in drv.apply(batch))
        assert drv.messages_published == 1 + 2
        wait_for(lambda: sim.group_messages == 1, 5, message="air's group message")
        assert all(r.ok for r in per_miner.apply(batch))
        assert per_miner.messages_published == 3
        wait_for(lambda: len(sim.received["air-0"]) == 2, 5, message="air-0's per-miner setpoint")
    assert sim.group_messages == 1


def test_group_setpoints_without_a_broker_are_not_sent(mosquitto_factory) -> None:
    broker = mosquitto_factory()
    port = broker.port
    broker.stop()
    drv = MqttDriver("nobroker", "127.0.0.1", port, puback_timeout_s=1.0).start()
    try:
        results = drv.apply(batch_of(utc_now, ("air-0", "eco", 2.9), ("air-1", "eco", 2.9)))
    finally:
        drv.close()
    assert [r.status for r in results] == [SetpointStatus.NOT_SENT] * 2  # the transport's fault, not the miners'
    assert all("cannot connect" in r.reason for r in results)


def test_group_topic_nobody_follows_at_all_is_a_transport_fault_for_a_batch(mosquitto, site, clock) -> None:
    with MqttDriver(site, mosquitto.host, mosquitto.port, clock=clock) as drv:
        results = drv.apply(batch_of(clock, ("air-0", "eco", 2.9), ("air-1", "eco", 2.9)))
        single = drv.apply(batch_of(clock, ("air-2", "eco", 2.9)))
    # nobody listens at all (restarted broker, miners' connection down): not counted against the miners
    assert [r.status for r in results] == [SetpointStatus.NOT_SENT] * 2, results
    assert "no subscriber for any of 2" in results[0].reason
    assert single[0].status is SetpointStatus.UNREACHABLE


def test_miners_refuse_rows_for_another_groups_miner(mosquitto, site, clock, wait_for) -> None:
    import paho.mqtt.client as mqtt

    from hashflex.feeds.mqtt import mqtt_client

    now = datetime.now(timezone.utc)
    message = GroupSetpointsMessage(group_id="air", issued_at=now, expires_at=now + timedelta(hours=1), setpoints=[
        {"miner_id": "hydro-0", "mode": "eco", "power_target_kw": 5.0},
        {"miner_id": "elsewhere-1", "mode": "eco", "power_target_kw": 2.9}])
    with MqttSimulatedMiners(site, mosquitto.host, mosquitto.port, MINERS, clock=ScaledClock(1.0)) as sim:
        client = mqtt_client(f"{site}-forger")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        try:
            info = client.publish(group_setpoints_topic(site, "air"), message.model_dump_json(), qos=1)
            info.wait_for_publish(5)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS
            wait_for(lambda: sim.group_messages == 1, 5, message="the group message")
        finally:
            client.disconnect()
            client.loop_stop()
    assert any("hydro-0 is in group hydro" in r for r in sim.rejected), list(sim.rejected)
    assert len(sim.received["hydro-0"]) == 0  # the miner of another group did not follow it


def test_group_message_schema() -> None:
    now = datetime(2026, 7, 1, 18, tzinfo=timezone.utc)
    row = {"miner_id": "air-1", "mode": "eco", "power_target_kw": 2.9}
    message = GroupSetpointsMessage(group_id="air", issued_at=now, expires_at=now + timedelta(minutes=15),
                                    setpoints=[row])
    assert GroupSetpointsMessage.model_validate_json(message.model_dump_json()) == message
    assert message.setpoint_messages()[0].expires_at == now + timedelta(minutes=15)
    assert message.miner_ids == ["air-1"] and message.remaining_s(now) == 900.0
    cases = {
        "expires_at": dict(expires_at=now),
        "listed twice": dict(setpoints=[row, row]),
        "setpoints.0.power_target_kw": dict(setpoints=[{**row, "power_target_kw": -1.0}]),
        "setpoints.0.extra": dict(setpoints=[{**row, "extra": 1}]),
        "setpoints": dict(setpoints=[]),
        "issued_at": dict(issued_at=datetime(2026, 7, 1, 18)),  # naive
    }
    for field, change in cases.items():
        fields = {"group_id": "air", "issued_at": now, "expires_at": now + timedelta(minutes=15), "setpoints": [row],
                  **change}
        with pytest.raises(ValidationError) as info:
            GroupSetpointsMessage(**fields)
        assert field in str(info.value), (field, str(info.value))
    assert group_setpoints_topic("west", "air") == "hashflex/west/out/setpoints/air"
    assert group_setpoints_topic("west", "+") == "hashflex/west/out/setpoints/+"
    with pytest.raises(ValueError, match="group_id"):
        group_setpoints_topic("west", "air/1")


def test_driver_options_are_checked() -> None:
    with pytest.raises(ValueError, match="setpoint_topics"):
        MqttDriver("west", setpoint_topics="rack")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_setpoints_per_message"):
        MqttDriver("west", max_setpoints_per_message=0)
