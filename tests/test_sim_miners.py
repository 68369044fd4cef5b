"""Simulated miners: the state machine, the clock, and the LuxOS API on real sockets."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest

from hashflex.profile import MinerGroup, MinerMode, load_profile
from hashflex.sim import MinerState, ScaledClock, SimMiner, SimulatedMinerFleet, miners_from_profile

GROUP = MinerGroup(id="air", model="S21", units=4, idle_power_kw=0.01, boot_minutes=4.0, modes=[
    MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
    MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
])
T0 = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)


class ManualClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def call(address: tuple[str, int], command: str, parameter: str = "") -> tuple[dict, bytes]:
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(json.dumps({"command": command, "parameter": parameter}).encode())
        raw = b""
        while chunk := sock.recv(4096):
            raw += chunk
    return json.loads(raw.rstrip(b"\0")), raw


def test_scaled_clock_runs_faster_than_real_time() -> None:
    clock = ScaledClock(600.0, start=T0)
    time.sleep(0.1)
    elapsed = (clock() - T0).total_seconds()
    assert 55 <= elapsed < 600  # 0.1 s real ≈ 60 s simulated (sleep may overrun under load)
    assert clock.real_seconds(300) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ScaledClock(0)


def test_miner_boots_then_hashes_in_its_mode() -> None:
    clock = ManualClock()
    miner = SimMiner("m1", GROUP, clock)
    assert miner.snapshot().state is MinerState.SLEEPING and miner.snapshot().power_kw == 0.01

    miner.command_mode("eco", expires_at=None)
    clock.advance(minutes=3, seconds=59)
    booting = miner.snapshot()
    assert booting.state is MinerState.BOOTING and booting.reported_mode == "booting"
    assert (booting.power_kw, booting.hashrate_th_s) == (0.01, 0.0)

    clock.advance(seconds=1)
    hashing = miner.snapshot()
    assert hashing.state is MinerState.HASHING and (hashing.power_kw, hashing.hashrate_th_s) == (2.9, 175)

    miner.command_mode("stock", expires_at=None)  # mode change while hashing is immediate
    assert miner.snapshot().power_kw == 3.5
    miner.command_sleep()
    assert miner.snapshot().state is MinerState.SLEEPING and miner.snapshot().mode == "sleep"
    with pytest.raises(KeyError):
        miner.command_mode("turbo", expires_at=None)


def test_miner_falls_back_to_sleep_when_the_setpoint_expires() -> None:
    clock = ManualClock()
    miner = SimMiner("m1", GROUP, clock)
    miner.command_mode("stock", expires_at=T0 + timedelta(minutes=15))
    clock.advance(minutes=14)
    assert miner.snapshot().state is MinerState.HASHING
    miner.renew(clock() + timedelta(minutes=15))  # renewed at 14 min: runs to 29 min
    clock.advance(minutes=14)
    assert miner.snapshot().state is MinerState.HASHING
    clock.advance(minutes=1)
    snap = miner.snapshot()
    assert snap.state is MinerState.SLEEPING and snap.fallbacks == 1 and snap.power_kw == 0.01


def test_miner_that_does_not_follow_keeps_its_state() -> None:
    miner = SimMiner("m1", GROUP, ManualClock())
    miner.follows = False
    miner.command_mode("eco", expires_at=None)
    assert miner.snapshot().state is MinerState.SLEEPING


def test_fleet_from_profile_and_total_power() -> None:
    profile = load_profile("west_texas")
    miners = miners_from_profile(profile, units_per_group=3)
    assert len(miners) == 3 * len(profile.miner_groups)
    assert "hydro_s21xp-0002" in miners and miners["air_s21-0001"].id == "air_s21"  # the controller's ids
    clock = ManualClock()
    fleet = SimulatedMinerFleet(miners, clock=clock)  # not started: the model alone
    idle = sum(g.idle_power_kw for g in miners.values())
    assert fleet.total_power_kw() == pytest.approx(idle)
    fleet.miner("air_s21-0001").command_mode("turbo", None)
    clock.advance(minutes=10)
    expected = idle - 0.01 + 4.2
    assert fleet.total_power_kw() == pytest.approx(expected)
    assert fleet.states()["air_s21-0001"].hashrate_th_s == 230


@pytest.fixture
def fleet():
    clock = ScaledClock(600.0)
    fleet = SimulatedMinerFleet({"a": GROUP, "b": GROUP}, clock=clock, lease_s=60.0,
                                profile_names={"air": {"eco": "low"}}).start()
    yield fleet
    fleet.stop()


def test_api_answers_nul_terminated_json_with_status(fleet) -> None:
    address = fleet.endpoints()["a"]
    assert address[0] == "127.0.0.1" and address[1] != fleet.endpoints()["b"][1]
    response, raw = call(address, "version")
    assert raw.endswith(b"\0") and response["STATUS"][0]["STATUS"] == "S"
    response, _ = call(address, "frobnicate")
    assert response["STATUS"][0] == response["STATUS"][0] | {"STATUS": "E", "Msg": "Invalid command"}
    profiles, _ = call(address, "profiles")
    assert [(p["Profile Name"], p["Watts"]) for p in profiles["PROFILES"]] == [("low", 2900), ("stock", 3500)]


def test_api_sessions_are_exclusive_and_required(fleet) -> None:
    address = fleet.endpoints()["a"]
    denied, _ = call(address, "curtail", "nosuchsession,wakeup")
    assert denied["STATUS"][0]["STATUS"] == "E" and "session" in denied["STATUS"][0]["Msg"].lower()
    logon, _ = call(address, "logon")
    sid = logon["SESSION"][0]["SessionID"]
    second, _ = call(address, "logon")
    assert second["STATUS"][0]["STATUS"] == "E"
    assert call(address, "session")[0]["SESSION"][0]["SessionID"] == sid
    assert call(address, "logoff", sid)[0]["STATUS"][0]["STATUS"] == "S"
    assert call(address, "session")[0]["SESSION"][0]["SessionID"] == ""


def test_api_wakeup_boots_and_the_lease_sends_it_back_to_sleep(fleet) -> None:
    address = fleet.endpoints()["a"]
    sid = call(address, "logon")[0]["SESSION"][0]["SessionID"]
    assert call(address, "profileset", f"{sid},low")[0]["STATUS"][0]["STATUS"] == "S"
    assert call(address, "profileset", f"{sid},turbo")[0]["STATUS"][0]["Msg"] == "Profile 'turbo' not found"
    call(address, "curtail", f"{sid},wakeup")
    assert fleet.miner("a").snapshot().state is MinerState.BOOTING
    time.sleep(0.45)  # boot: 4 min = 0.4 s; the lease (60 s = 0.1 s) needs renewal meanwhile
    assert fleet.miner("a").snapshot().state is MinerState.SLEEPING
    assert fleet.miner("a").snapshot().fallbacks == 1

    call(address, "curtail", f"{sid},wakeup")
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # renew the lease every 0.03 s, as a dispatcher would
        call(address, "profileset", f"{sid},low")
        time.sleep(0.03)
    power = call(address, "power")[0]["POWER"][0]["Watts"]
    summary = call(address, "summary")[0]["SUMMARY"][0]
    assert power == 2900 and summary["GHS 5s"] == 175_000
    assert fleet.miner("a").snapshot().fallbacks == 1


def test_silent_and_offline_miners(fleet) -> None:
    fleet.set_silent("a")
    with socket.create_connection(fleet.endpoints()["a"], timeout=0.2) as sock:
        sock.sendall(b'{"command": "version"}')
        with pytest.raises(socket.timeout):
            sock.recv(10)
    fleet.take_offline("b")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(fleet.endpoints()["b"], timeout=0.5)
