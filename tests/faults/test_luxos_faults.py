"""LuxOS driver against hostile miner peers (issue 10, item 7): real TCP sockets on 127.0.0.1.

Each test reproduces a reported fault: hung / dripping / closing peers delaying responsive miners, a
``verify`` the loop could not call, ``W`` / ``?`` statuses counted as success, an unescaped session id,
and ``profileset`` refused under ATM. No timed assertions: ordering (what the simulator saw first) and
counts (connections held at once, attempts made) show concurrency and deadlines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest

from hashflex.control.loop import ControlLoop
from hashflex.drivers.base import MinerRegistry, Setpoint, SetpointStatus
from hashflex.drivers.luxos import LuxosDriver, LuxosEndpoint
from hashflex.profile import MinerGroup, MinerMode
from hashflex.sim import MinerState, ScaledClock, SimulatedMinerFleet

SCALE = 600.0  # 1 simulated minute = 0.1 s
AIR = MinerGroup(id="air", model="S21", units=100, idle_power_kw=0.01, boot_minutes=1.0, modes=[
    MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
    MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
])
PROFILES = {"air": {"eco": "415MHz", "stock": "default"}}


def make_fleet(n: int) -> SimulatedMinerFleet:
    return SimulatedMinerFleet({f"air-{i:02d}": AIR for i in range(n)}, clock=ScaledClock(SCALE),
                               profile_names=PROFILES).start()


def make_driver(fleet: SimulatedMinerFleet, **kwargs: object) -> LuxosDriver:
    endpoints = [LuxosEndpoint(mid, "air", host, port) for mid, (host, port) in fleet.endpoints().items()]
    options: dict = {"timeout_s": 1.0, "attempts": 2, "backoff_s": 0.01, "clock": fleet.clock} | kwargs
    return LuxosDriver(endpoints, PROFILES, **options)


def setpoint(fleet: SimulatedMinerFleet, miner_id: str, mode: str, power_kw: float = 0.0) -> Setpoint:
    now = fleet.clock()
    return Setpoint(miner_id, mode, power_kw, now, now + timedelta(minutes=15))


def received(fleet: SimulatedMinerFleet, miner_id: str, command: str) -> list[float]:
    """When the simulator read each ``command`` request of one miner (time.monotonic())."""
    return [t for t, c, _ in fleet.received_at[miner_id] if c == command]


@pytest.fixture
def fleet() -> Iterator[SimulatedMinerFleet]:
    fleet = make_fleet(4)
    yield fleet
    fleet.stop()


# --------------------------------------------------------------------------- hung peers


def test_hung_miners_never_delay_responsive_ones() -> None:
    """40 hung miners (more than the old 32-thread pool) ahead of 8 responsive ones in the batch: every
    responsive miner gets its curtail before any hung connection is given up, and all hung miners are
    contacted at once (so apply is bounded by one per-miner deadline, not by how many hang)."""
    hung, responsive = 40, 8
    fleet = make_fleet(hung + responsive)
    ids = sorted(fleet.miners)
    for mid in ids[:hung]:
        fleet.set_fault(mid, "hang")
    driver = make_driver(fleet, timeout_s=2.0, attempts=1)
    try:
        results = driver.apply([setpoint(fleet, mid, "sleep") for mid in ids])
    finally:
        driver.close()
        fleet.stop()

    by_id = {r.miner_id: r for r in results}
    assert [r.miner_id for r in results] == ids
    assert all(by_id[m].status is SetpointStatus.TIMEOUT for m in ids[:hung]), results[:hung]
    assert all(by_id[m].ok for m in ids[hung:]), results[hung:]
    first_hung_given_up = min(fleet.hung_closed_at)
    last_responsive_cut = max(received(fleet, m, "curtail")[-1] for m in ids[hung:])
    assert last_responsive_cut < first_hung_given_up
    assert fleet.hung_open_max == hung  # every hung miner held one connection, all at the same time


def test_per_miner_deadline_bounds_retries() -> None:
    """A hung miner gets at most the attempts that fit in its total deadline, not attempts × timeout."""
    fleet = make_fleet(2)
    fleet.set_fault("air-00", "hang")
    driver = make_driver(fleet, timeout_s=1.0, attempts=5, deadline_s=1.5)
    try:
        hung, healthy = driver.apply([setpoint(fleet, "air-00", "sleep"), setpoint(fleet, "air-01", "sleep")])
    finally:
        driver.close()
        fleet.stop()
    assert hung.status is SetpointStatus.TIMEOUT
    assert "deadline 1.5 s" in hung.reason
    assert 1 <= len(received(fleet, "air-00", "logon")) <= 2  # 5 attempts × 1 s would not fit
    assert healthy.ok, healthy.reason


def test_dripping_and_closing_peers_do_not_delay_others_and_fail_with_reason() -> None:
    fleet = make_fleet(3)
    fleet.set_fault("air-00", "drip", drip_interval_s=0.05)  # a ~200-byte answer would take ~10 s
    fleet.set_fault("air-01", "close_mid_reply")
    driver = make_driver(fleet, timeout_s=1.0, attempts=2, deadline_s=2.5)
    try:
        drip, closed, healthy = driver.apply([setpoint(fleet, m, "sleep") for m in ("air-00", "air-01", "air-02")])
    finally:
        driver.close()
        fleet.stop()
    assert drip.status is SetpointStatus.TIMEOUT, drip
    assert closed.status is SetpointStatus.UNREACHABLE, closed
    assert "closed mid-reply" in closed.reason
    assert healthy.ok, healthy.reason
    assert received(fleet, "air-02", "curtail")[-1] < min(fleet.hung_closed_at)


# --------------------------------------------------------------------------- verify


def test_loop_verify_call_restores_a_miner_that_answers_again(fleet) -> None:
    """ControlLoop.verify_setpoints calls ``driver.verify(timeout_s)``: it must work and restore."""
    driver = make_driver(fleet, timeout_s=0.3, attempts=1)
    registry = MinerRegistry({mid: "air" for mid in fleet.miners}, max_failures=1)
    loop = SimpleNamespace(driver=driver, registry=registry, _lock=threading.RLock(),
                           _sync_availability=lambda: None)
    try:
        fleet.set_fault("air-01", "hang")
        registry.record(driver.apply([setpoint(fleet, "air-01", "sleep")]))
        assert not registry.is_available("air-01")

        fleet.set_fault("air-01", None)  # it answers again; the loop keeps sending sleep to it
        registry.record(driver.apply([setpoint(fleet, "air-01", "sleep")]))
        assert not registry.is_available("air-01")  # a command alone does not restore

        ControlLoop.verify_setpoints(loop, 0.0)  # type: ignore[arg-type]  (exactly the loop's call)
    finally:
        driver.close()
    assert registry.is_available("air-01"), registry.unavailable()


def test_verify_reports_each_outstanding_setpoint_once(fleet, wait_for) -> None:
    driver = make_driver(fleet)
    try:
        driver.apply([setpoint(fleet, "air-00", "eco", 2.9), setpoint(fleet, "air-01", "sleep")])
        wait_for(lambda: fleet.miner("air-00").snapshot().state is MinerState.HASHING, 5, message="boot")
        results = {r.miner_id: r for r in driver.verify(0.0)}
        again = driver.verify(0.0)
    finally:
        driver.close()
    assert set(results) == {"air-00", "air-01"}
    assert all(r.status is SetpointStatus.APPLIED for r in results.values()), results
    assert again == []


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize("status", ["W", "?", None])
def test_only_success_and_info_statuses_count_as_applied(fleet, status) -> None:
    fleet.set_status_reply("air-00", "curtail", status, "Curtailment deferred: fans at limit")
    driver = make_driver(fleet)
    try:
        result = driver.apply([setpoint(fleet, "air-00", "sleep")])[0]
    finally:
        driver.close()
    assert result.status is SetpointStatus.REJECTED, result
    assert "Curtailment deferred: fans at limit" in result.reason


def test_info_status_counts_as_applied(fleet) -> None:
    fleet.set_status_reply("air-00", "curtail", "I", "Already asleep")
    driver = make_driver(fleet)
    try:
        result = driver.apply([setpoint(fleet, "air-00", "sleep")])[0]
    finally:
        driver.close()
    assert result.ok, result.reason


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("hostile", ["abc,sleep", "abc|summary", "ab\\,c", "abc\n", ""])
def test_a_session_id_with_separators_is_never_sent(fleet, hostile) -> None:
    fleet.set_session_id("air-00", hostile)
    driver = make_driver(fleet)
    try:
        result = driver.apply([setpoint(fleet, "air-00", "eco", 2.9)])[0]
    finally:
        driver.close()
    assert result.status is SetpointStatus.REJECTED, result
    assert "session id" in result.reason
    privileged = [p for c, p in fleet.commands["air-00"] if c in ("profileset", "curtail", "atmset", "logoff")]
    assert all(re.fullmatch(r"[0-9a-f]{8}(,[A-Za-z0-9=]+)?", p) for p in privileged), privileged  # simulator's own ids
    assert not any(hostile and hostile in p for p in privileged), privileged


def test_a_profile_name_with_separators_is_refused_at_construction(fleet) -> None:
    endpoints = [LuxosEndpoint("air-00", "air", *fleet.endpoints()["air-00"])]
    with pytest.raises(ValueError, match=r"profiles\['air'\]\['eco'\]"):
        LuxosDriver(endpoints, {"air": {"eco": "415MHz,wakeup"}})


# --------------------------------------------------------------------------- ATM


def test_profileset_under_atm_turns_atm_off_sets_the_profile_and_turns_it_back_on(fleet, wait_for) -> None:
    fleet.set_atm("air-00", True)
    driver = make_driver(fleet)
    try:
        result = driver.apply([setpoint(fleet, "air-00", "eco", 2.9)])[0]
    finally:
        driver.close()
    assert result.ok, result.reason
    sent = [(c, p.split(",", 1)[1] if "," in p else p) for c, p in fleet.commands["air-00"]]
    assert [s for s in sent if s[0] in ("profileset", "atmset", "curtail")] == [
        ("profileset", "415MHz"), ("atmset", "enabled=false"), ("profileset", "415MHz"),
        ("atmset", "enabled=true"), ("curtail", "wakeup")]
    assert fleet.atm_enabled("air-00")
    assert "ATM" in result.reason
    wait_for(lambda: fleet.miner("air-00").snapshot().state is MinerState.HASHING, 5, message="boot")
    assert fleet.miner("air-00").snapshot().mode == "eco"


def test_atm_that_cannot_be_turned_off_falls_back_to_sleep(fleet, wait_for) -> None:
    driver = make_driver(fleet)
    try:
        assert driver.apply([setpoint(fleet, "air-00", "stock", 3.5)])[0].ok
        wait_for(lambda: fleet.miner("air-00").snapshot().state is MinerState.HASHING, 5, message="boot")
        fleet.set_atm("air-00", True)
        fleet.set_error("air-00", "atmset", "ATM settings locked")
        result = driver.apply([setpoint(fleet, "air-00", "eco", 2.9)])[0]
    finally:
        driver.close()
    assert result.status is SetpointStatus.REJECTED, result
    assert "ATM settings locked" in result.reason and "fell back to curtail sleep" in result.reason
    assert fleet.miner("air-00").snapshot().state is MinerState.SLEEPING
